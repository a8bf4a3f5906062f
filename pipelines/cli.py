"""`thresher`: the stable interface for people and scripts. Every command takes --json."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from pipelines.resources import ThresherResource, resources_for_environment, thresher_home
from thresher import provenance

# Runs from the CLI log to the Dagster instance in full (see them with `make ui`); the terminal
# gets warnings and errors only.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _resource() -> ThresherResource:
    return resources_for_environment()["thresher"]


def _emit(args: argparse.Namespace, data: Any, human: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else human)


# --- commands ---------------------------------------------------------------------------------------


def cmd_demo_corpus(args: argparse.Namespace) -> int:
    from thresher.democorpus import generate

    out = Path(args.out) if args.out else thresher_home() / "demo-corpus"
    corpus = generate(out, rows=args.rows, seed=args.seed)
    files = sorted(str(p) for p in corpus.files)
    data = {"out": str(out), "files": files, "ground_truth": str(corpus.ground_truth)}
    _emit(args, data, f"wrote {len(files)} files under {out}/files (ground truth: {corpus.ground_truth})")
    return 0


def _expand(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")))
        elif path.is_file():
            files.append(path)
        else:
            raise SystemExit(f"thresher ingest: no such file or folder: {path}")
    return files


def cmd_ingest(args: argparse.Namespace) -> int:
    from assets.partitions import batches
    from pipelines.definitions import build_definitions
    from pipelines.instance import instance
    from thresher.landing import land

    environment = resources_for_environment()
    resource = environment["thresher"]
    defs = build_definitions(environment)
    dagster = instance(resource.home_dir)
    landed = [land(p, resource.landing_dir()) for p in _expand(args.paths)]
    keys = list(dict.fromkeys(f.batch for f in landed))
    known = set(dagster.get_dynamic_partitions(batches.name))
    dagster.add_dynamic_partitions(batches.name, [k for k in keys if k not in known])
    runs = []
    for key in keys:
        result = defs.resolve_job_def("batch_job").execute_in_process(
            instance=dagster, partition_key=key, raise_on_error=False, run_config=QUIET
        )
        runs.append({"batch": key, "run_id": result.run_id, "success": result.success})
        if not args.json:
            print(f"batch {key}: run {result.run_id[:8]} {'succeeded' if result.success else 'FAILED'}")
    if not args.no_release:
        result = defs.resolve_job_def("release_job").execute_in_process(
            instance=dagster, raise_on_error=False, run_config=QUIET
        )
        runs.append({"batch": "release", "run_id": result.run_id, "success": result.success})
        if not args.json:
            print(f"release: run {result.run_id[:8]} {'succeeded' if result.success else 'FAILED'}")
    if args.json:
        print(json.dumps({"runs": runs}, indent=2))
    return 0 if all(r["success"] for r in runs) else 1


def _status_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "nothing materialized yet: run `thresher ingest PATH` or `make demo`"
    lines = [f"{'stage':<10} {'batches':>7} {'in':>8} {'created':>8} {'kept':>8} {'rejected':>8}  checks"]
    for r in rows:
        checks = ", ".join(
            f"{name} {c['passed']} ok" + (f" / {c['failed']} FAILED" if c["failed"] else "")
            for name, c in r["checks"].items()
        )
        lines.append(
            f"{r['stage']:<10} {r['batches']:>7} {r['rows_in']:>8} {r['created']:>8} {r['kept']:>8} "
            f"{r['rejected']:>8}  {checks}"
        )
    lines.append("")
    lines.append("rejections by rule:")
    for r in rows:
        for rule, n in r["rejected_by_rule"].items():
            lines.append(f"  {r['stage']:<10} {rule:<24} {n:>7}")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    with _resource().store().connect(read_only=True) as con:
        rows = provenance.status(con)
    _emit(args, rows, _status_text(rows))
    return 0


def _trace_text(t: dict[str, Any]) -> str:
    src = t["source"]
    lines = [
        f"record {t['record_id']} ({src.get('origin')})",
        f"  source: {src.get('source_file')}:{src.get('source_line')} (batch {src.get('batch')}, "
        f"file sha256 {str(src.get('sha256'))[:12]}, format {src.get('source_format')}, license {src.get('license')})",
    ]
    for seed in t.get("seeds", []):
        s = seed["source"] or {}
        lines.append(
            f"  seed: {seed['record_id']} from {s.get('source_file')}:{s.get('source_line')} ({seed['detail']})"
        )
    if "synthesis" in t:
        syn = t["synthesis"]
        lines.append(
            f"  synthesis: {syn.get('generator')} recipe {syn.get('recipe')} ({syn.get('kind')}), "
            f"template {syn.get('template_id')} (hash {syn.get('template_hash')}), seed {syn.get('seed')}"
        )
        if syn.get("model"):
            lines.append(
                f"  model: {syn['model']} at endpoint {syn.get('endpoint')}, {syn.get('calls')} calls, "
                f"{syn.get('prompt_tokens')}+{syn.get('completion_tokens')} tokens, "
                f"{'from the response cache' if syn.get('cache_hit') else 'generated'}; params {syn.get('params')}"
            )
    for step in t["stages"]:
        extra = ""
        if step["status"] == "rejected":
            extra = f" by {step['rule']}: {step['detail']}"
        elif "verdict" in step:
            extra = f" (verdict {step['verdict']}: {step.get('verdict_detail') or ''})"
        elif "split" in step:
            extra = f" (split {step['split']}; templates {', '.join(t.get('templates', []))})"
        lines.append(f"  {step['stage']:<10} {step['status']}{extra}")
    for dup in t.get("duplicate_of", []):
        lines.append(f"  duplicate of {dup['record_id']}: {dup['detail']}")
    if t.get("duplicates_removed"):
        lines.append(
            f"  kept over {len(t['duplicates_removed'])} duplicate(s): "
            + ", ".join(d["record_id"] for d in t["duplicates_removed"])
        )
    for attempt in t.get("verification_attempts", []):
        by = f" by {attempt['model']} (template {attempt['template_hash']})" if attempt.get("model") else ""
        outcome = attempt["rule"] or attempt["verdict"]
        lines.append(f"  code attempt {attempt['attempt']}{by}: {outcome}: {attempt['detail']}")
    for judgment in t.get("judgments", []):
        lines.append(
            f"  judged by {judgment['judge_model']} on rubric {judgment['judge_rubric']} "
            f"v{judgment['judge_rubric_version']}: score {judgment['judge_score']} ({judgment['judge_status']})"
        )
    for red in t.get("redactions", []):
        lines.append(
            f"  redacted {red['entity']} in message {red['message_index']} at [{red['start']}, {red['end']})"
        )
    return "\n".join(lines)


def cmd_trace(args: argparse.Namespace) -> int:
    with _resource().store().connect(read_only=True) as con:
        try:
            t = provenance.trace(con, args.record_id)
        except KeyError as exc:
            print(f"thresher trace: {exc.args[0]}", file=sys.stderr)
            return 1
    _emit(args, t, _trace_text(t))
    return 0


def cmd_why(args: argparse.Namespace) -> int:
    target = args.target
    name, _, line = (
        target.rpartition(":") if ":" in target and target.rsplit(":", 1)[1].isdigit() else (target, "", "")
    )
    source_file = Path(name).name
    with _resource().store().connect(read_only=True) as con:
        rows = provenance.why(con, source_file, int(line) if line else None)
    if not rows:
        print(
            f"thresher why: no record from {source_file}{':' + line if line else ''} in the store",
            file=sys.stderr,
        )
        return 1
    human = "\n".join(
        f"{source_file}:{r['source_line']}  {r['record_id']}  {r['fate']}"
        + (f": {r['detail']}" if r["detail"] else "")
        for r in rows
    )
    _emit(args, rows, human)
    return 0


def cmd_checks(args: argparse.Namespace) -> int:
    with _resource().store().connect(read_only=True) as con:
        rows = provenance.check_results(con, failing_only=args.failing)
    lines = []
    for r in rows:
        mark = "ok" if r["passed"] else f"FAILED ({r['severity']})"
        lines.append(f"{r['stage']:<10} {r['batch']:<40} {r['check_name']:<14} {mark}  {r['description']}")
        if args.rows and not r["passed"]:
            for failure in r["metadata"].get("failures", []):
                lines.append(
                    f"    {failure['expectation']}({failure['column']}): {failure['unexpected_count']} rows"
                )
            for row in r["metadata"].get("failing_rows", []):
                lines.append(
                    f"      {row['record_id']} {row['source']} [{row['expectation']}] {row['preview']}"
                )
    _emit(args, rows, "\n".join(lines) or "no check results yet")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Copy the latest release folder (written by the `release` asset) to ``--out``."""
    from thresher.release import latest_version, verify_release

    resource = _resource()
    version = latest_version(resource.release_dir)
    if version is None:
        print(
            "thresher export: no release yet; run `thresher ingest` or materialize `release`", file=sys.stderr
        )
        return 1
    source = resource.release_dir / version
    problems = verify_release(source)
    if problems:
        print(
            f"thresher export: release {version} does not match its manifest: {problems[0]}", file=sys.stderr
        )
        return 1
    out = Path(args.out) / version if args.out else source
    if out != source:
        shutil.copytree(source, out, dirs_exist_ok=True)
    data = {"version": version, "path": str(out)}
    _emit(args, data, f"release {version} at {out}")
    return 0


def cmd_lineage_flush(args: argparse.Namespace) -> int:
    from thresher.lineage import flush_spool

    resource = _resource()
    sent, remaining = flush_spool(resource.lineage_spool_dir, resource.lineage_client(), timeout=args.timeout)
    _emit(
        args,
        {"sent": sent, "remaining": remaining},
        f"sent {sent} spooled event(s); {remaining} still spooled",
    )
    return 0 if remaining == 0 else 1


def cmd_ui(args: argparse.Namespace) -> int:
    import os

    from pipelines.instance import ensure_dagster_home
    from pipelines.resources import REPO_ROOT

    ensure_dagster_home(_resource().home_dir)
    dagster = Path(sys.executable).with_name("dagster")
    workspace = str(REPO_ROOT / "workspace.yaml")
    os.execv(dagster, [str(dagster), "dev", "-w", workspace, "-h", args.host, "-p", str(args.port)])


# --- parser -----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thresher", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func: Any, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=func)
        return p

    p = command("demo-corpus", cmd_demo_corpus, "generate the demo corpus with its ground truth")
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output folder (default THRESHER_HOME/demo-corpus)")

    p = command(
        "ingest", cmd_ingest, "land files and run their batches through every stage, then the release"
    )
    p.add_argument("paths", nargs="+", help="files or folders")
    p.add_argument("--no-release", action="store_true", help="skip rebuilding the release")

    command("status", cmd_status, "per stage: rows in, created, kept, rejected by rule, latest checks")

    p = command("trace", cmd_trace, "a record's path from its source line through every stage")
    p.add_argument("record_id")

    p = command("why", cmd_why, "where each record of FILE (or FILE:LINE) ended up")
    p.add_argument("target", metavar="FILE[:LINE]")

    p = command("checks", cmd_checks, "latest check results per stage and batch")
    p.add_argument("--failing", action="store_true", help="only failing checks")
    p.add_argument("--rows", action="store_true", help="show failing record ids")

    p = command("export", cmd_export, "check the latest release against its manifest and copy it to --out")
    p.add_argument("--out", help="folder to copy the release version folder into (default: print its path)")

    p = command(
        "lineage", cmd_lineage_flush, "send OpenLineage events spooled while the backend was unreachable"
    )
    p.add_argument("action", choices=["flush"])
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to keep trying")

    p = command("ui", cmd_ui, "serve the Dagster UI over THRESHER_HOME's instance")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
