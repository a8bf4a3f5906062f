"""Intra-document and cross-document repetition: the two kinds of duplication a record hash cannot see.

``RepetitionFilter`` rejects records whose assistant text repeats itself (Gopher's rules, Rae et al.
2021) or whose conversation repeats its own turns. ``BoilerplateRemover`` keeps records but cuts the
lines that recur across many of them (signatures, disclaimers), counting occurrences across batches.

What is measured, and why:

- The *assistant text* of a record is its assistant messages joined as separate paragraphs: that is
  what a model is trained to produce. Fenced code blocks (```) are cut out of it in every record, and
  a code record (task "code") without a fence is all code: code repeats lines, braces and identifiers
  legitimately, so no rule here measures code.
- Lines are split on line breaks, stripped, and only those with a letter or digit count (``---`` and
  ``}`` repeat legitimately); paragraphs are split on blank lines. A line or paragraph is a
  duplicate when it equals an earlier one of the same text; the character fractions divide the
  characters of the duplicates by those of all counted lines (or paragraphs).
- Words are runs of letters, digits and underscores, lowercased. The top n-gram fraction (n = 2, 3, 4)
  is the characters of the most frequent n-gram times its count, over all word characters, and only
  an n-gram seen at least twice counts. The duplicate n-gram fraction (n = 5..10) is the share of word
  characters covered by some n-gram that occurs at least twice (every occurrence, the first included,
  as in the Gopher paper).
- Records of ``ngram_skip_tasks`` (math by default) are not measured by the n-gram rules: a worked
  answer restates its quantities ("the number of downloads of the program ...") and Gopher's
  thresholds, made for web pages, flag a quarter of GSM8K's reference answers.
- A statistic is measured only on texts long enough for it: ``min_lines`` counted lines,
  ``min_paragraphs`` paragraphs, ``min_words`` words, ``min_turns`` user/assistant turns. Shorter texts
  pass that rule.
- repeated_turns: the share of user and assistant turns whose normalized text (lowercase, punctuation
  dropped, whitespace collapsed) equals an earlier turn of the same role; turns shorter than
  ``min_repeated_turn_chars`` never count as repeats ("continue", "thanks").

Each rejected record is charged to the first rule it breaks, in ``RULES`` order; details give the
measured value and the threshold and never quote the text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import xxhash

from thresher.config import BoilerplateConfig, RepetitionConfig
from thresher.stage import StageResult

# Ledger rule names, in the order a record is charged to them.
RULES = (
    "repeated_turns",
    "duplicate_paragraphs",
    "duplicate_paragraph_chars",
    "duplicate_lines",
    "duplicate_line_chars",
    "top_ngram_repetition",
    "duplicate_ngram_repetition",
)
TOP_NGRAMS = (2, 3, 4)
DUPLICATE_NGRAMS = (5, 6, 7, 8, 9, 10)

# Per-record statistics (``RepetitionFilter.measure``). Fractions are null where nothing was measured:
# no counted line or paragraph, fewer than ``min_words`` words (n-gram fractions) or fewer than
# ``min_turns`` user/assistant turns (repeated_turn_fraction).
MEASURE_SCHEMA: dict[str, pl.DataType] = {
    "record_id": pl.String,
    "lines": pl.UInt32,
    "duplicate_line_fraction": pl.Float64,
    "duplicate_line_char_fraction": pl.Float64,
    "paragraphs": pl.UInt32,
    "duplicate_paragraph_fraction": pl.Float64,
    "duplicate_paragraph_char_fraction": pl.Float64,
    "words": pl.UInt32,
    **{f"top_{n}gram_char_fraction": pl.Float64 for n in TOP_NGRAMS},
    **{f"duplicate_{n}gram_char_fraction": pl.Float64 for n in DUPLICATE_NGRAMS},
    "turns": pl.UInt32,
    "repeated_turn_fraction": pl.Float64,
}

# One row per distinct boilerplate-eligible line of a batch: how many of the batch's records hold it.
# Stored per batch by the caller and passed back (rows of earlier batches) as ``prior_lines``.
BOILERPLATE_LINES_SCHEMA: dict[str, pl.DataType] = {
    "line_hash": pl.UInt64,  # xxh3_64 of the normalized line's UTF-8 bytes (stable across versions)
    "records": pl.Int64,
}

# One row per boilerplate line removed from a kept record.
BOILERPLATE_REMOVALS_SCHEMA: dict[str, pl.DataType] = {
    "record_id": pl.String,
    "message_index": pl.Int32,
    "line_hash": pl.String,  # 16 hex digits of BOILERPLATE_LINES_SCHEMA's line_hash
    "chars_removed": pl.Int64,  # characters of the removed line, its line break not counted
}

_FENCE = r"(?s)```.*?(?:```|$)"  # a fenced block, or an unclosed fence to the end of the text
_WORD = r"\w+"
_HASH_SEED = 0x7E57AB1E  # in-batch n-gram hashing only; never persisted
_NGRAM_CHUNK = 4096  # texts per n-gram pass


def _fraction(value: pl.Expr) -> pl.Expr:
    return value.round(3).cast(pl.String)


# --------------------------------------------------------------------------------------- measuring


def assistant_text(records: pl.DataFrame) -> pl.Series:
    """Each record's assistant prose: assistant messages as paragraphs, code cut out (see module doc)."""
    content = pl.element().struct.field("content").fill_null("")
    is_assistant = pl.element().struct.field("role") == "assistant"
    joined = (
        pl.col("messages")
        .list.eval(pl.when(is_assistant).then(content).otherwise(None).drop_nulls())
        .list.join("\n\n")
        .fill_null("")
    )
    prose = joined.str.replace_all(_FENCE, "\n\n")
    unfenced_code = (pl.col("task") == "code").fill_null(False) & ~joined.str.contains("```", literal=True)
    return records.select(pl.when(unfenced_code).then(pl.lit("")).otherwise(prose).alias("text")).to_series()


def _unit_stats(texts: pl.Series, units: pl.Expr, prefix: str) -> pl.DataFrame:
    """Count, duplicate fraction and duplicate-character fraction of the units (lines or paragraphs)
    of each text; a unit is a duplicate when it equals an earlier unit of the same text."""
    flat = (
        pl.DataFrame({"text": texts})
        .with_row_index("_row")
        .select("_row", units.alias("unit"))
        .explode("unit", empty_as_null=False)
        .with_columns(pl.col("unit").str.strip_chars())
        .filter(pl.col("unit").str.contains(r"[\p{L}\p{N}]"))
        .with_columns(
            (pl.int_range(pl.len()).over("_row", "unit") > 0).alias("dup"),
            pl.col("unit").str.len_chars().alias("chars"),
        )
    )
    stats = flat.group_by("_row").agg(
        pl.len().cast(pl.UInt32).alias(prefix + "s"),
        (pl.col("dup").sum() / pl.len()).alias(f"duplicate_{prefix}_fraction"),
        (pl.col("chars").filter(pl.col("dup")).sum() / pl.col("chars").sum()).alias(
            f"duplicate_{prefix}_char_fraction"
        ),
    )
    frame = pl.DataFrame({"_row": pl.int_range(len(texts), dtype=pl.UInt32, eager=True)})
    return (
        frame.join(stats, on="_row", how="left").with_columns(pl.col(prefix + "s").fill_null(0)).drop("_row")
    )


def _ngram_stats_chunk(texts: pl.Series, min_words: int) -> pl.DataFrame:
    """Word count of each text, and its top and duplicate n-gram character fractions when it has at
    least ``min_words`` words (null otherwise): numpy over the flat word stream of the measured texts,
    n-grams never crossing texts."""
    all_words = texts.str.to_lowercase().str.extract_all(_WORD)
    word_counts = all_words.list.len().fill_null(0).to_numpy().astype(np.int64)
    measured = np.flatnonzero(word_counts >= min_words)
    words = all_words.gather(measured)
    counts = word_counts[measured]
    n_texts = len(measured)
    flat = words.explode(empty_as_null=False).drop_nulls()
    doc = np.repeat(np.arange(n_texts, dtype=np.int64), counts)
    word_hash = flat.hash(seed=_HASH_SEED).to_numpy()
    word_chars = flat.str.len_chars().to_numpy().astype(np.int64)
    total_chars = np.bincount(doc, weights=word_chars, minlength=n_texts)
    cum_chars = np.concatenate([[0], np.cumsum(word_chars)])
    # One key per (text, n-gram): a text's hash folded in, so that a single-column group-by counts
    # occurrences within each text (three times faster than grouping by two columns).
    doc_salt = doc.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    out: dict[str, pl.Series] = {"words": pl.Series(word_counts, dtype=pl.UInt32)}
    m = len(doc)
    acc = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        for n in range(1, max(DUPLICATE_NGRAMS) + 1):
            # acc[i] = hash of the n-gram starting at word i (FNV-style fold of word hashes).
            shifted = np.zeros(m, dtype=np.uint64)
            if m >= n:
                shifted[: m - n + 1] = word_hash[n - 1 :]
            acc = (acc ^ shifted) * np.uint64(0x100000001B3) + np.uint64(n)
            if n not in TOP_NGRAMS and n not in DUPLICATE_NGRAMS:
                continue
            starts = np.arange(max(m - n + 1, 0))
            starts = starts[doc[starts] == doc[starts + n - 1]] if len(starts) else starts
            keys = pl.Series(acc[starts] ^ doc_salt[starts])
            if n in TOP_NGRAMS:
                occurrences = pl.DataFrame({"key": keys}).select(pl.len().over("key")).to_series()
                repeated = (occurrences >= 2).to_numpy()
                # Characters of the most frequent repeated n-gram (longest on ties) times its count.
                top = (
                    pl.DataFrame(
                        {
                            "doc": doc[starts[repeated]],
                            "count": occurrences.filter(pl.Series(repeated)),
                            "chars": (cum_chars[starts + n] - cum_chars[starts])[repeated],
                        }
                    )
                    .sort(["doc", "count", "chars"], descending=[False, True, True])
                    .unique("doc", keep="first", maintain_order=True)
                )
                covered = np.zeros(n_texts)
                covered[top["doc"].to_numpy()] = (top["count"] * top["chars"]).to_numpy()
            else:
                repeated = keys.is_duplicated().to_numpy()
                # Words covered by a duplicated n-gram: some duplicated n-gram starts in [i - n + 1, i].
                dup_start = np.zeros(m + 1, dtype=np.int64)
                dup_start[starts[repeated] + 1] = 1
                running = np.cumsum(dup_start)  # running[i + 1] = duplicated starts at or before i
                index = np.arange(m)
                is_covered = running[index + 1] - running[np.maximum(index + 1 - n, 0)] > 0
                covered = np.bincount(doc[is_covered], weights=word_chars[is_covered], minlength=n_texts)
            label = f"top_{n}gram_char_fraction" if n in TOP_NGRAMS else f"duplicate_{n}gram_char_fraction"
            # Overlapping occurrences of the top n-gram ("a a a") can count a word twice: cap at 1.
            fraction = np.minimum(np.where(total_chars > 0, covered / np.maximum(total_chars, 1), 0.0), 1.0)
            full = np.full(len(texts), np.nan)
            full[measured] = fraction
            out[label] = pl.Series(full).fill_nan(None)
    return pl.DataFrame(out)


def _ngram_stats(texts: pl.Series, min_words: int) -> pl.DataFrame:
    """``_ngram_stats_chunk`` over chunks of texts: n-grams never cross texts, so chunking changes no
    value, and it keeps the per-n hash tables cache-sized (one pass over 100,000 texts was 40x slower
    than ten passes over 10,000)."""
    if len(texts) <= _NGRAM_CHUNK:
        return _ngram_stats_chunk(texts, min_words)
    return pl.concat(
        [
            _ngram_stats_chunk(texts.slice(s, _NGRAM_CHUNK), min_words)
            for s in range(0, len(texts), _NGRAM_CHUNK)
        ]
    )


def _turn_stats(records: pl.DataFrame, min_turns: int, min_chars: int) -> pl.DataFrame:
    """User/assistant turn count, and for conversations of at least ``min_turns`` such turns the share
    of them repeating an earlier turn of the same role (only those are normalized: most records are
    a single exchange)."""
    is_turn = pl.element().struct.field("role").is_in(["user", "assistant"])
    counts = records.select(
        pl.col("messages").list.eval(is_turn).list.sum().fill_null(0).cast(pl.UInt32).alias("turns")
    )
    rows = counts.with_row_index("_row").filter(pl.col("turns") >= min_turns)["_row"]
    turns = (
        records.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_row"), "messages")
        .filter(pl.col("_row").is_in(rows.implode()))
        .explode("messages", empty_as_null=False)
        .unnest("messages")
        .filter(pl.col("role").is_in(["user", "assistant"]))
        .with_columns(
            pl.col("content")
            .fill_null("")
            .str.to_lowercase()
            .str.replace_all(r"\p{P}+", "")
            .str.replace_all(r"\s+", " ")
            .str.strip_chars()
            .alias("norm")
        )
        .with_columns(
            (
                (pl.int_range(pl.len()).over("_row", "role", "norm") > 0)
                & (pl.col("norm").str.len_chars() >= max(min_chars, 1))
            ).alias("repeat")
        )
    )
    stats = turns.group_by("_row").agg(pl.col("repeat").mean().alias("repeated_turn_fraction"))
    frame = counts.with_row_index("_row")
    return frame.join(stats, on="_row", how="left", maintain_order="left").drop("_row")


@dataclass(frozen=True)
class _Check:
    """One threshold test over a ``measure`` column: the rule it belongs to and how to word it."""

    rule: str
    column: str
    maximum: float
    minimum_size: str  # the size column that must reach its minimum for the value to count
    what: str  # the measured quantity, in words, for the detail


class RepetitionFilter:
    """Rejects records whose assistant text or conversation repeats itself (rules in ``RULES``)."""

    def __init__(self, config: RepetitionConfig | None = None) -> None:
        self.config = config or RepetitionConfig()
        c = self.config
        line, para, word = "lines", "paragraphs", "words"
        self.checks: list[_Check] = [
            _Check(
                "repeated_turns",
                "repeated_turn_fraction",
                c.max_repeated_turn_fraction,
                "turns",
                "share of user/assistant turns repeating an earlier turn",
            ),
            _Check(
                "duplicate_paragraphs",
                "duplicate_paragraph_fraction",
                c.max_duplicate_paragraph_fraction,
                para,
                "share of the assistant text's paragraphs repeating an earlier one",
            ),
            _Check(
                "duplicate_paragraph_chars",
                "duplicate_paragraph_char_fraction",
                c.max_duplicate_paragraph_char_fraction,
                para,
                "share of the assistant text's paragraph characters in repeated paragraphs",
            ),
            _Check(
                "duplicate_lines",
                "duplicate_line_fraction",
                c.max_duplicate_line_fraction,
                line,
                "share of the assistant text's lines repeating an earlier one",
            ),
            _Check(
                "duplicate_line_chars",
                "duplicate_line_char_fraction",
                c.max_duplicate_line_char_fraction,
                line,
                "share of the assistant text's line characters in repeated lines",
            ),
            *(
                _Check(
                    "top_ngram_repetition",
                    f"top_{n}gram_char_fraction",
                    getattr(c, f"max_top_{n}gram_char_fraction"),
                    word,
                    f"share of the assistant text's word characters in its most frequent word {n}-gram",
                )
                for n in TOP_NGRAMS
            ),
            *(
                _Check(
                    "duplicate_ngram_repetition",
                    f"duplicate_{n}gram_char_fraction",
                    getattr(c, f"max_duplicate_{n}gram_char_fraction"),
                    word,
                    f"share of the assistant text's word characters in word {n}-grams that occur twice or more",
                )
                for n in DUPLICATE_NGRAMS
            ),
        ]
        self._minimum = {"lines": c.min_lines, "paragraphs": c.min_paragraphs, "words": c.min_words}
        self._minimum["turns"] = c.min_turns

    def measure(self, records: pl.DataFrame) -> pl.DataFrame:
        """Every statistic of every record (``MEASURE_SCHEMA``), before any threshold or minimum size."""
        texts = assistant_text(records)
        lines = _unit_stats(texts, pl.col("text").str.split("\n"), "line")
        paragraphs = _unit_stats(
            texts,
            # Runs of blank (or whitespace-only) lines become one "\n\n", then a literal split.
            pl.col("text").str.replace_all(r"\n[^\S\n]*\n\s*", "\n\n").str.split("\n\n"),
            "paragraph",
        )
        # Tasks the n-gram rules skip are measured on an empty text (0 words: below any minimum).
        skip = records.select(
            pl.col("task").is_in(list(self.config.ngram_skip_tasks)).fill_null(False)
        ).to_series()
        ngram_texts = pl.select(pl.when(skip).then(pl.lit("")).otherwise(texts)).to_series()
        return pl.concat(
            [
                records.select("record_id"),
                lines,
                paragraphs,
                _ngram_stats(ngram_texts, self.config.min_words),
                _turn_stats(records, self.config.min_turns, self.config.min_repeated_turn_chars),
            ],
            how="horizontal",
        ).select([pl.col(name).cast(dtype) for name, dtype in MEASURE_SCHEMA.items()])

    def run(self, records: pl.DataFrame) -> StageResult:
        """Keep the records no rule fires on; reject the others under the first rule they break."""
        if not self.config.enabled or records.is_empty():
            return StageResult(rows_in=records.height, kept=records, rejected=_empty_rejections(records))
        stats = self.measure(records).with_row_index("_row")
        rule = pl.lit(None, dtype=pl.String)
        detail = pl.lit(None, dtype=pl.String)
        for check in reversed(self.checks):  # the first check to fire wins: build the chain backwards
            fires = (pl.col(check.minimum_size) >= self._minimum[check.minimum_size]) & (
                pl.col(check.column) > check.maximum
            )
            sentence = pl.format(
                "{}: {} (measured over {} {}); maximum is {}",
                pl.lit(check.what),
                _fraction(pl.col(check.column)),
                pl.col(check.minimum_size),
                pl.lit(check.minimum_size),
                pl.lit(check.maximum),
            )
            rule = pl.when(fires.fill_null(False)).then(pl.lit(check.rule)).otherwise(rule)
            detail = pl.when(fires.fill_null(False)).then(sentence).otherwise(detail)
        verdict = stats.select("_row", rule.alias("rule"), detail.alias("detail"))
        hit = verdict["rule"].is_not_null()
        rejected = pl.concat(
            [
                records.filter(hit).select("record_id"),
                verdict.filter(hit).select("rule", "detail"),
                records.filter(hit).select("source_file", "source_line"),
            ],
            how="horizontal",
        )
        by_rule = rejected.group_by("rule").len()
        counts = dict(zip(by_rule["rule"].to_list(), by_rule["len"].to_list(), strict=True))
        return StageResult(
            rows_in=records.height,
            kept=records.filter(~hit),
            rejected=rejected,
            counters={f"repetition.{name}": int(counts.get(name, 0)) for name in RULES},
        )


def _empty_rejections(records: pl.DataFrame) -> pl.DataFrame:
    return records.head(0).select(
        "record_id",
        pl.lit(None, dtype=pl.String).alias("rule"),
        pl.lit(None, dtype=pl.String).alias("detail"),
        "source_file",
        "source_line",
    )


# ------------------------------------------------------------------------------------- boilerplate


def _line_hashes(lines: pl.Series) -> pl.Series:
    """xxh3_64 of each distinct normalized line, as a (line, line_hash) lookup.

    A Python loop over the *distinct* lines: no vectorized hash in Polars or DuckDB promises stable
    values across versions, and these hashes are stored and compared with later batches.
    """
    vocab = lines.unique().sort()
    digest = xxhash.xxh3_64_intdigest
    hashed = np.fromiter((digest(t.encode()) for t in vocab.to_list()), dtype=np.uint64, count=len(vocab))
    return pl.DataFrame({"norm": vocab, "line_hash": pl.Series(hashed, dtype=pl.UInt64)})


def normalize_line(line: pl.Expr) -> pl.Expr:
    """What makes two lines the same boilerplate line: stripped, lowercased, whitespace collapsed."""
    return line.str.strip_chars().str.to_lowercase().str.replace_all(r"\s{2,}|[\s--[ ]]", " ")


class BoilerplateRemover:
    """Removes lines that recur across many records (signatures, disclaimers) from message text.

    A line is boilerplate when its normalized form (``normalize_line``, at least ``min_line_chars``
    long) occurs in at least ``min_records`` distinct records, counting this batch and the per-batch
    counts of earlier batches (``prior_lines``). Lines inside ``` code fences are never touched, and
    only messages of ``config.roles`` are. Records are kept with the lines cut, except a record one of
    whose messages would become empty: that one is rejected (``empty_after_boilerplate``), since a turn
    that was only boilerplate says nothing; or, with ``empty_message: keep``, that message is left whole
    (for templated answers and labels, which recur by design). Earlier batches are not revisited: a line becomes
    boilerplate from the batch that brings its count to the minimum on.

    Tables: ``boilerplate_lines`` (this batch's count per line hash, to persist and pass back as
    ``prior_lines``) and ``boilerplate_removals`` (one row per line cut from a kept record). Text
    never leaves the records: lines are named by hash only.
    """

    def __init__(self, config: BoilerplateConfig | None = None) -> None:
        self.config = config or BoilerplateConfig()

    def _lines(self, records: pl.DataFrame) -> pl.DataFrame:
        """One row per line of every message: position, role, code flag and normalized text."""
        messages = (
            records.select(
                pl.int_range(pl.len(), dtype=pl.UInt32).alias("_row"),
                "messages",
                pl.col("messages").list.eval(pl.int_range(pl.len(), dtype=pl.Int32)).alias("message_index"),
            )
            .explode(["messages", "message_index"], empty_as_null=False, keep_nulls=False)
            .unnest("messages")
            .with_columns(pl.col("content").fill_null(""))
        )
        fence = pl.col("line").str.strip_chars_start().str.starts_with("```")
        return (
            messages.select(
                "_row",
                "message_index",
                "role",
                pl.col("content").str.split("\n").alias("line"),
                pl.col("content").str.split("\n").list.eval(pl.int_range(pl.len())).alias("line_index"),
            )
            .explode(["line", "line_index"], empty_as_null=False)
            .with_columns(
                # Inside a fence: an odd number of fence lines so far, or a fence line itself.
                ((fence.cast(pl.UInt32).cum_sum().over("_row", "message_index") % 2 == 1) | fence).alias(
                    "code"
                ),
                normalize_line(pl.col("line")).alias("norm"),
            )
            .with_columns(
                (
                    pl.col("role").is_in(list(self.config.roles))
                    & ~pl.col("code")
                    & (pl.col("norm").str.len_chars() >= self.config.min_line_chars)
                ).alias("eligible")
            )
        )

    def run(self, records: pl.DataFrame, prior_lines: pl.DataFrame | None = None) -> StageResult:
        """Cut boilerplate lines from ``records``; ``prior_lines`` are earlier batches' line counts."""
        empty_tables = {
            "boilerplate_lines": pl.DataFrame(schema=BOILERPLATE_LINES_SCHEMA),
            "boilerplate_removals": pl.DataFrame(schema=BOILERPLATE_REMOVALS_SCHEMA),
        }
        counters = {"boilerplate.lines_removed": 0, "boilerplate.records_changed": 0}
        if not self.config.enabled or records.is_empty():
            return StageResult(
                rows_in=records.height,
                kept=records,
                rejected=_empty_rejections(records),
                tables=empty_tables,
                counters=counters,
            )
        lines = self._lines(records)
        eligible = lines.filter("eligible").select("_row", "norm")
        hashes = _line_hashes(eligible["norm"])
        occurrences = eligible.join(hashes, on="norm", how="left")
        batch_counts = (
            occurrences.unique(["_row", "line_hash"])
            .group_by("line_hash")
            .agg(pl.len().cast(pl.Int64).alias("records"))
            .sort("line_hash")
        )
        prior = prior_lines if prior_lines is not None else pl.DataFrame(schema=BOILERPLATE_LINES_SCHEMA)
        totals = (
            pl.concat(
                [batch_counts, prior.select(list(BOILERPLATE_LINES_SCHEMA)).cast(BOILERPLATE_LINES_SCHEMA)]
            )
            .group_by("line_hash")
            .agg(pl.col("records").sum())
        )
        boilerplate = hashes.join(
            totals.filter(pl.col("records") >= self.config.min_records), on="line_hash", how="semi"
        )
        lines = lines.join(boilerplate, on="norm", how="left", maintain_order="left").with_columns(
            (pl.col("eligible") & pl.col("line_hash").is_not_null()).alias("cut")
        )
        key = ["_row", "message_index"]
        messages = self._cut(lines)
        emptied = messages.filter((pl.col("cut_lines") > 0) & (pl.col("new").str.strip_chars() == ""))
        if self.config.empty_message == "keep" and emptied.height:
            # A message that is nothing but recurring lines is a templated answer, not boilerplate
            # around one: leave it whole.
            whole = emptied.select(*key, pl.lit(True).alias("_whole"))
            lines = (
                lines.join(whole, on=key, how="left", maintain_order="left")
                .with_columns(pl.col("cut") & pl.col("_whole").is_null())
                .drop("_whole")
            )
            messages = self._cut(lines)
            emptied = emptied.head(0)
        first_emptied = emptied.sort(key).unique("_row", keep="first", maintain_order=True)
        dropped_rows = first_emptied["_row"]
        rejected = (
            records.with_row_index("_row")
            .join(first_emptied, on="_row", how="inner")
            .sort("_row")
            .select(
                "record_id",
                pl.lit("empty_after_boilerplate").alias("rule"),
                pl.format(
                    "message {} ({}) is empty once its {} boilerplate line(s) are cut (lines found in at "
                    "least {} records, normalized, of at least {} characters)",
                    pl.col("message_index"),
                    pl.col("role"),
                    pl.col("cut_lines"),
                    pl.lit(self.config.min_records),
                    pl.lit(self.config.min_line_chars),
                ).alias("detail"),
                "source_file",
                "source_line",
            )
        )
        changed = messages.filter((pl.col("cut_lines") > 0) & ~pl.col("_row").is_in(dropped_rows.implode()))
        kept = self._rewrite(records, changed, dropped_rows)
        removals = (
            lines.filter(pl.col("cut") & ~pl.col("_row").is_in(dropped_rows.implode()))
            .sort("_row", "message_index", "line_index")
            .join(records.with_row_index("_row").select("_row", "record_id"), on="_row", how="left")
        )
        hex_of = boilerplate.select(
            "line_hash",
            pl.Series([f"{h:016x}" for h in boilerplate["line_hash"].to_list()], dtype=pl.String).alias(
                "hex"
            ),
        )
        removal_table = removals.join(hex_of, on="line_hash", how="left", maintain_order="left").select(
            "record_id",
            "message_index",
            pl.col("hex").alias("line_hash"),
            pl.col("line").str.len_chars().cast(pl.Int64).alias("chars_removed"),
        )
        return StageResult(
            rows_in=records.height,
            kept=kept,
            rejected=rejected,
            tables={
                "boilerplate_lines": batch_counts.cast(BOILERPLATE_LINES_SCHEMA),
                "boilerplate_removals": removal_table.cast(BOILERPLATE_REMOVALS_SCHEMA),
            },
            counters={
                "boilerplate.lines_removed": removal_table.height,
                "boilerplate.records_changed": changed["_row"].n_unique(),
            },
        )

    def _cut(self, lines: pl.DataFrame) -> pl.DataFrame:
        """Per message: role, the content without its cut lines (``new``) and how many were cut."""
        key = ["_row", "message_index"]
        survivors = self._tidy(lines.filter(~pl.col("cut")), changed=lines.filter("cut").select(key).unique())
        contents = survivors.group_by(key).agg(
            pl.col("line").sort_by("line_index").str.join("\n").alias("new")
        )
        return (
            lines.select(*key, "role")
            .unique(key, maintain_order=True)
            .join(contents, on=key, how="left")
            .with_columns(pl.col("new").fill_null(""))
            .join(lines.filter("cut").group_by(key).len("cut_lines"), on=key, how="left")
            .with_columns(pl.col("cut_lines").fill_null(0))
        )

    @staticmethod
    def _tidy(survivors: pl.DataFrame, changed: pl.DataFrame) -> pl.DataFrame:
        """In messages that lost lines, drop the blank prose lines the cut left leading, trailing or
        doubled ("Answer.\\n\\nBest regards,\\nThe Team" becomes "Answer."); other messages untouched."""
        key = ["_row", "message_index"]
        ordered = survivors.sort([*key, "line_index"])
        blank = (pl.col("line").str.strip_chars() == "") & ~pl.col("code")
        flagged = ordered.join(
            changed.with_columns(pl.lit(True).alias("_changed")), on=key, how="left", maintain_order="left"
        )
        redundant = (
            blank
            & pl.col("_changed").fill_null(False)
            & (
                blank.shift(1).over(key).fill_null(True)  # leading, or after another blank
                | ((~blank).cast(pl.UInt32).cum_sum(reverse=True).over(key) == 0)  # trailing
            )
        )
        return flagged.filter(~redundant).drop("_changed")

    @staticmethod
    def _rewrite(records: pl.DataFrame, changed: pl.DataFrame, dropped_rows: pl.Series) -> pl.DataFrame:
        """``records`` without the rejected ones, with the changed messages' contents replaced."""
        dtype = records.schema["messages"]
        fields = [f.name for f in dtype.inner.fields]  # type: ignore[attr-defined]
        indexed = records.with_row_index("_row")
        touched = changed["_row"].unique()
        rebuilt = (
            indexed.filter(pl.col("_row").is_in(touched.implode()))
            .select(
                "_row",
                "messages",
                pl.col("messages").list.eval(pl.int_range(pl.len(), dtype=pl.Int32)).alias("message_index"),
            )
            .explode(["messages", "message_index"], empty_as_null=False, keep_nulls=False)
            .unnest("messages")
            .join(changed.select("_row", "message_index", "new"), on=["_row", "message_index"], how="left")
            .with_columns(pl.coalesce("new", "content").alias("content"))
            .group_by("_row", maintain_order=True)
            .agg(pl.struct(fields).alias("_messages"))
        )
        return (
            indexed.join(rebuilt, on="_row", how="left", maintain_order="left")
            .with_columns(pl.coalesce(pl.col("_messages").cast(dtype), "messages").alias("messages"))
            .filter(~pl.col("_row").is_in(dropped_rows.implode()))
            .drop("_messages", "_row")
        )
