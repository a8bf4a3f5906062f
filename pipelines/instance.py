"""The Dagster instance under THRESHER_HOME, shared by the CLI, `make demo` and `make ui`."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

# One run at a time: DuckDB allows a single writing process per database file.
DAGSTER_YAML = """\
run_queue:
  max_concurrent_runs: 1
telemetry:
  enabled: false
nux:
  enabled: false
"""


def ensure_dagster_home(home: Path) -> Path:
    """Create DAGSTER_HOME under ``home`` with Thresher's instance settings and export it."""
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists() or config.read_text() != DAGSTER_YAML:
        config.write_text(DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    return dagster_home


def instance(home: Path) -> dg.DagsterInstance:
    ensure_dagster_home(home)
    return dg.DagsterInstance.get()
