"""The one DuckDB file that holds every stage's records, the rejection ledger and provenance.

Tables are partitioned by the ``batch`` column: writing a batch replaces that batch's rows and
nothing else, so re-materializing a partition is idempotent. DuckDB allows one writing process
per file; ``Store.connect`` retries while another process holds the lock (a CLI call during a
run, say) instead of failing at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl

from thresher.records import LEDGER_SCHEMA
from thresher.stage import EDGE_SCHEMA, StageResult

STAGES = ("raw", "deduped", "cleaned", "synthetic", "verified", "formatted")
UPSTREAM = dict(zip(STAGES[1:], STAGES[:-1], strict=True))

# The release is not partitioned by batch; its rows are written under this key in side tables.
RELEASE_BATCH = "release"

_BOOKKEEPING_DDL = """
CREATE TABLE IF NOT EXISTS batches (
    batch VARCHAR PRIMARY KEY,
    seq BIGINT NOT NULL,            -- acceptance order: dedup compares a batch with lower seqs only
    source_file VARCHAR NOT NULL,
    sha256 VARCHAR NOT NULL,
    landed_path VARCHAR NOT NULL,
    landed_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS rejections (
    record_id VARCHAR, stage VARCHAR, rule VARCHAR, detail VARCHAR, batch VARCHAR, run_id VARCHAR,
    source_file VARCHAR, source_line BIGINT
);
CREATE TABLE IF NOT EXISTS edges (
    stage VARCHAR, batch VARCHAR, child_id VARCHAR, parent_id VARCHAR, relation VARCHAR, detail VARCHAR
);
CREATE TABLE IF NOT EXISTS stage_runs (
    stage VARCHAR, batch VARCHAR, run_id VARCHAR, rows_in BIGINT, created BIGINT, kept BIGINT,
    rejected BIGINT, rejected_by_rule VARCHAR, counters VARCHAR, config VARCHAR,
    config_fingerprint VARCHAR, finished_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS check_results (
    stage VARCHAR, batch VARCHAR, check_name VARCHAR, passed BOOLEAN, severity VARCHAR,
    description VARCHAR, metadata VARCHAR, run_id VARCHAR, evaluated_at TIMESTAMP
);
"""


# ART indexes the provenance lookups (``thresher trace``) rely on: without them every lookup scans
# the key column of every table (a trace took 66 ms p50 on a 1M-record release, 12 ms with them;
# benchmarks/provenance.py). They cost about 60% more file size.
# They are created with the table (``_ensure_table``) and, for stores written before they existed,
# on the next writable ``Store.connect``. Non-unique, so a batch's DELETE + INSERT in one transaction
# is unaffected (a unique index would reject re-inserting a key deleted in the same transaction).
INDEXED_COLUMNS: dict[str, tuple[str, ...]] = {
    **{stage: ("record_id",) for stage in STAGES},
    "rejections": ("record_id",),
    "edges": ("child_id", "parent_id"),
    "synthesis": ("record_id",),
    "redactions": ("record_id",),
    "renders": ("record_id",),
    "verification_attempts": ("record_id",),
    "code_test_results": ("record_id",),
    "judgments": ("record_id",),
}


@dataclass(frozen=True)
class StageWrite:
    """Counts as written, for materialization metadata."""

    rows_in: int
    created: int
    kept: int
    rejected: int
    rejected_by_rule: dict[str, int]


class Store:
    """Access to the Thresher DuckDB file."""

    def __init__(self, path: str | Path, *, lock_timeout_seconds: float = 120.0) -> None:
        self.path = Path(path)
        self.lock_timeout_seconds = lock_timeout_seconds

    @contextmanager
    def connect(self, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection, waiting for another process's write lock to be released."""
        if read_only and not self.path.exists():
            # A read-only connection cannot create the file; make an empty store first.
            with self.connect():
                pass
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout_seconds
        delay = 0.05
        while True:
            try:
                con = duckdb.connect(str(self.path), read_only=read_only)
                break
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        try:
            if not read_only:
                con.execute(_BOOKKEEPING_DDL)
                ensure_indexes(con)
            yield con
        finally:
            con.close()


# --- queries ---------------------------------------------------------------------------------------
# duckdb 2 refuses new work on a connection while an execute() result is partly fetched, so every
# read goes through these two helpers, which always consume the whole result.


def query(con: duckdb.DuckDBPyConnection, sql: str, params: list[object] | None = None) -> pl.DataFrame:
    return con.sql(sql, params=params or None).pl()


def first_row(con: duckdb.DuckDBPyConnection, sql: str, params: list[object] | None = None) -> tuple | None:
    rows = con.sql(sql, params=params or None).fetchall()
    return rows[0] if rows else None


# --- tables -----------------------------------------------------------------------------------------


def table_exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    return bool(
        first_row(con, "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table])[0]
    )


def ensure_indexes(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Create the provenance indexes (``INDEXED_COLUMNS``) that existing tables lack; returns their names."""
    present = query(
        con,
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = 'main' AND table_name IN (SELECT unnest(?))",
        [list(INDEXED_COLUMNS)],
    ).rows()
    have = set(query(con, "SELECT index_name FROM duckdb_indexes() WHERE schema_name = 'main'")["index_name"])
    created = []
    for table, column in sorted(present):
        name = _index_name(table, column)
        if column in INDEXED_COLUMNS[table] and name not in have:
            con.execute(f'CREATE INDEX IF NOT EXISTS "{name}" ON "{table}" ("{column}")')
            created.append(name)
    return created


def _drop_indexes(con: duckdb.DuckDBPyConnection, tables: list[str]) -> None:
    """Drop the provenance indexes of ``tables`` (``ensure_indexes`` puts them back)."""
    for table in tables:
        for column in INDEXED_COLUMNS.get(table, ()):
            con.execute(f'DROP INDEX IF EXISTS "{_index_name(table, column)}"')


def _index_name(table: str, column: str) -> str:
    return f"{table}_{column}_idx"


def _ensure_table(con: duckdb.DuckDBPyConnection, table: str) -> None:
    """Create ``table`` from the registered ``_incoming`` frame's schema, or add the columns it lacks."""
    if not table_exists(con, table):
        con.execute(f'CREATE TABLE "{table}" AS SELECT * FROM _incoming LIMIT 0')
        incoming = set(query(con, "DESCRIBE SELECT * FROM _incoming")["column_name"])
        for column in INDEXED_COLUMNS.get(table, ()):
            if column in incoming:
                con.execute(
                    f'CREATE INDEX IF NOT EXISTS "{_index_name(table, column)}" ON "{table}" ("{column}")'
                )
        return
    have = set(query(con, f'DESCRIBE "{table}"')["column_name"])
    incoming = query(con, "DESCRIBE SELECT * FROM _incoming").select("column_name", "column_type").rows()
    for column, column_type in incoming:
        if column not in have:
            con.execute(f'ALTER TABLE "{table}" ADD COLUMN "{column}" {column_type}')


def replace_rows(
    con: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame, where: dict[str, str]
) -> None:
    """Delete the rows of ``table`` matching ``where`` and insert ``frame`` in their place."""
    con.register("_incoming", frame.to_arrow())
    try:
        _ensure_table(con, table)
        clause = " AND ".join(f'"{k}" = ?' for k in where) or "true"
        con.execute(f'DELETE FROM "{table}" WHERE {clause}', list(where.values()))
        if frame.height:
            con.execute(f'INSERT INTO "{table}" BY NAME SELECT * FROM _incoming')
    finally:
        con.unregister("_incoming")


def read_table(
    con: duckdb.DuckDBPyConnection, table: str, where: dict[str, str] | None = None, order_by: str = ""
) -> pl.DataFrame:
    where = where or {}
    clause = " AND ".join(f'"{k}" = ?' for k in where) or "true"
    order = f" ORDER BY {order_by}" if order_by else ""
    return query(con, f'SELECT * FROM "{table}" WHERE {clause}{order}', list(where.values()))


# --- batches ----------------------------------------------------------------------------------------


def register_batch(
    con: duckdb.DuckDBPyConnection, batch: str, source_file: str, sha256: str, landed_path: str
) -> int:
    """Record a landed file as a batch (idempotent); returns its acceptance sequence number."""
    row = first_row(con, "SELECT seq FROM batches WHERE batch = ?", [batch])
    if row:
        return int(row[0])
    seq = first_row(con, "SELECT coalesce(max(seq), 0) + 1 FROM batches")[0]
    con.execute(
        "INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?)",
        [batch, seq, source_file, sha256, landed_path, datetime.now(UTC).replace(tzinfo=None)],
    )
    return int(seq)


def batch_info(con: duckdb.DuckDBPyConnection, batch: str) -> dict[str, object]:
    rows = query(con, "SELECT * FROM batches WHERE batch = ?", [batch]).to_dicts()
    if not rows:
        raise KeyError(f"batch {batch!r} has not been landed (no row in the batches table)")
    return rows[0]


def earlier_batches(con: duckdb.DuckDBPyConnection, batch: str) -> list[str]:
    """Batches accepted before ``batch``, in acceptance order."""
    seq = batch_info(con, batch)["seq"]
    return query(con, "SELECT batch FROM batches WHERE seq < ? ORDER BY seq", [seq])["batch"].to_list()


# --- stage outputs ----------------------------------------------------------------------------------


def write_stage(
    con: duckdb.DuckDBPyConnection,
    stage: str,
    batch: str,
    run_id: str,
    result: StageResult,
    *,
    config: dict[str, object],
    config_fingerprint: str,
) -> StageWrite:
    """Write a stage's kept rows, ledger rows, side tables and counts for one batch, atomically."""
    result.check_conservation()
    ledger = result.rejected.with_columns(
        pl.lit(stage).alias("stage"), pl.lit(batch).alias("batch"), pl.lit(run_id).alias("run_id")
    ).select(list(LEDGER_SCHEMA))
    by_rule = result.rejected_by_rule
    stats = pl.DataFrame(
        {
            "stage": [stage],
            "batch": [batch],
            "run_id": [run_id],
            "rows_in": [result.rows_in],
            "created": [result.created],
            "kept": [result.kept.height],
            "rejected": [result.rejected.height],
            "rejected_by_rule": [json.dumps(by_rule, sort_keys=True)],
            "counters": [json.dumps(result.counters, sort_keys=True)],
            "config": [json.dumps(config, sort_keys=True)],
            "config_fingerprint": [config_fingerprint],
            "finished_at": [datetime.now(UTC).replace(tzinfo=None)],
        }
    )
    # The release replaces whole tables (formatted, and its side tables under RELEASE_BATCH). DuckDB
    # clears every deleted key out of an ART index at commit, which made rewriting a 1M-record release
    # and its renders take 34 s instead of 2.5 s: drop those indexes first and rebuild them after (3 s).
    whole_tables = stage == "formatted" or batch == RELEASE_BATCH
    if whole_tables:
        _drop_indexes(con, [stage, *(name for name in result.tables if name != "edges")])
    con.execute("BEGIN TRANSACTION")
    try:
        kept = result.kept.with_columns(pl.lit(batch).alias("batch")) if stage != "formatted" else result.kept
        if stage == "formatted":
            replace_rows(con, stage, kept, {})
        else:
            replace_rows(con, stage, kept, {"batch": batch})
        replace_rows(con, "rejections", ledger, {"stage": stage, "batch": batch})
        for name, table in result.tables.items():
            table = table.with_columns(pl.lit(batch).alias("batch"))
            if name == "edges":
                table = table.select(pl.lit(stage).alias("stage"), "batch", *EDGE_SCHEMA)
                replace_rows(con, "edges", table, {"stage": stage, "batch": batch})
            else:
                replace_rows(con, name, table, {"batch": batch})
        replace_rows(con, "stage_runs", stats, {"stage": stage, "batch": batch})
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        if whole_tables:
            ensure_indexes(con)
    return StageWrite(result.rows_in, result.created, result.kept.height, result.rejected.height, by_rule)


def record_check(
    con: duckdb.DuckDBPyConnection,
    *,
    stage: str,
    batch: str,
    check_name: str,
    passed: bool,
    severity: str,
    description: str,
    metadata: dict[str, object],
    run_id: str,
) -> None:
    """Keep a check's outcome next to the data so ``thresher status`` / ``checks`` need no Dagster."""
    row = pl.DataFrame(
        {
            "stage": [stage],
            "batch": [batch],
            "check_name": [check_name],
            "passed": [passed],
            "severity": [severity],
            "description": [description],
            "metadata": [json.dumps(metadata, sort_keys=True, default=str)],
            "run_id": [run_id],
            "evaluated_at": [datetime.now(UTC).replace(tzinfo=None)],
        }
    )
    replace_rows(con, "check_results", row, {"stage": stage, "batch": batch, "check_name": check_name})


@dataclass(frozen=True)
class Conservation:
    """Counts read back from the tables themselves, not from what the stage claimed."""

    stage: str
    batch: str
    rows_in: int
    created: int
    kept: int
    rejected: int

    @property
    def holds(self) -> bool:
        return self.rows_in + self.created == self.kept + self.rejected

    def describe(self) -> str:
        verb = "holds" if self.holds else "VIOLATED"
        return (
            f"{self.stage}[{self.batch}]: {self.rows_in} in + {self.created} created "
            f"{'=' if self.holds else '!='} {self.kept} kept + {self.rejected} rejected ({verb})"
        )


def conservation(con: duckdb.DuckDBPyConnection, stage: str, batch: str) -> Conservation:
    """Recount a stage's balance for one batch (or the whole release) from the stored tables."""
    stats = first_row(
        con, "SELECT rows_in, created FROM stage_runs WHERE stage = ? AND batch = ?", [stage, batch]
    )
    if stats is None:
        raise LookupError(f"stage {stage} has not run for batch {batch}")
    created = int(stats[1])
    if stage == "raw":
        # Candidate records the adapter found; nothing upstream to count from.
        rows_in = int(stats[0])
    elif stage == "formatted":
        rows_in = _count(con, "verified", None)
    else:
        rows_in = _count(con, UPSTREAM[stage], batch)
    kept = _count(con, stage, None if stage == "formatted" else batch)
    rejected = first_row(
        con, "SELECT count(*) FROM rejections WHERE stage = ? AND batch = ?", [stage, batch]
    )[0]
    return Conservation(stage, batch, rows_in, created, kept, int(rejected))


def _count(con: duckdb.DuckDBPyConnection, table: str, batch: str | None) -> int:
    if not table_exists(con, table):
        return 0
    if batch is None:
        return int(first_row(con, f'SELECT count(*) FROM "{table}"')[0])
    return int(first_row(con, f'SELECT count(*) FROM "{table}" WHERE batch = ?', [batch])[0])


def read_prior(
    con: duckdb.DuckDBPyConnection, table: str, batch: str, schema: dict[str, pl.DataType]
) -> pl.DataFrame:
    """Rows of ``table`` from every batch accepted before ``batch`` (empty, typed, if none yet)."""
    earlier = earlier_batches(con, batch)
    if not earlier or not table_exists(con, table):
        return pl.DataFrame(schema=schema)
    columns = ", ".join(f'"{c}"' for c in schema)
    frame = query(con, f'SELECT {columns} FROM "{table}" WHERE batch IN (SELECT unnest(?))', [earlier])
    return frame.cast(schema)
