"""Test scores beyond accuracy (pipeline/reporting/evaluation.py): the curves against known
values and scikit-learn, then two tiny real trainings through train.run in this process, a
two-class convnet on synthetic photos and a ten-class network on synthetic digits, with
what each writes and logs. The same two runs prove `train.runtime.system_metrics` on (the
photos, sampled every half second) and off (the digits)."""

from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tests.helpers.digits import write_mnist
from tests.helpers.project import ROOT
from tests.helpers.tracking import client_of, store_uri, tracked_runs

# scikit-learn's own examples: four photos, two of them dogs
LABELS = np.array([0, 0, 1, 1])
SCORES = np.array([0.1, 0.4, 0.35, 0.8])


def test_binary_curves_on_known_values():
    from pipeline.reporting.evaluation import binary_curves

    curves = binary_curves(LABELS, SCORES.reshape(-1, 1))  # as Keras predicts: (N, 1)
    np.testing.assert_allclose(curves.fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(curves.tpr, [0, 0.5, 0.5, 1, 1])
    assert curves.roc_auc == pytest.approx(0.75)
    np.testing.assert_allclose(curves.precision, [0.5, 2 / 3, 0.5, 1, 1])
    np.testing.assert_allclose(curves.recall, [1, 1, 0.5, 0.5, 0])
    assert curves.pr_auc == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)  # recall gained x precision
    assert curves.base_rate == 0.5
    # ten bins of width 0.1, edges in the lower bin: 0.35 (a dog) and 0.4 (a cat) share one
    np.testing.assert_allclose(curves.predicted, [0.1, 0.375, 0.8])
    np.testing.assert_allclose(curves.observed, [0, 0.5, 1])
    # P(dog) > 0.5: only the 0.8, a dog
    assert curves.at_threshold == {"fpr": 0.0, "tpr": 0.5, "precision": 1.0}


def test_a_perfect_and_a_backwards_model():
    from pipeline.reporting.evaluation import binary_curves

    perfect = binary_curves(LABELS, np.array([0.0, 0.2, 0.7, 0.9]))
    assert (perfect.roc_auc, perfect.pr_auc) == (1.0, 1.0)
    backwards = binary_curves(LABELS, np.array([0.9, 0.7, 0.2, 0.0]))
    assert backwards.roc_auc == 0.0
    assert backwards.at_threshold == {"fpr": 1.0, "tpr": 0.0, "precision": 0.0}


def test_per_class_scores_from_a_confusion_matrix_are_scikit_learns():
    from sklearn.metrics import precision_recall_fscore_support

    from pipeline.reporting.evaluation import per_class

    confusion = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])  # class 2: never seen, never said
    table = per_class(confusion, ("a", "b", "c"))
    assert list(table.columns) == ["class", "precision", "recall", "f1", "support"]
    np.testing.assert_allclose(table["precision"], [5 / 7, 3 / 4, 0], atol=1e-5)
    np.testing.assert_allclose(table["recall"], [5 / 6, 3 / 5, 0], atol=1e-5)
    truth = np.repeat([0, 0, 1, 1], [5, 1, 2, 3])
    said = np.repeat([0, 1, 0, 1], [5, 1, 2, 3])
    expected = precision_recall_fscore_support(truth, said, labels=[0, 1, 2], zero_division=0)
    for column, values in zip(("precision", "recall", "f1", "support"), expected, strict=True):
        np.testing.assert_allclose(table[column], values, atol=1e-5)


def test_the_curves_work_in_a_stage_process_that_blocks_scikit_learn():
    """cli.main sets sys.modules["sklearn"] = None for Keras; the curves import it anyway."""
    code = (
        "import sys; sys.modules['sklearn'] = None\n"
        "from pipeline.reporting.evaluation import binary_curves\n"
        "print(binary_curves([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]).roc_auc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0.75"


def test_the_files_are_the_same_bytes_when_written_twice(tmp_path, monkeypatch):
    from pipeline.core import catalog
    from pipeline.reporting.evaluation import binary_curves, roc_file, write_binary

    monkeypatch.chdir(tmp_path)
    model = catalog.TrainedModel(catalog.KINDS["baseline"], None, 48)
    rng = np.random.default_rng(0)
    labels = np.arange(200) % 2
    scores = np.clip(labels * 0.3 + rng.uniform(0, 0.7, 200), 0, 1)
    curves = binary_curves(labels, scores)
    files = [roc_file(model), *write_binary(model, curves)]
    first = [path.read_bytes() for path in files]
    write_binary(model, curves)
    assert [path.read_bytes() for path in files] == first
    roc = pd.read_csv(roc_file(model))
    assert list(roc.columns) == ["fpr", "tpr"] and roc.iloc[0].tolist() == [0, 0]
    assert roc.iloc[-1].tolist() == [1, 1] and roc["fpr"].is_monotonic_increasing
    assert all(len(f"{value}".split(".")[-1]) <= 5 for value in roc.to_numpy().ravel())


# --- two tiny trainings through train.run --------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A two-class convnet (system metrics on, sampled every half second) and a ten-class
    dense network (system metrics off), each in a folder of its own with its own store."""
    from pipeline.data.mnist import mnist
    from pipeline.training.mnist import mnist_dense
    from tests.test_mnist import mnist_patch, params_in
    from tests.test_training_in_process import tiny_params, train_in_process

    photos, digits = tmp_path_factory.mktemp("photos"), tmp_path_factory.mktemp("digits")
    sigterm = signal.getsignal(signal.SIGTERM)  # train.run makes SIGTERM a KeyboardInterrupt
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(photos)
            patch.setenv("MLFLOW_TRACKING_URI", store_uri(photos))
            patch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
            train_in_process(tiny_params(photos), "baseline")
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(digits)
            patch.setenv("MLFLOW_TRACKING_URI", store_uri(digits))
            off = {"train": {"runtime": {"system_metrics": False}}}
            params = params_in(digits, {**mnist_patch(write_mnist(digits / "d.npz")), **off})
            mnist(params.mnist)
            mnist_dense(params, 1)
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    return photos, digits


def only_run(root, name):
    client = client_of(root)
    (run,) = tracked_runs(client, name)
    return client, run


def test_a_two_class_run_logs_its_curves_and_areas(runs):
    photos, _ = runs
    client, run = only_run(photos, "baseline")
    metrics = run.data.metrics
    assert 0.5 < metrics["test_roc_auc"] <= 1 and 0.5 < metrics["test_pr_auc"] <= 1
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert {f"figures/{f}" for f in ("roc.png", "pr.png", "calibration.png")} <= figures
    assert [a.path for a in client.list_artifacts(run.info.run_id, "roc")] == ["roc/baseline.csv"]
    for figure in ("roc.png", "pr.png", "calibration.png"):
        assert (photos / f"reports/figures/baseline/{figure}").stat().st_size > 5_000
    roc = pd.read_csv(photos / "reports/roc/baseline.csv")
    area = np.trapezoid(roc["tpr"], roc["fpr"])  # the rounded points keep the area
    assert area == pytest.approx(metrics["test_roc_auc"], abs=1e-3)


def test_a_ten_class_run_logs_each_digits_f1(runs):
    _, digits = runs
    client, run = only_run(digits, "mnist_dense-1")
    table = pd.read_csv(digits / "mnist/reports/classes/mnist_dense-1.csv")
    assert list(table["class"]) == list(range(10)) and table["support"].sum() == 100
    logged = {k: v for k, v in run.data.metrics.items() if k.startswith("test_f1_")}
    assert logged == {f"test_f1_{d}": round(f1, 4) for d, f1 in enumerate(table["f1"])}
    assert [a.path for a in client.list_artifacts(run.info.run_id, "classes")] == [
        "classes/mnist_dense-1.csv"
    ]
    assert not {"test_roc_auc", "test_pr_auc"} & set(run.data.metrics)


def test_system_metrics_on_a_run_when_on_and_none_when_off(runs):
    photos, digits = runs
    client, on = only_run(photos, "baseline")
    system = {k for k in on.data.metrics if k.startswith("system/")}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system
    history = client.get_metric_history(on.info.run_id, "system/cpu_utilization_percentage")
    assert [m.step for m in history] == list(range(len(history)))
    _, off = only_run(digits, "mnist_dense-1")
    assert not [k for k in off.data.metrics if k.startswith("system/")]
    # a switch of what is recorded, not of what is trained: no param, so not a new config
    assert not [k for k in (*on.data.params, *off.data.params) if "system_metrics" in k]
