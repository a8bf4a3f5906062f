"""Specification of token counting, the max-length policy and assistant-only loss masks.

The tokenizers are the real ones mistral-common ships; the oracle for a count is mistral-common's own
``encode`` (bos and eos off). Rendered pieces are built by hand and checked against the formatter's
renderer, so the loss masks are computed on real renders.
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from mistral_common.protocol.instruct.messages import AssistantMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from tests.conftest import CORPORA
from thresher.config import TokensConfig
from thresher.formatting import TEMPLATES, explode_turns, render
from thresher.records import MESSAGE, RECORD_SCHEMA, conform
from thresher.tokens import (
    RULE_TOO_LONG,
    apply_max_length,
    available_tokenizers,
    load_tokenizer,
    loss_mask_spans,
    matched_special_tokens,
    thousands,
    token_counts,
    turn_tokens,
)

TEXTS = [
    "Hello, world!",
    "  leading and trailing spaces  ",
    "Ünïcödé? 日本語で答えて 🙂 مرحبا e\u0301",
    "def f(x):\n    return {'a': x}\n\n\n# done\t\ttabs",
    "",
    "a" * 500,
]


def u(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def a(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def gsm8k(n: int) -> list[dict[str, str]]:
    lines = (CORPORA / "math" / "gsm8k" / "test.jsonl").read_text(encoding="utf-8").splitlines()[:n]
    return [json.loads(line) for line in lines]


def gsm8k_texts(n: int) -> list[str]:
    return [row["question"] + "\n" + row["answer"] for row in gsm8k(n)]


# --------------------------------------------------------------------------------------------------
# Tokenizers


def test_the_shipped_tokenizers_are_available_by_name():
    assert available_tokenizers() == [
        "mistral-tekken",
        "mistral-tekken-240911",
        "mistral-v1",
        "mistral-v2",
        "mistral-v3",
        "mistral-v7",
    ]
    assert load_tokenizer("mistral-v3") is load_tokenizer("mistral-v3")  # cached
    with pytest.raises(ValueError, match="unknown tokenizer 'gpt-2'; available: \\['mistral-tekken'"):
        load_tokenizer("gpt-2")


@pytest.mark.parametrize("name", ["mistral-v1", "mistral-v3", "mistral-v7", "mistral-tekken"])
def test_counts_equal_mistral_commons_own_encode(name: str):
    tokenizer = load_tokenizer(name)
    texts = [*TEXTS, *gsm8k_texts(50)]
    expected = [len(tokenizer.mistral.encode(t, bos=False, eos=False)) for t in texts]
    assert tokenizer.count(texts) == expected
    encoded = tokenizer.encode(texts)
    assert encoded.counts.tolist() == expected
    for i, text in enumerate(texts):
        ids = encoded.ids[encoded.bounds[i] : encoded.bounds[i + 1]].tolist()
        assert ids == tokenizer.mistral.encode(text, bos=False, eos=False)


def test_a_templates_special_tokens_are_one_control_token_each_and_the_text_between_is_encoded():
    v3 = load_tokenizer("mistral-v3")
    text = "<s>[INST] Hello [/INST] Hi</s>"
    specials = ["</s>", "<s>", "[/INST]", "[INST]"]
    plain = v3.mistral.encode  # the oracle for the text between special tokens
    expected = [1, 3, *plain(" Hello ", bos=False, eos=False), 4, *plain(" Hi", bos=False, eos=False), 2]
    encoded = v3.encode([text], specials)
    assert encoded.ids.tolist() == expected
    assert v3.count([text], specials) == [len(expected)]
    # Without them the literals are plain text, as mistral-common's encode reads them.
    assert v3.count([text]) == [len(plain(text, bos=False, eos=False))]
    assert v3.count([text])[0] > len(expected)


def test_an_own_tokenizer_spells_out_what_it_has_no_control_token_for_a_fallback_never_does():
    v1, v3 = load_tokenizer("mistral-v1"), load_tokenizer("mistral-v3")
    assert matched_special_tokens("mistral", v3, approximate=False) == ["</s>", "<s>", "[/INST]", "[INST]"]
    # Mistral v1 has no [INST] token: Mistral-7B-Instruct-v0.1 reads it as text.
    assert matched_special_tokens("mistral", v1, approximate=False) == ["</s>", "<s>"]
    tekken = load_tokenizer("mistral-tekken")
    assert matched_special_tokens("llama3", tekken, approximate=True) == TEMPLATES["llama3"].special_tokens()
    encoded = tekken.encode(
        ["<|start_header_id|>user<|end_header_id|>"], ["<|start_header_id|>", "<|end_header_id|>"]
    )
    assert encoded.ids[0] == -1 and encoded.ids[-1] == -1  # one token each, id unknown to this vocabulary


@pytest.mark.parametrize("name", ["mistral-v3", "mistral-tekken"])
def test_token_offsets_cover_the_text_in_order(name: str):
    tokenizer = load_tokenizer(name)
    texts = [*TEXTS, "<s>[INST] Ünï 🙂 [/INST] x</s>"]
    encoded = tokenizer.encode(texts, ["<s>", "</s>", "[INST]", "[/INST]"])
    for i, text in enumerate(texts):
        lo, hi = encoded.bounds[i], encoded.bounds[i + 1]
        starts, ends = encoded.starts[lo:hi], encoded.ends[lo:hi]
        if not text:
            assert hi == lo
            continue
        assert starts[0] == 0 and ends[-1] == len(text)
        assert (np.diff(starts) >= 0).all() and (np.diff(ends) >= 0).all() and (starts <= ends).all()
        assert (starts[1:] <= ends[:-1]).all()  # no gap; a token holding part of a character overlaps
    ascii_text = "def f(x):\n    return x + 1  # ok"
    encoded = tokenizer.encode([ascii_text])
    pieces = [ascii_text[s:e] for s, e in zip(encoded.starts, encoded.ends, strict=True)]
    assert "".join(pieces) == ascii_text


def test_a_literal_sentencepiece_space_mark_gets_sentencepieces_own_offsets():
    # SentencePiece reads "▁" in the input as a space, so piece lengths mislead there.
    text = "a▁b ▁"
    encoded = load_tokenizer("mistral-v3").encode([text])
    assert [text[s:e] for s, e in zip(encoded.starts, encoded.ends, strict=True)] == ["a", "▁b", " ▁"]


@pytest.mark.parametrize(("name", "low", "high"), [("mistral-v3", 5, 6), ("mistral-tekken", -3, 3)])
def test_the_mistral_templates_count_is_close_to_mistral_commons_own_chat_encoding(
    name: str, low: int, high: int
):
    """Mistral's chat encoding encodes bare messages; the Jinja render adds spaces around them."""
    rows = gsm8k(40)
    conversations = [
        [u(rows[i]["question"]), a(rows[i]["answer"]), u(rows[i + 1]["question"]), a(rows[i + 1]["answer"])]
        for i in range(0, 40, 2)
    ]
    records = conform(
        pl.DataFrame(
            {"record_id": [str(i) for i in range(len(conversations))], "messages": conversations},
            schema_overrides={"messages": pl.List(MESSAGE)},
        )
    )
    texts = render(explode_turns(records), TEMPLATES["mistral"])["text"].to_list()
    tokenizer = load_tokenizer(name)
    ours = tokenizer.count(texts, matched_special_tokens("mistral", tokenizer, approximate=False))
    mistral = MistralTokenizer.from_file(str(tokenizer.path))
    for conversation, count in zip(conversations, ours, strict=True):
        messages = [
            (UserMessage if m["role"] == "user" else AssistantMessage)(content=m["content"])
            for m in conversation
        ]
        prompt = mistral.encode_chat_completion(ChatCompletionRequest(messages=messages[:-1])).tokens
        answer = mistral.instruct_tokenizer.tokenizer.encode(conversation[-1]["content"], bos=False, eos=True)
        assert low <= count - (len(prompt) + len(answer)) <= high


def test_counting_is_deterministic_and_independent_of_batch_order():
    tekken = load_tokenizer("mistral-tekken")
    texts = gsm8k_texts(200)
    first = tekken.count(texts)
    assert tekken.count(texts) == first
    assert tekken.count(texts[::-1]) == first[::-1]
    assert tekken.count(texts[:1]) == first[:1]


def test_token_counts_use_the_templates_own_tokenizer_else_the_fallback_marked_approximate():
    renders = pl.DataFrame(
        {
            "record_id": ["r1", "r1"],
            "template": ["mistral", "llama3"],
            "text": [
                "<s>[INST] Hi [/INST] Hello!</s>",
                "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
            ],
        }
    )
    counts = token_counts(
        renders, TokensConfig(tokenizers={"mistral": "mistral-v3"}, fallback="mistral-tekken")
    )
    assert counts.columns == ["record_id", "template", "tokens", "tokenizer", "approximate"]
    rows = {r["template"]: r for r in counts.iter_rows(named=True)}
    assert rows["mistral"]["tokenizer"] == "mistral-v3" and rows["mistral"]["approximate"] is False
    assert rows["llama3"]["tokenizer"] == "mistral-tekken" and rows["llama3"]["approximate"] is True
    v3 = load_tokenizer("mistral-v3").mistral
    between = len(v3.encode(" Hi ", bos=False, eos=False)) + len(v3.encode(" Hello!", bos=False, eos=False))
    assert rows["mistral"]["tokens"] == 4 + between
    # llama3 under tekken: 4 special tokens + "user" + "\n\nHi"
    tekken = load_tokenizer("mistral-tekken").mistral
    assert rows["llama3"]["tokens"] == 4 + len(tekken.encode("user", False, False)) + len(
        tekken.encode("\n\nHi", False, False)
    )

    no_fallback = token_counts(renders, TokensConfig(tokenizers={"mistral": "mistral-v3"}, fallback=None))
    llama = no_fallback.filter(pl.col("template") == "llama3").row(0, named=True)
    assert llama["tokens"] is None and llama["tokenizer"] is None


# --------------------------------------------------------------------------------------------------
# Rendered pieces: (role, text before the content, content, text after), joined they are the render

LLAMA3 = [
    ("system", "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n", "Be brief.", "<|eot_id|>"),
    ("user", "<|start_header_id|>user<|end_header_id|>\n\n", "Hi", "<|eot_id|>"),
    ("assistant", "<|start_header_id|>assistant<|end_header_id|>\n\n", "Hi", "<|eot_id|>"),
    ("user", "<|start_header_id|>user<|end_header_id|>\n\n", "Tell me a joke 🙂", "<|eot_id|>"),
    ("assistant", "<|start_header_id|>assistant<|end_header_id|>\n\n", "Why did the chicken…", "<|eot_id|>"),
]
MISTRAL = [
    ("system", "<s>", "Be brief.", "\n\n"),
    ("user", "[INST] ", "Hi", " [/INST]"),
    ("assistant", " ", "Hi", "</s>"),
    ("user", "[INST] ", "Tell me a joke 🙂", " [/INST]"),
    ("assistant", " ", "Why did the chicken…", "</s>"),
]
CHATML = [(role, f"<|im_start|>{role}\n", content, "<|im_end|>\n") for role, _, content, _ in LLAMA3]


def pieces(template: str, turns: list[tuple[str, str, str, str]], record_id: str = "r1") -> pl.DataFrame:
    return pl.DataFrame(
        {
            "record_id": record_id,
            "template": template,
            "turn_index": range(len(turns)),
            "role": [t[0] for t in turns],
            "piece": ["".join(t[1:]) for t in turns],
            "content_start": [len(t[1]) for t in turns],
            "content_end": [len(t[1]) + len(t[2]) for t in turns],
        },
        schema_overrides={"turn_index": pl.Int64, "content_start": pl.Int64, "content_end": pl.Int64},
    )


def records_of(turns: list[tuple[str, str, str, str]], record_id: str = "r1") -> pl.DataFrame:
    messages = [{"role": t[0], "content": t[2]} for t in turns]
    return conform(
        pl.DataFrame(
            {
                "record_id": [record_id],
                "messages": [messages],
                "source_file": ["f.jsonl"],
                "source_line": [1],
            },
            schema_overrides={"messages": pl.List(MESSAGE)},
        )
    )


@pytest.mark.parametrize(
    ("template", "turns"), [("llama3", LLAMA3), ("mistral", MISTRAL), ("chatml", CHATML)]
)
def test_the_hand_built_pieces_are_the_formatters_render(template: str, turns: list):
    rendered = render(explode_turns(records_of(turns)), TEMPLATES[template])["text"].item()
    assert "".join(pieces(template, turns)["piece"]) == rendered


CONFIG = TokensConfig(tokenizers={"mistral": "mistral-v3"}, fallback="mistral-tekken")


def test_turn_tokens_sum_to_the_renders_count():
    frames = [pieces("llama3", LLAMA3, "a"), pieces("mistral", MISTRAL, "a"), pieces("chatml", CHATML, "b")]
    turns = turn_tokens(pl.concat(frames), CONFIG)
    assert turns.height == sum(f.height for f in frames)
    renders = pl.concat(
        f.group_by("record_id", "template").agg(pl.col("piece").str.join("").alias("text")) for f in frames
    )
    totals = turns.group_by("record_id", "template").agg(pl.col("tokens").sum())
    counts = token_counts(renders, CONFIG).join(totals, on=["record_id", "template"], suffix="_turns")
    assert (counts["tokens"] == counts["tokens_turns"]).all()
    assert turns.filter(pl.col("template") == "mistral")["approximate"].unique().to_list() == [False]


def test_loss_masks_cover_assistant_content_and_the_end_of_turn_token_llama3():
    turns = turn_tokens(pieces("llama3", LLAMA3), CONFIG)
    masks = loss_mask_spans(turns)
    assert masks.columns == [
        "record_id",
        "template",
        "tokens",
        "assistant_spans",
        "assistant_token_spans",
        "tokenizer",
        "approximate",
    ]
    row = masks.row(0, named=True)
    text = "".join(pieces("llama3", LLAMA3)["piece"])
    assert [text[s["start"] : s["end"]] for s in row["assistant_spans"]] == [
        "Hi<|eot_id|>",
        "Why did the chicken…<|eot_id|>",
    ]
    tekken = load_tokenizer("mistral-tekken")
    encoded = tekken.encode([text], TEMPLATES["llama3"].special_tokens())
    first = row["assistant_token_spans"][0]
    trained = [text[encoded.starts[i] : encoded.ends[i]] for i in range(first["start"], first["end"])]
    assert trained == ["Hi", "<|eot_id|>"]
    # The token before the span is the "\n\n" of the header: not trained on.
    assert text[encoded.starts[first["start"] - 1] : encoded.ends[first["start"] - 1]] == "\n\n"
    assert row["tokens"] == encoded.counts[0]


def test_loss_masks_with_sentencepiece_include_the_token_that_carries_the_contents_space():
    masks = loss_mask_spans(turn_tokens(pieces("mistral", MISTRAL), CONFIG)).row(0, named=True)
    text = "".join(pieces("mistral", MISTRAL)["piece"])
    assert [text[s["start"] : s["end"]] for s in masks["assistant_spans"]] == [
        "Hi</s>",
        "Why did the chicken…</s>",
    ]
    v3 = load_tokenizer("mistral-v3")
    encoded = v3.encode([text], ["</s>", "<s>", "[/INST]", "[INST]"])
    span = masks["assistant_token_spans"][0]
    ids = encoded.ids[span["start"] : span["end"]].tolist()
    assert [v3.mistral.id_to_piece(i) for i in ids] == ["▁Hi", "</s>"]
    assert masks["tokenizer"] == "mistral-v3" and masks["approximate"] is False


def test_chatml_trains_on_im_end_but_not_the_newline_after_it():
    masks = loss_mask_spans(turn_tokens(pieces("chatml", CHATML), CONFIG)).row(0, named=True)
    text = "".join(pieces("chatml", CHATML)["piece"])
    assert text[masks["assistant_spans"][0]["start"] : masks["assistant_spans"][0]["end"]] == "Hi<|im_end|>"


def test_without_a_tokenizer_there_are_character_spans_but_no_token_spans():
    masks = loss_mask_spans(turn_tokens(pieces("llama3", LLAMA3), TokensConfig(fallback=None))).row(
        0, named=True
    )
    assert len(masks["assistant_spans"]) == 2
    assert masks["assistant_token_spans"] is None
    assert masks["tokens"] is None and masks["tokenizer"] is None


# --------------------------------------------------------------------------------------------------
# The max-length policy (per-turn counts by hand: the policy is arithmetic over them)


def turn_counts(
    record_id: str, roles: list[str], tokens: list[int], template: str = "llama3"
) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "record_id": record_id,
            "template": template,
            "turn_index": range(len(roles)),
            "role": roles,
            "tokens": tokens,
            "tokenizer": "mistral-tekken",
            "approximate": True,
        },
        schema_overrides={"turn_index": pl.Int64, "tokens": pl.Int64},
    )


def records_with(**conversations: list[str]) -> pl.DataFrame:
    return conform(
        pl.DataFrame(
            {
                "record_id": list(conversations),
                "messages": [
                    [{"role": r, "content": f"m{i}"} for i, r in enumerate(v)] for v in conversations.values()
                ],
                "source_file": "f.jsonl",
                "source_line": range(1, len(conversations) + 1),
            },
            schema_overrides={"messages": pl.List(MESSAGE)},
        )
    )


SUA = ["system", "user", "assistant", "user", "assistant"]


def test_records_that_fit_are_kept_untouched():
    records = records_with(a=SUA)
    result = apply_max_length(
        records, turn_counts("a", SUA, [10, 10, 10, 10, 10]), TokensConfig(max_tokens=50)
    )
    assert result.kept.equals(records)
    assert result.rejected.is_empty() and result.counters == {"too_long": 0, "truncated": 0}
    result.check_conservation()


def test_drop_rejects_a_record_over_the_limit_naming_template_tokenizer_and_counts():
    records = records_with(a=SUA)
    turns = pl.concat(
        [
            turn_counts("a", SUA, [300, 200, 300, 200, 234]),
            turn_counts("a", SUA, [200, 200, 300, 200, 200], template="chatml"),
        ]
    )
    result = apply_max_length(records, turns, TokensConfig(max_tokens=1024))
    assert result.kept.is_empty()
    assert result.rejected.row(0, named=True) == {
        "record_id": "a",
        "rule": RULE_TOO_LONG,
        "detail": "1,234 tokens with llama3 > max_tokens 1,024 (mistral-tekken, approximate)",
        "source_file": "f.jsonl",
        "source_line": 1,
    }
    result.check_conservation()


def test_truncate_keeps_the_longest_prefix_of_whole_turns_ending_with_an_assistant_turn():
    roles = ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    records = records_with(a=roles)
    turns = turn_counts("a", roles, [20, 20, 20, 20, 20, 20, 20])
    # 100 fits through message 5 (a user turn): the cut falls back to the assistant turn before it.
    result = apply_max_length(records, turns, TokensConfig(max_tokens=100, over_length="truncate"))
    result.check_conservation()
    assert result.rejected.is_empty()
    kept = result.kept.row(0, named=True)
    assert [m["role"] for m in kept["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert kept["messages"][0] == {"role": "system", "content": "m0"}  # the system message stays
    assert result.tables["truncated"].row(0, named=True) == {
        "record_id": "a",
        "messages_before": 7,
        "messages_after": 5,
        "tokens_before": 140,
        "tokens_after": 100,
    }
    assert result.counters == {"too_long": 0, "truncated": 1}


def test_truncation_must_fit_every_template():
    roles = ["user", "assistant", "user", "assistant"]
    turns = pl.concat(
        [
            turn_counts("a", roles, [10, 10, 10, 10]),
            turn_counts("a", roles, [10, 30, 10, 10], template="chatml"),
        ]
    )
    result = apply_max_length(
        records_with(a=roles), turns, TokensConfig(max_tokens=35, over_length="truncate")
    )
    # Through message 1, llama3 needs 20 tokens but chatml 40: no cut fits both.
    assert result.kept.is_empty()
    assert result.rejected["detail"].item() == (
        "60 tokens with chatml > max_tokens 35 (mistral-tekken, approximate); "
        "no prefix of whole turns ending with an assistant turn fits"
    )


def test_when_no_prefix_fits_the_record_is_too_long_even_when_truncating():
    roles = ["system", "user", "assistant", "user", "assistant"]
    turns = turn_counts("a", roles, [40, 30, 40, 10, 10])
    result = apply_max_length(
        records_with(a=roles), turns, TokensConfig(max_tokens=100, over_length="truncate")
    )
    assert result.rejected["rule"].to_list() == [RULE_TOO_LONG]
    assert result.kept.is_empty() and result.tables["truncated"].is_empty()
    result.check_conservation()


def test_records_without_counts_and_a_null_limit_constrain_nothing():
    records = records_with(a=SUA, b=SUA)
    turns = turn_counts("a", SUA, [1000] * 5)
    assert apply_max_length(records, turns, TokensConfig(max_tokens=None)).kept.height == 2
    only_b_counted = apply_max_length(records, turn_counts("b", SUA, [1] * 5), TokensConfig(max_tokens=16))
    assert only_b_counted.kept.height == 2


def test_the_policy_on_real_counts_keeps_a_prefix_whose_render_fits():
    frame = pieces("llama3", LLAMA3)
    turns = turn_tokens(frame, CONFIG)
    through_first_answer = int(turns["tokens"][:3].sum())
    result = apply_max_length(
        records_of(LLAMA3), turns, TokensConfig(max_tokens=through_first_answer + 2, over_length="truncate")
    )
    assert len(result.kept["messages"].item()) == 3
    cut = "".join(frame["piece"][:3])
    tekken = load_tokenizer("mistral-tekken")
    assert tekken.count([cut], TEMPLATES["llama3"].special_tokens()) == [through_first_answer]


def test_thousands_separators():
    numbers = pl.Series([0, 7, 999, 1000, 12345, 1234567])
    assert pl.select(thousands(pl.lit(numbers))).to_series().to_list() == [
        "0",
        "7",
        "999",
        "1,000",
        "12,345",
        "1,234,567",
    ]


def test_records_keep_the_canonical_schema():
    result = apply_max_length(
        records_with(a=SUA), turn_counts("a", SUA, [1] * 5), TokensConfig(max_tokens=16)
    )
    assert list(result.kept.schema.items())[: len(RECORD_SCHEMA)] == list(RECORD_SCHEMA.items())
