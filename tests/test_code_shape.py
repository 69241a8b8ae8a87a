"""The shape of the pipeline's code: no function longer than MAX_FUNCTION_LINES, so each one
reads as one step (a longer one is split into named steps, not exempted)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 40  # from the `def` line (decorators excluded) to its last line


def function_lengths(source: str) -> list[tuple[str, int]]:
    """(qualified name, lines) of every function and method, nested ones included."""
    lengths = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                lengths.append((name, child.end_lineno - child.lineno + 1))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return lengths


def test_function_lengths_are_counted_from_def_to_last_line():
    source = "@decorator\ndef f():\n    x = 1\n\n    return x\n\n\nclass C:\n    def m(self):\n        pass\n"
    assert function_lengths(source) == [("f", 4), ("C.m", 2)]


def test_no_function_in_the_pipeline_is_too_long():
    too_long = [
        f"{path.relative_to(ROOT).as_posix()}:{name}:{lines}"
        for path in sorted((ROOT / "pipeline").rglob("*.py"))
        for name, lines in function_lengths(path.read_text())
        if lines > MAX_FUNCTION_LINES
    ]
    assert not too_long, f"longer than {MAX_FUNCTION_LINES} lines: {', '.join(too_long)}"
