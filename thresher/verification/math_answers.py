"""Math records: final answers compared with the reference, calculator annotations re-done."""

from __future__ import annotations

import ast
import math
import operator
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import polars as pl

from thresher.config import VerifyConfig
from thresher.verification.outcomes import OUTCOME_SCHEMA, ROW, last_assistant_content

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
        """Outcomes (``OUTCOME_SCHEMA``) for math records of ``frame`` (which has ``ROW``)."""
        content = last_assistant_content()
        prepared = frame.select(
            ROW,
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
            outcomes.append((row[ROW], *self._judge(row, counters)))
        out = pl.DataFrame(outcomes, schema=OUTCOME_SCHEMA, orient="row")
        counters["math.failed"] += out.filter(pl.col("verdict") == "failed").height
        counters["math.passed"] += out.filter(pl.col("verdict") == "passed").height
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
