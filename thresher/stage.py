"""What every curation stage returns, and the conservation law it must obey.

A stage takes a frame of canonical records and returns the records it keeps (and any it creates),
the ledger rows for the ones it drops, side tables (clusters, redactions, lineage edges) and
named counters. ``StageResult.check_conservation`` is the invariant the Dagster checks assert:
``rows_in + created == kept + rejected``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from thresher.records import LEDGER_SCHEMA

# Columns a stage fills in its ledger rows; the store adds stage, batch and run id.
STAGE_LEDGER_COLUMNS = ["record_id", "rule", "detail", "source_file", "source_line"]

EDGE_SCHEMA: dict[str, pl.DataType] = {
    "child_id": pl.String,
    "parent_id": pl.String,
    # "duplicate_of" (dropped record -> the record kept in its place), "seed" (synthetic -> seed).
    "relation": pl.String,
    "detail": pl.String,
}


@dataclass
class StageResult:
    """Outcome of one stage over one batch."""

    rows_in: int
    kept: pl.DataFrame
    rejected: pl.DataFrame
    created: int = 0
    # Named side tables the stage wants stored with the batch (e.g. "dedup_clusters", "redactions").
    tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    # Named, counted outcomes (e.g. {"html_stripped": 12, "pii.email": 3}).
    counters: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [c for c in STAGE_LEDGER_COLUMNS if c not in self.rejected.columns]
        if missing:
            raise ValueError(f"rejected frame lacks ledger columns {missing}")
        self.rejected = self.rejected.select([pl.col(c).cast(LEDGER_SCHEMA[c]) for c in STAGE_LEDGER_COLUMNS])

    @property
    def rejected_by_rule(self) -> dict[str, int]:
        if self.rejected.is_empty():
            return {}
        counts = self.rejected.group_by("rule").len().sort("rule")
        return dict(zip(counts["rule"].to_list(), counts["len"].to_list(), strict=True))

    def check_conservation(self) -> None:
        """Raise if any record was lost or double-counted by the stage."""
        balance = self.rows_in + self.created - self.kept.height - self.rejected.height
        if balance != 0:
            raise AssertionError(
                f"conservation violated: {self.rows_in} in + {self.created} created != "
                f"{self.kept.height} kept + {self.rejected.height} rejected"
            )
        overlap = self.kept.join(self.rejected, on="record_id", how="semi").height
        if overlap:
            raise AssertionError(f"{overlap} record(s) both kept and rejected")
