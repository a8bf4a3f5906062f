"""What the cleaning steps share: the exploded messages, the decisions so far, helpers over them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import polars as pl

from thresher.records import rejections

FENCE = "```"

REDACTIONS_SCHEMA: dict[str, pl.DataType] = {
    "record_id": pl.String,
    "message_index": pl.Int32,
    "entity": pl.String,
    # Character offsets (Unicode code points, i.e. Python ``str`` indexing) of the placeholder in the
    # cleaned message content: ``content[start:end] == "[EMAIL]"``.
    "start": pl.Int32,
    "end": pl.Int32,
}


# --- the batch the steps pass along ------------------------------------------------------------------


@dataclass
class CleanBatch:
    """The state the steps share: records, their exploded messages, and what has been decided so far.

    ``records`` carries ``_row`` (its position in the stage input). ``messages`` holds one row per
    message of the records still in play, in record then message order: ``_row``, ``_code`` (the
    record is a code task), ``message_index`` and the message struct's fields (``role``,
    ``content``, ...). A rejected record's messages leave ``messages``.
    """

    records: pl.DataFrame
    messages: pl.DataFrame
    rejected: list[pl.DataFrame] = field(default_factory=list)
    rejected_rows: list[pl.Series] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    redactions: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=_REDACTION_ROWS))

    def reject(self, rows: pl.DataFrame, rule: str) -> None:
        """Move the records in ``rows`` (``_row``, ``detail``) to the ledger under ``rule``."""
        key = f"quality.{rule}"
        self.counters[key] = self.counters.get(key, 0) + rows.height
        if rows.is_empty():
            return
        hit = self.records.join(rows.select("_row", "detail"), on="_row", how="inner", maintain_order="left")
        self.rejected.append(rejections(hit, rule, pl.col("detail")).with_columns(hit.get_column("_row")))
        self.rejected_rows.append(rows.get_column("_row"))
        self.messages = self.messages.join(rows.select("_row"), on="_row", how="anti", maintain_order="left")

    def live_rows(self) -> pl.Expr:
        """True for records not rejected so far."""
        if not self.rejected_rows:
            return pl.lit(True)
        return ~pl.col("_row").is_in(pl.concat(self.rejected_rows).implode())


# Redactions before they are tied to record ids.
_REDACTION_ROWS: dict[str, pl.DataType] = {
    "_row": pl.UInt32,
    "message_index": pl.Int32,
    "entity": pl.String,
    "start": pl.Int32,
    "end": pl.Int32,
}


class CleanStep(Protocol):
    """One job over the batch; it records what it did under its own counter names."""

    def __call__(self, batch: CleanBatch) -> None: ...


def explode_messages(records: pl.DataFrame) -> pl.DataFrame:
    """One row per message: ``_row``, ``_code``, ``message_index`` and the message fields.

    Records with no messages get no rows (the quality rules see them as empty); null contents
    become "" so that every string expression downstream can assume a value.
    """
    base = records.select(
        pl.int_range(pl.len(), dtype=pl.UInt32).alias("_row"),
        (pl.col("task") == "code").fill_null(False).alias("_code"),
        pl.col("messages"),
        pl.col("messages").list.eval(pl.int_range(pl.len(), dtype=pl.Int32)).alias("message_index"),
    )
    flat = base.explode(["messages", "message_index"], empty_as_null=False, keep_nulls=False)
    return flat.unnest("messages").with_columns(pl.col("content").fill_null(""))


def implode_messages(records: pl.DataFrame, messages: pl.DataFrame) -> pl.DataFrame:
    """``records`` (with ``_row``) with ``messages`` rebuilt from the exploded rows, same struct fields."""
    dtype = records.schema["messages"]
    fields = [f.name for f in dtype.inner.fields]  # type: ignore[attr-defined]
    rebuilt = messages.group_by("_row", maintain_order=True).agg(pl.struct(fields).alias("_messages"))
    return (
        records.join(rebuilt, on="_row", how="left", maintain_order="left")
        .with_columns(pl.col("_messages").fill_null(pl.lit([], dtype=dtype)).cast(dtype).alias("messages"))
        .drop("_messages")
    )


def replace_where(frame: pl.DataFrame, column: str, mask: pl.Expr, transform: pl.Expr) -> pl.DataFrame:
    """Apply ``transform`` to ``column`` only on rows where ``mask`` holds (regexes run on that subset)."""
    idx = frame.select(pl.arg_where(mask)).to_series()
    if idx.is_empty():
        return frame
    values = frame[idx].select(transform.alias(column)).to_series()
    return frame.with_columns(frame.get_column(column).scatter(idx, values))
