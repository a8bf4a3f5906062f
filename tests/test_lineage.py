"""OpenLineage events: START/COMPLETE/FAIL per stage run and check run, every facet valid against the
official schemas (custom ones against the schemas Thresher ships), and no record text anywhere."""

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from tests.openlineage_spec import custom_facet_schema, validate_event
from thresher.lineage import (
    FACETS_DIR,
    REJECTIONS_SCHEMA_URL,
    ColumnMetrics,
    DatasetRef,
    LineageEmitter,
    content_version,
    lineage_client,
)

PARENT = "0190b1c2-3d4e-7f60-8a9b-0c1d2e3f4a5b"
ASSET_MODULE = Path(__file__).resolve().parents[1] / "assets" / "deduped.py"


@pytest.fixture
def emitter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LineageEmitter:
    for var in [v for v in os.environ if v.startswith("OPENLINEAGE")]:
        monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)
    return LineageEmitter(lineage_client(tmp_path / "lineage" / "events.jsonl"), tmp_path / "t.duckdb")


def events(tmp_path: Path) -> list[dict]:
    found = [json.loads(line) for line in (tmp_path / "lineage" / "events.jsonl").read_text().splitlines()]
    for event in found:
        assert validate_event(event) == [], event["eventType"]
    return found


def frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "record_id": ["a:1", "a:2", "a:3", "a:4"],
            "task": ["chat", "chat", None, "code"],
            "messages": [[{"role": "user", "content": "hi"}]] * 3 + [None],
        }
    )


def test_a_successful_stage_emits_start_and_complete_with_datasets(
    emitter: LineageEmitter, tmp_path: Path
) -> None:
    with emitter.stage_run(
        "thresher.deduped", parent_run_id=PARENT, parent_job_name="batch_job", inputs=[]
    ) as run:
        run.inputs.append(DatasetRef("raw", {"record_id": "String"}, 3))
        run.outputs = [DatasetRef("deduped", {"record_id": "String"}, 2), DatasetRef("rejections")]
    start, complete = events(tmp_path)
    assert (start["eventType"], complete["eventType"]) == ("START", "COMPLETE")
    assert start["run"]["runId"] == complete["run"]["runId"] == run.run_id
    assert complete["run"]["facets"]["parent"]["run"]["runId"] == PARENT
    assert complete["run"]["facets"]["parent"]["job"]["name"] == "batch_job"
    assert [d["name"] for d in complete["inputs"]] == ["main.raw"]
    assert [d["name"] for d in complete["outputs"]] == ["main.deduped", "main.rejections"]
    assert complete["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] == 2
    assert complete["job"]["facets"]["jobType"]["jobType"] == "ASSET"


def test_every_facet_the_issue_asks_for_is_on_a_complete_stage_event(
    emitter: LineageEmitter, tmp_path: Path
) -> None:
    raw, kept = frame(), frame().head(2)
    with emitter.stage_run(
        "thresher.deduped",
        parent_run_id=PARENT,
        parent_job_name="batch_job",
        inputs=[DatasetRef.from_frame("raw", raw, metrics=True, version="run-1")],
        nominal_time=datetime(2026, 11, 25, 3, 0, tzinfo=UTC),
        source_path=ASSET_MODULE,
    ) as run:
        run.outputs = [DatasetRef.from_frame("deduped", kept, version=True, size_bytes=1234)]
        run.rejections_by_rule = {"exact_duplicate": 1, "near_duplicate": 1}
    start, complete = events(tmp_path)
    assert start["run"]["facets"]["nominalTime"]["nominalStartTime"] == "2026-11-25T03:00:00Z"
    assert complete["job"]["facets"]["sourceCodeLocation"] == {
        **complete["job"]["facets"]["sourceCodeLocation"],
        "type": "file",
        "url": ASSET_MODULE.as_uri(),
    }
    [raw_in] = complete["inputs"]
    assert raw_in["facets"]["dataSource"]["uri"] == f"duckdb://{(tmp_path / 't.duckdb').resolve()}"
    assert raw_in["facets"]["version"]["datasetVersion"] == "run-1"
    assert [f["name"] for f in raw_in["facets"]["schema"]["fields"]] == ["record_id", "task", "messages"]
    metrics = raw_in["inputFacets"]["dataQualityMetrics"]
    assert metrics["rowCount"] == 4
    assert metrics["columnMetrics"]["task"] == {"nullCount": 1, "distinctCount": 2}
    assert metrics["columnMetrics"]["messages"] == {"nullCount": 1, "distinctCount": 1}
    [out] = complete["outputs"]
    assert out["outputFacets"]["outputStatistics"] == {
        **out["outputFacets"]["outputStatistics"],
        "rowCount": 2,
        "size": 1234,
    }
    assert out["facets"]["version"]["datasetVersion"] == content_version(kept)
    assert set(out["facets"]["columnLineage"]["fields"]) == {"record_id", "task", "messages"}
    rejections = complete["run"]["facets"]["thresher_rejections"]
    assert rejections["byRule"] == {"exact_duplicate": 1, "near_duplicate": 1}
    assert (rejections["stage"], rejections["total"]) == ("deduped", 2)
    assert rejections["_schemaURL"] == REJECTIONS_SCHEMA_URL
    assert rejections["_producer"].startswith("https://")


def test_column_lineage_is_identity_for_same_name_columns_unless_declared(
    emitter: LineageEmitter, tmp_path: Path
) -> None:
    with emitter.stage_run(
        "thresher.cleaned",
        parent_run_id=PARENT,
        parent_job_name="batch_job",
        inputs=[DatasetRef("deduped", {"record_id": "String", "messages": "List"})],
    ) as run:
        run.declare_column_lineage("cleaned", {"messages": [("deduped", "messages", "MASKED")]})
        run.declare_column_lineage("redactions", {"kind": [("deduped", "messages", "TRANSFORMATION")]})
        run.outputs = [
            DatasetRef("cleaned", {"record_id": "String", "messages": "List", "quality": "Float64"}),
            DatasetRef("redactions", {"record_id": "String", "kind": "String"}),
        ]
    cleaned, redactions = (o["facets"]["columnLineage"]["fields"] for o in events(tmp_path)[1]["outputs"])
    [identity] = cleaned["record_id"]["inputFields"]
    assert (identity["name"], identity["field"]) == ("main.deduped", "record_id")
    assert identity["transformations"] == [{"type": "DIRECT", "subtype": "IDENTITY", "masking": False}]
    assert cleaned["messages"]["inputFields"][0]["transformations"][0]["masking"] is True
    assert "quality" not in cleaned  # no same-name input column and nothing declared: unknown
    assert redactions["kind"]["inputFields"][0]["transformations"][0]["subtype"] == "TRANSFORMATION"


def test_an_unknown_column_lineage_kind_is_refused_when_declared(emitter: LineageEmitter) -> None:
    with (
        emitter.stage_run("thresher.cleaned", parent_run_id=None, parent_job_name=None, inputs=[]) as run,
        pytest.raises(ValueError, match="kind"),
    ):
        run.declare_column_lineage("cleaned", {"x": [("deduped", "x", "COPY")]})


def test_a_failing_stage_emits_fail_without_leaking_the_message(
    emitter: LineageEmitter, tmp_path: Path
) -> None:
    with (
        pytest.raises(ValueError),
        emitter.stage_run("thresher.cleaned", parent_run_id=PARENT, parent_job_name="batch_job", inputs=[]),
    ):
        raise ValueError("jane.doe@example.com broke it")
    _start, fail = events(tmp_path)
    assert fail["eventType"] == "FAIL"
    assert "example.com" not in json.dumps(fail)
    assert fail["run"]["facets"]["errorMessage"]["message"] == "ValueError in stage thresher.cleaned"


def test_rule_names_that_are_not_identifiers_cannot_carry_text_into_the_rejections_facet(
    emitter: LineageEmitter, tmp_path: Path
) -> None:
    with emitter.stage_run("thresher.cleaned", parent_run_id=None, parent_job_name=None, inputs=[]) as run:
        run.rejections_by_rule = {"pii_only": 2, "call me at jane.doe@example.com": 1}
    complete = events(tmp_path)[1]
    assert complete["run"]["facets"]["thresher_rejections"]["byRule"] == {"other": 1, "pii_only": 2}
    assert "example.com" not in json.dumps(complete)


def test_a_check_run_reports_its_assertions_on_the_checked_dataset(
    emitter: LineageEmitter, tmp_path: Path
) -> None:
    checked = DatasetRef.from_frame("cleaned", frame(), metrics=True)
    with emitter.check_run(
        "thresher.cleaned.expectations",
        parent_run_id=PARENT,
        parent_job_name="batch_job",
        dataset=checked,
        source_path=ASSET_MODULE,
    ) as check:
        check.assertions = [
            ("expect_column_values_to_not_be_null", True, "record_id"),
            ("expect_column_values_to_be_unique", False, "record_id", "error"),
            ("expect_table_row_count_to_be_between", True, None),
        ]
    start, complete = events(tmp_path)
    assert (start["eventType"], complete["eventType"]) == ("START", "COMPLETE")
    assert complete["job"]["facets"]["jobType"]["jobType"] == "ASSET_CHECK"
    assert "dataQualityAssertions" not in start["inputs"][0].get("inputFacets", {})
    [dataset] = complete["inputs"]
    assert dataset["name"] == "main.cleaned"
    assert dataset["inputFacets"]["dataQualityAssertions"]["assertions"] == [
        {"assertion": "expect_column_values_to_not_be_null", "success": True, "column": "record_id"},
        {
            "assertion": "expect_column_values_to_be_unique",
            "success": False,
            "column": "record_id",
            "severity": "error",
        },
        {"assertion": "expect_table_row_count_to_be_between", "success": True},
    ]
    assert dataset["inputFacets"]["dataQualityMetrics"]["rowCount"] == 4


def test_a_check_that_raises_emits_fail(emitter: LineageEmitter, tmp_path: Path) -> None:
    with (
        pytest.raises(KeyError),
        emitter.check_run(
            "thresher.raw.conservation",
            parent_run_id=PARENT,
            parent_job_name="batch_job",
            dataset=DatasetRef("raw"),
        ),
    ):
        raise KeyError("secret-token-123")
    fail = events(tmp_path)[1]
    assert fail["eventType"] == "FAIL"
    assert fail["run"]["facets"]["errorMessage"]["message"] == "KeyError in check thresher.raw.conservation"
    assert "secret-token" not in json.dumps(fail)


def test_metrics_count_nulls_and_distinct_non_null_values_per_column() -> None:
    ref = DatasetRef.from_frame("raw", frame(), metrics=True)
    assert ref.row_count == 4
    assert ref.schema == {"record_id": "String", "task": "String", "messages": ref.schema["messages"]}
    assert ref.column_metrics == {
        "record_id": ColumnMetrics(0, 4),
        "task": ColumnMetrics(1, 2),
        "messages": ColumnMetrics(1, 1),
    }
    assert DatasetRef.from_frame("raw", frame()).column_metrics is None


def test_a_content_version_ignores_row_order_and_follows_content() -> None:
    data = frame()
    assert content_version(data) == content_version(data.reverse())
    assert content_version(data) != content_version(data.head(3))
    assert content_version(data) != content_version(data.rename({"task": "kind"}))


def test_the_rejections_facet_schema_ships_with_the_package_under_its_schema_url() -> None:
    shipped = custom_facet_schema(REJECTIONS_SCHEMA_URL)
    assert shipped is not None
    assert (FACETS_DIR / "ThresherRejectionsRunFacet.json").is_file()
    assert shipped["$id"] + "#/$defs/ThresherRejectionsRunFacet" == REJECTIONS_SCHEMA_URL


def test_the_validator_rejects_misplaced_unknown_and_malformed_facets(
    emitter: LineageEmitter, tmp_path: Path
) -> None:
    with emitter.stage_run("thresher.cleaned", parent_run_id=None, parent_job_name=None, inputs=[]) as run:
        run.rejections_by_rule = {"pii_only": 2}
        run.inputs = [DatasetRef.from_frame("deduped", frame(), metrics=True)]
    good = events(tmp_path)[1]

    misplaced = json.loads(json.dumps(good))
    ds = misplaced["inputs"][0]
    ds["facets"]["dataQualityMetrics"] = ds["inputFacets"]["dataQualityMetrics"] | {"columnMetrics": 3}
    assert any("dataQualityMetrics" in e for e in validate_event(misplaced))

    unknown = json.loads(json.dumps(good))
    unknown["run"]["facets"]["thresher_rejections"]["_schemaURL"] = "https://example.com/X.json#/$defs/X"
    assert any("no shipped schema" in e for e in validate_event(unknown))

    malformed = json.loads(json.dumps(good))
    malformed["run"]["facets"]["thresher_rejections"]["total"] = "two"
    assert any("thresher_rejections" in e for e in validate_event(malformed))

    not_a_uuid = json.loads(json.dumps(good))
    not_a_uuid["run"]["runId"] = "run-1"
    assert validate_event(not_a_uuid) != []


def test_a_broken_transport_never_fails_the_stage_and_loses_nothing(
    emitter: LineageEmitter, tmp_path: Path
) -> None:
    log_file = tmp_path / "lineage" / "events.jsonl"
    log_file.mkdir(parents=True)  # the transport cannot write its file
    with emitter.stage_run("thresher.raw", parent_run_id=None, parent_job_name=None, inputs=[]) as run:
        run.outputs = [DatasetRef("raw")]
    assert len(emitter.spool.pending()) == 2
    log_file.rmdir()
    assert emitter.flush(timeout=5) == (2, 0)
    assert [e["eventType"] for e in events(tmp_path)] == ["START", "COMPLETE"]


def test_openlineage_disabled_emits_and_spools_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in [v for v in os.environ if v.startswith("OPENLINEAGE")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("OPENLINEAGE_DISABLED", "true")
    monkeypatch.chdir(tmp_path)
    quiet = LineageEmitter(lineage_client(tmp_path / "lineage" / "events.jsonl"), tmp_path / "t.duckdb")
    with quiet.stage_run("thresher.raw", parent_run_id=None, parent_job_name=None, inputs=[]) as run:
        run.outputs = [DatasetRef("raw")]
    assert not (tmp_path / "lineage" / "events.jsonl").exists()
    assert quiet.spool.pending() == []
