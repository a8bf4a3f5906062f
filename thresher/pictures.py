"""Figures a reviewer looks at before shipping a release, as PNG bytes.

Each function takes a Polars frame (one row per record, or the rows of a store table) and returns a
PNG: lengths, token counts per template, source, task and language mix, the rejection funnel from
raw to formatted and the sizes of duplicate clusters. ``inspection_figures`` gathers them all from
the store. Empty input gives a figure that says "no data" instead of an error, so a young store
still gets a complete set.

The same data gives the same bytes: matplotlib's default style (not the user's matplotlibrc), a
fixed size and resolution, and no "Software" text chunk (Agg writes no timestamp). Figures are
drawn on ``matplotlib.figure.Figure`` with the Agg canvas, never through pyplot, so no display,
backend selection or global figure registry is involved.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, ParamSpec

import duckdb
import numpy as np
import polars as pl
from matplotlib import rc_context, style
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, StrMethodFormatter

from thresher.cleaning.langid import confident_languages
from thresher.cleaning.rules import LanguageRule
from thresher.provenance import status
from thresher.store import STAGES, query, table_exists

P = ParamSpec("P")

SIZE_INCHES = (8.0, 4.5)
DPI = 100
# Okabe-Ito: distinguishable with every common colour-vision deficiency.
PALETTE = {
    "primary": "#0072B2",
    "secondary": "#E69F00",
    "light": "#56B4E9",
    "accent": "#009E73",
    "warning": "#D55E00",
    "muted": "#7F7F7F",
}
SERIES_COLORS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
STYLE = {
    "font.size": 9,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "figure.titlesize": 11,
    "figure.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.axisbelow": True,
    "legend.frameon": False,
}
MAX_BARS = 15  # bar charts show this many categories; the rest become one "other" bar
MIN_BAR_SLOTS = 6  # a bar chart is laid out for at least this many bars, so one bar is not a slab
LANGUAGE_SAMPLE = 2000  # released records whose language is identified (a deterministic sample)
TOP_RULES = 3  # rejection rules named per stage in the funnel
NOTE_WIDTH = 52  # characters per line of the funnel's rejection notes
HIST_BINS = 40

# Figure name -> title: the keys of ``inspection_figures`` and the PNG file names.
FIGURE_TITLES = {
    "lengths": "Prompt and response length",
    "tokens": "Tokens per record and template",
    "sources": "Source mix",
    "tasks": "Task mix",
    "languages": "Language mix",
    "funnel": "Rejection funnel",
    "dedup_clusters": "Duplicate cluster sizes",
}


# --- drawing helpers --------------------------------------------------------------------------------


@contextmanager
def _style() -> Iterator[None]:
    """matplotlib's defaults plus ``STYLE``, whatever the machine's matplotlibrc says."""
    with style.context("default"), rc_context(STYLE):
        yield


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _rendered(draw: Callable[P, Figure]) -> Callable[P, bytes]:
    """Turn a function that draws a Figure into one that returns its PNG, drawn in ``_style``."""

    @wraps(draw)
    def render(*args: P.args, **kwargs: P.kwargs) -> bytes:
        with _style():
            return _png(draw(*args, **kwargs))

    return render


def _figure(ncols: int = 1) -> tuple[Figure, list[Axes]]:
    figure = Figure(figsize=SIZE_INCHES, dpi=DPI, layout="constrained")
    return figure, list(np.atleast_1d(figure.subplots(1, ncols)))


def _no_data(title: str, reason: str) -> Figure:
    figure = Figure(figsize=SIZE_INCHES, dpi=DPI)
    figure.suptitle(title)
    figure.text(0.5, 0.5, f"no data\n{reason}", ha="center", va="center", color=PALETTE["muted"], fontsize=12)
    return figure


def _titled(figure: Figure, axes: Axes, title: str, note: str) -> None:
    """``title`` over the figure and, under it in small grey type, ``note``: how the numbers were made."""
    figure.suptitle(title)
    axes.set_title(note, fontsize=8, fontweight="normal", color=PALETTE["muted"])


def _counted(axis: Axis) -> None:
    """Whole-number ticks with thousands separators (``12,500``), for an axis of record counts."""
    axis.set_major_locator(MaxNLocator(integer=True))
    axis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))


def _bins(values: np.ndarray) -> tuple[np.ndarray, bool]:
    """Histogram bin edges for non-negative counts: logarithmic when they span more than a decade and
    a half (lengths usually do; zeros then fall in the first bin), one bin per value when there are
    few values, else even; returns the edges and whether they are logarithmic."""
    low, high = float(values.min()), float(values.max())
    if high / max(low, 1.0) >= 30:
        return np.geomspace(max(low, 1.0), high * 1.001, HIST_BINS + 1), True
    if high - low < HIST_BINS:
        return np.arange(np.floor(low) - 0.5, np.ceil(high) + 1.5), False
    return np.linspace(low, high, HIST_BINS + 1), False


def _histogram(axes: Axes, values: np.ndarray, color: str, quantity: str, *, log_y: bool = False) -> None:
    """A histogram of non-negative counts (``_bins``), labelled ``quantity``; with unit-wide bins
    (a small range) every bar is an exact value and carries its count."""
    edges, logarithmic = _bins(values)
    heights, _, bars = axes.hist(np.clip(values, edges[0], edges[-1]), bins=edges, color=color, log=log_y)
    if logarithmic:
        axes.set_xscale("log")
    elif edges[1] - edges[0] == 1:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlim(edges[0], max(edges[-1], edges[0] + MIN_BAR_SLOTS))
        axes.bar_label(bars, labels=[f"{int(h):,}" if h else "" for h in heights], fontsize=8, padding=2)
    if log_y:
        axes.set_ylim(bottom=0.7)  # bars rise from one, not from the smallest count
    else:
        _counted(axes.yaxis)
    axes.set_xlabel(quantity + (" (log scale)" if logarithmic else ""))


def _mark_quantiles(axes: Axes, values: np.ndarray, color: str) -> None:
    for q, linestyle in ((0.5, "--"), (0.95, ":")):
        x = float(np.quantile(values, q))
        axes.axvline(x, color=color, linestyle=linestyle, linewidth=1)
        axes.annotate(
            f"p{round(q * 100)} {x:,.0f}",
            (x, 1),
            xycoords=("data", "axes fraction"),
            xytext=(3, -10 if q == 0.5 else -22),
            textcoords="offset points",
            fontsize=8,
            color=color,
        )


def _capped(frame: pl.DataFrame, column: str, limit: int = MAX_BARS) -> tuple[pl.DataFrame, list[str]]:
    """``frame`` with ``column`` as text (nulls read "(none)") and, past ``limit`` distinct values,
    all but the ``limit - 1`` most frequent folded into one "other (k)"; and the values in bar order
    (most records first, then by name, "other" last)."""
    value = pl.col(column).cast(pl.String).fill_null("(none)")
    counts = frame.group_by(value).len("records").sort(["records", column], descending=[True, False])
    labels = counts[column].to_list()
    if len(labels) <= limit:
        return frame.with_columns(value), labels
    other = f"other ({len(labels) - limit + 1})"
    labels = [*labels[: limit - 1], other]
    folded = pl.when(value.is_in(labels[:-1])).then(value).otherwise(pl.lit(other)).alias(column)
    return frame.with_columns(folded), labels


def _tally(frame: pl.DataFrame, column: str, labels: list[str], where: pl.Expr | None = None) -> list[int]:
    """Records per label of ``labels`` (optionally only those matching ``where``), in that order."""
    if where is not None:
        frame = frame.filter(where.fill_null(False))
    counts = dict(frame.group_by(column).len().iter_rows())
    return [int(counts.get(label, 0)) for label in labels]


def _bar_labels(axes: Axes, totals: list[int], grand_total: int) -> None:
    """Each bar's count and share at its end."""
    for y, total in enumerate(totals):
        share = 100 * total / grand_total if grand_total else 0
        axes.annotate(
            f"{total:,} ({share:.1f}%)", (total, y), xytext=(3, 0), textcoords="offset points", va="center"
        )


def _horizontal_bars(
    axes: Axes, labels: list[str], stacks: dict[str, list[int]], colors: list[str], grand_total: int
) -> None:
    """Bars top to bottom in the order given, one segment per ``stacks`` entry, totals annotated."""
    left = np.zeros(len(labels))
    for (name, values), color in zip(stacks.items(), colors, strict=False):
        axes.barh(labels, values, left=left, color=color, label=name)
        left += np.asarray(values, dtype=float)
    axes.set_ylim(max(len(labels), MIN_BAR_SLOTS) - 0.5, -0.5)  # top down; few bars stay slim
    axes.set_xlim(0, max(left.max(), 1) * 1.25)  # room for the labels
    _counted(axes.xaxis)
    axes.grid(axis="y", visible=False)
    _bar_labels(axes, [int(v) for v in left], grand_total)


# --- figures ----------------------------------------------------------------------------------------


@_rendered
def length_histograms(lengths: pl.DataFrame) -> Figure:
    """Characters of prompt (user turns) and response (assistant turns) per record: columns
    ``prompt_chars`` and ``response_chars``; log-x when the lengths span decades."""
    title = FIGURE_TITLES["lengths"]
    if lengths.is_empty():
        return _no_data(title, "no released records")
    figure, panels = _figure(ncols=2)
    figure.suptitle(f"{title} ({lengths.height:,} records)")
    for axes, column, label, color in (
        (panels[0], "prompt_chars", "Prompt (user turns)", PALETTE["primary"]),
        (panels[1], "response_chars", "Response (assistant turns)", PALETTE["secondary"]),
    ):
        values = lengths[column].fill_null(0).to_numpy().astype(float)
        _histogram(axes, values, color, "characters")
        _mark_quantiles(axes, values, PALETTE["muted"])
        axes.set_title(label, fontsize=10)
        axes.set_ylabel("records")
    return figure


@_rendered
def token_histograms(token_counts: pl.DataFrame | None) -> Figure:
    """Tokens per rendered record, one histogram per template: columns ``record_id``, ``template``,
    ``tokens`` (null: the template has no tokenizer) and optionally ``approximate`` (counted with
    another model's tokenizer), as ``thresher.tokens.token_counts`` gives them; None when the
    release has no token counts."""
    title = FIGURE_TITLES["tokens"]
    counted = None if token_counts is None else token_counts.filter(pl.col("tokens").is_not_null())
    if counted is None or counted.is_empty():
        return _no_data(title, "the release has no token counts")
    if "approximate" not in counted.columns:
        counted = counted.with_columns(pl.lit(False).alias("approximate"))
    figure, (axes,) = _figure()
    edges, logarithmic = _bins(counted["tokens"].to_numpy().astype(float))
    per_template = counted.group_by("template").agg("tokens", pl.col("approximate").fill_null(False).any())
    for (template, tokens, approximate), color in zip(
        per_template.sort("template").iter_rows(), SERIES_COLORS * per_template.height, strict=False
    ):
        values = np.asarray(tokens, dtype=float)
        axes.hist(
            np.clip(values, edges[0], edges[-1]),
            bins=edges,
            histtype="step",
            linewidth=1.6,
            color=color,
            label=f"{template}{' (approximate)' if approximate else ''}: "
            f"median {np.median(values):,.0f}, max {values.max():,.0f}",
        )
    if logarithmic:
        axes.set_xscale("log")
    figure.suptitle(f"{title} ({counted['record_id'].n_unique():,} records)")
    axes.set_xlabel("tokens" + (" (log scale)" if logarithmic else ""))
    axes.set_ylabel("records")
    _counted(axes.yaxis)
    axes.legend(loc="upper right")
    return figure


@_rendered
def source_mix(records: pl.DataFrame) -> Figure:
    """Records per source file, split into source and synthetic records: columns ``source_file``
    and ``origin``, one row per record."""
    title = FIGURE_TITLES["sources"]
    if records.is_empty():
        return _no_data(title, "no released records")
    capped, labels = _capped(records, "source_file")
    synthetic = pl.col("origin") == "synthetic"
    figure, (axes,) = _figure()
    _horizontal_bars(
        axes,
        labels,
        {
            "source": _tally(capped, "source_file", labels, ~synthetic),
            "synthetic": _tally(capped, "source_file", labels, synthetic),
        },
        [PALETTE["primary"], PALETTE["secondary"]],
        records.height,
    )
    figure.suptitle(f"{title} ({records.height:,} records)")
    axes.set_xlabel("records (a synthetic record counts under its seed's file)")
    axes.legend(loc="lower right", bbox_to_anchor=(1, 1), ncols=2)  # above the bars, clear of their labels
    return figure


@_rendered
def task_mix(records: pl.DataFrame) -> Figure:
    """Records per task kind (chat, code, math, tool): column ``task``, one row per record."""
    title = FIGURE_TITLES["tasks"]
    if records.is_empty():
        return _no_data(title, "no released records")
    capped, labels = _capped(records, "task")
    figure, (axes,) = _figure()
    _horizontal_bars(
        axes, labels, {"records": _tally(capped, "task", labels)}, [PALETTE["accent"]], records.height
    )
    figure.suptitle(f"{title} ({records.height:,} records)")
    axes.set_xlabel("records")
    return figure


@_rendered
def language_mix(languages: pl.DataFrame, population: int) -> Figure:
    """Identified language per sampled record (column ``language``; null: not identified), out of
    ``population`` records the sample was drawn from."""
    title = FIGURE_TITLES["languages"]
    if languages.is_empty():
        return _no_data(title, "no released prose records to identify")
    labelled = languages.with_columns(pl.col("language").fill_null("unidentified (p < 0.5)"))
    capped, labels = _capped(labelled, "language")
    figure, (axes,) = _figure()
    _horizontal_bars(
        axes, labels, {"records": _tally(capped, "language", labels)}, [PALETTE["light"]], languages.height
    )
    _titled(
        figure,
        axes,
        f"{title} ({languages.height:,} of {population:,} non-code records sampled)",
        "fastText lid.176 on user + assistant text without code blocks, as the cleaned stage reads it;\n"
        "identified here: the store keeps no language per record",
    )
    axes.set_xlabel("sampled records")
    return figure


@_rendered
def rejection_funnel(stages: list[dict[str, Any]]) -> Figure:
    """Records in, created and kept per stage, raw to formatted, with each stage's most frequent
    rejection rules: the rows of ``thresher.provenance.status``."""
    title = FIGURE_TITLES["funnel"]
    if not stages:
        return _no_data(title, "no stage has run")
    order = {stage: i for i, stage in enumerate(STAGES)}
    stages = sorted(stages, key=lambda s: order.get(s["stage"], len(STAGES)))
    labels = [s["stage"] for s in stages]
    figure = Figure(figsize=(10.0, 4.5), dpi=DPI)
    axes = figure.add_axes((0.11, 0.14, 0.48, 0.74))
    y = np.arange(len(stages))
    height = 0.38
    rows_in = np.array([s["rows_in"] for s in stages], dtype=float)
    created = np.array([s["created"] for s in stages], dtype=float)
    kept = np.array([s["kept"] for s in stages], dtype=float)
    axes.barh(y - height / 2, rows_in, height, color=PALETTE["light"], label="in")
    axes.barh(y - height / 2, created, height, left=rows_in, color=PALETTE["secondary"], label="created")
    axes.barh(y + height / 2, kept, height, color=PALETTE["primary"], label="kept")
    top = max(float((rows_in + created).max()), 1.0)
    for i, stage in enumerate(stages):
        entered = int(rows_in[i] + created[i])
        axes.annotate(
            f"{entered:,}",
            (entered, i - height / 2),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
        axes.annotate(
            f"{int(kept[i]):,}",
            (kept[i], i + height / 2),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
        axes.text(
            1.03,
            i,
            _rejection_note(stage),
            transform=axes.get_yaxis_transform(),
            va="center",
            fontsize=8,
            color=PALETTE["warning"] if stage["rejected"] else PALETTE["muted"],
        )
    axes.set_yticks(y, labels)
    axes.invert_yaxis()
    axes.set_xlim(0, top * 1.15)
    _counted(axes.xaxis)
    axes.grid(axis="y", visible=False)
    axes.set_xlabel("records")
    axes.legend(loc="lower left", bbox_to_anchor=(0, 1), ncols=3, fontsize=8, borderaxespad=0.2)
    figure.suptitle(f"{title}: records in and kept per stage, raw to release")
    axes.text(
        1.03,
        1.01,
        "rejected (top rules)",
        transform=axes.transAxes,
        va="bottom",
        fontsize=9,
        fontweight="bold",
        color=PALETTE["warning"],
    )
    return figure


def _rejection_note(stage: dict[str, Any]) -> str:
    rejected = int(stage["rejected"])
    if not rejected:
        return "none rejected"
    rules = sorted(stage["rejected_by_rule"].items(), key=lambda item: (-item[1], item[0]))
    named = [f"{rule}\N{NO-BREAK SPACE}{count:,}" for rule, count in rules[:TOP_RULES]]
    if len(rules) > TOP_RULES:
        named.append(f"+{len(rules) - TOP_RULES} more rules")
    return f"−{rejected:,} rejected\n" + textwrap.fill(", ".join(named), NOTE_WIDTH, max_lines=2)


@_rendered
def cluster_size_histogram(clusters: pl.DataFrame) -> Figure:
    """How many records each duplicate cluster held (the kept one included), from the rows of the
    ``dedup_clusters`` table (``cluster_id``, ``kept``); log-y, since pairs dominate."""
    title = FIGURE_TITLES["dedup_clusters"]
    if clusters.is_empty():
        return _no_data(title, "no duplicates were removed")
    sizes = cluster_sizes(clusters)["size"].to_numpy().astype(float)
    figure, (axes,) = _figure()
    _histogram(axes, sizes, PALETTE["primary"], "records per cluster, kept one included", log_y=True)
    removed = int(sizes.sum() - sizes.size)
    figure.suptitle(
        f"{title} ({sizes.size:,} clusters, {removed:,} records removed, largest {int(sizes.max()):,})"
    )
    axes.set_ylabel("clusters (log scale)")
    return figure


# --- from the store ---------------------------------------------------------------------------------

_RECORDS_SCHEMA = {
    "record_id": pl.String,
    "task": pl.String,
    "source_file": pl.String,
    "origin": pl.String,
    "prompt_chars": pl.Int64,
    "response_chars": pl.Int64,
}


def released_records(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """One row per released record: ``record_id``, ``task``, ``source_file``, ``origin`` and the
    characters of its user turns (``prompt_chars``) and assistant turns (``response_chars``), counted
    in DuckDB so the texts never leave it; empty before the first release."""
    if not table_exists(con, "formatted"):
        return pl.DataFrame(schema=_RECORDS_SCHEMA)

    def chars(role: str) -> str:
        return (
            f"coalesce(list_sum([coalesce(length(m.content), 0) FOR m IN messages IF m.role = '{role}']), 0)"
        )

    return query(
        con,
        f"SELECT record_id, task, source_file, origin, {chars('user')} AS prompt_chars, "
        f"{chars('assistant')} AS response_chars FROM formatted ORDER BY record_id",
    ).cast(_RECORDS_SCHEMA)


def cluster_sizes(clusters: pl.DataFrame) -> pl.DataFrame:
    """``cluster_id`` and ``size`` (records, the kept one included) of every duplicate cluster, from
    rows of the ``dedup_clusters`` table; ordered by id."""
    # A cluster can gain members in several batches, and each batch writes the kept record's row again:
    # count the removed members and add the kept one once.
    return (
        clusters.group_by("cluster_id")
        .agg(((~pl.col("kept")).sum() + 1).cast(pl.Int64).alias("size"))
        .sort("cluster_id")
    )


def identify_languages(texts: pl.DataFrame) -> pl.DataFrame:
    """``record_id`` and ``language`` (null when fastText is not confident) of records given as
    ``record_id``, ``dialogue`` (user and assistant turns joined), read the way the cleaned stage's
    ``LanguageRule`` reads them: fenced code cut out, whitespace collapsed, the first characters only."""
    text = LanguageRule.text_to_identify(pl.col("dialogue").fill_null(""))
    prepared = texts.select("record_id", text.alias("text"))
    labels = (
        confident_languages(prepared["text"].to_list(), LanguageRule.min_probability) if texts.height else []
    )
    return prepared.select("record_id", pl.Series("language", labels, dtype=pl.String))


def _language_sample(con: duckdb.DuckDBPyConnection, size: int) -> pl.DataFrame:
    """Up to ``size`` released non-code records with their dialogue, the same ones for the same
    release (ordered by the sha256 of their ids, which spreads them over batches and sources)."""
    if not table_exists(con, "formatted"):
        return pl.DataFrame(schema={"record_id": pl.String, "dialogue": pl.String})
    return query(
        con,
        "SELECT record_id, array_to_string([m.content FOR m IN messages IF m.role IN ('user', 'assistant')], ' ') "
        "AS dialogue FROM formatted WHERE task IS DISTINCT FROM 'code' ORDER BY sha256(record_id), record_id LIMIT ?",
        [size],
    )


def inspection_figures(con: duckdb.DuckDBPyConnection, token_counts: pl.DataFrame | None) -> dict[str, bytes]:
    """Every figure of ``FIGURE_TITLES`` as PNG bytes, from the release (``formatted``), the stage
    counts and ledger (``provenance.status``) and the ``dedup_clusters`` table; ``token_counts`` as
    ``token_histograms`` takes them."""
    records = released_records(con)
    # The store keeps no language per record (the cleaned stage ledgers only the records it drops), so
    # a sample of the release is identified here, as the cleaned stage identifies it.
    languages = identify_languages(_language_sample(con, LANGUAGE_SAMPLE))
    prose = records.filter(pl.col("task").fill_null("") != "code").height
    clusters = (
        query(con, "SELECT cluster_id, kept FROM dedup_clusters ORDER BY cluster_id, record_id")
        if table_exists(con, "dedup_clusters")
        else pl.DataFrame(schema={"cluster_id": pl.String, "kept": pl.Boolean})
    )
    return {
        "lengths": length_histograms(records),
        "tokens": token_histograms(token_counts),
        "sources": source_mix(records),
        "tasks": task_mix(records),
        "languages": language_mix(languages, prose),
        "funnel": rejection_funnel(status(con)),
        "dedup_clusters": cluster_size_histogram(clusters),
    }
