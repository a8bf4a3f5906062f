"""synthetic: the cleaned records plus new ones made from them by synthesis recipes."""

import dagster as dg

from assets.cleaned import cleaned
from assets.partitions import batches
from assets.run_config import SynthesisOverrides
from assets.stage_runner import stage_checks, stage_config, stage_run
from pipelines.resources import ThresherResource
from thresher.synthesis import Synthesizer


@dg.asset(
    partitions_def=batches,
    deps=[cleaned],
    group_name="curation",
    kinds={"duckdb", "polars"},
    description="Cleaned records passed through, plus synthetic records each linked to its seeds and recipe.",
)
def synthetic(
    context: dg.AssetExecutionContext, config: SynthesisOverrides, thresher: ThresherResource
) -> dg.MaterializeResult:
    dataset = stage_config(thresher, "synthetic", config)
    with stage_run(context, thresher, "synthetic", dataset) as run:
        result = Synthesizer(dataset.synthesis).run(run.read("cleaned"), run.batch)
        return run.write(result)


synthetic_checks = stage_checks(synthetic)
