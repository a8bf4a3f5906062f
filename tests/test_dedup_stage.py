"""The deduped stage as a whole: each kind of duplicate is removed by its own named rule, in one pass."""

import gzip
import json
from pathlib import Path

import polars as pl

from tests.conftest import CORPORA
from thresher.config import DedupConfig, IngestConfig
from thresher.dedup import INDEX_SCHEMA
from thresher.dedup_stage import DedupStage, PriorIndexes
from thresher.ingest import read_file
from thresher.repetition import BOILERPLATE_LINES_SCHEMA

HUMANEVAL = CORPORA / "code" / "humaneval" / "HumanEval.jsonl.gz"

ANSWER = (
    "Start by listing every recurring expense for the last three months, then sort them by how much each one "
    "actually improves your week. Cancel the ones you forgot you had, negotiate the ones you use rarely, and "
    "keep a short note of the renewal dates so that nothing renews without a decision."
)


def chat(user: str, assistant: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def batch(tmp_path: Path) -> pl.DataFrame:
    with gzip.open(HUMANEVAL, "rt") as f:
        item = json.loads(f.readline())
    looping = "\n".join(["Buy the tickets early and compare the fares on several days of the week."] * 6)
    lines = [
        chat("How do I cut down on monthly subscriptions?", ANSWER),  # 1: kept
        chat("how do I cut down on monthly subscriptions", ANSWER.upper()),  # 2: exact duplicate of 1
        chat("How should I plan a cheap train trip across Europe?", looping),  # 3: repeats one line
        chat(
            "Complete this function.\n" + item["prompt"],
            "```python\n" + item["prompt"] + item["canonical_solution"] + "```",
        ),  # 4
    ]
    path = tmp_path / "batch.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return read_file(path, "b1", IngestConfig()).kept


def no_prior() -> PriorIndexes:
    return PriorIndexes(
        dedup=pl.DataFrame(schema=INDEX_SCHEMA),
        boilerplate_lines=pl.DataFrame(schema=BOILERPLATE_LINES_SCHEMA),
    )


def test_each_kind_of_duplicate_is_removed_by_its_own_rule(tmp_path: Path) -> None:
    config = DedupConfig.model_validate(
        {
            "repetition": {"enabled": True},
            "decontamination": {"benchmarks": [{"name": "humaneval", "path": str(HUMANEVAL)}]},
        }
    )
    records = batch(tmp_path)
    result = DedupStage(config, base_dir=tmp_path).run(records, no_prior())
    result.check_conservation()
    rules = dict(
        zip(result.rejected["source_line"].to_list(), result.rejected["rule"].to_list(), strict=True)
    )
    assert rules == {2: "exact_duplicate", 3: "duplicate_lines", 4: "contamination"}
    assert result.kept["source_line"].to_list() == [1]
    assert result.counters["contamination.humaneval"] == 1
    assert "dedup_index" in result.tables and "contamination" in result.tables


def test_disabled_steps_do_not_run(tmp_path: Path) -> None:
    config = DedupConfig.model_validate({"repetition": {"enabled": False}, "boilerplate": {"enabled": False}})
    result = DedupStage(config, base_dir=tmp_path).run(batch(tmp_path), no_prior())
    assert set(result.rejected["rule"]) == {"exact_duplicate"}
    assert not any(
        name.startswith(("repetition.", "boilerplate.", "contamination.")) for name in result.counters
    )
