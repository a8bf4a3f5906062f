"""Quality rules: each named, configurable, with a detail sentence that quotes no record text."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import polars as pl

from thresher.cleaning.batch import FENCE, CleanBatch
from thresher.cleaning.langid import confident_languages, language_probability
from thresher.config import QualityConfig


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
