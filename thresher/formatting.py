"""The formatted stage: chat-template rendering, leak-free train/test splits and the release export.

Rendering is vectorized: messages are exploded into one row per turn, each template turns a row into
its string with ``pl.concat_str`` (``render_pieces``: the per-turn pieces token counts and loss masks
are measured on) and the rows are joined back per record (``render``). Every template renders
byte-identically to its reference Jinja file in chujiezheng/chat_templates (the oracle the tests run),
for a training example (``add_generation_prompt`` false). Where the reference would raise (roles that
do not alternate), or where a template cannot express a role at all, the record is rejected with
``render_failed`` instead of being rendered approximately.

Adding a template family is one small instance (or subclass) in ``TEMPLATES``:

- ``TurnTemplate``: every message, the system one included, is a headed turn
  (llama3, chatml, phi-3, zephyr; ``QwenTemplate`` adds Qwen 2.5's default system prompt and tool
  results, ``GemmaTemplate`` folds the system prompt into the first user turn).
- ``PreambleTemplate``: a leading system message becomes a plain preamble and only user and
  assistant turns are marked up (mistral, vicuna, alpaca).

Before anything is rendered, a record whose content holds a special token of any family the
cleaning stage knows (``thresher.cleaning.junk.SPECIAL_TOKENS``) is rejected as
``special_tokens_in_content``; the round trip stays the backstop.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import polars as pl

from thresher.cleaning.junk import SPECIAL_TOKENS
from thresher.config import FormatConfig
from thresher.records import MESSAGE, ROLES, rejections
from thresher.stage import StageResult

RULE_RENDER_FAILED = "render_failed"
RULE_SPECIAL_TOKENS = "special_tokens_in_content"
# Ledger rule -> one sentence for reviewers (shown with the counts in the UI and the dataset card);
# ``too_long`` is thresher.tokens' rule, applied by this stage.
RULE_DESCRIPTIONS = {
    RULE_RENDER_FAILED: "a chat template cannot express the conversation (the reference would raise), or "
    "the render does not parse back into its messages",
    RULE_SPECIAL_TOKENS: "a message holds a special or control token of a chat-template family",
    "too_long": "longer than format.tokens.max_tokens with some template (over_length: drop), or no cut "
    "at a turn boundary fits (over_length: truncate)",
}

# Jinja's ``trim`` filter is Python's ``str.strip()``, whose whitespace set differs from Rust's (and so
# from Polars' default ``strip_chars``): Python also strips the ASCII separators U+001C..U+001F.
# Stripping exactly Python's set keeps renders byte-identical to the reference templates.
PY_WHITESPACE = "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())


def jinja_trim(expr: pl.Expr) -> pl.Expr:
    """``expr`` stripped exactly as Jinja's ``| trim`` strips it."""
    return expr.str.strip_chars(PY_WHITESPACE)


# Every special token of the cleaning stage's catalogue -> its family (a token belongs to one family).
_TOKEN_FAMILY: dict[str, str] = {
    token: family for family, tokens in SPECIAL_TOKENS.items() for token in tokens
}


@dataclass(frozen=True)
class ChatTemplate(ABC):
    """One model family's chat format, rendered over exploded turns.

    ``render_pieces`` hands ``turn`` one record's turns in order (``role``, and ``content`` as
    ``turn_content`` prepares it) inside a per-record aggregation, so a turn may look at its
    neighbours with ``shift``; it joins the results per record after ``preamble``.
    """

    name: str
    # The reference Jinja file in chujiezheng/chat_templates this template must match byte for byte.
    reference: str
    bos_token: str = ""
    eos_token: str = ""

    # Roles the format can mark up. Anything else is rejected rather than silently dropped or mislabelled.
    roles: ClassVar[frozenset[str]] = frozenset({"system", "user", "assistant"})
    # Whether a leading system message is taken out of the turns: written as a plain preamble
    # (mistral, vicuna, alpaca) or folded into the first user turn (gemma). A later system message
    # then has no place and is rejected.
    system_as_preamble: ClassVar[bool] = False
    # Whether the system prompt is only written inside the user turn after it (gemma): a record that
    # is nothing but a system message would render as nothing, so it is rejected.
    system_needs_user_turn: ClassVar[bool] = False
    # Whether the reference raises unless user and assistant turns alternate after an optional system.
    alternating: ClassVar[bool] = True

    @abstractmethod
    def turn(self, role: pl.Expr, content: pl.Expr) -> pl.Expr:
        """The string one message renders to (``content`` as ``turn_content`` made it)."""

    def turn_content(self, content: pl.Expr, system: pl.Expr, first: pl.Expr) -> pl.Expr:
        """What a turn carries of its message: the content trimmed like the reference's ``| trim``.

        ``system`` is the record's leading system content (null without one) and ``first`` whether
        the turn is the record's first, for a template that folds the system prompt into it.
        """
        return jinja_trim(content)

    def preamble(self, system: pl.Expr) -> pl.Expr:
        """Text before the first turn; ``system`` is the trimmed leading system content or null."""
        return pl.lit(self.bos_token)

    def expected_messages(self, messages: pl.Expr) -> pl.Expr:
        """The messages as a render carries them, which is what its parse must give back.

        Here: every content trimmed like the reference's ``| trim`` (surrounding whitespace is what
        most templates do not keep).
        """
        return messages.list.eval(
            pl.struct(
                pl.element().struct.field("role"),
                jinja_trim(pl.element().struct.field("content")).alias("content"),
            )
        ).cast(pl.List(MESSAGE))

    def literals(self) -> list[str]:
        """Every fixed string the template writes around content (eos already substituted)."""
        return [self.bos_token, self.eos_token]

    def special_tokens(self) -> list[str]:
        """The special tokens the grammar writes: ``<|eot_id|>``, ``</s>``, ``[INST]``, ``<end_of_turn>``...

        These are the tokens of the cleaning stage's catalogue (``SPECIAL_TOKENS``) that occur in the
        template's fixed strings. A tokenizer reads them as control tokens wherever they occur, so
        content holding one cannot round-trip: the parse treats them as terminals that never appear
        inside a message. Plain-text markers (``USER: ``, ``### Response:``) are not special tokens:
        content may mention them.
        """
        return sorted(t for t in _TOKEN_FAMILY if any(t in literal for literal in self.literals()))

    def parse_texts(self, texts: pl.DataFrame) -> pl.DataFrame:
        """Parse rendered ``text`` back into messages with the template's grammar, one row per input row.

        Returns ``record_id``, ``messages`` (``role``, ``content``; null when the text does not parse)
        and ``problem`` (why not, naming positions and markers, never text). Vectorized; see
        ``roundtrip_ok`` for what a round trip means per family.
        """
        raise NotImplementedError(f"{type(self).__name__} has no parser")

    def parse(self, text: str) -> list[dict[str, str]]:
        """The messages ``text`` encodes; ``ValueError`` (without quoting text) if it does not parse."""
        parsed = self.parse_texts(pl.DataFrame({"record_id": [""], "text": [text]}, schema=_TEXTS_SCHEMA))
        problem = parsed["problem"][0]
        if problem is not None:
            raise ValueError(f"{self.name}: {problem}")
        return parsed["messages"][0].to_list()


@dataclass(frozen=True)
class TurnTemplate(ChatTemplate):
    """Formats where each message is ``<start><role><sep><content><end>`` and the system prompt is a turn."""

    start: str = ""
    sep: str = ""
    end: str = ""
    # ``{eos}`` in ``end`` stands for the eos token (zephyr ends turns with it).

    # A role's name in its header where the format's name differs from the record's (gemma's ``model``).
    labels: ClassVar[dict[str, str]] = {}

    def end_marker(self) -> str:
        """``end`` with the eos token substituted."""
        return self.end.replace("{eos}", self.eos_token)

    def turn(self, role: pl.Expr, content: pl.Expr) -> pl.Expr:
        label = role.replace(self.labels) if self.labels else role
        return pl.concat_str(
            [pl.lit(self.start), label, pl.lit(self.sep), content, pl.lit(self.end_marker())]
        )

    def literals(self) -> list[str]:
        headed = (self.start + label + self.sep + self.end_marker() for label in self.header_roles())
        return [*super().literals(), *headed]

    def header_roles(self) -> dict[str, str]:
        """Header name -> role, for every role the grammar writes as a headed turn."""
        roles = self.roles - {"system"} if self.system_as_preamble else self.roles
        return {self.labels.get(role, role): role for role in sorted(roles)}

    def parse_texts(self, texts: pl.DataFrame) -> pl.DataFrame:
        """``bos (start role sep content end)*``: split on the end marker, then read each turn's header.

        The split is on the whole end marker (``<|im_end|>\n``), so content holding it yields a turn
        without a header; any special token left inside a content is reported by ``_parsed``.
        """
        return _parsed(self, *self._parse_turns(texts))

    def _parse_turns(self, texts: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        """``rows`` and ``turns`` as ``_parsed`` takes them, one turn per headed piece of text."""
        end = self.end_marker()
        rows = texts.select("record_id", "text").with_row_index("_row")
        body = pl.col("text").str.strip_prefix(self.bos_token)
        rows = rows.with_columns(
            pl.when(pl.col("text").is_null())
            .then(pl.lit("there is no text"))
            .when(~pl.col("text").str.starts_with(self.bos_token))
            .then(pl.lit("the text does not start with the template's bos token"))
            .when(~body.str.ends_with(end) | (body == ""))
            .then(pl.lit("the text does not end with the template's end-of-turn marker"))
            .alias("text_problem"),
            body.str.strip_suffix(end).str.split(end).alias("piece"),
        )
        pieces = (
            rows.filter(pl.col("text_problem").is_null())
            .select("_row", "piece", pl.int_ranges(0, pl.col("piece").list.len()).alias("message_index"))
            .explode("piece", "message_index")
        )
        names = self.header_roles()
        alternatives = "|".join(pl.escape_regex(name) for name in names)
        header = f"^{pl.escape_regex(self.start)}({alternatives}){pl.escape_regex(self.sep)}(?s:(.*))$"
        groups = pl.col("piece").str.extract_groups(header)
        turns = pieces.select(
            "_row",
            pl.col("message_index").cast(pl.Int64),
            groups.struct.field("1").replace(names).alias("role"),
            groups.struct.field("2").alias("content"),
        ).with_columns(
            pl.when(pl.col("role").is_null())
            .then(pl.format("turn {} has no well-formed header", pl.col("message_index") + 1))
            .alias("problem")
        )
        return rows, turns


@dataclass(frozen=True)
class ChatMLTemplate(TurnTemplate):
    """ChatML names the role in free text, so it can express a tool turn (``<|im_start|>tool``).

    The reference template still enforces user/assistant alternation, so a tool message only renders
    where an assistant turn would stand; other tool conversations are rejected like in the reference.
    """

    roles: ClassVar[frozenset[str]] = frozenset({"system", "user", "assistant", "tool"})


# How Qwen 2.5 wraps a tool result inside a user turn; consecutive results share the turn.
_TOOL_OPEN = "<tool_response>\n"
_TOOL_CLOSE = "\n</tool_response>"


@dataclass(frozen=True)
class QwenTemplate(TurnTemplate):
    """Qwen 2.5: ChatML turns as Qwen's own template writes them (for messages without tool calls).

    Unlike ``chatml``: contents are not trimmed, a record without a leading system message gets
    Qwen's default one (which the round trip then expects back), roles need not alternate (a later
    system message is a turn of its own), and tool results are ``<tool_response>`` blocks in a user
    turn, consecutive results sharing one turn. Roles outside ``roles`` render as nothing in the
    reference; they are rejected instead.
    """

    default_system: str = ""

    roles: ClassVar[frozenset[str]] = frozenset({"system", "user", "assistant", "tool"})
    alternating: ClassVar[bool] = False

    def turn(self, role: pl.Expr, content: pl.Expr) -> pl.Expr:
        # ``render`` evaluates this within one record's turns in order: the neighbours are a shift away.
        opens = role.shift(1).ne_missing(pl.lit("tool"))
        closes = role.shift(-1).ne_missing(pl.lit("tool"))
        tool = pl.concat_str(
            [
                pl.when(opens).then(pl.lit(self.start + "user")).otherwise(pl.lit("")),
                pl.lit("\n" + _TOOL_OPEN),
                content,
                pl.lit(_TOOL_CLOSE),
                pl.when(closes).then(pl.lit(self.end_marker())).otherwise(pl.lit("")),
            ]
        )
        return pl.when(role == "tool").then(tool).otherwise(super().turn(role, content))

    def turn_content(self, content: pl.Expr, system: pl.Expr, first: pl.Expr) -> pl.Expr:
        return content

    def preamble(self, system: pl.Expr) -> pl.Expr:
        default = pl.lit(self._default_turn())
        return pl.concat_str(
            [pl.lit(self.bos_token), pl.when(system.is_null()).then(default).otherwise(pl.lit(""))]
        )

    def expected_messages(self, messages: pl.Expr) -> pl.Expr:
        """The messages untrimmed, with Qwen's default system message where the record has none."""
        default = pl.lit({"role": "system", "content": self.default_system}, dtype=MESSAGE)
        has_system = (messages.list.first().struct.field("role") == "system").fill_null(False)
        return (
            pl.when(has_system)
            .then(messages)
            .otherwise(pl.concat_list([default, messages]))
            .cast(pl.List(MESSAGE))
        )

    def literals(self) -> list[str]:
        return [*super().literals(), self._default_turn()]

    def header_roles(self) -> dict[str, str]:
        return {name: role for name, role in super().header_roles().items() if role != "tool"}

    def _default_turn(self) -> str:
        return self.start + "system" + self.sep + self.default_system + self.end_marker()

    def parse_texts(self, texts: pl.DataFrame) -> pl.DataFrame:
        """ChatML turns, where a user turn that is nothing but ``<tool_response>`` blocks is tool results.

        A user message that itself looks like such blocks parses as tool results and so fails the
        round trip, as does a tool result holding the boundary between two blocks.
        """
        rows, turns = self._parse_turns(texts)
        content = pl.col("content")
        is_tool = (
            (pl.col("role") == "user")
            & content.str.starts_with(_TOOL_OPEN)
            & content.str.ends_with(_TOOL_CLOSE)
            & (content.str.len_chars() >= len(_TOOL_OPEN) + len(_TOOL_CLOSE))
        )
        blocks = content.str.strip_prefix(_TOOL_OPEN).str.strip_suffix(_TOOL_CLOSE)
        turns = (
            turns.with_columns(
                pl.when(is_tool).then(pl.lit("tool")).otherwise(pl.col("role")).alias("role"),
                pl.when(is_tool)
                .then(blocks.str.split(_TOOL_CLOSE + "\n" + _TOOL_OPEN))
                .otherwise(pl.concat_list(content))
                .alias("content"),
            )
            .explode("content")
            .with_columns(pl.int_range(pl.len()).over("_row").cast(pl.Int64).alias("message_index"))
        )
        return _parsed(self, rows, turns)


@dataclass(frozen=True)
class GemmaTemplate(TurnTemplate):
    """Gemma: ``<start_of_turn>user`` / ``<start_of_turn>model`` turns, no bos written, no system turn.

    The reference folds a leading system message into the first user turn
    (``trim(trim(system) + "\n\n" + user)``), which is what the round trip then expects back. Where the
    reference would write a later system message as a ``system`` turn Gemma does not have, or a record
    that is only a system message as nothing at all, the record is rejected instead.
    """

    system_as_preamble: ClassVar[bool] = True
    system_needs_user_turn: ClassVar[bool] = True
    labels: ClassVar[dict[str, str]] = {"assistant": "model"}

    def turn_content(self, content: pl.Expr, system: pl.Expr, first: pl.Expr) -> pl.Expr:
        folded = pl.concat_str([jinja_trim(system), pl.lit("\n\n"), content])
        return jinja_trim(pl.when(first & system.is_not_null()).then(folded).otherwise(content))

    def expected_messages(self, messages: pl.Expr) -> pl.Expr:
        """Trimmed contents, a leading system message folded into the message after it."""
        trimmed = super().expected_messages(messages)
        system = messages.list.first()
        first_turn = messages.list.get(1, null_on_oob=True)
        folded = pl.struct(
            first_turn.struct.field("role").alias("role"),
            jinja_trim(
                pl.concat_str(
                    [
                        jinja_trim(system.struct.field("content")),
                        pl.lit("\n\n"),
                        first_turn.struct.field("content"),
                    ]
                )
            ).alias("content"),
        )
        return (
            pl.when((system.struct.field("role") == "system").fill_null(False))
            .then(pl.concat_list([folded, trimmed.list.slice(2)]))
            .otherwise(trimmed)
            .cast(pl.List(MESSAGE))
        )


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

    def literals(self) -> list[str]:
        eos = self.eos_token
        parts = [self.user_prefix, self.user_suffix, self.assistant_prefix, self.assistant_suffix]
        return [*super().literals(), *(part.replace("{eos}", eos) for part in parts)]

    def parse_texts(self, texts: pl.DataFrame) -> pl.DataFrame:
        """``bos [system "\n\n"] (user assistant)* [user]``, roles given by the markers' positions.

        The system preamble ends at the first ``"\n\n" + user_prefix`` (or is the whole body when no
        turn follows); exchanges are split on the assistant suffix, and each exchange at the first
        ``user_suffix + assistant_prefix``. Content holding one of those boundaries parses differently
        from the record and so fails the round trip.
        """
        up, us, ap = self.user_prefix, self.user_suffix, self.assistant_prefix
        end = self.assistant_suffix.replace("{eos}", self.eos_token)
        cut = "\n\n"
        rows = texts.select("record_id", "text").with_row_index("_row")
        body = pl.col("text").str.strip_prefix(self.bos_token)
        after_system = body.str.splitn(cut + up, 2)
        opens_with_turn = body.str.starts_with(up)
        rows = rows.with_columns(
            pl.when(pl.col("text").is_null())
            .then(pl.lit("there is no text"))
            .when(~pl.col("text").str.starts_with(self.bos_token))
            .then(pl.lit("the text does not start with the template's bos token"))
            .when(
                ~opens_with_turn & after_system.struct.field("field_1").is_null() & ~body.str.ends_with(cut)
            )
            .then(pl.lit("the text opens with neither a turn nor a terminated system preamble"))
            .alias("text_problem"),
            pl.when(opens_with_turn)
            .then(None)
            .when(after_system.struct.field("field_1").is_not_null())
            .then(after_system.struct.field("field_0"))
            .otherwise(body.str.strip_suffix(cut))
            .alias("system"),
            pl.when(opens_with_turn)
            .then(body)
            .when(after_system.struct.field("field_1").is_not_null())
            .then(pl.concat_str([pl.lit(up), after_system.struct.field("field_1")]))
            .otherwise(pl.lit(""))
            .str.split(end)
            .alias("exchange"),
        )
        good = rows.filter(pl.col("text_problem").is_null()).with_columns(
            pl.col("system").is_not_null().cast(pl.Int64).alias("offset")
        )
        system = good.filter(pl.col("system").is_not_null()).select(
            "_row",
            pl.lit(0, pl.Int64).alias("message_index"),
            pl.lit("system").alias("role"),
            pl.col("system").alias("content"),
            pl.lit(None, pl.String).alias("problem"),
        )
        # Every piece before the last is ``user_prefix u user_suffix assistant_prefix a``.
        pairs = (
            good.select(
                "_row",
                "offset",
                pl.col("exchange").list.slice(0, pl.col("exchange").list.len() - 1),
            )
            .with_columns(pl.int_ranges(0, pl.col("exchange").list.len()).alias("i"))
            .explode("exchange", "i", empty_as_null=False)
            .with_columns(pl.col("exchange").str.splitn(us + ap, 2).alias("halves"))
            .with_columns(
                (pl.col("offset") + 2 * pl.col("i")).cast(pl.Int64).alias("message_index"),
                pl.when(
                    ~pl.col("halves").struct.field("field_0").str.starts_with(up)
                    | pl.col("halves").struct.field("field_1").is_null()
                )
                .then(pl.format("exchange {} is not a marked user turn and assistant turn", pl.col("i") + 1))
                .alias("problem"),
            )
        )
        users = pairs.select(
            "_row",
            "message_index",
            pl.lit("user").alias("role"),
            pl.col("halves").struct.field("field_0").str.strip_prefix(up).alias("content"),
            "problem",
        )
        assistants = pairs.select(
            "_row",
            pl.col("message_index") + 1,
            pl.lit("assistant").alias("role"),
            pl.col("halves").struct.field("field_1").alias("content"),
            "problem",
        )
        # The last piece is empty (the text ends with an assistant turn) or one user turn.
        tail = good.select(
            "_row",
            (pl.col("offset") + 2 * (pl.col("exchange").list.len() - 1))
            .cast(pl.Int64)
            .alias("message_index"),
            pl.col("exchange").list.last().alias("piece"),
        ).filter(pl.col("piece") != "")
        well_formed = (
            pl.col("piece").str.starts_with(up)
            & pl.col("piece").str.ends_with(us)
            & (pl.col("piece").str.len_chars() >= len(up) + len(us))
        )
        last_user = tail.select(
            "_row",
            "message_index",
            pl.lit("user").alias("role"),
            pl.col("piece")
            .str.slice(len(up), pl.col("piece").str.len_chars() - len(up) - len(us))
            .alias("content"),
            pl.when(~well_formed).then(pl.lit("the text ends inside a turn")).alias("problem"),
        )
        turns = pl.concat([system, users, assistants, last_user])
        return _parsed(self, rows, turns)


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
        QwenTemplate(
            name="qwen2.5",
            reference="qwen2.5-instruct.jinja",
            start="<|im_start|>",
            sep="\n",
            end="<|im_end|>\n",
            default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        ),
        TurnTemplate(name="phi-3", reference="phi-3.jinja", start="<|", sep="|>\n", end="<|end|>\n"),
        TurnTemplate(
            name="zephyr", reference="zephyr.jinja", eos_token="</s>", start="<|", sep="|>\n", end="{eos}\n"
        ),
        # The reference writes neither bos nor eos (the tokenizer's are ``<bos>`` and ``<eos>``).
        GemmaTemplate(
            name="gemma", reference="gemma-it.jinja", start="<start_of_turn>", sep="\n", end="<end_of_turn>\n"
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
        .when(
            pl.lit(template.system_needs_user_turn) & (role == "system") & (pl.len().over("record_id") == 1)
        )
        .then(pl.format("{} has no user turn to be folded into, which the template requires", where))
        .when(pl.lit(template.alternating) & ~alternates)
        .then(pl.format("{} breaks the user/assistant alternation the template requires", where))
    )
    return (
        turns.with_columns(problem.alias("problem"))
        .filter(pl.col("problem").is_not_null())
        .group_by("record_id", maintain_order=True)
        .agg(pl.col("problem").first())
    )


# Stands in for a turn's content to measure where the content sits in the turn's text: no template
# literal or role name holds a NUL character.
_CONTENT_MARK = "\x00"

_PIECES_SCHEMA = {
    "record_id": pl.String,
    "template": pl.String,
    "turn_index": pl.Int64,
    "role": pl.String,
    "piece": pl.String,
    "content_start": pl.Int64,
    "content_end": pl.Int64,
}


def _content_span(marked: pl.Expr, content: pl.Expr) -> list[pl.Expr]:
    """``content_start``/``content_end`` of ``content`` in a text ``marked`` renders with the mark for it.

    Characters, not bytes: ``str.split`` and ``len_chars`` (Polars' ``str.find`` gives byte offsets).
    """
    start = marked.str.split(_CONTENT_MARK).list.first().str.len_chars().cast(pl.Int64)
    return [start.alias("content_start"), (start + content.str.len_chars()).alias("content_end")]


def render_pieces(turns: pl.DataFrame, template: ChatTemplate) -> pl.DataFrame:
    """The render of every record in ``turns`` as its pieces, the input ``thresher.tokens.turn_tokens`` takes.

    One row per piece: ``record_id``, ``template``, ``turn_index`` (the message's index), ``role``,
    ``piece`` (the text the message renders to) and ``content_start``/``content_end`` (characters of
    ``piece`` holding the content as rendered). A preamble that carries the leading system message
    (mistral, vicuna, alpaca) is that message's piece; any other non-empty preamble (bos, Qwen's
    default system turn) is a piece of its own with ``turn_index`` -1 and a null role; a system
    prompt folded into a user turn (gemma) has no piece. A record's pieces in order join to its
    ``render``: each is the same expression, evaluated once with the content and once with a mark.
    """
    leading_system = (pl.col("message_index") == 0) & (pl.col("role") == "system")
    order = turns.select("record_id").unique(maintain_order=True).with_row_index("_record")
    systems = turns.filter(leading_system).select("record_id", pl.col("content").alias("system"))
    body_rows = turns.filter(~leading_system) if template.system_as_preamble else turns
    content = template.turn_content(pl.col("content"), pl.col("system"), pl.col("first"))
    bodies = (
        body_rows.join(systems, on="record_id", how="left", maintain_order="left")
        .with_columns(
            (pl.col("message_index") == pl.col("message_index").min().over("record_id")).alias("first")
        )
        .group_by("record_id", maintain_order=True)
        .agg(
            pl.col("message_index").alias("turn_index"),
            "role",
            template.turn(pl.col("role"), content).alias("piece"),
            *_content_span(template.turn(pl.col("role"), pl.lit(_CONTENT_MARK)), content),
        )
        .explode("turn_index", "role", "piece", "content_start", "content_end")
    )
    system = jinja_trim(pl.col("system"))
    marked = template.preamble(pl.when(pl.col("system").is_not_null()).then(pl.lit(_CONTENT_MARK)))
    carries_system = marked.str.contains(_CONTENT_MARK, literal=True)
    start, end = _content_span(marked, system)
    preambles = (
        order.join(systems, on="record_id", how="left", maintain_order="left")
        .select(
            "record_id",
            pl.when(carries_system).then(0).otherwise(-1).alias("turn_index"),
            pl.when(carries_system).then(pl.lit("system")).alias("role"),
            template.preamble(system).alias("piece"),
            pl.when(carries_system).then(start).alias("content_start"),
            pl.when(carries_system).then(end).alias("content_end"),
        )
        .filter(pl.col("piece") != "")
    )
    return (
        pl.concat([preambles, bodies], how="vertical_relaxed")
        .join(order, on="record_id", how="left")
        .sort("_record", "turn_index")
        .select(
            "record_id",
            pl.lit(template.name).alias("template"),
            *(pl.col(c).cast(t) for c, t in _PIECES_SCHEMA.items() if c not in ("record_id", "template")),
        )
    )


def join_pieces(turns: pl.DataFrame, pieces: pl.DataFrame) -> pl.DataFrame:
    """``record_id``, ``text`` for every record in ``turns``: its ``pieces`` (one template's) joined."""
    texts = pieces.group_by("record_id", maintain_order=True).agg(pl.col("piece").str.join("").alias("text"))
    return (
        turns.select("record_id")
        .unique(maintain_order=True)
        .join(texts, on="record_id", how="left", maintain_order="left")
        .select("record_id", pl.col("text").fill_null(""))
    )


def render(turns: pl.DataFrame, template: ChatTemplate) -> pl.DataFrame:
    """``record_id``, ``text`` for every record in ``turns`` (which must all be renderable by ``template``)."""
    return join_pieces(turns, render_pieces(turns, template))


# --------------------------------------------------------------------------------------------------
# Splits


def prompt_group_key(messages: pl.Expr) -> pl.Expr:
    """The normalized first user message: records sharing a prompt must land in the same split."""
    first_user = messages.list.eval(
        pl.element().filter(pl.element().struct.field("role") == "user").struct.field("content")
    ).list.first()
    return first_user.str.normalize("NFKC").str.to_lowercase().str.replace_all(r"\s+", " ").str.strip_chars()


def prompt_split_conflicts(records: pl.DataFrame) -> pl.Series:
    """Per record, how many distinct splits hold records of its prompt group (1 means no leakage).

    Groups are ``prompt_group_key`` as ``release.assign_splits`` uses it; a record without a user message is
    its own group. Needs ``record_id``, ``messages`` and ``split``; a null split counts as one more.
    """
    prompt = prompt_group_key(pl.col("messages"))
    group = (
        pl.when(prompt.is_not_null())
        .then(pl.concat_str([pl.lit("p:"), prompt]))
        .otherwise(pl.concat_str([pl.lit("id:"), pl.col("record_id")]))
    )
    return records.select(
        pl.col("split").n_unique().over(group).cast(pl.Int64).alias("prompt_group_splits")
    ).to_series()


# --------------------------------------------------------------------------------------------------
# The stage


class Formatter:
    """Renders verified records with every configured template, counts their tokens, applies the
    max-length policy, measures loss masks and packing, and assigns splits."""

    def __init__(self, config: FormatConfig) -> None:
        unknown = [t for t in config.templates if t not in TEMPLATES]
        if unknown:
            raise ValueError(f"unknown template(s) {unknown}; known: {sorted(TEMPLATES)}")
        prompt = config.default_system_prompt or ""
        held = [token for token in _TOKEN_FAMILY if token in prompt]
        if held:
            raise ValueError(
                f"default_system_prompt holds special token(s) {held}: every record would be rejected"
            )
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
        """Keep every record that all configured templates can render and that fits ``config.tokens``
        (truncated where configured), with its split; reject the rest. Tables: ``renders``,
        ``token_counts``, ``truncated``, and ``loss_masks``/``packing`` when configured."""
        records, added = self._with_default_system(records)
        rows_in = records.height
        turns = explode_turns(records)
        # Stray special tokens are caught before rendering, for every family and not only the configured
        # ones: they would otherwise surface as a failed round trip, or not at all where they are another
        # family's tokens (the release may be rendered for that family later).
        stray = stray_special_tokens(turns)
        stray_records = records.join(stray, on="record_id", how="inner", maintain_order="left")
        records = records.join(stray, on="record_id", how="anti", maintain_order="left")
        turns = turns.join(stray, on="record_id", how="anti", maintain_order="left")

        problems = [
            _render_problems(turns, t).with_columns(pl.lit(t.name).alias("template")) for t in self.templates
        ]
        counters = {
            RULE_SPECIAL_TOKENS: stray_records.height,
            **{f"render_failed.{t.name}": p.height for t, p in zip(self.templates, problems, strict=True)},
        }
        unrenderable = (
            pl.concat(problems)
            .group_by("record_id", maintain_order=True)
            .agg(pl.format("{}: {}", pl.col("template"), pl.col("problem")).str.join("; ").alias("problem"))
            .select(
                "record_id",
                pl.concat_str([pl.lit("cannot be rendered with "), pl.col("problem")]).alias("why"),
            )
        )
        renderable = records.join(unrenderable, on="record_id", how="anti", maintain_order="left")
        good_turns = turns.join(unrenderable, on="record_id", how="anti", maintain_order="left")
        pieces = [render_pieces(good_turns, t) for t in self.templates]
        renders = pl.concat(
            [
                join_pieces(good_turns, p).select("record_id", pl.lit(t.name).alias("template"), "text")
                for t, p in zip(self.templates, pieces, strict=True)
            ]
        )
        # A render that does not parse back into the same messages (a content holding the template's
        # own control tokens, say) would teach the model a turn boundary that is not there.
        trip = roundtrip_ok(renderable, renders, [t.name for t in self.templates])
        counters["roundtrip_failed"] = (
            trip.filter(~pl.col("ok")).select(pl.col("record_id").n_unique()).item()
        )
        unparsable = (
            trip.filter(~pl.col("ok"))
            .group_by("record_id", maintain_order=True)
            .agg(pl.format("{}: {}", pl.col("template"), pl.col("problem")).str.join("; ").alias("problem"))
            .select(
                "record_id",
                pl.concat_str(
                    [pl.lit("rendered text does not parse back into its messages with "), pl.col("problem")]
                ).alias("why"),
            )
        )
        failed = pl.concat([unrenderable, unparsable])
        bad = records.join(failed, on="record_id", how="inner", maintain_order="left")
        rejected = pl.concat(
            [
                rejections(stray_records, RULE_SPECIAL_TOKENS, pl.col("why")),
                rejections(bad, RULE_RENDER_FAILED, pl.col("why")),
            ]
        )

        kept = records.join(failed, on="record_id", how="anti", maintain_order="left")
        renders = renders.join(failed, on="record_id", how="anti", maintain_order="left")
        pieces = pl.concat(pieces).join(failed, on="record_id", how="anti", maintain_order="left")
        measured = self._measure(kept, renders, pieces)
        rejected = pl.concat([rejected, measured.rejected])
        # A local import: thresher.release builds on this module's prompt grouping.
        from thresher.release import assign_splits

        kept = measured.kept.with_columns(assign_splits(measured.kept, self.config).alias("split"))
        counters.update(measured.counters)

        split_counts = kept.group_by("split").len()
        by_split = dict(zip(split_counts["split"].to_list(), split_counts["len"].to_list(), strict=True))
        counters.update({f"split.{name}": by_split.get(name, 0) for name in self.config.splits})
        counters.update({f"template.{t.name}": kept.height for t in self.templates})
        if self.config.default_system_prompt is not None:
            counters["system_prompt_added"] = added
        return StageResult(
            rows_in=rows_in,
            kept=kept,
            rejected=rejected,
            tables=measured.tables,
            counters=counters,
        )

    def _measure(self, kept: pl.DataFrame, renders: pl.DataFrame, pieces: pl.DataFrame) -> StageResult:
        """Token counts, the max-length policy, loss masks and packing over the renders that round-tripped.

        Returns the records that fit (truncated ones cut and rendered again) and the ``too_long``
        rejections, with the tables ``renders``, ``token_counts``, ``truncated``, and ``loss_masks`` /
        ``packing`` when configured. Every text is encoded once, by ``turn_tokens``: the per-record
        counts are its per-piece counts summed (equal to ``token_counts`` on the renders).
        """
        # Imported here: thresher.tokens imports this module for its templates.
        from thresher.packing import pack
        from thresher.tokens import apply_max_length, loss_mask_spans, turn_tokens

        config = self.config.tokens
        turns = turn_tokens(pieces, config)
        limited = apply_max_length(kept, turns, config)
        cut = limited.tables["truncated"].select("record_id")
        if cut.height:
            # A cut record is rendered and counted again, from its kept (cut) messages.
            cut_turns = explode_turns(limited.kept.join(cut, on="record_id", how="semi"))
            cut_pieces = [render_pieces(cut_turns, t) for t in self.templates]
            renders = pl.concat(
                [
                    renders.join(cut, on="record_id", how="anti", maintain_order="left"),
                    *(
                        join_pieces(cut_turns, p).select(
                            "record_id", pl.lit(t.name).alias("template"), "text"
                        )
                        for t, p in zip(self.templates, cut_pieces, strict=True)
                    ),
                ]
            )
            turns = pl.concat(
                [
                    turns.join(cut, on="record_id", how="anti", maintain_order="left"),
                    turn_tokens(pl.concat(cut_pieces), config),
                ]
            )
        kept_ids = limited.kept.select("record_id")
        renders = renders.join(kept_ids, on="record_id", how="semi", maintain_order="left")
        masks = loss_mask_spans(turns.join(kept_ids, on="record_id", how="semi", maintain_order="left"))
        counts = masks.select("record_id", "template", "tokens", "tokenizer", "approximate")
        tables = {"renders": renders, "token_counts": counts, "truncated": limited.tables["truncated"]}
        if self.config.release.loss_masks:
            tables["loss_masks"] = masks
        counters = dict(limited.counters)
        # Templates without a tokenizer have no counts, so no token counters.
        totals = counts.group_by("template", maintain_order=True).agg(
            pl.col("tokens").sum().alias("total"), pl.col("tokens").max().alias("max")
        )
        for template, total, longest in totals.filter(pl.col("max").is_not_null()).iter_rows():
            counters[f"tokens.{template}.total"] = total
            counters[f"tokens.{template}.max"] = longest
        if self.config.packing.enabled:
            # Renders without counts (no tokenizer) cannot be packed.
            packing = pack(counts.filter(pl.col("tokens").is_not_null()), self.config.packing.sequence_length)
            tables["packing"] = packing.assignments
            for row in packing.summary.iter_rows(named=True):
                counters[f"packing.{row['template']}.sequences"] = row["sequences"]
                counters[f"packing.{row['template']}.efficiency_permille"] = round(1000 * row["efficiency"])
            too_long = packing.too_long.group_by("template").len()
            for template, n in too_long.iter_rows():
                counters[f"packing.{template}.too_long"] = n
        return StageResult(
            rows_in=kept.height,
            kept=limited.kept,
            rejected=limited.rejected,
            tables=tables,
            counters=counters,
        )


# --------------------------------------------------------------------------------------------------
# Special tokens in content, caught before rendering


def stray_special_tokens(turns: pl.DataFrame) -> pl.DataFrame:
    """``record_id``, ``why``: the records whose content holds a special token of any family.

    Any family the cleaning stage knows, not only the configured templates': a tokenizer reads such a
    string as the control token itself (a turn that ends mid-answer), and the same release may be
    rendered for another family. ``why`` names the first such message, the token and its family,
    never the text around it. ``turns`` as ``explode_turns`` makes them.
    """
    token = pl.col("token")
    return (
        turns.with_columns(_first_token(pl.col("content"), list(_TOKEN_FAMILY)).alias("token"))
        .filter(token.is_not_null())
        .group_by("record_id", maintain_order=True)
        .agg(
            pl.format(
                "message {} ({}) holds '{}', a special token of the {} family",
                pl.col("message_index") + 1,
                _role_phrase(pl.col("role")),
                token,
                token.replace_strict(_TOKEN_FAMILY, return_dtype=pl.String),
            )
            .first()
            .alias("why")
        )
    )


# --------------------------------------------------------------------------------------------------
# Round trip: every render parses back into exactly its record's messages

_TEXTS_SCHEMA = {"record_id": pl.String, "text": pl.String}


def _first_token(content: pl.Expr, tokens: list[str]) -> pl.Expr:
    """The first of ``tokens`` occurring in ``content``, or null."""
    if not tokens:
        return pl.lit(None, pl.String)
    return content.str.extract_many(tokens).list.first()


def _parsed(template: ChatTemplate, rows: pl.DataFrame, turns: pl.DataFrame) -> pl.DataFrame:
    """Assemble a parser's output: per input row its messages, or its first problem.

    ``rows`` holds ``_row``, ``record_id``, ``text_problem``; ``turns`` one row per parsed message
    (``_row``, ``message_index``, ``role``, ``content``, ``problem``). Special tokens are terminals of
    every grammar, so a content still holding one is a problem here.
    """
    token = _first_token(pl.col("content"), template.special_tokens())
    turns = turns.with_columns(
        pl.coalesce(
            "problem",
            pl.when(token.is_not_null()).then(
                pl.format(
                    "turn {} holds the template's special token '{}'", pl.col("message_index") + 1, token
                )
            ),
        ).alias("problem")
    ).sort("_row", "message_index")
    per_row = turns.group_by("_row").agg(
        pl.col("problem").drop_nulls().first().alias("turn_problem"),
        pl.struct("role", "content").alias("messages"),
    )
    out = rows.join(per_row, on="_row", how="left").sort("_row")
    problem = pl.coalesce("text_problem", "turn_problem")
    return out.select(
        "record_id",
        pl.when(problem.is_null())
        .then(pl.col("messages").fill_null([]))
        .cast(pl.List(MESSAGE))
        .alias("messages"),
        problem.alias("problem"),
    )


def roundtrip_ok(
    records: pl.DataFrame, renders: pl.DataFrame, templates: Sequence[str] | None = None
) -> pl.DataFrame:
    """Whether every record's render parses back, with its template's grammar, into the record.

    ``records`` needs ``record_id`` and ``messages`` (as kept, default system prompt included);
    ``renders`` ``record_id``, ``template``, ``text`` (the formatted stage's table). ``templates``
    defaults to those in ``renders``. Returns ``record_id``, ``template``, ``ok``, ``problem``: one
    row per record and template, plus one per render without a record.

    ``ok`` means the parse yields exactly the record's messages as the template carries them
    (``ChatTemplate.expected_messages``): roles and contents in order, the system prompt included,
    each content trimmed as the template trims it (surrounding whitespace is what most templates do
    not keep; qwen2.5 keeps it and adds its default system prompt where a record has none; gemma
    folds the system prompt into the first user turn). What that asks of a record, per family:

    - Turn templates (llama3, chatml, qwen2.5, phi-3, zephyr, gemma) name every role in a header, so
      the parse is exact unless a content holds the end-of-turn marker (or, for qwen2.5, a user
      message is nothing but ``<tool_response>`` blocks, which reads as tool results).
    - Preamble templates (mistral, vicuna, alpaca) have no system marker and no role names: the
      system prompt is the text before the first user marker, and roles follow from marker
      positions (user and assistant alternate). Vicuna's and Alpaca's markers are plain text, so a
      content holding a boundary the parser splits on (``"\nASSISTANT: "`` in a user message,
      ``"\n\n### Response:\n"`` in an instruction, ``"\n\nUSER: "`` in a system prompt) is read
      differently and fails; mentioning a marker elsewhere is fine.
    - Everywhere, the template's special tokens (``ChatTemplate.special_tokens``: ``<|eot_id|>``,
      ``<|im_end|>``, ``</s>``, ``[INST]``, ``<start_of_turn>``, ...) cannot occur in a content: a
      tokenizer would read them as control tokens, so such a record fails even where the text
      happens to parse. (The formatted stage rejects those records before rendering, as
      ``special_tokens_in_content``; this is the backstop.)

    Problems name message positions, roles and template markers, never record text.
    """
    names = (
        list(templates)
        if templates is not None
        else renders["template"].unique(maintain_order=True).to_list()
    )
    unknown = [n for n in names if n not in TEMPLATES]
    if unknown:
        raise ValueError(f"unknown template(s) {unknown}; known: {sorted(TEMPLATES)}")
    return pl.concat(
        [_roundtrip_one(TEMPLATES[n], records, renders.filter(pl.col("template") == n)) for n in names]
    )


def _roundtrip_one(template: ChatTemplate, records: pl.DataFrame, renders: pl.DataFrame) -> pl.DataFrame:
    expected = records.select("record_id", template.expected_messages(pl.col("messages")).alias("expected"))
    parsed = template.parse_texts(renders.select("record_id", "text"))
    parsed = parsed.with_columns(pl.len().over("record_id").alias("n_renders"))
    both = expected.with_row_index("_k").join(
        parsed, on="record_id", how="full", coalesce=True, maintain_order="left_right"
    )
    same = (pl.col("messages") == pl.col("expected")).fill_null(False)
    both = both.with_columns(
        pl.when(pl.col("_k").is_null())
        .then(pl.lit("the render has no record"))
        .when(pl.col("n_renders").is_null())
        .then(pl.lit("the record has no render"))
        .when(pl.col("n_renders") > 1)
        .then(pl.lit("the record has more than one render"))
        .when(pl.col("problem").is_null() & same)
        .then(None)
        .otherwise(pl.lit("?"))
        .alias("problem"),
        pl.col("problem").alias("parse_problem"),
    )
    failed = both.filter(pl.col("problem") == "?").with_row_index("_f")
    if failed.height:
        failed = failed.join(_explain(template, failed), on="_f", how="left")
        both = both.join(failed.select("_k", "_f", pl.col("why")), on="_k", how="left").with_columns(
            pl.when(pl.col("problem") == "?")
            .then(pl.col("why"))
            .otherwise(pl.col("problem"))
            .alias("problem")
        )
    return both.select(
        "record_id",
        pl.lit(template.name).alias("template"),
        pl.col("problem").is_null().alias("ok"),
        "problem",
    )


def _explain(template: ChatTemplate, failed: pl.DataFrame) -> pl.DataFrame:
    """``_f``, ``why``: the clearest reason a parsed render differs from its record.

    In order: a record content holding a special token (the cause, stated on the record's side), the
    parse's own problem, a message count that differs, the first message whose role or content differs.
    """
    expected = (
        failed.select("_f", pl.col("expected").alias("m"))
        .with_columns(pl.int_ranges(0, pl.col("m").list.len()).alias("i"))
        .explode("m", "i")
        .filter(pl.col("i").is_not_null())
        .select(
            "_f", "i", pl.col("m").struct.field("role").alias("role"), pl.col("m").struct.field("content")
        )
    )
    token = _first_token(pl.col("content"), template.special_tokens())
    holds_token = (
        expected.filter(token.is_not_null())
        .group_by("_f")
        .agg(
            pl.format(
                "message {} ({}) holds the template's special token '{}'",
                pl.col("i").first() + 1,
                _role_phrase(pl.col("role")).first(),
                token.first(),
            ).alias("token_why")
        )
    )
    parsed = (
        failed.filter(pl.col("parse_problem").is_null())
        .select("_f", pl.col("messages").alias("m"))
        .with_columns(pl.int_ranges(0, pl.col("m").list.len()).alias("i"))
        .explode("m", "i")
        .filter(pl.col("i").is_not_null())
        .select(
            "_f",
            "i",
            pl.col("m").struct.field("role").alias("parsed_role"),
            pl.col("m").struct.field("content").alias("parsed_content"),
        )
    )
    differs = (
        expected.join(parsed, on=["_f", "i"], how="inner")
        .filter(
            pl.col("role").ne_missing(pl.col("parsed_role"))
            | pl.col("content").ne_missing(pl.col("parsed_content"))
        )
        .sort("_f", "i")
        .group_by("_f", maintain_order=True)
        .agg(
            pl.when(pl.col("role").ne_missing(pl.col("parsed_role")))
            .then(
                pl.format(
                    "message {} parses as {}, the record has {}",
                    pl.col("i") + 1,
                    _role_phrase(pl.col("parsed_role")),
                    _role_phrase(pl.col("role")),
                )
            )
            .otherwise(
                pl.format("message {} ({}) parses to different content", pl.col("i") + 1, pl.col("role"))
            )
            .first()
            .alias("diff_why")
        )
    )
    count = pl.format(
        "the text holds {} messages, the record {}",
        pl.col("messages").list.len(),
        pl.col("expected").list.len(),
    )
    return (
        failed.select("_f", "parse_problem", "messages", "expected")
        .join(holds_token, on="_f", how="left")
        .join(differs, on="_f", how="left")
        .select(
            "_f",
            pl.coalesce(
                "token_why",
                "parse_problem",
                pl.when(pl.col("messages").list.len() != pl.col("expected").list.len()).then(count),
                "diff_why",
                pl.lit("the parsed messages differ from the record"),
            ).alias("why"),
        )
    )
