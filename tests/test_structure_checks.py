"""Specification of the structure checks: tool calls against their schemas, requested output formats,
paraphrases against their seeds.

Synthetic records come from the real recipes (tool_use, paraphrase, back_translation, run by the real
``Synthesizer`` against the chat-completions server of tests/chat_server.py), OpenAI tool-call records
from the real ingest adapter, and the format checks are run over the human-written Self-Instruct and
T0 corpora: a check that rejects known-good data is broken, one that keeps broken data is useless.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tests.chat_server import ChatServer
from tests.conftest import CORPORA
from thresher.config import (
    IngestConfig,
    LLMRecipeConfig,
    RecipeConfig,
    StructureChecksConfig,
    SynthesisConfig,
)
from thresher.ingest import alpaca_prompt, read_file
from thresher.llm import Endpoint, LLMClient
from thresher.llm_recipes import chrf
from thresher.records import RECORD_SCHEMA, conform
from thresher.synthesis import Synthesizer
from thresher.verification.outcomes import OUTCOME_SCHEMA, ROW
from thresher.verification.structure import (
    StructureVerifier,
    label_key,
    requested_formats,
    seed_instructions,
)

SELF_INSTRUCT = CORPORA / "instruct" / "self_instruct"
T0 = CORPORA / "neardup" / "t0_per_template"

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}

# ------------------------------------------------------------------------------------------------
# Helpers


def chat(
    record_id: str,
    user: str,
    answer: str | None,
    *,
    task: str = "chat",
    metadata: dict[str, Any] | None = None,
    origin: str = "source",
    parent_ids: tuple[str, ...] = (),
) -> dict[str, Any]:
    messages = [{"role": "user", "content": user}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return {
        "record_id": record_id,
        "task": task,
        "messages": messages,
        "metadata": json.dumps(metadata or {}),
        "origin": origin,
        "parent_ids": list(parent_ids),
    }


def frame_of(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return conform(pl.DataFrame(rows, schema_overrides={"messages": RECORD_SCHEMA["messages"]}))


def check(
    records: pl.DataFrame | list[dict[str, Any]],
    *,
    seeds: pl.DataFrame | None = None,
    counters: Counter[str] | None = None,
    **config: Any,
) -> dict[str, tuple[str, str | None, str]]:
    """record_id -> (verdict, rule, detail) for the records a check applied to."""
    frame = (records if isinstance(records, pl.DataFrame) else frame_of(records)).with_row_index(ROW)
    outcomes = StructureVerifier(StructureChecksConfig(**config)).run(
        frame, counters if counters is not None else Counter(), seeds=seeds
    )
    assert outcomes.schema == pl.Schema(OUTCOME_SCHEMA)
    assert outcomes[ROW].is_unique().all() and outcomes[ROW].is_sorted()
    ids = frame["record_id"].to_list()
    return {
        ids[row]: (verdict, rule, detail)
        for row, verdict, rule, detail in outcomes.select(list(OUTCOME_SCHEMA)).iter_rows()
    }


def needs(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"corpus not available: {path}")


def between(text: str, tag: str) -> str:
    return re.search(rf"(?s)<{tag}>\s*(.*?)\s*</{tag}>", text)[1]


def detected(turn: str) -> tuple[bool, list[str] | None]:
    """Whether ``turn`` asks for JSON, and the labels it allows (None: no label set)."""
    wants_json, labels = requested_formats(pl.Series([turn])).row(0)
    return wants_json, labels


def tool_record(record_id: str, call: Any, *, tools: list[Any] | None = None) -> dict[str, Any]:
    """A tool record shaped as the tool_use recipe makes it: request, call, simulated result, answer."""
    content = call if isinstance(call, str) else json.dumps(call)
    row = chat(record_id, "What's the weather in Paris?", None, task="tool")
    row["messages"] += [
        {"role": "assistant", "content": content},
        {"role": "tool", "content": '{"temperature": 18}'},
        {"role": "assistant", "content": "It is 18 degrees."},
    ]
    row["metadata"] = json.dumps({"recipe": "weather_calls", "tools": tools or [WEATHER["function"]]})
    return row


# ------------------------------------------------------------------------------------------------
# Records made by the real recipes

SEEDS = [
    ("List three fruits that are high in vitamin C.", "Oranges, kiwis and strawberries."),
    ("Explain why the sky is blue in two sentences.", "Sunlight scatters off air molecules..."),
    ("Name a prime number greater than ten.", "Eleven."),
    ("Describe a sunset over the sea.", "Golden light spills across the waves..."),
]
# What the scripted model writes for each seed instruction: a faithful rewrite except for the last seed.
REWRITES = {
    SEEDS[0][0]: "Name three fruits that contain a lot of vitamin C.",
    SEEDS[1][0]: "In two sentences, explain why the sky looks blue.",
    SEEDS[2][0]: "Give a prime number that is larger than ten.",
    SEEDS[3][0]: "Write a limerick about a penguin who loves jazz.",
}
ROUND_TRIPS = {
    SEEDS[0][0]: "List three fruits which are rich in vitamin C.",
    SEEDS[1][0]: "Explain in two sentences why the sky is blue.",
    SEEDS[2][0]: "Name a prime number bigger than ten.",
    SEEDS[3][0]: "Tell me a joke about penguins.",
}
TOOL_CALLS = {
    "Paris": '{"name": "get_weather", "arguments": {"city": "Paris"}}',
    "Oslo": '```json\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "fahrenheit"}}\n```',
}


def scripted_model(body: dict[str, Any]) -> str:
    prompt = body["messages"][-1]["content"]
    if "Rewrite the instruction" in prompt:
        return f"<rewritten>{REWRITES[between(prompt, 'instruction')]}</rewritten>"
    if "into German" in prompt:
        return f"<translation>[de] {between(prompt, 'text')}</translation>"
    if "from German" in prompt:
        return f"<translation>{ROUND_TRIPS[between(prompt, 'text').removeprefix('[de] ')]}</translation>"
    if "Write 2 different requests" in prompt:
        return "1. What's the weather in Paris?\n2. How warm is it in Oslo, in fahrenheit?"
    if "Call the function" in prompt:
        return next(call for city, call in TOOL_CALLS.items() if city in between(prompt, "request"))
    if "simulating the backend" in prompt:
        return '{"temperature": 18, "conditions": "cloudy"}'
    if "Write your reply to the user" in prompt:
        return "It is 18 degrees and cloudy."
    raise AssertionError(f"unexpected prompt: {prompt[:80]}")


@pytest.fixture(scope="module")
def synthetic_batch() -> Iterator[pl.DataFrame]:
    """The synthetic stage's output for one batch: the seeds and what the recipes made from them."""
    seeds = frame_of(
        [
            {**chat(f"aaaaaaaaaaaa:{i}", q, a), "batch": "b1", "source_line": i + 1}
            for i, (q, a) in enumerate(SEEDS)
        ]
    )
    config = SynthesisConfig(
        recipes=[RecipeConfig(name="wrapped", kind="instruction_template", rate=1.0)],
        llm_recipes=[
            LLMRecipeConfig(name="rewordings", kind="paraphrase", rate=1.0),
            # min_similarity 0: the recipe keeps every round trip, so the verifier sees drifted ones.
            LLMRecipeConfig(
                name="round_trips", kind="back_translation", rate=1.0, params={"min_similarity": 0.0}
            ),
            LLMRecipeConfig(
                name="weather_calls", kind="tool_use", params={"tools": [WEATHER], "requests_per_tool": 2}
            ),
        ],
    )
    with ChatServer(reply=scripted_model) as server:
        endpoint = Endpoint(name="test-endpoint", base_url=server.base_url, model="test-model")
        with LLMClient(endpoint, backoff_seconds=0.0, max_retries=1) as client:
            result = Synthesizer(config, llm=client).run(seeds, batch="b1")
    yield result.kept


def made_by(batch: pl.DataFrame, recipe: str) -> pl.DataFrame:
    return batch.filter(pl.col("metadata").str.json_path_match("$.recipe") == recipe)


def first_user(batch: pl.DataFrame, record_id: str) -> str:
    return next(m["content"] for m in messages_of(batch, record_id) if m["role"] == "user")


def by_instruction(batch: pl.DataFrame, recipe: str) -> dict[str, str]:
    """The records one recipe made, as first user turn -> record_id."""
    made = made_by(batch, recipe)
    return {first_user(made, record_id): record_id for record_id in made["record_id"]}


# ------------------------------------------------------------------------------------------------
# Tool calls


def test_tool_use_recipe_records_pass_with_the_calls_they_hold(synthetic_batch: pl.DataFrame) -> None:
    made = made_by(synthetic_batch, "weather_calls")
    assert made.height == 2 and made["task"].unique().to_list() == ["tool"]
    outcomes = check(synthetic_batch)
    assert {outcomes[r] for r in made["record_id"]} == {
        ("passed", None, "1 tool call(s) validate against their function schemas")
    }


def messages_of(batch: pl.DataFrame, record_id: str) -> list[dict[str, str]]:
    return batch.filter(pl.col("record_id") == record_id)["messages"].to_list()[0]


def with_messages(batch: pl.DataFrame, record_id: str, messages: list[dict[str, str]]) -> pl.DataFrame:
    """The batch with one record's conversation replaced."""
    replacement = pl.Series([messages], dtype=RECORD_SCHEMA["messages"]).first()
    return batch.with_columns(
        pl.when(pl.col("record_id") == record_id)
        .then(replacement)
        .otherwise(pl.col("messages"))
        .alias("messages")
    )


def replace_call(batch: pl.DataFrame, record_id: str, call: Any) -> pl.DataFrame:
    """The batch with one tool record's call (its first assistant turn) replaced."""
    messages = messages_of(batch, record_id)
    messages[1] = {"role": "assistant", "content": call if isinstance(call, str) else json.dumps(call)}
    return with_messages(batch, record_id, messages)


@pytest.mark.parametrize(
    ("call", "detail"),
    [
        (
            {"name": "get_weather", "arguments": {"unit": "celsius"}},
            "arguments of get_weather (call 1 of 1) fail 'required' at $: missing city",
        ),
        (
            {"name": "get_weather", "arguments": {"city": "Reykjavík", "unit": "kelvin"}},
            "arguments of get_weather (call 1 of 1) fail 'enum' at $.unit: value is not one of the 2 allowed",
        ),
        (
            {"name": "get_weather", "arguments": {"city": "Reykjavík", "days": "three"}},
            "arguments of get_weather (call 1 of 1) fail 'type' at $.days: expected integer, got string",
        ),
        (
            {"name": "get_weather", "arguments": {"city": "Reykjavík", "days": 30}},
            "arguments of get_weather (call 1 of 1) fail 'maximum' at $.days: limit 7",
        ),
        (
            {"name": "get_weather", "arguments": {"city": "Reykjavík", "home address": "Laugavegur 1"}},
            "arguments of get_weather (call 1 of 1) fail 'additionalProperties' at $: properties the schema "
            "does not define",
        ),
        (
            {"name": "get_weather", "arguments": {"unit": "kelvin", "days": 0}},
            "arguments of get_weather (call 1 of 1) fail 'required' at $: missing city (3 errors in all)",
        ),
        (
            {"name": "book_flight", "arguments": {"to": "Reykjavík"}},
            "call 1 of 1 (message 2) names a function that is not among the 1 of the record's tool list",
        ),
        (
            'get_weather(city="Reykjavík")',
            "call 1 of 1 (message 2) is not a JSON object with a function name and object arguments",
        ),
    ],
)
def test_a_call_that_breaks_its_schema_is_invalid_and_named_without_its_values(
    synthetic_batch: pl.DataFrame, call: Any, detail: str
) -> None:
    record_id = made_by(synthetic_batch, "weather_calls")["record_id"][0]
    outcome = check(replace_call(synthetic_batch, record_id, call))[record_id]
    assert outcome == ("failed", "tool_call_invalid", detail)
    assert not any(value in detail for value in ("Reykjav", "kelvin", "three", "Laugavegur", "home address"))


def openai_records(tmp_path: Path, *conversations: list[dict[str, Any]]) -> pl.DataFrame:
    """Records as ingest reads OpenAI-format tool conversations (tools and tool_calls in the metadata)."""
    path = tmp_path / "calls.jsonl"
    lines = [json.dumps({"tools": [WEATHER], "messages": messages}) for messages in conversations]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = read_file(path, "b1", IngestConfig())
    assert result.rejected.is_empty()
    return result.kept


def calling(*arguments: str) -> list[dict[str, Any]]:
    """An OpenAI conversation whose assistant makes one call per ``arguments`` string, in parallel."""
    calls = [
        {"id": f"call_{i}", "type": "function", "function": {"name": "get_weather", "arguments": a}}
        for i, a in enumerate(arguments)
    ]
    return [
        {"role": "user", "content": "Weather in Oslo and Bergen?"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        *({"role": "tool", "tool_call_id": c["id"], "content": '{"temperature": 3}'} for c in calls),
        {"role": "assistant", "content": "It is 3 degrees in both."},
    ]


def test_openai_tool_calls_kept_by_ingest_are_validated(tmp_path: Path) -> None:
    records = openai_records(
        tmp_path,
        calling('{"city": "Oslo"}', '{"city": "Bergen", "unit": "celsius"}'),
        calling('{"city": "Oslo"}', '{"city": "Bergen", "unit": "kelvin"}'),
        calling('{"city": "Oslo", "unit": }'),
    )
    assert records["task"].unique().to_list() == ["tool"]
    assert list(check(records).values()) == [
        ("passed", None, "2 tool call(s) validate against their function schemas"),
        (
            "failed",
            "tool_call_invalid",
            "arguments of get_weather (call 2 of 2) fail 'enum' at $.unit: value is not one of the 2 allowed",
        ),
        (
            "failed",
            "tool_call_invalid",
            "arguments of get_weather (call 1 of 1) do not parse as JSON (JSONDecodeError at line 1 column 26)",
        ),
    ]


def test_the_schema_draft_is_the_schemas_own_else_2020_12() -> None:
    def tool(parameters: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"name": "get_weather", "parameters": {"type": "object", **parameters}}]

    # "dependencies" is draft 7; 2020-12 split it into dependentRequired and ignores the old keyword.
    draft7 = {"$schema": "http://json-schema.org/draft-07/schema#", "dependencies": {"unit": ["city"]}}
    unit_only = {"name": "get_weather", "arguments": {"unit": "celsius"}}
    outcomes = check(
        [
            tool_record("t:0", unit_only, tools=tool(draft7)),
            tool_record("t:1", unit_only, tools=tool({"dependencies": {"unit": ["city"]}})),
            tool_record("t:2", unit_only, tools=tool({"dependentRequired": {"unit": ["city"]}})),
        ]
    )
    assert outcomes["t:0"][2] == "arguments of get_weather (call 1 of 1) fail 'dependencies' at $"
    assert outcomes["t:1"][0] == "passed"
    assert outcomes["t:2"][2] == "arguments of get_weather (call 1 of 1) fail 'dependentRequired' at $"


def test_validators_are_built_once_per_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    import jsonschema

    built: list[Any] = []
    original = jsonschema.validators.validator_for

    def counting(schema: Any, *args: Any, **kwargs: Any) -> Any:
        built.append(schema)
        return original(schema, *args, **kwargs)

    monkeypatch.setattr(jsonschema.validators, "validator_for", counting)
    call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    outcomes = check([tool_record(f"t:{i}", call) for i in range(300)])
    assert {verdict for verdict, _, _ in outcomes.values()} == {"passed"} and len(outcomes) == 300
    # One schema check when the tool list is first read (the recipe's function_schema), one validator
    # (jsonschema also looks up validators for subschemas internally; those are not ours).
    assert built.count(WEATHER["function"]["parameters"]) == 2


def test_a_malformed_tool_list_rejects_the_records_that_call_into_it() -> None:
    broken = [{"name": "get_weather", "parameters": {"type": "objekt"}}]
    call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert check([tool_record("t:0", call, tools=broken)]) == {
        "t:0": (
            "failed",
            "tool_call_invalid",
            "tool 1 of the record's tool list is not a valid function schema",
        )
    }


def test_records_without_a_tool_list_or_without_calls_are_not_checked() -> None:
    no_calls = chat("t:1", "Which tools can you use?", "I can look up the weather.", task="tool")
    no_calls["metadata"] = json.dumps({"tools": [WEATHER]})
    counters: Counter[str] = Counter()
    assert check([chat("t:0", "Hi", "Hello!"), no_calls], counters=counters) == {}
    assert counters["structure.tool_calls.no_calls"] == 1


# ------------------------------------------------------------------------------------------------
# Requested output format: what counts as a request


@pytest.mark.parametrize(
    "turn",
    [
        "Respond in JSON.",
        "Extract the people and places from the text below. Respond only with valid JSON.",
        "Return JSON.",
        "Return a JSON object with the keys name and age.",
        "List the planets of the solar system as a JSON array.",
        "Provide the output in JSON format.",
        "Summarize the review in JSON format.",
        "Format your answer as a JSON object.",
        "Your response must be valid JSON.",
        "Convert the following table to JSON.\n\nname | age\nAda | 36",
        "Please answer in JSON.",
        "Can you respond with a JSON object?",
        "Give the capital of each country.\nOutput format: JSON",
    ],
)
def test_clear_requests_for_json_are_detected(turn: str) -> None:
    assert detected(turn)[0]


@pytest.mark.parametrize(
    "turn",
    [
        "Explain what JSON is.",
        "What is the difference between JSON and XML?",
        "How do I return JSON from a Flask route?",
        "Write a function that returns a JSON object.",
        "Write a blog post about how to store settings in JSON.",
        "Convert this Python dict to JSON.",
        "Give me an example of a JSON object.",
        "Is JSON a subset of YAML?",
        "Explain your reasoning, then give the final answer as a JSON object.",
        "My API should respond with JSON but returns HTML. Why?",
        "Do not respond in JSON; plain text is fine.",
    ],
)
def test_near_misses_do_not_count_as_a_json_request(turn: str) -> None:
    assert not detected(turn)[0]


@pytest.mark.parametrize(
    ("turn", "labels"),
    [
        ("Answer with one of: A, B, C", ["a", "b", "c"]),
        ("Respond with yes or no.", ["yes", "no"]),
        (
            "Read the review and classify it as positive, negative, or neutral.",
            ["positive", "negative", "neutral"],
        ),
        (
            "Classify the sentiment of the sentence into positive, negative or mixed.",
            ["positive", "negative", "mixed"],
        ),
        ("Is the claim supported?\nOptions: yes, no, maybe", ["yes", "no", "maybe"]),
        (
            "Premise: ...\nOPTIONS:\n- yes\n- it is not possible to tell\n- no",
            ["yes", "it is not possible to tell", "no"],
        ),
        ('You should respond with "Satisfied" or "Unsatisfied".', ["satisfied", "unsatisfied"]),
        ("Respond with either 'approve' or 'reject'.", ["approve", "reject"]),
        (
            "Answer with one of the following labels: entailment, neutral, contradiction.",
            ["entailment", "neutral", "contradiction"],
        ),
        (
            "Give the news title a category. Classify it into one of the following: World News, Sports, or Science and Technology.",
            ["world news", "sports", "science and technology"],
        ),
        ("Do these two questions convey the same meaning? Yes or no?", ["yes", "no"]),
    ],
)
def test_clear_label_sets_are_detected_with_their_labels(turn: str, labels: list[str]) -> None:
    assert detected(turn) == (False, labels)


@pytest.mark.parametrize(
    "turn",
    [
        "Is the review positive or negative?",
        "Respond with empathy or humor.",
        "Answer the question or skip it.",
        "Classify the following animals as mammals or reptiles.\n\ndog, snake, lizard",
        "Label each word as a noun or a verb.",
        "Verify if the claim is true or false based on factual knowledge. If false, explain why.",
        "Answer with one of: yes, no. Then explain your choice.",
        "Find the answer that best describes the word.\nOptions:\n(A) loud\n(B) quiet",
        "Choose a topic for the article. Topic candidates include: politics, sports, health, science.",
        "What is the difference between yes or no questions and open questions?",
        "Classify the questions into Finding policy details, Filing a claim and viewing its status, or Other.",
    ],
)
def test_near_misses_do_not_count_as_a_label_set(turn: str) -> None:
    assert detected(turn)[1] is None


def test_answers_and_labels_compare_without_case_punctuation_quotes_or_an_answer_prefix() -> None:
    keys = pl.select(
        label_key(
            pl.Series(["Yes.", '"Positive"', "Answer: no", "**Neutral**", " Science  and Technology! "])
        )
    ).to_series()
    assert keys.to_list() == ["yes", "positive", "no", "neutral", "science and technology"]


# ------------------------------------------------------------------------------------------------
# Requested output format: the checks


def test_a_json_answer_passes_bare_or_in_a_json_fence() -> None:
    ask = "Extract the city and the date from the sentence. Respond in JSON.\n\nWe met in Lyon on 3 May."
    outcomes = check(
        [
            chat("f:0", ask, '{"city": "Lyon", "date": "3 May"}'),
            chat("f:1", ask, '```json\n{"city": "Lyon", "date": "3 May"}\n```'),
            chat("f:2", ask, '```\n[{"city": "Lyon"}]\n```\n'),
        ]
    )
    assert set(outcomes.values()) == {("passed", None, "answer parses as JSON, as the last user turn asks")}


def test_an_answer_that_is_not_json_is_rejected_with_where_it_breaks() -> None:
    ask = "List the planets as a JSON array."
    outcomes = check(
        [
            chat("f:0", ask, 'Sure! Here they are:\n```json\n["Mercury", "Venus"]\n```'),
            chat("f:1", ask, '["Mercury", "Venus",\n "Earth",]'),
            chat("f:2", ask, '{"distance": NaN}'),
        ]
    )
    prefix = "the last user turn asks for JSON but the answer does not parse"
    assert outcomes == {
        "f:0": ("failed", "format_not_json", f"{prefix} (JSONDecodeError at line 1 column 1)"),
        "f:1": ("failed", "format_not_json", f"{prefix} (JSONDecodeError at line 2 column 10)"),
        "f:2": (
            "failed",
            "format_not_json",
            f"{prefix} (it is not strict JSON: NaN, Infinity or an out-of-range number)",
        ),
    }


def test_a_label_answer_must_be_exactly_one_of_the_labels() -> None:
    ask = "Classify the sentiment of the review as positive, negative, or neutral.\n\nThe soup was cold."
    outcomes = check(
        [
            chat("l:0", ask, "Negative"),
            chat("l:1", ask, "Answer: negative."),
            chat("l:2", ask, "The review is negative because the soup was cold."),
            chat("l:3", ask, "Sarcastic"),
        ]
    )
    assert outcomes == {
        "l:0": ("passed", None, "answer is one of the 3 labels the last user turn allows"),
        "l:1": ("passed", None, "answer is one of the 3 labels the last user turn allows"),
        "l:2": (
            "failed",
            "label_not_in_set",
            "answer (9 word(s)) is not one of the 3 labels the last user turn allows",
        ),
        "l:3": (
            "failed",
            "label_not_in_set",
            "answer (1 word(s)) is not one of the 3 labels the last user turn allows",
        ),
    }


def test_metadata_requests_are_honoured_without_any_wording() -> None:
    outcomes = check(
        [
            chat("m:0", "Who wrote Dune?", "Frank Herbert", metadata={"response_format": "json"}),
            chat(
                "m:1",
                "Who wrote Dune?",
                '{"author": "Frank Herbert"}',
                metadata={"response_format": {"type": "json_object"}},
            ),
            chat("m:2", "Is the sky green?", "No.", metadata={"labels": ["Yes", "No"]}),
            chat("m:3", "Is the sky green?", "Nope", metadata={"labels": ["Yes", "No"]}),
            chat("m:4", "Is the sky green?", "Nope", metadata={"labels": "yes/no"}),
        ]
    )
    assert outcomes == {
        "m:0": (
            "failed",
            "format_not_json",
            "the metadata asks for JSON but the answer does not parse (JSONDecodeError at line 1 column 1)",
        ),
        "m:1": ("passed", None, "answer parses as JSON, as the metadata asks"),
        "m:2": ("passed", None, "answer is one of the 2 labels the metadata allows"),
        "m:3": (
            "failed",
            "label_not_in_set",
            "answer (1 word(s)) is not one of the 2 labels the metadata allows",
        ),
    }


def test_a_json_request_outranks_the_labels_it_mentions() -> None:
    ask = "Classify the review as positive or negative. Respond in JSON with the key label."
    assert check([chat("j:0", ask, '{"label": "positive"}')]) == {
        "j:0": ("passed", None, "answer parses as JSON, as the last user turn asks")
    }


def test_code_math_unanswered_and_switched_off_records_get_no_format_check() -> None:
    ask = "Respond in JSON."
    rows = [
        chat("x:0", ask, "def f(): ...", task="code"),
        chat("x:1", ask, "#### 4", task="math"),
        chat("x:2", ask, None),
    ]
    assert check(rows) == {}
    assert check([chat("x:3", ask, "not json")], output_format=False) == {}


@cache
def human_written() -> pl.DataFrame:
    """Every Self-Instruct seed task and user-oriented instruction (instruction and input as the user
    turn, as ingest's Alpaca adapter builds it) and every T0 prompt with its human-written answer."""
    needs(SELF_INSTRUCT)
    needs(T0)
    rows = []
    for path in sorted(SELF_INSTRUCT.glob("*.jsonl")):
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            task = json.loads(line)
            for j, instance in enumerate(task["instances"]):
                prompt = alpaca_prompt(task["instruction"], instance["input"])
                rows.append(chat(f"{path.stem}:{i}:{j}", prompt, instance["output"]))
    for path in sorted(T0.glob("*.jsonl")):
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            item = json.loads(line)
            rows.append(
                chat(f"{path.stem}:{i}", item["prompt"], item["completion"].removesuffix("<|endoftext|>"))
            )
    return frame_of(rows)


def test_no_human_written_instruction_record_is_rejected_for_its_format() -> None:
    records = human_written()
    counters: Counter[str] = Counter()
    outcomes = check(records, counters=counters)
    assert records.height > 5000
    assert {verdict for verdict, _, _ in outcomes.values()} == {"passed"}
    # Mostly T0's "... Yes or no?" prompts, plus the seed tasks that spell out their labels.
    assert counters["structure.format_labels.passed"] == len(outcomes) >= 190
    assert any(record_id.startswith("seed_tasks") for record_id in outcomes)


def test_every_checked_human_written_record_fails_once_its_answer_is_prose() -> None:
    records = human_written()
    checked = list(check(records))
    prose = records.filter(pl.col("record_id").is_in(checked)).with_columns(
        pl.concat_list(
            pl.col("messages").list.first(),
            pl.struct(role=pl.lit("assistant"), content=pl.lit("I think it depends on the context.")),
        ).alias("messages")
    )
    assert {rule for _, rule, _ in check(prose).values()} == {"label_not_in_set"}


# ------------------------------------------------------------------------------------------------
# Paraphrases


def test_faithful_paraphrases_and_round_trips_pass_with_their_similarity(
    synthetic_batch: pl.DataFrame,
) -> None:
    outcomes = check(synthetic_batch)
    for recipe, texts in (("rewordings", REWRITES), ("round_trips", ROUND_TRIPS)):
        made = by_instruction(synthetic_batch, recipe)
        for seed, _ in SEEDS[:3]:
            similarity = chrf(seed, texts[seed])
            assert outcomes[made[texts[seed]]] == (
                "passed",
                None,
                f"paraphrase keeps chrF {similarity:.2f} to its seed's instruction (threshold 0.30)",
            )


def test_a_paraphrase_that_drifted_from_its_seed_is_rejected(synthetic_batch: pl.DataFrame) -> None:
    outcomes = check(synthetic_batch)
    seed = SEEDS[3][0]
    for recipe, texts in (("rewordings", REWRITES), ("round_trips", ROUND_TRIPS)):
        drifted = by_instruction(synthetic_batch, recipe)[texts[seed]]
        similarity = chrf(seed, texts[seed])
        assert similarity < 0.3
        assert outcomes[drifted] == (
            "failed",
            "paraphrase_drift",
            f"paraphrase has chrF {similarity:.2f} to its seed's instruction, below the threshold 0.30",
        )
    # A stricter threshold catches looser rewrites too; 0 lets every changed paraphrase through.
    strict = check(synthetic_batch, paraphrase_min_similarity=0.95)
    assert {rule for _, rule, _ in strict.values()} >= {"paraphrase_drift"}
    lenient = check(synthetic_batch, paraphrase_min_similarity=0.0)
    assert "paraphrase_drift" not in {rule for _, rule, _ in lenient.values()}


def test_a_paraphrase_identical_to_its_seed_after_normalization_is_rejected(
    synthetic_batch: pl.DataFrame,
) -> None:
    seed = SEEDS[0][0]
    record_id = by_instruction(synthetic_batch, "rewordings")[REWRITES[seed]]
    echoed = [
        {"role": "user", "content": f"  {seed.upper()}\n"},
        {"role": "assistant", "content": SEEDS[0][1]},
    ]
    assert check(with_messages(synthetic_batch, record_id, echoed))[record_id] == (
        "failed",
        "paraphrase_identical",
        "paraphrase is identical to its seed's instruction after normalization (case, whitespace)",
    )


def test_seeds_outside_the_frame_come_from_the_seeds_argument(synthetic_batch: pl.DataFrame) -> None:
    sources = synthetic_batch.filter(pl.col("origin") == "source")
    made = synthetic_batch.filter(pl.col("origin") == "synthetic")
    counters: Counter[str] = Counter()
    alone = check(made, counters=counters)
    assert not any(rule and rule.startswith("paraphrase") for _, rule, _ in alone.values())
    assert counters["structure.paraphrase.seed_missing"] == 8
    assert check(made, seeds=seed_instructions(sources)) == check(synthetic_batch)


def test_other_synthetic_records_are_not_treated_as_paraphrases(synthetic_batch: pl.DataFrame) -> None:
    wrapped = made_by(synthetic_batch, "wrapped")
    assert wrapped.height == len(SEEDS)
    outcomes = check(synthetic_batch)
    assert not set(wrapped["record_id"]) & set(outcomes)
    assert not set(synthetic_batch.filter(pl.col("origin") == "source")["record_id"]) & set(outcomes)


# ------------------------------------------------------------------------------------------------
# One outcome per record


def test_a_record_gets_its_first_failure_or_every_check_it_passed() -> None:
    ask_json = "Respond in JSON."
    both_fail = tool_record("c:0", {"name": "get_weather", "arguments": {}})
    both_fail["messages"][0]["content"] = ask_json
    both_pass = tool_record("c:1", {"name": "get_weather", "arguments": {"city": "Paris"}})
    both_pass["messages"][0]["content"] = ask_json
    both_pass["messages"][-1]["content"] = '{"temperature": 18}'
    counters: Counter[str] = Counter()
    outcomes = check([both_fail, both_pass], counters=counters)
    assert outcomes == {
        "c:0": (
            "failed",
            "tool_call_invalid",
            "arguments of get_weather (call 1 of 1) fail 'required' at $: missing city",
        ),
        "c:1": (
            "passed",
            None,
            "1 tool call(s) validate against their function schemas; answer parses as JSON, as the last user turn asks",
        ),
    }
    assert (counters["structure.passed"], counters["structure.failed"]) == (1, 1)
    assert counters["structure.format_json.failed"] == 1 and counters["structure.tool_calls.failed"] == 1


def test_an_empty_frame_has_no_outcomes() -> None:
    assert check(frame_of([chat("e:0", "x", "y")]).head(0)) == {}


# ------------------------------------------------------------------------------------------------
# Scale


# A batch of the verified stage: mostly chats (whose last user turn every record goes through the
# vectorized format detection for), an ingested function-calling set, and paraphrases at what the
# recipes make per batch (max_per_batch defaults to 100 per recipe; chrF is per-pair Python).
COMPOSITION = {"plain": 6_000, "json": 5_000, "labels": 5_000, "tool": 3_000, "paraphrase": 500}


def large_batch() -> pl.DataFrame:
    """Records of every kind in ``COMPOSITION`` (paraphrases with their seeds), interleaved; every
    other record of a kind is wrong."""
    rows = []
    for kind, count in COMPOSITION.items():
        for i in range(count):
            wrong, key = i % 2 == 0, f"{kind}:{i}"
            if kind == "plain":
                rows.append(
                    chat(key, f"Tell me something interesting about the number {i}.", f"{i} is even.")
                )
            elif kind == "json":
                answer = "Sure, here it is." if wrong else json.dumps({"n": i})
                rows.append(chat(key, f"Return the number {i} as a JSON object.", answer))
            elif kind == "labels":
                answer = "I would say it is positive overall." if wrong else "Positive"
                rows.append(
                    chat(key, f"Classify the review as positive or negative.\n\nReview {i}: great!", answer)
                )
            elif kind == "tool":
                arguments = {"city": f"City {i}", "unit": "kelvin" if wrong else "celsius"}
                rows.append(tool_record(key, {"name": "get_weather", "arguments": arguments}))
            else:
                seed = f"Write a short poem about the number {i} and the sea."
                paraphrase = (
                    "Tell me a joke." if wrong else f"Compose a brief poem about the sea and the number {i}."
                )
                rows.append(chat(f"seed:{i}", seed, "A poem."))
                metadata = {"recipe": "rewordings", "response": "kept"}
                rows.append(
                    chat(
                        key,
                        paraphrase,
                        "A poem.",
                        origin="synthetic",
                        metadata=metadata,
                        parent_ids=(f"seed:{i}",),
                    )
                )
    return frame_of(rows).sort(pl.col("record_id").str.extract(r"(\d+)$").cast(pl.Int64), "record_id")


def test_twenty_thousand_records_are_checked_in_well_under_a_few_seconds() -> None:
    records = large_batch()
    assert records.height == 20_000
    counters: Counter[str] = Counter()
    started = time.perf_counter()
    outcomes = check(records, counters=counters)
    elapsed = time.perf_counter() - started
    assert elapsed < 2.5, f"{elapsed:.2f} s"
    for check_name, kind in (
        ("format_json", "json"),
        ("format_labels", "labels"),
        ("tool_calls", "tool"),
        ("paraphrase", "paraphrase"),
    ):
        half = COMPOSITION[kind] // 2
        assert (counters[f"structure.{check_name}.passed"], counters[f"structure.{check_name}.failed"]) == (
            half,
            half,
        )
    assert len(outcomes) == records.height - COMPOSITION["plain"] - COMPOSITION["paraphrase"]
    assert check(records) == outcomes
