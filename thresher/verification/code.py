"""Code records: the answer's code is linted with ruff, then runs with its unit tests in the sandbox.

The tests do not simply follow the code in one program (where the first failure would hide the rest):
a small generated harness (``harness_program``) runs the solution, then every test as its own unit and
prints a JSON report, so a verdict says how many tests ran, how many failed and which one failed first
("2 of 5 tests failed; first: assert at test line 3 (AssertionError)"). What counts as a test is
decided here, in the parent, from the parsed tests (``plan_tests``): each top-level ``assert``, each call
of a test function the tests define (HumanEval's ``check(candidate)``), each top-level block that
asserts, each ``def test_*`` the tests do not call themselves and each method of a ``unittest.TestCase``.

ruff runs once per batch over all answers (``RuffLinter``); findings of ``LintConfig.reject`` rules
reject a record before it runs, the others are counted. Every check also carries ``feedback``, the
failing source lines and exception message, for the model that revises the code
(``thresher.verification.revision``); the ledger gets only rule codes, counts, line numbers and
exception types.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import marshal
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import CodeType
from typing import TYPE_CHECKING, Any, TypeVar

import polars as pl

from thresher.config import LintConfig, VerifyConfig
from thresher.sandbox import Sandbox, SandboxLimits, SandboxResult
from thresher.verification.outcomes import OUTCOME_SCHEMA, ROW, last_assistant_content

if TYPE_CHECKING:
    from thresher.verification.revision import CodeReviser

# A fenced block: opening fence with its info string, body, closing fence (or end of text, so a
# truncated answer still yields its code). Matching all fences left to right pairs them correctly,
# whatever their language.
_FENCE = r"(?s)```([^\n`]*)\n(.*?)(?:```|\z)"
_PYTHON_FENCE_LANGS = ["", "python", "py", "python3"]
_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"
# Python counts \r\n, \r and \n as line breaks (str.splitlines knows more).
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# File names of the solution and the tests in the harness's tracebacks.
SOLUTION_FILE = "<solution>"
TESTS_FILE = "<tests>"
T = TypeVar("T")

# Counted, never rejected (unless LintConfig.reject names them too): pyflakes, comparisons to
# None/True, bare excepts and type comparisons, and E9 (a file ruff cannot read).
COUNTED_LINT_RULES = ("E71", "E72", "E9", "F")
LINT_TIMEOUT_SECONDS = 300.0
# The harness report must fit in the stdout tail the sandbox keeps (4,096 characters): at most this
# many failures, names and type names cut to 100 characters, the first message to 300.
MAX_REPORTED_FAILURES = 10

CODE_TEST_RESULTS_SCHEMA: dict[str, pl.DataType] = {
    "record_id": pl.String,
    "tests_run": pl.Int64,
    "tests_passed": pl.Int64,
    # The first failing test ("assert at test line 3", "check", "TestAdd.test_negative").
    "failed_test": pl.String,
    "error_type": pl.String,
    "lint_findings": pl.Int64,
    "lint_codes": pl.List(pl.String),
    # Revisions behind the checked code (0: the answer as it came).
    "attempt": pl.Int64,
}


def extract_code(content: pl.Expr) -> pl.Expr:
    """The code of an answer: its last ```python (or untagged) fenced block, else the whole text.

    An answer whose fences are all in other languages has no Python code (null), nor has an empty one.
    """
    blocks = content.str.extract_all(_FENCE)
    lang = pl.element().str.extract(_FENCE, 1).str.extract(r"^\s*(\S*)", 1).str.to_lowercase()
    python_block = blocks.list.eval(pl.element().filter(lang.is_in(_PYTHON_FENCE_LANGS))).list.last()
    code = pl.when(blocks.list.len() == 0).then(content).otherwise(python_block.str.extract(_FENCE, 2))
    return pl.when(code.str.strip_chars() != "").then(code)


def complete_tests(tests: pl.Expr, entry_point: pl.Expr) -> pl.Expr:
    """Tests that actually run: HumanEval-shaped tests define ``check(candidate)`` but the dataset
    keeps the ``check(<entry_point>)`` call separate, so it is appended when missing."""
    defines_check = tests.str.contains(r"(?m)^def check\(")
    calls_check = tests.str.contains(r"(?m)^check\(")
    can_call = entry_point.str.contains(_IDENTIFIER).fill_null(False)
    call = pl.concat_str([pl.lit("\n\ncheck("), entry_point, pl.lit(")\n")])
    return pl.when(defines_check & ~calls_check & can_call).then(tests + call).otherwise(tests)


def first_user_content() -> pl.Expr:
    """Content of the first user message of each record (null when there is none): the task."""
    user = pl.element().struct.field("role") == "user"
    return pl.col("messages").list.eval(pl.element().filter(user)).list.first().struct.field("content")


# ------------------------------------------------------------------------------------------------
# Splitting the tests into units


@dataclass(frozen=True)
class HarnessUnit:
    """One step of the harness.

    ``kind``: "setup" (runs; a failure fails the record but is not a test), "test" (a top-level
    statement run as one test), "function" (a ``def test_*`` called after all statements ran, as
    pytest would) or "testcase" (a ``unittest.TestCase`` run by unittest, each method one test).
    ``code`` is the statement compiled (setup and test), None for the deferred kinds.
    """

    kind: str
    name: str
    line: int
    code: CodeType | None = None


def plan_tests(tree: ast.Module) -> list[HarnessUnit]:
    """The harness's units for parsed tests: statements in source order, then deferred tests in
    definition order. Setup statements (imports, helpers, assignments) run where they stand, so an
    assert sees exactly the state it would in a plain run of the tests. Raises SyntaxError for a
    statement that does not compile (``return`` outside a function, say)."""
    statements = list(_top_level(tree))
    functions = {node.name: node for node in statements if isinstance(node, ast.FunctionDef)}
    units: list[HarnessUnit] = []
    called: set[str] = set()
    for node in statements:
        if _calls_unittest_main(node):
            continue  # the harness runs the TestCases itself; unittest.main() would exit
        callee = _called_name(node)
        if isinstance(node, ast.Assert):
            kind, name = "test", f"assert at test line {node.lineno}"
        elif callee in functions and (
            callee == "check" or callee.startswith("test") or _asserts(functions[callee].body)
        ):
            called.add(callee)
            kind, name = "test", callee
        elif _asserts([node]):
            kind, name = "test", f"test at test line {node.lineno}"
        else:
            kind, name = "setup", f"setup at test line {node.lineno}"
        # optimize=0: asserts must stay even if this process runs with -O.
        code = compile(ast.Module([node], []), TESTS_FILE, "exec", dont_inherit=True, optimize=0)
        units.append(HarnessUnit(kind, name, node.lineno, code))
    deferred = [
        HarnessUnit("function", node.name, node.lineno)
        for node in statements
        if isinstance(node, ast.FunctionDef)
        and node.name.startswith("test")
        and node.name not in called
        and _takes_no_arguments(node)
    ]
    testcases: set[str] = set()  # TestCase classes, and classes derived from them
    for node in statements:
        if isinstance(node, ast.ClassDef) and any(
            name.endswith("TestCase") or name in testcases for name in map(_base_name, node.bases)
        ):
            testcases.add(node.name)
            deferred.append(HarnessUnit("testcase", node.name, node.lineno))
    return units + sorted(deferred, key=lambda unit: unit.line)


def _top_level(tree: ast.Module) -> Iterator[ast.stmt]:
    """Top-level statements; an ``if __name__ == "__main__":`` block's body counts as top level (the
    tests are not the program's ``__main__``)."""
    for node in tree.body:
        if _is_main_guard(node):
            yield from node.body
        else:
            yield node


def _is_main_guard(node: ast.stmt) -> bool:
    if not isinstance(node, ast.If) or node.orelse or not isinstance(node.test, ast.Compare):
        return False
    test = node.test
    if len(test.ops) != 1 or not isinstance(test.ops[0], ast.Eq):
        return False
    sides = [test.left, test.comparators[0]]
    return any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides) and any(
        isinstance(s, ast.Constant) and s.value == "__main__" for s in sides
    )


def _called_name(node: ast.stmt) -> str | None:
    """``f`` for an expression statement ``f(...)``."""
    if (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Name)
    ):
        return node.value.func.id
    return None


def _calls_unittest_main(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Attribute)
        and node.value.func.attr == "main"
        and isinstance(node.value.func.value, ast.Name)
        and node.value.func.value.id == "unittest"
    )


def _asserts(body: Sequence[ast.stmt]) -> bool:
    """Whether running ``body`` executes an ``assert`` of its own (not one in a function or class it
    defines). Iterative: deeply nested code must not exhaust the recursion limit."""
    stack: list[ast.AST] = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Assert):
            return True
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            stack.extend(ast.iter_child_nodes(node))
    return False


def _takes_no_arguments(function: ast.FunctionDef) -> bool:
    """Callable as ``f()``: pytest-style tests with fixtures or parameters cannot be run here."""
    args = function.args
    positional = len(args.posonlyargs) + len(args.args)
    return positional == len(args.defaults) and all(d is not None for d in args.kw_defaults)


def _base_name(base: ast.expr) -> str:
    if isinstance(base, ast.Name):
        return base.id
    return base.attr if isinstance(base, ast.Attribute) else ""


# ------------------------------------------------------------------------------------------------
# The harness

# Runs in the sandbox: the solution in a fresh ``__main__`` module, then each unit; writes the report
# straight to file descriptor 1 after flushing the program's own output, then leaves at once
# (``os._exit``: no waiting on threads the solution left running). A solution that exits first
# (sys.exit, os._exit) leaves no report; a MemoryError is re-raised so that the sandbox reports the
# memory limit.
HARNESS = r'''"""Test harness of thresher's verified stage (generated; standard library only)."""
import marshal
import os
import sys
import types


def locate(exc):
    """("solution" or "test", line) of the innermost traceback frame in the solution or the tests."""
    found = [None, None]
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename in (SOLUTION_FILE, TESTS_FILE):
            found = ["solution" if filename == SOLUTION_FILE else "test", tb.tb_lineno]
        tb = tb.tb_next
    return found


class Report:
    def __init__(self, max_failures):
        self.max_failures = max_failures
        self.tests_run = self.tests_passed = self.tests_failed = 0
        self.failures = []
        self.message = None
        self.solution_error = None

    def note(self, exc):
        """Type name, where and line of an exception; the first exception's message is kept."""
        if self.message is None:
            try:
                self.message = str(exc)[:300]
            except Exception:
                self.message = ""
        return [type(exc).__name__[:100], *locate(exc)]

    def fail(self, unit, exc, name=None):
        if len(self.failures) < self.max_failures:
            self.failures.append([unit, None if name is None else name[:100], *self.note(exc)])

    def test(self, unit, body, name=None):
        self.tests_run += 1
        try:
            body()
        except MemoryError:
            raise
        except Exception as exc:
            self.tests_failed += 1
            self.fail(unit, exc, name)
        else:
            self.tests_passed += 1

    def emit(self, marker):
        """Write the report after everything the program printed, and end the program."""
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except Exception:
                pass
        report = {
            "tests_run": self.tests_run,
            "tests_passed": self.tests_passed,
            "tests_failed": self.tests_failed,
            "failures": self.failures,
            "message": self.message,
            "solution_error": self.solution_error,
        }
        data = ("\n" + marker + repr(report) + "\n").encode("utf-8", "backslashreplace")
        while data:
            data = data[os.write(1, data):]
        os._exit(0)


def run_testcase(report, unit, case, class_name):
    """Each test method of a unittest.TestCase as one test (setUpClass errors count as one); a class
    only named like one is no test."""
    import unittest

    if not (isinstance(case, type) and issubclass(case, unittest.TestCase)):
        return

    class Collector(unittest.TestResult):
        current = None

        def startTest(self, test):
            super().startTest(test)
            self.current, self.error, self.skip = test, None, False

        def stopTest(self, test):
            super().stopTest(test)
            if not self.skip:
                name = class_name + "." + test._testMethodName
                report.tests_run += 1
                if self.error is None:
                    report.tests_passed += 1
                else:
                    report.tests_failed += 1
                    report.fail(unit, self.error, name)
            self.current = None

        def note(self, test, err):
            if self.current is None:  # a class or module fixture failed outside any test
                report.tests_run += 1
                report.tests_failed += 1
                report.fail(unit, err[1], class_name)
            elif self.error is None:
                self.error = err[1]

        def addError(self, test, err):
            self.note(test, err)

        def addFailure(self, test, err):
            self.note(test, err)

        def addSubTest(self, test, subtest, err):
            if err is not None:
                self.note(test, err)

        def addSkip(self, test, reason):
            self.skip = True

        def addUnexpectedSuccess(self, test):
            self.note(test, (None, AssertionError("unexpected success"), None))

    unittest.defaultTestLoader.loadTestsFromTestCase(case).run(Collector())


def main(marker, solution, units, max_failures):
    report = Report(max_failures)
    # The solution gets a fresh __main__ module of its own: harness names cannot clash with its names.
    module = types.ModuleType("__main__")
    sys.modules["__main__"] = module
    namespace = module.__dict__
    try:
        exec(compile(solution, SOLUTION_FILE, "exec", dont_inherit=True), namespace)
    except MemoryError:
        raise
    except Exception as exc:
        report.solution_error = report.note(exc)
        report.emit(marker)
    for unit, (kind, name, code) in enumerate(marshal.loads(units)):
        if kind == "function":
            report.test(unit, lambda name=name: namespace[name]())
        elif kind == "testcase":
            run_testcase(report, unit, namespace.get(name), name)
        elif kind == "test":
            report.test(unit, lambda code=code: exec(code, namespace))
        else:
            try:
                exec(code, namespace)
            except MemoryError:
                raise
            except Exception as exc:
                report.fail(unit, exc)
    report.emit(marker)
'''


def report_marker(solution: str, tests: str) -> str:
    """The line prefix of a program's report: derived from its code, so that the program cannot
    print a report of its own without reading its source."""
    digest = hashlib.sha256(f"{solution}\0{tests}".encode("utf-8", "surrogatepass")).hexdigest()
    return f"__thresher_report_{digest[:16]}__ "


def harness_program(solution: str, tests: str, units: Sequence[HarnessUnit]) -> str:
    """The program the sandbox runs: the harness and one call of it with the record's solution and its
    test units, compiled here (``marshal``: the sandbox runs this same interpreter) so that the child
    needs neither ``ast`` nor ``json``, whose imports would cost more than the tests themselves."""
    plan = marshal.dumps(tuple((unit.kind, unit.name, unit.code) for unit in units))
    marker = report_marker(solution, tests)
    return (
        f"{HARNESS}\n\nSOLUTION_FILE, TESTS_FILE = {SOLUTION_FILE!r}, {TESTS_FILE!r}\n"
        f"main({marker!r}, {solution!r}, {plan!r}, {MAX_REPORTED_FAILURES})\n"
    )


def read_report(stdout: str, marker: str) -> dict[str, Any] | None:
    """The harness report (a Python literal) in a program's output: the last line starting with the
    marker; None when the program stopped before printing one."""
    for line in reversed(stdout.split("\n")):
        if line.startswith(marker):
            try:
                report = ast.literal_eval(line[len(marker) :])
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                return None
            return report if isinstance(report, dict) else None
    return None


# ------------------------------------------------------------------------------------------------
# Lint


@dataclass(frozen=True)
class LintFinding:
    """One ruff finding in one source."""

    code: str  # "F821"
    name: str  # ruff's rule name, "undefined-name"
    line: int
    message: str  # ruff's message: may quote identifiers of the code; for the model, not the ledger


def find_ruff() -> Path | None:
    """The ruff binary of this environment (beside the interpreter), else one on PATH."""
    beside = Path(sys.executable).parent / "ruff"
    if beside.is_file():
        return beside
    found = shutil.which("ruff")
    return Path(found) if found else None


class RuffLinter:
    """``ruff check`` over many sources in one process."""

    def __init__(self, binary: Path, config: LintConfig) -> None:
        self.binary = binary
        self.select = sorted({*config.reject, *COUNTED_LINT_RULES})

    def command(self, folder: Path) -> list[str]:
        target = f"py{sys.version_info.major}{sys.version_info.minor}"
        return [
            str(self.binary),
            "check",
            "--output-format=json",
            "--no-cache",
            "--isolated",
            "--no-respect-gitignore",
            "--ignore-noqa",  # an answer does not get to exempt itself
            "--exit-zero",
            f"--target-version={target}",
            f"--select={','.join(self.select)}",
            str(folder),
        ]

    def lint(self, sources: Sequence[str]) -> list[list[LintFinding]] | str:
        """Findings per source in line order, or why ruff could not lint them (a ledger-safe phrase)."""
        if not sources:
            return []
        with tempfile.TemporaryDirectory(prefix="thresher-lint-") as tmp:
            folder = Path(tmp)
            for index, source in enumerate(sources):
                (folder / f"{index}.py").write_text(source, encoding="utf-8", errors="surrogatepass")
            try:
                proc = subprocess.run(
                    self.command(folder),
                    cwd=folder,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=LINT_TIMEOUT_SECONDS,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                return f"ruff did not finish within {LINT_TIMEOUT_SECONDS:g} s"
            except OSError:
                return "ruff could not be started"
        if proc.returncode != 0:
            return f"ruff failed with exit status {proc.returncode}"
        try:
            raw = json.loads(proc.stdout)
            found: list[list[LintFinding]] = [[] for _ in sources]
            for item in raw:
                code = item.get("code")
                # Syntax is judged by the interpreter that runs the code (compile), not by ruff.
                if not code or code == "invalid-syntax":
                    continue
                finding = LintFinding(code, item.get("name") or "", item["location"]["row"], item["message"])
                found[int(Path(item["filename"]).stem)].append(finding)
        except (ValueError, KeyError, TypeError, IndexError):
            return "ruff output could not be read"
        return [sorted(findings, key=lambda f: (f.line, f.code)) for findings in found]


# ------------------------------------------------------------------------------------------------
# Checking


@dataclass(frozen=True)
class CodeCheck:
    """What checking one code answer found.

    ``rule`` is None unless the verdict is "failed"; ``detail`` is ledger-safe. ``feedback`` (the
    failing source lines and the exception or ruff message) is for the model revising the code, never
    for the ledger. ``revisable``: a new version of the code could fix it (not when the tests
    themselves are broken, nor for the memory limit).
    """

    verdict: str
    rule: str | None
    detail: str
    tests_run: int | None = None
    tests_passed: int | None = None
    failed_test: str | None = None
    error_type: str | None = None
    lint_codes: tuple[str, ...] = ()
    lint_skipped: str | None = None
    feedback: str = ""
    revisable: bool = False

    def final_detail(self, revisions: int) -> str:
        """The verdict detail after ``revisions`` revisions: for a kept record with the lint facts."""
        if self.rule is not None:
            return self.detail + (f"; still failing after {revisions} revision(s)" if revisions else "")
        detail = self.detail + (f" after {revisions} revision(s)" if revisions else "")
        if self.lint_codes:
            n = len(self.lint_codes)
            detail += f"; ruff: {n} finding{'s' * (n != 1)} ({', '.join(sorted(set(self.lint_codes)))})"
        if self.lint_skipped:
            detail += f"; lint skipped ({self.lint_skipped})"
        return detail


@dataclass
class CodeRun:
    """The code records of one batch, judged."""

    outcomes: pl.DataFrame  # OUTCOME_SCHEMA, one row per code record
    answers: pl.DataFrame  # ROW, answer: the revised replies of records kept after a revision
    test_results: pl.DataFrame  # CODE_TEST_RESULTS_SCHEMA, one row per checked record
    attempts: pl.DataFrame | None  # the reviser's attempts table (None without a revision loop)


@dataclass(frozen=True)
class _Prepared:
    """A record ready to run, or its check already decided (syntax error, no tests)."""

    decided: CodeCheck | None
    units: tuple[HarnessUnit, ...] = ()


class CodeVerifier:
    """Lints each code answer, then executes it with its unit tests in the sandbox."""

    def __init__(self, config: VerifyConfig) -> None:
        self.config = config
        self.sandbox = Sandbox(SandboxLimits(config.timeout_seconds, config.memory_mb))
        self.reject = tuple(config.lint.reject)
        binary = find_ruff() if config.lint.enabled else None
        self.linter = RuffLinter(binary, config.lint) if binary is not None else None

    def run(self, frame: pl.DataFrame, counters: Counter[str], reviser: CodeReviser | None = None) -> CodeRun:
        """Outcomes for the code records of ``frame`` (which has ``ROW``); failing ones go through
        ``reviser`` first when one is given."""
        prepared = frame.select(
            ROW,
            "record_id",
            extract_code(last_assistant_content()).alias("code"),
            complete_tests(pl.col("tests"), pl.col("entry_point")).alias("tests"),
            first_user_content().alias("task"),
        ).with_columns(has_tests=pl.col("tests").str.strip_chars().fill_null("") != "")
        no_tests = prepared.filter(~pl.col("has_tests")).select(
            ROW,
            verdict=pl.lit("not_applicable"),
            rule=pl.lit(None, pl.String),
            verdict_detail=pl.lit("no unit tests supplied"),
        )
        testable = prepared.filter(pl.col("has_tests"))
        missing = testable.filter(pl.col("code").is_null()).select(
            ROW,
            verdict=pl.lit("failed"),
            rule=pl.lit("code_missing"),
            verdict_detail=pl.lit(
                "no Python code found in the last assistant message (no ```python or untagged "
                "fenced block, or an empty answer)"
            ),
        )
        checkable = testable.filter(pl.col("code").is_not_null())
        checks = self.check(checkable["code"].to_list(), checkable["tests"].to_list(), counters)
        revisions: list[int] = [0] * len(checks)
        answers: list[str | None] = [None] * len(checks)
        attempts: pl.DataFrame | None = None
        if reviser is not None:
            revised = reviser.revise(
                checkable.select("record_id", "task", "code", "tests"), checks, self, counters
            )
            checks, revisions, answers, attempts = (
                revised.checks,
                revised.attempts,
                revised.answers,
                revised.table,
            )
        checked = pl.DataFrame(
            [
                (row, check.verdict, check.rule, check.final_detail(n))
                for row, check, n in zip(checkable[ROW], checks, revisions, strict=True)
            ],
            schema=OUTCOME_SCHEMA,
            orient="row",
        )
        outcomes = pl.concat([no_tests.cast(OUTCOME_SCHEMA), missing.cast(OUTCOME_SCHEMA), checked])
        for check in checks:
            counters.update(f"code.lint.{code}" for code in check.lint_codes)
            counters["code.lint_skipped"] += check.lint_skipped is not None
        counters["code.failed"] += outcomes.filter(pl.col("verdict") == "failed").height
        counters["code.passed"] += outcomes.filter(pl.col("verdict") == "passed").height
        revised_answers = pl.DataFrame(
            {ROW: checkable[ROW], "answer": answers}, schema={ROW: pl.UInt32, "answer": pl.String}
        ).filter(pl.col("answer").is_not_null())
        return CodeRun(
            outcomes, revised_answers, _test_results(checkable["record_id"], checks, revisions), attempts
        )

    def check(self, codes: Sequence[str], tests: Sequence[str], counters: Counter[str]) -> list[CodeCheck]:
        """Check each code against its tests: compile both, ruff over all of them in one run, then
        one sandboxed harness run per code that passed lint."""
        prepared = [_prepare(code, test) for code, test in zip(codes, tests, strict=True)]
        checks = {i: p.decided for i, p in enumerate(prepared) if p.decided is not None}
        pending = [i for i, p in enumerate(prepared) if p.decided is None]
        findings, lint_skipped = self._lint([codes[i] for i in pending])
        to_run: list[tuple[int, list[LintFinding]]] = []
        for i, found in zip(pending, findings, strict=True):
            rejecting = [f for f in found if f.code.startswith(self.reject)]
            if rejecting:
                checks[i] = _lint_failure(rejecting, found, codes[i])
            else:
                to_run.append((i, found))
        programs = [harness_program(codes[i], tests[i], prepared[i].units) for i, _ in to_run]
        results = self.sandbox.run_many(programs, self.config.workers)
        counters["code.executed"] += len(results)
        for (i, found), result in zip(to_run, results, strict=True):
            report = read_report(result.stdout, report_marker(codes[i], tests[i]))
            judged = self._judge(result, report, prepared[i].units, codes[i], tests[i])
            checks[i] = replace(judged, lint_codes=tuple(f.code for f in found), lint_skipped=lint_skipped)
        return [checks[i] for i in range(len(codes))]

    def _lint(self, sources: Sequence[str]) -> tuple[list[list[LintFinding]], str | None]:
        """ruff's findings per source, and why lint was skipped (None: it ran, or is turned off)."""
        none: list[list[LintFinding]] = [[] for _ in sources]
        if not self.config.lint.enabled:
            return none, None
        if self.linter is None:
            return none, "ruff not found"
        found = self.linter.lint(sources)
        return (none, found) if isinstance(found, str) else (found, None)

    def _judge(
        self,
        result: SandboxResult,
        report: dict[str, Any] | None,
        units: Sequence[HarnessUnit],
        code: str,
        tests: str,
    ) -> CodeCheck:
        """The check of one sandbox run. Never puts the program's output or exception messages in
        the detail: those can contain record text."""
        config = self.config
        if result.status in ("passed", "failed") and report is not None:
            # A malformed report was not written by the harness: judged as if there were none.
            with contextlib.suppress(KeyError, IndexError, TypeError, ValueError):
                return _judge_report(report, units, code, tests)
        match result.status:
            case "timeout":
                within = f"within {config.timeout_seconds:g} s"
                return _failure(
                    "code_timeout",
                    f"program did not finish {within}",
                    f"The program did not finish {within}: the solution never returns or is too slow.",
                )
            case "memory_limit":
                limit = f"the {config.memory_mb} MB memory limit"
                return CodeCheck("failed", "code_memory_limit", f"program exceeded {limit}")
            case "output_limit":
                # The sandbox's own wording (here and for crashes), which carries no program text.
                return _failure(
                    "code_tests_failed",
                    f"program exceeded its output limit ({result.error})",
                    f"The program printed too much ({result.error}); the solution must not print.",
                )
            case "passed" | "failed":
                if result.error_type:
                    how = f"stopped with {result.error_type[:80]}"
                else:
                    how = f"exited with status {result.exit_code}" if result.exit_code else "exited"
                return _failure(
                    "code_tests_failed",
                    f"the program {how} before its unit tests finished",
                    f"The program {how} before its unit tests finished: the solution must not call "
                    "sys.exit(), exit() or os._exit(), nor run code under "
                    '`if __name__ == "__main__":` that does.',
                )
            case _:
                crashed = f"program crashed ({result.error})"
                return _failure("code_tests_failed", crashed, f"The {crashed}.")


def _failure(rule: str, detail: str, feedback: str, **facts: Any) -> CodeCheck:
    """A failed check that a revised version of the code could pass."""
    return CodeCheck("failed", rule, detail, feedback=feedback, revisable=True, **facts)


def _prepare(code: str, tests: str) -> _Prepared:
    """Compile the code, parse the tests and split them into units (``plan_tests``).

    A per-record Python step: parsing and compiling have no vectorized equivalent. Neither executes
    anything, so both are safe here, cheap next to a process start, and spare a process for programs
    that cannot run anyway.
    """
    solution = _compiled(code, "solution", lambda: compile(code, SOLUTION_FILE, "exec", dont_inherit=True))
    if isinstance(solution, CodeCheck):
        return _Prepared(solution)
    units = _compiled(tests, "test", lambda: plan_tests(ast.parse(tests)))
    if isinstance(units, CodeCheck):
        return _Prepared(replace(units, revisable=False))  # a new solution cannot mend its tests
    if all(unit.kind == "setup" for unit in units):
        no_test = "the unit tests contain no test (no assert, test function, TestCase or check call)"
        return _Prepared(CodeCheck("not_applicable", None, no_test))
    return _Prepared(None, tuple(units))


def _compiled(source: str, where: str, build: Callable[[], T]) -> T | CodeCheck:
    """What ``build`` makes of ``source``, or the failed check saying why the source does not compile."""
    what = "code" if where == "solution" else "tests"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarning for invalid escapes: not our business
            return build()
    except SyntaxError as exc:  # includes IndentationError, TabError
        kind = type(exc).__name__
        at = f" at {where} line {exc.lineno}" if exc.lineno else ""
        return _failure(
            "code_syntax_error",
            f"code does not compile: {kind}{at}",
            f"The {what} do not compile: {kind}{at}: {exc.msg}{_show_line(source, exc.lineno)}",
            error_type=kind,
        )
    except ValueError:  # a null byte (Python 3.11; later versions raise SyntaxError)
        return _failure(
            "code_syntax_error",
            "code does not compile: it contains a null byte",
            f"The {what} contain a null byte.",
        )
    except (RecursionError, MemoryError):
        return _failure(
            "code_syntax_error",
            "code does not compile: it is nested too deeply for the parser",
            f"The {what} are nested too deeply for the Python parser.",
        )


def _lint_failure(rejecting: Sequence[LintFinding], findings: Sequence[LintFinding], code: str) -> CodeCheck:
    """code_lint_error for findings of rejected rules: the first named by code and rule name."""
    first = rejecting[0]
    more = f"; {len(rejecting) - 1} more rejected finding(s)" if len(rejecting) > 1 else ""
    feedback = "\n".join(
        f"ruff {f.code} ({f.name}) at line {f.line}: {f.message}{_show_line(code, f.line)}"
        for f in rejecting[:5]
    )
    return _failure(
        "code_lint_error",
        f"ruff {first.code} ({first.name.replace('-', ' ')}) at solution line {first.line}{more}",
        f"The linter rejects the code:\n{feedback}",
        lint_codes=tuple(f.code for f in findings),
    )


def _test_results(
    record_ids: pl.Series, checks: Sequence[CodeCheck], revisions: Sequence[int]
) -> pl.DataFrame:
    """The ``code_test_results`` side table: one row per checked record."""
    rows = [
        (
            record_id,
            check.tests_run,
            check.tests_passed,
            check.failed_test,
            check.error_type,
            len(check.lint_codes),
            list(check.lint_codes),
            n,
        )
        for record_id, check, n in zip(record_ids, checks, revisions, strict=True)
    ]
    return pl.DataFrame(rows, schema=CODE_TEST_RESULTS_SCHEMA, orient="row")


def _judge_report(report: dict[str, Any], units: Sequence[HarnessUnit], code: str, tests: str) -> CodeCheck:
    """The check from a harness report: counts, the first failure by name, type and line."""
    message = _scrub(report.get("message") or "")
    solution_error = report.get("solution_error")
    if solution_error:
        error_type, where, line = _checked_failure(solution_error)
        at = f" at {where} line {line}" if line else ""
        return _failure(
            "code_tests_failed",
            f"the solution raised {error_type}{at} before its tests ran",
            f"Running the solution itself raised {error_type}{at}: {message}{_show_line(code, line)}",
            error_type=error_type,
        )
    run, passed = int(report["tests_run"]), int(report["tests_passed"])
    failures = report.get("failures") or []
    if not failures and not run:
        return CodeCheck(
            "not_applicable", None, "no unit test ran (all skipped, or no real TestCase)", tests_run=0
        )
    if not failures:
        return CodeCheck(
            "passed", None, f"{passed} of {run} tests passed", tests_run=run, tests_passed=passed
        )
    unit_index, name, *rest = failures[0]
    error_type, where, line = _checked_failure(rest)
    unit = units[unit_index]
    name = unit.name if name is None else _checked_name(name)
    at = f" at {where} line {line}" if line and (where, line) != ("test", unit.line) else ""
    first = f"{name} ({error_type}{at})"
    failed = run - passed
    # The first failure can be a setup statement (an import the tests need, say) whose failure
    # fails the record even when every test passes.
    detail = (
        f"{failed} of {run} tests failed; first: {first}"
        if failed
        else f"{run} of {run} tests passed but {first} failed"
    )
    raised_in = _show_line(code if where == "solution" else tests, line) if at else ""
    located = "" if unit.name.endswith(f"test line {unit.line}") else f" (test line {unit.line})"
    feedback = (
        f"{failed} of {run} unit tests failed. The first failure is {name}{located}:"
        f"{_show_line(tests, unit.line)}\nIt raised {error_type}{': ' + message if message else ''}"
        + (f"\nat {where} line {line}:{raised_in}" if at else "")
    )
    return _failure(
        "code_tests_failed",
        detail,
        feedback,
        tests_run=run,
        tests_passed=passed,
        failed_test=name,
        error_type=error_type,
    )


def _checked_failure(failure: Sequence[Any]) -> tuple[str, str | None, int | None]:
    """(exception type, "solution" or "test", line) of a report, checked: the detail quotes the type,
    so a report the harness did not write (the program forged it) must not smuggle text in."""
    error_type, where, line = failure
    if where not in ("solution", "test", None) or not (line is None or type(line) is int):
        raise ValueError("not a harness report")
    return _checked_name(error_type), where, line


def _checked_name(name: object) -> str:
    """``name`` if it is a (dotted) Python identifier, as exception types and test names are."""
    if not isinstance(name, str) or not re.fullmatch(r"[^\W\d][\w.]*", name):
        raise ValueError("not a harness report")
    return name


def _show_line(source: str, line: int | None) -> str:
    """Line ``line`` of ``source``, indented on a line of its own ("" when there is none)."""
    lines = _LINE_BREAK.split(source)
    if not line or not 0 < line <= len(lines):
        return ""
    return "\n    " + lines[line - 1].strip()[:300]


def _scrub(message: str) -> str:
    """An exception message without memory addresses, so that revision prompts (and their cache
    keys) are the same on every run."""
    return re.sub(r"0x[0-9a-fA-F]{6,}", "0x...", message)
