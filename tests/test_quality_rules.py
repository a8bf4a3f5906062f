"""Specification of the cleaned stage's quality rules beyond the basic ones (see test_cleaning.py).

For each rule: records that must be rejected, with the exact ledger rule name and a detail that
quotes none of the record's text, and look-alikes that must be kept. Then: rule order, config
thresholds, determinism, and the reviewer's view of every rule's drops.
"""

from __future__ import annotations

import random
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tests.test_cleaning import clean, frame, record
from thresher.cleaning import Cleaner
from thresher.cleaning.batch import CleanBatch, explode_messages
from thresher.cleaning.rules import (
    _CUT_END,
    PLACEHOLDER_PATTERNS,
    RULE_DESCRIPTIONS,
    CopyInstructionRule,
    DocumentRules,
    PlaceholderRule,
    QualityFilter,
    UnsafeContentRule,
    _live_features,
    _normalized,
    ascii_word_view,
    load_wordlist,
)
from thresher.config import CleanConfig, QualityConfig, UnsafeWordsConfig

NO_LANGUAGE = CleanConfig(quality=QualityConfig(language=None))

# A legitimate long answer: prose with headings, a few bullets, inline and fenced code, numbers.
ESSAY = (
    "## Why sleep matters\n\n"
    "Sleep is one of the most important things you can do for your health, and most adults need "
    "between seven and nine hours of it every night. During sleep the brain consolidates memories, "
    "clears waste products and regulates the hormones that control appetite and mood.\n\n"
    "A few habits help:\n"
    "- Keep a regular schedule, even at weekends.\n"
    "- Avoid caffeine in the afternoon.\n"
    "- Keep the bedroom dark, cool and quiet.\n\n"
    "If you track your sleep with an app, the `export` button gives you a CSV file:\n"
    "```python\nrows = {r['date']: r['hours'] for r in data}\n```\n"
    "People who sleep poorly for weeks are more likely to have trouble concentrating, and they "
    "catch colds more often. If problems persist for more than a month, it is worth talking to a "
    "doctor, because conditions such as sleep apnea are common and can be treated."
)


def rejected(text: str, *, user: str = "Please answer the question.", task: str = "chat", config=NO_LANGUAGE):
    result = clean(record(text, user=user, task=task), config=config)
    assert result.rejected.height == 1, f"kept: {text!r}"
    row = result.rejected.row(0, named=True)
    return row["rule"], row["detail"]


def kept(
    text: str, *, user: str = "Please answer the question.", task: str = "chat", config=NO_LANGUAGE
) -> bool:
    result = clean(record(text, user=user, task=task), config=config)
    return result.kept.height == 1 and result.rejected.is_empty()


def assert_no_record_text(detail: str, text: str) -> None:
    """No run of four words of the record appears in the detail."""
    words = text.split()
    for i in range(len(words) - 3):
        assert " ".join(words[i : i + 4]) not in detail


def test_a_legitimate_long_answer_passes_every_rule():
    assert kept(ESSAY, user="Why does sleep matter?")


# --- copies_instruction ---------------------------------------------------------------------------------


class TestCopiesInstruction:
    QUESTION = "What are the three main causes of the French Revolution in 1789?"

    @pytest.mark.parametrize(
        ("answer", "detail_start"),
        [
            (QUESTION, "assistant response equals the user prompt after normalization"),
            ("what are the THREE main causes of the french revolution in 1789", "assistant response equals"),
            (f"You asked: {QUESTION}", "assistant response repeats the whole user prompt"),
            ("The three main causes of the French Revolution in 1789.", "assistant response (10 words) is "),
        ],
    )
    def test_echoes_are_rejected(self, answer, detail_start):
        rule, detail = rejected(answer, user=self.QUESTION)
        assert rule == "copies_instruction"
        assert detail.startswith(detail_start)
        assert_no_record_text(detail, answer)

    def test_mostly_copied_ngrams_are_rejected(self):
        prompt = (
            "Describe the water cycle. The water cycle moves water between the oceans, the air and the land."
        )
        answer = "The water cycle moves water between the oceans, the air and the land, mostly."
        rule, detail = rejected(answer, user=prompt)
        assert rule == "copies_instruction"
        assert detail.endswith("also occur in the user prompt; maximum is 0.8")

    @pytest.mark.parametrize(
        ("answer", "user"),
        [
            ("Paris.", "Is the capital of France Paris or Lyon?"),
            ("B) 12", "How many months are in a year? A) 10 B) 12 C) 14"),
            ("The capital of France is Paris, on the Seine.", "What is the capital of France?"),
            ("The causes were debt, hunger and the ideas of the Enlightenment.", QUESTION),
        ],
    )
    def test_short_answers_that_reuse_words_pass(self, answer, user):
        assert kept(answer, user=user)

    def test_code_and_math_tasks_are_skipped(self):
        code = "def add(a, b):\n    return a + b"
        assert kept(code, user=f"Fix the indentation:\n{code}", task="code")
        assert kept("2 + 2 = 4", user="2 + 2 = 4", task="math")

    def test_thresholds_are_configurable(self):
        prompt = (
            "Describe the water cycle. The water cycle moves water between the oceans, the air and the land."
        )
        answer = "The water cycle moves water between the oceans, the air and the land, mostly."
        lenient = CleanConfig(
            quality=QualityConfig(language=None, copy_instruction={"max_shared_ngram_fraction": 0.95})
        )
        assert kept(answer, user=prompt, config=lenient)
        off = CleanConfig(quality=QualityConfig(language=None, copy_instruction={"enabled": False}))
        assert kept(self.QUESTION, user=self.QUESTION, config=off)


# --- refusal (broadened families) -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "family"),
    [
        ("As a large language model, I cannot browse websites.", "as_an_ai"),
        ("I'm sorry, but as an AI language model I can't do that.", "as_an_ai"),
        ("I'm just an AI, so I can't feel hunger, but here are some snacks.", "just_an_ai"),
        ("I am only a language model and have no body.", "just_an_ai"),
        ("I don't have personal opinions, but many people prefer tea.", "no_personal_opinions"),
        ("I do not have feelings the way humans do.", "no_personal_opinions"),
        ("As of my last knowledge update in 2023, the record was 9.58 seconds.", "knowledge_cutoff"),
        ("My knowledge cutoff is September 2021, so I may be out of date.", "knowledge_cutoff"),
        ("I do not have access to real-time data, so check a weather site.", "no_realtime_access"),
        ("I can't browse the internet, but the latest version was 3.12.", "no_realtime_access"),
    ],
)
def test_ai_disclaimers_are_refusals_named_by_family(text, family):
    rule, detail = rejected(text)
    assert rule == "refusal"
    assert detail == f"assistant response opens with a refusal or AI disclaimer (pattern family {family})"


@pytest.mark.parametrize(
    "text",
    [
        "The model I used is just an AI toy, not a real product.",
        "Here is what I know. As of my last update the store was open.",
        "I don't have a car, so I take the train; you could do the same.",
        "Language models are trained on text; as a result they can be wrong.",
    ],
)
def test_disclaimer_words_later_or_about_something_else_pass(text):
    assert kept(text)


# --- placeholder_text -----------------------------------------------------------------------------------


class TestPlaceholderText:
    @pytest.mark.parametrize(
        ("text", "found"),
        [
            ("Lorem ipsum dolor sit amet, consectetur adipiscing elit.", "lorem ipsum filler text"),
            ("Dear team, thank you. Kind regards, [Your Name]", "a bracketed placeholder"),
            ("The result is [insert result here].", "a bracketed placeholder"),
            ("Here it is: <your answer here>", "a bracketed placeholder"),
            ("Hello {name}, your order {order_id} has shipped.", "an unfilled template slot"),
            ("Welcome, {{ user.first_name }}! We are glad you joined.", "an unfilled template slot"),
            ("TODO", "a stub instead of an answer"),
            ("TBD.", "a stub instead of an answer"),
            ("XXX", "a stub instead of an answer"),
            ("Answer: ...", "a stub instead of an answer"),
            ("TODO: write the answer to this question.", "a stub instead of an answer"),
        ],
    )
    def test_placeholders_are_rejected(self, text, found):
        rule, detail = rejected(text)
        assert rule == "placeholder_text"
        assert detail.startswith(f"assistant response contains placeholder text: {found}")
        assert_no_record_text(detail, text)

    @pytest.mark.parametrize(
        "text",
        [
            "Use an f-string:\n```python\nprint(f'Hello {name}')\n```",
            "Call `format` with `{name}` as the field.",
            'A JSON example:\n{\n  "name": "{name}",\n  "age": 3\n}\nThat is all.',
            "The fraction is $\\frac{a}{b}$ and the power is $x^{n}$.",
            "In set notation, write it with braces.",
            "Go to [your dashboard](https://example.org/home) and click Save.",
            "The TODO list app stores tasks in a database.",
            "Answer: 42",
            "Here is the placeholder text of the form, filled in for you.",
        ],
    )
    def test_look_alikes_pass(self, text):
        assert kept(text)

    def test_code_tasks_are_only_checked_for_stubs(self):
        assert kept("template = '{name}'  # lorem ipsum", task="code")
        assert rejected("TODO", task="code")[0] == "placeholder_text"

    def test_can_be_switched_off(self):
        config = CleanConfig(quality=QualityConfig(language=None, placeholders=False))
        assert kept("Lorem ipsum dolor sit amet.", config=config)


# --- unsafe_content --------------------------------------------------------------------------------------


class TestUnsafeContent:
    def test_the_default_list_ships_in_glin_profanity(self):
        lists = load_wordlist("glin-profanity:english")
        assert set(lists) == {"profanity"} and len(lists["profanity"]) > 300

    def test_more_hits_than_the_maximum_are_rejected_without_quoting_them(self):
        text = "What the fuck. This shit is fucking broken, you bastard."
        rule, detail = rejected(text)
        assert rule == "unsafe_content"
        assert detail == (
            "assistant response has 4 matches of the unsafe-word list glin-profanity:english "
            "(profanity: 4); maximum is 2"
        )
        assert not any(word in detail for word in ("fuck", "shit", "bastard"))

    def test_words_match_on_word_boundaries_only(self):
        assert kept("The class assessment passed; the assistant will assign the grass to Scunthorpe.")
        assert kept("One shit happens. The button works.")  # one hit: under the maximum

    def test_max_hits_and_word_list_are_configurable(self, tmp_path):
        strict = CleanConfig(quality=QualityConfig(language=None, unsafe_words={"max_hits": 0}))
        assert rejected("Well, damn it, that shit broke.", config=strict)[0] == "unsafe_content"
        words = tmp_path / "words.tsv"
        words.write_text("# test list\nviolence\tstab\nslur\tzorp\n", encoding="utf-8")
        custom = CleanConfig(
            quality=QualityConfig(language=None, unsafe_words={"wordlist": str(words), "max_hits": 1})
        )
        rule, detail = rejected("Zorp, zorp! I will stab the zorp.", config=custom)
        assert rule == "unsafe_content"
        assert "(slur: 3, violence: 1)" in detail

    def test_curly_quotes_accents_and_cjk_do_not_change_the_count(self):
        text = "What the “fuck”. This shit’s fucking broken, you bastard: shité, 東京shit and café."
        rule, detail = rejected(text)
        assert rule == "unsafe_content"
        assert "has 4 matches" in detail and "(profanity: 4)" in detail

    @pytest.mark.parametrize("wordlist", ["default", "custom"])
    def test_decisions_equal_the_plain_regex_on_mixed_scripts(self, tmp_path, wordlist):
        """Every count and detail equals the word-boundary regex run on the text itself (the rule
        reads an ASCII view of non-ASCII text): terms next to non-ASCII letters, marks, CJK and
        punctuation, case variants (Kelvin sign, long s, Greek sigma), multi-word terms across any
        whitespace, and terms with non-ASCII letters or symbols."""
        spec = "glin-profanity:english"
        tokens = _UNSAFE_TOKENS
        if wordlist == "custom":
            spec = str(tmp_path / "words.tsv")
            Path(spec).write_text(_CUSTOM_WORDS, encoding="utf-8")
            tokens = [*_UNSAFE_TOKENS, *_CUSTOM_TOKENS]
        rng = random.Random(11)
        separators = [" "] * 8 + [
            "",
            "\u00a0",
            "\u2003",
            "\u3000",
            "\n",
            "  ",
            "’",
            "é",
            "東",
            "-",
            "_",
            "\u0301",
        ]
        texts = [
            "".join(rng.choice(tokens) + rng.choice(separators) for _ in range(rng.randint(1, 14)))
            for _ in range(1200)
        ]
        features = pl.DataFrame(
            {"_row": range(len(texts)), "response": texts}, schema_overrides={"_row": pl.UInt32}
        )
        fast = UnsafeContentRule(UnsafeWordsConfig(wordlist=spec, max_hits=0))
        plain = UnsafeContentRule(UnsafeWordsConfig(wordlist=spec, max_hits=0))
        plain._view = lambda text: text
        got, expected = fast.evaluate(features), plain.evaluate(features)
        assert_frame_equal(got, expected)
        assert 400 < got.height < 1150  # most texts have a hit, some none
        # The hit counts themselves, for every text (also those without a hit).
        counts = features.select(
            fast._view(pl.col("response")).str.count_matches(fast._any).alias("view"),
            pl.col("response").str.count_matches(fast._any).alias("text"),
        )
        assert counts.get_column("view").to_list() == counts.get_column("text").to_list()
        assert texts and any(not t.isascii() for t in texts)

    def test_the_view_is_ascii_except_for_characters_that_match_a_term(self):
        view = ascii_word_view(["shit", "fuck", "a$$", "🖕", "scheiße"])
        text = "Ünïcödé “quotes” 東京 \u00a0\u2003 shit \u212aſSS ß ẞ 🖕 😀"
        got = pl.select(view(pl.lit(text))).item()
        assert len(got) == len(text)
        # Kept: the Kelvin sign and the long s match "k" and "s" case-insensitively, ẞ matches ß.
        assert {c for c in got if not c.isascii()} == {"\u212a", "ſ", "ß", "ẞ", "🖕"}
        # Word characters become "_", whitespace a space, other characters "\x00": one for one.
        assert got == "_n_c_d_ \x00quotes\x00 __    shit \u212aſSS ß ẞ 🖕 \x00"


# Default-list terms, their case variants, multi-word parts, look-alikes and non-ASCII neighbours.
_UNSAFE_TOKENS = [
    "shit",
    "SHIT",
    "ShIt",
    "fuck",
    "fucking",
    "fucK",
    "ſhit",
    "shité",
    "éshit",
    "shit東京",
    "東京shit",
    "“shit”",
    "’fuck’",
    "shit’s",
    "«fuck»",
    "shit…",
    "shit́",
    "a$$",
    "a$$é",
    "@ss",
    "$h!t",
    "f*ck",
    "g-spot",
    "s&m",
    "🖕",
    "🖕🖕",
    "x🖕",
    "blow",
    "job",
    "BLOW",
    "ball",
    "sack",
    "2",
    "girls",
    "1",
    "cup",
    "class",
    "assessment",
    "Scunthorpe",
    "bastard",
    "bastardé",
    "naïve",
    "café",
    "İstanbul",
    "Ω",
    "ß",
    "東京",
    "the",
    "and",
]
_CUSTOM_WORDS = (
    "# categories with non-ASCII terms\n"
    "violence\tstab\nslur\tzorp\nde\tscheiße\nde\tarschloch\nfr\tmerde\nfr\tva te faire\n"
    "el\tσκατά\nel\tμαλάκας\nru\tсука\nja\t馬鹿\nsym\t¡joder!\n"
)
_CUSTOM_TOKENS = [
    "stab",
    "STAB",
    "zorp",
    "Zorp",
    "scheiße",
    "SCHEISSE",
    "SCHEIẞE",
    "scheißé",
    "arschloch",
    "merde",
    "MERDE",
    "merdé",
    "va",
    "te",
    "faire",
    "σκατά",
    "ΣΚΑΤΆ",
    "σκατάς",
    "μαλάκας",
    "ΜΑΛΆΚΑΣ",
    "сука",
    "СУКА",
    "сукаé",
    "馬鹿",
    "馬鹿だ",
    "¡joder!",
    "¡JODER!x",
]


# --- Gopher and C4 document rules ------------------------------------------------------------------------


def long_text(sentence: str, words: int = 120) -> str:
    repeats = words // len(sentence.split()) + 1
    return " ".join([sentence] * repeats)


SENTENCE = "The river runs through the old town and the bridge has stood there for many years."


def varied(n: int) -> list[str]:
    """``n`` distinct lines (the `repetitive` rule must not see copies)."""
    return [f"Item number {i} of the list is about the {i}th thing to note with care" for i in range(n)]


class TestDocumentRules:
    @pytest.mark.parametrize(
        ("text", "rule", "detail_start"),
        [
            (
                " ".join(["supercalifragilisticexpialidocious antidisestablishmentarianism"] * 60)
                + " the and.",
                "gopher_mean_word_length",
                "mean word length of the assistant response is ",
            ),
            (
                long_text(SENTENCE) + " " + " ".join(f"#tag{i}" for i in range(30)) + ".",
                "gopher_symbol_ratio",
                "assistant response has 0.19 '#' symbols per word",
            ),
            ("\n".join(f"- {line}." for line in varied(12)), "gopher_bullet_lines", "1.0 of the assistant"),
            (
                "\n".join(f"{line}..." for line in varied(12)),
                "gopher_ellipsis_lines",
                "1.0 of the assistant response's 12 lines end with an ellipsis",
            ),
            (
                "The values are: " + " ".join(f"{i}.{i} |" for i in range(120)) + " the end.",
                "gopher_alpha_words",
                "0.02 of the assistant response's 245 words contain a letter; minimum is 0.8",
            ),
            (
                " ".join(
                    f"Apples oranges bananas pears plums cherries grapes melons lemons limes{i}."
                    for i in range(12)
                ),
                "gopher_stop_words",
                "assistant response has 0 occurrences of the stop words (the, be, to, of, and, that, have, with)",
            ),
            (
                long_text(SENTENCE) + " JavaScript must be enabled to view this page.",
                "c4_javascript_notice",
                "assistant response holds a browser notice",
            ),
            (
                long_text(SENTENCE) + " Then the function returns { ok } to the caller.",
                "c4_curly_brace",
                "assistant response has a curly brace in prose",
            ),
            (
                " ".join(["the river and the bridge"] * 30) + " end.",
                "c4_too_few_sentences",
                "assistant response has 1 sentence ends in 151 words; minimum is 3",
            ),
        ],
    )
    def test_each_criterion_fires_under_its_own_name(self, text, rule, detail_start):
        got_rule, detail = rejected(text, user="Tell me something.")
        assert (got_rule, detail[: len(detail_start)]) == (rule, detail_start)

    def test_gopher_word_count_upper_bound(self):
        config = CleanConfig(quality=QualityConfig(language=None, documents={"max_words": 110}))
        rule, detail = rejected(long_text(SENTENCE), config=config)
        assert (rule, detail) == ("gopher_word_count", "assistant response has 128 words; maximum is 110")

    def test_short_responses_code_and_math_are_not_measured(self):
        bullets = "\n".join(f"- {line}" for line in varied(3))  # under min_words
        assert kept(bullets)
        numbers = " ".join(str(i) for i in range(200)) + " is the sequence, so the sum is 19900."
        assert kept(numbers, task="math")
        code = "\n".join(f"x{i} = {{'k': {i}}}  # value {i}" for i in range(60))
        assert kept(code, task="code")

    def test_an_essay_with_a_few_bullets_and_markdown_headings_passes(self):
        essay = "# Title\n\n## Part one\n\n" + long_text(SENTENCE) + "\n\n- one point.\n- another point.\n"
        assert kept(essay)

    def test_a_list_answer_with_an_introduction_passes(self):
        answer = "Here are some ideas to try this year:\n" + "\n".join(f"- {line}." for line in varied(8))
        assert kept(answer)

    def test_thresholds_are_configurable(self):
        text = "\n".join(f"{line}..." for line in varied(12))
        lenient = CleanConfig(
            quality=QualityConfig(language=None, documents={"max_ellipsis_line_fraction": 1.0})
        )
        assert kept(text, config=lenient)
        smaller = CleanConfig(quality=QualityConfig(language=None, documents={"min_words": 1000}))
        assert kept(text, config=smaller)
        no_stop_words = CleanConfig(quality=QualityConfig(language=None, documents={"stop_words": []}))
        stop_text = " ".join(
            f"Apples oranges bananas pears plums cherries grapes melons lemons limes{i}." for i in range(12)
        )
        assert kept(stop_text, config=no_stop_words)


# --- order, configuration, determinism -------------------------------------------------------------------


def test_rule_order_is_cheap_first_and_language_last():
    names = QualityFilter(QualityConfig()).names
    assert names == [
        "empty_after_cleaning",
        "empty_response",
        "response_too_short",
        "response_too_long",
        "refusal",
        "placeholder_text",
        "truncated_response",
        "repetitive",
        "copies_instruction",
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
        "unsafe_content",
        "wrong_language",
    ]
    assert set(names) <= set(RULE_DESCRIPTIONS)


def test_the_first_rule_in_order_decides():
    # A refusal that also echoes the prompt and holds a placeholder: refusal comes first.
    text = "I'm sorry, but I can't help with [insert topic here]."
    assert rejected(text, user=text) == (
        "refusal",
        "assistant response opens with a refusal or AI disclaimer (pattern family apology_then_cannot)",
    )
    # A placeholder that also echoes the prompt: placeholder_text comes before copies_instruction.
    assert rejected("Hello {name}, welcome aboard today.", user="Hello {name}, welcome aboard today.")[0] == (
        "placeholder_text"
    )


def test_switched_off_rules_leave_no_counter():
    config = CleanConfig(
        quality=QualityConfig(
            language=None,
            copy_instruction={"enabled": False},
            documents={"enabled": False},
            unsafe_words={"enabled": False},
        )
    )
    counters = Cleaner(config).run(frame(record("Fine."))).counters
    assert "quality.copies_instruction" not in counters and "quality.gopher_stop_words" not in counters
    assert "quality.unsafe_content" not in counters and "quality.placeholder_text" in counters


def test_deterministic():
    records = frame(
        record(ESSAY),
        record("TODO"),
        record("What is love?", user="What is love?"),
        record("What the fuck, this shit is fucking broken, bastard."),
        record("\n".join(f"{line}..." for line in varied(12))),
    )
    first, second = Cleaner(NO_LANGUAGE).run(records), Cleaner(NO_LANGUAGE).run(records)
    assert_frame_equal(first.rejected, second.rejected)
    assert first.counters == second.counters
    assert first.rejected_by_rule == {
        "copies_instruction": 1,
        "gopher_ellipsis_lines": 1,
        "placeholder_text": 1,
        "unsafe_content": 1,
    }


# --- what a reviewer sees ---------------------------------------------------------------------------------


def test_every_rules_drops_are_shown_with_examples_details_and_redacted_previews():
    from assets.stage_runner import rejection_examples

    records = frame(
        record("TODO", user="Mail me at ann@example.org please."),
        record("TBD", user="Second question?"),
        record("What is love?", user="What is love?"),
    )
    result = Cleaner(NO_LANGUAGE).run(records)
    examples = rejection_examples(result.rejected, [records])
    assert examples.columns == ["rule", "record_id", "source", "detail", "prompt_preview", "response_preview"]
    assert examples["rule"].to_list() == ["placeholder_text", "placeholder_text", "copies_instruction"]
    first = examples.row(0, named=True)
    assert first["prompt_preview"] == "Mail me at [EMAIL] please."
    assert first["response_preview"] == "TODO"
    assert first["detail"].startswith("assistant response contains placeholder text")
    assert examples.filter(pl.col("prompt_preview").str.contains("ann@example.org")).is_empty()


# --- the screens decide exactly as the full measurement ----------------------------------------------------

# Tokens and separators that sit on the edges the screens reason about: Unicode words (İ lowercases
# to two characters), digits and symbol-only tokens, bullets, ellipses, '#', braces, stop words,
# sentence ends, "javascript", and whitespace other than a single space.
_TOKEN_TEXT = (
    "the and of to a be that have with river bridge old town is I x K İstanbul café naïve 東京 über "
    "supercalifragilistic 1789 3.14 - — & | ... … #tag ## {name} { } lorem ipsum JavaScript must enabled "
    "TODO * • e.g. it's don't ( ) end. Yes! why? ok: `code` damn shit"
)
_TOKENS = _TOKEN_TEXT.split()
_SEPARATORS = [" "] * 24 + ["  ", "\n", "\n\n", "\t", "\u00a0", " \n", "\r\n", "\u2028", ", ", ". ", "? "]
_PROMPTS = [
    "What are the three main causes of the French Revolution in 1789?",
    "Describe the water cycle. The water cycle moves water between the oceans, the air and the land.",
    "İstanbul café naïve über 東京: a question about things?",
    "Tell me something.",
    "x",
]


def _tokens(rng: random.Random, n: int, tokens=_TOKENS) -> str:
    return "".join(rng.choice(tokens) + rng.choice(_SEPARATORS) for _ in range(n))


def _response(rng: random.Random, prompt: str) -> str:
    kind = rng.randrange(9)
    if kind == 0:  # lines, some bullets, some ending with an ellipsis, around the line shares
        share, ellipses = rng.choice([0.0, 0.5, 0.9, 0.95, 1.0]), rng.choice([0.0, 0.0, 0.4])
        vocabulary = rng.choice(
            [_TOKENS, ["the", "river", "and", "bridge", "of", "town", "is", "with", "end."]]
        )
        lines = [
            (rng.choice(["- ", "* ", "• ", "  - "]) if rng.random() < share else "")
            + _tokens(rng, rng.randint(3, 14), vocabulary).replace("\n", " ")
            + ("..." if rng.random() < ellipses else "")
            for _ in range(rng.randint(1, 24))
        ]
        return "\n".join(lines) + rng.choice(["", ".", "\n\nThe end. Of the river. And the town."])
    if kind == 1:  # the prompt echoed, contained, or partly reused
        words = prompt.split()
        start = rng.randrange(len(words))
        return rng.choice(
            [
                prompt.upper(),
                f"You asked: {prompt} {_tokens(rng, rng.randint(0, 10))}",
                " ".join(words[start : start + rng.randint(3, 12)]),
                " ".join(
                    w if rng.random() < 0.85 else rng.choice(_TOKENS) for w in words * rng.randint(1, 2)
                ),
            ]
        )
    if kind == 2:  # plain prose at the word-count and mean-word-length edges
        vocabulary = rng.choice(
            [["a", "b", "to", "I"], ["the", "river", "and"], ["supercalifragilistic", "of"]]
        )
        return " ".join(rng.choice(vocabulary) for _ in range(rng.choice([99, 100, 101, 150]))) + rng.choice(
            ["", ".", ". Done. End. Fin."]
        )
    if kind == 3:  # numbers and symbols at the alpha-word edge
        return _tokens(rng, rng.randint(90, 180), ["1", "2.5", "-", "|", "word", "the", "and"])
    if kind == 4:  # few stop words and sentence ends
        words = [rng.choice(["Apples", "pears", "plums", "grapes"]) for _ in range(rng.randint(100, 140))]
        for _ in range(rng.randint(0, 6)):
            words[rng.randrange(len(words))] += rng.choice(
                [" the", " The", " theme", ".", "!", '?"', ".)", "…"]
            )
        return " ".join(words)
    if kind == 5:  # fenced code inside prose
        return f"{_tokens(rng, 40)}\n```python\n{_tokens(rng, 60)}\n```\n{_tokens(rng, rng.randint(0, 90))}"
    if kind == 6:
        return rng.choice(["TODO", "TBD.", "Answer: ...", "Hello {name}!", "[Your Name]", "", " ", "a"])
    return _tokens(rng, rng.randint(1, 220))


def generated_mix(n: int, seed: int) -> pl.DataFrame:
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        prompt = rng.choice(_PROMPTS) if rng.random() < 0.7 else _tokens(rng, rng.randint(1, 60))
        task = rng.choice(["chat"] * 6 + ["code", "math"])
        records.append(record(_response(rng, prompt), user=prompt, task=task))
    return frame(*records)


def _without_screens(monkeypatch) -> None:
    """The rules as if their screens let every record through to the full measurement."""
    monkeypatch.setattr(PlaceholderRule, "_candidates", staticmethod(lambda features: features))
    monkeypatch.setattr(CopyInstructionRule, "_candidates", lambda self, features: features.lazy())
    monkeypatch.setattr(DocumentRules, "_suspects", lambda self, long: long)


# unsafe_content is left out: it has no screen (its ASCII view is checked against the plain regex in
# TestUnsafeContent, whose reference run is slow on non-ASCII text).
_NO_UNSAFE = {"language": None, "unsafe_words": {"enabled": False}}


@pytest.mark.parametrize(
    "quality",
    [
        QualityConfig(**_NO_UNSAFE),
        QualityConfig(
            **_NO_UNSAFE,
            documents={
                "min_words": 20,
                "max_words": 150,
                "max_bullet_line_fraction": 0.5,
                "min_sentences": 5,
            },
            copy_instruction={"ngram": 1, "min_echo_fraction": 0.3, "max_shared_ngram_fraction": 0.5},
        ),
        QualityConfig(
            **_NO_UNSAFE,
            documents={
                "min_words": 5,
                "max_bullet_line_fraction": 0.0,
                "min_stop_words": 4,
                "min_sentences": 0,
            },
            copy_instruction={"ngram": 5, "max_shared_ngram_fraction": 0.0, "skip_tasks": []},
        ),
        QualityConfig(
            **_NO_UNSAFE, documents={"max_bullet_line_fraction": 1.0, "stop_words": ["the", "don't"]}
        ),
    ],
)
def test_screens_change_no_decision_on_a_generated_mix(monkeypatch, quality):
    records = generated_mix(1500, seed=7)

    def decisions() -> tuple[list[pl.DataFrame], pl.DataFrame]:
        quality_filter = QualityFilter(quality)
        batch = CleanBatch(records=records.with_row_index("_row"), messages=explode_messages(records))
        features = _live_features(batch, dialogue=False)
        # Each rule alone on every record (not only the survivors of the rules before it) ...
        per_rule = [rule.evaluate(features).sort("_row") for rule in quality_filter.rules]
        # ... and the whole filter, first rule wins.
        quality_filter(batch)
        return per_rule, pl.concat(batch.rejected).sort("_row")

    fast_rules, fast = decisions()
    _without_screens(monkeypatch)
    full_rules, full = decisions()
    for got, expected in zip(fast_rules, full_rules, strict=True):
        assert_frame_equal(got, expected)
    assert_frame_equal(fast, full)
    assert fast.height > 200 and fast.get_column("rule").n_unique() >= 10


def test_word_and_ngram_counts_match_a_plain_python_count():
    records = generated_mix(600, seed=3)
    batch = CleanBatch(records=records.with_row_index("_row"), messages=explode_messages(records))
    features = _live_features(batch, dialogue=False)
    counted = features.select(
        pl.col("response").str.count_matches(r"(?:^|\s)\S").alias("fast"),
        pl.col("response").str.count_matches(r"\S+").alias("plain"),
    )
    assert counted.get_column("fast").to_list() == counted.get_column("plain").to_list()

    texts = features.select(
        "_row", _normalized(pl.col("response")).alias("r"), _normalized(pl.col("prompt")).alias("p")
    ).filter((pl.col("r").str.count_matches(" ") >= 2) & (pl.col("p").str.count_matches(" ") >= 2))
    shared = CopyInstructionRule(QualityConfig().copy_instruction)._shared_ngrams(texts).sort("_row")
    expected = []
    for row, r, p in texts.sort("_row").iter_rows():
        grams = [tuple(r.split(" ")[i : i + 3]) for i in range(len(r.split(" ")) - 2)]
        prompt_grams = {tuple(p.split(" ")[i : i + 3]) for i in range(len(p.split(" ")) - 2)}
        expected.append((row, len(grams), sum(g in prompt_grams for g in grams) / len(grams)))
    assert shared.rows() == expected


# --- word boundaries without \b ------------------------------------------------------------------------
# The placeholder, truncation and stop-word screens test for a match without \b (a Unicode \b makes
# the regex engine slow on any non-ASCII text). They must decide exactly as the \b forms below did.

_BOUNDARY_FORMS = {
    "lorem_ipsum": r"(?i)\blorem\s+ipsum\b",
    "bracket_placeholder": r"(?i)[\[<](?:insert|enter|add|put|type|fill in|your)\b[^\]\[<>\n]{0,60}[\]>](?:[^(]|$)"
    r"|(?i)[\[<][^\]\[<>\n]{1,40}\bhere[\]>](?:[^(]|$)",
    "cut_end": r"(?i)(?:[,(\[{/=+&-]|\b(?:the|a|an|and|or|but|of|to|with|for|in|on|at|by|from|that|which|who|"
    r"is|are|was|were|be|because|so|if|then|than|as|this|these|its|their|our|your|my)\b)$",
}
_BOUNDARY_WORDS = (
    "[insert [Insert [INSERT here] [your [Your’s [enter, <type here> [’here] [here] [ "
    "lorem ipsum Lorem IPSUM loremipsum élorem ipsumé lorem_ipsum TODO TODOé TODO’ todo FIXME: TBD… "
    "the The thé éthe the\u0301 a an and And my its \u212aey ſo 東京 naïve café x , ( ] < > { / = + & - "
    "… ’ “ ” é \u0301 ."
)
_BOUNDARY_TOKENS = [
    *_BOUNDARY_WORDS.split(),
    *(f"[insert {'x' * n}]" for n in (58, 59, 60)),  # the bracket holds at most 60 characters
    *(f"[{'y' * n} here]" for n in (38, 39, 40)),  # at most 40 before "here"
    "[Insert your name here]",
    "<your answer here>",
    "[fill in the blank]",
    "[é here]",
    "[東京here]",
    "[naïve here]",
    "[x\u0301here]",
    "lorem\u00a0ipsum",
    "“lorem ipsum”",
]
_BOUNDARY_SEPARATORS = [" "] * 6 + ["", "\n", "\u00a0", "\u3000", "’", "é", "東", "(", "-"]


def _boundary_texts(n: int, seed: int) -> pl.Series:
    rng = random.Random(seed)
    return pl.Series(
        "text",
        [
            rng.choice(["", " ", "“", "- ", "é"])
            + "".join(
                rng.choice(_BOUNDARY_TOKENS) + rng.choice(_BOUNDARY_SEPARATORS)
                for _ in range(rng.randint(1, 12))
            )
            for _ in range(n)
        ],
    )


def test_placeholder_and_truncation_regexes_decide_as_with_word_boundaries():
    texts = _boundary_texts(6000, seed=5)
    tails = texts.str.strip_chars_end().str.slice(-80)
    stub = PLACEHOLDER_PATTERNS["stub_answer"][0]
    stub_boundary = stub.replace(r"(?:TODO|TBD|FIXME)(?:\W|$)", r"(?:TODO|TBD|FIXME)\b")
    assert stub_boundary != stub
    pairs = [
        (texts, stub, stub_boundary),
        (texts, PLACEHOLDER_PATTERNS["lorem_ipsum"][0], _BOUNDARY_FORMS["lorem_ipsum"]),
        (texts, PLACEHOLDER_PATTERNS["bracket_placeholder"][0], _BOUNDARY_FORMS["bracket_placeholder"]),
        (tails, _CUT_END, _BOUNDARY_FORMS["cut_end"]),
    ]
    for text, regex, with_boundaries in pairs:
        expected = text.str.contains(with_boundaries)
        assert text.str.contains(regex).to_list() == expected.to_list(), with_boundaries
        assert 0 < expected.sum() < len(text)  # both outcomes occur


@pytest.mark.parametrize(
    "stop_words", [["the", "be", "to", "of", "and", "that", "have", "with"], ["a", "my", "its", "key", "so"]]
)
def test_stop_word_screen_decides_as_with_word_boundaries(stop_words):
    rules = DocumentRules(QualityConfig().documents.model_copy(update={"stop_words": stop_words}))
    texts = pl.DataFrame(_boundary_texts(3000, seed=9).alias("prose"))
    counts = texts.select(pl.col("prose").str.count_matches(rules._stop_regex)).to_series()
    for k in range(7):
        got = texts.with_columns(rules._fewer_stop_words(pl.col("prose"), k).alias("x")).get_column("x")
        expected = texts.with_columns(rules._at_most(pl.col("prose"), rules._stop_regex, k).alias("x"))
        assert got.to_list() == expected.get_column("x").to_list(), k
        assert got.to_list() == (counts < k).to_list(), k
    assert 0 < (counts < 2).sum() < texts.height
