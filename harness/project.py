"""A real project to run commands in: a fresh git + DVC repo holding the project's files, with
params.yaml patched, and the commands (dvc, python -m pipeline, git) run in it.

Params are patched as a JSON merge patch (RFC 7386): nested dicts merge, any other value
replaces, None deletes the key (`{"pretrained": {"bases": {"efficientnet_lite0": None}}}`).
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
NOT_COPIED = ("tests/", "benchmarks/", "harness/")  # what measures the project is not part of it


def make_project(dest: Path, *patches: dict) -> Path:
    """A fresh git + DVC repo holding the project's committed files (and working-tree
    edits to them), with params.yaml patched by each patch in turn."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in tracked_project_files():
        if name.startswith(NOT_COPIED) or not (ROOT / name).exists():
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    for patch in patches:
        update_params(dest, patch)
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "init"], dest)
    return dest


def tracked_project_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [line for line in out.stdout.splitlines() if line]


def merge_patch(target: dict, patch: dict) -> dict:
    """RFC 7386 on plain dicts; returns a new dict."""
    merged = copy.deepcopy(target)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_patch(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def dotted_patch(*assignments: str) -> dict:
    """`dvc exp run -S` style `a.b.c=value` assignments (YAML values) as a patch; `~a.b`
    deletes the key, as in Hydra's override syntax that -S speaks."""
    patch: dict = {}
    for assignment in assignments:
        key, _, value = assignment.partition("=")
        delete = key.startswith("~")
        *parents, leaf = key.removeprefix("~").split(".")
        node = patch
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = None if delete else yaml.safe_load(value)
    return patch


def args_file_assignments(path: Path) -> list[str]:
    """The `-S` values of an args file (experiments/*.args, used as `dvc exp run $(cat F)`)."""
    words = path.read_text().split()
    if words[::2] != ["-S"] * len(words[::2]) or len(words) % 2:
        raise ValueError(f"{path}: expected only '-S key=value' or '-S ~key' pairs")
    return words[1::2]


def update_params(project: Path, patch: dict) -> None:
    path = project / "params.yaml"
    params = merge_patch(yaml.safe_load(path.read_text()), patch)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@contextlib.contextmanager
def params_patched(project: Path, patch: dict) -> Iterator[None]:
    """params.yaml patched for the block, then restored byte for byte."""
    path = project / "params.yaml"
    original = path.read_text()
    update_params(project, patch)
    try:
        yield
    finally:
        path.write_text(original)


# DVC starts a usage-analytics daemon after every command: CPU time on a shared machine, and
# traffic beyond 127.0.0.1. Users opt out the same way, or with `dvc config --global
# core.analytics false`.
NO_ANALYTICS = {"DVC_NO_ANALYTICS": "1"}


def command_env(extra: dict | None = None) -> dict:
    """The project's venv first on PATH (dvc, python), a git identity for `dvc exp`, and DVC's
    usage analytics off (NO_ANALYTICS)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.update(NO_ANALYTICS)
    for role in ("AUTHOR", "COMMITTER"):  # CI may have no git identity
        env.setdefault(f"GIT_{role}_NAME", "pipeline tests")
        env.setdefault(f"GIT_{role}_EMAIL", "tests@localhost")
    return {**env, **(extra or {})}


def run(cmd: list[str], cwd: Path, check: bool = True, env: dict | None = None):
    """Run a command (dvc, python -m pipeline, git) in a project; fail loudly with its output."""
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=command_env(env))
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def ran_stages(output: str) -> list[str]:
    """Stage names that `dvc repro` actually ran, from its output."""
    prefix = "Running stage '"
    return [line.split("'")[1] for line in output.splitlines() if line.startswith(prefix)]
