"""The one training routine every model uses: build, fit, evaluate, write and log.

Outputs of a job named NAME (all written atomically; pipeline/core/paths.py):
  models/NAME.keras                  the trained model (raw [0, 255] pixels in)
  reports/metrics/NAME.json          test and validation scores (`dvc metrics show`)
  reports/details/NAME.json          what was trained on what, the test confusion matrix
  reports/timing/NAME.json           training seconds (not a DVC output: see run_record.py)
  reports/history/NAME.csv           loss and accuracy per epoch (`dvc plots show`)
  reports/figures/NAME/*.png         learning curves and the test confusion matrix
and one MLflow run NAME with the same numbers, the params, the tags and these files.
The MNIST models of mnist/dvc.yaml go through here too, with their files under mnist/
(TrainedModel.outputs), ten classes (softmax, sparse categorical cross-entropy) and a 10 x 10
confusion matrix.
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

from pipeline.core.catalog import TrainedModel
from pipeline.core.errors import PipelineError, full_disk, full_disk_path, is_disk_full
from pipeline.core.files import all_or_none, atomic_path, training_lock
from pipeline.core.params import AugmentationParams, BaseParams, FitParams, RuntimeParams
from pipeline.data.dataset import make_dataset, predictions
from pipeline.models.model_io import save_keras
from pipeline.reporting import evaluation, plots
from pipeline.serving import logged_model
from pipeline.serving.inference import predicted_labels
from pipeline.tracking import store, system
from pipeline.tracking.epochs import log_epoch
from pipeline.training import resume, run_record, runtime, timeline


@dataclass
class Splits:
    """Inputs (images or cached features) and class labels (0/1, or 0-9) of each split."""

    train: tuple[np.ndarray, np.ndarray]
    validation: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Settings:
    """The params.yaml sections a training stage reads, typed and whole: the one source of
    its MLflow params, its tags and its resume key."""

    seed: int
    runtime: RuntimeParams
    fit: FitParams  # the stage's own section of `train`
    augmentation: AugmentationParams | None = None  # for the models that augment
    base: BaseParams | None = None  # for the models on a conv base
    # The MLflow params, nested as in params.yaml, where they are not `train.<model>` (MNIST:
    # its sections of `mnist`, the stage's seed and variant).
    logged: dict | None = None


@dataclass
class Job:
    """One model to train; training/job.py builds every Job (`job.make_job`)."""

    model: TrainedModel  # its name, stage, output paths (pipeline/core/catalog.py)
    settings: Settings
    build_model: Callable[[], keras.Model]  # called inside the distribution strategy's scope
    data: Splits
    split_sha256: str  # the hash of data/split.csv it trained on
    export: Callable[[keras.Model], keras.Model] | None = None  # the model to save, if not this
    # features-<base>: the head takes features; its MLflow Model (conv base + head) takes photos
    pixels_model: Callable[[keras.Model], keras.Model] | None = None
    extra_seconds: float = 0.0  # training work done before fit (cached augmented features)

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def stage(self) -> str:
        return self.model.stage

    @property
    def fit(self) -> FitParams:
        return self.settings.fit

    def logged_params(self) -> dict:
        """The sections the stage reads, nested as in params.yaml, for its MLflow run."""
        settings, kind = self.settings, self.model.kind.name
        if settings.logged is not None:
            return settings.logged
        train = {"seed": settings.seed, "runtime": settings.runtime.model_dump()}
        logged = {"train": {**train, kind: settings.fit.model_dump()}}
        if settings.augmentation is not None:
            logged["augmentation"] = settings.augmentation.model_dump()
        if settings.base is not None:
            base = self.model.base
            logged["pretrained"] = {"base": base, base: settings.base.model_dump()}
        return logged

    def tags(self) -> dict[str, str]:
        """What was trained on what: the run's tags and reports/details/NAME.json."""
        return {
            "base": self.model.base or "none",
            "image_size": str(self.model.image_size),
            "seed": str(self.settings.seed),
            "split_sha256": self.split_sha256,
        }


def run(job: Job) -> dict:
    """Train `job`, evaluate it on test, write its outputs and MLflow run; return its metrics.
    One training of a job at a time: a second one refuses (files.training_lock)."""
    import mlflow

    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    with training_lock(job.name):
        store.connect()  # before training: an unreachable server fails now, not in an hour
        store.close_stale_runs(job.stage)
        setup = runtime.setup(job.settings.runtime, job.settings.seed)
        runtime.check_batch_size(setup, job.fit.batch_size, f"{job.model.kind.section}.batch_size")
        model = build(job, setup)
        timeline.mark("model_built")
        checkpoints = resume.checkpoint_dir(job.name, [job.logged_params(), job.tags()])
        previous = resume.completed_epochs(checkpoints)
        run_id = start_run(job, setup, previous)
        try:
            log_start(job, model, previous, run_id)
            history, seconds, epoch_timeline = fit(job, model, checkpoints, previous)
            metrics, confusion = evaluate(job, model, history)
            timeline.mark("evaluated")
            timing = run_record.timing(history, seconds)
            with all_or_none():  # failing part-way, it leaves the last good outputs
                write_and_log(job, model, history, metrics, timing, confusion)
            timeline.mark("written")
        except BaseException as exc:
            end_failed_run(exc)
            raise
        mlflow.end_run()
        shutil.rmtree(checkpoints, ignore_errors=True)  # after the outputs: a failed write resumes
    timeline.write(epoch_timeline)
    print(
        f"{job.name}: test accuracy {metrics['test_accuracy']:.4f}, "
        f"best validation {metrics['best_val_accuracy']:.4f}, {seconds:.0f} s"
    )
    return metrics


def start_run(job: Job, setup: runtime.Runtime, previous: list[dict]) -> str:
    """Start the job's MLflow run with its tags; return its id."""
    import mlflow

    tags = store.run_tags(job.stage, {**job.tags(), **runtime.describe(setup)})
    tags["pipeline.model"] = job.model.group  # compare's groups
    if previous:
        tags["resumed_from_epoch"] = str(len(previous))
    on = system.log_system_metrics(job.settings.runtime.system_metrics)
    return mlflow.start_run(run_name=job.name, tags=tags, log_system_metrics=on).info.run_id


def end_failed_run(exc: BaseException) -> None:
    """End the active MLflow run as KILLED (Ctrl-C, SIGTERM) or FAILED; a full disk anywhere
    is then one error naming what it stopped. A store too full to take the status leaves the
    run RUNNING: the next run of the stage closes it (store.close_stale_runs)."""
    import mlflow

    status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
    try:
        mlflow.end_run(status=status)
    except Exception as failed:
        if not is_disk_full(failed):
            raise
    if is_disk_full(exc) and not isinstance(exc, PipelineError):
        uri = store.tracking_uri()
        raise full_disk(full_disk_path(exc, uri.removeprefix("sqlite:///"))) from None


def _raise_on_sigterm(signum, frame):
    # SIGTERM (dvc/queue cancellation, CI timeouts) unwinds like Ctrl-C: the MLflow run is
    # ended as KILLED and no output is renamed into place.
    raise KeyboardInterrupt(f"signal {signum}")


def compile_model(
    model: keras.Model, learning_rate: float, jit_compile: bool = False, classes: int = 2
) -> None:
    """RMSprop, as every model of the book's chapter; a sigmoid for two classes, a softmax
    over integer labels for more (the book's categorical cross-entropy on one-hot labels).
    Accuracy is weighted: where ArrayBatches repeats rows to fill a last batch for several
    devices, they weigh 0 (pipeline/data/dataset.py); no other dataset carries weights."""
    model.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate),
        loss="binary_crossentropy" if classes == 2 else "sparse_categorical_crossentropy",
        weighted_metrics=["accuracy"],
        jit_compile=jit_compile,
    )


def build(job: Job, setup: runtime.Runtime) -> keras.Model:
    with setup.strategy.scope():
        model = job.build_model()
        compile_model(model, job.fit.learning_rate, setup.jit_compile, len(job.model.kind.classes))
    return model


def log_start(job: Job, model: keras.Model, previous: list[dict], run_id: str) -> None:
    """Params, model size and, for a resumed run, the epochs done before the interruption."""
    import mlflow

    mlflow.log_params(store.flatten(job.logged_params()))
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    mlflow.log_params({"trainable_params": trainable, "total_params": model.count_params()})
    for row in previous:  # a resumed run still shows the whole curve
        log_epoch(row)
    sizes = " / ".join(f"{len(x)} {split}" for split, (x, _) in vars(job.data).items())
    resuming = f", resuming after epoch {len(previous)}" if previous else ""
    print(f"training {job.name}: {sizes}, {job.fit.epochs} epochs{resuming} (MLflow run {run_id})")


def fit(job: Job, model: keras.Model, checkpoints: Path, previous: list[dict]):
    """Fit with per-epoch history and backups; return the whole history and training seconds."""
    (x_train, y_train), (x_val, y_val) = job.data.train, job.data.validation
    steps = job.fit.steps_per_epoch
    train_ds = make_dataset(
        x_train,
        y_train,
        job.fit.batch_size,
        training=True,
        seed=job.settings.seed,
        repeat=steps > 0,
    )
    train_ds = resume.resumed_data(train_ds, len(previous), steps)
    per_epoch = resume.callbacks(checkpoints, previous)
    callbacks, epoch_timeline = timeline.with_timeline(per_epoch)  # PIPELINE_TIMELINE
    started = time.perf_counter()
    timeline.mark("fit_begin")
    model.fit(
        train_ds,
        validation_data=make_dataset(x_val, y_val, job.fit.batch_size),
        epochs=job.fit.epochs,
        steps_per_epoch=steps or None,
        shuffle=False,  # the data shuffles itself, seeded and resumable (Keras' shuffle: none)
        callbacks=callbacks,
        verbose=2,  # one line per epoch: readable in `dvc repro` logs
    )
    timeline.mark("fit_end")
    seconds = time.perf_counter() - started + job.extra_seconds
    seconds += sum(row["epoch_seconds"] for row in previous)
    return pd.DataFrame(per_epoch["history_file"].rows), seconds, epoch_timeline


def evaluate(job: Job, model: keras.Model, history: pd.DataFrame):
    """Test scores and the validation summary; the test confusion matrix. One pass over the
    test set: loss, accuracy and confusion matrix come from the same predictions
    (model.evaluate, then model.predict, ran the test set through the model twice)."""
    x_test, y_test = job.data.test
    scores = predictions(model, make_dataset(x_test, y_test, job.fit.batch_size), verbose=0)
    test_loss, test_accuracy = test_scores(model, y_test, scores)
    predicted = predicted_labels(scores)
    classes = len(job.model.kind.classes)
    confusion = np.zeros((classes, classes), dtype=int)
    np.add.at(confusion, (y_test.ravel().astype(int), predicted), 1)
    return run_record.scores(history, test_loss, test_accuracy), confusion


def test_scores(model: keras.Model, labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(loss, accuracy) of predicted `scores` as model.evaluate computes them: the compiled
    loss averaged over the images, and the share whose predicted class is the label's."""
    truth = labels.astype(np.float32).reshape(-1, 1)  # as make_dataset feeds them
    loss = keras.ops.mean(keras.losses.get(model.loss)(truth, scores))
    accuracy = np.mean(predicted_labels(scores) == labels.ravel())
    return float(loss), float(accuracy)


def write_and_log(job: Job, model, history: pd.DataFrame, metrics: dict, timing: dict, confusion):
    """The DVC outputs (byte-identical across deterministic reruns), then the MLflow run."""
    import mlflow

    # The model first: if it cannot be written, the reports keep their last good numbers.
    model_file = job.model.model_file
    save_keras(job.export(model) if job.export else model, model_file)
    record_files = run_record.write(job.model, job.tags(), metrics, timing, confusion)
    history_file = job.model.history_file
    with atomic_path(history_file) as tmp:
        run_record.without_timing(history).round(5).to_csv(tmp, index=False)
    figures = job.model.figures_dir
    title = f"{job.name}: test accuracy {metrics['test_accuracy']:.3f}"
    plots.learning_curves(history, title, figures / "curves.png")
    classes = job.model.kind.classes
    plots.confusion_matrix(confusion, classes, f"{job.name} (test)", figures / "confusion.png")

    mlflow.log_metrics({**metrics, **timing})
    for path in (history_file, *record_files):
        mlflow.log_artifact(str(path))
    for figure in ("curves.png", "confusion.png"):  # not figures/visualize/: another stage's
        mlflow.log_artifact(str(figures / figure), "figures")
    evaluation.write_and_log(job, model, confusion)  # ROC, PR, calibration; per-class F1
    # The model goes once, as an MLflow Model (it holds the .keras): it takes photos.
    logged_model.log_model(job, model_file)
