"""Specification of the formatted stage: chat templates, splits and the release export.

The chat-template oracle is the reference Jinja file of each family (chujiezheng/chat_templates),
prepared as its README prescribes (indentation and newlines removed) and rendered the way
``transformers`` renders chat templates, for a training example (no generation prompt).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import jinja2
import polars as pl
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tests.conftest import CORPORA
from thresher.config import FormatConfig
from thresher.formatting import TEMPLATES, ChatTemplate, Formatter, export_release, split_records
from thresher.records import RECORD_SCHEMA, conform

REFERENCE_DIR = CORPORA / "format" / "chat_templates" / "chat_templates"


def reference_render(template: ChatTemplate, messages: list[dict[str, str]]) -> str:
    """The oracle: the reference template as ``transformers`` would apply it. Raises on what it rejects."""
    source = (REFERENCE_DIR / template.reference).read_text(encoding="utf-8")
    source = source.replace("    ", "").replace("\n", "")
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    env.globals["raise_exception"] = raise_exception
    return env.from_string(source).render(
        messages=messages,
        bos_token=template.bos_token,
        eos_token=template.eos_token,
        add_generation_prompt=False,
    )


def u(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def a(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def s(text: str) -> dict[str, str]:
    return {"role": "system", "content": text}


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

# Where a template is stricter than its reference, and why (documented in thresher.formatting):
# llama3/phi-3/zephyr have no tool role; the preamble families render a non-leading system or a tool
# message as nothing in the reference, which would silently lose a message.
STRICTER = {
    ("llama3", "tool_in_assistant_slot"),
    ("phi-3", "tool_in_assistant_slot"),
    ("zephyr", "tool_in_assistant_slot"),
    ("mistral", "tool_in_assistant_slot"),
    ("vicuna", "tool_in_assistant_slot"),
    ("alpaca", "tool_in_assistant_slot"),
    ("mistral", "late_system"),
    ("vicuna", "late_system"),
    ("alpaca", "late_system"),
}


def frame(conversations: dict[str, list[dict[str, str]]]) -> pl.DataFrame:
    return conform(
        pl.DataFrame(
            {"record_id": list(conversations), "messages": list(conversations.values())},
            schema_overrides={"messages": RECORD_SCHEMA["messages"]},
        )
    )


@pytest.mark.parametrize("name", ["llama3", "chatml", "phi-3", "zephyr", "mistral", "vicuna", "alpaca"])
def test_renders_byte_identically_to_the_reference_template(name: str):
    template = TEMPLATES[name]
    result = Formatter(FormatConfig(templates=[name])).run(frame(CONVERSATIONS))
    rendered = dict(result.tables["renders"].select("record_id", "text").iter_rows())
    rejected = dict(result.rejected.select("record_id", "detail").iter_rows())

    for record_id, messages in CONVERSATIONS.items():
        try:
            expected = reference_render(template, messages)
        except jinja2.TemplateError:
            expected = None
        if record_id in rendered:
            assert rendered[record_id].encode() == expected.encode(), record_id
        elif expected is not None:
            assert (name, record_id) in STRICTER, f"{record_id} rejected but the reference renders it"
            assert rejected[record_id].startswith(f"cannot be rendered with {name}: ")
    assert set(rendered) | set(rejected) == set(CONVERSATIONS)
    result.check_conservation()


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
# Export


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def test_export_writes_messages_and_rendered_texts_per_split_that_round_trip(tmp_path: Path):
    records = frame({k: v for k, v in CONVERSATIONS.items() if k not in {"late_system"}})
    result = Formatter(FormatConfig(splits={"train": 0.5, "test": 0.5}, split_seed=3)).run(records)
    paths = export_release(result.kept, result.tables["renders"], tmp_path)

    splits = sorted(set(result.kept["split"]))
    assert splits == ["test", "train"]
    assert set(paths) == {f"{kind}/{sp}" for kind in ("messages", "llama3", "chatml") for sp in splits}
    assert paths["messages/train"] == tmp_path / "messages" / "train.jsonl"

    for split in splits:
        expected = result.kept.filter(pl.col("split") == split).sort("record_id")
        lines = read_jsonl(paths[f"messages/{split}"])
        assert [line["id"] for line in lines] == expected["record_id"].to_list()
        assert [line["messages"] for line in lines] == expected["messages"].to_list()
        assert all(set(line) == {"id", "messages"} for line in lines)
        for template in ("llama3", "chatml"):
            texts = read_jsonl(paths[f"{template}/{split}"])
            renders = result.tables["renders"].filter(pl.col("template") == template)
            want = dict(renders.select("record_id", "text").iter_rows())
            assert [t["id"] for t in texts] == expected["record_id"].to_list()
            assert all(t["text"] == want[t["id"]] for t in texts)


def test_export_is_byte_identical_across_runs(tmp_path: Path):
    records = frame(CONVERSATIONS)
    result = Formatter(FormatConfig(templates=["chatml"])).run(records)
    first = export_release(result.kept, result.tables["renders"], tmp_path / "one")
    shuffled = result.kept.sample(fraction=1.0, shuffle=True, seed=1)
    second = export_release(shuffled, result.tables["renders"].reverse(), tmp_path / "two")
    assert list(first) == list(second)
    for key in first:
        assert first[key].read_bytes() == second[key].read_bytes()
