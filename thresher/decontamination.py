"""Benchmark decontamination: drop records that share word n-grams with registered evaluation sets.

A model finetuned on a benchmark's items scores well on that benchmark without being any better, so a
record is *contaminated* when it shares at least one word n-gram (13 by default, as in GPT-3's
decontamination) with an item of a registered benchmark file. Both sides are compared on the same
normalized text: every turn's content joined (no role labels), NFKC, GSM8K calculator annotations
dropped, lowercase, punctuation and symbols turned into spaces, whitespace collapsed. Punctuation becomes a space rather than nothing so that code
reformatted by hand (``f(x,y)`` vs ``f( x, y )``, ``snake_case``) still yields the same words.

Items shorter than n words use their whole normalized text as their one gram, which a record matches
when it contains that text as a run of whole words (a word-aligned substring, never part of a word).
A record shorter than n words yields no n-gram, so it matches only such short items: a record that is
merely a short piece of a long item is not counted as contamination, as in GPT-3.

Benchmark files are read with the ingest adapters, which wrap every item in the same wording ("Your
code should pass these tests:"); records read with those adapters carry it too. Word 5-grams found in a
large share of a benchmark's items are such boilerplate, and benchmark grams touching them are left out
(``DecontaminationConfig.boilerplate_share``), so a gram must lie within an item's own content.

Hashes are stable across processes and versions (xxh3_64 per distinct word, folded per gram with fixed
integer arithmetic), so the benchmark side can be cached: per process, keyed by the file's sha256, its
format and n.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import xxhash

from thresher.config import BenchmarkFile, DecontaminationConfig, IngestConfig
from thresher.hashing import fmix64
from thresher.ingest import read_file
from thresher.records import rejections
from thresher.stage import STAGE_LEDGER_SCHEMA, StageResult

RULE = "contamination"

# One row per (record, benchmark item) pair that share at least one gram.
CONTAMINATION_SCHEMA: dict[str, pl.DataType] = {
    "record_id": pl.String,
    "benchmark": pl.String,
    "item_id": pl.String,
    # Distinct grams the record shares with the item (1 for an item shorter than n words).
    "shared_ngrams": pl.Int64,
}

# One row per configured benchmark.
REPORT_SCHEMA: dict[str, pl.DataType] = {
    "benchmark": pl.String,
    "records_checked": pl.Int64,
    # Records sharing a gram with this benchmark (a record overlapping two benchmarks counts in both).
    "contaminated": pl.Int64,
    "contaminated_share": pl.Float64,
}

# Counter holding the number of records the decontaminator looked at (``contamination_report``).
CHECKED_COUNTER = "decontamination.checked"

# Bump when normalization or hashing changes: cached indexes are keyed by it.
GRAM_VERSION = "v1"

_FOLD_OFFSET = np.uint64(0xCBF29CE484222325)  # FNV-1a 64 offset basis
_FOLD_PRIME = np.uint64(0x100000001B3)  # FNV-1a 64 prime
# Boilerplate phrases: word 5-grams found in many items of one benchmark (but in at least this many).
BOILERPLATE_WORDS = 5
BOILERPLATE_MIN_ITEMS = 10
# Records gram-hashed at a time: bounds the per-gram arrays (about 40 bytes x words) on large batches.
_RECORD_CHUNK = 16384

_GRAM_SCHEMA = {"h": pl.UInt64, "item": pl.UInt32}
_SHORT_SCHEMA = {"k": pl.Int64, "h": pl.UInt64, "item": pl.UInt32}
_HIT_SCHEMA = {"doc": pl.Int64, "bench": pl.UInt32, "item": pl.UInt32, "shared": pl.Int64}


# --------------------------------------------------------------------------------------------- text


def turns_text(messages: pl.Expr | None = None) -> pl.Expr:
    """Every turn's content joined with newlines; role labels are left out because benchmark items
    carry none and a label between two turns would break the grams that span them."""
    messages = pl.col("messages") if messages is None else messages
    return (
        messages.list.eval(pl.element().struct.field("content").fill_null("")).list.join("\n").fill_null("")
    )


def normalize(texts: pl.Series) -> pl.Series:
    """NFKC (non-ASCII texts only, it is the slow step), calculator annotations dropped, lowercase,
    punctuation and symbols as spaces, whitespace collapsed: copies that differ only in case, spacing,
    punctuation or markup give the same words."""
    non_ascii = texts.str.contains(r"[^\x00-\x7f]").fill_null(False)
    if non_ascii.any():
        texts = texts.clone().scatter(non_ascii.arg_true(), texts.filter(non_ascii).str.normalize("NFKC"))
    return (
        # GSM8K's calculator annotations ("<<3*20=60>>") are tool markup that copies routinely drop; left in,
        # they break every 13-gram of a short worked answer.
        texts.str.replace_all(r"<<[^<>\n]*>>", " ")
        .str.to_lowercase()
        .str.replace_all(r"[\p{P}\p{S}\s]+", " ")
        .str.strip_chars(" ")
        .fill_null("")
    )


def _word_hashes(texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """xxh3_64 of every word of the (normalized, single-spaced) texts in order, and each text's word count.

    Hashed once per distinct word: the vocabulary is far smaller than the word stream, which keeps the
    one Python loop off the hot path.
    """
    split = texts.str.split(" ")
    flat = split.explode(empty_as_null=False)
    non_empty = (flat != "").fill_null(False).to_numpy()
    doc = np.repeat(np.arange(len(texts)), split.list.len().to_numpy())
    lengths = np.bincount(doc[non_empty], minlength=len(texts)).astype(np.int64)
    words = flat.filter(pl.Series(non_empty))
    vocab = words.unique()
    digest = xxhash.xxh3_64_intdigest
    hashed = np.fromiter((digest(w.encode()) for w in vocab.to_list()), dtype=np.uint64, count=len(vocab))
    table = pl.DataFrame({"w": vocab, "h": pl.Series(hashed, dtype=pl.UInt64)})
    stream = pl.DataFrame({"w": words}).join(table, on="w", how="left", maintain_order="left")
    return stream["h"].to_numpy().astype(np.uint64), lengths


def gram_hashes(
    word_hash: np.ndarray, lengths: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 64-bit hash of every run of exactly ``k`` words, the text it comes from and the position of
    its first word in the word stream.

    Texts shorter than ``k`` words yield none. A gram folds its words' hashes FNV-style and ends with a
    Murmur finalizer, so its hash depends only on its words, never on the text around it.
    """
    counts = np.maximum(lengths - k + 1, 0)
    doc = np.repeat(np.arange(len(lengths)), counts)
    first_gram = np.cumsum(counts) - counts
    first_word = np.cumsum(lengths) - lengths
    start = first_word[doc] + (np.arange(len(doc)) - first_gram[doc])
    position = start.copy()
    acc = np.full(len(doc), _FOLD_OFFSET, dtype=np.uint64)
    for _ in range(k):  # loop over the k word positions of a gram, vectorized over grams
        np.bitwise_xor(acc, word_hash[position], out=acc)
        np.multiply(acc, _FOLD_PRIME, out=acc)
        position += 1
    return fmix64(acc), doc, start


# ------------------------------------------------------------------------------------- benchmarks


@dataclass(frozen=True)
class BenchmarkIndex:
    """The grams of one benchmark file: what records are compared with."""

    sha256: str
    # Item ids in file order: metadata task_id, else the record id.
    item_ids: pl.Series
    # Distinct (gram hash, item) pairs of the items with at least n words.
    grams: pl.DataFrame
    # Items shorter than n words: their word count k and whole-text hash.
    short: pl.DataFrame
    # Items whose normalized text is empty (they can match nothing) and lines the reader rejected.
    empty_items: int
    unreadable_lines: int
    # Grams left out because they touch the file format's boilerplate (see ``_boilerplate_words``).
    boilerplate_grams: int


_CACHE: dict[tuple[str, str | None, int, float, str], BenchmarkIndex] = {}
_CACHE_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forget every cached benchmark index (tests; a long-lived process whose files changed keeps
    working without it, since the cache is keyed by content)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def resolve_benchmark_path(benchmark: BenchmarkFile, base_dir: Path) -> Path:
    """The benchmark file's path (relative paths from ``base_dir``); a missing file is an error naming it."""
    path = Path(benchmark.path)
    if not path.is_absolute():
        path = Path(base_dir) / path
    if not path.is_file():
        raise FileNotFoundError(
            f"decontamination benchmark '{benchmark.name}': file not found: {path} "
            f"(dedup.decontamination.benchmarks path '{benchmark.path}', relative to {base_dir})"
        )
    return path


def _boilerplate_words(word_hash: np.ndarray, lengths: np.ndarray, items: int, share: float) -> np.ndarray:
    """Mask of the words (in stream order) inside a word 5-gram found in at least ``share`` of the items
    (and at least ``BOILERPLATE_MIN_ITEMS`` of them).

    Such phrases are the adapter's or the file's template ("Your code should pass these tests:",
    "Complete the following Python function."): every record read with the same adapter carries them too,
    so a 13-gram spanning the end of a short MBPP task and that phrase would flag unrelated code records.
    """
    covered = np.zeros(len(word_hash), dtype=bool)
    min_items = max(BOILERPLATE_MIN_ITEMS, int(np.ceil(share * items)))
    if share >= 1.0 or items < min_items:
        return covered
    k = BOILERPLATE_WORDS
    hashes, doc, start = gram_hashes(word_hash, lengths, k)
    frame = pl.DataFrame({"h": hashes, "doc": doc, "start": start})
    frequent = (
        frame.group_by("h").agg(pl.col("doc").n_unique().alias("items")).filter(pl.col("items") >= min_items)
    )
    starts = frame.join(frequent, on="h", how="semi")["start"].to_numpy()
    for offset in range(k):
        covered[starts + offset] = True
    return covered


def load_benchmark(
    path: Path, name: str, file_format: str | None, ngram: int, boilerplate_share: float = 1.0
) -> BenchmarkIndex:
    """Read a benchmark file with the ingest adapters and hash its items' grams (cached per process)."""
    file_format = None if file_format in (None, "auto") else file_format
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    key = (sha, file_format, ngram, boilerplate_share, GRAM_VERSION)
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
    if cached is not None:
        return cached
    parsed = read_file(path, f"benchmark:{name}", IngestConfig(), file_format=file_format)
    items = parsed.kept
    if items.is_empty():
        why = "; ".join(parsed.rejected["detail"].unique(maintain_order=True).head(3).to_list())
        raise ValueError(
            f"decontamination benchmark '{name}': no item could be read from {path} ({why or 'no records'}); "
            "set its format if auto-detection picks the wrong adapter"
        )
    item_ids = items.select(
        pl.coalesce(pl.col("metadata").str.json_path_match("$.task_id"), pl.col("record_id"))
    ).to_series()
    texts = normalize(items.select(turns_text()).to_series())
    word_hash, lengths = _word_hashes(texts)
    hashes, item, start = gram_hashes(word_hash, lengths, ngram)
    covered = _boilerplate_words(word_hash, lengths, len(items), boilerplate_share)
    # Grams touching a boilerplate word are the format's wrapping, not the item's content.
    touched = np.concatenate([[0], np.cumsum(covered)])
    content = touched[start + ngram] == touched[start]
    grams = (
        pl.DataFrame({"h": hashes[content], "item": item[content].astype(np.uint32)}, schema=_GRAM_SCHEMA)
        .unique(maintain_order=True)
        .sort(["h", "item"])
    )
    short_parts = []
    for k in np.unique(lengths[(lengths > 0) & (lengths < ngram)]).tolist():
        h, doc, _ = gram_hashes(word_hash, lengths, k)
        whole = lengths[doc] == k  # an item of exactly k words has one k-gram: its whole text
        short_parts.append(
            pl.DataFrame({"k": k, "h": h[whole], "item": doc[whole].astype(np.uint32)}, schema=_SHORT_SCHEMA)
        )
    short = pl.concat(short_parts) if short_parts else pl.DataFrame(schema=_SHORT_SCHEMA)
    index = BenchmarkIndex(
        sha256=sha,
        item_ids=item_ids.alias("item_id"),
        grams=grams,
        short=short,
        empty_items=int((lengths == 0).sum()),
        boilerplate_grams=int((~content).sum()),
        unreadable_lines=parsed.rejected.height,
    )
    with _CACHE_LOCK:
        _CACHE[key] = index
    return index


# ------------------------------------------------------------------------------------------- stage


class Decontaminator:
    """Rejects records that share a word n-gram with an item of a registered benchmark."""

    def __init__(self, config: DecontaminationConfig, base_dir: Path) -> None:
        """Resolves and indexes every benchmark now, so a missing or unreadable file fails before any
        record is looked at."""
        self.config = config
        self.names = [b.name for b in config.benchmarks]
        self.indexes: list[BenchmarkIndex] = []
        if config.enabled:
            for benchmark in config.benchmarks:
                path = resolve_benchmark_path(benchmark, base_dir)
                self.indexes.append(
                    load_benchmark(
                        path, benchmark.name, benchmark.format, config.ngram, config.boilerplate_share
                    )
                )
        self._grams = (
            pl.concat(
                [
                    ix.grams.with_columns(pl.lit(b, pl.UInt32).alias("bench"))
                    for b, ix in enumerate(self.indexes)
                ]
            )
            if self.indexes
            else pl.DataFrame(schema={**_GRAM_SCHEMA, "bench": pl.UInt32})
        )
        self._short = (
            pl.concat(
                [
                    ix.short.with_columns(pl.lit(b, pl.UInt32).alias("bench"))
                    for b, ix in enumerate(self.indexes)
                ]
            )
            if self.indexes
            else pl.DataFrame(schema={**_SHORT_SCHEMA, "bench": pl.UInt32})
        )
        # (bench, item) -> benchmark name and item id, for the table and the ledger.
        self._items = pl.concat(
            [
                pl.DataFrame({"item_id": ix.item_ids})
                .with_row_index("item")
                .with_columns(pl.lit(b, pl.UInt32).alias("bench"), pl.lit(name, pl.String).alias("benchmark"))
                for b, (name, ix) in enumerate(zip(self.names, self.indexes, strict=False))
            ]
            if self.indexes
            else [
                pl.DataFrame(
                    schema={
                        "item": pl.UInt32,
                        "item_id": pl.String,
                        "bench": pl.UInt32,
                        "benchmark": pl.String,
                    }
                )
            ]
        )
        self._short_lengths = sorted(self._short["k"].unique().to_list())

    def run(self, records: pl.DataFrame) -> StageResult:
        """Keep the records that share no gram with any benchmark item; reject the others, naming the
        benchmark item they overlap most."""
        if not self.config.enabled or not self.indexes:
            return StageResult(
                rows_in=records.height, kept=records, rejected=pl.DataFrame(schema=STAGE_LEDGER_SCHEMA)
            )
        hits = self._hits(records)
        hits = (
            hits.join(self._items, on=["bench", "item"], how="left")
            .with_columns(pl.col("doc").cast(pl.UInt32))
            .join(records.select("record_id").with_row_index("doc"), on="doc", how="left")
            .sort(["doc", "bench", "item"])
        )
        table = hits.select("record_id", "benchmark", "item_id", pl.col("shared").alias("shared_ngrams"))
        # The item each rejected record overlaps most names it in the ledger (ties: configuration order,
        # then file order), with a count of the others.
        top = (
            hits.sort(["doc", "shared", "bench", "item"], descending=[False, True, False, False])
            .group_by("doc", maintain_order=True)
            .agg(pl.all().first(), pl.len().alias("pairs"))
        )
        n = self.config.ngram
        detail = pl.concat_str(
            [
                pl.when(pl.col("k") > 0)
                .then(
                    pl.concat_str(
                        [
                            pl.lit("contains the whole text ("),
                            pl.col("k").cast(pl.String),
                            pl.lit(f" word(s), shorter than {n}) of"),
                        ]
                    )
                )
                .otherwise(
                    pl.concat_str(
                        [pl.lit("shares "), pl.col("shared").cast(pl.String), pl.lit(f" {n}-gram(s) with")]
                    )
                ),
                pl.lit(" benchmark "),
                pl.col("benchmark"),
                pl.lit(" item "),
                pl.col("item_id"),
                pl.when(pl.col("pairs") > 1)
                .then(
                    pl.concat_str(
                        [
                            pl.lit("; overlaps "),
                            (pl.col("pairs") - 1).cast(pl.String),
                            pl.lit(" more benchmark item(s)"),
                        ]
                    )
                )
                .otherwise(pl.lit("")),
            ]
        )
        # In input order on both sides (top is sorted by doc): the ledger and the kept frame are deterministic.
        contaminated = np.zeros(records.height, dtype=bool)
        contaminated[top["doc"].to_numpy()] = True
        flagged = records.filter(pl.Series(contaminated)).with_columns(
            top.select(detail.alias("detail")).to_series()
        )
        kept = records.filter(pl.Series(~contaminated))
        per_bench = hits.group_by("bench").agg(pl.col("doc").n_unique().alias("records"))
        by_bench = dict(zip(per_bench["bench"].to_list(), per_bench["records"].to_list(), strict=True))
        counters = {CHECKED_COUNTER: records.height}
        counters.update({f"{RULE}.{name}": int(by_bench.get(b, 0)) for b, name in enumerate(self.names)})
        return StageResult(
            rows_in=records.height,
            kept=kept,
            rejected=rejections(flagged, RULE, pl.col("detail")),
            tables={"contamination": table.cast(CONTAMINATION_SCHEMA)},
            counters=counters,
        )

    def _hits(self, records: pl.DataFrame) -> pl.DataFrame:
        """(record, benchmark, item, shared grams, short-item length or 0) for every overlapping pair."""
        n = self.config.ngram
        parts = [pl.DataFrame(schema={**_HIT_SCHEMA, "k": pl.Int64})]
        for r0 in range(0, records.height, _RECORD_CHUNK):
            chunk = records.slice(r0, _RECORD_CHUNK)
            texts = normalize(chunk.select(turns_text()).to_series())
            word_hash, lengths = _word_hashes(texts)
            hashes, doc, _ = gram_hashes(word_hash, lengths, n)
            grams = pl.DataFrame({"doc": doc + r0, "h": hashes}, schema={"doc": pl.Int64, "h": pl.UInt64})
            parts.append(
                grams.join(self._grams, on="h", how="inner")
                .group_by(["doc", "bench", "item"])
                .agg(pl.col("h").n_unique().cast(pl.Int64).alias("shared"))
                .with_columns(pl.lit(0, pl.Int64).alias("k"))
            )
            for k in self._short_lengths:
                hashes, doc, _ = gram_hashes(word_hash, lengths, k)
                grams = pl.DataFrame({"doc": doc + r0, "h": hashes}, schema={"doc": pl.Int64, "h": pl.UInt64})
                parts.append(
                    grams.join(self._short.filter(pl.col("k") == k), on="h", how="inner")
                    .select("doc", "bench", "item", pl.lit(1, pl.Int64).alias("shared"), "k")
                    .unique()
                )
        return pl.concat([p.select([*_HIT_SCHEMA, "k"]).cast({**_HIT_SCHEMA, "k": pl.Int64}) for p in parts])


def contamination_report(result: StageResult) -> pl.DataFrame:
    """Per configured benchmark: records checked and records contaminated (from the stage's counters, so
    benchmarks that matched nothing are listed with 0)."""
    checked = int(result.counters.get(CHECKED_COUNTER, result.rows_in))
    prefix = f"{RULE}."
    rows = [
        (name[len(prefix) :], checked, int(count), count / checked if checked else 0.0)
        for name, count in result.counters.items()
        if name.startswith(prefix)
    ]
    return pl.DataFrame(rows, schema=REPORT_SCHEMA, orient="row")
