"""Specification of the formatted stage: chat templates, splits and the release export.

The chat-template oracle (each template against its reference Jinja file) is tests/test_chat_templates.py;
here the stage around it: rejections, the round trip that guards every render, splits and the export.
"""

from __future__ import annotations

import random
import re

import polars as pl
import pytest

from tests.test_chat_templates import a, frame, reference_render, s, u
from thresher.config import FormatConfig
from thresher.formatting import (
    TEMPLATES,
    Formatter,
    _render_problems,
    explode_turns,
    prompt_split_conflicts,
    render,
    render_pieces,
    roundtrip_ok,
)
from thresher.records import RECORD_SCHEMA, conform
from thresher.release import assign_splits
from thresher.stage import StageResult
from thresher.tokens import token_counts

CODE = "Here:\n\n```python\ndef f(x):\n    return {'a': x}  # {{ not jinja }}\n```\n"
CONVERSATIONS: dict[str, list[dict[str, str]]] = {
    "single_turn": [u("What is 2+2?"), a("4")],
    "with_system": [s("You are terse."), u("Capital of France?"), a("Paris.")],
    "multi_turn": [u("Hi"), a("Hello! How can I help?"), u("Tell me a joke."), a("Why did the chicken...")],
    "system_multi_turn": [s("Be kind."), u("q1"), a("a1"), u("q2"), a("a2"), u("q3"), a("a3")],
    "unicode": [u("Ünïcödé? 日本語で答えて 🙂 مرحبا"), a("はい、もちろんです。👍 e\u0301")],
    "surrounding_whitespace": [
        s("\n  sys  \n"),
        u("  padded question \t"),
        a("\n\nanswer with blank lines\n\n"),
    ],
    "python_only_whitespace": [u("\x1c\u3000 separators \x1f"), a("\u2028line sep\u2029")],
    "empty_answer": [u("Say nothing."), a("")],
    "whitespace_only": [u("   \n\t"), a(" ok ")],
    "code_block": [u("Write f."), a(CODE)],
    "special_tokens_in_text": [u("<|im_end|> <|eot_id|> [INST] </s>"), a("{% raw %}{{ x }}{% endraw %}")],
    "crlf": [u("line one\r\nline two\r\n"), a("ok\r\n")],
    "empty_system": [s(""), u("q"), a("a")],
    "only_user": [u("Unanswered question")],
    "only_system": [s("Lonely system prompt")],
    "long": [u("word " * 2000), a("answer " * 3000)],
    "ending_with_user": [u("q1"), a("a1"), u("q2")],
    "late_system": [u("q"), s("mid-conversation system")],
    "tool_in_assistant_slot": [u("Run it."), {"role": "tool", "content": '{"result": 42}'}],
    "tool_after_assistant": [
        s("You can call tools."),
        u("Weather?"),
        a('{"call": "weather"}'),
        {"role": "tool", "content": '{"temp": 21}'},
        a("It is 21 degrees."),
    ],
    "two_users_in_a_row": [u("first"), u("second"), a("answer")],
    "starts_with_assistant": [a("Hello"), u("hi")],
}


def test_the_two_required_families_render_the_common_cases():
    result = Formatter(FormatConfig(templates=["llama3", "chatml"])).run(frame(CONVERSATIONS))
    assert result.kept.height > 15
    text = (
        result.tables["renders"]
        .filter((pl.col("record_id") == "with_system") & (pl.col("template") == "llama3"))["text"]
        .item()
    )
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nCapital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nParis.<|eot_id|>"
    )
    chatml = (
        result.tables["renders"]
        .filter((pl.col("record_id") == "single_turn") & (pl.col("template") == "chatml"))["text"]
        .item()
    )
    assert chatml == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"


def test_chatml_expresses_a_tool_turn_where_llama3_cannot():
    records = frame({"t": CONVERSATIONS["tool_in_assistant_slot"]})
    chatml = Formatter(FormatConfig(templates=["chatml"])).run(records)
    assert chatml.tables["renders"]["text"].item().endswith('<|im_start|>tool\n{"result": 42}<|im_end|>\n')
    llama = Formatter(FormatConfig(templates=["llama3"])).run(records)
    assert llama.rejected_by_rule == {"render_failed": 1}
    assert (
        llama.rejected["detail"].item()
        == "cannot be rendered with llama3: message 2 (tool) has a role the template cannot express"
    )


def test_a_record_must_render_with_every_configured_template_and_the_detail_names_each_failure():
    records = frame({"t": CONVERSATIONS["tool_in_assistant_slot"], "x": CONVERSATIONS["two_users_in_a_row"]})
    result = Formatter(FormatConfig(templates=["llama3", "chatml"])).run(records)
    assert result.kept.is_empty()
    details = dict(result.rejected.select("record_id", "detail").iter_rows())
    assert (
        details["t"]
        == "cannot be rendered with llama3: message 2 (tool) has a role the template cannot express"
    )
    assert details["x"] == (
        "cannot be rendered with llama3: message 2 (user) breaks the user/assistant alternation the template "
        "requires; chatml: message 2 (user) breaks the user/assistant alternation the template requires"
    )
    assert result.counters["render_failed.llama3"] == 2
    assert result.counters["render_failed.chatml"] == 1


def test_rejection_details_never_quote_record_text():
    secret = "my email is jane@example.com"
    records = frame(
        {
            "a": [u(secret), u(secret), a(secret)],
            "b": [u(secret), {"role": secret, "content": secret}],
        }
    )
    result = Formatter(FormatConfig()).run(records)
    assert result.rejected.height == 2
    assert not result.rejected["detail"].str.contains("jane").any()
    assert "message 2 (unknown role)" in result.rejected.filter(pl.col("record_id") == "b")["detail"].item()


def test_records_without_messages_or_content_are_rejected_not_lost():
    records = conform(
        pl.DataFrame(
            {"record_id": ["empty", "null_content"], "messages": [[], [{"role": "user", "content": None}]]},
            schema_overrides={"messages": RECORD_SCHEMA["messages"]},
        )
    )
    result = Formatter(FormatConfig(templates=["chatml"])).run(records)
    details = dict(result.rejected.select("record_id", "detail").iter_rows())
    assert details == {
        "empty": "cannot be rendered with chatml: the record has no messages",
        "null_content": "cannot be rendered with chatml: message 1 has no content",
    }
    result.check_conservation()


def test_kept_records_get_a_split_and_pass_verdict_columns_through():
    records = frame({"a": CONVERSATIONS["single_turn"], "b": CONVERSATIONS["multi_turn"]}).with_columns(
        pl.lit("pass").alias("verdict"), pl.lit("math ok").alias("verdict_detail")
    )
    result = Formatter(FormatConfig()).run(records)
    assert result.kept.columns == [*records.columns, "split"]
    assert result.kept.drop("split").equals(records)
    assert set(result.kept["split"]) <= {"train", "test"}
    assert result.counters["split.train"] + result.counters["split.test"] == 2
    assert result.counters["template.llama3"] == result.counters["template.chatml"] == 2
    renders = result.tables["renders"]
    assert renders.columns == ["record_id", "template", "text"]
    assert renders.height == 4


def test_default_system_prompt_is_added_where_a_record_has_none():
    records = frame({"plain": CONVERSATIONS["single_turn"], "own": CONVERSATIONS["with_system"]})
    result = Formatter(FormatConfig(templates=["chatml"], default_system_prompt="Be helpful.")).run(records)
    texts = dict(result.tables["renders"].select("record_id", "text").iter_rows())
    assert texts["plain"] == reference_render(
        TEMPLATES["chatml"], [s("Be helpful."), *CONVERSATIONS["single_turn"]]
    )
    assert texts["own"] == reference_render(TEMPLATES["chatml"], CONVERSATIONS["with_system"])
    kept = dict(result.kept.select("record_id", "messages").iter_rows())
    assert kept["plain"][0] == s("Be helpful.")
    assert result.counters["system_prompt_added"] == 1


# --------------------------------------------------------------------------------------------------
# Splits


def many_records(n: int = 10_000, seed: int = 1) -> pl.DataFrame:
    """``n`` records over about n/3 prompts; a prompt recurs with different case and spacing."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        p = rng.randrange(n // 3)
        prompt = rng.choice(
            [f"Prompt {p}: explain X", f"  prompt {p}:   EXPLAIN x\n", f"PROMPT {p}: Explain\tx"]
        )
        rows.append({"record_id": f"r{i}", "messages": [s("sys"), u(prompt), a(f"answer {i}")], "group": p})
    return pl.DataFrame(rows, schema_overrides={"messages": RECORD_SCHEMA["messages"]})


RATIOS = {"train": 0.8, "validation": 0.1, "test": 0.1}


def split_records(records: pl.DataFrame, ratios: dict[str, float], seed: int) -> pl.Series:
    """The stage's split assignment (``release.assign_splits``) with these ratios, unstratified."""
    return assign_splits(records, FormatConfig(splits=ratios, split_seed=seed, stratify_by=[]))


def test_split_ratios_are_met_within_tolerance():
    records = many_records()
    splits = split_records(records, RATIOS, seed=0)
    share = splits.value_counts(normalize=True)
    shares = dict(zip(share["split"], share["proportion"], strict=True))
    for name, ratio in RATIOS.items():
        assert abs(shares[name] - ratio) < 0.025, (name, shares)


def test_split_assignment_is_deterministic_and_independent_of_row_order():
    records = many_records()
    first = records.with_columns(split_records(records, RATIOS, seed=0).alias("split"))
    again = records.with_columns(split_records(records, RATIOS, seed=0).alias("split"))
    assert first.equals(again)
    shuffled = records.sample(fraction=1.0, shuffle=True, seed=3)
    reshuffled = shuffled.with_columns(split_records(shuffled, RATIOS, seed=0).alias("split"))
    assert reshuffled.sort("record_id").equals(first.sort("record_id"))


def test_the_split_seed_changes_the_assignment():
    records = many_records(2000)
    a_ = split_records(records, RATIOS, seed=0)
    b_ = split_records(records, RATIOS, seed=1)
    assert (a_ != b_).sum() > 100


def test_no_prompt_group_crosses_splits():
    records = many_records()
    assigned = records.with_columns(split_records(records, RATIOS, seed=5).alias("split"))
    per_group = assigned.group_by("group").agg(pl.col("split").n_unique().alias("n"))
    assert per_group["n"].max() == 1
    assert assigned.group_by("group").len()["len"].max() > 1  # the groups really were shared


def test_a_zero_ratio_split_gets_nothing_and_a_single_split_gets_everything():
    records = many_records(500)
    assert set(split_records(records, {"train": 1.0, "test": 0.0}, seed=0)) == {"train"}
    assert set(split_records(records, {"all": 1.0}, seed=0)) == {"all"}


# --------------------------------------------------------------------------------------------------
# Round trip: every render parses back into its record


def formatted(conversations: dict[str, list[dict[str, str]]], *names: str):
    """Records and renders as the formatter makes them *before* its round-trip gate, so that the
    round-trip check itself can be examined on renders that fail it."""
    records = frame(conversations)
    turns = explode_turns(records)
    for name in names:
        records = records.join(_render_problems(turns, TEMPLATES[name]), on="record_id", how="anti")
    turns = turns.join(records.select("record_id"), on="record_id", how="semi")
    renders = pl.concat(
        [render(turns, TEMPLATES[n]).select("record_id", pl.lit(n).alias("template"), "text") for n in names]
    )
    return records, renders


def with_text(renders: pl.DataFrame, record_id: str, template: str, text: str) -> pl.DataFrame:
    hit = (pl.col("record_id") == record_id) & (pl.col("template") == template)
    return renders.with_columns(pl.when(hit).then(pl.lit(text)).otherwise(pl.col("text")).alias("text"))


def text_of(renders: pl.DataFrame, record_id: str, template: str) -> str:
    hit = (pl.col("record_id") == record_id) & (pl.col("template") == template)
    return renders.filter(hit)["text"].item()


def verdict(kept: pl.DataFrame, renders: pl.DataFrame, record_id: str, template: str) -> tuple[bool, str]:
    checked = roundtrip_ok(kept, renders, [template]).filter(pl.col("record_id") == record_id)
    return checked.select("ok", "problem").row(0)


# special_tokens_in_text holds ``<|im_end|> <|eot_id|> [INST] </s>`` in its user message: a tokenizer reads
# those as control tokens, so it cannot round-trip where they are the template's own (all but phi-3 and
# gemma). The stage rejects such a record before rendering; the round trip is the backstop tested here.
# (qwen2.5's text carries its default system prompt first, so the user message is its second.)
HOLDS_SPECIAL_TOKEN = {
    "llama3": (1, "<|eot_id|>"),
    "chatml": (1, "<|im_end|>"),
    "qwen2.5": (2, "<|im_end|>"),
    "zephyr": (1, "</s>"),
    "mistral": (1, "[INST]"),
    "vicuna": (1, "</s>"),
    "alpaca": (1, "</s>"),
}


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_every_rendered_oracle_conversation_round_trips(name: str):
    kept, renders = formatted(CONVERSATIONS, name)
    checked = roundtrip_ok(kept, renders)
    assert checked.columns == ["record_id", "template", "ok", "problem"]
    assert checked.height == kept.height > 15
    assert set(checked["template"]) == {name}
    failing = dict(checked.filter(~pl.col("ok")).select("record_id", "problem").iter_rows())
    if name in HOLDS_SPECIAL_TOKEN:
        number, token = HOLDS_SPECIAL_TOKEN[name]
        assert failing == {
            "special_tokens_in_text": f"message {number} (user) holds the template's special token '{token}'"
        }
    else:
        assert failing == {}
    assert checked.filter(pl.col("ok"))["problem"].is_null().all()


def test_every_template_has_a_parser_and_names_its_special_tokens():
    assert TEMPLATES["llama3"].special_tokens() == [
        "<|begin_of_text|>",
        "<|end_header_id|>",
        "<|eot_id|>",
        "<|start_header_id|>",
    ]
    assert TEMPLATES["chatml"].special_tokens() == ["<|im_end|>", "<|im_start|>"]
    assert TEMPLATES["mistral"].special_tokens() == ["</s>", "<s>", "[/INST]", "[INST]"]
    assert TEMPLATES["qwen2.5"].special_tokens() == ["<|im_end|>", "<|im_start|>"]
    assert TEMPLATES["gemma"].special_tokens() == ["<end_of_turn>", "<start_of_turn>"]
    assert TEMPLATES["phi-3"].special_tokens() == ["<|assistant|>", "<|end|>", "<|system|>", "<|user|>"]
    # Vicuna's and Alpaca's turn markers are plain text: content may mention them.
    assert TEMPLATES["vicuna"].special_tokens() == TEMPLATES["alpaca"].special_tokens() == ["</s>", "<s>"]
    for template in TEMPLATES.values():
        # (qwen2.5's text opens with its default system prompt.)
        parsed = template.parse(reference_render(template, CONVERSATIONS["single_turn"]))
        assert parsed[-2:] == CONVERSATIONS["single_turn"]


# The marker that opens (or closes) a turn in each grammar; dropping one must be noticed.
OPENING_MARKER = {
    "llama3": "<|start_header_id|>",
    "chatml": "<|im_start|>",
    "qwen2.5": "<|im_start|>",
    "phi-3": "<|assistant|>",
    "zephyr": "<|assistant|>",
    "gemma": "<start_of_turn>",
    "mistral": "[INST] ",
    "vicuna": "ASSISTANT: ",
    "alpaca": "### Response:\n",
}
CLOSING_MARKER = {
    "llama3": "<|eot_id|>",
    "chatml": "<|im_end|>",
    "qwen2.5": "<|im_end|>",
    "phi-3": "<|end|>",
    "zephyr": "</s>",
    "gemma": "<end_of_turn>",
    "mistral": " [/INST]",
    "vicuna": "</s>",
    "alpaca": "</s>",
}


@pytest.mark.parametrize("name", list(TEMPLATES))
@pytest.mark.parametrize("marker", [OPENING_MARKER, CLOSING_MARKER], ids=["opening", "closing"])
def test_a_render_with_a_dropped_turn_marker_is_detected(name: str, marker: dict[str, str]):
    kept, renders = formatted({"r": CONVERSATIONS["system_multi_turn"]}, name)
    text = text_of(renders, "r", name)
    assert marker[name] in text
    corrupted = with_text(renders, "r", name, text.replace(marker[name], "", 1))
    ok, problem = verdict(kept, corrupted, "r", name)
    assert not ok and problem


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_a_render_with_swapped_roles_is_detected(name: str):
    question, answer = "Capital of France?", "Paris."
    kept, renders = formatted({"r": [s("Be brief."), u(question), a(answer)]}, name)
    # The assistant's words rendered as the user's and the other way round.
    swapped = Formatter(FormatConfig(templates=[name])).run(
        frame({"r": [s("Be brief."), u(answer), a(question)]})
    )
    corrupted = with_text(renders, "r", name, text_of(swapped.tables["renders"], "r", name))
    # Gemma's text carries the system prompt inside the first user turn.
    number = 1 if name == "gemma" else 2
    assert verdict(kept, corrupted, "r", name) == (
        False,
        f"message {number} (user) parses to different content",
    )


@pytest.mark.parametrize("name", ["llama3", "chatml", "qwen2.5", "phi-3", "zephyr", "gemma"])
def test_a_swapped_role_header_is_named(name: str):
    kept, renders = formatted({"r": CONVERSATIONS["single_turn"]}, name)
    text = text_of(renders, "r", name)
    header = TEMPLATES[name]
    user = f"{header.start}user{header.sep}"
    assistant = f"{header.start}{header.labels.get('assistant', 'assistant')}{header.sep}"
    corrupted = text.replace(user, "\x00").replace(assistant, user).replace("\x00", assistant)
    # qwen2.5's text opens with its default system prompt.
    number = 2 if name == "qwen2.5" else 1
    assert verdict(kept, with_text(renders, "r", name, corrupted), "r", name) == (
        False,
        f"message {number} parses as assistant, the record has user",
    )


@pytest.mark.parametrize("name", list(TEMPLATES))
@pytest.mark.parametrize("cut", [1, 5, "half"])
def test_a_truncated_render_is_detected(name: str, cut: int | str):
    kept, renders = formatted({"r": CONVERSATIONS["multi_turn"]}, name)
    text = text_of(renders, "r", name)
    short = text[: len(text) // 2] if cut == "half" else text[:-cut]
    ok, problem = verdict(kept, with_text(renders, "r", name, short), "r", name)
    assert not ok and problem


def test_a_dropped_whole_turn_is_a_count_mismatch():
    kept, renders = formatted({"r": CONVERSATIONS["multi_turn"]}, "chatml")
    text = text_of(renders, "r", "chatml")
    shorter = text[: text.rindex("<|im_start|>")]  # the last assistant turn, markers and all
    assert verdict(kept, with_text(renders, "r", "chatml", shorter), "r", "chatml") == (
        False,
        "the text holds 3 messages, the record 4",
    )


def test_plain_text_markers_round_trip_unless_content_holds_a_boundary_the_parser_splits_on():
    conversations = {
        "mentions": [u("Label turns with ASSISTANT: and ### Response: here."), a("USER: hi is fine")],
        "boundary": [u("first line\nASSISTANT: fake"), a("real")],
        "instruction_boundary": [u("x\n\n### Response:\ny"), a("z")],
    }
    kept, renders = formatted(conversations, "vicuna", "alpaca")
    checked = roundtrip_ok(kept, renders)
    result = {(r, t): (ok, p) for r, t, ok, p in checked.iter_rows()}
    assert result[("mentions", "vicuna")] == (True, None)
    assert result[("mentions", "alpaca")] == (True, None)
    assert result[("boundary", "vicuna")] == (False, "message 1 (user) parses to different content")
    assert result[("boundary", "alpaca")] == (True, None)
    assert result[("instruction_boundary", "alpaca")] == (
        False,
        "message 1 (user) parses to different content",
    )


def test_missing_orphaned_and_duplicated_renders_are_reported():
    kept, renders = formatted(
        {"a": CONVERSATIONS["single_turn"], "b": CONVERSATIONS["with_system"]}, "chatml"
    )
    renders = pl.concat(
        [
            renders.filter(pl.col("record_id") == "b"),
            renders.filter(pl.col("record_id") == "b"),
            pl.DataFrame({"record_id": ["ghost"], "template": ["chatml"], "text": ["x"]}),
        ]
    )
    checked = roundtrip_ok(kept, renders, ["chatml", "llama3"])
    assert checked.rows() == [
        ("a", "chatml", False, "the record has no render"),
        ("b", "chatml", False, "the record has more than one render"),
        ("b", "chatml", False, "the record has more than one render"),
        ("ghost", "chatml", False, "the render has no record"),
        ("a", "llama3", False, "the record has no render"),
        ("b", "llama3", False, "the record has no render"),
    ]
    with pytest.raises(ValueError, match="unknown template"):
        roundtrip_ok(kept, renders, ["nope"])


def test_round_trip_problems_never_quote_record_text():
    secret = "jane@example.com"
    kept, renders = formatted(
        {"r": [s(f"sys {secret}"), u(f"q {secret}"), a(f"a {secret} <|im_end|>")]}, "chatml"
    )
    text = text_of(renders, "r", "chatml")
    variants = [text[:-4], text.replace("<|im_start|>", "", 2), text.replace("user", "assistant"), "", secret]
    for variant in variants:
        ok, problem = verdict(kept, with_text(renders, "r", "chatml", variant), "r", "chatml")
        assert not ok and secret not in problem and "jane" not in problem
    with pytest.raises(ValueError) as raised:
        TEMPLATES["chatml"].parse(text[:-4])
    assert "jane" not in str(raised.value)


def test_the_default_system_prompt_is_part_of_what_must_round_trip():
    records = frame({"plain": CONVERSATIONS["single_turn"]})
    result = Formatter(FormatConfig(templates=["mistral"], default_system_prompt="Be helpful.")).run(records)
    assert roundtrip_ok(result.kept, result.tables["renders"])["ok"].to_list() == [True]
    # Checked against the records as they were before the prompt was added, the extra message shows.
    assert roundtrip_ok(records, result.tables["renders"])["problem"].to_list() == [
        "the text holds 3 messages, the record 2"
    ]


# --------------------------------------------------------------------------------------------------
# Split leakage


def test_prompt_groups_sit_in_exactly_one_split():
    records = many_records(3000)
    assigned = records.with_columns(split_records(records, RATIOS, seed=2).alias("split"))
    conflicts = prompt_split_conflicts(assigned)
    assert conflicts.len() == assigned.height
    assert conflicts.to_list() == [1] * assigned.height


def test_a_prompt_group_spread_over_two_splits_is_counted_on_each_of_its_records():
    records = many_records(3000)
    assigned = records.with_columns(split_records(records, RATIOS, seed=2).alias("split"))
    group = assigned.group_by("group").len().filter(pl.col("len") >= 2)["group"].min()
    leaked_id = assigned.filter(pl.col("group") == group)["record_id"][0]
    other = "test" if assigned.filter(pl.col("record_id") == leaked_id)["split"].item() != "test" else "train"
    leaked = assigned.with_columns(
        pl.when(pl.col("record_id") == leaked_id)
        .then(pl.lit(other))
        .otherwise(pl.col("split"))
        .alias("split")
    )
    conflicts = leaked.with_columns(prompt_split_conflicts(leaked).alias("n"))
    assert set(conflicts.filter(pl.col("group") == group)["n"]) == {2}
    assert set(conflicts.filter(pl.col("group") != group)["n"]) == {1}


def test_records_without_a_user_message_are_their_own_prompt_group():
    records = frame({"x": CONVERSATIONS["only_system"], "y": CONVERSATIONS["only_system"]}).with_columns(
        pl.Series("split", ["train", "test"])
    )
    assert prompt_split_conflicts(records).to_list() == [1, 1]


# --------------------------------------------------------------------------------------------------
# Pieces, token counts, the max-length policy, loss masks and packing in the stage


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_a_renders_pieces_join_to_the_reference_render_and_locate_every_assistant_content(name: str):
    kept, _ = formatted(CONVERSATIONS, name)
    pieces = render_pieces(explode_turns(kept), TEMPLATES[name])
    assert pieces.columns == [
        "record_id", "template", "turn_index", "role", "piece", "content_start", "content_end"
    ]  # fmt: skip
    joined = dict(pieces.group_by("record_id").agg(pl.col("piece").str.join("")).iter_rows())
    assert joined == dict(render(explode_turns(kept), TEMPLATES[name]).iter_rows())
    for record_id, messages in kept.select("record_id", "messages").iter_rows():
        assert joined[record_id] == reference_render(TEMPLATES[name], messages)
        for row in pieces.filter(
            (pl.col("record_id") == record_id) & (pl.col("role") == "assistant")
        ).iter_rows(named=True):
            content = messages[row["turn_index"]]["content"]
            # Qwen 2.5 keeps contents as they are; every other template trims them like Jinja's ``| trim``.
            expected = content if name == "qwen2.5" else content.strip()
            assert row["piece"][row["content_start"] : row["content_end"]] == expected


def test_pieces_put_a_carried_system_prompt_in_its_own_turn_and_bos_before_the_first_turn():
    turns = explode_turns(frame({"r": [s(" Be brief. "), u("Hi"), a("Hello")]}))
    mistral = render_pieces(turns, TEMPLATES["mistral"])
    assert mistral.select("turn_index", "role", "piece", "content_start", "content_end").rows() == [
        (0, "system", "<s>Be brief.\n\n", 3, 12),
        (1, "user", "[INST] Hi [/INST]", 7, 9),
        (2, "assistant", " Hello</s>", 1, 6),
    ]
    llama = render_pieces(turns, TEMPLATES["llama3"])
    assert llama.select("turn_index", "role", "piece").row(0) == (-1, None, "<|begin_of_text|>")
    assert render_pieces(turns, TEMPLATES["gemma"])["role"].to_list() == ["user", "assistant"]


def measured(config: FormatConfig, conversations: dict[str, list[dict[str, str]]]) -> StageResult:
    result = Formatter(config).run(frame(conversations))
    result.check_conservation()
    return result


def test_the_stage_counts_tokens_per_record_and_template_with_the_templates_own_tokenizer_else_the_fallback():
    config = FormatConfig(templates=["mistral", "llama3"])
    result = measured(config, CONVERSATIONS)
    counts = result.tables["token_counts"]
    assert counts.columns == ["record_id", "template", "tokens", "tokenizer", "approximate"]
    assert counts.height == 2 * result.kept.height
    flags = set(counts.select("template", "tokenizer", "approximate").unique().iter_rows())
    assert flags == {("mistral", "mistral-v3", False), ("llama3", "mistral-tekken", True)}
    # The per-turn encoding sums to exactly what counting the whole render gives.
    assert counts.sort("template", "record_id").equals(
        token_counts(result.tables["renders"], config.tokens).sort("template", "record_id")
    )
    for template in ("mistral", "llama3"):
        tokens = counts.filter(pl.col("template") == template)["tokens"]
        assert result.counters[f"tokens.{template}.total"] == tokens.sum()
        assert result.counters[f"tokens.{template}.max"] == tokens.max()
    assert result.counters["too_long"] == result.counters["truncated"] == 0


def test_a_template_without_a_tokenizer_gets_null_counts_and_no_token_counters():
    config = FormatConfig(templates=["mistral", "llama3"], tokens={"fallback": None})
    result = measured(config, {"r": [u("Hi"), a("Hello")]})
    counts = {row[0]: row[1:] for row in result.tables["token_counts"].select(
        "template", "tokens", "tokenizer", "approximate"
    ).iter_rows()}  # fmt: skip
    assert counts["llama3"] == (None, None, None)
    assert counts["mistral"][1:] == ("mistral-v3", False) and counts["mistral"][0] > 0
    assert "tokens.llama3.total" not in result.counters and "tokens.mistral.total" in result.counters


LENGTHS = {
    "short": [u("Hi"), a("Hello")],
    "long": [u("word " * 200), a("answer " * 300)],
    "long_tail": [s("Be brief."), u("q1"), a("a1"), u("word " * 200), a("answer " * 300)],
}


def test_max_tokens_drop_rejects_records_over_the_limit_as_too_long():
    config = FormatConfig(templates=["mistral", "llama3"], tokens={"max_tokens": 100})
    result = measured(config, LENGTHS)
    assert result.kept["record_id"].to_list() == ["short"]
    assert result.rejected_by_rule == {"too_long": 2}
    details = dict(result.rejected.select("record_id", "detail").iter_rows())
    assert re.fullmatch(
        r"\d[\d,]* tokens with (mistral|llama3) > max_tokens 100 \(mistral-(v3|tekken(, approximate)?)\)",
        details["long"],
    )
    assert "word" not in details["long"] and "answer" not in details["long"]
    assert result.counters["too_long"] == 2 and result.counters["truncated"] == 0
    assert set(result.tables["token_counts"]["record_id"]) == {"short"}
    assert set(result.tables["renders"]["record_id"]) == {"short"}


def test_max_tokens_truncate_keeps_a_prefix_ending_with_an_assistant_turn_rendered_again():
    config = FormatConfig(
        templates=["mistral", "llama3"], tokens={"max_tokens": 100, "over_length": "truncate"}
    )
    result = measured(config, LENGTHS)
    assert sorted(result.kept["record_id"]) == ["long_tail", "short"]
    assert result.rejected_by_rule == {"too_long": 1}
    assert result.counters["truncated"] == 1 and result.counters["too_long"] == 1
    cut = result.kept.filter(pl.col("record_id") == "long_tail")["messages"].item().to_list()
    assert cut == [s("Be brief."), u("q1"), a("a1")]
    truncated = result.tables["truncated"].row(0, named=True)
    assert (truncated["record_id"], truncated["messages_before"], truncated["messages_after"]) == (
        "long_tail",
        5,
        3,
    )
    renders = result.tables["renders"].filter(pl.col("record_id") == "long_tail")
    for template, text in renders.select("template", "text").iter_rows():
        assert text == reference_render(TEMPLATES[template], cut)
    assert text_of(renders, "long_tail", "llama3").endswith("a1<|eot_id|>")
    assert text_of(renders, "long_tail", "mistral").endswith(" a1</s>")
    counts = result.tables["token_counts"].filter(pl.col("record_id") == "long_tail")
    assert counts.sort("template").equals(token_counts(renders, config.tokens).sort("template"))
    assert counts["tokens"].max() <= 100 and truncated["tokens_after"] <= 100 < truncated["tokens_before"]
    detail = result.rejected.filter(pl.col("record_id") == "long")["detail"].item()
    assert detail.endswith("; no prefix of whole turns ending with an assistant turn fits")
    assert roundtrip_ok(result.kept, result.tables["renders"])["ok"].all()


def test_loss_masks_cover_each_assistant_content_and_its_end_of_turn_token():
    result = measured(
        FormatConfig(templates=["llama3", "chatml"]), {"r": [u("Hi"), a("Hello"), u("q"), a("Bye")]}
    )
    masks = result.tables["loss_masks"]
    assert masks.height == 2
    for row in masks.iter_rows(named=True):
        text = text_of(result.tables["renders"], "r", row["template"])
        spans = [text[span["start"] : span["end"]] for span in row["assistant_spans"]]
        end = "<|eot_id|>" if row["template"] == "llama3" else "<|im_end|>"
        assert spans == ["Hello" + end, "Bye" + end]
        assert len(row["assistant_token_spans"]) == 2 and row["tokenizer"] == "mistral-tekken"
    off = FormatConfig(templates=["llama3"], release={"loss_masks": False})
    assert "loss_masks" not in measured(off, {"r": [u("Hi"), a("Hello")]}).tables


def test_packing_assigns_every_counted_render_to_a_sequence_when_enabled():
    records = {f"r{i}": [u(f"question {i} " * (i + 1)), a(f"answer {i} " * (3 * i + 1))] for i in range(12)}
    config = FormatConfig(templates=["llama3", "mistral"], packing={"enabled": True, "sequence_length": 256})
    result = measured(config, records)
    packing = result.tables["packing"]
    assert packing.columns == ["template", "record_id", "tokens", "sequence", "position"]
    assert (
        packing.select("template", "record_id", "tokens")
        .sort("template", "record_id")
        .equals(
            result.tables["token_counts"]
            .select("template", "record_id", "tokens")
            .sort("template", "record_id")
        )
    )
    per_sequence = packing.group_by("template", "sequence").agg(pl.col("tokens").sum())
    assert (per_sequence["tokens"] <= 256).all()
    for template in ("llama3", "mistral"):
        sequences = packing.filter(pl.col("template") == template)["sequence"].n_unique()
        assert result.counters[f"packing.{template}.sequences"] == sequences
        efficiency = result.counters[f"packing.{template}.efficiency_permille"]
        assert efficiency == round(1000 * result.counters[f"tokens.{template}.total"] / (256 * sequences))
    assert "packing" not in measured(FormatConfig(templates=["llama3"]), records).tables
