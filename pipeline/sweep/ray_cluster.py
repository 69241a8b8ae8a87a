"""The sweep on an existing Ray cluster: one Ray task per experiment. The only module of the
pipeline that imports ray (the `ray` dependency group), so no stage pays for it.

Ray schedules: each task asks for the CPUs and GPUs of params.yaml `sweep` and runs
task.run_experiment on whichever worker has them. Tasks are not retried by Ray
(max_retries=0): a task whose worker died is reported failed, and the next run of the
sweep runs it again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

from pipeline.core.errors import PipelineError
from pipeline.core.params import SweepParams
from pipeline.sweep import task


def _import_ray():
    # Under `uv run`, Ray would ship this working directory to every worker and start them
    # with `uv run` there: the project travels by git clone, the environment is the cluster's.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    try:
        import ray
    except ImportError:
        raise PipelineError(
            "--on ray: Ray is not installed; `uv sync --locked --group ray` (docs/scaling.md)"
        ) from None
    return ray


CONNECT_ATTEMPTS = 3


def _connect(ray, address: str) -> None:
    """ray.init through the Ray Client, tried CONNECT_ATTEMPTS times.

    The head's client proxy starts one server process per driver; when that process dies at
    startup (seen under load, or with its port taken) the proxy aborts the connection. A new
    attempt gets a new server on the next free port, so a retry is the fix, not a workaround.
    The address itself was checked reachable before (checks.ray_reachable).
    """
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        try:
            ray.init(address=address, logging_level="WARNING", log_to_driver=False)
            return
        except ConnectionError as exc:  # ConnectionAbortedError: the proxy's server died
            ray.shutdown()
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            if attempt == CONNECT_ATTEMPTS:
                raise PipelineError(
                    f"Ray cluster {address}: its client server failed {attempt} times ({first}); "
                    "see ray_client_server_*.err in the head's session logs"
                ) from None
            print(f"Ray cluster {address}: connection {attempt} failed ({first}); retrying")
            time.sleep(2 * attempt)


def run_tasks(
    address: str,
    jobs: list[task.Job],
    resources: SweepParams,
    on_start: Callable[[], None] = None,
) -> Iterator[task.Result]:
    """Submit every job, yield each result as it finishes (in finishing order)."""
    ray = _import_ray()
    _connect(ray, address)
    try:
        # Sent by value: a worker needs no copy of this repository to run it.
        ray.cloudpickle.register_pickle_by_value(task)
        remote = ray.remote(task.run_experiment).options(
            num_cpus=resources.cpus_per_task,
            num_gpus=resources.gpus_per_task,
            max_retries=0,
        )
        pending = {remote.remote(job): job for job in jobs}
        if on_start:
            on_start()
        while pending:  # one wait per task: the loop ends after len(jobs) rounds
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready)
            try:
                yield ray.get(ready)
            except ray.exceptions.RayError as exc:  # the worker died, or Ray lost the task
                yield _lost(job, exc)
    finally:
        ray.shutdown()


def _lost(job: task.Job, exc: Exception) -> task.Result:
    """A task that never returned: failed at step `ray`, the error's first line its log."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return task.Result(
        name=job["name"],
        ok=False,
        failed_step="ray",
        seconds={},
        log_tail=f"{type(exc).__name__}: {first}",
        host="?",
    )
