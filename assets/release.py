"""release: the versioned, immutable release folder a team hands to a trainer and an auditor."""

import tempfile
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl

from assets.inspection import FIGURES_DIR, inspection
from assets.stage_runner import rule_descriptions, table_metadata
from pipelines.resources import ThresherResource
from thresher import store as st
from thresher.card import card_facts, render_card
from thresher.release import split_leaks, verify_release, write_release
from thresher.sidecar import write_sidecar


@dg.asset(
    deps=[inspection],
    group_name="curation",
    kinds={"parquet", "json"},
    description="THRESHER_HOME/release/<version>/: OpenAI finetuning JSONL, Parquet for Hugging Face datasets, "
    "ShareGPT JSON and rendered texts per split, token counts and loss masks, the provenance sidecar, the "
    "figures, the dataset card (README.md) and a manifest with every file's sha256. The version is the "
    "content hash: an unchanged release is not written again.",
)
def release(context: dg.AssetExecutionContext, thresher: ThresherResource) -> dg.MaterializeResult:
    dataset = thresher.dataset_config()
    fmt = dataset.format
    with thresher.store().connect(read_only=True) as con, tempfile.TemporaryDirectory() as tmp:
        kept = st.query(con, "SELECT * FROM formatted ORDER BY record_id")
        renders = st.query(con, "SELECT record_id, template, text FROM renders ORDER BY record_id, template")
        counts = _side_table(con, "token_counts")
        leaks = split_leaks(kept, fmt.near_duplicate_threshold)
        figures = sorted((thresher.home_dir / FIGURES_DIR).glob("*.png"))
        extra: dict[str, Path | bytes] = {f"figures/{png.name}": png for png in figures}
        extra |= {f"provenance/{path.name}": path for path in write_sidecar(con, Path(tmp)).values()}
        manifest = write_release(
            kept,
            renders,
            thresher.release_dir,
            created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            formats=fmt.release.formats,
            config_fingerprint=dataset.fingerprint(),
            token_counts=counts,
            loss_masks=_side_table(con, "loss_masks") if fmt.release.loss_masks else None,
            packed=_side_table(con, "packing") if fmt.packing.enabled else None,
            extra_files=extra,
            readme=(
                lambda m: render_card(
                    card_facts(
                        con,
                        m,
                        dataset,
                        token_counts=counts,
                        leaks=leaks,
                        figures={png.stem: f"figures/{png.name}" for png in figures},
                        rule_descriptions=rule_descriptions(),
                    )
                )
            )
            if fmt.release.card
            else None,
        )
    context.log.info(f"release {manifest.version} at {manifest.path}")
    card = manifest.path / "README.md"
    return dg.MaterializeResult(
        metadata={
            "version": dg.MetadataValue.text(manifest.version),
            "path": dg.MetadataValue.path(str(manifest.path)),
            "records_per_split": dg.MetadataValue.json(manifest.splits),
            "files": table_metadata(
                pl.DataFrame(
                    [
                        {"file": name, "rows": f.rows, "bytes": f.bytes, "sha256": f.sha256[:12]}
                        for name, f in sorted(manifest.files.items())
                    ],
                    schema={"file": pl.String, "rows": pl.Int64, "bytes": pl.Int64, "sha256": pl.String},
                )
            ),
            "split_leaks": dg.MetadataValue.int(leaks.height),
            **({"card": dg.MetadataValue.md(card.read_text(encoding="utf-8"))} if card.exists() else {}),
        }
    )


def _side_table(con: duckdb.DuckDBPyConnection, name: str) -> pl.DataFrame | None:
    """A side table of the formatted stage, without the store's own ``batch`` column."""
    if not st.table_exists(con, name):
        return None
    return st.query(con, f"SELECT * EXCLUDE (batch) FROM {name}")


@dg.asset_check(
    asset=release,
    blocking=True,
    description="Every file matches the manifest, and no exact or near-duplicate prompt crosses splits.",
)
def release_integrity(thresher: ThresherResource) -> dg.AssetCheckResult:
    from thresher.release import latest_version

    version = latest_version(thresher.release_dir)
    problems = verify_release(thresher.release_dir / version) if version else ["no release written"]
    with thresher.store().connect(read_only=True) as con:
        kept = st.query(con, "SELECT record_id, messages, split FROM formatted")
    leaks = split_leaks(kept, thresher.dataset_config().format.near_duplicate_threshold)
    return dg.AssetCheckResult(
        passed=not problems and leaks.is_empty(),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "version": dg.MetadataValue.text(version or ""),
            "file_problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none"),
            "split_leaks": dg.MetadataValue.int(leaks.height),
            "leak_examples": dg.MetadataValue.json(
                leaks.head(20).select("kind", "record_id", "split", "other_id", "other_split").to_dicts()
            ),
        },
    )
