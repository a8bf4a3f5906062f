"""What every verifier returns: one outcome per input row, joined back onto the records by the stage."""

from __future__ import annotations

import polars as pl

VERDICT_COLUMNS = ("verdict", "verdict_detail")
# The input row index a verifier's outcomes are joined on.
ROW = "__verify_row"
# One outcome per input row: rule is null for kept records.
OUTCOME_SCHEMA: dict[str, pl.DataType] = {
    ROW: pl.UInt32,
    "verdict": pl.String,
    "rule": pl.String,
    "verdict_detail": pl.String,
}


def last_assistant_content() -> pl.Expr:
    """Content of the last assistant message of each record (null when there is none)."""
    assistant = pl.element().struct.field("role") == "assistant"
    return pl.col("messages").list.eval(pl.element().filter(assistant)).list.last().struct.field("content")
