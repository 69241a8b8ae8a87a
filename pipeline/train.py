"""The one training routine every model uses: build, fit, evaluate, write and log.

Outputs of a job named NAME (all written atomically; pipeline/paths.py):
  models/NAME.keras                  the trained model (raw [0, 255] pixels in)
  reports/metrics/NAME.json          test and validation scores (`dvc metrics show`)
  reports/details/NAME.json          what was trained on what, the test confusion matrix
  reports/timing/NAME.json           training seconds (not a DVC output: see run_record.py)
  reports/history/NAME.csv           loss and accuracy per epoch (`dvc plots show`)
  reports/figures/NAME/*.png         learning curves and the test confusion matrix
and one MLflow run NAME with the same numbers, the params, the tags and these files.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from pipeline import model_logging, paths, plots, resume, run_record, runtime, tracking
from pipeline.data import CLASSES, predicted_labels
from pipeline.data.dataset import make_dataset
from pipeline.files import atomic_path
from pipeline.model_io import save_keras
from pipeline.params import FitParams, RuntimeParams


@dataclass
class Splits:
    """Inputs (images or cached features) and 0/1 labels of each split."""

    train: tuple[np.ndarray, np.ndarray]
    validation: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]


@dataclass
class Job:
    """One model to train; stages.py builds every Job (stages._job)."""

    name: str  # run name and output stem, e.g. "baseline", "features-vgg16"
    stage: str  # DVC stage, e.g. "features@vgg16"
    build_model: Callable[[], keras.Model]  # called inside the distribution strategy's scope
    data: Splits
    fit: FitParams  # the stage's own params.yaml section, whole
    runtime: RuntimeParams
    seed: int
    logged_params: dict  # the params.yaml sections the stage reads, for its MLflow run
    tags: dict  # conv base, image size, split hash, ...
    export: Callable[[keras.Model], keras.Model] | None = None  # the model to save, if not this
    extra_seconds: float = 0.0  # training work done before fit (cached augmented features)


def run(job: Job) -> dict:
    """Train `job`, evaluate it on test, write its outputs and MLflow run; return its metrics."""
    import mlflow

    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    tracking.connect()  # before training: an unreachable server fails now, not in an hour
    tracking.close_stale_runs(job.stage)
    strategy = runtime.setup(job.runtime, job.seed)
    model = build(job, strategy)
    checkpoints = resume.checkpoint_dir(job.name, [job.logged_params, _str(job.tags)])
    previous = resume.completed_epochs(checkpoints)
    tags = tracking.run_tags(job.stage, {**_str(job.tags), **runtime.describe(strategy)})
    if previous:
        tags["resumed_from_epoch"] = str(len(previous))
    with mlflow.start_run(run_name=job.name, tags=tags) as active:
        try:
            log_start(job, model, previous, active.info.run_id)
            history, seconds = fit(job, model, checkpoints, previous)
            metrics, confusion = evaluate(job, model, history)
            timing = run_record.timing(history, seconds)
            write_and_log(job, model, history, metrics, timing, confusion)
        except KeyboardInterrupt:
            mlflow.end_run(status="KILLED")  # the context manager would say FAILED
            raise
    shutil.rmtree(checkpoints, ignore_errors=True)
    print(
        f"{job.name}: test accuracy {metrics['test_accuracy']:.4f}, "
        f"best validation {metrics['best_val_accuracy']:.4f}, {seconds:.0f} s"
    )
    return metrics


def _raise_on_sigterm(signum, frame):
    # SIGTERM (dvc/queue cancellation, CI timeouts) unwinds like Ctrl-C: the MLflow run is
    # ended as KILLED and no output is renamed into place.
    raise KeyboardInterrupt(f"signal {signum}")


def _str(tags: dict) -> dict[str, str]:
    return {key: str(value) for key, value in tags.items()}


def compile_model(model: keras.Model, learning_rate: float, jit_compile: bool = False) -> None:
    model.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate),
        loss="binary_crossentropy",
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )


def build(job: Job, strategy) -> keras.Model:
    with strategy.scope():
        model = job.build_model()
        compile_model(model, job.fit.learning_rate, runtime.jit_compile(job.runtime))
    return model


def log_start(job: Job, model: keras.Model, previous: list[dict], run_id: str) -> None:
    """Params, model size and, for a resumed run, the epochs done before the interruption."""
    import mlflow

    mlflow.log_params(tracking.flatten(job.logged_params))
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    mlflow.log_params({"trainable_params": trainable, "total_params": model.count_params()})
    for row in previous:  # a resumed run still shows the whole curve
        mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
    sizes = " / ".join(f"{len(x)} {split}" for split, (x, _) in vars(job.data).items())
    resuming = f", resuming after epoch {len(previous)}" if previous else ""
    print(f"training {job.name}: {sizes}, {job.fit.epochs} epochs{resuming} (MLflow run {run_id})")


def fit(job: Job, model: keras.Model, checkpoints: Path, previous: list[dict]):
    """Fit with per-epoch history and backups; return the whole history and training seconds."""
    (x_train, y_train), (x_val, y_val) = job.data.train, job.data.validation
    steps = job.fit.steps_per_epoch
    train_ds = make_dataset(
        x_train, y_train, job.fit.batch_size, training=True, seed=job.seed, repeat=steps > 0
    )
    recorder, backup = resume.callbacks(checkpoints, previous)
    started = time.perf_counter()
    model.fit(
        train_ds,
        validation_data=make_dataset(x_val, y_val, job.fit.batch_size),
        epochs=job.fit.epochs,
        steps_per_epoch=steps or None,
        callbacks=[recorder, backup],
        verbose=2,  # one line per epoch: readable in `dvc repro` logs
    )
    seconds = time.perf_counter() - started + job.extra_seconds
    seconds += sum(row["epoch_seconds"] for row in previous)
    return pd.DataFrame(recorder.rows), seconds


def evaluate(job: Job, model: keras.Model, history: pd.DataFrame):
    """Test scores and the validation summary; the test confusion matrix."""
    x_test, y_test = job.data.test
    test_ds = make_dataset(x_test, y_test, job.fit.batch_size)
    test_loss, test_accuracy = model.evaluate(test_ds, verbose=0)
    predicted = predicted_labels(model.predict(test_ds, verbose=0).ravel())
    confusion = np.zeros((2, 2), dtype=int)
    np.add.at(confusion, (y_test.ravel().astype(int), predicted), 1)
    return run_record.scores(history, test_loss, test_accuracy), confusion


def write_and_log(job: Job, model, history: pd.DataFrame, metrics: dict, timing: dict, confusion):
    """The DVC outputs (byte-identical across deterministic reruns), then the MLflow run."""
    import mlflow

    # The model first: if it cannot be written, the reports keep their last good numbers.
    model_file = paths.model_file(job.name)
    save_keras(job.export(model) if job.export else model, model_file)
    record_files = run_record.write(job.name, job.tags, metrics, timing, confusion)
    history_file = paths.history_file(job.name)
    with atomic_path(history_file) as tmp:
        run_record.without_timing(history).round(5).to_csv(tmp, index=False)
    figures = paths.figures_dir(job.name)
    title = f"{job.name}: test accuracy {metrics['test_accuracy']:.3f}"
    plots.learning_curves(history, title, figures / "curves.png")
    plots.confusion_matrix(confusion, CLASSES, f"{job.name} (test)", figures / "confusion.png")

    mlflow.log_metrics({**metrics, **timing})
    for path in (history_file, *record_files):
        mlflow.log_artifact(str(path))
    for figure in ("curves.png", "confusion.png"):  # not figures/visualize/: another stage's
        mlflow.log_artifact(str(figures / figure), "figures")
    # The model goes once, as an MLflow Model (it holds the .keras): it takes photos.
    model_logging.log_model(job, model_file)
