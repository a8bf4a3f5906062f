"""synthetic: the cleaned records plus new ones made from them by synthesis recipes."""

import dagster as dg
import polars as pl

from assets.cleaned import cleaned
from assets.partitions import batches
from assets.run_config import SynthesisOverrides
from assets.stage_runner import (
    StageRun,
    llm_usage_metadata,
    notices_metadata,
    stage_checks,
    stage_config,
    stage_run,
    table_metadata,
)
from pipelines.resources import LLMResource, ThresherResource
from thresher import store as st
from thresher.synthesis import Synthesizer, diversity


@dg.asset(
    partitions_def=batches,
    deps=[cleaned],
    group_name="curation",
    kinds={"duckdb", "polars"},
    description="Cleaned records passed through, plus synthetic records (rule-based, and LLM-made when an "
    "endpoint is configured) each linked to its seeds, recipe, template hash and model.",
)
def synthetic(
    context: dg.AssetExecutionContext,
    config: SynthesisOverrides,
    thresher: ThresherResource,
    llm: LLMResource,
) -> dg.MaterializeResult:
    dataset = stage_config(thresher, "synthetic", config)
    with stage_run(context, thresher, "synthetic", dataset) as run:
        client = llm.client(dataset.synthesis.llm, run.con, context.log.info)
        synthesizer = Synthesizer(dataset.synthesis, llm=client, dedup=dataset.dedup)
        result = synthesizer.run(run.read("cleaned"), run.batch, earlier=_earlier_batches(run))
        for notice in synthesizer.notices:
            context.log.warning(notice)
        created = result.kept.filter(pl.col("origin") == "synthetic")
        seeds = result.kept.filter(pl.col("origin") == "source")
        metadata = {
            "synthetic_share": dg.MetadataValue.float(round(created.height / max(1, result.kept.height), 4)),
            "diversity": table_metadata(
                pl.DataFrame(
                    [
                        {"records": name, **diversity(frame)}
                        for name, frame in (("seeds", seeds), ("synthetic", created))
                    ],
                    strict=False,
                )
            ),
            "notices": notices_metadata(synthesizer.notices),
        }
        if client is not None:
            client.close()
            metadata.update(llm_usage_metadata(client))
        return run.write(result, metadata)


def _earlier_batches(run: StageRun) -> pl.DataFrame | None:
    """Synthetic records of the batches accepted before this one (acceptance order, as dedup uses):
    re-running any batch then gives what it gave before, whatever the order of materializations."""
    earlier = st.earlier_batches(run.con, run.batch)
    if not earlier or not st.table_exists(run.con, "synthetic"):
        return None
    return st.query(
        run.con,
        "SELECT messages FROM synthetic WHERE origin = 'synthetic' AND list_contains(?, batch) "
        "ORDER BY batch, record_id",
        [earlier],
    )


synthetic_checks = stage_checks(synthetic)
