"""Shared test fixtures and locations."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# ../shared beside the checkout (read-only third-party corpora and specs); overridable for other layouts.
SHARED = Path(os.environ.get("THRESHER_SHARED", REPO.parent / "shared"))
CORPORA = SHARED / "corpora"
