"""The curation stages as Dagster software-defined assets, one module per stage, each with its checks."""
