"""Resources, chosen per environment in one place.

Everything Thresher keeps lives under one folder, THRESHER_HOME (default ``.thresher``): the DuckDB
file, the Dagster instance, the landing folder, releases and the OpenLineage file. The CLI,
``make demo`` and ``make ui`` all resolve it the same way, so they see the same state.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import dagster as dg
import duckdb
from openlineage.client import OpenLineageClient

from thresher.config import DatasetConfig, LLMConfig, load_config
from thresher.lineage import LineageEmitter, lineage_client
from thresher.llm import Budget, Endpoint, LLMClient, ResponseCache, Secret
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


class LLMResource(dg.ConfigurableResource):
    """An OpenAI-compatible chat-completions endpoint (vLLM, Ollama, llama.cpp server, OpenAI, ...).

    Unconfigured (no base URL) is a normal state: the LLM recipes are then skipped with a message
    and the rule-based ones run. The key is an ``EnvVar``: the UI shows the variable's name only.
    """

    base_url: str | None = None
    model: str | None = None
    api_key: str | None = None
    endpoint_name: str = "default"

    @property
    def configured(self) -> bool:
        return bool(self.base_url and self.model)

    def client(
        self, config: LLMConfig, con: duckdb.DuckDBPyConnection, log: Callable[[str], None]
    ) -> LLMClient | None:
        """A client for one run (its own budget and usage), caching in the run's DuckDB; None if unconfigured."""
        if not self.configured:
            return None
        assert self.base_url is not None and self.model is not None
        endpoint = Endpoint(
            name=self.endpoint_name,
            base_url=self.base_url,
            model=self.model,
            api_key=Secret(self.api_key) if self.api_key else None,
            timeout_seconds=config.timeout_seconds,
            price_per_million_input=config.price_per_million_input,
            price_per_million_output=config.price_per_million_output,
        )
        return LLMClient(
            endpoint,
            cache=ResponseCache(con),
            concurrency=config.concurrency,
            max_retries=config.max_retries,
            backoff_seconds=config.backoff_seconds,
            budget=Budget(max_requests=config.max_requests, max_tokens=config.max_tokens),
            log=log,
        )


def llm_resource_from_environment() -> LLMResource:
    """THRESHER_LLM_BASE_URL and THRESHER_LLM_MODEL (and optionally THRESHER_LLM_API_KEY,
    THRESHER_LLM_ENDPOINT_NAME) select the endpoint; without a base URL there is none."""
    if not os.environ.get("THRESHER_LLM_BASE_URL"):
        return LLMResource()
    return LLMResource(
        base_url=dg.EnvVar("THRESHER_LLM_BASE_URL"),
        model=dg.EnvVar("THRESHER_LLM_MODEL"),
        api_key=dg.EnvVar("THRESHER_LLM_API_KEY") if os.environ.get("THRESHER_LLM_API_KEY") else None,
        endpoint_name=os.environ.get("THRESHER_LLM_ENDPOINT_NAME", "default"),
    )


def resources_for_environment() -> dict[str, object]:
    """The resources of the current environment (THRESHER_HOME, THRESHER_CONFIG, THRESHER_LLM_*)."""
    return {
        "thresher": ThresherResource(home=str(thresher_home()), config_path=str(dataset_config_path())),
        "llm": llm_resource_from_environment(),
    }
