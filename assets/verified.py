"""verified: code run against its unit tests in an isolated sandbox (and revised by the LLM when it
fails), math answers checked, structured answers validated, records scored by an LLM judge."""

import dagster as dg
import polars as pl

from assets.partitions import batches
from assets.run_config import VerifyOverrides
from assets.stage_runner import (
    StageRun,
    llm_usage_metadata,
    notices_metadata,
    stage_checks,
    stage_config,
    stage_run,
    table_metadata,
)
from assets.synthetic import synthetic
from pipelines.resources import LLMResource, ThresherResource
from thresher import store as st
from thresher.verification import Verifier, pass_rates
from thresher.verification.judges import agreement_summary
from thresher.verification.structure import seed_instructions


@dg.asset(
    partitions_def=batches,
    deps=[synthetic],
    group_name="curation",
    kinds={"duckdb", "python"},
    description="Records whose code passes its tests in the sandbox, whose math answer matches, whose tool "
    "calls and requested formats validate and (with a judge) that score well; each carries a verdict.",
)
def verified(
    context: dg.AssetExecutionContext,
    config: VerifyOverrides,
    thresher: ThresherResource,
    llm: LLMResource,
) -> dg.MaterializeResult:
    dataset = stage_config(thresher, "verified", config)
    with stage_run(context, thresher, "verified", dataset) as run:
        verify = dataset.verify
        wants_llm = verify.judge.enabled or verify.revision.max_rounds > 0
        client = llm.client(dataset.synthesis.llm, run.con, context.log.info) if wants_llm else None
        verifier = Verifier(verify, llm=client)
        for notice in verifier.notices:
            context.log.warning(notice)
        records = run.read("synthetic")
        result = verifier.run(records, seeds=_seeds_outside(run, records))
        isolation = verifier.code.sandbox.isolation
        metadata = {
            "pass_rates": table_metadata(pass_rates(result)),
            "sandbox": dg.MetadataValue.text(isolation.describe()),
            "sandbox_notes": notices_metadata(list(isolation.notes)),
            "notices": notices_metadata(verifier.notices),
        }
        judged = result.tables["judgments"]
        if judged.height:
            summary = agreement_summary(judged)
            metadata["judge_agreement"] = dg.MetadataValue.json({k: round(v, 4) for k, v in summary.items()})
            if "judge_mean_score" in summary:
                metadata["judge_mean_score"] = dg.MetadataValue.float(round(summary["judge_mean_score"], 3))
        if client is not None:
            client.close()
            metadata.update(llm_usage_metadata(client))
        return run.write(result, metadata)


def _seeds_outside(run: StageRun, records: pl.DataFrame) -> pl.DataFrame | None:
    """First user turns of seeds that this batch's synthetic records name but that live in other
    batches (the paraphrase check compares a paraphrase with its seed)."""
    in_batch = records["record_id"].implode()
    outside = records.select(pl.col("parent_ids").explode().drop_nulls().unique().sort())
    outside = outside.filter(~pl.col("parent_ids").is_in(in_batch))["parent_ids"].to_list()
    if not outside:
        return None
    return seed_instructions(
        st.query(
            run.con,
            "SELECT record_id, messages FROM synthetic WHERE record_id IN (SELECT unnest(?))",
            [outside],
        )
    )


verified_checks = stage_checks(verified)
