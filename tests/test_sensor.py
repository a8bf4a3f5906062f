"""The landing sensor turns new files into batch partitions and runs, once each."""

from pathlib import Path

import dagster as dg

from assets.partitions import batches
from pipelines.resources import DEFAULT_CONFIG, ThresherResource
from pipelines.sensors import landing_sensor


def test_new_landed_files_become_partitions_and_runs_once(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "a.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    (landing / ".partial").write_text("still being copied")
    resource = ThresherResource(home=str(tmp_path), config_path=str(DEFAULT_CONFIG))
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"thresher": resource})
        result = landing_sensor(context)
        assert [r.partition_key for r in result.run_requests] == [r.run_key for r in result.run_requests]
        (key,) = [r.partition_key for r in result.run_requests]
        assert key.startswith("a.jsonl-")
        instance.add_dynamic_partitions(batches.name, result.dynamic_partitions_requests[0].partition_keys)

        again = landing_sensor(dg.build_sensor_context(instance=instance, resources={"thresher": resource}))
        assert not again.run_requests
