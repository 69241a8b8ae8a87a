"""`python -m pipeline sweep`: expand the grid, plan, refuse a bad setup, skip what is done,
run the rest (DVC queue or Ray), report each failure, then rank the configurations
(report.py). `execute` and `make_runner` are also the search's (search.py)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import yaml

from pipeline.core.errors import PipelineError
from pipeline.core.params import Params, SweepParams, load_params
from pipeline.core.paths import PARAMS_FILE
from pipeline.sweep import checks, grid, plan, report
from pipeline.sweep.task import Job, Result
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


def _describe(experiment: plan.Experiment, result: Result) -> str:
    steps = ", ".join(f"{step} {s:.1f} s" for step, s in result["seconds"].items())
    if result["ok"]:
        return f"done    {experiment.name} ({experiment.stage}, seed {experiment.seed}): {steps}"
    tail = "\n".join("    | " + line for line in result["log_tail"].splitlines())
    return (
        f"FAILED  {experiment.name}: seed {experiment.seed}, stage {experiment.stage}, "
        f"step {result['failed_step']} ({steps or 'no step finished'}); its log ends:\n{tail}"
    )


class Runner(Protocol):
    """Where a sweep's experiments run: chosen once, from --on."""

    @property
    def where(self) -> str:
        """For the sweep's first line: `on ...`."""

    def existing(self) -> set[str]:
        """Names of the experiments already made where this runner keeps them."""

    def run(self, todo: list[plan.Experiment]) -> Iterator[Result]:
        """Run every experiment, yield each result as it ends."""

    def print_next_step(self, ran: int) -> None:
        """How the user gets the `ran` experiments that succeeded, if they are elsewhere."""


@dataclass(frozen=True)
class LocalRunner:
    """This repository's DVC queue, `jobs` experiments at a time."""

    root: Path
    jobs: int

    @property
    def where(self) -> str:
        return f"on this machine, {self.jobs} at a time"

    def existing(self) -> set[str]:
        from pipeline.sweep.local import existing_experiments

        return existing_experiments(self.root)

    def run(self, todo: list[plan.Experiment]) -> Iterator[Result]:
        from pipeline.sweep.local import run_queue

        # The store made here, once: trainings started together on a new one race to create
        # its tables and fail (table _alembic_tmp_... already exists).
        store.connect()
        return run_queue(self.root, todo, self.jobs)

    def print_next_step(self, ran: int) -> None:
        pass  # the experiments are in this repository already


@dataclass(frozen=True)
class RayRunner:
    """Tasks of a Ray cluster, whose workers clone `url` and push their experiments to
    `git_remote`."""

    root: Path
    address: str
    url: str
    git_remote: str
    resources: SweepParams

    @property
    def where(self) -> str:
        return f"on {self.address}"

    def existing(self) -> set[str]:  # the workers push their experiments to the git remote
        return _remote_experiments(self.root, self.git_remote)

    def run(self, todo: list[plan.Experiment]) -> Iterator[Result]:
        from pipeline.sweep.ray_cluster import run_tasks

        commit = checks.commit_is_pushed(self.root, self.git_remote)
        jobs = [self._job(experiment, commit) for experiment in todo]
        return run_tasks(self.address, jobs, self.resources)

    def _job(self, experiment: plan.Experiment, commit: str) -> Job:
        return Job(
            git_url=self.url,
            git_remote=self.git_remote,
            commit=commit,
            name=experiment.name,
            stage=experiment.stage,
            set_params=experiment.set_params(),
            env=_forwarded_env(),
        )

    def print_next_step(self, ran: int) -> None:
        if ran:
            print(f"fetch them here: dvc exp pull {self.git_remote} <name>... (or dvc exp pull -A)")


def make_runner(root: Path, on: str, jobs: int | None, git_remote: str, params: Params) -> Runner:
    """The runner --on names; a Ray one only once its setup passed every check; then the
    MLflow store checked reachable."""
    uri = store.tracking_uri()
    if on == "local":
        runner: Runner = LocalRunner(root, jobs or params.sweep.jobs)
    else:
        address, url = checks.refuse_bad_ray_setup(root, on, uri, git_remote)
        runner = RayRunner(root, address, _absolute_url(root, url), git_remote, params.sweep)
    store.check_reachable(uri)
    return runner


def given_overrides(overrides: list[str], args_file: str | None) -> list[str]:
    """The args file's `-S` options, then the command line's."""
    return [*(grid.read_args_file(args_file) if args_file else []), *overrides]


def sweep(
    models: list[str],
    seeds: str,
    overrides: list[str],
    on: str = "local",
    jobs: int | None = None,
    git_remote: str = "origin",
    args_file: str | None = None,
    argv: str = "",
) -> None:
    """Run the sweep; PipelineError (exit 1) after the report if any failed."""
    root = Path.cwd()
    params = load_params()
    given = given_overrides(overrides, args_file)
    cells = grid.expand(given)
    grid.check_cells(PARAMS_FILE, cells)
    raw = yaml.safe_load(PARAMS_FILE.read_text())
    experiments = plan.plan(params, raw, models, plan.parse_seeds(seeds), cells)
    name = f"{plan.NAME_PREFIX}{plan.sweep_digest(raw, given, models)}"
    runner = make_runner(root, on, jobs, git_remote, params)
    failed, tried = execute(runner, name, experiments)
    seeds_n, models_of = len({e.seed for e in experiments}), sorted({e.model for e in experiments})
    about = (
        f"`python -m pipeline sweep{argv}`: {len(cells)} configuration(s) × {seeds_n} "
        f"seed(s) of {', '.join(models_of)}."
    )
    ranked = ranking(experiments, report.cell_labels(cells))
    if ranked is not None:
        report.write(name, about, *ranked)
    if failed:
        raise PipelineError(
            f"{len(failed)} of {tried} experiments failed "
            f"({', '.join(failed)}); run the same sweep again to rerun only those"
        )


def execute(runner: Runner, name: str, experiments: list[plan.Experiment]) -> tuple[list[str], int]:
    """Run the experiments not done yet, printing each: (the names of those that failed,
    how many ran)."""
    done, todo = plan.split_done(experiments, runner.existing(), plan.finished_runs(experiments))
    _announce(name, experiments, done, todo, runner.where)
    started = time.monotonic()
    failed = _run(runner, todo)
    print(
        f"{name}: {len(todo) - len(failed)} ran, {len(failed)} failed, "
        f"{len(done)} skipped, in {time.monotonic() - started:.0f} s",
        flush=True,
    )
    runner.print_next_step(len(todo) - len(failed))
    return failed, len(todo)


def _announce(
    name: str,
    experiments: list[plan.Experiment],
    done: list[plan.Experiment],
    todo: list[plan.Experiment],
    where: str,
) -> None:
    print(
        f"{name}: {len(experiments)} experiments, {len(done)} "
        f"already done (skipped), {len(todo)} to run {where}",
        flush=True,
    )
    for experiment in done:
        print(f"skip    {experiment.name}: finished experiment and MLflow run", flush=True)


def _run(runner: Runner, todo: list[plan.Experiment]) -> list[str]:
    """Run `todo`, print each result as it ends; the names of the failed ones."""
    if not todo:  # no queue started, no cluster connected
        return []
    by_name = {experiment.name: experiment for experiment in todo}
    failed = []
    for result in runner.run(todo):
        print(_describe(by_name[result["name"]], result), flush=True)
        if not result["ok"]:
            failed.append(result["name"])
    return failed


def ranking(experiments: list[plan.Experiment], labels: dict[tuple[str, ...], str]):
    """(ranked configurations, experiments without a finished run), or None when no
    experiment has one yet (said in a line: the failures say why)."""
    try:
        runs = report.load(experiments, labels)
    except PipelineError as exc:
        runs, reason = None, str(exc)
    if runs is None or runs.empty:
        print(f"report: {reason if runs is None else 'no finished run of these experiments'}")
        return None
    finished = set(runs[report.EXP_TAG])
    return report.rank(runs), [e.name for e in experiments if e.name not in finished]
