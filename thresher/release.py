"""The release: stratified splits without prompt leakage, and immutable, versioned release folders.

**Splits.** Records whose normalized first user prompt is equal (``prompt_group_key``) or nearly equal
(MinHash-LSH over character shingles, confirmed by true Jaccard, with the dedup stage's machinery)
are joined into components, and a component goes to one split as a whole: no prompt is trained on
and evaluated on. Components are ordered by a SHA-256 of (seed, smallest prompt key of the component)
and, per stratum (task kind, source file), cut at the cumulative split ratios, so every stratum keeps
the ratios up to one component at each cut. ``split_leaks`` checks the result from scratch.

**Release folders.** ``write_release`` writes ``<out_root>/<version>/``: OpenAI chat finetuning JSONL,
Parquet for Hugging Face ``datasets``, ShareGPT JSON, the rendered texts per template, loss masks and
packed sequences when given, attachments (provenance, figures, the dataset card) and ``manifest.json``
with every file's sha256, size and rows. The default version is a hash of the data files' hashes,
so the same data gives the same version: writing it again is a no-op, and a version's files never
change (writing other data under an existing version raises). ``<out_root>/latest`` names the version
written last. ``verify_release`` re-hashes a folder against its manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import accumulate
from pathlib import Path, PurePosixPath

import numpy as np
import polars as pl

from thresher.config import FormatConfig, MinHashConfig, NormalizationConfig
from thresher.dedup import component_heads, near_duplicate_pairs, normalize
from thresher.formatting import prompt_group_key
from thresher.hashing import sha256_hex
from thresher.records import MESSAGE

# --------------------------------------------------------------------------------------------------
# Splits

# Prompts are short, and one word changes as many word 5-grams (the dedup stage's default) as the
# prompt has up to five words around it: one word inserted into an 18-word prompt leaves a word 5-gram
# Jaccard of 0.71, a character 5-gram Jaccard of 0.92. Below about 50 characters no single edit stays
# above 0.8 either way; such prompts only group when they are equal once normalized.
PROMPT_SHINGLES = MinHashConfig(shingle="char", ngram=5)

SPLIT_LEAK_SCHEMA: dict[str, pl.DataType] = {
    # "exact_prompt": one normalized prompt in two splits; "near_duplicate": two near-duplicate prompts.
    "kind": pl.String,
    # The smallest record id of the prompt in ``split``, and of the other prompt in ``other_split``.
    "record_id": pl.String,
    "split": pl.String,
    "other_id": pl.String,
    "other_split": pl.String,
    # True Jaccard of the two prompts' shingle sets (1.0 for an exact prompt).
    "similarity": pl.Float64,
}


def prompt_groups(records: pl.DataFrame) -> pl.DataFrame:
    """Per record (input order): ``record_id``, ``prompt`` (the normalized first user message, null
    without one) and ``group``. Records sharing a prompt share a group; a record without a user
    message is a group of its own."""
    return records.select("record_id", prompt_group_key(pl.col("messages")).alias("prompt")).with_columns(
        pl.when(pl.col("prompt").is_not_null())
        .then(pl.concat_str([pl.lit("p:"), pl.col("prompt")]))
        .otherwise(pl.concat_str([pl.lit("id:"), pl.col("record_id")]))
        .alias("group")
    )


def _distinct_prompts(groups: pl.DataFrame) -> pl.DataFrame:
    """The distinct prompts (``group``, ``prompt``), sorted by group key: row i is node i of the graph."""
    return (
        groups.filter(pl.col("prompt").is_not_null()).select("group", "prompt").unique("group").sort("group")
    )


def near_duplicate_prompts(prompts: pl.Series, threshold: float) -> pl.DataFrame:
    """Confirmed pairs (``i`` < ``j`` positions in ``prompts``, true ``jaccard`` >= ``threshold``) of
    prompts that are near duplicates once normalized like the dedup stage normalizes text."""
    texts = normalize(prompts, NormalizationConfig())
    return near_duplicate_pairs(texts, PROMPT_SHINGLES.model_copy(update={"threshold": threshold}))


def prompt_components(records: pl.DataFrame, threshold: float) -> pl.DataFrame:
    """Per record (input order): ``record_id``, ``group`` and ``component``, the smallest group key
    linked to the record's group through equal or near-duplicate prompts (Jaccard >= ``threshold``)."""
    groups = prompt_groups(records)
    distinct = _distinct_prompts(groups)
    pairs = near_duplicate_prompts(distinct["prompt"], threshold)
    # Nodes are sorted by key, so the lowest-preference node of a component is its smallest key.
    head = component_heads(distinct.height, pairs.select("i", "j").to_numpy(), np.arange(distinct.height))
    component = distinct.select("group", distinct["group"].gather(head).alias("component"))
    return groups.join(component, on="group", how="left", maintain_order="left").select(
        "record_id", "group", pl.coalesce("component", "group").alias("component")
    )


def _stratum(records: pl.DataFrame, stratify_by: Sequence[str]) -> pl.Expr:
    """One string per record naming its stratum (task kind and/or source file)."""
    columns = {"task": "task", "source": "source_file"}
    parts = [
        pl.col(columns[name]).cast(pl.String).fill_null("")
        if columns[name] in records.columns
        else pl.lit("")
        for name in stratify_by
    ]
    return pl.concat_str(parts, separator="\x1f") if parts else pl.lit("")


def _bucket(position: pl.Expr, ratios: Mapping[str, float]) -> pl.Expr:
    """The split whose cumulative ratio interval holds ``position`` (in [0, 1]); the last split takes
    the rest, so float rounding in the cumulative sum cannot leave a record without a split."""
    names = list(ratios)
    bounds = list(accumulate(ratios.values()))
    bucket: pl.Expr = pl.lit(names[-1])
    for name, bound in reversed(list(zip(names[:-1], bounds[:-1], strict=True))):
        bucket = pl.when(position < bound).then(pl.lit(name)).otherwise(bucket)
    return bucket


def assign_splits(records: pl.DataFrame, config: FormatConfig) -> pl.Series:
    """The split of every record (input order), deterministic and independent of row order.

    Needs ``record_id`` and ``messages``; ``task`` and ``source_file`` when ``config.stratify_by``
    names them. Every prompt component (see ``prompt_components``) lands in one split. Within a
    stratum, components are ordered by SHA-256 of (``split_seed``, component key) and laid end to end
    by size; a component goes to the split whose cumulative ratio interval holds its midpoint. Each
    split of a stratum so gets its ratio of the records, give or take one component at each cut. A
    component whose records span strata counts in the stratum holding most of them.

    Adding records moves only components near a cut, unlike a pure hash threshold (which never moves
    anything but cannot balance small strata).
    """
    if records.is_empty():
        return pl.Series("split", [], dtype=pl.String)
    frame = prompt_components(records, config.near_duplicate_threshold).with_columns(
        # with_columns broadcasts the literal stratum of an unstratified split; select would not.
        records.with_columns(_stratum(records, config.stratify_by).alias("_stratum"))["_stratum"].alias(
            "stratum"
        )
    )
    # Each component's stratum: the one most of its records are in (ties: the smallest name).
    components = (
        frame.group_by("component", "stratum")
        .len()
        .group_by("component")
        .agg(
            pl.col("len").sum().alias("size"),
            pl.col("stratum").filter(pl.col("len") == pl.col("len").max()).min(),
        )
    )
    seeded = components.select(pl.concat_str([pl.lit(f"{config.split_seed}\x1f"), pl.col("component")]))
    components = components.with_columns(sha256_hex(seeded.to_series()).alias("hash"))
    total = pl.col("size").sum().over("stratum")
    end = pl.col("size").cum_sum().over("stratum")
    placed = components.sort("stratum", "hash", "component").with_columns(
        _bucket((end - pl.col("size") / 2) / total, config.splits).alias("split")
    )
    return frame.join(placed.select("component", "split"), on="component", how="left", maintain_order="left")[
        "split"
    ]


def split_leaks(
    records: pl.DataFrame, threshold: float = FormatConfig().near_duplicate_threshold
) -> pl.DataFrame:
    """Every way a prompt reaches two splits (``SPLIT_LEAK_SCHEMA``); empty means no leakage.

    Recomputed from ``record_id``, ``messages`` and ``split`` alone (a null split counts as a split of
    its own), without trusting how the splits were made: one row per exact prompt group and pair of
    its splits, and one per near-duplicate prompt pair (Jaccard >= ``threshold``) and pair of splits.
    Each row names the smallest record id on each side, for ``thresher trace``.
    """
    groups = prompt_groups(records).with_columns(records["split"].cast(pl.String).alias("split"))
    representatives = groups.group_by("group", "split").agg(pl.col("record_id").min())
    exact = (
        representatives.join(representatives, on="group", suffix="_other")
        .filter(
            pl.col("split").ne_missing(pl.col("split_other"))
            & (pl.col("record_id") < pl.col("record_id_other"))
        )
        .select(
            pl.lit("exact_prompt").alias("kind"),
            "record_id",
            "split",
            pl.col("record_id_other").alias("other_id"),
            pl.col("split_other").alias("other_split"),
            pl.lit(1.0).alias("similarity"),
        )
    )
    distinct = _distinct_prompts(groups)
    pairs = near_duplicate_prompts(distinct["prompt"], threshold)
    keyed = pairs.select(
        distinct["group"].gather(pairs["i"]).alias("group"),
        distinct["group"].gather(pairs["j"]).alias("group_other"),
        pl.col("jaccard").alias("similarity"),
    )
    near = (
        keyed.join(representatives, on="group")
        .join(representatives, left_on="group_other", right_on="group", suffix="_other")
        .filter(pl.col("split").ne_missing(pl.col("split_other")))
        .select(
            pl.lit("near_duplicate").alias("kind"),
            "record_id",
            "split",
            pl.col("record_id_other").alias("other_id"),
            pl.col("split_other").alias("other_split"),
            "similarity",
        )
    )
    return pl.concat([exact, near]).cast(SPLIT_LEAK_SCHEMA).sort("kind", "record_id", "other_id")


# --------------------------------------------------------------------------------------------------
# Release folders

FORMATS = ("openai_jsonl", "parquet", "sharegpt")
MANIFEST = "manifest.json"
README = "README.md"
LATEST = "latest"

# OpenAI's chat finetuning format takes these roles as bare role + content; a tool message needs a
# ``tool_call_id`` our records do not carry, so such records are left out of ``openai/`` (counted).
OPENAI_ROLES = ("system", "user", "assistant")
# ShareGPT speaker names (LLaMA-Factory's convention for tool results: "observation").
SHAREGPT_FROM = {"system": "system", "user": "human", "assistant": "gpt", "tool": "observation"}
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def data_path(fmt: str, split: str) -> str:
    """Where a format's file for ``split`` sits in a release (relative path)."""
    folder, suffix = {
        "parquet": ("parquet", ".parquet"),
        "openai_jsonl": ("openai", ".jsonl"),
        "sharegpt": ("sharegpt", ".json"),
    }[fmt]
    return f"{folder}/{split}{suffix}"


class ReleaseConflictError(RuntimeError):
    """A release version that already exists holds other data: versions are immutable."""


@dataclass(frozen=True)
class ReleaseFile:
    """One file of a release, as the manifest records it."""

    sha256: str
    bytes: int
    # Records (JSONL lines, Parquet rows, JSON array items); null for attachments.
    rows: int | None
    # "data" (derived from the records; decides the version) or "attachment" (card, figures, provenance).
    kind: str = "data"


@dataclass(frozen=True)
class ReleaseManifest:
    """What ``manifest.json`` says about a release folder (``path``, not serialized)."""

    version: str
    created: str
    # SHA-256 over the sorted (path, sha256) of the data files: equal data, equal content hash.
    content_sha256: str
    config_fingerprint: str | None
    templates: list[str]
    formats: list[str]
    # Records per split.
    splits: dict[str, int]
    # Records per split left out of openai/ (roles the format cannot express); only non-zero counts.
    openai_skipped: dict[str, int]
    files: dict[str, ReleaseFile]
    path: Path = field(default=Path(), compare=False)

    def to_json(self) -> str:
        data = {
            "version": self.version,
            "created": self.created,
            "content_sha256": self.content_sha256,
            "config_fingerprint": self.config_fingerprint,
            "templates": self.templates,
            "formats": self.formats,
            "splits": self.splits,
            "openai_skipped": self.openai_skipped,
            "files": {
                name: {"sha256": f.sha256, "bytes": f.bytes, "rows": f.rows, "kind": f.kind}
                for name, f in sorted(self.files.items())
            },
        }
        return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def load(cls, folder: Path | str) -> ReleaseManifest:
        """The manifest of the release in ``folder``."""
        folder = Path(folder)
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = {name: ReleaseFile(**entry) for name, entry in data.pop("files").items()}
        return cls(**data, files=files, path=folder)

    def data_files(self, fmt: str) -> dict[str, str]:
        """Split -> path (relative to the release) of the data file of ``fmt`` per split."""
        return {split: data_path(fmt, split) for split in self.splits if data_path(fmt, split) in self.files}


def content_sha256(files: Mapping[str, ReleaseFile]) -> str:
    """The hash a default version is made from: the data files' paths and hashes, sorted."""
    lines = "".join(f"{name}\t{f.sha256}\n" for name, f in sorted(files.items()) if f.kind == "data")
    return hashlib.sha256(lines.encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _described(path: Path, rows: int | None, kind: str = "data") -> ReleaseFile:
    return ReleaseFile(_file_sha256(path), path.stat().st_size, rows, kind)


def _require(frame: pl.DataFrame, what: str, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}")


def release_table(
    kept: pl.DataFrame, renders: pl.DataFrame, token_counts: pl.DataFrame | None = None
) -> pl.DataFrame:
    """One row per record, ordered by id: what the Parquet files hold.

    ``id``, ``messages``, ``task``, ``source`` (the source file), ``license``, ``origin``, ``split``,
    ``text_<template>`` per template (sorted by name) and, with ``token_counts`` (``record_id``,
    ``template``, ``tokens``), ``tokens_<template>``.
    """
    _require(kept, "kept", ["record_id", "messages", "split"])
    _require(renders, "renders", ["record_id", "template", "text"])

    def column(name: str, dtype: pl.DataType) -> pl.Expr:
        return pl.col(name).cast(dtype) if name in kept.columns else pl.lit(None, dtype)

    table = kept.select(
        pl.col("record_id").alias("id"),
        pl.col("messages").cast(pl.List(MESSAGE)),
        column("task", pl.String).alias("task"),
        column("source_file", pl.String).alias("source"),
        column("license", pl.String).alias("license"),
        column("origin", pl.String).alias("origin"),
        pl.col("split").cast(pl.String),
    ).sort("id")
    wide = [("text", renders, "text", pl.String)]
    if token_counts is not None:
        _require(token_counts, "token_counts", ["record_id", "template", "tokens"])
        wide.append(("tokens", token_counts, "tokens", pl.Int64))
    for prefix, frame, value, dtype in wide:
        for template in sorted(frame["template"].unique().to_list()):
            values = frame.filter(pl.col("template") == template).select(
                pl.col("record_id").alias("id"), pl.col(value).cast(dtype).alias(f"{prefix}_{template}")
            )
            table = table.join(values, on="id", how="left", maintain_order="left")
    return table


def _write_jsonl(frame: pl.DataFrame, path: Path) -> ReleaseFile:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_ndjson(path)
    return _described(path, frame.height)


def _write_parquet(frame: pl.DataFrame, path: Path) -> ReleaseFile:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(path, compression="zstd", statistics=True)
    return _described(path, frame.height)


def _write_partitioned(
    frame: pl.DataFrame, folder: Path, root: Path, keys: Sequence[str]
) -> dict[str, ReleaseFile]:
    """One Parquet file per value combination of ``keys`` (``<folder>/<k1>/<k2>.parquet``), rows in order."""
    written = {}
    for values, rows in frame.group_by(keys, maintain_order=True):
        *parents, name = (str(v) for v in values)
        path = folder.joinpath(*parents) / f"{name}.parquet"
        written[_relative(path, root)] = _write_parquet(rows.drop(keys), path)
    return written


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _write_data(
    root: Path,
    table: pl.DataFrame,
    renders: pl.DataFrame,
    formats: Sequence[str],
    loss_masks: pl.DataFrame | None,
    packed: pl.DataFrame | None,
) -> tuple[dict[str, ReleaseFile], dict[str, int]]:
    """Every data file of the release under ``root``; returns them and the openai/ skips per split."""
    files: dict[str, ReleaseFile] = {}
    skipped: dict[str, int] = {}
    openai_ok = pl.col("messages").list.eval(pl.element().struct.field("role").is_in(OPENAI_ROLES)).list.all()
    sharegpt = pl.col("messages").list.eval(
        pl.struct(
            pl.element().struct.field("role").replace_strict(SHAREGPT_FROM).alias("from"),
            pl.element().struct.field("content").alias("value"),
        )
    )
    for (split,), rows in table.group_by("split", maintain_order=True):
        if "parquet" in formats:
            name = data_path("parquet", split)
            files[name] = _write_parquet(rows, root / name)
        if "openai_jsonl" in formats:
            fits = rows.filter(openai_ok.fill_null(False))
            name = data_path("openai_jsonl", split)
            files[name] = _write_jsonl(fits.select("messages"), root / name)
            # The format allows no extra keys: line i of the JSONL is the record on line i here.
            ids = root / "openai" / f"{split}.ids.txt"
            joined = fits.select(pl.col("id").str.join("\n")).item() if fits.height else None
            ids.write_text(f"{joined}\n" if joined is not None else "", encoding="utf-8")
            files[f"openai/{split}.ids.txt"] = _described(ids, fits.height)
            if rows.height > fits.height:
                skipped[str(split)] = rows.height - fits.height
        if "sharegpt" in formats:
            name = data_path("sharegpt", split)
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            rows.select("id", sharegpt.alias("conversations")).write_json(root / name)
            files[name] = _described(root / name, rows.height)
    splits = table.select(pl.col("id").alias("record_id"), "split")
    texts = renders.join(splits, on="record_id", how="inner").sort("template", "split", "record_id")
    for (template, split), rows in texts.group_by("template", "split", maintain_order=True):
        path = root / "rendered" / str(template) / f"{split}.jsonl"
        files[_relative(path, root)] = _write_jsonl(
            rows.select(pl.col("record_id").alias("id"), "text"), path
        )
    if loss_masks is not None:
        _require(loss_masks, "loss_masks", ["record_id", "template"])
        masks = loss_masks.join(splits, on="record_id", how="inner").sort("template", "split", "record_id")
        masks = masks.select(
            "template", "split", pl.col("record_id").alias("id"), pl.exclude("template", "split", "record_id")
        )
        files |= _write_partitioned(masks, root / "loss_masks", root, ["template", "split"])
    if packed is not None:
        keys = ["template", "split"] if "template" in packed.columns else ["split"]
        files |= _write_partitioned(_packed_with_splits(packed, splits), root / "packed", root, keys)
    return files, skipped


def _packed_with_splits(packed: pl.DataFrame, splits: pl.DataFrame) -> pl.DataFrame:
    """``packed`` with each row's ``split`` (from its ``record_id`` when it has none). A sequence
    holding records of two splits would train on evaluation data: ``ValueError``."""
    if "split" not in packed.columns:
        _require(packed, "packed (without a split column)", ["record_id"])
        packed = packed.join(splits, on="record_id", how="left", maintain_order="left")
        unknown = packed.filter(pl.col("split").is_null()).height
        if unknown:
            raise ValueError(f"{unknown} packed row(s) name records that are not in the release")
    sequence = [k for k in ("template", "sequence") if k in packed.columns]
    if "sequence" in sequence:
        mixed = packed.group_by(sequence).agg(pl.col("split").n_unique().alias("n")).filter(pl.col("n") > 1)
        if mixed.height:
            raise ValueError(f"{mixed.height} packed sequence(s) hold records of more than one split")
    return packed


def _attachment_path(name: str) -> str:
    """``name`` as a safe path inside the release, or ``ValueError``."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts or name in (MANIFEST, LATEST):
        raise ValueError(f"attachment path {name!r} must be relative, inside the release and not {MANIFEST}")
    return path.as_posix()


def _write_latest(out_root: Path, version: str) -> None:
    temporary = out_root / f".{LATEST}.{os.getpid()}"
    temporary.write_text(version + "\n", encoding="utf-8")
    os.replace(temporary, out_root / LATEST)


def latest_version(out_root: Path | str) -> str | None:
    """The version ``write_release`` wrote (or confirmed) last under ``out_root``."""
    pointer = Path(out_root) / LATEST
    return pointer.read_text(encoding="utf-8").strip() if pointer.exists() else None


def write_release(
    kept: pl.DataFrame,
    renders: pl.DataFrame,
    out_root: Path | str,
    *,
    created: str,
    version: str | None = None,
    formats: Sequence[str] = FORMATS,
    config_fingerprint: str | None = None,
    loss_masks: pl.DataFrame | None = None,
    token_counts: pl.DataFrame | None = None,
    packed: pl.DataFrame | None = None,
    extra_files: Mapping[str, Path | bytes] | None = None,
    readme: Callable[[ReleaseManifest], str] | None = None,
) -> ReleaseManifest:
    """Write the release ``out_root/<version>/`` and point ``out_root/latest`` at it.

    ``kept``: the formatted stage's records (``record_id``, ``messages``, ``split``; ``task``,
    ``source_file``, ``license``, ``origin`` when present); ``renders``: ``record_id``, ``template``,
    ``text``. Files, one per split that holds records, rows ordered by record id:

    - ``parquet/<split>.parquet`` (``release_table``: loads with ``datasets.load_dataset("parquet")``);
    - ``openai/<split>.jsonl``: ``{"messages": [{"role", "content"}, ...]}`` per line, exactly OpenAI's
      chat finetuning format (which forbids other keys), with ``openai/<split>.ids.txt`` giving the
      record id of each line; records with a tool message are left out (``openai_skipped``);
    - ``sharegpt/<split>.json``: ``[{"id", "conversations": [{"from", "value"}, ...]}, ...]`` with
      ``from`` system, human, gpt (observation for tool results);
    - ``rendered/<template>/<split>.jsonl``: ``{"id", "text"}``;
    - ``loss_masks/<template>/<split>.parquet`` (``loss_masks``: ``record_id``, ``template`` and any
      mask columns, which are copied) and ``packed/<template>/<split>.parquet`` (``packed``: one row
      per packed record or sequence with ``template``, and ``split`` or a ``record_id`` to take it
      from; rows in the given order; a ``sequence`` spanning two splits raises ``ValueError``);
    - attachments: ``extra_files`` (path in the release -> file to copy or bytes) and ``README.md``
      from ``readme(manifest)``, called with the data files and extra files already described;
    - ``manifest.json``.

    ``version`` defaults to ``r-<first 12 hex of the content hash>``. If the version exists with the
    same data this is a no-op (the folder, attachments included, stays as first written, and its
    manifest is returned); with other data it raises ``ReleaseConflictError``. ``created`` is
    recorded as given, so equal inputs give byte-identical folders.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown release format(s) {unknown}; known: {list(FORMATS)}")
    if version is not None and (not _VERSION.match(version) or version == LATEST):
        raise ValueError(f"release version {version!r} must be a plain folder name (letters, digits, . _ -)")
    attachments = {_attachment_path(name): source for name, source in (extra_files or {}).items()}
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    table = release_table(kept, renders, token_counts)
    bad_splits = sorted(
        str(s) for s in table["split"].unique().to_list() if s is None or not _VERSION.match(s)
    )
    if bad_splits:
        raise ValueError(f"split names {bad_splits} cannot name release files (letters, digits, . _ -)")
    # A fresh private name (uuid) under out_root: the final rename stays on one filesystem, and mkdir
    # honours the umask (tempfile.mkdtemp would leave the release readable by its owner only).
    staging = out_root / f".staging-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        files, skipped = _write_data(staging, table, renders, formats, loss_masks, packed)
        clash = sorted(set(attachments) & set(files) | ({README} & set(attachments) if readme else set()))
        if clash:
            raise ValueError(f"attachment path(s) {clash} collide with files the release writes")
        content = content_sha256(files)
        counts = table.group_by("split").len().sort("split")
        manifest = ReleaseManifest(
            version=version or f"r-{content[:12]}",
            created=created,
            content_sha256=content,
            config_fingerprint=config_fingerprint,
            templates=sorted(renders["template"].unique().to_list()),
            formats=[f for f in FORMATS if f in formats],
            splits=dict(zip(counts["split"].to_list(), counts["len"].to_list(), strict=True)),
            openai_skipped=dict(sorted(skipped.items())),
            files=files,
        )
        final = out_root / manifest.version
        if final.exists():
            return _confirm_existing(final, manifest, out_root)
        for name, source in sorted(attachments.items()):
            path = staging / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(source, bytes):
                path.write_bytes(source)
            else:
                shutil.copyfile(source, path)
        described = {name: _described(staging / name, None, "attachment") for name in sorted(attachments)}
        manifest = replace(manifest, files={**files, **described}, path=final)
        if readme is not None:
            (staging / README).write_text(readme(manifest), encoding="utf-8")
            card = _described(staging / README, None, "attachment")
            manifest = replace(manifest, files={**manifest.files, README: card})
        (staging / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
        try:
            staging.rename(final)
        except OSError:
            if not final.exists():
                raise
            return _confirm_existing(final, manifest, out_root)  # another writer got there first
        _write_latest(out_root, manifest.version)
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _confirm_existing(final: Path, manifest: ReleaseManifest, out_root: Path) -> ReleaseManifest:
    """The existing release ``final`` if it holds ``manifest``'s data; else ``ReleaseConflictError``."""
    try:
        existing = ReleaseManifest.load(final)
    except (OSError, ValueError, TypeError) as exc:
        raise ReleaseConflictError(f"release {final} exists but its manifest cannot be read: {exc}") from None
    if existing.content_sha256 != manifest.content_sha256:
        raise ReleaseConflictError(
            f"release version {manifest.version} already exists at {final} with other data "
            f"(content {existing.content_sha256[:12]}, now {manifest.content_sha256[:12]}); "
            "a version is immutable: write a new version"
        )
    _write_latest(out_root, existing.version)
    return existing


def verify_release(folder: Path | str) -> list[str]:
    """Problems with the release in ``folder`` (empty: intact): files missing, changed or unlisted,
    and a manifest that does not match its own data or folder name."""
    folder = Path(folder)
    try:
        manifest = ReleaseManifest.load(folder)
    except FileNotFoundError:
        return [f"{MANIFEST} is missing"]
    except (ValueError, TypeError) as exc:
        return [f"{MANIFEST} cannot be read: {exc}"]
    problems = []
    if manifest.version != folder.name:
        problems.append(f"the manifest names version {manifest.version}, the folder is {folder.name}")
    if content_sha256(manifest.files) != manifest.content_sha256:
        problems.append("content_sha256 does not match the data files the manifest lists")
    for name, entry in sorted(manifest.files.items()):
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif path.stat().st_size != entry.bytes:
            problems.append(f"{name}: {path.stat().st_size} bytes, the manifest says {entry.bytes}")
        elif _file_sha256(path) != entry.sha256:
            problems.append(f"{name}: sha256 differs from the manifest")
    on_disk = {_relative(p, folder) for p in folder.rglob("*") if p.is_file()}
    problems += [
        f"{name}: not in the manifest" for name in sorted(on_disk - set(manifest.files) - {MANIFEST})
    ]
    return problems
