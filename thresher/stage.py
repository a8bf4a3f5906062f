"""What every curation stage returns, and the conservation law it must obey.

A stage takes a frame of canonical records and returns the records it keeps (and any it creates),
the ledger rows for the ones it drops, side tables (clusters, redactions, lineage edges) and
named counters. ``StageResult.check_conservation`` is the invariant the Dagster checks assert:
``rows_in + created == kept + rejected``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import polars as pl

from thresher.records import LEDGER_SCHEMA

# Columns a stage fills in its ledger rows; the store adds stage, batch and run id.
STAGE_LEDGER_COLUMNS = ["record_id", "rule", "detail", "source_file", "source_line"]
STAGE_LEDGER_SCHEMA = {c: LEDGER_SCHEMA[c] for c in STAGE_LEDGER_COLUMNS}

EDGE_SCHEMA: dict[str, pl.DataType] = {
    "child_id": pl.String,
    "parent_id": pl.String,
    # "duplicate_of" (dropped record -> the record kept in its place), "seed" (synthetic -> seed).
    "relation": pl.String,
    "detail": pl.String,
}


def duplicate_edges(dropped: pl.DataFrame) -> pl.DataFrame:
    """Lineage edges from each dropped duplicate (``record_id``) to the record kept in its place
    (``kept_id``), carrying the ledger detail."""
    return dropped.select(
        pl.col("record_id").alias("child_id"),
        pl.col("kept_id").alias("parent_id"),
        pl.lit("duplicate_of").alias("relation"),
        "detail",
    ).cast(EDGE_SCHEMA)


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


def chain(records: pl.DataFrame, steps: Sequence[Callable[[pl.DataFrame], StageResult]]) -> StageResult:
    """Run ``steps`` one after another, each on what the previous one kept, as one stage result.

    Ledger rows, created counts and counters add up; side tables of the same name are concatenated
    (every step's ``edges``, say), so the stage's conservation is the sum of its steps'.
    """
    rows_in = records.height
    rejected, created, counters = [], 0, {}
    tables: dict[str, list[pl.DataFrame]] = {}
    for step in steps:
        result = step(records)
        result.check_conservation()
        records = result.kept
        rejected.append(result.rejected)
        created += result.created
        for name, value in result.counters.items():
            counters[name] = counters.get(name, 0) + value
        for name, table in result.tables.items():
            tables.setdefault(name, []).append(table)
    return StageResult(
        rows_in=rows_in,
        kept=records,
        rejected=pl.concat(rejected, how="vertical_relaxed")
        if rejected
        else pl.DataFrame(schema=STAGE_LEDGER_SCHEMA),
        created=created,
        tables={name: pl.concat(parts, how="diagonal_relaxed") for name, parts in tables.items()},
        counters=counters,
    )


def prior_rows(
    prior: pl.DataFrame | None, schema: dict[str, pl.DataType], records: pl.DataFrame
) -> pl.DataFrame:
    """An index of earlier batches, typed to ``schema``, without rows of the batches in ``records``:
    re-materializing a batch replaces its own index rows, so they must not count as earlier copies."""
    if prior is None or prior.is_empty():
        return pl.DataFrame(schema=schema)
    missing = [c for c in schema if c not in prior.columns]
    if missing:
        raise ValueError(f"prior index lacks columns {missing}")
    own = records["batch"].drop_nulls().unique()
    return prior.select([pl.col(c).cast(t) for c, t in schema.items()]).filter(
        ~pl.col("batch").is_in(own.implode())
    )
