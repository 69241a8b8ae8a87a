"""Per-epoch MLflow logging: each epoch's history row becomes the active run's metrics at
step `epoch`, logged explicitly (mlflow autolog beside our callback would log it twice).
Not mlflow.keras.MlflowCallback: docs/comparing.md says what this does that it does not."""

from __future__ import annotations

import keras


def log_epoch(row: dict) -> None:
    """One history row ({"epoch": 3, "loss": ..., "val_accuracy": ..., ...}) at step 3."""
    import mlflow

    metrics = {key: float(value) for key, value in row.items() if key != "epoch"}
    mlflow.log_metrics(metrics, step=int(row["epoch"]))


class EpochLogger(keras.callbacks.Callback):
    """Logs the newest row of `rows` (the history the EpochRecorder before it keeps) to the
    active MLflow run at each epoch's end."""

    def __init__(self, rows: list[dict]):
        super().__init__()
        self.rows = rows

    def on_epoch_end(self, epoch, logs=None):
        log_epoch(self.rows[-1])
