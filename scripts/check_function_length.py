#!/usr/bin/env python3
"""Fail when a function (or method) in the given folders is longer than the house limit.

    python scripts/check_function_length.py src plugins [--max 80]

A function's length is its lines from ``def`` (decorators excluded) to its last line, docstring and
comments included: what a reader has to hold. Nested functions count in their parent and on their own.
Prints each offender as ``path:line: name is N lines (max M)``; exit status 1 when there is one.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path

MAX_LINES = 80


def function_lengths(path: Path) -> Iterator[tuple[int, str, int]]:
    """(line, qualified name, length in lines) of every function defined in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[int, str, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                yield child.lineno, name, (child.end_lineno or child.lineno) - child.lineno + 1
                yield from walk(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")
            else:
                yield from walk(child, prefix)

    yield from walk(tree, "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path, help="folders (or files) to check")
    parser.add_argument("--max", type=int, default=MAX_LINES, help=f"most lines allowed ({MAX_LINES})")
    args = parser.parse_args(argv)
    offenders = []
    for root in args.roots:
        files = [root] if root.is_file() else sorted(root.rglob("*.py"))
        for path in files:
            for line, name, length in function_lengths(path):
                if length > args.max:
                    offenders.append(f"{path}:{line}: {name} is {length} lines (max {args.max})")
    for offender in offenders:
        print(offender)
    if offenders:
        print(f"{len(offenders)} function(s) over {args.max} lines", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
