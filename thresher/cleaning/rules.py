"""Quality rules: each named, configurable, with a detail sentence that quotes no record text.

A rule reads the per-record feature frame (``_live_features``: ``_row``, ``task``, ``response``
= the last assistant message, ``prompt`` = the user turns, ...) and returns the rows it rejects as
``_row``, ``rule``, ``detail``. Most rules have one name; a rule group (``DocumentRules``) measures
once and charges each record to the first of its criteria that fires, so the ledger names exactly
which criterion. Every rule name in ``RULE_DESCRIPTIONS`` has a counter ``quality.<name>``.
"""

from __future__ import annotations

import importlib.util
import json
import re
import string
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import polars as pl

from thresher.cleaning.batch import FENCE, CleanBatch, replace_where
from thresher.cleaning.langid import confident_languages, language_probability
from thresher.config import CopyInstructionConfig, DocumentRulesConfig, QualityConfig, UnsafeWordsConfig

# One sentence per ledger rule name, for reviewers (shown next to the counts in the UI).
RULE_DESCRIPTIONS: dict[str, str] = {
    "empty_after_cleaning": "Every message of the record is empty after formatting cleanup.",
    "empty_response": "The record has no assistant message, or its last one is empty.",
    "response_too_short": "The assistant response is shorter than clean.quality.min_response_chars.",
    "response_too_long": "The assistant response is longer than clean.quality.max_response_chars.",
    "refusal": "The assistant response opens with a refusal or an AI disclaimer.",
    "placeholder_text": "The response holds placeholder text: lorem ipsum, [insert X], an unfilled "
    "{slot}, or a TODO/TBD stub instead of an answer.",
    "truncated_response": "The assistant response ends mid-sentence or leaves a code fence open.",
    "repetitive": "Too many of the response's lines repeat an earlier line.",
    "copies_instruction": "The response echoes the prompt: equal to it, contained in it, or mostly made "
    "of its word n-grams.",
    "gopher_word_count": "Gopher: the response has more words than documents.max_words.",
    "gopher_mean_word_length": "Gopher: the mean word length of a long response is outside 3..10.",
    "gopher_symbol_ratio": "Gopher: too many '#' symbols or ellipses per word in a long response.",
    "gopher_bullet_lines": "Gopher: nearly every line of a long response starts with a bullet.",
    "gopher_ellipsis_lines": "Gopher: too many lines of a long response end with an ellipsis.",
    "gopher_alpha_words": "Gopher: too few words of a long response contain a letter.",
    "gopher_stop_words": "Gopher: a long response has almost none of the common stop words.",
    "c4_javascript_notice": "C4: the response holds a browser notice such as 'JavaScript must be enabled'.",
    "c4_curly_brace": "C4: a long response has a curly brace in its prose (outside any code).",
    "c4_too_few_sentences": "C4: a long response has fewer sentence ends than documents.min_sentences.",
    "unsafe_content": "The response has more unsafe-word-list matches than unsafe_words.max_hits.",
    "wrong_language": "The record's text is identified as another language than the dataset's.",
}

_REJECTED_SCHEMA = {"_row": pl.UInt32, "rule": pl.String, "detail": pl.String}
_CODE_BLOCK = r"(?s)```.*?(?:```|\z)"  # a fenced block, or an unclosed fence to the end
_INLINE_CODE = r"`[^`\n]+`"
# Lines of unfenced code or JSON: they open with a bracket or a quote, or end with an opening
# brace, a comma or a semicolon. Template slots and stray braces are only looked for elsewhere.
_CODE_LIKE_LINE = r"(?m)^[ \t]*[{}\[\]\"'].*$|^.*[{,;][ \t]*$"


def _streamed(frame: pl.LazyFrame) -> pl.DataFrame:
    """Collect on the streaming engine: it splits the rows over the cores, so that even a single
    regex over a column runs in parallel (the in-memory engine runs one expression on one core)."""
    return frame.collect(engine="streaming")


def _with_measures(frame: pl.DataFrame, *measures: pl.Expr) -> pl.DataFrame:
    """``frame.with_columns(*measures)``, measured on the streaming engine; only the new columns are
    collected (passing the text columns through it would copy them)."""
    new = _streamed(frame.lazy().select("_row", *measures))
    if not new.get_column("_row").equals(frame.get_column("_row")):  # never seen: order not kept
        new = frame.select("_row", *measures)
    return frame.with_columns(new.drop("_row").get_columns())


class QualityRule(Protocol):
    """Named rule(s): the rows of ``features`` rejected, as ``_row``, ``rule`` (one of ``names``), ``detail``."""

    names: tuple[str, ...]

    def evaluate(self, features: pl.DataFrame) -> pl.DataFrame: ...


@dataclass
class ExprRule:
    """A rule that is one boolean expression and one detail expression over the features."""

    name: str
    fires: pl.Expr
    detail: pl.Expr

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name,)

    def evaluate(self, features: pl.DataFrame) -> pl.DataFrame:
        return features.filter(self.fires.fill_null(False)).select(
            "_row", pl.lit(self.name).alias("rule"), self.detail.alias("detail")
        )


def _response_len() -> pl.Expr:
    return pl.col("response").str.len_chars()


def _skipped(tasks: list[str]) -> pl.Expr:
    return pl.col("task").is_in(tasks).fill_null(False)


def _prose(text: pl.Expr) -> pl.Expr:
    """``text`` with fenced code blocks cut out (each becomes a line break)."""
    return text.str.replace_all(_CODE_BLOCK, "\n")


def _outside_code(text: pl.Expr) -> pl.Expr:
    """Prose without inline code spans and code-like lines: where a brace cannot be code or JSON."""
    return _prose(text).str.replace_all(_INLINE_CODE, " ").str.replace_all(_CODE_LIKE_LINE, "")


# --- word boundaries at ASCII speed ---------------------------------------------------------------
# The regex engine runs a Unicode word boundary (\b) on its fast DFA only while the text is ASCII:
# at the first other byte it falls back to an NFA, which walks every branch of an alternation at
# every position (a 400-term word list: ~3 ms per record, thousands of times slower). A regex that reads
# the text only through literal characters (case-sensitive or not), \s, \w, \W, \b and ``.``
# matches the same spans in a copy where every other character is replaced by one ASCII character
# of the same kind. That copy is ASCII except for the characters that equal a literal.
# A regex that only tests for a match (str.contains) needs no \b at all: beside a word character,
# \b is a non-word character or an end of the text on the other side, which the regex may consume:
# (?:^|\W) before a word, (?:\W|$) after it. The placeholder, truncation and stop-word screens do so.

_WHITESPACE_FILLERS = " \t\x0b\x0c\r"  # never \n: ``.`` and (?m) anchors treat it apart
_WORD_FILLERS = "_" + string.digits + string.ascii_letters
_OTHER_FILLERS = (
    "".join(map(chr, [*range(0x00, 0x09), *range(0x0E, 0x20), 0x7F])) + "!\"#%&'()*+,-./:;<=>?@[]^`{|}~"
)


def _class_of(chars: Iterable[str]) -> str:
    return "".join(f"\\x{{{ord(c):X}}}" for c in sorted(set(chars)))


@lru_cache(maxsize=32)
def _case_equivalents(literals: frozenset[str]) -> frozenset[str]:
    """Every character that a case-insensitive regex matches to one of ``literals``, as the regex
    engine itself decides (simple case folding: "k" also matches the Kelvin sign, "s" the long s)."""
    if not literals:
        return frozenset()
    every = "".join(map(chr, range(0xD800))) + "".join(map(chr, range(0xE000, 0x110000)))
    found = pl.Series([every]).str.extract_all(f"(?i)[{_class_of(literals)}]").item()
    return frozenset(found.to_list())


def ascii_word_view(literals: Iterable[str]) -> Callable[[pl.Expr], pl.Expr]:
    r"""``text`` -> the same text where each non-ASCII character that matches no character of the
    strings ``literals`` (case-insensitively) becomes an ASCII space if it is whitespace, an ASCII
    word character if it is a word character, and an ASCII symbol otherwise; the replacements
    match no literal either.

    One character for one character of the same kind: a regex over ``literals``, ``\s``, ``\w``,
    ``\W``, ``\b`` and ``.`` (no ``\d``, no other class) finds the same matches in the view as in
    the text, so counts and decisions are unchanged, at ASCII speed. Identity when no fillers are
    left (a list that uses every ASCII character).
    """
    replacements = _view_replacements(frozenset(c for literal in literals for c in literal))
    if replacements is None:
        return lambda text: text

    def view(text: pl.Expr) -> pl.Expr:
        for pattern, filler in replacements:
            text = text.str.replace_all(pattern, filler)
        return text

    return view


@lru_cache(maxsize=32)
def _view_replacements(literals: frozenset[str]) -> tuple[tuple[str, str], ...] | None:
    matched = _case_equivalents(literals)

    def filler(candidates: str) -> str | None:
        return next((c for c in candidates if c not in matched), None)

    fillers = (filler(_WHITESPACE_FILLERS), filler(_WORD_FILLERS), filler(_OTHER_FILLERS))
    if None in fillers:
        return None
    keep = "\\x00-\\x7F" + _class_of(c for c in matched if ord(c) > 0x7F)
    patterns = (f"[\\s--[{keep}]]", f"[\\w--[{keep}]]", f"[^{keep}]")
    return tuple(zip(patterns, fillers, strict=True))


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


def _families(column: pl.Expr, patterns: dict[str, str]) -> pl.Expr:
    """Name of the first family in ``patterns`` whose regex matches ``column`` (null if none)."""
    family = pl.lit(None, dtype=pl.String)
    for name, regex in reversed(patterns.items()):
        family = pl.when(column.str.contains(regex)).then(pl.lit(name)).otherwise(family)
    return family


def _any_of(patterns: dict[str, str]) -> str:
    return "|".join(f"(?:{regex})" for regex in patterns.values())


# Refusals and AI disclaimers at the start of the response, by family (the family name is what the
# ledger detail reports; the first family that matches names it). Curly apostrophes are common in
# model output. Specific families come before the generic "cannot" ones.
_A = "['’]"
_AI = (
    r"(?:AI|A\.I\.|artificial intelligence|(?:large |AI |text-based |computer-based )?language model|LLM|"
    r"AI (?:language )?model|AI assistant|AI chatbot|chatbot|virtual assistant|digital assistant|"
    r"machine learning model|computer program|text-based AI)"
)
_IM = rf"(?:I{_A}m|I am)"
_DONT = rf"(?:do not|don{_A}t|do n{_A}t)"
_CANT = rf"(?:cannot|can{_A}t|can not|am unable to|{_A}m unable to|am not able to|{_A}m not able to)"
REFUSAL_PATTERNS: dict[str, str] = {
    "as_an_ai": rf"(?i)^(?:(?:{_IM} )?sorry,? (?:but )?|unfortunately,? |however,? |well,? |honestly,? )?"
    rf"as an? {_AI}\b",
    "just_an_ai": rf"(?i)^{_IM} (?:just |only |merely |simply )?an? {_AI}\b",
    "no_personal_opinions": rf"(?i)^(?:as an? {_AI},? )?I {_DONT} (?:have|possess|hold|experience) "
    r"(?:any )?(?:personal |real |human |my own )?(?:opinions?|feelings|emotions|beliefs|preferences|"
    r"experiences|views|consciousness|a physical body|a body)\b",
    "knowledge_cutoff": r"(?i)^(?:as of my (?:last |latest |most recent )?(?:knowledge |training )?"
    r"(?:update|cutoff|cut-off|training)|my (?:knowledge|training)(?: data)? (?:cutoff|cut-off|only goes|"
    r"only extends|ends|is limited|is current|stops)|my knowledge (?:is|was) (?:last )?updated)",
    "no_realtime_access": rf"(?i)^I (?:{_DONT} have (?:the ability to access |access to |real-time access to"
    rf" |any access to )|{_CANT} (?:access|browse|search) )(?:the )?(?:real[- ]time|realtime|internet|web|"
    r"current|live|up[- ]to[- ]date|latest|external|today)",
    "apology_then_cannot": rf"(?i)^{_IM} (?:so |very |really )?sorry,? (?:but )?I (?:can{_A}t|cannot|won{_A}t|"
    rf"am (?:not able|unable)|{_A}m (?:not able|unable))",
    "apologize_then_cannot": rf"(?i)^I (?:apologi[sz]e|must apologi[sz]e),? (?:but )?I (?:can{_A}t|cannot|"
    rf"won{_A}t|am unable)",
    "sorry_cannot": rf"(?i)^Sorry,? (?:but )?I (?:can{_A}t|cannot|won{_A}t|am unable|{_A}m unable|"
    rf"{_A}m not able)",
    "cannot_help": rf"(?i)^I (?:cannot|can{_A}t|can not|won{_A}t|will not|am not able to|{_A}m not able to) "
    r"(?:help|assist|provide|comply|fulfill|do that|answer|create|generate|write|support)",
    "unable_to": rf"(?i)^{_IM} unable to",
}


class RefusalRule:
    """The response opens with a refusal or an AI disclaimer (anchored patterns: only its start is read)."""

    names = ("refusal",)
    _ANY = _any_of(REFUSAL_PATTERNS)

    def evaluate(self, features: pl.DataFrame) -> pl.DataFrame:
        hits = features.filter(pl.col("response").str.contains(self._ANY).fill_null(False))
        family = _families(pl.col("response"), REFUSAL_PATTERNS)
        return hits.select(
            "_row",
            pl.lit("refusal").alias("rule"),
            pl.format(
                "assistant response opens with a refusal or AI disclaimer (pattern family {})", family
            ).alias("detail"),
        )


# Placeholder families and what the detail says was found (a description, never the text itself).
# No \b (see "word boundaries at ASCII speed"): a word's boundary is a non-word character or an end
# of the text beside it; in a bracket, a first (or last) character of its contents that is not one.
_STUB_WORD = r"(?:todo|tbd|tba|xxx+|fixme|placeholder|to be (?:done|determined|added|written)|n/?a)"
PLACEHOLDER_PATTERNS: dict[str, tuple[str, str]] = {
    "stub_answer": (
        rf"(?i)^\W*(?:{_STUB_WORD}|(?:your )?answer (?:goes )?here)\W*$"
        rf"|(?i)^\W*(?:answer|response|output|solution|result)\s*:\s*(?:\.{{2,}}|…|_+|\?+|-+|{_STUB_WORD})?\W*$"
        r"|^\W*(?:TODO|TBD|FIXME)(?:\W|$)",
        "a stub instead of an answer (TODO, TBD, XXX or an empty 'Answer:')",
    ),
    "lorem_ipsum": (r"(?i)(?:^|\W)lorem\s+ipsum(?:\W|$)", "lorem ipsum filler text"),
    "bracket_placeholder": (
        r"(?i)[\[<](?:insert|enter|add|put|type|fill in|your)(?:[^\w\]\[<>\n][^\]\[<>\n]{0,59})?[\]>](?:[^(]|$)"
        r"|(?i)[\[<][^\]\[<>\n]{0,39}[^\w\]\[<>\n]here[\]>](?:[^(]|$)",
        "a bracketed placeholder such as [insert ...], [Your ...] or <... here>",
    ),
    # A slot opens after a space, a bracket, a quote or the start: LaTeX (\frac{a}{b}, x^{n}) and
    # code-like lines were cut out before this is read.
    "template_slot": (
        r"(?:^|[\s(\"'“:,])\{\{\s*[A-Za-z_][\w.]*\s*\}\}|(?:^|[\s(\"'“:,])\{[A-Za-z_][A-Za-z0-9_]*\}",
        "an unfilled template slot in curly braces outside code",
    ),
}
# Which text each family reads: the whole response for stubs, prose outside code for the others.
_PLACEHOLDER_TEXT = {
    "stub_answer": "response",
    "lorem_ipsum": "prose",
    "bracket_placeholder": "prose",
    "template_slot": "outside_code",
}


class PlaceholderRule:
    """The response holds placeholder text instead of content.

    Stubs (the whole answer is "TODO", "TBD", "XXX", "Answer: ...") are read in every task; lorem
    ipsum and bracketed placeholders ("[insert name here]", "[Your Name]", "<your answer here>")
    only in prose (fenced code cut out, code tasks skipped); template slots (``{name}``,
    ``{{variable}}``) only outside code spans and code-like lines, so code, JSON examples and
    LaTeX pass.
    """

    names = ("placeholder_text",)

    def evaluate(self, features: pl.DataFrame) -> pl.DataFrame:
        code = _skipped(["code"])
        texts = self._candidates(features).select(
            "_row",
            "response",
            pl.when(code).then(pl.lit("")).otherwise(_prose(pl.col("response"))).alias("prose"),
            pl.when(code).then(pl.lit("")).otherwise(_outside_code(pl.col("response"))).alias("outside_code"),
        )
        found = [
            pl.when(pl.col(_PLACEHOLDER_TEXT[name]).str.contains(regex)).then(pl.lit(name))
            for name, (regex, _) in PLACEHOLDER_PATTERNS.items()
        ]
        family = pl.coalesce(found)
        described = pl.coalesce(
            pl.when(family == name).then(pl.lit(text)) for name, (_, text) in PLACEHOLDER_PATTERNS.items()
        )
        detail = pl.format("assistant response contains placeholder text: {}", described)
        return ExprRule("placeholder_text", family.is_not_null(), detail).evaluate(texts)

    @staticmethod
    def _candidates(features: pl.DataFrame) -> pl.DataFrame:
        """The rows a family can match: the stub regexes are anchored (they read the start); the
        others need the start of their match in the response itself ("lorem", "[insert", "here]",
        "{{" or "{name"; cutting code out only puts line breaks or spaces between characters), which
        scans with a literal prefilter find fast. Only these rows are cut into prose and matched."""
        r = pl.col("response")
        maybe = r.str.contains(PLACEHOLDER_PATTERNS["stub_answer"][0]) | (
            ~_skipped(["code"])
            & (
                r.str.contains(r"(?i)lorem")
                | r.str.contains(r"(?i)[\[<](?:insert|enter|add|put|type|fill in|your)")
                | r.str.contains(r"(?i)here[\]>]")
                | r.str.contains(r"\{\{|\{[A-Za-z_]")
            )
        )
        return _streamed(features.lazy().filter(maybe.fill_null(False)))


# Characters a finished response may end with: sentence punctuation, closers, quotes, markdown
# emphasis and code fences, digits, percent, and symbols (emoji).
_FINISHED_END = r"^[.!?:;)\]}\"'`*>%0-9…。！？」』）】》”’»\p{So}\p{Sk}\p{Pe}\p{Pf}]$"
_LIST_OR_TABLE_LINE = r"^\s*(?:[-*+•]|[0-9]+[.)])\s|\|\s*$"
# Endings that only a cut-off sentence has: a comma, an opening bracket, an operator, or a function word.
# No \b (see "word boundaries at ASCII speed"); a word that ends the text ends on a boundary.
_CUT_END = (
    r"(?i)(?:[,(\[{/=+&-]|(?:^|\W)(?:the|a|an|and|or|but|of|to|with|for|in|on|at|by|from|that|which|who|is|"
    r"are|was|were|be|because|so|if|then|than|as|this|these|its|their|our|your|my))$"
)
_SENTENCE_BREAK = r"[.!?][\"'”’)\]]*\s+[\p{Lu}0-9]"


class TruncationRule:
    """The response ends mid-sentence, or leaves a code fence open.

    A response without final punctuation is flagged only when it is clearly prose that was cut:
    it ends with a comma, an opening bracket or a function word ("the", "and", ...), or it has
    finished sentences before its last one. Short answers ("Paris"), titles, lists, tables and
    answers ending with a closing code fence pass. Code and math tasks are not checked.
    """

    names = ("truncated_response",)
    tail_chars = 80

    def evaluate(self, features: pl.DataFrame) -> pl.DataFrame:
        r = pl.col("response")
        eligible = features.filter(~_skipped(["code", "math"]) & (r.str.len_bytes() > 0)).select(
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
        return ExprRule("truncated_response", open_fence | unfinished, detail).evaluate(suspects)


class RepetitionRule:
    """Too many of the response's lines repeat an earlier line (responses with >= 4 content lines).

    Lines without a letter or digit (``}``, ``---``, blank) are not counted: code and markdown
    repeat them legitimately.
    """

    names = ("repetitive",)

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
        return ExprRule("repetitive", fires, detail).evaluate(measured)


_ALNUM_RUN = r"[\p{L}\p{N}]+"  # a word of the normalized text
# An ASCII letter or digit followed by an ASCII character that is neither ("d," "s "): lowercasing
# keeps both what they are, so each is the end of a distinct word of the normalized text. Their count
# bounds its words from below, whatever the script (other scripts just make the bound weaker).
_ASCII_WORD_END = r"[0-9A-Za-z][\x00-\x2f\x3a-\x40\x5b-\x60\x7b-\x7f]"
_WORD_LADDER = (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)


def _normalized(text: pl.Expr) -> pl.Expr:
    """Lowercase words separated by single spaces: case, punctuation and spacing do not count."""
    return text.str.to_lowercase().str.replace_all(r"[^\p{L}\p{N}]+", " ").str.strip_chars()


class CopyInstructionRule:
    """The response copies or merely echoes the prompt (the record's user turns).

    Four tests on normalized text (lowercase words), the first that holds names the detail: equal;
    the whole prompt inside the response, making at least ``min_echo_fraction`` of its words ("You
    asked: ..."); the response contained in the prompt; more than ``max_shared_ngram_fraction`` of
    its word n-grams found in the prompt. The last two read only responses of at least
    ``min_words`` words, so that short answers that reuse the prompt's words (a name, a chosen
    option) pass. Code and math tasks are skipped by default: a fixed program or a restated
    equation copies the prompt legitimately.
    """

    names = ("copies_instruction",)

    def __init__(self, config: CopyInstructionConfig) -> None:
        self.config = config

    def evaluate(self, features: pl.DataFrame) -> pl.DataFrame:
        c = self.config
        measured = _streamed(
            self._candidates(features.filter(~_skipped(c.skip_tasks)))
            .select(
                "_row", _normalized(pl.col("response")).alias("r"), _normalized(pl.col("prompt")).alias("p")
            )
            .filter((pl.col("r") != "") & (pl.col("p") != ""))
            .with_columns(
                (pl.col("r").str.count_matches(" ", literal=True) + 1).alias("words"),
                (pl.col("p").str.count_matches(" ", literal=True) + 1).alias("prompt_words"),
            )
        )
        padded_r = pl.lit(" ") + pl.col("r") + pl.lit(" ")
        padded_p = pl.lit(" ") + pl.col("p") + pl.lit(" ")
        identical = pl.col("r") == pl.col("p")
        echo = (pl.col("prompt_words") >= c.min_echo_fraction * pl.col("words")) & padded_r.str.contains(
            padded_p, literal=True
        )
        contained = (pl.col("words") >= c.min_words) & padded_p.str.contains(padded_r, literal=True)
        measured = measured.with_columns(
            identical.alias("identical"), echo.alias("echo"), contained.alias("contained")
        )
        copied = pl.col("identical") | pl.col("echo") | pl.col("contained")
        # A response with more than twice the prompt's words could only be mostly the prompt's
        # n-grams by repeating them, which the deduped stage's repetition rules reject: not measured.
        overlap = self._shared_ngrams(
            measured.filter(
                ~copied
                & (pl.col("words") >= max(c.min_words, c.ngram))
                & (pl.col("prompt_words") >= c.ngram)
                & (pl.col("words") <= 2 * pl.col("prompt_words"))
            )
        )
        measured = measured.join(overlap, on="_row", how="left")
        fires = copied | (pl.col("shared") > c.max_shared_ngram_fraction)
        detail = (
            pl.when(pl.col("identical"))
            .then(pl.lit("assistant response equals the user prompt after normalization (case, punctuation)"))
            .when(pl.col("echo"))
            .then(
                pl.format(
                    "assistant response repeats the whole user prompt ({} of its {} words); minimum share "
                    "for an echo is {}",
                    pl.col("prompt_words"),
                    pl.col("words"),
                    pl.lit(c.min_echo_fraction),
                )
            )
            .when(pl.col("contained"))
            .then(pl.format("assistant response ({} words) is contained in the user prompt", pl.col("words")))
            .otherwise(
                pl.format(
                    "{} of the assistant response's {} word {}-grams also occur in the user prompt; "
                    "maximum is {}",
                    pl.col("shared").round(2),
                    pl.col("ngrams"),
                    pl.lit(c.ngram),
                    pl.lit(c.max_shared_ngram_fraction),
                )
            )
        )
        return ExprRule("copies_instruction", fires, detail).evaluate(measured)

    def _candidates(self, features: pl.DataFrame) -> pl.LazyFrame:
        """The rows a test can fire on: every test needs a response of at most
        max(2, 1 / min_echo_fraction) times the prompt's words (equal or contained: at most as many).

        The prompt's words are counted exactly (a cheap regex count: prompts are short); the
        response's are bounded from below without a count, by one regex that stops at the
        ``limit``-th word end (rounded up to a step of ``_WORD_LADDER``). Only responses proven
        longer than the limit are left out; the others are measured as before.
        """
        c = self.config
        counted = _with_measures(
            features.select("_row", "response", "prompt"),
            pl.col("prompt").str.to_lowercase().str.count_matches(_ALNUM_RUN).alias("pw"),
        )
        # Two words of slack for the float rounding of the echo share.
        limit = (pl.col("pw") * max(2.0, 1.0 / c.min_echo_fraction)).floor().cast(pl.Int64) + 2
        step = pl.lit(None, dtype=pl.Int64)
        for t in reversed(_WORD_LADDER):
            step = pl.when(limit <= t).then(pl.lit(t, dtype=pl.Int64)).otherwise(step)
        pattern = pl.concat_str(pl.lit(f"^(?s:.*?{_ASCII_WORD_END}){{"), step.cast(pl.String), pl.lit("}"))
        longer = pl.col("response").str.contains(pattern).fill_null(False)
        counted = _with_measures(counted, ((pl.col("pw") > 0) & ~longer).alias("keep"))
        return counted.lazy().filter("keep").drop("pw", "keep")

    def _shared_ngrams(self, texts: pl.DataFrame) -> pl.DataFrame:
        """``_row``, ``ngrams`` (the response's word n-grams) and ``shared`` (the share found in the prompt)."""
        n = self.config.ngram

        def words(column: str) -> pl.DataFrame:
            return texts.select("_row", pl.col(column).str.split(" ").alias("w")).explode("w")

        response_words, prompt_words = words("r"), words("p")
        # Words become integer ids (one categorical cast over both texts, so equal words get equal
        # ids): an n-gram is n id columns, compared without building n-gram strings.
        ids = pl.concat([response_words.get_column("w"), prompt_words.get_column("w")])
        ids = ids.cast(pl.Categorical).to_physical()
        keys = ["_row", *(f"w{k}" for k in range(n))]

        def grams(frame: pl.DataFrame, word_ids: pl.Series) -> pl.DataFrame:
            # Texts are contiguous after the explode: a plain shift, masked where it crosses texts.
            same_text = pl.col("_row").shift(-(n - 1)) == pl.col("_row")
            shifted = [pl.col("w").shift(-k).alias(f"w{k}") for k in range(n)]
            return (
                frame.with_columns(word_ids.alias("w"))
                .select(*shifted, "_row", same_text.alias("same"))
                .filter(pl.col("same"))
                .select(keys)
            )

        response = grams(response_words, ids.head(response_words.height))
        prompt = grams(prompt_words, ids.tail(prompt_words.height))
        found = response.join(prompt, on=keys, how="semi")
        return (
            response.group_by("_row")
            .len("ngrams")
            .join(found.group_by("_row").len("hits"), on="_row", how="left")
            .select("_row", "ngrams", (pl.col("hits").fill_null(0) / pl.col("ngrams")).alias("shared"))
        )


# Browser notices that only a scraped page has (C4 drops pages and lines that mention them).
_JAVASCRIPT_NOTICE = (
    r"(?i)javascript (?:must|needs to|has to|should) be (?:enabled|turned on)|(?:please |you must |you need to )?"
    r"(?:enable|turn on) javascript (?:in your browser|to (?:view|use|continue|see))|javascript is "
    r"(?:disabled|required|not enabled|currently disabled)|(?:site|page|app) requires javascript|"
    r"browser does(?: not|n't) support javascript"
)
_BULLET_LINE = r"(?m)^[^\S\n]*(?:[•●◦▪‣⁃]|[-*](?:[^\S\n]|$))"
_CONTENT_WORD = r"\S*[\p{L}\p{N}]\S*"
_ELLIPSIS = r"\.\.\.|…"
_SENTENCE_END = r"[.!?…。！？][\"'”’)\]*]*(?:\s|$)"
_HEADING_MARKER = r"(?m)^[ \t]*#{1,6}[ \t]"
_WORD_START = r"(?:^|\s)\S"  # one match per whitespace-separated word (as many as \S+, cheaper)
_LETTERLESS_START = r"(?:^|\s)[^\s\p{L}]"  # words starting with a non-letter: all those without one
_FIRST_LINE_BULLET = r"^\s*(?:[•●◦▪‣⁃]|[-*](?:\s|$))"  # the first non-blank line starts with a bullet


def _symbol_chars() -> pl.Expr:
    """The characters of the prose's tokens without a letter or digit."""
    return pl.col("prose").str.replace_all(_CONTENT_WORD, "").str.replace_all(r"\s+", "")


def _mean_length() -> pl.Expr:
    """Gopher's mean word length: characters of the words with a letter or digit, per such word."""
    return ((pl.col("non_space") - pl.col("symbols").str.len_chars()) / pl.col("content_words")).alias(
        "mean_length"
    )


class DocumentRules:
    """Gopher quality filter and C4 document rules, for long prose responses.

    Measured on the response's prose (fenced code cut out) when it has at least ``min_words``
    whitespace-separated words; ``skip_tasks`` (code, math) are never measured. Words are
    whitespace tokens; lines are the non-blank lines (markdown spacing must not dilute the line
    shares). Markdown heading markers (``## Title``) are not counted as '#' symbols: Gopher's '#'
    rule targets hashtag spam, and headings are normal in chat answers. A record is charged to the
    first criterion (``names`` order) it breaks.
    """

    names = (
        "gopher_word_count",
        "gopher_mean_word_length",
        "gopher_symbol_ratio",
        "gopher_bullet_lines",
        "gopher_ellipsis_lines",
        "gopher_alpha_words",
        "gopher_stop_words",
        "c4_javascript_notice",
        "c4_curly_brace",
        "c4_too_few_sentences",
    )

    def __init__(self, config: DocumentRulesConfig) -> None:
        self.config = config
        stop = "|".join(re.escape(w) for w in config.stop_words)
        self._stop_words = f"(?i:{stop})" if stop else None
        self._stop_regex = rf"\b{self._stop_words}\b" if stop else None
        # Stop words of ASCII word characters match whole words only, so their matches never overlap.
        self._simple_stop_words = all(re.fullmatch(r"[A-Za-z0-9_]+", w) for w in config.stop_words)

    def evaluate(self, features: pl.DataFrame) -> pl.DataFrame:
        c = self.config
        # n words need at least 2n - 1 characters: a length test spares most of the word counts.
        long = _streamed(
            features.lazy()
            .filter(~_skipped(c.skip_tasks) & (pl.col("response").str.len_bytes() >= 2 * c.min_words - 1))
            .select("_row", "response", _prose(pl.col("response")).alias("prose"))
            .with_columns(pl.col("prose").str.count_matches(_WORD_START).alias("words"))
            .filter(pl.col("words") >= c.min_words)
        )
        return self._judge(self._suspects(long))

    def _suspects(self, long: pl.DataFrame) -> pl.DataFrame:
        """The long responses a criterion may fire on; the others provably break none.

        Most criteria have a necessary condition that a fast scan decides: a '#', an ellipsis, a
        brace, "javascript" in the text; fewer than ``min_stop_words`` stop words or
        ``min_sentences`` sentence ends (one regex that stops at the k-th); a bullet on the first
        line or enough lines. The mean word length is computed exactly (word and whitespace counts;
        the symbol-only tokens only where a token starts with a non-letter, which also bounds the
        words without a letter).
        """
        c = self.config
        text = pl.col("prose")
        screens = [
            text.str.count_matches(r"\s").alias("spaces"),
            text.str.count_matches(_LETTERLESS_START).alias("letterless"),
            (
                text.str.contains("#", literal=True)
                | text.str.contains(_ELLIPSIS)
                | text.str.contains(r"[{}]")
                | text.str.contains(r"(?i)javascript")
                | self._bullet_screen(text)
                | self._at_most(text, _SENTENCE_END, c.min_sentences)
                | self._fewer_stop_words(text, c.min_stop_words)
            ).alias("screened"),
        ]
        measured = _with_measures(long, *screens, text.str.len_chars().alias("chars")).with_columns(
            (pl.col("chars") - pl.col("spaces")).alias("non_space"),
            pl.col("words").alias("content_words"),
            pl.lit("").alias("symbols"),
        )
        # Only where a word starts with a non-letter can a word lack a letter or digit: there the
        # mean word length needs the content words and the symbol-only tokens' characters.
        some = measured.filter(pl.col("letterless") > 0).select("_row", "prose", "words")
        if not some.is_empty():
            some = _with_measures(some, text.str.count_matches(_CONTENT_WORD).alias("content_words"))
            some = some.filter(pl.col("words") != pl.col("content_words"))
            some = _with_measures(some, _symbol_chars().alias("symbols"))
            measured = measured.update(some.select("_row", "content_words", "symbols"), on="_row")
        measured = measured.with_columns(_mean_length())
        mean = pl.col("mean_length")
        words = pl.col("words")
        may_fire = (
            pl.col("screened")
            | (words > c.max_words)
            | ~((mean >= c.min_mean_word_length) & (mean <= c.max_mean_word_length))
            | ((words - pl.col("letterless")) / words < c.min_alpha_word_fraction)
        )
        return measured.filter((may_fire | mean.is_nan()).fill_null(True))

    def _judge(self, long: pl.DataFrame) -> pl.DataFrame:
        """Every measure of ``_measures`` and the first criterion each record breaks."""
        measured = self._mean_length(long.select("_row", "prose", *self._measures()))
        fires, details = self._criteria()
        rule = pl.coalesce(pl.when(f).then(pl.lit(name)) for name, f in zip(self.names, fires, strict=True))
        detail = pl.coalesce(
            pl.when(rule == name).then(d) for name, d in zip(self.names, details, strict=True)
        )
        return measured.filter(rule.is_not_null()).select("_row", rule.alias("rule"), detail.alias("detail"))

    @staticmethod
    def _mean_length(measured: pl.DataFrame) -> pl.DataFrame:
        """``mean_length`` from ``non_space``, ``words`` and ``content_words`` (and ``prose``)."""
        # Gopher leaves tokens without a letter or digit ("-", "...") out of the mean word length;
        # their characters are counted only in the texts that have such tokens.
        return replace_where(
            measured.with_columns(pl.lit("").alias("symbols")),
            "symbols",
            pl.col("words") != pl.col("content_words"),
            _symbol_chars(),
        ).with_columns(_mean_length())

    def _bullet_screen(self, text: pl.Expr) -> pl.Expr:
        """Necessary for gopher_bullet_lines: with at most ``n`` lines, more than the maximum share
        means every line, so the first is a bullet; with more lines, there are ``n`` line breaks."""
        fraction = self.config.max_bullet_line_fraction
        if fraction >= 1.0:
            return pl.lit(False)
        n = 1
        while n / (n + 1) <= fraction and n < 10_000:
            n += 1
        return text.str.count_matches("\n", literal=True).ge(n) | text.str.contains(_FIRST_LINE_BULLET)

    @staticmethod
    def _at_most(text: pl.Expr, regex: str, k: int) -> pl.Expr:
        """True unless ``text`` has ``k`` matches of ``regex`` (whose matches never overlap), by one
        regex that stops at the k-th: necessary for "fewer than k"."""
        if k <= 0:
            return pl.lit(False)
        if k > 50:
            return pl.lit(True)
        return ~text.str.contains(f"(?s:(?:{regex}).*?){{{k - 1}}}(?:{regex})")

    def _fewer_stop_words(self, text: pl.Expr, k: int) -> pl.Expr:
        r"""``_at_most(text, stop-word regex, k)`` without ``\b``: a Unicode word boundary sends text
        with any non-ASCII character to the regex engine's slow NFA (on text with curly quotes and
        accents that screen took 25 times longer than on ASCII at k = 2, 100 times at k = 5). A
        stop word of word characters is between word boundaries exactly when a non-word character
        or an end of the text is on each side; the regex consumes those characters, and consecutive
        stop words share the one between them: ``(?:^|\W) w (?:\W (?:.*? \W)? w){k-1} (?:\W|$)``."""
        if self._stop_words is None or k <= 0:
            return pl.lit(False)
        if not self._simple_stop_words or k > 50:
            return pl.lit(True)
        w = self._stop_words
        return ~text.str.contains(rf"(?:^|\W){w}(?:\W(?:(?s:.*?)\W)?{w}){{{k - 1}}}(?:\W|$)")

    def _measures(self) -> list[pl.Expr]:
        """Counts by regex over the whole text (no per-word lists: several times faster)."""
        text = pl.col("prose")
        stop_words = text.str.count_matches(self._stop_regex) if self._stop_regex else pl.lit(None, pl.UInt32)
        return [
            text.str.count_matches(r"\S+").alias("words"),
            text.str.count_matches(_CONTENT_WORD).alias("content_words"),
            (text.str.len_chars() - text.str.count_matches(r"\s")).alias("non_space"),
            text.str.replace_all(_HEADING_MARKER, " ").str.count_matches("#", literal=True).alias("hashes"),
            text.str.count_matches(_ELLIPSIS).alias("ellipses"),
            text.str.count_matches(r"(?m)^[^\S\n]*\S").alias("lines"),
            text.str.count_matches(_BULLET_LINE).alias("bullet_lines"),
            text.str.count_matches(rf"(?m)(?:{_ELLIPSIS})[^\S\n]*$").alias("ellipsis_lines"),
            text.str.count_matches(r"\S*\p{L}\S*").alias("alpha_words"),
            stop_words.alias("stop_words"),
            text.str.contains(_JAVASCRIPT_NOTICE).alias("javascript"),
            _outside_code(pl.col("response")).str.contains(r"[{}]").alias("curly"),
            text.str.count_matches(_SENTENCE_END).alias("sentences"),
        ]

    def _criteria(self) -> tuple[list[pl.Expr], list[pl.Expr]]:
        """One firing expression and one detail expression per name, in ``names`` order."""
        c = self.config
        words, lines = pl.col("words"), pl.col("lines")
        hash_ratio = pl.col("hashes") / words
        ellipsis_ratio = pl.col("ellipses") / words
        bullet_share = pl.col("bullet_lines") / lines
        ellipsis_share = pl.col("ellipsis_lines") / lines
        alpha_share = pl.col("alpha_words") / words
        mean = pl.col("mean_length")
        fires = [
            words > c.max_words,
            (mean < c.min_mean_word_length) | (mean > c.max_mean_word_length),
            (hash_ratio > c.max_symbol_ratio) | (ellipsis_ratio > c.max_symbol_ratio),
            bullet_share > c.max_bullet_line_fraction,
            ellipsis_share > c.max_ellipsis_line_fraction,
            alpha_share < c.min_alpha_word_fraction,
            pl.col("stop_words") < c.min_stop_words,
            pl.col("javascript"),
            pl.col("curly"),
            pl.col("sentences") < c.min_sentences,
        ]
        symbol = (
            pl.when(hash_ratio > c.max_symbol_ratio)
            .then(
                pl.format(
                    "{} '#' symbols per word (markdown heading markers not counted)", hash_ratio.round(2)
                )
            )
            .otherwise(pl.format("{} ellipses per word", ellipsis_ratio.round(2)))
        )
        stop_list = ", ".join(c.stop_words)
        details = [
            pl.format("assistant response has {} words; maximum is {}", words, pl.lit(c.max_words)),
            pl.format(
                "mean word length of the assistant response is {} characters; expected {} to {}",
                mean.round(2),
                pl.lit(c.min_mean_word_length),
                pl.lit(c.max_mean_word_length),
            ),
            pl.format("assistant response has {}; maximum is {}", symbol, pl.lit(c.max_symbol_ratio)),
            pl.format(
                "{} of the assistant response's {} lines start with a bullet; maximum is {}",
                bullet_share.round(2),
                lines,
                pl.lit(c.max_bullet_line_fraction),
            ),
            pl.format(
                "{} of the assistant response's {} lines end with an ellipsis; maximum is {}",
                ellipsis_share.round(2),
                lines,
                pl.lit(c.max_ellipsis_line_fraction),
            ),
            pl.format(
                "{} of the assistant response's {} words contain a letter; minimum is {}",
                alpha_share.round(2),
                words,
                pl.lit(c.min_alpha_word_fraction),
            ),
            pl.format(
                "assistant response has {} occurrences of the stop words ({}) in {} words; minimum is {}",
                pl.col("stop_words"),
                pl.lit(stop_list),
                words,
                pl.lit(c.min_stop_words),
            ),
            pl.lit("assistant response holds a browser notice of the 'JavaScript must be enabled' kind"),
            pl.lit(
                "assistant response has a curly brace in prose (outside code blocks, inline code and code lines)"
            ),
            pl.format(
                "assistant response has {} sentence ends in {} words; minimum is {}",
                pl.col("sentences"),
                words,
                pl.lit(c.min_sentences),
            ),
        ]
        return fires, details


# --- unsafe words ----------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def load_wordlist(spec: str) -> dict[str, tuple[str, ...]]:
    """Category -> terms of the word list ``spec`` (see ``UnsafeWordsConfig.wordlist``), read once.

    ``glin-profanity:<language>`` reads the JSON dictionary shipped inside the glin-profanity
    package (MIT); its lists have no categories, so all terms are "profanity". A path is read as
    JSON (``{"words": [...]}``) or as text: one term per line, optionally ``category<TAB>term``;
    blank lines and lines starting with ``#`` are skipped.
    """
    if spec.startswith("glin-profanity:"):
        found = importlib.util.find_spec("glin_profanity")
        if found is None or not found.submodule_search_locations:
            raise RuntimeError("glin-profanity is not installed; it ships the default unsafe-word list")
        language = spec.removeprefix("glin-profanity:")
        root = Path(next(iter(found.submodule_search_locations)))
        path = root / "data" / "dictionaries" / f"{language}.json"
    else:
        path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"unsafe-word list {spec!r} not found at {path}")
    categories: dict[str, list[str]] = {}
    if path.suffix == ".json":
        categories["profanity"] = [str(w) for w in json.loads(path.read_text(encoding="utf-8"))["words"]]
    else:
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            category, _, term = line.rpartition("\t")
            categories.setdefault(category.strip() or "profanity", []).append(term)
    return {
        name: tuple(sorted({t.strip().lower() for t in terms if t.strip()}))
        for name, terms in sorted(categories.items())
    }


def wordlist_regex(terms: tuple[str, ...]) -> str:
    """One case-insensitive alternation of ``terms``, longest first, matched on word boundaries.

    A boundary is required only at an end that is a word character ("a$$" and emoji match as
    written); the spaces of a phrase match any whitespace.
    """

    def one(term: str) -> str:
        body = r"\s+".join(re.escape(part) for part in term.split())
        start = r"\b" if re.match(r"\w", term[0]) else ""
        end = r"\b" if re.match(r"\w", term[-1]) else ""
        return start + body + end

    ordered = sorted(terms, key=lambda t: (-len(t), t))
    return "(?i)(?:" + "|".join(one(t) for t in ordered) + ")"


class UnsafeContentRule:
    """More than ``max_hits`` word-list matches in the response (every occurrence counts).

    The list is compiled once into one regex per category; the detail gives the list, the count
    per category and the maximum, never the matched words. The regexes read the response's
    ``ascii_word_view``: the same matches, but at ASCII speed whatever the script (on text with a
    curly quote or an accent the word boundaries of a 400-term alternation are otherwise ~3 ms a
    record).
    """

    names = ("unsafe_content",)

    def __init__(self, config: UnsafeWordsConfig) -> None:
        self.config = config
        lists = load_wordlist(config.wordlist)
        self.categories = {name: wordlist_regex(terms) for name, terms in lists.items()}
        self._any = "|".join(f"(?:{regex})" for regex in self.categories.values())
        # wordlist_regex matches a term's characters, and \s+ for its spaces.
        self._view = ascii_word_view("".join(term.split()) for terms in lists.values() for term in terms)

    def evaluate(self, features: pl.DataFrame) -> pl.DataFrame:
        r = pl.col("response")
        ascii_only = r.str.len_bytes() == r.str.len_chars()  # a cheap test: no scan of the text
        responses = features.lazy().select("_row", "response")
        counted = _streamed(
            pl.concat(
                [
                    responses.filter(ascii_only).select("_row", r.str.count_matches(self._any).alias("hits")),
                    responses.filter(~ascii_only).select(
                        "_row", self._view(r).str.count_matches(self._any).alias("hits")
                    ),
                ]
            )
        )
        over = (
            features.select("_row", "response")
            .join(counted.filter(pl.col("hits") > self.config.max_hits), on="_row", maintain_order="left")
            .with_columns(self._view(r).alias("response"))
        )
        per_category = [
            pl.format("{}: {}", pl.lit(name), r.str.count_matches(regex))
            for name, regex in self.categories.items()
        ]
        detail = pl.format(
            "assistant response has {} matches of the unsafe-word list {} ({}); maximum is {}",
            pl.col("hits"),
            pl.lit(self.config.wordlist),
            pl.concat_str(per_category, separator=", "),
            pl.lit(self.config.max_hits),
        )
        return ExprRule("unsafe_content", pl.lit(True), detail).evaluate(over)


class LanguageRule:
    """User + assistant text is not in the dataset's language (fastText lid.176, top label, p > 0.5).

    Fenced code is removed first and code tasks are skipped: code is not a natural language. Only
    the first 400 characters are read: plenty for a confident label, and fastText's cost is linear.
    """

    names = ("wrong_language",)
    min_probability = 0.5
    max_chars = 400

    def __init__(self, language: str, min_chars: int) -> None:
        self.language = language
        self.min_chars = min_chars
        self.checked = 0

    @classmethod
    def text_to_identify(cls, dialogue: pl.Expr) -> pl.Expr:
        """What fastText reads of a record's user + assistant text: fenced code cut out, whitespace
        collapsed, the first ``max_chars`` characters."""
        return (
            dialogue.str.replace_all(_CODE_BLOCK, " ")
            .str.replace_all(r"\s+", " ")
            .str.strip_chars()
            .str.slice(0, cls.max_chars)
        )

    def evaluate(self, features: pl.DataFrame) -> pl.DataFrame:
        text = self.text_to_identify(pl.col("dialogue"))
        todo = features.filter(pl.col("task").fill_null("") != "code").select("_row", text.alias("text"))
        todo = todo.filter(pl.col("text").str.len_chars() >= max(self.min_chars, 1))
        self.checked += todo.height
        if todo.is_empty():
            return pl.DataFrame(schema=_REJECTED_SCHEMA)
        labels = confident_languages(todo.get_column("text").to_list(), self.min_probability)
        fired = todo.with_columns(pl.Series("label", labels, dtype=pl.String)).filter(
            pl.col("label").is_not_null() & (pl.col("label") != self.language)
        )
        # The batch API gives no probabilities; the detail needs one, so the (few) rejected texts are
        # scored again one by one.
        probs = [language_probability(t)[1] for t in fired.get_column("text").to_list()]
        measured = fired.with_columns(pl.Series("p", probs, dtype=pl.Float64))
        detail = pl.format(
            "text identified as '{}' with probability {}; dataset language is '{}'",
            "label",
            pl.col("p").round(2),
            pl.lit(self.language),
        )
        return ExprRule("wrong_language", pl.lit(True), detail).evaluate(measured)


class QualityFilter:
    """Applies the quality rules in a fixed order; the first rule that fires rejects the record.

    Cheap first, so that the costlier rules see fewer records: empty_after_cleaning,
    empty_response, response_too_short, response_too_long (lengths); refusal, placeholder_text
    (anchored or short regexes); truncated_response, repetitive (line splits); copies_instruction
    (word n-grams against the prompt); the Gopher and C4 document rules (``DocumentRules.names``,
    long prose only); unsafe_content (one large word-list regex); wrong_language last (fastText,
    the only costly one, so it sees only survivors). Switched-off rules are left out, and their
    counters with them.
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
        if config.placeholders:
            rules.append(PlaceholderRule())
        if config.truncation:
            rules.append(TruncationRule())
        rules.append(RepetitionRule(config.max_repeated_line_fraction))
        if config.copy_instruction.enabled:
            rules.append(CopyInstructionRule(config.copy_instruction))
        if config.documents.enabled:
            rules.append(DocumentRules(config.documents))
        if config.unsafe_words.enabled:
            rules.append(UnsafeContentRule(config.unsafe_words))
        self.language = LanguageRule(config.language, config.language_min_chars) if config.language else None
        if self.language is not None:
            rules.append(self.language)
        self.rules = rules
        self.language_seconds = 0.0

    @property
    def names(self) -> list[str]:
        """Ledger rule names in evaluation order."""
        return [name for rule in self.rules for name in rule.names]

    def __call__(self, batch: CleanBatch) -> None:
        features = _live_features(batch, dialogue=self.language is not None)
        self.language_seconds = 0.0
        if self.language is not None:
            self.language.checked = 0
        for rule in self.rules:
            clock = time.perf_counter()
            fired = rule.evaluate(features)
            names = rule.names
            if rule is self.language:
                self.language_seconds += time.perf_counter() - clock
            elif isinstance(rule, DocumentRules) and self.language is not None and not fired.is_empty():
                # The document rules measure text in the dataset's language (its stop words, its word
                # lengths): a text they reject that is in another language is rejected for that, the
                # more precise reason. Language ID runs on these few records only.
                clock = time.perf_counter()
                foreign = self.language.evaluate(features.join(fired.select("_row"), on="_row", how="semi"))
                self.language_seconds += time.perf_counter() - clock
                fired = pl.concat([fired.join(foreign.select("_row"), on="_row", how="anti"), foreign])
                names = (*names, *self.language.names)
            for name in names:
                batch.reject(fired.filter(pl.col("rule") == name).select("_row", "detail"), name)
            if not fired.is_empty():
                features = features.join(fired.select("_row"), on="_row", how="anti")
        batch.counters["quality.language_checked"] = self.language.checked if self.language else 0


def _live_features(batch: CleanBatch, dialogue: bool) -> pl.DataFrame:
    """What the rules measure, one row per record not yet rejected.

    ``prompt`` is the user turns joined by line breaks; ``dialogue`` (user and assistant turns
    joined) is only built when language ID will read it.
    """
    content = pl.col("content")
    role = pl.col("role")
    aggregations = [
        pl.len().alias("n_messages"),
        (content.str.len_bytes() > 0).sum().alias("n_nonempty"),
        content.filter(role == "assistant").last().alias("response"),
        content.filter(role == "user").str.join("\n").alias("prompt"),
    ]
    if dialogue:
        aggregations.append(content.filter(role.is_in(["user", "assistant"])).str.join(" ").alias("dialogue"))
    per_record = _streamed(batch.messages.lazy().group_by("_row", maintain_order=True).agg(aggregations))
    alive = batch.records.filter(batch.live_rows()).select("_row", "task")
    return alive.join(per_record, on="_row", how="left", maintain_order="left").with_columns(
        pl.col("n_messages").fill_null(0), pl.col("n_nonempty").fill_null(0), pl.col("prompt").fill_null("")
    )
