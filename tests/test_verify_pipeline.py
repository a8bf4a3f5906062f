"""The verified stage's LLM features end to end: real Dagster runs (``thresher ingest``) over a real
DuckDB file against tests/chat_server.py, whose scripted model revises failing code and judges chat
answers.

The corpus is one file written by the test (one batch: every batch is a full run of the stages, so
two files would double the test's time): chat records, some of whose answers hedge with a marker word
that the scripted judge scores 1 (the others 4), and code records with their unit tests, one of whose
solutions is wrong until the model revises it. One run with an endpoint, a second materialization of
the same file (served from the response cache), and a run with no endpoint at all (judge and revision
loop skipped with notices).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import polars as pl
import pytest
import yaml

from pipelines import cli
from tests.chat_server import ChatServer
from tests.test_llm_pipeline import API_KEY, ENDPOINT, MODEL, between, chat_line, environment, write_config
from tests.test_verification import record
from thresher import provenance
from thresher import store as st
from thresher.config import VerifyConfig
from thresher.ingest import fenced
from thresher.llm import Endpoint, LLMClient, Secret
from thresher.prompts import PromptSet
from thresher.records import conform
from thresher.sandbox import host_isolation
from thresher.verification import Verifier
from thresher.verification.judges import load_rubric

pytestmark = pytest.mark.integration

MARKER = "guesswork"  # the scripted judge scores an answer holding this word 1, any other 4
MIN_SCORE = 3.0
RUBRIC = load_rubric("helpfulness")

CHATS = [
    (
        "Why does the sky look blue on a clear afternoon but red at sunset?",
        "Air molecules scatter short blue wavelengths far more than red ones; at sunset the light crosses "
        "much more air, so most blue is scattered away before it reaches you.",
    ),
    (
        "How does a refrigerator keep its inside cold without any ice?",
        "A compressor pumps refrigerant that evaporates inside the cabinet, absorbing heat, and "
        "condenses in the coils at the back, where it releases that heat into the kitchen.",
    ),
    (
        "What causes the seasons to change over the course of a year?",
        f"Honestly this is {MARKER}, but perhaps the Earth is simply closer to the Sun in summer.",
    ),
    (
        "Why do onions make people cry when they are chopped?",
        "Cutting an onion releases enzymes that turn its sulfur compounds into a volatile irritant gas, "
        "which reaches the eyes and triggers tears.",
    ),
    (
        "How do bees find their way back to the hive after collecting nectar?",
        f"It is mostly {MARKER} on my part; bees might just follow the smell of honey home.",
    ),
]

# Code problems (not MBPP's, shaped like its): (text, code, tests); the first solution ignores duplicates.
WRONG = "second_largest"
PROBLEMS = [
    (
        "Write a function that returns the second largest distinct value in a list of integers.",
        "def second_largest(numbers):\n    return sorted(numbers)[-2]",
        [
            "assert second_largest([4, 1, 7, 3]) == 4",
            "assert second_largest([9, 9, 2, 5]) == 5",
            "assert second_largest([-1, -3, -1, -2]) == -2",
        ],
    ),
    (
        "Write a function that limits a number to the closed interval between a lower and an upper bound.",
        "def clamp_value(value, low, high):\n    return max(low, min(high, value))",
        [
            "assert clamp_value(5, 0, 10) == 5",
            "assert clamp_value(-4, 0, 10) == 0",
            "assert clamp_value(17, 0, 10) == 10",
        ],
    ),
    (
        "Write a function that encodes a string as a list of (character, run length) pairs.",
        "def run_lengths(text):\n    pairs = []\n    for char in text:\n        if pairs and pairs[-1][0] == char:\n"
        "            pairs[-1] = (char, pairs[-1][1] + 1)\n        else:\n            pairs.append((char, 1))\n"
        "    return pairs",
        [
            "assert run_lengths('aaab') == [('a', 3), ('b', 1)]",
            "assert run_lengths('') == []",
            "assert run_lengths('xyyx') == [('x', 1), ('y', 2), ('x', 1)]",
        ],
    ),
]
REVISED = (
    "Duplicates must count once, so collect the distinct values, sort them and take the one before the "
    "largest.\n\n```python\ndef second_largest(numbers):\n    distinct = sorted(set(numbers))\n"
    "    return distinct[-2]\n```\n\nRemoving duplicates first means the largest value cannot appear twice."
)


def code_task(text: str, asserts: list[str]) -> str:
    """The user turn of a code record: the task and its tests, laid out as the MBPP adapter does."""
    return f"{text}\n\nYour code should pass these tests:\n\n{fenced(chr(10).join(asserts))}"


def code_line(text: str, code: str, asserts: list[str]) -> str:
    """A code record in the messages format, with its tests and entry point."""
    user = code_task(text, asserts)
    entry_point = re.match(r"def (\w+)", code)[1]
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": fenced(code)}]
    tests = "\n".join(asserts) + "\n"
    return json.dumps({"messages": messages, "task": "code", "tests": tests, "entry_point": entry_point})


def write_corpus(folder: Path) -> tuple[Path, Path]:
    """The corpus file and configs/demo.yaml with the judge and the revision loop on, no LLM recipes."""
    files = folder / "files"
    files.mkdir(parents=True)
    lines = [chat_line(q, a) for q, a in CHATS] + [code_line(*problem) for problem in PROBLEMS]
    (files / "records.jsonl").write_text("".join(line + "\n" for line in lines))
    config_path = write_config(folder)
    config = yaml.safe_load(config_path.read_text())
    config["synthesis"]["llm_recipes"] = []
    config["verify"]["judge"] = {"enabled": True, "min_score": MIN_SCORE, "tasks": ["chat"]}
    config["verify"]["revision"] = {"max_rounds": 2}
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return files, config_path


def reply(body: dict[str, Any]) -> str:
    """The "model": revises the wrong solution; as a judge, scores 1 an answer that hedges with the
    marker or holds the wrong solution, 4 any other."""
    system, last = body["messages"][0]["content"], body["messages"][-1]["content"]
    if "An earlier solution to the user's programming task failed its checks" in system:
        assert WRONG in between(last, "task")
        return REVISED
    if "You are a fair and strict judge" in last:
        answer = between(last, "answer")
        if MARKER in answer or PROBLEMS[0][1] in answer:
            return json.dumps(
                {"rationale": "The answer admits it guesses and gets the cause wrong.", "score": 1}
            )
        return json.dumps({"rationale": "Accurate and addresses the question directly.", "score": 4})
    raise AssertionError(f"unexpected request: {last[:200]}")


# ---------------------------------------------------------------------------------------------
# Running the pipeline


@dataclass
class Run:
    """One `thresher ingest` of the corpus and what it left behind."""

    home: Path
    requests: int
    metadata: dict[str, Any] = field(default_factory=dict)  # of the verified asset's latest materialization

    def con(self) -> duckdb.DuckDBPyConnection:
        return st.Store(self.home / "thresher.duckdb").connect(read_only=True)

    def rows(self, sql: str) -> list[dict[str, Any]]:
        with self.con() as con:
            return st.query(con, sql).to_dicts()


def ingest(home: Path, files: Path, config: Path, server: ChatServer | None) -> Run:
    if server is not None:
        server.reset()
    with environment(home, config, server):
        assert cli.main(["ingest", str(files)]) == 0
    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    (latest,) = instance.fetch_materializations(dg.AssetKey("verified"), limit=1).records
    metadata = {k: v.value for k, v in latest.asset_materialization.metadata.items()}
    return Run(home, len(server.chat_requests) if server is not None else 0, metadata)


# The wrong solution's records at the verified stage's input (the rule-based recipes may add copies).
IS_WRONG = f"record_id IN (SELECT record_id FROM synthetic WHERE entry_point = '{WRONG}')"


def judged_input(run: Run) -> dict[str, bool]:
    """Chat records that reached the verified stage -> whether the judge should score them low."""
    rows = run.rows("SELECT record_id, messages FROM synthetic WHERE task = 'chat' ORDER BY record_id")
    return {r["record_id"]: MARKER in r["messages"][-1]["content"] for r in rows}


def code_input(run: Run) -> set[str]:
    return {r["record_id"] for r in run.rows("SELECT record_id FROM synthetic WHERE task = 'code'")}


def wrong_records(run: Run) -> set[str]:
    return {r["record_id"] for r in run.rows(f"SELECT record_id FROM synthetic WHERE {IS_WRONG}")}


def record_of(run: Run, entry_point: str) -> str:
    """The corpus's own record (not a synthetic copy) with this entry point."""
    (row,) = run.rows(f"SELECT record_id FROM raw WHERE entry_point = '{entry_point}'")
    return row["record_id"]


def ledger(run: Run, stage: str) -> dict[str, dict[str, Any]]:
    return {
        r["record_id"]: r
        for r in run.rows(f"SELECT record_id, rule, detail FROM rejections WHERE stage = '{stage}'")
    }


VERIFIED_ROWS = "SELECT * FROM verified ORDER BY record_id"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_corpus(tmp_path_factory.mktemp("verify-corpus"))


@pytest.fixture(scope="module")
def server() -> Iterator[ChatServer]:
    with ChatServer(api_key=API_KEY, reply=reply) as chat:
        yield chat


@pytest.fixture(scope="module")
def first(tmp_path_factory, corpus, server) -> Run:
    files, config = corpus
    return ingest(tmp_path_factory.mktemp("verify-home"), files, config, server)


@pytest.fixture(scope="module")
def second(first, corpus, server) -> tuple[list[dict[str, Any]], Run]:
    files, config = corpus
    before = first.rows(VERIFIED_ROWS)
    return before, ingest(first.home, files, config, server)


@pytest.fixture(scope="module")
def offline(tmp_path_factory, corpus) -> Run:
    files, config = corpus
    return ingest(tmp_path_factory.mktemp("verify-home-offline"), files, config, None)


# ---------------------------------------------------------------------------------------------
# 1. The revision loop


def test_wrong_code_is_revised_by_the_model_and_verified_with_the_revised_answer(first: Run) -> None:
    rid = record_of(first, WRONG)
    (row,) = first.rows(f"SELECT messages, verdict, verdict_detail FROM verified WHERE record_id = '{rid}'")
    assert row["verdict"] == "passed"
    assert "after 1 revision(s)" in row["verdict_detail"]
    assert row["messages"][-1] == {"role": "assistant", "content": REVISED}
    assert rid not in ledger(first, "verified")
    # The right solutions pass as they came, without a revision.
    for name in ("clamp_value", "run_lengths"):
        other = record_of(first, name)
        (kept,) = first.rows(f"SELECT verdict, verdict_detail FROM verified WHERE record_id = '{other}'")
        assert kept["verdict"] == "passed" and "revision" not in kept["verdict_detail"]


def test_every_attempt_is_recorded_with_its_model_and_template(first: Run) -> None:
    attempts = first.rows("SELECT * FROM verification_attempts ORDER BY record_id, attempt")
    assert {a["record_id"] for a in attempts} == wrong_records(first)
    rid = record_of(first, WRONG)
    original, revision = [a for a in attempts if a["record_id"] == rid]
    assert (original["attempt"], revision["attempt"]) == (0, 1)
    assert original["verdict"] == "failed" and original["rule"] == "code_tests_failed"
    assert original["model"] is None and original["template_hash"] is None
    assert re.fullmatch(r"[0-9a-f]{64}", original["code_sha256"])
    assert "second_largest" not in original["detail"]  # ledger-safe: test lines and types, no code
    assert revision["verdict"] == "passed" and revision["rule"] is None
    assert revision["model"] == MODEL
    assert revision["template_hash"] == PromptSet.load("code_revision").hash
    assert revision["cache_hit"] is False and revision["prompt_tokens"] > 0
    assert revision["code_sha256"] != original["code_sha256"]
    with first.con() as con:
        trace = provenance.trace(con, rid)
    assert [(a["attempt"], a["verdict"]) for a in trace["verification_attempts"]] == [
        (0, "failed"),
        (1, "passed"),
    ]
    assert [r["attempt"] for r in trace["code_test_results"]] == [1]


def test_a_revised_record_is_judged_on_its_revised_answer(server: ChatServer) -> None:
    # Judging code too, without Dagster: the judge must see the answer that is kept, not the one the
    # revision replaced (which the scripted judge scores 1).
    text, code, asserts = PROBLEMS[0]
    row = record(
        "code:0",
        "code",
        fenced(code),
        prompt=code_task(text, asserts),
        tests="\n".join(asserts),
        entry_point=WRONG,
    )
    config = VerifyConfig.model_validate(
        {"revision": {"max_rounds": 1}, "judge": {"enabled": True, "min_score": MIN_SCORE, "tasks": ["code"]}}
    )
    endpoint = Endpoint(name=ENDPOINT, base_url=server.base_url, model=MODEL, api_key=Secret(API_KEY))
    with LLMClient(endpoint, backoff_seconds=0.0) as llm:
        result = Verifier(config, llm=llm).run(conform(pl.DataFrame([row])))
    assert result.rejected.is_empty()
    (kept,) = result.kept.to_dicts()
    assert kept["messages"][-1]["content"] == REVISED
    assert kept["verdict_detail"] == (
        f"3 of 3 tests passed after 1 revision(s); judge score 4.0 >= {MIN_SCORE} "
        f"(rubric {RUBRIC.name} v{RUBRIC.version})"
    )


# ---------------------------------------------------------------------------------------------
# 2. The judge


def test_low_scored_chats_are_rejected_with_a_ledger_safe_detail(first: Run) -> None:
    expected = judged_input(first)
    low = {rid for rid, hedges in expected.items() if hedges}
    assert len(low) >= 2 and len(expected) > len(low)
    rejected = ledger(first, "verified")
    assert {rid for rid, r in rejected.items() if r["rule"] == "judge_score_low"} == low
    for rid in low:  # the score, the threshold and the rubric: nothing of the record
        assert (
            rejected[rid]["detail"]
            == f"judge score 1.0 < {MIN_SCORE} (rubric {RUBRIC.name} v{RUBRIC.version})"
        )
    verified = {r["record_id"]: r for r in first.rows("SELECT record_id, verdict_detail FROM verified")}
    for rid in set(expected) - low:
        assert f"judge score 4.0 >= {MIN_SCORE}" in verified[rid]["verdict_detail"]


def test_every_judged_record_has_a_judgment_with_rationale(first: Run) -> None:
    expected = judged_input(first)
    judgments = {r["record_id"]: r for r in first.rows("SELECT * FROM judgments")}
    assert set(judgments) == set(expected)
    for rid, hedges in expected.items():
        judgment = judgments[rid]
        assert judgment["judge_score"] == (1.0 if hedges else 4.0)
        assert judgment["judge_status"] == "scored" and judgment["judge_rationale"]
        assert judgment["judge_model"] == MODEL
        assert (judgment["judge_rubric"], judgment["judge_rubric_version"]) == (RUBRIC.name, RUBRIC.version)
    low = next(rid for rid, hedges in expected.items() if hedges)
    with first.con() as con:
        trace = provenance.trace(con, low)
    (judgment,) = trace["judgments"]
    assert judgment["judge_score"] == 1.0 and "guesses" in judgment["judge_rationale"]
    last = trace["stages"][-1]
    assert (last["stage"], last["status"], last["rule"]) == ("verified", "rejected", "judge_score_low")


# ---------------------------------------------------------------------------------------------
# 3. Metadata and secrets


def test_the_verified_asset_reports_pass_rates_judge_agreement_sandbox_and_usage(first: Run) -> None:
    metadata = first.metadata
    assert metadata["sandbox"] == host_isolation().describe()
    assert metadata["notices"] == "none" and "sandbox_notes" in metadata
    judged = judged_input(first)
    low = sum(judged.values())
    verifiers = {r.data["verifier"]: r.data for r in metadata["pass_rates"].records}
    assert (verifiers["judge"]["passed"], verifiers["judge"]["failed"]) == (len(judged) - low, low)
    assert (verifiers["code"]["passed"], verifiers["code"]["failed"]) == (len(code_input(first)), 0)
    assert metadata["judge_agreement"]["judge_records"] == len(judged)
    assert metadata["judge_agreement"]["judge_scored"] == len(judged)
    assert metadata["judge_mean_score"] == round((1 * low + 4 * (len(judged) - low)) / len(judged), 3)
    assert 0 < metadata["llm_requests"] == first.requests == len(judged) + len(wrong_records(first))
    assert metadata["llm_failures"] == 0 and metadata["llm_cache_hits"] == 0


def test_the_api_key_is_in_neither_the_database_nor_the_lineage_events(first: Run) -> None:
    assert API_KEY.encode() not in (first.home / "thresher.duckdb").read_bytes()
    lineage = [p for p in (first.home / "lineage").rglob("*") if p.is_file()]
    assert lineage
    for path in lineage:
        assert API_KEY.encode() not in path.read_bytes(), path


# ---------------------------------------------------------------------------------------------
# 4. A second materialization is served from the cache


def test_a_second_materialization_sends_nothing_and_verifies_the_same(
    first: Run, second: tuple[list[dict[str, Any]], Run]
) -> None:
    before, again = second
    assert again.requests == 0
    assert again.rows(VERIFIED_ROWS) == before
    rid = record_of(again, WRONG)
    attempts = again.rows(f"SELECT attempt, cache_hit FROM verification_attempts WHERE record_id = '{rid}'")
    assert sorted((a["attempt"], a["cache_hit"]) for a in attempts) == [(0, None), (1, True)]
    assert {r["judge_cache_hit"] for r in again.rows("SELECT judge_cache_hit FROM judgments")} == {True}
    assert again.metadata["llm_requests"] == 0 and again.metadata["llm_cache_hits"] == first.requests


# ---------------------------------------------------------------------------------------------
# 5. No endpoint: judge and revision loop are skipped with a notice


def test_without_an_endpoint_the_judge_and_the_revision_loop_are_skipped(offline: Run) -> None:
    assert "LLM judge skipped" in offline.metadata["notices"]
    assert "code revision loop skipped" in offline.metadata["notices"]
    assert not any(k.startswith(("judge_", "llm_")) for k in offline.metadata)
    rejected = ledger(offline, "verified")
    assert {rid: r["rule"] for rid, r in rejected.items()} == {
        rid: "code_tests_failed" for rid in wrong_records(offline)
    }
    verified = {r["record_id"] for r in offline.rows("SELECT record_id FROM verified")}
    assert set(judged_input(offline)) <= verified
    assert offline.rows("SELECT count(*) AS n FROM verification_attempts") == [{"n": 0}]
    assert offline.rows("SELECT count(*) AS n FROM judgments") == [{"n": 0}]
