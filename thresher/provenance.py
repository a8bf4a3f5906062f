"""Answers to a reviewer's questions, straight from the store: where did this record come from,
what happened to it at each stage, where did the records of that file end up, how is each stage doing.

Every answer is plain data (dicts and lists) so that the CLI can print it for people or as JSON
for scripts, and so that an auditor could write the same SQL against the DuckDB file.
"""

from __future__ import annotations

import json
from typing import Any

import duckdb

from thresher.store import RELEASE_BATCH, STAGES, query, table_exists


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[object]) -> list[dict[str, Any]]:
    return query(con, sql, params).to_dicts()


# Columns a trace reports from each stage table, when the table has them.
_SOURCE_KEYS = ("source_file", "source_line", "source_format", "batch", "license", "origin")
_STAGE_KEYS = {"verified": ("verdict", "verdict_detail"), "formatted": ("verdict", "verdict_detail", "split")}


def _layout(con: duckdb.DuckDBPyConnection) -> dict[str, set[str]]:
    """Columns of every table in the store, in one query (instead of one ``table_exists`` per table)."""
    layout: dict[str, set[str]] = {}
    for table, column in query(
        con,
        "SELECT table_name, column_name FROM duckdb_columns() WHERE schema_name = 'main' AND NOT internal",
    ).rows():
        layout.setdefault(table, set()).add(column)
    return layout


def _stage_lookup(stage: str, columns: set[str]) -> str:
    keys = [k for k in (*_SOURCE_KEYS, *_STAGE_KEYS.get(stage, ())) if k in columns]
    fields = ", ".join(f"'{k}': \"{k}\"" for k in keys) or "'record_id': record_id"
    return f'(SELECT list({{{fields}}}) FROM "{stage}" WHERE record_id = $1) AS "{stage}"'


# The verified stage's per-record evidence, each listed in this order: every code attempt (the
# original and each LLM revision), the per-test results, the LLM judge's scores.
VERIFICATION_TABLES = {
    "verification_attempts": "attempt",
    "code_test_results": "attempt",
    "judgments": "judge_rubric",
}


def trace(con: duckdb.DuckDBPyConnection, record_id: str) -> dict[str, Any]:
    """A record's path from its source through every stage, with dedup, synthesis and redaction events.

    One query gathers every fact about the record (each part an index lookup on ``record_id``,
    ``child_id`` or ``parent_id``, see ``store.INDEXED_COLUMNS``), a second one its seeds' source
    lines, its file's sha256 and the runs and configuration fingerprints that touched it: a few
    milliseconds on a 1M-record release, where a query per table scanned every table.
    """
    layout = _layout(con)
    parts = [_stage_lookup(stage, layout[stage]) for stage in STAGES if stage in layout]
    parts.append(
        "(SELECT list({'stage': stage, 'rule': rule, 'detail': detail, 'batch': batch, 'run_id': run_id, "
        "'source_file': source_file, 'source_line': source_line}) FROM rejections WHERE record_id = $1) "
        "AS ledger"
    )
    if "edges" in layout:
        parts.append(
            "(SELECT list({'record_id': parent_id, 'relation': relation, 'detail': detail} "
            "ORDER BY parent_id) FROM edges WHERE child_id = $1) AS parents"
        )
        parts.append(
            "(SELECT list({'record_id': child_id, 'detail': detail} ORDER BY child_id) FROM edges "
            "WHERE parent_id = $1 AND relation = 'duplicate_of') AS duplicates_removed"
        )
    if "synthesis" in layout:
        parts.append(
            "(SELECT list(s) FROM (SELECT * EXCLUDE (batch) FROM synthesis WHERE record_id = $1) s) AS synthesis"
        )
    if "redactions" in layout:
        parts.append(
            "(SELECT list({'message_index': message_index, 'entity': entity, 'start': \"start\", "
            '\'end\': "end"} ORDER BY message_index, "start") FROM redactions WHERE record_id = $1) AS redactions'
        )
    if "renders" in layout:
        parts.append(
            "(SELECT list(template ORDER BY template) FROM renders WHERE record_id = $1) AS templates"
        )
    for table, order in VERIFICATION_TABLES.items():
        if table in layout:
            parts.append(
                f"(SELECT list(t ORDER BY {order}) FROM (SELECT * EXCLUDE (batch) FROM {table} "
                f"WHERE record_id = $1) t) AS {table}"
            )
    facts = query(con, f"SELECT {', '.join(parts)}", [record_id]).to_dicts()[0]

    ledger = {r["stage"]: r for r in facts.get("ledger") or []}
    stages: list[dict[str, Any]] = []
    source: dict[str, Any] | None = None
    for stage in STAGES:
        hits = facts.get(stage)
        if hits:
            row = hits[0]
            source = source or {k: row.get(k) for k in _SOURCE_KEYS}
            entry: dict[str, Any] = {"stage": stage, "status": "kept"}
            if stage == "verified":
                entry["verdict"] = row.get("verdict")
                entry["verdict_detail"] = row.get("verdict_detail")
            if stage == "formatted":
                entry["split"] = row.get("split")
            stages.append(entry)
        elif stage in ledger:
            hit = ledger[stage]
            source = source or {k: hit[k] for k in ("source_file", "source_line", "batch")}
            stages.append(
                {"stage": stage, "status": "rejected", "rule": hit["rule"], "detail": hit["detail"]}
            )
            break
        elif stages:
            stages.append({"stage": stage, "status": "not yet materialized"})
            break
    if source is None:
        raise KeyError(f"no record {record_id!r} in any stage or in the rejection ledger")

    parents = facts.get("parents") or []
    seeds = [p for p in parents if p["relation"] == "seed"]
    context = _context(con, layout, source.get("batch"), [s["record_id"] for s in seeds])
    source["sha256"] = context["sha256"]
    for entry in stages:
        run = context["runs"].get(entry["stage"])
        if run is not None and entry["status"] != "not yet materialized":
            entry["run_id"], entry["config_fingerprint"] = run
    result: dict[str, Any] = {"record_id": record_id, "source": source, "stages": stages}
    if "edges" in layout:
        result["duplicate_of"] = [
            {"record_id": p["record_id"], "detail": p["detail"]}
            for p in parents
            if p["relation"] == "duplicate_of"
        ]
        result["duplicates_removed"] = facts.get("duplicates_removed") or []
        if seeds:
            result["seeds"] = [
                {
                    "record_id": s["record_id"],
                    "detail": s["detail"],
                    "source": context["seed_sources"].get(s["record_id"]),
                }
                for s in seeds
            ]
    if facts.get("synthesis"):
        result["synthesis"] = facts["synthesis"][0]
    if "redactions" in layout:
        result["redactions"] = facts.get("redactions") or []
    if "renders" in layout:
        result["templates"] = facts.get("templates") or []
    for table in VERIFICATION_TABLES:
        if facts.get(table):
            result[table] = facts[table]
    return result


def _context(
    con: duckdb.DuckDBPyConnection, layout: dict[str, set[str]], batch: str | None, seed_ids: list[str]
) -> dict[str, Any]:
    """The batch's file sha256, the (run, config fingerprint) of each stage over it, the seeds' source lines."""
    parts = [
        "(SELECT any_value(sha256) FROM batches WHERE batch = $1) AS sha256",
        "(SELECT list({'stage': stage, 'run_id': run_id, 'fp': config_fingerprint}) FROM stage_runs "
        f"WHERE batch = $1 OR (stage = 'formatted' AND batch = '{RELEASE_BATCH}')) AS runs",
    ]
    params: list[object] = [batch]
    if seed_ids and "raw" in layout:
        # Constants, not a subquery: an IN list of constants is answered from the record_id index.
        marks = ", ".join(f"${i + 2}" for i in range(len(seed_ids)))
        parts.append(
            "(SELECT list({'record_id': record_id, 'source_file': source_file, 'source_line': source_line}) "
            f"FROM raw WHERE record_id IN ({marks})) AS seeds"
        )
        params.extend(seed_ids)
    row = query(con, f"SELECT {', '.join(parts)}", params).to_dicts()[0]
    return {
        "sha256": row["sha256"],
        "runs": {r["stage"]: (r["run_id"], r["fp"]) for r in row["runs"] or []},
        "seed_sources": {
            s["record_id"]: {"source_file": s["source_file"], "source_line": s["source_line"]}
            for s in row.get("seeds") or []
        },
    }


def why(con: duckdb.DuckDBPyConnection, source_file: str, line: int | None = None) -> list[dict[str, Any]]:
    """Where each record of a source file (or one line of it) ended up: the release, or the stage and rule that dropped it.

    One query: the file's records (``raw`` plus lines ``raw`` rejected) joined with the ledger, the
    kept twin of a dropped duplicate and the release. Only records neither dropped nor released (a
    batch still in flight) need a second query for the furthest stage they reached.
    """
    layout = _layout(con)
    line_clause = " AND source_line = $2" if line is not None else ""
    params: list[object] = [source_file] if line is None else [source_file, line]
    sources = [
        f"SELECT record_id, source_line FROM rejections WHERE stage = 'raw' AND source_file = $1{line_clause}"
    ]
    if "raw" in layout:
        sources.insert(0, f"SELECT record_id, source_line FROM raw WHERE source_file = $1{line_clause}")
    released = "formatted" in layout
    # Dedup writes one duplicate_of edge per dropped record (its kept twin), so this join adds no rows.
    twins = (
        "LEFT JOIN edges d ON d.child_id = r.record_id AND d.relation = 'duplicate_of'"
        if "edges" in layout
        else ""
    )
    sql = f"""
        WITH recs AS ({" UNION ALL ".join(sources)})
        SELECT r.record_id, r.source_line, j.stage AS rejected_at, j.rule, j.detail,
               {"f.record_id IS NOT NULL" if released else "false"} AS released,
               {"f.split" if released else "NULL::VARCHAR"} AS split,
               {"d.parent_id" if twins else "NULL::VARCHAR"} AS duplicate_of
        FROM recs r LEFT JOIN rejections j ON j.record_id = r.record_id
        {"LEFT JOIN formatted f ON f.record_id = r.record_id" if released else ""}
        {twins}
        ORDER BY r.source_line, r.record_id
    """
    rows = _rows(con, sql, params)
    in_flight = [r["record_id"] for r in rows if not r["rejected_at"] and not r["released"]]
    furthest = _furthest_stages(con, layout, in_flight) if in_flight else {}
    out = []
    for row in rows:
        released_here = row.pop("released")
        if row["rejected_at"]:
            # By conservation a record dropped at a stage was kept by the one before it.
            at = STAGES.index(row["rejected_at"]) if row["rejected_at"] in STAGES else 0
            row["furthest_stage"] = STAGES[at - 1] if at > 0 else None
            fate = f"dropped at {row['rejected_at']} by {row['rule']}"
        elif released_here:
            row["furthest_stage"] = "formatted"
            fate = f"in the release ({row['split']} split)"
        else:
            row["furthest_stage"] = furthest.get(row["record_id"])
            fate = f"kept so far; furthest stage materialized: {row['furthest_stage']}"
        out.append({**row, "fate": fate})
    return out


def _furthest_stages(
    con: duckdb.DuckDBPyConnection, layout: dict[str, set[str]], record_ids: list[str]
) -> dict[str, str]:
    """The last stage table holding each of ``record_ids`` (records kept so far, not yet released)."""
    reached = [s for s in STAGES if s in layout]
    if not reached:
        return {}
    union = " UNION ALL ".join(
        f'SELECT record_id, {i} AS ord FROM "{s}" WHERE record_id IN (SELECT unnest($1))'
        for i, s in enumerate(STAGES)
        if s in layout
    )
    frame = query(con, f"SELECT record_id, max(ord) AS ord FROM ({union}) GROUP BY record_id", [record_ids])
    return {rid: STAGES[ord_] for rid, ord_ in frame.rows()}


def status(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Per stage: rows in, created, kept, rejected by rule, and the latest check results."""
    if not table_exists(con, "stage_runs"):
        return []
    totals = {
        r["stage"]: r
        for r in _rows(
            con,
            "SELECT stage, count(*) AS batches, sum(rows_in) AS rows_in, sum(created) AS created, "
            "sum(kept) AS kept, sum(rejected) AS rejected FROM stage_runs GROUP BY stage",
            [],
        )
    }
    by_rule: dict[str, dict[str, int]] = {}
    for r in _rows(
        con,
        "SELECT stage, rule, count(*) AS n FROM rejections GROUP BY stage, rule ORDER BY stage, n DESC, rule",
        [],
    ):
        by_rule.setdefault(r["stage"], {})[r["rule"]] = int(r["n"])
    checks: dict[str, dict[str, Any]] = {}
    for r in _rows(
        con,
        "SELECT stage, check_name, count(*) FILTER (WHERE passed) AS passed, count(*) FILTER (WHERE NOT passed) AS failed, "
        "max(evaluated_at) AS last FROM check_results GROUP BY stage, check_name ORDER BY stage, check_name",
        [],
    ):
        checks.setdefault(r["stage"], {})[r["check_name"]] = {
            "passed": int(r["passed"]),
            "failed": int(r["failed"]),
        }
    out = []
    for stage in STAGES:
        if stage not in totals:
            continue
        t = totals[stage]
        out.append(
            {
                "stage": stage,
                "batches": int(t["batches"]),
                "rows_in": int(t["rows_in"]),
                "created": int(t["created"]),
                "kept": int(t["kept"]),
                "rejected": int(t["rejected"]),
                "rejected_by_rule": by_rule.get(stage, {}),
                "checks": checks.get(stage, {}),
            }
        )
    return out


def check_results(con: duckdb.DuckDBPyConnection, *, failing_only: bool = False) -> list[dict[str, Any]]:
    """The latest result of every check per stage and batch."""
    if not table_exists(con, "check_results"):
        return []
    where = "WHERE NOT passed" if failing_only else ""
    rows = _rows(
        con,
        f"SELECT stage, batch, check_name, passed, severity, description, metadata, run_id, evaluated_at "
        f"FROM check_results {where} ORDER BY stage, batch, check_name",
        [],
    )
    for row in rows:
        row["metadata"] = json.loads(row["metadata"])
        row["evaluated_at"] = str(row["evaluated_at"])
    order = {s: i for i, s in enumerate(STAGES)}
    return sorted(rows, key=lambda r: (order.get(r["stage"], 99), r["batch"], r["check_name"]))
