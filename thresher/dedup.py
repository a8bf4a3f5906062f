"""The deduped stage: exact and near-duplicate removal, global across batches.

What is compared is set by ``DedupConfig.scope``: the whole conversation ("role: content" per message,
joined with newlines), the first user turn, every single turn (``any_turn``: two records are duplicates
when any one of their user/assistant/tool turns is identical after normalization; exact matching
only, near matching then compares whole conversations), or the assistant response(s). The text is
normalized (NFKC, lowercase, punctuation stripped, whitespace collapsed; each switchable). Records with
no text in the scope (say, no user turn) are not compared and stay kept.

Two records are *exact* duplicates when their normalized texts hash equal (xxh3_64), and *near*
duplicates when the Jaccard similarity of their shingle sets (word or character n-grams) reaches the
threshold. Candidate pairs come from LSH banding over one-permutation MinHash signatures with optimal
densification; every candidate is then confirmed by its *true* Jaccard, computed from the two shingle
sets, so no pair below the threshold is ever removed. Confirmed pairs are clustered (connected
components); each cluster keeps one record: a prior batch's record if the cluster has one (that record
is already in the dataset), otherwise the one the keep rule (``DedupConfig.keep``) prefers.

Everything that is persisted (exact hashes, shingle hashes, signatures) comes from xxhash or fixed
integer arithmetic in numpy, so it stays comparable across processes, machines and library upgrades:
the dedup index of earlier batches is compared with new batches for the life of the dataset.
"""

from __future__ import annotations

import fnmatch
import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from scipy import integrate
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from thresher.config import DedupConfig, MinHashConfig, NormalizationConfig
from thresher.hashing import fmix64
from thresher.records import conform
from thresher.stage import StageResult, duplicate_edges, prior_rows

# One row per record kept by an earlier run of the stage; passed back as ``prior`` to later batches.
INDEX_SCHEMA: dict[str, pl.DataType] = {
    "record_id": pl.String,
    "batch": pl.String,
    # xxh3_64 of the normalized scope text; null when the record had no text in the scope.
    "exact_hash": pl.UInt64,
    # scope any_turn: xxh3_64 of each normalized user/assistant/tool turn; null for other scopes.
    "turn_hashes": pl.List(pl.UInt64),
    # One-permutation MinHash signature (num_perm bins); null when MinHash is disabled.
    "signature": pl.List(pl.UInt32),
    # The record's shingle set as sorted 32-bit hashes: confirms later candidates by true Jaccard.
    "shingles": pl.List(pl.UInt32),
    # What the hashes depend on (see ``index_params``); rows with other params are not comparable.
    "params": pl.String,
}

# One row per member of each duplicate cluster with at least two members.
CLUSTER_SCHEMA: dict[str, pl.DataType] = {
    "cluster_id": pl.String,  # the kept record's id
    "record_id": pl.String,
    "batch": pl.String,
    "kept": pl.Boolean,
    "similarity": pl.Float64,  # true Jaccard to the kept record (1.0 for exact duplicates)
}

# Bump when the hashing below changes in any way: old indexes then fail loudly instead of silently
# never matching. v2: byte-span shingle hashes, one-permutation MinHash with 32-bit values, scopes.
HASH_VERSION = "v2"

# (false positive, false negative) weights for choosing bands x rows. Every candidate pair is
# confirmed by its true Jaccard, so a false candidate costs only a set comparison while a missed
# one is a duplicate left in the data: weigh misses 9:1 (at 0.8 and 128 bins: 14 bands of 9 rows).
LSH_ERROR_WEIGHTS = (0.1, 0.9)

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_FOLD_OFFSET = np.uint64(0xCBF29CE484222325)  # FNV-1a 64 offset basis
_FOLD_PRIME = np.uint64(0x100000001B3)  # FNV-1a 64 prime
# Polynomial string hash base (odd, so invertible mod 2^64) and its inverse.
_POLY = 0x9E3779B97F4A7C15
_POLY_INV = pow(_POLY, -1, 1 << 64)
# Texts shingled at a time: bounds the per-byte uint64 arrays (8 x bytes) of one block.
_TEXT_CHUNK = 8192
# Pair-set elements compared per block when computing true Jaccard.
_JACCARD_BLOCK = 2_000_000
# Densification gives up after this many probes (probability of needing more: < 1e-14).
_MAX_PROBES = 4096
_EMPTY_BIN = np.uint32(0xFFFFFFFF)
# Densification probes precomputed per bin (later attempts are hashed on the fly).
_PROBE_TABLE = 64
# Records folded into band keys at a time.
_BAND_BLOCK = 16384

SCOPES = ("conversation", "first_user_turn", "any_turn", "assistant_response")
KEEP_RULES = ("earliest", "longest", "quality", "source_priority")


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


def _role_contents(role: str) -> pl.Expr:
    """The contents of the messages with ``role``, as a list per record."""
    return pl.col("messages").list.eval(
        pl.element().filter(pl.element().struct.field("role") == role).struct.field("content").fill_null("")
    )


def scope_text(scope: str) -> pl.Expr:
    """The raw text a scope compares: the conversation, the first user turn, or the assistant turns.

    ``any_turn`` compares single turns exactly (see ``turn_texts``) and whole conversations for near
    duplicates, so its text here is the conversation.
    """
    if scope in ("conversation", "any_turn"):
        return conversation_text()
    if scope == "first_user_turn":
        return _role_contents("user").list.first().fill_null("")
    if scope == "assistant_response":
        return _role_contents("assistant").list.join("\n").fill_null("")
    raise ValueError(f"unknown dedup scope {scope!r}; known: {SCOPES}")


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


def dedup_texts(records: pl.DataFrame, config: NormalizationConfig, scope: str = "conversation") -> pl.Series:
    """The normalized scope text of each record: what exact and near matching compare."""
    return normalize(records.select(scope_text(scope)).to_series(), config).alias("text")


def turn_texts(records: pl.DataFrame, config: NormalizationConfig) -> pl.DataFrame:
    """Scope any_turn: one row (``row``, ``text``) per non-empty normalized user/assistant/tool turn.

    System prompts are left out: one shared system prompt would otherwise make whole datasets duplicates.
    """
    turns = (
        records.select(pl.col("messages"))
        .with_row_index("row")
        .explode("messages", empty_as_null=False)
        .drop_nulls("messages")
        .filter(pl.col("messages").struct.field("role") != "system")
        .select("row", pl.col("messages").struct.field("content").fill_null("").alias("text"))
    )
    turns = turns.with_columns(normalize(turns["text"], config))
    return turns.filter(pl.col("text") != "")


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
    minhash = f"oph-{mh.shingle}{mh.ngram}x{mh.num_perm}s{mh.seed}" if mh.enabled else "off"
    return f"{HASH_VERSION} scope={config.scope} norm={flags or 'none'} minhash={minhash}"


# ------------------------------------------------------------------------------------------ minhash


_POWERS: tuple[np.ndarray, np.ndarray] = (np.ones(1, dtype=np.uint64), np.ones(1, dtype=np.uint64))


def _powers(size: int) -> tuple[np.ndarray, np.ndarray]:
    """``P^k`` and ``P^-k`` mod 2^64 for k < size (cached, grown on demand).

    Two levels (``P^(aB + b) = P^(aB) * P^b``) turn a sequential ``cumprod`` over ``size`` values into
    one vectorized outer product.
    """
    global _POWERS
    if len(_POWERS[0]) < size:
        low = 4096
        high = -(-max(size, 2 * len(_POWERS[0])) // low)
        tables = []
        for base in (_POLY, _POLY_INV):
            with np.errstate(over="ignore"):
                small = np.concatenate(
                    [
                        np.ones(1, dtype=np.uint64),
                        np.cumprod(np.full(low - 1, np.uint64(base), dtype=np.uint64)),
                    ]
                )
                step = small[-1] * np.uint64(base)  # P^low
                large = np.concatenate(
                    [np.ones(1, dtype=np.uint64), np.cumprod(np.full(high - 1, step, dtype=np.uint64))]
                )
                tables.append((large[:, None] * small[None, :]).ravel())
        _POWERS = (tables[0], tables[1])
    return _POWERS


def _utf8_buffer(texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """The UTF-8 bytes of all texts back to back, and the ``len + 1`` offsets of each text in them."""
    array = pc.cast(texts.fill_null("").to_arrow(), pa.large_string())
    buffers = array.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int64)[array.offset : array.offset + len(array) + 1]
    if buffers[2] is None or len(array) == 0:
        return np.empty(0, dtype=np.uint8), np.zeros(len(array) + 1, dtype=np.int64)
    data = np.frombuffer(buffers[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    return data, offsets - offsets[0]


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concat(arange(s, s + l) for s, l in zip(starts, lengths))``, vectorized."""
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return np.arange(total, dtype=np.int64) + shift


class MinHasher:
    """Shingle sets and one-permutation MinHash signatures of normalized texts, vectorized with numpy.

    A shingle is a span of ``ngram`` consecutive words (or characters) of the single-spaced text; a text
    shorter than that is one shingle (even the empty text). A shingle's hash is a polynomial hash of
    its UTF-8 bytes mod 2^64 (computed for all spans at once from prefix sums), mixed with the seed by
    the Murmur3 finalizer; its top 32 bits are the shingle's stored hash. The signature is one-
    permutation hashing: the 32-bit hash range is cut into ``num_perm`` bins and each bin keeps the
    smallest hash falling in it, so each shingle is hashed once instead of ``num_perm`` times; empty
    bins are filled by optimal densification (Shrivastava 2017: probe bins in a seeded order fixed per
    bin until a non-empty one is found), which keeps the collision probability of every bin equal to
    the Jaccard similarity.
    """

    def __init__(self, config: MinHashConfig, single_spaced: bool = False) -> None:
        """``single_spaced``: texts are known to be whitespace-collapsed (skips collapsing them again)."""
        self.config = config
        self.single_spaced = single_spaced
        self._probes: np.ndarray | None = None
        self._seed = fmix64(np.array([config.seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64) ^ _FOLD_OFFSET)[0]

    def _prepared(self, texts: pl.Series) -> pl.Series:
        texts = texts.fill_null("")
        if self.config.shingle == "word" and not self.single_spaced:
            texts = texts.str.replace_all(r"\s+", " ").str.strip_chars()
        return texts

    def shingle_hashes(self, texts: pl.Series, prepared: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The 32-bit hash of every shingle (in text order, repeats included) and its text's index."""
        data, offsets = _utf8_buffer(texts if prepared else self._prepared(texts))
        n_texts, n = len(offsets) - 1, self.config.ngram
        power, inverse = _powers(len(data) + 1)
        prefix = np.zeros(len(data) + 1, dtype=np.uint64)
        with np.errstate(over="ignore"):
            np.cumsum((data.astype(np.uint64) + np.uint64(1)) * power[: len(data)], out=prefix[1:])
        if self.config.shingle == "word":
            is_space = data == 32
            text_start = np.zeros(len(data) + 1, dtype=bool)
            text_start[offsets[:-1]] = True
            after_space = np.concatenate([[True], is_space[:-1]])
            before_space = np.concatenate([is_space[1:], [True]])
            starts = np.flatnonzero(~is_space & (after_space | text_start[:-1]))
            ends = np.flatnonzero(~is_space & (before_space | text_start[1:])) + 1
        else:  # characters: every byte that is not a UTF-8 continuation byte starts one
            starts = np.flatnonzero((data & 0xC0) != 0x80)
            ends = np.concatenate([starts[1:], [len(data)]]).astype(np.int64)
        first_token = np.searchsorted(starts, offsets)
        tokens = np.diff(first_token)
        counts = np.maximum(tokens - n + 1, 1)
        doc = np.repeat(np.arange(n_texts), counts)
        within = np.arange(len(doc)) - np.repeat(np.cumsum(counts) - counts, counts)
        long = tokens[doc] >= n
        pad = np.zeros(n, dtype=np.int64)
        first = first_token[:-1][doc] + within
        span_start = np.where(long, np.concatenate([starts, pad])[first], offsets[:-1][doc])
        span_end = np.where(long, np.concatenate([ends, pad])[first + n - 1], offsets[1:][doc])
        with np.errstate(over="ignore"):
            span = (prefix[span_end] - prefix[span_start]) * inverse[span_start]
            span ^= (span_end - span_start).astype(np.uint64) * _FOLD_PRIME
            span ^= self._seed
        return (fmix64(span) >> np.uint64(32)).astype(np.uint32), doc

    def sketch(
        self, texts: pl.Series, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Shingle sets (``offsets`` of len + 1 and sorted unique uint32 ``values`` per text) and the
        (len, num_perm) uint32 signatures of ``texts`` (of ``texts[rows]`` when given).

        Chunks of texts are sketched on a thread per core (numpy releases the GIL in its loops) and
        gathered chunk by chunk, so no second copy of all texts is made; the result does not depend on
        the chunking.
        """
        k = self.config.num_perm
        rows = np.arange(len(texts)) if rows is None else np.asarray(rows, dtype=np.int64)
        signatures = np.empty((len(rows), k), dtype=np.uint32)
        starts = list(range(0, len(rows), _TEXT_CHUNK))
        if starts:  # warm the shared tables once, before the threads read them
            chunk_bytes = np.add.reduceat(
                texts.str.len_bytes().fill_null(0).to_numpy()[rows].astype(np.int64), starts
            )
            _powers(int(chunk_bytes.max()) + 1)
            self._probe(np.zeros(1, dtype=np.int64), 0)

        def one(d0: int) -> tuple[np.ndarray, np.ndarray]:
            chunk = self._prepared(texts.gather(rows[d0 : d0 + _TEXT_CHUNK]))
            sizes, values, chunk_signatures = self._sketch_chunk(chunk)
            signatures[d0 : d0 + len(chunk)] = chunk_signatures
            return sizes, values

        with ThreadPoolExecutor(max_workers=max(1, min(len(starts), os.cpu_count() or 1))) as pool:
            parts = list(pool.map(one, starts))
        sizes = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        values = np.empty(int(offsets[-1]), dtype=np.uint32)
        for d0, part in zip(starts, parts, strict=True):
            values[offsets[d0] : offsets[d0] + len(part[1])] = part[1]
        return offsets, values, signatures

    def _sketch_chunk(self, chunk: pl.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Set sizes, sorted unique shingle hashes and signatures of one chunk of prepared texts."""
        shingles, doc = self.shingle_hashes(chunk, prepared=True)
        keys = (doc.astype(np.uint64) << np.uint64(32)) | shingles
        keys.sort()  # np.unique hashes first in numpy 2.4: several times slower than sorting
        distinct = np.empty(len(keys), dtype=bool)
        distinct[:1] = True
        np.not_equal(keys[1:], keys[:-1], out=distinct[1:])
        keys = keys[distinct]
        doc_u = (keys >> np.uint64(32)).astype(np.int64)
        hashes = keys.astype(np.uint32)  # the low 32 bits: the shingle hash
        sizes = np.bincount(doc_u, minlength=len(chunk))
        return sizes, hashes, self._signatures(doc_u, hashes, len(chunk))

    def signatures(self, texts: pl.Series) -> np.ndarray:
        """One-permutation MinHash signature of each (normalized) text: uint32 (len(texts), num_perm)."""
        return self.sketch(texts)[2]

    def _signatures(self, doc: np.ndarray, hashes: np.ndarray, n_texts: int) -> np.ndarray:
        """Signatures from shingle hashes sorted by (doc, hash): the first hash of each (doc, bin)."""
        k = self.config.num_perm
        out = np.full(n_texts * k, _EMPTY_BIN, dtype=np.uint32)
        cell = doc * k + ((hashes.astype(np.uint64) * np.uint64(k)) >> np.uint64(32)).astype(np.int64)
        first = np.empty(len(cell), dtype=bool)
        first[:1] = True
        np.not_equal(cell[1:], cell[:-1], out=first[1:])
        out[cell[first]] = hashes[first]
        filled = np.zeros(n_texts * k, dtype=bool)
        filled[cell[first]] = True
        empty = np.flatnonzero(~filled)
        row_start, bins = empty - empty % k, empty % k
        for attempt in range(_MAX_PROBES):
            if not len(empty):
                break
            donor = row_start + self._probe(bins, attempt)
            hit = filled[donor]
            out[empty[hit]] = out[donor[hit]]
            miss = ~hit
            empty, row_start, bins = empty[miss], row_start[miss], bins[miss]
        else:
            raise RuntimeError("MinHash densification did not converge")  # never: every text has a shingle
        return out.reshape(n_texts, k)

    def _probe(self, bins: np.ndarray, attempt: int) -> np.ndarray:
        """The bin probed at ``attempt`` to fill empty bin ``bins``: a seeded hash of (bin, attempt)."""
        if attempt < _PROBE_TABLE:
            if self._probes is None:
                grid = np.arange(self.config.num_perm * _PROBE_TABLE, dtype=np.int64)
                self._probes = self._probe_hash(grid // _PROBE_TABLE, grid % _PROBE_TABLE)
            return self._probes[bins * _PROBE_TABLE + attempt]
        return self._probe_hash(bins, attempt)

    def _probe_hash(self, bins: np.ndarray, attempt: np.ndarray | int) -> np.ndarray:
        key = (bins.astype(np.uint64) << np.uint64(32)) | np.asarray(attempt, dtype=np.uint64)
        with np.errstate(over="ignore"):
            mixed = fmix64(key ^ self._seed) >> np.uint64(32)
            return ((mixed * np.uint64(self.config.num_perm)) >> np.uint64(32)).astype(np.int64)


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Share of equal signature positions, row by row: the MinHash estimate of Jaccard similarity."""
    return (a == b).mean(axis=-1)


def pair_jaccard(offsets: np.ndarray, values: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """True Jaccard similarity of the shingle sets of each pair of rows (sets given as CSR ``offsets``
    and sorted unique ``values``), vectorized: both sets of a block of pairs are tagged with the pair,
    sorted together, and equal neighbours counted (an element common to both sets appears twice)."""
    sizes = np.diff(offsets)
    out = np.ones(len(pairs))
    if not len(pairs):
        return out
    work = np.cumsum(sizes[pairs[:, 0]] + sizes[pairs[:, 1]])
    bounds = np.searchsorted(work, np.arange(_JACCARD_BLOCK, int(work[-1]) + _JACCARD_BLOCK, _JACCARD_BLOCK))
    start = 0
    for stop in [*np.unique(np.maximum(bounds, 1)).tolist(), len(pairs)]:
        stop = min(int(stop), len(pairs))
        if stop <= start:
            continue
        block = pairs[start:stop]
        p = len(block)
        a, b = sizes[block[:, 0]], sizes[block[:, 1]]
        lengths = np.concatenate([a, b])
        index = _ranges(np.concatenate([offsets[block[:, 0]], offsets[block[:, 1]]]), lengths)
        tag = np.repeat(np.tile(np.arange(p, dtype=np.uint64), 2), lengths)
        keys = (tag << np.uint64(32)) | values[index].astype(np.uint64)
        keys.sort()
        same = keys[1:] == keys[:-1]
        inter = np.bincount((keys[1:][same] >> np.uint64(32)).astype(np.int64), minlength=p)
        union = a + b - inter
        out[start:stop] = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        start = stop
    return out


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
    out = np.empty((len(signatures), bands), dtype=np.uint64)
    for r0 in range(0, len(signatures), _BAND_BLOCK):  # blocks of records stay in cache across rows
        block = signatures[r0 : r0 + _BAND_BLOCK, : bands * rows].reshape(-1, bands, rows)
        acc = np.full((len(block), bands), _FOLD_OFFSET, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for j in range(rows):
                acc ^= block[:, :, j]
                acc *= _FOLD_PRIME
        out[r0 : r0 + _BAND_BLOCK] = fmix64(acc)
    return out


def candidate_pairs(keys: np.ndarray, preference: np.ndarray, window: int) -> np.ndarray:
    """Pairs of rows sharing a bucket in any band, as a sorted unique (pairs, 2) array with lo < hi.

    Within a bucket (ordered by ``preference``) each row is paired with at most ``window`` rows before
    it: all pairs for buckets of up to ``window + 1`` rows, a chain that still links a huge cluster
    otherwise, without its quadratic number of pairs.
    """
    by_preference = np.argsort(preference, kind="stable")
    found = []
    for band in range(keys.shape[1]):
        # A stable sort of rows already in preference order: ties (one bucket) stay in that order.
        order = by_preference[np.argsort(keys[by_preference, band], kind="stable")]
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

# How the ledger says why the kept record won, per keep rule (when it won on the rule, not on a tie).
KEEP_REASONS = {
    "earliest": "earliest",
    "longest": "longer",
    "quality": "higher quality score",
    "source_priority": "higher source priority",
}


def _glob_regex(glob: str) -> str:
    """A shell glob as a regex Polars (Rust) understands, anchored at both ends."""
    return "^" + fnmatch.translate(glob).replace("\\Z", "\\z")


def keep_scores(
    records: pl.DataFrame, config: DedupConfig, quality_scores: pl.DataFrame | None = None
) -> np.ndarray:
    """What the keep rule compares, higher wins: total characters (longest); for quality, the LLM
    judge's score of the record (``quality_scores``: record_id, quality_score, from the judgments an
    earlier verified run kept) or else ``quality_score`` from the metadata JSON (missing or not a
    number: -inf); minus the index of the first matching source glob (source_priority; a file matching
    none ranks after all); 0 for earliest."""
    if config.keep == "longest":
        chars = pl.col("messages").list.eval(
            pl.element().struct.field("content").str.len_chars().fill_null(0)
        )
        expr = chars.list.sum().fill_null(0).cast(pl.Float64)
    elif config.keep == "quality":
        stated = pl.col("metadata").str.json_path_match("$.quality_score").cast(pl.Float64, strict=False)
        if quality_scores is not None:
            judged = quality_scores.select(
                "record_id", pl.col("quality_score").cast(pl.Float64).alias("_judged")
            )
            records = records.join(judged, on="record_id", how="left", maintain_order="left")
            stated = pl.coalesce(pl.col("_judged"), stated)
        expr = stated.fill_nan(None).fill_null(float("-inf"))
    elif config.keep == "source_priority":
        globs = config.source_priority
        path = pl.col("source_file").fill_null("")
        name = path.str.replace(r"^.*/", "")
        expr = pl.lit(-float(len(globs)))
        for position in reversed(range(len(globs))):  # the first matching glob wins: apply it last
            regex = _glob_regex(globs[position])
            expr = (
                pl.when(path.str.contains(regex) | name.str.contains(regex))
                .then(-float(position))
                .otherwise(expr)
            )
    else:
        return np.zeros(records.height)
    scores = records.select(pl.col("record_id"), expr.cast(pl.Float64).alias("score"))["score"]
    return scores.to_numpy().astype(np.float64)


def keep_rank(records: pl.DataFrame, scores: np.ndarray) -> np.ndarray:
    """Preference rank of each record (0 = kept first): highest score, then earliest."""
    order = (
        records.select("source_line", "record_id")
        .with_columns(pl.Series("score", -scores), pl.int_range(pl.len(), dtype=pl.Int64).alias("row"))
        .sort(["score", "source_line", "record_id"], nulls_last=True, maintain_order=True)["row"]
        .to_numpy()
    )
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank


def earliest_first(records: pl.DataFrame) -> np.ndarray:
    """Preference rank: lowest ``source_line`` first (nulls last), then lowest ``record_id``."""
    return keep_rank(records, np.zeros(records.height))


def largest_clusters(clusters: pl.DataFrame, n: int = 10) -> pl.DataFrame:
    """The ``n`` largest duplicate clusters (members counted with the kept one), for review: their id,
    size, kept record and lowest similarity of a member to it; largest first, then by id."""
    return (
        clusters.group_by("cluster_id")
        .agg(
            pl.len().cast(pl.Int64).alias("size"),
            pl.col("record_id").filter(pl.col("kept")).first().alias("kept_id"),
            pl.col("similarity").min().alias("min_similarity"),
        )
        .sort(["size", "cluster_id"], descending=[True, False])
        .head(n)
    )


# ------------------------------------------------------------------------------------------- stage


def _fraction(sim: pl.Expr) -> pl.Expr:
    """A similarity in [0, 1] as text with two decimals, never rounded up to the threshold ("0.87")."""
    hundredths = (sim * 100 + 1e-9).floor().cast(pl.Int64)
    return pl.concat_str(
        [(hundredths // 100).cast(pl.String), pl.lit("."), (hundredths % 100).cast(pl.String).str.zfill(2)]
    )


def component_heads(size: int, edges: np.ndarray, preference: np.ndarray) -> np.ndarray:
    """For each node, the node of its connected component (over ``edges``, pairs of node indexes) with
    the lowest preference: dedup's clusters and the release's prompt groups."""
    if size == 0:
        return np.empty(0, dtype=np.int64)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(size, size))
    _, label = connected_components(graph, directed=False)
    by_cluster = np.lexsort((preference, label))
    is_head = np.r_[True, label[by_cluster][1:] != label[by_cluster][:-1]]
    head_of_label = np.empty(label.max() + 1, dtype=np.int64)
    head_of_label[label[by_cluster][is_head]] = by_cluster[is_head]
    return head_of_label[label]


def _exact_parents(node: np.ndarray, key: np.ndarray, preference: np.ndarray) -> np.ndarray:
    """For every node, the preferred node linked to it through equal keys (itself if none).

    A node may have several keys (scope any_turn: one per turn), so links are transitive.
    """
    size = len(preference)
    if not len(node):
        return np.arange(size)
    pairs = (
        pl.DataFrame({"node": node, "key": key, "pref": preference[node]})
        .with_columns(pl.col("node").sort_by("pref").first().over("key").alias("head"))
        .filter(pl.col("node") != pl.col("head"))
    )
    return component_heads(size, pairs.select("node", "head").to_numpy(), preference)


def _signature_matrix(column: pl.Series, num_perm: int) -> np.ndarray:
    """Stored signatures as a (rows, num_perm) uint32 matrix; every row must have ``num_perm`` values."""
    lengths = column.list.len().fill_null(0)
    if len(column) and (lengths != num_perm).any():
        raise ValueError(f"prior dedup index has signatures that are not {num_perm} values long")
    return column.explode(empty_as_null=False).to_numpy().astype(np.uint32).reshape(len(column), num_perm)


class Deduplicator:
    """The deduped stage over one batch, against the dedup index of every earlier batch."""

    def __init__(self, config: DedupConfig | None = None) -> None:
        self.config = config or DedupConfig()
        self.params = index_params(self.config)
        self.minhasher = MinHasher(self.config.minhash, self.config.normalization.collapse_whitespace)

    def _usable_prior(self, prior: pl.DataFrame | None, records: pl.DataFrame) -> pl.DataFrame:
        """The prior index, checked comparable, without rows of the batches being (re)processed.

        Re-materializing a batch replaces its own index rows, so they must not count as earlier copies.
        """
        prior = prior_rows(prior, INDEX_SCHEMA, records)
        other = prior.filter(pl.col("params") != self.params)["params"].unique().sort().to_list()
        if other:
            raise ValueError(
                f"prior dedup index rows were built with {other}, this run uses '{self.params}': hashes "
                "are not comparable; re-materialize the deduped stage of earlier batches with this config"
            )
        # Earliest accepted first: names the prior record a duplicate is attributed to, deterministically.
        return prior.sort(["batch", "record_id"])

    def run(
        self,
        records: pl.DataFrame,
        prior: pl.DataFrame | None = None,
        quality_scores: pl.DataFrame | None = None,
    ) -> StageResult:
        """Deduplicate ``records`` (one batch) against themselves and against ``prior``; ``quality_scores``
        (record_id, quality_score) feed the ``quality`` keep rule (see ``keep_scores``)."""
        records = conform(records)
        prior = self._usable_prior(prior, records)
        n, m = records.height, prior.height
        cfg = self.config
        texts = dedup_texts(records, cfg.normalization, cfg.scope)
        has_text = (texts.fill_null("") != "").to_numpy()
        hashes = exact_hashes(texts)
        turns = turn_texts(records, cfg.normalization) if cfg.scope == "any_turn" else None
        turn_hash = exact_hashes(turns["text"]) if turns is not None else None
        scores = keep_scores(records, cfg, quality_scores)
        # Global node ids: batch record i -> i, prior index row j -> n + j. ``preference`` (lower is kept)
        # puts prior rows first: they are already in the dataset.
        preference = np.concatenate([m + keep_rank(records, scores), np.arange(m)])

        exact_parent = np.arange(n)
        if cfg.exact and n:
            exact_parent = self._exact_graph(has_text, hashes, turns, turn_hash, prior, preference)[:n]
        is_rep = exact_parent == np.arange(n)

        final = exact_parent.copy()  # the kept record each batch record is attributed to
        similarity = np.ones(n)
        sketches = None
        counters = {"candidate_pairs": 0, "confirmed_pairs": 0, "candidates_below_threshold": 0}
        if cfg.minhash.enabled and n:
            reps = np.flatnonzero(is_rep & has_text)
            near_final, near_sim, counters, sketches = self._near(reps, texts, prior, preference)
            # An exact duplicate inherits its representative's fate (same text, same shingles).
            rep_of = np.where(exact_parent < n, exact_parent, 0)
            inherits = exact_parent < n
            final = np.where(inherits, near_final[rep_of], exact_parent)
            similarity = np.where(inherits, near_sim[rep_of], 1.0)

        status = np.where(
            ~is_rep, "exact_duplicate", np.where(final != np.arange(n), "near_duplicate", "kept")
        )
        counters["no_scope_text"] = int((~has_text).sum())
        del texts  # the largest intermediate: free it before the output tables are built
        result = _Outcome(records, prior, hashes, exact_parent, final, similarity, status, scores, has_text)
        return self._result(result, turns, turn_hash, sketches, counters)

    def _exact_graph(
        self,
        has_text: np.ndarray,
        hashes: np.ndarray,
        turns: pl.DataFrame | None,
        turn_hash: np.ndarray | None,
        prior: pl.DataFrame,
        preference: np.ndarray,
    ) -> np.ndarray:
        """Exact parent of every node (batch records, then prior rows): the preferred node sharing a key."""
        n = len(has_text)
        if turns is not None and turn_hash is not None:
            prior_turns = (
                prior.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("row"), "turn_hashes")
                .explode("turn_hashes", empty_as_null=False)
                .drop_nulls("turn_hashes")
            )
            node = np.concatenate(
                [turns["row"].to_numpy().astype(np.int64), n + prior_turns["row"].to_numpy()]
            )
            key = np.concatenate([turn_hash, prior_turns["turn_hashes"].to_numpy().astype(np.uint64)])
        else:
            rows = np.flatnonzero(has_text)
            prior_rows = np.flatnonzero(prior["exact_hash"].is_not_null().to_numpy())
            node = np.concatenate([rows, n + prior_rows])
            key = np.concatenate([hashes[rows], prior["exact_hash"].to_numpy()[prior_rows].astype(np.uint64)])
        return _exact_parents(node, key, preference)

    def _near(
        self, reps: np.ndarray, texts: pl.Series, prior: pl.DataFrame, preference: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, dict[str, int], _Sketches]:
        """Near-duplicate attribution of the exact representatives ``reps`` (batch indices).

        Returns, for every batch index, the node kept in its cluster (itself when not a near duplicate)
        and its true Jaccard to it, the LSH counters, and the reps' signatures and shingle sets.
        """
        n = len(preference) - prior.height
        mh = self.config.minhash
        offsets, values, signatures = self.minhasher.sketch(texts, reps)
        sketches = _Sketches(reps, offsets, values, signatures)
        final, similarity = np.arange(n), np.ones(n)
        counters = {"candidate_pairs": 0, "confirmed_pairs": 0, "candidates_below_threshold": 0}
        if len(reps) == 0:  # every record is an exact copy of a prior one
            return final, similarity, counters, sketches
        bands, rows = lsh_params(mh.threshold, mh.num_perm, *LSH_ERROR_WEIGHTS)
        rep_keys = band_keys(signatures, bands, rows)
        # Only prior rows sharing a bucket with this batch can pair with it.
        prior_rows = np.empty(0, dtype=np.int64)
        prior_signatures = np.empty((0, mh.num_perm), dtype=np.uint32)
        if prior.height:
            usable = np.flatnonzero(prior["signature"].is_not_null().to_numpy())
            all_prior = _signature_matrix(prior["signature"].gather(usable), mh.num_perm)
            prior_keys = band_keys(all_prior, bands, rows)
            shares = np.zeros(len(usable), dtype=bool)
            for band in range(bands):
                shares |= np.isin(prior_keys[:, band], rep_keys[:, band])
            prior_rows = usable[shares]
            prior_signatures = all_prior[shares]
        prior_sets = prior["shingles"].gather(prior_rows)
        prior_sizes = prior_sets.list.len().fill_null(0).to_numpy().astype(np.int64)
        set_offsets = np.r_[offsets, offsets[-1] + np.cumsum(prior_sizes)].astype(np.int64)
        set_values = np.concatenate(
            [values, prior_sets.explode(empty_as_null=False).drop_nulls().to_numpy().astype(np.uint32)]
        )
        # Local nodes: reps first, then the prior rows that share a bucket.
        node_global = np.concatenate([reps, n + prior_rows])
        node_preference = preference[node_global]
        keys = np.concatenate([rep_keys, band_keys(prior_signatures, bands, rows)])
        pairs = candidate_pairs(keys, node_preference, mh.bucket_window)
        pairs = pairs[(pairs[:, 0] < len(reps)) | (pairs[:, 1] < len(reps))]  # prior-prior pairs: both kept
        # Jaccard <= smaller set / larger set: pairs too different in size need no comparison.
        sizes = np.diff(set_offsets)
        small, large = np.sort(sizes[pairs], axis=1).T if len(pairs) else (np.empty(0), np.empty(0))
        plausible = pairs[small >= mh.threshold * large - 1e-9]
        confirmed = plausible[pair_jaccard(set_offsets, set_values, plausible) >= mh.threshold - 1e-12]
        head = component_heads(len(node_global), confirmed, node_preference)[: len(reps)]
        to_head = np.stack([np.arange(len(reps)), head], axis=1)
        moved = head != np.arange(len(reps))
        final[reps] = node_global[head]
        similarity[reps[moved]] = pair_jaccard(set_offsets, set_values, to_head[moved])
        counters = {
            "candidate_pairs": len(pairs),
            "confirmed_pairs": len(confirmed),
            "candidates_below_threshold": len(pairs) - len(confirmed),
        }
        return final, similarity, counters, sketches

    def _result(
        self,
        out: _Outcome,
        turns: pl.DataFrame | None,
        turn_hash: np.ndarray | None,
        sketches: _Sketches | None,
        counters: dict[str, int],
    ) -> StageResult:
        """Kept records, ledger rows, clusters, edges and the index rows of the kept records."""
        records, prior, n = out.records, out.prior, out.records.height
        ids = pl.concat([records["record_id"], prior["record_id"]])
        batches = pl.concat([records["batch"], prior["batch"]])
        kept_score = out.scores[np.minimum(out.final, max(n - 1, 0))] if n else out.scores
        outcome = records.select("record_id", "batch", "source_file", "source_line").with_columns(
            pl.Series("status", out.status, dtype=pl.String),
            ids.gather(out.exact_parent).alias("parent_id"),
            ids.gather(out.final).alias("kept_id"),
            batches.gather(out.final).fill_null("(none)").alias("kept_batch"),
            pl.Series("kept_is_prior", out.final >= n),
            pl.Series("parent_is_kept", out.exact_parent == out.final),
            pl.Series("won_on_rule", kept_score > out.scores),
            pl.Series("similarity", out.similarity, dtype=pl.Float64),
            hex64(out.hashes).alias("hash_hex"),
        )
        reason = (
            pl.when(pl.col("kept_is_prior"))
            .then(pl.concat_str([pl.lit("accepted in batch "), pl.col("kept_batch")]))
            .when(pl.col("won_on_rule"))
            .then(pl.lit(KEEP_REASONS[self.config.keep]))
            .otherwise(pl.lit("earliest"))
        )
        kept_clause = pl.concat_str([pl.lit("; kept "), pl.col("kept_id"), pl.lit(": "), reason])
        jaccard_text = pl.concat_str([pl.lit("Jaccard "), _fraction(pl.col("similarity"))])
        why_exact = (
            pl.lit(" (an identical normalized turn, directly or through other records)")
            if self.config.scope == "any_turn"
            else pl.concat_str([pl.lit(" (normalized text hash "), pl.col("hash_hex"), pl.lit(")")])
        )
        exact_detail = pl.concat_str(
            [
                pl.lit("exact duplicate of "),
                pl.col("parent_id"),
                why_exact,
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
                pl.when(pl.col("similarity") < self.config.minhash.threshold - 1e-12)
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
        edges = duplicate_edges(dropped)
        clusters = self._clusters(dropped)
        kept_mask = pl.Series(out.status == "kept")
        index = self._index(records, kept_mask, out.hashes, turns, turn_hash, sketches, out.has_text)
        return StageResult(
            rows_in=n,
            kept=records.filter(kept_mask),
            rejected=rejected,
            tables={"dedup_index": index, "dedup_clusters": clusters, "edges": edges},
            counters={
                "exact_duplicates": int((out.status == "exact_duplicate").sum()),
                "near_duplicates": int((out.status == "near_duplicate").sum()),
                **counters,
                "clusters": clusters.filter(pl.col("kept")).height,
            },
        )

    def _index(
        self,
        records: pl.DataFrame,
        kept_mask: pl.Series,
        hashes: np.ndarray,
        turns: pl.DataFrame | None,
        turn_hash: np.ndarray | None,
        sketches: _Sketches | None,
        has_text: np.ndarray,
    ) -> pl.DataFrame:
        """Index rows of the kept records: their hashes, turn hashes, signatures and shingle sets."""
        texts_present = records.select(
            pl.int_range(pl.len(), dtype=pl.Int64).alias("row"),
            "record_id",
            "batch",
            pl.Series("exact_hash", hashes, dtype=pl.UInt64),
        ).filter(kept_mask)
        if turns is not None and turn_hash is not None:
            per_row = (
                turns.select(pl.col("row").cast(pl.Int64), pl.Series("h", turn_hash, dtype=pl.UInt64))
                .group_by("row")
                .agg(pl.col("h").alias("turn_hashes"))
            )
            texts_present = texts_present.join(per_row, on="row", how="left", maintain_order="left")
        else:
            texts_present = texts_present.with_columns(
                pl.lit(None, dtype=INDEX_SCHEMA["turn_hashes"]).alias("turn_hashes")
            )
        if sketches is not None:
            kept_rows = texts_present["row"].to_numpy()
            texts_present = texts_present.with_columns(*sketches.columns(kept_rows))
        else:
            texts_present = texts_present.with_columns(
                pl.lit(None, dtype=INDEX_SCHEMA["signature"]).alias("signature"),
                pl.lit(None, dtype=INDEX_SCHEMA["shingles"]).alias("shingles"),
            )
        no_text = pl.Series(~has_text).filter(kept_mask)
        return (
            texts_present.with_columns(
                pl.when(no_text).then(None).otherwise(pl.col("exact_hash")).alias("exact_hash"),
                pl.lit(self.params).alias("params"),
            )
            .select(list(INDEX_SCHEMA))
            .cast(INDEX_SCHEMA)
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


class _Sketches:
    """Signatures and shingle sets of the records that were sketched (``rows``, ascending)."""

    def __init__(self, rows: np.ndarray, offsets: np.ndarray, values: np.ndarray, signatures: np.ndarray):
        self.rows, self.offsets, self.values, self.signatures = rows, offsets, values, signatures

    def columns(self, rows: np.ndarray) -> tuple[pl.Series, pl.Series]:
        """``signature`` and ``shingles`` list columns for ``rows`` (ascending; null where not
        sketched), built from flat numpy arrays through Arrow: no per-row Python, no index arrays.
        Consumes the sketches (frees them as it goes: they are the largest arrays of a run)."""
        present = np.isin(rows, self.rows)
        wanted = np.isin(self.rows, rows)  # sketched rows that are asked for, in the same order
        k = self.signatures.shape[1]
        mask = pa.array(~present)
        sig_offsets = np.concatenate([[0], np.cumsum(np.where(present, k, 0))]).astype(np.int64)
        signature = pa.LargeListArray.from_arrays(
            pa.array(sig_offsets), pa.array(self.signatures[wanted].ravel()), mask=mask
        )
        signature_column = pl.Series("signature", pl.from_arrow(signature)).cast(INDEX_SCHEMA["signature"])
        del signature
        self.signatures = np.empty((0, k), dtype=np.uint32)  # consumed: free it before the sets are copied
        sizes = np.zeros(len(rows), dtype=np.int64)
        set_sizes = np.diff(self.offsets)
        sizes[present] = set_sizes[wanted]
        set_offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        shingles = pa.LargeListArray.from_arrays(
            pa.array(set_offsets), pa.array(self.values[np.repeat(wanted, set_sizes)]), mask=mask
        )
        self.values = np.empty(0, dtype=np.uint32)
        return signature_column, pl.Series("shingles", pl.from_arrow(shingles)).cast(INDEX_SCHEMA["shingles"])


class _Outcome:
    """Per-record results of a run, handed from matching to the building of the output tables."""

    def __init__(
        self,
        records: pl.DataFrame,
        prior: pl.DataFrame,
        hashes: np.ndarray,
        exact_parent: np.ndarray,
        final: np.ndarray,
        similarity: np.ndarray,
        status: np.ndarray,
        scores: np.ndarray,
        has_text: np.ndarray,
    ) -> None:
        self.has_text = has_text
        self.records, self.prior, self.hashes = records, prior, hashes
        self.exact_parent, self.final, self.similarity = exact_parent, final, similarity
        self.status, self.scores = status, scores


def near_duplicate_pairs(texts: pl.Series, config: MinHashConfig, window: int | None = None) -> pl.DataFrame:
    """Confirmed near-duplicate pairs (``i < j`` row indices, true ``jaccard`` >= threshold) among
    normalized ``texts``: the candidate generation and confirmation the stage runs, without clustering
    (for evaluation against brute force)."""
    hasher = MinHasher(config)
    offsets, values, signatures = hasher.sketch(texts)
    keys = band_keys(signatures, *lsh_params(config.threshold, config.num_perm, *LSH_ERROR_WEIGHTS))
    pairs = candidate_pairs(keys, np.arange(len(texts)), config.bucket_window if window is None else window)
    similarity = pair_jaccard(offsets, values, pairs)
    keep = similarity >= config.threshold - 1e-12
    return pl.DataFrame(
        {"i": pairs[keep, 0], "j": pairs[keep, 1], "jaccard": similarity[keep]},
        schema={"i": pl.Int64, "j": pl.Int64, "jaccard": pl.Float64},
    )
