"""Specification of benchmark decontamination (thresher.decontamination).

Planted copies of real HumanEval, MBPP and GSM8K items, lightly reformatted, are rejected as
"contamination" and reported per benchmark; clean generated records are not; every record is kept or
rejected exactly once, and the ledger names the benchmark item without quoting any text.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import CORPORA, REPO
from thresher.config import BenchmarkFile, DecontaminationConfig, IngestConfig, load_config
from thresher.decontamination import (
    CONTAMINATION_SCHEMA,
    Decontaminator,
    clear_cache,
    contamination_report,
    normalize,
)
from thresher.democorpus import generate
from thresher.ingest import read_file

HUMANEVAL = CORPORA / "code/humaneval/HumanEval.jsonl.gz"
MBPP = CORPORA / "code/mbpp/mbpp.jsonl"
GSM8K = CORPORA / "math/gsm8k/test.jsonl"


def three_benchmarks(**overrides: object) -> DecontaminationConfig:
    """HumanEval, MBPP and GSM8K test, with paths relative to CORPORA (the base_dir of these tests)."""
    return DecontaminationConfig(
        benchmarks=[
            BenchmarkFile(name="humaneval", path="code/humaneval/HumanEval.jsonl.gz"),
            BenchmarkFile(name="mbpp", path="code/mbpp/mbpp.jsonl"),
            BenchmarkFile(name="gsm8k", path="math/gsm8k/test.jsonl"),
        ],
        **overrides,
    )


def _jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _chat(user: str, assistant: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def _read(path: Path, batch: str = "b1") -> pl.DataFrame:
    return read_file(path, batch, IngestConfig()).kept


@pytest.fixture(scope="module")
def clean_records(tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    """Every record of a small generated demo corpus (chat, HumanEval-, MBPP- and GSM8K-shaped)."""
    corpus = generate(tmp_path_factory.mktemp("demo"), rows=3000, seed=0)
    frames = [_read(f) for f in corpus.files]
    return pl.concat([f for f in frames if f.height], how="diagonal_relaxed")


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[pl.DataFrame, dict[int, tuple[str, str]]]:
    """A chat batch (OpenAI messages) with benchmark items copied in and lightly reformatted: case,
    spacing, indentation, punctuation and the surrounding wording differ from the benchmark file.

    Returns the records and, per planted line, the (benchmark, item id) it copies.
    """
    humaneval = {item["task_id"]: item for item in _jsonl(HUMANEVAL)}
    mbpp = {item["task_id"]: item for item in _jsonl(MBPP)}
    gsm8k = _jsonl(GSM8K)
    he12, he30 = humaneval["HumanEval/12"], humaneval["HumanEval/30"]
    mb11, mb600 = mbpp[11], mbpp[600]
    rows = [
        _chat("How do I reverse a string in Python?", "Use slicing: `s[::-1]` returns the reversed copy."),
        # HumanEval prompt with two-space indentation, no blank lines; the answer is the solution.
        _chat(
            "Finish this for me please:\n" + re.sub(r"\n+", "\n", he12["prompt"].replace("    ", "  ")),
            he12["canonical_solution"].replace("    ", "\t"),
        ),
        # HumanEval: only the solution body, spaced differently, after a made-up request.
        _chat(
            "Write me a function that keeps the positive numbers.",
            he30["prompt"].upper() + he30["canonical_solution"].replace("(", " ( "),
        ),
        _chat("What is the capital of France?", "Paris is the capital of France."),
        # MBPP task and solution pasted into a chat, CRLF and tabs normalized away.
        _chat(
            mb11["text"].lower() + " Use plain loops.",
            "Sure:\n\n" + mb11["code"].replace("\r\n", "\n").replace("\t", "    "),
        ),
        # MBPP: only the tests, as a user asking why they fail.
        _chat("Why do these fail?\n" + "\n".join(mb600["test_list"]), "Check the parity test."),
        # GSM8K question with collapsed spaces and a new answer.
        _chat(re.sub(r"\s+", " ", gsm8k[4]["question"]).upper(), "They need 20 cups. The answer is 20."),
        # GSM8K worked answer without its calculator annotations, after an unrelated question.
        _chat("Explain step by step.", re.sub(r"<<[^>]*>>", "", gsm8k[0]["answer"])),
        _chat("Summarize the plot of Hamlet in one sentence.", "A prince avenges his father and dies."),
    ]
    path = tmp_path_factory.mktemp("planted") / "planted.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    gsm_ids = _read(GSM8K)["record_id"].to_list()
    expected = {
        2: ("humaneval", "HumanEval/12"),
        3: ("humaneval", "HumanEval/30"),
        5: ("mbpp", "11"),
        6: ("mbpp", "600"),
        7: ("gsm8k", gsm_ids[4]),
        8: ("gsm8k", gsm_ids[0]),
    }
    return _read(path), expected


# ---------------------------------------------------------------------------------------------------


def test_planted_benchmark_items_are_rejected_as_contamination_naming_the_item(planted) -> None:
    records, expected = planted
    result = Decontaminator(three_benchmarks(), CORPORA).run(records)
    result.check_conservation()

    by_line = dict(zip(records["source_line"].to_list(), records["record_id"].to_list(), strict=True))
    assert sorted(result.rejected["record_id"].to_list()) == sorted(by_line[line] for line in expected)
    assert set(result.rejected["rule"]) == {"contamination"}
    assert result.kept.height == records.height - len(expected)
    details = dict(
        zip(result.rejected["source_line"].to_list(), result.rejected["detail"].to_list(), strict=True)
    )
    for line, (benchmark, item) in expected.items():
        assert re.fullmatch(
            rf"shares [1-9]\d* 13-gram\(s\) with benchmark {benchmark} item {re.escape(item)}(; .*)?",
            details[line],
        ), details[line]


def test_ledger_details_never_quote_record_text(planted) -> None:
    records, _ = planted
    result = Decontaminator(three_benchmarks(), CORPORA).run(records)
    texts = " ".join(
        m["content"] for conversation in records["messages"].to_list() for m in conversation
    ).lower()
    for detail in result.rejected["detail"].to_list():
        words = re.sub(r"\d+-gram\(s\)|item \S+", "", detail).lower().split()
        # No run of four detail words (a quotation would be one) appears in the records.
        for i in range(len(words) - 3):
            assert " ".join(words[i : i + 4]) not in texts, detail


def test_contamination_table_lists_every_overlapping_pair(planted) -> None:
    records, expected = planted
    result = Decontaminator(three_benchmarks(), CORPORA).run(records)
    table = result.tables["contamination"]
    assert table.schema == pl.Schema(CONTAMINATION_SCHEMA)
    line_of = dict(zip(records["record_id"].to_list(), records["source_line"].to_list(), strict=True))
    pairs = {(line_of[r], b, i) for r, b, i in table.select("record_id", "benchmark", "item_id").iter_rows()}
    assert {(line, b, i) for line, (b, i) in expected.items()} <= pairs
    assert (table["shared_ngrams"] >= 1).all()
    # A copied prompt and solution share far more than one gram.
    he12 = table.filter(pl.col("item_id") == "HumanEval/12")["shared_ngrams"].max()
    assert he12 > 20


def test_counters_and_report_give_contamination_per_benchmark(planted) -> None:
    records, _ = planted
    result = Decontaminator(three_benchmarks(), CORPORA).run(records)
    assert result.counters["contamination.humaneval"] == 2
    assert result.counters["contamination.mbpp"] == 2
    assert result.counters["contamination.gsm8k"] == 2
    report = contamination_report(result)
    assert report.to_dicts() == [
        {"benchmark": "humaneval", "records_checked": 9, "contaminated": 2, "contaminated_share": 2 / 9},
        {"benchmark": "mbpp", "records_checked": 9, "contaminated": 2, "contaminated_share": 2 / 9},
        {"benchmark": "gsm8k", "records_checked": 9, "contaminated": 2, "contaminated_share": 2 / 9},
    ]


def test_clean_generated_records_are_not_flagged(clean_records) -> None:
    """Generated HumanEval-, MBPP- and GSM8K-shaped records go through the same adapters as the
    benchmarks, so they share the adapters' wording ("Your code should pass these tests:"): that wording is
    boilerplate, not benchmark content, and must not make them contaminated."""
    result = Decontaminator(three_benchmarks(), CORPORA).run(clean_records)
    result.check_conservation()
    assert result.rejected.is_empty()
    assert result.kept.height == clean_records.height
    assert contamination_report(result)["contaminated"].to_list() == [0, 0, 0]


def test_without_boilerplate_exclusion_the_adapter_wording_would_flag_clean_code(clean_records) -> None:
    """Why boilerplate_share exists: 13-grams spanning the end of a short MBPP task and the adapter's
    wrapper match unrelated records."""
    result = Decontaminator(three_benchmarks(boilerplate_share=1.0), CORPORA).run(clean_records)
    assert result.counters["contamination.mbpp"] > 0


def test_gsm8k_socratic_is_entirely_contaminated_with_gsm8k_test() -> None:
    socratic = _read(CORPORA / "math/gsm8k/test_socratic.jsonl")
    result = Decontaminator(three_benchmarks(), CORPORA).run(socratic)
    result.check_conservation()
    assert result.kept.is_empty()
    assert result.counters["contamination.gsm8k"] == socratic.height


def test_items_shorter_than_n_words_match_on_their_whole_text_word_aligned(tmp_path: Path) -> None:
    bench = tmp_path / "tiny.jsonl"
    bench.write_text(json.dumps({"question": "What is 7 times 6?", "answer": "#### 42"}) + "\n")
    batch = tmp_path / "batch.jsonl"
    rows = [
        _chat("Quiz: what is 7 times 6?", "42! That's all."),  # contains "what is 7 times 6 42"
        _chat("What is 7 times 60?", "420"),  # "60" is not the word "6"
        _chat("what is 7 times 6", "I don't know"),  # the answer differs
    ]
    batch.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = DecontaminationConfig(benchmarks=[BenchmarkFile(name="tiny", path="tiny.jsonl", format="auto")])
    result = Decontaminator(config, tmp_path).run(_read(batch))
    assert result.rejected["source_line"].to_list() == [1]
    assert re.fullmatch(
        r"contains the whole text \(6 word\(s\), shorter than 13\) of benchmark tiny item \w+:1",
        result.rejected["detail"][0],
    )


def test_ngram_length_is_configurable(tmp_path: Path) -> None:
    question = _jsonl(GSM8K)[4]["question"]
    words = normalize(pl.Series([question]))[0].split(" ")
    batch = tmp_path / "batch.jsonl"
    batch.write_text(json.dumps(_chat("Consider: " + " ".join(words[:10]) + " ... and so on.", "OK")) + "\n")
    records = _read(batch)
    assert Decontaminator(three_benchmarks(), CORPORA).run(records).rejected.is_empty()
    shorter = Decontaminator(three_benchmarks(ngram=8), CORPORA).run(records)
    assert shorter.rejected["detail"].to_list() == [
        f"shares 3 8-gram(s) with benchmark gsm8k item {_read(GSM8K)['record_id'][4]}"
    ]


def test_normalization_ignores_case_punctuation_and_spacing() -> None:
    texts = pl.Series(
        [
            "def f(x,y):\n\treturn x+y",
            "DEF  f( x, y ) :  return x + y",
            "Ｆｕｌｌ—width",
            "3*20=<<3*20=60>>60 cups",
        ]
    )
    assert normalize(texts).to_list() == [
        "def f x y return x y",
        "def f x y return x y",
        "full width",
        "3 20 60 cups",  # GSM8K calculator annotations are markup, dropped
    ]


def test_missing_benchmark_file_is_an_error_naming_the_path(tmp_path: Path) -> None:
    config = DecontaminationConfig(benchmarks=[BenchmarkFile(name="gone", path="nowhere/bench.jsonl")])
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nowhere/bench.jsonl"))):
        Decontaminator(config, tmp_path)


def test_unreadable_benchmark_file_is_an_error_naming_the_path(tmp_path: Path) -> None:
    (tmp_path / "bench.jsonl").write_text("")
    config = DecontaminationConfig(benchmarks=[BenchmarkFile(name="empty", path="bench.jsonl")])
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "bench.jsonl")) + r".*the file is empty"):
        Decontaminator(config, tmp_path)
    (tmp_path / "bench.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    wrong = DecontaminationConfig(benchmarks=[BenchmarkFile(name="x", path="bench.jsonl", format="nope")])
    with pytest.raises(ValueError, match="the configured format 'nope' is not one of"):
        Decontaminator(wrong, tmp_path)


def test_benchmark_names_are_unique_and_usable_in_counter_names() -> None:
    with pytest.raises(ValueError, match="benchmark names must be unique"):
        DecontaminationConfig(
            benchmarks=[BenchmarkFile(name="x", path="a.jsonl"), BenchmarkFile(name="x", path="b.jsonl")]
        )
    with pytest.raises(ValueError):
        BenchmarkFile(name="has space", path="a.jsonl")


def test_disabled_or_unconfigured_keeps_everything(planted) -> None:
    records, _ = planted
    for config in (three_benchmarks(enabled=False), DecontaminationConfig()):
        result = Decontaminator(config, CORPORA).run(records)
        result.check_conservation()
        assert result.kept.equals(records)
        assert result.rejected.is_empty()


def test_benchmark_index_is_built_once_per_process_per_file_content() -> None:
    clear_cache()
    first = Decontaminator(three_benchmarks(), CORPORA)
    second = Decontaminator(three_benchmarks(), CORPORA)
    assert all(a is b for a, b in zip(first.indexes, second.indexes, strict=True))
    assert [len(ix.item_ids) for ix in first.indexes] == [164, 974, 1319]


def test_results_are_deterministic_and_empty_batches_pass(planted) -> None:
    records, _ = planted
    a = Decontaminator(three_benchmarks(), CORPORA).run(records)
    b = Decontaminator(three_benchmarks(), CORPORA).run(records)
    assert a.rejected.equals(b.rejected)
    assert a.tables["contamination"].equals(b.tables["contamination"])
    empty = Decontaminator(three_benchmarks(), CORPORA).run(records.head(0))
    empty.check_conservation()
    assert empty.tables["contamination"].is_empty()


def test_demo_config_registers_the_three_benchmarks_relative_to_the_config_file() -> None:
    path = REPO / "configs/demo.yaml"
    decon = load_config(path).dedup.decontamination
    assert decon.enabled and decon.ngram == 13
    shared = (REPO.parent / "shared/corpora").resolve()
    assert {b.name: (path.parent / b.path).resolve() for b in decon.benchmarks} == {
        "humaneval": shared / "code/humaneval/HumanEval.jsonl.gz",
        "mbpp": shared / "code/mbpp/mbpp.jsonl",
        "gsm8k": shared / "math/gsm8k/test.jsonl",
    }
