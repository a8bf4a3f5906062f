"""Specification of the LLM judges: rubrics, reading judge replies, pointwise scores over samples,
pairwise comparison with swapped positions, agreement statistics and the verdicts of the verified
stage, against a real chat-completions HTTP server (tests/chat_server.py) through a real LLMClient."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pytest

from tests.chat_server import ChatServer
from tests.conftest import CORPORA
from thresher.config import IngestConfig, JudgeConfig
from thresher.ingest import read_file
from thresher.llm import Endpoint, LLMClient, ResponseCache
from thresher.llm_recipes import PromptSet
from thresher.records import RECORD_SCHEMA
from thresher.verification.judges import (
    COMPARED_SCHEMA,
    JUDGED_SCHEMA,
    RATIONALE_CHARS,
    PairwiseJudge,
    PointwiseJudge,
    agreement_summary,
    available_rubrics,
    judge_outcomes,
    krippendorff_alpha_interval,
    load_rubric,
    pairwise_agreement,
    parse_score,
    parse_verdict,
    quadratic_weighted_kappa,
    sample_agreement,
    score_agreement,
)
from thresher.verification.outcomes import OUTCOME_SCHEMA, ROW

RUBRICS = Path(__file__).resolve().parents[1] / "thresher" / "rubrics"
SEED_TASKS = CORPORA / "instruct" / "self_instruct" / "seed_tasks.jsonl"
API_KEY = "sk-judge-0123456789abcdef"

# ---------------------------------------------------------------------------------------------
# Helpers


@pytest.fixture
def client(chat_server: ChatServer) -> Iterator[LLMClient]:
    endpoint = Endpoint(name="test-endpoint", base_url=chat_server.base_url, model="judge-model")
    with LLMClient(endpoint, backoff_seconds=0.0, max_retries=0) as llm:
        yield llm


def records(*conversations: list[tuple[str, str]]) -> pl.DataFrame:
    """Records r0, r1, ... with the given (role, content) messages."""
    rows = [
        {"record_id": f"r{i}", "messages": [{"role": r, "content": c} for r, c in conversation]}
        for i, conversation in enumerate(conversations)
    ]
    return pl.DataFrame(rows, schema={"record_id": pl.String, "messages": RECORD_SCHEMA["messages"]})


def answered(*answers: str) -> pl.DataFrame:
    return records(*[[("user", f"Question {i}?"), ("assistant", a)] for i, a in enumerate(answers)])


def prompt_of(body: dict[str, Any]) -> str:
    return body["messages"][-1]["content"]


def between(text: str, tag: str) -> str:
    return re.search(rf"(?s)<{tag}>\n(.*?)\n</{tag}>", text)[1]


# Judge replies in the shapes models give; an answer "style <name>" makes the scripted judge use one.
STYLES = {
    "json4": json.dumps({"rationale": "Covers every part of the request.", "score": 4}),
    "fenced5": 'My judgment:\n```json\n{"rationale": "Complete and exact.", "score": 5}\n```',
    "free4": "The answer is right but a step is terse.\n\nScore: 4",
    "brackets3": "Adequate, with gaps. Rating: [[3]]",
    "unclosed2": '{"rationale": "Misses the point.", "score": 2',
    "malformed": '{"rationale": "The answer is',
    "outofrange": json.dumps({"rationale": "Superb.", "score": 7}),
    "prose": "I think this answer is quite good overall.",
}


def styled(body: dict[str, Any]) -> str:
    """A pointwise judge that answers in the style its answer asks for."""
    return STYLES[re.search(r"style (\w+)", between(prompt_of(body), "answer"))[1]]


def judge(client: LLMClient, rubric: str = "helpfulness", **options: Any) -> PointwiseJudge:
    return PointwiseJudge(client, load_rubric(rubric), **options)


def by_id(frame: pl.DataFrame, key: str = "record_id") -> dict[str, dict[str, Any]]:
    return {row[key]: row for row in frame.iter_rows(named=True)}


# ---------------------------------------------------------------------------------------------
# Rubrics


def test_the_packaged_rubrics_load_and_are_versioned_by_their_content() -> None:
    assert {"helpfulness", "correctness", "instruction_following", "pairwise_preference"} <= set(
        available_rubrics()
    )
    for name in available_rubrics():
        rubric = load_rubric(name)
        content = (RUBRICS / f"{name}.yaml").read_bytes()
        assert rubric.name == name
        assert rubric.version == hashlib.sha256(content).hexdigest()[:12]
        assert rubric.label == f"{name} v{rubric.version}"
        assert sorted(rubric.anchors) == [1, 2, 3, 4, 5]
        assert rubric.description and rubric.criteria and all(rubric.anchors.values())


def test_a_rubric_can_be_a_path_and_any_edit_changes_its_version(tmp_path: Path) -> None:
    path = tmp_path / "tone.yaml"
    text = (
        "name: tone\ndescription: Politeness.\ncriteria:\n  - Polite.\nanchors:\n"
        + "".join(f'  "{s}": Level {s}.\n' for s in range(1, 6))  # quoted keys mean the same scores
    )
    path.write_text(text)
    first = load_rubric(path)
    assert (first.name, first.criteria, first.anchors[3]) == ("tone", ("Polite.",), "Level 3.")
    path.write_text(text.replace("Level 3.", "Level three."))
    assert load_rubric(str(path)).version != first.version


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("- a list\n", "must be a mapping"),
        ("name: x\ndescription: d\ncriteria: [c]\n", "missing keys ['anchors']"),
        (
            "name: x\ndescription: d\ncriteria: [c]\nanchors: {1: a, 2: b, 3: c, 4: d, 5: e}\nweight: 2\n",
            "unknown keys ['weight']",
        ),
        ("name: x\ndescription: d\ncriteria: [c]\nanchors: {1: a, 2: b, 3: c, 4: d}\n", "exactly the scores"),
        ("name: x\ndescription: d\ncriteria: [c]\nanchors: {1: a, 2: b, 3: c, 4: d, 6: e}\n", "found"),
        ("name: x\ndescription: d\ncriteria: []\nanchors: {1: a, 2: b, 3: c, 4: d, 5: e}\n", "criteria"),
        ("name: x\ndescription: ''\ncriteria: [c]\nanchors: {1: a, 2: b, 3: c, 4: d, 5: e}\n", "description"),
        ("name: x\ndescription: d\ncriteria: [c]\nanchors: {1: a, 2: b, 3: c, 4: d, 5: 7}\n", "anchor 5"),
        ("name: [x\n", "not valid YAML"),
    ],
)
def test_a_malformed_rubric_is_rejected_with_the_file_and_the_problem(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"bad\.yaml") as error:
        load_rubric(path)
    assert problem in str(error.value)


def test_an_unknown_rubric_name_lists_the_packaged_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown rubric 'kindness'.*'helpfulness'"):
        load_rubric("kindness")
    with pytest.raises(ValueError, match="does not exist"):
        load_rubric("rubrics/kindness.yaml")


# ---------------------------------------------------------------------------------------------
# Reading replies


@pytest.mark.parametrize(
    ("reply", "score", "rationale"),
    [
        ('{"rationale": "Good.", "score": 4}', 4, "Good."),
        ('Sure.\n```json\n{"rationale": "Fine.", "score": 5}\n```\nThanks.', 5, "Fine."),
        ('{"score": "3"}', 3, None),
        ('{"score": "2/5", "rationale": "Weak."}', 2, "Weak."),
        ('{"score": 4.0}', 4, None),
        ("It is correct but terse.\nScore: 4", 4, "It is correct but terse."),
        ("**Score:** 4/5", 4, None),
        ("Though 2 of 3 steps... the rating is 3", 3, "Though 2 of 3 steps... the"),
        ("Rating: [[2]]", 2, "Rating:"),
        ("Feedback: fine. [RESULT] 5", 5, "Feedback: fine."),
        ("First pass: Score: 2. On reflection, Score: 4", 4, "First pass: Score: 2. On reflection,"),
        ('{"rationale": "Cut off", "score": 3', 3, '{"rationale": "Cut off",'),
        # Not a score from 1 to 5: null, never clamped or rounded.
        ('{"rationale": "Superb.", "score": 7}', None, "Superb."),
        ('{"score": 4.5}', None, None),
        ('{"score": true}', None, None),
        ("Score: 0", None, None),
        ('{"rationale": "The answer', None, None),
        ("A good answer overall.", None, None),
        ("", None, None),
    ],
)
def test_scores_are_read_from_json_fences_and_free_text(reply: str, score: int | None, rationale: str | None):
    judgment = parse_score(reply)
    assert (judgment.value, judgment.rationale) == (score, rationale)


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ('{"rationale": "A is exact.", "winner": "A"}', "first"),
        ('```json\n{"winner": "b"}\n```', "second"),
        ('{"winner": "Assistant B"}', "second"),
        ('{"winner": "tie"}', "tie"),
        ("Both are fine. [[C]]", "tie"),
        ("B explains more. [[B]]", "second"),
        ("Verdict: A", "first"),
        ('{"winner": "both"}', None),
        ("They are hard to compare.", None),
    ],
)
def test_pairwise_verdicts_are_read_by_position(reply: str, verdict: str | None) -> None:
    assert parse_verdict(reply).value == verdict


# ---------------------------------------------------------------------------------------------
# Pointwise


def test_each_reply_shape_gives_its_score_and_the_unreadable_ones_are_null_and_counted(
    chat_server: ChatServer, client: LLMClient
) -> None:
    chat_server.reply = styled
    frame = answered(*[f"An answer, style {name}" for name in STYLES])
    judged = judge(client).score(frame)
    assert judged.schema == pl.Schema(JUDGED_SCHEMA)
    assert judged["record_id"].to_list() == frame["record_id"].to_list()
    got = dict(zip(STYLES, judged.select("judge_score", "judge_status").rows(), strict=True))
    assert got == {
        "json4": (4.0, "scored"),
        "fenced5": (5.0, "scored"),
        "free4": (4.0, "scored"),
        "brackets3": (3.0, "scored"),
        "unclosed2": (2.0, "scored"),
        "malformed": (None, "unparseable"),
        "outofrange": (None, "unparseable"),
        "prose": (None, "unparseable"),
    }
    assert judged["judge_unparseable_samples"].to_list() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert judged["judge_failed_samples"].sum() == 0
    assert judged["judge_rationale"][0] == "Covers every part of the request."
    assert judged["judge_rationale"][2] == "The answer is right but a step is terse."
    assert judged["judge_scores"].to_list()[:2] == [[4], [5]]
    assert judged["judge_scores"][5].to_list() == [None]
    assert set(judged["judge_model"]) == {"judge-model"}
    assert set(judged["judge_rubric"]) == {"helpfulness"}
    assert set(judged["judge_rubric_version"]) == {load_rubric("helpfulness").version}
    assert set(judged["judge_template_hash"]) == {PromptSet.load("judge").hash}


def test_the_judge_reads_the_rubric_the_conversation_and_the_last_answer_and_reasons_first(
    chat_server: ChatServer, client: LLMClient
) -> None:
    chat_server.reply = styled
    conversation = [
        ("system", "You are terse."),
        ("user", "Name a prime."),
        ("assistant", "Seven."),
        ("user", "Another one, as a set {like this}?"),
        ("assistant", "{11} (style json4)"),
    ]
    judge(client, "correctness", temperature=0.3, max_tokens=300, seed=5).score(records(conversation))
    (request,) = chat_server.chat_requests
    body = request.body
    prompt = prompt_of(body)
    rubric = load_rubric("correctness")
    assert rubric.description in prompt
    assert all(f"- {criterion}" in prompt for criterion in rubric.criteria)
    assert all(f"Score {s}: {rubric.anchors[s]}" in prompt for s in range(1, 6))
    assert between(prompt, "conversation") == (
        "### System:\nYou are terse.\n\n### User:\nName a prime.\n\n### Assistant:\nSeven.\n\n"
        "### User:\nAnother one, as a set {like this}?"
    )
    assert between(prompt, "answer") == "{11} (style json4)"
    # G-Eval / Prometheus: the reasoning comes before the score.
    assert prompt.index('"rationale"') < prompt.index('"score"')
    assert (body["temperature"], body["max_tokens"], body["seed"]) == (0.3, 300, 5)


def test_the_score_is_the_mean_of_the_valid_samples_each_sent_with_its_own_seed(
    chat_server: ChatServer, client: LLMClient
) -> None:
    by_seed = {10: STYLES["brackets3"], 11: STYLES["json4"], 12: STYLES["malformed"]}
    chat_server.reply = lambda body: by_seed[body["seed"]]
    judged = judge(client, samples=3, temperature=1.0, seed=10).score(answered("one", "two"))
    assert sorted(r.body["seed"] for r in chat_server.chat_requests) == [10, 10, 11, 11, 12, 12]
    row = judged.row(0, named=True)
    assert row["judge_scores"] == [3, 4, None]
    assert row["judge_score"] == 3.5
    assert row["judge_status"] == "scored"
    assert row["judge_unparseable_samples"] == 1
    assert row["judge_rationale"] == "Adequate, with gaps. Rating:"  # the first valid sample's


def test_failed_calls_are_counted_and_score_nothing(chat_server: ChatServer, client: LLMClient) -> None:
    chat_server.reply = styled
    chat_server.faults = lambda body: "400" if "doomed" in prompt_of(body) else None
    judged = judge(client, samples=2).score(answered("doomed answer, style json4", "fine, style json4"))
    rows = by_id(judged)
    assert rows["r0"]["judge_score"] is None
    assert rows["r0"]["judge_scores"] == [None, None]
    assert (rows["r0"]["judge_status"], rows["r0"]["judge_failed_samples"]) == ("failed", 2)
    assert (rows["r1"]["judge_score"], rows["r1"]["judge_failed_samples"]) == (4.0, 0)


def test_a_record_without_an_answer_costs_no_request(chat_server: ChatServer, client: LLMClient) -> None:
    chat_server.reply = styled
    frame = records([("user", "Anyone there?")], [("user", "Hi"), ("assistant", "  ")])
    judged = judge(client, samples=3).score(frame)
    assert chat_server.chat_requests == []
    assert judged["judge_status"].to_list() == ["no_answer", "no_answer"]
    assert judged["judge_scores"].to_list() == [[], []]
    assert judged["judge_cache_hit"].to_list() == [None, None]
    assert judge(client).score(frame.head(0)).schema == pl.Schema(JUDGED_SCHEMA)


def test_the_rationale_is_cut_to_500_characters(chat_server: ChatServer, client: LLMClient) -> None:
    chat_server.reply = lambda body: json.dumps({"rationale": "long " * 400, "score": 2})
    judged = judge(client).score(answered("anything"))
    assert len(judged["judge_rationale"][0]) == RATIONALE_CHARS == 500


def test_judging_is_deterministic_and_a_rerun_is_answered_from_the_cache(chat_server: ChatServer) -> None:
    chat_server.reply = styled
    frame = answered(*[f"Answer {i}, style {name}" for i, name in enumerate(STYLES)])
    endpoint = Endpoint(name="test-endpoint", base_url=chat_server.base_url, model="judge-model")
    with duckdb.connect() as con, LLMClient(endpoint, cache=ResponseCache(con), backoff_seconds=0) as llm:
        first = judge(llm, samples=2).score(frame)
        assert len(chat_server.chat_requests) == 2 * len(STYLES)
        chat_server.reset()
        second = judge(llm, samples=2).score(frame)
        assert chat_server.chat_requests == []
        assert first["judge_cache_hit"].to_list() == [False] * len(STYLES)
        assert second["judge_cache_hit"].to_list() == [True] * len(STYLES)
        assert second.drop("judge_cache_hit").equals(first.drop("judge_cache_hit"))
        # A different rubric is a different request: nothing of it comes from the cache.
        judge(llm, "instruction_following", samples=2).score(frame.head(1))
        assert len(chat_server.chat_requests) == 2
    with LLMClient(endpoint, backoff_seconds=0) as fresh:
        assert judge(fresh, samples=2).score(frame).equals(first)


def test_from_config_builds_the_judge_a_verify_judge_section_describes(client: LLMClient) -> None:
    config = JudgeConfig(enabled=True, rubric="correctness", samples=3, temperature=0.7, max_tokens=64)
    built = PointwiseJudge.from_config(client, config, seed=9)
    assert (built.rubric.name, built.samples, built.temperature, built.max_tokens, built.seed) == (
        "correctness",
        3,
        0.7,
        64,
        9,
    )
    with pytest.raises(ValueError, match="unknown rubric"):
        PointwiseJudge.from_config(client, JudgeConfig(rubric="nonexistent"))


def test_all_175_self_instruct_seed_tasks_are_judged_with_their_text_intact(
    chat_server: ChatServer, client: LLMClient
) -> None:
    if not SEED_TASKS.exists():
        pytest.skip(f"corpus not available: {SEED_TASKS}")
    seeds = read_file(SEED_TASKS, "seed-tasks", IngestConfig()).kept
    assert seeds.height == 175
    # Longer answers score higher: a deterministic judge that depends on what it was shown.
    chat_server.reply = lambda body: json.dumps(
        {"rationale": "ok", "score": min(5, 1 + len(between(prompt_of(body), "answer")) // 100)}
    )
    judged = judge(client).score(seeds.select("record_id", "messages"))
    assert judged["judge_status"].to_list() == ["scored"] * 175
    answers = seeds.select(pl.col("messages").list.last().struct.field("content").str.len_chars()).to_series()
    expected = (1 + answers // 100).clip(upper_bound=5).cast(pl.Float64)
    assert judged["judge_score"].to_list() == expected.to_list()
    shown = {between(prompt_of(r.body), "answer") for r in chat_server.chat_requests}
    assert shown == set(seeds["messages"].list.last().struct.field("content").to_list())


# ---------------------------------------------------------------------------------------------
# Pairwise


def pairs(*rows: tuple[str, str, str]) -> pl.DataFrame:
    """Pairs p0, p1, ... of (question, answer_a, answer_b)."""
    return pl.DataFrame(
        [
            {
                "pair_id": f"p{i}",
                "messages": [{"role": "user", "content": question}],
                "answer_a": a,
                "answer_b": b,
            }
            for i, (question, a, b) in enumerate(rows)
        ],
        schema={
            "pair_id": pl.String,
            "messages": RECORD_SCHEMA["messages"],
            "answer_a": pl.String,
            "answer_b": pl.String,
        },
    )


def pairwise(client: LLMClient) -> PairwiseJudge:
    return PairwiseJudge(client, load_rubric("pairwise_preference"))


def prefers_correct(body: dict[str, Any]) -> str:
    """A consistent judge: the answer that says "correct" wins, wherever it is shown."""
    prompt = prompt_of(body)
    first, second = ("correct" in between(prompt, tag) for tag in ("assistant_a", "assistant_b"))
    winner = "A" if first and not second else "B" if second and not first else "tie"
    return json.dumps({"rationale": "Compared both.", "winner": winner})


def test_a_consistent_judge_names_the_same_winner_in_both_orders(
    chat_server: ChatServer, client: LLMClient
) -> None:
    chat_server.reply = prefers_correct
    compared = pairwise(client).compare(
        pairs(
            ("2+2?", "5", "4, correct"),
            ("Capital of France?", "Paris, correct", "Lyon"),
            ("Color of the sky?", "blue", "azure"),
        )
    )
    assert compared.schema == pl.Schema(COMPARED_SCHEMA)
    assert compared.select(
        "judge_verdict", "judge_verdict_a_first", "judge_verdict_b_first", "position_consistent"
    ).rows() == [("b", "b", "b", True), ("a", "a", "a", True), ("tie", "tie", "tie", True)]
    assert compared["judge_status"].to_list() == ["judged"] * 3
    # Asked twice per pair, the answers' positions swapped the second time (MT-Bench).
    prompts = [prompt_of(r.body) for r in chat_server.chat_requests]
    shown = sorted(
        (between(p, "assistant_a"), between(p, "assistant_b"))
        for p in prompts
        if between(p, "conversation") == "### User:\n2+2?"
    )
    assert shown == [("4, correct", "5"), ("5", "4, correct")]
    assert len(prompts) == 6


def test_a_position_biased_judge_gives_a_tie_and_is_flagged_inconsistent(
    chat_server: ChatServer, client: LLMClient
) -> None:
    chat_server.reply = lambda body: json.dumps({"rationale": "The first is better.", "winner": "A"})
    compared = pairwise(client).compare(pairs(("2+2?", "5", "4, correct"), ("Hi?", "Hello", "Hey")))
    assert (
        compared.select(
            "judge_verdict", "judge_verdict_a_first", "judge_verdict_b_first", "position_consistent"
        ).rows()
        == [("tie", "a", "b", False)] * 2
    )
    assert pairwise_agreement(compared) == {
        "pairs": 2.0,
        "position_consistency": 0.0,
        "a_share": 0.0,
        "b_share": 0.0,
        "tie_share": 1.0,
    }


def test_a_pair_with_an_unreadable_or_failed_order_has_no_verdict(
    chat_server: ChatServer, client: LLMClient
) -> None:
    def reply(body: dict[str, Any]) -> str:
        shown_first = between(prompt_of(body), "assistant_a")
        return "I cannot decide." if shown_first == "unsure-first" else prefers_correct(body)

    chat_server.reply = reply
    chat_server.faults = lambda body: "500" if between(prompt_of(body), "assistant_a") == "fails" else None
    compared = pairwise(client).compare(pairs(("q", "ok", "unsure-first"), ("q", "fails", "correct")))
    assert compared.select(
        "judge_verdict",
        "judge_verdict_a_first",
        "judge_verdict_b_first",
        "position_consistent",
        "judge_status",
    ).rows() == [(None, "tie", None, None, "unparseable"), (None, None, "b", None, "failed")]
    with pytest.raises(ValueError, match="both answer_a and answer_b"):
        pairwise(client).compare(pairs(("q", "a", "b")).with_columns(answer_b=pl.lit(None, pl.String)))


# ---------------------------------------------------------------------------------------------
# Agreement statistics

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", the example with 4 observers
# and 12 units, missing values included; its published interval alpha is 0.849.
KRIPPENDORFF_2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


def test_krippendorffs_alpha_matches_the_published_example_and_a_hand_calculation() -> None:
    units = [list(unit) for unit in zip(*KRIPPENDORFF_2011, strict=True)]
    assert round(krippendorff_alpha_interval(units), 3) == 0.849
    # Units (1,1), (2,3), (3,3): n = 6 pairable values, D_o = 2/6, D_e = 58/30, alpha = 24/29.
    assert krippendorff_alpha_interval([[1, 1], [2, 3], [3, 3]]) == pytest.approx(24 / 29)
    assert krippendorff_alpha_interval([[1, 1], [4, 4, None], [5]]) == 1.0
    assert math.isnan(krippendorff_alpha_interval([[3, 3], [3, 3]]))  # no variation: undefined
    assert math.isnan(krippendorff_alpha_interval([[3], [4, None]]))  # nothing pairable


def table_kappa(a: list[int], b: list[int]) -> float:
    """Quadratic-weighted kappa by its textbook definition: 5x5 observed and expected tables."""
    observed = np.zeros((5, 5))
    for x, y in zip(a, b, strict=True):
        observed[x - 1, y - 1] += 1
    observed /= observed.sum()
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0))
    weights = np.subtract.outer(np.arange(5), np.arange(5)) ** 2 / 16
    return 1 - (weights * observed).sum() / (weights * expected).sum()


def test_quadratic_weighted_kappa_matches_the_table_definition() -> None:
    # mean squared difference 1/5; expected 2 + 2.56 + 0.04 = 4.6; kappa = 1 - 0.2 / 4.6 = 22/23.
    assert quadratic_weighted_kappa([1, 2, 3, 4, 5], [1, 2, 3, 5, 5]) == pytest.approx(22 / 23)
    a = [1, 2, 2, 3, 3, 3, 4, 4, 5, 5, 1, 4]
    b = [2, 2, 3, 3, 4, 2, 4, 5, 5, 3, 1, 1]
    assert quadratic_weighted_kappa(a, b) == pytest.approx(table_kappa(a, b))
    assert quadratic_weighted_kappa(a, b) == pytest.approx(quadratic_weighted_kappa(b, a))
    assert quadratic_weighted_kappa(a, a) == 1.0
    assert quadratic_weighted_kappa([1, 5], [5, 1]) == -1.0


def test_two_score_columns_are_compared_where_both_have_a_score() -> None:
    # Ranks differ by 1 at four places: rho = 1 - 6 * 4 / (5 * 24) = 0.8.
    agreement = score_agreement([1, 2, 3, 4, 5, None, 3], [2, 1, 4, 3, 5, 4, None])
    assert agreement["pairs"] == 5
    assert agreement["spearman_rho"] == pytest.approx(0.8)
    assert agreement["exact_agreement"] == pytest.approx(0.2)
    assert agreement["within_one_agreement"] == 1.0
    assert agreement["quadratic_weighted_kappa"] == pytest.approx(0.8)  # 1 - 0.8 / (2 + 2 + 0)
    assert math.isnan(score_agreement([3, 3, 3], [1, 2, 3])["spearman_rho"])


def test_sample_agreement_counts_pairs_of_samples_within_records() -> None:
    # Pairs: (3,4) r0; (4,4) r1; (2,5), (2,4), (5,4) r2; r3 and r4 have fewer than two valid samples.
    agreement = sample_agreement([[3, 4], [4, 4, None], [2, 5, 4], [5], [None, None]])
    assert agreement["records"] == 3
    assert agreement["exact_agreement"] == pytest.approx(1 / 5)
    assert agreement["within_one_agreement"] == pytest.approx(3 / 5)
    stds = [np.std([3, 4], ddof=1), 0.0, np.std([2, 5, 4], ddof=1)]
    assert agreement["mean_std"] == pytest.approx(np.mean(stds))
    assert agreement["krippendorff_alpha"] == krippendorff_alpha_interval([[3, 4], [4, 4], [2, 5, 4]])


def test_the_summary_for_asset_metadata_gathers_counts_agreement_and_leaves_out_undefined_values(
    chat_server: ChatServer, client: LLMClient
) -> None:
    by_seed = {0: STYLES["json4"], 1: STYLES["json4"], 2: STYLES["brackets3"]}
    chat_server.reply = lambda body: (
        styled(body) if "style" in between(prompt_of(body), "answer") else by_seed[body["seed"]]
    )
    judged = judge(client, samples=3).score(answered("plain", "plain too", "style malformed"))
    human = pl.DataFrame({"record_id": ["r0", "r1", "r2"], "score": [4.0, 3.0, 2.0]})
    compared = pl.DataFrame(
        {"judge_verdict": ["a", "tie", None], "position_consistent": [True, False, None]},
        schema={"judge_verdict": pl.String, "position_consistent": pl.Boolean},
    )
    summary = agreement_summary(judged, compared, reference=human)
    assert summary["judge_records"] == 3
    assert summary["judge_scored"] == 2
    assert summary["judge_unparseable_samples"] == 3
    assert summary["judge_mean_score"] == pytest.approx(11 / 3)
    assert summary["judge_samples_exact_agreement"] == pytest.approx(2 / 6)
    assert summary["judge_samples_within_one_agreement"] == 1.0
    assert summary["judge_vs_reference_pairs"] == 2
    assert summary["pairwise_position_consistency"] == 0.5
    assert (summary["pairwise_a_share"], summary["pairwise_tie_share"]) == (0.5, 0.5)
    # Two judged records with equal means: the Spearman rho against the labels is undefined.
    assert "judge_vs_reference_spearman_rho" not in summary
    assert all(isinstance(v, float) and not math.isnan(v) for v in summary.values())


# ---------------------------------------------------------------------------------------------
# Verdicts of the verified stage


def judged_rows(*rows: tuple[str, float | None, str, int, int, int]) -> pl.DataFrame:
    """Judge output rows (record_id, score, status, samples, unparseable, failed) for rubric helpfulness."""
    rubric = load_rubric("helpfulness")
    return pl.DataFrame(
        [
            {
                "record_id": record_id,
                "judge_score": score,
                "judge_scores": [None if score is None else round(score)] * samples,
                "judge_rationale": "PRIVATE rationale quoting the record" if score is not None else None,
                "judge_status": status,
                "judge_unparseable_samples": unparseable,
                "judge_failed_samples": failed,
                "judge_model": "judge-model",
                "judge_rubric": rubric.name,
                "judge_rubric_version": rubric.version,
                "judge_template_hash": "t",
                "judge_cache_hit": False,
            }
            for record_id, score, status, samples, unparseable, failed in rows
        ],
        schema=JUDGED_SCHEMA,
    )


def stage_frame(*record_ids: str) -> pl.DataFrame:
    return pl.DataFrame({"record_id": list(record_ids)}).with_row_index(ROW)


def test_records_below_min_score_are_rejected_with_numbers_and_the_rubric_version_only() -> None:
    version = load_rubric("helpfulness").version
    judged = judged_rows(
        ("low", 2.0, "scored", 1, 0, 0),
        ("edge", 3.0, "scored", 1, 0, 0),
        ("high", 4.6667, "scored", 3, 0, 0),
    )
    outcomes = judge_outcomes(stage_frame("low", "edge", "high"), judged, min_score=3.0)
    assert outcomes.schema == pl.Schema(OUTCOME_SCHEMA)
    assert outcomes.rows() == [
        (0, "failed", "judge_score_low", f"judge score 2.0 < 3.0 (rubric helpfulness v{version})"),
        (1, "passed", None, f"judge score 3.0 >= 3.0 (rubric helpfulness v{version})"),
        (2, "passed", None, f"judge score 4.67 >= 3.0 (rubric helpfulness v{version})"),
    ]
    assert not outcomes["verdict_detail"].str.contains("PRIVATE").any()


def test_unscored_records_are_kept_with_a_detail_saying_the_judge_failed() -> None:
    version = load_rubric("helpfulness").version
    judged = judged_rows(
        ("unreadable", None, "unparseable", 3, 2, 1),
        ("down", None, "failed", 1, 0, 1),
        ("silent", None, "no_answer", 0, 0, 0),
    )
    outcomes = judge_outcomes(stage_frame("silent", "unreadable", "down"), judged, min_score=5.0)
    assert outcomes.rows() == [
        (0, "not_applicable", None, f"not judged: no assistant message (rubric helpfulness v{version})"),
        (
            1,
            "not_applicable",
            None,
            "judge failed: no valid score from 3 samples (2 unparseable, 1 failed calls) "
            f"(rubric helpfulness v{version})",
        ),
        (
            2,
            "not_applicable",
            None,
            f"judge failed: no valid score from 1 samples (0 unparseable, 1 failed calls) "
            f"(rubric helpfulness v{version})",
        ),
    ]


def test_without_min_score_every_scored_record_passes() -> None:
    outcomes = judge_outcomes(stage_frame("a"), judged_rows(("a", 1.0, "scored", 1, 0, 0)), min_score=None)
    assert outcomes.select("verdict", "rule").rows() == [("passed", None)]
    assert outcomes["verdict_detail"][0].startswith("judge score 1.0 (rubric helpfulness v")
    with pytest.raises(ValueError, match="1 rows of frame have no judgment"):
        judge_outcomes(stage_frame("a", "b"), judged_rows(("a", 1.0, "scored", 1, 0, 0)), min_score=None)


def test_end_to_end_the_ledger_details_never_quote_the_record_or_the_rationale(
    chat_server: ChatServer, client: LLMClient
) -> None:
    chat_server.reply = lambda body: json.dumps(
        {"rationale": f"It says {between(prompt_of(body), 'answer')!r}, which is weak.", "score": 2}
    )
    frame = answered("My card is 4111 1111 1111 1111", "Call me at +1 555 0100").with_row_index(ROW)
    judged = judge(client).score(frame)
    assert "4111 1111 1111 1111" in judged["judge_rationale"][0]  # the side table may hold it
    outcomes = judge_outcomes(frame, judged, min_score=3.0)
    detail = f"judge score 2.0 < 3.0 (rubric helpfulness v{load_rubric('helpfulness').version})"
    assert outcomes.select("rule", "verdict_detail").rows() == [("judge_score_low", detail)] * 2


# ---------------------------------------------------------------------------------------------
# Secrets


def test_the_api_key_goes_only_into_the_authorization_header(chat_server: ChatServer) -> None:
    chat_server.api_key = API_KEY
    chat_server.reply = lambda body: styled(body) if "<answer>" in prompt_of(body) else prefers_correct(body)
    endpoint = Endpoint(name="secure", base_url=chat_server.base_url, model="judge-model", api_key=API_KEY)
    with LLMClient(endpoint, backoff_seconds=0) as llm:
        judged = judge(llm, samples=2).score(answered("style json4", "style malformed"))
        compared = pairwise(llm).compare(pairs(("q", "correct", "no")))
        outcomes = judge_outcomes(judged.with_row_index(ROW), judged, min_score=4.5)
        summary = agreement_summary(judged, compared)
        seen = [
            repr(llm.endpoint),
            str(llm.usage),
            *(json.dumps(frame.to_dicts(), default=str) for frame in (judged, compared, outcomes)),
            json.dumps(summary),
        ]
    assert judged["judge_status"].to_list() == ["scored", "unparseable"]
    assert all(API_KEY not in text for text in seen)
    for request in chat_server.chat_requests:
        assert request.headers["Authorization"] == f"Bearer {API_KEY}"
        assert API_KEY not in json.dumps(request.body)
