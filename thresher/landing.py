"""The landing folder: where files arrive, and how each becomes one ingestion batch.

A batch key is derived from the file's name and content hash, so landing the same bytes twice
is a no-op and two different files never share a batch. The orchestrator's sensor and the CLI
both go through ``land`` and ``scan``; neither needs to know how keys are made.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from thresher.ingest import batch_key, file_sha256


@dataclass(frozen=True)
class LandedFile:
    batch: str
    path: Path
    sha256: str


def _visible_files(landing_dir: Path) -> list[Path]:
    if not landing_dir.exists():
        return []
    return sorted(p for p in landing_dir.iterdir() if p.is_file() and not p.name.startswith("."))


def scan(landing_dir: Path) -> list[LandedFile]:
    """Every file in the landing folder as a batch, in name order (the order they are accepted)."""
    landed = []
    for path in _visible_files(landing_dir):
        sha = file_sha256(path)
        landed.append(LandedFile(batch_key(path, sha), path, sha))
    return landed


def land(source: Path, landing_dir: Path) -> LandedFile:
    """Copy ``source`` into the landing folder (once) and return its batch.

    A different file that happens to have the same name is landed under a name suffixed with its
    hash, so nothing already landed is overwritten.
    """
    landing_dir.mkdir(parents=True, exist_ok=True)
    sha = file_sha256(source)
    target = landing_dir / source.name
    if target.exists() and file_sha256(target) != sha:
        target = landing_dir / f"{source.stem}-{sha[:8]}{source.suffix}"
    if not target.exists():
        shutil.copyfile(source, target)
    return LandedFile(batch_key(target, sha), target, sha)


def resolve(landing_dir: Path, batch: str) -> LandedFile:
    """The landed file behind a batch key."""
    for landed in scan(landing_dir):
        if landed.batch == batch:
            return landed
    raise FileNotFoundError(f"no file in {landing_dir} has batch key {batch!r}")
