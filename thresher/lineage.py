"""OpenLineage events for every stage run and every check run, delivered without ever holding a run up.

Each stage materialization emits START, then COMPLETE or FAIL, as a child of the orchestrator's run
(``parent`` facet), with the job's type and source file, the nominal time of scheduled runs, and every
input and output dataset with ``schema``, ``dataSource`` and ``version`` facets. Inputs carry
``dataQualityMetrics`` (row count, per-column null and distinct counts), outputs ``columnLineage`` and
``outputStatistics``; the run carries the custom ``thresher_rejections`` facet (rejections per rule).
Each check run emits the same lifecycle with ``dataQualityAssertions`` on the checked dataset.
Nothing in an event is record text: names, types, counts and rule identifiers only; a FAIL says the
exception type and the stage, never its message.

Transport is configured the OpenLineage way (``OPENLINEAGE_URL``, ``OPENLINEAGE__TRANSPORT__*``,
``OPENLINEAGE_CONFIG`` or an ``openlineage.yml``); with none of those set, events go to a JSON-lines
file under THRESHER_HOME so that a demo run leaves an auditable trail without a backend.

Delivery: every event is first written to a spool folder (``THRESHER_HOME/lineage/spool`` by default,
one file per event, named so that sorting the names gives emission order, written atomically). Local
transports (file, console) are drained at once, in the caller's thread. Remote ones (HTTP to Marquez,
Kafka, ...) are drained by one background sender per spool folder and process, in order, with short
timeouts and a capped backoff, so a slow or down backend never fails or stalls a run; a bounded flush
runs at interpreter or worker-process exit, and whatever is still spooled is sent by the next
process's sender or by ``flush_spool`` (``thresher lineage flush``). An exclusive file lock around each
drain keeps processes that share a spool from sending an event twice.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import logging
import multiprocessing.util
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import attr
import polars as pl
from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import (
    RunFacet,
    column_lineage_dataset,
    data_quality_assertions_dataset,
    data_quality_metrics_input_dataset,
    dataset_version_dataset,
    datasource_dataset,
    error_message_run,
    job_type_job,
    nominal_time_run,
    output_statistics_output_dataset,
    parent_run,
    schema_dataset,
    source_code_location_job,
)
from openlineage.client.serde import Serde
from openlineage.client.transport.file import FileConfig, FileTransport
from openlineage.client.transport.http import HttpTransport
from openlineage.client.uuid import generate_new_uuid

PRODUCER = "https://github.com/thresher-data/thresher"
NAMESPACE = "thresher"

# Thresher's custom facets: JSON Schemas shipped in thresher/lineage_facets/, each under an immutable,
# versioned URL laid out like OpenLineage's own (<base>/<version>/<Name>.json#/$defs/<Name>).
FACETS_DIR = Path(__file__).resolve().parent / "lineage_facets"
FACET_SCHEMA_BASE = "https://thresher-data.github.io/thresher/spec/facets"
REJECTIONS_FACET = "thresher_rejections"
REJECTIONS_SCHEMA_URL = (
    f"{FACET_SCHEMA_BASE}/1-0-0/ThresherRejectionsRunFacet.json#/$defs/ThresherRejectionsRunFacet"
)

LOCAL_TRANSPORTS = frozenset({"file", "console"})
SEND_TIMEOUT_SECONDS = 2.0  # per event, background sender: a hung backend costs the sender this, not the run
MAX_BACKOFF_SECONDS = 5.0  # between retries while the backend is down
IDLE_POLL_SECONDS = 5.0  # the sender also picks up events another process left behind
EXIT_FLUSH_SECONDS = 2.0  # bound on the flush at exit, all spools together
LOCAL_DRAIN_SECONDS = 1.0  # bound on draining to a local transport in the caller's thread

_RULE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")

log = logging.getLogger(__name__)


def lineage_client(default_file: Path) -> OpenLineageClient:
    """The user's OpenLineage configuration if there is one, else the file transport at ``default_file``.

    ``OPENLINEAGE_DISABLED=true`` gives a client that emits nothing (and nothing is spooled).
    """
    if os.environ.get("OPENLINEAGE_DISABLED", "").strip().lower() == "true":
        return OpenLineageClient()
    configured = (
        os.environ.get("OPENLINEAGE_URL")
        or os.environ.get("OPENLINEAGE_CONFIG")
        or any(k.startswith("OPENLINEAGE__TRANSPORT") for k in os.environ)
        or Path("openlineage.yml").exists()
        or (Path.home() / ".openlineage" / "openlineage.yml").exists()
    )
    if configured:
        return OpenLineageClient()
    default_file.parent.mkdir(parents=True, exist_ok=True)
    return OpenLineageClient(
        transport=FileTransport(FileConfig(log_file_path=str(default_file), append=True))
    )


# --- datasets -----------------------------------------------------------------------------------------


class ColumnMetrics(NamedTuple):
    null_count: int
    distinct_count: int | None  # None when the column's type cannot be compared (Polars Object)


def schema_of(frame: pl.DataFrame) -> dict[str, str]:
    """Column name to Polars type name, in column order."""
    return {name: str(dtype) for name, dtype in frame.schema.items()}


def column_metrics(frame: pl.DataFrame) -> dict[str, ColumnMetrics]:
    """Null and distinct (non-null) counts of every column, in one vectorized pass.

    Distinct counts exclude null, as the dataQualityMetrics facet defines them over values.
    """
    comparable = [c for c, t in frame.schema.items() if t != pl.Object]
    row = frame.select(
        *(pl.col(c).null_count().alias(f"n{i}") for i, c in enumerate(frame.columns)),
        *(pl.col(c).drop_nulls().n_unique().alias(f"d{i}") for i, c in enumerate(comparable)),
    ).row(0, named=True)
    distinct = {c: int(row[f"d{i}"]) for i, c in enumerate(comparable)}
    return {c: ColumnMetrics(int(row[f"n{i}"]), distinct.get(c)) for i, c in enumerate(frame.columns)}


def content_version(frame: pl.DataFrame) -> str:
    """A fingerprint of a frame's schema and rows, independent of row order.

    Equal content gives an equal version under the same Polars version (row hashing is not
    guaranteed stable across Polars releases), which is what a lineage backend needs to tell
    "rewritten unchanged" from "changed".
    """
    digest = hashlib.sha256(json.dumps(schema_of(frame)).encode())
    if frame.height:
        digest.update(frame.hash_rows(seed=0).sort().to_numpy().tobytes())
    return f"{frame.height}-{digest.hexdigest()[:16]}"


@dataclass(frozen=True)
class DatasetRef:
    """A DuckDB table as an OpenLineage dataset: schema, counts and what else is known about it.

    ``column_metrics`` feeds the input ``dataQualityMetrics`` facet, ``version`` the ``version``
    facet, ``row_count`` and ``size_bytes`` the output ``outputStatistics`` facet.
    """

    table: str
    schema: dict[str, str] = field(default_factory=dict)
    row_count: int | None = None
    column_metrics: Mapping[str, ColumnMetrics] | None = None
    version: str | None = None
    size_bytes: int | None = None

    @classmethod
    def from_frame(
        cls,
        table: str,
        frame: pl.DataFrame,
        *,
        metrics: bool = False,
        version: str | bool = False,
        size_bytes: int | None = None,
    ) -> DatasetRef:
        """Schema and row count of ``frame``; per-column metrics if ``metrics``; ``version=True``
        computes ``content_version(frame)``, a string is used as given."""
        return cls(
            table=table,
            schema=schema_of(frame),
            row_count=frame.height,
            column_metrics=column_metrics(frame) if metrics else None,
            version=content_version(frame) if version is True else (version or None),
            size_bytes=size_bytes,
        )


# --- the custom facet ------------------------------------------------------------------------------------


@attr.define(kw_only=True)
class ThresherRejectionsRunFacet(RunFacet):
    """Rejections of one stage run per rule (schema: lineage_facets/ThresherRejectionsRunFacet.json)."""

    stage: str
    total: int
    byRule: dict[str, int]
    ledger: dict[str, str] | None = None

    @staticmethod
    def _get_schema() -> str:
        return REJECTIONS_SCHEMA_URL


def facet_schema_files() -> dict[str, Path]:
    """Schema URL (without fragment) to the shipped JSON Schema file, for offline validation."""
    out = {}
    for path in sorted(FACETS_DIR.glob("*.json")):
        out[json.loads(path.read_text())["$id"]] = path
    return out


def _safe_rules(by_rule: Mapping[str, int]) -> dict[str, int]:
    """Rule counts with any name that is not a plain identifier folded into ``other``.

    Rule names are code-defined identifiers; folding anything else guarantees that no text from a
    record can reach a lineage backend through this facet.
    """
    out: dict[str, int] = {}
    for rule, count in sorted(by_rule.items()):
        key = rule if _RULE_NAME.match(str(rule)) else "other"
        out[key] = out.get(key, 0) + int(count)
    return out


# --- column lineage ----------------------------------------------------------------------------------------

# Declared kinds to the spec's (type, subtype, masking).
TRANSFORMATION_KINDS: dict[str, tuple[str, str, bool]] = {
    "IDENTITY": ("DIRECT", "IDENTITY", False),
    "TRANSFORMATION": ("DIRECT", "TRANSFORMATION", False),
    "MASKED": ("DIRECT", "TRANSFORMATION", True),
    "AGGREGATION": ("DIRECT", "AGGREGATION", False),
    "FILTER": ("INDIRECT", "FILTER", False),
    "JOIN": ("INDIRECT", "JOIN", False),
    "GROUP_BY": ("INDIRECT", "GROUP_BY", False),
    "SORT": ("INDIRECT", "SORT", False),
    "WINDOW": ("INDIRECT", "WINDOW", False),
    "CONDITIONAL": ("INDIRECT", "CONDITIONAL", False),
}

ColumnSources = list[tuple[str, str, str]]  # (input table, input column, kind)


# --- the emitter ----------------------------------------------------------------------------------------


class LineageEmitter:
    """Builds run events for stage and check runs and hands them to the spool; never raises."""

    def __init__(
        self,
        client: OpenLineageClient,
        database_path: Path,
        *,
        spool_dir: Path | None = None,
        namespace: str = NAMESPACE,
        send_timeout: float = SEND_TIMEOUT_SECONDS,
        max_backoff: float = MAX_BACKOFF_SECONDS,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.dataset_namespace = f"duckdb://{database_path.resolve()}"
        self.spool = Spool(spool_dir or database_path.resolve().parent / "lineage" / "spool")
        transport = client.transport
        self.disabled = transport is None or transport.kind == "noop"
        self.local = transport is not None and transport.kind in LOCAL_TRANSPORTS
        self._sender: _Sender | None = None
        if not self.disabled and not self.local:
            self._sender = _sender_for(self.spool, transport, send_timeout, max_backoff)

    # -- delivery

    def emit(self, event: RunEvent) -> None:
        """Spool ``event`` and start its delivery; returns in milliseconds whatever the backend does."""
        if self.disabled:
            return
        try:
            payload = self._prepare(event)
            if payload is None:
                return
            self.spool.put(payload)
        except Exception as exc:  # lineage must never break curation
            log.warning("OpenLineage event could not be spooled (%s); the run continues", type(exc).__name__)
            return
        if self._sender is not None:
            self._sender.wake()
            return
        try:
            self.spool.drain(self._send_local, deadline=time.monotonic() + LOCAL_DRAIN_SECONDS, lock_wait=0.2)
        except Exception as exc:  # the event stays spooled for a later drain
            log.warning("OpenLineage spool could not be drained (%s); the run continues", type(exc).__name__)

    def flush(self, timeout: float = 10.0) -> tuple[int, int]:
        """Deliver spooled events now, for at most ``timeout`` seconds: (sent, still spooled)."""
        if self.disabled:
            return 0, len(self.spool.pending())
        send = self._sender.send if self._sender is not None else self._send_local
        return self.spool.drain(send, deadline=time.monotonic() + timeout, lock_wait=timeout)

    def close(self, timeout: float = EXIT_FLUSH_SECONDS) -> None:
        """Stop this spool's background sender after a last bounded attempt to deliver."""
        if self._sender is not None:
            _close_sender(self._sender, timeout)
            self._sender = None

    def _send_local(self, payload: dict[str, Any]) -> None:
        self.client.transport.emit(payload)

    def _prepare(self, event: RunEvent) -> dict[str, Any] | None:
        """What ``OpenLineageClient.emit`` does before its transport: env, tags, reduction, filters."""
        client = self.client
        event = client.add_environment_facets(event)
        event = client.update_event_tags_facets(event)
        event = client.add_source_code_location_facet(event)
        if client.config.dataset.reducing_enabled:
            event = client.reduce_datasets(event)
        if client._filters and client.filter_event(event) is None:
            return None
        return Serde.to_dict(event)

    # -- events

    def _dataset_facets(self, ref: DatasetRef) -> dict[str, Any]:
        facets: dict[str, Any] = {
            "dataSource": datasource_dataset.DatasourceDatasetFacet(
                name=self.dataset_namespace, uri=self.dataset_namespace, producer=PRODUCER
            )
        }
        if ref.schema:
            facets["schema"] = schema_dataset.SchemaDatasetFacet(
                fields=[
                    schema_dataset.SchemaDatasetFacetFields(name=n, type=t) for n, t in ref.schema.items()
                ],
                producer=PRODUCER,
            )
        if ref.version:
            facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(
                datasetVersion=ref.version, producer=PRODUCER
            )
        return facets

    def input_dataset(self, ref: DatasetRef, assertions: Sequence[Assertion] | None = None) -> InputDataset:
        """An input with its metrics and, for a check run, the assertions evaluated on it."""
        input_facets: dict[str, Any] = {}
        if ref.column_metrics is not None:
            dqm = data_quality_metrics_input_dataset
            input_facets["dataQualityMetrics"] = dqm.DataQualityMetricsInputDatasetFacet(
                rowCount=ref.row_count,
                columnMetrics={
                    c: dqm.ColumnMetrics(
                        nullCount=m.null_count, distinctCount=m.distinct_count, quantiles=None
                    )
                    for c, m in ref.column_metrics.items()
                },
                producer=PRODUCER,
            )
        if assertions:
            dqa = data_quality_assertions_dataset
            input_facets["dataQualityAssertions"] = dqa.DataQualityAssertionsDatasetFacet(
                assertions=[
                    dqa.Assertion(
                        assertion=a.assertion,
                        success=a.success,
                        column=a.column,
                        severity=a.severity,
                        params=None,
                    )
                    for a in assertions
                ],
                producer=PRODUCER,
            )
        return InputDataset(
            self.dataset_namespace,
            f"main.{ref.table}",
            facets=self._dataset_facets(ref),
            inputFacets=input_facets,
        )

    def output_dataset(
        self, ref: DatasetRef, lineage: Mapping[str, ColumnSources] | None = None
    ) -> OutputDataset:
        """An output with its statistics and, when any is known, its column lineage."""
        facets = self._dataset_facets(ref)
        if lineage:
            cl = column_lineage_dataset
            fields = {}
            for column, sources in lineage.items():
                inputs = []
                for table, in_column, kind in sources:
                    kind_type, subtype, masking = TRANSFORMATION_KINDS[kind]
                    inputs.append(
                        cl.InputField(
                            namespace=self.dataset_namespace,
                            name=f"main.{table}",
                            field=in_column,
                            transformations=[
                                cl.Transformation(type=kind_type, subtype=subtype, masking=masking)
                            ],
                        )
                    )
                fields[column] = cl.Fields(inputFields=inputs)
            facets["columnLineage"] = cl.ColumnLineageDatasetFacet(fields=fields, producer=PRODUCER)
        output_facets = {}
        if ref.row_count is not None or ref.size_bytes is not None:
            output_facets["outputStatistics"] = (
                output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
                    rowCount=ref.row_count, size=ref.size_bytes, producer=PRODUCER
                )
            )
        return OutputDataset(
            self.dataset_namespace, f"main.{ref.table}", facets=facets, outputFacets=output_facets
        )

    def _run_facets(
        self, parent_run_id: str | None, parent_job_name: str | None, nominal_time: datetime | str | None
    ) -> dict[str, Any]:
        facets: dict[str, Any] = {}
        if parent_run_id and parent_job_name:
            facets["parent"] = parent_run.ParentRunFacet(
                run=parent_run.Run(runId=parent_run_id),
                job=parent_run.Job(namespace=self.namespace, name=parent_job_name),
                producer=PRODUCER,
            )
        if nominal_time is not None:
            facets["nominalTime"] = nominal_time_run.NominalTimeRunFacet(
                nominalStartTime=_iso(nominal_time), producer=PRODUCER
            )
        return facets

    @staticmethod
    def _job_facets(job_type: str, source_path: Path | str | None) -> dict[str, Any]:
        facets: dict[str, Any] = {
            "jobType": job_type_job.JobTypeJobFacet(
                processingType="BATCH", integration="THRESHER", jobType=job_type, producer=PRODUCER
            )
        }
        if source_path is not None:
            facets["sourceCodeLocation"] = source_code_location_job.SourceCodeLocationJobFacet(
                type="file", url=Path(source_path).resolve().as_uri(), producer=PRODUCER
            )
        return facets

    @contextmanager
    def _lifecycle(self, handle: _RunHandle, failure_context: str) -> Iterator[None]:
        """START now; FAIL (type and stage only, never the message) or COMPLETE when the block ends."""
        self._safe_emit(handle, RunState.START)
        try:
            yield
        except BaseException as exc:
            handle.error = error_message_run.ErrorMessageRunFacet(
                message=f"{type(exc).__name__} in {failure_context}",
                programmingLanguage="python",
                producer=PRODUCER,
            )
            self._safe_emit(handle, RunState.FAIL)
            raise
        self._safe_emit(handle, RunState.COMPLETE)

    def _safe_emit(self, handle: _RunHandle, state: RunState) -> None:
        try:
            event = handle.event(state)
        except Exception as exc:  # a malformed declaration must not break curation either
            log.warning(
                "OpenLineage %s event for %s could not be built (%s)",
                state.value,
                handle.job_name,
                type(exc).__name__,
            )
            return
        self.emit(event)

    @contextmanager
    def stage_run(
        self,
        job_name: str,
        *,
        parent_run_id: str | None,
        parent_job_name: str | None,
        inputs: Sequence[DatasetRef],
        nominal_time: datetime | str | None = None,
        source_path: Path | str | None = None,
    ) -> Iterator[StageRun]:
        """Emit START now, COMPLETE (with the outputs set on the handle) or FAIL when the block ends."""
        run = StageRun(
            emitter=self,
            job_name=job_name,
            run_id=str(generate_new_uuid()),
            inputs=list(inputs),
            run_facets=self._run_facets(parent_run_id, parent_job_name, nominal_time),
            job_facets=self._job_facets("ASSET", source_path),
        )
        with self._lifecycle(run, f"stage {job_name}"):
            yield run

    @contextmanager
    def check_run(
        self,
        job_name: str,
        *,
        parent_run_id: str | None,
        parent_job_name: str | None,
        dataset: DatasetRef,
        nominal_time: datetime | str | None = None,
        source_path: Path | str | None = None,
    ) -> Iterator[CheckRun]:
        """Emit START now; COMPLETE with the handle's ``assertions`` on ``dataset``, or FAIL."""
        run = CheckRun(
            emitter=self,
            job_name=job_name,
            run_id=str(generate_new_uuid()),
            dataset=dataset,
            run_facets=self._run_facets(parent_run_id, parent_job_name, nominal_time),
            job_facets=self._job_facets("ASSET_CHECK", source_path),
        )
        with self._lifecycle(run, f"check {job_name}"):
            yield run


def _iso(moment: datetime | str) -> str:
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Assertion(NamedTuple):
    """One evaluated expectation: ``assertion`` is its type (e.g. expect_column_values_to_not_be_null)."""

    assertion: str
    success: bool
    column: str | None = None
    severity: str | None = None


@dataclass
class _RunHandle:
    emitter: LineageEmitter
    job_name: str
    run_id: str
    run_facets: dict[str, Any] = field(default_factory=dict)
    job_facets: dict[str, Any] = field(default_factory=dict)
    error: Any = None

    def _event(self, state: RunState, inputs: list[InputDataset], outputs: list[OutputDataset]) -> RunEvent:
        run_facets = dict(self.run_facets)
        if self.error is not None and state == RunState.FAIL:
            run_facets["errorMessage"] = self.error
        return RunEvent(
            eventType=state,
            eventTime=datetime.now(UTC).isoformat(),
            run=Run(runId=self.run_id, facets=run_facets),
            job=Job(namespace=self.emitter.namespace, name=self.job_name, facets=self.job_facets),
            producer=PRODUCER,
            inputs=inputs,
            outputs=outputs,
        )

    def event(self, state: RunState) -> RunEvent:
        raise NotImplementedError


@dataclass
class StageRun(_RunHandle):
    """The handle of one stage run: set ``outputs`` (and optionally the rest) before the block ends.

    Column lineage: ``column_lineage[output_table][output_column] = [(input_table, input_column,
    kind)]`` with ``kind`` one of ``TRANSFORMATION_KINDS`` (IDENTITY, TRANSFORMATION, MASKED for
    redaction, AGGREGATION, FILTER, ...). Unless ``auto_column_lineage`` is False, every output column
    not declared that has a same-name column in an input is recorded as IDENTITY from each such input;
    declare changed columns (TRANSFORMATION or MASKED) explicitly. Outputs without a schema get none.
    """

    inputs: list[DatasetRef] = field(default_factory=list)
    outputs: list[DatasetRef] = field(default_factory=list)
    rejections_by_rule: dict[str, int] = field(default_factory=dict)
    column_lineage: dict[str, dict[str, ColumnSources]] = field(default_factory=dict)
    auto_column_lineage: bool = True
    ledger_table: ClassVar[str] = "rejections"

    def declare_column_lineage(self, output_table: str, columns: Mapping[str, ColumnSources]) -> None:
        """Add declared lineage for ``output_table``'s columns; an unknown kind is an error here."""
        for sources in columns.values():
            for _table, _column, kind in sources:
                if kind not in TRANSFORMATION_KINDS:
                    raise ValueError(
                        f"unknown column lineage kind {kind!r}; one of {sorted(TRANSFORMATION_KINDS)}"
                    )
        self.column_lineage.setdefault(output_table, {}).update({k: list(v) for k, v in columns.items()})

    def lineage_of(self, output: DatasetRef) -> dict[str, ColumnSources]:
        """Declared lineage of ``output``'s columns, completed with same-name IDENTITY if enabled."""
        declared = self.column_lineage.get(output.table, {})
        result: dict[str, ColumnSources] = {}
        for column in output.schema or declared:
            if column in declared:
                result[column] = [s for s in declared[column] if s[2] in TRANSFORMATION_KINDS]
            elif self.auto_column_lineage:
                sources = [(i.table, column, "IDENTITY") for i in self.inputs if column in i.schema]
                if sources:
                    result[column] = sources
        return {c: s for c, s in result.items() if s}

    def event(self, state: RunState) -> RunEvent:
        emitter = self.emitter
        if state != RunState.START and self.rejections_by_rule:
            rules = _safe_rules(self.rejections_by_rule)
            self.run_facets[REJECTIONS_FACET] = ThresherRejectionsRunFacet(
                stage=self.job_name.rsplit(".", 1)[-1],
                total=sum(rules.values()),
                byRule=rules,
                ledger={"namespace": emitter.dataset_namespace, "name": f"main.{self.ledger_table}"},
                producer=PRODUCER,
            )
        outputs = (
            [emitter.output_dataset(o, self.lineage_of(o)) for o in self.outputs]
            if state != RunState.START
            else []
        )
        return self._event(state, [emitter.input_dataset(i) for i in self.inputs], outputs)


@dataclass
class CheckRun(_RunHandle):
    """The handle of one check run: set ``assertions`` to (assertion, success, column or None[,
    severity]) tuples before the block ends; they land on the checked dataset as dataQualityAssertions."""

    dataset: DatasetRef = field(default_factory=lambda: DatasetRef(""))
    assertions: list[tuple[Any, ...]] = field(default_factory=list)

    def event(self, state: RunState) -> RunEvent:
        assertions = [Assertion(*a) for a in self.assertions] if state != RunState.START else None
        return self._event(state, [self.emitter.input_dataset(self.dataset, assertions)], [])


# --- the spool ------------------------------------------------------------------------------------------


_NAME_LOCK = threading.Lock()
_LAST_NS = 0
_SEQ = 0


def _next_event_name() -> str:
    """``<ns time>-<pid>-<seq>.json``: unique, and increasing within the process even if the clock steps back."""
    global _LAST_NS, _SEQ
    with _NAME_LOCK:
        _LAST_NS = max(time.time_ns(), _LAST_NS + 1)
        _SEQ += 1
        return f"{_LAST_NS:020d}-{os.getpid():08d}-{_SEQ:08d}.json"


class Spool:
    """A folder of pending events, one JSON file each, named ``<ns time>-<pid>-<seq>.json``.

    Names sort in emission order (per process strictly, across processes by clock). Files are
    written under a dot-name and renamed, so a reader never sees half an event. ``drain`` holds an
    exclusive ``flock`` on ``.lock``: one drainer at a time across threads and processes.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)

    def put(self, payload: dict[str, Any]) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        name = _next_event_name()
        tmp = self.dir / f".{name}.tmp"
        tmp.write_text(json.dumps(payload, sort_keys=True))
        final = self.dir / name
        os.replace(tmp, final)
        return final

    def pending(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.iterdir() if p.suffix == ".json" and not p.name.startswith("."))

    def drain(
        self,
        send: Callable[[dict[str, Any]], Any],
        *,
        deadline: float | Callable[[], float],
        lock_wait: float = 0.0,
    ) -> tuple[int, int]:
        """Send pending events oldest first until none is left, one fails, or ``deadline``.

        Returns (sent, still pending). A failure leaves the event (and all after it) for a later
        drain, so order holds; an event the backend refuses as malformed (HTTP 4xx other than 408
        and 429) is set aside in ``rejected/`` instead of blocking every later event forever.
        """
        sent = 0
        if not self.dir.is_dir():
            return 0, 0
        with self._locked(lock_wait) as locked:
            if locked:
                until = deadline if callable(deadline) else lambda: deadline
                while time.monotonic() < until():
                    batch = self.pending()
                    if not batch:
                        break
                    path = batch[0]
                    try:
                        payload = json.loads(path.read_text())
                    except (OSError, ValueError):
                        if path.exists():
                            self._set_aside(path, "unreadable")
                        continue
                    try:
                        send(payload)
                    except Exception as exc:
                        if _refused(exc):
                            self._set_aside(path, f"refused with HTTP {_status(exc)}")
                            continue
                        log.debug("OpenLineage delivery deferred (%s)", type(exc).__name__)
                        break
                    path.unlink(missing_ok=True)
                    sent += 1
        return sent, len(self.pending())

    def _set_aside(self, path: Path, why: str) -> None:
        rejected = self.dir / "rejected"
        rejected.mkdir(exist_ok=True)
        os.replace(path, rejected / path.name)
        log.warning("OpenLineage event %s %s; moved to %s", path.name, why, rejected)

    @contextmanager
    def _locked(self, wait: float) -> Iterator[bool]:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            give_up = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= give_up:
                        yield False
                        return
                    time.sleep(0.01)
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _refused(exc: BaseException) -> bool:
    status = _status(exc)
    return status is not None and 400 <= status < 500 and status not in (408, 429)


def flush_spool(spool_dir: Path, client: OpenLineageClient, *, timeout: float = 30.0) -> tuple[int, int]:
    """Deliver what ``spool_dir`` holds through ``client``'s transport, in order: (sent, remaining).

    For ``thresher lineage flush``. Waits up to ``timeout`` for a running sender to release the
    spool, and stops at the first event the backend does not take.
    """
    transport = client.transport
    spool = Spool(spool_dir)
    if transport is None or transport.kind == "noop":
        return 0, len(spool.pending())
    send = _quick(transport, SEND_TIMEOUT_SECONDS).emit
    return spool.drain(send, deadline=time.monotonic() + timeout, lock_wait=timeout)


# --- the background sender ---------------------------------------------------------------------------------


def _quick(transport: Any, timeout: float) -> Any:
    """An HTTP transport with a short timeout and no retries of its own (the sender retries, in order)."""
    if isinstance(transport, HttpTransport):
        config = attr.evolve(
            transport.config,
            timeout=min(transport.config.timeout, timeout),
            retry={**transport.config.retry, "total": 0, "connect": 0, "read": 0, "status": 0},
        )
        return HttpTransport(config)
    return transport


class _Sender(threading.Thread):
    def __init__(self, spool: Spool, transport: Any, send_timeout: float, max_backoff: float) -> None:
        super().__init__(name=f"thresher-lineage-sender:{spool.dir.name}", daemon=True)
        self.spool = spool
        self.transport = _quick(transport, send_timeout)
        self.max_backoff = max_backoff
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._deadline = float("inf")

    def wake(self) -> None:
        self._wake.set()

    def send(self, payload: dict[str, Any]) -> None:
        self.transport.emit(payload)

    def run(self) -> None:
        backoff = 0.0
        while True:
            self._wake.wait(timeout=backoff or IDLE_POLL_SECONDS)
            self._wake.clear()
            closing = self._closing.is_set()
            pass_ends = time.monotonic() + 60.0
            try:
                _sent, remaining = self.spool.drain(
                    self.send, deadline=lambda end=pass_ends: min(end, self._deadline)
                )
            except Exception as exc:  # a vanished folder, a full disk: retry later
                log.debug("OpenLineage sender pass failed (%s)", type(exc).__name__)
                remaining = 1
            if closing:
                return
            backoff = min(max(backoff * 2, 0.05), self.max_backoff) if remaining else 0.0


_SENDERS: dict[Path, _Sender] = {}
_SENDERS_PID = os.getpid()
_SENDERS_LOCK = threading.Lock()
_EXIT_HOOK_PID: int | None = None


def _sender_for(spool: Spool, transport: Any, send_timeout: float, max_backoff: float) -> _Sender:
    """The one running sender of ``spool``'s folder in this process (after a fork, a fresh one)."""
    global _SENDERS_PID, _EXIT_HOOK_PID
    with _SENDERS_LOCK:
        if os.getpid() != _SENDERS_PID:  # forked: the parent's threads do not exist here
            _SENDERS.clear()
            _SENDERS_PID = os.getpid()
        key = spool.dir.resolve()
        sender = _SENDERS.get(key)
        if sender is None or not sender.is_alive():
            sender = _Sender(spool, transport, send_timeout, max_backoff)
            sender.start()
            _SENDERS[key] = sender
        else:
            sender.transport = _quick(transport, send_timeout)
        if os.getpid() != _EXIT_HOOK_PID:
            # atexit covers interpreters; Finalize covers multiprocessing workers (Dagster's step
            # processes), which leave through os._exit after running multiprocessing finalizers.
            atexit.register(_flush_at_exit)
            multiprocessing.util.Finalize(None, _flush_at_exit, exitpriority=100)
            _EXIT_HOOK_PID = os.getpid()
        sender.wake()  # deliver whatever an earlier process left behind
        return sender


def _reset_after_fork() -> None:
    """A lock held by another thread at fork time would stay held forever in the child."""
    global _NAME_LOCK, _SENDERS_LOCK
    _NAME_LOCK = threading.Lock()
    _SENDERS_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def _close_sender(sender: _Sender, timeout: float) -> None:
    sender._deadline = time.monotonic() + timeout
    sender._closing.set()
    sender.wake()
    sender.join(timeout)
    with _SENDERS_LOCK:
        for key, value in list(_SENDERS.items()):
            if value is sender:
                del _SENDERS[key]


def _flush_at_exit() -> None:
    """A bounded last attempt to deliver, all spools together; the rest waits in the spool."""
    if os.getpid() != _SENDERS_PID:
        return
    deadline = time.monotonic() + EXIT_FLUSH_SECONDS
    with _SENDERS_LOCK:
        senders = list(_SENDERS.values())
    for sender in senders:
        with contextlib.suppress(Exception):
            _close_sender(sender, max(0.0, deadline - time.monotonic()))
