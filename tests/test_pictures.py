"""The release's inspection figures: valid, bounded PNGs, the same bytes for the same data, a "no data"
figure where there is nothing to draw, and numbers taken from the store as the stages define them.

The store is the small one `thresher trace` is tested on (tests/test_provenance.py): every library
stage over one JSONL file with a duplicate, a malformed line, PII, a refusal and synthetic records.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest
from matplotlib.image import imread

from assets.inspection import inspection
from pipelines.resources import DEFAULT_CONFIG, ThresherResource
from tests.test_provenance import build_store
from thresher import store as st
from thresher.pictures import (
    DPI,
    FIGURE_TITLES,
    cluster_size_histogram,
    cluster_sizes,
    identify_languages,
    inspection_figures,
    language_mix,
    length_histograms,
    rejection_funnel,
    released_records,
    source_mix,
    task_mix,
    token_histograms,
)
from thresher.provenance import status
from thresher.quality import quality_view

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PNG_BYTES = 150_000  # base64 in the asset's metadata: the UI page must stay light


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pictures")
    build_store(folder)
    return folder


@pytest.fixture
def con(home: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    with st.Store(home / "thresher.duckdb").connect(read_only=True) as connection:
        yield connection


@pytest.fixture(scope="module")
def figures(home: Path) -> dict[str, bytes]:
    with st.Store(home / "thresher.duckdb").connect(read_only=True) as con:
        return inspection_figures(con, token_counts(con))


def token_counts(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """Stand-in token counts (a word count per render), in the frame shape the figure takes."""
    return st.query(
        con,
        "SELECT record_id, template, len(string_split(text, ' ')) AS tokens FROM renders ORDER BY template, record_id",
    )


def png_chunks(png: bytes) -> list[bytes]:
    """The chunk types of a PNG, in file order (each chunk's CRC checked)."""
    assert png.startswith(PNG_SIGNATURE)
    chunks, at = [], len(PNG_SIGNATURE)
    while at < len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        kind, data = png[at + 4 : at + 8], png[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", png[at + 8 + length : at + 12 + length])
        assert zlib.crc32(kind + data) == crc
        chunks.append(kind)
        at += 12 + length
    return chunks


def pixels(png: bytes) -> object:
    return imread(io.BytesIO(png), format="png")


def says_no_data(png: bytes) -> bool:
    """Nearly all white: a title and a "no data" line, no axes or bars (every drawn figure of the
    test store is under 0.98 on average, a "no data" one over 0.995)."""
    return float(pixels(png)[..., :3].mean()) > 0.99


# --- every figure ----------------------------------------------------------------------------------


def test_the_store_gives_one_figure_per_title(figures: dict[str, bytes]) -> None:
    assert list(figures) == list(FIGURE_TITLES)


def test_every_figure_is_a_png_that_decodes_at_the_fixed_size(figures: dict[str, bytes]) -> None:
    for name, png in figures.items():
        assert png.startswith(PNG_SIGNATURE), name
        assert png_chunks(png)[-1] == b"IEND", name
        height, width, channels = pixels(png).shape
        assert (height, channels) == (round(4.5 * DPI), 4), name
        assert width in (8 * DPI, 10 * DPI), name  # the funnel is wider, for its rule notes
        assert not says_no_data(png), name


def test_figures_are_small_enough_to_embed_in_the_asset_page(figures: dict[str, bytes]) -> None:
    for name, png in figures.items():
        assert 5_000 < len(png) < MAX_PNG_BYTES, (name, len(png))


def test_the_same_data_gives_the_same_bytes(home: Path, figures: dict[str, bytes]) -> None:
    with st.Store(home / "thresher.duckdb").connect(read_only=True) as con:
        again = inspection_figures(con, token_counts(con))
    assert again == figures


def test_no_png_carries_a_timestamp_or_the_software_version(figures: dict[str, bytes]) -> None:
    for name, png in figures.items():
        chunks = png_chunks(png)
        assert b"tIME" not in chunks, name
        assert b"Software" not in png, name


def test_different_data_gives_a_different_figure() -> None:
    records = pl.DataFrame({"task": ["chat", "chat", "code"]})
    assert task_mix(records) != task_mix(records.with_columns(pl.lit("math").alias("task")))


# --- empty inputs ----------------------------------------------------------------------------------


def test_an_empty_store_gives_a_no_data_figure_for_everything(tmp_path: Path) -> None:
    with st.Store(tmp_path / "thresher.duckdb").connect() as con:
        empty = inspection_figures(con, None)
    assert list(empty) == list(FIGURE_TITLES)
    for name, png in empty.items():
        assert pixels(png).shape == (round(4.5 * DPI), 8 * DPI, 4), name
        assert says_no_data(png), name


@pytest.mark.parametrize(
    ("draw", "empty"),
    [
        (length_histograms, pl.DataFrame(schema={"prompt_chars": pl.Int64, "response_chars": pl.Int64})),
        (source_mix, pl.DataFrame(schema={"source_file": pl.String, "origin": pl.String})),
        (task_mix, pl.DataFrame(schema={"task": pl.String})),
        (cluster_size_histogram, pl.DataFrame(schema={"cluster_id": pl.String, "kept": pl.Boolean})),
        (token_histograms, None),
        (
            token_histograms,
            pl.DataFrame(schema={"record_id": pl.String, "template": pl.String, "tokens": pl.Int64}),
        ),
        (rejection_funnel, []),
    ],
)
def test_empty_input_draws_no_data_instead_of_failing(draw: object, empty: object) -> None:
    assert says_no_data(draw(empty))


def test_no_language_sample_draws_no_data() -> None:
    assert says_no_data(language_mix(pl.DataFrame(schema={"record_id": pl.String, "language": pl.String}), 0))


# --- the numbers behind the figures ----------------------------------------------------------------


def test_lengths_count_characters_of_user_and_assistant_turns_as_the_expectation_suites_do(con) -> None:
    records = released_records(con)
    view = quality_view(st.read_table(con, "formatted", order_by="record_id"))
    assert records["record_id"].to_list() == view["record_id"].to_list()
    assert records["prompt_chars"].to_list() == view["user_chars"].to_list()
    assert records["response_chars"].to_list() == view["assistant_chars"].to_list()


def test_released_records_are_the_release_with_task_source_and_origin(con) -> None:
    records = released_records(con)
    assert records.height == st.first_row(con, "SELECT count(*) FROM formatted")[0]
    assert set(records["origin"]) == {"source", "synthetic"}
    assert set(records["source_file"]) == {"chats.jsonl"}


def test_the_funnel_reads_stage_counts_and_rules_from_the_store(con) -> None:
    rows = status(con)
    assert [r["stage"] for r in rows] == list(st.STAGES)
    raw = rows[0]
    assert raw["rows_in"] == raw["kept"] + raw["rejected"]
    assert raw["rejected_by_rule"] == {"invalid_json": 1}
    assert rejection_funnel(rows) == rejection_funnel(list(reversed(rows)))  # drawn in stage order


def test_a_cluster_counts_its_kept_record_once_across_batches() -> None:
    clusters = pl.DataFrame(
        {
            "cluster_id": ["a", "a", "a", "a", "b", "b"],
            "record_id": ["a", "a1", "a", "a2", "b", "b1"],
            "batch": ["one", "one", "two", "two", "one", "one"],
            "kept": [True, False, True, False, True, False],
        }
    )
    assert cluster_sizes(clusters).to_dicts() == [
        {"cluster_id": "a", "size": 3},
        {"cluster_id": "b", "size": 2},
    ]


def test_the_stored_clusters_hold_the_exact_duplicate(con) -> None:
    clusters = st.query(con, "SELECT cluster_id, kept FROM dedup_clusters")
    assert cluster_sizes(clusters)["size"].to_list() == [2]


def test_languages_are_identified_as_the_cleaned_stage_reads_text() -> None:
    texts = pl.DataFrame(
        {
            "record_id": ["en", "fr", "de", "code_only", "short"],
            "dialogue": [
                "How do rivers shape the valleys they flow through over long periods of time?",
                "Comment les rivières façonnent-elles les vallées qu'elles traversent au fil du temps ?",
                "Wie formen Flüsse im Laufe der Zeit die Täler, durch die sie fließen?",
                "```python\ndef add(a, b):\n    return a + b\n```",
                "ok",
            ],
        }
    )
    languages = dict(identify_languages(texts).iter_rows())
    assert (languages["en"], languages["fr"], languages["de"]) == ("en", "fr", "de")
    assert languages["code_only"] is None  # code blocks are cut out: nothing left to identify


def test_large_categories_fold_into_other_and_still_draw() -> None:
    records = pl.DataFrame(
        {"source_file": [f"file_{i % 40:02d}.jsonl" for i in range(400)], "origin": ["source"] * 400}
    )
    png = source_mix(records)
    assert pixels(png).shape[:2] == (round(4.5 * DPI), 8 * DPI)


def test_lengths_spanning_decades_with_zeros_are_drawn() -> None:
    lengths = pl.DataFrame({"prompt_chars": [0, 5, 50, 500, 5_000, 50_000], "response_chars": [1] * 6})
    assert length_histograms(lengths).startswith(PNG_SIGNATURE)


def test_templates_without_a_tokenizer_are_left_out_of_the_token_figure() -> None:
    counted = pl.DataFrame({"record_id": ["a", "b"], "template": ["llama3"] * 2, "tokens": [12, 30]})
    uncounted = pl.DataFrame(
        {"record_id": ["a", "b"], "template": ["chatml"] * 2, "tokens": [None, None]}, schema=counted.schema
    )
    assert token_histograms(pl.concat([counted, uncounted])) == token_histograms(counted)
    assert says_no_data(token_histograms(uncounted))


# --- the asset -------------------------------------------------------------------------------------


def test_the_inspection_asset_embeds_every_figure_and_writes_them_for_the_release(home: Path) -> None:
    resource = ThresherResource(home=str(home), config_path=str(DEFAULT_CONFIG))
    result = dg.materialize([inspection], resources={"thresher": resource})
    assert result.success
    (materialization,) = result.asset_materializations_for_node("inspection")
    metadata = materialization.metadata
    folder = home / "figures"
    for name, title in FIGURE_TITLES.items():
        markdown = metadata[name].value
        prefix = f"![{title}](data:image/png;base64,"
        assert markdown.startswith(prefix) and markdown.endswith(")"), name
        png = base64.b64decode(markdown[len(prefix) : -1])
        assert (folder / f"{name}.png").read_bytes() == png
    assert metadata["figures_dir"].value == str(folder)
