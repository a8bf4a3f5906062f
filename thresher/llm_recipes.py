"""LLM-backed synthesis recipes: Self-Instruct, paraphrase, back-translation, reverse instruction,
Evol-Instruct, the Llama 3 code workflow, tool use, long context and distillation.

Each recipe is one class with one job: choose seeds (deterministically, by a stable hash like the
rule-based recipes of ``thresher.synthesis``), build prompts from its template files, call the model in
rounds (one ``LLMClient.complete`` per step, over every job, so the client's concurrency applies across
jobs), parse and filter the replies, and return the created records as a ``GeneratedBatch``. A reply that
cannot be parsed, a failed or unsent (budget) call, or a result a filter rejects drops that job and is
counted under ``recipe.<name>.<reason>``; nothing here raises for what a model says.

Prompt templates are package data under ``thresher/prompts/<kind>/*.txt``, filled with
``str.format_map``; a recipe's version is ``template_hash``, the first 12 hex digits of SHA-256 over its
folder's file names and contents in sorted order, so editing a template re-versions the recipe and (via
the request cache key) re-generates its data.

Parameters (``LLMRecipeConfig.params``, unknown keys rejected) are documented on each recipe's
``Params`` class. No Dagster imports.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import jsonschema
import numpy as np
import polars as pl

from thresher.hashing import sha256_hex
from thresher.llm import BUDGET_EXHAUSTED, ChatRequest, LLMClient
from thresher.prompts import PromptSet
from thresher.records import MESSAGE, TaskKind
from thresher.verification import extract_code

if TYPE_CHECKING:
    from thresher.config import LLMRecipeConfig

Messages = list[tuple[str, str]]
P = TypeVar("P")

GENERATED_SCHEMA: dict[str, pl.DataType] = {
    # Records the new one was derived from (conversation order); empty for code_workflow and tool_use.
    "seed_ids": pl.List(pl.String),
    "messages": pl.List(MESSAGE),
    "task": pl.String,
    "tests": pl.String,
    "entry_point": pl.String,
    # Recipe-specific facts as a JSON object string (e.g. {"pivot": "de", "similarity": 0.83}).
    "metadata_extra": pl.String,
    "template_hash": pl.String,
    "model": pl.String,
    "endpoint": pl.String,
    # Every call this record's content came from was answered from the cache.
    "cache_hit": pl.Boolean,
    # Tokens of this record's calls; a call shared by several records (one generated list) is split
    # between them, so the column sums to the tokens of the calls that produced records.
    "prompt_tokens": pl.Int64,
    "completion_tokens": pl.Int64,
    # Model calls this record's content came from (a shared call counts for each of its records).
    "calls": pl.Int64,
}

# Drop reasons every recipe counts (zeros included, so the UI shows a stable set).
COMMON_REASONS = ("budget_exhausted", "failed", "truncated", "unparseable")


@dataclass
class GeneratedBatch:
    made: pl.DataFrame  # GENERATED_SCHEMA, one row per created record
    counters: dict[str, int]


# ---------------------------------------------------------------------------------------------
# Templates


# ---------------------------------------------------------------------------------------------
# Parsing model replies (pure functions: every one returns None / [] instead of raising)

_ITEM = re.compile(
    r"""^[ \t]{0,3}(?:\#{1,6}[ \t]*)?(?:\*\*|__)?[ \t]*
    (?:(?:task|instruction|question|problem|request|prompt|example)[ \t]*)?(?:\#[ \t]*)?
    \(?(?P<n>\d{1,3})(?:[ \t]*[.):\-–](?!\d)|(?=\*\*|__))[ \t]*(?:\*\*|__)?[ \t]*(?:[:\-–](?!\d)[ \t]*)?
    (?P<text>.*)$""",
    re.IGNORECASE | re.VERBOSE,
)
_BULLET = re.compile(r"^ ?[-*•][ \t]+(?P<text>.+)$")
_FENCE_LINE = re.compile(r"^\s*(```|~~~)")
_PREAMBLE = re.compile(
    r"^(?:sure|certainly|of course|okay|ok|absolutely|great|alright|here(?:'s| is| are)|below (?:is|are))\b"
    r".{0,200}[:.!]\s*$",
    re.IGNORECASE,
)
_LABEL = re.compile(r"^\s*(?:\*\*|#+\s*)?[#\w][\w #'()-]{0,40}[#]?:(?:\*\*)?\s*$")
_CLOSER = re.compile(
    r"^(?:let me know|i hope|hope (?:this|these)|feel free|these (?:tasks|instructions|problems|questions"
    r"|requests|prompts)|each of these|all of these|note:|enjoy|happy \w+ing|if you (?:need|want|would))",
    re.IGNORECASE,
)
_INLINE_LABEL = re.compile(
    r"^(?:\*\*)?(?:instruction|task|question|problem|request|prompt)(?:\*\*)?:\s*", re.I
)
_QUOTES = {'"': '"', "“": "”", "'": "'", "«": "»"}
_CODE_BLOCK = re.compile(r"(?s)```([^\n`]*)\n(.*?)(?:```|\Z)")
_PYTHON_LANGS = frozenset({"", "python", "py", "python3"})


def strip_chatter(text: str) -> str:
    """``text`` without a leading "Sure! Here is ...:" line or label and a trailing "Let me know..." paragraph."""
    lines = text.strip().splitlines()
    while lines and (_PREAMBLE.match(lines[0]) or _LABEL.match(lines[0]) or not lines[0].strip()):
        lines.pop(0)
    paragraphs = "\n".join(lines).split("\n\n")
    while len(paragraphs) > 1 and _CLOSER.match(paragraphs[-1].strip()):
        paragraphs.pop()
    return "\n\n".join(paragraphs).strip()


def _unquote(text: str) -> str:
    if len(text) >= 2 and _QUOTES.get(text[0]) == text[-1] and text[0] not in text[1:-1]:
        return text[1:-1].strip()
    return text


def tagged(text: str, tag: str) -> str | None:
    """The stripped content of the last complete ``<tag>...</tag>``, or after the last ``<tag>`` if it
    is never closed (a forgotten or cut-off closing tag); None when the tag is absent."""
    complete = re.findall(rf"(?is)<{tag}>(.*?)</{tag}>", text)
    if complete:
        return complete[-1].strip()
    parts = re.split(rf"(?i)<{tag}>", text)
    return parts[-1].strip() if len(parts) > 1 else None


def single_text(reply: str, tag: str) -> str | None:
    """The one text a reply was asked to give between ``<tag>`` tags, else the reply minus chatter;
    None when that is empty."""
    inner = tagged(reply, tag)
    text = _unquote((strip_chatter(reply) if inner is None else inner).strip())
    return text or None


def _clean_item(lines: list[str]) -> str:
    text = "\n".join(lines).strip()
    if text.count("**") % 2:  # the bold marker opened before the number: "**1. Title**"
        text = text.removeprefix("**").removesuffix("**") if text.endswith("**") else text.lstrip("*")
    if text.startswith("**") and text.endswith("**") and text.count("**") == 2:
        text = text[2:-2]
    return _INLINE_LABEL.sub("", text, count=1).strip()


def numbered_items(text: str) -> list[str]:
    """The items of a numbered list in a model reply, in order.

    Accepts "1.", "1)", "(1)", "1 -", "1:", "Task 1:", "**1.**", "### 1." and similar markers. An item
    runs until the next marker numbered one more than the last (so a nested "1. 2." list or numbered
    steps inside an item stay in that item), never inside a code fence. Text before the first item
    ("Sure! Here are...") is ignored, and a closing paragraph ("Let me know...") is cut from the last
    item. Without numbers, top-level "-" / "*" bullets are the items.
    """
    items: list[list[str]] = []
    last = -1
    in_fence = False
    for line in text.splitlines():
        if _FENCE_LINE.match(line):
            in_fence = not in_fence
        elif not in_fence and (match := _ITEM.match(line)):
            number = int(match["n"])
            if last < 0 or number == last + 1:
                items.append([match["text"]])
                last = number
                continue
        if items:
            items[-1].append(line)
    if not items:
        bullets = [m["text"] for line in text.splitlines() if (m := _BULLET.match(line))]
        return [t for t in (_clean_item([b]) for b in bullets) if t]
    tail = "\n".join(items[-1]).split("\n\n")
    while len(tail) > 1 and _CLOSER.match(tail[-1].strip()):
        tail.pop()
    items[-1] = "\n\n".join(tail).splitlines()
    return [t for t in (_clean_item(lines) for lines in items) if t]


def json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in a reply: inside a fenced block if there is one, else anywhere in the
    prose ("Here is the call: {...}"). At most 64 opening braces are tried per candidate text."""
    decoder = json.JSONDecoder()
    fenced = [body for _, body in _CODE_BLOCK.findall(text)]
    for candidate in [*fenced, text]:
        for tries, match in enumerate(re.finditer(r"\{", candidate)):
            if tries == 64:
                break
            try:
                value, _ = decoder.raw_decode(candidate, match.start())
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


def python_blocks(text: str) -> list[str]:
    """Bodies of the fenced blocks tagged python (or untagged), in order."""
    return [
        body
        for lang, body in _CODE_BLOCK.findall(text)
        if (lang.strip().split() or [""])[0].lower() in _PYTHON_LANGS and body.strip()
    ]


def verified_code(replies: Sequence[str]) -> list[str | None]:
    """The code the verified stage will run for each reply (``thresher.verification.extract_code``)."""
    frame = pl.DataFrame({"c": list(replies)}, schema={"c": pl.String})
    return frame.select(extract_code(pl.col("c")))["c"].to_list()


# ---------------------------------------------------------------------------------------------
# Similarity

_WORD = re.compile(r"\w+")
_SPACE = re.compile(r"\s+")


def rouge_tokens(text: str) -> list[str]:
    """Lower-cased word tokens, as ROUGE's default tokenizer (Unicode letters kept, punctuation dropped)."""
    return _WORD.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common token subsequence, bit-parallel (Hyyrö 2004): O(len(b)) big-integer
    operations over a len(a)-bit vector instead of a len(a) x len(b) table."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return 0
    masks: dict[str, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F1 of two texts: 2·LCS / (|a| + |b|) over word tokens (symmetric)."""
    ta, tb = rouge_tokens(a), rouge_tokens(b)
    if not ta or not tb:
        return 0.0
    return 2 * lcs_length(ta, tb) / (len(ta) + len(tb))


@dataclass
class _Segment:
    """An inverted index over a frozen set of documents: token id -> (documents, counts)."""

    ids: np.ndarray  # global document ids
    lengths: np.ndarray
    indptr: np.ndarray
    docs: np.ndarray  # local document positions, grouped by token
    counts: np.ndarray


class RougeLIndex:
    """Finds a document whose ROUGE-L with a query exceeds a threshold, without scoring every document.

    LCS(a, b) is at most the multiset overlap of their tokens, so 2·overlap / (|a| + |b|) bounds ROUGE-L
    from above. The overlaps of a query with every indexed document come from an inverted index in a
    few NumPy operations per query token; exact LCS (``lcs_length``) runs only for documents whose bound
    passes the threshold, best bound first, and stops at the first match. Added documents go to a small
    pending list, frozen into a new segment every ``segment_size`` additions.
    """

    segment_size = 256

    def __init__(self, texts: Iterable[str] = ()) -> None:
        self._vocab: dict[str, int] = {}
        self._tokens: list[list[str]] = []
        self._bags: list[Counter[int]] = []
        self._segments: list[_Segment] = []
        self._pending: list[int] = []
        for text in texts:
            self._append(text)
        self._freeze()

    def __len__(self) -> int:
        return len(self._tokens)

    def add(self, text: str) -> None:
        self._append(text)
        if len(self._pending) >= self.segment_size:
            self._freeze()

    def find_similar(self, text: str, threshold: float) -> int | None:
        """Index (in insertion order) of a document with ROUGE-L > ``threshold`` to ``text``, or None."""
        tokens = rouge_tokens(text)
        if not tokens:
            return None
        bag = Counter(self._vocab[t] for t in tokens if t in self._vocab)
        m = len(tokens)
        candidates: list[tuple[float, int]] = []
        for segment in self._segments:
            overlap = np.zeros(len(segment.ids), dtype=np.int64)
            for token, count in bag.items():
                if token + 1 < len(segment.indptr):
                    start, end = segment.indptr[token], segment.indptr[token + 1]
                    overlap[segment.docs[start:end]] += np.minimum(segment.counts[start:end], count)
            bound = 2 * overlap / (m + segment.lengths)
            passing = np.flatnonzero(bound > threshold)
            candidates.extend(zip(bound[passing].tolist(), segment.ids[passing].tolist(), strict=True))
        for doc in self._pending:
            overlap_n = sum((bag & self._bags[doc]).values())
            bound_n = 2 * overlap_n / (m + len(self._tokens[doc]))
            if bound_n > threshold:
                candidates.append((bound_n, doc))
        for _, doc in sorted(candidates, key=lambda c: (-c[0], c[1])):
            other = self._tokens[doc]
            if 2 * lcs_length(tokens, other) / (m + len(other)) > threshold:
                return doc
        return None

    def _append(self, text: str) -> None:
        tokens = rouge_tokens(text)
        for token in tokens:
            self._vocab.setdefault(token, len(self._vocab))
        self._tokens.append(tokens)
        self._bags.append(Counter(self._vocab[t] for t in tokens))
        self._pending.append(len(self._tokens) - 1)

    def _freeze(self) -> None:
        if not self._pending:
            return
        ids = np.asarray(self._pending, dtype=np.int64)
        token_ids: list[int] = []
        positions: list[int] = []
        counts: list[int] = []
        for local, doc in enumerate(self._pending):
            for token, count in self._bags[doc].items():
                token_ids.append(token)
                positions.append(local)
                counts.append(count)
        tokens = np.asarray(token_ids, dtype=np.int64)
        order = np.argsort(tokens, kind="stable")
        indptr = np.searchsorted(tokens[order], np.arange(len(self._vocab) + 1))
        self._segments.append(
            _Segment(
                ids=ids,
                lengths=np.asarray([len(self._tokens[d]) for d in self._pending], dtype=np.int64),
                indptr=indptr,
                docs=np.asarray(positions, dtype=np.int64)[order],
                counts=np.asarray(counts, dtype=np.int64)[order],
            )
        )
        self._pending = []


def chrf(a: str, b: str, max_order: int = 6) -> float:
    """Character n-gram F1 (chrF, Popović 2015, with β = 1 so it is symmetric): n = 1..6, case and
    whitespace ignored, precision and recall averaged over the orders both texts have."""
    x, y = _SPACE.sub("", a.lower()), _SPACE.sub("", b.lower())
    if not x or not y:
        return float(x == y)
    precisions: list[float] = []
    recalls: list[float] = []
    for n in range(1, max_order + 1):
        grams_x = Counter(x[i : i + n] for i in range(len(x) - n + 1))
        grams_y = Counter(y[i : i + n] for i in range(len(y) - n + 1))
        if not grams_x or not grams_y:
            break
        overlap = sum((grams_x & grams_y).values())
        precisions.append(overlap / grams_x.total())
        recalls.append(overlap / grams_y.total())
    p, r = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def normalized_instruction(text: str) -> str:
    return _SPACE.sub(" ", text.lower()).strip()


# ---------------------------------------------------------------------------------------------
# Parameters


def parse_params(cls: type[P], raw: Mapping[str, Any], recipe: str) -> P:
    """``cls`` (a dataclass of defaults) from a config's ``params``: unknown keys and wrong types are
    configuration errors, reported with the recipe's name."""
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ValueError(f"recipe {recipe!r}: unknown params {unknown}; known: {sorted(known)}")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        default = known[name].default
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif isinstance(default, str):
            ok = isinstance(value, str)
        else:  # tuples: lists in the configuration
            ok = isinstance(value, list | tuple)
            value = tuple(value) if ok else value
        if not ok:
            raise ValueError(f"recipe {recipe!r}: param {name!r} has the wrong type ({type(value).__name__})")
        values[name] = value
    try:
        return cls(**values)
    except ValueError as exc:
        raise ValueError(f"recipe {recipe!r}: {exc}") from None


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


# ---------------------------------------------------------------------------------------------
# Jobs and rounds


@dataclass
class _Job:
    """One unit of work on its way to a record: its seeds, recipe state and the calls it has cost."""

    seed_ids: tuple[str, ...]
    state: dict[str, Any]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    cache_hit: bool = True

    def split(self, states: Sequence[dict[str, Any]]) -> list[_Job]:
        """Children sharing this job's calls (one reply listing several items): tokens apportioned."""
        n = len(states)
        p, p_rest = divmod(self.prompt_tokens, n) if n else (0, 0)
        c, c_rest = divmod(self.completion_tokens, n) if n else (0, 0)
        return [
            replace(
                self,
                state={**self.state, **state},
                prompt_tokens=p + (i < p_rest),
                completion_tokens=c + (i < c_rest),
            )
            for i, state in enumerate(states)
        ]


@dataclass(frozen=True)
class _Reply:
    job: _Job
    text: str
    truncated: bool


@dataclass(frozen=True)
class _Made:
    job: _Job
    messages: Messages
    task: str = TaskKind.CHAT.value
    tests: str | None = None
    entry_point: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


class _Run:
    """One ``generate`` call: the client, the counters, and the round-trip helper."""

    def __init__(self, recipe: LLMRecipe, client: LLMClient) -> None:
        self.recipe = recipe
        self.client = client
        self.counters: Counter[str] = Counter({r: 0 for r in (*COMMON_REASONS, *recipe.drop_reasons)})

    def drop(self, reason: str, n: int = 1) -> None:
        self.counters[reason] += n

    def ask(self, asks: Sequence[tuple[_Job, Messages]], *, allow_truncated: bool = False) -> list[_Reply]:
        """One round: every job's request in one ``complete`` call. Failed and unsent calls drop their
        job; so do replies cut at ``max_tokens`` unless ``allow_truncated`` (lists lose their last item)."""
        if not asks:
            return []
        results = self.client.complete([self.recipe.request(messages) for _, messages in asks])
        replies: list[_Reply] = []
        for (job, _), result in zip(asks, results, strict=True):
            if result.content is None:
                self.drop("budget_exhausted" if result.error == BUDGET_EXHAUSTED else "failed")
                continue
            job.prompt_tokens += result.prompt_tokens
            job.completion_tokens += result.completion_tokens
            job.calls += 1
            job.cache_hit = job.cache_hit and result.cache_hit
            truncated = result.finish_reason == "length"
            if truncated and not allow_truncated:
                self.drop("truncated")
                continue
            replies.append(_Reply(job, result.content, truncated))
        return replies

    def batch(self, made: Sequence[_Made]) -> GeneratedBatch:
        recipe = self.recipe
        endpoint = self.client.endpoint
        rows = [
            {
                "seed_ids": list(m.job.seed_ids),
                "messages": [{"role": role, "content": content} for role, content in m.messages],
                "task": m.task,
                "tests": m.tests,
                "entry_point": m.entry_point,
                "metadata_extra": json.dumps(dict(m.extra), sort_keys=True, ensure_ascii=False),
                "template_hash": recipe.template_hash,
                "model": endpoint.model,
                "endpoint": endpoint.name,
                "cache_hit": m.job.cache_hit,
                "prompt_tokens": m.job.prompt_tokens,
                "completion_tokens": m.job.completion_tokens,
                "calls": m.job.calls,
            }
            for m in made
        ]
        self.counters["generated"] = len(rows)
        counters = {f"recipe.{recipe.name}.{k}": v for k, v in sorted(self.counters.items())}
        return GeneratedBatch(pl.DataFrame(rows, schema=GENERATED_SCHEMA), counters)


# ---------------------------------------------------------------------------------------------
# Seeds


def _content_at(index: pl.Expr) -> pl.Expr:
    return pl.col("messages").list.get(index, null_on_oob=True).struct.field("content")


def with_turns(seeds: pl.DataFrame) -> pl.DataFrame:
    """``seeds`` plus the message positions and texts recipes choose by (null when absent): first user
    turn ``_user``, the first assistant turn after it ``_answer``, the last user turn's position, and
    the longest message ``_longest``."""
    roles = pl.col("messages").list.eval(pl.element().struct.field("role"))

    def positions(role: str) -> pl.Expr:
        return roles.list.eval(pl.element().eq(role).arg_true())

    lengths = pl.col("messages").list.eval(pl.element().struct.field("content").str.len_chars())
    framed = seeds.with_columns(
        positions("user").list.first().cast(pl.Int64).alias("_user_at"),
        positions("user").list.last().cast(pl.Int64).alias("_last_user_at"),
        positions("assistant").list.first().cast(pl.Int64).alias("_answer_at"),
        lengths.list.arg_max().cast(pl.Int64).alias("_longest_at"),
    ).with_columns(
        # The first assistant turn only counts as the answer when it follows the first user turn.
        pl.when(pl.col("_answer_at") > pl.col("_user_at")).then(pl.col("_answer_at")).alias("_answer_at"),
    )
    return framed.with_columns(
        _content_at(pl.col("_user_at")).alias("_user"),
        _content_at(pl.col("_answer_at")).alias("_answer"),
        _content_at(pl.col("_longest_at")).alias("_longest"),
    )


def _answered(seeds: pl.DataFrame) -> pl.DataFrame:
    return with_turns(seeds).filter(
        pl.col("_answer").is_not_null() & (pl.col("_user").str.strip_chars() != "")
    )


# ---------------------------------------------------------------------------------------------
# Recipes


class LLMRecipe(ABC):
    """One LLM-backed way of making records; subclasses choose seeds and run their steps."""

    kind: ClassVar[str]
    Params: ClassVar[type]
    # Template stem -> the slots it must use.
    prompt_slots: ClassVar[dict[str, frozenset[str]]]
    # Recipe-specific drop reasons (counted, zeros included).
    drop_reasons: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: LLMRecipeConfig, seed: int) -> None:
        self.config = config
        self.seed = seed
        self.params = parse_params(self.Params, config.params, config.name)
        self.prompts = PromptSet.load(self.kind)
        self.prompts.require(self.prompt_slots)
        self.template_hash = self.prompts.hash

    @property
    def name(self) -> str:
        return self.config.name

    def eligible(self, seeds: pl.DataFrame) -> pl.DataFrame:
        """Seeds whose first user message is answered by a later assistant message."""
        return _answered(seeds)

    def generate(self, seeds: pl.DataFrame, client: LLMClient) -> GeneratedBatch:
        """Records made from ``seeds`` (canonical chat source records; ``eligible`` is applied here)."""
        run = _Run(self, client)
        made = self._produce(self.eligible(seeds), run)
        return run.batch(made[: self.config.max_per_batch])

    @abstractmethod
    def _produce(self, eligible: pl.DataFrame, run: _Run) -> list[_Made]:
        """The records, in a deterministic order."""

    def target(self, eligible: int) -> int:
        """Seeds to use: ``ceil(rate * eligible)``, at most ``max_per_batch``."""
        # round() first: 0.1 * 30 is 3.0000000000000004, which must not ceil to 4.
        return min(math.ceil(round(self.config.rate * eligible, 9)), self.config.max_per_batch)

    def rank(self, frame: pl.DataFrame, salt: str = "") -> pl.DataFrame:
        """``frame`` in the stable-hash order of (recipe name, seed, salt, record id)."""
        if frame.is_empty():
            return frame
        keys = pl.concat_str([pl.lit(f"{self.name}\x1f{self.seed}\x1f{salt}\x1f"), pl.col("record_id")])
        digest = sha256_hex(frame.select(keys.alias("k"))["k"])
        return frame.with_columns(digest.alias("_rank")).sort("_rank", "record_id").drop("_rank")

    def rank_names(self, names: Sequence[str]) -> list[str]:
        """Configured items (topics, tools) in stable-hash order."""
        return self.rank(pl.DataFrame({"record_id": list(names)}, schema={"record_id": pl.String}))[
            "record_id"
        ].to_list()

    def choice(self, key: str, n: int) -> int:
        """A stable pseudo-random index in ``range(n)`` for ``key``."""
        digest = hashlib.sha256(f"{self.name}\x1f{self.seed}\x1f{key}".encode()).hexdigest()
        return int(digest[:12], 16) % n

    def user_turn(self, template: str, **slots: Any) -> Messages:
        """The conversation most steps send: one user message, the template filled with ``slots``."""
        return [("user", self.prompts.render(template, **slots))]

    def request(self, messages: Messages) -> ChatRequest:
        return ChatRequest(
            messages=tuple(messages),
            temperature=self.config.temperature,
            max_tokens=self.config.max_tokens,
            seed=self.seed,
        )

    def chosen(self, eligible: pl.DataFrame, n: int | None = None) -> list[dict[str, Any]]:
        """The first ``n`` (default ``target``) ranked seeds as dicts."""
        count = self.target(eligible.height) if n is None else n
        return self.rank(eligible).head(count).to_dicts()


def _seed_job(row: Mapping[str, Any], /, **state: Any) -> _Job:
    return _Job(seed_ids=(row["record_id"],), state=state)


def _with_first_user(row: Mapping[str, Any], content: str) -> Messages:
    """The seed conversation with its first user message replaced."""
    messages = [(m["role"], m["content"]) for m in row["messages"]]
    messages[row["_user_at"]] = ("user", content)
    return messages


# Self-Instruct's filter of tasks a text-only model cannot do (Wang et al. 2022, §2.3).
SELF_INSTRUCT_BLOCKED = (
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
    "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
)  # fmt: skip


@dataclass(frozen=True)
class SelfInstructParams:
    """self_instruct params.

    examples_per_prompt: seed instructions shown per generation prompt (the paper: 8).
    new_per_prompt: new instructions asked for per prompt.
    max_similarity: a new instruction is dropped when its ROUGE-L with any seed or kept instruction
        exceeds this (the paper: 0.7).
    min_words / max_words: instructions outside this length are dropped (the paper: 4..150).
    blocked_keywords: instructions mentioning these (whole words) are dropped, as in the paper.
    """

    examples_per_prompt: int = 8
    new_per_prompt: int = 8
    max_similarity: float = 0.7
    min_words: int = 4
    max_words: int = 150
    blocked_keywords: tuple[str, ...] = SELF_INSTRUCT_BLOCKED

    def __post_init__(self) -> None:
        _check(self.examples_per_prompt >= 1, "examples_per_prompt must be at least 1")
        _check(self.new_per_prompt >= 1, "new_per_prompt must be at least 1")
        _check(0.0 < self.max_similarity <= 1.0, "max_similarity must be in (0, 1]")
        _check(1 <= self.min_words <= self.max_words, "need 1 <= min_words <= max_words")


class SelfInstructRecipe(LLMRecipe):
    """Self-Instruct (Wang et al. 2022): new instructions from prompts of sampled seed instructions,
    filtered for suitability and for ROUGE-L near duplicates of the seeds and of each other, then
    answered in a second step. One prompt per ``new_per_prompt`` records wanted."""

    kind = "self_instruct"
    Params = SelfInstructParams
    params: SelfInstructParams
    prompt_slots: ClassVar[dict[str, frozenset[str]]] = {
        "generate": frozenset({"examples", "example_count", "count", "next_number", "last_number"}),
        "answer_system": frozenset(),
    }
    drop_reasons = ("unsuitable_instruction", "near_duplicate_instruction", "surplus")

    def _produce(self, eligible: pl.DataFrame, run: _Run) -> list[_Made]:
        p = self.params
        target = self.target(eligible.height)
        if target == 0:
            return []
        k = min(p.examples_per_prompt, eligible.height)
        asks: list[tuple[_Job, Messages]] = []
        for prompt in range(math.ceil(target / p.new_per_prompt)):
            examples = self.rank(eligible, salt=f"prompt {prompt}").head(k)
            listing = "\n\n".join(f"{i}. {text.strip()}" for i, text in enumerate(examples["_user"], 1))
            text = self.prompts.render(
                "generate",
                examples=listing,
                example_count=k,
                count=p.new_per_prompt,
                next_number=k + 1,
                last_number=k + p.new_per_prompt,
            )
            asks.append((_Job(tuple(examples["record_id"]), {}), [("user", text)]))
        index = RougeLIndex(eligible["_user"].to_list())
        kept: list[_Job] = []
        for reply in run.ask(asks, allow_truncated=True):
            items = numbered_items(reply.text)
            if reply.truncated:
                items = items[:-1]  # cut mid-item
            if not items:
                run.drop("unparseable")
                continue
            fresh: list[str] = []
            for item in items[: p.new_per_prompt]:
                if not self._suitable(item):
                    run.drop("unsuitable_instruction")
                elif index.find_similar(item, p.max_similarity) is not None:
                    run.drop("near_duplicate_instruction")
                else:
                    index.add(item)
                    fresh.append(item)
            kept.extend(reply.job.split([{"instruction": item} for item in fresh]))
        run.drop("surplus", max(0, len(kept) - target))
        system = self.prompts.render("answer_system")
        answers = run.ask(
            [(job, [("system", system), ("user", job.state["instruction"])]) for job in kept[:target]]
        )
        made = []
        for reply in answers:
            answer = reply.text.strip()
            if not answer:
                run.drop("unparseable")
                continue
            made.append(_Made(reply.job, [("user", reply.job.state["instruction"]), ("assistant", answer)]))
        return made

    def _suitable(self, instruction: str) -> bool:
        """The paper's heuristics: length in words, no task a text-only model cannot do, starts with a
        letter or digit, not the ambiguous "Write a program"."""
        p = self.params
        words = len(instruction.split())
        if not p.min_words <= words <= p.max_words or not instruction[0].isalnum():
            return False
        if instruction.lower().startswith("write a program"):
            return False
        lowered = instruction.lower()
        return not any(re.search(rf"\b{re.escape(k.lower())}\b", lowered) for k in p.blocked_keywords)


@dataclass(frozen=True)
class ParaphraseParams:
    """paraphrase params.

    regenerate_response: false (default) keeps the seed's conversation after the rewritten first user
        message: the rewrite keeps the meaning, so the vetted seed answer still answers it, and the
        record teaches robustness to wording rather than the model's answers (that is distillation).
        true answers the rewrite with the model instead (a single-turn record).
    """

    regenerate_response: bool = False


class ParaphraseRecipe(LLMRecipe):
    """Rewrites the seed's first user message in other words with the same meaning."""

    kind = "paraphrase"
    Params = ParaphraseParams
    params: ParaphraseParams
    prompt_slots: ClassVar[dict[str, frozenset[str]]] = {
        "rewrite": frozenset({"instruction"}),
        "answer_system": frozenset(),
    }
    drop_reasons = ("unchanged",)

    def _produce(self, eligible: pl.DataFrame, run: _Run) -> list[_Made]:
        rows = self.chosen(eligible)
        asks = [
            (_seed_job(row, row=row), self.user_turn("rewrite", instruction=row["_user"])) for row in rows
        ]
        rewritten: list[_Job] = []
        for reply in run.ask(asks):
            row = reply.job.state["row"]
            text = single_text(reply.text, "rewritten")
            if text is None:
                run.drop("unparseable")
            elif normalized_instruction(text) == normalized_instruction(row["_user"]):
                run.drop("unchanged")
            else:
                reply.job.state["instruction"] = text
                rewritten.append(reply.job)
        if not self.params.regenerate_response:
            return [
                _Made(
                    job,
                    _with_first_user(job.state["row"], job.state["instruction"]),
                    extra={"response": "kept"},
                )
                for job in rewritten
            ]
        system = self.prompts.render("answer_system")
        made = []
        for reply in run.ask(
            [(job, [("system", system), ("user", job.state["instruction"])]) for job in rewritten]
        ):
            if not reply.text.strip():
                run.drop("unparseable")
                continue
            messages = [("user", reply.job.state["instruction"]), ("assistant", reply.text.strip())]
            made.append(_Made(reply.job, messages, extra={"response": "regenerated"}))
        return made


LANGUAGES = {
    "ar": "Arabic", "de": "German", "en": "English", "es": "Spanish", "fr": "French", "hi": "Hindi",
    "it": "Italian", "ja": "Japanese", "ko": "Korean", "nl": "Dutch", "pl": "Polish", "pt": "Portuguese",
    "ru": "Russian", "sv": "Swedish", "tr": "Turkish", "uk": "Ukrainian", "zh": "Chinese",
}  # fmt: skip


@dataclass(frozen=True)
class BackTranslationParams:
    """back_translation params.

    pivot: the pivot language, an ISO 639-1 code of ``LANGUAGES`` or a language name ("Finnish").
    source_language: the language the seeds are written in (the round trip returns to it).
    min_similarity: round trips with chrF (character n-gram F1, 0..1) to the original below this are
        dropped: they lost or changed meaning.
    """

    pivot: str = "de"
    source_language: str = "English"
    min_similarity: float = 0.6

    def __post_init__(self) -> None:
        _check(bool(self.pivot.strip()), "pivot must name a language")
        _check(0.0 <= self.min_similarity <= 1.0, "min_similarity must be in [0, 1]")


class BackTranslationRecipe(LLMRecipe):
    """Paraphrases by round-trip translation of the first user message through a pivot language; the
    seed's answer is kept (as for paraphrase), so the round trip must stay close to the original."""

    kind = "back_translation"
    Params = BackTranslationParams
    params: BackTranslationParams
    prompt_slots: ClassVar[dict[str, frozenset[str]]] = {
        "to_pivot": frozenset({"source_language", "pivot_language", "text"}),
        "from_pivot": frozenset({"source_language", "pivot_language", "text"}),
    }
    drop_reasons = ("similarity_too_low", "unchanged")

    def _produce(self, eligible: pl.DataFrame, run: _Run) -> list[_Made]:
        p = self.params
        languages = {"source_language": p.source_language, "pivot_language": LANGUAGES.get(p.pivot, p.pivot)}

        def translate(stem: str, replies: Iterable[tuple[_Job, str]]) -> list[tuple[_Job, str]]:
            out = []
            asks = [(job, self.user_turn(stem, text=text, **languages)) for job, text in replies]
            for reply in run.ask(asks):
                text = single_text(reply.text, "translation")
                if text is None:
                    run.drop("unparseable")
                else:
                    out.append((reply.job, text))
            return out

        rows = self.chosen(eligible)
        pivoted = translate("to_pivot", ((_seed_job(row, row=row), row["_user"]) for row in rows))
        made = []
        for job, text in translate("from_pivot", pivoted):
            original = job.state["row"]["_user"]
            similarity = chrf(original, text)
            if normalized_instruction(text) == normalized_instruction(original):
                run.drop("unchanged")
            elif similarity < p.min_similarity:
                run.drop("similarity_too_low")
            else:
                extra = {"pivot": p.pivot, "similarity": round(similarity, 4), "metric": "chrf"}
                made.append(_Made(job, _with_first_user(job.state["row"], text), extra=extra))
        return made


@dataclass(frozen=True)
class ReverseInstructionParams:
    """reverse_instruction params.

    min_response_chars: seeds whose answer is shorter are not used (too little to infer a request from).
    curate: rate each (instruction, response) pair with the model on Humpback's 5-point scale.
    min_score: with ``curate``, pairs scored below this are dropped (Humpback keeps 4 and 5).
    """

    min_response_chars: int = 80
    curate: bool = True
    min_score: int = 4

    def __post_init__(self) -> None:
        _check(self.min_response_chars >= 1, "min_response_chars must be at least 1")
        _check(1 <= self.min_score <= 5, "min_score must be in 1..5")


_SCORE = re.compile(r"score\W{0,5}([1-5])\b", re.IGNORECASE)


def curation_score(reply: str) -> int | None:
    """The 1-5 score of a curation reply: the last "Score: N", else a last line that is just a digit."""
    found = _SCORE.findall(reply)
    if found:
        return int(found[-1])
    lines = reply.strip().splitlines()
    last = re.fullmatch(r"\W*([1-5])\W*", lines[-1]) if lines else None
    return int(last[1]) if last else None


class ReverseInstructionRecipe(LLMRecipe):
    """Instruction backtranslation (Li et al. 2023, Humpback): the model writes the instruction an
    existing response answers (self-augmentation), then rates the pair (self-curation)."""

    kind = "reverse_instruction"
    Params = ReverseInstructionParams
    params: ReverseInstructionParams
    prompt_slots: ClassVar[dict[str, frozenset[str]]] = {
        "instruction": frozenset({"response"}),
        "curate": frozenset({"instruction", "response"}),
    }
    drop_reasons = ("low_score",)

    def eligible(self, seeds: pl.DataFrame) -> pl.DataFrame:
        """Answered seeds whose answer is at least ``min_response_chars`` long."""
        return _answered(seeds).filter(pl.col("_answer").str.len_chars() >= self.params.min_response_chars)

    def _produce(self, eligible: pl.DataFrame, run: _Run) -> list[_Made]:
        rows = self.chosen(eligible)
        asks = [
            (
                _seed_job(row, response=row["_answer"]),
                self.user_turn("instruction", response=row["_answer"]),
            )
            for row in rows
        ]
        written: list[_Job] = []
        for reply in run.ask(asks):
            text = single_text(reply.text, "instruction")
            if text is None:
                run.drop("unparseable")
            else:
                reply.job.state["instruction"] = text
                written.append(reply.job)
        if self.params.curate:
            curated = []
            asks = [(job, self.user_turn("curate", **self._pair(job))) for job in written]
            for reply in run.ask(asks):
                score = curation_score(reply.text)
                if score is None:
                    run.drop("unparseable")
                elif score < self.params.min_score:
                    run.drop("low_score")
                else:
                    reply.job.state["score"] = score
                    curated.append(reply.job)
            written = curated
        return [
            _Made(
                job,
                [("user", job.state["instruction"]), ("assistant", job.state["response"])],
                extra={"score": job.state["score"]} if "score" in job.state else {},
            )
            for job in written
        ]

    @staticmethod
    def _pair(job: _Job) -> dict[str, str]:
        return {"instruction": job.state["instruction"], "response": job.state["response"]}


EVOL_OPERATIONS = ("constraints", "deepen", "concretize", "reasoning", "complicate_input", "broaden")
# Words of the evolving prompts that must not leak into an evolved instruction (WizardLM's 4th check).
_PROMPT_WORDING = re.compile(
    r"#?\s*(?:the\s+)?(?:given|rewritten|created|original)\s+prompt\s*#?|</?(?:prompt|rewritten|created)>",
    re.IGNORECASE,
)
_EVOL_LABEL = re.compile(r"^\s*(?:\*\*)?#?\s*(?:rewritten|created|new)\s+prompt\s*#?\s*:?(?:\*\*)?\s*", re.I)
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "if",
        "of",
        "to",
        "in",
        "on",
        "at",
        "by",
        "for",
        "with",
        "from",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "it",
        "this",
        "that",
        "these",
        "those",
        "i",
        "you",
        "he",
        "she",
        "we",
        "they",
        "me",
        "my",
        "your",
        "our",
        "their",
        "not",
        "no",
        "yes",
        "so",
        "do",
        "does",
        "did",
        "can",
        "could",
        "will",
        "would",
        "should",
        "may",
        "might",
        "must",
        "have",
        "has",
        "had",
    ]
)


@dataclass(frozen=True)
class EvolInstructParams:
    """evol_instruct params.

    operations: the evolutions to draw from, one per seed and depth by stable hash. In-depth:
        "constraints", "deepen", "concretize", "reasoning", "complicate_input"; in-breadth: "broaden".
    evolutions: how many times an instruction is evolved in succession; every depth yields a record
        (WizardLM: 4 epochs over the pool).
    check_equality: ask the model whether the evolved instruction equals the original (WizardLM's
        "no information gain" elimination); false skips that call.
    min_answer_words: an answer containing "sorry" shorter than this is a failed evolution (WizardLM: 80).
    """

    operations: tuple[str, ...] = EVOL_OPERATIONS
    evolutions: int = 1
    check_equality: bool = True
    min_answer_words: int = 80

    def __post_init__(self) -> None:
        unknown = sorted(set(self.operations) - set(EVOL_OPERATIONS))
        _check(
            bool(self.operations) and not unknown,
            f"operations must be a non-empty subset of {list(EVOL_OPERATIONS)}",
        )
        _check(1 <= self.evolutions <= 8, "evolutions must be in 1..8")


def equality_verdict(reply: str) -> bool | None:
    """True for "Equal", False for "Not Equal", None when the reply says neither."""
    text = reply.lower()
    if re.search(r"\bnot\s+equal\b|\bunequal\b", text):
        return False
    if re.search(r"\bequal\b", text):
        return True
    return None


def failed_answer(answer: str, min_words: int) -> bool:
    """WizardLM's checks of an answer to an evolved instruction: a short apology, or nothing but
    punctuation and stop words."""
    words = rouge_tokens(answer)
    if "sorry" in answer.lower() and len(answer.split()) < min_words:
        return True
    return all(word in _STOPWORDS for word in words)


class EvolInstructRecipe(LLMRecipe):
    """Evol-Instruct (Xu et al. 2023, WizardLM): evolves seed instructions in depth (add constraints,
    deepen, concretize, increase reasoning steps, complicate the input) or in breadth (a rarer task of
    the same domain), eliminates failed evolutions (copied prompt wording, no information gain, an
    answer that apologizes or says nothing) and answers the evolved instruction."""

    kind = "evol_instruct"
    Params = EvolInstructParams
    params: EvolInstructParams
    prompt_slots: ClassVar[dict[str, frozenset[str]]] = {
        **{op: frozenset({"instruction"}) for op in EVOL_OPERATIONS},
        "judge": frozenset({"first", "second"}),
        "answer_system": frozenset(),
    }
    drop_reasons = ("copied_prompt_wording", "no_information_gain", "failed_response")

    def _produce(self, eligible: pl.DataFrame, run: _Run) -> list[_Made]:
        p = self.params
        alive = [_seed_job(row, instruction=row["_user"], operations=[]) for row in self.chosen(eligible)]
        system = self.prompts.render("answer_system")
        made: list[_Made] = []
        for depth in range(1, p.evolutions + 1):
            asks = []
            for job in alive:
                op = p.operations[self.choice(f"{job.seed_ids[0]}\x1f{depth}", len(p.operations))]
                job.state["operation"] = op
                asks.append((job, self.user_turn(op, instruction=job.state["instruction"])))
            evolved = []
            for reply in run.ask(asks):
                tag = "created" if reply.job.state["operation"] == "broaden" else "rewritten"
                text = single_text(reply.text, tag)
                text = _EVOL_LABEL.sub("", text) if text else None
                if not text:
                    run.drop("unparseable")
                elif _PROMPT_WORDING.search(text):
                    run.drop("copied_prompt_wording")
                elif normalized_instruction(text) == normalized_instruction(reply.job.state["instruction"]):
                    run.drop("no_information_gain")
                else:
                    reply.job.state["evolved"] = text
                    evolved.append(reply.job)
            if p.check_equality:
                judged = []
                asks = [
                    (
                        job,
                        self.user_turn("judge", first=job.state["instruction"], second=job.state["evolved"]),
                    )
                    for job in evolved
                ]
                for reply in run.ask(asks):
                    verdict = equality_verdict(reply.text)
                    if verdict is None:
                        run.drop("unparseable")
                    elif verdict:
                        run.drop("no_information_gain")
                    else:
                        judged.append(reply.job)
                evolved = judged
            alive = []
            for reply in run.ask(
                [(job, [("system", system), ("user", job.state["evolved"])]) for job in evolved]
            ):
                job, answer = reply.job, reply.text.strip()
                if failed_answer(answer, p.min_answer_words):
                    run.drop("failed_response")
                    continue
                job.state["instruction"] = job.state["evolved"]
                job.state["operations"] = [*job.state["operations"], job.state["operation"]]
                extra = {"operations": job.state["operations"], "depth": depth}
                made.append(
                    _Made(
                        replace(job), [("user", job.state["instruction"]), ("assistant", answer)], extra=extra
                    )
                )
                alive.append(job)
        return made


DEFAULT_CODE_TOPICS = (
    "string manipulation", "list and array processing", "hash maps and counting", "sorting and ordering",
    "binary search", "recursion", "dynamic programming", "graph traversal", "interval arithmetic",
    "parsing structured text", "date and time calculations", "matrix operations", "bit manipulation",
    "number theory", "stacks and queues", "greedy algorithms",
)  # fmt: skip


@dataclass(frozen=True)
class CodeWorkflowParams:
    """code_workflow params.

    topics: programming topics problems are written about (Llama 3 seeds them from a taxonomy of
        programming concepts); topics are used in stable-hash order until ``max_per_batch`` is met.
    problems_per_topic: problems asked for per topic (in one reply, so they differ from each other).
    language: the solution language; "python" only, as the verified stage runs Python.
    """

    topics: tuple[str, ...] = DEFAULT_CODE_TOPICS
    problems_per_topic: int = 2
    language: str = "python"

    def __post_init__(self) -> None:
        _check(
            bool(self.topics) and all(isinstance(t, str) and t.strip() for t in self.topics),
            "topics must be non-empty strings",
        )
        _check(self.problems_per_topic >= 1, "problems_per_topic must be at least 1")
        _check(self.language == "python", "language must be 'python' (the verified stage runs Python)")


def _functions(tree: ast.Module) -> list[ast.FunctionDef]:
    return [node for node in tree.body if isinstance(node, ast.FunctionDef)]


def entry_point_of(code: str, problem: str) -> ast.FunctionDef | None:
    """The solution's function the problem asks for: the first top-level function named in the problem
    text, else the only top-level function; None when the code does not parse or names none."""
    try:
        functions = _functions(ast.parse(code))
    except (SyntaxError, ValueError):
        return None
    named = [f for f in functions if re.search(rf"\b{re.escape(f.name)}\b", problem)]
    if named:
        return named[0]
    return functions[0] if len(functions) == 1 else None


def signature_of(function: ast.FunctionDef) -> str:
    returns = f" -> {ast.unparse(function.returns)}" if function.returns else ""
    return f"def {function.name}({ast.unparse(function.args)}){returns}: ..."


def prepare_tests(source: str, entry_point: str) -> str | None:
    """Plain-assert tests ready to run after the solution: imports of the solution's names removed (the
    solution is defined in the same program); None unless they parse, contain an ``assert``, call
    ``entry_point`` and do not define it themselves (tests testing their own copy prove nothing)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    lines = source.splitlines()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and any(alias.name == entry_point for alias in node.names):
            for i in range(node.lineno - 1, node.end_lineno or node.lineno):
                lines[i] = ""
    cleaned = "\n".join(lines).strip() + "\n"
    try:
        tree = ast.parse(cleaned)
    except SyntaxError:
        return None
    nodes = list(ast.walk(tree))
    defines = any(
        isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and n.name == entry_point
        for n in nodes
    )
    calls = any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == entry_point for n in nodes
    )
    asserts = any(isinstance(n, ast.Assert) for n in nodes)
    return cleaned if asserts and calls and not defines else None


class CodeWorkflowRecipe(LLMRecipe):
    """The Llama 3 synthetic code workflow (§4.3.1): problem descriptions from a topic list, a solution
    with step-by-step reasoning, commented code in one fenced block and an explanation, then unit tests.
    Records are task "code" with ``tests`` (plain asserts) and ``entry_point``, so the verified stage
    executes them; the tests see the problem and the function's signature but not its body, so they
    are an independent check of the solution rather than a transcript of it."""

    kind = "code_workflow"
    Params = CodeWorkflowParams
    params: CodeWorkflowParams
    prompt_slots: ClassVar[dict[str, frozenset[str]]] = {
        "problems": frozenset({"count", "topic", "language"}),
        "solve_system": frozenset({"language"}),
        "tests": frozenset({"signature", "problem", "entry_point", "language"}),
    }
    drop_reasons = ("solution_syntax_error", "no_entry_point", "invalid_tests")

    def eligible(self, seeds: pl.DataFrame) -> pl.DataFrame:
        """None: problems come from the configured topics, not from seeds."""
        return seeds.head(0)

    def _produce(self, eligible: pl.DataFrame, run: _Run) -> list[_Made]:
        p = self.params
        per = p.problems_per_topic
        topics = self.rank_names(p.topics)[: math.ceil(self.config.max_per_batch / per)]
        asks = [
            (
                _Job((), {"topic": topic}),
                self.user_turn("problems", count=per, topic=topic, language=p.language),
            )
            for topic in topics
        ]
        problems: list[_Job] = []
        for reply in run.ask(asks, allow_truncated=True):
            items = (
                numbered_items(reply.text)[:per]
                if not reply.truncated
                else numbered_items(reply.text)[:-1][:per]
            )
            if not items:
                run.drop("unparseable")
                continue
            problems.extend(reply.job.split([{"problem": item} for item in items]))
        system = self.prompts.render("solve_system", language=p.language)
        solved = run.ask([(job, [("system", system), ("user", job.state["problem"])]) for job in problems])
        codes = verified_code([reply.text for reply in solved])
        testing: list[_Job] = []
        for reply, code in zip(solved, codes, strict=True):
            job = reply.job
            if not python_blocks(reply.text) or code is None:
                run.drop("unparseable")
                continue
            try:
                compile(code, "<solution>", "exec")
            except (SyntaxError, ValueError):
                run.drop("solution_syntax_error")
                continue
            function = entry_point_of(code, job.state["problem"])
            if function is None:
                run.drop("no_entry_point")
                continue
            job.state.update(
                solution=reply.text.strip(), entry_point=function.name, signature=signature_of(function)
            )
            testing.append(job)
        asks = [
            (
                job,
                self.user_turn(
                    "tests",
                    signature=job.state["signature"],
                    problem=job.state["problem"],
                    entry_point=job.state["entry_point"],
                    language=p.language,
                ),
            )
            for job in testing
        ]
        made = []
        for reply in run.ask(asks):
            job = reply.job
            blocks = python_blocks(reply.text)
            if not blocks:
                run.drop("unparseable")
                continue
            tests = prepare_tests(blocks[-1], job.state["entry_point"])
            if tests is None:
                run.drop("invalid_tests")
                continue
            made.append(
                _Made(
                    job,
                    [("user", job.state["problem"]), ("assistant", job.state["solution"])],
                    task=TaskKind.CODE.value,
                    tests=tests,
                    entry_point=job.state["entry_point"],
                    extra={"topic": job.state["topic"], "language": p.language},
                )
            )
        return made


def function_schema(tool: Mapping[str, Any]) -> dict[str, Any]:
    """A configured tool as ``{"name", "description", "parameters"}``; accepts the OpenAI
    ``{"type": "function", "function": {...}}`` wrapper. Raises ValueError for a malformed schema."""
    spec = tool.get("function", tool) if tool.get("type") == "function" else tool
    name = spec.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][\w.-]{0,63}", name):
        raise ValueError(f"tool {name!r}: a tool needs a function name")
    parameters = spec.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(parameters, dict):
        raise ValueError(f"tool {name!r}: parameters must be a JSON schema object")
    try:
        jsonschema.validators.validator_for(parameters).check_schema(parameters)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"tool {name!r}: parameters are not a valid JSON schema: {exc.message}") from None
    return {"name": name, "description": str(spec.get("description", "")), "parameters": parameters}


def tool_call(reply: str) -> dict[str, Any] | None:
    """``{"name", "arguments"}`` from a reply: a JSON object anywhere in it, also in OpenAI's
    ``{"function": {...}}`` / ``tool_calls`` shapes, with ``parameters`` (Llama 3.1) for ``arguments``
    and arguments given as a JSON string. None when there is no such object."""
    found = json_object(reply)
    if found is None:
        return None
    if (
        isinstance(found.get("tool_calls"), list)
        and found["tool_calls"]
        and isinstance(found["tool_calls"][0], dict)
    ):
        found = found["tool_calls"][0]
    if isinstance(found.get("function"), dict):
        found = found["function"]
    name = found.get("name")
    arguments = found.get("arguments", found.get("parameters"))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(name, str) or not isinstance(arguments, dict):
        return None
    return {"name": name, "arguments": arguments}


@dataclass(frozen=True)
class ToolUseParams:
    """tool_use params.

    tools: function schemas, each ``{"name", "description", "parameters": <JSON schema>}`` or the
        OpenAI ``{"type": "function", "function": {...}}`` form (required, validated at load).
    requests_per_tool: user requests asked for per tool (in one reply, so they differ).
    """

    tools: tuple[Mapping[str, Any], ...] = ()
    requests_per_tool: int = 3

    def __post_init__(self) -> None:
        _check(bool(self.tools), "tools must list at least one function schema")
        _check(all(isinstance(t, Mapping) for t in self.tools), "every tool must be a JSON object")
        _check(self.requests_per_tool >= 1, "requests_per_tool must be at least 1")


class ToolUseRecipe(LLMRecipe):
    """Tool-use conversations from function schemas: a user request that needs the tool, the assistant's
    call (JSON ``{"name", "arguments"}``; dropped unless the arguments validate against the schema), the
    tool's result simulated by the model, and the final answer using it. Task "tool"; the schema is in
    ``metadata_extra["tools"]``."""

    kind = "tool_use"
    Params = ToolUseParams
    params: ToolUseParams
    prompt_slots: ClassVar[dict[str, frozenset[str]]] = {
        "requests": frozenset({"tool", "count"}),
        "call": frozenset({"tool", "request"}),
        "result": frozenset({"tool", "call"}),
        "answer": frozenset({"request", "call", "result"}),
    }
    drop_reasons = ("invalid_tool_call", "wrong_tool")

    def __init__(self, config: LLMRecipeConfig, seed: int) -> None:
        super().__init__(config, seed)
        try:
            schemas = [function_schema(tool) for tool in self.params.tools]
        except ValueError as exc:
            raise ValueError(f"recipe {config.name!r}: {exc}") from None
        names = [s["name"] for s in schemas]
        if len(set(names)) != len(names):
            raise ValueError(f"recipe {config.name!r}: tool names must be unique")
        self.tools = {s["name"]: s for s in schemas}
        self.validators = {
            name: jsonschema.validators.validator_for(s["parameters"])(s["parameters"])
            for name, s in self.tools.items()
        }

    def eligible(self, seeds: pl.DataFrame) -> pl.DataFrame:
        """None: requests come from the configured tools, not from seeds."""
        return seeds.head(0)

    def _produce(self, eligible: pl.DataFrame, run: _Run) -> list[_Made]:
        per = self.params.requests_per_tool
        names = self.rank_names(list(self.tools))[: math.ceil(self.config.max_per_batch / per)]
        asks = [
            (
                _Job((), {"tool": name}),
                self.user_turn("requests", tool=self._shown(name), count=per),
            )
            for name in names
        ]
        requests: list[_Job] = []
        for reply in run.ask(asks, allow_truncated=True):
            items = numbered_items(reply.text)
            items = (items[:-1] if reply.truncated else items)[:per]
            if not items:
                run.drop("unparseable")
                continue
            requests.extend(reply.job.split([{"request": item} for item in items]))
        asks = [
            (
                job,
                self.user_turn("call", tool=self._shown(job.state["tool"]), request=job.state["request"]),
            )
            for job in requests
        ]
        called: list[_Job] = []
        for reply in run.ask(asks):
            job = reply.job
            call = tool_call(reply.text)
            if call is None:
                run.drop("unparseable")
            elif call["name"] != job.state["tool"]:
                run.drop("wrong_tool")
            elif not self.validators[job.state["tool"]].is_valid(call["arguments"]):
                run.drop("invalid_tool_call")
            else:
                job.state["call"] = json.dumps(call, ensure_ascii=False)
                called.append(job)
        asks = [
            (
                job,
                self.user_turn("result", tool=self._shown(job.state["tool"]), call=job.state["call"]),
            )
            for job in called
        ]
        resulted: list[_Job] = []
        for reply in run.ask(asks):
            result = json_object(reply.text)
            if result is None:
                run.drop("unparseable")
                continue
            reply.job.state["result"] = json.dumps(result, ensure_ascii=False)
            resulted.append(reply.job)
        asks = [
            (
                job,
                self.user_turn("answer", **{k: job.state[k] for k in ("request", "call", "result")}),
            )
            for job in resulted
        ]
        made = []
        for reply in run.ask(asks):
            job, answer = reply.job, strip_chatter(reply.text)
            if not answer:
                run.drop("unparseable")
                continue
            messages = [
                ("user", job.state["request"]),
                ("assistant", job.state["call"]),
                ("tool", job.state["result"]),
                ("assistant", answer),
            ]
            made.append(
                _Made(
                    job, messages, task=TaskKind.TOOL.value, extra={"tools": [self.tools[job.state["tool"]]]}
                )
            )
        return made

    def _shown(self, name: str) -> str:
        return json.dumps(self.tools[name], indent=2, ensure_ascii=False)


@dataclass(frozen=True)
class LongContextParams:
    """long_context params.

    min_chars: seeds whose longest message is shorter are not used.
    chunk_chars: the document is cut into chunks of about this many characters (at whitespace).
    questions: chunks (so questions and records) per document, chosen by stable hash.
    """

    min_chars: int = 4000
    chunk_chars: int = 1500
    questions: int = 3

    def __post_init__(self) -> None:
        _check(self.min_chars >= 1 and self.chunk_chars >= 100, "need min_chars >= 1 and chunk_chars >= 100")
        _check(self.questions >= 1, "questions must be at least 1")


def chunks(text: str, size: int) -> list[str]:
    """``text`` cut into pieces of at most ``size`` characters, each ending at the last paragraph break,
    else line break, else space in its second half (a hard cut when there is none)."""
    pieces = []
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            window = text[start:end]
            for mark in ("\n\n", "\n", " "):
                cut = window.rfind(mark)
                if cut >= size // 2:
                    end = start + cut + len(mark)
                    break
        piece = text[start:end].strip()
        if piece:
            pieces.append(piece)
        start = end
    return pieces


class LongContextRecipe(LLMRecipe):
    """Long-context QA (Llama 3 §4.3.4): questions written from chosen chunks of a long document, then
    answered with the whole document in context; the record's user turn is the whole document followed
    by the question (``record.txt``)."""

    kind = "long_context"
    Params = LongContextParams
    params: LongContextParams
    prompt_slots: ClassVar[dict[str, frozenset[str]]] = {
        "question": frozenset({"chunk"}),
        "record": frozenset({"document", "question"}),
        "answer_system": frozenset(),
    }

    def eligible(self, seeds: pl.DataFrame) -> pl.DataFrame:
        """Seeds with a message of at least ``min_chars`` characters (the document)."""
        return with_turns(seeds).filter(pl.col("_longest").str.len_chars() >= self.params.min_chars)

    def _produce(self, eligible: pl.DataFrame, run: _Run) -> list[_Made]:
        p = self.params
        documents = math.ceil(self.config.max_per_batch / p.questions)
        asks = []
        for row in self.chosen(eligible, min(self.target(eligible.height), documents)):
            pieces = chunks(row["_longest"], p.chunk_chars)
            order = self.rank_names([f"{row['record_id']}\x1f{i}" for i in range(len(pieces))])
            picked = sorted(int(key.rsplit("\x1f", 1)[1]) for key in order[: p.questions])
            for i in picked:
                job = _seed_job(row, document=row["_longest"], chunk=i, chunks=len(pieces))
                asks.append((job, self.user_turn("question", chunk=pieces[i])))
        asked = []
        for reply in run.ask(asks):
            question = single_text(reply.text, "question")
            if question is None:
                run.drop("unparseable")
                continue
            reply.job.state["prompt"] = self.prompts.render(
                "record", document=reply.job.state["document"], question=question
            )
            asked.append(reply.job)
        system = self.prompts.render("answer_system")
        made = []
        for reply in run.ask([(job, [("system", system), ("user", job.state["prompt"])]) for job in asked]):
            if not reply.text.strip():
                run.drop("unparseable")
                continue
            extra = {"chunk": reply.job.state["chunk"], "chunks": reply.job.state["chunks"]}
            made.append(
                _Made(
                    reply.job,
                    [("user", reply.job.state["prompt"]), ("assistant", reply.text.strip())],
                    extra=extra,
                )
            )
        return made


@dataclass(frozen=True)
class DistillationParams:
    """distillation params.

    system_prompt: send ``distillation/system.txt`` to the teacher when the seed has no system message;
        the record leaves it out, so the student learns the behaviour without the prompt.
    """

    system_prompt: bool = True


class DistillationRecipe(LLMRecipe):
    """A teacher model answers existing prompts: the record is the seed conversation up to its last user
    message, then the teacher's answer."""

    kind = "distillation"
    Params = DistillationParams
    params: DistillationParams
    prompt_slots: ClassVar[dict[str, frozenset[str]]] = {"system": frozenset()}

    def eligible(self, seeds: pl.DataFrame) -> pl.DataFrame:
        """Seeds with a non-empty user message (answered or not)."""
        framed = with_turns(seeds)
        last_user = _content_at(pl.col("_last_user_at"))
        return framed.filter(last_user.is_not_null() & (last_user.str.strip_chars() != ""))

    def _produce(self, eligible: pl.DataFrame, run: _Run) -> list[_Made]:
        system = self.prompts.render("system")
        asks = []
        for row in self.chosen(eligible):
            prompt = [(m["role"], m["content"]) for m in row["messages"][: row["_last_user_at"] + 1]]
            sent = (
                prompt
                if not self.params.system_prompt or prompt[0][0] == "system"
                else [("system", system), *prompt]
            )
            asks.append((_seed_job(row, prompt=prompt), sent))
        made = []
        for reply in run.ask(asks):
            if not reply.text.strip():
                run.drop("unparseable")
                continue
            made.append(_Made(reply.job, [*reply.job.state["prompt"], ("assistant", reply.text.strip())]))
        return made


LLM_RECIPES: dict[str, type[LLMRecipe]] = {
    cls.kind: cls
    for cls in (
        SelfInstructRecipe,
        ParaphraseRecipe,
        BackTranslationRecipe,
        ReverseInstructionRecipe,
        EvolInstructRecipe,
        CodeWorkflowRecipe,
        ToolUseRecipe,
        LongContextRecipe,
        DistillationRecipe,
    )
}
