"""The Llama 3 revision loop for code: failing code and what went wrong go back to the model, and its
revision is linted and tested again.

Llama 3 (§4.3.1, synthetic code data): "if the solution fails, the error message and code are fed back
to the model to revise", which turns many failures into verified records instead of dropping them.
Each round sends one request per still-failing record, all in one ``LLMClient.complete`` call; the
prompt carries the task (the record's first user turn), the failing code and the failure with the
failing test's source line and the exception message. Those reach the model only: the ledger and the
attempts table keep ledger-safe details. Requests are seeded by record id and round, so a re-run is
answered from the client's cache.

Prompt templates are package data under ``thresher/prompts/code_revision/`` (loaded like the LLM
recipes' templates; their hash versions every attempt).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from thresher.config import RevisionConfig
from thresher.hashing import sha256_hex
from thresher.llm import ChatRequest, ChatResult, LLMClient
from thresher.prompts import PromptSet
from thresher.verification.code import CodeCheck, CodeVerifier, extract_code

PROMPT_KIND = "code_revision"
PROMPT_SLOTS = {"system": frozenset(), "revise": frozenset({"task", "code", "failure"})}
REVISABLE_RULES = frozenset({"code_tests_failed", "code_syntax_error", "code_lint_error", "code_timeout"})
COUNTERS = ("requested", "fixed", "still_failing", "unparseable", "request_failed")
# The check of a reply without Python code (the verifier's rule for an answer without code).
NO_CODE = CodeCheck("failed", "code_missing", "no Python code found in the revision")

VERIFICATION_ATTEMPTS_SCHEMA: dict[str, pl.DataType] = {
    "record_id": pl.String,
    # 0: the code as it came; n: the n-th revision.
    "attempt": pl.Int64,
    # Of the code checked (null when a reply had no code or the request failed).
    "code_sha256": pl.String,
    "verdict": pl.String,
    "rule": pl.String,
    "detail": pl.String,
    # The model call behind a revision (null for attempt 0).
    "model": pl.String,
    "template_hash": pl.String,
    "cache_hit": pl.Boolean,
    "prompt_tokens": pl.Int64,
    "completion_tokens": pl.Int64,
}


@dataclass
class Revised:
    """Where the loop left each record (aligned with the checks it was given)."""

    checks: list[CodeCheck]  # the last check of each record's code
    attempts: list[int]  # the attempt that check belongs to (0: the original code)
    answers: list[str | None]  # the model's reply, for records whose revision passed
    table: pl.DataFrame  # VERIFICATION_ATTEMPTS_SCHEMA: every attempt of every revised record


def revision_seed(record_id: str, round_number: int) -> int:
    """The request seed of a record's revision round: stable, and different for every round."""
    digest = hashlib.sha256(f"code_revision\x1f{record_id}\x1f{round_number}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1  # 31 bits: accepted by every server


class CodeReviser:
    """Asks ``llm`` to revise failing code, up to ``config.max_rounds`` times per record."""

    def __init__(self, config: RevisionConfig, llm: LLMClient) -> None:
        self.config = config
        self.llm = llm
        self.prompts = PromptSet.load(PROMPT_KIND)
        self.prompts.require(PROMPT_SLOTS)
        self.template_hash = self.prompts.hash

    def request(
        self, record_id: str, task: str | None, code: str, check: CodeCheck, round_number: int
    ) -> ChatRequest:
        """The revision request for ``code`` that failed ``check``."""
        user = self.prompts.render(
            "revise",
            task=(task or "").strip() or "(no task statement)",
            code=code.strip("\n"),
            failure=check.feedback,
        )
        return ChatRequest(
            messages=(("system", self.prompts.render("system")), ("user", user)),
            temperature=self.config.temperature,
            max_tokens=self.config.max_tokens,
            seed=revision_seed(record_id, round_number),
        )

    def revise(
        self,
        records: pl.DataFrame,
        checks: Sequence[CodeCheck],
        verifier: CodeVerifier,
        counters: Counter[str],
    ) -> Revised:
        """Revise the records (``record_id``, ``task``, ``code``, ``tests``) whose ``checks`` failed with
        a revisable rule; every round is one ``complete`` call, one lint and one batch of sandbox runs."""
        record_ids, tasks, codes, tests = (
            records[c].to_list() for c in ("record_id", "task", "code", "tests")
        )
        final = list(checks)
        attempts = [0] * len(checks)
        answers: list[str | None] = [None] * len(checks)
        looping = [i for i, check in enumerate(checks) if check.revisable and check.rule in REVISABLE_RULES]
        rows = [_attempt_row(record_ids[i], 0, codes[i], checks[i]) for i in looping]
        latest = list(codes)  # the last code checked, which the next round revises
        pending = looping
        for round_number in range(1, self.config.max_rounds + 1):
            if not pending:
                break
            requests = [
                self.request(record_ids[i], tasks[i], latest[i], final[i], round_number) for i in pending
            ]
            results = self.llm.complete(requests)
            counters["revision.requested"] += len(requests)
            revised_codes = _codes([result.content for result in results])
            to_check: list[tuple[int, str, ChatResult]] = []
            still_pending = []
            for i, result, code in zip(pending, results, revised_codes, strict=True):
                call = self._call_facts(result)
                if result.content is None:  # failed or unsent (budget): asking again will not help
                    counters["revision.request_failed"] += 1
                    failed = CodeCheck("not_checked", None, f"the revision request failed ({result.error})")
                    rows.append(_attempt_row(record_ids[i], round_number, None, failed, **call))
                elif code is None:  # ask again next round (the seed changes with the round)
                    counters["revision.unparseable"] += 1
                    rows.append(_attempt_row(record_ids[i], round_number, None, NO_CODE, **call))
                    still_pending.append(i)
                else:
                    to_check.append((i, code, result))
            rechecked = verifier.check(
                [code for _, code, _ in to_check], [tests[i] for i, _, _ in to_check], counters
            )
            for (i, code, result), check in zip(to_check, rechecked, strict=True):
                rows.append(
                    _attempt_row(record_ids[i], round_number, code, check, **self._call_facts(result))
                )
                final[i], latest[i], attempts[i] = check, code, round_number
                if check.rule is None:  # kept: with the answer whose code passed
                    answers[i] = result.content
                elif check.revisable:
                    still_pending.append(i)
            pending = sorted(still_pending)
        fixed = sum(final[i].rule is None for i in looping)
        counters["revision.fixed"] += fixed
        counters["revision.still_failing"] += len(looping) - fixed
        for name in COUNTERS:
            counters[f"revision.{name}"] += 0
        return Revised(final, attempts, answers, _attempts_table(rows))

    def _call_facts(self, result: ChatResult) -> dict[str, Any]:
        """The attempts-table columns that describe the model call behind a revision."""
        return {
            "model": self.llm.endpoint.model,
            "template_hash": self.template_hash,
            "cache_hit": result.cache_hit,
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
        }


def _codes(replies: Sequence[str | None]) -> list[str | None]:
    """The code the verifier would take from each reply (``extract_code``)."""
    frame = pl.DataFrame({"reply": list(replies)}, schema={"reply": pl.String})
    return frame.select(extract_code(pl.col("reply")))["reply"].to_list()


def _attempt_row(
    record_id: str, attempt: int, code: str | None, check: CodeCheck, **call: Any
) -> dict[str, Any]:
    """One attempts-table row (``call``: the model call's facts, absent for attempt 0)."""
    row = {"record_id": record_id, "attempt": attempt, "code": code, "verdict": check.verdict}
    return row | {"rule": check.rule, "detail": check.detail, **call}


def _attempts_table(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """The rows with the code replaced by its SHA-256 (the code itself is in the record or nowhere)."""
    columns = {"code": pl.String} | {
        c: t for c, t in VERIFICATION_ATTEMPTS_SCHEMA.items() if c != "code_sha256"
    }
    frame = pl.DataFrame(rows, schema=columns)
    return frame.with_columns(code_sha256=sha256_hex(frame["code"])).select(
        list(VERIFICATION_ATTEMPTS_SCHEMA)
    )
