"""Per-epoch MLflow logging: each epoch's history row becomes the active run's metrics at
step `epoch`, logged explicitly (mlflow autolog beside our callback would log it twice)."""

from __future__ import annotations


def log_epoch(row: dict) -> None:
    """One history row ({"epoch": 3, "loss": ..., "val_accuracy": ..., ...}) at step 3."""
    import mlflow

    metrics = {key: float(value) for key, value in row.items() if key != "epoch"}
    mlflow.log_metrics(metrics, step=int(row["epoch"]))
