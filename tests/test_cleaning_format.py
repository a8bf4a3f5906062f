"""Specification of the cleaned stage's formatting: HTML structure, special tokens, mojibake, markdown.

Each test states what one message becomes after ``Cleaner`` (language ID off); the last one runs
main-content extraction over real pages of the article-extraction benchmark.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import sys
from collections import Counter

import polars as pl
import pytest

from tests.conftest import CORPORA
from tests.test_cleaning import clean, cleaned_text, contents, frame, record
from thresher.cleaning.batch import CleanBatch, explode_messages
from thresher.cleaning.html import (
    PY_WHITESPACE,
    html_to_text,
    main_content,
    simple_inline_html,
    simple_inline_to_text,
)
from thresher.cleaning.junk import Formatter, fix_mojibake, mojibake_table
from thresher.config import FormattingConfig


def formatted(text: str, **formatting) -> str:
    """What one user message becomes under the formatting steps alone, with ``formatting`` settings."""
    records = frame(record("Sure.", user=text))
    batch = CleanBatch(records=records.with_row_index("_row"), messages=explode_messages(records))
    Formatter(True, FormattingConfig(**formatting))(batch)
    return batch.messages.get_column("content")[0]


# --- HTML keeps its structure ------------------------------------------------------------------------


class TestHtmlStructure:
    def test_paragraphs_are_separated_by_a_blank_line(self):
        assert cleaned_text("<p>One.</p><p>Two.</p><div>Three.</div>") == "One.\n\nTwo.\n\nThree."

    def test_headings_become_hashes(self):
        assert cleaned_text("<h1>Title</h1><p>Text.</p><h3>Part</h3>") == "# Title\n\nText.\n\n### Part"

    def test_lists_keep_markers_numbers_and_nesting(self):
        markup = (
            "<ul><li>one</li><li>two<ul><li>two a</li></ul></li></ul><ol start='3'><li>c</li><li>d</li></ol>"
        )
        assert cleaned_text(markup) == "- one\n- two\n  - two a\n\n3. c\n4. d"

    def test_pre_becomes_a_fenced_block_with_its_language_and_spacing(self):
        markup = (
            '<p>See:</p><pre><code class="language-python">x  =  1\n\n\n\n'
            "if a &lt; b:\n    pass</code></pre><p>Done.</p>"
        )
        expected = "See:\n\n```python\nx  =  1\n\n\n\nif a < b:\n    pass\n```\n\nDone."
        assert cleaned_text(markup) == expected

    def test_inline_code_becomes_backticks(self):
        assert (
            cleaned_text("<p>Call <code>len(x)</code> or <code>a`b</code>.</p>")
            == "Call `len(x)` or `` a`b ``."
        )

    def test_tables_become_pipe_tables_with_a_header_separator(self):
        markup = "<table><tr><th>Name</th><th>Qty</th></tr><tr><td>a|b</td><td>2</td></tr><tr><td>c</td></tr></table>"
        assert cleaned_text(markup) == "| Name | Qty |\n| --- | --- |\n| a\\|b | 2 |\n| c | |"

    def test_links_keep_their_text_and_br_is_a_newline(self):
        assert (
            cleaned_text('<p>Read <a href="https://x.org/a">the guide</a><br>today</p>')
            == "Read the guide\ntoday"
        )

    def test_blockquotes_and_strikethrough(self):
        assert cleaned_text("<blockquote><p>Quoted.</p></blockquote><p><s>old</s> new</p>") == (
            "> Quoted.\n\n~~old~~ new"
        )

    def test_scripts_styles_and_comments_go_entities_are_decoded(self):
        markup = "<p>caf&eacute; &amp; 5&#8364;</p><script>x()</script><style>p{}</style><!-- c -->"
        assert cleaned_text(markup) == "café & 5€"


def regex_path(snippets: list[str]) -> tuple[list[bool], list[str]]:
    """Which snippets take the vectorized path, and what it makes of each."""
    text = pl.Series(snippets, dtype=pl.String)
    return simple_inline_html(text).to_list(), pl.select(
        simple_inline_to_text(pl.lit(text))
    ).to_series().to_list()


_TAGS = (
    "p",
    "div",
    "section",
    "article",
    "span",
    "b",
    "i",
    "em",
    "strong",
    "u",
    "font",
    "small",
    "sup",
    "sub",
)
_ATTRS = (
    "",
    ' class="answer"',
    " style='font-weight:bold'",
    " id=x",
    ' title="1 > 0"',
    " hidden",
    '\nclass = "a b"',
)
_TEXTS = (
    *(
        "A sentence.",
        "word",
        " ",
        "  ",
        "\n",
        "\t",
        "\r\n",
        "\u2003",
        "\u00a0",
        "café",
        "emoji 😀",
        "a < b",
        "<3",
    ),
    *(
        "Third &amp; fourth",
        "&nbsp;",
        "&lt;b&gt;",
        "&copy;",
        "&#39;",
        "&eacute;t&eacute;",
        "&mdash;",
        " & ",
        "x&y",
    ),
)


def _inline(rng: random.Random, depth: int) -> str:
    out = []
    for _ in range(rng.randint(1, 4)):
        r = rng.random()
        if r < 0.5:
            out.append(rng.choice(_TEXTS))
        elif r < 0.6:
            out.append(rng.choice(("<br>", "<br/>", "<BR />", "</br>")))
        elif depth < 2:
            tag = rng.choice(_TAGS[4:])
            out.append(f"<{tag}{rng.choice(_ATTRS)}>{_inline(rng, depth + 1)}</{tag}>")
    return "".join(out)


def _blocks(rng: random.Random, depth: int) -> str:
    out = []
    for _ in range(rng.randint(1, 3)):
        if depth < 2 and rng.random() < 0.4:
            tag = rng.choice(_TAGS[1:4]).upper() if rng.random() < 0.1 else rng.choice(_TAGS[1:4])
            out.append(f"<{tag}{rng.choice(_ATTRS)}>{_blocks(rng, depth + 1)}</{tag}>")
        else:
            out.append(f"<p{rng.choice(_ATTRS)}>{_inline(rng, 0)}" + ("</p>" if rng.random() < 0.8 else ""))
    return "".join(out)


def _tag_soup(rng: random.Random) -> str:
    """Allowed tags and text in any order: stray closings, misnesting, inline around blocks."""
    parts = []
    for _ in range(rng.randint(1, 12)):
        if rng.random() < 0.55:
            parts.append(rng.choice(_TEXTS))
        else:
            tag = rng.choice((*_TAGS, "br"))
            parts.append(f"</{tag}>" if rng.random() < 0.45 else f"<{tag}{rng.choice(_ATTRS)}>")
    return "".join(parts)


class TestSimpleInlineHtml:
    """The regex path for simple inline HTML gives html_to_text's output, and only takes its subset."""

    SHAPE = (
        '<div class="answer"><p>A sentence.<br>Another.</p><p>Third &amp; fourth&nbsp;words '
        '<span style="font-weight:bold">bold</span>.</p></div>'
    )

    def test_the_common_shape(self):
        assert regex_path([self.SHAPE]) == ([True], [html_to_text(self.SHAPE)])
        assert html_to_text(self.SHAPE) == "A sentence.\nAnother.\n\nThird & fourth\u00a0words bold."
        assert formatted(self.SHAPE) == "A sentence.\nAnother.\n\nThird & fourth words bold."

    def test_identical_to_html_to_text_on_generated_snippets(self):
        rng = random.Random(7)
        wellformed = [_blocks(rng, 0) if rng.random() < 0.8 else _inline(rng, 0) for _ in range(3000)]
        soup = [_tag_soup(rng) for _ in range(3000)]
        simple, text = regex_path(wellformed + soup)
        for markup, is_simple, out in zip(wellformed + soup, simple, text, strict=True):
            if is_simple:
                assert out == html_to_text(markup), markup
        # Well-formed markup takes the regex path unless an "&" might start a reference.
        assert all(s or "x&y" in m for m, s in zip(wellformed, simple, strict=False))
        assert 0.2 < sum(simple[len(wellformed) :]) / len(soup) < 0.8

    @pytest.mark.parametrize(
        "markup",
        [
            "a</div>b",  # a stray closing tag ends no block
            "<div><section>a</div>b</section>c",
            "<b>x<p>y</p>z</b>w",  # "z" is a block of its own
            "<p><b>x</p>y",
            "<b><i>x</b>y</i>",
            "<p>&copy2024 &notit;</p>",
            "<p>a\x00b</p>",
            "<ul><li>one</li></ul>",
            '<p>Read <a href="x">this</a></p>',
            "<pre>code</pre>",
            "<p>x<!-- c --></p>",
            "<html><body><p>page</p></body></html>",
            "<p>Use <start_of_turn></p>",
            "<p\u00a0class=x>no tag</p>",
            "<ſpan>long s</ſpan><p>x</p>",
        ],
    )
    def test_everything_else_is_parsed(self, markup):
        assert regex_path([markup])[0] == [False]

    def test_entities_decode_as_the_parser_does(self):
        from thresher.cleaning.html import _ENTITIES

        snippets = [f"<p>a{entity}b</p>" for entity in _ENTITIES]
        assert regex_path(snippets) == ([True] * len(snippets), [html_to_text(s) for s in snippets])

    def test_strip_whitespace_is_complete(self):
        everything = "".join(c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace())
        assert everything == PY_WHITESPACE


class TestMainContent:
    PAGE = (
        "<html><head><title>T</title></head><body>"
        "<header><nav><a href='/'>Home</a> <a href='/news'>News</a></nav></header>"
        "<div id='cookie-banner'>We use cookies to improve your experience, accept them please.</div>"
        "<div class='article-body'><h1>Rivers</h1>"
        "<p>Rivers carry water from the mountains to the sea, shaping valleys, plains and deltas.</p>"
        "<p>Their floods, though destructive, renew the soil of the plains every few years.</p></div>"
        "<div class='sidebar'><ul><li><a href='/a'>Most read story one</a></li>"
        "<li><a href='/b'>Most read story two</a></li></ul></div>"
        "<div class='comments'><p>Great article, thanks for sharing this with all of us here!</p></div>"
        "<footer>Copyright 2024, all rights reserved by the publisher.</footer></body></html>"
    )

    def test_whole_pages_keep_only_their_article(self):
        out = cleaned_text(self.PAGE)
        assert out.startswith("# Rivers\n\nRivers carry water")
        assert "renew the soil" in out
        for junk in ("Home", "cookies", "Most read", "Great article", "Copyright", "T\n"):
            assert junk not in out

    def test_fragments_are_not_extracted_in_auto_mode(self):
        fragment = "<div class='sidebar'><p>Sidebar words are all there is.</p></div>"
        assert cleaned_text(fragment) == "Sidebar words are all there is."

    def test_never_renders_the_whole_page(self):
        out = formatted(self.PAGE, main_content="never")
        assert "Home News" in out and "Copyright" in out and "# Rivers" in out

    def test_main_content_and_html_to_text_are_plain_functions(self):
        assert "Most read" in html_to_text(self.PAGE)
        assert "Most read" not in main_content(self.PAGE)


# --- special tokens --------------------------------------------------------------------------------------


class TestSpecialTokens:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("Hello<|im_end|>\n<|im_start|>assistant\nHi there", "Hello\nHi there"),
            (
                "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>",
                "What is 2+2?",
            ),
            ("<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello </s>", "Be brief.\n\n\nHi Hello"),
            ("<start_of_turn>user\nHi<end_of_turn>", "Hi"),
            ("Done.<|endoftext|>", "Done."),
            ("<|user|>\nQ<|end|>\n<|assistant|>\nA", "Q\n\nA"),
            ("<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>", "def f():"),
            ("Answer<｜end▁of▁sentence｜>", "Answer"),
            ("<bos>text<eos> <unk> <pad>", "text"),
        ],
    )
    def test_removed_from_prose(self, text, expected):
        assert cleaned_text(text) == expected

    def test_removed_from_code_too(self):
        code = "```python\nprompt = '<|im_start|>user\\n' + q  # <|endoftext|>\n```"
        assert cleaned_text(code) == "```python\nprompt = 'user\\n' + q  # \n```"
        result = clean(record("x = '<s>' + y", user="Write it.", task="code"))
        assert contents(result)[1] == "x = '' + y"

    def test_text_that_only_looks_like_a_token_stays(self):
        for text in ["Use <filename> here.", "a <|b| c", "Set [INSTALL] and <sup>"]:
            assert cleaned_text(text) == text

    def test_counter_and_switch(self):
        result = clean(record("ok<|im_end|>", user="<s>hi"), record("<|eot_id|>"), record("Plain."))
        assert result.counters["format.special_tokens"] == 3  # messages, not records
        assert formatted("Hi<|im_end|>", special_tokens=False) == "Hi<|im_end|>"


# --- mojibake --------------------------------------------------------------------------------------------


class TestMojibake:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("donâ€™t stop", "don’t stop"),
            ("CafÃ© au lait", "Café au lait"),
            ("Ã„rger und Ãœbermut", "Ärger und Übermut"),
            ("â€œquotedâ€\x9d", "“quoted”"),
            ("smile ðŸ˜€", "smile 😀"),
            ("Â¿QuÃ© tal?", "¿Qué tal?"),
        ],
    )
    def test_repaired(self, text, expected):
        assert cleaned_text(text) == expected

    @pytest.mark.parametrize(
        "text",
        [
            "café, naïve, façade",
            "„Größe“ und Übermaß",
            "中文文本，没有问题。",
            "emoji 😀 and family 👨\u200d👩\u200d👧",
            "“curly” quotes and ﬁ ligature and ＡＢＣ",
            "e\u0301 stays decomposed",
            "Привет, мир",
            "Zürich, naïve, São Paulo, Łódź",
            "SÃO PAULO e MAÇÃ",
            "IRMÃ… sim",  # ftfy leaves it (an ellipsis after a Portuguese word): so does the table
            "5 × 3 – 2 € ™",
        ],
    )
    def test_clean_non_ascii_text_is_untouched(self, text):
        assert cleaned_text(text) == text

    MOJIBAKE = (
        "donâ€™t â€” it costs 5â‚¬ â€¦ â€œreallyâ€\x9d",
        "CafÃ© crÃ¨me, Ã¼ber, StraÃŸe, Ã±andÃº, FranÃ§ois",
        "Ã‰cole, Ã–sterreich, ÃœBER, Ã\x81lvaro",
        "Â© 2024 â€¢ 20Â°C Â½ Â«quotedÂ»",
        "smile ðŸ˜€ and â€™",  # emoji: left for ftfy
        "Ã¢â‚¬â„¢ double",  # double encoding
        "Ð¿Ñ€Ð¸Ð²ÐµÑ‚ and cafÃ©",
        "Å¼Ã³Å‚w, Å\x81Ã³dÅº",  # ftfy judges "Å‚" by its neighbours
        "cafÃ© Ã\xa0la carte et Ã  la",  # "à " whose 0xA0 byte became a space
        "CafÃ© in Zürich",
    )

    @pytest.mark.parametrize("text", MOJIBAKE)
    def test_same_result_as_ftfy(self, text):
        assert formatted(text) == fix_mojibake(text)

    def test_the_table_alone_repairs_the_common_cases(self):
        table = mojibake_table()
        common = pl.Series(self.MOJIBAKE[:4]).str.replace_many(table, leftmost=True).to_list()
        assert common == [fix_mojibake(t) for t in self.MOJIBAKE[:4]]
        assert {table["â€™"], table["â€\x9d"], table["Ã©"], table["ÃŸ"], table["â‚¬"]} == {
            "’",
            "”",
            "é",
            "ß",
            "€",
        }

    def test_every_table_entry_is_what_ftfy_decodes_in_a_sentence(self):
        for seq, char in mojibake_table().items():
            assert fix_mojibake(f"The word{seq} and more.") == f"The word{char} and more."

    def test_code_is_left_alone_and_counter(self):
        code = "```python\nassert fix('CafÃ©') == 'Café'\n```"
        assert cleaned_text(code) == code
        result = clean(record("donâ€™t", user="CafÃ©"), record("café"))
        assert result.counters["format.mojibake"] == 2
        assert formatted("CafÃ©", mojibake=False) == "CafÃ©"


# --- markdown artifacts ----------------------------------------------------------------------------------


class TestMarkdown:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("Icon [](https://x.org/a) here ![](img.png)", "Icon here"),
            ("snake\\_case, \\*stars\\* and \\# tag", "snake_case, *stars* and # tag"),
            ("1\\. First\n2\\. Second", "1. First\n2. Second"),
            (
                "See [the docs][1] and [home].\n\n[1]: https://x.org/docs\n[home]: https://x.org",
                "See [the docs](https://x.org/docs) and [home](https://x.org).",
            ),
            ("soft\u00adhyphen and stray\u200djoiner", "softhyphen and strayjoiner"),
            ("&gt; quoted &amp; more\n&gt; &gt; nested", "> quoted & more\n> > nested"),
        ],
    )
    def test_repaired(self, text, expected):
        assert cleaned_text(text) == expected

    @pytest.mark.parametrize(
        "text",
        [
            "Math \\[x^2\\] and \\(y\\) stay, as does `a\\_b` and C:\\\\_dir",
            "A [real link](https://x.org) and a [label] with no definition.",
            "Persian ZWNJ: می\u200cخواهم",
            "Escaped elsewhere: a &gt; b",
        ],
    )
    def test_legitimate_markdown_is_untouched(self, text):
        assert cleaned_text(text) == text

    def test_fenced_code_is_never_touched_and_counter(self):
        code = "```\nre.sub(r'\\_', x)  # [](u)\n&gt; q\n```"
        assert cleaned_text(code) == code
        result = clean(record("a\\_b", user="[](x) hi"), record("fine"))
        assert result.counters["format.markdown"] == 2
        assert formatted("a\\_b", markdown=False) == "a\\_b"


def test_every_formatting_counter_is_reported():
    result = clean(record("Plain."))
    for rule in ("html_stripped", "special_tokens", "mojibake", "markdown", "control_chars", "whitespace"):
        assert result.counters[f"format.{rule}"] == 0


# --- real pages ------------------------------------------------------------------------------------------

ARTICLES = CORPORA / "html" / "article_extraction"
# Mean F1 over the first 10 pages (sorted by id) measured at 0.980; the floor leaves a margin.
MIN_F1 = 0.9


@pytest.mark.skipif(not ARTICLES.is_dir(), reason="../shared corpora not available")
def test_main_content_recovers_real_articles():
    truth = json.loads((ARTICLES / "ground-truth.json").read_text(encoding="utf-8"))
    scores = []
    for path in sorted((ARTICLES / "html").glob("*.html.gz"))[:10]:
        page = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
        kept = Counter(re.findall(r"\w+", main_content(page).lower()))
        true = Counter(re.findall(r"\w+", truth[path.name.removesuffix(".html.gz")]["articleBody"].lower()))
        overlap = sum((kept & true).values())
        p, r = overlap / max(sum(kept.values()), 1), overlap / max(sum(true.values()), 1)
        scores.append(2 * p * r / (p + r) if p + r else 0.0)
    assert sum(scores) / len(scores) >= MIN_F1, scores
