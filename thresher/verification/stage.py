"""The verified stage: each record goes to the verifiers that apply to it; outcomes become verdicts
or ledger rows.

Per task kind, code runs its tests in the sandbox (``code.py``, with the LLM revision loop of
``revision.py``) and math answers are checked (``math_answers.py``); across kinds, structured
answers are checked (``structure.py``: tool-call schemas, requested formats, paraphrases) and,
when enabled, an LLM judge scores records against a rubric (``judges.py``). A record is rejected by
the first verifier that fails it (in that order); otherwise its verdict is "passed" when any
verifier checked it, "not_applicable" when none could, and its detail lists what was checked.
"""

from __future__ import annotations

from collections import Counter

import polars as pl

from thresher.config import VerifyConfig
from thresher.llm import LLMClient
from thresher.records import MESSAGE, TaskKind
from thresher.stage import STAGE_LEDGER_COLUMNS, StageResult
from thresher.verification.code import CODE_TEST_RESULTS_SCHEMA, CodeVerifier
from thresher.verification.judges import JUDGED_SCHEMA, PointwiseJudge, judge_outcomes, load_rubric
from thresher.verification.math_answers import MathVerifier
from thresher.verification.outcomes import OUTCOME_SCHEMA, ROW, VERDICT_COLUMNS
from thresher.verification.revision import VERIFICATION_ATTEMPTS_SCHEMA, CodeReviser
from thresher.verification.structure import StructureVerifier

# Ledger rule -> one sentence for reviewers (shown with the counts in the UI).
RULE_DESCRIPTIONS = {
    "code_missing": "a code task whose answer holds no Python code",
    "code_syntax_error": "the code (or its tests) does not compile",
    "code_lint_error": "ruff finds an error-class problem (undefined name, invalid syntax or comparison)",
    "code_tests_failed": "the code fails at least one of its unit tests, or exits before they finish",
    "code_timeout": "the code did not finish within the time limit",
    "code_memory_limit": "the code exceeded the memory limit",
    "math_answer_missing": "a math solution without a final answer",
    "math_answer_mismatch": "the final answer differs from the reference, numerically and symbolically",
    "math_calculation_error": "a calculator annotation <<expr=result>> in the solution is wrong",
    "tool_call_invalid": "a tool call's arguments do not validate against the function's JSON Schema",
    "format_not_json": "the instruction asks for JSON and the answer does not parse as JSON",
    "label_not_in_set": "the instruction asks for one of a fixed set of labels and the answer is none of them",
    "paraphrase_drift": "a paraphrased instruction kept too little of its seed's wording (chrF)",
    "paraphrase_identical": "a paraphrase identical to its seed after normalization",
    "judge_score_low": "the LLM judge scored the record below verify.judge.min_score",
}


class Verifier:
    """The verified stage over one batch.

    With an ``llm`` client, failing code goes through the revision loop when
    ``config.revision.max_rounds > 0``, and records are judged when ``config.judge.enabled``; without
    one, both are skipped and ``notices`` says so.
    """

    def __init__(self, config: VerifyConfig, llm: LLMClient | None = None) -> None:
        self.config = config
        self.code = CodeVerifier(config)
        self.math = MathVerifier(config)
        self.structure = StructureVerifier(config.structure)
        self.reviser = (
            CodeReviser(config.revision, llm) if llm is not None and config.revision.max_rounds else None
        )
        self.judge = (
            PointwiseJudge.from_config(llm, config.judge)
            if llm is not None and config.judge.enabled
            else None
        )
        if config.judge.enabled:
            load_rubric(config.judge.rubric)  # a wrong rubric fails the run at once, LLM or not
        self.notices: list[str] = []
        if llm is None and config.revision.max_rounds:
            self.notices.append(
                "code revision loop skipped: no LLM endpoint configured (set THRESHER_LLM_BASE_URL and "
                "THRESHER_LLM_MODEL); failing code is rejected without revision"
            )
        if llm is None and config.judge.enabled:
            self.notices.append(
                "LLM judge skipped: no LLM endpoint configured (set THRESHER_LLM_BASE_URL and "
                "THRESHER_LLM_MODEL); records are not scored"
            )

    def run(self, records: pl.DataFrame, seeds: pl.DataFrame | None = None) -> StageResult:
        """Verify ``records``; ``seeds`` (``structure.seed_instructions``) resolves paraphrase seeds
        that are not in the batch."""
        frame = records.drop([c for c in VERDICT_COLUMNS if c in records.columns]).with_row_index(ROW)
        counters: Counter[str] = Counter()
        task = pl.col("task")
        code = frame.filter(task == TaskKind.CODE.value)
        maths = frame.filter(task == TaskKind.MATH.value)
        others = frame.filter(~task.is_in([TaskKind.CODE.value, TaskKind.MATH.value]).fill_null(True))
        passthrough = others.select(
            ROW,
            verdict=pl.lit("not_applicable"),
            rule=pl.lit(None, pl.String),
            verdict_detail=pl.when(task.is_in([TaskKind.CHAT.value, TaskKind.TOOL.value]))
            .then(pl.concat_str([task, pl.lit(" records are not verified")]))
            .otherwise(pl.lit("no verifier for this task kind")),
        )
        code_run = self.code.run(code, counters, self.reviser)
        by_task = pl.concat(
            [
                passthrough.cast(OUTCOME_SCHEMA),
                code_run.outcomes.cast(OUTCOME_SCHEMA),
                self.math.run(maths, counters).cast(OUTCOME_SCHEMA),
            ]
        )
        # What the later verifiers check, and what is kept: the answers as the revision loop left them.
        revised = with_revised_answers(frame, code_run.answers)
        structure = self.structure.run(revised, counters, seeds)
        outcomes = [by_task, structure]
        judged = pl.DataFrame(schema=JUDGED_SCHEMA)
        if self.judge is not None:
            # Only what is still in: a judge call for a record already rejected is money spent on nothing.
            rejected_rows = combine([by_task, structure]).filter(pl.col("rule").is_not_null())[ROW]
            candidates = revised.filter(
                task.is_in(self.config.judge.tasks) & ~pl.col(ROW).is_in(rejected_rows.implode())
            )
            judged = self.judge.score(candidates)
            judge = judge_outcomes(candidates, judged, self.config.judge.min_score)
            outcomes.append(judge)
            for verdict in ("passed", "failed", "not_applicable"):
                counters[f"judge.{verdict}"] += judge.filter(pl.col("verdict") == verdict).height
        verdicts = combine(outcomes)
        # Records no verifier could check (chat without a requested format, code without tests, ...).
        counters["not_applicable"] += verdicts.filter(pl.col("verdict") == "not_applicable").height
        joined = revised.join(verdicts, on=ROW, how="left").sort(ROW)
        kept = joined.filter(pl.col("rule").is_null()).select(
            *[c for c in records.columns if c not in VERDICT_COLUMNS], *VERDICT_COLUMNS
        )
        rejected = joined.filter(pl.col("rule").is_not_null()).select(
            "record_id", "rule", pl.col("verdict_detail").alias("detail"), "source_file", "source_line"
        )
        for name in ("code.passed", "code.failed", "code.lint_skipped", "math.passed", "math.failed"):
            counters[name] += 0
        attempts = code_run.attempts
        result = StageResult(
            rows_in=records.height,
            kept=kept,
            rejected=rejected.select(STAGE_LEDGER_COLUMNS),
            tables={
                "code_test_results": code_run.test_results.cast(CODE_TEST_RESULTS_SCHEMA),
                "verification_attempts": pl.DataFrame(schema=VERIFICATION_ATTEMPTS_SCHEMA)
                if attempts is None
                else attempts,
                "judgments": judged,
            },
            counters=dict(sorted(counters.items())),
        )
        result.check_conservation()
        return result


def combine(outcomes: list[pl.DataFrame]) -> pl.DataFrame:
    """One outcome per row from the outcomes of several verifiers (``OUTCOME_SCHEMA``, earlier lists
    first): the first failure decides; otherwise "passed" with every passing detail, or the first
    "not_applicable" detail when no verifier could check the row."""
    failed = pl.col("rule").is_not_null()
    passed = pl.col("verdict") == "passed"
    return (
        pl.concat([o.cast(OUTCOME_SCHEMA) for o in outcomes])
        .group_by(ROW, maintain_order=True)
        .agg(
            verdict=pl.when(failed.any())
            .then(pl.lit("failed"))
            .when(passed.any())
            .then(pl.lit("passed"))
            .otherwise(pl.lit("not_applicable")),
            rule=pl.col("rule").drop_nulls().first(),
            verdict_detail=pl.when(failed.any())
            .then(pl.col("verdict_detail").filter(failed).first())
            .when(passed.any())
            .then(pl.col("verdict_detail").filter(passed).str.join("; "))
            .otherwise(pl.col("verdict_detail").first()),
        )
        .cast(OUTCOME_SCHEMA)
    )


def with_revised_answers(frame: pl.DataFrame, answers: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with the last assistant message of the records in ``answers`` (``ROW``, ``answer``)
    replaced by their revised answer."""
    if answers.is_empty():
        return frame
    assistant_at = (
        pl.col("messages").list.eval(pl.element().struct.field("role").eq("assistant").arg_true()).list.last()
    )
    message = pl.col("messages")
    revised = (
        frame.select(ROW, "messages")
        .join(answers, on=ROW)
        .with_columns(assistant_at=assistant_at)
        .explode("messages")
        .with_columns(position=pl.int_range(pl.len()).over(ROW))
        .select(
            ROW,
            messages=pl.struct(
                role=message.struct.field("role"),
                content=pl.when(pl.col("position") == pl.col("assistant_at"))
                .then(pl.col("answer"))
                .otherwise(message.struct.field("content")),
            ).cast(MESSAGE),
        )
        .group_by(ROW, maintain_order=True)
        .agg("messages")
    )
    return frame.update(revised, on=ROW)


def pass_rates(result: StageResult) -> pl.DataFrame:
    """Per verifier, records passed and failed and the pass rate, from the stage's counters."""
    counters = result.counters
    rows = []
    for verifier in ("code", "math", "structure", "judge"):
        passed, failed = counters.get(f"{verifier}.passed", 0), counters.get(f"{verifier}.failed", 0)
        if passed or failed:
            rows.append(
                {
                    "verifier": verifier,
                    "passed": passed,
                    "failed": failed,
                    "pass_rate": round(passed / (passed + failed), 4),
                }
            )
    rows.append(
        {
            "verifier": "(not checked)",
            "passed": counters.get("not_applicable", 0),
            "failed": 0,
            "pass_rate": None,
        }
    )
    return pl.DataFrame(
        rows, schema={"verifier": pl.String, "passed": pl.Int64, "failed": pl.Int64, "pass_rate": pl.Float64}
    )
