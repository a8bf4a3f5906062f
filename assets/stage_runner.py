"""What every stage asset does around its curation call, written once.

An asset body reads its input, calls the curation library and hands the ``StageResult`` to
``StageRun.write``; this module opens the store, emits the OpenLineage START/COMPLETE/FAIL events,
writes kept rows, ledger and side tables, and turns the counts into materialization metadata.
It also builds each stage's two checks: conservation (recounted from the stored tables) and the
stage's Great Expectations suite. Both are blocking: an ERROR stops the batch going downstream.
"""

import importlib
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl

from pipelines.resources import REPO_ROOT, ThresherResource
from thresher import store as st
from thresher.cleaning import redact_preview
from thresher.config import DatasetConfig
from thresher.lineage import CheckRun, DatasetRef
from thresher.lineage import StageRun as LineageRun
from thresher.llm import LLMClient
from thresher.quality import SuiteOutcome, check_view, failing_rows, quality_view, validate
from thresher.stage import StageResult

# Partitioned asset checks are a preview feature of Dagster 1.13; they are what lets each batch's
# checks run with the batch and block only that batch downstream.
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

EXPECTATIONS_DIR = REPO_ROOT / "expectations"
CONFIG_SECTION = {
    "raw": "ingest",
    "deduped": "dedup",
    "cleaned": "clean",
    "synthetic": "synthesis",
    "verified": "verify",
    "formatted": "format",
}
SAMPLE_ROWS = 5
EXAMPLES_PER_RULE = 3
PREVIEW_CHARS = 160
# Modules that publish ``RULE_DESCRIPTIONS`` (ledger rule name -> one sentence for reviewers); a
# stage's rules get a description in the UI by adding its module here.
RULE_DESCRIPTION_MODULES = ("thresher.cleaning.rules", "thresher.verification.stage", "thresher.formatting")
ASSETS_DIR = Path(__file__).resolve().parent
# Columns a stage rewrites (the rest pass through unchanged and get IDENTITY lineage automatically).
REWRITTEN_COLUMNS = {
    "cleaned": {"messages": "MASKED"},  # formatting junk stripped, PII replaced by placeholders
    "formatted": {"messages": "TRANSFORMATION"},  # a default system prompt may be prepended
}


def _nominal_time(run: dg.DagsterRun) -> datetime | None:
    """The schedule's tick for scheduled runs (OpenLineage nominalTime); None for other runs."""
    tick = run.tags.get("dagster/scheduled_execution_time")
    return datetime.fromisoformat(tick) if tick else None


@contextmanager
def check_lineage(
    context: dg.AssetCheckExecutionContext,
    thresher: ThresherResource,
    stage: str,
    check: str,
    dataset: DatasetRef,
) -> Iterator[CheckRun]:
    """The OpenLineage run of one asset-check evaluation; set ``.assertions`` on the handle."""
    run = context.op_execution_context.run
    with thresher.lineage.check_run(
        f"thresher.{stage}.{check}",
        parent_run_id=run.run_id,
        parent_job_name=run.job_name,
        dataset=dataset,
        nominal_time=_nominal_time(run),
        source_path=ASSETS_DIR / f"{stage}.py",
    ) as lineage:
        yield lineage


def stage_config(thresher: ThresherResource, stage: str, overrides: dg.Config) -> DatasetConfig:
    """The dataset configuration with this run's launchpad overrides merged into the stage's section."""
    return thresher.dataset_config().with_overrides(
        CONFIG_SECTION[stage], overrides.model_dump(exclude_none=True)
    )


def batch_of(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> str:
    return context.partition_key if context.has_partition_key else st.RELEASE_BATCH


@dataclass
class StageRun:
    """One stage over one batch, with an open store connection."""

    context: dg.AssetExecutionContext
    thresher: ThresherResource
    stage: str
    config: DatasetConfig
    con: duckdb.DuckDBPyConnection
    batch: str
    lineage: LineageRun
    inputs: list[DatasetRef] = field(default_factory=list)
    # Every frame read, so that rejected records can be previewed next to their ledger rows.
    frames: list[pl.DataFrame] = field(default_factory=list)

    def read(self, table: str, *, all_batches: bool = False) -> pl.DataFrame:
        """Records of ``table`` for this batch (or every batch), in a stable order."""
        if not st.table_exists(self.con, table):
            raise LookupError(f"table {table} does not exist yet: materialize {table} first")
        where = {} if all_batches else {"batch": self.batch}
        frame = st.read_table(self.con, table, where, order_by="batch, source_line, record_id")
        self.lineage.inputs.append(DatasetRef.from_frame(table, frame, metrics=True))
        self.frames.append(frame)
        return frame

    def write(
        self, result: StageResult, extra_metadata: dict[str, dg.MetadataValue] | None = None
    ) -> dg.MaterializeResult:
        section = CONFIG_SECTION[self.stage]
        section_config = self.config.model_dump(mode="json")[section]
        written = st.write_stage(
            self.con,
            self.stage,
            self.batch,
            self.context.run_id,
            result,
            config=section_config,
            config_fingerprint=self.config.fingerprint(),
        )
        kept = result.kept
        self.lineage.outputs = [
            DatasetRef.from_frame(self.stage, kept, version=True),
            DatasetRef.from_frame("rejections", result.rejected),
            *(DatasetRef.from_frame(name, table) for name, table in result.tables.items()),
        ]
        self.lineage.rejections_by_rule = written.rejected_by_rule
        if self.stage in REWRITTEN_COLUMNS:
            upstream = st.UPSTREAM[self.stage]
            self.lineage.declare_column_lineage(
                self.stage, {c: [(upstream, c, kind)] for c, kind in REWRITTEN_COLUMNS[self.stage].items()}
            )
        self.context.log.info(
            f"{self.stage}[{self.batch}]: {written.rows_in} in, {written.created} created, "
            f"{written.kept} kept, {written.rejected} rejected {written.rejected_by_rule}"
        )
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": dg.MetadataValue.int(kept.height),
                "dagster/column_schema": _table_schema(kept),
                "rows_in": dg.MetadataValue.int(written.rows_in),
                "created": dg.MetadataValue.int(written.created),
                "kept": dg.MetadataValue.int(written.kept),
                "rejected": dg.MetadataValue.int(written.rejected),
                "rejections_by_rule": _rejections_table(result.rejected),
                "rejection_examples": _rejection_examples(result.rejected, [*self.frames, kept]),
                "sample": _sample_table(kept),
                "counters": dg.MetadataValue.json(result.counters),
                "config": dg.MetadataValue.json(section_config),
                "config_fingerprint": dg.MetadataValue.text(self.config.fingerprint()),
                "lineage_run_id": dg.MetadataValue.text(self.lineage.run_id),
                **(extra_metadata or {}),
            }
        )


@contextmanager
def stage_run(
    context: dg.AssetExecutionContext, thresher: ThresherResource, stage: str, config: DatasetConfig
) -> Iterator[StageRun]:
    """Open the store and the lineage run for one stage materialization."""
    batch = batch_of(context)
    with (
        thresher.store().connect() as con,
        thresher.lineage.stage_run(
            f"thresher.{stage}",
            parent_run_id=context.run.run_id,
            parent_job_name=context.run.job_name,
            inputs=[],
            nominal_time=_nominal_time(context.run),
            source_path=ASSETS_DIR / f"{stage}.py",
        ) as lineage,
    ):
        yield StageRun(context, thresher, stage, config, con, batch, lineage)


# --- metadata ---------------------------------------------------------------------------------------


def _table_schema(frame: pl.DataFrame) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(name, str(dtype)) for name, dtype in frame.schema.items()])


def rule_descriptions() -> dict[str, str]:
    """Ledger rule name -> description, from every module in ``RULE_DESCRIPTION_MODULES``."""
    descriptions: dict[str, str] = {}
    for module in RULE_DESCRIPTION_MODULES:
        descriptions |= importlib.import_module(module).RULE_DESCRIPTIONS
    return descriptions


def _rejections_table(rejected: pl.DataFrame) -> dg.MetadataValue:
    """Per rule: count, what the rule means, and the first record ids (for ``thresher trace``)."""
    descriptions = rule_descriptions()
    by_rule = (
        rejected.group_by("rule")
        .agg(
            pl.len().alias("count"),
            pl.col("record_id").sort_by("source_line", "record_id").head(3).str.join(", ").alias("examples"),
        )
        .sort("count", "rule", descending=[True, False])
        .with_columns(pl.col("rule").replace_strict(descriptions, default="").alias("description"))
        .select("rule", "count", "description", "examples")
    )
    return dg.MetadataValue.table(
        records=[dg.TableRecord(row) for row in by_rule.to_dicts()],
        schema=dg.TableSchema(
            columns=[
                dg.TableColumn("rule", "string"),
                dg.TableColumn("count", "int"),
                dg.TableColumn("description", "string"),
                dg.TableColumn("examples", "string", description="first record ids; `thresher trace ID`"),
            ]
        ),
    )


def rejection_examples(rejected: pl.DataFrame, sources: list[pl.DataFrame]) -> pl.DataFrame:
    """The first ``EXAMPLES_PER_RULE`` ledger rows of every rule (most frequent rule first), each
    with its detail and PII-redacted previews of its prompt and response.

    The text comes from ``sources`` (the frames the stage read, and what it kept or created); a
    record found in none (a raw line that never parsed) gets empty previews. Metadata is shown to
    anyone who opens the UI, hence ``redact_preview``.
    """
    columns = ["rule", "record_id", "source", "detail", "prompt_preview", "response_preview"]
    if rejected.is_empty():
        return pl.DataFrame(schema=dict.fromkeys(columns, pl.String))
    order = rejected.group_by("rule").len().sort("len", "rule", descending=[True, False])
    examples = (
        rejected.sort("source_line", "record_id")
        .group_by("rule", maintain_order=True)
        .head(EXAMPLES_PER_RULE)
        .join(order.with_row_index("_rank"), on="rule")
        .sort("_rank", "source_line", "record_id")
    )
    with_messages = [s.select("record_id", "messages") for s in sources if "messages" in s.columns]
    texts = (
        pl.concat(with_messages, how="vertical_relaxed").unique(
            "record_id", keep="first", maintain_order=True
        )
        if with_messages
        else pl.DataFrame(schema={"record_id": pl.String, "messages": pl.List(pl.Struct({}))})
    )

    def turn(role: str) -> pl.Expr:
        content = pl.element().struct.field("content")
        picked = pl.col("messages").list.eval(content.filter(pl.element().struct.field("role") == role))
        text = picked.list.last() if role == "assistant" else picked.list.join("\n")
        return redact_preview(text.fill_null(""), PREVIEW_CHARS)

    joined = examples.join(
        texts.filter(pl.col("record_id").is_in(examples["record_id"].implode())), on="record_id", how="left"
    )
    has_text = pl.col("messages").is_not_null()
    return joined.select(
        "rule",
        "record_id",
        pl.concat_str(["source_file", pl.lit(":"), pl.col("source_line").cast(pl.String)]).alias("source"),
        "detail",
        pl.when(has_text).then(turn("user")).otherwise(pl.lit("")).alias("prompt_preview"),
        pl.when(has_text).then(turn("assistant")).otherwise(pl.lit("")).alias("response_preview"),
    )


def _rejection_examples(rejected: pl.DataFrame, sources: list[pl.DataFrame]) -> dg.MetadataValue:
    return table_metadata(rejection_examples(rejected, sources))


def _sample_table(kept: pl.DataFrame) -> dg.MetadataValue:
    """A few records with PII-redacted previews: metadata is shown to anyone who opens the UI."""
    sample = quality_view(kept.head(SAMPLE_ROWS)).select(
        "record_id",
        "task",
        pl.concat_str(["source_file", pl.lit(":"), pl.col("source_line").cast(pl.String)]).alias("source"),
        redact_preview(pl.col("content")).alias("preview"),
    )
    return table_metadata(sample)


# --- checks -----------------------------------------------------------------------------------------


def stage_checks(asset: dg.AssetsDefinition) -> list[dg.AssetChecksDefinition]:
    """The conservation and expectation-suite checks of one stage asset."""
    stage = asset.key.to_user_string()
    partitions_def = asset.partitions_def
    suite_path = EXPECTATIONS_DIR / f"{stage}.json"

    @dg.asset_check(
        asset=asset,
        name="conservation",
        blocking=True,
        partitions_def=partitions_def,
        description="Every record that entered the stage is kept or in the rejection ledger "
        "(rows in + created = kept + rejected), recounted from the stored tables.",
    )
    def conservation_check(
        context: dg.AssetCheckExecutionContext, thresher: ThresherResource
    ) -> dg.AssetCheckResult:
        batch = batch_of(context)
        with (
            thresher.store().connect() as con,
            check_lineage(context, thresher, stage, "conservation", DatasetRef(stage)) as lineage,
        ):
            balance = st.conservation(con, stage, batch)
            lineage.assertions = [("conservation", balance.holds, None)]
            metadata = {
                "rows_in": balance.rows_in,
                "created": balance.created,
                "kept": balance.kept,
                "rejected": balance.rejected,
                "balance": balance.describe(),
            }
            st.record_check(
                con,
                stage=stage,
                batch=batch,
                check_name="conservation",
                passed=balance.holds,
                severity="ERROR",
                description=balance.describe(),
                metadata=metadata,
                run_id=context.op_execution_context.run_id,
            )
        return dg.AssetCheckResult(
            passed=balance.holds, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata
        )

    @dg.asset_check(
        asset=asset,
        name="expectations",
        blocking=True,
        partitions_def=partitions_def,
        description=f"Great Expectations suite expectations/{suite_path.name}: critical expectations "
        "are ERROR (block downstream), warning expectations are WARN.",
    )
    def expectations_check(
        context: dg.AssetCheckExecutionContext, thresher: ThresherResource
    ) -> dg.AssetCheckResult:
        batch = batch_of(context)
        with (
            thresher.store().connect() as con,
            check_lineage(context, thresher, stage, "expectations", DatasetRef(stage)) as lineage,
        ):
            view = check_view(con, stage, batch)
            outcome = validate(view, suite_path)
            lineage.dataset = DatasetRef.from_frame(stage, view, metrics=True)
            lineage.assertions = [(o.expectation, o.success, o.column, o.severity) for o in outcome.outcomes]
            rows = failing_rows(view, outcome)
            severity = (
                dg.AssetCheckSeverity.ERROR if outcome.critical_failures else dg.AssetCheckSeverity.WARN
            )
            failures = [
                {
                    "expectation": o.expectation,
                    "column": o.column or "",
                    "severity": o.severity,
                    "unexpected_count": o.unexpected_count,
                    "notes": o.notes,
                }
                for o in outcome.failures
            ]
            metadata = {
                "suite": outcome.suite,
                "evaluated_expectations": len(outcome.outcomes),
                "failed_expectations": len(failures),
                "failures": failures,
                "failing_rows": rows.to_dicts(),
            }
            st.record_check(
                con,
                stage=stage,
                batch=batch,
                check_name="expectations",
                passed=outcome.success,
                severity=severity.value,
                description=f"{len(outcome.outcomes) - len(failures)}/{len(outcome.outcomes)} expectations met",
                metadata=metadata,
                run_id=context.op_execution_context.run_id,
            )
        return dg.AssetCheckResult(
            passed=outcome.success,
            severity=severity,
            description=_failure_summary(outcome) if failures else None,
            metadata={
                "suite": dg.MetadataValue.text(outcome.suite),
                "evaluated_expectations": dg.MetadataValue.int(len(outcome.outcomes)),
                "failures": _failures_table(failures),
                "failing_rows": table_metadata(rows),
            },
        )

    return [conservation_check, expectations_check]


def _failure_summary(outcome: SuiteOutcome) -> str:
    broken = "; ".join(f"{o.notes or o.expectation} ({o.unexpected_count} rows)" for o in outcome.failures)
    return f"{len(outcome.failures)} of {len(outcome.outcomes)} expectations failed: {broken}"


def llm_usage_metadata(client: LLMClient) -> dict[str, dg.MetadataValue]:
    """The endpoint and the run's LLM usage as numbers, so the asset page plots tokens, cost and cache
    hits across materializations."""
    metadata = {"llm_endpoint": dg.MetadataValue.text(client.generator)}
    for key, value in client.usage.as_metadata().items():
        metadata[key] = (
            dg.MetadataValue.bool(value)
            if isinstance(value, bool)
            else dg.MetadataValue.int(value)
            if isinstance(value, int)
            else dg.MetadataValue.float(value)
        )
    return metadata


def notices_metadata(notices: list[str]) -> dg.MetadataValue:
    """What a stage skipped and how to turn it on, as a markdown list ("none" when nothing was skipped)."""
    return dg.MetadataValue.md("\n".join(f"- {n}" for n in notices) or "none")


def table_metadata(frame: pl.DataFrame) -> dg.MetadataValue:
    """A small frame as a metadata table (rendered inline in the UI)."""
    kinds = {pl.Int64: "int", pl.Int32: "int", pl.UInt32: "int", pl.Float64: "float", pl.Boolean: "bool"}
    return dg.MetadataValue.table(
        records=[dg.TableRecord(row) for row in frame.to_dicts()],
        schema=dg.TableSchema(
            columns=[dg.TableColumn(c, kinds.get(t, "string")) for c, t in frame.schema.items()]
        ),
    )


def _failures_table(failures: list[dict[str, object]]) -> dg.MetadataValue:
    columns = ["expectation", "column", "severity", "unexpected_count", "notes"]
    return dg.MetadataValue.table(
        records=[dg.TableRecord(f) for f in failures],
        schema=dg.TableSchema(
            columns=[dg.TableColumn(c, "int" if c == "unexpected_count" else "string") for c in columns]
        ),
    )
