"""The modules of `pipeline/` that a DVC stage's command can import, found statically.

A stage's command is `python -m pipeline <command> <args>`. Python runs pipeline/__init__.py,
pipeline/__main__.py and pipeline/cli.py at module level, then the body of the typer command
`<command>`; `train` then calls the function the model catalog names for the model
(`ModelKind.trained_by`), as cli.train does. From there every module is followed whole: every
`import` in it, at module level or inside a function, counts (a lazy import runs when its
function does, and a static reader cannot tell when that is). Importing `a.b.c` runs the
`__init__.py` of `a` and `a.b` too. A training stage also runs, later and elsewhere, the code
of the MLflow Model it logs: serving/entry.py and what it imports.
"""

from __future__ import annotations

import ast
import inspect
import shlex
import textwrap
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "pipeline"


@dataclass(frozen=True)
class Closure:
    start: str  # what the search started from, for messages
    modules: frozenset[str]  # dotted names: pipeline.training.train, ...


def module_file(root: Path, module: str) -> Path | None:
    """The file of a module of the package under `root`, or None if there is none."""
    base = root / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every module of the package that the statements under `tree` import."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                source = f"{anchor}.{node.module}" if node.module else anchor
            else:
                source = node.module or ""
            found.add(source)
            found |= {f"{source}.{alias.name}" for alias in node.names}  # submodules
    return {name for name in found if name == PACKAGE or name.startswith(PACKAGE + ".")}


def _with_parents(modules: set[str]) -> set[str]:
    out = set()
    for name in modules:
        parts = name.split(".")
        out |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return out


def follow(root: Path, start: set[str]) -> set[str]:
    """The transitive closure of `start` over whole modules."""
    seen: set[str] = set()
    todo = [name for name in _with_parents(start) if module_file(root, name)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(root, name)
        tree = ast.parse(path.read_text(), str(path))
        for imported in _with_parents(_imports(tree, name, path.name == "__init__.py")):
            if imported not in seen and module_file(root, imported):
                todo.append(imported)
    return seen


def _module_level(tree: ast.Module) -> ast.Module:
    """The statements Python runs when it imports a module: all but function bodies."""
    body = [node for node in tree.body if not isinstance(node, ast.FunctionDef)]
    return ast.Module(body=body, type_ignores=[])


def command_closure(root: Path, cmd: str) -> Closure:
    """The modules `cmd` (a dvc.yaml command) can import."""
    import importlib

    from pipeline import cli
    from pipeline.core import catalog

    words = shlex.split(cmd)
    if words[:3] != ["python", "-m", PACKAGE]:
        raise ValueError(f"not a pipeline command: {cmd!r}")
    command, args = words[3], words[4:]
    function = _command_function(cli.app, command)
    cli_file = module_file(root, f"{PACKAGE}.cli")
    start = {f"{PACKAGE}.__main__", f"{PACKAGE}.cli"}
    start |= _imports(_module_level(ast.parse(cli_file.read_text())), f"{PACKAGE}.cli", False)
    start |= _imports(ast.parse(textwrap.dedent(inspect.getsource(function))), "x", False)
    if command == "train":
        module, name = catalog.kind_of(args[0]).trained_by.split(":")
        getattr(importlib.import_module(module), name)  # the catalog names a real function
        start.add(module)
        # The stage logs an MLflow Model whose code is serving/entry.py (named by its path,
        # not imported): what that model runs when served is an output of this stage too.
        start.add(f"{PACKAGE}.serving.entry")
    # pipeline.__main__ and pipeline.cli are entered at module level only, not followed whole:
    # the other commands' lazy imports in cli.py do not run for this one.
    entry = {f"{PACKAGE}.__main__", f"{PACKAGE}.cli"}
    modules = follow(root, start - entry) | entry | {PACKAGE}
    return Closure(f"{command} {' '.join(args)}".strip(), frozenset(modules))


def _command_function(app, command: str):
    for info in app.registered_commands:
        callback = inspect.unwrap(info.callback)
        if (info.name or callback.__name__.replace("_", "-")) == command:
            return callback
    raise ValueError(f"cli has no command {command!r}")


def relative_file(root: Path, module: str) -> str:
    """`pipeline.core.params` -> `pipeline/core/params.py`, relative to the project."""
    return module_file(root, module).relative_to(root).as_posix()


def covered(path: str, deps: list[str]) -> bool:
    """Whether a file is one of `deps` or inside a folder of them."""
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)
