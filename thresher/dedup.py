"""The deduped stage: exact and near-duplicate removal, global across batches.

A record's dedup text is its whole conversation ("role: content" per message, joined with newlines),
normalized (NFKC, lowercase, punctuation stripped, whitespace collapsed; each switchable). Two records
are *exact* duplicates when their normalized texts hash equal (xxh3_64), and *near* duplicates when
the Jaccard similarity of their shingle sets, estimated by MinHash, reaches the threshold. Candidate
pairs come from LSH banding; every candidate is confirmed on its signatures, and confirmed pairs are
clustered transitively. Each cluster keeps one record (a prior batch's record if the cluster has one,
since that record is already in the dataset; otherwise the one the keep rule prefers).

Everything that is persisted (exact hashes, signatures) is computed from xxhash and fixed integer
arithmetic, so it stays comparable across processes, machines and library upgrades: the dedup index
of earlier batches is compared with new batches for the life of the dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import polars as pl
import xxhash
from scipy import integrate
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from thresher.config import DedupConfig, MinHashConfig, NormalizationConfig
from thresher.records import conform
from thresher.stage import EDGE_SCHEMA, StageResult

# One row per record kept by an earlier run of the stage; passed back as ``prior`` to later batches.
INDEX_SCHEMA: dict[str, pl.DataType] = {
    "record_id": pl.String,
    "batch": pl.String,
    # xxh3_64 of the normalized conversation text.
    "exact_hash": pl.UInt64,
    # MinHash signature (num_perm values below 2^61 - 1); null when MinHash is disabled.
    "signature": pl.List(pl.UInt64),
    # What the hashes depend on (see ``index_params``); rows with other params are not comparable.
    "params": pl.String,
}

# One row per member of each duplicate cluster with at least two members.
CLUSTER_SCHEMA: dict[str, pl.DataType] = {
    "cluster_id": pl.String,  # the kept record's id
    "record_id": pl.String,
    "batch": pl.String,
    "kept": pl.Boolean,
    "similarity": pl.Float64,  # estimated Jaccard to the kept record (1.0 for exact duplicates)
}

# Bump when the hashing below changes in any way: old indexes then fail loudly instead of silently
# never matching.
HASH_VERSION = "v1"

# (false positive, false negative) weights for choosing bands x rows. Every candidate pair is
# confirmed by its estimated Jaccard, so a false candidate costs only a comparison while a missed
# one is a duplicate left in the data: weigh misses 9:1. At threshold 0.8 and 128 permutations this
# gives 14 bands of 9 rows: a pair at J=0.85 becomes a candidate with probability 0.975 (equal
# weights: 9 x 13, probability 0.69).
LSH_ERROR_WEIGHTS = (0.1, 0.9)

_MERSENNE_61 = np.uint64((1 << 61) - 1)
_MASK_32 = np.uint64((1 << 32) - 1)
_MASK_29 = np.uint64((1 << 29) - 1)
_FOLD_OFFSET = np.uint64(0xCBF29CE484222325)  # FNV-1a 64 offset basis
_FOLD_PRIME = np.uint64(0x100000001B3)  # FNV-1a 64 prime
# Shingles hashed per block when permuting: num_perm x block uint64 buffers of a few MB.
_PERMUTE_BLOCK = 4096
# Texts shingled at a time.
_TEXT_CHUNK = 16384
# Candidate pairs confirmed per block (pairs x num_perm comparisons).
_CONFIRM_BLOCK = 65536


# --------------------------------------------------------------------------------------------- text


def conversation_text(messages: pl.Expr | None = None) -> pl.Expr:
    """The conversation as one string, "role: content" per message joined with newlines.

    The whole conversation is compared (not just the prompt) so that the same prompt with different
    answers is not a duplicate.
    """
    messages = pl.col("messages") if messages is None else messages
    role = pl.element().struct.field("role").fill_null("")
    content = pl.element().struct.field("content").fill_null("")
    line = pl.concat_str([role, pl.lit(": "), content])
    return messages.list.eval(line).list.join("\n").fill_null("")


def normalize(texts: pl.Series, config: NormalizationConfig) -> pl.Series:
    """Normalize ``texts`` so that copies differing only in case, spacing or punctuation compare equal."""
    if config.nfkc:
        # NFKC leaves ASCII unchanged, and is the slowest step: apply it to the other texts only.
        non_ascii = texts.str.contains(r"[^\x00-\x7f]").fill_null(False)
        if non_ascii.any():
            normalized = texts.filter(non_ascii).str.normalize("NFKC")
            texts = texts.clone().scatter(non_ascii.arg_true(), normalized)  # clone: scatter is in place
    if config.lowercase:
        texts = texts.str.to_lowercase()
    if config.strip_punctuation:
        texts = texts.str.replace_all(r"\p{P}+", "")
    if config.collapse_whitespace:
        # Matches only what must change (runs of 2+ whitespace, or one non-space whitespace): replacing
        # every single space with itself, as r"\s+" does, is several times slower.
        texts = texts.str.replace_all(r"\s{2,}|[\s--[ ]]", " ").str.strip_chars()
    return texts


def dedup_texts(records: pl.DataFrame, config: NormalizationConfig) -> pl.Series:
    """The normalized conversation text of each record: what both exact and near matching compare."""
    return normalize(records.select(conversation_text()).to_series(), config).alias("text")


def exact_hashes(texts: pl.Series) -> np.ndarray:
    """xxh3_64 of each text's UTF-8 bytes, as uint64.

    A Python loop (about 8M strings/s, see notes/stack.md) because no vectorized hash with a stability
    guarantee exists in Polars/DuckDB: ``pl.Expr.hash`` may change between versions, which would
    silently stop new batches from matching the stored index of earlier ones.
    """
    digest = xxhash.xxh3_64_intdigest
    return np.fromiter((digest(t.encode()) for t in texts.to_list()), dtype=np.uint64, count=len(texts))


def hex64(values: np.ndarray) -> pl.Series:
    """Zero-padded 16-digit lowercase hex of uint64 ``values`` (vectorized, for ledger details)."""
    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    shifts = np.arange(60, -4, -4, dtype=np.uint64)
    nibbles = ((values.astype(np.uint64)[:, None] >> shifts) & np.uint64(15)).astype(np.intp)
    chars = np.ascontiguousarray(digits[nibbles]).view("S16").ravel()
    return pl.Series(chars, dtype=pl.Binary).cast(pl.String)


def index_params(config: DedupConfig) -> str:
    """Everything the stored hashes depend on; index rows are only comparable when this is equal."""
    norm = config.normalization
    flags = ",".join(
        name
        for name, on in [
            ("nfkc", norm.nfkc),
            ("lower", norm.lowercase),
            ("ws", norm.collapse_whitespace),
            ("punct", norm.strip_punctuation),
        ]
        if on
    )
    mh = config.minhash
    minhash = f"{mh.shingle}{mh.ngram}x{mh.num_perm}s{mh.seed}" if mh.enabled else "off"
    return f"{HASH_VERSION} norm={flags or 'none'} minhash={minhash}"


# ------------------------------------------------------------------------------------------ minhash


def _fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer: spreads every input bit over the output (uint64 wraps)."""
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xFF51AFD7ED558CCD)
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xC4CEB9FE1A85EC53)
    return x ^ (x >> np.uint64(33))


def _token_hashes(tokens: pl.Series) -> np.ndarray:
    """xxh3_64 of each token, computed once per distinct token (the vocabulary is far smaller than
    the token stream, so the Python loop stays off the hot path)."""
    vocab = tokens.unique()
    digest = xxhash.xxh3_64_intdigest
    hashed = np.fromiter((digest(t.encode()) for t in vocab.to_list()), dtype=np.uint64, count=len(vocab))
    table = pl.DataFrame({"token": vocab, "hash": pl.Series(hashed, dtype=pl.UInt64)})
    stream = pl.DataFrame({"token": tokens})
    return stream.join(table, on="token", how="left", maintain_order="left")["hash"].to_numpy()


class MinHasher:
    """MinHash signatures of normalized texts, vectorized with numpy.

    Shingles are word (or character) n-grams; a text shorter than n tokens is one shingle. A shingle's
    32-bit hash folds the xxh3_64 hashes of its tokens (FNV-style, then a Murmur finalizer), and each
    of the ``num_perm`` permutations is the universal hash ``(a * h + b) mod (2^61 - 1)`` with ``a, b``
    drawn from ``numpy.random.default_rng(seed)``. The signature is the per-permutation minimum.
    """

    def __init__(self, config: MinHashConfig, single_spaced: bool = False) -> None:
        """``single_spaced``: texts are known to be whitespace-collapsed (words split on " ", faster)."""
        self.config = config
        self.single_spaced = single_spaced
        rng = np.random.default_rng(config.seed)
        self.a = rng.integers(1, _MERSENNE_61, size=config.num_perm, dtype=np.uint64)
        self.b = rng.integers(0, _MERSENNE_61, size=config.num_perm, dtype=np.uint64)
        self._a_hi = (self.a >> np.uint64(32))[:, None]
        self._a_lo = (self.a & _MASK_32)[:, None]
        self._b_col = self.b[:, None]
        self._buffers: tuple[np.ndarray, ...] | None = None

    def tokens(self, texts: pl.Series) -> tuple[pl.Series, np.ndarray]:
        """All tokens of all texts in order (whitespace-separated words, or characters), and the number
        of tokens of each text."""
        if self.config.shingle == "char":
            tokens = texts.str.split("")
            return tokens.explode(empty_as_null=False), tokens.list.len().to_numpy().astype(np.int64)
        if not self.single_spaced:
            texts = texts.str.replace_all(r"\s", " ")
        # Splitting on " " is several times faster than a regex; the empty strings it yields for runs
        # of spaces (and for an empty text) are dropped and the per-text counts recomputed.
        tokens = texts.str.split(" ")
        flat = tokens.explode(empty_as_null=False)
        non_empty = (flat != "").to_numpy()
        doc = np.repeat(np.arange(len(texts)), tokens.list.len().to_numpy())
        lengths = np.bincount(doc[non_empty], minlength=len(texts)).astype(np.int64)
        return flat.filter(non_empty), lengths

    def shingle_hashes(self, texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
        """The 32-bit hash of every shingle (as uint64), and the document each shingle belongs to."""
        flat, lengths = self.tokens(texts)
        n = self.config.ngram
        # Padding lets every shingle read n tokens; texts shorter than n are redone below.
        token_hash = np.concatenate([_token_hashes(flat), np.zeros(n, dtype=np.uint64)])
        counts = np.maximum(lengths - n + 1, 1)  # a short text (even an empty one) is one shingle
        doc = np.repeat(np.arange(len(lengths)), counts)
        first_shingle = np.cumsum(counts) - counts
        first_token = np.cumsum(lengths) - lengths
        position = first_token[doc] + (np.arange(len(doc)) - first_shingle[doc])
        acc = np.full(len(doc), _FOLD_OFFSET, dtype=np.uint64)
        for _ in range(n):  # loop over the n token positions of a shingle, vectorized over shingles
            np.bitwise_xor(acc, token_hash[position], out=acc)
            np.multiply(acc, _FOLD_PRIME, out=acc)
            position += 1
        short = np.flatnonzero(lengths[doc] < n)  # one shingle of fewer than n tokens: fold only those
        if len(short):
            size, start = lengths[doc[short]], first_token[doc[short]]
            short_acc = np.full(len(short), _FOLD_OFFSET, dtype=np.uint64)
            for j in range(n - 1):
                folded = (short_acc ^ token_hash[start + j]) * _FOLD_PRIME
                short_acc = np.where(j < size, folded, short_acc)
            acc[short] = short_acc
        return _fmix64(acc) >> np.uint64(32), doc

    def permute(self, h: np.ndarray) -> np.ndarray:
        """``(a * h + b) mod (2^61 - 1)`` for 32-bit ``h`` (shape (s,)), every permutation: (num_perm, s).

        Exact modular arithmetic in uint64 without overflow: ``a`` is split into its high 29 and low 32
        bits, and 2^61 = 1 (mod 2^61 - 1) folds the high parts back in. In-place ufuncs on reused
        buffers: allocating fresh multi-MB temporaries for each step was four times slower. The result
        is a view of such a buffer, overwritten by the next call (so one MinHasher per thread).
        """
        s = len(h)
        if self._buffers is None or self._buffers[0].shape[1] < s:
            self._buffers = tuple(np.empty((self.config.num_perm, s), dtype=np.uint64) for _ in range(3))
        x, t, u = (buf[:, :s] for buf in self._buffers)
        h = h[None, :]
        p = _MERSENNE_61
        np.multiply(h, self._a_hi, out=t)  # t = a_hi * h < 2^61
        np.right_shift(t, np.uint64(29), out=x)  # t * 2^32 = (t >> 29) * 2^61 + (t & (2^29-1)) * 2^32
        np.bitwise_and(t, _MASK_29, out=t)
        np.left_shift(t, np.uint64(32), out=t)
        x += t  # x = a_hi * 2^32 * h (mod p), < 2^61 + 2^32
        np.multiply(h, self._a_lo, out=u)  # u = a_lo * h < 2^64
        np.right_shift(u, np.uint64(61), out=t)
        x += t
        np.bitwise_and(u, p, out=u)
        x += u  # x = a * h (mod p), < 2^62 + 2^33
        x += self._b_col  # < 2^63
        np.right_shift(x, np.uint64(61), out=t)
        np.bitwise_and(x, p, out=x)
        x += t  # <= p + 3
        np.subtract(x, p, out=t)  # wraps to a huge value unless x >= p
        np.minimum(x, t, out=x)  # x mod p
        return x

    def signatures(self, texts: pl.Series) -> np.ndarray:
        """MinHash signature of each (normalized) text: uint64 array of shape (len(texts), num_perm)."""
        out = np.full((self.config.num_perm, len(texts)), _MERSENNE_61, dtype=np.uint64)
        # Chunks of texts bound the per-shingle arrays (a dozen bytes times tokens) for large batches.
        for d0 in range(0, len(texts), _TEXT_CHUNK):
            shingles, doc = self.shingle_hashes(texts.slice(d0, _TEXT_CHUNK))
            doc += d0
            # Blocks of shingles keep the (num_perm, block) buffers cache-sized whatever the text sizes.
            for s0 in range(0, len(shingles), _PERMUTE_BLOCK):
                block_doc = doc[s0 : s0 + _PERMUTE_BLOCK]
                starts = np.flatnonzero(np.r_[True, block_doc[1:] != block_doc[:-1]])
                minima = np.minimum.reduceat(self.permute(shingles[s0 : s0 + _PERMUTE_BLOCK]), starts, axis=1)
                docs = block_doc[starts]  # distinct within a block, so the fancy-index update is safe
                out[:, docs] = np.minimum(out[:, docs], minima)
        self._buffers = None
        return np.ascontiguousarray(out.T)


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Share of equal signature positions, row by row: the MinHash estimate of Jaccard similarity."""
    return (a == b).mean(axis=-1)


def jaccard(a: set, b: set) -> float:
    """True Jaccard similarity of two sets (1.0 for two empty sets)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def shingle_set(normalized_text: str, config: MinHashConfig) -> set[tuple[str, ...]]:
    """Reference (pure Python) shingle set of one normalized text, for tests and benchmarks."""
    tokens = normalized_text.split() if config.shingle == "word" else list(normalized_text)
    n = config.ngram
    if len(tokens) < n:
        return {tuple(tokens)}
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


# ---------------------------------------------------------------------------------------------- lsh


@lru_cache(maxsize=64)
def lsh_params(
    threshold: float, num_perm: int, false_positive_weight: float = 0.5, false_negative_weight: float = 0.5
) -> tuple[int, int]:
    """Bands and rows (bands * rows <= num_perm) minimising the weighted false positive and false
    negative probability at ``threshold``; the same search as datasketch's ``_optimal_param``."""

    def false_positive(b: int, r: int) -> float:
        return integrate.quad(lambda s: 1 - (1 - s ** float(r)) ** float(b), 0.0, threshold)[0]

    def false_negative(b: int, r: int) -> float:
        return integrate.quad(lambda s: 1 - (1 - (1 - s ** float(r)) ** float(b)), threshold, 1.0)[0]

    best, best_error = (0, 0), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            error = false_positive_weight * false_positive(b, r) + false_negative_weight * false_negative(
                b, r
            )
            if error < best_error:
                best, best_error = (b, r), error
    return best


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One uint64 bucket key per (record, band): a fold of the band's ``rows`` signature values."""
    banded = signatures[:, : bands * rows].reshape(len(signatures), bands, rows)
    acc = np.full((len(signatures), bands), _FOLD_OFFSET, dtype=np.uint64)
    for j in range(rows):
        acc = (acc ^ banded[:, :, j]) * _FOLD_PRIME
    return _fmix64(acc)


def candidate_pairs(keys: np.ndarray, preference: np.ndarray, window: int) -> np.ndarray:
    """Pairs of rows sharing a bucket in any band, as a sorted unique (pairs, 2) array with lo < hi.

    Within a bucket (ordered by ``preference``) each row is paired with at most ``window`` rows before
    it: all pairs for buckets of up to ``window + 1`` rows, a chain that still links a huge cluster
    otherwise, without its quadratic number of pairs.
    """
    found = []
    for band in range(keys.shape[1]):
        order = np.lexsort((preference, keys[:, band]))
        sorted_keys = keys[order, band]
        for d in range(1, window + 1):
            same = sorted_keys[d:] == sorted_keys[:-d]
            if not same.any():  # no bucket has more than d rows
                break
            found.append(np.stack([order[:-d][same], order[d:][same]], axis=1))
    if not found:
        return np.empty((0, 2), dtype=np.int64)
    pairs = np.sort(np.concatenate(found), axis=1)
    return np.unique(pairs, axis=0)


# ------------------------------------------------------------------------------------------ keeping


@dataclass(frozen=True)
class KeepRule:
    """Which record of a duplicate cluster survives.

    ``rank`` gives each record of a batch its preference (0 = kept first; a permutation of
    0..n-1); ``name`` ends the ledger detail ("kept <id>: <name>").
    """

    name: str
    rank: Callable[[pl.DataFrame], np.ndarray]


def earliest_first(records: pl.DataFrame) -> np.ndarray:
    """Preference rank: lowest ``source_line`` first (nulls last), then lowest ``record_id``.

    Simple, deterministic and explainable; later work may prefer e.g. the longest answer.
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


EARLIEST = KeepRule("earliest", earliest_first)


# ------------------------------------------------------------------------------------------- stage


def _fraction(sim: pl.Expr) -> pl.Expr:
    """A similarity in [0, 1] as text with two decimals ("0.87", "1.00")."""
    hundredths = (sim * 100).round().cast(pl.Int64)
    return pl.concat_str(
        [(hundredths // 100).cast(pl.String), pl.lit("."), (hundredths % 100).cast(pl.String).str.zfill(2)]
    )


class Deduplicator:
    """The deduped stage over one batch, against the dedup index of every earlier batch."""

    def __init__(self, config: DedupConfig | None = None, keep_rule: KeepRule = EARLIEST) -> None:
        self.config = config or DedupConfig()
        self.keep_rule = keep_rule
        self.params = index_params(self.config)
        self.minhasher = MinHasher(self.config.minhash, self.config.normalization.collapse_whitespace)

    def _usable_prior(self, prior: pl.DataFrame | None, records: pl.DataFrame) -> pl.DataFrame:
        """The prior index, checked comparable, without rows of the batches being (re)processed.

        Re-materializing a batch replaces its own index rows, so they must not count as earlier copies.
        """
        if prior is None or prior.is_empty():
            return pl.DataFrame(schema=INDEX_SCHEMA)
        missing = [c for c in INDEX_SCHEMA if c not in prior.columns]
        if missing:
            raise ValueError(f"prior dedup index lacks columns {missing}")
        prior = prior.select([pl.col(c).cast(t) for c, t in INDEX_SCHEMA.items()])
        own_batches = records["batch"].drop_nulls().unique()
        prior = prior.filter(~pl.col("batch").is_in(own_batches.implode()))
        other = prior.filter(pl.col("params") != self.params)["params"].unique().sort().to_list()
        if other:
            raise ValueError(
                f"prior dedup index rows were built with {other}, this run uses '{self.params}': hashes "
                "are not comparable; re-materialize the deduped stage of earlier batches with this config"
            )
        # Earliest accepted first: names the prior record a duplicate is attributed to, deterministically.
        return prior.sort(["batch", "record_id"])

    def run(self, records: pl.DataFrame, prior: pl.DataFrame | None = None) -> StageResult:
        """Deduplicate ``records`` (one batch) against themselves and against ``prior``."""
        records = conform(records)
        prior = self._usable_prior(prior, records)
        n, m = records.height, prior.height
        cfg = self.config
        texts = dedup_texts(records, cfg.normalization)
        hashes = exact_hashes(texts)
        rank = self.keep_rule.rank(records)
        # Global node ids: batch record i -> i, prior index row j -> n + j. ``preference`` (lower is kept)
        # puts prior rows first: they are already in the dataset.
        preference = np.concatenate([m + rank, np.arange(m)])
        prior_hashes = prior["exact_hash"].to_numpy()

        exact_parent = np.arange(n)
        if cfg.exact and n:
            exact_parent = self._exact_parents(hashes, prior_hashes, preference)
        is_rep = exact_parent == np.arange(n)

        final = exact_parent.copy()  # the kept record each batch record is attributed to
        similarity = np.ones(n)
        signatures = np.zeros((n, 0), dtype=np.uint64)
        counters = {"candidate_pairs": 0, "confirmed_pairs": 0}
        if cfg.minhash.enabled and n:
            reps = np.flatnonzero(is_rep)
            rep_signatures = self.minhasher.signatures(texts.gather(reps))
            signatures = np.zeros((n, cfg.minhash.num_perm), dtype=np.uint64)  # rows of reps only: the
            signatures[reps] = rep_signatures  # index stores kept records, and every kept record is a rep
            near_final, near_sim, counters = self._near(reps, rep_signatures, prior, preference)
            # An exact duplicate inherits its representative's fate (same text, same signature).
            rep_of = np.where(exact_parent < n, exact_parent, 0)
            inherits = exact_parent < n
            final = np.where(inherits, near_final[rep_of], exact_parent)
            similarity = np.where(inherits, near_sim[rep_of], 1.0)

        status = np.where(
            ~is_rep, "exact_duplicate", np.where(final != np.arange(n), "near_duplicate", "kept")
        )
        return self._result(
            records, prior, hashes, signatures, exact_parent, final, similarity, status, counters
        )

    def _exact_parents(
        self, hashes: np.ndarray, prior_hashes: np.ndarray, preference: np.ndarray
    ) -> np.ndarray:
        """For each batch record, the preferred node with the same normalized-text hash (itself if none)."""
        n = len(hashes)
        nodes = pl.DataFrame(
            {
                "node": np.arange(len(preference)),
                "hash": np.concatenate([hashes, prior_hashes]),
                "preference": preference,
            }
        ).with_columns(pl.col("node").sort_by("preference").first().over("hash").alias("parent"))
        return nodes["parent"].to_numpy()[:n]

    def _near(
        self, reps: np.ndarray, rep_signatures: np.ndarray, prior: pl.DataFrame, preference: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
        """Near-duplicate attribution of the exact representatives ``reps`` (batch indices).

        Returns, for every batch index, the node kept in its cluster (itself when not a near duplicate)
        and the estimated Jaccard to it, plus the LSH counters.
        """
        n = len(preference) - prior.height
        mh = self.config.minhash
        if len(reps) == 0:  # every record is an exact copy of a prior one
            return np.arange(n), np.ones(n), {"candidate_pairs": 0, "confirmed_pairs": 0}
        bands, rows = lsh_params(mh.threshold, mh.num_perm, *LSH_ERROR_WEIGHTS)
        rep_keys = band_keys(rep_signatures, bands, rows)
        # Only prior rows sharing a bucket with this batch can pair with it.
        prior_rows = np.empty(0, dtype=np.int64)
        prior_signatures = np.empty((0, mh.num_perm), dtype=np.uint64)
        if prior.height:
            all_prior = _signature_matrix(prior["signature"], mh.num_perm)
            prior_keys = band_keys(all_prior, bands, rows)
            shares = np.zeros(prior.height, dtype=bool)
            for band in range(bands):
                shares |= np.isin(prior_keys[:, band], rep_keys[:, band])
            prior_rows = np.flatnonzero(shares)
            prior_signatures = all_prior[prior_rows]
        # Local nodes: reps first, then the prior rows that share a bucket.
        node_global = np.concatenate([reps, n + prior_rows])
        node_signatures = np.concatenate([rep_signatures, prior_signatures])
        node_preference = preference[node_global]
        keys = np.concatenate([rep_keys, band_keys(prior_signatures, bands, rows)])
        pairs = candidate_pairs(keys, node_preference, mh.bucket_window)
        pairs = pairs[(pairs[:, 0] < len(reps)) | (pairs[:, 1] < len(reps))]  # prior-prior pairs: both kept
        confirmed = pairs[_confirm(node_signatures, pairs, mh.threshold)]
        size = len(node_global)
        graph = coo_matrix((np.ones(len(confirmed)), (confirmed[:, 0], confirmed[:, 1])), shape=(size, size))
        _, label = connected_components(graph, directed=False)
        by_cluster = np.lexsort((node_preference, label))
        is_head = np.r_[True, label[by_cluster][1:] != label[by_cluster][:-1]]
        head_of_label = np.empty(label.max() + 1 if size else 0, dtype=np.int64)
        head_of_label[label[by_cluster][is_head]] = by_cluster[is_head]
        head = head_of_label[label[: len(reps)]]  # local node kept for each rep
        final = np.arange(n)
        similarity = np.ones(n)
        final[reps] = node_global[head]
        similarity[reps] = estimated_jaccard(node_signatures[: len(reps)], node_signatures[head])
        counters = {"candidate_pairs": len(pairs), "confirmed_pairs": len(confirmed)}
        return final, similarity, counters

    def _result(
        self,
        records: pl.DataFrame,
        prior: pl.DataFrame,
        hashes: np.ndarray,
        signatures: np.ndarray,
        exact_parent: np.ndarray,
        final: np.ndarray,
        similarity: np.ndarray,
        status: np.ndarray,
        counters: dict[str, int],
    ) -> StageResult:
        """Kept records, ledger rows, clusters, edges and the index rows of the kept records."""
        n = records.height
        ids = pl.concat([records["record_id"], prior["record_id"]])
        batches = pl.concat([records["batch"], prior["batch"]])
        outcome = records.select("record_id", "batch", "source_file", "source_line").with_columns(
            pl.Series("status", status, dtype=pl.String),
            ids.gather(exact_parent).alias("parent_id"),
            ids.gather(final).alias("kept_id"),
            batches.gather(final).fill_null("(none)").alias("kept_batch"),
            pl.Series("kept_is_prior", final >= n),
            pl.Series("parent_is_kept", exact_parent == final),
            pl.Series("similarity", similarity, dtype=pl.Float64),
            hex64(hashes).alias("hash_hex"),
        )
        reason = (
            pl.when(pl.col("kept_is_prior"))
            .then(pl.concat_str([pl.lit("accepted in batch "), pl.col("kept_batch")]))
            .otherwise(pl.lit(self.keep_rule.name))
        )
        kept_clause = pl.concat_str([pl.lit("; kept "), pl.col("kept_id"), pl.lit(": "), reason])
        jaccard_text = pl.concat_str([pl.lit("estimated Jaccard "), _fraction(pl.col("similarity"))])
        exact_detail = pl.concat_str(
            [
                pl.lit("exact duplicate of "),
                pl.col("parent_id"),
                pl.lit(" (normalized text hash "),
                pl.col("hash_hex"),
                pl.lit(")"),
                pl.when(pl.col("parent_is_kept"))
                .then(pl.lit(""))
                .otherwise(
                    pl.concat_str(
                        [
                            pl.lit(", itself a near duplicate of "),
                            pl.col("kept_id"),
                            pl.lit(" ("),
                            jaccard_text,
                            pl.lit(")"),
                        ]
                    )
                ),
                kept_clause,
            ]
        )
        near_detail = pl.concat_str(
            [
                pl.lit("near duplicate of "),
                pl.col("kept_id"),
                pl.lit(" ("),
                jaccard_text,
                pl.when(pl.col("similarity") < self.config.minhash.threshold)
                .then(pl.lit(", linked to it through other near duplicates"))
                .otherwise(pl.lit("")),
                pl.lit(")"),
                kept_clause,
            ]
        )
        dropped = outcome.filter(pl.col("status") != "kept").with_columns(
            pl.when(pl.col("status") == "exact_duplicate")
            .then(exact_detail)
            .otherwise(near_detail)
            .alias("detail")
        )
        rejected = dropped.select(
            "record_id", pl.col("status").alias("rule"), "detail", "source_file", "source_line"
        )
        edges = dropped.select(
            pl.col("record_id").alias("child_id"),
            pl.col("kept_id").alias("parent_id"),
            pl.lit("duplicate_of").alias("relation"),
            "detail",
        ).cast(EDGE_SCHEMA)
        clusters = self._clusters(dropped)
        kept_mask = status == "kept"
        signature_column = (
            pl.Series("signature", signatures[kept_mask]).cast(pl.List(pl.UInt64))
            if signatures.shape[1]
            else pl.Series("signature", [None] * int(kept_mask.sum()), dtype=pl.List(pl.UInt64))
        )
        index = records.filter(pl.Series(kept_mask)).select(
            "record_id",
            "batch",
            pl.Series("exact_hash", hashes[kept_mask], dtype=pl.UInt64),
            signature_column,
            pl.lit(self.params).alias("params"),
        )
        return StageResult(
            rows_in=n,
            kept=records.filter(pl.Series(kept_mask)),
            rejected=rejected,
            tables={"dedup_index": index.cast(INDEX_SCHEMA), "dedup_clusters": clusters, "edges": edges},
            counters={
                "exact_duplicates": int((status == "exact_duplicate").sum()),
                "near_duplicates": int((status == "near_duplicate").sum()),
                **counters,
                "clusters": clusters.filter(pl.col("kept")).height,
            },
        )

    @staticmethod
    def _clusters(dropped: pl.DataFrame) -> pl.DataFrame:
        """Each kept record with the dropped records attributed to it (clusters of two or more)."""
        members = dropped.select(
            pl.col("kept_id").alias("cluster_id"),
            "record_id",
            "batch",
            pl.lit(False).alias("kept"),
            "similarity",
        )
        heads = dropped.unique("kept_id", keep="first", maintain_order=True).select(
            pl.col("kept_id").alias("cluster_id"),
            pl.col("kept_id").alias("record_id"),
            pl.col("kept_batch").alias("batch"),
            pl.lit(True).alias("kept"),
            pl.lit(1.0).alias("similarity"),
        )
        return (
            pl.concat([heads, members])
            .sort(["cluster_id", "kept"], descending=[False, True], maintain_order=True)
            .cast(CLUSTER_SCHEMA)
        )


def _signature_matrix(column: pl.Series, num_perm: int) -> np.ndarray:
    """Stored signatures as a (rows, num_perm) uint64 matrix; every row must have ``num_perm`` values."""
    lengths = column.list.len().fill_null(0)
    if len(column) and (lengths != num_perm).any():
        raise ValueError(f"prior dedup index has signatures that are not {num_perm} values long")
    return column.explode(empty_as_null=False).to_numpy().astype(np.uint64).reshape(len(column), num_perm)


def _confirm(signatures: np.ndarray, pairs: np.ndarray, threshold: float) -> np.ndarray:
    """Mask of the candidate pairs whose estimated Jaccard reaches ``threshold`` (in blocks of pairs)."""
    keep = np.zeros(len(pairs), dtype=bool)
    for s0 in range(0, len(pairs), _CONFIRM_BLOCK):
        block = pairs[s0 : s0 + _CONFIRM_BLOCK]
        keep[s0 : s0 + _CONFIRM_BLOCK] = (
            estimated_jaccard(signatures[block[:, 0]], signatures[block[:, 1]]) >= threshold
        )
    return keep
