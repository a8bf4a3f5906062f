"""Specification of the verified stage: code runs against its tests, math answers are checked.

The real-data tests run every HumanEval and MBPP reference solution and every GSM8K test answer
through ``Verifier``: a verifier that rejects known-good data is broken, and one that keeps
deliberately broken data is useless.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
from functools import cache
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tests.conftest import CORPORA
from thresher.config import VerifyConfig
from thresher.llm import LLMClient
from thresher.records import conform
from thresher.stage import StageResult
from thresher.verification import (
    Verifier,
    annotation_matches,
    equivalent,
    evaluate_arithmetic,
    extract_code,
    final_answer,
    numeric_value,
)

HUMANEVAL = CORPORA / "code/humaneval/HumanEval.jsonl.gz"
MBPP = CORPORA / "code/mbpp/mbpp.jsonl"
GSM8K = CORPORA / "math/gsm8k/test.jsonl"


def record(
    record_id: str,
    task: str,
    answer: str | None,
    *,
    prompt: str = "Solve the task.",
    tests: str | None = None,
    entry_point: str | None = None,
    reference: str | None = None,
) -> dict[str, Any]:
    messages = [{"role": "user", "content": prompt}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return {
        "record_id": record_id,
        "task": task,
        "messages": messages,
        "tests": tests,
        "entry_point": entry_point,
        "reference_answer": reference,
        "source_file": "test.jsonl",
        "source_line": int(record_id.rsplit(":", 1)[-1]) + 1,
    }


def verify(rows: list[dict[str, Any]], llm: LLMClient | None = None, **config: Any) -> StageResult:
    result = Verifier(VerifyConfig(**config), llm).run(conform(pl.DataFrame(rows)))
    result.check_conservation()
    return result


def verdicts(result: StageResult) -> dict[str, tuple[str, str]]:
    """record_id -> (verdict or rule, detail) over kept and rejected records."""
    kept = {r["record_id"]: (r["verdict"], r["verdict_detail"]) for r in result.kept.iter_rows(named=True)}
    rejected = {r["record_id"]: (r["rule"], r["detail"]) for r in result.rejected.iter_rows(named=True)}
    return kept | rejected


def needs(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"corpus not available: {path}")


@cache
def humaneval() -> list[dict[str, Any]]:
    needs(HUMANEVAL)
    with gzip.open(HUMANEVAL, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@cache
def gsm8k() -> list[dict[str, Any]]:
    needs(GSM8K)
    return [json.loads(line) for line in GSM8K.read_text(encoding="utf-8").splitlines()]


def humaneval_record(i: int, task: dict[str, Any], solution: str) -> dict[str, Any]:
    # The answer repeats the prompt (signature and docstring) and completes it, fenced as a model would.
    answer = f"Here is the implementation:\n\n```python\n{task['prompt']}{solution}```\n"
    return record(
        f"he:{i}", "code", answer, prompt=task["prompt"], tests=task["test"], entry_point=task["entry_point"]
    )


# ------------------------------------------------------------------------------------------------
# Real data


def test_every_humaneval_canonical_solution_passes() -> None:
    tasks = humaneval()
    result = verify([humaneval_record(i, t, t["canonical_solution"]) for i, t in enumerate(tasks)])
    assert result.rejected_by_rule == {}
    assert result.kept["verdict"].unique().to_list() == ["passed"]
    assert result.counters["code.passed"] == len(tasks) == 164
    assert result.counters["code.executed"] == 164


_FLIP = {"<": ">=", "<=": ">", ">": "<=", ">=": "<", "==": "!=", "!=": "=="}


def test_every_humaneval_solution_fails_when_its_first_comparison_is_flipped() -> None:
    rows = []
    for i, task in enumerate(humaneval()):
        solution = task["canonical_solution"]
        found = re.search(r"<=|>=|==|!=|<|>", solution)
        if found:
            mutated = solution[: found.start()] + _FLIP[found.group()] + solution[found.end() :]
            rows.append(humaneval_record(i, task, mutated))
    assert len(rows) == 112
    result = verify(rows, timeout_seconds=3)
    assert result.kept.height == 0
    assert set(result.rejected_by_rule) <= {"code_tests_failed", "code_timeout"}
    failed = result.rejected.filter(pl.col("rule") == "code_tests_failed")["detail"]
    assert failed.str.contains(
        r"^1 of 1 tests failed; first: check \([\w.]+( at (test|solution) line \d+)?\)$"
    ).all()


def test_an_off_by_one_solution_fails_at_the_assertion_that_catches_it() -> None:
    task = humaneval()[0]  # has_close_elements: `if distance < threshold`
    mutated = task["canonical_solution"].replace("distance < threshold", "distance <= threshold + 1")
    (rule, detail) = verdicts(verify([humaneval_record(0, task, mutated)]))["he:0"]
    assert rule == "code_tests_failed"
    test_lines = task["test"].splitlines()
    first_failing = next(n for n, line in enumerate(test_lines, start=1) if "0.05) == False" in line)
    assert detail == f"1 of 1 tests failed; first: check (AssertionError at test line {first_failing})"


def test_every_mbpp_reference_solution_passes_its_tests() -> None:
    needs(MBPP)
    tasks = [json.loads(line) for line in MBPP.read_text(encoding="utf-8").splitlines()]
    rows = [
        record(
            f"mbpp:{i}",
            "code",
            t["code"],  # unfenced: the whole answer is the code
            prompt=t["text"],
            tests=t["test_setup_code"] + "\n" + "\n".join(t["test_list"]),
        )
        for i, t in enumerate(tasks)
    ]
    result = verify(rows)
    assert result.rejected_by_rule == {}
    assert result.counters["code.passed"] == len(tasks) == 974
    # The reference of task 218 calls an undefined `swap` on a branch its tests never take: a latent
    # NameError that ruff names in the verdict (and rejects when F82 is in verify.lint.reject).
    detail = result.kept.filter(pl.col("record_id") == "mbpp:217")["verdict_detail"].item()
    assert "F821" in detail


def gsm8k_rows(answers: list[str] | None = None) -> list[dict[str, Any]]:
    items = gsm8k()
    answers = answers or [item["answer"] for item in items]
    return [
        record(
            f"gsm:{i}",
            "math",
            answer,
            prompt=item["question"],
            reference=item["answer"].rsplit("####", 1)[1].strip(),
        )
        for i, (item, answer) in enumerate(zip(items, answers, strict=True))
    ]


def test_every_gsm8k_test_answer_verifies_against_its_own_final_answer_and_annotations() -> None:
    rows = gsm8k_rows()
    result = verify(rows)
    assert result.rejected_by_rule == {}
    assert result.counters["math.passed"] == len(rows) == 1319
    # All 4,282 calculator annotations evaluate; one is a fraction result (<<3/4=3/4>>).
    assert result.counters["math.annotations_checked"] == 4282
    assert result.counters.get("math.annotations_unparsed", 0) == 0


def test_gsm8k_answers_with_a_changed_final_answer_fail() -> None:
    def bump(answer: str) -> str:
        body, final = answer.rsplit("####", 1)
        value = int(final.strip().replace(",", ""))
        return f"{body}#### {value + 1}"

    result = verify(gsm8k_rows([bump(item["answer"]) for item in gsm8k()]))
    assert result.rejected_by_rule == {"math_answer_mismatch": 1319}
    assert result.kept.height == 0
    first = verdicts(result)["gsm:0"]
    assert first == ("math_answer_mismatch", "final answer 19 does not match the reference 18")


def test_gsm8k_answers_with_a_wrong_calculator_result_fail() -> None:
    annotated = [i for i, item in enumerate(gsm8k()) if "<<" in item["answer"]]

    def corrupt_first_annotation(answer: str) -> str:
        return re.sub(r"=(-?[\d.]+)>>", lambda m: f"={float(m.group(1)) + 1:g}>>", answer, count=1)

    answers = [corrupt_first_annotation(item["answer"]) for item in gsm8k()]
    result = verify(gsm8k_rows(answers))
    assert result.rejected_by_rule == {"math_calculation_error": len(annotated)}
    assert len(annotated) == 1301
    # "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day ... <<9*2=18>>18"
    assert verdicts(result)["gsm:0"] == (
        "math_calculation_error",
        "calculator annotation 1 of 2 evaluates to 9, not 10",
    )


# ------------------------------------------------------------------------------------------------
# Code: extraction and outcomes

ADD = "def add(a, b):\n    return a + b\n"
ADD_TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"


def code_result(answer: str | None, tests: str | None = ADD_TESTS, **config: Any) -> tuple[str, str]:
    return verdicts(verify([record("c:0", "code", answer, tests=tests)], **config))["c:0"]


def test_code_in_a_python_fence_passes() -> None:
    assert code_result(f"Sure:\n```python\n{ADD}```\nDone.") == ("passed", "2 of 2 tests passed")


def test_the_last_python_or_untagged_block_is_the_code() -> None:
    answer = (
        f"```python\ndef add(a, b):\n    return 0\n```\nFixed:\n```\n{ADD}```\n```bash\npython add.py\n```"
    )
    assert code_result(answer)[0] == "passed"


def test_code_extraction_rules() -> None:
    answers = pl.DataFrame(
        {
            "content": [
                "x = 1",  # no fences: the whole content
                "```py\nx = 2\n```",
                "```json\n{}\n```",  # fences, none Python
                "```python\nx = 3",  # unclosed (truncated) fence
                "   ",
                None,
            ]
        }
    )
    code = answers.select(extract_code(pl.col("content"))).to_series().to_list()
    assert code == ["x = 1", "x = 2\n", None, "x = 3", None, None]


def test_humaneval_style_tests_get_their_check_call_appended() -> None:
    tests = "def check(candidate):\n    assert candidate(1, 2) == 4\n"
    rows = [record("c:0", "code", ADD, tests=tests, entry_point="add")]
    assert verdicts(verify(rows))["c:0"] == (
        "code_tests_failed",
        "1 of 1 tests failed; first: check (AssertionError at test line 2)",
    )


@pytest.mark.parametrize(
    ("answer", "rule"),
    [
        (None, "code_missing"),
        ('```json\n{"add": 1}\n```', "code_missing"),
        ("", "code_missing"),
    ],
    ids=["no-assistant-message", "only-non-python-fences", "empty-answer"],
)
def test_answers_without_python_code_are_code_missing(answer: str | None, rule: str) -> None:
    assert code_result(answer)[0] == rule


def test_code_without_tests_is_kept_as_not_applicable() -> None:
    assert code_result("console.log('hi')", tests=None) == ("not_applicable", "no unit tests supplied")
    assert code_result(ADD, tests="  \n") == ("not_applicable", "no unit tests supplied")


def test_a_syntax_error_is_located_in_the_solution_or_in_the_tests() -> None:
    assert code_result("def add(a, b)\n    return a + b\n") == (
        "code_syntax_error",
        "code does not compile: SyntaxError at solution line 1",
    )
    assert code_result(ADD, tests="assert add(1, 2) == 3\nassert add(1,, 2)\n") == (
        "code_syntax_error",
        "code does not compile: SyntaxError at test line 2",
    )


def test_a_failing_test_names_the_exception_and_test_line_but_never_the_message() -> None:
    tests = "assert add(1, 2) == 3\nassert add(2, 2) == 5, 'jane.doe@example.com should see 5'\n"
    rule, detail = code_result(ADD, tests=tests)
    assert (rule, detail) == (
        "code_tests_failed",
        "1 of 2 tests failed; first: assert at test line 2 (AssertionError)",
    )


def test_an_exception_in_the_solution_is_located_in_the_solution() -> None:
    answer = "def add(a, b):\n    return a + b + undefined_name\n"
    # ruff would reject the undefined name before the code runs (code_lint_error); without lint it runs.
    assert code_result(answer, lint={"enabled": False}) == (
        "code_tests_failed",
        "2 of 2 tests failed; first: assert at test line 1 (NameError at solution line 2)",
    )


def test_a_solution_that_exits_before_the_tests_run_fails() -> None:
    answer = ADD + "import sys\nsys.exit(0)\n"
    assert code_result(answer) == ("code_tests_failed", "the program exited before its unit tests finished")


def test_an_endless_solution_is_a_timeout() -> None:
    answer = "def add(a, b):\n    while True:\n        pass\n"
    assert code_result(answer, timeout_seconds=1) == ("code_timeout", "program did not finish within 1 s")


def test_a_memory_hungry_solution_hits_the_memory_limit() -> None:
    answer = "def add(a, b):\n    return len(bytearray(2 ** 33)) + a + b\n"
    assert code_result(answer, memory_mb=128) == (
        "code_memory_limit",
        "program exceeded the 128 MB memory limit",
    )


def test_a_solution_that_floods_its_output_or_crashes_fails_its_tests() -> None:
    flood = "def add(a, b):\n    while True:\n        print('spam')\n"
    assert code_result(flood) == (
        "code_tests_failed",
        "program exceeded its output limit (output exceeded 65536 bytes)",
    )
    crash = "import os, signal\n\ndef add(a, b):\n    os.kill(os.getpid(), signal.SIGSEGV)\n"
    assert code_result(crash) == ("code_tests_failed", "program crashed (killed by SIGSEGV)")


# ------------------------------------------------------------------------------------------------
# Math: extraction, comparison, annotations


def math_result(answer: str | None, reference: str | None, **config: Any) -> tuple[str, str]:
    return verdicts(verify([record("m:0", "math", answer, reference=reference)], **config))["m:0"]


def test_final_answer_extraction_prefers_hashes_then_boxed_then_the_last_number() -> None:
    texts = pl.DataFrame(
        {
            "content": [
                "3 + 4 = 7, so\n#### 1,000",
                "So \\boxed{\\frac{1}{2}} after 7 steps",
                "The total is 42 apples.",
                "I cannot tell.",
            ]
        }
    )
    answers = texts.select(final_answer(pl.col("content"))).to_series().to_list()
    assert answers == ["1,000", "\\frac{1}{2}", "42", None]


def test_numeric_values_ignore_currency_percent_commas_and_units() -> None:
    texts = [
        "$1,450,000",
        "50%",
        "3/4",
        "\\frac{3}{4}",
        "-\\dfrac{1}{2}",
        "18 dollars",
        "2.5e3",
        "1,5",
        "x + 1",
    ]
    values = pl.DataFrame({"answer": texts}).select(numeric_value(pl.col("answer"))).to_series().to_list()
    assert values == [1450000.0, 50.0, 0.75, 0.75, -0.5, 18.0, 2500.0, None, None]


@pytest.mark.parametrize(
    ("answer", "reference"),
    [
        ("She pays $1,200 in total.\n#### $1,200", "1200"),
        ("Half of it: \\boxed{0.5}", "1/2"),
        ("So the answer is 7.", "7.0"),
        ("#### 18 dollars", "18"),
    ],
)
def test_equal_values_written_differently_match(answer: str, reference: str) -> None:
    assert math_result(answer, reference)[0] == "passed"


def test_math_tolerance_is_absolute_so_large_off_by_one_answers_fail() -> None:
    assert math_result("#### 1450001", "1,450,000")[0] == "math_answer_mismatch"
    assert math_result("#### 0.3333333", "1/3", math_tolerance=1e-6)[0] == "passed"
    assert math_result("#### 0.33", "1/3", math_tolerance=1e-6)[0] == "math_answer_mismatch"
    assert math_result("#### 0.33", "1/3", math_tolerance=0.01)[0] == "passed"


def test_a_solution_without_a_final_answer_is_math_answer_missing() -> None:
    rule, _ = math_result("I am not sure how to solve this.", "7")
    assert rule == "math_answer_missing"
    assert math_result(None, "7")[0] == "math_answer_missing"


def test_the_reference_may_be_a_whole_gsm8k_solution() -> None:
    assert math_result("#### 18", "16 - 3 - 4 = 9 eggs; 9 * 2 = 18\n#### 18")[0] == "passed"


def test_without_a_reference_only_the_annotations_are_checked() -> None:
    assert math_result("2+2=<<2+2=4>>4\n#### 4", None) == ("not_applicable", "no reference answer supplied")
    assert math_result("2+2=<<2+2=5>>5\n#### 5", None) == (
        "math_calculation_error",
        "calculator annotation 1 of 1 evaluates to 4, not 5",
    )


def test_annotation_results_may_be_rounded_to_the_decimals_shown() -> None:
    answer = "Each gets <<1/3=0.33>>0.33 and <<2/3=0.67>>0.67 of it.\n#### 1"
    assert math_result(answer, "1")[0] == "passed"
    # ...but a whole-number result must be exact.
    assert math_result("So <<7/2=3>>3\n#### 3", "3") == (
        "math_calculation_error",
        "calculator annotation 1 of 1 evaluates to 3.5, not 3",
    )


def test_annotation_matching_rule() -> None:
    assert annotation_matches(1 / 3, 0.33, "0.33", 1e-6)
    assert annotation_matches(2 / 3, 0.66, "0.66", 1e-6)  # truncated
    assert not annotation_matches(1 / 3, 0.3, "0.30", 1e-6)
    assert not annotation_matches(24, 25, "25", 1e-6)


def test_a_non_numeric_answer_is_compared_as_text_without_sympy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sympy", None)  # makes `import sympy` fail
    assert equivalent("x + 1", "x+1", 1e-6) == (True, "as text")
    assert equivalent("1 + x", "x + 1", 1e-6) == (False, "as text")
    assert math_result("\\boxed{y = 2x}", "y=2x") == (
        "passed",
        "final answer matches the reference (as text)",
    )


def test_a_non_numeric_mismatch_does_not_quote_either_answer() -> None:
    rule, detail = math_result("\\boxed{turquoise}", "magenta")
    assert rule == "math_answer_mismatch"
    assert "turquoise" not in detail and "magenta" not in detail


def test_with_sympy_expressions_are_compared_symbolically() -> None:
    pytest.importorskip("sympy")
    assert equivalent("1 + x", "x + 1", 1e-6) == (True, "symbolically")
    assert equivalent("\\frac{x}{2}", "0.5x", 1e-6) == (True, "symbolically")
    assert equivalent("2\\sqrt{2}", "\\sqrt{8}", 1e-6) == (True, "symbolically")
    assert equivalent("x^2", "2x", 1e-6) == (False, "symbolically")
    assert equivalent("North", "north", 1e-6) == (True, "as text")  # words are not variables


def test_arithmetic_evaluation_allows_arithmetic_and_nothing_else() -> None:
    assert evaluate_arithmetic("(16 - 3 - 4) * 2") == 18
    assert evaluate_arithmetic("-2 ** 2 + 7 // 2 + 7 % 4 + .5") == -4 + 3 + 3 + 0.5
    assert evaluate_arithmetic("1,000 * 05") == 5000  # thousands separator, leading zero
    for hostile in ["__import__('os').system('true')", "x + 1", "(1).real", "[1, 2]", "'a' * 3", "True + 1"]:
        with pytest.raises(ValueError):
            evaluate_arithmetic(hostile)
    with pytest.raises(OverflowError):
        evaluate_arithmetic("9 ** 9 ** 9")
    with pytest.raises(ZeroDivisionError):
        evaluate_arithmetic("1 / 0")


def test_an_annotation_that_divides_by_zero_is_a_calculation_error() -> None:
    assert math_result("<<5/0=0>>0\n#### 0", "0") == (
        "math_calculation_error",
        "calculator annotation 1 of 1 cannot be evaluated (division by zero)",
    )


# ------------------------------------------------------------------------------------------------
# The stage


def test_chat_and_tool_records_pass_through_as_not_applicable() -> None:
    rows = [record("x:0", "chat", "Hello!"), record("x:1", "tool", "{}"), record("x:2", "poetry", "Roses")]
    result = verify(rows)
    assert verdicts(result) == {
        "x:0": ("not_applicable", "chat records are not verified"),
        "x:1": ("not_applicable", "tool records are not verified"),
        "x:2": ("not_applicable", "no verifier for this task kind"),
    }
    assert result.counters["not_applicable"] == 3


def test_a_mixed_batch_keeps_input_order_counts_outcomes_and_conserves_records() -> None:
    rows = [
        record("r:0", "code", ADD, tests=ADD_TESTS),
        record("r:1", "math", "#### 5", reference="4"),
        record("r:2", "chat", "Hi"),
        record("r:3", "code", "def add(a, b):\n    return a - b\n", tests=ADD_TESTS),
        record("r:4", "math", "#### 4", reference="4"),
        record("r:5", "code", ADD, tests=None),
    ]
    frame = conform(pl.DataFrame(rows)).with_columns(pl.lit("kept").alias("previous_stage_column"))
    result = Verifier(VerifyConfig()).run(frame)
    result.check_conservation()
    assert result.kept["record_id"].to_list() == ["r:0", "r:2", "r:4", "r:5"]
    assert result.kept.columns == [*frame.columns, "verdict", "verdict_detail"]
    assert result.rejected["record_id"].to_list() == ["r:1", "r:3"]
    assert result.rejected["source_line"].to_list() == [2, 4]
    assert {k: result.counters[k] for k in ("code.passed", "code.failed", "math.passed", "math.failed")} == {
        "code.passed": 1,
        "code.failed": 1,
        "math.passed": 1,
        "math.failed": 1,
    }
    assert result.counters["not_applicable"] == 2
    again = Verifier(VerifyConfig()).run(frame)
    assert again.kept.equals(result.kept) and again.rejected.equals(result.rejected)
    assert again.counters == result.counters


def test_an_empty_batch_is_an_empty_result() -> None:
    result = Verifier(VerifyConfig()).run(conform(pl.DataFrame(schema={"record_id": pl.String})))
    assert (result.rows_in, result.kept.height, result.rejected.height) == (0, 0, 0)
    assert result.counters["code.passed"] == 0
