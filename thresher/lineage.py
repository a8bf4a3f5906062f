"""OpenLineage events for every stage run: START, then COMPLETE or FAIL, with datasets and schemas.

Transport is configured the OpenLineage way (``OPENLINEAGE_URL``, ``OPENLINEAGE__TRANSPORT__*``,
``OPENLINEAGE_CONFIG`` or an ``openlineage.yml``); with none of those set, events go to a JSON-lines
file under THRESHER_HOME so that a demo run leaves an auditable trail without a backend.
Emitting never fails a run: a transport error is logged and the stage carries on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import (
    error_message_run,
    job_type_job,
    output_statistics_output_dataset,
    parent_run,
    schema_dataset,
)
from openlineage.client.transport.file import FileConfig, FileTransport
from openlineage.client.uuid import generate_new_uuid

PRODUCER = "https://github.com/thresher-data/thresher"
NAMESPACE = "thresher"

log = logging.getLogger(__name__)


def lineage_client(default_file: Path) -> OpenLineageClient:
    """The user's OpenLineage configuration if there is one, else the file transport at ``default_file``."""
    configured = (
        os.environ.get("OPENLINEAGE_URL")
        or os.environ.get("OPENLINEAGE_CONFIG")
        or os.environ.get("OPENLINEAGE_DISABLED")
        or any(k.startswith("OPENLINEAGE__TRANSPORT") for k in os.environ)
        or Path("openlineage.yml").exists()
    )
    if configured:
        return OpenLineageClient()
    default_file.parent.mkdir(parents=True, exist_ok=True)
    return OpenLineageClient(
        transport=FileTransport(FileConfig(log_file_path=str(default_file), append=True))
    )


@dataclass(frozen=True)
class DatasetRef:
    """A DuckDB table as an OpenLineage dataset, with its schema when known."""

    table: str
    schema: dict[str, str] = field(default_factory=dict)
    row_count: int | None = None


def schema_of(frame: pl.DataFrame) -> dict[str, str]:
    return {name: str(dtype) for name, dtype in frame.schema.items()}


class LineageEmitter:
    """Emits run events for stage runs, each a child of the orchestrator's run."""

    def __init__(self, client: OpenLineageClient, database_path: Path, namespace: str = NAMESPACE) -> None:
        self.client = client
        self.namespace = namespace
        self.dataset_namespace = f"duckdb://{database_path.resolve()}"

    def _dataset(self, ref: DatasetRef, output: bool) -> InputDataset | OutputDataset:
        facets = {}
        if ref.schema:
            facets["schema"] = schema_dataset.SchemaDatasetFacet(
                fields=[
                    schema_dataset.SchemaDatasetFacetFields(name=n, type=t) for n, t in ref.schema.items()
                ]
            )
        name = f"main.{ref.table}"
        if output:
            output_facets = {}
            if ref.row_count is not None:
                output_facets["outputStatistics"] = (
                    output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
                        rowCount=ref.row_count
                    )
                )
            return OutputDataset(self.dataset_namespace, name, facets=facets, outputFacets=output_facets)
        return InputDataset(self.dataset_namespace, name, facets=facets)

    def _emit(self, event: RunEvent) -> None:
        try:
            self.client.emit(event)
        except Exception as exc:  # lineage must never break curation
            log.warning("OpenLineage emit failed (%s); the run continues", type(exc).__name__)

    @contextmanager
    def stage_run(
        self,
        job_name: str,
        *,
        parent_run_id: str | None,
        parent_job_name: str | None,
        inputs: Sequence[DatasetRef],
    ) -> Iterator[StageRun]:
        """Emit START now, COMPLETE (with the outputs set on the handle) or FAIL when the block ends."""
        run = StageRun(emitter=self, job_name=job_name, run_id=str(generate_new_uuid()), inputs=list(inputs))
        run_facets = {}
        if parent_run_id and parent_job_name:
            run_facets["parent"] = parent_run.ParentRunFacet(
                run=parent_run.Run(runId=parent_run_id),
                job=parent_run.Job(namespace=self.namespace, name=parent_job_name),
            )
        run.run_facets = run_facets
        self._emit(run.event(RunState.START))
        try:
            yield run
        except BaseException as exc:
            run.run_facets = {
                **run_facets,
                "errorMessage": error_message_run.ErrorMessageRunFacet(
                    message=f"{type(exc).__name__} in stage {job_name}", programmingLanguage="python"
                ),
            }
            self._emit(run.event(RunState.FAIL))
            raise
        self._emit(run.event(RunState.COMPLETE))


@dataclass
class StageRun:
    emitter: LineageEmitter
    job_name: str
    run_id: str
    inputs: list[DatasetRef]
    outputs: list[DatasetRef] = field(default_factory=list)
    run_facets: dict = field(default_factory=dict)

    def event(self, state: RunState) -> RunEvent:
        job_facets = {
            "jobType": job_type_job.JobTypeJobFacet(
                processingType="BATCH", integration="THRESHER", jobType="ASSET"
            )
        }
        return RunEvent(
            eventType=state,
            eventTime=datetime.now(UTC).isoformat(),
            run=Run(runId=self.run_id, facets=self.run_facets),
            job=Job(namespace=self.emitter.namespace, name=self.job_name, facets=job_facets),
            producer=PRODUCER,
            inputs=[self.emitter._dataset(ref, output=False) for ref in self.inputs],
            outputs=[self.emitter._dataset(ref, output=True) for ref in self.outputs]
            if state != RunState.START
            else [],
        )
