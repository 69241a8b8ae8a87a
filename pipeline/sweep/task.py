"""What one Ray task does on a worker: one experiment of a sweep, from a fresh clone.

Standard library only, and sent to the workers by value (ray_cluster.py), so a worker
needs the project's environment (dvc, python with the pipeline's dependencies) and
nothing of this repository installed. Every step is a subprocess whose output goes to
one log; the result says how long each step took and, on failure, which one and the
tail of the log.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOG_TAIL_LINES = 25


def _tail(log: Path) -> str:
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return "\n".join(lines[-LOG_TAIL_LINES:])


def run_experiment(job: dict) -> dict:
    """job: git_url, commit, git_remote, name, stage, set_params, env. Returns name, ok,
    failed_step, seconds (per step), log_tail, host."""
    import socket

    bin_dir = str(Path(sys.executable).parent)  # this worker's dvc and python
    env = {**os.environ, **job["env"], "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.setdefault("GIT_TERMINAL_PROMPT", "0")
    for role in ("AUTHOR", "COMMITTER"):  # `dvc exp run` commits the experiment
        env.setdefault(f"GIT_{role}_NAME", "pipeline sweep")
        env.setdefault(f"GIT_{role}_EMAIL", "sweep@localhost")
    scratch = Path(tempfile.mkdtemp(prefix=f"pipeline-sweep-{job['name']}-"))
    log = scratch / "task.log"
    clone = scratch / "project"
    remote = job["git_remote"]
    steps = [
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
    result = {"name": job["name"], "ok": True, "failed_step": "", "seconds": {}, "log_tail": ""}
    result["host"] = socket.gethostname()
    try:
        with log.open("w") as out:
            for step, cmd, cwd in steps:
                started = time.monotonic()
                out.write(f"$ {' '.join(cmd)}\n")
                out.flush()
                code = subprocess.run(
                    cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
                ).returncode
                result["seconds"][step] = round(time.monotonic() - started, 2)
                if code != 0:
                    out.write(f"[{step} exited {code}]\n")
                    result.update(ok=False, failed_step=step)
                    break
        if not result["ok"]:
            result["log_tail"] = _tail(log)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return result
