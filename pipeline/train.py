"""The one training routine every model uses: fit, evaluate on test, write outputs, track.

Outputs of a run named NAME (all written atomically):
  models/NAME.keras                  the trained model (raw [0, 255] pixels in)
  reports/metrics/NAME.json          test and validation scores (`dvc metrics show`)
  reports/history/NAME.csv           loss and accuracy per epoch (`dvc plots show`)
  reports/figures/NAME/*.png         learning curves and the test confusion matrix
and one MLflow run NAME with the same numbers, the params, the tags and these files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from pipeline import plots, tracking
from pipeline.data.dataset import make_dataset
from pipeline.data.download import CLASSES
from pipeline.errors import PipelineError
from pipeline.io import atomic_path, write_text
from pipeline.project import CHECKPOINTS_DIR, FIGURES_DIR, HISTORY_DIR, METRICS_DIR, MODELS_DIR


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
    build_model: Callable[[], keras.Model]  # called inside the distribution strategy's scope
    data: Splits
    epochs: int
    batch_size: int
    learning_rate: float
    steps_per_epoch: int = 0  # 0: one pass over the training set
    export: Callable[[keras.Model], keras.Model] | None = (
        None  # the model to save, from the trained one
    )
    extra_seconds: float = 0.0  # training work done before fit (cached augmented features)
    seed: int = 0
    params: dict = field(default_factory=dict)  # the stage's params.yaml sections
    tags: dict = field(default_factory=dict)  # conv base, image size, ...


class _EpochRecorder(keras.callbacks.Callback):
    """Keeps the full per-epoch history (also across a resume) in the checkpoint folder and
    logs each epoch to the active MLflow run, explicitly (autolog would log twice)."""

    def __init__(self, history_file: Path, previous: list[dict]):
        super().__init__()
        self.history_file, self.rows = history_file, list(previous)
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        import mlflow

        row = {
            "epoch": epoch + 1,
            **{k: float(v) for k, v in (logs or {}).items() if k != "learning_rate"},
        }
        row["epoch_seconds"] = round(time.perf_counter() - self.started, 3)
        self.rows.append(row)
        with atomic_path(self.history_file) as tmp:  # before BackupAndRestore saves this epoch
            pd.DataFrame(self.rows).to_csv(tmp, index=False)
        mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch + 1)
        self.started = time.perf_counter()


class _AtomicBackup(keras.callbacks.BackupAndRestore):
    """Keras writes its epoch backup in place: a kill mid-write leaves a file it cannot load.
    Write to pending files, then rename them over the last good backup."""

    def _save_model(self):
        final_weights, final_metadata = self._weights_path, self._training_metadata_path
        self._weights_path = final_weights.replace("latest.weights.h5", "pending.weights.h5")
        self._training_metadata_path = final_metadata + ".pending"
        try:
            super()._save_model()
            os.replace(self._weights_path, final_weights)
            os.replace(self._training_metadata_path, final_metadata)
        finally:
            self._weights_path, self._training_metadata_path = final_weights, final_metadata


def _raise_on_sigterm(signum, frame):
    # SIGTERM (dvc/queue cancellation, CI timeouts) unwinds like Ctrl-C: the MLflow run is
    # ended as KILLED and no output is renamed into place.
    raise KeyboardInterrupt(f"signal {signum}")


def compile_model(model: keras.Model, learning_rate: float, jit_compile: bool = False) -> None:
    model.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate),
        loss="binary_crossentropy",
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )


def _checkpoint_dir(job: Job) -> Path:
    """A resume is only safe with the same settings: the folder is keyed by them."""
    key = json.dumps(
        [job.params, {k: str(v) for k, v in job.tags.items()}, job.epochs],
        sort_keys=True,
        default=str,
    )
    return CHECKPOINTS_DIR / f"{job.name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _resumable_history(checkpoints: Path) -> list[dict]:
    """Epochs already completed by an interrupted run with the same settings.

    Backups are replaced atomically (_AtomicBackup); a `.bkp` pair, if Keras left one, is
    the fallback, as in Keras. Nothing readable: start afresh."""
    import h5py

    history = checkpoints / "history.csv"
    for weights in ("latest.weights.h5", "latest.weights.h5.bkp"):
        metadata = checkpoints / (
            "training_metadata.json" + weights.removeprefix("latest.weights.h5")
        )
        try:
            h5py.File(checkpoints / weights, "r").close()
            done = json.loads(metadata.read_text())["epoch"]
            rows = pd.read_csv(history).to_dict("records")
        except (OSError, ValueError, KeyError):
            continue
        return [row for row in rows if row["epoch"] <= done]
    if checkpoints.exists():
        print(f"discarding unreadable checkpoints in {checkpoints}; training from epoch 1")
        shutil.rmtree(checkpoints)
    return []


def run(job: Job, params) -> dict:
    """Train `job` under `params.train.runtime`; return its metrics."""
    import mlflow

    from pipeline import runtime

    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    tracking.connect()  # before training: an unreachable server fails now, not in an hour
    tracking.close_stale_runs(job.stage)
    strategy = runtime.setup(params)
    with strategy.scope():
        model = job.build_model()
        compile_model(model, job.learning_rate, runtime.jit_compile(params))
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (
        job.data.train,
        job.data.validation,
        job.data.test,
    )
    repeat = job.steps_per_epoch > 0
    train_ds = make_dataset(
        x_train, y_train, job.batch_size, training=True, seed=job.seed, repeat=repeat
    )
    val_ds = make_dataset(x_val, y_val, job.batch_size)
    test_ds = make_dataset(x_test, y_test, job.batch_size)
    checkpoints = _checkpoint_dir(job)
    previous = _resumable_history(checkpoints)

    tags = tracking.run_tags(
        job.stage, {**{k: str(v) for k, v in job.tags.items()}, **runtime.describe(strategy)}
    )
    if previous:
        tags["resumed_from_epoch"] = str(len(previous))
    with mlflow.start_run(run_name=job.name, tags=tags) as active:
        try:
            mlflow.log_params(tracking.flatten(job.params))
            mlflow.log_params(
                {
                    "trainable_params": _count(model.trainable_weights),
                    "total_params": model.count_params(),
                }
            )
            for row in previous:  # a resumed run still shows the whole curve
                mlflow.log_metrics(
                    {k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"])
                )
            print(
                f"training {job.name}: {len(x_train)} train / {len(x_val)} validation / {len(x_test)} test, "
                f"{job.epochs} epochs"
                + (f", resuming after epoch {len(previous)}" if previous else "")
                + f" (MLflow run {active.info.run_id})"
            )
            recorder = _EpochRecorder(checkpoints / "history.csv", previous)
            started = time.perf_counter()
            model.fit(
                train_ds,
                validation_data=val_ds,
                epochs=job.epochs,
                steps_per_epoch=job.steps_per_epoch or None,
                callbacks=[recorder, _AtomicBackup(str(checkpoints))],
                verbose=2,  # one line per epoch: readable in `dvc repro` logs
            )
            train_seconds = (
                time.perf_counter()
                - started
                + sum(r["epoch_seconds"] for r in previous)
                + job.extra_seconds
            )
            test_loss, test_accuracy = model.evaluate(test_ds, verbose=0)
            predicted = (model.predict(test_ds, verbose=0).ravel() > 0.5).astype(int)
            history = pd.DataFrame(recorder.rows)
            metrics = _summarise(history, test_loss, test_accuracy, train_seconds)
            mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
            _write_outputs(
                job,
                job.export(model) if job.export else model,
                history,
                metrics,
                _confusion(y_test.ravel().astype(int), predicted),
            )
        except KeyboardInterrupt:
            mlflow.end_run(status="KILLED")  # the context manager would say FAILED
            raise
    shutil.rmtree(checkpoints, ignore_errors=True)
    print(
        f"{job.name}: test accuracy {metrics['test_accuracy']:.4f}, "
        f"best validation {metrics['best_val_accuracy']:.4f}, {train_seconds:.0f} s"
    )
    return metrics


def _count(weights) -> int:
    return int(sum(np.prod(w.shape) for w in weights))


def _summarise(
    history: pd.DataFrame, test_loss: float, test_accuracy: float, seconds: float
) -> dict:
    val_accuracy = history["val_accuracy"]
    return {
        "test_accuracy": round(float(test_accuracy), 4),
        "test_loss": round(float(test_loss), 4),
        "best_val_accuracy": round(float(val_accuracy.max()), 4),
        "best_epoch": int(val_accuracy.idxmax()) + 1,
        "final_val_accuracy": round(float(val_accuracy.iloc[-1]), 4),
        "epochs": len(history),
        "train_seconds": round(seconds, 1),
        "seconds_per_epoch": round(seconds / len(history), 2),
    }


def _confusion(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    matrix = np.zeros((2, 2), dtype=int)
    np.add.at(matrix, (truth, predicted), 1)
    return matrix


def _write_outputs(
    job: Job, model: keras.Model, frame: pd.DataFrame, metrics: dict, confusion: np.ndarray
) -> None:
    import mlflow

    metrics_file = METRICS_DIR / f"{job.name}.json"
    history_file = HISTORY_DIR / f"{job.name}.csv"
    figures = FIGURES_DIR / job.name
    model_file = MODELS_DIR / f"{job.name}.keras"

    # The model first: if it cannot be written, the reports keep their last good numbers.
    model_file.parent.mkdir(parents=True, exist_ok=True)
    tmp_model = model_file.with_name(f".{model_file.stem}.tmp.keras")  # Keras wants the suffix
    try:
        model.save(tmp_model)
        tmp_model.replace(model_file)
    except OSError as exc:
        raise PipelineError(
            f"cannot write {model_file}: {exc.strerror or exc} ({exc.filename})"
        ) from None
    finally:
        tmp_model.unlink(missing_ok=True)
    record = {
        "model": job.name,
        **{k: str(v) for k, v in job.tags.items()},
        **metrics,
        "confusion_matrix": confusion.tolist(),
    }
    write_text(metrics_file, json.dumps(record, indent=2) + "\n")
    with atomic_path(history_file) as tmp:
        frame.round(5).to_csv(tmp, index=False)
    plots.learning_curves(
        frame, f"{job.name}: test accuracy {metrics['test_accuracy']:.3f}", figures / "curves.png"
    )
    plots.confusion_matrix(confusion, CLASSES, f"{job.name} (test)", figures / "confusion.png")

    mlflow.log_artifact(str(history_file))
    mlflow.log_artifact(str(metrics_file))
    for figure in ("curves.png", "confusion.png"):  # not figures/visualize/: another stage's
        mlflow.log_artifact(str(figures / figure), "figures")
    mlflow.log_artifact(str(model_file), "model")
