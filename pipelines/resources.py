"""Resources, chosen per environment in one place.

Everything Thresher keeps lives under one folder, THRESHER_HOME (default ``.thresher``): the DuckDB
file, the Dagster instance, the landing folder, releases and the OpenLineage file. The CLI,
``make demo`` and ``make ui`` all resolve it the same way, so they see the same state.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

import dagster as dg
from openlineage.client import OpenLineageClient

from thresher.config import DatasetConfig, load_config
from thresher.lineage import LineageEmitter, lineage_client
from thresher.store import Store

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "demo.yaml"


def thresher_home() -> Path:
    return Path(os.environ.get("THRESHER_HOME", ".thresher")).resolve()


def dataset_config_path() -> Path:
    return Path(os.environ.get("THRESHER_CONFIG", str(DEFAULT_CONFIG))).resolve()


class ThresherResource(dg.ConfigurableResource):
    """Paths, store, dataset configuration and lineage emitter for one Thresher home."""

    home: str
    config_path: str

    @property
    def home_dir(self) -> Path:
        return Path(self.home)

    @property
    def database_path(self) -> Path:
        return self.home_dir / "thresher.duckdb"

    @property
    def release_dir(self) -> Path:
        return self.home_dir / "release"

    def store(self) -> Store:
        return Store(self.database_path)

    def dataset_config(self) -> DatasetConfig:
        return load_config(self.config_path)

    def landing_dir(self) -> Path:
        return self.home_dir / self.dataset_config().landing_dir

    @property
    def lineage_spool_dir(self) -> Path:
        return self.home_dir / "lineage" / "spool"

    def lineage_client(self) -> OpenLineageClient:
        """The user's OpenLineage transport, or the events file under THRESHER_HOME."""
        return lineage_client(self.home_dir / "lineage" / "events.jsonl")

    @cached_property
    def lineage(self) -> LineageEmitter:
        return LineageEmitter(self.lineage_client(), self.database_path, spool_dir=self.lineage_spool_dir)


def resources_for_environment() -> dict[str, object]:
    """The resources of the current environment (THRESHER_HOME, THRESHER_CONFIG)."""
    return {"thresher": ThresherResource(home=str(thresher_home()), config_path=str(dataset_config_path()))}
