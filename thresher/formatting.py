"""The formatted stage: chat-template rendering, leak-free train/test splits and the release export.

Rendering is vectorized: messages are exploded into one row per turn, each template turns a row into
its string with ``pl.concat_str`` and the rows are joined back per record. Every template renders
byte-identically to its reference Jinja file in chujiezheng/chat_templates (the oracle the tests run),
for a training example (``add_generation_prompt`` false). Where the reference would raise (roles that
do not alternate), or where a template cannot express a role at all, the record is rejected with
``render_failed`` instead of being rendered approximately.

Adding a template family is one small instance (or subclass) in ``TEMPLATES``:

- ``TurnTemplate``: every message, the system one included, is a headed turn
  (llama3, chatml, phi-3, zephyr).
- ``PreambleTemplate``: a leading system message becomes a plain preamble and only user and
  assistant turns are marked up (mistral, vicuna, alpaca).
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import ClassVar

import polars as pl

from thresher.config import FormatConfig
from thresher.hashing import sha256_hex
from thresher.records import MESSAGE, ROLES, rejections
from thresher.stage import StageResult

RULE_RENDER_FAILED = "render_failed"

# Jinja's ``trim`` filter is Python's ``str.strip()``, whose whitespace set differs from Rust's (and so
# from Polars' default ``strip_chars``): Python also strips the ASCII separators U+001C..U+001F.
# Stripping exactly Python's set keeps renders byte-identical to the reference templates.
PY_WHITESPACE = "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())


def jinja_trim(expr: pl.Expr) -> pl.Expr:
    """``expr`` stripped exactly as Jinja's ``| trim`` strips it."""
    return expr.str.strip_chars(PY_WHITESPACE)


@dataclass(frozen=True)
class ChatTemplate(ABC):
    """One model family's chat format, rendered over exploded turns.

    ``render`` hands ``turn`` one row per message (``role``, and ``content`` already trimmed like the
    reference's ``| trim``) and joins the results per record after ``preamble``.
    """

    name: str
    # The reference Jinja file in chujiezheng/chat_templates this template must match byte for byte.
    reference: str
    bos_token: str = ""
    eos_token: str = ""

    # Roles the format can mark up. Anything else is rejected rather than silently dropped or mislabelled.
    roles: ClassVar[frozenset[str]] = frozenset({"system", "user", "assistant"})
    # Whether a leading system message is folded into a preamble instead of rendered as a turn.
    system_as_preamble: ClassVar[bool] = False

    @abstractmethod
    def turn(self, role: pl.Expr, content: pl.Expr) -> pl.Expr:
        """The string one message renders to (``content`` is already trimmed)."""

    def preamble(self, system: pl.Expr) -> pl.Expr:
        """Text before the first turn; ``system`` is the trimmed leading system content or null."""
        return pl.lit(self.bos_token)


@dataclass(frozen=True)
class TurnTemplate(ChatTemplate):
    """Formats where each message is ``<start><role><sep><content><end>`` and the system prompt is a turn."""

    start: str = ""
    sep: str = ""
    end: str = ""
    # ``{eos}`` in ``end`` stands for the eos token (zephyr ends turns with it).

    def turn(self, role: pl.Expr, content: pl.Expr) -> pl.Expr:
        end = self.end.replace("{eos}", self.eos_token)
        return pl.concat_str([pl.lit(self.start), role, pl.lit(self.sep), content, pl.lit(end)])


@dataclass(frozen=True)
class ChatMLTemplate(TurnTemplate):
    """ChatML names the role in free text, so it can express a tool turn (``<|im_start|>tool``).

    The reference template still enforces user/assistant alternation, so a tool message only renders
    where an assistant turn would stand; other tool conversations are rejected like in the reference.
    """

    roles: ClassVar[frozenset[str]] = frozenset({"system", "user", "assistant", "tool"})


@dataclass(frozen=True)
class PreambleTemplate(ChatTemplate):
    """Formats with marked-up user/assistant turns and the system prompt as plain leading text.

    The reference silently renders nothing for any other role (a system message after the first, a tool
    message); such records are rejected here instead, so no message is dropped without a ledger row.
    """

    user_prefix: str = ""
    user_suffix: str = ""
    assistant_prefix: str = ""
    assistant_suffix: str = ""

    system_as_preamble: ClassVar[bool] = True

    def turn(self, role: pl.Expr, content: pl.Expr) -> pl.Expr:
        eos = self.eos_token
        return (
            pl.when(role == "user")
            .then(pl.concat_str([pl.lit(self.user_prefix), content, pl.lit(self.user_suffix)]))
            .otherwise(
                pl.concat_str(
                    [
                        pl.lit(self.assistant_prefix),
                        content,
                        pl.lit(self.assistant_suffix.replace("{eos}", eos)),
                    ]
                )
            )
        )

    def preamble(self, system: pl.Expr) -> pl.Expr:
        system_part = pl.concat_str([system, pl.lit("\n\n")]).fill_null("")
        return pl.concat_str([pl.lit(self.bos_token), system_part])


TEMPLATES: dict[str, ChatTemplate] = {
    t.name: t
    for t in [
        TurnTemplate(
            name="llama3",
            reference="llama-3-instruct.jinja",
            bos_token="<|begin_of_text|>",
            start="<|start_header_id|>",
            sep="<|end_header_id|>\n\n",
            end="<|eot_id|>",
        ),
        # Qwen/Yi/Orca-2 tokenizers have no bos token: the reference's ``{{ bos_token }}`` renders empty.
        ChatMLTemplate(
            name="chatml", reference="chatml.jinja", start="<|im_start|>", sep="\n", end="<|im_end|>\n"
        ),
        TurnTemplate(name="phi-3", reference="phi-3.jinja", start="<|", sep="|>\n", end="<|end|>\n"),
        TurnTemplate(
            name="zephyr", reference="zephyr.jinja", eos_token="</s>", start="<|", sep="|>\n", end="{eos}\n"
        ),
        PreambleTemplate(
            name="mistral",
            reference="mistral-instruct.jinja",
            bos_token="<s>",
            eos_token="</s>",
            user_prefix="[INST] ",
            user_suffix=" [/INST]",
            assistant_prefix=" ",
            assistant_suffix="{eos}",
        ),
        PreambleTemplate(
            name="vicuna",
            reference="vicuna.jinja",
            bos_token="<s>",
            eos_token="</s>",
            user_prefix="USER: ",
            user_suffix="\n",
            assistant_prefix="ASSISTANT: ",
            assistant_suffix="{eos}\n",
        ),
        PreambleTemplate(
            name="alpaca",
            reference="alpaca.jinja",
            bos_token="<s>",
            eos_token="</s>",
            user_prefix="### Instruction:\n",
            user_suffix="\n\n",
            assistant_prefix="### Response:\n",
            assistant_suffix="{eos}\n\n",
        ),
    ]
}


# --------------------------------------------------------------------------------------------------
# Turns: the exploded view every template renders from


def explode_turns(records: pl.DataFrame) -> pl.DataFrame:
    """One row per message: ``record_id``, ``message_index``, ``role``, ``content`` (untrimmed).

    A record without messages yields one row with null index, role and content, so it is not lost.
    """
    # Polars 2 drops empty lists on explode unless told otherwise; a dropped row is a lost record.
    return (
        records.select("record_id", pl.col("messages").fill_null([]))
        .with_columns(pl.int_ranges(0, pl.col("messages").list.len()).alias("message_index"))
        .explode("messages", "message_index", empty_as_null=True)
        .select(
            "record_id",
            pl.col("message_index").cast(pl.Int64),
            pl.col("messages").struct.field("role").alias("role"),
            pl.col("messages").struct.field("content").alias("content"),
        )
    )


def _role_phrase(role: pl.Expr) -> pl.Expr:
    """How a detail names a role: known roles by name, anything else generically (it could be text)."""
    return pl.when(role.is_in(list(ROLES))).then(role).otherwise(pl.lit("unknown role"))


def _render_problems(turns: pl.DataFrame, template: ChatTemplate) -> pl.DataFrame:
    """``record_id``, ``problem``: why ``template`` cannot render a record (first failing message only)."""
    idx = pl.col("message_index")
    role = pl.col("role")
    where = pl.format("message {} ({})", idx + 1, _role_phrase(role))
    # The reference's alternation check: after an optional leading system message, user turns sit at
    # even positions and every other role at odd ones.
    offset = (pl.col("role").first().over("record_id") == "system").cast(pl.Int64).fill_null(0)
    alternates = (role == "user") == (idx % 2 == offset)
    problem = (
        pl.when(idx.is_null())
        .then(pl.lit("the record has no messages"))
        .when(role.is_null())
        .then(pl.format("message {} has no role", idx + 1))
        .when(pl.col("content").is_null())
        .then(pl.format("message {} has no content", idx + 1))
        .when(~role.is_in(sorted(template.roles)))
        .then(pl.format("{} has a role the template cannot express", where))
        .when(pl.lit(template.system_as_preamble) & (role == "system") & (idx > 0))
        .then(pl.format("{} is a system message after the first, which the template cannot place", where))
        .when(~alternates)
        .then(pl.format("{} breaks the user/assistant alternation the template requires", where))
    )
    return (
        turns.with_columns(problem.alias("problem"))
        .filter(pl.col("problem").is_not_null())
        .group_by("record_id", maintain_order=True)
        .agg(pl.col("problem").first())
    )


def render(turns: pl.DataFrame, template: ChatTemplate) -> pl.DataFrame:
    """``record_id``, ``text`` for every record in ``turns`` (which must all be renderable by ``template``)."""
    content = jinja_trim(pl.col("content"))
    leading_system = (pl.col("message_index") == 0) & (pl.col("role") == "system")
    records = turns.select("record_id").unique(maintain_order=True)
    systems = turns.filter(leading_system).select("record_id", pl.col("content").alias("system"))
    body_rows = turns.filter(~leading_system) if template.system_as_preamble else turns
    bodies = body_rows.group_by("record_id", maintain_order=True).agg(
        template.turn(pl.col("role"), content).str.join("").alias("body")
    )
    return (
        records.join(systems, on="record_id", how="left", maintain_order="left")
        .join(bodies, on="record_id", how="left", maintain_order="left")
        .select(
            "record_id",
            pl.concat_str(
                [template.preamble(jinja_trim(pl.col("system"))), pl.col("body").fill_null("")]
            ).alias("text"),
        )
    )


# --------------------------------------------------------------------------------------------------
# Splits


def _stable_unit_interval(keys: pl.Series) -> pl.Series:
    """A number in [0, 1) per key from SHA-256, so assignments survive library upgrades.

    (Polars' ``hash`` is only stable within one Polars version; a split that moves records between
    train and test on an upgrade would leak evaluation data.)
    """
    hashed = sha256_hex(keys)
    # 13 hex digits = 52 bits: exactly representable as a float64.
    return (hashed.str.slice(0, 13).str.to_integer(base=16).cast(pl.Float64) / float(16**13)).alias("u")


def prompt_group_key(messages: pl.Expr) -> pl.Expr:
    """The normalized first user message: records sharing a prompt must land in the same split."""
    first_user = messages.list.eval(
        pl.element().filter(pl.element().struct.field("role") == "user").struct.field("content")
    ).list.first()
    return first_user.str.normalize("NFKC").str.to_lowercase().str.replace_all(r"\s+", " ").str.strip_chars()


def split_records(records: pl.DataFrame, ratios: dict[str, float], seed: int) -> pl.Series:
    """The split name of every record, from a stable hash of (seed, normalized first user message).

    Buckets are cumulative ratios in the order ``ratios`` lists them. A record without a user
    message is grouped by its own id (it shares no prompt with anything).
    """
    if not ratios:
        raise ValueError("at least one split is needed")
    prompt = prompt_group_key(pl.col("messages"))
    keys = (
        records.select("record_id", prompt.alias("prompt"))
        .select(
            pl.concat_str(
                [
                    pl.lit(f"{seed}\x1f"),
                    pl.when(pl.col("prompt").is_not_null())
                    .then(pl.concat_str([pl.lit("p:"), pl.col("prompt")]))
                    .otherwise(pl.concat_str([pl.lit("id:"), pl.col("record_id")])),
                ]
            ).alias("k")
        )
        .to_series()
    )
    names = list(ratios)
    bounds = list(accumulate(ratios.values()))
    # The last bucket takes the rest, so float rounding in the cumulative sum cannot drop a record.
    bucket: pl.Expr = pl.lit(names[-1])
    for name, bound in reversed(list(zip(names[:-1], bounds[:-1], strict=True))):
        bucket = pl.when(pl.col("u") < bound).then(pl.lit(name)).otherwise(bucket)
    return pl.DataFrame({"u": _stable_unit_interval(keys)}).select(bucket.alias("split"))["split"]


# --------------------------------------------------------------------------------------------------
# The stage


class Formatter:
    """Renders verified records with every configured template and assigns splits."""

    def __init__(self, config: FormatConfig) -> None:
        unknown = [t for t in config.templates if t not in TEMPLATES]
        if unknown:
            raise ValueError(f"unknown template(s) {unknown}; known: {sorted(TEMPLATES)}")
        self.config = config
        self.templates = [TEMPLATES[t] for t in config.templates]

    def _with_default_system(self, records: pl.DataFrame) -> tuple[pl.DataFrame, int]:
        """Prepend ``default_system_prompt`` to records without any system message.

        Applied to the kept records' messages too, so the messages export and the rendered texts of
        a release describe the same conversation.
        """
        prompt = self.config.default_system_prompt
        if prompt is None:
            return records, 0
        lacks = ~pl.col("messages").list.eval(pl.element().struct.field("role") == "system").list.any()
        lacks = lacks.fill_null(False) & (pl.col("messages").list.len() > 0)
        system = pl.lit({"role": "system", "content": prompt}, dtype=MESSAGE)
        added = records.select(lacks.sum()).item()
        return records.with_columns(
            pl.when(lacks)
            .then(pl.concat_list([system, pl.col("messages")]))
            .otherwise(pl.col("messages"))
            .alias("messages")
        ), int(added or 0)

    def run(self, records: pl.DataFrame) -> StageResult:
        """Keep every record that all configured templates can render, with its split; reject the rest."""
        records, added = self._with_default_system(records)
        turns = explode_turns(records)

        problems = [
            _render_problems(turns, t).with_columns(pl.lit(t.name).alias("template")) for t in self.templates
        ]
        counters = {
            f"render_failed.{t.name}": p.height for t, p in zip(self.templates, problems, strict=True)
        }
        failed = (
            pl.concat(problems)
            .group_by("record_id", maintain_order=True)
            .agg(pl.format("{}: {}", pl.col("template"), pl.col("problem")).str.join("; ").alias("why"))
        )
        bad = records.join(failed, on="record_id", how="inner", maintain_order="left")
        rejected = rejections(
            bad, RULE_RENDER_FAILED, pl.concat_str([pl.lit("cannot be rendered with "), pl.col("why")])
        )

        kept = records.join(failed, on="record_id", how="anti", maintain_order="left")
        kept = kept.with_columns(
            split_records(kept, self.config.splits, self.config.split_seed).alias("split")
        )
        good_turns = turns.join(failed, on="record_id", how="anti", maintain_order="left")
        renders = pl.concat(
            [
                render(good_turns, t).select("record_id", pl.lit(t.name).alias("template"), "text")
                for t in self.templates
            ]
        )

        split_counts = kept.group_by("split").len()
        by_split = dict(zip(split_counts["split"].to_list(), split_counts["len"].to_list(), strict=True))
        counters.update({f"split.{name}": by_split.get(name, 0) for name in self.config.splits})
        counters.update({f"template.{t.name}": kept.height for t in self.templates})
        if self.config.default_system_prompt is not None:
            counters["system_prompt_added"] = added
        return StageResult(
            rows_in=records.height,
            kept=kept,
            rejected=rejected,
            tables={"renders": renders},
            counters=counters,
        )


# --------------------------------------------------------------------------------------------------
# Export


def export_release(kept: pl.DataFrame, renders: pl.DataFrame, out_dir: Path) -> dict[str, Path]:
    """Write the release files, one JSON object per line, ordered by ``record_id``.

    - ``messages/<split>.jsonl``: ``{"id", "messages": [{"role", "content"}, ...]}`` (OpenAI
      finetuning format plus the record id for tracing);
    - ``<template>/<split>.jsonl``: ``{"id", "text"}``.

    Only splits that hold records get files, and files from an earlier export are not removed: give
    each release a fresh ``out_dir``. Returns ``{"messages/train": path, "llama3/train": path, ...}``.
    """
    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    ordered = kept.select("record_id", "split", "messages").sort("record_id")
    for split in sorted(ordered["split"].unique().to_list()):
        rows = ordered.filter(pl.col("split") == split)
        path = out_dir / "messages" / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        rows.select(pl.col("record_id").alias("id"), "messages").write_ndjson(path)
        written[f"messages/{split}"] = path

    texts = renders.join(kept.select("record_id", "split"), on="record_id", how="inner").sort(
        "template", "record_id"
    )
    for (template, split), rows in texts.group_by("template", "split", maintain_order=True):
        path = out_dir / str(template) / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        rows.select(pl.col("record_id").alias("id"), "text").write_ndjson(path)
        written[f"{template}/{split}"] = path
    return dict(sorted(written.items()))
