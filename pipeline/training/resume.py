"""Resuming an interrupted training stage from its last completed epoch.

Keras' BackupAndRestore saves weights and optimizer state every epoch into a folder keyed by
the job's settings (a changed param starts afresh); the per-epoch history is kept beside it,
so a resumed run still has, and logs, the whole curve.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import keras
import pandas as pd

from pipeline.core.files import atomic_path
from pipeline.core.paths import CHECKPOINTS_DIR
from pipeline.tracking.epochs import EpochLogger


def checkpoint_dir(name: str, settings: object) -> Path:
    """A resume is only safe with the same settings: the folder is keyed by them."""
    key = json.dumps(settings, sort_keys=True, default=str)
    return CHECKPOINTS_DIR / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def completed_epochs(checkpoints: Path) -> list[dict]:
    """History rows of the epochs an interrupted run with the same settings completed.

    Backups are replaced atomically (AtomicBackup); a `.bkp` pair, if Keras left one, is
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


class AtomicBackup(keras.callbacks.BackupAndRestore):
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
