"""formatted: the release's records, assembled from every batch, rendered with chat templates, counted in
tokens and split without leakage (the `release` asset writes them out)."""

import dagster as dg

from assets.run_config import FormatOverrides
from assets.stage_runner import stage_checks, stage_config, stage_run
from assets.verified import verified
from pipelines.resources import ThresherResource
from thresher.formatting import Formatter


@dg.asset(
    deps=[verified],
    group_name="curation",
    kinds={"duckdb", "polars"},
    description="Every verified record of every batch, split train/validation/test without a shared or "
    "near-duplicate prompt across splits, rendered per chat template with token counts and loss masks.",
)
def formatted(
    context: dg.AssetExecutionContext, config: FormatOverrides, thresher: ThresherResource
) -> dg.MaterializeResult:
    dataset = stage_config(thresher, "formatted", config)
    with stage_run(context, thresher, "formatted", dataset) as run:
        return run.write(Formatter(dataset.format).run(run.read("verified", all_batches=True)))


formatted_checks = stage_checks(formatted)
