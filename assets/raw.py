"""raw: the landed file of a batch, parsed into canonical records by its format's adapter."""

import dagster as dg

from assets.partitions import batches
from assets.run_config import IngestOverrides
from assets.stage_runner import stage_checks, stage_config, stage_run
from pipelines.resources import ThresherResource
from thresher import landing
from thresher import store as st
from thresher.ingest import read_file


@dg.asset(
    partitions_def=batches,
    group_name="curation",
    kinds={"duckdb", "polars"},
    description="Canonical records of one landed file; unparseable input goes to the ledger with file and line.",
)
def raw(
    context: dg.AssetExecutionContext, config: IngestOverrides, thresher: ThresherResource
) -> dg.MaterializeResult:
    dataset = stage_config(thresher, "raw", config)
    landed = landing.resolve(thresher.home_dir / dataset.landing_dir, context.partition_key)
    with stage_run(context, thresher, "raw", dataset) as run:
        st.register_batch(run.con, run.batch, landed.path.name, landed.sha256, str(landed.path))
        result = read_file(landed.path, run.batch, dataset.ingest)
        return run.write(result)


raw_checks = stage_checks(raw)
