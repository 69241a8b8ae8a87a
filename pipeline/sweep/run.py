"""`python -m pipeline sweep`: plan, refuse a bad setup, skip what is done, run the rest
(DVC queue or Ray), report each failure, then `compare` over the sweep."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import yaml

from pipeline.core.errors import PipelineError
from pipeline.core.params import load_params
from pipeline.core.paths import PARAMS_FILE
from pipeline.sweep import checks, plan
from pipeline.tracking import store


def _absolute_url(root: Path, url: str) -> str:
    """A git remote that is a relative local path, as an absolute one: workers clone it
    from elsewhere."""
    if re.match(r"^[\w+.-]+://", url) or re.match(r"^[^/]+@[^/]+:", url):
        return url
    return str((root / url).resolve())


def _remote_experiments(root: Path, remote: str) -> set[str]:
    listed = subprocess.run(
        ["git", "ls-remote", remote, "refs/exps/*"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=checks.GIT_TIMEOUT_S,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
    ).stdout
    return {plan.exp_name_of_ref(line.split()[-1]) for line in listed.splitlines() if line}


def _forwarded_env() -> dict[str, str]:
    """What a worker's stages need from this shell: the tracking server and experiment."""
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_TRACKING_TOKEN")
    return {name: os.environ[name] for name in names if os.environ.get(name)}


def _describe(experiment: plan.Experiment, result: dict) -> str:
    steps = ", ".join(f"{step} {s:.1f} s" for step, s in result["seconds"].items())
    if result["ok"]:
        return f"done    {experiment.name} ({experiment.stage}, seed {experiment.seed}): {steps}"
    tail = "\n".join("    | " + line for line in result["log_tail"].splitlines())
    return (
        f"FAILED  {experiment.name}: seed {experiment.seed}, stage {experiment.stage}, "
        f"step {result['failed_step']} ({steps or 'no step finished'}); its log ends:\n{tail}"
    )


def sweep(
    models: list[str],
    seeds: str,
    overrides: list[str],
    on: str = "local",
    jobs: int | None = None,
    git_remote: str = "origin",
) -> None:
    """Run the sweep; PipelineError (exit 1) after the compare table if any failed."""
    root = Path.cwd()
    params = load_params()
    raw = yaml.safe_load(PARAMS_FILE.read_text())
    experiments = plan.plan(
        params, raw, models, plan.parse_seeds(seeds), plan.parse_overrides(overrides)
    )
    uri = store.tracking_uri()
    if on == "local":
        address = url = ""
    else:
        address, url = checks.refuse_bad_ray_setup(root, on, uri, git_remote)
        url = _absolute_url(root, url)
    store.check_reachable(uri)

    config = experiments[0].config
    if address:  # the workers push their experiments to the git remote
        existing = _remote_experiments(root, git_remote)
    else:
        from pipeline.sweep.local import existing_experiments

        existing = existing_experiments(root)
    done, todo = plan.split_done(experiments, existing, plan.finished_runs(config))
    where = (
        f"on {address}" if address else f"on this machine, {jobs or params.sweep.jobs} at a time"
    )
    print(
        f"sweep {plan.NAME_PREFIX}{config}: {len(experiments)} experiments, {len(done)} "
        f"already done (skipped), {len(todo)} to run {where}",
        flush=True,
    )
    for experiment in done:
        print(f"skip    {experiment.name}: finished experiment and MLflow run", flush=True)

    by_name = {experiment.name: experiment for experiment in todo}
    failed: list[str] = []
    started = time.monotonic()
    if todo:
        if address:
            from pipeline.sweep.ray_cluster import run_tasks

            commit = checks.commit_is_pushed(root, git_remote)
            jobs_ = [
                {
                    "git_url": url,
                    "git_remote": git_remote,
                    "commit": commit,
                    "name": e.name,
                    "stage": e.stage,
                    "set_params": e.set_params(),
                    "env": _forwarded_env(),
                }
                for e in todo
            ]
            results = run_tasks(address, jobs_, params.sweep)
        else:
            from pipeline.sweep.local import run_queue

            results = run_queue(root, todo, jobs or params.sweep.jobs)
        for result in results:
            print(_describe(by_name[result["name"]], result), flush=True)
            if not result["ok"]:
                failed.append(result["name"])
    print(
        f"sweep {plan.NAME_PREFIX}{config}: {len(todo) - len(failed)} ran, {len(failed)} failed, "
        f"{len(done)} skipped, in {time.monotonic() - started:.0f} s",
        flush=True,
    )
    if address and len(todo) > len(failed):
        print(f"fetch them here: dvc exp pull {git_remote} <name>... (or dvc exp pull -A)")
    _compare(config, sorted({e.model for e in experiments}))
    if failed:
        raise PipelineError(
            f"{len(failed)} of {len(todo)} experiments failed ({', '.join(failed)}); "
            "run the same sweep again to rerun only those"
        )


def _compare(config: str, models: list[str]) -> None:
    from pipeline.reporting.compare import Selection, run_compare

    selection = Selection(
        models=tuple(models), where=f"tags.`dvc.exp_name` LIKE '{plan.NAME_PREFIX}{config}-%'"
    )
    try:
        argv = (
            "".join(f" --model {m}" for m in models) + f" --filter {shlex.quote(selection.where)}"
        )
        run_compare(selection, argv)
    except PipelineError as exc:  # nothing finished: the failures say why
        print(f"compare: {exc}")
