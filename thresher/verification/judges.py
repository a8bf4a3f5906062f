"""LLM judges: records scored against a rubric (pointwise) and two answers compared (pairwise).

Following the field's practice for LLM-as-a-judge:

- G-Eval / Prometheus: the prompt carries the rubric's criteria and one anchor description per score
  1..5, and the judge writes its rationale before its score (reasoning first, then the number).
- Several samples per record (``samples``, each with its own seed so they differ at temperature > 0),
  averaged; how well the samples agree (``sample_agreement``) says how far the scores can be trusted.
- MT-Bench pairwise: each pair is judged twice with the answers' positions swapped, and a winner is
  declared only when both orders agree; an inconsistent pair is a tie.

Replies are parsed leniently (JSON, fenced JSON, "Score: 4", "[[4]]"); a score that cannot be read or
is not an integer from 1 to 5 is null and counted, never guessed. The judge's rationale is model output
about a record, so it stays in the judge's own output frame (a side table); the outcomes of
``judge_outcomes`` name the rule, the score, the threshold and the rubric version, never record text.

Rubrics are YAML files (``thresher/rubrics/<name>.yaml`` or any path) versioned by a hash of their
content; prompt templates are ``thresher/prompts/judge/*.txt``, loaded and versioned by
``PromptSet`` like the LLM recipes'. Both go into the requests, so editing either re-judges (the
response cache is keyed by the request). No Dagster imports.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import yaml
from scipy import stats

import thresher.llm_recipes as llm_recipes  # a module import: llm_recipes imports thresher.verification
from thresher.config import JudgeConfig
from thresher.llm import ChatRequest, ChatResult, LLMClient
from thresher.prompts import PromptSet
from thresher.verification.outcomes import OUTCOME_SCHEMA, ROW, last_assistant_content

SCORES = (1, 2, 3, 4, 5)
RATIONALE_CHARS = 500
# A packaged rubric's name; anything else is a path.
_RUBRIC_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_RUBRIC_KEYS = ("name", "description", "criteria", "anchors")
PROMPT_SLOTS: dict[str, frozenset[str]] = {
    "pointwise": frozenset({"rubric", "description", "criteria", "anchors", "conversation", "answer"}),
    "pairwise": frozenset(
        {"rubric", "description", "criteria", "anchors", "conversation", "answer_first", "answer_second"}
    ),
}

# Pointwise status of a record: a mean score, every reply unreadable, every call failed, nothing to judge.
SCORED, UNPARSEABLE, FAILED, NO_ANSWER = "scored", "unparseable", "failed", "no_answer"

JUDGED_SCHEMA: dict[str, pl.DataType] = {
    "record_id": pl.String,
    # Mean of the valid samples; null when none is valid.
    "judge_score": pl.Float64,
    # One entry per sample in sample order, null where the sample gave no valid score.
    "judge_scores": pl.List(pl.Int64),
    # The first valid sample's rationale, cut to RATIONALE_CHARS: model output about the record.
    "judge_rationale": pl.String,
    "judge_status": pl.String,
    # Samples whose reply had no readable score from 1 to 5 / whose call failed or was not sent.
    "judge_unparseable_samples": pl.Int64,
    "judge_failed_samples": pl.Int64,
    "judge_model": pl.String,
    "judge_rubric": pl.String,
    "judge_rubric_version": pl.String,
    "judge_template_hash": pl.String,
    # Every sample was answered from the response cache; null when nothing was asked.
    "judge_cache_hit": pl.Boolean,
}

COMPARED_SCHEMA: dict[str, pl.DataType] = {
    "pair_id": pl.String,
    # "a", "b", or "tie" (also when the two orders disagree); null unless both orders gave a verdict.
    "judge_verdict": pl.String,
    # Each order's verdict in terms of answer_a / answer_b: shown as (a, b), and swapped as (b, a).
    "judge_verdict_a_first": pl.String,
    "judge_verdict_b_first": pl.String,
    "position_consistent": pl.Boolean,
    # The first readable order's rationale, cut to RATIONALE_CHARS.
    "judge_rationale": pl.String,
    # "judged", "unparseable" (a reply without a readable verdict) or "failed" (a call failed).
    "judge_status": pl.String,
    "judge_model": pl.String,
    "judge_rubric": pl.String,
    "judge_rubric_version": pl.String,
    "judge_template_hash": pl.String,
    "judge_cache_hit": pl.Boolean,
}


# ---------------------------------------------------------------------------------------------
# Rubrics


@dataclass(frozen=True)
class Rubric:
    """What a judge measures: criteria, and what an answer at each score 1..5 looks like."""

    name: str
    description: str
    criteria: tuple[str, ...]
    anchors: Mapping[int, str]  # score -> anchor description, for every score in SCORES
    version: str  # first 12 hex digits of SHA-256 over the rubric file's bytes

    @property
    def label(self) -> str:
        """``helpfulness v1a2b3c4d5e6f``: how details and metadata name the rubric."""
        return f"{self.name} v{self.version}"


def _rubric_folder() -> Traversable:
    return resources.files("thresher").joinpath("rubrics")


def available_rubrics() -> list[str]:
    """Names of the rubrics shipped in ``thresher/rubrics/``."""
    return sorted(
        e.name.removesuffix(".yaml") for e in _rubric_folder().iterdir() if e.name.endswith(".yaml")
    )


def load_rubric(name_or_path: str | Path) -> Rubric:
    """A packaged rubric by name (``thresher/rubrics/<name>.yaml``), else a YAML file by path.

    Raises ValueError naming the file and the problem, so a bad rubric fails at configuration time.
    """
    if isinstance(name_or_path, str) and _RUBRIC_NAME.match(name_or_path):
        source: Traversable | Path = _rubric_folder().joinpath(f"{name_or_path}.yaml")
        if not source.is_file():
            raise ValueError(
                f"unknown rubric {name_or_path!r}; packaged rubrics: {available_rubrics()} "
                "(or give the path of a YAML file)"
            )
        where, expected_name = f"{name_or_path!r}", name_or_path
    else:
        source = Path(name_or_path)
        if not source.is_file():
            raise ValueError(f"rubric file {str(source)!r} does not exist")
        where, expected_name = f"file {str(source)!r}", None
    content = source.read_bytes()
    try:
        document = yaml.safe_load(content.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"rubric {where} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"rubric {where} is not valid YAML: {exc}") from None
    return _rubric(document, where, expected_name, hashlib.sha256(content).hexdigest()[:12])


def _rubric(document: Any, where: str, expected_name: str | None, version: str) -> Rubric:
    def fail(problem: str) -> ValueError:
        return ValueError(f"rubric {where}: {problem}")

    def text(value: Any, what: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise fail(f"{what} must be a non-empty string")
        return value.strip()

    if not isinstance(document, dict):
        raise fail(f"must be a mapping with the keys {list(_RUBRIC_KEYS)}")
    missing = [k for k in _RUBRIC_KEYS if k not in document]
    unknown = sorted(str(k) for k in document if k not in _RUBRIC_KEYS)
    if missing or unknown:
        raise fail(f"missing keys {missing}, unknown keys {unknown}; expected exactly {list(_RUBRIC_KEYS)}")
    name = text(document["name"], "name")
    if expected_name is not None and name != expected_name:
        raise fail(f"its name is {name!r}; a packaged rubric's name must match its file name")
    criteria = document["criteria"]
    if not isinstance(criteria, list) or not criteria:
        raise fail("criteria must be a non-empty list of strings")
    anchors = document["anchors"]
    expected = f"anchors must map exactly the scores {list(SCORES)} to their descriptions"
    if not isinstance(anchors, dict):
        raise fail(expected)
    # YAML reads `1:` as an int and `"1":` as a string; both mean score 1.
    by_score = {str(k).strip(): v for k, v in anchors.items()}
    if set(by_score) != {str(s) for s in SCORES} or len(by_score) != len(anchors):
        raise fail(f"{expected}, found {sorted(by_score)}")
    return Rubric(
        name=name,
        description=text(document["description"], "description"),
        criteria=tuple(text(c, f"criterion {i}") for i, c in enumerate(criteria, 1)),
        anchors={score: text(by_score[str(score)], f"anchor {score}") for score in SCORES},
        version=version,
    )


# ---------------------------------------------------------------------------------------------
# Parsing replies (pure functions: None instead of raising)

_NUMBER = r"(\d+(?:\.\d+)?)"
# The last of these in a reply is its score (the rationale comes first and may mention numbers).
_SCORE_MARK = re.compile(
    rf"\[\[\s*{_NUMBER}\s*\]\]"  # MT-Bench single-answer grading: "Rating: [[4]]"
    rf"|\[RESULT\]\s*{_NUMBER}"  # Prometheus: "Feedback: ... [RESULT] 4"
    rf"|[\"']?\b(?:score|rating)\b[\s*_\"']*(?:is|[:=])[\s*_\"']*{_NUMBER}",  # "Score: 4", "**Score:** 4/5"
    re.IGNORECASE,
)
_VERDICT_MARK = re.compile(
    r"\[\[\s*(A|B|C|tie)\s*\]\]"  # MT-Bench pairwise: [[A]], [[B]], [[C]] for a tie
    # Capital A / B only: "the winner is a ..." names no one.
    r"|[\"']?\b(?:winner|verdict)\b[\s*_\"']*(?:is|[:=])[\s*_\"']*((?-i:A|B)|tie)\b",
    re.IGNORECASE,
)
# Position in the prompt -> which shown answer; C is MT-Bench's tie.
_POSITIONS = {"a": "first", "b": "second", "c": "tie", "tie": "tie"}


@dataclass(frozen=True)
class Judgment:
    """One judge reply, read: ``value`` is None when the reply gave no valid score or verdict."""

    value: Any
    rationale: str | None


def score_value(value: Any) -> int | None:
    """An integer score in SCORES from a JSON value (4, 4.0, "4", "4/5"); None otherwise."""
    if isinstance(value, str):
        match = re.fullmatch(rf"\s*{_NUMBER}\s*(?:/\s*5\s*)?", value)
        value = float(match[1]) if match else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return int(value) if value == int(value) and int(value) in SCORES else None


def parse_score(reply: str) -> Judgment:
    """The score (an int in SCORES, else None) and rationale of a pointwise reply.

    A JSON object with a "score" (fenced or in prose) decides; otherwise the last "[[4]]",
    "[RESULT] 4" or "Score: 4" marker, with the text before it as the rationale.
    """
    found = llm_recipes.json_object(reply)
    if found is not None and "score" in found:
        return Judgment(score_value(found["score"]), _rationale(found.get("rationale")))
    marks = list(_SCORE_MARK.finditer(reply))
    if not marks:
        return Judgment(None, None)
    last = marks[-1]
    number = next(group for group in last.groups() if group is not None)
    return Judgment(score_value(number), _rationale(reply[: last.start()]))


def parse_verdict(reply: str) -> Judgment:
    """The verdict of a pairwise reply by position: "first", "second" or "tie" (else None).

    A JSON object with a "winner" decides; otherwise the last "[[A]]" or "Winner: A" marker.
    """
    found = llm_recipes.json_object(reply)
    if found is not None and "winner" in found:
        winner = found["winner"]
        # "A", "Assistant A", "tie"
        label = re.sub(r"^assistant\s+", "", winner.strip().lower()) if isinstance(winner, str) else ""
        position = _POSITIONS.get(label)
        return Judgment(position, _rationale(found.get("rationale")))
    marks = list(_VERDICT_MARK.finditer(reply))
    if not marks:
        return Judgment(None, None)
    last = marks[-1]
    label = next(group for group in last.groups() if group is not None)
    return Judgment(_POSITIONS[label.lower()], _rationale(reply[: last.start()]))


def _rationale(value: Any) -> str | None:
    """A rationale without surrounding blanks and markdown emphasis, cut to RATIONALE_CHARS."""
    text = value.strip(" \t\r\n*_#") if isinstance(value, str) else ""
    return text[:RATIONALE_CHARS] or None


# ---------------------------------------------------------------------------------------------
# Judges


def transcript(messages: pl.Expr) -> pl.Expr:
    """A conversation as the judge reads it: "### User:\\n..." turns separated by blank lines."""
    turn = pl.format(
        "### {}:\n{}",
        pl.element().struct.field("role").str.to_titlecase(),
        pl.element().struct.field("content"),
    )
    text = messages.list.eval(turn).list.join("\n\n")
    return pl.when(text.fill_null("") != "").then(text).otherwise(pl.lit("(no messages)"))


class _Judge:
    """What both judges share: the client, the rubric, the templates and the request settings."""

    def __init__(
        self,
        client: LLMClient,
        rubric: Rubric,
        *,
        temperature: float = 0.0,
        max_tokens: int = 512,
        seed: int = 0,
    ) -> None:
        self.client = client
        self.rubric = rubric
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.seed = seed
        self.prompts = PromptSet.load("judge")
        self.prompts.require(PROMPT_SLOTS)
        self.template_hash = self.prompts.hash
        self._rubric_slots = {
            "rubric": rubric.name,
            "description": rubric.description,
            "criteria": "\n".join(f"- {criterion}" for criterion in rubric.criteria),
            "anchors": "\n".join(f"Score {score}: {rubric.anchors[score]}" for score in SCORES),
        }

    def _request(self, template: str, seed: int, **slots: str) -> ChatRequest:
        prompt = self.prompts.render(template, **self._rubric_slots, **slots)
        return ChatRequest(
            messages=(("user", prompt),), temperature=self.temperature, max_tokens=self.max_tokens, seed=seed
        )

    def _provenance(self) -> dict[str, str]:
        return {
            "judge_model": self.client.endpoint.model,
            "judge_rubric": self.rubric.name,
            "judge_rubric_version": self.rubric.version,
            "judge_template_hash": self.template_hash,
        }


class PointwiseJudge(_Judge):
    """Scores each record's last assistant message from 1 to 5 against a rubric, ``samples`` times."""

    def __init__(
        self,
        client: LLMClient,
        rubric: Rubric,
        *,
        samples: int = 1,
        temperature: float = 0.0,
        max_tokens: int = 512,
        seed: int = 0,
    ) -> None:
        if samples < 1:
            raise ValueError("samples must be at least 1")
        super().__init__(client, rubric, temperature=temperature, max_tokens=max_tokens, seed=seed)
        self.samples = samples

    @classmethod
    def from_config(cls, client: LLMClient, config: JudgeConfig, *, seed: int = 0) -> PointwiseJudge:
        """The judge a ``verify.judge`` section describes (its rubric loaded and validated here)."""
        return cls(
            client,
            load_rubric(config.rubric),
            samples=config.samples,
            temperature=config.temperature,
            max_tokens=config.max_tokens,
            seed=seed,
        )

    def score(self, frame: pl.DataFrame) -> pl.DataFrame:
        """One ``JUDGED_SCHEMA`` row per row of ``frame`` (columns record_id, messages), in its order.

        The judged answer is the last assistant message, in the context of the messages before it;
        a record without one is ``no_answer`` and costs no request. Sample ``i`` is sent with seed
        ``seed + i``; all requests go in one ``complete`` call, so the client's cache and concurrency
        apply across records.
        """
        at = pl.col("messages").list.eval(pl.element().struct.field("role") == "assistant")
        answer_at = at.list.eval(pl.element().arg_true()).list.last()
        prepared = frame.select(
            "record_id",
            transcript(pl.col("messages").list.head(answer_at.fill_null(0))).alias("conversation"),
            last_assistant_content().alias("answer"),
        )
        # Rendering a template (str.format_map) and reading replies (JSON, regexes) have no vectorized
        # form; one Python step per record, next to one HTTP request per sample.
        rows = prepared.to_dicts()
        asked = [row["answer"] is not None and row["answer"].strip() != "" for row in rows]
        requests = [
            self._request("pointwise", self.seed + i, conversation=row["conversation"], answer=row["answer"])
            for row, ask in zip(rows, asked, strict=True)
            if ask
            for i in range(self.samples)
        ]
        results = iter(self.client.complete(requests) if requests else [])
        provenance = self._provenance()
        out = []
        for row, ask in zip(rows, asked, strict=True):
            replies = [next(results) for _ in range(self.samples)] if ask else []
            out.append({"record_id": row["record_id"], **_pointwise_row(replies), **provenance})
        return pl.DataFrame(out, schema=JUDGED_SCHEMA)


def _pointwise_row(replies: Sequence[ChatResult]) -> dict[str, Any]:
    """The judgment columns of one record from its samples' results (none: nothing was judged)."""
    readings = [parse_score(r.content) if r.content is not None else None for r in replies]
    scores = [reading.value if reading is not None else None for reading in readings]
    valid = [score for score in scores if score is not None]
    failed = sum(reading is None for reading in readings)
    unparseable = len(readings) - failed - len(valid)
    status = NO_ANSWER if not replies else SCORED if valid else UNPARSEABLE if unparseable else FAILED
    return {
        "judge_score": sum(valid) / len(valid) if valid else None,
        "judge_scores": scores,
        "judge_rationale": next(
            (reading.rationale for reading, score in zip(readings, scores, strict=True) if score is not None),
            None,
        ),
        "judge_status": status,
        "judge_unparseable_samples": unparseable,
        "judge_failed_samples": failed,
        "judge_cache_hit": all(r.cache_hit for r in replies) if replies else None,
    }


class PairwiseJudge(_Judge):
    """Decides which of two answers to the same conversation is better, judging both orders (each
    sent with ``seed``)."""

    def compare(self, pairs: pl.DataFrame) -> pl.DataFrame:
        """One ``COMPARED_SCHEMA`` row per row of ``pairs`` (columns pair_id, messages: the conversation
        both answers reply to, answer_a, answer_b), in its order.

        Each pair is asked twice, answer_a shown first and then answer_b shown first (MT-Bench's
        swap); the verdict is a winner only when both orders name it, otherwise a tie.
        """
        prepared = pairs.select(
            "pair_id", transcript(pl.col("messages")).alias("conversation"), "answer_a", "answer_b"
        )
        if prepared.select(pl.any_horizontal(pl.col("answer_a", "answer_b").is_null()).any()).item():
            raise ValueError("every pair needs both answer_a and answer_b")
        # As in PointwiseJudge.score: templates and replies are handled per pair in Python.
        rows = prepared.to_dicts()
        requests = [
            self._request(
                "pairwise",
                self.seed,
                conversation=row["conversation"],
                answer_first=first,
                answer_second=second,
            )
            for row in rows
            for first, second in ((row["answer_a"], row["answer_b"]), (row["answer_b"], row["answer_a"]))
        ]
        results = self.client.complete(requests) if requests else []
        provenance = self._provenance()
        out = [
            {"pair_id": row["pair_id"], **_pairwise_row(results[2 * i], results[2 * i + 1]), **provenance}
            for i, row in enumerate(rows)
        ]
        return pl.DataFrame(out, schema=COMPARED_SCHEMA)


def _pairwise_row(a_first: ChatResult, b_first: ChatResult) -> dict[str, Any]:
    """The verdict columns of one pair from its two orders' results."""
    readings = [parse_verdict(r.content) if r.content is not None else None for r in (a_first, b_first)]
    # Position -> answer: the first order showed (a, b), the swapped one (b, a).
    named = [{"first": "a", "second": "b", "tie": "tie"}, {"first": "b", "second": "a", "tie": "tie"}]
    verdicts = [
        names.get(reading.value) if reading is not None else None
        for names, reading in zip(named, readings, strict=True)
    ]
    both = None not in verdicts
    consistent = verdicts[0] == verdicts[1] if both else None
    status = "judged" if both else "failed" if None in readings else "unparseable"
    return {
        "judge_verdict": (verdicts[0] if consistent else "tie") if both else None,
        "judge_verdict_a_first": verdicts[0],
        "judge_verdict_b_first": verdicts[1],
        "position_consistent": consistent,
        "judge_rationale": next(
            (r.rationale for r in readings if r is not None and r.value is not None), None
        ),
        "judge_status": status,
        "judge_cache_hit": a_first.cache_hit and b_first.cache_hit,
    }


# ---------------------------------------------------------------------------------------------
# Verdicts of the verified stage


def judge_outcomes(frame: pl.DataFrame, judged: pl.DataFrame, min_score: float | None) -> pl.DataFrame:
    """Outcomes (``OUTCOME_SCHEMA``) for the rows of ``frame`` (columns ``ROW``, record_id) from
    ``PointwiseJudge.score`` output covering them.

    A score below ``min_score`` is rule ``judge_score_low``; a record without a score (every sample
    unreadable or failed, or no answer to judge) is kept as "not_applicable" with a detail saying
    why: a judge's failure is no evidence against a record. Details give scores, counts and the
    rubric version, never the rationale or record text.
    """
    joined = frame.select(ROW, "record_id").join(
        judged, on="record_id", how="left", validate="m:1", maintain_order="left"
    )
    unjudged = joined.filter(pl.col("judge_status").is_null()).height
    if unjudged:
        raise ValueError(f"{unjudged} rows of frame have no judgment in judged")
    score = pl.col("judge_score")
    shown = score.round(2).cast(pl.String)
    rubric = pl.format("(rubric {} v{})", pl.col("judge_rubric"), pl.col("judge_rubric_version"))
    if min_score is None:
        low = pl.lit(False)
        low_detail = passed_detail = pl.format("judge score {} {}", shown, rubric)
    else:
        limit = pl.lit(str(float(min_score)))
        low = score < min_score  # null for unscored records, which then fall through
        low_detail = pl.format("judge score {} < {} {}", shown, limit, rubric)
        passed_detail = pl.format("judge score {} >= {} {}", shown, limit, rubric)
    failed_detail = pl.format(
        "judge failed: no valid score from {} samples ({} unparseable, {} failed calls) {}",
        pl.col("judge_scores").list.len(),
        pl.col("judge_unparseable_samples"),
        pl.col("judge_failed_samples"),
        rubric,
    )
    scored = score.is_not_null()
    return joined.select(
        ROW,
        verdict=pl.when(low)
        .then(pl.lit("failed"))
        .when(scored)
        .then(pl.lit("passed"))
        .otherwise(pl.lit("not_applicable")),
        rule=pl.when(low).then(pl.lit("judge_score_low")).otherwise(pl.lit(None, pl.String)),
        verdict_detail=pl.when(low)
        .then(low_detail)
        .when(scored)
        .then(passed_detail)
        .when(pl.col("judge_status") == NO_ANSWER)
        .then(pl.format("not judged: no assistant message {}", rubric))
        .otherwise(failed_detail),
    ).cast(OUTCOME_SCHEMA)


# ---------------------------------------------------------------------------------------------
# Agreement statistics (pure functions; NaN where a statistic is undefined)


def _sample_matrix(scores: Sequence[Sequence[float | None]]) -> np.ndarray:
    """Records x samples, NaN where a sample is missing (ragged rows padded)."""
    width = max((len(row) for row in scores), default=0)
    matrix = np.full((len(scores), width), np.nan)
    for i, row in enumerate(scores):  # ragged Python lists: no vectorized constructor
        matrix[i, : len(row)] = [np.nan if v is None else v for v in row]
    return matrix


def krippendorff_alpha_interval(units: Sequence[Sequence[float | None]]) -> float:
    """Krippendorff's alpha with the interval metric, missing values allowed.

    ``units[u]`` are the values the coders (here: samples) gave unit ``u`` (None: missing). Only units
    with two or more values count. alpha = 1 - D_o / D_e over the pairable values, computed from sums
    of squares: sum over ordered pairs of (v_i - v_j)^2 within a set of m values = 2 m SS. NaN when
    fewer than two values are pairable or they do not vary.
    """
    values = _sample_matrix(units)
    counts = (~np.isnan(values)).sum(axis=1)
    values, counts = values[counts >= 2], counts[counts >= 2]
    n = counts.sum()
    if n < 2:
        return math.nan
    unit_ss = np.nansum((values - np.nanmean(values, axis=1, keepdims=True)) ** 2, axis=1)
    total_ss = np.nansum((values - np.nanmean(values)) ** 2)
    if total_ss == 0:
        return math.nan
    return float(1 - (n - 1) * np.sum(counts * unit_ss / (counts - 1)) / (n * total_ss))


def sample_agreement(scores: Sequence[Sequence[float | None]]) -> dict[str, float]:
    """How consistently the judge scored each record across its samples (``judge_scores`` lists).

    ``records``: records with two or more valid samples (the rest do not count); ``exact_agreement``
    and ``within_one_agreement``: shares of the sample pairs within a record that are equal / at most
    1 apart; ``krippendorff_alpha``: interval alpha with samples as coders; ``mean_std``: the mean over
    records of the samples' standard deviation (ddof=1).
    """
    values = _sample_matrix(scores)
    valid = ~np.isnan(values)
    pairs = same = close = 0
    for i in range(values.shape[1]):
        for j in range(i + 1, values.shape[1]):
            both = valid[:, i] & valid[:, j]
            gap = np.abs(values[both, i] - values[both, j])
            pairs += int(both.sum())
            same += int((gap == 0).sum())
            close += int((gap <= 1).sum())
    pairable = values[valid.sum(axis=1) >= 2]
    return {
        "records": float(len(pairable)),
        "exact_agreement": same / pairs if pairs else math.nan,
        "within_one_agreement": close / pairs if pairs else math.nan,
        "krippendorff_alpha": krippendorff_alpha_interval(scores),
        "mean_std": float(np.nanstd(pairable, axis=1, ddof=1).mean()) if len(pairable) else math.nan,
    }


def _paired(a: Sequence[float | None], b: Sequence[float | None]) -> tuple[np.ndarray, np.ndarray]:
    x = np.array([np.nan if v is None else v for v in a], dtype=float)
    y = np.array([np.nan if v is None else v for v in b], dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"score columns differ in length: {len(x)} and {len(y)}")
    both = ~(np.isnan(x) | np.isnan(y))
    return x[both], y[both]


def quadratic_weighted_kappa(a: Sequence[float | None], b: Sequence[float | None]) -> float:
    """Cohen's kappa with quadratic weights between two raters' scores (pairs with a None dropped).

    With weights (i - j)^2 the category table reduces to squared differences, the weights'
    normalisation cancelling: kappa = 1 - mean((a - b)^2) / (var a + var b + (mean a - mean b)^2),
    equal to the table form for integer scores and defined for means of samples too. NaN when the
    expected disagreement is zero (both raters constant and equal) or there are no pairs.
    """
    x, y = _paired(a, b)
    if len(x) == 0:
        return math.nan
    expected = x.var() + y.var() + (x.mean() - y.mean()) ** 2
    if expected == 0:
        return math.nan
    return float(1 - np.mean((x - y) ** 2) / expected)


def score_agreement(a: Sequence[float | None], b: Sequence[float | None]) -> dict[str, float]:
    """Agreement of two score columns over the rows where both have a score (two judges, or a judge
    and human labels): ``pairs``, ``exact_agreement``, ``within_one_agreement``,
    ``quadratic_weighted_kappa`` and ``spearman_rho`` (NaN when either column is constant)."""
    x, y = _paired(a, b)
    gap = np.abs(x - y)
    varies = len(x) >= 2 and np.ptp(x) > 0 and np.ptp(y) > 0
    return {
        "pairs": float(len(x)),
        "exact_agreement": float(np.mean(gap == 0)) if len(x) else math.nan,
        "within_one_agreement": float(np.mean(gap <= 1)) if len(x) else math.nan,
        "quadratic_weighted_kappa": quadratic_weighted_kappa(x, y),
        "spearman_rho": float(stats.spearmanr(x, y).statistic) if varies else math.nan,
    }


def pairwise_agreement(compared: pl.DataFrame) -> dict[str, float]:
    """Over ``PairwiseJudge.compare`` output: ``pairs`` with a verdict, ``position_consistency`` (the
    share of them whose two orders agreed) and the shares of verdicts a, b and tie."""
    verdicts = compared.filter(pl.col("judge_verdict").is_not_null())
    n = verdicts.height
    shares = {
        f"{v}_share": verdicts.filter(pl.col("judge_verdict") == v).height / n if n else math.nan
        for v in ("a", "b", "tie")
    }
    consistency = verdicts["position_consistent"].cast(pl.Float64).mean() if n else math.nan
    return {"pairs": float(n), "position_consistency": float(consistency), **shares}


def agreement_summary(
    judged: pl.DataFrame | None = None,
    compared: pl.DataFrame | None = None,
    *,
    reference: pl.DataFrame | None = None,
) -> dict[str, float]:
    """Flat numbers for materialization metadata: judge counts and mean score, sample agreement
    (``judge_samples_*``), agreement with ``reference`` scores (columns record_id, score, e.g. human
    labels; ``judge_vs_reference_*``) and pairwise statistics (``pairwise_*``). Undefined statistics
    (NaN) are left out."""
    summary: dict[str, float] = {}
    if judged is not None:
        status = pl.col("judge_status")
        counts = judged.select(
            judge_records=pl.len(),
            judge_scored=(status == SCORED).sum(),
            judge_no_answer=(status == NO_ANSWER).sum(),
            judge_unparseable_samples=pl.col("judge_unparseable_samples").sum(),
            judge_failed_samples=pl.col("judge_failed_samples").sum(),
            judge_mean_score=pl.col("judge_score").mean(),
        ).row(0, named=True)
        summary.update({k: float(v) for k, v in counts.items() if v is not None})
        summary.update(_prefixed("judge_samples_", sample_agreement(judged["judge_scores"].to_list())))
        if reference is not None:
            both = judged.join(reference.select("record_id", "score"), on="record_id", how="inner")
            agreement = score_agreement(both["judge_score"].to_list(), both["score"].to_list())
            summary.update(_prefixed("judge_vs_reference_", agreement))
    elif reference is not None:
        raise ValueError("reference scores need the judged frame to compare with")
    if compared is not None:
        summary.update(_prefixed("pairwise_", pairwise_agreement(compared)))
    return {k: v for k, v in summary.items() if not math.isnan(v)}


def _prefixed(prefix: str, values: Mapping[str, float]) -> dict[str, float]:
    return {f"{prefix}{k}": v for k, v in values.items()}
