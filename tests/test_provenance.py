"""`thresher trace` and `thresher why`: where a record came from and where each line of a file went.

The store is built by the real library stages (ingest, dedup, cleaning, synthesis, verification,
formatting) over one small JSONL file whose lines are chosen to exercise every kind of answer: a
clean line, an exact duplicate of it, a malformed line, a line with an e-mail address, a refusal, and
seeds for a synthetic record.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from tests.conftest import REPO
from thresher import provenance
from thresher import store as st
from thresher.cleaning import Cleaner
from thresher.config import DatasetConfig, load_config
from thresher.dedup import INDEX_SCHEMA, Deduplicator
from thresher.formatting import Formatter
from thresher.ingest import batch_key, file_sha256, read_file
from thresher.synthesis import Synthesizer
from thresher.verification import Verifier

SOURCE_FILE = "chats.jsonl"
TOPICS = ["rivers", "volcanoes", "glaciers", "deserts", "forests", "oceans", "islands", "mountains"]
# Lines of the input file, 1-based, and what each one is for.
CLEAN, DUPLICATE, MALFORMED, PII, REFUSAL = 1, 2, 3, 4, 5
EMAIL = "jane.doe@example.org"


def chat(question: str, answer: str) -> str:
    return json.dumps(
        {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}
    )


def corpus_lines() -> list[str]:
    first = chat(
        "How do rivers shape the valleys they flow through over long periods of time?",
        "Rivers erode their beds and banks, carry the sediment downstream and deposit it where they slow down.",
    )
    lines = [
        first,
        first,  # an exact duplicate of line 1
        '{"messages": [{"role": "user", "content": "unterminated',
        chat(
            f"Please write a short note to {EMAIL} explaining how tides are caused.",
            "Tides are caused mainly by the gravitational pull of the Moon and, to a lesser degree, the Sun.",
        ),
        chat(
            "Explain in detail how I can pick the lock of my neighbour's front door tonight.",
            "I'm sorry, but I can't help with that request.",
        ),
    ]
    lines += [
        chat(
            f"What are some interesting facts about {topic} that a curious student should know?",
            f"Here are some facts about {topic}: they cover large parts of the Earth, they shape the climate "
            f"of the regions around them and they are home to many species found nowhere else.",
        )
        for topic in TOPICS
    ]
    return lines


def dataset_config() -> DatasetConfig:
    """The demo configuration with one synthesis recipe that uses every eligible seed."""
    recipe = {
        "name": "concise_instructions",
        "kind": "instruction_template",
        "rate": 1.0,
        "max_per_batch": 3,
        "templates": ["{instruction}\n\nAnswer concisely."],
    }
    return load_config(REPO / "configs" / "demo.yaml").with_overrides("synthesis", {"recipes": [recipe]})


def build_store(folder: Path) -> Path:
    """Run the library stages over one file exactly as the assets do, into ``folder/thresher.duckdb``."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / SOURCE_FILE
    data.write_text("\n".join(corpus_lines()) + "\n")
    config = dataset_config()
    sha = file_sha256(data)
    batch = batch_key(data, sha)
    path = folder / "thresher.duckdb"
    with st.Store(path).connect() as con:

        def write(stage: str, result: object, batch_: str = batch) -> None:
            st.write_stage(
                con, stage, batch_, f"run-{stage}", result, config={}, config_fingerprint=config.fingerprint()
            )

        def read(table: str) -> object:
            return st.read_table(con, table, {"batch": batch}, order_by="batch, source_line, record_id")

        st.register_batch(con, batch, data.name, sha, str(data))
        write("raw", read_file(data, batch, config.ingest))
        prior = st.read_prior(con, "dedup_index", batch, INDEX_SCHEMA)
        write("deduped", Deduplicator(config.dedup).run(read("raw"), prior))
        write("cleaned", Cleaner(config.clean).run(read("deduped")))
        write("synthetic", Synthesizer(config.synthesis).run(read("cleaned"), batch))
        write("verified", Verifier(config.verify).run(read("synthetic")))
        every = st.read_table(con, "verified", order_by="batch, source_line, record_id")
        write("formatted", Formatter(config.format).run(every), st.RELEASE_BATCH)
    return path


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_store(tmp_path_factory.mktemp("provenance"))


@pytest.fixture
def con(store_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    with st.Store(store_path).connect(read_only=True) as connection:
        yield connection


def line_id(con: duckdb.DuckDBPyConnection, line: int) -> str:
    (found,) = provenance.why(con, SOURCE_FILE, line)
    return found["record_id"]


def synthetic_id(con: duckdb.DuckDBPyConnection) -> str:
    return st.first_row(con, "SELECT record_id FROM formatted WHERE origin = 'synthetic' ORDER BY record_id")[
        0
    ]


# --- trace --------------------------------------------------------------------------------------------


def test_a_released_source_record_is_traced_from_its_line_through_every_stage(con) -> None:
    record_id = line_id(con, CLEAN)
    trace = provenance.trace(con, record_id)
    batch = st.first_row(con, "SELECT batch, sha256 FROM batches")
    assert trace["source"]["source_file"] == SOURCE_FILE
    assert trace["source"]["source_line"] == CLEAN
    assert (trace["source"]["batch"], trace["source"]["sha256"]) == batch
    assert trace["source"]["origin"] == "source"
    assert [(s["stage"], s["status"]) for s in trace["stages"]] == [(s, "kept") for s in st.STAGES]
    verified, formatted = trace["stages"][-2:]
    assert verified["verdict"]
    assert formatted["split"] in set(dataset_config().format.splits)
    assert trace["templates"] == sorted(dataset_config().format.templates)


def test_every_stage_names_the_run_and_configuration_that_processed_the_record(con) -> None:
    trace = provenance.trace(con, line_id(con, CLEAN))
    fingerprint = dataset_config().fingerprint()
    assert [(s["run_id"], s["config_fingerprint"]) for s in trace["stages"]] == [
        (f"run-{s}", fingerprint) for s in st.STAGES
    ]


def test_the_kept_record_lists_the_duplicates_removed_in_its_favour(con) -> None:
    trace = provenance.trace(con, line_id(con, CLEAN))
    assert [d["record_id"] for d in trace["duplicates_removed"]] == [line_id(con, DUPLICATE)]
    assert trace["duplicate_of"] == []


def test_a_dropped_duplicate_names_its_kept_twin(con) -> None:
    trace = provenance.trace(con, line_id(con, DUPLICATE))
    kept = line_id(con, CLEAN)
    assert trace["stages"][-1]["stage"] == "deduped"
    assert trace["stages"][-1]["status"] == "rejected"
    assert trace["stages"][-1]["rule"] == "exact_duplicate"
    assert [d["record_id"] for d in trace["duplicate_of"]] == [kept]
    assert kept in trace["duplicate_of"][0]["detail"]


def test_a_line_rejected_at_ingestion_is_traced_to_its_file_and_line(con) -> None:
    trace = provenance.trace(con, line_id(con, MALFORMED))
    assert trace["source"]["source_file"] == SOURCE_FILE
    assert trace["source"]["source_line"] == MALFORMED
    assert trace["stages"] == [
        {
            "stage": "raw",
            "status": "rejected",
            "rule": "invalid_json",
            "detail": trace["stages"][0]["detail"],
            "run_id": "run-raw",
            "config_fingerprint": dataset_config().fingerprint(),
        }
    ]


def test_redactions_are_reported_by_type_and_offsets_never_by_value(con) -> None:
    record_id = line_id(con, PII)
    trace = provenance.trace(con, record_id)
    assert [(r["message_index"], r["entity"]) for r in trace["redactions"]] == [(0, "email")]
    (redaction,) = trace["redactions"]
    messages = st.first_row(con, "SELECT messages FROM cleaned WHERE record_id = ?", [record_id])[0]
    # The offsets point at the placeholder in the cleaned message.
    assert messages[0]["content"][redaction["start"] : redaction["end"]] == "[EMAIL]"
    assert EMAIL not in json.dumps(trace, default=str)


def test_a_synthetic_record_shows_its_generator_template_parameters_and_seeds(con) -> None:
    record_id = synthetic_id(con)
    trace = provenance.trace(con, record_id)
    assert trace["source"]["origin"] == "synthetic"
    assert [s["stage"] for s in trace["stages"]] == ["synthetic", "verified", "formatted"]
    synthesis = trace["synthesis"]
    assert synthesis["generator"] and synthesis["recipe"] == "concise_instructions"
    assert synthesis["template_id"] == 0 and len(synthesis["template_hash"]) == 12
    assert json.loads(synthesis["params"])["rate"] == 1.0
    parents = st.first_row(con, "SELECT parent_ids FROM synthetic WHERE record_id = ?", [record_id])[0]
    assert [s["record_id"] for s in trace["seeds"]] == sorted(parents)
    for seed in trace["seeds"]:
        line = st.first_row(con, "SELECT source_line FROM raw WHERE record_id = ?", [seed["record_id"]])[0]
        assert seed["source"] == {"source_file": SOURCE_FILE, "source_line": line}


def test_an_unknown_record_is_a_key_error_naming_it(con) -> None:
    with pytest.raises(KeyError, match="nope:1"):
        provenance.trace(con, "nope:1")


# --- why ----------------------------------------------------------------------------------------------


def test_why_accounts_for_every_line_of_the_file_once(con) -> None:
    rows = provenance.why(con, SOURCE_FILE)
    assert [r["source_line"] for r in rows] == list(range(1, len(corpus_lines()) + 1))


def test_why_gives_each_line_its_fate(con) -> None:
    fates = {r["source_line"]: r for r in provenance.why(con, SOURCE_FILE)}
    assert fates[CLEAN]["fate"].startswith("in the release (")
    assert fates[CLEAN]["split"] in set(dataset_config().format.splits)
    assert fates[CLEAN]["furthest_stage"] == "formatted"
    assert fates[DUPLICATE]["fate"] == "dropped at deduped by exact_duplicate"
    assert fates[DUPLICATE]["duplicate_of"] == fates[CLEAN]["record_id"]
    assert fates[DUPLICATE]["furthest_stage"] == "raw"
    assert fates[MALFORMED]["fate"] == "dropped at raw by invalid_json"
    assert fates[MALFORMED]["furthest_stage"] is None
    assert fates[REFUSAL]["fate"] == "dropped at cleaned by refusal"


def test_why_for_one_line_is_that_line_of_the_whole_file_answer(con) -> None:
    whole = {r["source_line"]: r for r in provenance.why(con, SOURCE_FILE)}
    for line in (CLEAN, DUPLICATE, MALFORMED, PII):
        assert provenance.why(con, SOURCE_FILE, line) == [whole[line]]


def test_why_for_an_unknown_file_or_line_is_empty(con) -> None:
    assert provenance.why(con, "other.jsonl") == []
    assert provenance.why(con, SOURCE_FILE, 999) == []


def test_a_record_still_in_flight_reports_the_furthest_stage_it_reached(
    tmp_path: Path, store_path: Path
) -> None:
    copy = tmp_path / "partial.duckdb"
    copy.write_bytes(store_path.read_bytes())
    with st.Store(copy).connect() as con:
        con.execute("DROP TABLE formatted")
        fates = {r["source_line"]: r for r in provenance.why(con, SOURCE_FILE)}
        assert fates[CLEAN]["fate"] == "kept so far; furthest stage materialized: verified"
        trace = provenance.trace(con, fates[CLEAN]["record_id"])
        assert trace["stages"][-1] == {"stage": "formatted", "status": "not yet materialized"}


# --- indexes ------------------------------------------------------------------------------------------


def test_the_store_indexes_the_columns_provenance_looks_up(con) -> None:
    tables = set(st.query(con, "SELECT table_name FROM duckdb_indexes()")["table_name"])
    assert set(st.STAGES) | {"rejections", "edges", "synthesis", "redactions", "renders"} <= tables


def test_indexes_are_added_to_a_store_written_before_they_existed(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as old:
        old.execute("CREATE TABLE raw AS SELECT 'a:1' AS record_id, 'b' AS batch")
    with st.Store(path).connect() as con:
        assert st.ensure_indexes(con) == []  # connect already created them
        names = set(st.query(con, "SELECT index_name FROM duckdb_indexes()")["index_name"])
    assert {"raw_record_id_idx", "rejections_record_id_idx", "edges_child_id_idx"} <= names
