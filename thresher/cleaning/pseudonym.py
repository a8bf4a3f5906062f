"""Keyed replacements for PII: consistent fakes (``pseudonym``) and HMAC prefixes (``hash``).

Both are HMAC-SHA256 of the entity type and the normalized value under a secret key: the same
value maps to the same replacement everywhere the key is used (one release), and without the key
the replacement cannot be linked back to the value. Fakes sit in ranges reserved for examples
where a standard exists, so a reader, a later PII pass and the cleaned stage's "no PII survives"
expectations can tell them from real data:

- e-mail: ``user-<hex>@pseudonym.invalid`` (``.invalid`` is reserved by RFC 2606, never resolvable);
- IP: the documentation ranges 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24 (RFC 5737), 2001:db8::/32
  (RFC 3849);
- IBAN: ``GB`` with bank code ``TEST`` (no such bank), valid mod-97 check digits;
- US SSN: area 666 (never assigned); phone: NANP 555-01xx (reserved for fiction); card: 4000 00xx
  (the test-card issuer range), Luhn-valid.

The key is never part of the configuration (only the name of the environment variable that holds
it), so it cannot reach the config fingerprint, run metadata or lineage.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
from collections.abc import Callable
from pathlib import Path

import polars as pl

KEY_FILE = "pii.key"


class PiiKey:
    """The secret key; its ``repr`` never shows the bytes, so it cannot leak through logs or errors."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the PII key must be at least 16 bytes")
        self._secret = secret

    def __repr__(self) -> str:
        return "PiiKey(<hidden>)"

    def digest(self, entity: str, value: str) -> bytes:
        return hmac.new(self._secret, f"{entity}\x00{value}".encode(), hashlib.sha256).digest()


def thresher_home() -> Path:
    """THRESHER_HOME resolved as the pipelines resolve it (kept here so the library needs no Dagster)."""
    return Path(os.environ.get("THRESHER_HOME", ".thresher")).resolve()


def load_key(env_var: str, home: Path | None = None) -> PiiKey:
    """The key from ``env_var``; when unset, the one in THRESHER_HOME/pii.key, created once (mode 0600).

    Why a file and not a fresh random key per run: pseudonyms must stay consistent across the
    batches of a release, which run in separate processes.
    """
    value = os.environ.get(env_var)
    if value:
        return PiiKey(value.encode())
    path = (home or thresher_home()) / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first: use theirs
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
    return PiiKey(path.read_text().strip().encode())


# --- normalization: what counts as "the same value" -------------------------------------------------


def _digits(value: str) -> str:
    return "".join(ch for ch in value if ch.isdigit())


def _casefold_words(value: str) -> str:
    return " ".join(value.casefold().split())


NORMALIZE: dict[str, Callable[[str], str]] = {
    "email": str.casefold,
    "phone": lambda v: _digits(v)[-10:],  # the national number: "+1 415…" and "(415) …" agree
    "card_number": _digits,
    "iban": lambda v: v.replace(" ", "").upper(),
    "us_ssn": _digits,
    "ip_address": lambda v: str(ipaddress.ip_address(v)) if _is_ip(v) else v.casefold(),
    "person": _casefold_words,
    "street_address": _casefold_words,
    "date_of_birth": _casefold_words,
}


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


# --- fakes ------------------------------------------------------------------------------------------

# A fixed, hand-written list (not Faker's): pseudonyms should read as names without being anyone's.
_FIRST = [
    "Alex",
    "Avery",
    "Bailey",
    "Blake",
    "Casey",
    "Charlie",
    "Dana",
    "Drew",
    "Eden",
    "Emery",
    "Finley",
    "Frankie",
    "Gray",
    "Harper",
    "Hayden",
    "Jamie",
    "Jesse",
    "Jordan",
    "Kai",
    "Kendall",
    "Lane",
    "Logan",
    "Morgan",
    "Noel",
    "Parker",
    "Peyton",
    "Quinn",
    "Reese",
    "Riley",
    "River",
    "Robin",
    "Rowan",
    "Sage",
    "Sam",
    "Skyler",
    "Taylor",
    "Terry",
    "Toni",
    "Val",
    "Wren",
]
_LAST = [
    "Ashby",
    "Brook",
    "Carver",
    "Dale",
    "Ellis",
    "Fenn",
    "Garner",
    "Hale",
    "Irving",
    "Jarvis",
    "Keller",
    "Lowry",
    "Marsh",
    "Nolan",
    "Oakes",
    "Pryor",
    "Quill",
    "Rowe",
    "Sayer",
    "Thorne",
    "Upton",
    "Vance",
    "Webb",
    "Yates",
]
_STREETS = ("Example Street", "Sample Avenue", "Placeholder Road", "Test Lane", "Fictional Way")


def _n(digest: bytes, start: int = 0, size: int = 8) -> int:
    return int.from_bytes(digest[start : start + size], "big")


def _luhn_complete(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return body + str((10 - total % 10) % 10)


def _iban(digest: bytes) -> str:
    # GB + check digits + bank code "TEST" (no such bank) + 14 digits, with a valid mod-97 checksum.
    bban = f"TEST{_n(digest) % 10**14:014d}"
    numeric = "".join(str(int(ch, 36)) for ch in bban + "GB00")
    return f"GB{98 - int(numeric) % 97:02d}{bban}"


def _ip(value: str, digest: bytes) -> str:
    if ":" in value:  # IPv6 documentation prefix 2001:db8::/32
        return str(ipaddress.IPv6Address((0x20010DB8 << 96) | _n(digest, 0, 12)))
    nets = ("192.0.2", "198.51.100", "203.0.113")  # the three IPv4 documentation ranges
    return f"{nets[digest[0] % 3]}.{1 + digest[1] % 254}"


def _fake(entity: str, value: str, digest: bytes) -> str:
    n = _n(digest)
    if entity == "email":
        return f"user-{digest[:4].hex()}@pseudonym.invalid"
    if entity == "phone":  # 555-0100..0199 is reserved for fiction in the NANP
        return f"+1 {200 + n % 800:03d}-555-01{digest[8] % 100:02d}"
    if entity == "card_number":  # 4000 00xx: the issuer range card networks' test cards use
        body = _luhn_complete(f"400000{n % 10**9:09d}")
        return " ".join(body[i : i + 4] for i in range(0, 16, 4))
    if entity == "iban":
        return _iban(digest)
    if entity == "us_ssn":  # area 666 is never assigned
        return f"666-{1 + n % 99:02d}-{1 + digest[8] * 39 % 9999:04d}"
    if entity == "ip_address":
        return _ip(value, digest)
    if entity == "url_credentials":
        return f"user-{digest[:3].hex()}:redacted"
    if entity == "api_key":
        return f"EXAMPLE-KEY-{digest[:12].hex()}"
    if entity == "person":
        return f"{_FIRST[n % len(_FIRST)]} {_LAST[(n // len(_FIRST)) % len(_LAST)]}"
    if entity == "street_address":
        return f"{1 + n % 999} {_STREETS[digest[8] % len(_STREETS)]}"
    if entity == "date_of_birth":  # a date in 1950-1999, ISO format
        return f"{1950 + n % 50}-{1 + digest[8] % 12:02d}-{1 + digest[9] % 28:02d}"
    raise KeyError(entity)


def replacements(entity: str, values: pl.Series, action: str, key: PiiKey, placeholder: str) -> pl.Series:
    """The keyed replacement of every value (computed once per distinct value)."""
    normalize = NORMALIZE.get(entity, str)
    mapping: dict[str, str] = {}
    for value in values.unique().to_list():
        digest = key.digest(entity, normalize(value))
        if action == "hash":
            mapping[value] = f"{placeholder[:-1]}:{digest[:6].hex()}]"
        else:
            mapping[value] = _fake(entity, value, digest)
    return values.replace_strict(mapping, return_dtype=pl.String)
