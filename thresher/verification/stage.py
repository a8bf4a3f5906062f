"""The verified stage: each record goes to the verifier for its task kind; outcomes become verdicts or ledger rows."""

from __future__ import annotations

from collections import Counter

import polars as pl

from thresher.config import VerifyConfig
from thresher.records import TaskKind
from thresher.stage import STAGE_LEDGER_COLUMNS, StageResult
from thresher.verification.code import CodeVerifier
from thresher.verification.math_answers import MathVerifier
from thresher.verification.outcomes import OUTCOME_SCHEMA, ROW, VERDICT_COLUMNS


class Verifier:
    """The verified stage: code and math records are checked, everything else passes through."""

    def __init__(self, config: VerifyConfig) -> None:
        self.config = config
        self.code = CodeVerifier(config)
        self.math = MathVerifier(config)

    def run(self, records: pl.DataFrame) -> StageResult:
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
        counters["not_applicable"] += passthrough.height
        outcomes = pl.concat(
            [
                passthrough.cast(OUTCOME_SCHEMA),
                self.code.run(code, counters).cast(OUTCOME_SCHEMA),
                self.math.run(maths, counters).cast(OUTCOME_SCHEMA),
            ]
        )
        judged = frame.join(outcomes, on=ROW, how="left").sort(ROW)
        kept = judged.filter(pl.col("rule").is_null()).select(
            *[c for c in records.columns if c not in VERDICT_COLUMNS], *VERDICT_COLUMNS
        )
        rejected = judged.filter(pl.col("rule").is_not_null()).select(
            "record_id", "rule", pl.col("verdict_detail").alias("detail"), "source_file", "source_line"
        )
        for name in ("code.passed", "code.failed", "math.passed", "math.failed", "not_applicable"):
            counters[name] += 0
        result = StageResult(
            rows_in=records.height,
            kept=kept,
            rejected=rejected.select(STAGE_LEDGER_COLUMNS),
            counters=dict(sorted(counters.items())),
        )
        result.check_conservation()
        return result
