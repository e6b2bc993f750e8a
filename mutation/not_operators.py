"""A cosmic-ray filter: skip "operator" mutants that are not operators in the code.

cosmic-ray's binary-operator mutation also rewrites the `*` and `**` of unpacking and of a
keyword-only marker, and the `|` of type annotations. None of them is an operation the code
performs: unpacking stars are syntax, and every module here starts with
`from __future__ import annotations`, so annotations are never evaluated at run time (config.py's
`get_type_hints` reads only `Settings`' field types, which hold no operator but `|`, and mutating
that `|` only turns a type into an error for `get_type_hints`, not a behaviour).

A mutant is kept when its position is an operator of a real `BinOp` outside any annotation.
"""

from __future__ import annotations

import ast
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
                if not mutation.operator_name.startswith("core/ReplaceBinaryOperator_"):
                    continue
                path = Path(mutation.module_path)
                source = sources.setdefault(path, path.read_text())
                if not is_real_operator(source, tuple(mutation.start_pos)):
                    skipped = WorkerOutcome.SKIPPED
                    work_db.set_result(item.job_id, WorkResult(skipped, "not an operator"))
                    break


if __name__ == "__main__":
    sys.exit(NotOperatorsFilter().main())
