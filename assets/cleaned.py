"""cleaned: formatting junk stripped, PII redacted with typed placeholders, low-quality rows dropped."""

import dagster as dg

from assets.deduped import deduped
from assets.partitions import batches
from assets.run_config import CleanOverrides
from assets.stage_runner import stage_checks, stage_config, stage_run
from pipelines.resources import ThresherResource
from thresher.cleaning import Cleaner


@dg.asset(
    partitions_def=batches,
    deps=[deduped],
    group_name="curation",
    kinds={"duckdb", "polars"},
    description="Records with HTML/formatting junk removed and PII redacted; low-quality rows dropped by named rules.",
)
def cleaned(
    context: dg.AssetExecutionContext, config: CleanOverrides, thresher: ThresherResource
) -> dg.MaterializeResult:
    dataset = stage_config(thresher, "cleaned", config)
    with stage_run(context, thresher, "cleaned", dataset) as run:
        result = Cleaner(dataset.clean).run(run.read("deduped"))
        return run.write(result)


cleaned_checks = stage_checks(cleaned)
