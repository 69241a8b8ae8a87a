"""`python -m pipeline compare` on real tiny trainings in a real MLflow store (slow), and
in this process on runs logged here to a real store (fast), and its refusal of a store that
does not exist.

Seven short trainings, in-process: baseline with seeds 1-3 (and seed 3 twice: only the
latest counts), an older baseline configuration (2 epochs) for seed 1, augmented with
seeds 1-2. The table's numbers must be those of the runs that count, computed here from
the MLflow client independently of the module.
"""

from __future__ import annotations

import signal
import sys

import numpy as np
import pytest

from pipeline.core.errors import PipelineError
from pipeline.reporting.compare import Selection, holm, pairwise
from tests.helpers.project import run, tiny_project, update_params
from tests.helpers.tracking import client_of, store_uri, tracked_runs

TINY = {"image_size": 48, "batch_size": 8, "steps_per_epoch": 0, "learning_rate": 1e-3}
TRAININGS = [  # (model, seed, epochs), in the order they run
    ("baseline", 1, 2),
    ("baseline", 1, 3),
    ("baseline", 2, 3),
    ("baseline", 3, 3),
    ("baseline", 3, 3),
    ("augmented", 1, 3),
    ("augmented", 2, 3),
]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    project = tiny_project(
        root,
        {
            "split": {"train": 24, "validation": 8, "test": 8},
            "prepare": {"image_sizes": [48]},
            "train": {"baseline": TINY, "augmented": TINY},
            # not trained here
            "pretrained": {"bases": {"vgg16": {"image_size": 48}, "efficientnet_lite0": None}},
        },
        per_class=40,
    )
    run(["dvc", "repro", "prepare@48"], project)
    return project


@pytest.fixture(scope="module")
def trained(project):
    """The trainings above, in this process, as `python -m pipeline train` runs them."""
    from pipeline.core.params import load_params
    from pipeline.training import scratch

    patch = pytest.MonkeyPatch()
    patch.chdir(project)
    patch.setenv("MLFLOW_TRACKING_URI", store_uri(project))
    sigterm = signal.getsignal(signal.SIGTERM)  # train.run makes SIGTERM a KeyboardInterrupt
    try:
        for model, seed, epochs in TRAININGS:
            update_params(project, {"train": {"seed": seed, model: {"epochs": epochs}}})
            getattr(scratch, model)(load_params())
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    yield tracked_runs(project)
    patch.undo()


@pytest.mark.slow
@pytest.mark.extended
def test_table_holds_mean_and_std_of_the_runs_that_count(trained):
    from pipeline.reporting.compare import run_compare

    assert len(trained) == len(TRAININGS)
    summary = run_compare(Selection()).set_index("group")
    old, *current = [r for r in trained if r.info.run_name == "baseline"]
    current = [current[0], current[1], current[3]]  # seed 3's rerun replaces its first run
    augmented = [r for r in trained if r.info.run_name == "augmented"]
    expected = {
        "baseline (train.baseline.epochs=2)": [old],
        "baseline (train.baseline.epochs=3)": current,
        "augmented": augmented,
    }
    assert sorted(summary.index) == sorted(expected)
    for group, runs in expected.items():
        row = summary.loc[group]
        assert row["n"] == len(runs)
        assert row["draws"] == ", ".join(r.data.params["train.seed"] for r in runs)
        for score in ("test_accuracy", "best_val_accuracy"):
            values = np.array([r.data.metrics[score] for r in runs])
            assert row[f"{score}_mean"] == pytest.approx(values.mean())
            if len(runs) > 1:
                assert row[f"{score}_std"] == pytest.approx(values.std(ddof=1))
            else:
                assert np.isnan(row[f"{score}_std"])
    # The convnet learns the synthetic classes with every seed.
    assert summary.loc["baseline (train.baseline.epochs=3)", "test_accuracy_mean"] >= 0.75


@pytest.mark.slow
@pytest.mark.extended
def test_filters_and_grouping_by_a_chosen_param(trained):
    from pipeline.reporting.compare import run_compare

    three_epochs = "params.`train.baseline.epochs` = '3'"
    summary = run_compare(Selection(models=("baseline",), where=three_epochs))
    assert list(summary["group"]) == ["baseline"] and summary["n"].item() == 3
    # The lead's other reading: per seed, with the epochs as the draws.
    by_seed = run_compare(
        Selection(by=("train.seed",), over="train.baseline.epochs", models=("baseline",))
    ).set_index("group")
    assert list(by_seed["n"].items()) == [
        ("baseline (train.seed=1)", 2),  # 2 and 3 epochs
        ("baseline (train.seed=2)", 1),
        ("baseline (train.seed=3)", 1),
    ]


def test_grouping_by_a_param_pools_the_others_and_says_so():
    import pandas as pd

    from pipeline.reporting.compare import group_runs

    runs = pd.DataFrame(
        {
            "model": ["m"] * 4,
            "draw": ["1", "2", "1", "2"],
            "start_time": [1, 2, 3, 4],
            "params.lr": ["0.1", "0.1", "0.2", "0.2"],
            "params.epochs": ["3", "3", "3", "5"],
        }
    )
    grouped, notes = group_runs(runs, Selection())
    assert sorted(grouped["group"]) == ["m (epochs=3, lr=0.1)"] * 2 + [
        "m (epochs=3, lr=0.2)",
        "m (epochs=5, lr=0.2)",
    ]
    grouped, notes = group_runs(runs, Selection(by=("lr",)))
    assert sorted(grouped["group"]) == ["m (lr=0.1)"] * 2 + ["m (lr=0.2)"] * 2
    assert notes == ["m (lr=0.2) pools runs that differ in epochs"]


@pytest.mark.slow
@pytest.mark.extended
def test_cli_writes_reports_and_logs_a_compare_run(trained, project):
    result = run([sys.executable, "-m", "pipeline", "compare", "--commit", "HEAD"], project)
    markdown = (project / "reports/compare.md").read_text()
    assert markdown == result.stdout.strip() + "\n"
    assert "| baseline (train.baseline.epochs=3) | 3 | 1, 2, 3 |" in markdown
    assert "| augmented | 2 | 1, 2 |" in markdown
    assert "beyond the noise" in markdown and "compare --commit HEAD" in markdown
    assert (project / "reports/compare.png").stat().st_size > 10_000
    client = client_of(project)
    logged, *earlier = tracked_runs(client, "compare", newest_first=True)
    # each run of compare is a run of its own (in-process tests of this module may have
    # logged some before this one, in any order): this one is the newest, and finished
    assert logged.info.status == "FINISHED"
    assert all(r.info.start_time <= logged.info.start_time for r in earlier)
    assert logged.data.tags["pipeline.command"] == "compare"
    assert logged.data.metrics["augmented.n"] == 2
    artifacts = {a.path for a in client.list_artifacts(logged.info.run_id)}
    assert artifacts == {"compare.md", "compare.png", "compare.csv"}

    from typer.testing import CliRunner

    from pipeline.cli import app

    for args, message in [  # in-process: the same command, without a Python start each
        (["--commit", "no-such-rev"], "error: --commit no-such-rev: not a commit"),
        (["--model", "finetune-vgg16"], "error: no finished training runs"),
        (["--by", "train.no_such"], "error: --by train.no_such: no selected run has"),
        (["--since", "yesterday"], "error: --since yesterday: not an ISO date"),
    ]:
        failed = CliRunner().invoke(app, ["compare", *args])
        assert failed.exit_code == 1 and failed.stderr.startswith(message), failed.stderr
        assert len(failed.stderr.strip().splitlines()) == 1


def test_welch_and_holm_say_which_differences_exceed_the_noise():
    samples = {
        "low": [0.70, 0.74, 0.72, 0.71],
        "high": [0.90, 0.92, 0.91, 0.93],
        "also_low": [0.71, 0.73, 0.75, 0.70],
        "single": [0.99],  # one draw: no spread to test against
    }
    pairs = pairwise(samples).set_index(["a", "b"])
    assert len(pairs) == 3
    assert pairs.loc[("low", "high"), "beyond_noise"]
    assert pairs.loc[("high", "also_low"), "beyond_noise"]
    assert not pairs.loc[("low", "also_low"), "beyond_noise"]
    assert pairs.loc[("low", "high"), "difference"] == pytest.approx(-0.1975)
    # Holm: sorted p times (m, m-1, ...), kept monotone, capped at 1.
    import pandas as pd

    adjusted = holm(pd.Series([0.01, 0.04, 0.03, np.nan]))
    assert list(adjusted[:3]) == pytest.approx([0.03, 0.06, 0.06])
    assert np.isnan(adjusted[3])


def test_run_compare_in_process_on_runs_it_logs(tmp_path, monkeypatch):
    """Three seeds of two models, logged straight to a real store: the table is their mean
    and standard deviation, the files are written and a compare run is logged."""
    import mlflow

    from pipeline.reporting.compare import run_compare

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    from pipeline.tracking import store

    store.connect()
    scores = {"baseline": [0.70, 0.72, 0.74], "augmented": [0.80, 0.83, 0.86]}
    for model, accuracies in scores.items():
        for seed, accuracy in enumerate(accuracies, 1):
            with mlflow.start_run(run_name=model):
                mlflow.log_params({"train.seed": seed, f"train.{model}.epochs": 3})
                mlflow.log_metrics(
                    {"test_accuracy": accuracy, "best_val_accuracy": accuracy, "test_loss": 0.5}
                )
    summary = run_compare(Selection()).set_index("model")
    for model, accuracies in scores.items():
        assert summary.loc[model, "n"] == 3
        assert summary.loc[model, "test_accuracy_mean"] == pytest.approx(np.mean(accuracies))
        assert summary.loc[model, "test_accuracy_std"] == pytest.approx(np.std(accuracies, ddof=1))
    text = (tmp_path / "reports/compare.md").read_text()
    assert "baseline" in text and "augmented" in text
    assert (tmp_path / "reports/compare.png").stat().st_size > 5_000
    logged = mlflow.search_runs(
        experiment_names=[store.EXPERIMENT], filter_string="attributes.run_name = 'compare'"
    )
    assert len(logged) == 1


def test_compare_refuses_a_store_that_does_not_exist(tmp_path, monkeypatch):
    from pipeline.reporting.compare import run_compare

    store = tmp_path / "nope.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    with pytest.raises(PipelineError, match=f"the MLflow store sqlite:///{store} does not exist"):
        run_compare(Selection())
    assert not store.exists()
