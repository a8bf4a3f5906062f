"""Delivery of lineage events: file, console and HTTP (a Marquez-compatible POST /api/v1/lineage), with a
spool that keeps a slow or down backend from ever failing or holding up a run.

The backend here is a real HTTP server on 127.0.0.1 (port 0), stopped and restarted on the same port.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.openlineage_spec import validate_event
from thresher.lineage import DatasetRef, LineageEmitter, flush_spool, lineage_client

FAST_EMIT_SECONDS = 0.05  # "a few ms" with headroom for a loaded CI machine; the backend takes far longer


class Marquez:
    """A stand-in backend that records the events POSTed to /api/v1/lineage, optionally slowly."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.received: list[dict] = []
        self.paths: set[str] = set()
        self.refuse: Callable[[dict], bool] = lambda event: False
        self.port = 0
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> Marquez:
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                time.sleep(backend.delay)
                backend.paths.add(self.path)
                refused = backend.refuse(body)
                if not refused:
                    backend.received.append(body)
                self.send_response(400 if refused else 201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True).start()
        return self

    def stop(self) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
        self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_for(self, count: int, timeout: float = 5.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.received


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No OpenLineage configuration from outside, and none left behind: the OpenLineage client writes
    ``OPENLINEAGE__TRANSPORT__*`` aliases of ``OPENLINEAGE_URL`` straight into os.environ."""
    for var in [v for v in os.environ if v.startswith("OPENLINEAGE")]:
        monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for var in [v for v in os.environ if v.startswith("OPENLINEAGE")]:
        del os.environ[var]


@pytest.fixture
def marquez() -> Iterator[Marquez]:
    backend = Marquez().start()
    yield backend
    if backend._server is not None:
        backend.stop()


def http_emitter(home: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> LineageEmitter:
    monkeypatch.setenv("OPENLINEAGE_URL", url)
    client = lineage_client(home / "lineage" / "events.jsonl")
    assert client.transport.kind == "http"
    return LineageEmitter(client, home / "t.duckdb", spool_dir=home / "lineage" / "spool", max_backoff=0.1)


def stage(emitter: LineageEmitter, name: str) -> float:
    """One stage run (START + COMPLETE); returns the longest time a single emit took."""
    slowest = 0.0
    original = emitter.emit

    def timed(event: object) -> None:
        nonlocal slowest
        began = time.perf_counter()
        original(event)  # type: ignore[arg-type]
        slowest = max(slowest, time.perf_counter() - began)

    emitter.emit = timed  # type: ignore[method-assign]
    try:
        with emitter.stage_run(name, parent_run_id=None, parent_job_name=None, inputs=[]) as run:
            run.outputs = [DatasetRef(name.rsplit(".", 1)[-1], {"record_id": "String"}, 1)]
    finally:
        del emitter.emit
    return slowest


def sequence(events: list[dict]) -> list[tuple[str, str]]:
    return [(e["job"]["name"], e["eventType"]) for e in events]


def expected(names: list[str]) -> list[tuple[str, str]]:
    return [(n, state) for n in names for state in ("START", "COMPLETE")]


def test_events_reach_a_marquez_compatible_backend_in_order(
    clean_env: Path, marquez: Marquez, monkeypatch: pytest.MonkeyPatch
) -> None:
    emitter = http_emitter(clean_env, marquez.url, monkeypatch)
    names = [f"thresher.s{i}" for i in range(3)]
    for name in names:
        stage(emitter, name)
    assert sequence(marquez.wait_for(6)) == expected(names)
    assert marquez.paths == {"/api/v1/lineage"}
    assert all(validate_event(e) == [] for e in marquez.received)
    emitter.close()
    assert emitter.spool.pending() == []


def test_a_backend_that_is_down_neither_blocks_nor_loses_events(
    clean_env: Path, marquez: Marquez, monkeypatch: pytest.MonkeyPatch
) -> None:
    emitter = http_emitter(clean_env, marquez.url, monkeypatch)
    stage(emitter, "thresher.before")
    marquez.wait_for(2)
    marquez.stop()
    down = [f"thresher.down{i}" for i in range(4)]
    slowest = max(stage(emitter, name) for name in down)
    assert slowest < FAST_EMIT_SECONDS
    time.sleep(0.3)  # the sender tries, and fails, several times meanwhile
    assert len(emitter.spool.pending()) == 8
    marquez.start()  # same port
    stage(emitter, "thresher.after")
    received = marquez.wait_for(12)
    time.sleep(0.2)  # would expose a duplicate sent late
    assert sequence(received) == expected(["thresher.before", *down, "thresher.after"])
    assert len({(e["run"]["runId"], e["eventType"]) for e in received}) == 12
    emitter.close()


def test_a_slow_backend_does_not_hold_up_emit(
    clean_env: Path, marquez: Marquez, monkeypatch: pytest.MonkeyPatch
) -> None:
    marquez.delay = 0.15
    emitter = http_emitter(clean_env, marquez.url, monkeypatch)
    names = [f"thresher.slow{i}" for i in range(3)]
    slowest = max(stage(emitter, name) for name in names)
    assert slowest < FAST_EMIT_SECONDS
    assert sequence(marquez.wait_for(6, timeout=8)) == expected(names)
    emitter.close()


def test_flush_spool_delivers_what_a_finished_process_left_behind(
    clean_env: Path, marquez: Marquez, monkeypatch: pytest.MonkeyPatch
) -> None:
    marquez.stop()
    emitter = http_emitter(clean_env, marquez.url, monkeypatch)
    stage(emitter, "thresher.left")
    emitter.close(timeout=0.2)  # the process ends while the backend is down
    spool = clean_env / "lineage" / "spool"
    assert flush_spool(spool, lineage_client(clean_env / "x.jsonl"), timeout=1) == (0, 2)
    marquez.start()
    assert flush_spool(spool, lineage_client(clean_env / "x.jsonl"), timeout=5) == (2, 0)
    assert sequence(marquez.received) == expected(["thresher.left"])
    assert flush_spool(spool, lineage_client(clean_env / "x.jsonl")) == (0, 0)


def test_an_event_the_backend_refuses_is_set_aside_and_does_not_block_the_rest(
    clean_env: Path, marquez: Marquez, monkeypatch: pytest.MonkeyPatch
) -> None:
    marquez.refuse = lambda event: event["job"]["name"] == "thresher.bad" and event["eventType"] == "START"
    emitter = http_emitter(clean_env, marquez.url, monkeypatch)
    for name in ("thresher.bad", "thresher.good"):
        stage(emitter, name)
    received = marquez.wait_for(3)
    assert sequence(received) == [
        ("thresher.bad", "COMPLETE"),
        ("thresher.good", "START"),
        ("thresher.good", "COMPLETE"),
    ]
    emitter.close()
    assert len(list((clean_env / "lineage" / "spool" / "rejected").glob("*.json"))) == 1


def test_the_file_transport_is_the_default_and_writes_synchronously(clean_env: Path) -> None:
    client = lineage_client(clean_env / "lineage" / "events.jsonl")
    assert client.transport.kind == "file"
    emitter = LineageEmitter(client, clean_env / "t.duckdb")
    stage(emitter, "thresher.raw")
    lines = (clean_env / "lineage" / "events.jsonl").read_text().splitlines()
    assert [json.loads(line)["eventType"] for line in lines] == ["START", "COMPLETE"]
    assert emitter.spool.pending() == []
    assert emitter.spool.dir == (clean_env / "lineage" / "spool").resolve()


def test_the_console_transport_is_configured_the_openlineage_way(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__TYPE", "console")
    client = lineage_client(clean_env / "lineage" / "events.jsonl")
    assert client.transport.kind == "console"
    with caplog.at_level(logging.INFO, logger="openlineage.client.transport.console"):
        stage(LineageEmitter(client, clean_env / "t.duckdb"), "thresher.raw")
    logged = [json.loads(r.getMessage()) for r in caplog.records if r.name.endswith("console")]
    assert [e["eventType"] for e in logged] == ["START", "COMPLETE"]
    assert not (clean_env / "lineage" / "events.jsonl").exists()


def test_an_openlineage_yml_in_the_working_directory_selects_the_transport(clean_env: Path) -> None:
    (clean_env / "openlineage.yml").write_text(
        "transport:\n  type: http\n  url: http://127.0.0.1:9\n  endpoint: api/v1/lineage\n"
    )
    client = lineage_client(clean_env / "lineage" / "events.jsonl")
    assert client.transport.kind == "http"


def _worker(home: str) -> None:
    """A Dagster-like step process: emits, then leaves through multiprocessing's os._exit path."""
    emitter = LineageEmitter(
        lineage_client(Path(home) / "lineage" / "events.jsonl"),
        Path(home) / "t.duckdb",
        spool_dir=Path(home) / "lineage" / "spool",
    )
    stage(emitter, "thresher.worker")


def test_a_worker_process_flushes_its_events_on_exit(
    clean_env: Path, marquez: Marquez, monkeypatch: pytest.MonkeyPatch
) -> None:
    marquez.delay = 0.05  # still sending when the step returns
    monkeypatch.setenv("OPENLINEAGE_URL", marquez.url)
    worker = multiprocessing.get_context("fork").Process(target=_worker, args=(str(clean_env),))
    worker.start()
    worker.join(10)
    assert worker.exitcode == 0
    assert sequence(marquez.received) == expected(["thresher.worker"])  # no waiting: sent before exit
    assert list((clean_env / "lineage" / "spool").glob("*.json")) == []
