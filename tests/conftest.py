"""Shared test fixtures and locations."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chat_server import ChatServer

REPO = Path(__file__).resolve().parents[1]
# ../shared beside the checkout (read-only third-party corpora and specs); overridable for other layouts.
SHARED = Path(os.environ.get("THRESHER_SHARED", REPO.parent / "shared"))
CORPORA = SHARED / "corpora"


@pytest.fixture
def chat_server() -> Iterator[ChatServer]:
    """A fresh OpenAI-compatible server on 127.0.0.1 (no key, no faults); tests script it via its attributes."""
    with ChatServer() as server:
        yield server
