"""The deduped stage: every kind of duplicate a finetuning set must lose, in one pass over a batch.

Order matters. Intra-document repetition goes first (a degenerate record should not become the
kept member of a cluster); cross-document boilerplate is cut next, so that shared signatures do
not make unrelated records look alike; then exact and near duplicates against this batch and
every batch accepted before it; then benchmark contamination; then, when enabled, semantic
duplicates (the costliest step sees the fewest records).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import polars as pl

from thresher.config import DedupConfig
from thresher.decontamination import Decontaminator
from thresher.dedup import Deduplicator
from thresher.repetition import BoilerplateRemover, RepetitionFilter
from thresher.stage import StageResult, chain


@dataclass(frozen=True)
class PriorIndexes:
    """What earlier batches left for this one to be compared with (each read by the caller)."""

    dedup: pl.DataFrame
    boilerplate_lines: pl.DataFrame
    semantic: pl.DataFrame | None = None
    # record_id, quality_score: LLM judge scores kept by earlier verified runs (the quality keep rule).
    quality_scores: pl.DataFrame | None = None


class DedupStage:
    """Repetition, boilerplate, exact/near duplicates, contamination and semantic duplicates."""

    def __init__(self, config: DedupConfig, base_dir: Path) -> None:
        self.config = config
        self.base_dir = base_dir

    def run(self, records: pl.DataFrame, prior: PriorIndexes) -> StageResult:
        c = self.config
        steps = []
        if c.repetition.enabled:
            steps.append(RepetitionFilter(c.repetition).run)
        if c.boilerplate.enabled:
            steps.append(partial(BoilerplateRemover(c.boilerplate).run, prior_lines=prior.boilerplate_lines))
        steps.append(partial(Deduplicator(c).run, prior=prior.dedup, quality_scores=prior.quality_scores))
        if c.decontamination.enabled and c.decontamination.benchmarks:
            steps.append(Decontaminator(c.decontamination, self.base_dir).run)
        if c.semantic.enabled:
            from thresher.semantic import SemanticDeduplicator  # needs the `semantic` extra (torch)

            steps.append(partial(SemanticDeduplicator(c.semantic).run, prior=prior.semantic))
        return chain(records, steps)
