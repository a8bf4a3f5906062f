"""The daily release refresh."""

import dagster as dg

from pipelines.jobs import release_job

daily_release = dg.ScheduleDefinition(
    name="daily_release",
    job=release_job,
    cron_schedule="0 3 * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Rebuild the release from every verified batch once a day.",
)
