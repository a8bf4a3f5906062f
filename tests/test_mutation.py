"""Specification of mutation testing: wrong variants of right programs, and a verifier that rejects them.

The operator tests pin what each family mutates and where. The real-data tests mutate every
HumanEval and MBPP reference solution (which ``tests/test_verification.py`` shows all pass) at the
first site of each family and require the verifier to kill most of them: a mutant survives only
when it is equivalent to the original (``abs(a - b)`` swapped) or the tests are too weak to notice.
"""

from __future__ import annotations

import json
import time
from typing import Any

import polars as pl
import pytest

from tests.test_verification import MBPP, humaneval, humaneval_record, needs, record
from thresher.config import VerifyConfig
from thresher.records import conform
from thresher.verification import Verifier
from thresher.verification.mutation import (
    MUTATION_SCHEMA,
    OPERATORS,
    REPORT_SCHEMA,
    Mutant,
    mutant_records,
    mutants,
    mutation_report,
)


def mutated(source: str, operator: str) -> list[str]:
    """The sources of ``operator``'s mutants of ``source``."""
    return [m.source for m in mutants(source) if m.operator == operator]


# ------------------------------------------------------------------------------------------------
# flip_comparison


@pytest.mark.parametrize(
    ("comparison", "flipped"),
    [
        ("a < b", "a >= b"),
        ("a >= b", "a < b"),
        ("a <= b", "a > b"),
        ("a > b", "a <= b"),
        ("a == b", "a != b"),
        ("a != b", "a == b"),
        ("a in b", "a not in b"),
        ("a not in b", "a in b"),
        ("a is b", "a is not b"),
        ("a is not b", "a is b"),
    ],
)
def test_each_comparison_flips_to_its_negation(comparison: str, flipped: str) -> None:
    assert mutated(f"x = {comparison}", "flip_comparison") == [f"x = {flipped}"]


def test_each_operator_of_a_chained_comparison_is_a_site_of_its_own() -> None:
    assert mutated("ok = 0 <= i < n", "flip_comparison") == ["ok = 0 > i < n", "ok = 0 <= i >= n"]


def test_a_mutant_says_what_changed_and_where_without_quoting_the_code() -> None:
    source = "def is_secret(token_value, limit):\n\n    return len(token_value) < limit\n"
    assert mutants(source)[0] == Mutant(
        operator="flip_comparison",
        line=3,
        description="flipped `<` to `>=` at line 3",
        source="def is_secret(token_value, limit):\n    return len(token_value) >= limit",
    )
    assert not any("token_value" in m.description or "limit" in m.description for m in mutants(source))


# ------------------------------------------------------------------------------------------------
# off_by_one


def test_integer_literals_grow_by_one_wherever_they_are() -> None:
    source = "def f(xs, i):\n    return xs[-1] + xs[0] * (i + 1) > 10"
    assert mutated(source, "off_by_one") == [
        "def f(xs, i):\n    return xs[-2] + xs[0] * (i + 1) > 10",
        "def f(xs, i):\n    return xs[-1] + xs[1] * (i + 1) > 10",
        "def f(xs, i):\n    return xs[-1] + xs[0] * (i + 2) > 10",
        "def f(xs, i):\n    return xs[-1] + xs[0] * (i + 1) > 11",
    ]
    assert [m.description for m in mutants(source) if m.operator == "off_by_one"][-1] == (
        "changed the integer 10 to 11 at line 2"
    )


def test_range_stop_bounds_and_slice_bounds_that_are_not_literals_gain_one() -> None:
    assert mutated("for i in range(n):\n    pass", "off_by_one") == ["for i in range(n + 1):\n    pass"]
    assert mutated("r = range(a, len(xs), k)", "off_by_one") == ["r = range(a, len(xs) + 1, k)"]
    assert mutated("head = xs[i:j]", "off_by_one") == ["head = xs[i + 1:j]", "head = xs[i:j + 1]"]
    # A literal bound mutates once, as a literal.
    assert mutated("r = range(10)", "off_by_one") == ["r = range(11)"]
    assert mutated("tail = xs[1:]", "off_by_one") == ["tail = xs[2:]"]


def test_booleans_floats_and_strings_are_not_integers() -> None:
    assert mutated("x = (True, 0.5, '1', b'2')", "off_by_one") == []


# ------------------------------------------------------------------------------------------------
# swap_operands


@pytest.mark.parametrize("op", ["-", "/", "//", "%", "**", "<<", ">>", "<", "<=", ">", ">=", "in", "not in"])
def test_non_commutative_operations_swap_their_operands(op: str) -> None:
    assert mutated(f"x = a {op} b", "swap_operands") == [f"x = b {op} a"]


@pytest.mark.parametrize("expression", ["a + b", "a * b", "a & b", "a == b", "a is not b", "a < b < c"])
def test_symmetric_operations_and_chained_comparisons_are_not_swapped(expression: str) -> None:
    assert mutated(f"x = {expression}", "swap_operands") == []


def test_nested_operations_are_swapped_one_at_a_time_outermost_first() -> None:
    assert mutated("d = (a - b) / c", "swap_operands") == ["d = c / (a - b)", "d = (b - a) / c"]


# ------------------------------------------------------------------------------------------------
# All operators


def test_a_mutation_that_changes_nothing_is_skipped() -> None:
    assert mutated("zero = n - n", "swap_operands") == []
    assert mutated("same = x < x", "swap_operands") == []
    assert mutated("same = x < x", "flip_comparison") == ["same = x >= x"]


GCD = """\
def gcd(a, b):
    while b != 0:
        a, b = b, a % b
    return a


def is_coprime(a, b):
    return gcd(a, b) == 1
"""


def test_mutants_come_by_operator_then_position_and_the_same_every_time() -> None:
    every = mutants(GCD)
    assert [(m.operator, m.line) for m in every] == [
        ("flip_comparison", 2),
        ("flip_comparison", 8),
        ("off_by_one", 2),
        ("off_by_one", 8),
        ("swap_operands", 3),
    ]
    assert mutants(GCD) == every
    assert len({m.source for m in every}) == len(every)


def test_a_limit_keeps_the_first_mutants_of_each_operator() -> None:
    every = mutants(GCD)
    first = mutants(GCD, limit_per_operator=1)
    assert first == [every[0], every[2], every[4]]
    assert mutants(GCD, limit_per_operator=0) == []


def test_code_that_does_not_parse_has_no_mutants_but_an_error() -> None:
    with pytest.raises(SyntaxError):
        mutants("def f(:\n")


# ------------------------------------------------------------------------------------------------
# Mutant records and the report

SMALL = [
    # Equivalent mutant: the swap survives.
    ("def dist(a, b):\n    return abs(a - b)\n", "assert dist(1, 4) == 3\n"),
    # Both the flip and the swap are caught.
    (
        "def below(a, b):\n    return a < b\n",
        "assert below(1, 2)\nassert not below(2, 1)\nassert not below(2, 2)\n",
    ),
    # xs[1] instead of xs[0] is caught.
    ("def head(xs):\n    return xs[0]\n", "assert head([5, 6]) == 5\n"),
]


def small_records() -> pl.DataFrame:
    rows = [
        record(f"s:{i}", "code", f"Like this:\n\n```python\n{code}```\n\nDone.", tests=tests)
        for i, (code, tests) in enumerate(SMALL)
    ]
    return conform(pl.DataFrame(rows))


def test_a_mutant_record_is_its_original_with_only_the_code_changed() -> None:
    originals = small_records()
    records = mutant_records(originals)
    assert records.columns == [*originals.columns, *MUTATION_SCHEMA]
    assert records["record_id"].to_list() == [
        "s:0#swap_operands:1",
        "s:1#flip_comparison:1",
        "s:1#swap_operands:1",
        "s:2#off_by_one:1",
    ]
    assert records["mutant_of"].to_list() == ["s:0", "s:1", "s:1", "s:2"]
    flipped = records.row(1, named=True)
    assert flipped["messages"] == [
        {"role": "user", "content": "Solve the task."},
        {
            "role": "assistant",
            "content": "Like this:\n\n```python\ndef below(a, b):\n    return a >= b\n```\n\nDone.",
        },
    ]
    assert (flipped["mutation_operator"], flipped["mutation_line"]) == ("flip_comparison", 2)
    assert flipped["mutation"] == "flipped `<` to `>=` at line 2"
    unchanged = [c for c in originals.columns if c not in ("record_id", "messages")]
    assert records.select(unchanged).equals(originals[[0, 1, 1, 2]].select(unchanged))


def test_records_without_code_that_parses_have_no_mutants() -> None:
    rows = [
        record("n:0", "code", None, tests="assert True"),
        record("n:1", "code", "def f(:", tests="assert f"),
    ]
    assert mutant_records(conform(pl.DataFrame(rows))).height == 0


def test_the_report_counts_mutants_killed_and_survived_per_operator() -> None:
    report = mutation_report(small_records(), Verifier(VerifyConfig()))
    assert report.schema == pl.Schema(REPORT_SCHEMA)
    assert report.rows() == [
        ("flip_comparison", 1, 1, 0, 1.0),
        ("off_by_one", 1, 1, 0, 1.0),
        ("swap_operands", 2, 1, 1, 0.5),
    ]


def test_a_report_without_mutants_has_no_kill_rate() -> None:
    report = mutation_report(small_records().head(0), Verifier(VerifyConfig()))
    assert report.rows() == [(operator, 0, 0, 0, None) for operator in OPERATORS]


# ------------------------------------------------------------------------------------------------
# Real data


def humaneval_records() -> pl.DataFrame:
    tasks = humaneval()
    return conform(
        pl.DataFrame([humaneval_record(i, t, t["canonical_solution"]) for i, t in enumerate(tasks)])
    )


def mbpp_records() -> pl.DataFrame:
    needs(MBPP)
    tasks = [json.loads(line) for line in MBPP.read_text(encoding="utf-8").splitlines()]
    rows: list[dict[str, Any]] = [
        record(
            f"mbpp:{i}",
            "code",
            t["code"],
            prompt=t["text"],
            tests=t["test_setup_code"] + "\n" + "\n".join(t["test_list"]),
        )
        for i, t in enumerate(tasks)
    ]
    return conform(pl.DataFrame(rows))


# Measured with the first site per operator of each reference solution (mutants, killed):
#   HumanEval  flip 121/121, off_by_one 114/129, swap 107/113
#   MBPP       flip 468/483, off_by_one 440/623, swap 484/517
# Survivors are equivalent mutants (abs(a - b) swapped, `range(len(l) + 1)` in a loop whose extra
# round does nothing) or mutants the corpus's tests do not exercise (MBPP has three asserts a task).
# A mutant only dies more often on a slow machine (timeouts), so the floors are safe lower bounds.
KILL_RATE_FLOORS = {
    "humaneval": {"flip_comparison": 0.99, "off_by_one": 0.87, "swap_operands": 0.93},
    "mbpp": {"flip_comparison": 0.96, "off_by_one": 0.69, "swap_operands": 0.93},
}
MUTANT_COUNTS = {
    "humaneval": {"flip_comparison": 121, "off_by_one": 129, "swap_operands": 113},
    "mbpp": {"flip_comparison": 483, "off_by_one": 623, "swap_operands": 517},
}


@pytest.mark.parametrize("corpus", ["humaneval", "mbpp"])
def test_the_verifier_kills_mutants_of_reference_solutions(corpus: str) -> None:
    records = humaneval_records() if corpus == "humaneval" else mbpp_records()
    # The slowest passing mutant run takes a quarter of a second on a loaded machine; a mutant that
    # loops forever dies at any limit, and a short one keeps the few dozen that do (the harness runs
    # every test, so one endless case among failing ones still loops) from dominating the run time.
    verifier = Verifier(VerifyConfig(timeout_seconds=1))
    started = time.perf_counter()
    report = mutation_report(records, verifier, limit_per_operator=1)
    elapsed = time.perf_counter() - started
    print(f"\n{corpus}: {records.height} solutions, {report['mutants'].sum()} mutants in {elapsed:.1f} s")
    for row in report.iter_rows(named=True):
        print(
            f"  {row['operator']:<16} {row['mutants']:>4} mutants {row['killed']:>4} killed "
            f"{row['survived']:>4} survived  kill rate {row['kill_rate']:.3f}"
        )
    assert dict(zip(report["operator"], report["mutants"], strict=True)) == MUTANT_COUNTS[corpus]
    rates = dict(zip(report["operator"], report["kill_rate"], strict=True))
    floors = KILL_RATE_FLOORS[corpus]
    assert {op: rate for op, rate in rates.items() if rate < floors[op]} == {}
