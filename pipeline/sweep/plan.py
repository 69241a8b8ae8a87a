"""Which experiments a sweep is, and which of them are already done.

One experiment per (model, configuration, seed): `dvc exp run -S train.seed=K [-S the
configuration's overrides] <stage>`. Its DVC experiment name is also its identity across
reruns: `sweep-<config>-<model>-s<seed>`, where <config> is a digest of params.yaml (at the
sweep's commit, for Ray) and the configuration's overrides. A rerun of the same sweep finds
the same names, and so does another sweep or search that trains the same configuration; an
experiment counts as done only when both its DVC experiment (a git ref) and a FINISHED MLflow
training run tagged with its name exist, so a killed or failed one runs again.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from pipeline.core import catalog
from pipeline.core.errors import PipelineError
from pipeline.core.params import Params

NAME_PREFIX = "sweep-"
MAX_SEEDS = 1000  # a typo such as 1-10000 is refused, not queued


@dataclass(frozen=True)
class Experiment:
    """One (model, configuration, seed) of a sweep."""

    model: str  # catalog name: baseline, features-efficientnet_lite0
    stage: str  # its DVC stage: baseline, features@efficientnet_lite0
    seed: int
    config: str  # digest of params.yaml + overrides: the same for every seed of a configuration
    overrides: tuple[str, ...]  # the configuration's -S key=value

    @property
    def name(self) -> str:
        return f"{NAME_PREFIX}{self.config}-{self.model}-s{self.seed}"

    def set_params(self) -> list[str]:
        """`dvc exp run` arguments that set its params."""
        args = ["-S", f"train.seed={self.seed}"]
        for override in self.overrides:
            args += ["-S", override]
        return args


def parse_seeds(text: str) -> list[int]:
    """`1-5`, `1,3`, `1-3,7` -> sorted distinct seeds."""
    seeds: set[int] = set()
    for part in text.replace(" ", "").split(","):
        match = re.fullmatch(r"(-?\d+)(?:-(-?\d+))?", part)
        if not match:
            raise PipelineError(
                f"--seeds {text}: {part or '(empty)'!r} is not a seed or a range; "
                "give e.g. 1-5 or 1,3,7"
            )
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        if high < low:
            raise PipelineError(f"--seeds {text}: range {part} runs backwards; write {high}-{low}")
        seeds.update(range(low, high + 1))
        if len(seeds) > MAX_SEEDS:
            raise PipelineError(f"--seeds {text}: more than {MAX_SEEDS} seeds")
    return sorted(seeds)


def config_digest(raw_params: dict, overrides: tuple[str, ...]) -> str:
    """8 hex digits naming what every experiment of the sweep shares: params.yaml as parsed
    (so a comment edit is the same sweep), less its `sweep` section (how the sweep runs is
    not what it trains), and the overrides."""
    trained = {key: value for key, value in raw_params.items() if key != "sweep"}
    text = json.dumps(trained, sort_keys=True) + "\0" + "\0".join(sorted(overrides))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def sweep_digest(raw_params: dict, overrides: list[str], models: list[str]) -> str:
    """8 hex digits naming a whole sweep (its report): params.yaml, the `-S` options as
    given (grid expressions included) and the models; not the seeds, so more seeds of the
    same sweep update its report."""
    return config_digest(raw_params, (*overrides, *(f"--model {m}" for m in sorted(models))))


def plan(
    params: Params,
    raw_params: dict,
    models: list[str],
    seeds: list[int],
    cells: list[tuple[str, ...]],
) -> list[Experiment]:
    """Every (model, configuration, seed) of the sweep, models in the book's order (default:
    every model), configurations in the grid's order."""
    known = {model.name: model for model in catalog.every_model(params)}
    for name in models:
        if name not in known:
            raise PipelineError(f"--model {name}: unknown model; one of {', '.join(known)}")
    chosen = [m for name, m in known.items() if not models or name in models]
    configs = {cell: config_digest(raw_params, cell) for cell in cells}
    return [
        Experiment(model.name, model.stage, seed, configs[cell], cell)
        for model in chosen
        for cell in configs  # a configuration given twice is trained once
        for seed in seeds
    ]


def exp_name_of_ref(ref: str) -> str:
    """`refs/exps/ab/cdef.../sweep-1a2b3c4d-baseline-s1` -> its experiment name."""
    return ref.rsplit("/", 1)[-1]


def split_done(
    experiments: list[Experiment], exp_names: set[str], finished_runs: set[str]
) -> tuple[list[Experiment], list[Experiment]]:
    """(done, to run): done has both a DVC experiment and a FINISHED MLflow run of its name."""
    done = [e for e in experiments if e.name in exp_names and e.name in finished_runs]
    todo = [e for e in experiments if e not in done]
    return done, todo


def finished_runs(experiments: list[Experiment]) -> dict[str, str]:
    """{experiment name: run id} of the experiments that have a FINISHED training run in the
    MLflow store (MLFLOW_TRACKING_URI), the latest where there are several: the run's name is
    the model, its tag dvc.exp_name the experiment's name."""
    import mlflow

    from pipeline.tracking import store

    uri = store.tracking_uri()
    if store.missing_store_file(uri):  # nothing trained yet; connect() would create it
        return {}
    store.connect()
    model_of = {experiment.name: experiment.model for experiment in experiments}
    runs = mlflow.search_runs(
        experiment_names=[store.EXPERIMENT],
        filter_string=f"attributes.status = 'FINISHED' and tags.`dvc.exp_name` LIKE '{NAME_PREFIX}%'",
        order_by=["attributes.start_time ASC"],
        output_format="list",
    )
    found = {}
    for run in runs:  # oldest first: a later run of the same experiment replaces an earlier
        name = run.data.tags.get("dvc.exp_name", "")
        if model_of.get(name) == run.info.run_name:
            found[name] = run.info.run_id
    return found
