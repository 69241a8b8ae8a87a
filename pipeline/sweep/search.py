"""`python -m pipeline search`: a sequential Optuna TPE search, for a grid too big to train.

Each trial is one configuration at params.yaml's seed (`train.seed`), trained as a sweep
trains a grid cell: one DVC experiment named `sweep-<config>-<model>-s<seed>` and its MLflow
training run, which is tagged with the study and the trial number; a configuration already
trained (by a sweep, or an earlier trial) is skipped and its run read. The objective is that
run's best validation accuracy: the test set stays for the comparison. Then the winner and the
book's settings (params.yaml with the search's fixed `-S` only) are trained over --seeds and
ranked by the sweep's report, which says whether the winner is better beyond the noise.

The search space is `-S` in Hydra's sweep syntax: `choice(a,b)` (categorical), `range(lo,
hi,step)` (stepped, hi exclusive as in the grid), `interval(lo,hi)` (continuous floats),
`tag(log, interval(lo,hi))` (log scale). The study lives in
.optuna/<study>.db (sqlite): a killed search, run again, resumes it, the trial it was
training asked again first. Pruning is off: a trial stopped early has no final accuracy to
compare with the others'.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from pipeline.core.errors import PipelineError
from pipeline.core.params import Params, load_params
from pipeline.core.paths import PARAMS_FILE
from pipeline.sweep import grid, plan, report, run

STUDIES = Path(".optuna")
OBJECTIVE = "best_val_accuracy"
BOOK = "book's settings"


def _distribution(override):
    """The Optuna distribution of one sweeping override."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna import distributions as d

    sweep, line = override.value(), override.input_line
    log = "log" in sweep.tags
    if isinstance(sweep, ChoiceSweep):
        if any(not isinstance(v, str | int | float | bool) for v in sweep.list):
            raise PipelineError(f"-S {line}: choice() values must be numbers or strings")
        return d.CategoricalDistribution(sweep.list)
    if isinstance(sweep, IntervalSweep):  # Hydra's intervals are floats; range() for integers
        return d.FloatDistribution(float(sweep.start), float(sweep.end), log=log)
    assert isinstance(sweep, RangeSweep)
    values = list(override.sweep_iterator())
    if log or not values:
        raise PipelineError(f"-S {line}: a range() to search is stepped, non-empty, not log")
    if all(isinstance(v, int) for v in values):
        return d.IntDistribution(values[0], values[-1], step=int(sweep.step))
    low, high, step = (float(_value_text(float(v))) for v in (values[0], values[-1], sweep.step))
    return d.FloatDistribution(low, high, step=step)


def space(overrides: list[str]) -> tuple[tuple[str, ...], dict]:
    """(the fixed `key=value` overrides, {key: distribution} of the searched ones)."""
    fixed, distributions = [], {}
    for override in grid.parse(overrides):
        if override.is_sweep_override():
            distributions[override.get_key_element()] = _distribution(override)
        else:
            fixed.append(override.input_line)
    if not distributions:
        raise PipelineError(
            "nothing to search: give at least one -S key=choice(...), range(...) or interval(...)"
        )
    return tuple(fixed), distributions


def _value_text(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):  # 0.30000000000000004, a float step's sum, is written 0.3
        return repr(float(f"{value:.12g}"))
    if isinstance(value, str) and not re.fullmatch(r"[\w.\-/]+", value):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value)


def overrides_of(params: dict) -> tuple[str, ...]:
    """A trial's params as `-S key=value` overrides, in key order."""
    return tuple(f"{key}={_value_text(params[key])}" for key in sorted(params))


def open_study(name: str):
    """The study `name` in .optuna/<name>.db, created or loaded; TPE, maximising, no pruner."""
    import optuna

    if not re.fullmatch(r"[\w.\-]+", name):
        raise PipelineError(f"--study {name}: letters, digits, '.', '-' and '_' only")
    STUDIES.mkdir(exist_ok=True)
    ignored = STUDIES / ".gitignore"
    if not ignored.exists():  # git, and so DVC's queue, never carries a study into an experiment
        ignored.write_text("*\n")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=f"sqlite:///{(STUDIES / f'{name}.db').resolve()}",
        study_name=name,
        direction="maximize",
        load_if_exists=True,
        pruner=optuna.pruners.NopPruner(),  # a pruned trial is not comparable
    )
    # A seed per run of the search: reproducible, yet a resumed search does not draw its
    # random start-up trials again.
    study.sampler = optuna.samplers.TPESampler(seed=len(study.trials))
    return study


def resume(study) -> list[int]:
    """Fail the trials a killed search left RUNNING and ask their params again first; their
    numbers."""
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"resumes": trial.number})
    return [trial.number for trial in stale]


def complete(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def run_study(study, distributions: dict, trials: int, evaluate: Callable) -> None:
    """Ask, evaluate and tell until the study has `trials` complete trials. A trial whose
    evaluation raises PipelineError (its training failed) is told FAIL; any other exception
    leaves it RUNNING, as a killed search does, for the next run to resume."""
    from optuna.trial import TrialState

    for number in resume(study):
        print(f"trial {number}: left running by a killed search; asked again", flush=True)
    while complete(study) < trials:
        trial = study.ask(distributions)
        try:
            value = evaluate(trial)
        except PipelineError:
            study.tell(trial, state=TrialState.FAIL)
            raise
        study.tell(trial, value)
        print(f"trial {trial.number}: {OBJECTIVE} {value:.4f} ({complete(study)} of {trials})")


@dataclass(frozen=True)
class Search:
    """What every trial shares: the model, its fixed overrides, the seed, where it runs."""

    study: str
    model: str
    fixed: tuple[str, ...]
    seed: int
    params: Params
    raw: dict
    runner: run.Runner

    def experiment(self, cell: tuple[str, ...], seed: int) -> plan.Experiment:
        grid.check_cells(PARAMS_FILE, [cell])
        (experiment,) = plan.plan(self.params, self.raw, [self.model], [seed], [cell])
        return experiment

    def __call__(self, trial) -> float:
        """One trial: its experiment (run unless done), its run tagged, its objective."""
        experiment = self.experiment((*self.fixed, *overrides_of(trial.params)), self.seed)
        trial.set_user_attr("experiment", experiment.name)
        failed, _ = run.execute(self.runner, f"{self.study} trial {trial.number}", [experiment])
        if failed:
            raise PipelineError(
                f"trial {trial.number} ({experiment.name}) failed; run the same search "
                "again to go on (the failed trial stays in the study as FAIL)"
            )
        return self.objective(experiment, trial.number)

    def objective(self, experiment: plan.Experiment, number: int) -> float:
        """The run's OBJECTIVE, once it is tagged with the study and the trial."""
        from mlflow.tracking import MlflowClient

        run_id = plan.finished_runs([experiment])[experiment.name]
        # Tags, not optuna-integration's MLflowCallback: that logs a second run per trial
        client = MlflowClient()
        client.set_tag(run_id, "optuna.study", self.study)
        client.set_tag(run_id, "optuna.trial", str(number))
        metrics = client.get_run(run_id).data.metrics
        if OBJECTIVE not in metrics:
            raise PipelineError(f"{experiment.name}: its run {run_id} logged no {OBJECTIVE}")
        return float(metrics[OBJECTIVE])


def verdict(ranked: pd.DataFrame, winner: str, book: str) -> str:
    """The winner against the book's settings, in words, from the ranked table."""
    rows = {row.group: row for row in ranked.itertuples()}
    if winner not in rows or book not in rows:
        return "not compared: the winner or the book's settings has no finished run yet"
    first = ranked["group"].iloc[0]
    row = rows[book if first == winner else winner]
    if np.isnan(row.p_holm):
        return "not beyond the noise (too few seeds, or no spread, to test)"
    if not row.beyond_noise:
        return f"not beyond the noise (p = {row.p_holm:.3g})"
    return (
        f"{'better' if first == winner else 'worse'} than the book's settings, p = {row.p_holm:.3g}"
    )


def trials_table(study) -> list[str]:
    lines = [
        f"| trial | state | {OBJECTIVE} (seed of the search) | params |",
        "| --- | --- | --- | --- |",
    ]
    for trial in study.get_trials(deepcopy=False):
        value = "" if trial.value is None else f"{trial.value:.4f}"
        params = ", ".join(overrides_of(trial.params))
        lines.append(f"| {trial.number} | {trial.state.name} | {value} | {params} |")
    return lines


def search(
    model: str,
    trials: int,
    overrides: list[str],
    seeds: str = "1-3",
    study_name: str | None = None,
    on: str = "local",
    git_remote: str = "origin",
    args_file: str | None = None,
    argv: str = "",
) -> None:
    """Search, then train the winner and the book's settings over `seeds` and rank them."""
    params = load_params()
    given = run.given_overrides(overrides, args_file)
    fixed, distributions = space(given)
    raw = yaml.safe_load(PARAMS_FILE.read_text())
    plan.plan(params, raw, [model], [0], [fixed])  # an unknown model is refused here
    grid.check_cells(PARAMS_FILE, [fixed])
    replicates = plan.parse_seeds(seeds)
    name = study_name or f"{model}-{plan.sweep_digest(raw, given, [model])}"
    runner = run.make_runner(Path.cwd(), on, None, git_remote, params)
    context = Search(name, model, fixed, params.train.seed, params, raw, runner)
    study = open_study(name)
    print(
        f"search {name}: {complete(study)} of {trials} trials complete "
        f"(study {STUDIES / name}.db), {model} at seed {context.seed}",
        flush=True,
    )
    run_study(study, distributions, trials, context)
    compare_winner(context, study, replicates, argv)


def compare_winner(context: Search, study, seeds: list[int], argv: str) -> None:
    """The best trial's configuration and the book's settings over `seeds`, ranked."""
    best = study.best_trial
    won = (*context.fixed, *overrides_of(best.params))
    labels = {won: f"trial {best.number}: {', '.join(overrides_of(best.params))}"}
    labels[context.fixed] = BOOK
    experiments = [context.experiment(cell, seed) for cell in labels for seed in seeds]
    name = f"search-{context.study}"
    failed, tried = run.execute(context.runner, name, experiments)
    ranked = run.ranking(experiments, labels)
    if ranked is not None:
        groups = [report.group_of(experiments[i], labels) for i in (0, -1)]
        line = f"The winner, trial {best.number}: {verdict(ranked[0], *groups)}."
        about = (
            f"`python -m pipeline search{argv}`: {complete(study)} complete trials of study "
            f"`{context.study}` ({STUDIES / context.study}.db), each scored by its "
            f"{OBJECTIVE} at seed {context.seed}; then the best trial and the {BOOK} "
            f"(params.yaml{' with ' + ' '.join(context.fixed) if context.fixed else ''}) "
            f"over seeds {', '.join(map(str, seeds))}."
        )
        report.write(name, about, *ranked, extra=[line, "", "Trials:", "", *trials_table(study)])
    if failed:
        raise PipelineError(
            f"{len(failed)} of {tried} experiments failed ({', '.join(failed)}); "
            "run the same search again to rerun only those"
        )
