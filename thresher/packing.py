"""Packing rendered records into fixed-length training sequences, by first-fit decreasing.

Each template is packed on its own (a packed dataset is one template's texts). Records are taken
longest first, ties by ``record_id``, so the packing is a function of the counts alone; each goes
into the first sequence with room for it, else opens a new one. A record longer than the sequence
length is reported apart, never split. First-fit decreasing uses at most 11/9 OPT + 6/9 sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

_ASSIGNMENT_SCHEMA = {
    "template": pl.String,
    "record_id": pl.String,
    "tokens": pl.Int64,
    "sequence": pl.Int64,
    "position": pl.Int64,
}


@dataclass(frozen=True)
class Packing:
    """Where every record went.

    - ``assignments``: ``template``, ``record_id``, ``tokens``, ``sequence`` (0-based per template,
      in the order sequences were opened), ``position`` (token offset of the record in its sequence);
    - ``too_long``: ``template``, ``record_id``, ``tokens`` of records longer than a sequence;
    - ``summary``: per template ``sequences``, ``records``, ``tokens`` packed, ``capacity``
      (sequences x sequence length) and ``efficiency`` (tokens / capacity).
    """

    sequence_length: int
    assignments: pl.DataFrame
    too_long: pl.DataFrame
    summary: pl.DataFrame


def first_fit_decreasing(sizes: np.ndarray, capacity: int) -> np.ndarray:
    """The bin of every item under first fit, for ``sizes`` already in decreasing order.

    First fit is sequential (each placement changes the room the next item sees), so there is a loop,
    but over the distinct sizes rather than the items: items of one size fill the open bins in order,
    bin ``j`` taking ``room_j // size`` of them, then new bins ``capacity // size`` each, which numpy
    computes over all bins at once. Token counts have at most ``capacity`` distinct values.
    """
    if sizes.size and (sizes.min() < 1 or sizes.max() > capacity or (np.diff(sizes) > 0).any()):
        raise ValueError(f"sizes must lie in 1..{capacity} and be in decreasing order")
    bins = np.empty(sizes.size, dtype=np.int64)
    room = np.empty(0, dtype=np.int64)
    run_starts = np.flatnonzero(np.diff(sizes, prepend=np.int64(capacity + 1)))
    run_ends = np.append(run_starts[1:], sizes.size)
    for start, end in zip(run_starts, run_ends, strict=True):
        size, count = int(sizes[start]), int(end - start)
        takes = np.cumsum(room // size)
        placed = min(count, int(takes[-1]) if takes.size else 0)
        into = np.searchsorted(takes, np.arange(placed), side="right")
        bins[start : start + placed] = into
        room -= np.bincount(into, minlength=room.size) * size
        rest = count - placed
        if rest:
            per_bin = capacity // size
            opened = np.arange(rest) // per_bin
            bins[start + placed : end] = room.size + opened
            room = np.concatenate([room, capacity - np.bincount(opened) * size])
    return bins


def pack(lengths: pl.DataFrame, sequence_length: int) -> Packing:
    """Assign records (``record_id``, ``template``, ``tokens``) to sequences of ``sequence_length`` tokens.

    Every record appears once: in ``assignments`` or, when longer than a sequence, in ``too_long``.
    Records without a count cannot be packed and raise ``ValueError``.
    """
    if sequence_length < 1:
        raise ValueError(f"sequence_length must be positive, got {sequence_length}")
    if lengths["tokens"].is_null().any() or (lengths["tokens"] < 1).any():
        raise ValueError("every record to pack needs a positive token count")
    rows = lengths.select(
        pl.col("template").cast(pl.String),
        pl.col("record_id").cast(pl.String),
        pl.col("tokens").cast(pl.Int64),
    ).sort("template", "tokens", "record_id", descending=[False, True, False])
    fits = rows.filter(pl.col("tokens") <= sequence_length)
    parts = [pl.DataFrame(schema=_ASSIGNMENT_SCHEMA)]
    for _, group in fits.group_by("template", maintain_order=True):
        sequence = first_fit_decreasing(group["tokens"].to_numpy(), sequence_length)
        parts.append(group.with_columns(pl.Series("sequence", sequence, dtype=pl.Int64)))
    assignments = (
        pl.concat(parts, how="diagonal")
        .with_columns(
            (pl.col("tokens").cum_sum() - pl.col("tokens")).over("template", "sequence").alias("position")
        )
        .sort("template", "sequence", "position")
        .select(list(_ASSIGNMENT_SCHEMA))
    )
    summary = (
        assignments.group_by("template", maintain_order=True)
        .agg(
            (pl.col("sequence").max() + 1).alias("sequences"),
            pl.len().cast(pl.Int64).alias("records"),
            pl.col("tokens").sum().alias("tokens"),
        )
        .with_columns((pl.col("sequences") * sequence_length).alias("capacity"))
        .with_columns((pl.col("tokens") / pl.col("capacity")).alias("efficiency"))
    )
    return Packing(
        sequence_length=sequence_length,
        assignments=assignments,
        too_long=rows.filter(pl.col("tokens") > sequence_length),
        summary=summary,
    )
