"""formatted: the release, assembled from every batch, rendered with chat templates and split."""

import dagster as dg

from assets.run_config import FormatOverrides
from assets.stage_runner import stage_checks, stage_config, stage_run
from assets.verified import verified
from pipelines.resources import ThresherResource
from thresher.formatting import Formatter, export_release
from thresher.sidecar import write_sidecar


@dg.asset(
    deps=[verified],
    group_name="curation",
    kinds={"duckdb", "polars"},
    description="Every verified record of every batch, split train/test and rendered per chat template; "
    "exported as JSONL under THRESHER_HOME/release with its provenance sidecar (release/provenance/).",
)
def formatted(
    context: dg.AssetExecutionContext, config: FormatOverrides, thresher: ThresherResource
) -> dg.MaterializeResult:
    dataset = stage_config(thresher, "formatted", config)
    with stage_run(context, thresher, "formatted", dataset) as run:
        result = Formatter(dataset.format).run(run.read("verified", all_batches=True))
        materialization = run.write(result)
        files = export_release(result.kept, result.tables["renders"], thresher.release_dir)
        files |= write_sidecar(run.con, thresher.release_dir)
    return dg.MaterializeResult(
        metadata={
            **materialization.metadata,
            "release_files": dg.MetadataValue.json({name: str(path) for name, path in files.items()}),
        }
    )


formatted_checks = stage_checks(formatted)
