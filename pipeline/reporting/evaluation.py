"""Test scores beyond accuracy, written beside a trained model's other reports and logged to
its MLflow run (train.write_and_log calls `write_and_log`).

A two-class model (P(dog) out): the ROC and precision-recall curves with their areas, MLflow
metrics `test_roc_auc` and `test_pr_auc` (average precision), and a calibration curve:
  reports/figures/NAME/roc.png, pr.png, calibration.png    (MLflow: figures/)
  reports/roc/NAME.csv      fpr,tpr: `dvc plots show` draws every model's on one chart
A model of more classes (MNIST): each class's precision, recall and F1 from the test
confusion matrix, MLflow metrics `test_f1_<class>`:
  mnist/reports/classes/NAME.csv                           class,precision,recall,f1,support
Values are rounded, so deterministic reruns write the same bytes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.catalog import TrainedModel
from pipeline.core.files import atomic_path
from pipeline.reporting import plots
from pipeline.serving.inference import predicted_labels

THRESHOLD = 0.5  # a dog above it (predicted_labels), as the confusion matrix counts
CALIBRATION_BINS = 10
DECIMALS = 5  # of the CSV files
METRIC_DECIMALS = 4  # as the other test scores


@dataclass(frozen=True)
class BinaryCurves:
    """What the figures and the ROC file show, from test labels (1: dog) and P(dog)."""

    fpr: np.ndarray
    tpr: np.ndarray
    roc_auc: float
    recall: np.ndarray
    precision: np.ndarray
    pr_auc: float  # average precision: the steps' area, not a trapezoid's optimistic one
    base_rate: float  # the share of dogs: the precision of guessing
    predicted: np.ndarray  # per non-empty probability bin, its mean P(dog)
    observed: np.ndarray  # and its share of dogs
    at_threshold: dict[str, float]  # fpr, tpr (recall) and precision at THRESHOLD


def _sklearn():
    """scikit-learn's metrics and calibration modules, also in a stage process."""
    # scikit-learn's curves (installed with mlflow), not mlflow.models.evaluate: that predicts
    # the test set again through the pyfunc, from photos, and logs artifacts of its own.
    if "sklearn" in sys.modules and sys.modules["sklearn"] is None:
        del sys.modules["sklearn"]  # cli.main's block, there for Keras, which has loaded by now
    import sklearn.calibration
    import sklearn.metrics

    return sklearn.metrics, sklearn.calibration


def binary_curves(labels: np.ndarray, scores: np.ndarray) -> BinaryCurves:
    """The curves of test `labels` (1: dog) and the model's `scores` (P(dog))."""
    metrics, calibration = _sklearn()
    truth = np.asarray(labels).ravel().astype(int)
    p_dog = np.asarray(scores, dtype=np.float64).ravel()
    fpr, tpr, _ = metrics.roc_curve(truth, p_dog)
    precision, recall, _ = metrics.precision_recall_curve(truth, p_dog)
    observed, predicted = calibration.calibration_curve(truth, p_dog, n_bins=CALIBRATION_BINS)
    return BinaryCurves(
        fpr=fpr,
        tpr=tpr,
        roc_auc=float(metrics.roc_auc_score(truth, p_dog)),
        recall=recall,
        precision=precision,
        pr_auc=float(metrics.average_precision_score(truth, p_dog)),
        base_rate=float(truth.mean()),
        predicted=predicted,
        observed=observed,
        at_threshold=rates_at(truth, predicted_labels(p_dog) == 1),
    )


def rates_at(truth: np.ndarray, said_dog: np.ndarray) -> dict[str, float]:
    """The confusion matrix's point on both curves; 0 for a rate of nothing."""
    hits = float(np.sum(said_dog & (truth == 1)))
    false_alarms = float(np.sum(said_dog & (truth == 0)))
    dogs, cats, said = float(truth.sum()), float(len(truth) - truth.sum()), float(said_dog.sum())
    return {
        "fpr": false_alarms / cats if cats else 0.0,
        "tpr": hits / dogs if dogs else 0.0,
        "precision": hits / said if said else 0.0,
    }


def per_class(confusion: np.ndarray, classes: tuple[str, ...]) -> pd.DataFrame:
    """Precision, recall and F1 of each class from a confusion matrix (rows: true class,
    columns: predicted); 0 where a class was never predicted or never present."""
    confusion = np.asarray(confusion, dtype=np.int64)
    hits = np.diag(confusion).astype(np.float64)
    predicted, support = confusion.sum(axis=0), confusion.sum(axis=1)
    zeros = np.zeros_like(hits)
    precision = np.divide(hits, predicted, out=zeros.copy(), where=predicted > 0)
    recall = np.divide(hits, support, out=zeros.copy(), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=zeros.copy(), where=both > 0)
    table = {"class": list(classes), "precision": precision, "recall": recall, "f1": f1}
    return pd.DataFrame({**table, "support": support}).round(DECIMALS)


def roc_file(model: TrainedModel) -> Path:
    return model.outputs / "reports" / "roc" / f"{model.name}.csv"


def classes_file(model: TrainedModel) -> Path:
    return model.outputs / "reports" / "classes" / f"{model.name}.csv"


def write_csv(table: pd.DataFrame, out: Path) -> None:
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)


def write_binary(model: TrainedModel, curves: BinaryCurves) -> list[Path]:
    """The ROC points and the three figures; return the figures."""
    write_csv(pd.DataFrame({"fpr": curves.fpr, "tpr": curves.tpr}).round(DECIMALS), roc_file(model))
    figures, name, at = model.figures_dir, model.name, curves.at_threshold
    label = f"P(dog) > {THRESHOLD}"
    plots.roc_chart(
        curves.fpr,
        curves.tpr,
        curves.roc_auc,
        (at["fpr"], at["tpr"]),
        label,
        f"{name}: ROC (test)",
        figures / "roc.png",
    )
    plots.precision_recall_chart(
        curves.recall,
        curves.precision,
        curves.pr_auc,
        curves.base_rate,
        (at["tpr"], at["precision"]),
        label,
        f"{name}: precision-recall (test)",
        figures / "pr.png",
    )
    plots.calibration_chart(
        curves.predicted,
        curves.observed,
        f"{name}: calibration (test)",
        figures / "calibration.png",
    )
    return [figures / "roc.png", figures / "pr.png", figures / "calibration.png"]


def write_and_log(job, model, confusion: np.ndarray) -> dict[str, float]:
    """Write the scores of `job` (a train.Job) beyond accuracy, log them to the active run;
    return the metrics. A two-class model predicts its test set again, in the batches of
    train.evaluate: the same P(dog)."""
    if len(job.model.kind.classes) == 2:
        return _write_and_log_binary(job.model, job.data.test[1], _predict(job, model))
    return _write_and_log_classes(job.model, confusion)


def _write_and_log_binary(trained: TrainedModel, labels, scores) -> dict[str, float]:
    import mlflow

    curves = binary_curves(labels, scores)
    figures = write_binary(trained, curves)
    metrics = {"test_roc_auc": curves.roc_auc, "test_pr_auc": curves.pr_auc}
    metrics = {key: round(value, METRIC_DECIMALS) for key, value in metrics.items()}
    mlflow.log_metrics(metrics)
    mlflow.log_artifact(str(roc_file(trained)), "roc")
    for figure in figures:
        mlflow.log_artifact(str(figure), "figures")
    return metrics


def _write_and_log_classes(trained: TrainedModel, confusion) -> dict[str, float]:
    import mlflow

    table = per_class(confusion, trained.kind.classes)
    write_csv(table, classes_file(trained))
    f1 = zip(table["class"], table["f1"], strict=True)
    metrics = {f"test_f1_{name}": round(float(value), METRIC_DECIMALS) for name, value in f1}
    mlflow.log_metrics(metrics)
    mlflow.log_artifact(str(classes_file(trained)), "classes")
    return metrics


def _predict(job, model) -> np.ndarray:
    from pipeline.data.dataset import make_dataset, predictions  # a backend: where one predicts

    x_test, y_test = job.data.test
    return predictions(model, make_dataset(x_test, y_test, job.fit.batch_size), verbose=0)
