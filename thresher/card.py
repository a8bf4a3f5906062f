"""The dataset card: a Hugging Face-style README.md that says what a release holds and how it was made.

``card_facts`` gathers every number from the store (stage runs, the ledger, batches, synthesis,
redactions, the released records), the release manifest and the dataset configuration;
``render_card`` turns them into markdown with a YAML header the Hub reads (license, language, task
categories, size category, and ``configs`` naming each split's data file). The card never quotes
record text: PII is described by entity type, action and count, rejections by rule.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import duckdb
import polars as pl
import yaml

from thresher.config import PII_ENTITY_TYPES, DatasetConfig
from thresher.provenance import status
from thresher.release import ReleaseManifest, split_leaks
from thresher.stage import STAGE_LEDGER_SCHEMA, StageResult
from thresher.store import STAGES, query, table_exists

# Rules of stages that publish no RULE_DESCRIPTIONS of their own (ingest, dedup, formatting).
STAGE_RULE_DESCRIPTIONS = {
    "invalid_json": "The line or file is not valid JSON.",
    "missing_field": "The record lacks a field its format requires (no prompt or no response, say).",
    "empty_conversation": "The record has no message with content.",
    "record_too_large": "The record is larger than ingest.max_record_bytes.",
    "empty_file": "The landed file holds no records.",
    "exact_duplicate": "The record's normalized text equals that of a record kept in its place (dedup.scope).",
    "near_duplicate": "The record is a near duplicate (MinHash, confirmed by true Jaccard) of a record kept in its place.",
    "semantic_duplicate": "The record's embedding is within dedup.semantic.threshold of a record kept in its place.",
    "contamination": "The record shares n-grams with a registered benchmark's item.",
    "empty_after_boilerplate": "Every line of a message is boilerplate recurring across many records.",
    "repeated_turns": "Too many of the conversation's turns repeat an earlier turn.",
    "duplicate_paragraphs": "Gopher: too many of the response's paragraphs repeat an earlier one.",
    "duplicate_paragraph_chars": "Gopher: too many characters in repeated paragraphs.",
    "duplicate_lines": "Gopher: too many of the response's lines repeat an earlier one.",
    "duplicate_line_chars": "Gopher: too many characters in repeated lines.",
    "top_ngram_repetition": "Gopher: the most frequent word 2-, 3- or 4-gram covers too much of the response.",
    "duplicate_ngram_repetition": "Gopher: word 5- to 10-grams seen twice cover too much of the response.",
    "render_failed": "A configured chat template cannot render the record, or its render does not parse back.",
}
# Hugging Face's size categories: (upper bound, label).
SIZE_CATEGORIES = [
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
]
TASK_TAGS = {"code": "code", "math": "math", "tool": "tool-use"}
_LICENSE_ID = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")


@dataclass(frozen=True)
class SourceFacts:
    """One landed file: what was read from it and what of it is in the release."""

    file: str
    sha256: str
    formats: list[str]
    records_read: int  # rows the raw stage saw (records and malformed lines)
    parsed: int  # records the raw stage kept
    released: int  # source records of this file in the release
    licenses: list[str]


@dataclass(frozen=True)
class StageCounts:
    stage: str
    rows_in: int
    created: int
    kept: int
    rejected: int


@dataclass(frozen=True)
class RuleCount:
    stage: str
    rule: str
    records: int
    description: str


@dataclass(frozen=True)
class Redactions:
    """PII of one entity type: the configured action and how many spans were replaced."""

    entity: str
    action: str
    released: int  # in records of the release
    total: int  # in every cleaned record (dropped later or not)


@dataclass(frozen=True)
class Generator:
    recipe: str
    kind: str
    generator: str
    model: str | None
    records: int  # in the release


@dataclass(frozen=True)
class PassRate:
    verifier: str
    passed: int
    failed: int
    pass_rate: float | None


@dataclass(frozen=True)
class TokenStats:
    template: str
    records: int
    mean: float
    p50: int
    p95: int
    max: int
    tokenizer: str | None
    approximate: bool


@dataclass(frozen=True)
class CardFacts:
    """Everything the card states, gathered by ``card_facts``; ``render_card`` only formats it."""

    name: str
    description: str
    version: str
    config_fingerprint: str | None
    templates: list[str]
    formats: list[str]
    # Split -> records, in the configuration's order; ratios as configured.
    splits: dict[str, int]
    split_ratios: dict[str, float]
    stratify_by: list[str]
    near_duplicate_threshold: float
    # Split -> data file (relative path) for the YAML ``configs`` (Parquet when written, else JSONL).
    data_files: dict[str, str]
    # Leak rows of ``split_leaks`` by kind (empty: no prompt reaches two splits).
    leaks: dict[str, int]
    tasks: dict[str, int]
    licenses: dict[str, int]
    language: str | None
    sources: list[SourceFacts]
    stages: list[StageCounts]
    rejections: list[RuleCount]
    # Rejected records per language the language check identified (wrong_language).
    rejected_languages: dict[str, int]
    pii: list[Redactions]
    pii_ner_model: str | None
    pii_dropped: int
    synthetic: int
    generators: list[Generator]
    pass_rates: list[PassRate]
    token_stats: list[TokenStats]
    openai_skipped: dict[str, int]
    limitations: list[str]
    figures: dict[str, str] = field(default_factory=dict)

    @property
    def records(self) -> int:
        return sum(self.splits.values())


def _ints(frame: pl.DataFrame, key: str, value: str) -> dict[str, int]:
    return {str(k): int(v) for k, v in frame.select(key, value).rows()}


def _summed_counters(con: duckdb.DuckDBPyConnection, stage: str) -> Counter[str]:
    """A stage's counters added up over its batches (one JSON object per stage run)."""
    total: Counter[str] = Counter()
    # One row per batch: a few hundred JSON objects at most, so a loop over them is cheap.
    for (counters,) in query(con, "SELECT counters FROM stage_runs WHERE stage = ?", [stage]).rows():
        total.update(json.loads(counters or "{}"))
    return total


def _sources(con: duckdb.DuckDBPyConnection) -> list[SourceFacts]:
    has_raw = table_exists(con, "raw")
    per_file = (
        "SELECT batch, list(DISTINCT source_format ORDER BY source_format) AS formats, "
        "list(DISTINCT coalesce(license, 'unknown') ORDER BY coalesce(license, 'unknown')) AS licenses "
        "FROM raw GROUP BY batch"
        if has_raw
        else "SELECT NULL::VARCHAR AS batch, []::VARCHAR[] AS formats, []::VARCHAR[] AS licenses LIMIT 0"
    )
    rows = query(
        con,
        f"""
        WITH files AS ({per_file}),
        runs AS (SELECT batch, sum(rows_in) AS rows_in, sum(kept) AS kept FROM stage_runs
                 WHERE stage = 'raw' GROUP BY batch),
        released AS (SELECT batch, count(*) AS n FROM formatted WHERE origin = 'source' GROUP BY batch)
        SELECT b.source_file AS file, b.sha256, coalesce(f.formats, []) AS formats,
               coalesce(r.rows_in, 0) AS records_read, coalesce(r.kept, 0) AS parsed,
               coalesce(x.n, 0) AS released, coalesce(f.licenses, []) AS licenses
        FROM batches b LEFT JOIN files f USING (batch) LEFT JOIN runs r USING (batch)
        LEFT JOIN released x USING (batch)
        ORDER BY b.seq
        """,
    ).to_dicts()
    return [SourceFacts(**row) for row in rows]


def _redactions(con: duckdb.DuckDBPyConnection, config: DatasetConfig) -> list[Redactions]:
    counts: dict[str, tuple[int, int]] = {}
    if table_exists(con, "redactions"):
        for entity, released, total in query(
            con,
            "SELECT entity, count(*) FILTER (WHERE record_id IN (SELECT record_id FROM formatted)), count(*) "
            "FROM redactions GROUP BY entity",
        ).rows():
            counts[entity] = (int(released), int(total))
    entities = {
        **config.clean.pii.entities,
        **dict.fromkeys(set(counts) - set(config.clean.pii.entities), ""),
    }
    return [
        Redactions(entity, action, *counts.get(entity, (0, 0)))
        for entity, action in sorted(entities.items(), key=lambda e: (-counts.get(e[0], (0, 0))[1], e[0]))
    ]


def _generators(con: duckdb.DuckDBPyConnection) -> list[Generator]:
    if not table_exists(con, "synthesis"):
        return []
    rows = query(
        con,
        "SELECT s.recipe, s.kind, s.generator, s.model, count(*) AS records FROM synthesis s "
        "JOIN formatted f USING (record_id) GROUP BY ALL ORDER BY records DESC, recipe, kind, generator, model",
    ).to_dicts()
    return [Generator(**row) for row in rows]


def _pass_rates(counters: Counter[str]) -> list[PassRate]:
    from thresher.verification import pass_rates  # the verification stack is slow to import

    # pass_rates reads a StageResult's counters; the summed counters of every batch stand in for one.
    summed = StageResult(0, pl.DataFrame(), pl.DataFrame(schema=STAGE_LEDGER_SCHEMA), counters=dict(counters))
    return [PassRate(**row) for row in pass_rates(summed).to_dicts()]


def token_stats(token_counts: pl.DataFrame) -> list[TokenStats]:
    """Per template: records counted, mean, p50, p95 and max tokens, the tokenizer and whether the
    counts are approximate, from ``tokens.token_counts`` (``record_id``, ``template``, ``tokens``;
    ``tokenizer`` and ``approximate`` when present). Records without a count are left out."""

    def optional(name: str, agg: pl.Expr, dtype: pl.DataType) -> pl.Expr:
        return (agg if name in token_counts.columns else pl.lit(None, dtype)).alias(name)

    tokens = pl.col("tokens")
    stats = (
        token_counts.filter(tokens.is_not_null())
        .group_by("template")
        .agg(
            pl.len().alias("records"),
            tokens.mean().round(1).alias("mean"),
            tokens.quantile(0.5, "nearest").cast(pl.Int64).alias("p50"),
            tokens.quantile(0.95, "nearest").cast(pl.Int64).alias("p95"),
            tokens.max().cast(pl.Int64).alias("max"),
            optional("tokenizer", pl.col("tokenizer").drop_nulls().first(), pl.String),
            optional("approximate", pl.col("approximate").any(), pl.Boolean).fill_null(False),
        )
        .sort("template")
    )
    return [TokenStats(**row) for row in stats.to_dicts()]


def _rule_descriptions() -> dict[str, str]:
    from thresher.cleaning.rules import RULE_DESCRIPTIONS as CLEANING  # slow imports: only when needed
    from thresher.verification import RULE_DESCRIPTIONS as VERIFICATION

    return {**STAGE_RULE_DESCRIPTIONS, **CLEANING, **VERIFICATION}


def card_facts(
    con: duckdb.DuckDBPyConnection,
    manifest: ReleaseManifest,
    config: DatasetConfig,
    *,
    token_counts: pl.DataFrame | None = None,
    leaks: pl.DataFrame | None = None,
    figures: Mapping[str, str] | None = None,
    rule_descriptions: Mapping[str, str] | None = None,
    top_rules: int = 15,
) -> CardFacts:
    """Every fact of the card for the release ``manifest`` of the store behind ``con``.

    Records, tasks and licenses are read from the ``formatted`` table (the release), stage counts and
    rejections from ``stage_runs`` and the ledger (``provenance.status``), PII policy from ``config``
    with counts from ``redactions``. ``leaks`` is ``split_leaks`` of the release (recomputed from the
    ``formatted`` table when not given); ``token_counts`` (``record_id``, ``template``, ``tokens``,
    optionally ``approximate``) gives the token statistics; ``figures`` maps a caption to a PNG path
    relative to the release. Works on a read-only connection.
    """
    if not table_exists(con, "formatted"):
        raise LookupError("no release in the store: materialize `formatted` before writing its card")
    fmt = config.format
    if leaks is None:
        released = query(con, "SELECT record_id, messages, split FROM formatted")
        leaks = split_leaks(released, fmt.near_duplicate_threshold)
    stage_status = status(con)
    descriptions = dict(rule_descriptions) if rule_descriptions is not None else _rule_descriptions()
    ranked = sorted(
        ((count, s["stage"], rule) for s in stage_status for rule, count in s["rejected_by_rule"].items()),
        key=lambda r: (-r[0], STAGES.index(r[1]) if r[1] in STAGES else len(STAGES), r[2]),
    )
    tasks = query(
        con,
        "SELECT coalesce(task, 'unknown') AS task, count(*) AS n FROM formatted GROUP BY 1 ORDER BY n DESC, task",
    )
    licenses = query(
        con,
        "SELECT coalesce(license, 'unknown') AS license, count(*) AS n FROM formatted GROUP BY 1 ORDER BY n DESC, license",
    )
    languages = query(
        con,
        "SELECT regexp_extract(detail, 'identified as ''([^'']+)''', 1) AS language, count(*) AS n "
        "FROM rejections WHERE rule = 'wrong_language' GROUP BY 1 ORDER BY n DESC, language",
    )
    synthetic = query(con, "SELECT count(*) AS n FROM formatted WHERE origin = 'synthetic'")["n"].item()
    pii_dropped = query(con, "SELECT count(*) AS n FROM rejections WHERE rule = 'pii_drop'")["n"].item()
    verified = _summed_counters(con, "verified")
    stats = token_stats(token_counts) if token_counts is not None else []
    split_order = [*fmt.splits, *sorted(set(manifest.splits) - set(fmt.splits))]
    data_format = "parquet" if "parquet" in manifest.formats else "openai_jsonl"
    facts = CardFacts(
        name=config.name,
        description=config.description,
        version=manifest.version,
        config_fingerprint=manifest.config_fingerprint,
        templates=list(manifest.templates),
        formats=list(manifest.formats),
        splits={s: manifest.splits.get(s, 0) for s in split_order},
        split_ratios=dict(fmt.splits),
        stratify_by=list(fmt.stratify_by),
        near_duplicate_threshold=fmt.near_duplicate_threshold,
        data_files=manifest.data_files(data_format),
        leaks=_ints(leaks.group_by("kind").len().sort("kind"), "kind", "len"),
        tasks=_ints(tasks, "task", "n"),
        licenses=_ints(licenses, "license", "n"),
        language=config.clean.quality.language,
        sources=_sources(con),
        stages=[
            StageCounts(s["stage"], s["rows_in"], s["created"], s["kept"], s["rejected"])
            for s in stage_status
        ],
        rejections=[
            RuleCount(stage, rule, count, descriptions.get(rule, ""))
            for count, stage, rule in ranked[:top_rules]
        ],
        rejected_languages=_ints(languages, "language", "n"),
        pii=_redactions(con, config),
        pii_ner_model=config.clean.pii.ner_model,
        pii_dropped=int(pii_dropped),
        synthetic=int(synthetic),
        generators=_generators(con),
        pass_rates=_pass_rates(verified),
        token_stats=stats,
        openai_skipped=dict(manifest.openai_skipped),
        limitations=[],
        figures=dict(figures or {}),
    )
    return _with_limitations(facts, config, verified, _summed_counters(con, "synthetic"))


def _with_limitations(
    facts: CardFacts, config: DatasetConfig, verified: Counter[str], synthetic: Counter[str]
) -> CardFacts:
    """``facts`` with the known limitations its numbers and the configuration imply."""
    notes = []
    pii = config.clean.pii
    if pii.ner_model is None:
        notes.append(
            "Person names are found by rules only (introductions, titles, sign-offs; no NER model): "
            "names in other contexts may remain."
        )
    undetected = sorted(set(PII_ENTITY_TYPES) - set(pii.entities))
    if undetected:
        notes.append(f"PII types not detected (not configured): {', '.join(undetected)}.")
    if facts.language is None:
        notes.append("No language filter ran: records may be in any language.")
    else:
        seen = ", ".join(f"{lang or 'unidentified'} ({n:,})" for lang, n in facts.rejected_languages.items())
        notes.append(
            f"Only text identified as '{facts.language}' was kept (fastText lid.176, texts of at least "
            f"{config.clean.quality.language_min_chars} characters; code is not checked)"
            + (
                f"; rejected as other languages: {seen}."
                if seen
                else "; no record was identified as another language."
            )
        )
    unchecked = verified.get("not_applicable", 0)
    if unchecked:
        notes.append(
            f"{unchecked:,} records passed verification without any check (no verifier applies to their "
            "task kind, e.g. open chat)."
        )
    judge = config.verify.judge
    if not judge.enabled:
        notes.append("No LLM judge scored the records (verify.judge.enabled is off).")
    elif not verified.get("judge.passed", 0) + verified.get("judge.failed", 0):
        notes.append("The LLM judge is enabled but scored no record (no LLM endpoint was configured).")
    if config.synthesis.llm_recipes and synthetic.get("llm.recipes_skipped", 0):
        names = ", ".join(r.name for r in config.synthesis.llm_recipes)
        notes.append(f"LLM synthesis recipes were skipped in some batches (no endpoint configured): {names}.")
    if not config.dedup.decontamination.enabled or not config.dedup.decontamination.benchmarks:
        notes.append("Records were not checked for overlap with any benchmark (no benchmark configured).")
    if not config.dedup.semantic.enabled:
        notes.append("Semantic (embedding) deduplication was off: paraphrased duplicates may remain.")
    approximate = [
        f"{t.template} ({t.tokenizer or 'a fallback'})" for t in facts.token_stats if t.approximate
    ]
    if approximate:
        notes.append(
            f"Token counts are approximate for {', '.join(approximate)}: counted with another model's "
            "tokenizer than the template's own."
        )
    if facts.openai_skipped:
        skipped = sum(facts.openai_skipped.values())
        notes.append(
            f"{skipped:,} records with tool messages are not in openai/ (the format needs tool call ids "
            "the records do not carry); they are in every other format."
        )
    leaked = sum(facts.leaks.values())
    if leaked:
        notes.append(f"The split leakage check found {leaked:,} prompt(s) shared between splits.")
    return replace(facts, limitations=notes)


# --------------------------------------------------------------------------------------------------
# Rendering


def _cell(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return str(value).replace("|", "\\|").replace("\n", " ") or "—"


def _table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "—"


def _license_id(license_: str) -> str:
    """A license as a Hub license id (lowercase SPDX-like), ``other`` when it is not one."""
    lowered = license_.strip().lower()
    return lowered if _LICENSE_ID.match(lowered) else "other"


def _size_category(n: int) -> str:
    return next((label for bound, label in SIZE_CATEGORIES if n < bound), "n>1B")


def card_header(facts: CardFacts) -> dict[str, object]:
    """The YAML metadata the Hugging Face Hub reads from a dataset card."""
    licenses = sorted({_license_id(name) for name in facts.licenses}) or ["unknown"]
    tags = ["thresher", *sorted({TASK_TAGS[t] for t in facts.tasks if t in TASK_TAGS})]
    if facts.synthetic:
        tags.append("synthetic")
    header: dict[str, object] = {
        "pretty_name": facts.name,
        "license": licenses[0] if len(licenses) == 1 else licenses,
        "task_categories": ["text-generation"],
    }
    if facts.language:
        header["language"] = [facts.language]
    header["size_categories"] = [_size_category(facts.records)]
    header["tags"] = tags
    if facts.data_files:
        header["configs"] = [
            {
                "config_name": "default",
                "data_files": [{"split": split, "path": path} for split, path in facts.data_files.items()],
            }
        ]
    return header


def render_card(facts: CardFacts) -> str:
    """The dataset card (README.md) as markdown with a Hugging Face YAML header."""
    n = facts.records
    header = yaml.safe_dump(card_header(facts), sort_keys=False, allow_unicode=True)
    out = [f"---\n{header}---", f"# {facts.name}"]
    if facts.description:
        out.append(facts.description.strip())

    splits = ", ".join(f"{name} {count:,}" for name, count in facts.splits.items())
    out += [
        "## Summary",
        "\n".join(
            [
                f"- Release `{facts.version}`: {n:,} records ({splits}).",
                f"- Tasks: {', '.join(f'{t} {c:,}' for t, c in facts.tasks.items()) or '—'}.",
                f"- Synthetic records: {facts.synthetic:,} ({_percent(facts.synthetic, n)}).",
                f"- Chat templates: {', '.join(facts.templates) or '—'}; formats: {', '.join(facts.formats) or '—'}.",
                f"- Configuration fingerprint: `{facts.config_fingerprint or '—'}`. Every file's sha256 is "
                "in `manifest.json`; `provenance/` (when present) traces every record to its source line.",
            ]
        ),
    ]

    out += [
        "## Sources and licenses",
        _table(
            ["file", "sha256", "format", "records read", "parsed", "released", "licenses"],
            [
                [
                    s.file,
                    s.sha256[:12],
                    ", ".join(s.formats),
                    s.records_read,
                    s.parsed,
                    s.released,
                    ", ".join(s.licenses),
                ]
                for s in facts.sources
            ],
        ),
        "Licenses of the released records (synthetic records carry their seed's license):",
        _table(["license", "records", "share"], [[k, v, _percent(v, n)] for k, v in facts.licenses.items()]),
    ]

    out += [
        "## Counts per stage",
        "Every record entering a stage is kept or rejected with a rule: rows in + created = kept + rejected.",
        _table(
            ["stage", "rows in", "created", "kept", "rejected"],
            [[s.stage, s.rows_in, s.created, s.kept, s.rejected] for s in facts.stages],
        ),
        "## Rejections by rule",
        _table(
            ["stage", "rule", "records", "description"],
            [[r.stage, f"`{r.rule}`", r.records, r.description] for r in facts.rejections],
        )
        if facts.rejections
        else "No record was rejected.",
    ]

    detector = f"rules and the NER model `{facts.pii_ner_model}`" if facts.pii_ner_model else "rules only"
    out += [
        "## PII policy",
        f"Detected with {detector}; each entity type is replaced as configured. Only the entity type and "
        "offsets of each replacement are kept, never the value.",
        _table(
            ["entity", "action", "redactions in the release", "redactions in all cleaned records"],
            [[p.entity, p.action or "—", p.released, p.total] for p in facts.pii],
        ),
        f"Records dropped for PII (`pii_drop`): {facts.pii_dropped:,}.",
    ]

    out += [
        "## Synthetic data",
        f"{facts.synthetic:,} of {n:,} released records ({_percent(facts.synthetic, n)}) are synthetic.",
    ]
    if facts.generators:
        out.append(
            _table(
                ["recipe", "kind", "generator", "model", "records"],
                [[g.recipe, g.kind, g.generator, g.model, g.records] for g in facts.generators],
            )
        )

    out += [
        "## Verification",
        _table(
            ["verifier", "passed", "failed", "pass rate"],
            [
                [p.verifier, p.passed, p.failed, None if p.pass_rate is None else f"{100 * p.pass_rate:.1f}%"]
                for p in facts.pass_rates
            ],
        ),
    ]

    if facts.token_stats:
        out += [
            "## Token statistics",
            "Tokens per rendered record.",
            _table(
                ["template", "records", "mean", "p50", "p95", "max", "tokenizer", "approximate"],
                [
                    [t.template, t.records, t.mean, t.p50, t.p95, t.max, t.tokenizer, t.approximate]
                    for t in facts.token_stats
                ],
            ),
        ]

    leaked = sum(facts.leaks.values())
    leak_line = (
        "Leakage check: no prompt is shared between splits, exactly or as a near duplicate "
        f"(character 5-gram Jaccard at least {facts.near_duplicate_threshold})."
        if not leaked
        else "Leakage check: FAILED, "
        + ", ".join(f"{count:,} {kind.replace('_', ' ')}" for kind, count in facts.leaks.items())
        + " pair(s) span two splits."
    )
    out += [
        "## Splits",
        _table(
            ["split", "ratio", "records", "share"],
            [
                [s, f"{facts.split_ratios[s]:g}" if s in facts.split_ratios else None, c, _percent(c, n)]
                for s, c in facts.splits.items()
            ],
        ),
        f"Records with equal or near-duplicate prompts share a split; splits are stratified by "
        f"{', '.join(facts.stratify_by) or 'nothing'}. {leak_line}",
    ]

    out += ["## Known limitations", "\n".join(f"- {note}" for note in facts.limitations) or "None recorded."]
    if facts.figures:
        out += ["## Figures", "\n\n".join(f"![{name}]({path})" for name, path in facts.figures.items())]
    return "\n\n".join(out) + "\n"
