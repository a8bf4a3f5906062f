"""The canonical finetuning record and the rejection ledger row, as Polars schemas.

Every stage reads and writes frames of ``RECORD_SCHEMA`` (plus stage-specific columns appended
after it), so one adapter per input format is the only place that knows about file layouts.
"""

from __future__ import annotations

from enum import StrEnum

import polars as pl

MESSAGE = pl.Struct({"role": pl.String, "content": pl.String})

RECORD_SCHEMA: dict[str, pl.DataType] = {
    # Stable id: a hash of the source file's content hash and the record's position in it
    # (see ``source_record_ids``), or of recipe and seeds for synthetic records.
    "record_id": pl.String,
    # Ingestion batch (one per landed file); the Dagster partition key.
    "batch": pl.String,
    # One of ``TaskKind``.
    "task": pl.String,
    "messages": pl.List(MESSAGE),
    # Code tasks: unit-test source and the function the tests call.
    "tests": pl.String,
    "entry_point": pl.String,
    # Math tasks: the reference final answer.
    "reference_answer": pl.String,
    # Where the record came from: path as landed, 1-based line (JSONL, CSV rows counting the
    # header as line 1) or 1-based item/row index (JSON arrays, Parquet), and the adapter used.
    "source_file": pl.String,
    "source_line": pl.Int64,
    "source_format": pl.String,
    "license": pl.String,
    # Free-form metadata as a JSON object string (schemaless by design).
    "metadata": pl.String,
    # Records this one was derived from (synthetic seeds); empty for source records.
    "parent_ids": pl.List(pl.String),
    # "source" or "synthetic".
    "origin": pl.String,
}

LEDGER_SCHEMA: dict[str, pl.DataType] = {
    "record_id": pl.String,
    "stage": pl.String,
    "rule": pl.String,
    # A sentence for a reviewer. Never contains record text (PII must not leak into the ledger).
    "detail": pl.String,
    "batch": pl.String,
    "run_id": pl.String,
    "source_file": pl.String,
    "source_line": pl.Int64,
}

ROLES = ("system", "user", "assistant", "tool")


class TaskKind(StrEnum):
    CHAT = "chat"
    CODE = "code"
    MATH = "math"
    TOOL = "tool"


def source_record_ids(file_sha256: str, positions: pl.Expr) -> pl.Expr:
    """Stable ids of the records at ``positions`` of one file: ``<first 12 hex of the file's sha256>:<pos>``.

    Same bytes, same ids, wherever and whenever the file lands; readable enough to grep for.
    """
    return pl.concat_str([pl.lit(file_sha256[:12] + ":"), positions.cast(pl.String)]).alias("record_id")


def empty_records() -> pl.DataFrame:
    return pl.DataFrame(schema=RECORD_SCHEMA)


def empty_ledger() -> pl.DataFrame:
    return pl.DataFrame(schema=LEDGER_SCHEMA)


def conform(frame: pl.DataFrame) -> pl.DataFrame:
    """Cast and order ``frame`` to ``RECORD_SCHEMA``, keeping extra stage columns after it.

    Missing canonical columns are added as nulls (``parent_ids`` as an empty list).
    """
    exprs = []
    for name, dtype in RECORD_SCHEMA.items():
        if name in frame.columns:
            exprs.append(pl.col(name).cast(dtype))
        elif name == "parent_ids":
            exprs.append(pl.lit([], dtype=dtype).alias(name))
        else:
            exprs.append(pl.lit(None, dtype=dtype).alias(name))
    extra = [c for c in frame.columns if c not in RECORD_SCHEMA]
    return frame.select([*exprs, *extra])


def rejections(frame: pl.DataFrame, rule: str, detail: pl.Expr | str) -> pl.DataFrame:
    """Ledger rows (without stage/batch/run, which the store fills) for every record in ``frame``."""
    detail_expr = pl.lit(detail) if isinstance(detail, str) else detail
    return frame.select(
        pl.col("record_id"),
        pl.lit(rule).alias("rule"),
        detail_expr.cast(pl.String).alias("detail"),
        pl.col("source_file"),
        pl.col("source_line"),
    )
