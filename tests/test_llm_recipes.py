"""Specification of the LLM recipes: reply parsers, similarity filters, and every recipe end to end
against a real chat-completions HTTP server (tests/chat_server.py) through a real LLMClient."""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Iterator
from typing import Any

import duckdb
import polars as pl
import pytest

from tests.chat_server import ChatServer
from tests.conftest import CORPORA
from thresher.config import IngestConfig, LLMRecipeConfig, VerifyConfig
from thresher.ingest import read_file
from thresher.llm import Budget, Endpoint, LLMClient, ResponseCache
from thresher.llm_recipes import (
    GENERATED_SCHEMA,
    LLM_RECIPES,
    PromptSet,
    RougeLIndex,
    chrf,
    chunks,
    curation_score,
    entry_point_of,
    equality_verdict,
    failed_answer,
    json_object,
    lcs_length,
    numbered_items,
    prepare_tests,
    rouge_l,
    single_text,
    tagged,
    tool_call,
)
from thresher.records import RECORD_SCHEMA, conform
from thresher.verification import Verifier

SEED_TASKS = CORPORA / "instruct" / "self_instruct" / "seed_tasks.jsonl"


# ---------------------------------------------------------------------------------------------
# Helpers


def recipe(kind: str, seed: int = 7, **config: Any):
    return LLM_RECIPES[kind](LLMRecipeConfig(name=f"my_{kind}", kind=kind, **config), seed)


def chat_seeds(*conversations: list[tuple[str, str]]) -> pl.DataFrame:
    rows = [
        {
            "record_id": f"aaaaaaaaaaaa:{i}",
            "batch": "b0",
            "task": "chat",
            "messages": [{"role": r, "content": c} for r, c in conversation],
            "source_file": "landing/chat.jsonl",
            "source_line": i + 1,
            "origin": "source",
        }
        for i, conversation in enumerate(conversations)
    ]
    return conform(pl.DataFrame(rows, schema_overrides={"messages": RECORD_SCHEMA["messages"]}))


def qa(*pairs: tuple[str, str]) -> pl.DataFrame:
    return chat_seeds(*[[("user", q), ("assistant", a)] for q, a in pairs])


Rule = tuple[str, str | Callable[[str], str]]


def script(*rules: Rule) -> Callable[[dict[str, Any]], str]:
    """A server reply function: the first rule whose marker occurs in the request's messages answers
    (a callable gets the last message's content)."""

    def reply(body: dict[str, Any]) -> str:
        text = "\n".join(m["content"] for m in body["messages"])
        for marker, answer in rules:
            if marker in text:
                return answer(body["messages"][-1]["content"]) if callable(answer) else answer
        return "no rule matched"

    return reply


def first_paragraph(text: str) -> str:
    return re.search(r"Paragraph (\d+)", text)[1]


def between(text: str, tag: str) -> str:
    return re.search(rf"(?s)<{tag}>\s*(.*?)\s*</{tag}>", text)[1]


@pytest.fixture
def client(chat_server: ChatServer) -> Iterator[LLMClient]:
    endpoint = Endpoint(name="test-endpoint", base_url=chat_server.base_url, model="test-model")
    with LLMClient(endpoint, backoff_seconds=0.0, max_retries=1) as llm:
        yield llm


def messages_of(made: pl.DataFrame) -> list[list[tuple[str, str]]]:
    return [[(m["role"], m["content"]) for m in row] for row in made["messages"].to_list()]


def assert_provenance(made: pl.DataFrame, rec: Any) -> None:
    """Every created record names the model, endpoint, template version and what its calls cost."""
    assert made.schema == pl.Schema(GENERATED_SCHEMA)
    assert made.height > 0
    assert made["model"].unique().to_list() == ["test-model"]
    assert made["endpoint"].unique().to_list() == ["test-endpoint"]
    assert made["template_hash"].unique().to_list() == [rec.template_hash]
    assert (made["calls"] >= 1).all() and (made["prompt_tokens"] > 0).all()
    assert (made["completion_tokens"] > 0).all()
    assert made["cache_hit"].dtype == pl.Boolean and made["cache_hit"].null_count() == 0
    assert all(isinstance(json.loads(x), dict) for x in made["metadata_extra"])


# ---------------------------------------------------------------------------------------------
# Parsers


def test_numbered_items_accepts_the_list_formats_models_write():
    reply = (
        "Sure! Here are 6 new tasks:\n\n"
        "9. Write a limerick about a cat.\n"
        "10) Classify the sentiment of this review.\nInput: The battery died after two days.\n"
        "**11.** Suggest three names for a bakery.\n"
        "Task 12: Explain recursion to a child.\n"
        "### 13. Translate 'good morning' into French.\n"
        "**14. Summarize the plot of Hamlet**\n\n"
        "Let me know if you would like more tasks!"
    )
    assert numbered_items(reply) == [
        "Write a limerick about a cat.",
        "Classify the sentiment of this review.\nInput: The battery died after two days.",
        "Suggest three names for a bakery.",
        "Explain recursion to a child.",
        "Translate 'good morning' into French.",
        "Summarize the plot of Hamlet",
    ]


def test_numbered_items_keep_nested_steps_and_code_inside_their_item():
    reply = (
        "1. Fix the bug in this function:\n```python\n2. not a new item\n```\n"
        "2. Plan a trip with these steps:\n   1. pick a city\n   2. book a hotel\n"
        "3) Instruction: Name a prime number."
    )
    items = numbered_items(reply)
    assert len(items) == 3
    assert "2. not a new item" in items[0]
    assert "1. pick a city" in items[1] and "2. book a hotel" in items[1]
    assert items[2] == "Name a prime number."  # the "Instruction:" label goes


def test_numbered_items_fall_back_to_bullets_and_return_nothing_for_prose():
    assert numbered_items("Ideas:\n- Write a poem.\n- Sort a list.") == ["Write a poem.", "Sort a list."]
    assert numbered_items("I am sorry, I cannot help with that.") == []


def test_single_text_prefers_tags_and_otherwise_strips_chatter():
    assert tagged("x <q>first</q> <q> last </q>", "q") == "last"
    assert tagged("<q>cut off by max_tokens", "q") == "cut off by max_tokens"
    assert tagged("no tags here", "q") is None
    assert single_text('Here is the rewritten instruction:\n\n"List three fruits."', "rewritten") == (
        "List three fruits."
    )
    assert single_text("<rewritten>  </rewritten>", "rewritten") is None


def test_json_objects_are_found_in_prose_and_fences_and_tool_calls_normalized():
    assert json_object('Sure! The call is {"name": "f", "arguments": {"a": 1}} as requested.') == {
        "name": "f",
        "arguments": {"a": 1},
    }
    assert json_object('```json\n{"x": [1, 2]}\n```\nThat {is} all') == {"x": [1, 2]}
    assert json_object("no json {here") is None
    expected = {"name": "f", "arguments": {"a": 1}}
    assert tool_call('{"function": {"name": "f", "arguments": "{\\"a\\": 1}"}}') == expected
    assert tool_call('{"tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]}') == expected
    assert tool_call('{"name": "f", "parameters": {"a": 1}}') == expected  # Llama 3.1's key
    assert tool_call('{"name": "f", "arguments": "not json"}') is None


def test_small_parsers_of_judgements():
    assert curation_score("Clear and complete.\nScore: 5") == 5
    assert curation_score("score = 2 because it rambles") == 2
    assert curation_score("4") == 4
    assert curation_score("I like it.") is None
    assert equality_verdict("Not Equal") is False
    assert equality_verdict("Equal.") is True
    assert equality_verdict("Hmm.") is None
    assert failed_answer("Sorry, I cannot do that.", 80)
    assert failed_answer("... it is, the.", 80)
    assert not failed_answer("Paris is the capital of France.", 80)


# ---------------------------------------------------------------------------------------------
# Similarity


def _lcs_table(a: list[str], b: list[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], prev + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def test_bit_parallel_lcs_equals_the_dynamic_programming_table():
    rng = random.Random(0)
    for _ in range(300):
        a = [rng.choice("abcde") for _ in range(rng.randint(0, 70))]
        b = [rng.choice("abcde") for _ in range(rng.randint(0, 70))]
        assert lcs_length(a, b) == _lcs_table(a, b)


def test_rouge_l_is_the_lcs_f_measure_over_words():
    # LCS "the cat sat": 3 of 4 and 3 of 5 words -> 2*3/9.
    assert rouge_l("The cat sat down.", "the cat quickly sat up") == pytest.approx(6 / 9)
    assert rouge_l("", "anything") == 0.0


def test_rouge_index_agrees_with_brute_force():
    rng = random.Random(1)
    words = [
        "write",
        "a",
        "short",
        "poem",
        "list",
        "three",
        "ideas",
        "explain",
        "why",
        "the",
        "sky",
        "is",
        "blue",
        "summarize",
        "text",
    ]
    corpus = [" ".join(rng.choices(words, k=rng.randint(3, 12))) for _ in range(400)]
    index = RougeLIndex(corpus[:300])
    for text in corpus[300:350]:
        index.add(text)  # the pending list and a second segment are both searched
    for query in [" ".join(rng.choices(words, k=rng.randint(3, 12))) for _ in range(100)]:
        found = index.find_similar(query, 0.7)
        best = max(rouge_l(query, doc) for doc in corpus[:350])
        assert (found is not None) == (best > 0.7)
        if found is not None:
            assert rouge_l(query, corpus[found]) > 0.7


def test_chrf_is_a_symmetric_character_ngram_similarity():
    a, b = "Explain why the sky is blue in two sentences.", "Explain in two sentences why the sky is blue."
    assert chrf(a, a) == 1.0
    assert chrf(a, b) == pytest.approx(chrf(b, a))
    assert chrf(a, b) > 0.6 > chrf(a, "Tell me a joke about penguins.")


def test_chunks_cover_the_document_at_whitespace():
    text = " ".join(f"Sentence number {i} talks about bridges." for i in range(300))
    pieces = chunks(text, 500)
    assert all(len(p) <= 500 for p in pieces)
    assert " ".join(pieces) == text


# ---------------------------------------------------------------------------------------------
# Code and tests


def test_entry_point_and_test_preparation():
    code = "def helper(x):\n    return x\n\ndef solve(xs):\n    return [helper(x) for x in xs]\n"
    assert entry_point_of(code, "Write `solve(xs)` that copies a list.").name == "solve"
    assert entry_point_of("def only(): pass", "A function.").name == "only"
    assert entry_point_of("def a(): pass\ndef b(): pass", "Something.") is None
    assert entry_point_of("def broken(:", "broken") is None
    tests = "from solution import solve\n\nassert solve([1]) == [1]\n"
    assert prepare_tests(tests, "solve") == "assert solve([1]) == [1]\n"
    assert prepare_tests("def solve(xs):\n    return xs\nassert solve([1]) == [1]", "solve") is None
    assert prepare_tests("assert True", "solve") is None  # never calls the function
    assert prepare_tests("solve([1])", "solve") is None  # asserts nothing


# ---------------------------------------------------------------------------------------------
# Templates and configuration


def test_every_recipe_loads_its_templates_and_is_versioned_by_them():
    hashes = {}
    for kind in LLM_RECIPES:
        params = {"tools": [{"name": "f", "parameters": {"type": "object"}}]} if kind == "tool_use" else {}
        rec = recipe(kind, params=params)
        prompts = PromptSet.load(kind)
        digest = hashlib.sha256()
        for stem, text in sorted(prompts.texts.items()):
            digest.update(f"{stem}.txt\0{text}\0".encode())
        assert rec.template_hash == digest.hexdigest()[:12]
        hashes[kind] = rec.template_hash
    assert len(set(hashes.values())) == len(hashes)
    edited = PromptSet("paraphrase", {**PromptSet.load("paraphrase").texts, "rewrite": "Say {instruction}."})
    assert edited.hash != hashes["paraphrase"]


def test_templates_with_wrong_slots_are_rejected_up_front():
    prompts = PromptSet("paraphrase", {"rewrite": "Rewrite {instructoin}", "answer_system": "Be nice."})
    with pytest.raises(
        ValueError, match=r"paraphrase/rewrite.txt must use exactly the slots \['instruction'\]"
    ):
        prompts.require({"rewrite": frozenset({"instruction"})})
    with pytest.raises(ValueError, match="missing"):
        prompts.require({"nope": frozenset()})


def test_params_are_checked():
    with pytest.raises(ValueError, match=r"unknown params \['pivott'\]"):
        recipe("back_translation", params={"pivott": "fr"})
    with pytest.raises(ValueError, match="wrong type"):
        recipe("self_instruct", params={"max_similarity": "high"})
    with pytest.raises(ValueError, match="operations"):
        recipe("evol_instruct", params={"operations": ["shorten"]})
    with pytest.raises(ValueError, match="tools must list"):
        recipe("tool_use")
    with pytest.raises(ValueError, match="not a valid JSON schema"):
        recipe("tool_use", params={"tools": [{"name": "f", "parameters": {"type": "objekt"}}]})
    with pytest.raises(ValueError, match="python"):
        recipe("code_workflow", params={"language": "rust"})


def test_seed_selection_is_a_stable_hash_of_name_seed_and_id():
    seeds = qa(*[(f"Question {i}?", f"Answer {i}.") for i in range(50)])
    first = [
        r["record_id"] for r in recipe("paraphrase", rate=0.2).chosen(recipe("paraphrase").eligible(seeds))
    ]
    again = [
        r["record_id"] for r in recipe("paraphrase", rate=0.2).chosen(recipe("paraphrase").eligible(seeds))
    ]
    other = [
        r["record_id"]
        for r in recipe("paraphrase", seed=8, rate=0.2).chosen(recipe("paraphrase").eligible(seeds))
    ]
    assert first == again and len(first) == 10 and other != first


# ---------------------------------------------------------------------------------------------
# End to end against the chat server

SEED_COPY = (
    "Is there anything I can eat for breakfast that doesn't include eggs, yet includes protein, and "
    "has roughly 700-1000 calories?"
)
NEW_TASKS = (
    "Sure! Here are 6 new tasks:\n\n"
    "9. Write a limerick about a cat who learns to swim.\n"
    "10) Classify the sentiment of this review as positive or negative.\n"
    "Input: The battery died after two days.\n"
    "**11.** Draw a picture of a house at night.\n"
    f"Task 12: {SEED_COPY}\n"
    "13. Write a limerick about a cat who learns to swim!\n"
    "14. Explain how compound interest works, with a numeric example.\n\n"
    "Let me know if you want more!"
)


def test_self_instruct_from_the_175_seed_tasks(chat_server: ChatServer, client: LLMClient):
    seeds = read_file(SEED_TASKS, "seed-tasks", IngestConfig()).kept
    assert seeds.height == 175
    rec = recipe("self_instruct", rate=0.05)  # 9 records wanted: two generation prompts
    chat_server.reply = script(
        ("Come up with 8 new tasks", NEW_TASKS),
        ("Answer the user's request directly", lambda q: f"Here is my answer to: {q}"),
    )
    batch = rec.generate(seeds, client)
    made = batch.made
    assert_provenance(made, rec)
    assert [m[0][1] for m in messages_of(made)] == [
        "Write a limerick about a cat who learns to swim.",
        "Classify the sentiment of this review as positive or negative.\nInput: The battery died after two days.",
        "Explain how compound interest works, with a numeric example.",
    ]
    assert all(m[1] == ("assistant", f"Here is my answer to: {m[0][1]}") for m in messages_of(made))
    assert made["seed_ids"].list.len().to_list() == [8, 8, 8]  # the examples that prompted it
    assert made["calls"].to_list() == [2, 2, 2]
    # The generation prompt shows seed tasks (instruction and input) and asks to continue the numbering.
    prompt = chat_server.chat_requests[0].body["messages"][0]["content"]
    assert "numbered 9 to 16" in prompt
    assert sum(t["instruction"] in prompt for t in map(json.loads, SEED_TASKS.read_text().splitlines())) == 8
    counters = batch.counters
    # The copy of seed_task_0 and the repeated limerick, then all of the second prompt's repeats.
    assert counters["recipe.my_self_instruct.near_duplicate_instruction"] == 7
    assert counters["recipe.my_self_instruct.unsuitable_instruction"] == 2  # "Draw a picture"
    assert counters["recipe.my_self_instruct.generated"] == 3


def test_paraphrase_keeps_the_seed_answer_or_regenerates_it(chat_server: ChatServer, client: LLMClient):
    seeds = qa(
        ("List three fruits.", "Apple, banana, cherry."),
        ("Name a prime number.", "Seven."),
        ("What is 2+2?", "4"),
    )

    def rewrite(prompt: str) -> str:
        instruction = between(prompt, "instruction")
        return {
            "List three fruits.": "Sure! <rewritten>Name three kinds of fruit.</rewritten>",
            "Name a prime number.": "<rewritten>Name a prime number.</rewritten>",
        }.get(instruction, "I can't.<rewritten></rewritten>")

    chat_server.reply = script(
        ("Rewrite the instruction", rewrite), ("Answer the user's", lambda q: f"A: {q}")
    )
    rec = recipe("paraphrase", rate=1.0)
    batch = rec.generate(seeds, client)
    assert_provenance(batch.made, rec)
    assert messages_of(batch.made) == [
        [("user", "Name three kinds of fruit."), ("assistant", "Apple, banana, cherry.")]
    ]
    assert json.loads(batch.made["metadata_extra"][0]) == {"response": "kept"}
    assert batch.counters["recipe.my_paraphrase.unchanged"] == 1
    assert batch.counters["recipe.my_paraphrase.unparseable"] == 1

    regenerated = recipe("paraphrase", rate=1.0, params={"regenerate_response": True}).generate(seeds, client)
    assert messages_of(regenerated.made) == [
        [("user", "Name three kinds of fruit."), ("assistant", "A: Name three kinds of fruit.")]
    ]
    assert regenerated.made["calls"].to_list() == [2]


def test_back_translation_keeps_close_round_trips_only(chat_server: ChatServer, client: LLMClient):
    close = "Explain why the sky is blue in two sentences."
    seeds = qa((close, "Rayleigh scattering..."), ("Describe a sunset over the sea.", "Golden light..."))

    def back(prompt: str) -> str:
        german = between(prompt, "text")
        if "Himmel" in german:
            return "<translation>Explain in two sentences why the sky is blue.</translation>"
        return "<translation>Tell me a joke about penguins.</translation>"

    def forth(prompt: str) -> str:
        text = between(prompt, "text")
        return (
            "<translation>Erkläre, warum der Himmel blau ist.</translation>"
            if "sky" in text
            else "<translation>Sonnenuntergang</translation>"
        )

    chat_server.reply = script(("from German into English", back), ("from English into German", forth))
    rec = recipe("back_translation", rate=1.0)
    batch = rec.generate(seeds, client)
    assert_provenance(batch.made, rec)
    round_trip = "Explain in two sentences why the sky is blue."
    assert messages_of(batch.made) == [[("user", round_trip), ("assistant", "Rayleigh scattering...")]]
    assert json.loads(batch.made["metadata_extra"][0]) == {
        "pivot": "de",
        "similarity": round(chrf(close, round_trip), 4),
        "metric": "chrf",
    }
    assert batch.counters["recipe.my_back_translation.similarity_too_low"] == 1
    assert batch.made["calls"].to_list() == [2]


def test_reverse_instruction_writes_and_curates_instructions(chat_server: ChatServer, client: LLMClient):
    good = "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen inside chloroplasts."
    bad = "Click here to buy our amazing supplements today and follow us on social media for more deals!"
    seeds = qa(("q1", good), ("q2", bad), ("q3", "Too short."))

    def write(prompt: str) -> str:
        return (
            "<instruction>Explain photosynthesis in one sentence.</instruction>"
            if "chloroplasts" in prompt
            else "<instruction>Sell me supplements.</instruction>"
        )

    chat_server.reply = script(
        (
            "5-point scale",
            lambda p: "Focused and expert.\nScore: 5" if "photosynthesis" in p else "An advert. Score: 2",
        ),
        ("Write the user instruction", write),
    )
    rec = recipe("reverse_instruction", rate=1.0)
    assert rec.eligible(seeds).height == 2  # the short answer is too little to invert
    batch = rec.generate(seeds, client)
    assert_provenance(batch.made, rec)
    assert messages_of(batch.made) == [
        [("user", "Explain photosynthesis in one sentence."), ("assistant", good)]
    ]
    assert json.loads(batch.made["metadata_extra"][0]) == {"score": 5}
    assert batch.counters["recipe.my_reverse_instruction.low_score"] == 1


def test_evol_instruct_eliminates_failed_evolutions(chat_server: ChatServer, client: LLMClient):
    seeds = qa(
        ("Explain photosynthesis.", "..."),
        ("List prime numbers.", "..."),
        ("Describe the moon.", "..."),
        ("Write a haiku.", "..."),
    )
    evolved = {
        "Explain photosynthesis.": "#Rewritten Prompt#:\n<rewritten>Explain photosynthesis to a ten-year-old in exactly three sentences.</rewritten>",
        "List prime numbers.": "<rewritten>Following the given prompt, list five prime numbers.</rewritten>",
        "Describe the moon.": "<rewritten>Describe the moon, please.</rewritten>",
        "Write a haiku.": "<rewritten>Write a haiku about winter that uses no adjectives.</rewritten>",
    }

    def answer(question: str) -> str:
        return "Sorry, I cannot do that." if "haiku" in question else f"Plants use light. ({question})"

    chat_server.reply = script(
        ("more complex version", lambda p: evolved[between(p, "prompt")]),
        ("Are they equal", lambda p: "Equal" if "moon" in p else "Not Equal"),
        ("Answer the user's request directly", answer),
    )
    rec = recipe("evol_instruct", rate=1.0, params={"operations": ["constraints"]})
    batch = rec.generate(seeds, client)
    assert_provenance(batch.made, rec)
    evolved_text = "Explain photosynthesis to a ten-year-old in exactly three sentences."
    assert messages_of(batch.made) == [
        [("user", evolved_text), ("assistant", f"Plants use light. ({evolved_text})")]
    ]
    assert json.loads(batch.made["metadata_extra"][0]) == {"operations": ["constraints"], "depth": 1}
    assert batch.made["calls"].to_list() == [3]  # evolve, judge, answer
    c = batch.counters
    assert (
        c["recipe.my_evol_instruct.copied_prompt_wording"],
        c["recipe.my_evol_instruct.no_information_gain"],
    ) == (1, 1)
    assert c["recipe.my_evol_instruct.failed_response"] == 1


PROBLEMS = (
    "Here are two problems:\n\n"
    "1. Write a function `reverse_words(text: str) -> str` that returns the words of `text` in reverse "
    "order, separated by single spaces.\n\n"
    "2. Write a function `count_vowels(text: str) -> int` that counts the vowels (a, e, i, o, u, in any "
    "case) in `text`."
)
SOLUTIONS = {
    "reverse_words": "First split on whitespace, then reverse.\n\n```python\ndef reverse_words(text: str) -> str:\n"
    "    # split() drops repeated spaces\n    return ' '.join(reversed(text.split()))\n```\n\nCorrect because...",
    # Wrong: ignores upper-case vowels.
    "count_vowels": "Count membership.\n\n```python\ndef count_vowels(text: str) -> int:\n"
    "    return sum(c in 'aeiou' for c in text)\n```\n\nDone.",
}
TESTS = {
    "reverse_words": "```python\nfrom solution import reverse_words\n\nassert reverse_words('a b  c') == 'c b a'\n"
    "assert reverse_words('') == ''\n```",
    "count_vowels": "```python\nassert count_vowels('AEIOU') == 5\nassert count_vowels('xyz') == 0\n```",
}


def test_code_workflow_records_are_verified_by_the_verified_stage(chat_server: ChatServer, client: LLMClient):
    def by_function(table: dict[str, str]) -> Callable[[str], str]:
        return lambda prompt: table["reverse_words" if "reverse_words" in prompt else "count_vowels"]

    chat_server.reply = script(
        ("different, self-contained programming problems", PROBLEMS),
        ("Write unit tests", by_function(TESTS)),
        ("Solve the user's programming problem", by_function(SOLUTIONS)),
    )
    rec = recipe("code_workflow", params={"topics": ["string manipulation"]})
    assert rec.eligible(qa(("q", "a"))).is_empty()  # topics, not seeds
    batch = rec.generate(qa(("q", "a")), client)
    made = batch.made
    assert_provenance(made, rec)
    assert made["task"].to_list() == ["code", "code"]
    assert made["entry_point"].to_list() == ["reverse_words", "count_vowels"]
    assert made["seed_ids"].to_list() == [[], []]
    assert "from solution import" not in made["tests"][0]
    assert json.loads(made["metadata_extra"][0]) == {"topic": "string manipulation", "language": "python"}
    # The tests were written from the signature, not from the solution's body.
    test_prompts = [
        r.body["messages"][-1]["content"]
        for r in chat_server.chat_requests
        if "Write unit tests" in r.body["messages"][-1]["content"]
    ]
    assert any("def reverse_words(text: str) -> str: ..." in p for p in test_prompts)
    assert not any("reversed(" in p for p in test_prompts)

    records = conform(
        made.with_row_index("i").with_columns(
            pl.format("s-{}", pl.col("i")).alias("record_id"),
            pl.lit("b0").alias("batch"),
            pl.lit("synthetic").alias("origin"),
        )
    )
    verified = Verifier(VerifyConfig()).run(records)
    assert verified.kept["entry_point"].to_list() == ["reverse_words"]
    assert verified.rejected["rule"].to_list() == ["code_tests_failed"]


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
            },
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def test_tool_use_drops_calls_whose_arguments_break_the_schema(chat_server: ChatServer, client: LLMClient):
    calls = {
        "Paris": 'Sure! Here is the call:\n```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
        "Oslo": '{"function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\", \\"unit\\": \\"fahrenheit\\"}"}}',
        "Rome": '{"name": "get_weather", "arguments": {"city": "Rome", "unit": "kelvin"}}',
    }
    chat_server.reply = script(
        (
            "Write 3 different requests",
            "1. What's the weather in Paris?\n2. How warm is Oslo in fahrenheit?\n3. Weather in Rome in kelvin?",
        ),
        ("Call the function", lambda p: next(v for k, v in calls.items() if k in between(p, "request"))),
        ("simulating the backend", 'Result: {"temperature": 18, "conditions": "cloudy"}'),
        ("Write your reply to the user", "It is 18 degrees and cloudy."),
    )
    rec = recipe("tool_use", params={"tools": [WEATHER]})
    batch = rec.generate(qa(("q", "a")), client)
    made = batch.made
    assert_provenance(made, rec)
    assert made["task"].to_list() == ["tool", "tool"]
    first = messages_of(made)[0]
    assert [role for role, _ in first] == ["user", "assistant", "tool", "assistant"]
    assert json.loads(first[1][1]) == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert json.loads(first[2][1]) == {"temperature": 18, "conditions": "cloudy"}
    assert first[3][1] == "It is 18 degrees and cloudy."
    assert json.loads(messages_of(made)[1][1][1])["arguments"] == {"city": "Oslo", "unit": "fahrenheit"}
    assert json.loads(made["metadata_extra"][0])["tools"] == [WEATHER["function"]]
    assert batch.counters["recipe.my_tool_use.invalid_tool_call"] == 1


def test_long_context_asks_about_chunks_and_answers_over_the_whole_document(
    chat_server: ChatServer, client: LLMClient
):
    document = "\n\n".join(f"Paragraph {i}: the old town of Vell has {i} stone bridges." for i in range(120))
    seeds = chat_seeds(
        [("user", f"Summarize this:\n\n{document}"), ("assistant", "A town with bridges.")],
        [("user", "short"), ("assistant", "x")],
    )
    chat_server.reply = script(
        (
            "Below is an excerpt",
            lambda p: f"<question>How many bridges are named in paragraph {first_paragraph(p)}?</question>",
        ),
        ("You are a careful reader", "The document says so."),
    )
    rec = recipe("long_context", rate=1.0, params={"questions": 2})
    assert rec.eligible(seeds).height == 1
    batch = rec.generate(seeds, client)
    made = batch.made
    assert_provenance(made, rec)
    assert made.height == 2
    for (role, content), extra in zip([m[0] for m in messages_of(made)], made["metadata_extra"], strict=True):
        assert role == "user" and content.startswith(f"Summarize this:\n\n{document}")
        assert re.search(r"How many bridges are named in paragraph \d+\?$", content)
        assert json.loads(extra)["chunks"] > 2
    question_prompts = [
        r.body["messages"][-1]["content"]
        for r in chat_server.chat_requests
        if "Below is an excerpt" in r.body["messages"][-1]["content"]
    ]
    assert all(len(p) < len(document) / 2 for p in question_prompts)  # a chunk, not the document


def test_distillation_answers_the_seed_prompt_with_the_teacher(chat_server: ChatServer, client: LLMClient):
    seeds = chat_seeds(
        [("user", "Hi, what is 2+2?"), ("assistant", "4."), ("user", "And times 3?"), ("assistant", "12")]
    )
    chat_server.reply = script(("And times 3?", "(2+2)*3 = 12."))
    rec = recipe("distillation", rate=1.0)
    batch = rec.generate(seeds, client)
    assert_provenance(batch.made, rec)
    assert messages_of(batch.made) == [
        [
            ("user", "Hi, what is 2+2?"),
            ("assistant", "4."),
            ("user", "And times 3?"),
            ("assistant", "(2+2)*3 = 12."),
        ]
    ]
    sent = chat_server.chat_requests[0].body["messages"]
    assert sent[0]["role"] == "system" and sent[0]["content"] == rec.prompts.render("system")


def test_budget_exhaustion_and_failures_drop_jobs_cleanly(chat_server: ChatServer):
    seeds = qa(*[(f"Question {i}?", f"Answer {i}.") for i in range(4)])
    endpoint = Endpoint(name="test-endpoint", base_url=chat_server.base_url, model="test-model")
    with LLMClient(endpoint, budget=Budget(max_requests=3), max_retries=0, backoff_seconds=0.0) as llm:
        chat_server.faults = ["400"]  # a final client error for the first request sent
        batch = recipe("distillation", rate=1.0).generate(seeds, llm)
    assert batch.made.height == 2
    assert batch.counters["recipe.my_distillation.failed"] == 1
    assert batch.counters["recipe.my_distillation.budget_exhausted"] == 1
    assert batch.counters["recipe.my_distillation.generated"] == 2


def test_a_second_run_is_served_from_the_cache_with_the_same_records(chat_server: ChatServer):
    seeds = qa(*[(f"Question {i}?", f"Answer {i}.") for i in range(3)])
    endpoint = Endpoint(name="test-endpoint", base_url=chat_server.base_url, model="test-model")
    cache = ResponseCache(duckdb.connect())
    chat_server.reply = script(
        (
            "Rewrite the instruction",
            lambda p: f"<rewritten>Please answer: {between(p, 'instruction')}</rewritten>",
        ),
        ("Answer the user's", lambda q: f"A: {q}"),
    )
    runs = []
    for _ in range(2):
        with LLMClient(endpoint, cache=cache) as llm:
            runs.append(
                recipe("paraphrase", rate=1.0, params={"regenerate_response": True}).generate(seeds, llm).made
            )
    first, second = runs
    assert first["cache_hit"].to_list() == [False] * 3 and second["cache_hit"].to_list() == [True] * 3
    assert first.drop("cache_hit").equals(second.drop("cache_hit"))
    assert len(chat_server.chat_requests) == 6  # 3 rewrites + 3 answers, once
