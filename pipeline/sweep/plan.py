"""Which experiments a sweep is, and which of them are already done.

One experiment per (model, seed): `dvc exp run -S train.seed=K [-S overrides] <stage>`. Its
DVC experiment name is also its identity across reruns: `sweep-<config>-<model>-s<seed>`,
where <config> is a digest of params.yaml (at the sweep's commit, for Ray) and the `-S` overrides. A
rerun of the same sweep finds the same names; an experiment counts as done only when both
its DVC experiment (a git ref) and a FINISHED MLflow training run tagged with its name
exist, so a killed or failed one runs again.
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
    """One (model, seed) of a sweep."""

    model: str  # catalog name: baseline, features-efficientnet_lite0
    stage: str  # its DVC stage: baseline, features@efficientnet_lite0
    seed: int
    config: str  # digest of params.yaml + overrides: the same for every experiment of a sweep
    overrides: tuple[str, ...]  # -S key=value, as given

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


def parse_overrides(overrides: list[str]) -> tuple[str, ...]:
    """`-S key=value` as `dvc exp run -S` takes them; train.seed is the sweep's to set."""
    for override in overrides:
        key, sep, _ = override.partition("=")
        if not sep or not key:
            raise PipelineError(f"-S {override}: expected key=value, e.g. train.baseline.epochs=5")
        if key == "train.seed":
            raise PipelineError("-S train.seed=...: the sweep sets the seed; use --seeds")
    return tuple(overrides)


def config_digest(raw_params: dict, overrides: tuple[str, ...]) -> str:
    """8 hex digits naming what every experiment of the sweep shares: params.yaml as parsed
    (so a comment edit is the same sweep), less its `sweep` section (how the sweep runs is
    not what it trains), and the overrides."""
    trained = {key: value for key, value in raw_params.items() if key != "sweep"}
    text = json.dumps(trained, sort_keys=True) + "\0" + "\0".join(sorted(overrides))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def plan(
    params: Params,
    raw_params: dict,
    models: list[str],
    seeds: list[int],
    overrides: tuple[str, ...],
) -> list[Experiment]:
    """Every (model, seed) of the sweep, models in the book's order (default: every model)."""
    known = {model.name: model for model in catalog.every_model(params)}
    for name in models:
        if name not in known:
            raise PipelineError(f"--model {name}: unknown model; one of {', '.join(known)}")
    chosen = [m for name, m in known.items() if not models or name in models]
    config = config_digest(raw_params, overrides)
    return [
        Experiment(model.name, model.stage, seed, config, overrides)
        for model in chosen
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


def finished_runs(config: str) -> set[str]:
    """Experiment names of this sweep config that have a FINISHED training run in the MLflow
    store (MLFLOW_TRACKING_URI): the run's name is the model, its tag dvc.exp_name the name."""
    import mlflow

    from pipeline.tracking import store

    uri = store.tracking_uri()
    if store.missing_store_file(uri):  # nothing trained yet; connect() would create it
        return set()
    store.connect()
    runs = mlflow.search_runs(
        experiment_names=[store.EXPERIMENT],
        filter_string=(
            f"attributes.status = 'FINISHED' and tags.`dvc.exp_name` LIKE '{NAME_PREFIX}{config}-%'"
        ),
        output_format="list",
    )
    names = set()
    for run in runs:
        name = run.data.tags.get("dvc.exp_name", "")
        if name.startswith(f"{NAME_PREFIX}{config}-{run.info.run_name}-s"):
            names.add(name)
    return names
