"""PII: detection by validated patterns, redaction with typed placeholders, offsets recorded."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from thresher.cleaning.batch import CleanBatch, replace_where
from thresher.config import PiiConfig

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
        messages = replace_where(
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
