"""Specification of the raw stage (thresher.ingest): landed files become canonical records.

Every candidate record of a file is either kept as a canonical record or rejected with a rule, the file and
the line; the ledger describes what is wrong and where, never what the record says.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import CORPORA
from thresher.config import IngestConfig
from thresher.ingest import ADAPTERS, batch_key, detect_format, file_sha256, read_file
from thresher.records import RECORD_SCHEMA
from thresher.stage import StageResult

# Planted in malformed records: no ledger detail may ever contain it.
SECRET = "SECRET-7f3a-alice@example.com"


def land(tmp_path: Path, name: str, data: bytes | str | list[dict]) -> Path:
    """Write a landed file: raw bytes, text, or a list of objects as JSON lines."""
    if isinstance(data, list):
        data = "".join(json.dumps(obj) + "\n" for obj in data)
    if isinstance(data, str):
        data = data.encode()
    path = tmp_path / name
    path.write_bytes(data)
    return path


def ingest(path: Path, config: IngestConfig | None = None, **kwargs) -> StageResult:
    result = read_file(path, "batch-1", config or IngestConfig(), **kwargs)
    result.check_conservation()
    assert dict(result.kept.schema) == RECORD_SCHEMA
    assert SECRET not in " ".join(result.rejected["detail"].to_list())
    return result


def ledger(result: StageResult) -> list[tuple[int, str]]:
    return list(zip(result.rejected["source_line"], result.rejected["rule"], strict=True))


def messages(result: StageResult, row: int = 0) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in result.kept["messages"][row]]


def sha12(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------------
# Adapters


def test_the_registry_names_every_adapter() -> None:
    assert set(ADAPTERS) == {
        "openai_messages",
        "alpaca",
        "self_instruct",
        "sharegpt",
        "prompt_response_csv",
        "prompt_response_parquet",
        "humaneval",
        "mbpp",
        "gsm8k",
    }
    assert all(adapter.name == name for name, adapter in ADAPTERS.items())


def test_openai_messages_become_canonical_source_records(tmp_path: Path) -> None:
    path = land(
        tmp_path,
        "chat.jsonl",
        [
            {
                "id": "conv-1",
                "license": "cc-by-4.0",
                "metadata": {"origin": "forum"},
                "messages": [
                    {"role": " System ", "content": "Be brief."},
                    {"role": "USER", "content": "Hi"},
                    {"role": "assistant", "content": "  Hello!  "},
                ],
            },
            {
                "messages": [
                    {"role": "user", "content": "Weather?"},
                    {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]},
                    {"role": "tool", "content": "sunny"},
                    {"role": "assistant", "content": "Sunny."},
                ]
            },
        ],
    )
    result = ingest(path)

    assert result.rows_in == 2 and result.rejected.is_empty()
    first = result.kept.row(0, named=True)
    # Roles are trimmed and lower-cased; content is kept as-is (cleaning comes later).
    assert messages(result) == [("system", "Be brief."), ("user", "Hi"), ("assistant", "  Hello!  ")]
    assert first["record_id"] == f"{sha12(path)}:1"
    assert first["batch"] == "batch-1"
    assert first["task"] == "chat"
    assert first["source_file"] == "chat.jsonl"
    assert first["source_line"] == 1
    assert first["source_format"] == "openai_messages"
    assert first["origin"] == "source"
    assert first["parent_ids"] == []
    assert first["license"] == "cc-by-4.0"
    assert json.loads(first["metadata"]) == {"id": "conv-1", "origin": "forum"}

    second = result.kept.row(1, named=True)
    assert second["task"] == "tool"
    assert second["license"] == "unknown"  # config.default_license
    assert [role for role, _ in messages(result, 1)] == ["user", "assistant", "tool", "assistant"]
    assert result.counters["format.openai_messages"] == 2


def test_default_license_comes_from_the_config(tmp_path: Path) -> None:
    path = land(tmp_path, "a.jsonl", [{"instruction": "Add 1 and 1", "output": "2"}])
    result = ingest(path, IngestConfig(default_license="apache-2.0"))
    assert result.kept["license"].to_list() == ["apache-2.0"]


def test_metadata_is_strict_json_even_when_the_source_has_nan(tmp_path: Path) -> None:
    path = land(
        tmp_path, "a.jsonl", '{"instruction": "Hi", "output": "Hello", "score": NaN, "n": [1, Infinity]}\n'
    )
    result = ingest(path)
    assert json.loads(result.kept["metadata"][0]) == {"score": None, "n": [1, None]}


def test_alpaca_reads_json_arrays_with_item_positions(tmp_path: Path) -> None:
    items = [
        {"instruction": "Translate to French.", "input": "cheese", "output": "fromage"},
        {"instruction": "Name a prime.", "input": "", "output": "7", "category": "math"},
        {"instruction": "Say hi.", "output": "hi"},
    ]
    path = land(tmp_path, "alpaca_export.json", json.dumps(items, indent=2))
    result = ingest(path)

    assert result.kept["source_line"].to_list() == [1, 2, 3]
    assert result.kept["source_format"].unique().to_list() == ["alpaca"]
    # A non-empty input follows the instruction after a blank line; an empty one adds nothing.
    assert messages(result, 0) == [("user", "Translate to French.\n\ncheese"), ("assistant", "fromage")]
    assert messages(result, 1) == [("user", "Name a prime."), ("assistant", "7")]
    assert json.loads(result.kept["metadata"][1]) == {"category": "math"}
    assert messages(result, 2) == [("user", "Say hi."), ("assistant", "hi")]


def test_alpaca_reads_json_lines_too(tmp_path: Path) -> None:
    path = land(tmp_path, "alpaca.jsonl", [{"instruction": "Name a colour.", "output": "Blue"}] * 2)
    result = ingest(path)
    assert result.kept.height == 2
    assert result.kept["source_line"].to_list() == [1, 2]


def test_sharegpt_speakers_map_to_canonical_roles(tmp_path: Path) -> None:
    turns = [
        {"from": "system", "value": "You are helpful."},
        {"from": "human", "value": "What time is it?"},
        {"from": "function_call", "value": '{"name": "clock"}'},
        {"from": "observation", "value": "12:00"},
        {"from": "gpt", "value": "Noon."},
        {"from": "tool", "value": "ok"},
    ]
    path = land(tmp_path, "share.json", json.dumps([{"conversations": turns, "source": "x"}]))
    result = ingest(path)

    assert [role for role, _ in messages(result)] == ["system", "user", "tool", "tool", "assistant", "tool"]
    assert result.kept["task"].to_list() == ["tool"]
    assert json.loads(result.kept["metadata"][0]) == {"source": "x"}


def test_sharegpt_plain_chat_is_a_chat_task(tmp_path: Path) -> None:
    conv = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
    result = ingest(land(tmp_path, "share.jsonl", [conv]))
    assert messages(result) == [("user", "Hi"), ("assistant", "Hello")]
    assert result.kept["task"].to_list() == ["chat"]


def test_prompt_response_csv_uses_the_configured_columns(tmp_path: Path) -> None:
    csv = (
        "question,answer,persona,topic\n"
        "What is 2+2?,4,You are a tutor.,math\n"
        '"A question\nover two lines",Yes,,misc\n'
        "Third,Reply,,misc\n"
    )
    config = IngestConfig(prompt_column="question", response_column="answer", system_column="persona")
    result = ingest(land(tmp_path, "pairs.csv", csv), config)

    # The header is line 1; a quoted cell spanning two lines pushes the next row down one line.
    assert result.kept["source_line"].to_list() == [2, 3, 5]
    assert messages(result, 0) == [
        ("system", "You are a tutor."),
        ("user", "What is 2+2?"),
        ("assistant", "4"),
    ]
    # No system message when the system cell is empty.
    assert messages(result, 1) == [("user", "A question\nover two lines"), ("assistant", "Yes")]
    assert json.loads(result.kept["metadata"][0]) == {"topic": "math"}
    assert result.kept["source_format"].unique().to_list() == ["prompt_response_csv"]
    assert result.kept["record_id"].to_list() == [f"{sha12(tmp_path / 'pairs.csv')}:{n}" for n in (2, 3, 5)]


def test_csv_blank_lines_are_counted_but_a_row_of_empty_cells_is_a_record(tmp_path: Path) -> None:
    path = land(tmp_path, "pairs.csv", "prompt,response\nHi,Hello\n\n,\nBye,See you\n")
    result = ingest(path)
    assert result.counters["blank_lines"] == 1
    assert result.kept["source_line"].to_list() == [2, 5]
    assert ledger(result) == [(4, "empty_conversation")]


def test_csv_missing_prompt_column_is_a_whole_file_rejection(tmp_path: Path) -> None:
    result = ingest(land(tmp_path, "pairs.csv", "q,a\nHi,Hello\n"))
    assert ledger(result) == [(0, "missing_field")]
    assert "ingest.prompt_column" in result.rejected["detail"][0]


def test_prompt_response_parquet_positions_are_row_indexes(tmp_path: Path) -> None:
    frame = pl.DataFrame(
        {
            "prompt": ["Hi", "", "Name a colour"],
            "response": ["Hello", None, "Blue"],
            "license": ["mit", None, None],
            "score": [0.5, 0.1, 0.9],
        }
    )
    path = tmp_path / "pairs.parquet"
    frame.write_parquet(path)
    result = ingest(path)

    assert result.kept["source_line"].to_list() == [1, 3]
    assert result.kept["license"].to_list() == ["mit", "unknown"]
    assert json.loads(result.kept["metadata"][1]) == {"score": 0.9}
    # An all-empty Parquet row is an empty record, not a blank line.
    assert ledger(result) == [(2, "empty_conversation")]


def test_parquet_leftover_columns_of_any_type_become_json_metadata(tmp_path: Path) -> None:
    path = tmp_path / "pairs.parquet"
    pl.DataFrame(
        {
            "prompt": ["Hi"],
            "response": ["Hello"],
            "blob": [b"\x00\x01"],  # Polars cannot write binary to JSON: it is stored as base64
            "nested_blob": [[b"x"]],  # binary inside a list is left out, and counted
            "tags": [["a", "b"]],
        }
    ).write_parquet(path)
    result = ingest(path)
    assert json.loads(result.kept["metadata"][0]) == {"blob": "AAE=", "tags": ["a", "b"]}
    assert result.counters["metadata_columns_skipped"] == 1


def test_parquet_text_columns_must_hold_text(tmp_path: Path) -> None:
    path = tmp_path / "pairs.parquet"
    pl.DataFrame({"prompt": [1, 2], "response": ["a", "b"]}).write_parquet(path)
    result = ingest(path)
    assert ledger(result) == [(0, "wrong_type")]


HUMANEVAL_ITEM = {
    "task_id": "HumanEval/0",
    "prompt": 'def add(a, b):\n    """Add two numbers."""\n',
    "canonical_solution": "    return a + b\n",
    "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n",
    "entry_point": "add",
}


def test_humaneval_problem_becomes_a_code_task(tmp_path: Path) -> None:
    result = ingest(land(tmp_path, "he.jsonl", [HUMANEVAL_ITEM]))
    record = result.kept.row(0, named=True)
    user, assistant = record["messages"]

    assert record["task"] == "code"
    assert record["source_format"] == "humaneval"
    assert user["role"] == "user" and "complete" in user["content"].lower()
    assert f"```python\n{HUMANEVAL_ITEM['prompt'].rstrip()}\n```" in user["content"]
    assert assistant == {
        "role": "assistant",
        "content": f"```python\n{(HUMANEVAL_ITEM['prompt'] + HUMANEVAL_ITEM['canonical_solution']).rstrip()}\n```",
    }
    assert record["tests"] == HUMANEVAL_ITEM["test"] + "\ncheck(add)\n"
    assert record["entry_point"] == "add"
    assert json.loads(record["metadata"]) == {"task_id": "HumanEval/0"}


def test_mbpp_problem_becomes_a_code_task(tmp_path: Path) -> None:
    item = {
        "task_id": 11,
        "text": "Write a function to double a number.",
        "code": "def double(x):\r\n    return 2 * x",
        "test_list": ["assert double(2) == 4", "assert double(0) == 0"],
        "test_setup_code": "import math",
        "challenge_test_list": [],
    }
    result = ingest(land(tmp_path, "mbpp.jsonl", [item]))
    record = result.kept.row(0, named=True)
    user, assistant = record["messages"]

    assert record["task"] == "code"
    assert user["content"].startswith(item["text"])
    assert all(test in user["content"] for test in item["test_list"])
    # CRLF inside content is normalized.
    assert assistant["content"] == "```python\ndef double(x):\n    return 2 * x\n```"
    assert record["tests"] == "import math\nassert double(2) == 4\nassert double(0) == 0\n"
    assert record["entry_point"] == "double"
    assert json.loads(record["metadata"]) == {"task_id": 11, "challenge_test_list": []}


def test_gsm8k_reference_answer_is_the_text_after_the_hashes(tmp_path: Path) -> None:
    rows = [
        {"question": "How many?", "answer": "Some steps.\n#### 1,234 "},
        {"question": "How much?", "answer": "Steps.\n#### 5", "reference_answer": "5.0"},
        {"question": "Which?", "answer": "No final marker."},
    ]
    result = ingest(land(tmp_path, "test.jsonl", rows))

    assert result.kept["task"].to_list() == ["math"] * 3
    assert result.kept["reference_answer"].to_list() == ["1234", "5.0", None]
    assert messages(result, 0) == [("user", "How many?"), ("assistant", "Some steps.\n#### 1,234 ")]


# --------------------------------------------------------------------------------------------------
# The real corpora: third-party files nobody on the team wrote


@pytest.mark.parametrize(
    ("relative", "adapter", "count"),
    [
        ("code/humaneval/HumanEval.jsonl.gz", "humaneval", 164),
        ("code/mbpp/mbpp.jsonl", "mbpp", 974),
        ("math/gsm8k/test.jsonl", "gsm8k", 1319),
        ("instruct/self_instruct/seed_tasks.jsonl", "self_instruct", 175),
    ],
)
def test_public_corpora_ingest_without_rejections(relative: str, adapter: str, count: int) -> None:
    path = CORPORA / relative
    if not path.exists():
        pytest.skip(f"shared corpus {relative} not available")
    result = ingest(path)

    assert result.rejected.is_empty()
    assert result.rows_in == result.kept.height == count
    assert result.counters[f"format.{adapter}"] == count
    assert result.kept["source_line"].to_list() == list(range(1, count + 1))
    assert result.kept["record_id"].n_unique() == count
    assert result.kept["messages"].list.len().min() == 2


def test_humaneval_corpus_tests_call_the_entry_point() -> None:
    path = CORPORA / "code/humaneval/HumanEval.jsonl.gz"
    if not path.exists():
        pytest.skip("shared HumanEval corpus not available")
    kept = ingest(path).kept
    assert kept.select(
        (pl.col("tests").str.ends_with(pl.format("\ncheck({})\n", "entry_point"))).all()
    ).item()
    assert json.loads(kept["metadata"][0])["task_id"] == "HumanEval/0"


def test_self_instruct_seed_tasks_become_instruction_input_output_chats(tmp_path: Path) -> None:
    task = {
        "id": "seed_task_7",
        "name": "antonym_relation",
        "instruction": "What is the relation between the given pairs?",
        "instances": [{"input": "Night : Day :: Right : Left", "output": "They are opposites."}],
        "is_classification": False,
    }
    record = ingest(land(tmp_path, "seeds.jsonl", [task, {**task, "instances": []}]))
    assert record.kept["source_format"].to_list() == ["self_instruct"]
    messages = record.kept["messages"][0].to_list()
    assert messages == [
        {"role": "user", "content": f"{task['instruction']}\n\n{task['instances'][0]['input']}"},
        {"role": "assistant", "content": "They are opposites."},
    ]
    assert json.loads(record.kept["metadata"][0])["name"] == "antonym_relation"
    assert record.rejected["rule"].to_list() == ["wrong_type"]


def test_gsm8k_corpus_reference_answers_are_plain_numbers() -> None:
    path = CORPORA / "math/gsm8k/test.jsonl"
    if not path.exists():
        pytest.skip("shared GSM8K corpus not available")
    answers = ingest(path).kept["reference_answer"]
    assert answers.null_count() == 0
    assert answers.str.contains(r"^-?[0-9.]+$").all()


# --------------------------------------------------------------------------------------------------
# Malformed input: never raises, never dropped silently


def _message(content: object = "fine", role: object = "user") -> dict:
    return {"role": role, "content": content}


GOOD = {"messages": [_message(f"hello {SECRET}"), _message("hi", "assistant")]}

# (rule, the malformed line) — each is line 2 of a JSONL file between two good records.
MALFORMED_LINES = [
    ("invalid_json", b'{"messages": [{"role": "user", "content": "' + SECRET.encode() + b'"}'),
    ("invalid_utf8", b'{"messages": [{"role": "user", "content": "caf\xe9 ' + SECRET.encode() + b'"}]}'),
    ("wrong_type", json.dumps({"messages": [_message(42)]}).encode()),
    ("wrong_type", json.dumps({"messages": SECRET}).encode()),
    ("wrong_type", json.dumps([SECRET]).encode()),
    ("missing_field", json.dumps({"conversation": [_message(SECRET)]}).encode()),
    ("missing_field", json.dumps({"messages": [{"role": "user", "text": SECRET}]}).encode()),
    ("empty_conversation", json.dumps({"messages": []}).encode()),
    ("empty_conversation", json.dumps({"messages": [_message(" "), _message("", "assistant")]}).encode()),
    ("unknown_role", json.dumps({"messages": [_message(SECRET, role=SECRET)]}).encode()),
]


@pytest.mark.parametrize(
    ("rule", "line"), MALFORMED_LINES, ids=[f"{r}-{i}" for i, (r, _) in enumerate(MALFORMED_LINES)]
)
def test_a_malformed_line_is_rejected_alone_with_its_rule_file_and_line(
    tmp_path: Path, rule: str, line: bytes
) -> None:
    good = json.dumps(GOOD).encode()
    path = land(tmp_path, "chat.jsonl", good + b"\n" + line + b"\n" + good + b"\n")
    result = ingest(path, file_format="openai_messages")

    assert result.rows_in == 3
    assert result.kept["source_line"].to_list() == [1, 3]
    assert ledger(result) == [(2, rule)]
    rejected = result.rejected.row(0, named=True)
    assert rejected["record_id"] == f"{sha12(path)}:2"
    assert rejected["source_file"] == "chat.jsonl"
    assert rejected["detail"].startswith("line 2")


def test_invalid_json_detail_says_where_and_why(tmp_path: Path) -> None:
    path = land(tmp_path, "chat.jsonl", json.dumps(GOOD) + '\n{"messages": [1 2]}\n')
    result = ingest(path)
    assert result.rejected["detail"].to_list() == [
        "line 2 is not valid JSON: Expecting ',' delimiter at column 17"
    ]


def test_a_record_over_the_size_limit_is_rejected_before_parsing(tmp_path: Path) -> None:
    big = json.dumps({"messages": [_message("x" * 500), _message("y", "assistant")]})
    # Not even valid JSON: the size is checked first.
    path = land(tmp_path, "chat.jsonl", json.dumps(GOOD) + "\n" + big[:-1] + "\n")
    result = ingest(path, IngestConfig(max_record_bytes=200))
    assert ledger(result) == [(2, "record_too_large")]
    assert "200" in result.rejected["detail"][0]


def test_oversized_items_of_json_arrays_and_csv_rows_are_rejected(tmp_path: Path) -> None:
    config = IngestConfig(max_record_bytes=100)
    array = [{"instruction": "short", "output": "ok"}, {"instruction": "x" * 200, "output": "ok"}]
    assert ledger(ingest(land(tmp_path, "a.json", json.dumps(array)), config)) == [(2, "record_too_large")]
    csv = "prompt,response\nshort,ok\n" + "x" * 200 + ",ok\n"
    assert ledger(ingest(land(tmp_path, "p.csv", csv), config)) == [(3, "record_too_large")]


def test_invalid_utf8_in_a_json_array_item_rejects_only_that_item(tmp_path: Path) -> None:
    data = b'[{"instruction": "a", "output": "b"}, {"instruction": "caf\xe9", "output": "b"}]'
    result = ingest(land(tmp_path, "a.json", data), file_format="alpaca")
    assert ledger(result) == [(2, "invalid_utf8")]
    assert result.kept["source_line"].to_list() == [1]


def test_invalid_utf8_in_a_csv_row_rejects_only_that_row(tmp_path: Path) -> None:
    data = b'prompt,response\nHi,Hello\n"caf\xe9\nau lait",yes\nBye,Later\n'
    result = ingest(land(tmp_path, "p.csv", data))
    assert ledger(result) == [(3, "invalid_utf8")]
    assert result.kept["source_line"].to_list() == [2, 5]


def test_a_broken_json_array_is_one_whole_file_rejection(tmp_path: Path) -> None:
    path = land(tmp_path, "a.json", '[{"instruction": "a", "output": "b"},\n {"instruction": ]')
    result = ingest(path, file_format="alpaca")
    assert ledger(result) == [(0, "invalid_json")]
    assert result.rejected["record_id"].to_list() == [f"{sha12(path)}:0"]
    assert "line 2" in result.rejected["detail"][0]


def test_field_types_are_checked_per_adapter(tmp_path: Path) -> None:
    rows = [
        {"instruction": "ok", "output": "fine"},
        {"instruction": ["a", "list"], "output": "fine"},
        {"instruction": "no output"},
        {"instruction": "", "output": "  "},
    ]
    result = ingest(land(tmp_path, "a.jsonl", rows), file_format="alpaca")
    assert ledger(result) == [(2, "wrong_type"), (3, "missing_field"), (4, "empty_conversation")]
    assert result.rejected["detail"][1] == "line 3: required field 'output' is missing"

    share = [
        {"conversations": [{"from": "human", "value": 3}]},
        {"conversations": [{"from": "narrator", "value": "x"}]},
        {"conversations": []},
    ]
    result = ingest(land(tmp_path, "s.jsonl", share), file_format="sharegpt")
    assert ledger(result) == [(1, "wrong_type"), (2, "unknown_role"), (3, "empty_conversation")]

    code = [
        {**HUMANEVAL_ITEM, "entry_point": None},
        {"task_id": 1, "text": "t", "code": "c", "test_list": "x"},
    ]
    assert ledger(ingest(land(tmp_path, "he.jsonl", code[:1]), file_format="humaneval")) == [
        (1, "wrong_type")
    ]
    assert ledger(ingest(land(tmp_path, "mb.jsonl", code[1:]), file_format="mbpp")) == [(1, "wrong_type")]


@pytest.mark.parametrize("content", [b"", b"  \n\n\r\n"])
def test_an_empty_file_is_one_ledger_row(tmp_path: Path, content: bytes) -> None:
    path = land(tmp_path, "empty.jsonl", content)
    result = ingest(path)
    assert result.rows_in == 1 and result.kept.is_empty()
    assert ledger(result) == [(0, "empty_file")]
    assert result.rejected["record_id"].to_list() == [f"{sha12(path)}:0"]
    assert result.rejected["source_file"].to_list() == ["empty.jsonl"]


def test_a_file_of_unknown_format_is_one_ledger_row(tmp_path: Path) -> None:
    result = ingest(land(tmp_path, "notes.jsonl", [{"title": "x", "body": SECRET}]))
    assert ledger(result) == [(0, "unknown_format")]
    assert "ingest.formats" in result.rejected["detail"][0]

    result = ingest(land(tmp_path, "notes.txt", "just some prose\n"))
    assert ledger(result) == [(0, "unknown_format")]


def test_a_configured_adapter_that_does_not_exist_is_an_unknown_format(tmp_path: Path) -> None:
    path = land(tmp_path, "chat.jsonl", [GOOD])
    result = ingest(path, IngestConfig(formats={"*.jsonl": "no_such_adapter"}))
    assert ledger(result) == [(0, "unknown_format")]


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("broken.parquet", b"PAR1 this is not really parquet"),
        ("ragged.csv", b"prompt,response\nHi,Hello,extra,cells\n"),
        ("broken.jsonl.gz", b"\x1f\x8b\x08\x00 not a gzip stream"),
    ],
)
def test_corrupt_files_are_unreadable(tmp_path: Path, name: str, data: bytes) -> None:
    result = ingest(land(tmp_path, name, data))
    assert ledger(result) == [(0, "unreadable_file")]
    assert result.rejected["source_file"].to_list() == [name]


def test_a_missing_file_is_unreadable_not_an_exception(tmp_path: Path) -> None:
    result = ingest(tmp_path / "gone.jsonl")
    assert ledger(result) == [(0, "unreadable_file")]


def test_blank_lines_are_not_records_but_are_counted(tmp_path: Path) -> None:
    good = json.dumps(GOOD)
    result = ingest(land(tmp_path, "chat.jsonl", f"\n{good}\n   \n\n{good}\n"))
    assert result.rows_in == 2
    assert result.kept["source_line"].to_list() == [2, 5]
    assert result.counters["blank_lines"] == 3


def test_conservation_holds_for_a_file_with_everything_wrong(tmp_path: Path) -> None:
    lines = [
        json.dumps(GOOD).encode(),
        b"",
        *(line for _, line in MALFORMED_LINES),
        json.dumps(GOOD).encode(),
    ]
    result = ingest(land(tmp_path, "mixed.jsonl", b"\n".join(lines) + b"\n"), file_format="openai_messages")
    assert result.rows_in == len(MALFORMED_LINES) + 2 == result.kept.height + result.rejected.height
    assert result.kept.height == 2
    assert result.rejected_by_rule == {
        "empty_conversation": 2,
        "invalid_json": 1,
        "invalid_utf8": 1,
        "missing_field": 2,
        "unknown_role": 1,
        "wrong_type": 3,
    }
    assert result.counters["blank_lines"] == 1


# --------------------------------------------------------------------------------------------------
# Normalization: BOM, CRLF, gzip


def test_bom_and_crlf_are_normalized(tmp_path: Path) -> None:
    record = {"messages": [_message("line one\r\nline two"), _message("ok", "assistant")]}
    crlf = b"\xef\xbb\xbf" + (json.dumps(record) + "\r\n").encode() * 2
    result = ingest(land(tmp_path, "chat.jsonl", crlf))

    assert result.rejected.is_empty()
    assert result.kept["source_line"].to_list() == [1, 2]
    assert messages(result)[0] == ("user", "line one\nline two")
    assert result.counters["bom_stripped"] == 1


def test_bom_and_crlf_in_csv(tmp_path: Path) -> None:
    data = b'\xef\xbb\xbfprompt,response\r\n"a\r\nb",c\r\nd,e\r\n'
    result = ingest(land(tmp_path, "p.csv", data))
    assert result.kept["source_line"].to_list() == [2, 4]
    assert messages(result, 0) == [("user", "a\nb"), ("assistant", "c")]


def test_gzip_is_transparent(tmp_path: Path) -> None:
    rows = [{"instruction": "Name a colour.", "output": "Blue"}, {"instruction": "Say hi.", "output": "hi"}]
    plain = ingest(land(tmp_path, "a.jsonl", rows))
    zipped = ingest(land(tmp_path, "a.jsonl.gz", gzip.compress((tmp_path / "a.jsonl").read_bytes())))
    assert zipped.kept["messages"].to_list() == plain.kept["messages"].to_list()
    assert zipped.kept["source_format"].to_list() == ["alpaca", "alpaca"]
    assert zipped.counters["gzip"] == 1


# --------------------------------------------------------------------------------------------------
# Detection and override


@pytest.mark.parametrize(
    ("name", "record", "expected"),
    [
        ("x.jsonl", {"messages": []}, "openai_messages"),
        ("x.jsonl", {"instruction": "a", "input": "", "output": "b"}, "alpaca"),
        ("x.jsonl", {"conversations": []}, "sharegpt"),
        ("x.jsonl", HUMANEVAL_ITEM, "humaneval"),
        ("x.jsonl", {"task_id": 1, "text": "t", "code": "c", "test_list": []}, "mbpp"),
        ("x.jsonl", {"question": "q", "answer": "a #### 1"}, "gsm8k"),
        ("x.json", {"nothing": "known"}, None),
    ],
)
def test_json_layouts_are_detected_from_their_keys(name: str, record: dict, expected: str | None) -> None:
    assert detect_format(Path(name), (json.dumps(record) + "\n").encode()) == expected
    assert detect_format(Path(name), json.dumps([record], indent=2).encode()) == expected


def test_detection_skips_unparseable_leading_lines_and_reads_gzip_heads() -> None:
    head = b"not json\n" + json.dumps({"question": "q", "answer": "a"}).encode() + b"\n"
    assert detect_format(Path("x.jsonl"), head) == "gsm8k"
    assert detect_format(Path("x.jsonl.gz"), gzip.compress(head)[:-4]) == "gsm8k"  # a truncated head


def test_tables_are_detected_by_extension_or_magic() -> None:
    assert detect_format(Path("pairs.csv"), b"prompt,response\n") == "prompt_response_csv"
    assert detect_format(Path("pairs.TSV.gz"), b"") == "prompt_response_csv"
    assert detect_format(Path("pairs.parquet"), b"") == "prompt_response_parquet"
    buffer = io.BytesIO()
    pl.DataFrame({"prompt": ["a"], "response": ["b"]}).write_parquet(buffer)
    assert detect_format(Path("pairs.bin"), buffer.getvalue()) == "prompt_response_parquet"


def test_configured_globs_override_detection(tmp_path: Path) -> None:
    # Looks like GSM8K by its keys, but the configuration says it is an Alpaca-style export.
    rows = [{"question": "q", "answer": "a", "instruction": "Do it.", "output": "Done."}]
    path = land(tmp_path, "vendor_export.jsonl", rows)
    assert ingest(path).kept["source_format"].to_list() == ["gsm8k"]

    config = IngestConfig(formats={"vendor_*.jsonl": "alpaca"})
    result = ingest(path, config)
    assert result.kept["source_format"].to_list() == ["alpaca"]
    assert messages(result) == [("user", "Do it."), ("assistant", "Done.")]

    # An explicit argument beats the configuration.
    assert ingest(path, config, file_format="gsm8k").kept["source_format"].to_list() == ["gsm8k"]


def test_tsv_files_read_with_tabs(tmp_path: Path) -> None:
    result = ingest(land(tmp_path, "pairs.tsv", "prompt\tresponse\nHi, there\tHello\n"))
    assert messages(result) == [("user", "Hi, there"), ("assistant", "Hello")]


# --------------------------------------------------------------------------------------------------
# Identity: stable ids, file hashes and batch keys


def test_record_ids_depend_only_on_the_bytes_and_the_position(tmp_path: Path) -> None:
    rows = [GOOD, {"messages": [_message("other"), _message("reply", "assistant")]}]
    first = ingest(land(tmp_path, "a.jsonl", rows))
    again = ingest(tmp_path / "a.jsonl")
    renamed = ingest(
        land(tmp_path, "b.jsonl", (tmp_path / "a.jsonl").read_bytes()), source_name="landing/b.jsonl"
    )
    changed = ingest(land(tmp_path, "c.jsonl", rows[::-1]))

    assert first.kept.equals(again.kept)
    assert renamed.kept["record_id"].to_list() == first.kept["record_id"].to_list()
    assert renamed.kept["source_file"].to_list() == ["landing/b.jsonl"] * 2
    assert set(changed.kept["record_id"]).isdisjoint(first.kept["record_id"])
    assert first.kept["record_id"].to_list() == [f"{sha12(tmp_path / 'a.jsonl')}:{n}" for n in (1, 2)]


def test_file_sha256_is_the_hash_of_the_bytes(tmp_path: Path) -> None:
    path = land(tmp_path, "a.jsonl", "x" * 5_000_000)
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_batch_keys_are_dagster_safe_and_carry_the_hash() -> None:
    sha = "3fa9c2d4" + "0" * 56
    assert batch_key(Path("/landing/alpaca_export.json"), sha) == "alpaca_export.json-3fa9c2d4"
    odd = batch_key(Path("my data (final) ü,v2.jsonl"), sha)
    assert re.fullmatch(r"[A-Za-z0-9._-]+", odd) and odd.endswith("-3fa9c2d4")
    long = batch_key(Path("x" * 300 + ".jsonl"), sha)
    assert len(long) <= 64 and long.endswith("-3fa9c2d4")
    assert batch_key(Path("a.json"), "1" * 64) != batch_key(Path("a.json"), "2" * 64)
    # Dagster rejects partition keys containing "...".
    assert "..." not in batch_key(Path("export....jsonl"), sha)
