"""The release's provenance sidecar: Parquet files next to the exported data, auditable with DuckDB alone.

``write_sidecar`` writes ``<out_dir>/provenance/``:

- ``records.parquet``: one row per released record, with where it came from (file, line, the file's
  sha256 and batch), the stages it passed with the run and configuration fingerprint of each, its
  seeds (synthetic records) with their source lines, the duplicates dropped in its favour with theirs,
  its redactions (entity and offsets only), its verification verdict and its split;
- ``rejections.parquet``: the whole rejection ledger, with each row's origin, its file's sha256 and,
  for a dropped duplicate, the record kept in its place;
- ``README.md``: the SQL an auditor runs to trace a record or answer "why" for a file:line.

No record text is written (messages stay in the release files), so the sidecar can be shared with
reviewers who may not see the data. Everything is built by DuckDB ``COPY ... TO`` from the store,
ordered, so the same store gives byte-identical files.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from thresher.store import RELEASE_BATCH, STAGES, table_exists

README = """# Provenance of this release

Two Parquet files describe every record of the release and every record that was dropped on the way.
They contain no record text. Query them with DuckDB alone (`duckdb` CLI or `import duckdb`), from this
folder.

## `records.parquet`: one row per released record

| column | meaning |
|---|---|
| `record_id` | the id in the release files (`"id"`); source records are `<first 12 hex of the file's sha256>:<line>` |
| `split` | `train` or `test` |
| `origin` | `source` (a line of an input file) or `synthetic` (made from seed records) |
| `source_file`, `source_line` | the input file and line (for a synthetic record: its first seed's) |
| `source_sha256`, `batch` | sha256 of the input file's bytes, and its ingestion batch |
| `path` | the stages the record passed, in order: `stage`, Dagster `run_id`, `config_fingerprint` |
| `seeds` | synthetic records: the seed records (`record_id`, `source_file`, `source_line`) |
| `synthesis` | synthetic records: `generator`, `recipe`, `kind`, `template_id`, `template_hash`, `params`, `seed`; for LLM recipes also `model`, `endpoint` (its name, never a key), `cache_hit`, `prompt_tokens`, `completion_tokens`, `calls` |
| `duplicates_removed` | records dropped as duplicates of this one: `record_id`, `source_file`, `source_line`, `rule`, `detail` |
| `redactions` | PII replaced by placeholders: `entity`, `message_index`, `start`, `end` (offsets only) |
| `verdict`, `verdict_detail` | the verification outcome |
| `templates` | the chat templates the record was rendered with |

## `rejections.parquet`: the ledger, one row per dropped record

`record_id`, `stage` (where it was dropped), `rule`, `detail` (a sentence, never record text), `batch`,
`run_id`, `source_file`, `source_line`, `origin`, `source_sha256`, `duplicate_of` (for a dropped
duplicate: the record kept in its place).

## Trace a record

```sql
SELECT * FROM 'records.parquet' WHERE record_id = 'eb60eab27f0f:42';
SELECT * FROM 'rejections.parquet' WHERE record_id = 'eb60eab27f0f:42';
-- a synthetic record's seeds and where they came from
SELECT s.* FROM 'records.parquet', unnest(seeds) AS t(s) WHERE record_id = 's-46c7fbcfd6874c0d';
```

## Why: what became of a file's lines

```sql
SELECT source_line, record_id, 'in the release (' || split || ' split)' AS fate, NULL AS rule, NULL AS detail
FROM 'records.parquet' WHERE origin = 'source' AND source_file = 'alpaca.json' AND source_line = 42
UNION ALL
SELECT source_line, record_id, 'dropped at ' || stage || ' by ' || rule, rule, detail
FROM 'rejections.parquet' WHERE origin = 'source' AND source_file = 'alpaca.json' AND source_line = 42
ORDER BY source_line, record_id;
```

Drop `AND source_line = 42` for the whole file. Every line of an input file that held a record is in
exactly one of the two files (a line whose record is still being processed is in neither).

## Which released records a line contributed to

```sql
SELECT record_id, origin FROM 'records.parquet'
WHERE (source_file = 'alpaca.json' AND source_line = 42 AND origin = 'source')
   OR list_contains(list_transform(seeds, lambda s: s.source_file || ':' || s.source_line), 'alpaca.json:42');
```
"""


def _literal(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _records_sql(con: duckdb.DuckDBPyConnection) -> str:
    """One row per released record, every provenance fact attached (joins over the record ids)."""
    stages = [s for s in STAGES if table_exists(con, s)]
    hits = " UNION ALL ".join(
        f"SELECT record_id, batch, {i} AS ord, '{s}' AS stage FROM \"{s}\" "
        f"WHERE record_id IN (SELECT record_id FROM formatted)"
        for i, s in enumerate(stages)
    )
    optional = {
        "synthesis": """
            synth AS (SELECT record_id, {'generator': generator, 'recipe': recipe, 'kind': kind,
                              'template_id': template_id, 'template_hash': template_hash, 'params': params,
                              'seed': seed, 'model': model, 'endpoint': endpoint, 'cache_hit': cache_hit,
                              'prompt_tokens': prompt_tokens, 'completion_tokens': completion_tokens,
                              'calls': calls} AS synthesis
                      FROM synthesis),""",
        "redactions": """
            red AS (SELECT record_id, list({'entity': entity, 'message_index': message_index,
                                            'start': "start", 'end': "end"} ORDER BY message_index, "start", entity)
                        AS redactions
                    FROM redactions GROUP BY record_id),""",
        "renders": """
            tmpl AS (SELECT record_id, list(DISTINCT template ORDER BY template) AS templates
                     FROM renders GROUP BY record_id),""",
    }
    present = {name: table_exists(con, name) for name in optional}
    ctes = "".join(sql for name, sql in optional.items() if present[name])
    return f"""
        WITH hits AS ({hits}),
        path AS (
            SELECT h.record_id,
                   list({{'stage': h.stage, 'run_id': r.run_id, 'config_fingerprint': r.config_fingerprint}}
                        ORDER BY h.ord) AS path
            FROM hits h LEFT JOIN stage_runs r
              ON r.stage = h.stage AND r.batch = CASE WHEN h.stage = 'formatted' THEN '{RELEASE_BATCH}'
                                                      ELSE h.batch END
            GROUP BY h.record_id),
        seeds AS (
            SELECT e.child_id AS record_id,
                   list({{'record_id': e.parent_id, 'source_file': s.source_file, 'source_line': s.source_line}}
                        ORDER BY e.parent_id) AS seeds
            FROM edges e LEFT JOIN raw s ON s.record_id = e.parent_id
            WHERE e.relation = 'seed' GROUP BY e.child_id),
        dups AS (
            SELECT e.parent_id AS record_id,
                   list({{'record_id': e.child_id, 'source_file': j.source_file, 'source_line': j.source_line,
                          'rule': j.rule, 'detail': j.detail}} ORDER BY e.child_id) AS duplicates_removed
            FROM edges e LEFT JOIN rejections j ON j.record_id = e.child_id AND j.stage = e.stage
            WHERE e.relation = 'duplicate_of' GROUP BY e.parent_id),{ctes}
        files AS (SELECT batch, any_value(sha256) AS sha256 FROM batches GROUP BY batch)
        SELECT f.record_id, f.split, f.origin, f.source_file, f.source_line, b.sha256 AS source_sha256, f.batch,
               p.path, coalesce(s.seeds, []) AS seeds,
               {"y.synthesis" if present["synthesis"] else "NULL"} AS synthesis,
               coalesce(d.duplicates_removed, []) AS duplicates_removed,
               {"coalesce(x.redactions, [])" if present["redactions"] else "[]"} AS redactions,
               f.verdict, f.verdict_detail,
               {"coalesce(t.templates, [])" if present["renders"] else "[]::VARCHAR[]"} AS templates
        FROM formatted f
        LEFT JOIN files b ON b.batch = f.batch
        LEFT JOIN path p ON p.record_id = f.record_id
        LEFT JOIN seeds s ON s.record_id = f.record_id
        LEFT JOIN dups d ON d.record_id = f.record_id
        {"LEFT JOIN synth y ON y.record_id = f.record_id" if present["synthesis"] else ""}
        {"LEFT JOIN red x ON x.record_id = f.record_id" if present["redactions"] else ""}
        {"LEFT JOIN tmpl t ON t.record_id = f.record_id" if present["renders"] else ""}
        ORDER BY f.record_id
    """


def _rejections_sql(con: duckdb.DuckDBPyConnection) -> str:
    """The ledger in stage order, with origin, file sha256 and a dropped duplicate's kept twin."""
    order = ", ".join(f"'{s}'" for s in STAGES)
    synthetic = (
        "j.record_id IN (SELECT record_id FROM synthesis)" if table_exists(con, "synthesis") else "false"
    )
    return f"""
        SELECT j.record_id, j.stage, j.rule, j.detail, j.batch, j.run_id, j.source_file, j.source_line,
               CASE WHEN {synthetic} THEN 'synthetic' ELSE 'source' END AS origin,
               b.sha256 AS source_sha256, e.parent_id AS duplicate_of
        FROM rejections j
        LEFT JOIN (SELECT batch, any_value(sha256) AS sha256 FROM batches GROUP BY batch) b ON b.batch = j.batch
        LEFT JOIN edges e ON e.child_id = j.record_id AND e.stage = j.stage AND e.relation = 'duplicate_of'
        ORDER BY list_position([{order}], j.stage), j.source_file, j.source_line, j.record_id
    """


def write_sidecar(con: duckdb.DuckDBPyConnection, out_dir: Path) -> dict[str, Path]:
    """Write ``out_dir/provenance/{records,rejections}.parquet`` and its README; returns their paths.

    Needs the released records (the ``formatted`` table). Works on a read-only connection.
    """
    if not table_exists(con, "formatted"):
        raise LookupError("no release in the store: materialize `formatted` before writing its provenance")
    folder = Path(out_dir) / "provenance"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "records": folder / "records.parquet",
        "rejections": folder / "rejections.parquet",
        "readme": folder / "README.md",
    }
    for name, sql in (("records", _records_sql(con)), ("rejections", _rejections_sql(con))):
        con.execute(f"COPY ({sql}) TO {_literal(paths[name])} (FORMAT parquet, COMPRESSION zstd)")
    paths["readme"].write_text(README)
    return paths
