"""Specification of the cleaned stage: formatting, PII redaction and quality rules.

Each test builds a few canonical records, runs ``Cleaner`` and states what must come out.
"""

from __future__ import annotations

import json
from typing import ClassVar

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tests.conftest import CORPORA
from thresher.cleaning import Cleaner, luhn_valid, redact_preview
from thresher.config import PII_ENTITY_TYPES, CleanConfig, PiiConfig, QualityConfig
from thresher.records import conform, empty_records

# Language ID off unless a test is about it: the other specs must not depend on the model.
NO_LANGUAGE = CleanConfig(quality=QualityConfig(language=None))


def record(
    assistant: str | None,
    user: str = "Please answer the question.",
    *,
    task: str = "chat",
    n: int = 0,
    system: str | None = None,
) -> dict:
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": user})
    if assistant is not None:
        messages.append({"role": "assistant", "content": assistant})
    return {
        "record_id": f"0123456789ab:{n}",
        "batch": "b1",
        "task": task,
        "messages": messages,
        "source_file": "landing/test.jsonl",
        "source_line": n + 1,
    }


def frame(*records: dict) -> pl.DataFrame:
    rows = [{**r, "record_id": f"0123456789ab:{i}", "source_line": i + 1} for i, r in enumerate(records)]
    return conform(pl.DataFrame(rows))


def clean(*records: dict, config: CleanConfig = NO_LANGUAGE):
    result = Cleaner(config).run(frame(*records))
    result.check_conservation()
    return result


def contents(result, record_index: int = 0) -> list[str]:
    row = result.kept.row(record_index, named=True)
    return [m["content"] for m in row["messages"]]


def cleaned_text(text: str, *, task: str = "chat", config: CleanConfig = NO_LANGUAGE) -> str:
    """What one user message becomes (the record has a harmless assistant answer)."""
    result = clean(record("Sure, here it is.", user=text, task=task), config=config)
    assert result.kept.height == 1, result.rejected.to_dicts()
    return contents(result)[0]


def only_rejection(result) -> dict:
    assert result.kept.height == 0
    assert result.rejected.height == 1
    return result.rejected.row(0, named=True)


def everything_as_text(result) -> str:
    """Every string the stage outputs: kept records, ledger, side tables, counter names."""
    parts = [
        json.dumps(result.kept.to_dicts(), default=str),
        json.dumps(result.rejected.to_dicts(), default=str),
    ]
    parts += [json.dumps(t.to_dicts(), default=str) for t in result.tables.values()]
    parts.append(json.dumps(result.counters))
    return "\n".join(parts)


# --- formatting ----------------------------------------------------------------------------------------


class TestHtml:
    def test_block_tags_become_line_breaks_and_other_tags_go(self):
        out = cleaned_text("<div><p>Hello <b>world</b></p><p>Second<br>line</p></div>")
        assert out == "Hello world\n\nSecond\nline"

    def test_entities_are_unescaped_once(self):
        out = cleaned_text("<p>a &lt; b &amp;&amp; c &gt; d, &quot;q&quot; &#39;s&#39; &amp;lt; &nbsp;x</p>")
        assert out == "a < b && c > d, \"q\" 's' &lt; x"

    def test_rare_named_and_numeric_entities_fall_back_to_the_full_table(self):
        assert (
            cleaned_text("<p>caf&eacute; costs 5&#8364; &#x263A; &amp;eacute;</p>")
            == "café costs 5€ ☺ &eacute;"
        )

    def test_scripts_styles_and_comments_are_dropped_with_their_content(self):
        out = cleaned_text("<p>Visible</p><script>var x = 1 < 2;</script><style>p {}</style><!-- note -->")
        assert out == "Visible"

    def test_comparisons_in_plain_text_are_not_html(self):
        for text in ["if a < b and c > d: return", "x<b and c>y", "Use the <p> tag for paragraphs."]:
            assert cleaned_text(text) == text

    def test_code_inside_fences_keeps_its_angle_brackets_and_entities(self):
        text = (
            '<p>Example:</p>\n```html\n<div class="x">a &lt; b</div>\nif a < b and c > d:\n```\n<p>Done</p>'
        )
        expected = 'Example:\n\n```html\n<div class="x">a &lt; b</div>\nif a < b and c > d:\n```\n\nDone'
        assert cleaned_text(text) == expected

    def test_code_tasks_are_never_treated_as_html(self):
        text = "Write strip_tags so that strip_tags('<p>hi</p>') == 'hi'."
        assert cleaned_text(text, task="code") == text

    def test_strip_html_false_leaves_tags(self):
        config = CleanConfig(strip_html=False, quality=QualityConfig(language=None))
        assert cleaned_text("<p>Hello</p>", config=config) == "<p>Hello</p>"

    def test_counter_counts_messages_changed(self):
        result = clean(record("<p>Fine.</p>", user="<b>Bold</b> question"), record("Plain answer."))
        assert result.counters["format.html_stripped"] == 2


class TestControlCharsAndWhitespace:
    def test_control_characters_are_removed_and_line_ends_normalised(self):
        assert cleaned_text("a\x00b\x07c\u200b\r\nd\re\tf\ufeff") == "abc\nd\ne\tf"

    def test_runs_of_spaces_collapse_but_indentation_stays(self):
        text = "Steps:   first  then\n    - nested item   \n\tTabbed line"
        assert cleaned_text(text) == "Steps: first then\n    - nested item\n\tTabbed line"

    def test_three_or_more_blank_lines_become_one_and_ends_are_stripped(self):
        assert cleaned_text("  \n Top\n\n\n\n\nBottom\n\n\nEnd \n ") == "Top\n\nBottom\n\n\nEnd"

    def test_code_in_fences_and_code_tasks_keeps_its_spacing(self):
        fenced = "Look:\n```python\nx  =  1    # aligned\n\n\n\n\ny = 2\n```"
        assert cleaned_text(fenced) == fenced
        code = "def f(x):\n    return  x   +  1"
        result = clean(record(code, user="    def f(x):", task="code"))
        assert contents(result) == ["    def f(x):", code]

    def test_counters(self):
        result = clean(record("Clean answer.", user="a\x07b"), record("Two  spaces."), record("Clean."))
        assert result.counters["format.control_chars"] == 1
        assert result.counters["format.whitespace"] == 1


# --- PII -------------------------------------------------------------------------------------------------


def redacted(text: str) -> str:
    return cleaned_text(text)


class TestEmail:
    def test_emails_are_replaced(self):
        assert redacted("Mail john.doe+x@mail.example.co.uk today.") == "Mail [EMAIL] today."

    def test_at_signs_that_are_not_emails_stay(self):
        for text in ["@decorator on a method", "x = a@b.T is a matrix product", "Meet @ 5pm"]:
            assert redacted(text) == text


class TestPhone:
    @pytest.mark.parametrize(
        "phone",
        [
            "(415) 555-0132",
            "415-555-0132",
            "415.555.0132",
            "+44 20 7946 0958",
            "+1-984-555-0190",  # libphonenumber: a NANP exchange cannot start with 1 (was 182)
            "+4915112345678",
            "07700 900 123",
            "03.93.92.16.85",
            "(08) 8747 6301",
            "415-555-0132 x204",
            "(898)666-3621x0135",
        ],
    )
    def test_phone_formats_are_replaced(self, phone):
        assert redacted(f"Call {phone} now.") == "Call [PHONE] now."

    @pytest.mark.parametrize(
        "text",
        [
            "It happened in 2024.",
            "Version 10.15.7 is out.",
            "It costs $1,234,567.89.",
            "Order 12345 shipped.",
            "Dates 2024-01-15 and 2023-12-31.",
            "Plain digits 4155550132 have no separators.",
            "Short +44 20 79 is not enough digits.",
            "On 01.02.1990 in town.",  # "Born 01.02.1990" is now a date of birth
            "Scores 0 12 34 are low.",
            "Call 555-0132 locally.",
        ],
    )
    def test_numbers_that_are_not_phones_stay(self, text):
        assert redacted(text) == text


class TestCardNumber:
    @pytest.mark.parametrize(
        "card",
        [
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "4111111111111111",
            "378282246310005",
            "3782 822463 10005",
        ],
    )
    def test_luhn_valid_cards_are_replaced(self, card):
        assert redacted(f"Card {card} expires soon.") == "Card [CARD_NUMBER] expires soon."

    def test_a_luhn_failing_sixteen_digit_number_stays(self):
        assert redacted("Ref 4111 1111 1111 1112 is not a card.") == "Ref 4111 1111 1111 1112 is not a card."

    def test_a_millisecond_timestamp_is_not_a_card_even_if_it_passes_luhn(self):
        assert luhn_valid(pl.Series(["1700000000004"])).item()
        assert redacted("At 1700000000004 ms.") == "At 1700000000004 ms."

    def test_luhn(self):
        values = pl.Series(["79927398713", "79927398710", "4111111111111111", "", "12345678901234567890"])
        assert luhn_valid(values).to_list() == [True, False, True, False, False]


class TestIpAddress:
    def test_ipv4_addresses_are_replaced(self):
        assert redacted("Server 192.168.1.20 and 8.8.8.8.") == "Server [IP_ADDRESS] and [IP_ADDRESS]."

    def test_dotted_quads_are_addresses_unless_they_look_like_versions(self):
        # Decision: "1.2.3.4" on its own is a valid IPv4 address and is redacted (we cannot tell);
        # a dotted quad written as a version ("v1.2.3.4", "version 1.2.3.4"), longer dotted runs
        # ("1.2.3.4.5") and octets above 255 are not addresses.
        assert redacted("Use 1.2.3.4 as DNS.") == "Use [IP_ADDRESS] as DNS."
        for text in [
            "Upgrade to v1.2.3.4 today.",
            "We shipped version 1.2.3.4 today.",
            "Build 1.2.3.4.5.",
            "Not 999.1.1.1.",
        ]:
            assert redacted(text) == text

    @pytest.mark.parametrize(
        "ip", ["2001:0db8:85a3:0000:0000:8a2e:0370:7334", "2001:db8::1", "fe80::1ff:fe23:4567:890a"]
    )
    def test_ipv6_full_and_compressed(self, ip):
        assert redacted(f"Host {ip} is up.") == "Host [IP_ADDRESS] is up."

    def test_colons_in_code_and_times_are_not_ipv6(self):
        for text in [
            "Call Add::new() or std::vector.",
            "Meet at 12:30:45 today.",
            "MAC 00:1A:2B:3C:4D:5E here.",
        ]:
            assert redacted(text) == text


class TestApiKey:
    @pytest.mark.parametrize(
        "key",
        [
            "sk-abcdefghijklmnopqrstuvwxyz0123456789",
            "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz_0123456789",
            "AKIAIOSFODNN7EXAMPLE",
            "ghp_" + "a1B2c3D4e5" * 3 + "f6G7h8",
            "xoxb-123456789012-abcdefghijkl",
            "AIzaSyA1234567890abcdefghijklmnopqrstuv",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        ],
    )
    def test_keys_are_replaced(self, key):
        assert redacted(f"export KEY={key}\nthen run it.") == "export KEY=[API_KEY]\nthen run it."

    def test_private_key_blocks_are_replaced_whole(self):
        block = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA1x2\nabc+/=\n-----END RSA PRIVATE KEY-----"
        assert redacted(f"Key:\n{block}\nDone.") == "Key:\n[API_KEY]\nDone."

    def test_words_that_merely_start_like_keys_stay(self):
        for text in ["The task-sk-list is short.", "sk-learn is a typo of scikit-learn."]:
            assert redacted(text) == text


class TestRedactionRecords:
    TEXT = "Mail ann@example.org, call (415) 555-0132, card 4111 1111 1111 1111, host 10.0.0.7, key AKIAIOSFODNN7EXAMPLE."
    VALUES: ClassVar[list[str]] = [
        "ann@example.org",
        "(415) 555-0132",
        "4111 1111 1111 1111",
        "10.0.0.7",
        "AKIAIOSFODNN7EXAMPLE",
    ]

    def test_offsets_point_at_the_placeholders_in_the_cleaned_text(self):
        result = clean(record(f"Sure.  Also é {self.TEXT}", user=f"<p>Ünïcode</p> {self.TEXT}"))
        redactions = result.tables["redactions"]
        assert redactions.schema == pl.Schema(
            {
                "record_id": pl.String,
                "message_index": pl.Int32,
                "entity": pl.String,
                "start": pl.Int32,
                "end": pl.Int32,
            }
        )
        assert redactions.height == 10
        texts = contents(result)
        placeholders = {"email": "[EMAIL]", "phone": "[PHONE]", "card_number": "[CARD_NUMBER]"}
        placeholders |= {"ip_address": "[IP_ADDRESS]", "api_key": "[API_KEY]"}
        for row in redactions.iter_rows(named=True):
            assert texts[row["message_index"]][row["start"] : row["end"]] == placeholders[row["entity"]]
        assert redactions.filter(pl.col("message_index") == 0)["entity"].to_list() == [
            "email",
            "phone",
            "card_number",
            "ip_address",
            "api_key",
        ]

    def test_counters_count_redactions_per_entity(self):
        result = clean(record("Fine.", user=self.TEXT), record(f"Again: {self.TEXT}"))
        for entity in ["email", "phone", "card_number", "ip_address", "api_key"]:
            assert result.counters[f"pii.{entity}"] == 2

    def test_no_original_value_appears_in_any_output(self):
        result = clean(
            record(f"Kept: {self.TEXT}", user=self.TEXT),
            record(f"I'm sorry, but I can't share {self.TEXT}"),  # rejected as a refusal
            record("", user=self.TEXT),  # rejected: empty response
            # The kept answer echoes the prompt on purpose (every value in both turns).
            config=CleanConfig(quality=QualityConfig(language=None, copy_instruction={"enabled": False})),
        )
        assert result.kept.height == 1 and result.rejected.height == 2
        output = everything_as_text(result)
        for value in self.VALUES:
            assert value not in output

    def test_redactions_are_listed_for_kept_records_only(self):
        result = clean(record(f"Kept: {self.TEXT}"), record(f"I'm sorry, but I can't share {self.TEXT}"))
        assert set(result.tables["redactions"]["record_id"]) == {"0123456789ab:0"}

    def test_drop_action_rejects_the_record_naming_entity_and_message_only(self):
        config = CleanConfig(
            pii=PiiConfig(entities={"email": "drop", "phone": "placeholder"}),
            quality=QualityConfig(language=None),
        )
        result = clean(
            record("Reach me at bob@example.com or 415-555-0132.", user="hi"),
            record("Call 415-555-0132 please.", user="hi"),
            config=config,
        )
        rejection = result.rejected.row(0, named=True)
        assert rejection["rule"] == "pii_drop"
        assert rejection["detail"] == "record contains PII configured to drop the record: email in message 1"
        assert contents(result) == ["hi", "Call [PHONE] please."]
        assert "bob@example.com" not in everything_as_text(result)
        assert result.counters["quality.pii_drop"] == 1

    def test_entities_not_configured_are_left_alone(self):
        config = CleanConfig(
            pii=PiiConfig(entities={"email": "placeholder"}), quality=QualityConfig(language=None)
        )
        assert cleaned_text("ann@example.org 415-555-0132", config=config) == "[EMAIL] 415-555-0132"

    def test_unknown_entity_types_are_a_configuration_error(self):
        with pytest.raises(ValueError, match="unknown entity type"):
            Cleaner(CleanConfig(pii=PiiConfig(entities={"ssn": "placeholder"})))

    def test_placeholders_already_in_the_text_are_not_reported(self):
        result = clean(record("The data had [EMAIL] in it already."))
        assert result.tables["redactions"].is_empty()

    def test_preview_redacts_without_validation(self):
        preview = pl.select(
            redact_preview(pl.lit("ann@example.org 4111 1111 1111 1112 tail"), max_chars=30)
        ).item()
        assert preview == "[EMAIL] [CARD_NUMBER] tail"


class TestPresidioCorpus:
    """Recall and false alarms on the presidio-research synthetic dataset (third-party, span-labelled)."""

    KINDS: ClassVar[dict[str, str]] = {
        "EMAIL_ADDRESS": "email",
        "CREDIT_CARD": "card_number",
        "IP_ADDRESS": "ip_address",
    }

    @pytest.fixture(scope="class")
    def corpus(self):
        data = json.loads((CORPORA / "pii/presidio/synth_dataset_v2.json").read_text())
        result = clean(*[record("Noted.", user=d["full_text"]) for d in data])
        return data, result

    def test_recall_of_emails_cards_and_ips(self, corpus):
        data, result = corpus
        cleaned = (
            result.kept.select(pl.col("messages").list.first().struct.field("content")).to_series().to_list()
        )
        assert len(cleaned) == len(data)
        found = dict.fromkeys(self.KINDS, 0)
        total = dict.fromkeys(self.KINDS, 0)
        for out, item in zip(cleaned, data, strict=True):
            for span in item["spans"]:
                kind, value = span["entity_type"], span["entity_value"]
                # Card numbers shorter than 13 digits are outside the spec.
                if kind in self.KINDS and (kind != "CREDIT_CARD" or len(value) >= 13):
                    total[kind] += 1
                    found[kind] += value not in out
        assert total["EMAIL_ADDRESS"] > 40 and total["CREDIT_CARD"] > 100 and total["IP_ADDRESS"] > 10
        assert found["EMAIL_ADDRESS"] == total["EMAIL_ADDRESS"]
        assert found["IP_ADDRESS"] == total["IP_ADDRESS"]
        assert found["CREDIT_CARD"] / total["CREDIT_CARD"] >= 0.95

    def test_few_false_alarms_in_texts_without_that_entity(self, corpus):
        data, result = corpus
        labelled = pl.DataFrame(
            {
                "record_id": [f"0123456789ab:{i}" for i in range(len(data))],
                "types": [[s["entity_type"] for s in d["spans"]] for d in data],
            }
        )
        redactions = result.tables["redactions"].join(labelled, on="record_id")
        wrong = redactions.filter(
            (pl.col("entity") == "email") & ~pl.col("types").list.contains("EMAIL_ADDRESS")
            | (pl.col("entity") == "card_number") & ~pl.col("types").list.contains("CREDIT_CARD")
            | (pl.col("entity") == "ip_address") & ~pl.col("types").list.contains("IP_ADDRESS")
        )
        assert wrong.height <= 3, wrong


# --- quality rules ----------------------------------------------------------------------------------------


class TestQualityRules:
    def test_empty_after_cleaning(self):
        rejection = only_rejection(clean(record(" \x00 ", user="<p> </p>")))
        assert rejection["rule"] == "empty_after_cleaning"
        assert rejection["detail"] == "all 2 messages are empty after formatting cleanup"

    def test_empty_response(self):
        rejection = only_rejection(clean(record("   ")))
        assert (rejection["rule"], rejection["detail"]) == (
            "empty_response",
            "last assistant message is empty after cleaning",
        )
        rejection = only_rejection(clean(record(None)))
        assert (rejection["rule"], rejection["detail"]) == (
            "empty_response",
            "record has no assistant message",
        )

    def test_response_too_short(self):
        rejection = only_rejection(clean(record("A")))
        assert rejection["rule"] == "response_too_short"
        assert rejection["detail"] == "assistant response is 1 characters; minimum is 2"
        assert clean(record("OK")).kept.height == 1

    def test_response_too_long(self):
        config = CleanConfig(quality=QualityConfig(language=None, max_response_chars=20))
        rejection = only_rejection(clean(record("This answer is far too long.", user="q"), config=config))
        assert rejection["rule"] == "response_too_long"
        assert rejection["detail"] == "assistant response is 28 characters; maximum is 20"

    @pytest.mark.parametrize(
        "text",
        [
            "I'm sorry, but I can't help with that.",
            "I’m sorry but I cannot do this.",
            "As an AI language model, I do not have opinions.",
            "I cannot help with this request.",
            "I am unable to browse the internet.",
            "Sorry, I can't assist with that.",
            "I apologize, but I cannot provide that information.",
        ],
    )
    def test_refusals(self, text):
        rejection = only_rejection(clean(record(text)))
        assert rejection["rule"] == "refusal"
        assert rejection["detail"].startswith("assistant response opens with a refusal or AI disclaimer")
        assert text not in rejection["detail"]

    @pytest.mark.parametrize(
        "text",
        [
            "I'm sorry to hear that. Here are some tips that may help.",
            "Sorry for the wait: the answer is 42.",
            "Here is how. As an AI language model I was trained on text.",
        ],
    )
    def test_apologies_and_later_disclaimers_are_not_refusals(self, text):
        assert clean(record(text)).kept.height == 1

    def test_refusal_rule_can_be_switched_off(self):
        config = CleanConfig(quality=QualityConfig(language=None, refusals=False))
        assert clean(record("I'm sorry, but I can't help with that."), config=config).kept.height == 1

    @pytest.mark.parametrize(
        "text",
        [
            "Dogs are loyal. They love their owners and",
            "The main causes are poverty, war,",
            "You should consider the",
            "Here is the code:\n```python\nprint('hi')",
        ],
    )
    def test_truncated_responses(self, text):
        rejection = only_rejection(clean(record(text)))
        assert rejection["rule"] == "truncated_response"

    def test_truncation_details(self):
        rejected = clean(
            record("First sentence. Second one is cut and"), record("Code:\n```python\nx = 1")
        ).rejected
        assert rejected["detail"].to_list() == [
            "assistant response ends mid-sentence (last character is a letter; expected sentence-ending "
            "punctuation, a closing bracket or quote, a digit, an emoji or a closing code fence)",
            "assistant response has 1 code fences (an odd number), so a code block is left open",
        ]

    @pytest.mark.parametrize(
        "text",
        [
            "Paris",
            "The Benefits of Solar Energy for Homeowners",
            "The answer is 42",
            "Great question 😀",
            "Ingredients:\n- flour\n- two eggs",
            "Steps:\n1. Preheat the oven\n2. Bake it",
            "Example:\n```python\nprint('hi')\n```",
            "| a | b |\n|---|---|\n| 1 | x |",
            'He said "stop"',
            "See the docs (section 2)",
        ],
    )
    def test_finished_responses_are_not_truncated(self, text):
        assert clean(record(text)).kept.height == 1

    def test_code_and_math_tasks_skip_truncation(self):
        result = clean(
            record("def f(x):\n    return x and", task="code"),
            record("Half of 8 is 4. So the answer is x where x", task="math"),
        )
        assert result.kept.height == 2

    def test_repetitive(self):
        rejection = only_rejection(clean(record("Yes.\nYes.\nYes.\nYes.")))
        assert rejection["rule"] == "repetitive"
        assert (
            rejection["detail"]
            == "0.75 of the assistant response's 4 lines repeat an earlier line; maximum is 0.5"
        )

    def test_not_repetitive(self):
        assert clean(record("One.\nTwo.\nOne.\nThree.")).kept.height == 1  # 0.25
        assert clean(record("Same.\nSame.\nSame.")).kept.height == 1  # fewer than 4 lines
        braces = "int f() {\n  if (a) {\n    b();\n  }\n  if (c) {\n    d();\n  }\n}"
        assert clean(record(braces, task="code")).kept.height == 1  # lines without letters don't count

    def test_the_first_rule_in_order_decides(self):
        config = CleanConfig(quality=QualityConfig(language=None, min_response_chars=100))
        rejection = only_rejection(clean(record("I'm sorry, but I can't help with that."), config=config))
        assert rejection["rule"] == "response_too_short"
        assert rejection["detail"] == "assistant response is 38 characters; minimum is 100"

    def test_the_response_is_the_last_assistant_message(self):
        record_ = record("Fine answer.")
        record_["messages"] += [{"role": "user", "content": "And?"}, {"role": "assistant", "content": "A"}]
        assert only_rejection(clean(record_))["rule"] == "response_too_short"

    def test_details_never_quote_the_record(self):
        texts = ["I'm sorry, but I can't help with that secret.", "Secret line.\n" * 5, "secret and the"]
        result = clean(*[record(t) for t in texts])
        assert result.rejected.height == 3
        assert not result.rejected["detail"].str.contains("(?i)secret").any()


# --- language ------------------------------------------------------------------------------------------


def corpus_lines(language: str, count: int) -> list[str]:
    lines = (CORPORA / "langid" / f"{language}.txt").read_text(encoding="utf-8").splitlines()
    return [line for line in lines if len(line) >= 40][: 2 * count]


class TestLanguage:
    COUNT = 60

    def dialogues(self, language: str) -> list[dict]:
        lines = corpus_lines(language, self.COUNT)
        return [record(lines[2 * i + 1], user=lines[2 * i]) for i in range(self.COUNT)]

    def test_records_in_other_languages_are_rejected(self):
        records = [r for language in ("en", "es", "de", "fr") for r in self.dialogues(language)]
        result = clean(*records, config=CleanConfig())
        kept_ids = set(result.kept["record_id"])
        ids = [f"0123456789ab:{i}" for i in range(len(records))]
        english, foreign = ids[: self.COUNT], ids[self.COUNT :]
        assert sum(i in kept_ids for i in english) >= 0.95 * self.COUNT
        wrong = result.rejected.filter(pl.col("rule") == "wrong_language")
        assert wrong.height >= 0.95 * len(foreign)
        assert set(wrong["record_id"]) <= set(foreign)
        assert (
            wrong["detail"]
            .str.contains(
                r"^text identified as '(es|de|fr)' with probability [01]\.\d+; dataset language is 'en'$"
            )
            .all()
        )
        # Language ID runs last, on the records no other rule rejected.
        assert result.counters["quality.language_checked"] == len(records) - (
            result.rejected.height - wrong.height
        )

    def test_the_dataset_language_is_configurable(self):
        config = CleanConfig(quality=QualityConfig(language="de"))
        result = clean(*self.dialogues("de"), *self.dialogues("en")[:10], config=config)
        assert result.kept.height >= 0.95 * self.COUNT
        assert result.rejected_by_rule.get("wrong_language", 0) >= 9

    def test_short_texts_code_tasks_and_fenced_code_are_not_checked(self):
        spanish = "Hola, ¿cómo estás? Estoy muy bien, gracias por preguntar."
        result = clean(
            record("Sí.", user="¿Hola?"),  # shorter than language_min_chars
            record(spanish, user=spanish, task="code"),
            record(
                "Here is the fix.\n```python\n# comentario en español: devuelve la suma de los números\n```"
            ),
            config=CleanConfig(quality=QualityConfig(language_min_chars=20)),
        )
        assert result.kept.height == 3
        # Only the third: the first is too short, the second is a code task, the third's Spanish is in a fence.
        assert result.counters["quality.language_checked"] == 1


# --- stage-level properties --------------------------------------------------------------------------------


def mixed_batch() -> pl.DataFrame:
    return frame(
        record("<p>Answer: mail <b>x@example.com</b>.</p>", user="Q1"),
        record("I'm sorry, but I can't help with that.", user="Q2"),
        record("Card 4111 1111 1111 1111 noted.", user="Q3 from 10.1.2.3"),
        record("   "),
        record("def f():\n    return 1", user="Write f.", task="code"),
        record("Yes.\nYes.\nYes.\nYes."),
    )


def test_conservation_and_columns():
    records = mixed_batch().with_columns(pl.lit("x").alias("extra_stage_column"))
    result = Cleaner(NO_LANGUAGE).run(records)
    result.check_conservation()
    assert result.kept.columns == records.columns
    assert result.kept.schema == records.schema
    assert result.rows_in == 6 and result.kept.height + result.rejected.height == 6
    assert result.rejected_by_rule == {"empty_response": 1, "refusal": 1, "repetitive": 1}
    assert result.rejected["source_line"].to_list() == [2, 4, 6]  # ledger in input order


def test_kept_records_keep_everything_but_content():
    records = mixed_batch()
    result = Cleaner(NO_LANGUAGE).run(records)
    original = records.join(result.kept.select("record_id"), on="record_id", how="semi")
    assert_frame_equal(result.kept.drop("messages"), original.drop("messages"))
    roles = result.kept.select(pl.col("messages").list.eval(pl.element().struct.field("role")))
    assert (
        roles.to_series().to_list()
        == original.select(pl.col("messages").list.eval(pl.element().struct.field("role")))
        .to_series()
        .to_list()
    )


def test_deterministic():
    first = Cleaner(CleanConfig()).run(mixed_batch())
    second = Cleaner(CleanConfig()).run(mixed_batch())
    assert_frame_equal(first.kept, second.kept)
    assert_frame_equal(first.rejected, second.rejected)
    assert_frame_equal(first.tables["redactions"], second.tables["redactions"])
    assert first.counters == second.counters


def test_counter_names():
    result = Cleaner(CleanConfig()).run(mixed_batch())
    expected = {
        "format.html_stripped",
        "format.special_tokens",
        "format.mojibake",
        "format.markdown",
        "format.control_chars",
        "format.whitespace",
        "quality.language_checked",
    }
    expected |= {f"pii.{e}" for e in PII_ENTITY_TYPES}
    rules = ["empty_after_cleaning", "empty_response", "response_too_short", "response_too_long", "refusal"]
    rules += ["placeholder_text", "truncated_response", "repetitive", "copies_instruction"]
    rules += ["gopher_word_count", "gopher_mean_word_length", "gopher_symbol_ratio", "gopher_bullet_lines"]
    rules += ["gopher_ellipsis_lines", "gopher_alpha_words", "gopher_stop_words", "c4_javascript_notice"]
    rules += ["c4_curly_brace", "c4_too_few_sentences", "unsafe_content", "wrong_language"]
    expected |= {f"quality.{r}" for r in rules}
    assert set(result.counters) == expected


def test_empty_input():
    result = Cleaner(CleanConfig()).run(empty_records())
    result.check_conservation()
    assert result.kept.is_empty() and result.rejected.is_empty() and result.tables["redactions"].is_empty()


def test_records_without_messages_are_rejected_not_lost():
    empty = {**record("x"), "messages": []}
    rejection = only_rejection(clean(empty))
    assert (rejection["rule"], rejection["detail"]) == ("empty_after_cleaning", "record has no messages")


def test_python_slices_in_code_are_not_ipv6_addresses() -> None:
    from thresher.cleaning import Cleaner
    from thresher.config import CleanConfig
    from thresher.records import conform

    code = "```python\ndef f(lst):\n    return list(zip(lst[1::2], lst[::2], lst[10::20]))\n```"
    records = conform(
        pl.DataFrame(
            {
                "record_id": ["c:1", "c:2"],
                "task": ["code", "chat"],
                "messages": [
                    [{"role": "user", "content": "Swap pairs."}, {"role": "assistant", "content": code}],
                    [
                        {"role": "user", "content": "Which host?"},
                        {"role": "assistant", "content": "It was 2001:db8::1 and fe80::1 today."},
                    ],
                ],
                "source_file": ["f", "f"],
                "source_line": [1, 2],
                "origin": ["source", "source"],
            }
        )
    )
    kept = Cleaner(CleanConfig()).run(records).kept
    contents = kept["messages"].list.last().struct.field("content").to_list()
    assert contents[0] == code
    assert contents[1] == "It was [IP_ADDRESS] and [IP_ADDRESS] today."
