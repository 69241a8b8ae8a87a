"""What one Ray task does on a worker: one experiment of a sweep, from a fresh clone.

Standard library only, and sent to the workers by value (ray_cluster.py), so a worker
needs the project's environment (dvc, python with the pipeline's dependencies) and
nothing of this repository installed. Every step is a subprocess whose output goes to
one log; the result says how long each step took and, on failure, which one and the
tail of the log.

Job and Result are also what the sweep's other modules pass around (run.py, local.py,
ray_cluster.py): defined here, the one module a worker has.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, TypedDict

LOG_TAIL_LINES = 25  # of a failed experiment's log, printed by the sweep


class Job(TypedDict):
    """One experiment as a worker runs it: the commit to clone, the stage and its params."""

    git_url: str  # cloned by the worker, so absolute
    git_remote: str  # the clone's name for it, which the experiment is pushed to
    commit: str
    name: str  # the DVC experiment's name
    stage: str
    set_params: list[str]  # `dvc exp run` arguments: -S key=value ...
    env: dict[str, str]  # from the sweep's shell: the tracking server


class Result(TypedDict):
    """How one experiment ended, on whichever runner ran it."""

    name: str
    ok: bool
    failed_step: str  # "" when ok; clone, checkout, pull, run, push, or ray (a lost task)
    seconds: dict[str, float]  # per step
    log_tail: str  # "" when ok
    host: str


def log_tail(lines: list[str]) -> str:
    """The last LOG_TAIL_LINES of a log, as one text."""
    return "\n".join(lines[-LOG_TAIL_LINES:])


def run_experiment(job: Job) -> Result:
    """Clone, check out, pull, run and push the experiment, until a step fails."""
    import socket

    env = _environment(job)
    scratch = Path(tempfile.mkdtemp(prefix=f"pipeline-sweep-{job['name']}-"))
    log = scratch / "task.log"
    try:
        with log.open("w") as out:
            seconds, failed_step = _run_steps(_steps(job, scratch), env, out)
        tail = log_tail(log.read_text(errors="replace").splitlines()) if failed_step else ""
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return Result(
        name=job["name"],
        ok=not failed_step,
        failed_step=failed_step,
        seconds=seconds,
        log_tail=tail,
        host=socket.gethostname(),
    )


def _environment(job: Job) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)  # this worker's dvc and python
    env = {**os.environ, **job["env"], "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.setdefault("GIT_TERMINAL_PROMPT", "0")
    for role in ("AUTHOR", "COMMITTER"):  # `dvc exp run` commits the experiment
        env.setdefault(f"GIT_{role}_NAME", "pipeline sweep")
        env.setdefault(f"GIT_{role}_EMAIL", "sweep@localhost")
    return env


def _steps(job: Job, scratch: Path) -> list[tuple[str, list[str], Path]]:
    """(step, command, working directory) of each step, in order."""
    clone = scratch / "project"
    remote = job["git_remote"]
    return [
        ("clone", ["git", "clone", "-q", "--origin", remote, job["git_url"], str(clone)], scratch),
        ("checkout", ["git", "checkout", "-q", "--detach", job["commit"]], clone),
        # Only what the chosen stage needs; outputs never pushed (stages not run yet) are
        # missing, not an error: the experiment makes them.
        ("pull", ["dvc", "pull", "--allow-missing", "--with-deps", job["stage"]], clone),
        (
            "run",
            ["dvc", "exp", "run", "--name", job["name"], *job["set_params"], job["stage"]],
            clone,
        ),
        # Pushes the experiment's git ref and, with it, its outputs to the DVC remote.
        ("push", ["dvc", "exp", "push", remote, job["name"]], clone),
    ]


def _run_steps(
    steps: list[tuple[str, list[str], Path]], env: dict[str, str], out: IO[str]
) -> tuple[dict[str, float], str]:
    """Each step in turn, its output into `out`, until one fails: (seconds of each step
    run, the failed step or "")."""
    seconds: dict[str, float] = {}
    for step, cmd, cwd in steps:
        started = time.monotonic()
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        code = subprocess.run(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
        ).returncode
        seconds[step] = round(time.monotonic() - started, 2)
        if code != 0:
            out.write(f"[{step} exited {code}]\n")
            return seconds, step
    return seconds, ""
