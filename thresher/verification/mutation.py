"""Mutation testing of the code verifier: deliberately wrong variants of known-good solutions.

A verifier that keeps a reference solution proves little on its own; one that also rejects the same
solution with a flipped comparison, a bound moved by one or swapped operands shows that the tests
it runs can tell right from wrong. ``mutants`` makes those variants with the standard library's
``ast`` (one mutation per mutant, at every applicable site, in a fixed order) and
``mutation_report`` runs them through a ``Verifier`` and counts how many it rejects ("kills").

The operator families:

- ``flip_comparison``: each comparison operator becomes its negation (``<`` / ``>=``, ``<=`` / ``>``,
  ``==`` / ``!=``, ``in`` / ``not in``, ``is`` / ``is not``).
- ``off_by_one``: each integer literal ``n`` becomes ``n + 1`` (a negative literal ``-n`` is the
  literal ``n`` negated, so it becomes ``-(n + 1)``); each ``range()`` stop bound and each slice
  bound that is not a literal itself gains ``+ 1`` (``range(n)`` becomes ``range(n + 1)``).
- ``swap_operands``: the operands of each non-commutative binary operation (``-``, ``/``, ``//``,
  ``%``, ``**``, ``<<``, ``>>``) and of each unchained ordering or membership comparison (``a < b``
  becomes ``b < a``) trade places. Equality and identity comparisons are symmetric and chained
  comparisons (``a < b < c``) are left alone.

Mutants are regenerated with ``ast.unparse``, so comments and formatting are lost; the verifier
runs code, it does not read it. A mutant whose text equals the unparsed original (``a - a``) is
skipped.
"""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import polars as pl

from thresher.verification.code import extract_code
from thresher.verification.outcomes import last_assistant_content
from thresher.verification.stage import Verifier

OPERATORS = ("flip_comparison", "off_by_one", "swap_operands")

_NEGATED: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.GtE,
    ast.GtE: ast.Lt,
    ast.LtE: ast.Gt,
    ast.Gt: ast.LtE,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
_SYMBOL: dict[type[ast.AST], str] = {
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.In: "in",
    ast.NotIn: "not in",
    ast.Is: "is",
    ast.IsNot: "is not",
    ast.Sub: "-",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
    ast.LShift: "<<",
    ast.RShift: ">>",
}
_NON_COMMUTATIVE = (ast.Sub, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.LShift, ast.RShift)
# Comparisons whose meaning changes when their operands swap.
_ASYMMETRIC = (ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn)

# What mutant_records adds to each mutant record.
MUTATION_SCHEMA: dict[str, pl.DataType] = {
    "mutant_of": pl.String,
    "mutation_operator": pl.String,
    "mutation_line": pl.Int64,
    "mutation": pl.String,
}
REPORT_SCHEMA: dict[str, pl.DataType] = {
    "operator": pl.String,
    "mutants": pl.UInt32,
    "killed": pl.UInt32,
    "survived": pl.UInt32,
    "kill_rate": pl.Float64,
}


@dataclass(frozen=True)
class Mutant:
    """One wrong variant of a program: which operator made it, where, and its full source."""

    operator: str
    line: int
    description: str
    source: str


@dataclass(frozen=True)
class _Site:
    """A place one operator can mutate: the node (by pre-order index) and how to change it."""

    node_index: int
    line: int
    column: int
    description: str
    apply: Callable[[ast.AST], None]


def mutants(source: str, limit_per_operator: int | None = None) -> list[Mutant]:
    """Every single-site mutant of ``source``, ordered by operator family then source position.

    ``limit_per_operator`` keeps only the first N mutants of each family, so a benchmark can bound
    its work deterministically. Raises ``SyntaxError`` when ``source`` does not parse.
    """
    tree = ast.parse(source)
    original = ast.unparse(tree)
    nodes = list(_preorder(tree))
    found: list[Mutant] = []
    for operator in OPERATORS:
        sites = sorted(_SITE_FINDERS[operator](nodes), key=lambda site: (site.line, site.column))
        made = 0
        for site in sites:
            if limit_per_operator is not None and made >= limit_per_operator:
                break
            # A fresh tree per mutant: mutations happen in place and must not accumulate.
            fresh = ast.parse(source)
            site.apply(list(_preorder(fresh))[site.node_index])
            mutated = ast.unparse(fresh)
            if mutated != original:
                found.append(Mutant(operator, site.line, f"{site.description} at line {site.line}", mutated))
                made += 1
    return found


def mutant_records(records: pl.DataFrame, limit_per_operator: int | None = 1) -> pl.DataFrame:
    """One record per mutant of each record's code, in record order then mutant order.

    A mutant record is its original with the code in the last assistant message replaced and a
    record_id of its own, ``<original id>#<operator>:<n>`` (the stage needs unique ids), plus the
    columns ``mutant_of`` (the original record_id), ``mutation_operator``, ``mutation_line`` (in
    the code) and ``mutation`` (the mutant's description). Records without code, or whose code
    does not parse, have no mutants.
    """
    code = records.select(extract_code(last_assistant_content()).alias("code"))["code"].to_list()
    record_ids = records["record_id"].to_list()
    originals: list[int] = []
    answers: list[list[dict[str, str]]] = []
    mutations: list[tuple[str, str, str, int, str]] = []
    # ast has no vectorized equivalent: mutants are made per record.
    for index, (messages, solution) in enumerate(zip(records["messages"].to_list(), code, strict=True)):
        if solution is None:
            continue
        try:
            variants = mutants(solution, limit_per_operator)
        except (SyntaxError, ValueError, RecursionError):  # unparseable, null bytes, too deep
            continue
        ordinals: Counter[str] = Counter()
        for mutant in variants:
            ordinals[mutant.operator] += 1
            original_id = record_ids[index]
            mutant_id = f"{original_id}#{mutant.operator}:{ordinals[mutant.operator]}"
            originals.append(index)
            answers.append(_replace_code(messages, solution, mutant.source))
            mutations.append((mutant_id, original_id, mutant.operator, mutant.line, mutant.description))
    described = pl.DataFrame(mutations, schema={"record_id": pl.String, **MUTATION_SCHEMA}, orient="row")
    return (
        records.select(pl.all().gather(originals))
        .with_columns(
            pl.Series("messages", answers, dtype=records.schema["messages"]), described["record_id"]
        )
        .hstack(described.drop("record_id"))
    )


def mutation_report(
    records: pl.DataFrame, verifier: Verifier, limit_per_operator: int | None = 1
) -> pl.DataFrame:
    """Per operator family: mutants made of ``records``' code, how many ``verifier`` killed
    (rejected) and survived (kept), and the kill rate (null when there were no mutants).

    ``records`` are code records in the stage's record schema (record_id, task, messages, tests,
    entry_point, ...) whose original code the verifier keeps: a kill is evidence only when the
    solution it mutates passes, so verify the originals first and pass ``result.kept``. Give it a
    verifier without a revision loop, which would repair the very mutants it is meant to catch.
    One row per family in ``OPERATORS`` order, ``REPORT_SCHEMA`` columns.
    """
    candidates = mutant_records(records, limit_per_operator)
    result = verifier.run(candidates)
    made = candidates.group_by("mutation_operator").len("mutants")
    survived = result.kept.group_by("mutation_operator").len("survived")
    return (
        pl.DataFrame({"operator": OPERATORS})
        .join(made, left_on="operator", right_on="mutation_operator", how="left")
        .join(survived, left_on="operator", right_on="mutation_operator", how="left")
        .with_columns(pl.col("mutants", "survived").fill_null(0))
        .with_columns(killed=pl.col("mutants") - pl.col("survived"))
        .with_columns(kill_rate=pl.when(pl.col("mutants") > 0).then(pl.col("killed") / pl.col("mutants")))
        .select(*REPORT_SCHEMA)
        .cast(REPORT_SCHEMA)
    )


def _replace_code(messages: list[dict[str, str]], code: str, mutated: str) -> list[dict[str, str]]:
    """``messages`` with ``code`` in the last assistant message replaced by ``mutated`` (keeping the
    code's trailing line breaks, which ``ast.unparse`` drops, so a closing fence stays on its own
    line). The code came from that message's last Python block: its last occurrence."""
    last = max(i for i, message in enumerate(messages) if message["role"] == "assistant")
    content = messages[last]["content"]
    at = content.rindex(code)
    trailing = code[len(code.rstrip()) :]
    changed = {**messages[last], "content": content[:at] + mutated + trailing + content[at + len(code) :]}
    return [*messages[:last], changed, *messages[last + 1 :]]


def _preorder(node: ast.AST) -> Iterator[ast.AST]:
    """Every node of the tree, parent before children, in field order: the same for equal sources."""
    yield node
    for child in ast.iter_child_nodes(node):
        yield from _preorder(child)


def _flip_sites(nodes: list[ast.AST]) -> Iterator[_Site]:
    for index, node in enumerate(nodes):
        if isinstance(node, ast.Compare):
            for position, op in enumerate(node.ops):
                negated = _NEGATED[type(op)]
                description = f"flipped `{_SYMBOL[type(op)]}` to `{_SYMBOL[negated]}`"
                yield _Site(index, node.lineno, node.col_offset, description, _set_op(position, negated))


def _off_by_one_sites(nodes: list[ast.AST]) -> Iterator[_Site]:
    for index, node in enumerate(nodes):
        if _is_int_literal(node):
            assert isinstance(node, ast.Constant)
            description = f"changed the integer {node.value} to {node.value + 1}"
            yield _Site(index, node.lineno, node.col_offset, description, _increment_constant)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
            stop = 0 if len(node.args) == 1 else 1
            if len(node.args) in (1, 2, 3) and _can_extend(node.args[stop]):
                description = "extended a range() stop bound by one"
                yield _Site(index, node.lineno, node.col_offset, description, _extend_range(stop))
        elif isinstance(node, ast.Slice):
            for bound in ("lower", "upper"):
                if _can_extend(getattr(node, bound)):
                    description = f"moved a slice's {bound} bound up by one"
                    yield _Site(index, node.lineno, node.col_offset, description, _extend_slice(bound))


def _swap_sites(nodes: list[ast.AST]) -> Iterator[_Site]:
    for index, node in enumerate(nodes):
        if isinstance(node, ast.BinOp) and isinstance(node.op, _NON_COMMUTATIVE):
            description = f"swapped the operands of `{_SYMBOL[type(node.op)]}`"
            yield _Site(index, node.lineno, node.col_offset, description, _swap_binop)
        elif isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], _ASYMMETRIC):
            description = f"swapped the operands of `{_SYMBOL[type(node.ops[0])]}`"
            yield _Site(index, node.lineno, node.col_offset, description, _swap_comparison)


_SITE_FINDERS: dict[str, Callable[[list[ast.AST]], Iterator[_Site]]] = {
    "flip_comparison": _flip_sites,
    "off_by_one": _off_by_one_sites,
    "swap_operands": _swap_sites,
}


def _is_int_literal(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int  # bool is an int subclass


def _can_extend(bound: ast.AST | None) -> bool:
    """A bound gains ``+ 1`` unless it is absent, starred or a literal (literals mutate as such)."""
    return bound is not None and not isinstance(bound, ast.Starred) and not _is_int_literal(bound)


def _plus_one(node: ast.expr) -> ast.expr:
    return ast.BinOp(node, ast.Add(), ast.Constant(1))


def _set_op(position: int, op: type[ast.cmpop]) -> Callable[[ast.AST], None]:
    def apply(node: ast.AST) -> None:
        assert isinstance(node, ast.Compare)
        node.ops[position] = op()

    return apply


def _increment_constant(node: ast.AST) -> None:
    assert isinstance(node, ast.Constant)
    node.value += 1


def _extend_range(stop: int) -> Callable[[ast.AST], None]:
    def apply(node: ast.AST) -> None:
        assert isinstance(node, ast.Call)
        node.args[stop] = _plus_one(node.args[stop])

    return apply


def _extend_slice(bound: str) -> Callable[[ast.AST], None]:
    def apply(node: ast.AST) -> None:
        setattr(node, bound, _plus_one(getattr(node, bound)))

    return apply


def _swap_binop(node: ast.AST) -> None:
    assert isinstance(node, ast.BinOp)
    node.left, node.right = node.right, node.left


def _swap_comparison(node: ast.AST) -> None:
    assert isinstance(node, ast.Compare)
    node.left, node.comparators[0] = node.comparators[0], node.left
