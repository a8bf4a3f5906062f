"""Code records: the answer's code runs with its unit tests in the sandbox."""

from __future__ import annotations

import warnings
from collections import Counter

import polars as pl

from thresher.config import VerifyConfig
from thresher.sandbox import Sandbox, SandboxLimits, SandboxResult
from thresher.verification.outcomes import OUTCOME_SCHEMA, ROW, last_assistant_content

# A fenced block: opening fence with its info string, body, closing fence (or end of text, so a
# truncated answer still yields its code). Matching all fences left to right pairs them correctly,
# whatever their language.
_FENCE = r"(?s)```([^\n`]*)\n(.*?)(?:```|\z)"
_PYTHON_FENCE_LANGS = ["", "python", "py", "python3"]
# Printed after the tests: a program that exits 0 without it skipped (some of) its tests, e.g.
# through sys.exit() in the solution's ``if __name__ == "__main__":`` block.
COMPLETION_MARKER = "__thresher_tests_completed__"
_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"


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


class CodeVerifier:
    """Executes each code answer followed by its unit tests in the sandbox."""

    def __init__(self, config: VerifyConfig) -> None:
        self.config = config
        self.sandbox = Sandbox(SandboxLimits(config.timeout_seconds, config.memory_mb))

    def run(self, frame: pl.DataFrame, counters: Counter[str]) -> pl.DataFrame:
        """Outcomes (``OUTCOME_SCHEMA``) for code records of ``frame`` (which has ``ROW``)."""
        prepared = frame.select(
            ROW,
            extract_code(last_assistant_content()).alias("code"),
            complete_tests(pl.col("tests"), pl.col("entry_point")).alias("tests"),
        ).with_columns(has_tests=pl.col("tests").str.strip_chars().fill_null("") != "")
        no_tests = prepared.filter(~pl.col("has_tests")).select(
            ROW,
            verdict=pl.lit("not_applicable"),
            rule=pl.lit(None, pl.String),
            verdict_detail=pl.lit("no unit tests supplied"),
        )
        counters["not_applicable"] += no_tests.height
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
        runnable = testable.filter(pl.col("code").is_not_null()).with_columns(
            program=pl.concat_str(
                [
                    pl.col("code"),
                    pl.lit("\n\n"),
                    pl.col("tests"),
                    pl.lit(f"\n\nprint({COMPLETION_MARKER!r})\n"),
                ]
            ),
            # Program line where the tests start (Python counts \r\n, \r and \n as one line break).
            tests_from=pl.col("code").str.count_matches(r"\r\n|\r|\n") + 3,
        )
        rows = runnable[ROW].to_list()
        programs = runnable["program"].to_list()
        tests_from = runnable["tests_from"].to_list()
        # compile() has no vectorized equivalent; it parses without executing, so it is safe and
        # cheap to do here, and saves a process per program that cannot run anyway.
        syntax = [
            _syntax_problem(program, start) for program, start in zip(programs, tests_from, strict=True)
        ]
        to_run = [i for i, problem in enumerate(syntax) if problem is None]
        results = self.sandbox.run_many([programs[i] for i in to_run], self.config.workers)
        counters["code.executed"] += len(results)
        outcomes: list[tuple[int, str, str | None, str]] = []
        for i, problem in enumerate(syntax):
            if problem is not None:
                outcomes.append((rows[i], "failed", "code_syntax_error", problem))
        for i, result in zip(to_run, results, strict=True):
            rule, detail = self._judge(result, tests_from[i])
            outcomes.append((rows[i], "failed" if rule else "passed", rule, detail))
        executed = pl.DataFrame(outcomes, schema=OUTCOME_SCHEMA, orient="row")
        out = pl.concat([no_tests, missing.cast(OUTCOME_SCHEMA), executed], how="vertical")
        failed = out.filter(pl.col("verdict") == "failed").height
        counters["code.failed"] += failed
        counters["code.passed"] += out.height - failed - no_tests.height
        return out

    def _judge(self, result: SandboxResult, tests_from: int) -> tuple[str | None, str]:
        """Ledger rule (None: passed) and detail for one sandbox run. Never quotes the program's
        output or exception message: those can contain record text."""
        config = self.config
        match result.status:
            case "passed" if COMPLETION_MARKER in result.stdout:
                return None, "all unit tests passed"
            case "passed":
                return "code_tests_failed", "the program exited before its unit tests finished"
            case "timeout":
                return "code_timeout", f"program did not finish within {config.timeout_seconds:g} s"
            case "memory_limit":
                return "code_memory_limit", f"program exceeded the {config.memory_mb} MB memory limit"
            case "syntax_error":
                return "code_syntax_error", f"code does not compile: {_where(result, tests_from)}"
            case "failed":
                if result.error_type is None:
                    return "code_tests_failed", f"unit tests failed: exit status {result.exit_code}"
                return "code_tests_failed", f"unit tests failed: {_where(result, tests_from)}"
            # The sandbox's own wording for these two, which carries no program text.
            case "output_limit":
                return "code_tests_failed", f"program exceeded its output limit ({result.error})"
            case _:
                return "code_tests_failed", f"program crashed ({result.error})"


def _where(result: SandboxResult, tests_from: int) -> str:
    """'AssertionError at test line 7' from a sandbox result (type name only, no message)."""
    error_type = (result.error_type or "error")[:80]
    return error_type + _line_phrase(result.error_line, tests_from)


def _line_phrase(line: int | None, tests_from: int) -> str:
    if line is None:
        return ""
    if line >= tests_from:
        return f" at test line {line - tests_from + 1}"
    return f" at solution line {line}"


def _syntax_problem(program: str, tests_from: int) -> str | None:
    """Why ``program`` does not compile (a ledger detail), or None when it does."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarning for invalid escapes: not our business
            compile(program, "<program>", "exec", dont_inherit=True)
    except SyntaxError as exc:  # includes IndentationError, TabError
        return f"code does not compile: {type(exc).__name__}{_line_phrase(exc.lineno, tests_from)}"
    except ValueError:
        return "code does not compile: it contains a null byte"
    except (RecursionError, MemoryError):
        return "code does not compile: it is nested too deeply for the parser"
    return None
