"""OpenLineage events: START/COMPLETE/FAIL per stage run, valid against the official schemas."""

import json
from pathlib import Path

import pytest

from tests.openlineage_spec import validate_event
from thresher.lineage import DatasetRef, LineageEmitter, lineage_client

PARENT = "0190b1c2-3d4e-7f60-8a9b-0c1d2e3f4a5b"


@pytest.fixture
def emitter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LineageEmitter:
    for var in ("OPENLINEAGE_URL", "OPENLINEAGE_CONFIG", "OPENLINEAGE_DISABLED"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return LineageEmitter(lineage_client(tmp_path / "lineage" / "events.jsonl"), tmp_path / "t.duckdb")


def events(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "lineage" / "events.jsonl").read_text().splitlines()]


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
    assert start["run"]["runId"] == complete["run"]["runId"]
    assert complete["run"]["facets"]["parent"]["run"]["runId"] == PARENT
    assert [d["name"] for d in complete["inputs"]] == ["main.raw"]
    assert [d["name"] for d in complete["outputs"]] == ["main.deduped", "main.rejections"]
    assert complete["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] == 2
    for event in (start, complete):
        assert validate_event(event) == []


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
    assert validate_event(fail) == []


def test_a_broken_transport_never_fails_the_stage(emitter: LineageEmitter, tmp_path: Path) -> None:
    (tmp_path / "lineage" / "events.jsonl").mkdir(parents=True)  # the transport cannot write its file
    with emitter.stage_run("thresher.raw", parent_run_id=None, parent_job_name=None, inputs=[]) as run:
        run.outputs = [DatasetRef("raw")]
