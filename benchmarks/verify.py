"""The verified stage on real data: sandbox containment, execution throughput, mutants, math answers.

1. The adversarial suite (``thresher.adversarial``): each hostile program's verdict and whether the
   host was unharmed.
2. Sandboxed test executions per second for every HumanEval canonical solution and every MBPP reference
   solution with its tests: the isolated sandbox (namespaces, unprivileged uid, cgroups) beside the
   reference, the same runner with resource limits only (what the sandbox was before isolation), in
   the same run; then the whole ``Verifier`` stage (extraction, ruff, per-test harness, sandbox).
3. Mutants of those solutions (flipped comparisons, off-by-one, swapped operands): how many the
   verifier kills.
4. GSM8K test answers checked against themselves, and perturbed final answers (+1, x10, a digit
   dropped) that must fail.

Prints a table per part, then one JSON line with every figure.

    .venv/bin/python benchmarks/verify.py [--workers 2] [--corpora ../shared/corpora] [--attack-timeout 3]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time
from pathlib import Path

import polars as pl

from thresher.adversarial import run_adversarial_suite
from thresher.config import VerifyConfig
from thresher.records import conform
from thresher.sandbox import Sandbox, SandboxLimits
from thresher.verification import Verifier
from thresher.verification.mutation import mutation_report


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


def gsm8k(corpora: Path, perturb: str | None) -> pl.DataFrame:
    """GSM8K test solutions as math records whose reference is the dataset's own answer; with
    ``perturb``, the solution's final '#### x' is changed so that it must fail."""
    lines = (corpora / "math/gsm8k/test.jsonl").read_text(encoding="utf-8").splitlines()
    rows = []
    for i, line in enumerate(lines):
        task = json.loads(line)
        solution, _, final = task["answer"].rpartition("####")
        value = final.strip().replace(",", "")
        if perturb == "plus_one":
            value = str(int(value) + 1)
        elif perturb == "times_ten":
            value = str(int(value) * 10) if int(value) != 0 else "1"
        elif perturb == "digit_dropped":
            value = value[:-1] if len(value.lstrip("-")) > 1 else str(int(value) + 2)
        rows.append(
            {
                "record_id": f"gsm8k:{i}",
                "task": "math",
                "messages": [
                    {"role": "user", "content": task["question"]},
                    {"role": "assistant", "content": f"{solution}#### {value}"},
                ],
                "reference_answer": task["answer"],
            }
        )
    return conform(pl.DataFrame(rows))


def adversarial(timeout: float) -> list[dict[str, object]]:
    sandbox = Sandbox(SandboxLimits(timeout_seconds=timeout, memory_mb=256))
    return [
        {
            "attack": v.attack,
            "status": v.status,
            "expected": "/".join(v.expected),
            "contained": v.contained,
            "reason": v.reason,
            "host_check": v.host_check,
            "seconds": v.seconds,
        }
        for v in run_adversarial_suite(sandbox)
    ]


def throughput(name: str, programs: list[str], records: pl.DataFrame, workers: int) -> dict[str, object]:
    config = VerifyConfig(workers=workers)
    limits = SandboxLimits(config.timeout_seconds, config.memory_mb)
    figures: dict[str, object] = {"corpus": name, "programs": len(programs)}
    for label, isolate in (("isolated", True), ("limits_only", False)):
        started = time.perf_counter()
        results = Sandbox(limits, isolate=isolate).run_many(programs, workers)
        seconds = time.perf_counter() - started
        figures[f"{label}_per_second"] = round(len(programs) / seconds, 1)
        figures[f"{label}_passed"] = sum(r.status == "passed" for r in results)
    started = time.perf_counter()
    stage = Verifier(config).run(records)
    seconds = time.perf_counter() - started
    figures["verifier_per_second"] = round(records.height / seconds, 1)
    figures["verifier_passed"] = stage.counters["code.passed"]
    figures["_kept"] = stage.kept
    return figures


def print_table(title: str, rows: list[dict[str, object]]) -> None:
    columns = [c for c in rows[0] if not c.startswith("_")]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print(f"\n{title}")
    print("  ".join(c.ljust(widths[c]) for c in columns))
    print("  ".join("-" * widths[c] for c in columns))
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in columns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--corpora", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "corpora"
    )
    parser.add_argument("--attack-timeout", type=float, default=3.0)
    args = parser.parse_args()
    sandbox = Sandbox(SandboxLimits(10, 512))
    print(
        f"verified stage, {args.workers} workers, {os.cpu_count()} CPUs; sandbox: {sandbox.isolation.describe()}"
    )
    for note in sandbox.isolation.notes:
        print(f"  note: {note}")

    attacks = adversarial(args.attack_timeout)
    print_table("adversarial suite", attacks)

    speed = [
        throughput(name, *load(args.corpora), args.workers)
        for name, load in (("humaneval", humaneval), ("mbpp", mbpp))
    ]
    print_table("sandboxed test executions per second (isolated vs limits only, then the whole stage)", speed)

    mutants = []
    for row in speed:
        report = mutation_report(row["_kept"], Verifier(VerifyConfig(workers=args.workers)))
        for entry in report.to_dicts():
            entry["kill_rate"] = None if entry["kill_rate"] is None else round(entry["kill_rate"], 3)
            mutants.append({"corpus": row["corpus"], **entry})
    print_table("mutants of the passing reference solutions (first site per operator per solution)", mutants)

    maths = []
    for perturb in (None, "plus_one", "times_ten", "digit_dropped"):
        records = gsm8k(args.corpora, perturb)
        result = Verifier(VerifyConfig(workers=args.workers)).run(records)
        maths.append(
            {
                "answers": perturb or "as given",
                "records": records.height,
                "verified": result.kept.height,
                "rejected": result.rejected.height,
                "rules": ", ".join(
                    f"{rule} {n}" for rule, n in result.rejected["rule"].value_counts(sort=True).rows()
                ),
            }
        )
    print_table("GSM8K test answers against the dataset's own reference", maths)

    print(
        json.dumps(
            {
                "benchmark": "verify",
                "workers": args.workers,
                "cpus": os.cpu_count(),
                "isolation": sandbox.isolation.describe(),
                "adversarial": attacks,
                "throughput": [{k: v for k, v in row.items() if not k.startswith("_")} for row in speed],
                "mutants": mutants,
                "gsm8k": maths,
            }
        )
    )


if __name__ == "__main__":
    main()
