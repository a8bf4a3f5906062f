"""The verified stage: run code answers against their unit tests and check math answers.

A finetuning record that teaches a wrong program or a wrong sum is worse than no record, and both
can be checked mechanically: code by executing it (in ``thresher.sandbox``) against the tests that
came with it, math by comparing the final answer with the reference and by re-doing the GSM8K
calculator annotations ``<<expr=result>>``. Records that cannot be checked (chat, tool use, code
without tests) pass through with verdict "not_applicable", never rejected for lack of evidence.

Kept records gain ``verdict`` ("passed" / "not_applicable") and ``verdict_detail``; rejected ones
get a ledger row with a rule and a detail that names exception types, line numbers and numbers,
never record text.
"""

from __future__ import annotations

import ast
import math
import operator
import re
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

import polars as pl

from thresher.config import VerifyConfig
from thresher.records import TaskKind
from thresher.sandbox import Sandbox, SandboxLimits, SandboxResult
from thresher.stage import STAGE_LEDGER_COLUMNS, StageResult

VERDICT_COLUMNS = ("verdict", "verdict_detail")
_ROW = "__verify_row"
# One outcome per input row: rule is null for kept records.
_OUTCOME_SCHEMA: dict[str, pl.DataType] = {
    _ROW: pl.UInt32,
    "verdict": pl.String,
    "rule": pl.String,
    "verdict_detail": pl.String,
}


def last_assistant_content() -> pl.Expr:
    """Content of the last assistant message of each record (null when there is none)."""
    assistant = pl.element().struct.field("role") == "assistant"
    return pl.col("messages").list.eval(pl.element().filter(assistant)).list.last().struct.field("content")


# ---------------------------------------------------------------------------------------------
# Code


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
        """Outcomes (``_OUTCOME_SCHEMA``) for code records of ``frame`` (which has ``_ROW``)."""
        prepared = frame.select(
            _ROW,
            extract_code(last_assistant_content()).alias("code"),
            complete_tests(pl.col("tests"), pl.col("entry_point")).alias("tests"),
        ).with_columns(has_tests=pl.col("tests").str.strip_chars().fill_null("") != "")
        no_tests = prepared.filter(~pl.col("has_tests")).select(
            _ROW,
            verdict=pl.lit("not_applicable"),
            rule=pl.lit(None, pl.String),
            verdict_detail=pl.lit("no unit tests supplied"),
        )
        counters["not_applicable"] += no_tests.height
        testable = prepared.filter(pl.col("has_tests"))
        missing = testable.filter(pl.col("code").is_null()).select(
            _ROW,
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
        rows = runnable[_ROW].to_list()
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
        executed = pl.DataFrame(outcomes, schema=_OUTCOME_SCHEMA, orient="row")
        out = pl.concat([no_tests, missing.cast(_OUTCOME_SCHEMA), executed], how="vertical")
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


# ---------------------------------------------------------------------------------------------
# Math


_HASH_ANSWER = r"####[ \t]*([^\n]*)"
# \boxed{...} with up to two levels of nested braces (\boxed{\frac{1}{2}}).
_BOXED = r"\\boxed\s*\{((?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*)\}"
_NUMBER = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+(?:\.\d+)?)?|-?\.\d+"
# A calculator annotation: <<expr=result>> with exactly one "=".
_ANNOTATION = r"<<([^<>\n=]*=[^<>\n=]*)>>"
# Decoration that does not change a value: currency, percent, LaTeX spacing and sizing, units.
_DECORATION = (
    r"\\text\s*\{[^{}]*\}|\\mathrm\s*\{[^{}]*\}|\\mbox\s*\{[^{}]*\}|\\left|\\right|\\[!,;: ]|\\?\$|\\?%|~"
)
_DIGITS = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?"
# A number, optionally a fraction, optionally followed by a unit word ("18 dollars", "3/4 cup").
_NUMERIC_ANSWER = rf"^([+-]?)\s*({_DIGITS})(?:\s*/\s*({_DIGITS}))?\s*(?:[A-Za-z][A-Za-z\s.'/-]*)?$"
_LATEX_FRACTION = rf"^([+-]?)\\frac\{{\s*({_DIGITS})\s*\}}\{{\s*({_DIGITS})\s*\}}$"


def final_answer(content: pl.Expr) -> pl.Expr:
    """The final answer of a math solution: GSM8K's '#### x', else the last \\boxed{x}, else the last
    number in the text (null when none of them is there)."""
    hashed = content.str.extract_all(_HASH_ANSWER).list.last().str.extract(_HASH_ANSWER, 1).str.strip_chars()
    boxed = content.str.extract_all(_BOXED).list.last().str.extract(_BOXED, 1).str.strip_chars()
    number = content.str.extract_all(_NUMBER).list.last()
    return pl.coalesce(_nonempty(hashed), _nonempty(boxed), number)


def reference_value(reference: pl.Expr) -> pl.Expr:
    """A reference answer as given, or its '#### x' / \\boxed{x} part when it is a whole solution."""
    hashed = reference.str.extract_all(_HASH_ANSWER).list.last().str.extract(_HASH_ANSWER, 1)
    boxed = reference.str.extract_all(_BOXED).list.last().str.extract(_BOXED, 1)
    return _nonempty(pl.coalesce(_nonempty(hashed), _nonempty(boxed), reference).str.strip_chars())


def _nonempty(expr: pl.Expr) -> pl.Expr:
    return pl.when(expr.str.strip_chars() != "").then(expr)


def numeric_value(answer: pl.Expr) -> pl.Expr:
    """An answer's value as a float when it is a plain number, fraction or number with a unit.

    "$1,450,000" -> 1450000, "50%" -> 50, "3/4" -> 0.75, "\\frac{3}{4}" -> 0.75, "18 dollars" -> 18;
    anything else (expressions, words, "1,5") -> null, left to the symbolic/text comparison.
    """
    text = (
        answer.str.replace_all(_DECORATION, "")
        .str.replace_all(r"\\[dt]frac", r"\frac")
        .str.strip_chars()
        .str.strip_chars_end(".")
        .str.strip_chars()
    )

    def parse(expr: pl.Expr) -> pl.Expr:
        return expr.str.replace_all(",", "", literal=True).cast(pl.Float64, strict=False)

    plain = text.str.extract_groups(_NUMERIC_ANSWER)
    latex = text.str.extract_groups(_LATEX_FRACTION)
    values = []
    for groups in (plain, latex):
        sign = pl.when(groups.struct.field("1") == "-").then(-1.0).otherwise(1.0)
        numerator = parse(groups.struct.field("2"))
        denominator = parse(groups.struct.field("3")).fill_null(1.0)
        values.append(sign * numerator / denominator)
    value = pl.coalesce(values)
    return pl.when(value.is_finite()).then(value)


# Float rounding allowance on top of the configured tolerance: 10**20/3 and its decimal expansion
# differ by more than 1e-6 in float64 although they are the same number.
_FLOAT_RELATIVE_SLACK = 1e-12


def numbers_match(a: pl.Expr, b: pl.Expr, tolerance: float) -> pl.Expr:
    """|a - b| <= tolerance (+ float rounding slack).

    Absolute, not relative: a relative 1e-6 would accept 1,450,001 for 1,450,000, and final answers
    are mostly exact integers where off-by-one is the error to catch.
    """
    slack = _FLOAT_RELATIVE_SLACK * pl.max_horizontal(a.abs(), b.abs())
    return (a - b).abs() <= tolerance + slack


class MathVerifier:
    """Checks final answers against references and re-evaluates calculator annotations."""

    def __init__(self, config: VerifyConfig) -> None:
        self.tolerance = config.math_tolerance

    def run(self, frame: pl.DataFrame, counters: Counter[str]) -> pl.DataFrame:
        """Outcomes (``_OUTCOME_SCHEMA``) for math records of ``frame`` (which has ``_ROW``)."""
        content = last_assistant_content()
        prepared = frame.select(
            _ROW,
            final_answer(content).alias("answer"),
            reference_value(pl.col("reference_answer")).alias("reference"),
            content.str.extract_all(_ANNOTATION)
            .list.eval(pl.element().str.extract(_ANNOTATION, 1))
            .fill_null([])
            .alias("annotations"),
        ).with_columns(
            answer_value=numeric_value(pl.col("answer")),
            reference_value=numeric_value(pl.col("reference")),
        )
        prepared = prepared.with_columns(
            numeric_match=numbers_match(pl.col("answer_value"), pl.col("reference_value"), self.tolerance)
        )
        outcomes = []
        for row in prepared.iter_rows(named=True):
            outcomes.append((row[_ROW], *self._judge(row, counters)))
        out = pl.DataFrame(outcomes, schema=_OUTCOME_SCHEMA, orient="row")
        counters["math.failed"] += out.filter(pl.col("verdict") == "failed").height
        counters["math.passed"] += out.filter(pl.col("verdict") == "passed").height
        counters["not_applicable"] += out.filter(pl.col("verdict") == "not_applicable").height
        return out

    def _judge(self, row: dict, counters: Counter[str]) -> tuple[str, str | None, str]:
        """(verdict, rule, detail) of one record whose extraction was done vectorized above.

        A Python loop over records, because two parts have no vectorized form: evaluating
        calculator annotations (a restricted ast evaluator, the only safe way to do arithmetic on
        untrusted text) and symbolic comparison; the common all-numeric case is decided above.
        """
        annotation_problem = self._check_annotations(row["annotations"], counters)
        if row["reference"] is None:
            if annotation_problem:
                return "failed", "math_calculation_error", annotation_problem
            return "not_applicable", None, "no reference answer supplied"
        if row["answer"] is None:
            return (
                "failed",
                "math_answer_missing",
                "no final answer in the last assistant message (no '####' line, \\boxed{} or number)",
            )
        answer_value, reference_value = row["answer_value"], row["reference_value"]
        if answer_value is not None and reference_value is not None:
            counters["math.compared_numeric"] += 1
            if not row["numeric_match"]:
                return (
                    "failed",
                    "math_answer_mismatch",
                    f"final answer {_fmt(answer_value)} does not match the reference {_fmt(reference_value)}",
                )
            how = "numerically"
        else:
            equal, how = equivalent(row["answer"], row["reference"], self.tolerance)
            counters["math.compared_symbolic" if how == "symbolically" else "math.compared_text"] += 1
            if not equal:
                return (
                    "failed",
                    "math_answer_mismatch",
                    f"final answer does not match the reference (compared {how})",
                )
        if annotation_problem:
            return "failed", "math_calculation_error", annotation_problem
        checked = len(row["annotations"])
        suffix = f"; {checked} calculator annotation(s) correct" if checked else ""
        return "passed", None, f"final answer matches the reference ({how}){suffix}"

    def _check_annotations(self, annotations: list[str], counters: Counter[str]) -> str | None:
        """Detail for the first wrong annotation, or None when all that can be evaluated are right."""
        for index, annotation in enumerate(annotations, start=1):
            expr, _, shown = annotation.rpartition("=")
            try:
                value = evaluate_arithmetic(expr)
            except ArithmeticError as exc:
                counters["math.annotations_checked"] += 1
                why = "division by zero" if isinstance(exc, ZeroDivisionError) else "overflow"
                return f"calculator annotation {index} of {len(annotations)} cannot be evaluated ({why})"
            except ValueError:
                counters["math.annotations_unparsed"] += 1
                continue
            try:
                result = evaluate_arithmetic(shown)
            except (ValueError, ArithmeticError):
                counters["math.annotations_unparsed"] += 1
                continue
            counters["math.annotations_checked"] += 1
            if not annotation_matches(value, result, shown, self.tolerance):
                return (
                    f"calculator annotation {index} of {len(annotations)} evaluates to "
                    f"{_fmt(value)}, not {_fmt(result)}"
                )
        return None


def annotation_matches(value: float, result: float, shown: str, tolerance: float) -> bool:
    """Whether a calculator annotation's shown result is right.

    Real solutions round: GSM8K-style data writes <<1/3=0.33>>. A result shown with d decimals is
    accepted when it is within 10**-d of the exact value (so rounded or truncated to d decimals);
    a whole-number result must be exact up to ``tolerance`` (absolute, as for final answers).
    """
    decimals = re.search(r"\.(\d+)\s*$", shown)
    allowed = tolerance + _FLOAT_RELATIVE_SLACK * max(abs(value), abs(result))
    if decimals:
        allowed = max(allowed, 10.0 ** -len(decimals.group(1)) * (1 + 1e-9))
    return abs(value - result) <= allowed


# ---------------------------------------------------------------------------------------------
# Safe arithmetic


_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_MAX_EXPRESSION_CHARS = 300


def evaluate_arithmetic(text: str) -> float:
    """Value of an arithmetic expression: numbers, + - * / // % **, parentheses, unary +/-.

    Nothing else parses (ValueError), so untrusted text is never executed. Works in floats, so
    9**9**9 overflows at once (OverflowError) instead of computing a huge integer. Thousands
    separators and leading zeros (which Python's grammar rejects) are accepted.
    """
    cleaned = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text.strip())
    cleaned = re.sub(r"(?<![\d.])0+(?=\d)", "", cleaned)
    if not cleaned or len(cleaned) > _MAX_EXPRESSION_CHARS:
        raise ValueError("not an arithmetic expression")
    try:
        tree = ast.parse(cleaned, mode="eval")
    except (SyntaxError, RecursionError, MemoryError):
        raise ValueError("not an arithmetic expression") from None
    value = _evaluate(tree.body)
    if not math.isfinite(value):
        raise OverflowError("not finite")
    return value


def _evaluate(node: ast.expr) -> float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        result = _BINARY[type(node.op)](left, right)
        if isinstance(result, complex):  # (-8) ** (1/3)
            raise ValueError("complex result")
        return result
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    raise ValueError(f"{type(node).__name__} is not arithmetic")


def _fmt(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.10g}"


# ---------------------------------------------------------------------------------------------
# Non-numeric answers


def equivalent(answer: str, reference: str, tolerance: float) -> tuple[bool, str]:
    """Whether two non-numeric answers agree, and how that was decided ("symbolically" / "as text").

    With sympy installed (optional), both are read as expressions by a restricted translator (never
    sympy's eval-based parser: the answer is untrusted text) and their difference is simplified.
    Without it, or when either is not an expression, normalized strings are compared.
    """
    # Plain words ("Blue", "north") are names, not variables: compare those as text.
    if not (_WORDS.fullmatch(answer) and _WORDS.fullmatch(reference)):
        symbolic = _sympy_equal(answer, reference, tolerance)
        if symbolic is not None:
            return symbolic, "symbolically"
    return _normalize_text(answer) == _normalize_text(reference), "as text"


_WORDS = re.compile(r"[A-Za-z\s'-]*")


def _normalize_text(text: str) -> str:
    text = re.sub(_DECORATION, "", text)
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    return re.sub(r"\s+", "", text).strip(".").lower()


def _latex_to_python(text: str) -> str:
    text = re.sub(_DECORATION, "", text)
    text = re.sub(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}", r"((\1)/(\2))", text)
    text = re.sub(r"\\sqrt\s*\{([^{}]*)\}", r"sqrt(\1)", text)
    text = text.replace("\\cdot", "*").replace("\\times", "*").replace("^", "**").replace("\\pi", "pi")
    text = text.replace("{", "(").replace("}", ")")
    # Implicit multiplication: 2x, 2(x+1), )( .
    text = re.sub(r"(\d)\s*([A-Za-z(])", r"\1*\2", text)
    return re.sub(r"\)\s*\(", ")*(", text).strip().rstrip(".")


def _sympy_equal(answer: str, reference: str, tolerance: float) -> bool | None:
    try:
        import sympy
    except ImportError:
        return None
    try:
        left = _to_sympy(sympy, _latex_to_python(answer))
        right = _to_sympy(sympy, _latex_to_python(reference))
        difference = sympy.simplify(left - right)
        if difference == 0:
            return True
        if not difference.free_symbols:
            number = complex(sympy.N(difference))
            return abs(number) <= tolerance + _FLOAT_RELATIVE_SLACK * abs(complex(sympy.N(right)))
        return False
    except Exception:  # any parse/simplify failure means "not comparable symbolically"
        return None


_SYMPY_FUNCTIONS = ("sqrt", "sin", "cos", "tan", "log", "exp", "Abs")


def _to_sympy(sympy: Any, text: str) -> Any:
    """A sympy expression from ``text`` via ast: numbers, names (as symbols), arithmetic and a few
    functions; anything else raises ValueError."""
    if not text or len(text) > _MAX_EXPRESSION_CHARS:
        raise ValueError("not an expression")
    tree = ast.parse(text, mode="eval")

    def build(node: ast.expr) -> Any:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return sympy.nsimplify(node.value) if isinstance(node.value, float) else sympy.Integer(node.value)
        if isinstance(node, ast.Name):
            return sympy.pi if node.id == "pi" else sympy.Symbol(node.id)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = build(node.left), build(node.right)
            if isinstance(node.op, ast.Pow) and right.is_number and abs(right) > 1000:
                raise ValueError("exponent too large")
            return _BINARY[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](build(node.operand))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _SYMPY_FUNCTIONS
            and len(node.args) == 1
            and not node.keywords
        ):
            return getattr(sympy, node.func.id)(build(node.args[0]))
        raise ValueError(f"{type(node).__name__} is not supported")

    return build(tree.body)


# ---------------------------------------------------------------------------------------------
# The stage


class Verifier:
    """The verified stage: code and math records are checked, everything else passes through."""

    def __init__(self, config: VerifyConfig) -> None:
        self.config = config
        self.code = CodeVerifier(config)
        self.math = MathVerifier(config)

    def run(self, records: pl.DataFrame) -> StageResult:
        frame = records.drop([c for c in VERDICT_COLUMNS if c in records.columns]).with_row_index(_ROW)
        counters: Counter[str] = Counter()
        task = pl.col("task")
        code = frame.filter(task == TaskKind.CODE.value)
        maths = frame.filter(task == TaskKind.MATH.value)
        others = frame.filter(~task.is_in([TaskKind.CODE.value, TaskKind.MATH.value]).fill_null(True))
        passthrough = others.select(
            _ROW,
            verdict=pl.lit("not_applicable"),
            rule=pl.lit(None, pl.String),
            verdict_detail=pl.when(task.is_in([TaskKind.CHAT.value, TaskKind.TOOL.value]))
            .then(pl.concat_str([task, pl.lit(" records are not verified")]))
            .otherwise(pl.lit("no verifier for this task kind")),
        )
        counters["not_applicable"] += passthrough.height
        outcomes = pl.concat(
            [
                passthrough.cast(_OUTCOME_SCHEMA),
                self.code.run(code, counters).cast(_OUTCOME_SCHEMA),
                self.math.run(maths, counters).cast(_OUTCOME_SCHEMA),
            ]
        )
        judged = frame.join(outcomes, on=_ROW, how="left").sort(_ROW)
        kept = judged.filter(pl.col("rule").is_null()).select(
            *[c for c in records.columns if c not in VERDICT_COLUMNS], *VERDICT_COLUMNS
        )
        rejected = judged.filter(pl.col("rule").is_not_null()).select(
            "record_id", "rule", pl.col("verdict_detail").alias("detail"), "source_file", "source_line"
        )
        for name in ("code.passed", "code.failed", "math.passed", "math.failed", "not_applicable"):
            counters[name] += 0
        result = StageResult(
            rows_in=records.height,
            kept=kept,
            rejected=rejected.select(STAGE_LEDGER_COLUMNS),
            counters=dict(sorted(counters.items())),
        )
        result.check_conservation()
        return result
