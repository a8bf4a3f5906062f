"""inspection: figures of the release for a reviewer, shown on the asset page and kept beside the release."""

import base64

import dagster as dg
import duckdb
import polars as pl

from assets.formatted import formatted
from pipelines.resources import ThresherResource
from thresher import store as st
from thresher.pictures import FIGURE_TITLES, inspection_figures

# Under THRESHER_HOME; the release copies them into its own folder.
FIGURES_DIR = "figures"


@dg.asset(
    deps=[formatted],
    group_name="curation",
    kinds={"duckdb", "matplotlib"},
    description="Figures of the release: prompt/response lengths, tokens per template, source, task and "
    "language mix, the rejection funnel from raw to formatted and duplicate cluster sizes. Shown here "
    "and written as PNGs to THRESHER_HOME/figures/ for the release and its dataset card.",
)
def inspection(context: dg.AssetExecutionContext, thresher: ThresherResource) -> dg.MaterializeResult:
    with thresher.store().connect(read_only=True) as con:
        figures = inspection_figures(con, _token_counts(con))
    folder = thresher.home_dir / FIGURES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for name, png in figures.items():
        (folder / f"{name}.png").write_bytes(png)
    context.log.info(f"inspection: wrote {len(figures)} figures to {folder}")
    return dg.MaterializeResult(
        metadata={
            **{
                name: dg.MetadataValue.md(
                    f"![{FIGURE_TITLES[name]}](data:image/png;base64,{base64.b64encode(png).decode()})"
                )
                for name, png in figures.items()
            },
            "figures_dir": dg.MetadataValue.path(str(folder)),
        }
    )


def _token_counts(con: duckdb.DuckDBPyConnection) -> pl.DataFrame | None:
    """The release's token counts (the ``token_counts`` table: ``thresher.tokens.token_counts`` per
    render), or None while the formatted stage stores none; the figure then says so."""
    if not st.table_exists(con, "token_counts"):
        return None
    return st.query(con, "SELECT * FROM token_counts ORDER BY template, record_id")
