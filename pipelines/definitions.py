"""The Dagster code location: the six curation stages with their checks, the inspection figures and the
release, jobs, sensor and schedule."""

import dagster as dg

from assets import cleaned, deduped, formatted, inspection, raw, release, synthetic, verified
from pipelines.jobs import batch_job, release_job
from pipelines.resources import resources_for_environment
from pipelines.schedules import daily_release
from pipelines.sensors import landing_sensor

STAGE_MODULES = [raw, deduped, cleaned, synthetic, verified, formatted]


def build_definitions(resources: dict[str, object]) -> dg.Definitions:
    """Everything Thresher defines, bound to the given resources."""
    return dg.Definitions(
        assets=dg.load_assets_from_modules([*STAGE_MODULES, inspection, release]),
        asset_checks=dg.load_asset_checks_from_modules([*STAGE_MODULES, release]),
        jobs=[batch_job, release_job],
        sensors=[landing_sensor],
        schedules=[daily_release],
        resources=resources,
    )


defs = build_definitions(resources_for_environment())
