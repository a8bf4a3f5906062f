"""Version-stable hashing for anything that is stored or decides an outcome (ids, selections, splits).

Polars' own ``hash`` may change between Polars versions; a split or an id that moved on an upgrade
would leak evaluation data or break provenance. DuckDB's ``sha256`` is a fixed algorithm and vectorized.
"""

from __future__ import annotations

import duckdb
import numpy as np
import polars as pl


def sha256_hex(values: pl.Series) -> pl.Series:
    """SHA-256 hex digest of every string, in input order."""
    frame = pl.DataFrame({"v": values.cast(pl.String)}).with_row_index("i")
    with duckdb.connect() as con:
        con.register("strings", frame)
        return con.sql("SELECT i, sha256(v) AS h FROM strings ORDER BY i").pl()["h"]


def fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer: spreads every input bit over the output (uint64 wraps)."""
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xFF51AFD7ED558CCD)
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xC4CEB9FE1A85EC53)
    return x ^ (x >> np.uint64(33))
