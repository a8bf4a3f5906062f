"""Raw stage: landed files in many layouts become canonical records, and every unreadable part a ledger row.

One adapter per input layout is the only code that knows about file formats. ``read_file`` hashes the
file (record ids are ``<sha12>:<position>``), picks an adapter (explicit argument, then the
``ingest.formats`` globs, then auto-detection), and returns a ``StageResult`` whose ``rejected`` frame
says, for every candidate record that could not be read, which rule it broke and where, in words that
never quote the record itself.

Positions: a record's position is its ``source_line`` (1-based line for JSONL and CSV, 1-based item or
row index for JSON arrays and Parquet); position 0 stands for the file as a whole (empty file, unknown
format, corrupt file), which then counts as one candidate so that ``rows_in == kept + rejected`` holds.
"""

from __future__ import annotations

import codecs
import fnmatch
import gzip
import hashlib
import io
import json
import re
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl
import pyarrow as pa

from thresher.config import IngestConfig
from thresher.records import MESSAGE, ROLES, TaskKind, conform, source_record_ids
from thresher.stage import StageResult

# How much of a file auto-detection looks at.
HEAD_BYTES = 1 << 20

_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"
_KNOWN_TASKS = frozenset(t.value for t in TaskKind)


# --------------------------------------------------------------------------------------------------
# File identity


def file_sha256(path: Path) -> str:
    """Hex sha256 of the file's bytes as landed: the root of every record id and of the batch key."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def batch_key(path: Path, sha256: str) -> str:
    """Dagster-safe dynamic partition key: sanitized file name + first 8 hex of its hash (<= 64 chars).

    The hash suffix keeps two different files with the same name (a re-export) apart, and makes
    re-landing identical bytes idempotent.
    """
    suffix = "-" + sha256[:8]
    stem = _UNSAFE_KEY_CHARS.sub("_", Path(path).name)
    # Dagster refuses partition keys containing "..." (INVALID_PARTITION_SUBSTRINGS).
    stem = re.sub(r"\.{2,}", ".", stem).strip("_") or "file"
    return stem[: 64 - len(suffix)] + suffix


# --------------------------------------------------------------------------------------------------
# Shared plumbing


class Invalid(Exception):  # a verdict, not an error condition of the program
    """A candidate record that cannot become a canonical record: rule name and a content-free detail."""

    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(detail)
        self.rule = rule
        self.detail = detail


@dataclass(frozen=True)
class Source:
    """One landed file, decompressed and with its BOM removed."""

    name: str
    suffixes: tuple[str, ...]  # lower-case, ".gz" removed: (".jsonl",)
    data: bytes


@dataclass
class Parsed:
    """What an adapter found: kept records (canonical columns minus ids) and content-free rejections."""

    kept: pl.DataFrame
    rejected_lines: list[int] = field(default_factory=list)
    rejected_rules: list[str] = field(default_factory=list)
    rejected_details: list[str] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)

    def reject(self, line: int, rule: str, detail: str) -> None:
        self.rejected_lines.append(line)
        self.rejected_rules.append(rule)
        self.rejected_details.append(detail)

    @property
    def rows_in(self) -> int:
        return self.kept.height + len(self.rejected_lines)


_KEPT_SCHEMA: dict[str, pl.DataType] = {
    "source_line": pl.Int64,
    "task": pl.String,
    "messages": pl.List(MESSAGE),
    "tests": pl.String,
    "entry_point": pl.String,
    "reference_answer": pl.String,
    "license": pl.String,
    "metadata": pl.String,
}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _field(obj: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    """A string field of ``obj``; raises ``Invalid`` when it is missing (if required) or not a string."""
    if key not in obj or (obj[key] is None and not required):
        if required:
            raise Invalid("missing_field", f"required field '{key}' is missing")
        return None
    value = obj[key]
    if not isinstance(value, str):
        raise Invalid("wrong_type", f"field '{key}' is {_json_type(value)}, expected a string")
    return value


def _metadata(obj: dict[str, Any], used: set[str]) -> tuple[dict[str, Any], str | None]:
    """Leftover fields (everything the adapter did not map) and the record's own license, if any."""
    extra = {k: v for k, v in obj.items() if k not in used and k not in ("metadata", "license")}
    nested = obj.get("metadata")
    if isinstance(nested, dict):
        extra = {**nested, **extra}
    elif nested is not None:
        extra["metadata"] = nested
    license_ = obj.get("license")
    if license_ is not None and not isinstance(license_, str):
        raise Invalid("wrong_type", f"field 'license' is {_json_type(license_)}, expected a string")
    return extra, license_


def _check_conversation(messages: list[dict[str, str]]) -> None:
    if not messages:
        raise Invalid("empty_conversation", "the conversation has no messages")
    if all(not m["content"].strip() for m in messages):
        raise Invalid("empty_conversation", f"all {len(messages)} message(s) have empty content")


@dataclass(frozen=True)
class Record:
    """One converted record, before ids and provenance are attached."""

    task: str
    messages: list[dict[str, str]]
    metadata: dict[str, Any]
    license: str | None = None
    tests: str | None = None
    entry_point: str | None = None
    reference_answer: str | None = None


# --------------------------------------------------------------------------------------------------
# Adapters


class Adapter(ABC):
    """Reads one file layout. Subclasses are stateless; ``ADAPTERS`` holds one instance of each."""

    name: ClassVar[str]

    @abstractmethod
    def read(self, source: Source, config: IngestConfig) -> Parsed:
        """Every candidate record of ``source``, kept or rejected."""

    def matches(self, keys: set[str]) -> bool:
        """Whether a JSON record with these keys is in this adapter's layout (auto-detection)."""
        return False


class JsonRecordAdapter(Adapter):
    """Layouts of JSON objects, one per JSONL line or one per item of a top-level JSON array."""

    signature: ClassVar[frozenset[str]] = frozenset()

    def matches(self, keys: set[str]) -> bool:
        return self.signature <= keys

    @abstractmethod
    def convert(self, obj: dict[str, Any]) -> Record:
        """Map one parsed object to a record; raise ``Invalid`` for anything unusable."""

    def read(self, source: Source, config: IngestConfig) -> Parsed:
        lines: list[int] = []
        records: list[Record] = []
        parsed = Parsed(kept=pl.DataFrame(schema=_KEPT_SCHEMA))
        # The objects come out of json.loads as Python values of arbitrary, possibly wrong, types: checking
        # them one by one is the only way to give each malformed record its own rule and position without
        # letting a columnar parser coerce or null them silently.
        for line, where, item in _json_items(source, config, parsed):
            # Parse-level verdicts are predicates of the position ("line 17 is not valid JSON: ...");
            # field-level ones are sentences of their own ("line 3: required field 'messages' is missing").
            if isinstance(item, Invalid):
                parsed.reject(line, item.rule, f"{where} {item.detail}")
                continue
            if not isinstance(item, dict):
                parsed.reject(line, "wrong_type", f"{where} is {_json_type(item)}, expected an object")
                continue
            try:
                records.append(self.convert(item))
                lines.append(line)
            except Invalid as exc:
                parsed.reject(line, exc.rule, f"{where}: {exc.detail}")
        parsed.kept = _records_frame(lines, records, config)
        return parsed


def _records_frame(lines: list[int], records: list[Record], config: IngestConfig) -> pl.DataFrame:
    """Build the kept frame column by column (one Series per field, never row appends)."""
    return pl.DataFrame(
        {
            "source_line": lines,
            "task": [r.task for r in records],
            "messages": _messages_column(records),
            "tests": [r.tests for r in records],
            "entry_point": [r.entry_point for r in records],
            "reference_answer": [r.reference_answer for r in records],
            "license": [r.license or config.default_license for r in records],
            "metadata": [_metadata_json(r.metadata) for r in records],
        },
        schema=_KEPT_SCHEMA,
    )


def _metadata_json(metadata: dict[str, Any]) -> str:
    """Metadata as strict JSON. ``json.loads`` accepts NaN and Infinity but they are not JSON, so (rarely)
    they become null rather than an unparseable metadata string downstream."""
    try:
        return json.dumps(metadata, sort_keys=True, ensure_ascii=False, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(metadata), sort_keys=True, ensure_ascii=False, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _messages_column(records: list[Record]) -> pl.Series:
    """The messages of every record as one list-of-struct column, built from flat role/content arrays and
    list offsets: handing Polars a list of lists of dicts costs one Series construction per record."""
    lengths = np.fromiter((len(r.messages) for r in records), dtype=np.int64, count=len(records))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    roles = pa.array([m["role"] for r in records for m in r.messages], type=pa.large_string())
    contents = pa.array([m["content"] for r in records for m in r.messages], type=pa.large_string())
    structs = pa.StructArray.from_arrays([roles, contents], names=["role", "content"])
    lists = pa.LargeListArray.from_arrays(pa.array(offsets, type=pa.int64()), structs)
    return pl.Series("messages", lists).cast(pl.List(MESSAGE))


def _json_items(source: Source, config: IngestConfig, parsed: Parsed):  # private generator
    """Yield ``(line, where, object | Invalid)`` for every candidate of a JSON or JSONL file."""
    data = source.data
    stripped = data.lstrip()
    if stripped.startswith(b"["):
        yield from _json_array_items(data, config)
        return
    raw_lines = data.split(b"\n")
    if raw_lines[-1] == b"":  # the final newline ends the last line; it does not start a blank one
        raw_lines.pop()
    first_record = True
    for number, raw in enumerate(raw_lines, start=1):
        line = raw.removesuffix(b"\r").removeprefix(codecs.BOM_UTF8)
        if not line.strip():
            parsed.counters["blank_lines"] = parsed.counters.get("blank_lines", 0) + 1
            continue
        where = f"line {number}"
        if len(line) > config.max_record_bytes:
            yield (
                number,
                where,
                Invalid(
                    "record_too_large",
                    f"is {len(line):,} bytes, over the ingest.max_record_bytes limit of "
                    f"{config.max_record_bytes:,}",
                ),
            )
            continue
        try:
            text = line.decode("utf-8", errors="strict")
        except UnicodeDecodeError as exc:
            yield (
                number,
                where,
                Invalid(
                    "invalid_utf8",
                    f"has bytes that are not valid UTF-8 at byte {exc.start} of the line ({exc.reason})",
                ),
            )
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            if first_record and stripped.startswith(b"{"):
                single = _single_object(data, config)
                if single is not None:  # one pretty-printed object rather than JSON lines
                    yield single
                    return
            yield (
                number,
                where,
                Invalid("invalid_json", f"is not valid JSON: {exc.msg} at column {exc.colno}"),
            )
            first_record = False
            continue
        first_record = False
        yield number, where, obj


def _single_object(data: bytes, config: IngestConfig) -> tuple[int, str, Any] | None:
    """A file holding one (pretty-printed) JSON object rather than JSON lines, as item 1; else None."""
    if len(data) > config.max_record_bytes:
        return None  # too large to be one record: read it as JSON lines, each line judged on its own
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(obj, dict):
        return None
    return 1, "item 1", obj


def _json_array_items(data: bytes, config: IngestConfig):  # private generator
    """Items of a top-level JSON array; a syntax error anywhere makes the whole file one rejection.

    Invalid UTF-8 inside a string is isolated to its item: the bytes are decoded with
    ``surrogateescape`` (lone surrogates survive ``json.loads``) and the item fails to re-encode.
    """
    text = data.decode("utf-8", errors="surrogateescape")
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        yield (
            0,
            "the file",
            Invalid(
                "invalid_json",
                f"is not a valid JSON array: {exc.msg} at line {exc.lineno} column {exc.colno}",
            ),
        )
        return
    if not isinstance(items, list):  # e.g. "[1] [2]" parses as neither; kept for safety
        yield 0, "the file", Invalid("wrong_type", f"is {_json_type(items)}, expected an array of objects")
        return
    for index, item in enumerate(items, start=1):
        where = f"item {index}"
        # Arrays are parsed whole, so the size check re-serializes the item (compact, as a JSONL line would be).
        try:
            size = len(json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode())
        except UnicodeEncodeError:
            yield index, where, Invalid("invalid_utf8", "has bytes that are not valid UTF-8")
            continue
        if size > config.max_record_bytes:
            yield (
                index,
                where,
                Invalid(
                    "record_too_large",
                    f"is {size:,} bytes, over the ingest.max_record_bytes limit of "
                    f"{config.max_record_bytes:,}",
                ),
            )
            continue
        yield index, where, item


def _text_content(content: Any, index: int, message: dict[str, Any]) -> str:
    if isinstance(content, str):
        return content
    if content is None and "tool_calls" in message:
        return ""  # an assistant turn that only calls tools; the calls go to metadata
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
    ):
        return "\n".join(p["text"] for p in content)  # OpenAI content parts, text only
    raise Invalid("wrong_type", f"message {index} content is {_json_type(content)}, expected a string")


class OpenAIMessagesAdapter(JsonRecordAdapter):
    """``{"messages": [{"role", "content"}, ...]}`` plus optional license, metadata, id, task fields."""

    name = "openai_messages"
    signature = frozenset({"messages"})
    _mapped: ClassVar[set[str]] = {"messages", "task", "tests", "entry_point", "reference_answer"}

    def convert(self, obj: dict[str, Any]) -> Record:
        if "messages" not in obj:
            raise Invalid("missing_field", "required field 'messages' is missing")
        raw = obj["messages"]
        if not isinstance(raw, list):
            raise Invalid("wrong_type", f"field 'messages' is {_json_type(raw)}, expected an array")
        messages = []
        extras = []
        for index, message in enumerate(raw, start=1):
            if not isinstance(message, dict):
                raise Invalid("wrong_type", f"message {index} is {_json_type(message)}, expected an object")
            for key in ("role", "content"):
                # An assistant turn that only calls tools may omit its content altogether.
                if key not in message and not (key == "content" and "tool_calls" in message):
                    raise Invalid("missing_field", f"message {index} has no '{key}' field")
            role = message["role"]
            if not isinstance(role, str):
                raise Invalid("wrong_type", f"message {index} role is {_json_type(role)}, expected a string")
            role = role.strip().lower()
            if role not in ROLES:
                raise Invalid(
                    "unknown_role", f"message {index} has a role that is not one of {', '.join(ROLES)}"
                )
            content = _text_content(message.get("content"), index, message)
            messages.append({"role": role, "content": content})
            rest = {k: v for k, v in message.items() if k not in ("role", "content")}
            if rest:
                extras.append({"index": index, **rest})
        _check_conversation(messages)
        metadata, license_ = _metadata(obj, self._mapped)
        if extras:
            metadata["message_fields"] = extras
        task = obj.get("task")
        if task is None:
            task = TaskKind.TOOL.value if any(m["role"] == "tool" for m in messages) else TaskKind.CHAT.value
        elif task not in _KNOWN_TASKS:
            raise Invalid("wrong_type", f"field 'task' is not one of {', '.join(sorted(_KNOWN_TASKS))}")
        return Record(
            task=task,
            messages=messages,
            metadata=metadata,
            license=license_,
            tests=_field(obj, "tests", required=False),
            entry_point=_field(obj, "entry_point", required=False),
            reference_answer=_field(obj, "reference_answer", required=False),
        )


def alpaca_prompt(instruction: str, input_: str | None) -> str:
    """The user turn of an Alpaca record: the instruction, then the input (if any) after a blank line."""
    return f"{instruction}\n\n{input_}" if input_ and input_.strip() else instruction


class AlpacaAdapter(JsonRecordAdapter):
    """``{"instruction", "input"?, "output", "system"?}``."""

    name = "alpaca"
    signature = frozenset({"instruction", "output"})

    def convert(self, obj: dict[str, Any]) -> Record:
        instruction = _field(obj, "instruction")
        output = _field(obj, "output")
        input_ = _field(obj, "input", required=False)
        system = _field(obj, "system", required=False)
        messages = [{"role": "system", "content": system}] if system else []
        messages += [
            {"role": "user", "content": alpaca_prompt(instruction, input_)},
            {"role": "assistant", "content": output},
        ]
        _check_conversation(messages)
        metadata, license_ = _metadata(obj, {"instruction", "input", "output", "system"})
        return Record(task=TaskKind.CHAT.value, messages=messages, metadata=metadata, license=license_)


class SelfInstructAdapter(JsonRecordAdapter):
    """Self-Instruct seed tasks: ``{"id", "name", "instruction", "instances": [{"input", "output"}], ...}``.

    The first instance becomes the conversation (instruction, then its input, answered by its
    output), so the 175 seed tasks of Wang et al. can seed synthesis like any chat batch; the task's
    id, name, classification flag and instances stay in the metadata.
    """

    name = "self_instruct"
    signature = frozenset({"instruction", "instances"})

    def convert(self, obj: dict[str, Any]) -> Record:
        instruction = _field(obj, "instruction")
        instances = obj.get("instances")
        if not isinstance(instances, list) or not instances:
            raise Invalid(
                "wrong_type", "field 'instances' must be a non-empty list of {input, output} objects"
            )
        first = instances[0]
        if not isinstance(first, dict):
            raise Invalid("wrong_type", f"instance 1 is {_json_type(first)}, expected an object")
        input_ = _field(first, "input", required=False)
        output = _field(first, "output")
        messages = [
            {"role": "user", "content": alpaca_prompt(instruction, input_)},
            {"role": "assistant", "content": output},
        ]
        _check_conversation(messages)
        metadata, license_ = _metadata(obj, {"instruction"})
        return Record(task=TaskKind.CHAT.value, messages=messages, metadata=metadata, license=license_)


SHAREGPT_ROLES: dict[str, str] = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "system": "system",
    "function_call": "tool",
    "observation": "tool",
    "tool": "tool",
    "function": "tool",
}


class ShareGPTAdapter(JsonRecordAdapter):
    """``{"conversations": [{"from", "value"}, ...], "system"?}`` with ShareGPT speaker names."""

    name = "sharegpt"
    signature = frozenset({"conversations"})

    def convert(self, obj: dict[str, Any]) -> Record:
        if "conversations" not in obj:
            raise Invalid("missing_field", "required field 'conversations' is missing")
        turns = obj["conversations"]
        if not isinstance(turns, list):
            raise Invalid("wrong_type", f"field 'conversations' is {_json_type(turns)}, expected an array")
        system = _field(obj, "system", required=False)
        messages = [{"role": "system", "content": system}] if system else []
        for index, turn in enumerate(turns, start=1):
            if not isinstance(turn, dict):
                raise Invalid("wrong_type", f"turn {index} is {_json_type(turn)}, expected an object")
            for key in ("from", "value"):
                if key not in turn:
                    raise Invalid("missing_field", f"turn {index} has no '{key}' field")
            speaker, value = turn["from"], turn["value"]
            if not isinstance(speaker, str):
                raise Invalid(
                    "wrong_type", f"turn {index} 'from' is {_json_type(speaker)}, expected a string"
                )
            if not isinstance(value, str):
                raise Invalid("wrong_type", f"turn {index} 'value' is {_json_type(value)}, expected a string")
            role = SHAREGPT_ROLES.get(speaker.strip().lower())
            if role is None:
                raise Invalid(
                    "unknown_role", f"turn {index} has a speaker that maps to none of {', '.join(ROLES)}"
                )
            messages.append({"role": role, "content": value})
        if not turns:
            raise Invalid("empty_conversation", "the conversation has no turns")
        _check_conversation(messages)
        metadata, license_ = _metadata(obj, {"conversations", "system"})
        task = TaskKind.TOOL.value if any(m["role"] == "tool" for m in messages) else TaskKind.CHAT.value
        return Record(task=task, messages=messages, metadata=metadata, license=license_)


def fenced(code: str) -> str:
    """A Python code block in Markdown, with exactly one newline before the closing fence."""
    return f"```python\n{code.rstrip()}\n```"


class HumanEvalAdapter(JsonRecordAdapter):
    """HumanEval problems: complete a function from its signature and docstring."""

    name = "humaneval"
    signature = frozenset({"task_id", "prompt", "canonical_solution", "test", "entry_point"})

    def convert(self, obj: dict[str, Any]) -> Record:
        prompt = _field(obj, "prompt")
        solution = _field(obj, "canonical_solution")
        test = _field(obj, "test")
        entry_point = _field(obj, "entry_point")
        if "task_id" not in obj:
            raise Invalid("missing_field", "required field 'task_id' is missing")
        messages = [
            {"role": "user", "content": "Complete the following Python function.\n\n" + fenced(prompt)},
            {"role": "assistant", "content": fenced(prompt + solution)},
        ]
        metadata, license_ = _metadata(obj, {"prompt", "canonical_solution", "test", "entry_point"})
        return Record(
            task=TaskKind.CODE.value,
            messages=messages,
            metadata=metadata,
            license=license_,
            tests=f"{test}\ncheck({entry_point})\n",
            entry_point=entry_point,
        )


_DEF_NAME = re.compile(r"^def\s+([A-Za-z_]\w*)\s*\(", re.MULTILINE)


class MBPPAdapter(JsonRecordAdapter):
    """MBPP problems: a one-line task, a reference solution and assert-based tests.

    Also reads the "sanitized" MBPP layout, which says ``prompt`` for ``text`` and lists setup imports.
    """

    name = "mbpp"
    signature = frozenset({"code", "test_list"})

    def convert(self, obj: dict[str, Any]) -> Record:
        text = _field(obj, "text" if "text" in obj or "prompt" not in obj else "prompt")
        code = _field(obj, "code")
        setup = _field(obj, "test_setup_code", required=False) or ""
        imports = obj.get("test_imports") or []
        if "test_list" not in obj:
            raise Invalid("missing_field", "required field 'test_list' is missing")
        asserts = obj["test_list"]
        if not isinstance(asserts, list) or not all(isinstance(a, str) for a in asserts):
            raise Invalid("wrong_type", "field 'test_list' is not an array of strings")
        if not isinstance(imports, list) or not all(isinstance(i, str) for i in imports):
            raise Invalid("wrong_type", "field 'test_imports' is not an array of strings")
        if not asserts:
            raise Invalid("missing_field", "field 'test_list' has no tests")
        examples = "\n".join(asserts)
        user = f"{text}\n\nYour code should pass these tests:\n\n{fenced(examples)}"
        tests = "\n".join(part for part in (*imports, setup.strip("\r\n"), *asserts) if part) + "\n"
        # MBPP names no entry point; the first defined function the tests call is the one under test.
        entry_point = next((n for n in _DEF_NAME.findall(code) if re.search(rf"\b{n}\s*\(", examples)), None)
        metadata, license_ = _metadata(
            obj, {"text", "prompt", "code", "test_list", "test_setup_code", "test_imports"}
        )
        return Record(
            task=TaskKind.CODE.value,
            messages=[{"role": "user", "content": user}, {"role": "assistant", "content": fenced(code)}],
            metadata=metadata,
            license=license_,
            tests=tests,
            entry_point=entry_point,
        )


def gsm8k_final_answer(answer: str) -> str | None:
    """The text after the last ``####`` of a GSM8K answer, stripped, thousands separators removed."""
    if "####" not in answer:
        return None
    final = answer.rsplit("####", 1)[1].strip().replace(",", "")
    return final or None


class GSM8KAdapter(JsonRecordAdapter):
    """GSM8K word problems: the worked answer ends with ``#### <final answer>``."""

    name = "gsm8k"
    signature = frozenset({"question", "answer"})

    def convert(self, obj: dict[str, Any]) -> Record:
        question = _field(obj, "question")
        answer = _field(obj, "answer")
        override = obj.get("reference_answer")
        if override is not None and (
            isinstance(override, bool) or not isinstance(override, str | int | float)
        ):
            raise Invalid(
                "wrong_type", f"field 'reference_answer' is {_json_type(override)}, expected a string"
            )
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        _check_conversation(messages)
        metadata, license_ = _metadata(obj, {"question", "answer", "reference_answer"})
        # Without "####" and without an override the answer stays null: verification rejects it then
        # (math_answer_missing), where a reviewer looks for math problems.
        reference = str(override).strip() if override is not None else gsm8k_final_answer(answer)
        return Record(
            task=TaskKind.MATH.value,
            messages=messages,
            metadata=metadata,
            license=license_,
            reference_answer=reference,
        )


@dataclass
class Table:
    """A loaded prompt/response table: one row per candidate record, plus what the loader saw in the bytes."""

    frame: pl.DataFrame
    # Each row's ``source_line`` (CSV physical line, Parquet 1-based row index).
    lines: pl.Series
    # Rows that are blank physical lines (CSV only): not records, only counted.
    blank: pl.Series | None = None
    # Rows whose bytes are not valid UTF-8 (CSV only; read lossily so that the other rows survive).
    bad_utf8: pl.Series | None = None


# Columns the tabular adapters add to a loaded table; never user data, never metadata.
_LINE, _BAD_UTF8 = "__line", "__bad_utf8"


class TabularAdapter(Adapter):
    """Prompt/response tables (CSV, Parquet), converted with Polars expressions only."""

    # How a detail names a row: CSV rows are physical lines, Parquet rows are indexes.
    position_word: ClassVar[str]

    @abstractmethod
    def load(self, source: Source) -> Table:
        """The table and each row's ``source_line``; raise ``Invalid`` if the file cannot be read."""

    def read(self, source: Source, config: IngestConfig) -> Parsed:
        parsed = Parsed(kept=pl.DataFrame(schema=_KEPT_SCHEMA))
        try:
            table = self.load(source)
        except Invalid as exc:
            parsed.reject(0, exc.rule, f"the file {exc.detail}")
            return parsed
        frame = table.frame.with_columns(
            table.lines.cast(pl.Int64).alias(_LINE),
            (table.bad_utf8 if table.bad_utf8 is not None else pl.lit(False)).alias(_BAD_UTF8),
        )
        if table.blank is not None:
            parsed.counters["blank_lines"] = int(table.blank.sum())
            frame = frame.filter(~table.blank)
        if frame.is_empty():
            parsed.reject(0, "empty_file", "the file has no data rows")
            return parsed
        try:
            frame = self._text_columns(frame, config)
        except Invalid as exc:
            parsed.reject(0, exc.rule, f"the file {exc.detail}")
            return parsed
        frame, skipped = _json_safe_leftovers(frame, config)
        if skipped:
            parsed.counters["metadata_columns_skipped"] = skipped
        rows = _tabular_records(frame, config, self.position_word)
        rejected = rows.filter(pl.col("__rule").is_not_null())
        parsed.rejected_lines = rejected["source_line"].to_list()
        parsed.rejected_rules = rejected["__rule"].to_list()
        parsed.rejected_details = rejected["__detail"].to_list()
        parsed.kept = rows.filter(pl.col("__rule").is_null()).select(list(_KEPT_SCHEMA))
        return parsed

    @staticmethod
    def _text_columns(frame: pl.DataFrame, config: IngestConfig) -> pl.DataFrame:
        wanted = [config.prompt_column, config.response_column]
        if config.system_column and config.system_column in frame.columns:
            wanted.append(config.system_column)
        for column in wanted:
            if column not in frame.columns:
                which = "ingest.prompt_column" if column == config.prompt_column else "ingest.response_column"
                raise Invalid("missing_field", f"has no column named '{column}' (see {which})")
            dtype = frame.schema[column]
            if dtype not in (pl.String, pl.Categorical, pl.Null) and not isinstance(dtype, pl.Enum):
                raise Invalid("wrong_type", f"column '{column}' has type {dtype}, expected text")
        return frame.with_columns([pl.col(c).cast(pl.String) for c in wanted])


def _contains_binary(dtype: pl.DataType) -> bool:
    if isinstance(dtype, pl.Binary):
        return True
    if isinstance(dtype, pl.List | pl.Array):
        return _contains_binary(dtype.inner)
    if isinstance(dtype, pl.Struct):
        return any(_contains_binary(f.dtype) for f in dtype.fields)
    return False


def _json_safe_leftovers(frame: pl.DataFrame, config: IngestConfig) -> tuple[pl.DataFrame, int]:
    """Make the metadata columns JSON-encodable: Polars cannot write binary to JSON (it panics).

    A binary column becomes base64 text; binary nested in lists or structs is left out of the metadata
    (the number of such columns is returned, for a counter) rather than failing the whole file.
    """
    mapped = {config.prompt_column, config.response_column, config.system_column, "license", _LINE, _BAD_UTF8}
    base64, nested = [], []
    for name, dtype in frame.schema.items():
        if name in mapped or not _contains_binary(dtype):
            continue
        (base64 if isinstance(dtype, pl.Binary) else nested).append(name)
    frame = frame.with_columns(pl.col(c).bin.encode("base64") for c in base64).drop(nested)
    return frame, len(nested)


def _tabular_records(frame: pl.DataFrame, config: IngestConfig, position_word: str) -> pl.DataFrame:
    """Kept-frame columns plus ``__rule``/``__detail`` (null when kept) for every row of a text table."""
    internal = {_LINE, _BAD_UTF8}
    system_col = config.system_column if config.system_column in frame.columns else None
    text_cols = [c for c, t in frame.schema.items() if t == pl.String and c not in internal]
    size = pl.sum_horizontal([pl.col(c).str.len_bytes().fill_null(0) for c in text_cols]) if text_cols else 0
    prompt = pl.col(config.prompt_column).fill_null("")
    response = pl.col(config.response_column).fill_null("")
    system = pl.col(system_col).fill_null("") if system_col else pl.lit("")
    all_empty = (
        (prompt.str.strip_chars() == "")
        & (response.str.strip_chars() == "")
        & (system.str.strip_chars() == "")
    )
    bad_utf8 = pl.col(_BAD_UTF8)
    too_large = size > config.max_record_bytes
    where = pl.format(f"{position_word} {{}}", pl.col(_LINE))
    rule = (
        pl.when(bad_utf8)
        .then(pl.lit("invalid_utf8"))
        .when(too_large)
        .then(pl.lit("record_too_large"))
        .when(all_empty)
        .then(pl.lit("empty_conversation"))
    )
    detail = (
        pl.when(bad_utf8)
        .then(pl.format("{} has bytes that are not valid UTF-8", where))
        .when(too_large)
        .then(
            pl.format(
                "{} is {} bytes of text, over the ingest.max_record_bytes limit of {}",
                where,
                size,
                pl.lit(config.max_record_bytes),
            )
        )
        .when(all_empty)
        .then(pl.format("{}: prompt and response are both empty", where))
    )
    mapped = {config.prompt_column, config.response_column, system_col, "license", *internal}
    leftovers = sorted(c for c in frame.columns if c not in mapped)
    metadata = pl.struct(leftovers).struct.json_encode() if leftovers else pl.lit("{}")
    license_ = (
        pl.col("license").cast(pl.String).fill_null(config.default_license)
        if "license" in frame.columns
        else pl.lit(config.default_license)
    )
    return frame.select(
        pl.col(_LINE).alias("source_line"),
        pl.lit(TaskKind.CHAT.value).alias("task"),
        _tabular_messages(frame, config.prompt_column, config.response_column, system_col),
        pl.lit(None, pl.String).alias("tests"),
        pl.lit(None, pl.String).alias("entry_point"),
        pl.lit(None, pl.String).alias("reference_answer"),
        license_.alias("license"),
        metadata.alias("metadata"),
        rule.alias("__rule"),
        detail.alias("__detail"),
    )


def _tabular_messages(frame: pl.DataFrame, prompt: str, response: str, system: str | None) -> pl.Series:
    """[system?, user, assistant] per row; the system turn only when its cell is non-empty.

    Built as a long (row, turn) frame regrouped per row: ``concat_list`` of struct columns is about 25x
    slower in Polars 2. Every row keeps its user and assistant turns, so no row can vanish in the regroup.
    """
    turns = [("user", prompt), ("assistant", response)]
    if system is not None:
        turns.insert(0, ("system", system))
    rows = pl.int_range(pl.len(), dtype=pl.Int64).alias("__row")
    long = pl.concat(
        [
            frame.select(
                rows,
                pl.lit(k, pl.Int8).alias("__turn"),
                pl.lit(role).alias("role"),
                pl.col(column).fill_null("").alias("content"),
            )
            for k, (role, column) in enumerate(turns)
        ]
    )
    long = long.filter((pl.col("role") != "system") | (pl.col("content") != "")).sort("__row", "__turn")
    grouped = long.group_by("__row", maintain_order=True).agg(pl.struct("role", "content").alias("messages"))
    return grouped["messages"].cast(pl.List(MESSAGE))


def _bad_utf8_lines(data: bytes) -> np.ndarray:
    """Sorted 1-based numbers of the physical lines of ``data`` that are not valid UTF-8.

    A Python loop over lines, but only for the rare file that already failed a whole-file decode: the
    codec has no vectorized per-line form, and this is what lets one bad line spare the rest of the file.
    """
    bad = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        try:
            line.decode("utf-8", errors="strict")
        except UnicodeDecodeError:
            bad.append(number)
    return np.asarray(bad, dtype=np.int64)


class CsvAdapter(TabularAdapter):
    """Prompt/response CSV (or TSV) with a header row; every cell read as text."""

    name = "prompt_response_csv"
    position_word = "line"

    def load(self, source: Source) -> Table:
        data = source.data
        try:
            data.decode("utf-8", errors="strict")
            bad_lines = np.empty(0, dtype=np.int64)
        except UnicodeDecodeError:
            bad_lines = _bad_utf8_lines(data)
        separator = "\t" if ".tsv" in source.suffixes else ","
        try:
            # Lossy decoding only swaps bad bytes for U+FFFD; quotes and separators are ASCII, so the row
            # structure is unchanged and the rows on bad lines are rejected below.
            frame = pl.read_csv(
                io.BytesIO(data),
                infer_schema=False,
                separator=separator,
                encoding="utf8-lossy" if bad_lines.size else "utf8",
            )
        except Exception as exc:  # any parser failure means the same thing to a reviewer
            raise Invalid("unreadable_file", f"could not be parsed as CSV ({type(exc).__name__})") from None
        # Physical line of each row: the header is line 1 and a quoted cell spanning k lines adds k - 1.
        header_lines = 1 + sum(c.count("\n") for c in frame.columns)
        if bad_lines.size and bad_lines[0] <= header_lines:
            raise Invalid(
                "invalid_utf8", f"has bytes that are not valid UTF-8 in its header (line {bad_lines[0]})"
            )
        spans = frame.select(
            (pl.sum_horizontal([pl.col(c).str.count_matches("\n").fill_null(0) for c in frame.columns]) + 1)
            .cast(pl.Int64)
            .alias("span")
        )["span"]
        lines = (spans.cum_sum() - spans + header_lines + 1).alias(_LINE)
        first, last = lines.to_numpy(), (lines + spans - 1).to_numpy()
        bad_utf8 = pl.Series(
            _BAD_UTF8,
            np.searchsorted(bad_lines, last, side="right") > np.searchsorted(bad_lines, first, side="left"),
        )
        return Table(frame, lines, blank=self._blank_lines(frame, lines, data), bad_utf8=bad_utf8)

    @staticmethod
    def _blank_lines(frame: pl.DataFrame, lines: pl.Series, data: bytes) -> pl.Series:
        """Rows that are empty physical lines. Polars reads them as all-null rows, like a row of empty cells
        (``,``), which is a record; so the all-null rows (few) are checked against the bytes of their line."""
        if frame.width == 0:
            return pl.Series("blank", [False] * frame.height, dtype=pl.Boolean)
        all_null = frame.select(pl.all_horizontal(pl.all().is_null()).alias("blank"))["blank"]
        if not all_null.any():
            return all_null
        raw_lines = data.split(b"\n")
        candidates = lines.filter(all_null).to_list()
        blank_at = {n for n in candidates if n <= len(raw_lines) and not raw_lines[n - 1].strip()}
        return lines.is_in(list(blank_at)).alias("blank") & all_null


class ParquetAdapter(TabularAdapter):
    """Prompt/response Parquet; ``source_line`` is the 1-based row index."""

    name = "prompt_response_parquet"
    position_word = "row"

    def load(self, source: Source) -> Table:
        try:
            frame = pl.read_parquet(io.BytesIO(source.data))
        except Exception as exc:  # a corrupt file is a corrupt file, whatever the exception
            raise Invalid("unreadable_file", f"could not be read as Parquet ({type(exc).__name__})") from None
        return Table(frame, pl.int_range(1, frame.height + 1, dtype=pl.Int64, eager=True).alias(_LINE))


ADAPTERS: dict[str, Adapter] = {
    adapter.name: adapter
    for adapter in (
        OpenAIMessagesAdapter(),
        AlpacaAdapter(),
        SelfInstructAdapter(),
        ShareGPTAdapter(),
        CsvAdapter(),
        ParquetAdapter(),
        HumanEvalAdapter(),
        MBPPAdapter(),
        GSM8KAdapter(),
    )
}

# Most specific layouts first: a HumanEval record also has a "prompt", a GSM8K one nothing else.
_DETECTION_ORDER = ("humaneval", "mbpp", "gsm8k", "self_instruct", "openai_messages", "sharegpt", "alpaca")


# --------------------------------------------------------------------------------------------------
# Detection


def _suffixes(name: str) -> tuple[str, ...]:
    suffixes = [s.lower() for s in Path(name).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return tuple(suffixes)


def _head_objects(head: bytes, limit: int = 5) -> list[dict[str, Any]]:
    """The first few JSON objects in ``head`` (JSONL lines or array items); a truncated tail is ignored."""
    text = head.decode("utf-8", errors="ignore").lstrip("\ufeff \t\r\n")
    objects: list[dict[str, Any]] = []
    if text.startswith("["):
        decoder = json.JSONDecoder()
        position = 1
        while len(objects) < limit:
            while position < len(text) and text[position] in " \t\r\n,":
                position += 1
            try:
                obj, position = decoder.raw_decode(text, position)
            except json.JSONDecodeError:
                break
            if isinstance(obj, dict):
                objects.append(obj)
        return objects
    for line in text.split("\n"):
        if len(objects) >= limit:
            break
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            objects.append(obj)
    if not objects and text.startswith("{"):
        try:  # a single pretty-printed object
            obj = json.loads(text)
        except json.JSONDecodeError:
            return []
        if isinstance(obj, dict):
            objects.append(obj)
    return objects


def detect_format(path: Path, head: bytes) -> str | None:
    """The adapter for a file, from its extension (tables) or the keys of its first records (JSON).

    ``head`` is the start of the file (gzip-compressed or not); ``None`` when nothing matches.
    """
    if head.startswith(_GZIP_MAGIC):
        try:  # a head cut mid-stream decompresses fine; only corrupt bytes fail
            head = zlib.decompressobj(wbits=31).decompress(head, HEAD_BYTES)
        except zlib.error:
            return None
    suffixes = _suffixes(Path(path).name)
    last = suffixes[-1] if suffixes else ""
    if last == ".parquet" or head.startswith(_PARQUET_MAGIC):
        return ParquetAdapter.name
    if last in (".csv", ".tsv"):
        return CsvAdapter.name
    for obj in _head_objects(head):
        keys = set(obj)
        for name in _DETECTION_ORDER:
            if ADAPTERS[name].matches(keys):
                return name
    return None


def configured_format(name: str, config: IngestConfig) -> str | None:
    """The adapter ``ingest.formats`` assigns to this file name (first matching glob), if any."""
    for pattern, adapter in config.formats.items():
        if fnmatch.fnmatchcase(name, pattern):
            return adapter
    return None


# --------------------------------------------------------------------------------------------------
# Entry point


def _whole_file(sha: str, name: str, rule: str, detail: str, counters: dict[str, int]) -> StageResult:
    """A file that yields no candidate records at all: one ledger row at position 0."""
    rejected = pl.DataFrame(
        {
            "record_id": [f"{sha[:12]}:0"],
            "rule": [rule],
            "detail": [detail],
            "source_file": [name],
            "source_line": [0],
        },
        schema={
            "record_id": pl.String,
            "rule": pl.String,
            "detail": pl.String,
            "source_file": pl.String,
            "source_line": pl.Int64,
        },
    )
    return StageResult(
        rows_in=1, kept=conform(pl.DataFrame(schema=_KEPT_SCHEMA)), rejected=rejected, counters=counters
    )


def read_file(
    path: Path,
    batch: str,
    config: IngestConfig,
    *,
    source_name: str | None = None,
    file_format: str | None = None,
) -> StageResult:
    """Parse one landed file into canonical records; never raises on bad input (it lands in the ledger)."""
    path = Path(path)
    name = source_name or path.name
    counters: dict[str, int] = {}
    try:
        raw = path.read_bytes()
    except OSError as exc:
        sha = hashlib.sha256(b"").hexdigest()
        return _whole_file(
            sha, name, "unreadable_file", f"the file could not be opened ({type(exc).__name__})", counters
        )
    sha = hashlib.sha256(raw).hexdigest()
    data = raw
    if raw.startswith(_GZIP_MAGIC) or name.lower().endswith(".gz"):
        try:
            data = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error):
            return _whole_file(
                sha, name, "unreadable_file", "the file is not a readable gzip stream", counters
            )
        counters["gzip"] = 1
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
        counters["bom_stripped"] = 1
    if not data.strip():
        detail = "the file is empty" if not data else "the file contains only whitespace"
        return _whole_file(sha, name, "empty_file", detail, counters)

    # The head holds at least one whole record of the largest admissible size, even pretty-printed.
    head = data[: max(HEAD_BYTES, 2 * config.max_record_bytes)]
    fmt = file_format or configured_format(name, config) or detect_format(Path(name), head)
    if fmt is None:
        return _whole_file(
            sha,
            name,
            "unknown_format",
            "the format could not be detected from the file extension or the keys of the first records "
            "(map the file name to an adapter in ingest.formats)",
            counters,
        )
    if fmt not in ADAPTERS:
        return _whole_file(
            sha,
            name,
            "unknown_format",
            f"the configured format '{fmt}' is not one of: {', '.join(sorted(ADAPTERS))}",
            counters,
        )

    source = Source(name=name, suffixes=_suffixes(name), data=data)
    try:
        parsed = ADAPTERS[fmt].read(source, config)
    except BaseException as exc:  # the contract is "bad input never raises"; say it loudly instead
        # BaseException because a Rust panic inside Polars surfaces as pyo3's PanicException, which is not
        # an Exception; interpreter exits and Ctrl-C still propagate.
        if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
            raise
        counters["unexpected_errors"] = 1
        return _whole_file(
            sha,
            name,
            "unreadable_file",
            f"the {fmt} adapter failed unexpectedly ({type(exc).__name__})",
            counters,
        )
    counters.update(parsed.counters)
    counters.setdefault("blank_lines", 0)
    counters[f"format.{fmt}"] = parsed.kept.height
    if parsed.rows_in == 0:  # e.g. a JSONL file of blank lines
        return _whole_file(sha, name, "empty_file", "the file has no records, only blank lines", counters)

    kept = parsed.kept.with_columns(
        source_record_ids(sha, pl.col("source_line")),
        pl.lit(batch).alias("batch"),
        pl.lit(name).alias("source_file"),
        pl.lit(fmt).alias("source_format"),
        pl.lit("source").alias("origin"),
        _normalize_newlines(pl.col("messages")),
        pl.col("tests").str.replace_all("\r\n", "\n", literal=True),
    )
    rejected = (
        pl.DataFrame(
            {
                "source_line": parsed.rejected_lines,
                "rule": parsed.rejected_rules,
                "detail": parsed.rejected_details,
            },
            schema={"source_line": pl.Int64, "rule": pl.String, "detail": pl.String},
        )
        .select(
            source_record_ids(sha, pl.col("source_line")),
            "rule",
            "detail",
            pl.lit(name).alias("source_file"),
            "source_line",
        )
        .sort("source_line", maintain_order=True)
    )
    return StageResult(rows_in=parsed.rows_in, kept=conform(kept), rejected=rejected, counters=counters)


def _normalize_newlines(messages: pl.Expr) -> pl.Expr:
    """CRLF -> LF inside every message's content; roles and everything else untouched."""
    return messages.list.eval(
        pl.struct(
            pl.element().struct.field("role"),
            pl.element().struct.field("content").str.replace_all("\r\n", "\n", literal=True),
        )
    ).alias("messages")
