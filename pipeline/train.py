"""The one training routine every model uses: fit, evaluate on test, write outputs, track.

Outputs of a run named NAME (all written atomically):
  models/NAME.keras                  the trained model (raw [0, 255] pixels in)
  reports/metrics/NAME.json          test and validation scores (`dvc metrics show`)
  reports/history/NAME.csv           loss and accuracy per epoch (`dvc plots show`)
  reports/figures/NAME/*.png         learning curves and the test confusion matrix
and one MLflow run NAME with the same numbers, the params, the tags and these files.
"""

from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from pipeline import plots, tracking
from pipeline.data.dataset import make_dataset
from pipeline.data.download import CLASSES
from pipeline.io import atomic_path, write_text

MODELS_DIR = Path("models")
METRICS_DIR = Path("reports/metrics")
HISTORY_DIR = Path("reports/history")
FIGURES_DIR = Path("reports/figures")


@dataclass
class Splits:
    """Inputs (images or cached features) and 0/1 labels of each split."""

    train: tuple[np.ndarray, np.ndarray]
    validation: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]


@dataclass
class Job:
    name: str  # run name and output stem, e.g. "baseline", "features-vgg16"
    stage: str  # DVC stage, e.g. "features@vgg16"
    model: keras.Model
    data: Splits
    epochs: int
    batch_size: int
    learning_rate: float
    steps_per_epoch: int = 0  # 0: one pass over the training set
    seed: int = 0
    params: dict = field(default_factory=dict)  # the stage's params.yaml sections
    tags: dict = field(default_factory=dict)  # conv base, image size, ...


class _MlflowEpochLogger(keras.callbacks.Callback):
    """Per-epoch metrics into the active MLflow run, explicitly (autolog would log twice)."""

    def __init__(self):
        super().__init__()
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        import mlflow

        metrics = {key: float(value) for key, value in (logs or {}).items() if key != "learning_rate"}
        metrics["epoch_seconds"] = time.perf_counter() - self.started
        mlflow.log_metrics(metrics, step=epoch + 1)
        self.started = time.perf_counter()


def _raise_on_sigterm(signum, frame):
    # SIGTERM (dvc/queue cancellation, CI timeouts) unwinds like Ctrl-C: the MLflow run is
    # ended as KILLED and no output is renamed into place.
    raise KeyboardInterrupt(f"signal {signum}")


def compile_model(model: keras.Model, learning_rate: float) -> None:
    model.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )


def run(job: Job) -> dict:
    import mlflow

    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    tracking.connect()  # before training: an unreachable server fails now, not in an hour
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = job.data.train, job.data.validation, job.data.test
    repeat = job.steps_per_epoch > 0
    train_ds = make_dataset(x_train, y_train, job.batch_size, training=True, seed=job.seed, repeat=repeat)
    val_ds = make_dataset(x_val, y_val, job.batch_size)
    test_ds = make_dataset(x_test, y_test, job.batch_size)
    compile_model(job.model, job.learning_rate)

    tags = tracking.run_tags(job.stage, {k: str(v) for k, v in job.tags.items()})
    with mlflow.start_run(run_name=job.name, tags=tags) as active:
        try:
            mlflow.log_params(tracking.flatten(job.params))
            mlflow.log_params({"trainable_params": _count(job.model.trainable_weights),
                               "total_params": job.model.count_params()})
            print(f"training {job.name}: {len(x_train)} train / {len(x_val)} validation / "
                  f"{len(x_test)} test, {job.epochs} epochs (MLflow run {active.info.run_id})")
            started = time.perf_counter()
            history = job.model.fit(
                train_ds,
                validation_data=val_ds,
                epochs=job.epochs,
                steps_per_epoch=job.steps_per_epoch or None,
                callbacks=[_MlflowEpochLogger()],
                verbose=2,  # one line per epoch: readable in `dvc repro` logs
            )
            train_seconds = time.perf_counter() - started
            test_loss, test_accuracy = job.model.evaluate(test_ds, verbose=0)
            predicted = (job.model.predict(test_ds, verbose=0).ravel() > 0.5).astype(int)
            metrics = _summarise(history.history, test_loss, test_accuracy, train_seconds, job)
            mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
            _write_outputs(job, history.history, metrics, _confusion(y_test.ravel().astype(int), predicted))
        except KeyboardInterrupt:
            mlflow.end_run(status="KILLED")  # the context manager would say FAILED
            raise
    print(f"{job.name}: test accuracy {metrics['test_accuracy']:.4f}, "
          f"best validation {metrics['best_val_accuracy']:.4f}, {train_seconds:.0f} s")
    return metrics


def _count(weights) -> int:
    return int(sum(np.prod(w.shape) for w in weights))


def _summarise(history: dict, test_loss: float, test_accuracy: float, seconds: float, job: Job) -> dict:
    val_accuracy = history["val_accuracy"]
    return {
        "test_accuracy": round(float(test_accuracy), 4),
        "test_loss": round(float(test_loss), 4),
        "best_val_accuracy": round(float(max(val_accuracy)), 4),
        "best_epoch": int(np.argmax(val_accuracy)) + 1,
        "final_val_accuracy": round(float(val_accuracy[-1]), 4),
        "epochs": len(val_accuracy),
        "train_seconds": round(seconds, 1),
        "seconds_per_epoch": round(seconds / len(val_accuracy), 2),
    }


def _confusion(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    matrix = np.zeros((2, 2), dtype=int)
    np.add.at(matrix, (truth, predicted), 1)
    return matrix


def _write_outputs(job: Job, history: dict, metrics: dict, confusion: np.ndarray) -> None:
    import mlflow

    frame = pd.DataFrame(history).drop(columns=["learning_rate"], errors="ignore")
    frame.insert(0, "epoch", range(1, len(frame) + 1))
    metrics_file = METRICS_DIR / f"{job.name}.json"
    history_file = HISTORY_DIR / f"{job.name}.csv"
    figures = FIGURES_DIR / job.name
    model_file = MODELS_DIR / f"{job.name}.keras"

    record = {"model": job.name, **{k: str(v) for k, v in job.tags.items()}, **metrics,
              "confusion_matrix": confusion.tolist()}
    write_text(metrics_file, json.dumps(record, indent=2) + "\n")
    with atomic_path(history_file) as tmp:
        frame.round(5).to_csv(tmp, index=False)
    plots.learning_curves(frame, f"{job.name}: test accuracy {metrics['test_accuracy']:.3f}", figures / "curves.png")
    plots.confusion_matrix(confusion, CLASSES, f"{job.name} (test)", figures / "confusion.png")
    model_file.parent.mkdir(parents=True, exist_ok=True)
    tmp_model = model_file.with_name(f".{model_file.stem}.tmp.keras")  # Keras wants the suffix
    try:
        job.model.save(tmp_model)
        tmp_model.replace(model_file)
    finally:
        tmp_model.unlink(missing_ok=True)

    mlflow.log_artifact(str(history_file))
    mlflow.log_artifact(str(metrics_file))
    mlflow.log_artifacts(str(figures), "figures")
    mlflow.log_artifact(str(model_file), "model")
