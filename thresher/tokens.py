"""Token counts, the max-length policy and assistant-only loss masks, with real Mistral tokenizers offline.

The tokenizers are the files ``mistral-common`` ships in its wheel (SentencePiece v1, v2, v3, v7 and
the tekken BPE of Mistral NeMo and Pixtral), so counting needs no hub download. ``available_tokenizers``
lists their names; ``TokensConfig.tokenizers`` maps a template to one, and templates without one are
counted with ``TokensConfig.fallback`` and marked ``approximate``.

What a count is. A rendered text already holds its template's special tokens (``<s>``, ``[INST]``,
``<|eot_id|>``) as literal strings, so it is encoded with neither bos nor eos added. Left alone, both of
mistral-common's encoders would spell such a literal out as plain text: tekken's tiktoken model is
built without special tokens, and SentencePiece never matches a control symbol in input text. A
trainer's tokenizer reads them as single control tokens, so we do too: the text is cut at the
template's special tokens, each one is one token (the tokenizer's control id), and the plain text
between them is encoded with mistral-common's own encode (bos and eos off). Which special tokens match:

- with the template's own tokenizer, those the vocabulary has as control tokens; the others stay plain
  text, as that model reads them (Mistral v1 has no ``[INST]`` token and spells it out);
- with the fallback (approximate), every special token of the template is one token (id -1 where the
  vocabulary lacks it): the target model reads ``<|eot_id|>`` as one token, and spelling it out in a
  foreign vocabulary would inflate every turn by a dozen tokens.

SentencePiece adds its dummy-prefix ``▁`` to every string it encodes, so each plain segment after a
special token starts with one (``[INST] Hello [/INST]`` gives ``▁``, ``▁Hello``, ``▁``), exactly as
``encode`` does on that segment. Mistral's own chat encoding instead encodes each bare message, without
the spaces the Jinja template writes around it: on two-exchange GSM8K conversations rendered with the
``mistral`` template our counts are 5-6 tokens higher with SentencePiece v3/v7 and within 3 with
tekken (tests/test_tokens.py pins the bounds).

Positions are characters (Unicode code points, Python ``str`` indices, Polars ``len_chars``).
"""

from __future__ import annotations

import functools
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl

from thresher.config import TokensConfig
from thresher.formatting import TEMPLATES, ChatTemplate
from thresher.records import rejections
from thresher.stage import StageResult

RULE_TOO_LONG = "too_long"

# Name -> file in mistral_common/data (mistral-common 1.9.1). v7m1 is byte-identical to v7 and omitted.
TOKENIZER_FILES: dict[str, str] = {
    "mistral-v1": "tokenizer.model.v1",
    "mistral-v2": "mistral_instruct_tokenizer_240216.model.v2",
    "mistral-v3": "mistral_instruct_tokenizer_240323.model.v3",
    "mistral-v7": "mistral_instruct_tokenizer_241114.model.v7",
    "mistral-tekken": "tekken_240718.json",
    "mistral-tekken-240911": "tekken_240911.json",
}

SPAN = pl.Struct({"start": pl.Int64, "end": pl.Int64})


def available_tokenizers() -> list[str]:
    """Names ``load_tokenizer`` accepts (and ``TokensConfig`` may name)."""
    return sorted(TOKENIZER_FILES)


@functools.cache
def load_tokenizer(name: str) -> Tokenizer:
    """The named tokenizer, loaded once per process (tekken's vocabulary takes about two seconds)."""
    if name not in TOKENIZER_FILES:
        raise ValueError(f"unknown tokenizer {name!r}; available: {available_tokenizers()}")
    import mistral_common  # imported here: only token counting needs it

    path = Path(mistral_common.__file__).parent / "data" / TOKENIZER_FILES[name]
    if path.suffix == ".json":
        return TekkenTokenizer(name, path)
    return SentencePieceTokenizer(name, path)


# --------------------------------------------------------------------------------------------------
# Tokenizers


@dataclass(frozen=True)
class Encoded:
    """Tokens of a batch of texts, flat: text ``i`` owns positions ``bounds[i]:bounds[i + 1]``.

    ``starts``/``ends`` are each token's character span in its own text (a token holding part of a
    multi-byte character covers that whole character; SentencePiece's dummy prefix is empty).
    """

    ids: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    bounds: np.ndarray

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.bounds)

    def text_index(self) -> np.ndarray:
        """The text every token belongs to."""
        return np.repeat(np.arange(len(self.bounds) - 1), self.counts)


@dataclass(frozen=True)
class _Segments:
    """Texts cut at special tokens, in order: plain segments are encoded, special ones are one token."""

    text: np.ndarray  # index of the text each segment belongs to
    strings: list[str]
    start: np.ndarray  # character offset of the segment in its text
    special: np.ndarray  # bool

    @classmethod
    def split(cls, texts: Sequence[str], special_tokens: Sequence[str]) -> _Segments:
        # A Python loop over texts: the encoders take one Python string per segment anyway, and
        # Polars cannot split on a regex while keeping the separators.
        rows: list[tuple[int, str, int, bool]] = []
        pattern = _alternation(special_tokens)
        for i, text in enumerate(texts):
            pos = 0
            for m in pattern.finditer(text) if pattern is not None else ():
                if m.start() > pos:
                    rows.append((i, text[pos : m.start()], pos, False))
                rows.append((i, m.group(), m.start(), True))
                pos = m.end()
            if pos < len(text):
                rows.append((i, text[pos:] if pos else text, pos, False))
        index, strings, start, special = zip(*rows, strict=True) if rows else ((), (), (), ())
        return cls(
            np.asarray(index, dtype=np.int64),
            list(strings),
            np.asarray(start, dtype=np.int64),
            np.asarray(special, dtype=bool),
        )


def _alternation(tokens: Sequence[str]) -> re.Pattern[str] | None:
    """A regex matching any of ``tokens``, longest first (``[/INST]`` before ``[INST]`` cannot clash)."""
    if not tokens:
        return None
    return re.compile("|".join(re.escape(t) for t in sorted(set(tokens), key=lambda t: (-len(t), t))))


class Tokenizer(ABC):
    """A Mistral tokenizer: counts (fast) and encodings with character offsets, over batches of texts."""

    def __init__(self, name: str, path: Path, id_shift: int = 0) -> None:
        self.name = name
        self.path = path
        # Added to the backend's ids to give mistral-common's (tekken numbers its special tokens first).
        self._id_shift = id_shift

    @abstractmethod
    def control_id(self, token: str) -> int | None:
        """The id of ``token`` if the vocabulary has it as a control token (``<s>``, ``[INST]``)."""

    @abstractmethod
    def _backend_encode(self, strings: list[str]) -> list[list[int]]:
        """The backend's ids of each string: mistral-common's ``encode(s, bos=False, eos=False)`` less the shift."""

    @abstractmethod
    def _byte_spans(
        self, strings: list[str], ids: np.ndarray, counts: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Byte ``(starts, ends)`` of every token (backend ``ids``, ``counts`` per string) in its string."""

    def count(self, texts: Sequence[str], special_tokens: Sequence[str] = ()) -> list[int]:
        """Tokens in each text, ``special_tokens`` matched as one token each (see the module doc)."""
        seg = _Segments.split(texts, special_tokens)
        plain = np.flatnonzero(~seg.special)
        rows = self._backend_encode([seg.strings[k] for k in plain])
        per_segment = np.ones(len(seg.strings), dtype=np.int64)
        per_segment[plain] = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        return np.bincount(seg.text, weights=per_segment, minlength=len(texts)).astype(np.int64).tolist()

    def encode(self, texts: Sequence[str], special_tokens: Sequence[str] = ()) -> Encoded:
        """Token ids and character spans of every text (``special_tokens`` as in ``count``)."""
        seg = _Segments.split(texts, special_tokens)
        plain = np.flatnonzero(~seg.special)
        strings = [seg.strings[k] for k in plain]
        rows = self._backend_encode(strings)
        n_plain = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        ids = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(n_plain.sum()))
        byte_start, byte_end = self._byte_spans(strings, ids, n_plain)
        # Bytes to characters on the concatenation of the plain segments: a character starts at every
        # byte that is not a UTF-8 continuation byte.
        buf = np.frombuffer("".join(strings).encode("utf-8"), dtype=np.uint8)
        chars_before = np.concatenate([[0], np.cumsum((buf & 0xC0) != 0x80)])
        seg_bytes = np.fromiter((len(s.encode("utf-8")) for s in strings), dtype=np.int64, count=len(strings))
        seg_chars = np.fromiter(map(len, strings), dtype=np.int64, count=len(strings))
        owner = np.repeat(np.arange(len(strings)), n_plain)
        byte_base = (np.cumsum(seg_bytes) - seg_bytes)[owner]
        gs, ge = byte_base + byte_start, byte_base + byte_end
        # A token holding part of a character covers the character; an empty token stays empty.
        char_start = np.where(ge > gs, chars_before[np.minimum(gs + 1, len(buf))] - 1, chars_before[gs])
        char_end = chars_before[ge]
        to_text = (seg.start[plain] - (np.cumsum(seg_chars) - seg_chars))[owner]

        # Interleave: each special segment is one token at its segment's first output position.
        per_segment = np.ones(len(seg.strings), dtype=np.int64)
        per_segment[plain] = n_plain
        special = np.flatnonzero(seg.special)
        at = (np.cumsum(per_segment) - per_segment)[special]
        is_plain = np.ones(int(per_segment.sum()), dtype=bool)
        is_plain[at] = False
        out_ids = np.empty(is_plain.size, dtype=np.int64)
        out_start = np.empty(is_plain.size, dtype=np.int64)
        out_end = np.empty(is_plain.size, dtype=np.int64)
        out_ids[is_plain] = ids + self._id_shift
        out_start[is_plain] = char_start + to_text
        out_end[is_plain] = char_end + to_text
        controls = {t: self.control_id(t) for t in set(special_tokens)}
        out_ids[at] = [-1 if controls[seg.strings[k]] is None else controls[seg.strings[k]] for k in special]
        out_start[at] = seg.start[special]
        out_end[at] = seg.start[special] + np.fromiter(
            (len(seg.strings[k]) for k in special), dtype=np.int64, count=special.size
        )
        per_text = np.bincount(seg.text, weights=per_segment, minlength=len(texts)).astype(np.int64)
        return Encoded(out_ids, out_start, out_end, np.concatenate([[0], np.cumsum(per_text)]))


def _segmented_offsets(lengths: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Start of every item within its group: ``lengths`` cumulated, restarting at each group."""
    ends = np.cumsum(lengths)
    group_first = np.repeat(np.cumsum(counts) - counts, counts)
    before_group = np.concatenate([[0], ends])[group_first]
    return ends - lengths - before_group


class TekkenTokenizer(Tokenizer):
    """Tekken (tiktoken BPE over bytes): lossless, so a token's span is its byte length."""

    def __init__(self, name: str, path: Path) -> None:
        from mistral_common.tokens.tokenizers.tekken import Tekkenizer

        self.mistral = Tekkenizer.from_file(path)
        super().__init__(name, path, id_shift=self.mistral.num_special_tokens)
        # ``Tekkenizer.encode`` is its tiktoken model's ``encode`` shifted past the special ids; calling
        # the model saves building shifted lists we only count (tests pin equality with ``encode``).
        self._encode_ordinary = self.mistral._model.encode_ordinary
        ranks = self.mistral.n_words - self._id_shift
        token_bytes = self.mistral._model.decode_single_token_bytes
        self._byte_len = np.fromiter((len(token_bytes(r)) for r in range(ranks)), dtype=np.int64, count=ranks)

    def control_id(self, token: str) -> int | None:
        return self.mistral.get_special_token(token) if self.mistral.is_special(token) else None

    def _backend_encode(self, strings: list[str]) -> list[list[int]]:
        # One call per string: tiktoken's batch call goes through a thread pool that costs more than
        # it saves on segments of a few hundred bytes (measured 2x slower on two cores).
        encode = self._encode_ordinary
        return [encode(s) for s in strings]

    def _byte_spans(
        self, strings: list[str], ids: np.ndarray, counts: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        lengths = self._byte_len[ids]
        starts = _segmented_offsets(lengths, counts)
        return starts, starts + lengths


class SentencePieceTokenizer(Tokenizer):
    """Mistral's SentencePiece models, run with the ``sentencepiece`` package mistral-common wraps."""

    def __init__(self, name: str, path: Path) -> None:
        import sentencepiece
        from mistral_common.tokens.tokenizers.sentencepiece import SentencePieceTokenizer as Mistral

        super().__init__(name, path)
        self.mistral = Mistral(path)
        self._sp = sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        # Bytes of input each piece stands for: "▁" is one space, byte-fallback pieces one byte.
        self._byte_len = np.array(
            [
                1
                if sp.is_byte(i)
                else 0
                if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i)
                else len(sp.id_to_piece(i).replace("▁", " ").encode("utf-8"))
                for i in range(sp.get_piece_size())
            ],
            dtype=np.int64,
        )
        # The dummy prefix: the first piece's leading "▁" stands for no input byte.
        self._dummy_prefix = sp.encode("a", out_type=str)[0].startswith("▁")

    def control_id(self, token: str) -> int | None:
        i = self._sp.piece_to_id(token)
        return i if self._sp.is_control(i) else None

    def _backend_encode(self, strings: list[str]) -> list[list[int]]:
        # SentencePiece's batch call runs in C++; one Python call per string costs twice as much.
        return self._sp.encode(strings) if strings else []

    def _byte_spans(
        self, strings: list[str], ids: np.ndarray, counts: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        lengths = self._byte_len[ids]
        first = np.cumsum(counts) - counts
        if self._dummy_prefix:
            lengths[first[counts > 0]] -= 1
        starts = _segmented_offsets(lengths, counts)
        ends = starts + lengths
        # Where piece lengths do not add up to the string (a literal "▁", which SentencePiece reads as
        # a space), take SentencePiece's own offsets, one token at a time: rare, so a loop.
        totals = np.bincount(
            np.repeat(np.arange(len(strings)), counts), weights=lengths, minlength=len(strings)
        )
        expected = np.fromiter((len(s.encode("utf-8")) for s in strings), dtype=np.int64, count=len(strings))
        for k in np.flatnonzero(totals != expected):
            pieces = self._sp.encode(strings[k], out_type="proto").pieces
            starts[first[k] : first[k] + counts[k]] = [p.begin for p in pieces]
            ends[first[k] : first[k] + counts[k]] = [p.end for p in pieces]
        return starts, ends


# --------------------------------------------------------------------------------------------------
# Which tokenizer counts which template


def tokenizer_for(template: str, config: TokensConfig) -> tuple[str | None, bool]:
    """``(tokenizer name, approximate)`` for ``template``: its own, else the fallback (approximate)."""
    own = config.tokenizers.get(template)
    if own is not None:
        return own, False
    return config.fallback, config.fallback is not None


def matched_special_tokens(template: str, tokenizer: Tokenizer, approximate: bool) -> list[str]:
    """The template's special tokens that count as one token each (see the module doc)."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; known: {sorted(TEMPLATES)}")
    specials = TEMPLATES[template].special_tokens()
    if approximate:
        return specials
    return [s for s in specials if tokenizer.control_id(s) is not None]


class _TemplateBatch(NamedTuple):
    """One template's rows with what counts them (``tokenizer`` None: no counts)."""

    template: str
    rows: pl.DataFrame
    tokenizer: Tokenizer | None
    approximate: bool | None
    special_tokens: list[str]


def _per_template(frame: pl.DataFrame, config: TokensConfig) -> Iterator[_TemplateBatch]:
    for template in frame["template"].unique(maintain_order=True).to_list():
        name, approximate = tokenizer_for(template, config)
        rows = frame.filter(pl.col("template") == template)
        if name is None:
            yield _TemplateBatch(template, rows, None, None, [])
            continue
        tokenizer = load_tokenizer(name)
        specials = matched_special_tokens(template, tokenizer, approximate)
        yield _TemplateBatch(template, rows, tokenizer, approximate, specials)


_COUNTS_SCHEMA = {
    "record_id": pl.String,
    "template": pl.String,
    "tokens": pl.Int64,
    "tokenizer": pl.String,
    "approximate": pl.Boolean,
}


def token_counts(renders: pl.DataFrame, config: TokensConfig) -> pl.DataFrame:
    """``record_id``, ``template``, ``tokens``, ``tokenizer``, ``approximate`` for every render.

    ``renders`` holds ``record_id``, ``template``, ``text`` (the formatted stage's table). A template
    with no tokenizer (no own one and ``fallback`` null) gets null counts.
    """
    parts = [pl.DataFrame(schema={"_order": pl.UInt32, **_COUNTS_SCHEMA})]
    for batch in _per_template(renders.with_row_index("_order"), config):
        tokenizer = batch.tokenizer
        counts = (
            pl.Series("tokens", tokenizer.count(batch.rows["text"].to_list(), batch.special_tokens))
            if tokenizer is not None
            else pl.lit(None).alias("tokens")
        )
        parts.append(
            batch.rows.select(
                "_order",
                "record_id",
                "template",
                counts,
                pl.lit(tokenizer.name if tokenizer is not None else None).alias("tokenizer"),
                pl.lit(batch.approximate).alias("approximate"),
            )
        )
    frame = pl.concat(parts, how="vertical_relaxed").sort("_order")
    return frame.select([pl.col(c).cast(dtype) for c, dtype in _COUNTS_SCHEMA.items()])


# --------------------------------------------------------------------------------------------------
# Tokens per turn, and the spans a trainer trains on

_TURN_TOKENS_SCHEMA = {
    "record_id": pl.String,
    "template": pl.String,
    "turn_index": pl.Int64,
    "role": pl.String,
    "tokens": pl.Int64,
    "mask_start": pl.Int64,
    "mask_end": pl.Int64,
    "mask_token_start": pl.Int64,
    "mask_token_end": pl.Int64,
    "tokenizer": pl.String,
    "approximate": pl.Boolean,
}


def turn_tokens(pieces: pl.DataFrame, config: TokensConfig) -> pl.DataFrame:
    """Per rendered turn: its tokens and, for assistant turns, the span a trainer trains on.

    ``pieces`` is what the formatter renders before it joins a record's turns, one row per piece:

    - ``record_id``, ``template``, ``turn_index`` (the message's index in the record), ``role``;
    - ``piece``: the text the message renders to. Text before the first message (bos, a default
      system turn) belongs to the first piece or is a piece of its own with ``turn_index`` -1 and
      a null role; a system prompt a template folds elsewhere has no piece;
    - ``content_start``, ``content_end``: characters of ``piece`` holding the message content as
      rendered (needed for assistant pieces, may be null elsewhere).

    A record's pieces in ``turn_index`` order concatenate to its rendered text, and those through
    message ``k`` to the render of the record cut after message ``k``. The text is encoded once, as
    ``token_counts`` encodes it. Returns one row per piece, in input order:

    - ``tokens``: tokens of the text that start inside this piece (they sum to the text's count; a
      prefix of pieces holds as many tokens as its own render, up to a token merged across the cut
      where two pieces do not meet at a special token);
    - ``mask_start``/``mask_end`` (assistant pieces): characters of the text from the content's start
      through the template's end-of-turn token after it (``Hi<|eot_id|>``, ``Hi<|im_end|>``);
    - ``mask_token_start``/``mask_token_end``: the tokens overlapping that span, as indices into the
      text's tokens (a token straddling the boundary, SentencePiece's ``▁Hi``, is trained on).

    Token columns are null for a template without a tokenizer.
    """
    parts = [pl.DataFrame(schema={"_order": pl.UInt32, **_TURN_TOKENS_SCHEMA})]
    ordered = pieces.with_row_index("_order").sort("template", "record_id", "turn_index", maintain_order=True)
    for batch in _per_template(ordered, config):
        rows = _char_layout(batch.rows, TEMPLATES[batch.template])
        tokenizer = batch.tokenizer
        if tokenizer is None:
            parts.append(rows.with_columns(pl.lit(None).alias(c) for c in ("tokenizer", "approximate")))
            continue
        texts = rows.group_by("_text", maintain_order=True).agg(pl.col("piece").str.join(""))["piece"]
        enc = tokenizer.encode(texts.to_list(), batch.special_tokens)
        # One axis for the whole batch: text i starts at base[i], with a gap so no span reaches the
        # next text; then every lookup is one searchsorted.
        lengths = texts.str.len_chars().cast(pl.Int64).to_numpy() + 1
        base = np.cumsum(lengths) - lengths
        token_start = base[enc.text_index()] + enc.starts
        token_end = base[enc.text_index()] + enc.ends
        text_base = base[rows["_text"].to_numpy()]
        owner = np.searchsorted(text_base + rows["piece_end"].to_numpy(), token_start, side="right")
        mask_start = text_base + rows["mask_start"].fill_null(0).to_numpy()
        mask_end = text_base + rows["mask_end"].fill_null(0).to_numpy()
        first = np.searchsorted(token_end, mask_start, side="right")
        last = np.maximum(np.searchsorted(token_start, mask_end, side="left"), first)
        offset = enc.bounds[rows["_text"].to_numpy()]
        parts.append(
            rows.with_columns(
                pl.Series("tokens", np.bincount(owner, minlength=rows.height), dtype=pl.Int64),
                pl.Series("mask_token_start", first - offset, dtype=pl.Int64),
                pl.Series("mask_token_end", last - offset, dtype=pl.Int64),
                pl.lit(tokenizer.name).alias("tokenizer"),
                pl.lit(batch.approximate).alias("approximate"),
            ).with_columns(
                pl.when(pl.col("mask_start").is_not_null()).then(pl.col(c)).alias(c)
                for c in ("mask_token_start", "mask_token_end")
            )
        )
    return (
        pl.concat(parts, how="diagonal_relaxed")
        .sort("_order")
        .select([pl.col(c).cast(dtype) for c, dtype in _TURN_TOKENS_SCHEMA.items()])
    )


def _char_layout(rows: pl.DataFrame, template: ChatTemplate) -> pl.DataFrame:
    """Adds ``_text`` (the record's position), ``piece_end`` and the assistant mask, in text characters."""
    length = pl.col("piece").str.len_chars().cast(pl.Int64)
    piece_start = (length.cum_sum() - length).over("record_id")
    # The end-of-turn marker: the suffix through its last special token (``<|im_end|>`` of ``<|im_end|>\n``).
    specials = "|".join(re.escape(t) for t in template.special_tokens())
    suffix = pl.col("piece").str.slice(pl.col("content_end"))
    eot = suffix.str.extract(f"^((?s:.*)(?:{specials}))", 1).str.len_chars().fill_null(0) if specials else 0
    assistant = pl.col("role") == "assistant"
    return rows.with_columns(
        # Rows come sorted by record: a record's text index is the number of records before it.
        ((pl.col("record_id") != pl.col("record_id").shift(1)).fill_null(True).cum_sum() - 1)
        .cast(pl.Int64)
        .alias("_text"),
        (piece_start + length).alias("piece_end"),
        pl.when(assistant).then(piece_start + pl.col("content_start")).alias("mask_start"),
        pl.when(assistant).then(piece_start + pl.col("content_end") + eot).alias("mask_end"),
    )


def loss_mask_spans(turn_tokens_frame: pl.DataFrame) -> pl.DataFrame:
    """The export of assistant-only loss masks: one row per record and template.

    ``assistant_spans`` are character spans ``{start, end}`` (end exclusive) of the rendered text,
    ``assistant_token_spans`` the same spans as token indices (null without a tokenizer). A trainer
    computes loss on exactly these tokens.
    """
    assistant = pl.col("role") == "assistant"
    counted = pl.col("tokenizer").is_not_null()
    return (
        turn_tokens_frame.group_by("record_id", "template", maintain_order=True)
        .agg(
            pl.col("tokens").sum(),
            pl.struct(pl.col("mask_start").alias("start"), pl.col("mask_end").alias("end"))
            .filter(assistant)
            .cast(SPAN)
            .alias("assistant_spans"),
            pl.struct(pl.col("mask_token_start").alias("start"), pl.col("mask_token_end").alias("end"))
            .filter(assistant)
            .cast(SPAN)
            .alias("assistant_token_spans"),
            pl.col("tokenizer").first(),
            pl.col("approximate").first(),
        )
        .with_columns(pl.when(counted).then(pl.col(c)).alias(c) for c in ("tokens", "assistant_token_spans"))
    )


# --------------------------------------------------------------------------------------------------
# The max-length policy


def thousands(number: pl.Expr) -> pl.Expr:
    """An integer as text with thousands separators (``1,234``), vectorized."""
    reversed_digits = number.cast(pl.String).str.reverse()
    return reversed_digits.str.replace_all(r"(\d{3})", "${1},").str.reverse().str.strip_prefix(",")


_TRUNCATED_EMPTY = pl.DataFrame(
    schema={
        "record_id": pl.String,
        "messages_before": pl.Int64,
        "messages_after": pl.Int64,
        "tokens_before": pl.Int64,
        "tokens_after": pl.Int64,
    }
)


def apply_max_length(records: pl.DataFrame, turns: pl.DataFrame, config: TokensConfig) -> StageResult:
    """Keep records whose every counted render fits ``config.max_tokens``; truncate or reject the rest.

    ``records`` are the formatter's (``record_id``, ``messages``, ``source_file``, ``source_line``,
    ...); ``turns`` is ``turn_tokens`` of their renders. A record is as long as its longest render.
    ``over_length: drop`` rejects a record over the limit as ``too_long``; ``truncate`` keeps the
    longest prefix of whole messages that fits with every template and ends with an assistant turn
    (so a leading system message always stays), and rejects the record when no such prefix fits.
    Renders without counts (no tokenizer) constrain nothing.

    Returns a ``StageResult``: ``kept`` holds the records that fit and the truncated ones (their
    ``messages`` cut; they must be rendered again), ``tables["truncated"]`` says what was cut
    (``record_id``, ``messages_before``, ``messages_after``, ``tokens_before``, ``tokens_after``).
    Vectorized: cumulative token sums over the exploded turns.
    """
    limit = config.max_tokens
    if limit is None:
        return StageResult(
            rows_in=records.height,
            kept=records,
            rejected=rejections(records.clear(), RULE_TOO_LONG, ""),
            tables={"truncated": _TRUNCATED_EMPTY},
            counters={RULE_TOO_LONG: 0, "truncated": 0},
        )
    counted = (
        turns.filter(pl.col("tokens").is_not_null())
        .sort("record_id", "template", "turn_index")
        .with_columns(pl.col("tokens").cum_sum().over("record_id", "template").alias("prefix"))
    )
    worst = (
        counted.group_by("record_id", "template")
        .agg(
            pl.col("tokens").sum().alias("total"),
            pl.col("tokenizer").first(),
            pl.col("approximate").first(),
        )
        .sort("record_id", pl.col("total"), "template", descending=[False, True, False])
        .unique("record_id", keep="first", maintain_order=True)
    )
    over = worst.filter(pl.col("total") > limit)

    cut = pl.DataFrame(schema={"record_id": pl.String, "cut": pl.Int64, "tokens_after": pl.Int64})
    if config.over_length == "truncate":
        # A cut after assistant turn k fits when the prefix through k fits with every counted template.
        n_templates = counted.group_by("record_id").agg(pl.col("template").n_unique().alias("n"))
        cut = (
            counted.join(over.select("record_id"), on="record_id", how="semi")
            .filter((pl.col("role") == "assistant") & (pl.col("turn_index") >= 1))
            .group_by("record_id", "turn_index")
            .agg(pl.col("prefix").max().alias("tokens_after"), pl.len().alias("n"))
            .join(n_templates, on=["record_id", "n"], how="semi")
            .filter(pl.col("tokens_after") <= limit)
            .sort("record_id", "turn_index", descending=[False, True])
            .unique("record_id", keep="first", maintain_order=True)
            .select("record_id", pl.col("turn_index").alias("cut"), "tokens_after")
        )

    too_long = over.join(cut, on="record_id", how="anti")
    detail = pl.concat_str(
        [
            thousands(pl.col("total")),
            pl.lit(" tokens with "),
            pl.col("template"),
            pl.lit(f" > max_tokens {limit:,} ("),
            pl.col("tokenizer"),
            pl.when(pl.col("approximate")).then(pl.lit(", approximate")).otherwise(pl.lit("")),
            pl.lit(")"),
            pl.lit(
                "; no prefix of whole turns ending with an assistant turn fits"
                if config.over_length == "truncate"
                else ""
            ),
        ]
    )
    bad = records.join(
        too_long.select("record_id", detail.alias("detail")),
        on="record_id",
        how="inner",
        maintain_order="left",
    )
    truncated = (
        records.join(cut, on="record_id", how="inner", maintain_order="left")
        .join(over.select("record_id", "total"), on="record_id", how="left")
        .select(
            "record_id",
            pl.col("messages").list.len().cast(pl.Int64).alias("messages_before"),
            (pl.col("cut") + 1).alias("messages_after"),
            pl.col("total").alias("tokens_before"),
            "tokens_after",
        )
        .cast(_TRUNCATED_EMPTY.schema)
    )
    kept = (
        records.join(too_long, on="record_id", how="anti", maintain_order="left")
        .join(cut.select("record_id", "cut"), on="record_id", how="left", maintain_order="left")
        .with_columns(
            pl.when(pl.col("cut").is_not_null())
            .then(pl.col("messages").list.head(pl.col("cut") + 1))
            .otherwise(pl.col("messages"))
            .alias("messages")
        )
        .drop("cut")
    )
    return StageResult(
        rows_in=records.height,
        kept=kept,
        rejected=rejections(bad, RULE_TOO_LONG, pl.col("detail")),
        tables={"truncated": truncated},
        counters={RULE_TOO_LONG: bad.height, "truncated": truncated.height},
    )
