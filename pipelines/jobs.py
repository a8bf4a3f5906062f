"""Jobs: a batch through every per-batch stage, and the release over all batches.

Both run their steps in one process: DuckDB allows a single writer per file, and the instance's
run queue (see ``instance.DAGSTER_YAML``) lets one run at a time touch it.
"""

import dagster as dg

from assets.partitions import batches

BATCH_STAGES = ["raw", "deduped", "cleaned", "synthetic", "verified"]

batch_job = dg.define_asset_job(
    "batch_job",
    selection=dg.AssetSelection.assets(*BATCH_STAGES),
    partitions_def=batches,
    executor_def=dg.in_process_executor,
    description="Take one landed file (a batch partition) from raw to verified, with every stage's checks.",
)

release_job = dg.define_asset_job(
    "release_job",
    selection=dg.AssetSelection.assets("formatted", "inspection", "release"),
    executor_def=dg.in_process_executor,
    description="Assemble, format and split the release from every verified batch, draw its inspection "
    "figures and write the versioned release folder with its dataset card.",
)
