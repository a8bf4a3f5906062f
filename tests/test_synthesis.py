"""Specification of the synthetic stage (rule-based recipes)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import CORPORA
from thresher.config import RecipeConfig, SynthesisConfig
from thresher.records import RECORD_SCHEMA, conform
from thresher.stage import EDGE_SCHEMA
from thresher.synthesis import SYNTHESIS_SCHEMA, Synthesizer, template_hash

SELF_INSTRUCT = CORPORA / "instruct" / "self_instruct" / "seed_tasks.jsonl"


def seeds(n: int = 40, *, with_system_every: int = 0) -> pl.DataFrame:
    """``n`` single-turn chat source records (plus some that are not eligible seeds)."""
    rows = []
    for i in range(n):
        messages = [
            {"role": "user", "content": f"Question number {i}?"},
            {"role": "assistant", "content": f"A{i}."},
        ]
        if with_system_every and i % with_system_every == 0:
            messages.insert(0, {"role": "system", "content": "Be terse."})
        rows.append(
            {
                "record_id": f"aaaaaaaaaaaa:{i}",
                "batch": "b0",
                "task": "chat",
                "messages": messages,
                "source_file": "landing/chat.jsonl",
                "source_line": i + 1,
                "license": "MIT",
                "origin": "source",
            }
        )
    extra = [
        {"record_id": "bbbbbbbbbbbb:0", "task": "math", "origin": "source"},
        {"record_id": "s-0000000000000000", "task": "chat", "origin": "synthetic"},
        {"record_id": "bbbbbbbbbbbb:1", "task": "chat", "origin": "source", "no_answer": True},
    ]
    for e in extra:
        msgs = [{"role": "user", "content": f"Other {e['record_id']}"}]
        if not e.get("no_answer"):
            msgs.append({"role": "assistant", "content": "Other answer."})
        rows.append({**{k: v for k, v in e.items() if k != "no_answer"}, "batch": "b0", "messages": msgs})
    return conform(pl.DataFrame(rows, schema_overrides={"messages": RECORD_SCHEMA["messages"]}))


def config(*recipes: RecipeConfig, seed: int = 7) -> SynthesisConfig:
    return SynthesisConfig(seed=seed, recipes=list(recipes))


ALL_KINDS = config(
    RecipeConfig(name="wrap", kind="instruction_template", rate=0.25),
    RecipeConfig(name="pairs", kind="multi_turn", rate=0.5),
    RecipeConfig(name="persona", kind="system_prompt", rate=0.5, max_per_batch=7),
)


def synthetic(result) -> pl.DataFrame:
    return result.kept.filter(pl.col("origin") == "synthetic").filter(
        pl.col("record_id") != "s-0000000000000000"
    )


def test_inputs_pass_through_unchanged_and_created_records_are_appended():
    records = seeds()
    result = Synthesizer(ALL_KINDS).run(records, batch="b1")

    assert result.kept.head(records.height).equals(records)
    assert result.rejected.is_empty()
    assert result.created == result.kept.height - records.height > 0
    result.check_conservation()
    assert result.rows_in + result.created == result.kept.height


def test_same_input_and_config_give_identical_output():
    a = Synthesizer(ALL_KINDS).run(seeds(), batch="b1")
    b = Synthesizer(ALL_KINDS).run(seeds(), batch="b1")
    assert a.kept.equals(b.kept)
    for name in ("edges", "synthesis"):
        assert a.tables[name].equals(b.tables[name])
    assert a.counters == b.counters


def test_selection_ignores_input_order():
    forward = Synthesizer(ALL_KINDS).run(seeds(), batch="b1")
    backward = Synthesizer(ALL_KINDS).run(seeds().reverse(), batch="b1")
    assert sorted(synthetic(forward)["record_id"]) == sorted(synthetic(backward)["record_id"])


def test_ids_are_stable_and_derived_from_recipe_template_seeds_and_seed():
    result = Synthesizer(ALL_KINDS).run(seeds(), batch="b1")
    provenance = result.tables["synthesis"]
    for row in synthetic(result).join(provenance, on="record_id").iter_rows(named=True):
        key = "\x1f".join([row["recipe"], row["template_hash"], ",".join(sorted(row["parent_ids"])), "7"])
        assert row["record_id"] == "s-" + hashlib.sha256(key.encode()).hexdigest()[:16]
    # The batch a record is created in does not change its id; the seed does.
    other_batch = Synthesizer(ALL_KINDS).run(seeds(), batch="b2")
    assert synthetic(other_batch)["record_id"].equals(synthetic(result)["record_id"])
    other_seed = Synthesizer(ALL_KINDS.model_copy(update={"seed": 8})).run(seeds(), batch="b1")
    assert set(synthetic(other_seed)["record_id"]).isdisjoint(synthetic(result)["record_id"])


def test_lineage_every_parent_exists_and_edges_match_parent_ids():
    records = seeds()
    result = Synthesizer(ALL_KINDS).run(records, batch="b1")
    created = synthetic(result)
    edges = result.tables["edges"]

    assert dict(edges.schema) == EDGE_SCHEMA
    parents = created.select("record_id", "parent_ids").explode("parent_ids")
    assert parents["parent_ids"].is_in(records["record_id"].implode()).all()
    expected = parents.rename({"record_id": "child_id", "parent_ids": "parent_id"}).sort(pl.all())
    assert edges.select("child_id", "parent_id").sort(pl.all()).equals(expected)
    assert (edges["relation"] == "seed").all()
    assert edges["detail"].str.contains(r"^recipe (wrap|pairs|persona), template \d+$").all()


def test_created_records_trace_to_their_first_seed_and_describe_their_recipe():
    records = seeds()
    result = Synthesizer(ALL_KINDS).run(records, batch="b1")
    by_id = {r["record_id"]: r for r in records.iter_rows(named=True)}
    for row in synthetic(result).iter_rows(named=True):
        first = by_id[row["parent_ids"][0]]
        assert (row["source_file"], row["source_line"], row["license"]) == (
            first["source_file"],
            first["source_line"],
            first["license"],
        )
        assert row["batch"] == "b1"
        assert row["task"] == "chat"
        meta = json.loads(row["metadata"])
        assert set(meta) == {"recipe", "template_id", "template_hash"}


def test_provenance_table_records_recipe_params_and_generator():
    result = Synthesizer(ALL_KINDS).run(seeds(), batch="b1")
    provenance = result.tables["synthesis"]
    assert dict(provenance.schema) == SYNTHESIS_SCHEMA
    assert provenance.height == result.created
    assert set(provenance["generator"]) == {"rule-based"}
    assert set(provenance["seed"]) == {7}
    wrap = provenance.filter(pl.col("recipe") == "wrap")
    assert json.loads(wrap["params"][0])["kind"] == "instruction_template"


def test_rate_and_max_per_batch_are_honored():
    records = seeds(40)  # 40 eligible seeds: the math, synthetic and unanswered records are not seeds
    result = Synthesizer(ALL_KINDS).run(records, batch="b1")

    assert result.counters["recipe.wrap.eligible"] == 40
    assert result.counters["recipe.wrap"] == math.ceil(0.25 * 40)
    assert result.counters["recipe.pairs"] == math.ceil(0.5 * 40) // 2  # two seeds per record
    assert result.counters["recipe.persona"] == 7  # ceil(0.5 * 40) = 20, capped
    assert result.created == 10 + 10 + 7


def test_rate_does_not_suffer_from_float_rounding():
    # 0.1 * 30 is 3.0000000000000004 in floating point: still 3 records, not 4.
    result = Synthesizer(config(RecipeConfig(name="w", kind="instruction_template", rate=0.1))).run(
        seeds(30), batch="b1"
    )
    assert result.counters["recipe.w"] == 3


def test_only_source_chat_records_with_an_answer_are_seeds():
    result = Synthesizer(config(RecipeConfig(name="w", kind="instruction_template", rate=1.0))).run(
        seeds(5), batch="b1"
    )
    parents = set(synthetic(result)["parent_ids"].explode())
    assert parents == {f"aaaaaaaaaaaa:{i}" for i in range(5)}


def test_instruction_template_wraps_the_first_user_message_and_keeps_the_answer():
    recipe = RecipeConfig(
        name="w", kind="instruction_template", rate=1.0, templates=["Task: {instruction} (be brief)"]
    )
    result = Synthesizer(config(recipe)).run(seeds(3), batch="b1")
    for row in synthetic(result).iter_rows(named=True):
        i = int(row["parent_ids"][0].split(":")[1])
        assert row["messages"] == [
            {"role": "user", "content": f"Task: Question number {i}? (be brief)"},
            {"role": "assistant", "content": f"A{i}."},
        ]
        assert json.loads(row["metadata"]) == {
            "recipe": "w",
            "template_id": 0,
            "template_hash": hashlib.sha256(b"Task: {instruction} (be brief)").hexdigest()[:12],
        }


def test_multi_turn_merges_two_distinct_seeds_in_order():
    result = Synthesizer(config(RecipeConfig(name="m", kind="multi_turn", rate=1.0))).run(
        seeds(10), batch="b1"
    )
    created = synthetic(result)
    assert created.height == 5
    used = created["parent_ids"].explode()
    assert used.n_unique() == 10  # every seed used once
    for row in created.iter_rows(named=True):
        a, b = (int(p.split(":")[1]) for p in row["parent_ids"])
        assert row["messages"] == [
            {"role": "user", "content": f"Question number {a}?"},
            {"role": "assistant", "content": f"A{a}."},
            {"role": "user", "content": f"Question number {b}?"},
            {"role": "assistant", "content": f"A{b}."},
        ]


def test_system_prompt_is_prepended_only_to_seeds_without_one():
    recipe = RecipeConfig(name="p", kind="system_prompt", rate=1.0, templates=["You are a pirate."])
    result = Synthesizer(config(recipe)).run(seeds(10, with_system_every=2), batch="b1")
    created = synthetic(result)
    assert result.counters["recipe.p.eligible"] == 5
    assert created.height == 5
    for row in created.iter_rows(named=True):
        assert row["messages"][0] == {"role": "system", "content": "You are a pirate."}
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
    assert template_hash("You are a pirate.") == hashlib.sha256(b"You are a pirate.").hexdigest()[:12]


def test_a_record_identical_to_an_input_or_another_created_one_is_never_created():
    identity = RecipeConfig(
        name="same", kind="instruction_template", rate=1.0, templates=["  {instruction} "]
    )
    first = RecipeConfig(name="p1", kind="system_prompt", rate=1.0, templates=["Be kind."])
    again = RecipeConfig(name="p2", kind="system_prompt", rate=1.0, templates=["be  KIND."])
    result = Synthesizer(config(identity, first, again)).run(seeds(6), batch="b1")

    assert result.counters["recipe.same"] == 0
    assert result.counters["recipe.same.duplicate_skipped"] == 6
    assert result.counters["recipe.p1"] == 6
    assert result.counters["recipe.p2"] == 0
    assert result.counters["recipe.p2.duplicate_skipped"] == 6
    assert result.created == 6
    assert result.tables["edges"].height == 6
    result.check_conservation()


def test_templates_must_contain_the_placeholder():
    with pytest.raises(ValueError, match="instruction"):
        Synthesizer(config(RecipeConfig(name="w", kind="instruction_template", templates=["no placeholder"])))


def test_no_recipes_or_no_seeds_creates_nothing():
    assert Synthesizer(config()).run(seeds(3), batch="b1").created == 0
    empty = conform(pl.DataFrame(schema=RECORD_SCHEMA))
    result = Synthesizer(ALL_KINDS).run(empty, batch="b1")
    assert result.created == 0 and result.kept.is_empty()
    assert dict(result.tables["edges"].schema) == EDGE_SCHEMA
    assert dict(result.tables["synthesis"].schema) == SYNTHESIS_SCHEMA


def test_real_seed_tasks_keep_their_text_intact():
    """Self-Instruct's human-written seed tasks: instructions with $, backslashes and newlines survive."""
    tasks = [json.loads(line) for line in Path(SELF_INSTRUCT).read_text(encoding="utf-8").splitlines()]
    records = conform(
        pl.DataFrame(
            {
                "record_id": [f"c0ffeec0ffee:{i}" for i in range(len(tasks))],
                "task": "chat",
                "origin": "source",
                "messages": [
                    [
                        {"role": "user", "content": t["instruction"]},
                        {"role": "assistant", "content": t["instances"][0]["output"]},
                    ]
                    for t in tasks
                ],
            }
        )
    )
    recipe = RecipeConfig(name="w", kind="instruction_template", rate=1.0, max_per_batch=10_000)
    result = Synthesizer(config(recipe)).run(records, batch="b1")
    by_id = {r["record_id"]: r["messages"] for r in records.iter_rows(named=True)}
    templates = [
        t.replace("{instruction}", "\0") for t in Synthesizer(config(recipe)).recipes[0].default_templates
    ]
    assert synthetic(result).height > 0
    for row in synthetic(result).iter_rows(named=True):
        seed = by_id[row["parent_ids"][0]]
        tid = json.loads(row["metadata"])["template_id"]
        assert row["messages"][0]["content"] == templates[tid].replace("\0", seed[0]["content"])
        assert row["messages"][1] == seed[1]
