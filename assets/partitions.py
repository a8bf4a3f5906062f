"""Ingestion batches: one dynamic partition per landed file."""

import dagster as dg

batches = dg.DynamicPartitionsDefinition(name="batches")
