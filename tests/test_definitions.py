"""The Dagster code location loads with the six stages, their checks, the jobs, sensor and schedule."""

import itertools

import dagster as dg

from pipelines.definitions import defs

STAGES = ["raw", "deduped", "cleaned", "synthetic", "verified", "formatted"]


def test_the_six_stages_are_assets_in_one_group() -> None:
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == set(STAGES) | {"inspection", "release"}
    for upstream, downstream in itertools.pairwise(STAGES):
        assert dg.AssetKey(upstream) in graph.get(dg.AssetKey(downstream)).parent_keys


def test_every_stage_has_blocking_conservation_and_expectation_checks() -> None:
    graph = defs.resolve_asset_graph()
    for stage in STAGES:
        checks = {key.name for key in graph.get_check_keys_for_assets({dg.AssetKey(stage)})}
        assert checks == {"conservation", "expectations"}, stage
        for key in graph.get_check_keys_for_assets({dg.AssetKey(stage)}):
            assert graph.get_check_spec(key).blocking, key


def test_per_batch_stages_are_partitioned_and_the_release_is_not() -> None:
    graph = defs.resolve_asset_graph()
    for stage in STAGES[:-1]:
        assert isinstance(graph.get(dg.AssetKey(stage)).partitions_def, dg.DynamicPartitionsDefinition)
    assert graph.get(dg.AssetKey("formatted")).partitions_def is None


def test_jobs_sensor_and_schedule_are_defined() -> None:
    assert defs.resolve_job_def("batch_job").partitions_def is not None
    assert defs.resolve_job_def("release_job").partitions_def is None
    assert defs.resolve_sensor_def("landing_sensor").default_status == dg.DefaultSensorStatus.RUNNING
    assert defs.resolve_schedule_def("daily_release").cron_schedule == "0 3 * * *"


def test_every_stage_parameter_is_overridable_from_the_launchpad() -> None:
    raw = defs.resolve_assets_def("deduped")
    config_fields = raw.op.config_schema.as_field().config_type.fields
    assert {"exact", "normalization", "minhash"} <= set(config_fields)
