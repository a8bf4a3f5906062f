"""Latency of `thresher trace` and `thresher why` on a 1,000,000-record release, before and after indexing.

Builds a store with the real table layout (raw, deduped, cleaned, synthetic, verified, formatted,
rejections, edges, redactions, synthesis, renders, stage_runs, batches) entirely with DuckDB SQL
generators in a temporary folder: ``--batches`` files landed in order, each losing rows at every
stage by rule (1% malformed, 5% duplicates with ``duplicate_of`` edges to their kept twin, 2% low
quality, 0.5% failing verification), 2% synthetic records with one or two seeds, 4% redacted records
and two renders per released record. Then times, in the same process and on the same file:

- reference: the implementation as it was before this benchmark (full scans per stage and side table,
  one query each, ``IN (SELECT record_id FROM stage)`` per stage for why), copied below unchanged;
- reference+indexes: the same code after ``thresher.store.ensure_indexes`` (the ART indexes the store
  now creates with each table), to separate what the indexes buy from what fewer queries buy;
- thresher: ``thresher.provenance.trace`` / ``why`` over the indexed store (one query for a trace's
  facts plus one for its context; one join query for why).

p50/p95 over ``--traces`` random record ids (released, synthetic, dropped at each stage) and
``--lines`` random file:line lookups, plus ``why(FILE)`` for whole files. Also measured: building the
indexes on the 1M-record store, and what the indexes cost a batch rewrite (DELETE + INSERT of one
batch in ``raw``, as ``write_stage`` does) and a rewrite of the whole release, and writing the
release's provenance sidecar. Prints a
table, then one JSON object with the same figures on the last line.

    .venv/bin/python benchmarks/provenance.py [--records 1000000] [--batches 100] [--traces 200] [--lines 50]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from thresher import provenance
from thresher import store as st
from thresher.records import empty_ledger
from thresher.sidecar import write_sidecar
from thresher.stage import StageResult
from thresher.store import STAGES, query, table_exists

SEED = 7

# --- the store ---------------------------------------------------------------------------------------

_RECORD_COLUMNS = """
    record_id, batch, task, messages, tests, entry_point, reference_answer, source_file, source_line,
    source_format, license, metadata, parent_ids, origin
"""


def build_store(con: duckdb.DuckDBPyConnection, records: int, batches: int) -> dict[str, int]:
    """Fill an empty store with ``records`` released records spread over ``batches`` files (SQL only)."""
    # Survival through raw 0.99, dedup 0.95, clean 0.98, +2% synthetic, verify 0.995.
    lines = int(records / (0.99 * 0.95 * 0.98 * 1.02 * 0.995) / batches) + 1
    con.execute(f"SELECT setseed(0.{SEED})")
    con.execute(
        f"""
        CREATE TEMP TABLE files AS
        SELECT b, 'part_' || lpad(b::VARCHAR, 4, '0') || '.jsonl' AS source_file,
               sha256('file ' || b) AS sha256
        FROM range({batches}) t(b);
        CREATE TABLE batches AS
        SELECT source_file || '-' || sha256[:8] AS batch, b + 1 AS seq, source_file, sha256,
               '/landing/' || source_file AS landed_path, TIMESTAMP '2026-01-01' + to_seconds(b) AS landed_at
        FROM files;
        -- Every line of every file, with the stage (if any) that drops it.
        CREATE TEMP TABLE lines AS
        SELECT f.sha256[:12] || ':' || l AS record_id, f.source_file || '-' || f.sha256[:8] AS batch,
               f.source_file, l AS source_line, f.b,
               CASE WHEN l % 100 = 0 THEN 'raw' WHEN l % 20 = 1 AND l > 1 THEN 'deduped'
                    WHEN l % 50 = 3 THEN 'cleaned' WHEN l % 200 = 7 THEN 'verified' END AS dropped_at
        FROM files f, range(1, {lines} + 1) r(l)
        ORDER BY f.b, l;
        """
    )
    source = """
        SELECT record_id, batch, 'chat' AS task,
               [{'role': 'user', 'content': 'question ' || md5(record_id) || ' ' || md5(batch)},
                {'role': 'assistant', 'content': 'answer ' || md5(record_id || 'a') || repeat(' words', 12)}]
                   AS messages,
               NULL::VARCHAR AS tests, NULL::VARCHAR AS entry_point, NULL::VARCHAR AS reference_answer,
               source_file, source_line, 'messages' AS source_format, 'CC-BY-4.0' AS license,
               '{}' AS metadata, []::VARCHAR[] AS parent_ids, 'source' AS origin, b, dropped_at
        FROM lines
    """
    con.execute(f"CREATE TEMP TABLE src AS {source}")
    con.execute(
        """
        CREATE TEMP TABLE synth AS
        SELECT 's-' || md5('synthetic ' || record_id)[:16] AS record_id, batch, source_file, source_line,
               CASE WHEN source_line % 3 = 0 THEN [record_id, sha256_prefix || ':' || (source_line + 2)]
                    ELSE [record_id] END AS parent_ids,
               (source_line % 2)::INTEGER AS template_id, b
        FROM (SELECT *, split_part(record_id, ':', 1) AS sha256_prefix FROM src
              WHERE dropped_at IS NULL AND source_line % 50 = 11);
        """
    )
    keep = {
        "raw": "dropped_at IS DISTINCT FROM 'raw'",
        "deduped": "dropped_at IS NULL OR dropped_at IN ('cleaned', 'verified')",
        "cleaned": "dropped_at IS NULL OR dropped_at = 'verified'",
    }
    for stage, where in keep.items():
        con.execute(
            f"CREATE TABLE {stage} AS SELECT {_RECORD_COLUMNS} FROM src WHERE {where} ORDER BY b, source_line"
        )
    synthetic_rows = """
        SELECT record_id, batch, 'chat' AS task,
               [{'role': 'user', 'content': 'Answer concisely. ' || md5(record_id)},
                {'role': 'assistant', 'content': 'answer ' || md5(record_id || 'a')}] AS messages,
               NULL::VARCHAR, NULL::VARCHAR, NULL::VARCHAR, source_file, source_line, 'messages', 'CC-BY-4.0',
               '{"recipe":"concise_instructions"}', parent_ids, 'synthetic', b, NULL AS dropped_at
        FROM synth
    """
    con.execute(
        f"""
        CREATE TABLE synthetic AS SELECT {_RECORD_COLUMNS} FROM (
            SELECT * FROM src WHERE dropped_at IS NULL OR dropped_at = 'verified'
            UNION ALL {synthetic_rows}) ORDER BY b, source_line;
        CREATE TABLE verified AS
        SELECT {_RECORD_COLUMNS}, 'not_applicable' AS verdict, 'chat records are not verified' AS verdict_detail
        FROM synthetic s WHERE NOT EXISTS (
            SELECT 1 FROM src WHERE src.record_id = s.record_id AND src.dropped_at = 'verified');
        CREATE TABLE formatted AS
        SELECT *, CASE WHEN hash(record_id) % 20 = 0 THEN 'test' ELSE 'train' END AS split FROM verified;
        """
    )
    con.execute(
        """
        CREATE TABLE rejections AS
        SELECT record_id, dropped_at AS stage,
               CASE dropped_at WHEN 'raw' THEN 'invalid_json' WHEN 'deduped' THEN 'near_duplicate'
                    WHEN 'cleaned' THEN 'refusal' ELSE 'math_calculation_error' END AS rule,
               CASE dropped_at WHEN 'deduped'
                    THEN 'near duplicate of ' || split_part(record_id, ':', 1) || ':' || (source_line - 1)
                         || ' (estimated Jaccard 0.93)'
                    ELSE 'dropped by rule ' || dropped_at END AS detail,
               batch, 'run-' || b AS run_id, source_file, source_line
        FROM src WHERE dropped_at IS NOT NULL ORDER BY b, source_line;
        CREATE TABLE edges AS
        SELECT * FROM (
            SELECT 'deduped' AS stage, batch, record_id AS child_id,
                   split_part(record_id, ':', 1) || ':' || (source_line - 1) AS parent_id,
                   'duplicate_of' AS relation, detail
            FROM rejections WHERE stage = 'deduped'
            UNION ALL
            SELECT 'synthetic', batch, record_id, unnest(parent_ids), 'seed',
                   'recipe concise_instructions, template ' || template_id FROM synth);
        CREATE TABLE synthesis AS
        SELECT record_id, 'concise_instructions' AS recipe, 'instruction_template' AS kind, template_id,
               md5('template ' || template_id)[:12] AS template_hash,
               '{"kind": "instruction_template", "rate": 0.05}' AS params, 7::BIGINT AS seed,
               'rule-based' AS generator, batch
        FROM synth;
        CREATE TABLE redactions AS
        SELECT record_id, 0::INTEGER AS message_index, 'email' AS entity, 9::INTEGER AS "start",
               25::INTEGER AS "end", batch
        FROM cleaned WHERE source_line % 25 = 5;
        CREATE TABLE renders AS
        SELECT record_id, t.template, '<|begin_of_text|>' || messages[1].content || messages[2].content AS text,
               'release' AS batch
        FROM formatted, (VALUES ('chatml'), ('llama3')) t(template);
        """
    )
    con.execute(
        """
        CREATE TABLE stage_runs AS
        SELECT s.stage, batch, 'run-' || seq AS run_id, 0::BIGINT AS rows_in, 0::BIGINT AS created,
               0::BIGINT AS kept, 0::BIGINT AS rejected, '{}' AS rejected_by_rule, '{}' AS counters,
               '{}' AS config, 'cfg' || seq % 3 AS config_fingerprint, landed_at AS finished_at
        FROM batches, (VALUES ('raw'), ('deduped'), ('cleaned'), ('synthetic'), ('verified')) s(stage);
        DROP TABLE lines; DROP TABLE src; DROP TABLE synth; DROP TABLE files;
        """
    )
    return {t: st.first_row(con, f'SELECT count(*) FROM "{t}"')[0] for t in (*STAGES, "rejections", "edges")}


# --- the reference implementation (thresher/provenance.py before indexing), unchanged ---------------


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[object]) -> list[dict[str, Any]]:
    return query(con, sql, params).to_dicts()


def _stage_has(con: duckdb.DuckDBPyConnection, stage: str, record_id: str) -> dict[str, Any] | None:
    if not table_exists(con, stage):
        return None
    rows = _rows(con, f'SELECT * FROM "{stage}" WHERE record_id = ? LIMIT 1', [record_id])
    return rows[0] if rows else None


def reference_trace(con: duckdb.DuckDBPyConnection, record_id: str) -> dict[str, Any]:
    ledger = {
        r["stage"]: r
        for r in _rows(
            con,
            "SELECT stage, rule, detail, batch, source_file, source_line FROM rejections WHERE record_id = ?",
            [record_id],
        )
    }
    stages: list[dict[str, Any]] = []
    source: dict[str, Any] | None = None
    for stage in STAGES:
        row = _stage_has(con, stage, record_id)
        if row is not None:
            source = source or {
                k: row.get(k)
                for k in ("source_file", "source_line", "source_format", "batch", "license", "origin")
            }
            entry: dict[str, Any] = {"stage": stage, "status": "kept"}
            if stage == "verified":
                entry["verdict"] = row.get("verdict")
                entry["verdict_detail"] = row.get("verdict_detail")
            if stage == "formatted":
                entry["split"] = row.get("split")
            stages.append(entry)
        elif stage in ledger:
            hit = ledger[stage]
            source = source or {
                "source_file": hit["source_file"],
                "source_line": hit["source_line"],
                "batch": hit["batch"],
            }
            stages.append(
                {"stage": stage, "status": "rejected", "rule": hit["rule"], "detail": hit["detail"]}
            )
            break
        elif stages:
            stages.append({"stage": stage, "status": "not yet materialized"})
            break
    if source is None:
        raise KeyError(f"no record {record_id!r} in any stage or in the rejection ledger")
    result: dict[str, Any] = {"record_id": record_id, "source": source, "stages": stages}
    if table_exists(con, "edges"):
        result["duplicate_of"] = _rows(
            con,
            "SELECT parent_id AS record_id, detail FROM edges WHERE child_id = ? AND relation = 'duplicate_of'",
            [record_id],
        )
        result["duplicates_removed"] = _rows(
            con,
            "SELECT child_id AS record_id, detail FROM edges WHERE parent_id = ? AND relation = 'duplicate_of' "
            "ORDER BY child_id",
            [record_id],
        )
        seeds = _rows(
            con,
            "SELECT parent_id, detail FROM edges WHERE child_id = ? AND relation = 'seed' ORDER BY parent_id",
            [record_id],
        )
        if seeds:
            result["seeds"] = [
                {
                    "record_id": s["parent_id"],
                    "detail": s["detail"],
                    "source": _source_of(con, s["parent_id"]),
                }
                for s in seeds
            ]
    if table_exists(con, "synthesis"):
        synth = _rows(con, "SELECT * EXCLUDE (batch) FROM synthesis WHERE record_id = ?", [record_id])
        if synth:
            result["synthesis"] = synth[0]
    if table_exists(con, "redactions"):
        result["redactions"] = _rows(
            con,
            'SELECT message_index, entity, "start", "end" FROM redactions WHERE record_id = ? '
            'ORDER BY message_index, "start"',
            [record_id],
        )
    if table_exists(con, "renders"):
        result["templates"] = [
            r["template"]
            for r in _rows(
                con, "SELECT template FROM renders WHERE record_id = ? ORDER BY template", [record_id]
            )
        ]
    return result


def _source_of(con: duckdb.DuckDBPyConnection, record_id: str) -> dict[str, Any] | None:
    row = _stage_has(con, "raw", record_id)
    return {"source_file": row["source_file"], "source_line": row["source_line"]} if row else None


def reference_why(
    con: duckdb.DuckDBPyConnection, source_file: str, line: int | None = None
) -> list[dict[str, Any]]:
    params: list[object] = [source_file]
    line_clause = ""
    if line is not None:
        line_clause = " AND source_line = ?"
        params.append(line)
    sources = [
        f"SELECT record_id, source_line FROM rejections WHERE stage = 'raw' AND source_file = ?{line_clause}"
    ]
    all_params = list(params)
    if table_exists(con, "raw"):
        sources.insert(0, f"SELECT record_id, source_line FROM raw WHERE source_file = ?{line_clause}")
        all_params = params + params
    reached = [s for s in STAGES if table_exists(con, s)]
    reached_expr = " ".join(
        f"WHEN r.record_id IN (SELECT record_id FROM \"{s}\") THEN '{s}'" for s in reversed(reached)
    )
    split = (
        "(SELECT split FROM formatted f WHERE f.record_id = r.record_id)"
        if "formatted" in reached
        else "NULL"
    )
    sql = f"""
        WITH recs AS ({" UNION ALL ".join(sources)})
        SELECT r.record_id, r.source_line,
               j.stage AS rejected_at, j.rule, j.detail,
               {f"CASE {reached_expr} END" if reached_expr else "NULL"} AS furthest_stage,
               {split} AS split
        FROM recs r LEFT JOIN rejections j ON j.record_id = r.record_id
        ORDER BY r.source_line, r.record_id
    """
    out = []
    for row in _rows(con, sql, all_params):
        if row["rejected_at"]:
            fate = f"dropped at {row['rejected_at']} by {row['rule']}"
        elif row["furthest_stage"] == "formatted":
            fate = f"in the release ({row['split']} split)"
        else:
            fate = f"kept so far; furthest stage materialized: {row['furthest_stage']}"
        out.append({**row, "fate": fate})
    return out


# --- timing ------------------------------------------------------------------------------------------


def latencies(call: Callable[[Any], object], args: list[Any]) -> tuple[float, float]:
    """p50 and p95 in milliseconds of ``call(arg)`` over ``args`` (after one warm-up call)."""
    call(args[0])
    times = []
    for arg in args:
        start = time.perf_counter()
        call(arg)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.95 * len(times)))]


def samples(con: duckdb.DuckDBPyConnection, traces: int, lines: int, files: int) -> dict[str, list[Any]]:
    """Record ids of every kind, file:line pairs and whole files, drawn reproducibly."""
    rng = random.Random(SEED)

    def pick(sql: str, n: int) -> list[Any]:
        rows = [tuple(r) for r in con.sql(sql).fetchall()]
        return rng.sample(rows, min(n, len(rows)))

    released = pick(
        "SELECT record_id FROM formatted WHERE origin = 'source' USING SAMPLE 5000 ROWS", traces // 2
    )
    synthetic = pick(
        "SELECT record_id FROM formatted WHERE origin = 'synthetic' USING SAMPLE 2000 ROWS", traces // 4
    )
    dropped = pick(
        "SELECT record_id FROM rejections USING SAMPLE 5000 ROWS", traces - len(released) - len(synthetic)
    )
    ids = [r[0] for r in released + synthetic + dropped]
    rng.shuffle(ids)
    file_lines = pick(
        "SELECT source_file, source_line FROM rejections WHERE stage = 'raw' USING SAMPLE 2000 ROWS",
        lines // 5,
    )
    file_lines += pick(
        "SELECT source_file, source_line FROM raw USING SAMPLE 5000 ROWS", lines - len(file_lines)
    )
    whole = [r[0] for r in pick("SELECT source_file FROM batches", files)]
    return {"ids": ids, "lines": file_lines, "files": whole}


def rewrite_cost(con: duckdb.DuckDBPyConnection, repeats: int = 3) -> float:
    """Median milliseconds to replace one batch of ``raw`` (DELETE + INSERT in a transaction, as write_stage does)."""
    batch = st.first_row(con, "SELECT batch FROM batches ORDER BY seq LIMIT 1 OFFSET 1")[0]
    frame = query(con, "SELECT * FROM raw WHERE batch = ?", [batch])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        con.execute("BEGIN TRANSACTION")
        st.replace_rows(con, "raw", frame, {"batch": batch})
        con.execute("COMMIT")
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def release_frames(con: duckdb.DuckDBPyConnection) -> tuple[Any, Any]:
    return query(con, "SELECT * FROM formatted"), query(con, "SELECT * EXCLUDE (batch) FROM renders")


def release_rewrite_cost(con: duckdb.DuckDBPyConnection) -> float:
    """Seconds for ``write_stage`` to rewrite the whole release (formatted and its renders) unchanged."""
    kept, renders = release_frames(con)
    result = StageResult(rows_in=kept.height, kept=kept, rejected=empty_ledger(), tables={"renders": renders})
    start = time.perf_counter()
    st.write_stage(con, "formatted", st.RELEASE_BATCH, "bench", result, config={}, config_fingerprint="bench")
    return time.perf_counter() - start


def naive_release_rewrite_cost(con: duckdb.DuckDBPyConnection) -> float:
    """The same rewrite as one transaction of ``replace_rows`` calls, leaving any index in place."""
    kept, renders = release_frames(con)
    renders = renders.with_columns(batch=pl.lit(st.RELEASE_BATCH))
    start = time.perf_counter()
    con.execute("BEGIN TRANSACTION")
    st.replace_rows(con, "formatted", kept, {})
    st.replace_rows(con, "renders", renders, {"batch": st.RELEASE_BATCH})
    con.execute("COMMIT")
    return time.perf_counter() - start


def measure(
    con: duckdb.DuckDBPyConnection, picked: dict[str, list[Any]], trace: Any, why: Any
) -> dict[str, Any]:
    return {
        "trace": latencies(lambda r: trace(con, r), picked["ids"]),
        "why_line": latencies(lambda fl: why(con, *fl), picked["lines"]),
        "why_file": latencies(lambda f: why(con, f), picked["files"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--traces", type=int, default=200)
    parser.add_argument("--lines", type=int, default=50)
    parser.add_argument("--files", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="thresher-provenance-") as tmp:
        path = Path(tmp) / "thresher.duckdb"
        with duckdb.connect(str(path)) as con:
            start = time.perf_counter()
            counts = build_store(con, args.records, args.batches)
            con.execute("CHECKPOINT")
            build_s = time.perf_counter() - start
        plain_mb = path.stat().st_size / 2**20
        with duckdb.connect(str(path)) as con:
            picked = samples(con, args.traces, args.lines, args.files)
            rewrite_plain = rewrite_cost(con)
            release_plain = naive_release_rewrite_cost(con)
            ref = measure(con, picked, reference_trace, reference_why)
            start = time.perf_counter()
            st.ensure_indexes(con)
            con.execute("CHECKPOINT")
            index_s = time.perf_counter() - start
        indexed_mb = path.stat().st_size / 2**20
        with duckdb.connect(str(path)) as con:
            rewrite_indexed = rewrite_cost(con)
            release_naive = naive_release_rewrite_cost(con)
            release_indexed = release_rewrite_cost(con)
            ref_indexed = measure(con, picked, reference_trace, reference_why)
            new = measure(con, picked, provenance.trace, provenance.why)
            agree = all(_same_trace(reference_trace(con, r), provenance.trace(con, r)) for r in picked["ids"])
            agree = agree and all(
                _same_why(reference_why(con, *fl), provenance.why(con, *fl)) for fl in picked["lines"]
            )
            agree = agree and all(
                _same_why(reference_why(con, f), provenance.why(con, f)) for f in picked["files"]
            )
            start = time.perf_counter()
            sidecar = write_sidecar(con, Path(tmp) / "release")
            sidecar_s = time.perf_counter() - start
            sidecar_mb = {n: round(p.stat().st_size / 2**20, 1) for n, p in sidecar.items() if n != "readme"}

    print(
        f"store: {counts['formatted']:,} released records, {counts['raw']:,} raw, {counts['rejections']:,} "
        f"rejections, {counts['edges']:,} edges; built in {build_s:.1f} s ({plain_mb:.0f} MiB)"
    )
    print(
        f"indexes (thresher.store.ensure_indexes): built in {index_s:.1f} s, file {plain_mb:.0f} -> {indexed_mb:.0f} MiB"
    )
    print(f"{'lookup (ms)':<22} {'reference':>18} {'reference+indexes':>18} {'thresher':>18}   n")
    print(f"{'':<22} {'p50 / p95':>18} {'p50 / p95':>18} {'p50 / p95':>18}")
    for key, label, n in (
        ("trace", "trace(RECORD_ID)", len(picked["ids"])),
        ("why_line", "why(FILE:LINE)", len(picked["lines"])),
        ("why_file", "why(FILE) whole file", len(picked["files"])),
    ):
        cells = [f"{m[key][0]:.1f} / {m[key][1]:.1f}" for m in (ref, ref_indexed, new)]
        print(f"{label:<22} {cells[0]:>18} {cells[1]:>18} {cells[2]:>18}   {n}")
    print(
        f"batch rewrite of raw (DELETE+INSERT of one {counts['raw'] // args.batches:,}-row batch): "
        f"{rewrite_plain:.0f} ms without indexes, {rewrite_indexed:.0f} ms with"
    )
    print(
        f"release rewrite (write_stage formatted: {counts['formatted']:,} records and their renders): "
        f"{release_plain:.1f} s without indexes; with them {release_naive:.1f} s left in place, "
        f"{release_indexed:.1f} s dropped and rebuilt (what write_stage does)"
    )
    print(f"sidecar (thresher.sidecar.write_sidecar): {sidecar_s:.1f} s, {sidecar_mb} MiB")
    print(f"answers agree with the reference: {agree}")

    def ms(m: dict[str, Any]) -> dict[str, Any]:
        return {k: {"p50": round(v[0], 2), "p95": round(v[1], 2)} for k, v in m.items()}

    summary = {
        "benchmark": "provenance",
        "released_records": counts["formatted"],
        "tables": counts,
        "build_seconds": round(build_s, 2),
        "file_mib": {"without_indexes": round(plain_mb, 1), "with_indexes": round(indexed_mb, 1)},
        "index_build_seconds": round(index_s, 2),
        "reference_ms": ms(ref),
        "reference_with_indexes_ms": ms(ref_indexed),
        "thresher_ms": ms(new),
        "batch_rewrite_ms": {
            "without_indexes": round(rewrite_plain, 1),
            "with_indexes": round(rewrite_indexed, 1),
        },
        "release_rewrite_seconds": {
            "without_indexes": round(release_plain, 2),
            "with_indexes_left_in_place": round(release_naive, 2),
            "with_indexes_dropped_and_rebuilt": round(release_indexed, 2),
        },
        "sidecar": {"seconds": round(sidecar_s, 2), "mib": sidecar_mb},
        "samples": {k: len(v) for k, v in picked.items()},
        "answers_agree": agree,
    }
    print(json.dumps(summary))


def _same_trace(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same answer, ignoring what thresher adds (file sha256, runs and config fingerprints per stage)."""
    keys = ("record_id", "duplicate_of", "duplicates_removed", "redactions", "templates", "synthesis")
    same = all(a.get(k) == b.get(k) for k in keys)
    same = (
        same
        and [{k: s2.get(k) for k in s1} for s1, s2 in zip(a["stages"], b["stages"], strict=False)]
        == a["stages"]
    )
    same = same and len(a["stages"]) == len(b["stages"])
    same = same and {k: a["source"].get(k) for k in ("source_file", "source_line", "batch")} == {
        k: b["source"].get(k) for k in ("source_file", "source_line", "batch")
    }
    return same and [s["record_id"] for s in a.get("seeds", [])] == [
        s["record_id"] for s in b.get("seeds", [])
    ]


def _same_why(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    keys = ("record_id", "source_line", "fate")
    return [{k: r[k] for k in keys} for r in a] == [{k: r[k] for k in keys} for r in b]


if __name__ == "__main__":
    main()
