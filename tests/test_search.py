"""`python -m pipeline search` (pipeline/sweep/search.py), fast and in this process.

The search space from Hydra's sweep syntax; a real Optuna study in a sqlite file under
tmp_path, killed after one trial (an exception out of the objective) and resumed to three;
and the whole search, trials then the winner against the book's settings over seeds, on a
stand-in runner that logs each experiment's training run to a real MLflow store instead of
training (tests/test_sweep.py's slow test trains for real).
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field

import pandas as pd
import pytest

from pipeline.core.errors import PipelineError
from pipeline.sweep import report, search
from pipeline.sweep import run as sweep_run
from pipeline.sweep.task import Result
from tests.helpers.project import ROOT

# --- the space ---------------------------------------------------------------------------


def test_the_space_is_hydras_sweep_syntax_as_optuna_distributions():
    from optuna.distributions import CategoricalDistribution as C
    from optuna.distributions import FloatDistribution as F
    from optuna.distributions import IntDistribution as I  # noqa: E741

    fixed, space = search.space(
        ["train.baseline.epochs=2", "a=choice(max,average)", "b=range(1,10,2)"]
        + ["c=range(0.1,0.45,0.1)", "d=interval(1,5)", "e=interval(0.1,0.5)"]
        + ["f=tag(log, interval(1e-5,1e-2))", "g=0.3,0.5"]
    )
    assert fixed == ("train.baseline.epochs=2",)
    assert space == {
        "a": C(["max", "average"]),
        "b": I(1, 9, step=2),  # range's end is exclusive, as in the grid
        "c": F(0.1, 0.4, step=0.1),
        "d": F(1.0, 5.0),  # Hydra's intervals are floats
        "e": F(0.1, 0.5),
        "f": F(1e-5, 1e-2, log=True),
        "g": C([0.3, 0.5]),
    }
    params = {"b": 3, "c": 0.30000000000000004, "a": "max", "x": "two words", "y": True}
    assert search.overrides_of(params) == ("a=max", "b=3", "c=0.3", "x='two words'", "y=true")


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (["train.baseline.epochs=2"], "nothing to search"),
        (["a=tag(log, range(1,5))"], "stepped, non-empty, not log"),
        (["a=choice([1,2],[3])"], "choice\\(\\) values must be numbers or strings"),
        (["train.seed=choice(1,2)"], "use --seeds"),
    ],
)
def test_a_bad_space_is_refused(given, message):
    with pytest.raises(PipelineError, match=message):
        search.space(given)


# --- the study: killed, resumed ------------------------------------------------------------


class Killed(Exception):
    """What a kill looks like from inside the loop: the trial never gets told."""


def test_a_killed_search_resumes_from_its_sqlite_study(tmp_path, monkeypatch):
    from optuna.distributions import FloatDistribution

    monkeypatch.chdir(tmp_path)
    space = {"x": FloatDistribution(0.0, 1.0)}
    asked = []

    def objective(trial) -> float:
        asked.append(trial.params["x"])
        if len(asked) == 2:
            raise Killed
        return -((trial.params["x"] - 0.3) ** 2)

    with pytest.raises(Killed):
        search.run_study(search.open_study("toy"), space, 3, objective)
    study = search.open_study("toy")  # as a new process would: from .optuna/toy.db
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE", "RUNNING"]

    search.run_study(study, space, 3, objective)
    trials = search.open_study("toy").get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[2].params == trials[1].params  # the killed trial asked again, first
    assert trials[2].user_attrs == {"resumes": 1}
    assert asked[2] == asked[1] and len(asked) == 4

    search.run_study(search.open_study("toy"), space, 3, objective)  # complete: asks nothing
    assert len(asked) == 4
    assert (tmp_path / ".optuna/toy.db").is_file()
    assert (tmp_path / ".optuna/.gitignore").read_text() == "*\n"


def test_a_failed_training_fails_its_trial_and_stops_the_search(tmp_path, monkeypatch):
    from optuna.distributions import IntDistribution

    monkeypatch.chdir(tmp_path)

    def fails(trial) -> float:
        raise PipelineError("trial 0 failed")

    with pytest.raises(PipelineError, match="trial 0 failed"):
        search.run_study(search.open_study("toy"), {"n": IntDistribution(1, 3)}, 2, fails)
    study = search.open_study("toy")
    assert [t.state.name for t in study.get_trials()] == ["FAIL"]
    assert search.resume(study) == []  # a failed trial is not asked again


# --- the verdict ---------------------------------------------------------------------------


def ranked_of(scores: dict[str, list[float]]) -> pd.DataFrame:
    rows = [
        {"group": g, "model": "m", "draw": str(seed), "test_accuracy": a, "best_val_accuracy": a}
        for g, accuracies in scores.items()
        for seed, a in enumerate(accuracies, 1)
    ]
    return report.rank(pd.DataFrame(rows))


def test_the_verdict_says_better_worse_or_within_the_noise():
    apart = {"won": [0.90, 0.91, 0.92], "book": [0.70, 0.71, 0.72]}
    assert search.verdict(ranked_of(apart), "won", "book").startswith(
        "better than the book's settings, p = "
    )
    assert search.verdict(ranked_of(apart), "book", "won").startswith("worse than")
    close = {"won": [0.90, 0.80, 0.85], "book": [0.84, 0.86, 0.82]}
    assert search.verdict(ranked_of(close), "won", "book").startswith("not beyond the noise (p = ")
    assert search.verdict(ranked_of({"won": [0.9]}), "won", "book").startswith("not compared")


# --- the whole search, on a stand-in runner ------------------------------------------------

KEY = "train.baseline.learning_rate"


def accuracy(rate: float, seed: int) -> float:
    """Best near 3e-3; the book's 1e-4 about 0.11 lower; a seed moves it by 0.004."""
    return 0.9 - 0.05 * (math.log10(rate) + 2.5) ** 2 + 0.002 * (seed % 3 - 1)


@dataclass
class LoggingRunner:
    """A runner whose experiments log their training run and train nothing."""

    made: set[str] = field(default_factory=set)
    where: str = "in this test"

    def existing(self) -> set[str]:
        return set(self.made)

    def run(self, todo):
        from pipeline.tracking import store
        from tests.test_sweep import log_training_run

        store.connect()  # as the training process does
        for experiment in todo:
            values = dict(o.split("=", 1) for o in experiment.overrides)
            rate = float(values.get(KEY, "1e-4"))
            log_training_run(
                experiment.name, experiment.model, experiment.seed, accuracy(rate, experiment.seed)
            )
            self.made.add(experiment.name)
            yield Result(
                name=experiment.name,
                ok=True,
                failed_step="",
                seconds={"run": 0.0},
                log_tail="",
                host="here",
            )

    def print_next_step(self, ran: int) -> None:
        pass


def test_a_search_tags_its_trials_then_compares_its_winner_with_the_book(
    tmp_path, monkeypatch, capsys
):
    import mlflow

    from pipeline.tracking import store

    shutil.copyfile(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    runner = LoggingRunner()
    monkeypatch.setattr(sweep_run, "make_runner", lambda *args: runner)
    space = [f"{KEY}=tag(log, interval(1e-4,1e-2))", "train.baseline.epochs=2"]

    search.search("baseline", 3, space, seeds="1-3", study_name="lr")
    out = capsys.readouterr().out
    assert "search lr: 0 of 3 trials complete" in out
    trials = mlflow.search_runs(
        experiment_names=[store.EXPERIMENT],
        filter_string="tags.`optuna.study` = 'lr'",
        output_format="list",
    )
    assert sorted(r.data.tags["optuna.trial"] for r in trials) == ["0", "1", "2"]
    assert {r.data.params["train.seed"] for r in trials} == {"42"}  # params.yaml's seed
    assert len(runner.made) == 3 + 2 * 3  # the trials, then winner and book over 3 seeds

    text = (tmp_path / "reports/search-lr.md").read_text()
    assert "| baseline (book's settings) | 3 | 1, 2, 3 |" in text
    assert "better than the book's settings, p = " in text
    assert text.count("| COMPLETE |") == 3

    search.search("baseline", 3, space, seeds="1-3", study_name="lr")  # done: nothing runs
    again = capsys.readouterr().out
    assert "search lr: 3 of 3 trials complete" in again
    assert "search-lr: 6 experiments, 6 already done (skipped), 0 to run" in again
    assert len(runner.made) == 9
