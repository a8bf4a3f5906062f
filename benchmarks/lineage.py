"""OpenLineage emit latency with the backend up, slow and down (spooled) against the synchronous
client (the reference), and the cost of per-column metrics and dataset versions.

    .venv/bin/python benchmarks/lineage.py
"""

import contextlib
import json
import os
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl

from thresher.lineage import DatasetRef, LineageEmitter, column_metrics, content_version, lineage_client


def stage_emits(em, n):
    t = []
    orig = em.emit

    def timed(e):
        b = time.perf_counter()
        orig(e)
        t.append(time.perf_counter() - b)

    em.emit = timed
    for i in range(n):
        with em.stage_run(
            f"thresher.s{i}",
            parent_run_id=None,
            parent_job_name=None,
            inputs=[DatasetRef("raw", {"a": "String"}, 1)],
        ) as r:
            r.outputs = [DatasetRef("x", {"a": "String"}, 1)]
    del em.emit
    return t


class H(BaseHTTPRequestHandler):
    delay = 0.0

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(H.delay)
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


rows = {}
for v in [k for k in os.environ if k.startswith("OPENLINEAGE")]:
    del os.environ[v]
with tempfile.TemporaryDirectory() as d:
    d = Path(d)
    em = LineageEmitter(lineage_client(d / "f" / "events.jsonl"), d / "f" / "t.duckdb")
    rows["file"] = stage_emits(em, 50)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    port = srv.server_address[1]
    threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True).start()
    os.environ["OPENLINEAGE_URL"] = f"http://127.0.0.1:{port}"
    em = LineageEmitter(lineage_client(d / "h" / "e.jsonl"), d / "h" / "t.duckdb", max_backoff=0.1)
    rows["http up"] = stage_emits(em, 50)
    time.sleep(0.5)
    H.delay = 1.0
    rows["http slow (1 s)"] = stage_emits(em, 10)
    em.close(0.1)
    srv.shutdown()
    srv.server_close()
    em = LineageEmitter(lineage_client(d / "h" / "e.jsonl"), d / "h2" / "t.duckdb", max_backoff=0.1)
    rows["http down"] = stage_emits(em, 50)
    em.close(0.1)
    # reference: a synchronous OpenLineageClient.emit to the down backend (what the old emitter did)
    from datetime import UTC, datetime

    from openlineage.client.event_v2 import Job, Run, RunEvent, RunState
    from openlineage.client.uuid import generate_new_uuid

    c = lineage_client(d / "x.jsonl")
    ev = RunEvent(
        eventType=RunState.START,
        eventTime=datetime.now(UTC).isoformat(),
        run=Run(runId=str(generate_new_uuid())),
        job=Job(namespace="t", name="j"),
        producer="https://x",
    )
    b = time.perf_counter()
    with contextlib.suppress(Exception):
        c.emit(ev)
    rows["reference: sync client.emit, http down"] = [time.perf_counter() - b]

print(f"{'emit latency':42} {'n':>4} {'median ms':>10} {'max ms':>10}")
out = {}
for k, t in rows.items():
    print(f"{k:42} {len(t):>4} {statistics.median(t) * 1e3:>10.2f} {max(t) * 1e3:>10.2f}")
    out[k] = {
        "n": len(t),
        "median_ms": round(statistics.median(t) * 1e3, 3),
        "max_ms": round(max(t) * 1e3, 3),
    }

n = 200_000
frame = pl.DataFrame(
    {
        "record_id": [f"abc:{i}" for i in range(n)],
        "task": ["chat", "code", None, "math"] * (n // 4),
        "messages": [
            [
                {"role": "user", "content": "word " * (i % 97)},
                {"role": "assistant", "content": "ok " * (i % 13)},
            ]
            for i in range(n)
        ],
    }
)
b = time.perf_counter()
m = column_metrics(frame)
tm = time.perf_counter() - b
b = time.perf_counter()
v = content_version(frame)
tv = time.perf_counter() - b
# reference: per-column Python loop over values
b = time.perf_counter()
ref = {}
for c in frame.columns:
    vals = frame[c].to_list()
    ref[c] = (
        sum(x is None for x in vals),
        len({json.dumps(x, sort_keys=True) for x in vals if x is not None}),
    )
tr = time.perf_counter() - b
assert {c: tuple(x) for c, x in m.items()} == ref, (m, ref)
print(f"\n{f'per-frame cost, {n} rows':42} {'ms':>10} {'rows/s':>14}")
for k, t in (
    ("column_metrics (Polars, one select)", tm),
    ("content_version (hash_rows + sha256)", tv),
    ("reference: Python loop metrics", tr),
):
    print(f"{k:42} {t * 1e3:>10.1f} {n / t:>14,.0f}")
out["rows"] = n
out["column_metrics_ms"] = round(tm * 1e3, 1)
out["content_version_ms"] = round(tv * 1e3, 1)
out["reference_python_metrics_ms"] = round(tr * 1e3, 1)
print(json.dumps(out))
