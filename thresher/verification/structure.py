"""Structured answers checked without running anything: tool calls, requested formats, paraphrases.

Three checks, each applied only where it has something to check (other records get no outcome):

- Tool calls (``tool_call_invalid``): every call's arguments parse as JSON and validate against its
  function's JSON Schema (the schema's own ``$schema``, else Draft 2020-12), and every called function
  is in the record's tool list. The tool list is the metadata's ``tools`` (a JSON array, or a string
  holding one; plain function schemas or OpenAI's ``{"type": "function", "function": ...}`` form, read
  by the tool_use recipe's ``function_schema``). Calls are an assistant turn directly followed by a
  tool turn, its content a JSON call as the tool_use recipe writes it (read by the recipe's
  ``tool_call``), or the OpenAI ``tool_calls`` that ingest keeps in the metadata's ``message_fields``.
- Requested output format: when the metadata says so (``response_format`` "json" / a
  ``json_object`` or ``json_schema`` type, or ``labels``), or the last user turn clearly asks for
  JSON or for one label of a fixed set, the final assistant answer must be JSON (``format_not_json``;
  a ```json fence around it is allowed) or exactly one of the labels (``label_not_in_set``; case,
  surrounding punctuation and quotes and an "Answer:" prefix ignored). Detection is deliberately
  narrow, since a false "requested format" rejects a good record: imperative phrasings only, none in a
  sentence about code, none in a turn that also asks for an explanation, label lists of short items.
  Code and math records are left to their own verifiers.
- Paraphrases (``paraphrase_drift``, ``paraphrase_identical``): records of the paraphrase and
  back_translation recipes must keep chrF (the back_translation recipe's ``chrf``) at least
  ``paraphrase_min_similarity`` to their seed's first user turn, and must differ from it after the
  recipes' own normalization. They are recognized by the metadata those recipes write (paraphrase:
  ``response`` "kept" / "regenerated"; back_translation: ``metric`` "chrf" with a ``pivot``), since the
  metadata names the configured recipe, not its kind. The seed is the record's one parent id, looked
  up in the frame (the verified stage reads the synthetic table, seeds included) and in ``seeds``.

Details name functions from the schema, JSON-Schema paths and keywords, counts and numbers; never
argument values, answers or instructions.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema
import polars as pl
import polars.selectors as cs
from referencing.exceptions import Unresolvable

# The module object, not its names: llm_recipes imports thresher.verification (extract_code), so this
# file may be loaded while llm_recipes is still initializing; its functions are looked up at call time.
from thresher import llm_recipes
from thresher.config import StructureChecksConfig
from thresher.records import TaskKind
from thresher.verification.outcomes import OUTCOME_SCHEMA, ROW

# ---------------------------------------------------------------------------------------------
# Requested output formats (Rust regex syntax: no look-around, so vetoes are separate expressions)

# Where an imperative can start: the turn's start, after a sentence or clause end, on a new line.
_START = r"(?:^|[.!?;:]\s+|\n\s*)"
_POLITE = (
    r"(?:(?:please|now|finally|also|then)\s+|(?:can|could|would|will)\s+you\s+(?:please\s+)?"
    r"|you\s+(?:must|should|need\s+to|have\s+to)\s+(?:only\s+)?)?"
)
_QUALIFIED_JSON = r"(?:(?:valid|strict|pure|raw|plain|minified|compact|single|well-formed|proper)\s+)*json\b"
_JSON_PHRASES = (
    # "Respond in JSON", "Reply with a JSON object", "Answer using valid JSON"
    rf"(?:respond|reply|answer)\s+(?:(?:only|strictly|exclusively)\s+)?(?:in|with|using)\s+(?:(?:a|an|the)\s+)?"
    rf"{_QUALIFIED_JSON}",
    # "Format your answer as JSON", "Provide the output in JSON format"
    r"(?:return|output|give|provide|format|write|produce|generate|present|print|deliver)\s+(?:(?:only|just)\s+)?"
    r"(?:your|the)\s+(?:(?:final|entire|whole)\s+)?(?:answer|response|result|results|output|reply|findings)\s+"
    rf"(?:(?:only|strictly|exclusively)\s+)?(?:in|as|using)\s+(?:(?:a|an)\s+)?{_QUALIFIED_JSON}",
    # "Return JSON", "Output only valid JSON", "Return a JSON object with ..."
    rf"(?:return|output)\s+(?:(?:only|just)\s+)?(?:(?:a|an|the|one)\s+)?{_QUALIFIED_JSON}",
    # "Your response must be valid JSON"
    r"(?:your|the)\s+(?:(?:final|entire|whole)\s+)?(?:response|answer|output|reply)\s+"
    r"(?:must|should|has\s+to|needs\s+to|will|shall)\s+be\s+(?:(?:in|formatted\s+as|formatted\s+in|a|an|only|strictly)\s+)*"
    rf"{_QUALIFIED_JSON}",
    # "List the planets as a JSON array"
    r"(?:list|give|provide|return|output|extract|summarize|summarise|convert|format|present|rewrite|reformat|transform"
    r"|put|organize|organise|generate|produce|create|write)\b[^.!?\n]{0,200}?\s(?:as|into)\s+(?:(?:a|an)\s+)?"
    rf"{_QUALIFIED_JSON}\s+(?:object|array|list|dictionary)s?\b",
    # "Summarize the review in JSON format"
    r"(?:list|give|provide|return|output|extract|summarize|summarise|convert|format|present|rewrite|reformat|transform"
    rf"|put|organize|organise|show|classify|identify|name|translate)\b[^.!?\n]{{0,200}}?\sin\s+{_QUALIFIED_JSON}\s+format\b",
    # "Convert the table to JSON"
    rf"(?:convert|transform|translate|turn|rewrite|reformat)\b[^.!?\n]{{0,200}}?\s(?:to|into)\s+(?:(?:a|an)\s+)?{_QUALIFIED_JSON}",
    # "Output format: JSON"
    rf"(?:(?:output|response|answer)\s+)?format\s*:\s*{_QUALIFIED_JSON}",
)
# The request and the rest of its sentence (for the code veto).
_JSON_REQUEST = rf"(?i){_START}{_POLITE}(?:{'|'.join(_JSON_PHRASES)})[^\n]*?(?:[.!?](?:\s|$)|\n|$)"
# A sentence about code, files or storage: "return JSON" there describes a program, not the answer.
_CODE_WORDS = (
    r"(?i)\b(?:functions?|methods?|class|classes|code|script|program|snippet|api|endpoint|server|route"
    r"|requests?|app|application|library|package|module|files?|database|python|javascript|typescript|java"
    r"|node|php|ruby|golang|rust|sql|query|regex|seriali[sz]\w*|deseriali[sz]\w*|encod\w*|decod\w*"
    r"|stor(?:e|es|ed|ing)|sav(?:e|es|ed|ing)|load\w*|read\w*|dump\w*|stringify)\b"
)
# A turn that also asks for reasoning expects more than the bare format.
_EXPLAIN = (
    r"(?i)\b(?:explain\w*|explanation|justif\w*|reasoning|rationale|step[- ]by[- ]step"
    r"|think\s+(?:first|carefully|it\s+through)|show\s+(?:your\s+)?work|(?:and|say|tell\s+\w+)\s+why)\b"
)

_NUMBER_WORD = r"(?:two|three|four|five|six|seven|eight|nine|ten|\d+)"
_KINDS = r"(?:categories|classes|labels|groups|types|options)"
# A label list ends its sentence: a period or "!" before whitespace, a line break, the turn's end.
_LIST_END = r"\s*(?:[.!](?:\s|$)|\n|$)"
_ANSWER_VERB = r"(?:answer|respond|reply|output)"
# "Answer with one of: A, B, C", "Respond with one of the following labels: ..."
_ONE_OF = (
    rf"(?i){_START}{_POLITE}{_ANSWER_VERB}(?:\s+only)?(?:\s+(?:with|using))?\s+(?:(?:only|exactly|just)\s+)?"
    rf"(?:one|1)\s+(?:of|from)\b(?:\s+(?:the|these))?(?:\s+following)?(?:\s+{_NUMBER_WORD})?"
    rf"(?:\s+(?:options|labels|choices|categories|classes|answers|words|values))?\s*:?\s*([^\n]{{1,200}}?){_LIST_END}"
)
# "Respond with yes or no", "You should respond with "Satisfied" or "Unsatisfied"" (group 1: the list).
_EITHER = (
    rf"(?i){_START}{_POLITE}{_ANSWER_VERB}(?:\s+(?:only|just|simply))?(?:\s+(?:with|using))?"
    r"(?:\s+(?:either|only|just|exactly))?(?:\s+(?:the\s+word|a\s+single\s+word|one\s+word))?\s*:?\s+"
    rf"([^\n]{{0,200}}?\sor\s[^\n]{{0,200}}?){_LIST_END}"
)
# Marks an _EITHER list as a label list even when its items are not the usual label words.
_EITHER_MARKED = r"(?i)\b(?:either|only|just|exactly|single\s+word|one\s+word)\b"
# "Classify the sentiment as positive, negative, or neutral" (group 1: what is classified; 2: the list).
_CLASSIFY = (
    rf"(?i)(?:{_START}{_POLITE}|,?\s+and\s+)(?:classify|categorize|categorise|label)\b([^.!?\n]{{0,150}}?)"
    rf"\s(?:as|into)\s+(?:(?:either|one\s+of)\s+)?"
    # "the following:", "the following three categories:", "the categories" before the list
    rf"(?:the\s+(?:following)?\s*(?:{_NUMBER_WORD}\s+)?{_KINDS}?\s*:\s*|the\s+(?:following\s+)?(?:{_NUMBER_WORD}\s+)?{_KINDS}\s+)?"
    rf"([^\n]{{0,200}}?\s(?:or|and)\s[^\n]{{0,200}}?){_LIST_END}"
)
# Several things to classify ("each", "these", "the following animals") want one label per thing.
_SEVERAL = (
    r"(?i)\b(?:each|every|all|both|these|those|them|they|respectively|items?|list)\b"
    r"|\b(?:the|following|given)\s+(?:following\s+|given\s+)?\w+[^s\W]s\b"
)
_OPTION_WORDS = r"(?:options|choices|answer\s+choices|possible\s+answers)"
# "Options: yes, no, maybe" on a line of its own.
_OPTIONS_INLINE = rf"(?im)^[ \t]*{_OPTION_WORDS}[ \t]*:[ \t]*([^\n]*\S)[ \t]*$"
# "OPTIONS:\n- yes\n- no" (FLAN).
_OPTIONS_BLOCK = (
    rf"(?i)(?:^|\n)[ \t]*{_OPTION_WORDS}[ \t]*:?[ \t]*\n((?:[ \t]*[-*•][ \t]*[^\n]*\S[ \t]*(?:\n|$))+)"
)
# A turn ending in "Yes or no?" (T0, FLAN).
_YES_NO_END = r"(?i)(?:^|[.!?;:]\s+|\n\s*)(?:(?:answer|respond|reply)\s+(?:with\s+)?)?((?:yes|true)\s+or\s+(?:no|false))\s*\?\s*$"
# A short label: up to four words of letters, digits and a few joiners ("Arts & Culture", "not spam").
_SHORT_LABEL = r"^[\p{L}\p{N}][\p{L}\p{N}&'’+/-]*(?: [\p{L}\p{N}&'’+/-]+){0,3}$"
# Items starting like a phrase ("the question", "a summary") make a list that is not a label set.
_PHRASE_START = r"(?i)^(?:the|a|an|your|my|this|that|some|any|it|its|their|our)\s"
_OPTION_ITEM = r"^[\p{L}\p{N}\"'“‘][^\n]{0,79}$"
_LETTERED = r"^\(?[A-Za-z0-9][.)]\s"
# Label words that make "Respond with X or Y" a label request without quotes or "either".
_LABEL_WORDS = (
    r"^(?:yes|no|true|false|correct|incorrect|right|wrong|positive|negative|neutral|mixed|agree|disagree"
    r"|valid|invalid|entailment|contradiction|same|different|relevant|irrelevant|spam|ham|maybe|unknown|[a-e]|\d)$"
)
_TRAILING_KIND = r"(?i)\s+(?:departments?|categories|category|classes|class|labels?|groups?|types?|options?)$"
_SEPARATOR = "\x1f"
# Stripped from both ends of answers and labels before they are compared.
_LABEL_PUNCTUATION = " \t\r\n\"'“”‘’`*_.,;:!?()[]{}<>"
# The whole answer is one fenced block (group 1: its body).
_WHOLE_FENCE = r"(?s)^\s*```[ \t]*(?i:json)?[ \t]*\r?\n(.*?)\r?\n?[ \t]*```\s*$"
_SCALAR_ARRAY = r'^\[(?:(?:"(?:[^"\\]|\\.)*"|-?[\d.eE+-]+|true|false)(?:,(?:"(?:[^"\\]|\\.)*"|-?[\d.eE+-]+|true|false))*)?\]$'


def requested_formats(turns: pl.Series) -> pl.DataFrame:
    """For each user turn, whether it clearly asks for JSON (``json_requested``) and the labels it
    clearly restricts the answer to (``requested_labels``, normalized as ``label_key``; null if none)."""
    return _with_requested_formats(
        pl.DataFrame({"turn": turns}, schema={"turn": pl.String}), pl.col("turn")
    ).select("json_requested", "requested_labels")


def _with_requested_formats(frame: pl.DataFrame, turn: pl.Expr) -> pl.DataFrame:
    """``frame`` plus ``json_requested`` and ``requested_labels`` for the user turn ``turn``.

    Labels: the first phrasing found wins (an "Options:" block, "one of: ...", an "Options:" line,
    "respond with X or Y", "classify ... as X, Y or Z", a closing "Yes or no?") and its list must parse
    into 2..20 short labels. Built in stages of named columns: every intermediate is used several times,
    and one nested expression would evaluate each of them again at every use.
    """
    col = pl.col
    staged = (
        frame.lazy()
        .with_columns(_req_turn=turn)
        .with_columns(
            _req_explain=col("_req_turn").str.contains(_EXPLAIN).fill_null(False),
            _req_json_sentence=col("_req_turn").str.extract(_JSON_REQUEST, 0),
            _req_earlier=pl.coalesce(
                col("_req_turn").str.extract(_ONE_OF, 1), col("_req_turn").str.extract(_OPTIONS_INLINE, 1)
            ),
            _req_either=col("_req_turn").str.extract(_EITHER, 1),
            _req_either_marked=col("_req_turn").str.extract(_EITHER, 0).str.contains(_EITHER_MARKED),
            _req_classified=col("_req_turn").str.extract(_CLASSIFY, 1),
            _req_classes=col("_req_turn").str.extract(_CLASSIFY, 2),
            _req_yes_no=col("_req_turn").str.extract(_YES_NO_END, 1),
            _req_block=col("_req_turn").str.extract(_OPTIONS_BLOCK, 1),
        )
        .with_columns(
            json_requested=(
                col("_req_json_sentence").is_not_null()
                & ~col("_req_json_sentence").str.contains(_CODE_WORDS)
                & ~col("_req_explain")
            ).fill_null(False),
            _req_listing=pl.coalesce(
                "_req_earlier",
                "_req_either",
                pl.when(~col("_req_classified").str.contains(_SEVERAL)).then(col("_req_classes")),
                "_req_yes_no",
            ),
            # "Respond with X or Y" is a label request when marked ("either", "only"), quoted, or made
            # of label words (checked once the list is parsed).
            _req_needs_label_words=(
                col("_req_earlier").is_null()
                & col("_req_either").is_not_null()
                & ~col("_req_either_marked")
                & ~col("_req_either").str.contains(r"[\"“‘]|(?:^|\s)'")
            ).fill_null(False),
        )
        .with_columns(
            _req_items=_inline_items(col("_req_listing")), _req_options=_block_items(col("_req_block"))
        )
        .with_columns(
            _req_item_keys=col("_req_items").list.eval(label_key(pl.element())),
            _req_items_short=col("_req_items")
            .list.eval(pl.element().str.contains(_SHORT_LABEL) & ~pl.element().str.contains(_PHRASE_START))
            .list.all(),
            _req_option_keys=col("_req_options").list.eval(label_key(pl.element())),
            _req_options_usable=col("_req_options")
            .list.eval(
                pl.element().str.strip_chars().str.contains(_OPTION_ITEM)
                & ~pl.element().str.contains(_LETTERED)
            )
            .list.all(),
        )
        .with_columns(
            _req_label_words=col("_req_item_keys")
            .list.eval(pl.element().str.contains(_LABEL_WORDS))
            .list.all(),
        )
        .with_columns(
            requested_labels=pl.when(~col("_req_explain")).then(
                pl.coalesce(
                    _label_set(col("_req_option_keys"), col("_req_options_usable")),
                    _label_set(
                        col("_req_item_keys"),
                        col("_req_items_short") & (~col("_req_needs_label_words") | col("_req_label_words")),
                    ),
                )
            )
        )
    )
    return staged.drop(cs.starts_with("_req_")).collect()


def label_key(text: pl.Expr) -> pl.Expr:
    """An answer or label as compared: without an "Answer:" prefix, surrounding punctuation, quotes and
    Markdown emphasis, whitespace collapsed, lower case."""
    return (
        text.str.strip_chars()
        .str.replace(r"(?i)^[*_\s]*(?:final\s+)?answer[*_\s]*:", "")
        .str.strip_chars(_LABEL_PUNCTUATION)
        .str.replace_all(r"\s+", " ")
        .str.to_lowercase()
    )


def _inline_items(listing: pl.Expr) -> pl.Expr:
    """The items of a one-line list ("A, B, or C", "yes or no", "x; y; z"), quotes stripped. Without
    "or", the last "and" separates ("positive, negative and neutral"); with one, "and" stays inside
    items ("Science and Technology")."""
    has_or = listing.str.contains(r"(?i)\sor\s|,\s*and\s")
    text = listing.str.replace(_TRAILING_KIND, "").str.replace_all(r"(?i),\s*(?:or|and)\s+", ", ")
    text = pl.when(has_or).then(text).otherwise(text.str.replace(r"(?i)^(.*)\s+and\s+", "${1}, "))
    return (
        text.str.replace_all(r"(?i)\s+or\s+", ", ")
        .str.replace_all(r"\s*[,;|]\s*", _SEPARATOR)
        .str.split(_SEPARATOR)
        .list.eval(pl.element().str.strip_chars(" \t\"'“”‘’"))
    )


def _block_items(block: pl.Expr) -> pl.Expr:
    """The options of a bulleted block, one per line."""
    return (
        block.str.strip_chars().str.split("\n").list.eval(pl.element().str.replace(r"^[ \t]*[-*•][ \t]*", ""))
    )


def _label_set(keys: pl.Expr, usable: pl.Expr) -> pl.Expr:
    """``keys`` when they make a label set: usable, 2..20 of them, none empty."""
    valid = usable & keys.list.len().is_between(2, 20) & (keys.list.eval(pl.element() == "").list.sum() == 0)
    return pl.when(valid).then(keys)


def _with_metadata_requests(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` plus ``metadata_json`` (``response_format`` "json", or of type ``json_object`` /
    ``json_schema``) and ``metadata_labels`` (``labels``, an array of at least two strings or numbers)."""
    metadata = pl.col("metadata")
    return (
        frame.lazy()
        .with_columns(
            _req_format=metadata.str.json_path_match("$.response_format").str.to_lowercase(),
            _req_format_type=metadata.str.json_path_match("$.response_format.type"),
            _req_labels=metadata.str.json_path_match("$.labels"),
        )
        .with_columns(
            metadata_json=(
                pl.col("_req_format").is_in(["json", "json_object"])
                | pl.col("_req_format_type").is_in(["json_object", "json_schema"])
            ).fill_null(False),
            _req_label_keys=pl.when(pl.col("_req_labels").str.contains(_SCALAR_ARRAY))
            .then(pl.col("_req_labels"))
            .str.json_decode(pl.List(pl.String))
            .list.eval(label_key(pl.element())),
        )
        .with_columns(metadata_labels=_label_set(pl.col("_req_label_keys"), pl.lit(True)))
        .drop(cs.starts_with("_req_"))
        .collect()
    )


def _last_user_content() -> pl.Expr:
    user = pl.element().struct.field("role") == "user"
    return pl.col("messages").list.eval(pl.element().filter(user)).list.last().struct.field("content")


# ---------------------------------------------------------------------------------------------
# Tool calls


@dataclass(frozen=True)
class _Call:
    """One tool call as found in a record; ``problem`` says (without quoting it) why it is unreadable."""

    message: int  # 1-based position of the assistant turn that makes it
    name: str | None
    arguments: Any
    problem: str | None = None


@dataclass(frozen=True)
class _ToolList:
    """A record's functions by name, or why its tool list cannot be used."""

    validators: Mapping[str, jsonschema.protocols.Validator]
    problem: str | None = None


def _record_calls(messages: list[dict[str, str]], message_fields: str | None) -> list[_Call]:
    """Every tool call of one record, in conversation order."""
    openai_calls: dict[int, Any] = {}
    if message_fields is not None:
        fields = json.loads(message_fields)
        for entry in fields if isinstance(fields, list) else []:
            if isinstance(entry, dict) and isinstance(entry.get("index"), int) and "tool_calls" in entry:
                openai_calls[entry["index"]] = entry["tool_calls"]
    calls: list[_Call] = []
    for position, message in enumerate(messages, start=1):
        if message["role"] != "assistant":
            continue
        if position in openai_calls:
            listed = openai_calls[position]
            calls.extend(
                _openai_call(position, c) for c in (listed if isinstance(listed, list) else [listed])
            )
        elif position < len(messages) and messages[position]["role"] == "tool":
            found = llm_recipes.tool_call(message["content"] or "")
            if found is None:
                calls.append(
                    _Call(
                        position, None, None, "is not a JSON object with a function name and object arguments"
                    )
                )
            else:
                calls.append(_Call(position, found["name"], found["arguments"]))
    return calls


def _openai_call(position: int, call: Any) -> _Call:
    """An OpenAI ``tool_calls`` entry: ``{"type": "function", "function": {"name", "arguments"}}``,
    arguments a JSON string (or, in some exports, already an object)."""
    function = call.get("function") if isinstance(call, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        return _Call(position, None, None, "has no function name")
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as exc:
            problem = f"do not parse as JSON (JSONDecodeError at line {exc.lineno} column {exc.colno})"
            return _Call(position, name, None, problem)
    elif arguments is None:
        return _Call(position, name, None, "are missing")
    return _Call(position, name, arguments)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


_PROPERTY_NAME = re.compile(r"[A-Za-z_][\w.-]{0,63}")


def _schema_path(error: jsonschema.ValidationError) -> str:
    """The failing location as a JSON path; a key that does not look like a property name (it may be
    record text) is shown as ``?``."""
    path = "$"
    for part in error.absolute_path:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if _PROPERTY_NAME.fullmatch(part) else ".?"
    return path


def _schema_failure(function: str, where: str, errors: list[jsonschema.ValidationError]) -> str:
    """'arguments of get_weather (call 1 of 1) fail 'required' at $: missing city' from the most
    relevant error, with schema facts only (never the offending value)."""
    error = jsonschema.exceptions.best_match(errors)
    keyword, expected = error.validator, error.validator_value
    if keyword == "required" and isinstance(error.instance, dict):
        tail = "missing " + ", ".join(str(p) for p in expected if p not in error.instance)
    elif keyword == "type":
        allowed = expected if isinstance(expected, str) else " or ".join(expected)
        tail = f"expected {allowed}, got {_json_type(error.instance)}"
    elif keyword == "enum":
        tail = f"value is not one of the {len(expected)} allowed"
    elif keyword == "additionalProperties":
        tail = "properties the schema does not define"
    elif keyword in (
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minLength", "maxLength",
        "minItems", "maxItems", "minProperties", "maxProperties",
    ):  # fmt: skip
        tail = f"limit {expected}"
    else:
        tail = ""
    detail = f"arguments of {function} ({where}) fail '{keyword}' at {_schema_path(error)}"
    detail += f": {tail}" if tail else ""
    return detail + (f" ({len(errors)} errors in all)" if len(errors) > 1 else "")


# ---------------------------------------------------------------------------------------------
# Paraphrases


def seed_instructions(records: pl.DataFrame) -> pl.DataFrame:
    """``record_id`` and ``instruction``: each record's first user turn, as the paraphrase and
    back_translation recipes read it (``llm_recipes.with_turns``). The ``seeds`` argument of
    ``StructureVerifier.run`` for seeds that are not in the verified frame."""
    return llm_recipes.with_turns(records.select("record_id", "messages")).select(
        "record_id", pl.col("_user").alias("instruction")
    )


def _is_paraphrase(metadata: pl.Expr) -> pl.Expr:
    """Metadata the paraphrase recipe (``response``) or back_translation recipe (``metric``, ``pivot``)
    writes; ``metadata.recipe`` is the configured name, so the facts the kinds add identify them."""
    response = metadata.str.json_path_match("$.response")
    back_translated = (metadata.str.json_path_match("$.metric") == "chrf") & metadata.str.json_path_match(
        "$.pivot"
    ).is_not_null()
    return (response.is_in(["kept", "regenerated"]) | back_translated).fill_null(False)


# ---------------------------------------------------------------------------------------------
# The verifier

_FORMAT_TASKS_EXCLUDED = [TaskKind.CODE.value, TaskKind.MATH.value]


class StructureVerifier:
    """Tool calls, requested output formats and paraphrases of one batch; outcomes only where a check
    applies (``OUTCOME_SCHEMA``: verdict "passed" with what was checked, or "failed" with a rule)."""

    def __init__(self, config: StructureChecksConfig) -> None:
        self.config = config
        # Tool lists and validators are few and shared by many records (one per recipe tool, one per
        # dataset's function set); parsing and checking a schema costs far more than validating with it.
        self._tool_lists: dict[str, _ToolList] = {}
        self._validators: dict[str, jsonschema.protocols.Validator] = {}

    def run(
        self, frame: pl.DataFrame, counters: Counter[str], seeds: pl.DataFrame | None = None
    ) -> pl.DataFrame:
        """Outcomes for the rows of ``frame`` (which has ``ROW``) that a check applies to, one per row:
        the first failure in the order tool calls, format, paraphrase, else "passed" with every check
        that ran. ``seeds`` (``seed_instructions`` of records outside ``frame``) resolves paraphrase seeds
        the frame lacks."""
        parts = []
        if self.config.tool_calls:
            parts.append(self._tool_calls(frame, counters))
        if self.config.output_format:
            parts.append(self._output_format(frame, counters))
        parts.append(self._paraphrases(frame, counters, seeds))
        checked = pl.concat([p.cast(OUTCOME_SCHEMA) for p in parts])
        failed = checked.filter(pl.col("rule").is_not_null()).unique(ROW, keep="first", maintain_order=True)
        passed = (
            checked.filter(pl.col("rule").is_null())
            .join(failed, on=ROW, how="anti")
            .group_by(ROW, maintain_order=True)
            .agg(
                pl.col("verdict").first(),
                pl.col("rule").first(),
                pl.col("verdict_detail").str.join("; "),
            )
        )
        counters["structure.failed"] += failed.height
        counters["structure.passed"] += passed.height
        return pl.concat([failed, passed.cast(OUTCOME_SCHEMA)]).sort(ROW)

    # -- tool calls ----------------------------------------------------------------------------

    def _tool_calls(self, frame: pl.DataFrame, counters: Counter[str]) -> pl.DataFrame:
        metadata = pl.col("metadata")
        candidates = frame.select(
            ROW,
            "messages",
            metadata.str.json_path_match("$.tools").alias("tools"),
            metadata.str.json_path_match("$.message_fields").alias("message_fields"),
        ).filter(pl.col("tools").is_not_null())
        outcomes: list[tuple[int, str, str | None, str]] = []
        # JSON Schema validation has no vectorized form: one Python pass over the records with a tool list.
        for row, messages, tools_json, message_fields in candidates.iter_rows():
            calls = _record_calls(messages, message_fields)
            if not calls:
                counters["structure.tool_calls.no_calls"] += 1
                continue
            tools = self._tool_list(tools_json)
            try:
                rule, detail = ("tool_call_invalid", tools.problem) if tools.problem else _judge(tools, calls)
            except Unresolvable:
                counters["structure.tool_calls.unresolvable_schema"] += 1
                continue
            counters[f"structure.tool_calls.{'failed' if rule else 'passed'}"] += 1
            outcomes.append((row, "failed" if rule else "passed", rule, detail))
        return pl.DataFrame(outcomes, schema=OUTCOME_SCHEMA, orient="row")

    def _tool_list(self, tools_json: str) -> _ToolList:
        if tools_json not in self._tool_lists:
            self._tool_lists[tools_json] = self._parse_tool_list(tools_json)
        return self._tool_lists[tools_json]

    def _parse_tool_list(self, tools_json: str) -> _ToolList:
        try:
            tools = json.loads(tools_json)
        except json.JSONDecodeError:
            return _ToolList({}, "the record's tool list is not JSON")
        if not isinstance(tools, list):
            return _ToolList({}, "the record's tool list is not a JSON array")
        validators = {}
        for index, tool in enumerate(tools, start=1):
            try:
                if not isinstance(tool, dict):
                    raise ValueError("not an object")
                schema = llm_recipes.function_schema(tool)
            except ValueError:
                return _ToolList({}, f"tool {index} of the record's tool list is not a valid function schema")
            validators[schema["name"]] = self._validator(schema["parameters"])
        return _ToolList(validators)

    def _validator(self, schema: dict[str, Any]) -> jsonschema.protocols.Validator:
        key = json.dumps(schema, sort_keys=True)
        if key not in self._validators:
            cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
            self._validators[key] = cls(schema)
        return self._validators[key]

    # -- output format -------------------------------------------------------------------------

    def _output_format(self, frame: pl.DataFrame, counters: Counter[str]) -> pl.DataFrame:
        last = pl.col("messages").list.last()
        answered = frame.filter(
            ~pl.col("task").is_in(_FORMAT_TASKS_EXCLUDED).fill_null(False)
            & (last.struct.field("role") == "assistant").fill_null(False)
        ).select(
            ROW,
            "metadata",
            _last_user_content().alias("turn"),
            last.struct.field("content").fill_null("").alias("answer"),
        )
        asked = _with_requested_formats(_with_metadata_requests(answered), pl.col("turn"))
        # Explicit metadata before the turn's wording; JSON before labels (a JSON answer may hold a label).
        from_metadata = pl.col("metadata_json") | pl.col("metadata_labels").is_not_null()
        wants_json = pl.when(from_metadata).then(pl.col("metadata_json")).otherwise(pl.col("json_requested"))
        labels = pl.when(from_metadata).then(pl.col("metadata_labels")).otherwise(pl.col("requested_labels"))
        requested = (
            asked.with_columns(wants_json.alias("wants_json"))
            .select(
                ROW,
                "answer",
                "wants_json",
                pl.when(~pl.col("wants_json")).then(labels).alias("labels"),
                pl.when(from_metadata)
                .then(pl.lit("the metadata"))
                .otherwise(pl.lit("the last user turn"))
                .alias("by"),
            )
            .filter(pl.col("wants_json") | pl.col("labels").is_not_null())
        )

        body = pl.col("body")
        checked = requested.with_columns(
            pl.coalesce(pl.col("answer").str.extract(_WHOLE_FENCE, 1), pl.col("answer")).alias("body")
        ).with_columns(
            pl.when(pl.col("wants_json"))
            .then(body.str.json_path_match("$").is_not_null() | (body.str.strip_chars() == "null"))
            .otherwise(pl.col("labels").list.contains(label_key(pl.col("answer"))))
            .alias("ok")
        )
        ok, wants_json = pl.col("ok"), pl.col("wants_json")
        label_count = pl.col("labels").list.len()
        words = pl.col("answer").str.count_matches(r"\S+")
        outcomes = checked.select(
            ROW,
            pl.when(ok).then(pl.lit("passed")).otherwise(pl.lit("failed")).alias("verdict"),
            pl.when(ok)
            .then(pl.lit(None, pl.String))
            .when(wants_json)
            .then(pl.lit("format_not_json"))
            .otherwise(pl.lit("label_not_in_set"))
            .alias("rule"),
            pl.when(wants_json & ok)
            .then(pl.format("answer parses as JSON, as {} asks", "by"))
            .when(wants_json)
            .then(pl.format("{} asks for JSON but the answer does not parse", "by"))
            .when(ok)
            .then(pl.format("answer is one of the {} labels {} allows", label_count, "by"))
            .otherwise(
                pl.format(
                    "answer ({} word(s)) is not one of the {} labels {} allows", words, label_count, "by"
                )
            )
            .alias("verdict_detail"),
            pl.when(wants_json).then(pl.lit("format_json")).otherwise(pl.lit("format_labels")).alias("check"),
            "body",
        )
        for check, verdict, count in outcomes.group_by("check", "verdict").len().iter_rows():
            counters[f"structure.{check}.{verdict}"] += count
        not_json = outcomes.filter(pl.col("rule") == "format_not_json")
        # Where the answer stops being JSON, from Python's parser: Polars validates JSON but does not
        # say where it breaks, and only the few failures need it.
        located = [_json_problem(body) for body in not_json["body"].to_list()]
        not_json = not_json.with_columns(pl.col("verdict_detail") + pl.Series(located, dtype=pl.String))
        others = outcomes.filter(pl.col("rule").ne_missing("format_not_json"))
        return pl.concat([others, not_json]).sort(ROW).select(list(OUTCOME_SCHEMA))

    # -- paraphrases ---------------------------------------------------------------------------

    def _paraphrases(
        self, frame: pl.DataFrame, counters: Counter[str], seeds: pl.DataFrame | None
    ) -> pl.DataFrame:
        candidates = frame.filter(
            (pl.col("origin") == "synthetic").fill_null(False)
            & _is_paraphrase(pl.col("metadata"))
            & (pl.col("parent_ids").list.len() == 1).fill_null(False)
        )
        if candidates.is_empty():
            return pl.DataFrame(schema=OUTCOME_SCHEMA)
        parents = candidates.select(pl.col("parent_ids").list.first().alias("record_id"))
        known = seed_instructions(frame.join(parents, on="record_id", how="semi"))
        if seeds is not None:
            known = pl.concat([known, seeds.select("record_id", "instruction")])
        known = known.filter(pl.col("instruction").is_not_null()).unique(
            "record_id", keep="first", maintain_order=True
        )
        pairs = (
            llm_recipes.with_turns(
                candidates.select(ROW, "messages", pl.col("parent_ids").list.first().alias("parent"))
            )
            .select(ROW, "parent", pl.col("_user").alias("paraphrase"))
            .join(known, left_on="parent", right_on="record_id", how="left", maintain_order="left")
        )
        threshold = self.config.paraphrase_min_similarity
        outcomes: list[tuple[int, str, str | None, str]] = []
        # chrF is the recipe's Python implementation (character n-gram counts); there is no vectorized
        # one, and only paraphrased records reach this loop.
        for row, paraphrase, seed in pairs.select(ROW, "paraphrase", "instruction").iter_rows():
            if seed is None or paraphrase is None:
                counters["structure.paraphrase.seed_missing"] += 1
                continue
            if llm_recipes.normalized_instruction(paraphrase) == llm_recipes.normalized_instruction(seed):
                detail = (
                    "paraphrase is identical to its seed's instruction after normalization (case, whitespace)"
                )
                outcomes.append((row, "failed", "paraphrase_identical", detail))
                continue
            similarity = llm_recipes.chrf(seed, paraphrase)
            if similarity < threshold:
                detail = (
                    f"paraphrase has chrF {similarity:.2f} to its seed's instruction, "
                    f"below the threshold {threshold:.2f}"
                )
                outcomes.append((row, "failed", "paraphrase_drift", detail))
            else:
                detail = (
                    f"paraphrase keeps chrF {similarity:.2f} to its seed's instruction "
                    f"(threshold {threshold:.2f})"
                )
                outcomes.append((row, "passed", None, detail))
        failures = sum(1 for outcome in outcomes if outcome[2] is not None)
        counters["structure.paraphrase.failed"] += failures
        counters["structure.paraphrase.passed"] += len(outcomes) - failures
        return pl.DataFrame(outcomes, schema=OUTCOME_SCHEMA, orient="row")


def _judge(tools: _ToolList, calls: list[_Call]) -> tuple[str | None, str]:
    """Rule (None: passed) and detail for one record's calls: the first invalid call decides."""
    for number, call in enumerate(calls, start=1):
        where = f"call {number} of {len(calls)}"
        if call.name is None:
            return "tool_call_invalid", f"{where} (message {call.message}) {call.problem}"
        if call.name not in tools.validators:
            return (
                "tool_call_invalid",
                f"{where} (message {call.message}) names a function that is not among the "
                f"{len(tools.validators)} of the record's tool list",
            )
        if call.problem:
            return "tool_call_invalid", f"arguments of {call.name} ({where}) {call.problem}"
        errors = list(tools.validators[call.name].iter_errors(call.arguments))
        if errors:
            return "tool_call_invalid", _schema_failure(call.name, where, errors)
    return None, f"{len(calls)} tool call(s) validate against their function schemas"


def _json_problem(text: str) -> str:
    """' (JSONDecodeError at line 2 column 5)', or why strict JSON refuses what Python accepts."""
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return f" (JSONDecodeError at line {exc.lineno} column {exc.colno})"
    return " (it is not strict JSON: NaN, Infinity or an out-of-range number)"
