"""deduped: exact and near duplicates removed, globally across batches in acceptance order."""

import dagster as dg

from assets.partitions import batches
from assets.raw import raw
from assets.run_config import DedupOverrides
from assets.stage_runner import stage_checks, stage_config, stage_run
from pipelines.resources import ThresherResource
from thresher import store as st
from thresher.dedup import INDEX_SCHEMA, Deduplicator


@dg.asset(
    partitions_def=batches,
    deps=[raw],
    group_name="curation",
    kinds={"duckdb", "polars"},
    description="Records that duplicate neither an earlier record of the batch nor any record accepted "
    "in an earlier batch; each removed record names the one it duplicates.",
)
def deduped(
    context: dg.AssetExecutionContext, config: DedupOverrides, thresher: ThresherResource
) -> dg.MaterializeResult:
    dataset = stage_config(thresher, "deduped", config)
    with stage_run(context, thresher, "deduped", dataset) as run:
        records = run.read("raw")
        prior = st.read_prior(run.con, "dedup_index", run.batch, INDEX_SCHEMA)
        result = Deduplicator(dataset.dedup).run(records, prior)
        return run.write(result)


deduped_checks = stage_checks(deduped)
