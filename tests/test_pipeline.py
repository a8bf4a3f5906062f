"""End to end: the demo corpus through every stage with real Dagster runs over a real DuckDB file,
measured against the generator's ground truth."""

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines import cli
from tests.openlineage_spec import validate_event
from thresher import provenance
from thresher import store as st
from thresher.democorpus import load_ground_truth

pytestmark = pytest.mark.integration

ROWS = 2_000
STAGE_TABLES = ["raw", "deduped", "cleaned", "synthetic", "verified", "formatted"]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A THRESHER_HOME with the demo corpus ingested through every stage (once for the module)."""
    home = tmp_path_factory.mktemp("thresher-home")
    saved = {k: os.environ.get(k) for k in ("THRESHER_HOME", "DAGSTER_HOME", "THRESHER_CONFIG")}
    os.environ["THRESHER_HOME"] = str(home)
    os.environ.pop("THRESHER_CONFIG", None)
    try:
        assert cli.main(["demo-corpus", "--rows", str(ROWS), "--seed", "3"]) == 0
        assert cli.main(["ingest", str(home / "demo-corpus" / "files")]) == 0
        yield home
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def con(home: Path) -> Iterator[object]:
    with st.Store(home / "thresher.duckdb").connect(read_only=True) as connection:
        yield connection


@pytest.fixture(scope="module")
def truth(home: Path) -> list[dict]:
    return list(load_ground_truth(home / "demo-corpus" / "ground_truth.jsonl"))


def fates(con) -> dict[tuple[str, int], dict]:
    """(source file, line) -> where the record ended: {"stage", "rule"} if rejected, else {"stage": "formatted"}."""
    out = {}
    for row in st.query(
        con,
        "SELECT source_file, source_line, stage, rule FROM rejections WHERE NOT starts_with(record_id, 's-')",
    ).to_dicts():
        out[(row["source_file"], row["source_line"])] = {"stage": row["stage"], "rule": row["rule"]}
    for row in st.query(
        con, "SELECT source_file, source_line FROM formatted WHERE origin = 'source'"
    ).to_dicts():
        out[(row["source_file"], row["source_line"])] = {"stage": "formatted", "rule": None}
    return out


def test_conservation_holds_for_every_stage_and_batch(con) -> None:
    runs = st.query(con, "SELECT stage, batch FROM stage_runs").rows()
    assert {stage for stage, _ in runs} == set(STAGE_TABLES)
    for stage, batch in runs:
        balance = st.conservation(con, stage, batch)
        assert balance.holds, balance.describe()


def test_every_check_passed(con) -> None:
    results = provenance.check_results(con)
    assert {r["stage"] for r in results} == set(STAGE_TABLES)
    failing = [(r["stage"], r["batch"], r["check_name"], r["metadata"]) for r in results if not r["passed"]]
    assert failing == []


def test_every_planted_problem_is_rejected_by_the_expected_stage_and_rule(con, truth: list[dict]) -> None:
    ended = fates(con)
    expected = [t for t in truth if t.get("expect")]
    assert expected, "the ground truth plants problems"
    wrong = []
    for item in expected:
        got = ended.get((item["file"], item["line"]))
        if got != {"stage": item["expect"]["stage"], "rule": item["expect"]["rule"]}:
            wrong.append((item["kind"], item["file"], item["line"], item["expect"], got))
    assert wrong == [], f"{len(wrong)} of {len(expected)} planted problems ended elsewhere: {wrong[:10]}"


def test_clean_records_reach_the_release(con, truth: list[dict]) -> None:
    planted = {(t["file"], t["line"]) for t in truth if t.get("expect")}
    lost = [
        (key, fate) for key, fate in fates(con).items() if key not in planted and fate["stage"] != "formatted"
    ]
    assert lost == [], f"{len(lost)} clean records were dropped: {lost[:10]}"


def test_planted_pii_is_redacted_everywhere(home: Path, con, truth: list[dict]) -> None:
    values = [e["value"] for t in truth if t["kind"] == "pii" for e in t["entities"]]
    assert values, "the ground truth plants PII"
    release_text = "".join(
        p.read_text() for pattern in ("*.jsonl", "*.json", "*.md") for p in (home / "release").rglob(pattern)
    )
    lineage_text = (home / "lineage" / "events.jsonl").read_text()
    cleaned_text = "\n".join(
        st.query(
            con,
            "SELECT list_aggregate(list_transform(messages, lambda m: m.content), 'string_agg', '\n') AS t FROM cleaned",
        )["t"]
    )
    ledger_text = "\n".join(st.query(con, "SELECT detail FROM rejections")["detail"])
    leaks = [
        v for v in values if v in release_text or v in cleaned_text or v in lineage_text or v in ledger_text
    ]
    assert leaks == []
    redacted = st.query(con, "SELECT DISTINCT entity FROM redactions")["entity"].to_list()
    assert {e["type"] for t in truth if t["kind"] == "pii" for e in t["entities"]} <= set(redacted)


def _cleaned_texts(con) -> dict[tuple[str, int], str]:
    """(source file, line) -> the cleaned record's message contents joined by newlines."""
    return {
        (r["source_file"], r["source_line"]): r["t"]
        for r in st.query(
            con,
            "SELECT source_file, source_line, list_aggregate(list_transform(messages, lambda m: m.content), "
            "'string_agg', '\n') AS t FROM cleaned WHERE NOT starts_with(record_id, 's-')",
        ).to_dicts()
    }


def test_planted_stray_tokens_and_mojibake_are_repaired_in_kept_records(con, truth: list[dict]) -> None:
    texts = _cleaned_texts(con)
    tokens = [t for t in truth if t["kind"] == "stray_tokens"]
    mojibake = [t for t in truth if t["kind"] == "mojibake"]
    assert tokens and mojibake, "the ground truth plants both"
    left = [
        (t["line"], token) for t in tokens for token in t["tokens"] if token in texts[(t["file"], t["line"])]
    ]
    assert left == []
    for item in mojibake:
        text = texts[(item["file"], item["line"])]
        assert item["broken"] not in text and item["fixed"] in text


def test_planted_boilerplate_lines_are_cut_from_kept_records(con, truth: list[dict]) -> None:
    planted = {(t["file"], t["line"]): t["boilerplate_line"] for t in truth if t["kind"] == "boilerplate"}
    assert planted, "the ground truth plants boilerplate"
    for table in ("deduped", "cleaned"):
        texts = {
            (r["source_file"], r["source_line"]): r["t"]
            for r in st.query(
                con,
                "SELECT source_file, source_line, list_aggregate(list_transform(messages, lambda m: m.content), "
                f"'string_agg', '\n') AS t FROM {table} WHERE NOT starts_with(record_id, 's-')",
            ).to_dicts()
        }
        assert set(planted) <= set(texts), table
        assert [key for key, line in planted.items() if line in texts[key]] == [], table
    changed = st.query(con, "SELECT count(DISTINCT record_id) FROM boilerplate_removals").item()
    assert changed == len(planted)


def test_trace_reaches_the_source_line_from_any_released_record(con) -> None:
    released = st.query(
        con, "SELECT record_id, source_file, source_line, origin FROM formatted ORDER BY record_id"
    ).to_dicts()
    for row in released[:: max(1, len(released) // 50)]:
        trace = provenance.trace(con, row["record_id"])
        assert trace["source"]["source_file"] == row["source_file"]
        assert trace["source"]["source_line"] == row["source_line"]
        assert [s["stage"] for s in trace["stages"]][-1] == "formatted"
    synthetic = next(r for r in released if r["origin"] == "synthetic")
    trace = provenance.trace(con, synthetic["record_id"])
    assert trace["seeds"] and all(s["source"] for s in trace["seeds"])
    assert trace["synthesis"]["recipe"]


def test_why_accounts_for_every_line_of_a_file(con) -> None:
    source_file = st.query(
        con, "SELECT source_file FROM raw GROUP BY 1 ORDER BY count(*) DESC LIMIT 1"
    ).item()
    rows = provenance.why(con, source_file)
    lines = [r["source_line"] for r in rows]
    assert len(lines) == len(set(lines))
    assert all(r["fate"] for r in rows)
    raw_count = st.query(con, "SELECT count(*) FROM raw WHERE source_file = ?", [source_file]).item()
    rejected_raw = st.query(
        con, "SELECT count(*) FROM rejections WHERE stage = 'raw' AND source_file = ?", [source_file]
    ).item()
    assert len(rows) == raw_count + rejected_raw


def test_reingesting_a_batch_changes_nothing(home: Path) -> None:
    def totals() -> object:
        with st.Store(home / "thresher.duckdb").connect(read_only=True) as con:
            return st.query(
                con,
                "SELECT stage, sum(kept) AS kept, sum(rejected) AS rejected, sum(created) AS created "
                "FROM stage_runs GROUP BY stage ORDER BY stage",
            )

    before = totals()
    one_file = sorted((home / "demo-corpus" / "files").iterdir())[1]
    assert cli.main(["ingest", str(one_file)]) == 0
    assert totals().equals(before)


def test_every_lineage_event_is_valid(home: Path) -> None:
    events = [json.loads(line) for line in (home / "lineage" / "events.jsonl").read_text().splitlines()]
    assert {e["eventType"] for e in events} == {"START", "COMPLETE"}
    stage_jobs = {f"thresher.{s}" for s in STAGE_TABLES}
    check_jobs = {f"thresher.{s}.{c}" for s in STAGE_TABLES for c in ("conservation", "expectations")}
    assert {e["job"]["name"] for e in events} == stage_jobs | check_jobs
    completed = [e for e in events if e["eventType"] == "COMPLETE"]
    deduped = next(e for e in completed if e["job"]["name"] == "thresher.deduped")
    assert deduped["run"]["facets"]["thresher_rejections"]["byRule"]
    assert "dataQualityMetrics" in deduped["inputs"][0]["inputFacets"]
    check = next(e for e in completed if e["job"]["name"] == "thresher.cleaned.expectations")
    assert check["inputs"][0]["inputFacets"]["dataQualityAssertions"]["assertions"]
    for event in events:
        assert validate_event(event) == []


def latest_release(home: Path) -> Path:
    return home / "release" / (home / "release" / "latest").read_text().strip()


def test_the_release_is_versioned_with_every_format_a_manifest_and_a_card(home: Path) -> None:
    from thresher.release import verify_release

    release = latest_release(home)
    assert verify_release(release) == []
    for folder, suffix in (("openai", ".jsonl"), ("parquet", ".parquet"), ("sharegpt", ".json")):
        assert sorted(f.stem for f in (release / folder).glob(f"*{suffix}")) == [
            "test",
            "train",
            "validation",
        ]
    first = json.loads(next((release / "openai").glob("train.jsonl")).read_text().splitlines()[0])
    assert list(first) == ["messages"]
    for template in ("llama3", "chatml"):
        assert sorted(f.stem for f in (release / "rendered" / template).glob("*.jsonl")) == [
            "test",
            "train",
            "validation",
        ]
    card = (release / "README.md").read_text()
    assert card.startswith("---\n") and "## Rejections by rule" in card and "figures/" in card
    assert sorted(p.name for p in (release / "figures").glob("*.png"))


def test_the_release_ships_its_provenance_for_an_auditor_with_duckdb_alone(home: Path) -> None:
    import duckdb

    release = latest_release(home)
    sidecar = release / "provenance"
    auditor = duckdb.connect()  # no Thresher, no store: just the files next to the data
    released = sum(1 for f in (release / "rendered" / "llama3").glob("*.jsonl") for _ in f.open())
    records = auditor.sql(
        f"SELECT count(*), count(source_file) FROM '{sidecar / 'records.parquet'}'"
    ).fetchall()[0]
    assert records == (released, released)
    dropped = auditor.sql(f"SELECT count(DISTINCT stage) FROM '{sidecar / 'rejections.parquet'}'").fetchall()[
        0
    ][0]
    assert dropped >= 4
    assert "SELECT" in (sidecar / "README.md").read_text()
