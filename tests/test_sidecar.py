"""The release's provenance sidecar answers `trace` and `why` with plain DuckDB over its Parquet files,
exactly as Thresher answers them from the store."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from tests.test_provenance import (
    CLEAN,
    DUPLICATE,
    EMAIL,
    MALFORMED,
    PII,
    SOURCE_FILE,
    build_store,
    corpus_lines,
)
from thresher import provenance
from thresher import store as st
from thresher.sidecar import write_sidecar


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    folder = tmp_path_factory.mktemp("sidecar")
    store_path = build_store(folder / "home")
    with st.Store(store_path).connect(read_only=True) as con:
        paths = write_sidecar(con, folder / "release")
    return store_path, paths


@pytest.fixture
def con(built: tuple[Path, dict[str, Path]]) -> Iterator[duckdb.DuckDBPyConnection]:
    with st.Store(built[0]).connect(read_only=True) as connection:
        yield connection


@pytest.fixture
def auditor(
    built: tuple[Path, dict[str, Path]], monkeypatch: pytest.MonkeyPatch
) -> duckdb.DuckDBPyConnection:
    """A DuckDB with no access to the store, in the sidecar folder, as the README tells an auditor."""
    monkeypatch.chdir(built[1]["records"].parent)
    return duckdb.connect()


def rows(auditor: duckdb.DuckDBPyConnection, sql: str, params: list[object] | None = None) -> list[dict]:
    return auditor.sql(sql, params=params).pl().to_dicts()


def readme_sql(built: tuple[Path, dict[str, Path]], heading: str) -> str:
    """The first SQL block of the README section ``heading``."""
    text = built[1]["readme"].read_text()
    section = text.split(f"## {heading}", 1)[1]
    return re.search(r"```sql\n(.*?)```", section, re.S).group(1)


def record_id_of_line(con: duckdb.DuckDBPyConnection, line: int) -> str:
    return provenance.why(con, SOURCE_FILE, line)[0]["record_id"]


def test_the_sidecar_is_two_parquet_files_and_a_readme_beside_the_release(built) -> None:
    _, paths = built
    assert {name: path.name for name, path in paths.items()} == {
        "records": "records.parquet",
        "rejections": "rejections.parquet",
        "readme": "README.md",
    }
    assert all(path.parent.name == "provenance" and path.exists() for path in paths.values())


def test_records_has_one_row_per_released_record_and_rejections_is_the_whole_ledger(con, auditor) -> None:
    released = st.query(con, "SELECT record_id FROM formatted ORDER BY record_id")["record_id"].to_list()
    assert [r["record_id"] for r in rows(auditor, "SELECT record_id FROM 'records.parquet'")] == released
    ledger = st.query(con, "SELECT record_id, stage, rule FROM rejections ORDER BY record_id").to_dicts()
    assert (
        rows(auditor, "SELECT record_id, stage, rule FROM 'rejections.parquet' ORDER BY record_id") == ledger
    )


def test_a_released_record_traces_to_the_same_source_path_runs_and_configuration(con, auditor) -> None:
    record_id = record_id_of_line(con, CLEAN)
    trace = provenance.trace(con, record_id)
    (row,) = rows(auditor, "SELECT * FROM 'records.parquet' WHERE record_id = ?", [record_id])
    source = trace["source"]
    assert (row["source_file"], row["source_line"], row["source_sha256"], row["batch"], row["origin"]) == (
        source["source_file"],
        source["source_line"],
        source["sha256"],
        source["batch"],
        source["origin"],
    )
    assert row["split"] == trace["stages"][-1]["split"]
    assert row["verdict"] == trace["stages"][-2]["verdict"]
    assert row["path"] == [
        {"stage": s["stage"], "run_id": s["run_id"], "config_fingerprint": s["config_fingerprint"]}
        for s in trace["stages"]
    ]
    assert row["templates"] == trace["templates"]
    assert [(d["record_id"], d["detail"]) for d in row["duplicates_removed"]] == [
        (d["record_id"], d["detail"]) for d in trace["duplicates_removed"]
    ]
    assert row["duplicates_removed"][0]["source_line"] == DUPLICATE


def test_a_synthetic_record_carries_its_seeds_and_synthesis_parameters(con, auditor, built) -> None:
    record_id = st.first_row(con, "SELECT min(record_id) FROM formatted WHERE origin = 'synthetic'")[0]
    trace = provenance.trace(con, record_id)
    (row,) = rows(auditor, "SELECT * FROM 'records.parquet' WHERE record_id = ?", [record_id])
    assert row["seeds"] == [{"record_id": s["record_id"], **s["source"]} for s in trace["seeds"]]
    assert row["synthesis"] == {k: v for k, v in trace["synthesis"].items() if k != "record_id"}
    assert [p["stage"] for p in row["path"]] == ["synthetic", "verified", "formatted"]
    # The README's query finds the synthetic record from its seed's line.
    seed = row["seeds"][0]
    sql = readme_sql(built, "Which released records").replace("alpaca.json", seed["source_file"])
    contributed = rows(auditor, sql.replace("42", str(seed["source_line"])))
    assert {"record_id": record_id, "origin": "synthetic"} in contributed


def test_a_dropped_duplicate_names_its_kept_twin_in_the_ledger(con, auditor) -> None:
    record_id = record_id_of_line(con, DUPLICATE)
    trace = provenance.trace(con, record_id)
    (row,) = rows(auditor, "SELECT * FROM 'rejections.parquet' WHERE record_id = ?", [record_id])
    assert (row["stage"], row["rule"], row["detail"]) == (
        trace["stages"][-1]["stage"],
        trace["stages"][-1]["rule"],
        trace["stages"][-1]["detail"],
    )
    assert [row["duplicate_of"]] == [d["record_id"] for d in trace["duplicate_of"]]
    assert row["origin"] == "source"
    assert row["source_sha256"] == trace["source"]["sha256"]


def test_redactions_match_and_carry_no_text(con, auditor) -> None:
    record_id = record_id_of_line(con, PII)
    (row,) = rows(auditor, "SELECT redactions FROM 'records.parquet' WHERE record_id = ?", [record_id])
    assert row["redactions"] == [
        {"entity": r["entity"], "message_index": r["message_index"], "start": r["start"], "end": r["end"]}
        for r in provenance.trace(con, record_id)["redactions"]
    ]


def test_no_record_text_is_in_the_sidecar(auditor) -> None:
    everything = json.dumps(
        rows(auditor, "SELECT * FROM 'records.parquet'")
        + rows(auditor, "SELECT * FROM 'rejections.parquet'"),
        default=str,
    )
    assert EMAIL not in everything
    for line_number, line in enumerate(corpus_lines(), start=1):
        if line_number != MALFORMED:
            assert all(m["content"] not in everything for m in json.loads(line)["messages"])


@pytest.mark.parametrize("line", [None, CLEAN, DUPLICATE, MALFORMED, PII])
def test_the_readme_why_query_gives_thresher_why(con, auditor, built, line: int | None) -> None:
    sql = readme_sql(built, "Why").replace("'alpaca.json'", "?")
    if line is None:
        sql = sql.replace(" AND source_line = 42", "")
        params: list[object] = [SOURCE_FILE, SOURCE_FILE]
    else:
        sql = sql.replace("source_line = 42", "source_line = ?")
        params = [SOURCE_FILE, line, SOURCE_FILE, line]
    expected = [
        {"source_line": r["source_line"], "record_id": r["record_id"], "fate": r["fate"], "rule": r["rule"]}
        for r in provenance.why(con, SOURCE_FILE, line)
    ]
    got = [
        {k: r[k] for k in ("source_line", "record_id", "fate", "rule")} for r in rows(auditor, sql, params)
    ]
    assert got == expected
    if line is None:
        assert [r["source_line"] for r in got] == list(range(1, len(corpus_lines()) + 1))


def test_the_readme_trace_queries_run(auditor, built, con) -> None:
    sql = readme_sql(built, "Trace a record").replace("eb60eab27f0f:42", record_id_of_line(con, CLEAN))
    for statement in filter(None, (s.strip() for s in sql.split(";"))):
        auditor.sql(statement).fetchall()


def test_the_same_store_gives_byte_identical_files(built, con, tmp_path: Path) -> None:
    again = write_sidecar(con, tmp_path)
    for name in ("records", "rejections", "readme"):
        assert again[name].read_bytes() == built[1][name].read_bytes()


def test_a_store_without_a_release_has_no_sidecar(tmp_path: Path) -> None:
    with st.Store(tmp_path / "empty.duckdb").connect() as con, pytest.raises(LookupError, match="formatted"):
        write_sidecar(con, tmp_path / "out")
