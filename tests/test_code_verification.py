"""Specification of code verification in detail: the harness that runs tests one by one and says which
failed, ruff lint before the code runs, and the Llama 3 revision loop (failing code and its error go
back to the model) against a real chat-completions server (tests/chat_server.py)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

import thresher.verification.code as code_module
from tests.chat_server import ChatServer
from tests.test_verification import verdicts, verify
from thresher.hashing import sha256_hex
from thresher.llm import Endpoint, LLMClient, ResponseCache
from thresher.llm_recipes import PromptSet
from thresher.stage import StageResult
from thresher.verification.code import read_report
from thresher.verification.revision import VERIFICATION_ATTEMPTS_SCHEMA, revision_seed

ADD = "def add(a, b):\n    return a + b\n"
SUB = "def add(a, b):\n    return a - b\n"  # wrong
MUL = "def add(a, b):\n    return a * b\n"  # wrong too
ADD_TESTS = "assert add(1, 2) == 3\nassert add(2, 2) == 4\n"
TASK = "Write a Python function add(a, b) that returns the sum of a and b."


def record(
    record_id: str, answer: str | None, tests: str | None = ADD_TESTS, **fields: Any
) -> dict[str, Any]:
    messages = [{"role": "user", "content": TASK}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return {
        "record_id": record_id,
        "task": "code",
        "messages": messages,
        "tests": tests,
        "source_file": "test.jsonl",
        "source_line": int(record_id.rsplit(":", 1)[-1]) + 1,
        **fields,
    }


def code_result(answer: str, tests: str = ADD_TESTS, **config: Any) -> tuple[str, str]:
    return verdicts(verify([record("c:0", answer, tests)], **config))["c:0"]


def results_table(result: StageResult) -> dict[str, dict[str, Any]]:
    return {row["record_id"]: row for row in result.tables["code_test_results"].iter_rows(named=True)}


# ------------------------------------------------------------------------------------------------
# Per-test reports


def test_every_top_level_assert_is_one_test_and_all_of_them_run() -> None:
    tests = "assert add(1, 2) == 3\nassert add(0, 0) == 0\n\nassert add(2, 2) == 4\n"
    assert code_result(SUB, tests) == (
        "code_tests_failed",
        "2 of 3 tests failed; first: assert at test line 1 (AssertionError)",
    )
    assert code_result(ADD, tests) == ("passed", "3 of 3 tests passed")


def test_test_functions_are_called_as_pytest_would_unless_the_tests_call_them_themselves() -> None:
    tests = (
        "def test_one():\n    assert add(1, 1) == 2\n\n"
        "def test_zero():\n    assert add(0, 0) == 0\n\n"
        "def test_with_a_fixture(tmp_path):\n    assert False\n\n"  # cannot be called here: not a test
        "def helper():\n    return 1\n"
    )
    assert code_result(SUB, tests) == (
        "code_tests_failed",
        "1 of 2 tests failed; first: test_one (AssertionError at test line 2)",
    )
    called = "def test_one():\n    assert add(1, 1) == 2\n\ntest_one()\n"
    assert code_result(ADD, called) == ("passed", "1 of 1 tests passed")  # once, not twice


def test_unittest_testcases_run_through_unittest_one_test_per_method() -> None:
    tests = (
        "import unittest\n\n"
        "class TestAdd(unittest.TestCase):\n"
        "    def test_positive(self):\n"
        "        self.assertEqual(add(1, 2), 3)\n\n"
        "    def test_zero(self):\n"
        "        self.assertEqual(add(0, 0), 0)\n\n"
        "    @unittest.skip('not yet')\n"
        "    def test_skipped(self):\n"
        "        self.fail()\n\n"
        "if __name__ == '__main__':\n"
        "    unittest.main()\n"  # would exit before the report: the harness runs the TestCase itself
    )
    assert code_result(SUB, tests) == (
        "code_tests_failed",
        "1 of 2 tests failed; first: TestAdd.test_positive (AssertionError at test line 5)",
    )
    assert code_result(ADD, tests) == ("passed", "2 of 2 tests passed")


def test_derived_testcases_fixture_errors_and_all_skipped_tests_are_reported_as_such() -> None:
    derived = (
        "import unittest\n\n"
        "class Base(unittest.TestCase):\n"
        "    def assertAdds(self, a, b):\n"
        "        self.assertEqual(add(a, b), a + b)\n\n"
        "class TestAdd(Base):\n"
        "    def test_small(self):\n"
        "        self.assertAdds(1, 2)\n"
    )
    assert code_result(SUB, derived) == (
        "code_tests_failed",
        "1 of 1 tests failed; first: TestAdd.test_small (AssertionError at test line 5)",
    )
    broken_fixture = (
        "import unittest\n\n"
        "class TestAdd(unittest.TestCase):\n"
        "    @classmethod\n"
        "    def setUpClass(cls):\n"
        "        raise RuntimeError('no database')\n\n"
        "    def test_small(self):\n"
        "        self.assertEqual(add(1, 2), 3)\n"
    )
    assert code_result(ADD, broken_fixture) == (
        "code_tests_failed",
        "1 of 1 tests failed; first: TestAdd (RuntimeError at test line 6)",
    )
    skipped = "import unittest\n\n@unittest.skip('later')\nclass TestAdd(unittest.TestCase):\n    def test_a(self):\n        pass\n"
    assert code_result(ADD, skipped) == (
        "not_applicable",
        "no unit test ran (all skipped, or no real TestCase)",
    )


def test_a_humaneval_check_call_is_one_test_named_check() -> None:
    tests = "METADATA = {}\n\ndef check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(2, 2) == 4\n"
    rows = [record("c:0", SUB, tests, entry_point="add"), record("c:1", ADD, tests, entry_point="add")]
    result = verify(rows)
    assert verdicts(result) == {
        "c:0": ("code_tests_failed", "1 of 1 tests failed; first: check (AssertionError at test line 4)"),
        "c:1": ("passed", "1 of 1 tests passed"),
    }


def test_a_top_level_block_that_asserts_is_one_test() -> None:
    tests = "cases = [(0, 0), (1, 2)]\nfor a, b in cases:\n    assert add(a, b) == a + b\n"
    assert code_result(SUB, tests) == (
        "code_tests_failed",
        "1 of 1 tests failed; first: test at test line 2 (AssertionError at test line 3)",
    )


def test_setup_runs_in_order_and_a_failing_setup_statement_fails_the_record() -> None:
    tests = "import math\nexpected = math.floor(3.5)\nassert add(1, 2) == expected\n"
    assert code_result(ADD, tests) == ("passed", "1 of 1 tests passed")
    broken = "import no_such_module_here\nassert add(1, 2) == 3\n"
    assert code_result(ADD, broken) == (
        "code_tests_failed",
        "1 of 1 tests passed but setup at test line 1 (ModuleNotFoundError) failed",
    )


def test_an_exception_in_the_solution_is_located_where_it_was_raised() -> None:
    answer = "def add(a, b):\n    return a + b + {}[a]\n"
    assert code_result(answer) == (
        "code_tests_failed",
        "2 of 2 tests failed; first: assert at test line 1 (KeyError at solution line 2)",
    )
    defining = ADD + "print(add(1))\n"  # fails before any test can run
    assert code_result(defining) == (
        "code_tests_failed",
        "the solution raised TypeError at solution line 3 before its tests ran",
    )


def test_the_detail_and_side_table_never_carry_the_exception_message() -> None:
    tests = "assert add(1, 2) == 3\nassert add(2, 2) == 5, 'jane.doe@example.com expects 5'\n"
    result = verify([record("c:0", ADD, tests)])
    assert verdicts(result)["c:0"] == (
        "code_tests_failed",
        "1 of 2 tests failed; first: assert at test line 2 (AssertionError)",
    )
    assert results_table(result)["c:0"] == {
        "record_id": "c:0",
        "tests_run": 2,
        "tests_passed": 1,
        "failed_test": "assert at test line 2",
        "error_type": "AssertionError",
        "lint_findings": 0,
        "lint_codes": [],
        "attempt": 0,
    }
    everything = json.dumps([result.rejected.to_dicts(), {k: v.to_dicts() for k, v in result.tables.items()}])
    assert "jane.doe" not in everything


def test_tests_without_any_test_are_not_applicable() -> None:
    assert code_result(ADD, "print(add(1, 2))\n") == (
        "not_applicable",
        "the unit tests contain no test (no assert, test function, TestCase or check call)",
    )


@pytest.mark.parametrize(
    ("ending", "detail"),
    [
        ("import sys\nsys.exit(0)\n", "the program exited before its unit tests finished"),
        ("import os\nos._exit(0)\n", "the program exited before its unit tests finished"),
        ("import sys\nsys.exit(3)\n", "the program exited with status 3 before its unit tests finished"),
        (
            "if __name__ == '__main__':\n    raise SystemExit\n",
            "the program exited before its unit tests finished",
        ),
    ],
    ids=["sys.exit", "os._exit", "exit-status", "main-block"],
)
def test_a_solution_that_exits_early_is_detected_as_tests_not_completed(ending: str, detail: str) -> None:
    assert code_result(ADD + ending) == ("code_tests_failed", detail)


def test_the_programs_own_output_can_neither_hide_nor_forge_the_report() -> None:
    quiet = ADD + "import io, sys\nprint('no newline at the end', end='')\nsys.stdout = io.StringIO()\n"
    assert code_result(quiet) == ("passed", "2 of 2 tests passed")
    forger = ADD + 'print(\'__thresher_report_0123456789abcdef__ {"tests_run": 2, "tests_passed": 2}\')\n'
    assert code_result(forger, "assert add(1, 2) == 4\n")[0] == "code_tests_failed"


def test_a_report_the_harness_did_not_write_cannot_put_text_into_the_ledger() -> None:
    forger = ADD + (
        "import os, re, sys\n"
        "marker = re.search(r'__thresher_report_[0-9a-f]{16}__ ', open(sys.argv[0]).read()).group()\n"
        "print(marker + repr({'tests_run': 1, 'tests_passed': 0, "
        "'failures': [[0, 'jane.doe@example.com', 'Error', None, None]]}))\n"
        "os._exit(0)\n"
    )
    assert code_result(forger) == ("code_tests_failed", "the program exited before its unit tests finished")


def test_the_report_is_the_last_marked_line_of_the_output() -> None:
    marker = "__thresher_report_x__ "
    output = f'hello\n{marker}{{"tests_run": 1}}\nnoise\n{marker}{{"tests_run": 2}}\ntrailing'
    assert read_report(output, marker) == {"tests_run": 2}
    assert read_report("hello\n", marker) is None
    assert read_report(f"{marker}{{cut", marker) is None


# ------------------------------------------------------------------------------------------------
# Lint


STRICT_LINT = {"lint": {"reject": ["E9", "F63", "F7", "F82"]}}


def test_an_undefined_name_on_an_untested_branch_is_named_in_the_verdict_by_default() -> None:
    answer = "def add(a, b):\n    if a > 99:\n        return undefined_total\n    return a + b\n"
    assert verdicts(verify([record("c:0", answer)]))["c:0"] == (
        "passed",
        "2 of 2 tests passed; ruff: 1 finding (F821)",
    )


def test_findings_of_rejected_rules_reject_the_record_before_it_runs() -> None:
    answer = "def add(a, b):\n    if a > 99:\n        return undefined_total\n    return a + b\n"
    result = verify([record("c:0", answer)], **STRICT_LINT)
    # The tests would pass: the undefined name sits on a branch they never take.
    assert verdicts(result)["c:0"] == ("code_lint_error", "ruff F821 (undefined name) at solution line 3")
    assert result.counters["code.executed"] == 0
    assert result.counters["code.lint.F821"] == 1
    assert results_table(result)["c:0"]["lint_codes"] == ["F821"]


def test_an_answer_cannot_exempt_itself_with_noqa() -> None:
    answer = (
        "def add(a, b):\n    if a > 99:\n        return undefined_total  # noqa: F821\n    return a + b\n"
    )
    assert code_result(answer, **STRICT_LINT)[0] == "code_lint_error"


def test_other_findings_are_counted_listed_and_shown_on_the_kept_record() -> None:
    answer = (
        "import os\n\ndef add(a, b):\n    unused = 1\n    if a == None:\n        return b\n    return a + b\n"
    )
    result = verify([record("c:0", answer)])
    assert verdicts(result)["c:0"] == ("passed", "2 of 2 tests passed; ruff: 3 findings (E711, F401, F841)")
    assert {k: v for k, v in result.counters.items() if k.startswith("code.lint")} == {
        "code.lint.E711": 1,
        "code.lint.F401": 1,
        "code.lint.F841": 1,
        "code.lint_skipped": 0,
    }
    row = results_table(result)["c:0"]
    assert (row["lint_findings"], row["lint_codes"]) == (3, ["F401", "F841", "E711"])


def test_the_reject_list_is_configurable_and_lint_can_be_turned_off() -> None:
    answer = "import os\n" + ADD
    assert code_result(answer, lint={"reject": ["F401"]}) == (
        "code_lint_error",
        "ruff F401 (unused import) at solution line 1",
    )
    assert code_result(answer, lint={"enabled": False}) == ("passed", "2 of 2 tests passed")


def test_ruff_runs_once_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    run = code_module.subprocess.run

    def counting_run(args: list[str], **kwargs: Any) -> Any:
        calls.append(args)
        return run(args, **kwargs)

    monkeypatch.setattr(code_module.subprocess, "run", counting_run)
    result = verify([record(f"c:{i}", ADD if i % 2 else "import os\n" + ADD) for i in range(6)])
    assert len(calls) == 1
    assert result.counters["code.lint.F401"] == 3


def test_without_ruff_lint_is_skipped_and_noted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(code_module, "find_ruff", lambda: None)
    result = verify([record("c:0", ADD)])
    assert verdicts(result)["c:0"] == ("passed", "2 of 2 tests passed; lint skipped (ruff not found)")
    assert result.counters["code.lint_skipped"] == 1


def test_a_failing_ruff_is_skipped_and_noted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    broken = tmp_path / "ruff"
    broken.write_text("#!/bin/sh\nexit 2\n")
    broken.chmod(0o755)
    monkeypatch.setattr(code_module, "find_ruff", lambda: broken)
    result = verify([record("c:0", ADD)])
    assert verdicts(result)["c:0"] == (
        "passed",
        "2 of 2 tests passed; lint skipped (ruff failed with exit status 2)",
    )
    assert result.counters["code.lint_skipped"] == 1


# ------------------------------------------------------------------------------------------------
# The revision loop


@pytest.fixture
def client(chat_server: ChatServer) -> Iterator[LLMClient]:
    endpoint = Endpoint(name="test-endpoint", base_url=chat_server.base_url, model="test-model")
    with LLMClient(
        endpoint, cache=ResponseCache(duckdb.connect()), backoff_seconds=0.0, max_retries=1
    ) as llm:
        yield llm


def fenced(code: str) -> str:
    return f"Here is a corrected solution.\n\n```python\n{code}```\n\nIt adds the two numbers."


def revising(fixes: dict[str, str]) -> Callable[[dict[str, Any]], str]:
    """A model that answers a revision request by the failing code it quotes: ``fixes`` maps a line of
    that code to the reply."""

    def reply(body: dict[str, Any]) -> str:
        prompt = body["messages"][-1]["content"]
        return next((answer for line, answer in fixes.items() if line in prompt), "I cannot help.")

    return reply


def attempts(result: StageResult) -> list[tuple[str, int, str, str | None]]:
    table = result.tables["verification_attempts"].sort("record_id", "attempt")
    return [(r["record_id"], r["attempt"], r["verdict"], r["rule"]) for r in table.iter_rows(named=True)]


def test_a_failing_solution_is_revised_until_it_passes(chat_server: ChatServer, client: LLMClient) -> None:
    chat_server.reply = revising({"return a - b": fenced(MUL), "return a * b": fenced(ADD)})
    tests = "assert add(1, 2) == 3, 'one plus two'\nassert add(2, 2) == 4\n"
    rows = [record("c:0", fenced(SUB), tests), record("c:1", fenced(ADD), tests)]
    result = verify(rows, client, revision={"max_rounds": 3})

    assert verdicts(result) == {
        "c:0": ("passed", "2 of 2 tests passed after 2 revision(s)"),
        "c:1": ("passed", "2 of 2 tests passed"),
    }
    # The revised reply, as the model wrote it, replaces the failing answer.
    assert result.kept["messages"].to_list()[0] == [
        {"role": "user", "content": TASK},
        {"role": "assistant", "content": fenced(ADD)},
    ]
    assert attempts(result) == [
        ("c:0", 0, "failed", "code_tests_failed"),
        ("c:0", 1, "failed", "code_tests_failed"),
        ("c:0", 2, "passed", None),
    ]
    table = result.tables["verification_attempts"].sort("attempt")
    assert table.schema == pl.Schema(VERIFICATION_ATTEMPTS_SCHEMA)
    assert table["code_sha256"].to_list() == sha256_hex(pl.Series([SUB, MUL, ADD])).to_list()
    assert table["model"].to_list() == [None, "test-model", "test-model"]
    assert table["template_hash"].to_list() == [None, *[PromptSet.load("code_revision").hash] * 2]
    assert table["cache_hit"].to_list() == [None, False, False]
    assert (table["prompt_tokens"][1:] > 0).all() and (table["completion_tokens"][1:] > 0).all()
    assert results_table(result)["c:0"]["attempt"] == 2
    assert {k: v for k, v in result.counters.items() if k.startswith("revision.")} == {
        "revision.fixed": 1,
        "revision.request_failed": 0,
        "revision.requested": 2,
        "revision.still_failing": 0,
        "revision.unparseable": 0,
    }

    # The model saw the task, the failing code, the failing test and the exception message.
    first = chat_server.chat_requests[0].body
    prompt = first["messages"][-1]["content"]
    assert TASK in prompt and SUB.strip() in prompt
    assert "assert add(1, 2) == 3, 'one plus two'" in prompt and "AssertionError: one plus two" in prompt
    assert first["seed"] == revision_seed("c:0", 1)
    assert chat_server.chat_requests[1].body["seed"] == revision_seed("c:0", 2)

    # A second run is answered from the cache: no request, the same outcome.
    chat_server.reset()
    again = verify(rows, client, revision={"max_rounds": 3})
    assert chat_server.chat_requests == []
    assert again.kept.equals(result.kept) and again.rejected.equals(result.rejected)
    assert again.tables["verification_attempts"]["cache_hit"].to_list() == [None, True, True]


def test_a_model_that_never_fixes_the_code_leaves_it_rejected_with_its_last_failure(
    chat_server: ChatServer, client: LLMClient
) -> None:
    chat_server.reply = revising({"return a - b": fenced(MUL), "return a * b": fenced(MUL)})
    result = verify([record("c:0", fenced(SUB))], client, revision={"max_rounds": 2})
    assert verdicts(result)["c:0"] == (
        "code_tests_failed",
        "1 of 2 tests failed; first: assert at test line 1 (AssertionError); still failing after 2 revision(s)",
    )
    assert attempts(result) == [("c:0", attempt, "failed", "code_tests_failed") for attempt in (0, 1, 2)]
    assert result.counters["revision.still_failing"] == 1
    assert len(chat_server.chat_requests) == 2


def test_each_round_asks_for_all_revisable_records_in_one_call(
    chat_server: ChatServer, client: LLMClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    chat_server.reply = revising(
        {"return a - b": fenced(ADD), "undefined_total": fenced(ADD), "b)\n": fenced(ADD)}
    )
    batch_sizes: list[int] = []
    complete = client.complete
    monkeypatch.setattr(
        client, "complete", lambda requests: batch_sizes.append(len(requests)) or complete(requests)
    )
    rows = [
        record("c:0", fenced(SUB)),  # tests fail
        record("c:1", fenced("def add(a, b)\n    return a + b\n")),  # syntax error
        record("c:2", fenced("def add(a, b):\n    return a + b + undefined_total\n")),  # lint error
        record("c:3", fenced(ADD)),  # passes
        record("c:4", fenced(ADD), "assert add(1, 2) ==\n"),  # broken tests: a new solution cannot help
        record("c:5", "```json\n{}\n```"),  # no code
    ]
    result = verify(rows, client, revision={"max_rounds": 2}, **STRICT_LINT)
    assert batch_sizes == [3]
    assert {k: v[0] for k, v in verdicts(result).items()} == {
        "c:0": "passed",
        "c:1": "passed",
        "c:2": "passed",
        "c:3": "passed",
        "c:4": "code_syntax_error",
        "c:5": "code_missing",
    }
    prompts = sorted(r.body["messages"][-1]["content"] for r in chat_server.chat_requests)
    assert any("ruff F821 (undefined-name) at line 2: Undefined name `undefined_total`" in p for p in prompts)
    assert any("SyntaxError at solution line 1" in p for p in prompts)


def test_a_reply_without_code_is_counted_and_asked_again(chat_server: ChatServer, client: LLMClient) -> None:
    replies = iter(["```text\nI would rather not.\n```", fenced(ADD)])
    chat_server.reply = lambda body: next(replies)
    result = verify([record("c:0", fenced(SUB))], client, revision={"max_rounds": 2})
    assert verdicts(result)["c:0"] == ("passed", "2 of 2 tests passed after 2 revision(s)")
    assert attempts(result) == [
        ("c:0", 0, "failed", "code_tests_failed"),
        ("c:0", 1, "failed", "code_missing"),
        ("c:0", 2, "passed", None),
    ]
    assert result.counters["revision.unparseable"] == 1


def test_without_a_client_or_without_rounds_nothing_changes(
    chat_server: ChatServer, client: LLMClient
) -> None:
    rows = [record("c:0", fenced(SUB)), record("c:1", fenced(ADD))]
    plain = verify(rows)
    for result in (verify(rows, revision={"max_rounds": 2}), verify(rows, client)):
        assert result.kept.equals(plain.kept) and result.rejected.equals(plain.rejected)
        assert result.counters == plain.counters
        assert result.tables["verification_attempts"].is_empty()
    assert chat_server.chat_requests == []


def test_the_revision_loop_is_deterministic() -> None:
    def run_once() -> tuple[list[str], StageResult]:
        with ChatServer(reply=revising({"return a - b": fenced(MUL), "return a * b": fenced(ADD)})) as server:
            endpoint = Endpoint(name="test-endpoint", base_url=server.base_url, model="test-model")
            with LLMClient(endpoint, backoff_seconds=0.0) as llm:
                rows = [record(f"c:{i}", fenced(SUB)) for i in range(3)]
                result = verify(rows, llm, revision={"max_rounds": 2})
            return sorted(json.dumps(r.body, sort_keys=True) for r in server.chat_requests), result

    (requests, first), (requests_again, second) = run_once(), run_once()
    assert requests == requests_again and len(requests) == 6
    assert first.kept.equals(second.kept)
    assert first.tables["verification_attempts"].equals(second.tables["verification_attempts"])
