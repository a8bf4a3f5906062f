"""Specification of the release: leak-free stratified splits and immutable, versioned release folders."""

from __future__ import annotations

import json
import random
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from tests.test_formatting import CONVERSATIONS, a, s, u
from thresher.config import FormatConfig
from thresher.formatting import TEMPLATES, explode_turns, render
from thresher.records import RECORD_SCHEMA, conform
from thresher.release import (
    FORMATS,
    ReleaseConflictError,
    ReleaseManifest,
    assign_splits,
    latest_version,
    split_leaks,
    verify_release,
    write_release,
)

RATIOS = {"train": 0.8, "validation": 0.1, "test": 0.1}
TASKS = ["chat", "code", "math"]
SOURCES = ["a.jsonl", "b.csv"]


WORDS = [f"{c}{v}{e}" for c in "bdfgklmnprstvz" for v in "aeiou" for e in ("", "n", "r", "st")]


def topic_prompt(topic: int) -> str:
    """A 25-word prompt of its own per topic (distinct prompts share about no character 5-grams)."""
    words = random.Random(topic).choices(WORDS, k=25)
    return f"Explain {' '.join(words)}?"


def corpus(n: int = 6000, seed: int = 1) -> pl.DataFrame:
    """``n`` records over about n/3 prompts in six strata (task x source). A prompt recurs with other
    case and spacing, and about half the records of every tenth prompt change one of its words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        p = rng.randrange(n // 3)
        topic = topic_prompt(p)
        prompt = rng.choice([topic, f"  {topic.upper()} ", topic.replace(" ", "  ")])
        if p % 10 == 0 and rng.random() < 0.5:
            prompt = prompt.replace(" ", " zzyzx ", 1)
        rows.append(
            {
                "record_id": f"r{i:05d}",
                "task": TASKS[p % 3],
                "source_file": SOURCES[(p // 3) % 2],
                "messages": [s("sys"), u(prompt), a(f"answer {i}")],
                "topic": p,
            }
        )
    return pl.DataFrame(rows, schema_overrides={"messages": RECORD_SCHEMA["messages"]})


def config(**overrides: object) -> FormatConfig:
    return FormatConfig(**{"splits": RATIOS, **overrides})


def with_splits(records: pl.DataFrame, cfg: FormatConfig) -> pl.DataFrame:
    return records.with_columns(assign_splits(records, cfg).alias("split"))


# --------------------------------------------------------------------------------------------------
# Splits


def test_every_stratum_keeps_the_split_ratios_up_to_rounding():
    records = with_splits(corpus(), config())
    largest_component = records.group_by("topic").len()["len"].max()
    for (task, source), stratum in records.group_by("task", "source_file"):
        counts = dict(stratum.group_by("split").len().iter_rows())
        for name, ratio in RATIOS.items():
            # Each cut can fall inside one component: off by at most one component per cut.
            assert abs(counts.get(name, 0) - ratio * stratum.height) <= 2 * largest_component, (
                task,
                source,
                counts,
            )


def test_a_tiny_stratum_is_split_by_rounding_not_by_chance():
    records = pl.concat([corpus(3000), corpus(10, seed=9).with_columns(pl.lit("tool").alias("task"))])
    records = records.with_columns(pl.format("r{}", pl.int_range(pl.len())).alias("record_id"))
    assigned = with_splits(records, config(splits={"train": 0.5, "test": 0.5}))
    tiny = assigned.filter(pl.col("task") == "tool")
    counts = dict(tiny.group_by("split").len().iter_rows())
    assert abs(counts.get("train", 0) - 5) <= 1 + tiny.group_by("topic").len()["len"].max()


def test_equal_and_near_duplicate_prompts_share_a_split():
    records = with_splits(corpus(), config())
    # The prompts of one topic differ in case, spacing and (every tenth topic) an inserted word.
    assert records.group_by("topic").agg(pl.col("split").n_unique())["split"].max() == 1
    prompt = pl.col("messages").list.get(1).struct.field("content")
    variants = records.group_by("topic").agg(prompt.str.contains("zzyzx").n_unique().alias("wordings"))
    assert (variants["wordings"] == 2).sum() > 50  # the near twins really are there
    assert split_leaks(records).is_empty()


def test_near_twins_would_leak_without_the_near_duplicate_grouping():
    records = corpus()
    exact_only = with_splits(records, config(near_duplicate_threshold=1.0))
    leaks = split_leaks(exact_only)
    assert set(leaks["kind"]) == {"near_duplicate"}
    assert leaks.height > 10
    assert split_leaks(with_splits(records, config())).is_empty()


def test_split_assignment_is_deterministic_independent_of_row_order_and_seeded():
    records = corpus(3000)
    first = with_splits(records, config())
    assert first.equals(with_splits(records, config()))
    shuffled = records.sample(fraction=1.0, shuffle=True, seed=3)
    assert with_splits(shuffled, config()).sort("record_id").equals(first.sort("record_id"))
    other_seed = with_splits(records, config(split_seed=1))
    assert (other_seed["split"] != first["split"]).sum() > 100


def test_strata_follow_stratify_by():
    records = corpus(3000)
    by_task = with_splits(records, config(stratify_by=["task"]))
    unstratified = with_splits(records, config(stratify_by=[]))
    assert split_leaks(by_task).is_empty() and split_leaks(unstratified).is_empty()
    assert not by_task["split"].equals(unstratified["split"])


def test_a_zero_ratio_split_gets_nothing_and_a_single_split_gets_everything():
    records = corpus(600)
    assert set(assign_splits(records, config(splits={"train": 1.0, "test": 0.0}))) == {"train"}
    assert set(assign_splits(records, config(splits={"test": 0.0, "train": 1.0}))) == {"train"}
    assert set(assign_splits(records, config(splits={"all": 1.0}))) == {"all"}
    assert assign_splits(records.head(0), config()).len() == 0


def test_records_without_a_user_message_are_their_own_group():
    records = conform(
        pl.DataFrame(
            {"record_id": ["x", "y"], "messages": [[s("only system")], [s("only system")]]},
            schema_overrides={"messages": RECORD_SCHEMA["messages"]},
        )
    ).with_columns(pl.Series("split", ["train", "test"]))
    assert split_leaks(records).is_empty()


CYCLE = "and its main stages, with an example from a river basin you know well."


def test_split_leaks_names_exact_and_near_duplicate_prompts_across_splits():
    records = conform(
        pl.DataFrame(
            {
                "record_id": ["e1", "e2", "e3", "n1", "n2", "ok"],
                "messages": [
                    [u("What is the boiling point of water at sea level?"), a("100 C")],
                    [u("  what is the BOILING point of water at sea level? "), a("212 F")],
                    [u("What is the boiling point of water at sea level?"), a("hot")],
                    [u(f"Describe the water cycle {CYCLE}"), a("...")],
                    [u(f"Describe the whole water cycle {CYCLE}"), a("...")],
                    [u("Name a prime number."), a("7")],
                ],
                "split": ["train", "test", "train", "train", "validation", "test"],
            },
            schema_overrides={"messages": RECORD_SCHEMA["messages"]},
        )
    )
    leaks = split_leaks(records)
    assert leaks.select("kind", "record_id", "split", "other_id", "other_split").rows() == [
        ("exact_prompt", "e1", "train", "e2", "test"),
        ("near_duplicate", "n1", "train", "n2", "validation"),
    ]
    assert leaks["similarity"][0] == 1.0
    assert 0.8 <= leaks["similarity"][1] < 1.0
    assert split_leaks(records, threshold=0.99).height == 1


# --------------------------------------------------------------------------------------------------
# Release folders

CREATED = "2025-01-02T03:04:05Z"
KEPT_CONVERSATIONS = [
    "single_turn",
    "with_system",
    "multi_turn",
    "system_multi_turn",
    "unicode",
    "code_block",
    "crlf",
    "tool_after_assistant",
    "ending_with_user",
]


def release_inputs(templates: tuple[str, ...] = ("llama3", "chatml")) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Kept records (with splits) and their renders, as the formatted stage hands them over."""
    records = conform(
        pl.DataFrame(
            {
                "record_id": KEPT_CONVERSATIONS,
                "messages": [CONVERSATIONS[k] for k in KEPT_CONVERSATIONS],
                "task": ["tool" if "tool" in k else "chat" for k in KEPT_CONVERSATIONS],
                "source_file": "chats.jsonl",
                "license": "CC-BY-4.0",
                "origin": "source",
            },
            schema_overrides={"messages": RECORD_SCHEMA["messages"]},
        )
    )
    kept = with_splits(records, config(splits={"train": 0.5, "test": 0.5}, stratify_by=[]))
    turns = explode_turns(kept)
    renders = pl.concat(
        [
            render(turns, TEMPLATES[t]).select("record_id", pl.lit(t).alias("template"), "text")
            for t in templates
        ]
    )
    return kept, renders


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_release_holds_every_format_per_split_and_a_manifest(tmp_path: Path):
    kept, renders = release_inputs()
    manifest = write_release(kept, renders, tmp_path, created=CREATED, config_fingerprint="abc123")
    assert manifest.path == tmp_path / manifest.version
    splits = sorted(set(kept["split"]))
    assert splits == ["test", "train"]
    assert set(manifest.files) == {
        *(f"parquet/{sp}.parquet" for sp in splits),
        *(f"openai/{sp}.jsonl" for sp in splits),
        *(f"openai/{sp}.ids.txt" for sp in splits),
        *(f"sharegpt/{sp}.json" for sp in splits),
        *(f"rendered/{t}/{sp}.jsonl" for t in ("chatml", "llama3") for sp in splits),
    }
    assert manifest.splits == dict(kept.group_by("split").len().sort("split").iter_rows())
    assert (manifest.created, manifest.config_fingerprint) == (CREATED, "abc123")
    assert (manifest.templates, manifest.formats) == (["chatml", "llama3"], list(FORMATS))
    assert ReleaseManifest.load(manifest.path) == manifest
    for name, entry in manifest.files.items():
        assert (manifest.path / name).stat().st_size == entry.bytes
        assert entry.kind == "data"


def test_openai_files_are_exactly_the_chat_finetuning_format_with_ids_alongside(tmp_path: Path):
    kept, renders = release_inputs()
    manifest = write_release(kept, renders, tmp_path, created=CREATED)
    for split in manifest.splits:
        lines = read_jsonl(manifest.path / "openai" / f"{split}.jsonl")
        ids = (manifest.path / "openai" / f"{split}.ids.txt").read_text().splitlines()
        expected = kept.filter((pl.col("split") == split) & (pl.col("record_id") != "tool_after_assistant"))
        expected = expected.sort("record_id")
        assert ids == expected["record_id"].to_list()
        assert all(list(line) == ["messages"] for line in lines)
        assert [line["messages"] for line in lines] == expected["messages"].to_list()
        assert manifest.files[f"openai/{split}.jsonl"].rows == len(lines)
    # A tool message needs a tool_call_id the records do not carry: left out and counted, not mangled.
    tool_split = kept.filter(pl.col("record_id") == "tool_after_assistant")["split"].item()
    assert manifest.openai_skipped == {tool_split: 1}


def test_parquet_files_load_as_a_hugging_face_dataset_would_read_them(tmp_path: Path):
    kept, renders = release_inputs()
    counts = renders.select("record_id", "template", pl.col("text").str.len_chars().alias("tokens"))
    manifest = write_release(kept, renders, tmp_path, created=CREATED, token_counts=counts)
    table = pq.read_table(manifest.path / "parquet" / "train.parquet")
    assert table.column_names == [
        "id",
        "messages",
        "task",
        "source",
        "license",
        "origin",
        "split",
        "text_chatml",
        "text_llama3",
        "tokens_chatml",
        "tokens_llama3",
    ]
    assert str(table.schema.field("messages").type) in {
        "large_list<item: struct<role: large_string, content: large_string>>",
        "list<element: struct<role: string, content: string>>",
        "large_list<element: struct<role: large_string, content: large_string>>",
    }
    rows = pl.from_arrow(table)
    expected = kept.filter(pl.col("split") == "train").sort("record_id")
    assert rows["id"].to_list() == expected["record_id"].to_list()
    assert rows["messages"].to_list() == expected["messages"].to_list()
    assert set(rows["source"]) == {"chats.jsonl"} and set(rows["license"]) == {"CC-BY-4.0"}
    texts = dict(renders.filter(pl.col("template") == "llama3").select("record_id", "text").iter_rows())
    assert rows["text_llama3"].to_list() == [texts[i] for i in rows["id"]]
    assert rows["tokens_llama3"].to_list() == [len(texts[i]) for i in rows["id"]]


def test_sharegpt_files_name_the_speakers_the_sharegpt_way(tmp_path: Path):
    kept, renders = release_inputs()
    manifest = write_release(kept, renders, tmp_path, created=CREATED)
    split = kept.filter(pl.col("record_id") == "tool_after_assistant")["split"].item()
    items = json.loads((manifest.path / "sharegpt" / f"{split}.json").read_text(encoding="utf-8"))
    tool = next(item for item in items if item["id"] == "tool_after_assistant")
    assert [turn["from"] for turn in tool["conversations"]] == [
        "system",
        "human",
        "gpt",
        "observation",
        "gpt",
    ]
    assert [turn["value"] for turn in tool["conversations"]] == [
        m["content"] for m in CONVERSATIONS["tool_after_assistant"]
    ]
    assert [item["id"] for item in items] == sorted(item["id"] for item in items)


def test_rendered_texts_and_loss_masks_are_written_per_template_and_split(tmp_path: Path):
    kept, renders = release_inputs()
    masks = renders.select(
        "record_id",
        "template",
        pl.concat_list(pl.struct(start=pl.lit(0), end=pl.lit(1))).alias("assistant_spans"),
    )
    manifest = write_release(kept, renders, tmp_path, created=CREATED, loss_masks=masks)
    for split in manifest.splits:
        ids = kept.filter(pl.col("split") == split).sort("record_id")["record_id"].to_list()
        rendered = read_jsonl(manifest.path / "rendered" / "chatml" / f"{split}.jsonl")
        assert [r["id"] for r in rendered] == ids
        mask = pl.read_parquet(manifest.path / "loss_masks" / "chatml" / f"{split}.parquet")
        assert mask.columns == ["id", "assistant_spans"]
        assert mask["id"].to_list() == ids


def packing_of(kept: pl.DataFrame, per_sequence: int = 2) -> pl.DataFrame:
    """Assignments shaped like thresher.packing's, each split packed on its own: ``per_sequence``
    records per sequence, and a new sequence wherever the split changes."""
    ordered = kept.sort("split", "record_id")
    opens = (pl.col("split") != pl.col("split").shift(1)).fill_null(True) | (
        pl.int_range(pl.len()) % per_sequence == 0
    )
    return ordered.select(
        pl.lit("llama3").alias("template"),
        "record_id",
        pl.lit(10).alias("tokens"),
        (opens.cum_sum() - 1).alias("sequence"),
        pl.lit(0).alias("position"),
    )


def test_packed_sequences_are_written_per_template_and_split_of_their_records(tmp_path: Path):
    kept, renders = release_inputs()
    packed = packing_of(kept)
    manifest = write_release(kept, renders, tmp_path, created=CREATED, packed=packed)
    with_split = packed.join(kept.select("record_id", "split"), on="record_id", maintain_order="left")
    for split in manifest.splits:
        written = pl.read_parquet(manifest.path / "packed" / "llama3" / f"{split}.parquet")
        expected = with_split.filter(pl.col("split") == split).drop("template", "split")
        assert written.to_dicts() == expected.to_dicts()


def test_a_packed_sequence_mixing_splits_is_refused(tmp_path: Path):
    kept, renders = release_inputs()
    mixed = packing_of(kept).with_columns(pl.lit(0).alias("sequence"))
    with pytest.raises(ValueError, match="more than one split"):
        write_release(kept, renders, tmp_path, created=CREATED, packed=mixed)
    stranger = packing_of(kept).with_columns(pl.lit("nobody").alias("record_id"))
    with pytest.raises(ValueError, match="not in the release"):
        write_release(kept, renders, tmp_path, created=CREATED, packed=stranger)


def test_the_version_is_a_content_hash_and_writing_the_same_content_again_changes_nothing(tmp_path: Path):
    kept, renders = release_inputs()
    first = write_release(kept, renders, tmp_path, created=CREATED)
    assert first.version == f"r-{first.content_sha256[:12]}"
    assert latest_version(tmp_path) == first.version
    before = {p: p.stat().st_mtime_ns for p in first.path.rglob("*")}
    again = write_release(
        kept.sample(fraction=1.0, shuffle=True, seed=1), renders.reverse(), tmp_path, created="2030-01-01"
    )
    assert again == first and again.created == CREATED
    assert {p: p.stat().st_mtime_ns for p in first.path.rglob("*")} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.version, "latest"])


def test_equal_inputs_give_byte_identical_release_folders(tmp_path: Path):
    kept, renders = release_inputs()
    one = write_release(kept, renders, tmp_path / "one", created=CREATED)
    two = write_release(
        kept.reverse(), renders.sample(fraction=1.0, shuffle=True, seed=2), tmp_path / "two", created=CREATED
    )
    assert one.version == two.version
    for name in [*one.files, "manifest.json"]:
        assert (one.path / name).read_bytes() == (two.path / name).read_bytes()


def test_other_content_gets_a_new_version_and_latest_follows_it(tmp_path: Path):
    kept, renders = release_inputs()
    first = write_release(kept, renders, tmp_path, created=CREATED)
    fewer = kept.filter(pl.col("record_id") != "crlf")
    second = write_release(fewer, renders, tmp_path, created=CREATED)
    assert second.version != first.version
    assert latest_version(tmp_path) == second.version
    assert verify_release(first.path) == [] and verify_release(second.path) == []


def test_a_named_version_is_immutable(tmp_path: Path):
    kept, renders = release_inputs()
    write_release(kept, renders, tmp_path, created=CREATED, version="v1")
    assert write_release(kept, renders, tmp_path, created=CREATED, version="v1").version == "v1"
    with pytest.raises(ReleaseConflictError, match="v1 already exists"):
        write_release(kept.head(3), renders, tmp_path, created=CREATED, version="v1")
    assert verify_release(tmp_path / "v1") == []
    with pytest.raises(ValueError, match="plain folder name"):
        write_release(kept, renders, tmp_path, created=CREATED, version="../v2")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".staging")]


def test_attachments_and_the_card_are_listed_but_do_not_change_the_version(tmp_path: Path):
    kept, renders = release_inputs()
    bare = write_release(kept, renders, tmp_path / "bare", created=CREATED)
    seen: list[ReleaseManifest] = []

    def card(manifest: ReleaseManifest) -> str:
        seen.append(manifest)
        return f"# Release {manifest.version}\n"

    dressed = write_release(
        kept,
        renders,
        tmp_path / "dressed",
        created=CREATED,
        extra_files={"figures/lengths.png": b"\x89PNG", "provenance/README.md": tmp_path / "bare" / "latest"},
        readme=card,
    )
    assert dressed.version == bare.version
    assert "figures/lengths.png" in seen[0].files and seen[0].path == dressed.path
    assert (dressed.path / "README.md").read_text() == f"# Release {dressed.version}\n"
    assert {n: f.kind for n, f in dressed.files.items() if f.kind == "attachment"} == {
        "figures/lengths.png": "attachment",
        "provenance/README.md": "attachment",
        "README.md": "attachment",
    }
    assert verify_release(dressed.path) == []
    with pytest.raises(ValueError, match="inside the release"):
        write_release(kept, renders, tmp_path / "x", created=CREATED, extra_files={"../evil": b""})


def test_only_the_configured_formats_are_written(tmp_path: Path):
    kept, renders = release_inputs()
    manifest = write_release(kept, renders, tmp_path, created=CREATED, formats=["parquet"])
    assert {name.split("/")[0] for name in manifest.files} == {"parquet", "rendered"}
    assert manifest.data_files("parquet") == {sp: f"parquet/{sp}.parquet" for sp in manifest.splits}
    with pytest.raises(ValueError, match="unknown release format"):
        write_release(kept, renders, tmp_path, created=CREATED, formats=["csv"])


def test_verify_release_finds_changed_missing_and_unlisted_files(tmp_path: Path):
    kept, renders = release_inputs()
    manifest = write_release(kept, renders, tmp_path, created=CREATED)
    assert verify_release(manifest.path) == []
    target = manifest.path / "openai" / "train.jsonl"
    target.write_bytes(b" " + target.read_bytes()[1:])  # same size, other bytes
    (manifest.path / "sharegpt" / "test.json").unlink()
    (manifest.path / "notes.txt").write_text("hello")
    problems = verify_release(manifest.path)
    assert problems == [
        "openai/train.jsonl: sha256 differs from the manifest",
        "sharegpt/test.json: missing",
        "notes.txt: not in the manifest",
    ]
    (manifest.path / "manifest.json").unlink()
    assert verify_release(manifest.path) == ["manifest.json is missing"]
