"""LLM synthesis end to end: real Dagster runs (``thresher ingest``) over a real DuckDB file against the
real chat-completions server of tests/chat_server.py, whose scripted "model" answers the prompts of the
distillation, paraphrase, evol_instruct, code_workflow, tool_use and self_instruct recipes sensibly.

One fault-free run with an endpoint and an API key, a second materialization of the same files (served
from the response cache), a run in a fresh home against a server injecting faults, and a run with no
endpoint at all (the LLM recipes are skipped with a notice, the rule-based ones still run).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest
import yaml

from pipelines import cli
from tests.chat_server import ChatServer
from tests.conftest import CORPORA, REPO
from thresher import provenance
from thresher import store as st

pytestmark = pytest.mark.integration

API_KEY = "sk-thresher-test-4f1c9a7e2b6d8053"
MODEL = "teacher-model"
ENDPOINT = "local-test"
GENERATOR = f"llm:{ENDPOINT}/{MODEL}"
LLM_ENV = (
    "THRESHER_LLM_BASE_URL",
    "THRESHER_LLM_MODEL",
    "THRESHER_LLM_API_KEY",
    "THRESHER_LLM_ENDPOINT_NAME",
)
SEED_TASKS = CORPORA / "instruct" / "self_instruct" / "seed_tasks.jsonl"
LLM_KINDS = ["distillation", "paraphrase", "evol_instruct", "code_workflow", "tool_use", "self_instruct"]
SEEDLESS = {"code_workflow", "tool_use"}

# ---------------------------------------------------------------------------------------------
# The corpus: chat files written by the test (plus the Self-Instruct seed tasks when present)

CHATS = {
    "geography.jsonl": [
        (
            "Why do rivers form meanders when they flow across a wide and flat plain?",
            "Water flows faster on the outside of a bend, eroding that bank, and slower on the inside, "
            "where it deposits sediment, so the bends slowly grow.",
        ),
        (
            "How are volcanic islands like Hawaii created in the middle of an ocean plate?",
            "A hotspot of rising mantle melts the plate above it; lava piles up into islands that drift "
            "away with the plate while new ones form over the hotspot.",
        ),
        (
            "What makes a desert a desert, given that some of them are actually quite cold?",
            "Deserts are defined by how little precipitation they receive, usually under 250 millimetres "
            "a year, not by their temperature.",
        ),
        (
            "Explain how glaciers carve the U-shaped valleys found in many mountain ranges.",
            "Moving ice plucks rock from the valley floor and grinds the walls with debris frozen into "
            "its base, widening a V-shaped river valley into a U.",
        ),
    ],
    "kitchen.jsonl": [
        (
            "What is the difference between baking soda and baking powder when making cakes?",
            "Baking soda is pure sodium bicarbonate and needs an acid in the batter; baking powder "
            "already contains the acid, so it works on its own.",
        ),
        (
            "Why should bread dough rest and rise before it goes into the oven?",
            "Yeast needs time to ferment sugars into carbon dioxide, which inflates the gluten network "
            "and develops flavour before the heat sets the crumb.",
        ),
        (
            "How can I keep freshly cut avocado from turning brown in the fridge?",
            "Limit its contact with air: press plastic wrap onto the cut surface or brush it with lemon "
            "juice, whose acid slows the browning enzyme.",
        ),
        (
            "Which simple techniques help keep a wooden cutting board in good shape for years?",
            "Wash it by hand, dry it upright at once and rub it with food-safe mineral oil every few "
            "weeks so the wood does not crack.",
        ),
    ],
}

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

LLM_RECIPES = [
    {"name": "teacher_answers", "kind": "distillation", "rate": 0.5, "max_per_batch": 2},
    {
        "name": "reworded",
        "kind": "paraphrase",
        "rate": 0.5,
        "max_per_batch": 2,
        "params": {"regenerate_response": True},
    },
    {
        "name": "evolved",
        "kind": "evol_instruct",
        "rate": 0.5,
        "max_per_batch": 2,
        "params": {"operations": ["constraints"]},
    },
    {
        "name": "python_exercises",
        "kind": "code_workflow",
        "max_per_batch": 2,
        "params": {"topics": ["string manipulation"], "problems_per_topic": 2},
    },
    {
        "name": "weather_calls",
        "kind": "tool_use",
        "max_per_batch": 2,
        "params": {"tools": [WEATHER], "requests_per_tool": 2},
    },
    {
        "name": "new_tasks",
        "kind": "self_instruct",
        "rate": 0.5,
        "max_per_batch": 3,
        "params": {"examples_per_prompt": 4, "new_per_prompt": 3},
    },
]


def chat_line(question: str, answer: str) -> str:
    return json.dumps(
        {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}
    )


def write_corpus(folder: Path) -> Path:
    files = folder / "files"
    files.mkdir(parents=True)
    for name, pairs in CHATS.items():
        (files / name).write_text("".join(chat_line(q, a) + "\n" for q, a in pairs))
    if SEED_TASKS.exists():  # the first 24 of the 175 tasks keep the run fast
        lines = SEED_TASKS.read_text().splitlines(keepends=True)[:24]
        (files / "seed_tasks.jsonl").write_text("".join(lines))
    else:
        tasks = [
            {
                "id": f"seed_task_{i}",
                "name": f"task_{i}",
                "instruction": q,
                "instances": [{"input": "", "output": a}],
                "is_classification": False,
            }
            for i, (q, a) in enumerate(CHATS["geography.jsonl"] + CHATS["kitchen.jsonl"])
        ]
        (files / "seed_tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    return files


def write_config(folder: Path) -> Path:
    """configs/demo.yaml with this test's LLM recipes, small backoff and a short client timeout."""
    config = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    benchmarks = config["dedup"]["decontamination"]["benchmarks"]
    for benchmark in benchmarks:  # relative to the config file, which moves to tmp
        benchmark["path"] = str((REPO / "configs" / benchmark["path"]).resolve())
    config["dedup"]["decontamination"]["benchmarks"] = [b for b in benchmarks if Path(b["path"]).exists()]
    config["dedup"]["decontamination"]["enabled"] = bool(config["dedup"]["decontamination"]["benchmarks"])
    config["synthesis"]["llm_recipes"] = LLM_RECIPES
    config["synthesis"]["llm"] = {
        "concurrency": 4,
        "max_retries": 6,
        "backoff_seconds": 0.01,
        "timeout_seconds": 1.0,
        "price_per_million_input": 0.5,
        "price_per_million_output": 1.5,
    }
    path = folder / "dataset.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------------
# The scripted model


def between(text: str, tag: str) -> str:
    return re.search(rf"(?s)<{tag}>\s*(.*?)\s*</{tag}>", text)[1]


def _digest(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16)


OPENERS = [
    "Start from the underlying mechanism.",
    "The short version is about cause and effect.",
    "It helps to separate the physical process from its visible result.",
    "Think of it as a balance between two competing forces.",
]
POINTS = [
    "Small differences in speed or temperature accumulate over long periods.",
    "The material that is removed in one place is deposited somewhere else.",
    "Chemistry plays a part: acids, enzymes and gases change the structure.",
    "Timing matters, because each step depends on the one before it.",
    "Measurements confirm the explanation and rule out the common myths.",
    "Everyday experience offers a simple experiment that shows the effect.",
]


def answer_to(request: str) -> str:
    """A deterministic, multi-sentence answer that names what was asked about."""
    n = _digest(request)
    subject = " ".join(re.findall(r"[A-Za-z']+", request)[:8]).lower()
    points = [POINTS[(n >> (4 * i)) % len(POINTS)] for i in range(3)]
    return (
        f"{OPENERS[n % len(OPENERS)]} Regarding {subject}: {' '.join(dict.fromkeys(points))} "
        f"In summary, the answer follows from these steps (note {n % 997})."
    )


NEW_TASKS = [
    "Write a haiku about the first snowfall of the winter in a quiet city.",
    "Classify the following animals as mammals or reptiles: dolphin, gecko, bat, tortoise.",
    "Suggest three names for a bakery that specializes in sourdough bread.",
    "Explain compound interest to a teenager with a numeric example of savings.",
    "Convert this sentence into passive voice: The committee approved the new budget.",
    "List five questions a journalist could ask a retiring football coach.",
    "Summarize the main causes of the French Revolution in two sentences.",
    "Give a step-by-step plan for learning basic Spanish in three months.",
    "Rewrite this email to sound more polite: Send me the report now.",
    "Compare electric cars and hybrid cars in terms of running costs.",
    "Find the grammar mistake in: Their going to the museum tomorrow morning.",
    "Propose a weekly workout schedule for a beginner runner with little free time.",
]

PROBLEMS = (
    "1. Write a function `reverse_words(text: str) -> str` that returns the words of `text` in reverse "
    "order, separated by single spaces; runs of whitespace count as one separator.\n\n"
    "2. Write a function `count_vowels(text: str) -> int` that counts the vowels (a, e, i, o, u, in "
    "any case) in `text`."
)
SOLUTIONS = {
    "reverse_words": "Split on whitespace, which also drops repeated spaces, then reverse the list.\n\n"
    "```python\ndef reverse_words(text: str) -> str:\n    # split() without arguments ignores runs of "
    "whitespace\n    return ' '.join(reversed(text.split()))\n```\n\nThis is correct because split() "
    "yields exactly the words.",
    "count_vowels": "Lower-case each character and test membership in a set of vowels.\n\n"
    "```python\ndef count_vowels(text: str) -> int:\n    # lower() makes the check case-insensitive\n"
    "    return sum(1 for c in text.lower() if c in 'aeiou')\n```\n\nEvery character is checked once.",
}
TESTS = {
    "reverse_words": "```python\nassert reverse_words('a b  c') == 'c b a'\nassert reverse_words('') == ''\n"
    "assert reverse_words('one') == 'one'\n```",
    "count_vowels": "```python\nassert count_vowels('AEIOU') == 5\nassert count_vowels('xyz') == 0\n"
    "assert count_vowels('Banana') == 3\n```",
}
CITIES = {"Paris": ("celsius", 18, "cloudy"), "Denver": ("fahrenheit", 64, "sunny")}


def reply(body: dict[str, Any]) -> str:
    """The "model": answers each recipe's prompts the way a capable instruct model would."""
    messages = body["messages"]
    last = messages[-1]["content"]
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    if "Come up with" in last and "new tasks" in last:
        first = int(re.search(r"numbered (\d+) to (\d+)", last)[1])
        count = int(re.search(r"Come up with (\d+) new tasks", last)[1])
        n = _digest(last)
        picks = [NEW_TASKS[(n + 5 * i) % len(NEW_TASKS)] for i in range(count)]
        return "\n".join(f"{first + i}. {task}" for i, task in enumerate(picks))
    if "Rewrite the instruction below" in last:
        instruction = between(last, "instruction")
        words = instruction.rstrip("?.!").split()
        return f"<rewritten>Could you explain this to me: {' '.join(reversed(words)).lower()}?</rewritten>"
    if "prompt rewriter" in last:
        prompt = between(last, "prompt")
        return f"<rewritten>{prompt} Answer in exactly three numbered points of at most twenty words each.</rewritten>"
    if "Are they equal to each other" in last:
        return "Not Equal"
    if "self-contained programming problems" in last:
        return PROBLEMS
    if "Write unit tests" in last:
        return TESTS["reverse_words" if "reverse_words" in last else "count_vowels"]
    if "Solve the user's programming problem" in system:
        return SOLUTIONS["reverse_words" if "reverse_words" in last else "count_vowels"]
    if "Write 2 different requests" in last:
        return "1. What's the weather like in Paris right now?\n2. How warm is it in Denver, in fahrenheit?"
    if "Call the function to fulfil the request" in last:
        request = between(last, "request")
        city = next(c for c in CITIES if c in request)
        arguments = {"city": city} if city == "Paris" else {"city": city, "unit": CITIES[city][0]}
        return json.dumps({"name": "get_weather", "arguments": arguments})
    if "simulating the backend" in last:
        city = next(c for c in CITIES if c in last)
        unit, temperature, conditions = CITIES[city]
        return json.dumps({"city": city, "temperature": temperature, "unit": unit, "conditions": conditions})
    if "Write your reply to the user" in last:
        result = json.loads(between(last, "result"))
        return f"It is {result['temperature']} degrees {result['unit']} and {result['conditions']} in {result['city']}."
    return answer_to(last)


# ---------------------------------------------------------------------------------------------
# Running the pipeline


@contextmanager
def environment(home: Path, config: Path, server: ChatServer | None) -> Iterator[None]:
    values = {"THRESHER_HOME": str(home), "THRESHER_CONFIG": str(config)}
    if server is not None:
        values |= {
            "THRESHER_LLM_BASE_URL": server.base_url,
            "THRESHER_LLM_MODEL": MODEL,
            "THRESHER_LLM_API_KEY": API_KEY,
            "THRESHER_LLM_ENDPOINT_NAME": ENDPOINT,
        }
    keys = ("THRESHER_HOME", "THRESHER_CONFIG", "DAGSTER_HOME", *LLM_ENV)
    saved = {k: os.environ.get(k) for k in keys}
    for key in LLM_ENV:
        os.environ.pop(key, None)
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass
class Run:
    """One `thresher ingest` of the corpus and what it left behind."""

    home: Path
    requests: int
    authorizations: set[str] = field(default_factory=set)
    synthetic: dict[str, dict[str, Any]] = field(default_factory=dict)  # record_id -> record
    synthesis: dict[str, dict[str, Any]] = field(default_factory=dict)  # record_id -> provenance row
    metadata: list[dict[str, Any]] = field(default_factory=list)  # latest synthetic metadata per batch

    def con(self) -> duckdb.DuckDBPyConnection:
        return st.Store(self.home / "thresher.duckdb").connect(read_only=True)


def ingest(home: Path, files: Path, config: Path, server: ChatServer | None) -> Run:
    if server is not None:
        server.reset()
    with environment(home, config, server):
        assert cli.main(["ingest", str(files)]) == 0
    recorded = server.requests if server is not None else []
    run = Run(
        home=home,
        requests=len(recorded),
        authorizations={r.headers.get("Authorization", "") for r in recorded},
    )
    with run.con() as con:
        for row in st.query(
            con,
            "SELECT record_id, batch, task, messages, tests, entry_point, parent_ids, metadata FROM synthetic "
            "WHERE origin = 'synthetic' ORDER BY record_id",
        ).to_dicts():
            run.synthetic[row["record_id"]] = row
        for row in st.query(con, "SELECT * FROM synthesis ORDER BY record_id").to_dicts():
            run.synthesis[row["record_id"]] = row
    run.metadata = synthetic_metadata(home)
    return run


def synthetic_metadata(home: Path) -> list[dict[str, Any]]:
    """The latest materialization metadata of the synthetic asset for each batch, read from the instance."""
    instance = dg.DagsterInstance.from_config(str(home / "dagster"))
    records = instance.fetch_materializations(dg.AssetKey("synthetic"), limit=100).records
    latest: dict[str, dict[str, Any]] = {}
    for record in records:  # newest first
        materialization = record.asset_materialization
        latest.setdefault(
            materialization.partition, {k: v.value for k, v in materialization.metadata.items()}
        )
    return list(latest.values())


def llm_records(run: Run) -> dict[str, dict[str, Any]]:
    return {rid: row for rid, row in run.synthesis.items() if row["model"] is not None}


def contents(run: Run) -> dict[str, Any]:
    return {
        rid: (row["task"], row["messages"], row["tests"], row["entry_point"])
        for rid, row in run.synthetic.items()
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("llm-corpus")
    return write_corpus(folder), write_config(folder)


@pytest.fixture(scope="module")
def server() -> Iterator[ChatServer]:
    with ChatServer(api_key=API_KEY, reply=reply) as chat:
        yield chat


@pytest.fixture(scope="module")
def first(tmp_path_factory, corpus, server) -> Run:
    files, config = corpus
    return ingest(tmp_path_factory.mktemp("llm-home"), files, config, server)


@pytest.fixture(scope="module")
def second(first, corpus, server) -> Run:
    files, config = corpus
    return ingest(first.home, files, config, server)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory, corpus, server) -> Iterator[Run]:
    files, config = corpus
    counter = itertools.count(1)
    rotation = itertools.cycle(["429", "500", "malformed", "truncated", "timeout"])
    server.faults = lambda body: next(rotation) if next(counter) % 3 == 0 else None
    server.hang_seconds = 1.5  # longer than the client's timeout_seconds (1.0)
    try:
        yield ingest(tmp_path_factory.mktemp("llm-home-faults"), files, config, server)
    finally:
        server.faults = ()


@pytest.fixture(scope="module")
def offline(tmp_path_factory, corpus) -> Run:
    files, config = corpus
    return ingest(tmp_path_factory.mktemp("llm-home-offline"), files, config, None)


# ---------------------------------------------------------------------------------------------
# 1. With an endpoint


def test_every_llm_recipe_creates_records_that_reach_verified_and_the_release(first: Run) -> None:
    made = llm_records(first)
    by_kind: dict[str, list[str]] = {}
    for rid, row in made.items():
        by_kind.setdefault(row["kind"], []).append(rid)
    assert sorted(by_kind) == sorted(LLM_KINDS)
    with first.con() as con:
        verified = set(st.query(con, "SELECT record_id FROM verified")["record_id"])
        released = set(st.query(con, "SELECT record_id FROM formatted")["record_id"])
        rejected = st.query(
            con, "SELECT DISTINCT record_id, stage, rule FROM rejections WHERE starts_with(record_id, 's-')"
        ).to_dicts()
        # One record per generation: a seedless recipe's records are not made again in every batch
        # (where they would be cache hits of the first batch's calls).
        copies = st.query(
            con,
            "SELECT record_id, kind, count(*) AS n, list(cache_hit) AS hits FROM synthesis "
            "WHERE model IS NOT NULL GROUP BY ALL HAVING n > 1 OR bool_or(cache_hit) ORDER BY ALL",
        ).to_dicts()
    assert copies == []
    # Nothing the recipes made is rejected before the release: no code_tests_failed. The chat templates
    # cannot render a tool turn yet (issue 8), so tool records stop at the formatted stage, in the ledger.
    tool_ids = set(by_kind["tool_use"])
    assert [r for r in rejected if r["record_id"] in made and r["record_id"] not in tool_ids] == []
    assert {(r["record_id"], r["stage"], r["rule"]) for r in rejected if r["record_id"] in tool_ids} == {
        (rid, "formatted", "render_failed") for rid in tool_ids
    }
    assert set(made) <= verified
    assert set(made) - tool_ids <= released
    code = [first.synthetic[rid] for rid in by_kind["code_workflow"]]
    assert {c["entry_point"] for c in code} == {"reverse_words", "count_vowels"}
    assert all(c["task"] == "code" and "assert" in c["tests"] for c in code)
    tools = [first.synthetic[rid] for rid in by_kind["tool_use"]]
    assert all(
        [m["role"] for m in t["messages"]] == ["user", "assistant", "tool", "assistant"] for t in tools
    )
    assert all(json.loads(t["metadata"])["tools"][0]["name"] == "get_weather" for t in tools)


def test_every_created_record_traces_to_its_model_recipe_template_and_seeds(first: Run) -> None:
    recipes = {r["name"]: r for r in LLM_RECIPES}
    with first.con() as con:
        for rid in llm_records(first):
            trace = provenance.trace(con, rid)
            synthesis = trace["synthesis"]
            assert synthesis["generator"] == GENERATOR
            assert synthesis["model"] == MODEL and synthesis["endpoint"] == ENDPOINT
            assert (
                synthesis["recipe"] in recipes and synthesis["kind"] == recipes[synthesis["recipe"]]["kind"]
            )
            assert re.fullmatch(r"[0-9a-f]{12}", synthesis["template_hash"])
            params = json.loads(synthesis["params"])
            assert params["name"] == synthesis["recipe"] and params["kind"] == synthesis["kind"]
            assert params["params"] == recipes[synthesis["recipe"]].get("params", {})
            assert synthesis["cache_hit"] is False, (rid, synthesis["kind"], trace["source"])
            assert synthesis["calls"] >= 1 and synthesis["prompt_tokens"] > 0
            if synthesis["kind"] in SEEDLESS:
                assert not trace.get("seeds")
            else:
                assert trace["seeds"] and all(s["source"] for s in trace["seeds"])
            assert [s["stage"] for s in trace["stages"]][-1] == "formatted"


def test_the_api_key_is_shown_nowhere(first: Run) -> None:
    # The server checks the key: every request carried it (a 401 would have failed the recipes).
    assert first.authorizations == {f"Bearer {API_KEY}"}
    with first.con() as con:
        tables = [t for (t,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
        assert "llm_responses" in tables
        for table in tables:
            hits = con.execute(
                f'SELECT count(*) FROM "{table}" t WHERE contains(CAST(t AS VARCHAR), ?)', [API_KEY]
            ).fetchone()[0]
            assert hits == 0, table
    assert API_KEY.encode() not in (first.home / "thresher.duckdb").read_bytes()
    for path in (first.home / "lineage").rglob("*"):
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path
    for path in (first.home / "dagster").rglob("*"):
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path
    instance = dg.DagsterInstance.from_config(str(first.home / "dagster"))
    for run in instance.get_runs():
        assert API_KEY not in json.dumps(run.run_config, default=str)
        for entry in instance.all_logs(run.run_id):
            assert API_KEY not in entry.message
            if entry.dagster_event is not None:
                assert API_KEY not in repr(entry.dagster_event.event_specific_data)
    assert API_KEY not in repr(first.metadata)


def test_the_synthetic_asset_reports_usage_cost_and_share(first: Run) -> None:
    assert first.requests > 0
    assert first.metadata
    for metadata in first.metadata:
        assert metadata["llm_endpoint"] == GENERATOR
        assert metadata["llm_requests"] > 0 and metadata["llm_prompt_tokens"] > 0
        assert metadata["llm_cost_usd"] > 0
        assert 0 < metadata["synthetic_share"] < 1
        assert metadata["llm_failures"] == 0 and metadata["llm_budget_exhausted"] is False
    assert sum(m["llm_requests"] for m in first.metadata) == first.requests


# ---------------------------------------------------------------------------------------------
# 2. A second materialization is served from the cache


def test_a_second_materialization_is_served_entirely_from_the_cache(first: Run, second: Run) -> None:
    assert second.requests == 0
    assert contents(second) == contents(first)
    made = llm_records(second)
    assert set(made) == set(llm_records(first))
    assert all(row["cache_hit"] is True for row in made.values())
    for metadata in second.metadata:
        assert metadata["llm_requests"] == 0 and metadata["llm_cache_hits"] > 0
        assert metadata["llm_cost_usd"] == 0


# ---------------------------------------------------------------------------------------------
# 3. Faults slow the run but lose nothing


def test_a_faulty_endpoint_loses_nothing(first: Run, faulty: Run) -> None:
    assert faulty.requests > first.requests  # the retries
    assert contents(faulty) == contents(first)
    assert {rid: row["kind"] for rid, row in llm_records(faulty).items()} == {
        rid: row["kind"] for rid, row in llm_records(first).items()
    }
    assert sum(m["llm_retries"] for m in faulty.metadata) > 0
    assert all(m["llm_failures"] == 0 for m in faulty.metadata)


# ---------------------------------------------------------------------------------------------
# 4. No endpoint: the same configuration runs offline


def test_without_an_endpoint_llm_recipes_are_skipped_with_a_notice(first: Run, offline: Run) -> None:
    assert llm_records(offline) == {}
    rule_based = {row["recipe"] for row in offline.synthesis.values()}
    assert rule_based and rule_based <= {"concise_instructions", "two_turn_chats", "assistant_personas"}
    assert offline.metadata
    for metadata in offline.metadata:
        assert "LLM recipes skipped" in metadata["notices"]
        assert "THRESHER_LLM_BASE_URL" in metadata["notices"]
        assert not any(key.startswith("llm_") for key in metadata)
    rule_first = {rid for rid, row in first.synthesis.items() if row["model"] is None}
    assert set(offline.synthetic) == rule_first
    with offline.con() as con:
        assert st.query(con, "SELECT count(*) FROM formatted WHERE origin = 'synthetic'").item() > 0
