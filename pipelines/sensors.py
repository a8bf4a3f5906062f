"""The landing sensor: each new file in the landing folder becomes a batch partition and a run."""

import dagster as dg

from assets.partitions import batches
from pipelines.jobs import batch_job
from pipelines.resources import ThresherResource
from thresher import landing


@dg.sensor(
    job=batch_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds a batch partition for every new file in the landing folder and runs it through the stages.",
)
def landing_sensor(context: dg.SensorEvaluationContext, thresher: ThresherResource) -> dg.SensorResult:
    known = set(context.instance.get_dynamic_partitions(batches.name))
    new = [f for f in landing.scan(thresher.landing_dir()) if f.batch not in known]
    if not new:
        return dg.SensorResult(skip_reason="no new files in the landing folder")
    keys = [f.batch for f in new]
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=key, partition_key=key) for key in keys],
        dynamic_partitions_requests=[batches.build_add_request(keys)],
    )
