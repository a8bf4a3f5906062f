"""The DuckDB store: batch-scoped replacement, recounted conservation, acceptance order."""

from pathlib import Path

import polars as pl
import pytest

from thresher import store as st
from thresher.records import conform
from thresher.stage import StageResult


def records(ids: list[str], batch: str) -> pl.DataFrame:
    return conform(
        pl.DataFrame(
            {
                "record_id": ids,
                "batch": [batch] * len(ids),
                "task": ["chat"] * len(ids),
                "messages": [
                    [{"role": "user", "content": f"q {i}"}, {"role": "assistant", "content": "a"}]
                    for i in ids
                ],
                "source_file": ["f.jsonl"] * len(ids),
                "source_line": list(range(1, len(ids) + 1)),
                "origin": ["source"] * len(ids),
            }
        )
    )


def ledger(ids: list[str], rule: str) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "record_id": ids,
            "rule": [rule] * len(ids),
            "detail": ["why"] * len(ids),
            "source_file": ["f.jsonl"] * len(ids),
            "source_line": [9] * len(ids),
        }
    )


@pytest.fixture
def con(tmp_path: Path):
    with st.Store(tmp_path / "t.duckdb").connect() as connection:
        st.register_batch(connection, "b1", "f.jsonl", "aa", "/landing/f.jsonl")
        st.register_batch(connection, "b2", "g.jsonl", "bb", "/landing/g.jsonl")
        yield connection


def write(con, stage: str, batch: str, kept: list[str], rejected: list[str], rows_in: int) -> None:
    result = StageResult(rows_in=rows_in, kept=records(kept, batch), rejected=ledger(rejected, "some_rule"))
    st.write_stage(con, stage, batch, "run-1", result, config={}, config_fingerprint="x")


def test_batches_are_accepted_in_order_and_registration_is_idempotent(con) -> None:
    assert st.register_batch(con, "b1", "f.jsonl", "aa", "/landing/f.jsonl") == 1
    assert st.earlier_batches(con, "b2") == ["b1"]
    assert st.earlier_batches(con, "b1") == []


def test_rewriting_a_batch_replaces_only_that_batch(con) -> None:
    write(con, "raw", "b1", ["a", "b"], ["c"], rows_in=3)
    write(con, "raw", "b2", ["d"], [], rows_in=1)
    write(con, "raw", "b1", ["a"], ["b", "c"], rows_in=3)
    assert st.read_table(con, "raw", order_by="record_id")["record_id"].to_list() == ["a", "d"]
    assert st.first_row(con, "SELECT count(*) FROM rejections WHERE batch = 'b1'")[0] == 2


def test_conservation_is_recounted_from_the_tables(con) -> None:
    write(con, "raw", "b1", ["a", "b", "c"], [], rows_in=3)
    write(con, "deduped", "b1", ["a", "b"], ["c"], rows_in=3)
    assert st.conservation(con, "deduped", "b1").holds
    con.execute("DELETE FROM deduped WHERE record_id = 'b'")  # a record silently lost
    balance = st.conservation(con, "deduped", "b1")
    assert not balance.holds
    assert "VIOLATED" in balance.describe()


def test_a_stage_that_loses_records_cannot_be_written(con) -> None:
    result = StageResult(rows_in=5, kept=records(["a"], "b1"), rejected=ledger([], "x"))
    with pytest.raises(AssertionError, match="conservation violated"):
        st.write_stage(con, "raw", "b1", "run-1", result, config={}, config_fingerprint="x")


def test_prior_rows_come_from_earlier_batches_only(con) -> None:
    index = pl.DataFrame({"record_id": ["a", "d"], "batch": ["b1", "b2"], "h": [1, 2]})
    st.replace_rows(con, "idx", index, {})
    schema = {"record_id": pl.String, "batch": pl.String, "h": pl.Int64}
    assert st.read_prior(con, "idx", "b2", schema)["record_id"].to_list() == ["a"]
    assert st.read_prior(con, "idx", "b1", schema).is_empty()
    assert st.read_prior(con, "absent", "b2", schema).schema == pl.Schema(schema)


def test_new_columns_are_added_to_existing_tables(con) -> None:
    st.replace_rows(con, "t", pl.DataFrame({"batch": ["b1"], "a": [1]}), {"batch": "b1"})
    st.replace_rows(con, "t", pl.DataFrame({"batch": ["b2"], "a": [2], "b": ["x"]}), {"batch": "b2"})
    assert st.read_table(con, "t", order_by="batch")["b"].to_list() == [None, "x"]
