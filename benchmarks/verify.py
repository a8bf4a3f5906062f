"""Throughput of the verified stage on real code benchmarks: sandboxed test executions per second.

Runs every HumanEval canonical solution and every MBPP reference solution with its unit tests,
once through the bare sandbox (``run_many``) and once through the whole ``Verifier`` stage
(extraction, compile check, sandbox, verdicts). Prints a table, then one JSON line with the same
figures for CI to parse.

    .venv/bin/python benchmarks/verify.py [--workers 2] [--corpora ../shared/corpora]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time
from pathlib import Path

import polars as pl

from thresher.config import VerifyConfig
from thresher.records import conform
from thresher.sandbox import run_many
from thresher.verification import Verifier


def humaneval(corpora: Path) -> tuple[list[str], pl.DataFrame]:
    with gzip.open(corpora / "code/humaneval/HumanEval.jsonl.gz", "rt", encoding="utf-8") as f:
        tasks = [json.loads(line) for line in f]
    programs = [
        f"{t['prompt']}{t['canonical_solution']}\n\n{t['test']}\n\ncheck({t['entry_point']})\n" for t in tasks
    ]
    rows = [
        {
            "record_id": f"humaneval:{i}",
            "task": "code",
            "messages": [
                {"role": "user", "content": t["prompt"]},
                {"role": "assistant", "content": f"```python\n{t['prompt']}{t['canonical_solution']}```"},
            ],
            "tests": t["test"],
            "entry_point": t["entry_point"],
        }
        for i, t in enumerate(tasks)
    ]
    return programs, conform(pl.DataFrame(rows))


def mbpp(corpora: Path) -> tuple[list[str], pl.DataFrame]:
    lines = (corpora / "code/mbpp/mbpp.jsonl").read_text(encoding="utf-8").splitlines()
    tasks = [json.loads(line) for line in lines]
    tests = [t["test_setup_code"] + "\n" + "\n".join(t["test_list"]) for t in tasks]
    programs = [f"{t['code']}\n\n{test}\n" for t, test in zip(tasks, tests, strict=True)]
    rows = [
        {
            "record_id": f"mbpp:{i}",
            "task": "code",
            "messages": [{"role": "user", "content": t["text"]}, {"role": "assistant", "content": t["code"]}],
            "tests": test,
        }
        for i, (t, test) in enumerate(zip(tasks, tests, strict=True))
    ]
    return programs, conform(pl.DataFrame(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--corpora", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "corpora"
    )
    args = parser.parse_args()
    config = VerifyConfig(workers=args.workers)
    limits = {"timeout_seconds": config.timeout_seconds, "memory_mb": config.memory_mb}

    figures: dict[str, dict[str, float]] = {}
    for name, load in (("humaneval", humaneval), ("mbpp", mbpp)):
        programs, records = load(args.corpora)
        started = time.perf_counter()
        results = run_many(programs, args.workers, **limits)
        sandbox_seconds = time.perf_counter() - started
        started = time.perf_counter()
        stage = Verifier(config).run(records)
        stage_seconds = time.perf_counter() - started
        figures[name] = {
            "programs": len(programs),
            "passed": sum(r.status == "passed" for r in results),
            "sandbox_seconds": round(sandbox_seconds, 3),
            "sandbox_per_second": round(len(programs) / sandbox_seconds, 1),
            "verifier_seconds": round(stage_seconds, 3),
            "verifier_per_second": round(records.height / stage_seconds, 1),
            "verifier_passed": stage.counters["code.passed"],
        }

    header = f"{'corpus':<10} {'programs':>8} {'passed':>7} {'sandbox/s':>10} {'verifier/s':>11} {'verifier ok':>11}"
    print(f"verified-stage throughput, {args.workers} workers, {os.cpu_count()} CPUs")
    print(header)
    print("-" * len(header))
    for name, f in figures.items():
        print(
            f"{name:<10} {f['programs']:>8} {f['passed']:>7} {f['sandbox_per_second']:>10} "
            f"{f['verifier_per_second']:>11} {f['verifier_passed']:>11}"
        )
    print(json.dumps({"benchmark": "verify", "workers": args.workers, "cpus": os.cpu_count(), **figures}))


if __name__ == "__main__":
    main()
