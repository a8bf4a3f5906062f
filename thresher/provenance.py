"""Answers to a reviewer's questions, straight from the store: where did this record come from,
what happened to it at each stage, where did the records of that file end up, how is each stage doing.

Every answer is plain data (dicts and lists) so that the CLI can print it for people or as JSON
for scripts, and so that an auditor could write the same SQL against the DuckDB file.
"""

from __future__ import annotations

import json
from typing import Any

import duckdb

from thresher.store import STAGES, query, table_exists


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[object]) -> list[dict[str, Any]]:
    return query(con, sql, params).to_dicts()


def _stage_has(con: duckdb.DuckDBPyConnection, stage: str, record_id: str) -> dict[str, Any] | None:
    if not table_exists(con, stage):
        return None
    rows = _rows(con, f'SELECT * FROM "{stage}" WHERE record_id = ? LIMIT 1', [record_id])
    return rows[0] if rows else None


def trace(con: duckdb.DuckDBPyConnection, record_id: str) -> dict[str, Any]:
    """A record's path from its source through every stage, with dedup, synthesis and redaction events."""
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
            "SELECT child_id AS record_id, detail FROM edges WHERE parent_id = ? AND relation = 'duplicate_of' ORDER BY child_id",
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
            'SELECT message_index, entity, "start", "end" FROM redactions WHERE record_id = ? ORDER BY message_index, "start"',
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


def why(con: duckdb.DuckDBPyConnection, source_file: str, line: int | None = None) -> list[dict[str, Any]]:
    """Where each record of a source file (or one line of it) ended up: the release, or the stage and rule that dropped it."""
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
