"""Orchestration: Dagster definitions, resources, jobs, schedules, sensors and the `thresher` CLI."""
