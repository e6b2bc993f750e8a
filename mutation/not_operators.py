"""A cosmic-ray filter: skip mutants that are not operators in the code, or only repeat one.

cosmic-ray's binary-operator mutation also rewrites the `*` and `**` of unpacking and of a
keyword-only marker, and the `|` of type annotations. None of them is an operation the code
performs: unpacking stars are syntax, and every module here starts with
`from __future__ import annotations`, so annotations are never evaluated at run time (config.py's
`get_type_hints` reads only `Settings`' field types, which hold no operator but `|`, and mutating
that `|` only turns a type into an error for `get_type_hints`, not a behaviour).

A mutant is kept when its position is an operator of a real `BinOp` outside any annotation.

Two families only repeat what another mutant of the same spot already asks, and would double the
run's time (each mutant costs a fresh interpreter):
- an arithmetic operator is replaced by the other three of + - * / only, not also by // % ** << >>
  | & ^ (the same "wrong arithmetic" question, mostly a TypeError);
- an equality with a string literal (`status == "fail"`) is replaced by its negation only, not by
  an ordering (`<=` on words is no boundary) or an identity (`is` on an interned literal is the
  same test in CPython).
"""

from __future__ import annotations

import ast
import itertools
import sys
from argparse import Namespace
from pathlib import Path

from cosmic_ray.tools.filters.filter_app import FilterApp
from cosmic_ray.work_db import WorkDB
from cosmic_ray.work_item import WorkerOutcome, WorkResult

Position = tuple[int, int]  # (line from 1, column from 0), as cosmic-ray records them


def _span(node: ast.AST) -> tuple[Position, Position]:
    return (node.lineno, node.col_offset), (node.end_lineno or 0, node.end_col_offset or 0)


def annotation_spans(tree: ast.AST) -> list[tuple[Position, Position]]:
    spans = []
    for node in ast.walk(tree):
        if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
            spans.append(_span(node.annotation))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns:
            spans.append(_span(node.returns))
    return spans


def operator_gaps(tree: ast.AST) -> list[tuple[Position, Position]]:
    """Where the operator of each binary operation sits: between its two operands."""
    return [
        ((node.left.end_lineno or 0, node.left.end_col_offset or 0), _span(node.right)[0])
        for node in ast.walk(tree)
        if isinstance(node, ast.BinOp)
    ]


def _inside(position: Position, spans: list[tuple[Position, Position]]) -> bool:
    return any(start <= position < end for start, end in spans)


EXOTIC = ("FloorDiv", "Mod", "Pow", "RShift", "LShift", "BitOr", "BitAnd", "BitXor")
STRING_REPEATS = ("Lt", "LtE", "Gt", "GtE", "Is", "IsNot")


def compares_with_a_string(tree: ast.AST, position: Position) -> bool:
    """The comparison whose operator starts at `position` has a string literal operand."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        for left, right in itertools.pairwise(operands):
            gap = ((left.end_lineno or 0, left.end_col_offset or 0), _span(right)[0])
            if gap[0] <= position < gap[1]:
                return any(
                    isinstance(o, ast.Constant) and isinstance(o.value, str) for o in (left, right)
                )
    return False


def is_repeat(operator: str, source: str, position: Position) -> bool:
    """True for the mutants that only repeat another one of the same spot (see above)."""
    kind, _, change = operator.removeprefix("core/").partition("_")
    if kind == "ReplaceBinaryOperator":
        return change.split("_")[-1] in EXOTIC
    if kind == "ReplaceComparisonOperator":
        original, _, replacement = change.partition("_")
        if original in ("Eq", "NotEq") and replacement in STRING_REPEATS:
            return compares_with_a_string(ast.parse(source), position)
    return False


def is_real_operator(source: str, position: Position) -> bool:
    tree = ast.parse(source)
    if _inside(position, annotation_spans(tree)):
        return False
    return _inside(position, operator_gaps(tree))


class NotOperatorsFilter(FilterApp):
    def description(self) -> str:
        return __doc__ or ""

    def filter(self, work_db: WorkDB, args: Namespace) -> None:
        sources: dict[Path, str] = {}
        for item in work_db.pending_work_items:
            for mutation in item.mutations:
                path = Path(mutation.module_path)
                source = sources.setdefault(path, path.read_text())
                position = tuple(mutation.start_pos)
                name = mutation.operator_name
                if name.startswith("core/ReplaceBinaryOperator_") and not is_real_operator(
                    source, position
                ):
                    why = "not an operator"
                elif is_repeat(name, source, position):
                    why = "repeats another mutant of the same spot"
                else:
                    continue
                work_db.set_result(item.job_id, WorkResult(WorkerOutcome.SKIPPED, why))
                break


if __name__ == "__main__":
    sys.exit(NotOperatorsFilter().main())
