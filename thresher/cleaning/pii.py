"""PII: detection by validated patterns (and optionally a NER model), keyed or typed replacements.

Every entity type is one or more regexes over all messages, validated where a regex cannot decide
(Luhn, mod-97, SSA rules, libphonenumber, Shannon entropy), then replaced according to its action:
a typed placeholder, a consistent fake, a keyed hash, or the record is dropped. Each replacement's
offsets in the cleaned text go to ``batch.redactions``; the original value is stored nowhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import phonenumbers
import polars as pl

from thresher.cleaning.batch import CleanBatch, replace_where
from thresher.cleaning.pii_ner import CALENDAR_WORDS, NerPersons, candidates
from thresher.cleaning.pseudonym import PiiKey, load_key, replacements
from thresher.config import PiiConfig

# Private markers: a validated match becomes TOKEN_OPEN + entity code + payload + TOKEN_CLOSE until
# the end of the PII step, so later entity types cannot match inside it and offsets can be computed
# at the end. The payload is empty for placeholders; a keyed replacement is carried shifted into the
# Private Use Area, where no pattern matches. NER spans are marked with NER_PERSON after every other
# pattern ran. Control characters were removed by formatting; the step removes these again to be sure.
_WRAP = "\x00"
TOKEN_OPEN = "\x1e"
TOKEN_CLOSE = "\x1f"
NER_PERSON = ("\x02", "\x03")
_MARKERS = f"[{_WRAP}{TOKEN_OPEN}{TOKEN_CLOSE}{NER_PERSON[0]}{NER_PERSON[1]}]"
_ASCII = [chr(c) for c in range(32, 127)]
_PUA = [chr(0xE000 + c) for c in range(32, 127)]
_ENCODE = str.maketrans(dict(zip(_ASCII, _PUA, strict=True)))
_DECODE = str.maketrans(dict(zip(_PUA, _ASCII, strict=True)))
# What the NER model reads: tokens as same-length bracketed placeholders ("\x1eA\x1f" -> "[A]").
_VIEW = str.maketrans({TOKEN_OPEN: "[", TOKEN_CLOSE: "]", **dict.fromkeys(_PUA, "x")})
_TOKEN_RE = re.compile(f"{TOKEN_OPEN}[^{TOKEN_CLOSE}]*{TOKEN_CLOSE}")

Validator = Callable[[pl.Series, PiiConfig], pl.Series]


def _digits(candidate: pl.Expr) -> pl.Expr:
    return candidate.str.replace_all(r"\D", "")


def _expr_validator(rule: Callable[[pl.Expr], pl.Expr]) -> Validator:
    """A validator over a Series of candidates from an expression over column ``c``."""

    def validate(candidates: pl.Series, config: PiiConfig) -> pl.Series:
        return candidates.to_frame("c").select(rule(pl.col("c")).fill_null(False)).to_series()

    return validate


def _per_value(check: Callable[[str, PiiConfig], bool]) -> Validator:
    """A validator calling ``check`` once per distinct candidate (for libraries with no vector API)."""

    def validate(candidates: pl.Series, config: PiiConfig) -> pl.Series:
        verdicts = {v: check(v, config) for v in candidates.unique().to_list()}
        return candidates.replace_strict(verdicts, return_dtype=pl.Boolean)

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


def _card_valid(candidates: pl.Series, config: PiiConfig) -> pl.Series:
    # The candidate regex takes a leading "+" so that international phone numbers can be turned down.
    international = candidates.str.starts_with("+")
    digits = candidates.str.replace_all(r"\D", "")
    # Major networks start with 2-6 (Mastercard 2/5, Amex and JCB 3, Visa 4, Discover 6) or JCB's 1800;
    # this keeps 13-digit millisecond timestamps and ids that happen to pass Luhn out.
    plausible = digits.str.len_chars().is_between(13, 19) & digits.str.contains(r"^(?:[2-6]|1800)")
    return plausible & ~international & luhn_valid(digits)


@_per_value
def _iban_valid(candidate: str, config: PiiConfig) -> bool:
    """ISO 13616: the first four characters moved to the end, letters as 10..35, mod 97 == 1."""
    value = candidate.replace(" ", "")
    if not 15 <= len(value) <= 34:
        return False
    return int("".join(str(int(ch, 36)) for ch in value[4:] + value[:4])) % 97 == 1


@_expr_validator
def _ssn_valid(candidate: pl.Expr) -> pl.Expr:
    # The SSA never issues area 000, 666 or 900-999, group 00 or serial 0000.
    d = _digits(candidate)
    area, group, serial = d.str.slice(0, 3), d.str.slice(3, 2), d.str.slice(5, 4)
    return (
        (d.str.len_chars() == 9)
        & ~area.is_in(["000", "666"])
        & ~area.str.starts_with("9")
        & (group != "00")
        & (serial != "0000")
    )


@lru_cache(maxsize=65536)
def _is_phone(number: str, regions: tuple[str, ...]) -> bool:
    try:
        if number.startswith("+"):
            return phonenumbers.is_valid_number(phonenumbers.parse(number, None))
        return any(phonenumbers.is_valid_number(phonenumbers.parse(number, r)) for r in regions)
    except phonenumbers.NumberParseException:
        return False


def _phone_valid(candidates: pl.Series, config: PiiConfig) -> pl.Series:
    """libphonenumber's validity (per distinct candidate) after cheap vectorized shape checks."""
    number = candidates.str.replace(r"\s?(?:x|ext\.?)\s?[0-9]+$", "")
    n_digits = number.str.replace_all(r"\D", "").str.len_chars()
    # Dates ("01.02.1990", "2024-01-15") parse as valid numbers in some regions.
    date_like = number.str.contains(
        r"^(?:[0-9]{1,2}[./-][0-9]{1,2}[./-][0-9]{2,4}|[0-9]{4}-[0-9]{2}-[0-9]{2})$"
    )
    plausible = n_digits.is_between(7, 15) & ~date_like
    regions = tuple(config.phone_regions)
    verdicts = {v: _is_phone(v, regions) for v in number.filter(plausible).unique().to_list()}
    return plausible & number.replace_strict(verdicts, default=False, return_dtype=pl.Boolean)


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


# Generic secrets: a long token next to a key-like word must also look random. Shannon entropy in
# bits per character: English words and identifiers stay below, base64/hex secrets of 20+ chars above.
MIN_SECRET_ENTROPY = 3.5


def shannon_entropy(values: pl.Series) -> pl.Series:
    """Bits per character of each string, vectorized (one exploded frame of characters)."""
    chars = values.to_frame("v").with_row_index("i").select("i", pl.col("v").str.split("")).explode("v")
    counts = chars.group_by("i", "v").len()
    p = pl.col("len") / pl.col("len").sum().over("i")
    entropy = counts.select("i", (-(p * p.log(2))).alias("h")).group_by("i").agg(pl.col("h").sum())
    order = pl.DataFrame({"i": pl.int_range(len(values), dtype=pl.UInt32, eager=True)})
    return order.join(entropy, on="i", how="left").get_column("h").fill_null(0.0)


def _secret_valid(candidates: pl.Series, config: PiiConfig) -> pl.Series:
    classes = sum(
        candidates.str.contains(c).cast(pl.Int8) for c in (r"[a-z]", r"[A-Z]", r"[0-9]")
    )  # mixed classes: hex (digits + letters) counts as two
    return (classes >= 2) & (shannon_entropy(candidates) >= MIN_SECRET_ENTROPY)


def _context(pre: str, value: str, post: str = "") -> str:
    """A regex whose match is ``pre value post`` but of which only ``value`` is PII."""
    return f"(?P<pre>{pre})(?P<v>{value})(?P<post>{post})"


@dataclass(frozen=True)
class PiiPattern:
    """A regex for candidates and, where a regex cannot decide, a vectorized validator over them.

    ``prefilter`` holds regexes one of which every text with a valid match also matches, each fast
    to scan (a few literals, a rare leading class: one alternation of many case-insensitive words
    loses the regex engine's literal search): the full pattern only runs on the texts they select.
    A regex built with ``_context`` redacts only its ``v`` group (the words around it are evidence).

    ``guard`` (built with ``_guard``), if set, matches every text on which the regex's Unicode word
    boundaries could decide otherwise than ASCII ones: on all other texts ``ascii_regex`` runs
    instead of ``regex``, with the same matches, at ASCII speed (see ``_guard``).
    """

    regex: str
    validator: Validator | None = None
    prefilter: tuple[str, ...] = ()
    guard: str = ""

    @property
    def has_context(self) -> bool:
        return "(?P<v>" in self.regex

    @property
    def ascii_regex(self) -> str:
        """``regex`` with every ``\\b`` an ASCII word boundary (``(?-u:\\b)``)."""
        return re.sub(r"(?<!\\)((?:\\\\)*)\\b", r"\1(?-u:\\b)", self.regex)

    def template(self, inner: str) -> str:
        """The ``replace_all`` replacement that puts ``inner`` where the PII was."""
        return "${pre}" + inner + "${post}" if self.has_context else inner


# --- Unicode word boundaries at ASCII speed --------------------------------------------------------
# The regex engine's fast DFA runs a Unicode word boundary (\b) only while the text is ASCII: at the
# first other byte it gives up for an NFA, 10-100x slower, and model output is full of curly quotes.
# An ASCII boundary (?-u:\b) sees every non-ASCII character as a non-word character, so the two
# differ exactly where one side of the position is a non-ASCII word character ("é", "東", "ſ") and
# the other is not. A regex whose every \b is next to a character it consumes (the boundary's side)
# therefore finds the same matches with ASCII boundaries in every text where no such side, as it can
# occur at a \b, meets a non-ASCII word character: then every path through the regex has the same
# assertions true in both, so both accept the same paths and pick the same leftmost-first matches.
# ``_guard`` describes the sides (what the regex consumes just after a leading \b, just before a
# trailing one; necessary conditions, so a superset is safe, only slower) and matches the texts
# where they meet one: those take the regex as written, the others the ASCII one. Case-insensitive
# "s" and "k" also match "ſ" and the Kelvin sign (non-ASCII word characters): a guard for a regex
# with such a letter at a boundary takes every text with one of them.
_NON_ASCII_WORD = r"[\w--[\x00-\x7F]]"
_FOLDS = r"[\x{17F}\x{212A}]"


def _guard(starts: str = "", ends: str = "", *extra: str, folds: bool = False) -> str:
    """Texts where a non-ASCII word character comes right before ``starts`` or right after ``ends``
    (what a regex consumes after and before its word boundaries), or that match an ``extra``."""
    parts = [f"{_NON_ASCII_WORD}(?:{starts})"] if starts else []
    parts += [f"(?:{ends}){_NON_ASCII_WORD}"] if ends else []
    return "|".join(parts + list(extra) + ([_FOLDS] if folds else []))


# A run of digits with separators: what a card number, an IPv4 address or a phone number contains.
_DIGIT_RUN = r"[0-9][0-9 .()+-]{5,}[0-9]"


@dataclass(frozen=True)
class PiiEntity:
    name: str
    placeholder: str
    code: str  # one character, used inside the private token
    patterns: tuple[PiiPattern, ...]


_HEX = r"[0-9A-Fa-f]{1,4}"
_MONTH = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)[a-z]*\.?"
_DATE = (
    r"[0-9]{1,2}[/.-][0-9]{1,2}[/.-](?:[0-9]{4}|[0-9]{2})\b|[0-9]{4}-[0-9]{2}-[0-9]{2}\b"
    rf"|{_MONTH} [0-9]{{1,2}}(?:st|nd|rd|th)?,? [0-9]{{4}}\b"
    rf"|[0-9]{{1,2}}(?:st|nd|rd|th)? (?:of )?{_MONTH},? [0-9]{{4}}\b"
)
# A name word (Zoe, Müller, O'Brien, McKay, Smith-Jones); a name is one to three of them, with middle
# initials and lowercase particles between (Fredrik L Sommerseth, Ludwig van Beethoven).
_NAME_WORD = r"(?:\p{Lu}')?\p{Lu}\p{Ll}+(?:\p{Lu}\p{Ll}+)?(?:-\p{Lu}\p{Ll}+)?"
_PARTICLE = r"(?:van|von|der|den|de|del|della|da|di|du|dos|das|la|le|ter|ten|bin|ibn|al|el)"
_NAME = rf"{_NAME_WORD}(?:(?: \p{{Lu}}\.?)? (?:{_PARTICLE} ){{0,2}}{_NAME_WORD}){{0,2}}"
# Words that name a relation or a role, written before a person's name ("my colleague Farid Haddad").
_RELATION = (
    r"colleague|co-?worker|friend|manager|boss|supervisor|wife|husband|partner|fianc[eé]e?|boyfriend"
    r"|girlfriend|son|daughter|kid|child|mother|mom|mum|father|dad|brother|sister|uncle|aunt|cousin"
    r"|nephew|niece|grand(?:mother|father|ma|pa|son|daughter)|doctor|dentist|lawyer|attorney|landlord"
    r"|landlady|neighbou?r|roommate|flatmate|tenant|teacher|tutor|client|customer|assistant|accountant"
    r"|therapist|nurse|caregiver|employee|employer|agent"
)
_SIGN_OFF = (
    r"regards|kind regards|best regards|warm regards|best|best wishes|sincerely|yours sincerely"
    r"|yours truly|yours|cheers|thanks|many thanks|thank you|warmly|love|signed"
)
_STREET_SUFFIX = (
    r"Street|St|Str|Road|Rd|Avenue|Ave|Lane|Ln|Drive|Dr|Boulevard|Blvd|Court|Ct|Way|Place|Pl|Terrace"
    r"|Square|Sq|Parkway|Pkwy|Highway|Hwy|Circle|Cir|Crescent|Close|Row|Trail|Path|Alley|Plaza|Gardens"
    r"|Grove|Hill|Mews|Walk|Green|View|Park|Bypass|Flats|Route|Rte|Quay|Wharf|Esplanade|Promenade"
    r"|Expressway|Freeway|Turnpike|Causeway|Heights|Junction|Crossing|Pass"
)
# European street names written "<name><suffix> <number>" (Koskikatu 25, Hauptstraße 5, Storgatan 3,
# Þórunnarstræti 31), or with the street type as a separate word (Király u. 15, Trenerys gate 232).
_EURO_STREET = (
    r"\p{Lu}\p{Ll}+(?:straße|strasse|str\.|stræti|straeti|weg|gasse|platz|allee|damm|katu|tie|kuja"
    r"|gatan|vägen|väg|gränd|veien|vei|vegur|gata|vej|gade|laan|straat|plein|gracht|dreef|kade|utca|ulica"
    r"|iela|gatve|cesta)"
    r"(?: (?:u\.|utca|út|gate|gata|gatan|vej|vei|veien|katu|tie|ulica|cesta|kapu|str\.|Str\.))?"
    r" [0-9]{1,4}[a-z]?\b\.?"
    r"|\p{Lu}\p{Ll}+ (?:u\.|utca|út|gate|gata|gatan|vej|vei|veien|katu|tie|ulica|cesta|kapu|str\.|Str\.|Straße"
    r"|Strasse|Gasse|Weg|Allee|Platz|Laan|Straat)"
    r" [0-9]{1,4}[a-z]?\b\.?"
)
# Street types written before the name, in Romance and Slavic languages (Rue de la Paix, Via Roma).
_STREET_PREFIX = (
    r"Rue|Via|Viale|Vicolo|Piazza|Piazzetta|Corso|Largo|Strada|Calle|Carrer|Paseo|Camino|Avenida|Rua"
    r"|Travessa|Praça|Plaza|Ulica|ul\.|Chemin|Allée|Quai|Impasse"
)
_UNIT = r"(?:Apt\.?|Apartment|Suite|Ste\.?|Unit|Flat) [0-9A-Z]{1,5}\b"
# The lines that follow a street line in an address block: newline (a blank line, e-mail quoting or
# indentation allowed), then a unit, short town/region lines, and a line with a postal code.
_NL = r"[ \t]*\n(?:[ \t>]*\n)?[ \t>]*"
_TOWN_LINE = rf"{_NL},?[ \t]*\p{{L}}[\p{{L}}.'()-]*(?:[ ,]{{1,2}}[\p{{L}}.'()-]+){{0,3}}[ \t]*(?m:$)"
_POSTAL = r"(?:[0-9]{4,6}|[A-Z]{1,2}[0-9][A-Z0-9]? [0-9][A-Z]{2}|(?i:[AFD]PO) (?i:AA|AE|AP) [0-9]{5})"
_POSTAL_LINE = rf"{_NL}(?:\p{{L}}[\p{{L}}.'()-]*[ ,]{{1,2}}){{0,4}}{_POSTAL}\b(?:[ ,]{{1,2}}\p{{L}}[\p{{L}}.'()-]*){{0,3}}[ \t]*(?m:$)"
_ADDRESS_TAIL = rf"(?:{_NL}{_UNIT})?(?:(?:{_TOWN_LINE}){{0,3}}{_POSTAL_LINE})"
_TITLE = r"\b(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Sir|Dame|Madam)\.? |\b(?i:mr|mrs|ms|mx|dr|prof)\. "
_KEY_WORD = (
    r"(?i:api[_-]?key|apikey|secret|token|passw(?:or)?d|passwd|pwd|credential|auth|access[_-]?key"
    r"|private[_-]?key|bearer)[A-Za-z_]*"
)

# A phone number in context: digits with the separators people type, and an optional extension.
_PHONE_IN_CONTEXT = r"\+?[0-9(][0-9 ().-]{5,18}[0-9](?:\s?(?:x|ext\.?)\s?[0-9]{1,6})?\b"

# The sides of the address forms' word boundaries after a unit and a postal code (for ``_guard``).
_ADDRESS_ENDS = r"[0-9]|[0-9][A-Za-z]|(?:Apt\.?|Apartment|Suite|Ste\.?|Unit|Flat) [0-9A-Z]{1,5}|[0-9][A-Z]{2}"


@_expr_validator
def _context_phone_valid(candidate: pl.Expr) -> pl.Expr:
    number = candidate.str.replace(r"\s?(?:x|ext\.?)\s?[0-9]+$", "")
    date_like = number.str.contains(r"^[0-9]{1,4}[./-][0-9]{1,2}[./-][0-9]{1,4}$")
    return _digits(number).str.len_chars().is_between(7, 15) & ~date_like


# Capitalized words that a weak cue ("call me", "ask for", a sign-off) may be followed by and that
# are not names: days, months, greetings, teams and departments.
_NOT_NAMES = [
    *CALENDAR_WORDS,
    "Today",
    "Tomorrow",
    "Tonight",
    "Asap",
    "Again",
    "Back",
    "Now",
    "Soon",
    "Later",
    "Please",
    "Thanks",
    "Thank",
    "Hi",
    "Hello",
    "Hey",
    "Dear",
    "Yes",
    "No",
    "Ok",
    "Okay",
    "The",
    "This",
    "That",
    "Support",
    "Service",
    "Services",
    "Customer",
    "Customers",
    "Team",
    "Sales",
    "Help",
    "Helpdesk",
    "Desk",
    "Department",
    "Admin",
    "Billing",
    "Reception",
    "Office",
    "Management",
    "Legal",
    "Security",
    "Everyone",
    "All",
    "Us",
    "Him",
    "Her",
    "Them",
    "Someone",
    "Anyone",
    "Mom",
    "Mum",
    "Dad",
    "Sir",
    "Madam",
]


@_expr_validator
def _name_valid(candidate: pl.Expr) -> pl.Expr:
    return ~candidate.str.extract(r"^(\p{L}+)", 1).is_in(_NOT_NAMES)


# PERSON spans of the NER model, marked (``NER_PERSON``) just before this pattern is applied.
_NER_PATTERN = PiiPattern(f"{NER_PERSON[0]}[^{_MARKERS[1:-1]}]*{NER_PERSON[1]}")

# Applied in this order: keys and credentials first (they may contain digit runs and '@'), then the
# checksummed numbers, dates of birth before phones (a date is not a number to call), phones (the
# loosest numbers), then addresses and names.
PII_ENTITIES: tuple[PiiEntity, ...] = (
    PiiEntity(
        "api_key",
        "[API_KEY]",
        "K",
        (
            PiiPattern(
                r"-----BEGIN[A-Z ]*PRIVATE KEY-----(?s:.*?-----END[A-Z ]*PRIVATE KEY-----|[A-Za-z0-9+/=\s]*)"
                r"|\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"  # OpenAI, Anthropic
                r"|\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b"  # AWS access key ids
                r"|\bgh[opsur]_[A-Za-z0-9]{36,}\b|\bgithub_pat_[A-Za-z0-9_]{22,}"  # GitHub
                r"|\bglpat-[A-Za-z0-9_-]{20,}"  # GitLab
                r"|\bhf_[A-Za-z0-9]{30,}\b|\bgsk_[A-Za-z0-9]{40,}\b"  # Hugging Face, Groq
                r"|\bxox[abprse]-[A-Za-z0-9-]{10,}|https://hooks\.slack\.com/services/[A-Za-z0-9/]{20,}"
                r"|\b[rs]k_live_[A-Za-z0-9]{16,}\b"  # Stripe
                r"|\bAIza[0-9A-Za-z_-]{35}"  # Google
                r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"  # JWT
            ),
            # Secrets that need their context: AWS secret keys, Azure account keys and SAS signatures.
            PiiPattern(
                _context(
                    r"(?i:aws[A-Za-z_ -]{0,20}secret[A-Za-z_ -]{0,20}|AccountKey|SharedAccessKey)"
                    r"""["']?\s*[:=]\s*["']?""",
                    r"[A-Za-z0-9/+]{30,}={0,2}",
                ),
            ),
            PiiPattern(
                _context(
                    rf"""\b{_KEY_WORD}["']?\s*(?:[:=]|=>)\s*["']?|\bBearer """,
                    r"[A-Za-z0-9+/_.=-]{20,}",
                ),
                _secret_valid,
                (r"""(?:[:=]|=>)\s*["']?[A-Za-z0-9+/_.=-]{20}|Bearer [A-Za-z0-9+/_.=-]{20}""",),
                _guard(r"(?i:api|secret|token|passw|pwd|credential|auth|access|private|bearer)", folds=True),
            ),
        ),
    ),
    PiiEntity(
        "url_credentials",
        "[CREDENTIALS]",
        "U",
        (
            PiiPattern(
                _context(r"\b[A-Za-z][A-Za-z0-9+.-]*://", r"[^\s/@:]+:[^\s/@]+", "@"), prefilter=("://",)
            ),
        ),
    ),
    PiiEntity(
        "email",
        "[EMAIL]",
        "E",
        (
            PiiPattern(
                r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b", prefilter=("@",)
            ),
        ),
    ),
    PiiEntity(
        "iban",
        "[IBAN]",
        "B",
        (
            PiiPattern(
                r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b",
                _iban_valid,
                (r"[0-9]{2}(?: ?[A-Z0-9]{4}){2}",),
                _guard(r"[A-Z]{2}[0-9]{2}", r"[0-9][0-9A-Z ]*[0-9A-Z]"),
            ),
        ),
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
                (_DIGIT_RUN,),
                _guard(r"[0-9]", r"[0-9]"),
            ),
        ),
    ),
    PiiEntity(
        "us_ssn",
        "[US_SSN]",
        "S",
        (
            PiiPattern(r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b", _ssn_valid, (r"[0-9]{3}-[0-9]{2}-",)),
            # Unformatted nine digits only where the text says it is a social security number.
            PiiPattern(
                _context(r"(?i:\bssn|social security(?: number)?|\bSS#)[^0-9\n]{0,12}", r"[0-9]{9}\b"),
                _ssn_valid,
            ),
        ),
    ),
    PiiEntity(
        "date_of_birth",
        "[DATE_OF_BIRTH]",
        "D",
        (
            PiiPattern(
                _context(
                    r"(?i:\b(?:born|birth|birthday|birthdate|d\.?o\.?b\.?)\b)[^0-9]{0,24}?",
                    _DATE,
                ),
                prefilter=(r"(?i:born|birth|dob|d\.o\.b)",),
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
                (r"[0-9A-Fa-f]:[0-9A-Fa-f]*:",),
                _guard(r"[0-9A-Fa-f]{1,4}:", r":[0-9A-Fa-f]{0,4}"),
            ),
            PiiPattern(
                r"\b(?:(?i:version|release|ver\.?)\s*)?[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?:\.[0-9]+)*\b",
                _ipv4_valid,
                (_DIGIT_RUN,),
                _guard(r"(?i:version|release|ver)|[0-9]{1,3}\.", r"\.[0-9]+"),
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
                # national trunk prefix 0 and space-grouped numbers: 07700 900 123, 03.93.92.16.85, 72 128 827
                r"|\b0[0-9]{1,4}(?:[ .-][0-9]{2,7}){1,4}\b"
                r"|\b[1-9][0-9]{1,3}(?: [0-9]{2,4}){2,4}\b",
                _phone_valid,
                (_DIGIT_RUN,),
                _guard(r"[0-9]", r"[0-9]"),
            ),
            # Any plausible number where the text says it is one ("Phone: 467 3395", "9472 7916 office"):
            # local numbers without an area code are valid nowhere libphonenumber could check.
            PiiPattern(
                _context(
                    r"(?i:\b(?:phone|tel|telephone|mobile|cell|fax|desk|whatsapp|call me (?:on|at))"
                    r"(?: number)?\b)[:.]?[ \t]*\n?[ \t]*",
                    _PHONE_IN_CONTEXT,
                ),
                _context_phone_valid,
                (_DIGIT_RUN,),  # 7 to 15 digits joined by " ().-"
                _guard(
                    r"(?i:phone|tel|mobile|cell|fax|desk|whatsapp|call me)",
                    r"(?i:phone|tel|mobile|cell|fax|desk|whatsapp|call me on|call me at|number)|[0-9]",
                    folds=True,
                ),
            ),
            PiiPattern(
                _context(
                    r"(?:^|\s|[,:])",
                    _PHONE_IN_CONTEXT,
                    r"[ \t]*-?[ \t]*\(?(?i:office|fax|mobile|cell|home|work)\b",
                ),
                _context_phone_valid,
                (r"[0-9][ \t]*-?[ \t]*\(?[OoFfMmCcHhWw]",),  # the number's last digit, then the word
                _guard("", r"[0-9]|(?i:office|fax|mobile|cell|home|work)", folds=True),
            ),
        ),
    ),
    PiiEntity(
        "street_address",
        "[ADDRESS]",
        "A",
        (
            # One pattern per form, applied in this order: as one alternation the regex engine's lazy
            # DFA thrashes (25x slower than the forms scanned one after another).
            *(
                PiiPattern(form, prefilter=(r"[0-9]",), guard=guard)
                for form, guard in (
                    # 90 Whitchurch Road, 6750 Koskikatu 25 Apt. 864, 12 Rue de la Paix, PO Box 9168,
                    # each with the unit, town and postal-code lines that may follow it.
                    (
                        rf"(?:\b[0-9]{{1,5}}[A-Za-z]? (?:(?:\p{{Lu}}[\p{{Ll}}'.-]*|of|de|la|du) ){{1,4}}(?:{_STREET_SUFFIX})\b\.?"
                        rf"|(?:\b[0-9]{{1,5}} )?(?:{_EURO_STREET})"
                        rf"|\b[0-9]{{1,5}},? (?:{_STREET_PREFIX}|Avenue|Boulevard|Place) (?:\p{{L}}[\p{{L}}'.-]* ){{0,3}}\p{{Lu}}[\p{{L}}'.-]+(?: [0-9]{{1,4}}\b)?"
                        rf"|\b(?:{_STREET_PREFIX}) (?:\p{{L}}+ ){{0,3}}\p{{Lu}}\p{{L}}+,? [0-9]{{1,4}}\b"
                        rf"|\b(?:P\.?O\.? Box|Postbox) [0-9]{{1,5}}\b)"
                        rf"(?:,? {_UNIT})*(?:{_ADDRESS_TAIL}|(?:, \p{{Lu}}[\p{{L}}'.-]*(?: \p{{Lu}}[\p{{L}}'.-]*){{0,2}}){{1,2}}(?:,? {_POSTAL}\b)?)?",
                        _guard(
                            rf"[0-9]|{_STREET_PREFIX}|P\.?O\.? Box|Postbox",
                            rf"{_ADDRESS_ENDS}| (?:{_STREET_SUFFIX})",
                        ),
                    ),
                    # A street line of any language ("Dašická 688", "44 Søndergade 52") shown to be one
                    # by the address lines that follow it.
                    (
                        rf"\b(?:[0-9]{{1,5}}[A-Za-z]? )?\p{{Lu}}[\p{{L}}'.-]*(?: [\p{{L}}'.-]+){{0,3}} [0-9]{{1,5}}[A-Za-z]?\b\.?"
                        rf"(?:,? {_UNIT})?{_ADDRESS_TAIL}",
                        # A non-ASCII capital after the leading boundary is a side too (then a number follows).
                        _guard(
                            r"[0-9A-Z]",
                            _ADDRESS_ENDS,
                            r"(?:^|[\W0-9A-Za-z_])[\p{Lu}--[\x00-\x7F]][\p{L}'.-]*(?: [\p{L}'.-]+){0,3} [0-9]",
                        ),
                    ),
                    (
                        rf"\b[0-9]{{1,5}}[A-Za-z]? \p{{Lu}}[\p{{L}}'.-]*(?: [\p{{L}}'.-]+){{0,3}}(?:,? {_UNIT})?{_ADDRESS_TAIL}",
                        "",
                    ),
                    # Military addresses: ship or unit, then the APO/FPO/DPO line.
                    (
                        r"\b(?:USNS|USNV|USS|USCGC) \p{Lu}\p{L}+\s*,?\s*(?:FPO|APO|DPO) (?:AA|AE|AP) [0-9]{5}\b",
                        "",
                    ),
                    (
                        r"\b(?i:(?:PSC|Unit|CMR) [0-9]{4},? Box [0-9]{4}(?:\s*,?\s*[AFD]PO (?:AA|AE|AP) [0-9]{5})?)\b",
                        "",
                    ),
                    (rf"\b{_UNIT}", ""),
                )
            ),
        ),
    ),
    PiiEntity(
        "person",
        "[PERSON]",
        "N",
        (
            # Names introduced as names: titles, "my name is", "called", "Dear", "Name:".
            PiiPattern(
                _context(
                    rf"{_TITLE}|(?i:\bmy name is |\bname is |\bcalled |\bnamed |\bdear |\bname: *)",
                    _NAME,
                ),
                prefilter=(
                    r"\b(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Sir|Dame|Madam)\.? ",
                    r"(?i:mr|mrs|ms|mx|dr|prof)\. ",
                    r"(?i:name is |called |named |dear |name:)",
                ),
                guard=_guard(r"(?i:mr|ms|mx|miss|dr|prof|sir|dame|madam|my name|name|called|named|dear)"),
            ),
            # Names after a relation or role, or a cue that a person follows ("my colleague Zoe Müller",
            # "on behalf of", "ask for", "Attn:", "cc:"); capitalized words that are no names are turned down.
            PiiPattern(
                _context(
                    rf"(?i:\b(?:my|our|your|his|her|their) (?:{_RELATION})s?,? |\bon behalf of |\bask for "
                    r"|\b(?:speak|talk) (?:to|with) |\bcalls me |\bcall me |\battn:? *|\battention: *|\bc/o "
                    r"|(?m:^)(?:cc|bcc|signed|author|sender|recipient): *)",
                    _NAME,
                ),
                _name_valid,
                (
                    rf"(?i:{_RELATION}|behalf of|ask for|speak|talk|call|attn|attention|c/o|cc|signed|author|sender|recipient)",
                ),
                _guard(
                    r"(?i:(?:my|our|your|his|her|their) |on behalf of |ask for |speak |talk |calls me |call me "
                    r"|attn|attention:|c/o )",
                    folds=True,
                ),
            ),
            # Signatures: a sign-off line, then a line that is only a name; "<name> wrote:" (mail quoting).
            PiiPattern(
                _context(rf"(?im:^[ \t]*(?:{_SIGN_OFF})[,!.]?[ \t]*\n[ \t]*)", _NAME, r"[ \t]*(?m:$)"),
                _name_valid,
                (r"\n",),
            ),
            PiiPattern(_context(r"(?m:^|, )", _NAME, r" (?:<[^>\n]*> )?wrote:"), _name_valid, ("wrote:",)),
            # "<name> lives at/on/in": where a person lives is said of a person.
            PiiPattern(
                _context(r"", _NAME, r" (?:lives|lived|resides) (?:at|on|in)\b"),
                _name_valid,
                (r"(?:lives|lived|resides) (?:at|on|in)",),
                _guard("", r"(?:lives|lived|resides) (?:at|on|in)"),
            ),
            _NER_PATTERN,
        ),
    ),
)
ENTITIES_BY_NAME = {e.name: e for e in PII_ENTITIES}


def regex_parts(texts: pl.DataFrame, pattern: PiiPattern) -> list[tuple[pl.DataFrame, str]]:
    """``texts`` (a ``content`` column) split by the regex that finds ``pattern``'s matches in them at
    speed: ``ascii_regex`` where ``guard`` does not match, ``regex`` where it does (see ``_guard``)."""
    if not pattern.guard:
        return [(texts, pattern.regex)]
    content = texts.get_column("content")
    non_ascii = (content.str.len_bytes() != content.str.len_chars()).fill_null(False)
    guarded = non_ascii.scatter(non_ascii.arg_true(), content.filter(non_ascii).str.contains(pattern.guard))
    if not guarded.any():
        return [(texts, pattern.ascii_regex)]
    return [(texts.filter(~guarded), pattern.ascii_regex), (texts.filter(guarded), pattern.regex)]


class PiiRedactor:
    """Finds the configured PII entity types and replaces them per their action (or drops the record).

    Detection and replacement are Polars regex expressions over all messages. A pattern with a
    validator or a keyed action wraps every candidate in a marker, validates (and computes keyed
    replacements for) the distinct candidates, then replaces each wrapped one in a literal pass.
    """

    def __init__(self, config: PiiConfig, key: PiiKey | None = None) -> None:
        unknown = sorted(set(config.entities) - set(ENTITIES_BY_NAME))
        if unknown:
            raise ValueError(
                f"clean.pii.entities: unknown entity type(s) {unknown}; known: {sorted(ENTITIES_BY_NAME)}"
            )
        self.config = config
        self.entities = [e for e in PII_ENTITIES if e.name in config.entities]
        self.actions = dict(config.entities)
        self.drop = {name for name, action in config.entities.items() if action == "drop"}
        keyed = any(action in ("pseudonym", "hash") for action in config.entities.values())
        self.key = key or (load_key(config.key_env) if keyed else None)
        self.ner = NerPersons(config.ner_model) if config.ner_model and "person" in config.entities else None

    def __call__(self, batch: CleanBatch) -> None:
        # The private markers cannot occur in formatted text (they are control characters); make sure.
        messages = replace_where(
            batch.messages,
            "content",
            pl.col("content").str.contains(_MARKERS),
            pl.col("content").str.replace_all(_MARKERS, ""),
        )
        messages = messages.with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_m"))
        # Prefilters on the text as it came in, in one parallel select. Replacing a match with a
        # token never creates a new match, so they stay valid supersets as entities are redacted.
        prefilters = sorted({r for e in self.entities for p in e.patterns for r in p.prefilter})
        masks = messages.select([pl.col("content").str.contains(regex).alias(regex) for regex in prefilters])
        found: list[pl.DataFrame] = []  # (_m, n, entity) per message with detections
        for entity in self.entities:
            total = 0
            for pattern in entity.patterns:
                if pattern is _NER_PATTERN:
                    if self.ner is None:
                        continue
                    messages = self._mark_persons(messages)
                prefilter = (
                    masks.select(pl.any_horizontal(pattern.prefilter)).to_series()
                    if pattern.prefilter
                    else None
                )
                messages, counts = self._apply(messages, entity, pattern, prefilter)
                total += int(counts.get_column("n").sum()) if counts.height else 0
                found.append(counts.with_columns(pl.lit(entity.name).alias("entity")))
            batch.counters[f"pii.{entity.name}"] = total
        batch.messages = messages
        self._drop_records(batch, pl.concat(found) if found else None)
        self._render(batch)

    def _mark_persons(self, messages: pl.DataFrame) -> pl.DataFrame:
        """Wrap the model's PERSON spans in ``NER_PERSON`` markers, outside the tokens already placed.

        The model reads the text with every token shown as a bracketed placeholder of the same
        length ("[A]"), so offsets hold and an address or e-mail already found is never a name.
        """
        assert self.ner is not None
        # Code tasks are code: their identifiers are not names.
        idx = messages.select(pl.arg_where(candidates(pl.col("content")) & ~pl.col("_code"))).to_series()
        if idx.is_empty():
            return messages
        texts = messages[idx].get_column("content").to_list()
        marked = []
        for text, spans in zip(texts, self.ner.persons([t.translate(_VIEW) for t in texts]), strict=True):
            out, last = [], 0
            for start, end in spans:
                for piece in _TOKEN_RE.split(text[start:end]):
                    name = piece.strip(" \t\n,.;:'\"()")
                    if any(ch.isalpha() for ch in name):
                        at = text.index(name, max(start, last))
                        out += [text[last:at], NER_PERSON[0], name, NER_PERSON[1]]
                        last = at + len(name)
            marked.append("".join(out) + text[last:])
        content = messages.get_column("content").scatter(idx, pl.Series(marked, dtype=pl.String))
        return messages.with_columns(content)

    def _apply(
        self, messages: pl.DataFrame, entity: PiiEntity, pattern: PiiPattern, prefilter: pl.Series | None
    ) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Replace the pattern's valid matches with tokens; returns messages and (_m, n) counts."""
        scope = messages.select("_m", "content")
        if prefilter is not None:
            scope = scope.filter(prefilter)
        hits = [
            (hit, regex)
            for part, regex in regex_parts(scope, pattern)
            if not (hit := part.filter(pl.col("content").str.contains(regex))).is_empty()
        ]
        if not hits:
            return messages, pl.DataFrame(schema={"_m": pl.UInt32, "n": pl.UInt32})
        action = self.actions[entity.name]
        token = f"{TOKEN_OPEN}{entity.code}{TOKEN_CLOSE}"
        if pattern.validator is None and action in ("placeholder", "drop"):
            replaced = pl.concat(
                hit.select(
                    "_m",
                    pl.col("content").str.replace_all(regex, pattern.template(token)).alias("new"),
                    pl.col("content").str.count_matches(regex).cast(pl.UInt32).alias("n"),
                )
                for hit, regex in hits
            )
        else:
            replaced = self._validated(hits, entity, pattern, action)
        content = messages.get_column("content").scatter(
            replaced.get_column("_m"), replaced.get_column("new")
        )
        counts = replaced.filter(pl.col("n") > 0).select("_m", "n")
        return messages.with_columns(content), counts

    def _validated(
        self, hits: list[tuple[pl.DataFrame, str]], entity: PiiEntity, pattern: PiiPattern, action: str
    ) -> pl.DataFrame:
        """(_m, new, n): the valid candidates in ``hits`` (texts, each part with the regex to run on it)
        replaced by their tokens, the others kept.

        Every candidate is wrapped in ``_WRAP`` markers; the distinct wrapped candidates are validated
        (and given keyed replacements) once each, and one Aho-Corasick pass replaces each wrapped
        candidate by its token or by itself. The markers occur nowhere else, so a wrapped candidate
        only matches where it was wrapped.
        """
        token = f"{TOKEN_OPEN}{entity.code}{TOKEN_CLOSE}"
        wrap = pattern.template(f"{_WRAP}${{{'v' if pattern.has_context else 0}}}{_WRAP}")
        wrapped = pl.concat(
            part.select("_m", pl.col("content").str.replace_all(regex, wrap)) for part, regex in hits
        )
        hit = pl.concat(part for part, _ in hits)
        keys = (
            wrapped.select(pl.col("content").str.extract_all(f"{_WRAP}[^{_WRAP}]*{_WRAP}"))
            .get_column("content")
            .explode()
            .unique()
        )
        values = keys.str.slice(1, keys.str.len_chars() - 2)
        ok = (
            pattern.validator(values, self.config)
            if pattern.validator
            else pl.repeat(True, len(keys), eager=True)
        )
        tokens = pl.repeat(token, len(keys), dtype=pl.String, eager=True)
        if action in ("pseudonym", "hash"):
            assert self.key is not None
            clean_values = values.filter(ok).str.replace_all(_MARKERS, "")
            fakes = replacements(entity.name, clean_values, action, self.key, entity.placeholder)
            payload = fakes.map_elements(lambda v: v.translate(_ENCODE), return_dtype=pl.String)
            tokens = tokens.scatter(ok.arg_true(), TOKEN_OPEN + entity.code + payload + TOKEN_CLOSE)
        replace_with = tokens.zip_with(ok, values)
        starts = f"{TOKEN_OPEN}{entity.code}"
        new = wrapped.get_column("content").str.replace_many(keys.implode(), replace_with.implode())
        n = new.str.count_matches(starts, literal=True) - hit.get_column("content").str.count_matches(
            starts, literal=True
        )
        return pl.DataFrame({"_m": wrapped.get_column("_m"), "new": new, "n": n.cast(pl.UInt32)})

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
        """Tokens become their replacements; each one's offsets in the final text go to ``batch.redactions``.

        Vectorized: the distinct tokens get their replacements and one Aho-Corasick pass puts them in.
        A token's start is its position in the tokenized text (the lengths of the pieces before it,
        split at token starts) less what the tokens before it shrank by; only lengths are exploded.
        """
        messages = batch.messages
        tokenized = messages.filter(pl.col("content").str.contains(TOKEN_OPEN, literal=True))
        if tokenized.is_empty():
            batch.messages = messages.drop("_m")
            return
        found = (
            tokenized.select(
                "_m",
                "_row",
                "message_index",
                # One more piece than tokens: the last piece follows the last token (its token is null).
                pl.concat_list(
                    pl.col("content").str.extract_all(_TOKEN_RE.pattern), pl.lit(None, pl.String)
                ).alias("token"),
                pl.col("content")
                .str.split(TOKEN_OPEN)
                .list.eval(pl.element().str.len_chars())
                .alias("before"),
            )
            .explode(["token", "before"])
            .drop_nulls("token")
        )
        distinct = found.get_column("token").unique()
        code_to_placeholder = {e.code: e.placeholder for e in PII_ENTITIES}
        replacement = pl.Series(
            [
                code_to_placeholder[t[1]] if len(t) == 3 else t[2:-1].translate(_DECODE)
                for t in distinct.to_list()
            ],
            dtype=pl.String,
        )
        content = messages.get_column("content").scatter(
            tokenized.get_column("_m"),
            tokenized.get_column("content").str.replace_many(distinct.implode(), replacement.implode()),
        )
        batch.messages = messages.with_columns(content).drop("_m")
        code_to_entity = {e.code: e.name for e in PII_ENTITIES}
        length = pl.col("token").replace_strict(distinct, replacement.str.len_chars(), return_dtype=pl.Int32)
        shrink = pl.col("token").str.len_chars().cast(pl.Int32) - length
        # start = (sum over this and earlier tokens of the message of before + 1 - shrink) + shrink - 1:
        # a running sum over all rows less its value where the message's rows begin (no window).
        step = pl.col("before").cast(pl.Int32) + 1 - shrink
        first = (pl.col("_m") != pl.col("_m").shift(1)).fill_null(True)
        base = pl.when(first).then(step.cum_sum() - step).forward_fill()
        start = step.cum_sum() - base + shrink - 1
        batch.redactions = found.select(
            "_row",
            "message_index",
            pl.col("token").str.slice(1, 1).replace_strict(code_to_entity).alias("entity"),
            start.alias("start"),
            (start + length).alias("end"),
        )


def redact_preview(text: pl.Expr, max_chars: int = 200) -> pl.Expr:
    """``text`` shortened to ``max_chars`` with every PII pattern replaced by its placeholder.

    For previews shown in the UI: candidates are redacted without validation (a Luhn-failing card
    number is hidden too), so it errs on the side of hiding. Truncation happens after redaction.
    Names found only by a NER model are not hidden here (no model runs for a preview).
    """
    out = text
    for entity in PII_ENTITIES:
        for pattern in entity.patterns:
            if pattern is _NER_PATTERN:
                continue
            out = out.str.replace_all(pattern.regex, pattern.template(entity.placeholder.replace("$", "$$")))
    return out.str.slice(0, max_chars)
