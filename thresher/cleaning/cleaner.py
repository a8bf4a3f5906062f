"""The cleaned stage: formatting, then PII, then the quality rules."""

from __future__ import annotations

import time

import polars as pl

from thresher.cleaning.batch import (
    REDACTIONS_SCHEMA,
    CleanBatch,
    CleanStep,
    explode_messages,
    implode_messages,
)
from thresher.cleaning.junk import Formatter
from thresher.cleaning.pii import PiiRedactor
from thresher.cleaning.rules import QualityFilter
from thresher.config import CleanConfig
from thresher.records import LEDGER_SCHEMA
from thresher.stage import STAGE_LEDGER_COLUMNS, StageResult


class Cleaner:
    """The cleaned stage: formatting, then PII, then quality rules; see the module docstring."""

    def __init__(self, config: CleanConfig) -> None:
        self.config = config
        self.quality = QualityFilter(config.quality)
        self.steps: dict[str, CleanStep] = {
            "format": Formatter(config.strip_html, config.formatting),
            "pii": PiiRedactor(config.pii),
            "quality": self.quality,
        }
        # Wall-clock seconds of each step in the last run (language ID is reported apart from the
        # other quality rules, as "quality.language"); for benchmarks and run metadata.
        self.timings: dict[str, float] = {}

    def run(self, records: pl.DataFrame) -> StageResult:
        """Clean ``records``; every input record ends up kept (content cleaned) or in the ledger."""
        self.timings = {}
        clock = time.perf_counter()
        indexed = records.with_row_index("_row")
        batch = CleanBatch(records=indexed, messages=explode_messages(records))
        self.timings["explode"] = time.perf_counter() - clock
        for name, step in self.steps.items():
            clock = time.perf_counter()
            step(batch)
            self.timings[name] = time.perf_counter() - clock
        language = self.quality.language_seconds
        self.timings["quality"] -= language
        self.timings["quality.language"] = language
        clock = time.perf_counter()
        # Ledger rows in input order, whichever step rejected them.
        rejected = (
            pl.concat(batch.rejected).sort("_row").drop("_row")
            if batch.rejected
            else pl.DataFrame(schema={c: LEDGER_SCHEMA[c] for c in STAGE_LEDGER_COLUMNS})
        )
        kept_rows = indexed.filter(batch.live_rows())
        kept = implode_messages(kept_rows, batch.messages).select(records.columns)
        redactions = (
            batch.redactions.join(kept_rows.select("_row", "record_id"), on="_row", how="inner")
            .sort("_row", "message_index", "start")
            .select(list(REDACTIONS_SCHEMA))
            .cast(REDACTIONS_SCHEMA)
        )
        self.timings["assemble"] = time.perf_counter() - clock
        return StageResult(
            rows_in=records.height,
            kept=kept,
            rejected=rejected,
            tables={"redactions": redactions},
            counters=dict(sorted(batch.counters.items())),
        )
