"""Great Expectations suites, stored as data in expectations/, run over a stage's records.

GX validates a flat pandas view of the records (``quality_view``), because nested message
lists are not something GX expectations can address and because GX over DuckDB through
SQLAlchemy is broken in this stack (see notes/stack.md). Failing rows are reported by record id
only: GX's own ``unexpected_list`` would carry record text, which may hold PII.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import polars as pl

from thresher.store import RELEASE_BATCH, query, read_table, table_exists

MAX_FAILING_IDS = 20


@dataclass(frozen=True)
class ExpectationOutcome:
    expectation: str
    column: str | None
    severity: str  # "critical" | "warning" | "info"
    success: bool
    unexpected_count: int
    failing_record_ids: list[str] = field(default_factory=list)
    notes: str = ""


@dataclass(frozen=True)
class SuiteOutcome:
    suite: str
    outcomes: list[ExpectationOutcome]

    @property
    def success(self) -> bool:
        return all(o.success for o in self.outcomes)

    @property
    def critical_failures(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success and o.severity == "critical"]

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]


def _role_chars(role: str) -> pl.Expr:
    """Total characters of the messages with ``role``."""
    return (
        pl.col("messages")
        .list.eval(
            pl.when(pl.element().struct.field("role") == role)
            .then(pl.element().struct.field("content").str.len_chars())
            .otherwise(0)
        )
        .list.sum()
        .fill_null(0)
        .alias(f"{role}_chars")
    )


def quality_view(records: pl.DataFrame) -> pl.DataFrame:
    """One flat row per record: every scalar column of the stage's table plus derived ones
    (message counts, roles, lengths, the joined text) that the expectation suites talk about."""
    messages = pl.col("messages")
    scalar = [name for name, dtype in records.schema.items() if not dtype.is_nested()]
    return records.select(
        *scalar,
        messages.list.len().alias("n_messages"),
        messages.list.last().struct.field("role").alias("last_role"),
        _role_chars("user"),
        _role_chars("assistant"),
        messages.list.eval(pl.element().struct.field("content")).list.join("\n").alias("content"),
        pl.col("parent_ids").list.len().alias("n_parents"),
    )


def failing_rows(view: pl.DataFrame, outcome: SuiteOutcome, limit: int = MAX_FAILING_IDS) -> pl.DataFrame:
    """Up to ``limit`` failing records with the expectation they broke and a PII-redacted preview,
    so that a reviewer can decide from the check's page without opening the data."""
    from thresher.cleaning import redact_preview

    pairs = [(o.expectation, o.column or "", rid) for o in outcome.failures for rid in o.failing_record_ids]
    if not pairs:
        return pl.DataFrame(schema=dict.fromkeys(FAILING_ROW_COLUMNS, pl.String))
    failing = pl.DataFrame(pairs, schema=["expectation", "column", "record_id"], orient="row").head(limit)
    return failing.join(view, on="record_id", how="left").select(
        "record_id",
        pl.concat_str([pl.col("source_file"), pl.lit(":"), pl.col("source_line").cast(pl.String)]).alias(
            "source"
        ),
        "expectation",
        "column",
        redact_preview(pl.col("content")).str.replace_all(r"\s+", " ").alias("preview"),
    )


FAILING_ROW_COLUMNS = ("record_id", "source", "expectation", "column", "preview")


def load_suite(path: Path) -> dict:
    suite = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(suite.get("expectations"), list) or "name" not in suite:
        raise ValueError(f"{path}: an expectation suite needs 'name' and a list of 'expectations'")
    return suite


def check_view(con: duckdb.DuckDBPyConnection, stage: str, batch: str) -> pl.DataFrame:
    """The flat view a stage's suite validates: ``quality_view`` of its stored records for ``batch``
    plus what only the store knows (how many kept records across all batches share a normalized text)."""
    where = {} if batch == RELEASE_BATCH else {"batch": batch}
    records = read_table(con, stage, where)
    view = quality_view(records)
    if stage == "formatted" and records.height and table_exists(con, "renders"):
        from thresher.formatting import prompt_split_conflicts, roundtrip_ok

        trip = roundtrip_ok(records, read_table(con, "renders", {"batch": RELEASE_BATCH}))
        view = view.join(
            trip.group_by("record_id").agg(pl.col("ok").all().alias("renders_round_trip")),
            on="record_id",
            how="left",
        ).with_columns(
            pl.col("renders_round_trip").fill_null(False),
            prompt_split_conflicts(records).alias("prompt_group_splits"),
        )
    if stage == "deduped" and table_exists(con, "dedup_index"):
        copies = query(
            con,
            "SELECT i.record_id, c.copies AS normalized_text_copies FROM dedup_index i JOIN "
            "(SELECT exact_hash, count(*) AS copies FROM dedup_index GROUP BY exact_hash) c USING (exact_hash) "
            "WHERE i.batch = ?",
            [batch],
        )
        view = view.join(copies, on="record_id", how="left")
    return view


def validate(view: pl.DataFrame, suite_path: Path) -> SuiteOutcome:
    """Run the suite at ``suite_path`` over a flat view of records (see ``check_view``)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx  # ~3 s import: only where a check actually runs
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    spec = load_suite(suite_path)
    frame = view.to_pandas()
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    batch = (
        context.data_sources.add_pandas("thresher")
        .add_dataframe_asset("records")
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    suite = gx.ExpectationSuite(name=spec["name"])
    for exp in spec["expectations"]:
        suite.add_expectation_configuration(
            ExpectationConfiguration(
                type=exp["type"],
                kwargs=exp["kwargs"],
                severity=exp.get("severity", "critical"),
                meta={"notes": exp.get("notes", "")},
            )
        )
    result = batch.validate(
        suite,
        result_format={
            "result_format": "COMPLETE",
            "unexpected_index_column_names": ["record_id"],
            "partial_unexpected_count": 0,
        },
    )
    outcomes = []
    for res in result.results:
        cfg = res.expectation_config
        detail = res.result or {}
        ids = [
            str(row["record_id"]) for row in detail.get("unexpected_index_list") or [] if "record_id" in row
        ]
        outcomes.append(
            ExpectationOutcome(
                expectation=cfg.type,
                column=cfg.kwargs.get("column"),
                severity=str(getattr(cfg.severity, "value", cfg.severity)).lower(),
                success=bool(res.success),
                unexpected_count=int(detail.get("unexpected_count") or 0),
                failing_record_ids=ids[:MAX_FAILING_IDS],
                notes=(cfg.meta or {}).get("notes", ""),
            )
        )
    return SuiteOutcome(suite=spec["name"], outcomes=outcomes)
