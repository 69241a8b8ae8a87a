"""The sweep on this machine: DVC's own queue. Each experiment is `dvc exp run --queue`d
under its sweep name, then `dvc queue start -j N` runs N at a time, each in a temporary
copy of the workspace (the MLflow store stays the project's: pipeline/tracking/store.py).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pipeline.sweep.plan import Experiment
from pipeline.sweep.task import Result, log_tail

POLL_S = 10.0  # between `dvc queue status` calls: each costs a second of CPU the trainings need


def _dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    dvc = str(Path(sys.executable).parent / "dvc")
    result = subprocess.run([dvc, *args], cwd=root, capture_output=True, text=True)
    if check and result.returncode != 0:
        from pipeline.core.errors import PipelineError

        message = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise PipelineError(f"dvc {' '.join(args[:3])}: {message[-1] if message else 'failed'}")
    return result


def existing_experiments(root: Path) -> set[str]:
    """Names of the experiments in this repository (git refs under refs/exps)."""
    from pipeline.sweep.plan import exp_name_of_ref

    refs = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname)", "refs/exps"],
        cwd=root,
        capture_output=True,
        text=True,
    ).stdout
    return {exp_name_of_ref(ref) for ref in refs.split() if not ref.startswith("refs/exps/celery")}


def queue_states(root: Path) -> dict[str, str]:
    """{experiment name: Queued | Running | Success | Failed | ...} from `dvc queue status`."""
    states = {}
    for line in _dvc(root, "queue", "status", check=False).stdout.splitlines():
        words = line.split()
        if len(words) >= 3 and words[-1] in ("Queued", "Running", "Success", "Failed"):
            states[words[1]] = words[-1]
    return states


def run_queue(
    root: Path, experiments: list[Experiment], jobs: int, on_start: Callable[[], None] = None
) -> Iterator[Result]:
    """Queue every experiment, start `jobs` workers, yield each result as it ends."""
    _queue(root, experiments)
    started = time.monotonic()
    _dvc(root, "queue", "start", "-j", str(jobs))
    if on_start:
        on_start()
    yield from _results(root, {experiment.name for experiment in experiments}, started)


def _queue(root: Path, experiments: list[Experiment]) -> None:
    """`dvc exp run --queue` each experiment under its name."""
    stale = queue_states(root)
    present = existing_experiments(root)
    for experiment in experiments:
        # A failed queue entry or an experiment without a finished run: replaced.
        if experiment.name in stale:
            _dvc(root, "queue", "remove", experiment.name, check=False)
        if experiment.name in present:
            _dvc(root, "exp", "remove", experiment.name, check=False)
        _dvc(
            root,
            "exp", "run", "--queue", "--name", experiment.name,
            *experiment.set_params(), experiment.stage,
        )  # fmt: skip


def _results(root: Path, pending: set[str], started: float) -> Iterator[Result]:
    """Each experiment's result, as `dvc queue status` reports it ended."""
    while pending:  # ends when DVC reports every experiment finished, one way or the other
        time.sleep(POLL_S)
        states = queue_states(root)
        for name in sorted(pending):
            state = states.get(name)
            if state in ("Queued", "Running"):
                continue
            pending.discard(name)
            yield _result(root, name, state, time.monotonic() - started)


def _result(root: Path, name: str, state: str | None, elapsed: float) -> Result:
    # DVC's queue says when an experiment has ended, not when it started: the time
    # since the queue started ("ended after N s"), seen at the poll that saw it end.
    ok = state == "Success"
    return Result(
        name=name,
        ok=ok,
        failed_step="" if ok else "run",
        seconds={"ended after": round(elapsed, 2)},
        log_tail="" if ok else _log_tail(root, name, state),
        host="local",
    )


def _log_tail(root: Path, name: str, state: str | None) -> str:
    """The end of `dvc queue logs`, less its colour codes."""
    logs = _dvc(root, "queue", "logs", name, check=False)
    lines = (logs.stdout + logs.stderr).strip().splitlines()
    if state is None:
        lines.append("(no longer in `dvc queue status`)")
    return log_tail([re.sub(r"\x1b\[[0-9;]*m", "", line) for line in lines])
