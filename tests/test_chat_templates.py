"""The chat-template oracle: every template renders byte-identically to its reference Jinja file.

The references are chujiezheng/chat_templates' files (read-only in the shared corpora), rendered as
``transformers``' ``apply_chat_template`` renders a chat template (a sandboxed Jinja environment with
``trim_blocks`` and ``lstrip_blocks``, ``raise_exception`` available), for a training example (no
generation prompt), with the model's own bos and eos tokens. A file written for reading (indented,
without whitespace control) is prepared as that repository's README prescribes: indentation and
newlines removed. A file that controls its own whitespace (``{%-``; qwen2.5's is Qwen's own template)
is used as it is: its newlines inside string literals are part of the format.

Where the reference raises, the stage rejects the record with ``render_failed``; where the reference
would lose or mislabel a message, the stage is stricter and says why; a record holding a special
token is rejected before any rendering with ``special_tokens_in_content``.
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass
from pathlib import Path

import jinja2
import polars as pl
import pytest
import yaml
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tests.conftest import CORPORA
from thresher.cleaning.junk import SPECIAL_TOKENS
from thresher.config import FormatConfig, load_config
from thresher.formatting import TEMPLATES, ChatTemplate, Formatter
from thresher.records import RECORD_SCHEMA, conform

CHAT_TEMPLATES = CORPORA / "format" / "chat_templates"
REFERENCE_DIR = CHAT_TEMPLATES / "chat_templates"
GENERATION_CONFIGS = CHAT_TEMPLATES / "generation_configs"
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Tokenizer:
    """The model's bos and eos tokens as the oracle passes them to the reference template.

    The generation configs name token ids only (``stop_token_ids``), so the strings are the tokenizer's
    and the test checks the eos token's id against the config's stop tokens.
    """

    generation_config: str
    bos: str
    eos: str
    eos_id: int


TOKENIZERS = {
    "llama-3-instruct.jinja": Tokenizer("llama-3-instruct.json", "<|begin_of_text|>", "<|eot_id|>", 128009),
    # chatml.jinja as Qwen2 uses it (Qwen's tokenizers have no bos token).
    "chatml.jinja": Tokenizer("qwen2-instruct.json", "", "<|im_end|>", 151645),
    # Qwen 2.5 shares Qwen 2's tokenizer; the corpora hold no generation config of its own.
    "qwen2.5-instruct.jinja": Tokenizer("qwen2-instruct.json", "", "<|im_end|>", 151645),
    "phi-3.jinja": Tokenizer("phi-3.json", "<s>", "<|endoftext|>", 32000),
    "zephyr.jinja": Tokenizer("zephyr.json", "<s>", "</s>", 2),
    "gemma-it.jinja": Tokenizer("gemma-it.json", "<bos>", "<eos>", 1),
    "mistral-instruct.jinja": Tokenizer("mistral-instruct.json", "<s>", "</s>", 2),
    "vicuna.jinja": Tokenizer("vicuna.json", "<s>", "</s>", 2),
    "alpaca.jinja": Tokenizer("alpaca.json", "<s>", "</s>", 2),
}

QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
QWEN_SYSTEM = f"<|im_start|>system\n{QWEN_DEFAULT_SYSTEM}<|im_end|>\n"


def reference_source(reference: str) -> str:
    """The reference file as it is handed to Jinja (see the module docstring)."""
    source = (REFERENCE_DIR / reference).read_text(encoding="utf-8")
    if "{%-" in source:
        return source
    return source.replace("    ", "").replace("\n", "")


@functools.cache
def reference_template(reference: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    env.globals["raise_exception"] = raise_exception
    return env.from_string(reference_source(reference))


def reference_render(template: ChatTemplate, messages: list[dict[str, str]]) -> str:
    """The oracle: the reference template as ``transformers`` would apply it. Raises on what it rejects."""
    tokenizer = TOKENIZERS[template.reference]
    return reference_template(template.reference).render(
        messages=messages, bos_token=tokenizer.bos, eos_token=tokenizer.eos, add_generation_prompt=False
    )


def reference_or_none(template: ChatTemplate, messages: list[dict[str, str]]) -> str | None:
    try:
        return reference_render(template, messages)
    except jinja2.TemplateError:
        return None


def u(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def a(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def s(text: str) -> dict[str, str]:
    return {"role": "system", "content": text}


def tool(text: str) -> dict[str, str]:
    return {"role": "tool", "content": text}


def frame(conversations: dict[str, list[dict[str, str]]]) -> pl.DataFrame:
    return conform(
        pl.DataFrame(
            {"record_id": list(conversations), "messages": list(conversations.values())},
            schema_overrides={"messages": RECORD_SCHEMA["messages"]},
        )
    )


# --------------------------------------------------------------------------------------------------
# The oracle's conversations

# Contents chosen for what templates and their parsers could get wrong. None holds a special token
# or a boundary a plain-text grammar splits on (those have their own tests).
CONTENTS = {
    "plain": "What is the capital of France?",
    "multi_line": "First line.\nSecond line.\n\nA new paragraph after a blank line.",
    "padded": "  \n\t padded on both sides \t\n  ",
    "leading_blank_lines": "\n\nstarts after blank lines",
    "trailing_blank_lines": "ends with blank lines\n\n\n",
    "crlf": "windows\r\nline endings\r\n",
    "unicode": "Ünïcödé? 日本語で答えて 🙂 مرحبا e\u0301 \U0001f468\u200d\U0001f469\u200d\U0001f467",
    "empty": "",
    "whitespace_only": " \n\t \r\n",
    # Jinja's ``trim`` is Python's ``str.strip``: it also strips the ASCII separators and NEL ...
    "python_only_whitespace": "\x1c\x1d\x1e\x1f\x85 separators and NEL around \x1f\x85\x1c",
    "unicode_spaces": "\xa0\u1680\u2000\u200a\u3000 no-break and ideographic spaces \u2028\u2029\u202f\u205f",
    # ... but not zero-width characters or the byte-order mark.
    "not_whitespace": "\u200b\ufeff zero-width, BOM, Mongolian vowel separator \u180e\u200b",
    "vertical_tab_form_feed": "\x0b\x0c vertical tab, form feed \x0c\x0b",
    "control_chars": "bell \x07 and nul \x00 inside",
    "markdown": "# Title\n\n- item one\n- item **two**\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n> quoted",
    "code_fence": "Here:\n\n```python\ndef f(x):\n    return {'a': x}  # {{ not jinja }}\n```\n",
    "indented_code": "    four-space indented code\n        nested further\n\tand a tab",
    "jinja_syntax": "{% raw %}{{ x }}{% endraw %} {# not a comment #} {%- if x -%}{{- y -}}",
    "marker_mentions": "Turns look like USER: or ### Response: or <|not_a_token|>, [inst] and < /s >.",
    "json": '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}',
    "long": "word " * 400 + "end",
}
SYSTEMS = ["plain", "padded", "empty", "multi_line", "unicode", "whitespace_only", "code_fence"]


def oracle_conversations(seed: int = 8) -> dict[str, list[dict[str, str]]]:
    """Valid shapes with varied contents, then the shapes the references reject or mishandle."""
    rng = random.Random(seed)
    names = list(CONTENTS)
    conversations: dict[str, list[dict[str, str]]] = {}
    # Every content as the whole conversation, with and without a system prompt (gemma folds that
    # system prompt into the first user turn, so each content meets the fold too).
    for name, text in CONTENTS.items():
        conversations[f"each/{name}"] = [u(text), a(text)]
        conversations[f"each/{name}/system"] = [s(text), u(text), a(text)]
    # System prompt or not, 1..4 turn pairs, ending with the assistant or with one more user turn.
    for system in [None, *SYSTEMS]:
        for pairs in range(1, 5):
            for trailing_user in (False, True):
                messages = [] if system is None else [s(CONTENTS[system])]
                for _ in range(pairs):
                    messages += [u(CONTENTS[rng.choice(names)]), a(CONTENTS[rng.choice(names)])]
                if trailing_user:
                    messages.append(u(CONTENTS[rng.choice(names)]))
                conversations[
                    f"shape/{system or 'no_system'}/{pairs}/{'user' if trailing_user else 'end'}"
                ] = messages
    conversations |= {
        "odd/no_messages": [],
        "odd/only_user": [u("Unanswered question")],
        "odd/only_system": [s("Lonely system prompt")],
        "odd/system_then_assistant": [s("sys"), a("Hello")],
        "odd/starts_with_assistant": [a("Hello"), u("hi")],
        "odd/two_users_in_a_row": [u("first"), u("second"), a("answer")],
        "odd/two_assistants_in_a_row": [u("q"), a("first"), a("second")],
        "odd/two_systems": [s("one"), s("two"), u("q"), a("a")],
        "odd/late_system_in_assistant_slot": [u("q"), s("mid-conversation system")],
        "odd/late_system_in_user_slot": [u("q"), a("a"), s("mid-conversation system"), a("b")],
        "odd/tool_in_assistant_slot": [u("Run it."), tool('{"result": 42}')],
        "odd/tool_use_record": [
            u("Weather?"),
            a('{"name": "weather"}'),
            tool('{"temp": 21}'),
            a("21 degrees."),
        ],
        "odd/two_tool_results": [s("Tools."), u("Both?"), a("calls"), tool("one"), tool(" two\n"), a("done")],
        "odd/tool_first": [tool("orphan result"), u("q"), a("a")],
        "odd/unknown_role_in_assistant_slot": [u("q"), {"role": "narrator", "content": "meanwhile"}],
        "odd/unknown_role_first": [{"role": "narrator", "content": "once"}, u("q"), a("a")],
    }
    return conversations


ORACLE = oracle_conversations()

# Roles each template writes; any other role is rejected, where the reference would silently render
# nothing for it (mistral, vicuna, alpaca, qwen2.5) or a header the model does not know.
EXPRESSIBLE = {name: {"system", "user", "assistant"} for name in TEMPLATES} | {
    "chatml": {"system", "user", "assistant", "tool"},
    "qwen2.5": {"system", "user", "assistant", "tool"},
}
# Templates that take a leading system message out of the turns (as a preamble, or folded into the
# first user turn) and so have no place for a later one.
SYSTEM_OUTSIDE_TURNS = {"mistral", "vicuna", "alpaca", "gemma"}


def stricter_than_reference(name: str, messages: list[dict[str, str]]) -> str | None:
    """Why the stage rejects a conversation the reference renders (it would lose or mislabel a message)."""
    for i, message in enumerate(messages, 1):
        role = message["role"]
        phrase = role if role in {"system", "user", "assistant", "tool"} else "unknown role"
        if role not in EXPRESSIBLE[name]:
            return f"message {i} ({phrase}) has a role the template cannot express"
        if name in SYSTEM_OUTSIDE_TURNS and role == "system" and i > 1:
            return (
                f"message {i} (system) is a system message after the first, which the template cannot place"
            )
    if name == "gemma" and [m["role"] for m in messages] == ["system"]:
        return "message 1 (system) has no user turn to be folded into, which the template requires"
    return None


@functools.cache
def formatted_by(name: str) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """The stage's renders and its rejections (rule, detail) of the oracle conversations."""
    result = Formatter(FormatConfig(templates=[name])).run(frame(ORACLE))
    result.check_conservation()
    renders = dict(result.tables["renders"].select("record_id", "text").iter_rows())
    rejected = {
        r: (rule, detail)
        for r, rule, detail in result.rejected.select("record_id", "rule", "detail").iter_rows()
    }
    return renders, rejected


def test_the_oracle_set_covers_what_it_claims():
    valid = [m for r, m in ORACLE.items() if not r.startswith("odd/")]
    assert len(ORACLE) == 122
    assert {sum(m["role"] == "user" for m in messages) for messages in valid} >= {1, 2, 3, 4, 5}
    assert {messages[0]["role"] for messages in valid} == {"system", "user"}
    used = {m["content"] for messages in valid for m in messages}
    assert set(CONTENTS.values()) <= used


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_every_template_renders_every_oracle_conversation_byte_identically(name: str):
    template = TEMPLATES[name]
    renders, rejected = formatted_by(name)
    assert set(renders) | set(rejected) == set(ORACLE)
    assert not set(renders) & set(rejected)
    for record_id, messages in ORACLE.items():
        expected = reference_or_none(template, messages)
        stricter = stricter_than_reference(name, messages)
        if expected is None:
            rule, detail = rejected[record_id]
            assert rule == "render_failed", record_id
            assert detail.startswith(f"cannot be rendered with {name}: "), record_id
        elif stricter is not None:
            assert rejected[record_id] == ("render_failed", f"cannot be rendered with {name}: {stricter}"), (
                record_id
            )
        else:
            assert record_id in renders, (record_id, rejected.get(record_id))
            assert renders[record_id].encode() == expected.encode(), record_id
    # Every valid shape renders with every template.
    assert {r for r in ORACLE if not r.startswith("odd/")} <= set(renders)


def carried(name: str, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The messages as a template's text carries them, which is what its parse must give back.

    Contents stripped like Jinja's ``| trim``, except qwen2.5's, which keeps them and opens with its
    default system prompt where there is none; gemma folds the system prompt into the first user turn.
    """
    if name == "qwen2.5":
        return messages if messages[0]["role"] == "system" else [s(QWEN_DEFAULT_SYSTEM), *messages]
    trimmed = [{"role": m["role"], "content": m["content"].strip()} for m in messages]
    if name == "gemma" and messages[0]["role"] == "system":
        folded = (messages[0]["content"].strip() + "\n\n" + messages[1]["content"]).strip()
        return [{"role": messages[1]["role"], "content": folded}, *trimmed[2:]]
    return trimmed


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_each_parser_reads_its_reference_templates_own_output(name: str):
    template = TEMPLATES[name]
    texts = {
        record_id: text
        for record_id, messages in ORACLE.items()
        # Skipped where the reference raises, or loses or mislabels a message.
        if (text := reference_or_none(template, messages)) is not None
        and stricter_than_reference(name, messages) is None
    }
    assert len(texts) >= 107
    parsed = template.parse_texts(pl.DataFrame({"record_id": list(texts), "text": list(texts.values())}))
    assert parsed["problem"].is_null().all()
    for record_id, messages in parsed.select("record_id", "messages").iter_rows():
        assert messages == carried(name, ORACLE[record_id]), record_id


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_the_oracle_renders_as_transformers_does(name: str):
    """The emulated environment against ``transformers``' own (an optional dependency)."""
    chat_template_utils = pytest.importorskip("transformers.utils.chat_template_utils")
    template = TEMPLATES[name]
    tokenizer = TOKENIZERS[template.reference]
    for record_id, messages in ORACLE.items():
        try:
            (theirs,), _ = chat_template_utils.render_jinja_template(
                conversations=[messages],
                chat_template=reference_source(template.reference),
                add_generation_prompt=False,
                bos_token=tokenizer.bos,
                eos_token=tokenizer.eos,
            )
        except jinja2.TemplateError:
            theirs = None
        assert reference_or_none(template, messages) == theirs, record_id


def test_the_oracles_tokens_are_the_models_and_every_reference_is_covered():
    assert {t.reference for t in TEMPLATES.values()} == set(TOKENIZERS)
    for name, template in TEMPLATES.items():
        tokenizer = TOKENIZERS[template.reference]
        config = json.loads((GENERATION_CONFIGS / tokenizer.generation_config).read_text(encoding="utf-8"))
        assert tokenizer.eos_id in config["stop_token_ids"], name
        if name != "qwen2.5":
            assert config["chat_template"] == f"chat_templates/{template.reference}", name
        source = (REFERENCE_DIR / template.reference).read_text(encoding="utf-8")
        # Where the reference writes a token, the template writes the model's; elsewhere none.
        assert template.bos_token == (tokenizer.bos if "bos_token" in source else ""), name
        assert template.eos_token == (tokenizer.eos if "eos_token" in source else ""), name


def test_the_readme_preparation_would_break_qwens_own_template():
    source = (REFERENCE_DIR / "qwen2.5-instruct.jinja").read_text(encoding="utf-8")
    assert "{%-" in source and "'<|im_start|>system\n'" in source
    assert reference_render(TEMPLATES["qwen2.5"], [u("Hi"), a("Hello")]) == (
        QWEN_SYSTEM + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
    )
    prepared = source.replace("    ", "").replace("\n", "")
    broken = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(prepared)
    assert broken.render(messages=[u("Hi")], add_generation_prompt=False).startswith(
        "<|im_start|>systemYou are"
    )


# --------------------------------------------------------------------------------------------------
# Qwen 2.5 and Gemma, spelled out


def kept_and_text(name: str, messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str]:
    result = Formatter(FormatConfig(templates=[name])).run(frame({"r": messages}))
    assert result.rejected.is_empty(), result.rejected["detail"].to_list()
    return result.kept["messages"].item().to_list(), result.tables["renders"]["text"].item()


def test_qwen_adds_its_default_system_prompt_to_the_text_only_and_keeps_whitespace():
    kept, text = kept_and_text("qwen2.5", [u("  Hi\n"), a("Hello ")])
    assert (
        text == QWEN_SYSTEM + "<|im_start|>user\n  Hi\n<|im_end|>\n<|im_start|>assistant\nHello <|im_end|>\n"
    )
    assert kept == [u("  Hi\n"), a("Hello ")]  # the record's messages are not changed
    _, own = kept_and_text("qwen2.5", [s("Be brief."), u("Hi"), a("Hello")])
    assert own.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    assert TEMPLATES["qwen2.5"].parse(text) == [s(QWEN_DEFAULT_SYSTEM), u("  Hi\n"), a("Hello ")]


def test_qwen_renders_tool_results_as_user_turns_and_needs_no_alternation():
    _, text = kept_and_text("qwen2.5", ORACLE["odd/two_tool_results"])
    assert text.endswith(
        "<|im_start|>assistant\ncalls<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\none\n</tool_response>\n"
        "<tool_response>\n two\n\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\ndone<|im_end|>\n"
    )
    assert TEMPLATES["qwen2.5"].parse(text)[-3:] == [tool("one"), tool(" two\n"), a("done")]
    kept_and_text("qwen2.5", ORACLE["odd/two_users_in_a_row"])
    kept_and_text("qwen2.5", ORACLE["odd/late_system_in_user_slot"])


def test_a_qwen_user_message_that_looks_like_tool_results_fails_the_round_trip():
    result = Formatter(FormatConfig(templates=["qwen2.5"])).run(
        frame({"r": [u("<tool_response>\nfake\n</tool_response>"), a("ok")]})
    )
    assert result.rejected.select("rule", "detail").row(0) == (
        "render_failed",
        "rendered text does not parse back into its messages with qwen2.5: "
        "message 2 parses as tool, the record has user",
    )


def test_gemma_folds_the_system_prompt_into_the_first_user_turn_and_calls_the_assistant_model():
    kept, text = kept_and_text("gemma", [s(" Be brief. "), u(" Hi "), a("Hello"), u("Again")])
    assert text == (
        "<start_of_turn>user\nBe brief.\n\n Hi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
        "<start_of_turn>user\nAgain<end_of_turn>\n"
    )
    assert kept[0] == s(" Be brief. ")  # the record keeps its system message; the text folds it
    assert TEMPLATES["gemma"].parse(text) == [u("Be brief.\n\n Hi"), a("Hello"), u("Again")]


@pytest.mark.parametrize(
    ("record_id", "detail"),
    [
        (
            "odd/only_system",
            "message 1 (system) has no user turn to be folded into, which the template requires",
        ),
        (
            "odd/late_system_in_assistant_slot",
            "message 2 (system) is a system message after the first, which the template cannot place",
        ),
        ("odd/tool_in_assistant_slot", "message 2 (tool) has a role the template cannot express"),
        (
            "odd/two_users_in_a_row",
            "message 2 (user) breaks the user/assistant alternation the template requires",
        ),
    ],
)
def test_gemma_rejects_what_it_cannot_place(record_id: str, detail: str):
    _, rejected = formatted_by("gemma")
    assert rejected[record_id] == ("render_failed", f"cannot be rendered with gemma: {detail}")


# --------------------------------------------------------------------------------------------------
# Special tokens in content: rejected before rendering


def first_token(text: str) -> tuple[int, str] | None:
    found = [(text.find(t), t) for family in SPECIAL_TOKENS.values() for t in family if t in text]
    return min(found) if found else None


def test_a_special_token_of_any_family_is_rejected_before_rendering_naming_family_and_message():
    conversations, planted = {}, {}
    for k, (family, tokens) in enumerate(SPECIAL_TOKENS.items()):
        for j, token in enumerate(tokens):
            where = (k + j) % 3
            messages = [s("Be helpful."), u("Explain this."), a("Sure.")]
            messages[where] = {**messages[where], "content": f"text before {token} and after"}
            conversations[f"{k}.{j}"] = messages
            planted[f"{k}.{j}"] = (family, token, where)
    records = frame(conversations)
    result = Formatter(FormatConfig(templates=list(TEMPLATES))).run(records)
    result.check_conservation()
    assert result.kept.is_empty()
    assert result.rejected_by_rule == {"special_tokens_in_content": len(conversations)}
    assert result.counters["special_tokens_in_content"] == len(conversations)
    assert all(v == 0 for k, v in result.counters.items() if k.startswith("render_failed."))
    details = dict(result.rejected.select("record_id", "detail").iter_rows())
    for record_id, messages in conversations.items():
        family, token, index = planted[record_id]
        role = messages[index]["role"]
        assert (
            details[record_id]
            == f"message {index + 1} ({role}) holds '{token}', a special token of the {family} family"
        )
        assert "before" not in details[record_id] and "after" not in details[record_id]


def test_the_first_message_and_its_first_token_are_named():
    messages = [s("plain"), u("a [INST] then <|eot_id|>"), a("<|im_end|>")]
    result = Formatter(FormatConfig(templates=["chatml"])).run(frame({"r": messages}))
    assert result.rejected.select("rule", "detail").row(0) == (
        "special_tokens_in_content",
        "message 2 (user) holds '[INST]', a special token of the llama 2 / mistral (sentencepiece) family",
    )


def test_every_templates_own_special_tokens_are_caught_before_the_round_trip():
    for name, template in TEMPLATES.items():
        tokens = template.special_tokens()
        assert tokens, name
        records = frame({token: [u(f"x {token} y"), a("ok")] for token in tokens})
        result = Formatter(FormatConfig(templates=[name])).run(records)
        assert result.rejected_by_rule == {"special_tokens_in_content": len(tokens)}, name


def test_look_alikes_of_special_tokens_are_content():
    look_alikes = "<| im_start |> <|not_a_token|> [inst] [ INST ] <start_of_turn <s > < /s> <|eot_id"
    assert first_token(look_alikes) is None
    result = Formatter(FormatConfig(templates=list(TEMPLATES))).run(
        frame({"r": [u(look_alikes), a(look_alikes)]})
    )
    assert result.rejected.is_empty()


def test_the_oracle_itself_holds_no_special_token():
    assert all(first_token(m["content"]) is None for messages in ORACLE.values() for m in messages)


def test_a_default_system_prompt_holding_a_special_token_is_refused_up_front():
    with pytest.raises(ValueError, match="special token"):
        Formatter(FormatConfig(default_system_prompt="You are <|im_start|>helpful"))


# --------------------------------------------------------------------------------------------------
# Configuration


def test_a_dataset_configuration_can_list_every_template(tmp_path: Path):
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    path = tmp_path / "all.yaml"
    demo["format"]["templates"] = list(TEMPLATES)
    path.write_text(yaml.safe_dump(demo), encoding="utf-8")
    assert load_config(path).format.templates == list(TEMPLATES)
    assert {"llama3", "chatml", "qwen2.5", "mistral", "gemma", "phi-3", "zephyr", "vicuna", "alpaca"} <= set(
        TEMPLATES
    )
    demo["format"]["templates"] = ["llama3", "qwen2"]
    path.write_text(yaml.safe_dump(demo), encoding="utf-8")
    with pytest.raises(ValueError, match=r"unknown template\(s\) \['qwen2'\]"):
        load_config(path)
