"""deduped: repetitive records, boilerplate, exact and near duplicates, benchmark contamination and
(optionally) semantic duplicates removed, globally across batches in acceptance order."""

from pathlib import Path

import dagster as dg

from assets.partitions import batches
from assets.raw import raw
from assets.run_config import DedupOverrides
from assets.stage_runner import stage_checks, stage_config, stage_run, table_metadata
from pipelines.resources import ThresherResource
from thresher import store as st
from thresher.decontamination import contamination_report
from thresher.dedup import INDEX_SCHEMA, largest_clusters
from thresher.dedup_stage import DedupStage, PriorIndexes
from thresher.repetition import BOILERPLATE_LINES_SCHEMA


@dg.asset(
    partitions_def=batches,
    deps=[raw],
    group_name="curation",
    kinds={"duckdb", "polars"},
    description="Records that duplicate neither an earlier record of the batch nor any record accepted "
    "in an earlier batch, without intra-document repetition, boilerplate lines or benchmark contamination; "
    "each removed record names the record it duplicates or the benchmark item it overlaps.",
)
def deduped(
    context: dg.AssetExecutionContext, config: DedupOverrides, thresher: ThresherResource
) -> dg.MaterializeResult:
    dataset = stage_config(thresher, "deduped", config)
    with stage_run(context, thresher, "deduped", dataset) as run:
        prior = PriorIndexes(
            dedup=st.read_prior(run.con, "dedup_index", run.batch, INDEX_SCHEMA),
            boilerplate_lines=st.read_prior(
                run.con, "boilerplate_lines", run.batch, BOILERPLATE_LINES_SCHEMA
            ),
            semantic=_prior_semantic(run.con, run.batch) if dataset.dedup.semantic.enabled else None,
            quality_scores=_judge_scores(run.con) if dataset.dedup.keep == "quality" else None,
        )
        stage = DedupStage(dataset.dedup, base_dir=Path(thresher.config_path).parent)
        result = stage.run(run.read("raw"), prior)
        review = {"largest_clusters": table_metadata(largest_clusters(result.tables["dedup_clusters"]))}
        if "contamination" in result.tables or dataset.dedup.decontamination.benchmarks:
            review["contamination_by_benchmark"] = table_metadata(contamination_report(result))
        return run.write(result, extra_metadata=review)


def _judge_scores(con: object) -> object:
    """Each judged record's mean LLM-judge score, from every verified run so far (none yet: None)."""
    if not st.table_exists(con, "judgments"):
        return None
    return st.query(
        con,
        "SELECT record_id, avg(judge_score) AS quality_score FROM judgments "
        "WHERE judge_score IS NOT NULL GROUP BY record_id",
    )


def _prior_semantic(con: object, batch: str) -> object:
    from thresher.semantic import SEMANTIC_INDEX_SCHEMA

    return st.read_prior(con, "semantic_index", batch, SEMANTIC_INDEX_SCHEMA)


deduped_checks = stage_checks(deduped)
