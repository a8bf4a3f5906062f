"""Formatting junk: HTML, control characters and whitespace, fence-aware (code is left alone)."""

from __future__ import annotations

import html
from typing import Protocol

import polars as pl

from thresher.cleaning.batch import FENCE, CleanBatch, replace_where

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
        segments = replace_where(segments, "text", pl.col("_html"), text)
        segments = self._unescape(segments)
        # HTML source indentation is meaningless once the tags are gone.
        segments = replace_where(
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
        segments = replace_where(
            segments,
            "text",
            has_entity & rare,
            pl.col("text").map_elements(html.unescape, return_dtype=pl.String),
        )
        return replace_where(
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
        segments = replace_where(segments, "text", pl.lit(mask), text)
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
            sub = replace_where(sub, "text", pl.col("_prose") & self._needs(literals), rewrite)
        text = pl.col("text")
        ends = (
            pl.when(pl.col("_first") & pl.col("_prose"))
            .then(text.str.strip_chars_start())
            .when(pl.col("_first"))
            .then(text.str.replace(r"^(?:[ \t]*\n)+", ""))
            .otherwise(text)
        )
        ends = pl.when(pl.col("_last")).then(ends.str.strip_chars_end()).otherwise(ends)
        sub = replace_where(sub, "text", self._ends(), ends)
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
