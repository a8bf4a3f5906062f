"""verified: code run against its unit tests in a sandbox, math answers checked against the reference."""

import dagster as dg

from assets.partitions import batches
from assets.run_config import VerifyOverrides
from assets.stage_runner import stage_checks, stage_config, stage_run
from assets.synthetic import synthetic
from pipelines.resources import ThresherResource
from thresher.verification import Verifier


@dg.asset(
    partitions_def=batches,
    deps=[synthetic],
    group_name="curation",
    kinds={"duckdb", "python"},
    description="Records whose code passes its tests and whose math answer matches; each carries a verdict.",
)
def verified(
    context: dg.AssetExecutionContext, config: VerifyOverrides, thresher: ThresherResource
) -> dg.MaterializeResult:
    dataset = stage_config(thresher, "verified", config)
    with stage_run(context, thresher, "verified", dataset) as run:
        result = Verifier(dataset.verify).run(run.read("synthetic"))
        return run.write(result)


verified_checks = stage_checks(verified)
