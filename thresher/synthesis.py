"""The synthetic stage: new training records derived from source seeds by configured recipes.

This is the offline, rule-based generator: each recipe rewrites or combines seed conversations with
text templates. Every created record names its seeds (``parent_ids``, "seed" edges), the recipe, the
template (index and content hash) and the seed, so it can be traced back to source lines and
re-created exactly. The LLM-backed recipes (``thresher.llm_recipes``) run after the rule-based ones
when an ``LLMClient`` is given and are skipped, with a notice, when none is; ids, lineage and
duplicate screening stay here for both. LLM output is also screened for near duplicates of the
batch (and of each other) with the dedup stage's MinHash, at the dataset's threshold and scope.

Selection is deterministic: eligible seeds are ranked by SHA-256 of (recipe name, seed, record id)
and the first ``ceil(rate * n)`` are used, capped at ``max_per_batch`` created records.
"""

from __future__ import annotations

import hashlib
import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import polars as pl

from thresher.config import DedupConfig, RecipeConfig, SynthesisConfig
from thresher.dedup import dedup_texts, near_duplicate_pairs
from thresher.hashing import sha256_hex
from thresher.llm import LLMClient
from thresher.llm_recipes import GENERATED_SCHEMA, LLM_RECIPES
from thresher.records import RECORD_SCHEMA, conform, empty_ledger
from thresher.stage import EDGE_SCHEMA, StageResult

PLACEHOLDER = "{instruction}"

# What an LLM recipe adds to a built row (null for rule-based rows), and the record fields it may set.
_LLM_COLUMNS = {
    c: GENERATED_SCHEMA[c]
    for c in ("model", "endpoint", "cache_hit", "prompt_tokens", "completion_tokens", "calls")
}

SYNTHESIS_SCHEMA: dict[str, pl.DataType] = {
    "record_id": pl.String,
    "recipe": pl.String,
    "kind": pl.String,
    "template_id": pl.Int32,
    "template_hash": pl.String,
    # The recipe's configuration as a JSON object string.
    "params": pl.String,
    "seed": pl.Int64,
    "generator": pl.String,
    # LLM recipes only (null for rule-based ones): model and endpoint name (never its key), whether
    # every call was answered from the response cache, tokens and calls behind the record.
    **_LLM_COLUMNS,
}


_RECIPE_RECORD_COLUMNS = {c: GENERATED_SCHEMA[c] for c in ("task", "tests", "entry_point", "metadata_extra")}
_PRIVATE_SCHEMA: dict[str, pl.DataType] = {
    "_recipe": pl.String,
    "_kind": pl.String,
    "template_id": pl.Int32,
    "template_hash": pl.String,
    **_LLM_COLUMNS,
}


def template_hash(text: str) -> str:
    """First 12 hex digits of the template text's SHA-256: names a template version in lineage."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class Template:
    id: int
    text: str

    @property
    def hash(self) -> str:
        return template_hash(self.text)


def seed_features(records: pl.DataFrame) -> pl.DataFrame:
    """``records`` plus the message positions recipes need (null when absent)."""
    roles = pl.col("messages").list.eval(pl.element().struct.field("role"))

    def first(role: str) -> pl.Expr:
        return roles.list.eval(pl.element().eq(role).arg_true()).list.first().cast(pl.Int64)

    return records.with_columns(
        first("user").alias("_first_user"),
        first("assistant").alias("_first_assistant"),
        roles.list.contains("system").fill_null(False).alias("_has_system"),
    )


def _message(role: str, content: pl.Expr) -> pl.Expr:
    return pl.struct(pl.lit(role).alias("role"), content.cast(pl.String).alias("content"))


def _content_at(index: pl.Expr) -> pl.Expr:
    return pl.col("messages").list.get(index).struct.field("content")


def _fill_placeholder(template_text: pl.Expr, instruction: pl.Expr) -> pl.Expr:
    # literal=True: "$1" or backslashes in the instruction are inserted verbatim.
    return template_text.str.replace_all(PLACEHOLDER, instruction, literal=True)


class Recipe(ABC):
    """One way of making records from seeds. Subclasses say which seeds fit and how to build."""

    kind: ClassVar[str]
    generator: ClassVar[str] = "rule-based"
    default_templates: ClassVar[tuple[str, ...]]
    # Whether every template must contain ``{instruction}``.
    needs_placeholder: ClassVar[bool] = True
    seeds_per_record: ClassVar[int] = 1

    def __init__(self, config: RecipeConfig, seed: int) -> None:
        self.config = config
        self.seed = seed
        texts = config.templates or list(self.default_templates)
        bad = [
            i
            for i, t in enumerate(texts)
            if not t.strip() or (self.needs_placeholder and PLACEHOLDER not in t)
        ]
        if bad:
            need = f"contain {PLACEHOLDER}" if self.needs_placeholder else "be non-empty"
            raise ValueError(f"recipe {config.name!r}: templates {bad} must {need}")
        self.templates = [Template(i, t) for i, t in enumerate(texts)]

    @property
    def name(self) -> str:
        return self.config.name

    def template_frame(self) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "template_id": [t.id for t in self.templates],
                "template_text": [t.text for t in self.templates],
                "template_hash": [t.hash for t in self.templates],
            },
            schema={"template_id": pl.Int32, "template_text": pl.String, "template_hash": pl.String},
        )

    def eligible(self, seeds: pl.DataFrame) -> pl.DataFrame:
        """Seeds with a user message answered by a later assistant message."""
        return seeds.filter(pl.col("_first_assistant") > pl.col("_first_user"))

    def count(self, eligible: int) -> int:
        """How many records to create from ``eligible`` seeds."""
        # round() first: 0.1 * 30 is 3.0000000000000004 in floating point, which must not ceil to 4.
        used = math.ceil(round(self.config.rate * eligible, 9))
        return min(used // self.seeds_per_record, self.config.max_per_batch)

    def select(self, eligible: pl.DataFrame) -> pl.DataFrame:
        """The chosen seeds in rank order, each with its template (both from the same stable hash)."""
        keys = pl.concat_str([pl.lit(f"{self.name}\x1f{self.seed}\x1f"), eligible["record_id"]], separator="")
        digest = sha256_hex(eligible.select(keys.alias("k"))["k"])
        ranked = eligible.with_columns(
            digest.alias("_rank_key"),
            (digest.str.slice(16, 12).str.to_integer(base=16) % len(self.templates))
            .cast(pl.Int32)
            .alias("template_id"),
        ).sort("_rank_key", "record_id")
        n = self.count(eligible.height) * self.seeds_per_record
        return ranked.head(n).join(self.template_frame(), on="template_id", how="left", maintain_order="left")

    @abstractmethod
    def build(self, chosen: pl.DataFrame) -> pl.DataFrame:
        """``seed_ids`` (conversation order), ``template_id``, ``template_hash``, ``messages``, one row per record."""


class InstructionTemplateRecipe(Recipe):
    """Re-wraps a seed's first user message in a template and keeps the rest of the conversation."""

    kind = "instruction_template"
    default_templates = (
        "{instruction}\n\nAnswer concisely.",
        "Here is a request: {instruction}",
        "Please help with the following.\n\n{instruction}",
    )

    def build(self, chosen: pl.DataFrame) -> pl.DataFrame:
        at = pl.col("_first_user")
        wrapped = _fill_placeholder(pl.col("template_text"), _content_at(at))
        messages = pl.concat_list(
            [
                pl.col("messages").list.slice(0, at),
                _message("user", wrapped),
                pl.col("messages").list.slice(at + 1),
            ]
        ).alias("messages")
        return chosen.select(
            pl.concat_list([pl.col("record_id")]).alias("seed_ids"), "template_id", "template_hash", messages
        )


class SystemPromptRecipe(Recipe):
    """Prepends a system message to a seed that has none."""

    kind = "system_prompt"
    needs_placeholder = False
    default_templates = (
        "You are a helpful assistant.",
        "You are a knowledgeable assistant. Answer accurately and clearly.",
        "You are a friendly assistant who explains things step by step.",
    )

    def eligible(self, seeds: pl.DataFrame) -> pl.DataFrame:
        """Answered seeds without a system message (two system prompts would contradict each other)."""
        return super().eligible(seeds).filter(~pl.col("_has_system"))

    def build(self, chosen: pl.DataFrame) -> pl.DataFrame:
        messages = pl.concat_list([_message("system", pl.col("template_text")), pl.col("messages")]).alias(
            "messages"
        )
        return chosen.select(
            pl.concat_list([pl.col("record_id")]).alias("seed_ids"), "template_id", "template_hash", messages
        )


class MultiTurnRecipe(Recipe):
    """Merges two seeds into (user1, assistant1, user2, assistant2).

    Each seed contributes its first user message and the first assistant reply; system messages are
    left out (one seed's system prompt need not suit the other's answer). The template wraps the
    second user turn; the default leaves it as it is.
    """

    kind = "multi_turn"
    seeds_per_record = 2
    default_templates = ("{instruction}",)

    def build(self, chosen: pl.DataFrame) -> pl.DataFrame:
        # Consecutive ranked seeds pair up: ranks 0+1, 2+3, ... The first seed's hash picks the template.
        turns = chosen.with_row_index("_pos").select(
            (pl.col("_pos") // 2).alias("_pair"),
            (pl.col("_pos") % 2).alias("_slot"),
            "record_id",
            "template_id",
            "template_hash",
            "template_text",
            _content_at(pl.col("_first_user")).alias("_user"),
            _content_at(pl.col("_first_assistant")).alias("_assistant"),
        )
        first = turns.filter(pl.col("_slot") == 0)
        second = turns.filter(pl.col("_slot") == 1).select(
            "_pair",
            pl.col("record_id").alias("_record_id_2"),
            pl.col("_user").alias("_user_2"),
            pl.col("_assistant").alias("_assistant_2"),
        )
        pairs = first.join(second, on="_pair", how="inner", maintain_order="left")
        messages = pl.concat_list(
            [
                _message("user", pl.col("_user")),
                _message("assistant", pl.col("_assistant")),
                _message("user", _fill_placeholder(pl.col("template_text"), pl.col("_user_2"))),
                _message("assistant", pl.col("_assistant_2")),
            ]
        ).alias("messages")
        return pairs.select(
            pl.concat_list(["record_id", "_record_id_2"]).alias("seed_ids"),
            "template_id",
            "template_hash",
            messages,
        )


RECIPES: dict[str, type[Recipe]] = {
    cls.kind: cls for cls in (InstructionTemplateRecipe, MultiTurnRecipe, SystemPromptRecipe)
}


def conversation_key(messages: pl.Expr) -> pl.Expr:
    """Normalized text of a conversation (roles and contents): equal keys mean exact duplicates."""
    turn = pl.concat_str(
        [
            pl.element().struct.field("role"),
            pl.lit(":"),
            pl.element()
            .struct.field("content")
            .str.to_lowercase()
            .str.replace_all(r"\s+", " ")
            .str.strip_chars(),
        ]
    )
    return messages.list.eval(turn).list.join("\x1e")


class Synthesizer:
    """Runs every configured recipe over a batch; inputs pass through, synthetic records are added.

    ``llm`` is the endpoint's client for this run (None: no endpoint, the LLM recipes are skipped and
    ``notices`` says so); ``dedup`` the dataset's dedup settings for the near-duplicate screen.
    """

    def __init__(
        self, config: SynthesisConfig, llm: LLMClient | None = None, dedup: DedupConfig | None = None
    ) -> None:
        self.config = config
        self.recipes = [RECIPES[r.kind](r, config.seed) for r in config.recipes]
        self.llm_recipes = [LLM_RECIPES[r.kind](r, config.seed) for r in config.llm_recipes]
        self.llm = llm
        self.dedup = dedup or DedupConfig()
        self.notices: list[str] = []

    def run(self, records: pl.DataFrame, batch: str, earlier: pl.DataFrame | None = None) -> StageResult:
        """All input records kept unchanged plus the created ones; nothing is rejected.

        ``earlier`` holds the synthetic records other batches made (``messages``): a record equal to
        one of them, or (LLM output) a near duplicate, is not made again. Recipes without seeds (code
        problems from a topic list) would otherwise repeat themselves in every batch.
        """
        records = conform(records)
        earlier = earlier.select("messages") if earlier is not None else records.clear().select("messages")
        known = pl.concat([records.select("messages"), earlier])
        seeds = seed_features(
            records.filter((pl.col("task") == "chat") & (pl.col("origin") == "source")).select(
                list(RECORD_SCHEMA)
            )
        )
        counters: dict[str, int] = {}
        built: list[pl.DataFrame] = []
        for recipe in self.recipes:
            eligible = recipe.eligible(seeds)
            counters[f"recipe.{recipe.name}.eligible"] = eligible.height
            made = recipe.build(recipe.select(eligible)).with_columns(
                pl.lit(recipe.name).alias("_recipe"), pl.lit(recipe.kind).alias("_kind")
            )
            built.append(made)
        built += self._generate(seeds, counters)
        created = self._assemble(pl.concat(built, how="diagonal_relaxed") if built else None, seeds, batch)
        created = self._screen_near_duplicates(created, known, counters)

        # A created record identical (after normalization) to an input or to an earlier created
        # record adds nothing: it is never created.
        input_keys = known.select(conversation_key(pl.col("messages")).alias("_key")).unique()
        created = created.with_columns(conversation_key(pl.col("messages")).alias("_key"))
        fresh = created.join(input_keys, on="_key", how="anti", maintain_order="left").filter(
            pl.col("_key").is_first_distinct()
        )
        for recipe in [*self.recipes, *self.llm_recipes]:
            built_n = created.filter(pl.col("_recipe") == recipe.name).height
            kept_n = fresh.filter(pl.col("_recipe") == recipe.name).height
            counters[f"recipe.{recipe.name}"] = kept_n
            counters[f"recipe.{recipe.name}.duplicate_skipped"] = built_n - kept_n

        new_records = fresh.select(list(RECORD_SCHEMA))
        kept = pl.concat([records, new_records], how="diagonal")
        return StageResult(
            rows_in=records.height,
            kept=kept,
            rejected=empty_ledger(),
            created=new_records.height,
            tables={"edges": self._edges(fresh), "synthesis": self._provenance(fresh)},
            counters=counters,
        )

    def _generate(self, seeds: pl.DataFrame, counters: dict[str, int]) -> list[pl.DataFrame]:
        """The LLM recipes' rows (``made`` plus ``_recipe``/``_kind``/``template_id``), or a notice."""
        if not self.llm_recipes:
            return []
        if self.llm is None:
            names = ", ".join(r.name for r in self.llm_recipes)
            self.notices.append(
                f"LLM recipes skipped ({names}): no endpoint configured. Set THRESHER_LLM_BASE_URL and "
                "THRESHER_LLM_MODEL (and THRESHER_LLM_API_KEY if the endpoint needs one) to run them."
            )
            counters["llm.recipes_skipped"] = len(self.llm_recipes)
            return []
        made = []
        for recipe in self.llm_recipes:
            generated = recipe.generate(seeds, self.llm)
            counters.update(generated.counters)
            made.append(
                generated.made.with_columns(
                    pl.lit(recipe.name).alias("_recipe"),
                    pl.lit(recipe.kind).alias("_kind"),
                    pl.lit(0, dtype=pl.Int32).alias("template_id"),
                )
            )
        return made

    def _screen_near_duplicates(
        self, created: pl.DataFrame, records: pl.DataFrame, counters: dict[str, int]
    ) -> pl.DataFrame:
        """LLM records that are near duplicates (dedup stage's MinHash, confirmed by true Jaccard) of a
        known record (``records``: inputs and earlier batches' synthetic records) or of an earlier
        created record are dropped and counted: a model that echoes its seed or itself adds nothing.
        Rule-based variants are exempt: they are templated on purpose, and exact copies are screened
        for every recipe in ``run``."""
        llm = created.filter(pl.col("model").is_not_null()) if "model" in created.columns else created.clear()
        if llm.is_empty() or not self.dedup.minhash.enabled:
            return created
        pool = pl.concat([records.select("messages"), llm.select("messages")])
        texts = dedup_texts(pool, self.dedup.normalization, self.dedup.scope)
        pairs = near_duplicate_pairs(texts, self.dedup.minhash)
        # Pair (i, j) has i < j: the later row is the copy; input rows come first.
        copies = set(pairs.filter(pl.col("j") >= records.height)["j"].to_list())
        drop = [row - records.height for row in sorted(copies)]
        dropped = llm[drop].group_by("_recipe").len() if drop else pl.DataFrame()
        for row in dropped.iter_rows(named=True):
            counters[f"recipe.{row['_recipe']}.near_duplicate_skipped"] = row["len"]
        if not drop:
            return created
        ids = llm[drop]["record_id"].implode()
        return created.filter(~pl.col("record_id").is_in(ids))

    def _assemble(self, made: pl.DataFrame | None, seeds: pl.DataFrame, batch: str) -> pl.DataFrame:
        """Canonical records (plus private ``_recipe``/``_kind``/``template_*`` and LLM columns) from built rows.

        A record's task, tests and entry point come from the recipe when it sets them (code and tool
        records of the LLM recipes), else from its first seed. LLM records have their content in the
        id: one prompt may yield several records, and some have no seed at all.
        """
        columns = [*RECORD_SCHEMA, "_recipe", "_kind", "template_id", "template_hash", *_LLM_COLUMNS]
        if made is None or made.is_empty():
            return pl.DataFrame(schema={**RECORD_SCHEMA, **_PRIVATE_SCHEMA})
        for name, dtype in {**_LLM_COLUMNS, **_RECIPE_RECORD_COLUMNS}.items():
            if name not in made.columns:
                made = made.with_columns(pl.lit(None, dtype=dtype).alias(name))
        is_llm = pl.col("model").is_not_null()
        id_key = pl.concat_str(
            [
                pl.col("_recipe"),
                pl.col("template_hash"),
                pl.col("seed_ids").list.sort().list.join(","),
                pl.lit(str(self.config.seed)),
            ],
            separator="\x1f",
        )
        id_key = (
            pl.when(is_llm)
            .then(pl.concat_str([id_key, conversation_key(pl.col("messages"))], separator="\x1f"))
            .otherwise(id_key)
        )
        ids = sha256_hex(made.select(id_key.alias("k"))["k"]).str.slice(0, 16)
        first_seed = seeds.unique("record_id", keep="first", maintain_order=True).select(
            pl.col("record_id").alias("_first_seed"),
            pl.col("task").alias("_seed_task"),
            "source_file",
            "source_line",
            "source_format",
            "license",
        )
        base = pl.struct(
            pl.col("_recipe").alias("recipe"), pl.col("template_id"), pl.col("template_hash")
        ).struct.json_encode()
        # The recipe's own facts (pivot language, tool schemas, ...) join the same JSON object.
        extra = pl.col("metadata_extra")
        metadata = (
            pl.when(extra.is_null() | (extra == "{}"))
            .then(base)
            .otherwise(pl.concat_str([base.str.head(-1), pl.lit(","), extra.str.tail(-1)]))
        )
        assembled = (
            made.with_columns(pl.col("seed_ids").list.first().alias("_first_seed"))
            .join(first_seed, on="_first_seed", how="left", maintain_order="left")
            .with_columns(
                pl.concat_str([pl.lit("s-"), ids]).alias("record_id"),
                pl.lit(batch).alias("batch"),
                pl.coalesce("task", "_seed_task").alias("task"),
                # A record a model made without seeds has the model as its source.
                pl.coalesce(
                    "source_file", pl.concat_str([pl.lit("llm:"), "endpoint", pl.lit("/"), "model"])
                ).alias("source_file"),
                pl.coalesce("source_format", pl.when(is_llm).then(pl.lit("llm"))).alias("source_format"),
                pl.coalesce("license", pl.when(is_llm).then(pl.lit(self.config.llm.license))).alias(
                    "license"
                ),
                pl.col("seed_ids").alias("parent_ids"),
                pl.lit("synthetic").alias("origin"),
                metadata.alias("metadata"),
            )
        )
        return conform(assembled).select(columns)

    @staticmethod
    def _edges(created: pl.DataFrame) -> pl.DataFrame:
        return (
            created.select(
                pl.col("record_id").alias("child_id"),
                pl.col("parent_ids").alias("parent_id"),
                pl.lit("seed").alias("relation"),
                pl.format("recipe {}, template {}", pl.col("_recipe"), pl.col("template_id")).alias("detail"),
            )
            .explode("parent_id")
            .select([pl.col(c).cast(t) for c, t in EDGE_SCHEMA.items()])
        )

    def _provenance(self, created: pl.DataFrame) -> pl.DataFrame:
        recipes = [*self.recipes, *self.llm_recipes]
        params = pl.DataFrame(
            {
                "_recipe": [r.name for r in recipes],
                "params": [json.dumps(r.config.model_dump(mode="json"), sort_keys=True) for r in recipes],
                "_rule_generator": [getattr(r, "generator", None) for r in recipes],
            },
            schema={"_recipe": pl.String, "params": pl.String, "_rule_generator": pl.String},
        )
        return (
            created.join(params, on="_recipe", how="left", maintain_order="left")
            .select(
                "record_id",
                pl.col("_recipe").alias("recipe"),
                pl.col("_kind").alias("kind"),
                "template_id",
                "template_hash",
                "params",
                pl.lit(self.config.seed).alias("seed"),
                pl.coalesce(
                    pl.concat_str([pl.lit("llm:"), "endpoint", pl.lit("/"), "model"]), "_rule_generator"
                ).alias("generator"),
                *_LLM_COLUMNS,
            )
            .select([pl.col(c).cast(t) for c, t in SYNTHESIS_SCHEMA.items()])
        )


def diversity(records: pl.DataFrame) -> dict[str, float | int]:
    """How varied a set of records' instructions (first user turns) and answers are.

    The measures Self-Instruct and Evol-Instruct report: distinct leading words (a verb, for
    imperative instructions: "write", "explain", ...), distinct-1/distinct-2 (unique word uni- and
    bigrams over all of them), and the spread of instruction and answer lengths in words.
    """
    if records.is_empty():
        return {"records": 0}

    def turn(role: str, pick: str) -> pl.Expr:
        position = pl.col("messages").list.eval(pl.element().struct.field("role").eq(role).arg_true())
        index = position.list.first() if pick == "first" else position.list.last()
        return pl.col("messages").list.get(index, null_on_oob=True).struct.field("content").fill_null("")

    words = records.select(
        turn("user", "first").str.to_lowercase().str.extract_all(r"[\p{L}\p{N}']+").alias("w"),
        turn("assistant", "last").str.count_matches(r"\S+").alias("answer_words"),
    ).with_columns(pl.col("w").list.len().alias("instruction_words"))
    tokens = words.with_row_index("r").select("r", "w").explode("w").drop_nulls("w")
    bigrams = tokens.with_columns(pl.col("w").shift(-1).over("r").alias("next")).drop_nulls("next")
    lengths = words.select(
        pl.col(column).quantile(q).alias(f"{column}_p{round(q * 100)}")
        for column in ("instruction_words", "answer_words")
        for q in (0.1, 0.5, 0.9)
    ).row(0, named=True)
    return {
        "records": records.height,
        "distinct_leading_words": words.select(pl.col("w").list.first().drop_nulls().n_unique()).item(),
        "distinct_1": round(tokens["w"].n_unique() / max(1, tokens.height), 4),
        "distinct_2": round(
            bigrams.select(pl.struct("w", "next").n_unique()).item() / max(1, bigrams.height), 4
        ),
        **{name: float(value) for name, value in lengths.items()},
    }
