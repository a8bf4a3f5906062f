"""Formatting junk, fence-aware: HTML, special tokens, mojibake, markdown artifacts, control chars, spaces.

Text outside ``` fences is prose; fenced code and code tasks are touched only where leaving the
text as it is would teach a model something wrong (special tokens, control characters) and at
the message's ends.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterable
from typing import Literal, Protocol

import ftfy
import polars as pl

from thresher.cleaning.batch import FENCE, CleanBatch, replace_where
from thresher.cleaning.html import (
    html_to_text,
    is_whole_page,
    main_content,
    simple_inline_html,
    simple_inline_to_text,
)
from thresher.config import FormattingConfig

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


def _any_of(literals: Iterable[str]) -> str:
    """A regex for "one of ``literals`` occurs": the regex crate scans for a literal alternation with
    a SIMD prefilter, several times faster than ``str.contains_any`` or or-ed ``str.contains``."""
    return "|".join(map(re.escape, literals))


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
    """HTML in prose becomes structured text (thresher.cleaning.html), whole pages their main content.

    Only prose segments that contain real tags are touched (``LOOKS_LIKE_HTML``). Those that are
    simple inline HTML (``simple_inline_html``: paragraphs, <br>, emphasis, entities) are rewritten
    by column-wide regexes, with html_to_text's exact output and none of its per-segment parse; the
    others (lists, tables, code, links, pages, odd nesting) get the tree walk, one Python call each,
    since that is what keeps their structure. A segment next to a fence keeps a blank line on that
    side so the fence stays on its own line.
    """

    counter = "format.html_stripped"

    def __init__(self, main: Literal["auto", "always", "never"] = "auto") -> None:
        self.main = main

    def mask(self) -> pl.Expr:
        return pl.col("_prose") & pl.col("text").str.contains(LOOKS_LIKE_HTML)

    def convert(self, markup: str) -> str:
        """One segment's HTML as text, main content only for pages (``main``)."""
        page = self.main == "always" or (self.main == "auto" and is_whole_page(markup))
        return main_content(markup) if page else html_to_text(markup)

    def __call__(self, segments: pl.DataFrame, mask: pl.Series) -> tuple[pl.DataFrame, pl.Series]:
        idx = segments.select(pl.arg_where(pl.lit(mask))).to_series()
        if idx.is_empty():
            return segments, mask
        sub = segments[idx].select("text", "_first", "_last")
        # Simple inline HTML (most of it) is rewritten by regexes over the column; the rest, and
        # everything when pages may need main-content extraction, is parsed segment by segment.
        if self.main == "always":
            simple = pl.repeat(False, sub.height, dtype=pl.Boolean, eager=True)
        else:
            simple = simple_inline_html(sub.get_column("text"))
        sub = replace_where(sub, "text", pl.lit(simple), simple_inline_to_text(pl.col("text")))
        parsed = pl.col("text").map_elements(self.convert, return_dtype=pl.String)
        sub = replace_where(sub, "text", ~pl.lit(simple), parsed)
        blank = pl.lit("\n\n")
        around = (
            pl.when(pl.col("_first")).then(pl.lit("")).otherwise(blank)
            + pl.col("text")
            + pl.when(pl.col("_last")).then(pl.lit("")).otherwise(blank)
        )
        before = segments.get_column("text")
        text = before.clone().scatter(idx, sub.select(around).to_series())
        return segments.with_columns(text), text != before


# Special tokens of the common chat templates and tokenizers, by family. Each is a literal except
# the role headers, which go with the role name they carry (``<|start_header_id|>user<|end_header_id|>``).
SPECIAL_TOKENS: dict[str, tuple[str, ...]] = {
    "chatml (OpenAI, Qwen, Yi)": ("<|im_start|>", "<|im_end|>", "<|im_sep|>"),
    "gpt / tiktoken": ("<|endoftext|>", "<|endofprompt|>", "<|pad|>"),
    "llama 3": (
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
        "<|eom_id|>",
        "<|python_tag|>",
        "<|finetune_right_pad_id|>",
    ),
    "phi-3 / zephyr": ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
    "llama 2 / mistral (sentencepiece)": ("<s>", "</s>", "<unk>", "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"),
    "mistral tools": (
        "[AVAILABLE_TOOLS]",
        "[/AVAILABLE_TOOLS]",
        "[TOOL_CALLS]",
        "[TOOL_RESULTS]",
        "[/TOOL_RESULTS]",
        "[SYSTEM_PROMPT]",
        "[/SYSTEM_PROMPT]",
    ),
    "gemma": ("<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<pad>"),
    "fill-in-the-middle (starcoder, qwen, codegemma)": (
        "<|fim_prefix|>",
        "<|fim_middle|>",
        "<|fim_suffix|>",
        "<|fim_pad|>",
        "<fim_prefix>",
        "<fim_middle>",
        "<fim_suffix>",
        "<fim_pad>",
        "<|file_sep|>",
        "<|repo_name|>",
    ),
    "deepseek (full-width bars)": (
        "<｜begin▁of▁sentence｜>",
        "<｜end▁of▁sentence｜>",
        "<｜User｜>",
        "<｜Assistant｜>",
        "<｜fim▁begin｜>",
        "<｜fim▁hole｜>",
        "<｜fim▁end｜>",
    ),
}
# Role headers first (they must win over their own opening token), then literals, longest first.
_ROLE_HEADERS = (
    r"<\|start_header_id\|>[^<>\n]{0,40}<\|end_header_id\|>\n{0,2}",
    r"<\|im_start\|>(?:[A-Za-z_]{1,20}\n)?",
    r"<start_of_turn>(?:[A-Za-z_]{1,20}\n)?",
    r"<\|reserved_special_token_[0-9]{1,3}\|>",
)
_TOKEN_LITERALS = sorted(
    {t for family in SPECIAL_TOKENS.values() for t in family}, key=lambda t: (-len(t), t)
)
_SPECIAL_TOKEN = "|".join([*_ROLE_HEADERS, *(re.escape(t) for t in _TOKEN_LITERALS)])
# What any special token starts with (Aho-Corasick prefilter).
_TOKEN_STARTS = sorted(
    {"<|", "<｜", "<<SYS>>", "<</SYS>>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]"}
    | {"[TOOL_", "[/TOOL_", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "<s>", "</s>", "<unk>", "<bos>", "<eos>"}
    | {"<pad>", "<start_of_turn>", "<end_of_turn>", "<fim_"}
)


class SpecialTokenRemover:
    """Chat-template and special tokens (``SPECIAL_TOKENS``) are removed everywhere, code included.

    A tokenizer maps such a string in training text to the control token itself, so a model would
    learn to end turns mid-answer. Runs after the HTML step, which has already turned HTML
    strikethrough ``<s>..</s>`` into ``~~..~~``. In code this also empties string literals such as
    ``vocab = ["<pad>", "<unk>"]``: the price of never training on a literal special token.
    """

    counter = "format.special_tokens"

    def mask(self) -> pl.Expr:
        return pl.col("text").str.contains_any(_TOKEN_STARTS)

    def __call__(self, segments: pl.DataFrame, mask: pl.Series) -> tuple[pl.DataFrame, pl.Series]:
        before = segments.get_column("text")
        segments = replace_where(
            segments, "text", pl.lit(mask), pl.col("text").str.replace_all(_SPECIAL_TOKEN, "")
        )
        return segments, _changed(segments, before)


# UTF-8 read as cp1252 or latin-1: a lead byte (Â-ß, à-ï, ð-ô) shown as a letter followed by its
# continuation bytes (0x80-0xBF) shown as latin-1 controls/symbols or cp1252's punctuation.
_CONTINUATION = "[\u0080-\u00bf€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ]"
MOJIBAKE = (
    f"[\u00c2-\u00df]{_CONTINUATION}|[\u00e0-\u00ef]{_CONTINUATION}{{2}}|[\u00f0-\u00f4]{_CONTINUATION}{{3}}"
)
# ftfy with every fix that can change legitimate text off: no HTML unescaping (the HTML step owns
# that), no normalization (NFC would rewrite decomposed accents), no quote uncurling, no ligature
# or full-width folding (real CJK text uses full-width forms), line breaks and controls left to
# the control-character step.
_FTFY = ftfy.TextFixerConfig(
    unescape_html=False,
    remove_terminal_escapes=False,
    fix_latin_ligatures=False,
    fix_character_width=False,
    uncurl_quotes=False,
    fix_line_breaks=False,
    remove_control_chars=False,
    normalization=None,
    explain=False,
)


def fix_mojibake(text: str) -> str:
    """``text`` with mojibake decoded back (ftfy, conservative settings: see ``_FTFY``)."""
    return ftfy.fix_text(text, _FTFY)


# Characters whose mojibake is common: Latin-1 Supplement, Latin Extended-A, General Punctuation's
# dashes, quotes, ellipsis and bullets, and the other characters of cp1252 (ƒ ˆ ˜ € ™).
_TABLE_CHARS = (*range(0xA0, 0x180), *range(0x2010, 0x203B), 0x192, 0x2C6, 0x2DC, 0x20AC, 0x2122)
# Where a table entry must decode as ftfy decodes it: ftfy leaves some sequences alone in some
# contexts (``IRMÃ…`` may be Portuguese followed by an ellipsis), and those stay ftfy's to judge.
_TABLE_PROBES = ("{}", "a{}b", "A{}B", "x {} y", "WORD{} WORD", "1{}2")
# What ftfy repairs beyond the table, found in a segment after the table pass: mojibake the table
# does not know (double encodings, other scripts, emoji), C1 controls, U+FFFD from lossy decoding,
# and UTF-8 whose 0xA0 byte became a space (``Ã `` for "à ", ftfy's ``restore_byte_a0``).
_AFTER_TABLE = (
    f"{MOJIBAKE}|[\u0080-\u009f\ufffd]|[\u00c2\u00c3\u00c5\u00ce\u00d0\u00d9\u00e0-\u00e3\u00f0] "
    f"|[\u00e0-\u00e3\u00f0]{_CONTINUATION}{{1,2}} "
)


def _byte_readings(byte: int) -> set[str]:
    """The character ``byte`` shows as in latin-1 and, where it defines one, cp1252."""
    try:
        return {chr(byte), bytes([byte]).decode("cp1252")}
    except UnicodeDecodeError:
        return {chr(byte)}


@functools.cache
def mojibake_table() -> dict[str, str]:
    """Mojibake sequence -> character, for ``_TABLE_CHARS``, built once.

    A character's UTF-8 bytes read one by one as latin-1 or cp1252 (so ``â€\x9d``, cp1252 with
    latin-1 for the byte cp1252 lacks, is there too), kept where ftfy gives the same character in
    every ``_TABLE_PROBES`` context. No entry is a prefix of another (each is a whole UTF-8
    sequence), so longest-first leftmost matching is unambiguous.
    """
    table: dict[str, str] = {}
    for char in map(chr, _TABLE_CHARS):
        for seq in map("".join, itertools.product(*map(_byte_readings, char.encode()))):
            if all(fix_mojibake(p.format(seq)) == p.format(char) for p in _TABLE_PROBES):
                table[seq] = char
    return dict(sorted(table.items(), key=lambda kv: -len(kv[0])))


class MojibakeRepairer:
    """Mojibake in prose (``donâ€™t``, ``CafÃ©``) is decoded back: a table first, ftfy for the rest.

    Only segments the ``MOJIBAKE`` regex flags are touched; clean non-ASCII text never matches it.
    The common sequences (accents, quotes, dashes, €) are replaced over the whole column with one
    Aho-Corasick pass (``mojibake_table``), with the result ftfy would give; ftfy (per segment,
    about 100 µs each) repairs instead the segments where the table leaves something it might
    repair (``_AFTER_TABLE``). Code is left as it is: mojibake there may be a test fixture.
    """

    counter = "format.mojibake"

    def mask(self) -> pl.Expr:
        # Mojibake is non-ASCII: comparing lengths is ten times cheaper than ``MOJIBAKE`` on all text.
        return pl.col("_prose") & (pl.col("text").str.len_bytes() != pl.col("text").str.len_chars())

    def __call__(self, segments: pl.DataFrame, mask: pl.Series) -> tuple[pl.DataFrame, pl.Series]:
        idx = segments.select(pl.arg_where(pl.lit(mask))).to_series()
        idx = idx.filter(segments[idx].select(pl.col("text").str.contains(MOJIBAKE)).to_series())
        if idx.is_empty():
            return segments, pl.repeat(False, segments.height, dtype=pl.Boolean, eager=True)
        sub = segments[idx].select(
            "text", pl.col("text").str.replace_many(mojibake_table(), leftmost=True).alias("table")
        )
        # ftfy judges a sequence by its neighbours, so where it is needed it gets the original text.
        fixed = pl.col("text").map_elements(fix_mojibake, return_dtype=pl.String).alias("table")
        sub = replace_where(sub, "table", pl.col("table").str.contains(_AFTER_TABLE), fixed)
        before = segments.get_column("text")
        after = before.clone().scatter(idx, sub.get_column("table"))
        return segments.with_columns(after), after != before


# Markdown artifacts of exporters and scrapers, in prose (see ``MarkdownRepairer``).
_EMPTY_LINK = r"!?\[[ \t]*\]\([^()\n]*\)"
# An inline code span or an escaped backslash is kept as it is; ``\_``, ``\*``, ``\#`` lose the backslash.
_ESCAPE = r"(`[^`\n]*`|\\\\)|\\([_*#])"
_ESCAPED_NUMBER = r"(?m)^([ \t]*[0-9]{1,9})\\\."
_REFERENCE_DEFINITION = re.compile(
    r" {0,3}\[([^\]\n]+)\]:[ \t]*<?((?:https?://|www\.|/)[^\s>]*)>?"
    r"(?:[ \t]+(?:\"[^\"\n]*\"|'[^'\n]*'|\([^)\n]*\)))?[ \t]*"
)
_HAS_REFERENCE_DEFINITION = r"(?m)^ {0,3}\[[^\]\n]+\]:[ \t]*<?(?:https?://|www\.|/)"
# ``[text][label]``, ``[text][]`` and the shortcut ``[label]`` (not followed by a link or definition).
_REFERENCE_USE = re.compile(r"(!?)\[([^\]\n]+)\](?:\[([^\]\n]*)\]|(?![\[(:]))")
# Invisible characters: soft hyphens and word joiners always go; zero-width (non-)joiners only
# after an ASCII character (after an emoji or in Persian and Indic scripts they are meaningful).
_INVISIBLE = "[\u00ad\u2060]"
_STRAY_JOINER = r"([\x00-\x7f])[\u200c\u200d]+"
_ESCAPED_QUOTE = r"(?m)^[ \t]*&gt;"
_BASIC_ENTITIES = {"&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": '"', "&#39;": "'"}
# Literals one of the rules needs, for the mask.
_MARKDOWN_NEEDS = [
    "[](",
    "[ ](",
    "\\_",
    "\\*",
    "\\#",
    "\\.",
    "]:",
    "\u00ad",
    "\u2060",
    "\u200c",
    "\u200d",
    "&gt;",
]


def inline_references(text: str) -> str:
    """Reference-style links (``[text][1]`` with a ``[1]: url`` line) become inline ``[text](url)``.

    The definitions of the labels used are dropped, the others kept. Per text, on the (rare)
    segments that have a definition line.
    """
    lines = text.split("\n")
    definitions = [_REFERENCE_DEFINITION.fullmatch(line) for line in lines]
    urls = {m.group(1).strip().lower(): m.group(2) for m in definitions if m}
    used: set[str] = set()

    def link(m: re.Match[str]) -> str:
        key = (m.group(3) or m.group(2)).strip().lower()
        if key not in urls:
            return m.group(0)
        used.add(key)
        return f"{m.group(1)}[{m.group(2)}]({urls[key]})"

    linked = [
        line if d else _REFERENCE_USE.sub(link, line) for line, d in zip(lines, definitions, strict=True)
    ]
    kept = [
        line
        for line, d in zip(linked, definitions, strict=True)
        if not (d and d.group(1).strip().lower() in used)
    ]
    return "\n".join(kept)


class MarkdownRepairer:
    r"""Markdown artifacts in prose that scraped and exported chat data carry; fenced code is never touched.

    - empty links and images ``[](url)`` / ``![](url)`` (an icon or anchor whose text was lost);
    - exporter backslash escapes ``\_``, ``\*``, ``\#`` and ``1\.`` (not inside inline code, and not
      ``\[`` / ``\(``, which are LaTeX math delimiters);
    - reference-style links turned inline (``inline_references``);
    - soft hyphens, word joiners and stray zero-width joiners (``_STRAY_JOINER``);
    - HTML-escaped text: a segment whose lines start with ``&gt;`` quote markers was escaped as a
      whole, so its basic entities are unescaped.
    """

    counter = "format.markdown"

    def mask(self) -> pl.Expr:
        return pl.col("_prose") & pl.col("text").str.contains(_any_of(_MARKDOWN_NEEDS))

    def __call__(self, segments: pl.DataFrame, mask: pl.Series) -> tuple[pl.DataFrame, pl.Series]:
        idx = segments.select(pl.arg_where(pl.lit(mask))).to_series()
        if idx.is_empty():
            return segments, mask
        sub = segments[idx].select("text")
        text = pl.col("text")
        rules = [
            (text.str.contains_any(["[](", "[ ]("]), text.str.replace_all(_EMPTY_LINK, "")),
            (text.str.contains_any(["\\_", "\\*", "\\#"]), text.str.replace_all(_ESCAPE, "${1}${2}")),
            (text.str.contains("\\.", literal=True), text.str.replace_all(_ESCAPED_NUMBER, "${1}.")),
            (
                text.str.contains(_HAS_REFERENCE_DEFINITION),
                text.map_elements(inline_references, return_dtype=pl.String),
            ),
            (text.str.contains(_INVISIBLE), text.str.replace_all(_INVISIBLE, "")),
            (text.str.contains_any(["\u200c", "\u200d"]), text.str.replace_all(_STRAY_JOINER, "${1}")),
            (
                text.str.contains(_ESCAPED_QUOTE),
                text.str.replace_many(list(_BASIC_ENTITIES), list(_BASIC_ENTITIES.values())),
            ),
        ]
        for needs, rewrite in rules:
            sub = replace_where(sub, "text", needs, rewrite)
        before = segments.get_column("text")
        after = before.clone().scatter(idx, sub.get_column("text"))
        return segments.with_columns(after), after != before


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
    # (what must occur for the rule to change anything, the rewrite), for prose segments. The needs
    # are short fixed-length regexes: their union scans four times faster than one of literals.
    _PROSE_RULES: tuple[tuple[str, str, str], ...] = (
        ("\u00a0", "\u00a0", " "),
        ("[ \t]{2}", r"(\S)[ \t]{2,}", "${1} "),
        ("[ \t]\n", r"[ \t]+\n", "\n"),
        ("\n{4}", r"\n{4,}", "\n\n"),
    )

    @staticmethod
    def _ends() -> pl.Expr:
        # First/last character only (a ``\s$`` regex would scan the whole text).
        text = pl.col("text")
        first = pl.col("_first") & text.str.slice(0, 1).str.contains(r"\s")
        last = pl.col("_last") & text.str.slice(-1).str.contains(r"\s")
        return first | last

    def mask(self) -> pl.Expr:
        interior = pl.col("text").str.contains("|".join(needs for needs, _, _ in self._PROSE_RULES))
        return (pl.col("_prose") & interior) | self._ends()

    def __call__(self, segments: pl.DataFrame, mask: pl.Series) -> tuple[pl.DataFrame, pl.Series]:
        idx = segments.select(pl.arg_where(pl.lit(mask))).to_series()
        if idx.is_empty():
            return segments, mask
        sub = segments[idx]
        before = sub.get_column("text")
        for needs, regex, replacement in self._PROSE_RULES:
            rewrite = pl.col("text").str.replace_all(regex, replacement)
            sub = replace_where(sub, "text", pl.col("_prose") & pl.col("text").str.contains(needs), rewrite)
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

    Order matters: HTML first (it turns ``<s>`` strikethrough into ``~~`` and may decode escaped
    tokens or mojibake), then special tokens, mojibake, markdown, control characters, whitespace.
    Every step's mask is computed in one ``select`` (Polars runs them in parallel); a segment
    changed by an earlier step is re-examined by the later ones (their masks are evaluated again on it). When the HTML step writes a code
    fence (from ``<pre>``) the messages are cut again, so that later steps see that code as code.
    """

    COUNTERS = (
        "format.html_stripped",
        "format.special_tokens",
        "format.mojibake",
        "format.markdown",
        "format.control_chars",
        "format.whitespace",
    )

    def __init__(self, strip_html: bool, formatting: FormattingConfig | None = None) -> None:
        formatting = formatting or FormattingConfig()
        enabled: list[tuple[bool, FormatStep]] = [
            (strip_html, HtmlToText(formatting.main_content)),
            (formatting.special_tokens, SpecialTokenRemover()),
            (formatting.mojibake, MojibakeRepairer()),
            (formatting.markdown, MarkdownRepairer()),
        ]
        self.steps: list[FormatStep] = [step for on, step in enabled if on]
        self.steps += [ControlCharRemover(), WhitespaceNormalizer()]

    def __call__(self, batch: CleanBatch) -> None:
        for counter in self.COUNTERS:
            batch.counters[counter] = 0
        segments = _segments(batch.messages)
        masks = self._masks(segments, 0)
        touched = pl.repeat(False, segments.height, dtype=pl.Boolean, eager=True)
        for i, step in enumerate(self.steps):
            segments, hit = step(segments, masks.get_column(str(i)) | _recheck(step, segments, touched))
            changed = segments.get_column("_m").filter(hit)
            batch.counters[step.counter] = changed.n_unique()
            touched = touched | hit
            if segments.get_column("text").filter(hit).str.contains(FENCE, literal=True).any():
                batch.messages = batch.messages.with_columns(_join_segments(segments))
                changed = segments.get_column("_m").filter(touched).unique()
                segments = _segments(batch.messages)
                touched = segments.get_column("_m").is_in(changed.implode())
                masks = self._masks(segments, i + 1)
        batch.messages = batch.messages.with_columns(_join_segments(segments))

    def _masks(self, segments: pl.DataFrame, start: int) -> pl.DataFrame:
        """The masks of steps ``start`` onwards (columns named by step index)."""
        return segments.select([step.mask().alias(str(i)) for i, step in enumerate(self.steps) if i >= start])


def _recheck(step: FormatStep, segments: pl.DataFrame, touched: pl.Series) -> pl.Series:
    """``step``'s mask on the segments an earlier step changed (their text is not what the mask saw)."""
    idx = touched.arg_true()
    hit = pl.repeat(False, segments.height, dtype=pl.Boolean, eager=True)
    if idx.is_empty():
        return hit
    return hit.scatter(idx, segments[idx].select(step.mask()).to_series())
