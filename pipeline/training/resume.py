"""Resuming an interrupted training stage from its last completed epoch (one training of a
model at a time: pipeline/core/files.py `training_lock`).

Keras' BackupAndRestore saves weights and optimizer state every epoch into a folder keyed by
the job's settings (a changed param starts afresh); the per-epoch history is kept beside it,
so a resumed run still has, and logs, the whole curve. With the random-seed states of the
layers (dropout, augmentation) in the backup and the data order advanced to where the epoch
began (`resumed_data`), a resumed deterministic run trains as the uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from pipeline.core.files import atomic_path, write_text
from pipeline.core.paths import CHECKPOINTS_DIR
from pipeline.models.model_io import weights_h5
from pipeline.tracking.epochs import EpochLogger

WEIGHTS, METADATA = "latest.weights.h5", "training_metadata.json"  # Keras' names


def checkpoint_dir(name: str, settings: object) -> Path:
    """A resume is only safe with the same settings: the folder is keyed by them."""
    key = json.dumps(settings, sort_keys=True, default=str)
    return CHECKPOINTS_DIR / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def backup(checkpoints: Path) -> tuple[str, dict] | None:
    """(suffix, metadata) of the backup pair to resume from: Keras' names, else its `.bkp`
    pair; a pair counts if its weights file reads and is the one its metadata was written
    for (a kill between the two renames leaves one epoch's weights, another's metadata)."""
    import h5py

    for suffix in ("", ".bkp"):
        weights, metadata = checkpoints / (WEIGHTS + suffix), checkpoints / (METADATA + suffix)
        try:
            h5py.File(weights, "r").close()
            state = json.loads(metadata.read_text())
            state["epoch"] = int(state["epoch"])
            expected = state.get("weights_sha256")
            if not expected or hashlib.sha256(weights.read_bytes()).hexdigest() == expected:
                return suffix, state
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def completed_epochs(checkpoints: Path) -> list[dict]:
    """History rows of the epochs an interrupted run with the same settings completed
    (`backup`); nothing readable: start afresh."""
    found = backup(checkpoints)
    try:
        rows = pd.read_csv(checkpoints / "history.csv").to_dict("records") if found else []
    except (OSError, ValueError):
        found = None
    if found:
        return [row for row in rows if row["epoch"] <= found[1]["epoch"]]
    if checkpoints.exists():
        print(f"discarding unreadable checkpoints in {checkpoints}; training from epoch 1")
        shutil.rmtree(checkpoints)
    return []


# Iterators Keras' fit makes of a dataset read once an epoch, per epoch: one as the epoch
# begins and one as it ends (keras/src/trainers/epoch_iterator.py, keras pinned in pyproject)
FIT_ITERATORS_PER_EPOCH = 2


def resumed_data(dataset, epochs_done: int, steps_per_epoch: int):
    """`dataset` as epoch `epochs_done` + 1 of an uninterrupted fit reads it. A repeated
    dataset (steps_per_epoch > 0) is one stream: skip the batches already trained on. One
    read once an epoch is reshuffled for each iterator made of it: make and drop as many as
    the epochs done made (tests/test_resume.py checks the count against a real fit).
    Off TensorFlow, `dataset` is an ArrayBatches (pipeline/data/dataset.py), whose order is
    a function of the batch's place in the stream: it starts where the epoch began, the same
    batches as the uninterrupted run's (tests/test_backends.py checks it against a real fit)."""
    from pipeline.data.dataset import ArrayBatches

    if isinstance(dataset, ArrayBatches):
        return dataset.advanced(epochs_done, steps_per_epoch)
    if steps_per_epoch:
        return dataset.skip(epochs_done * steps_per_epoch)
    for _ in range(epochs_done * FIT_ITERATORS_PER_EPOCH):
        iter(dataset)
    return dataset


def callbacks(checkpoints: Path, previous: list[dict]) -> dict[str, keras.callbacks.Callback]:
    """fit's per-epoch callbacks by name, in the order they must run: the recorder first (its
    history row must be on disk before the backup claims the epoch), then the row to MLflow."""
    recorder = EpochRecorder(checkpoints / "history.csv", previous)
    return {
        "history_file": recorder,
        "mlflow": EpochLogger(recorder.rows),
        "backup": AtomicBackup(str(checkpoints)),
    }


class EpochRecorder(keras.callbacks.Callback):
    """Keeps the full per-epoch history (also across a resume) in the checkpoint folder."""

    def __init__(self, history_file: Path, previous: list[dict]):
        super().__init__()
        self.history_file, self.rows = history_file, list(previous)
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items() if k != "learning_rate"}
        row = {"epoch": epoch + 1, **logs}
        row["epoch_seconds"] = round(time.perf_counter() - self.started, 3)
        self.rows.append(row)
        with atomic_path(self.history_file) as tmp:
            pd.DataFrame(self.rows).to_csv(tmp, index=False)
        self.started = time.perf_counter()


def seed_variables(model: keras.Model) -> list:
    """The state of each random-seed generator in `model` (dropout masks, augmentation draws):
    in its variables but not in its weights, so not in a weights file."""
    weights = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weights]


class AtomicBackup(keras.callbacks.BackupAndRestore):
    """Keras' epoch backup, made whole before it replaces the last good one: the weights file
    (weights and optimizer state, made in memory: model_io.weights_h5) is renamed into place,
    then the metadata naming its hash and the seed states. A kill or a full disk at any point
    leaves a backup that loads. It stays after fit (delete_checkpoint off): train.run removes
    it once the outputs are written, so a failed write resumes from the last epoch."""

    def __init__(self, backup_dir: str):
        super().__init__(backup_dir, delete_checkpoint=False)

    def _save_model(self):
        weights = weights_h5(self.model)
        metadata = {
            "epoch": self._current_epoch,
            "batch": self._last_batch_seen,
            "weights_sha256": hashlib.sha256(weights).hexdigest(),
            "seed_states": [v.numpy().tolist() for v in seed_variables(self.model)],
        }
        with atomic_path(self._weights_path) as tmp:
            tmp.write_bytes(weights)
        write_text(self._training_metadata_path, json.dumps(metadata) + "\n")

    def _load_model(self):
        found = backup(Path(self.backup_dir))
        if found is None:
            return  # nothing to resume from (completed_epochs said so too)
        suffix, state = found
        if suffix:  # as Keras falls back: its .bkp pair becomes the latest
            shutil.copyfile(self._weights_path + suffix, self._weights_path)
            shutil.copyfile(self._training_metadata_path + suffix, self._training_metadata_path)
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)  # so its state loads
        self.model.load_weights(self._weights_path)
        seeds = state.get("seed_states", [])
        for variable, value in zip(seed_variables(self.model), seeds, strict=bool(seeds)):
            variable.assign(np.asarray(value, dtype=variable.dtype))
        self.model._initial_epoch = state["epoch"]
