"""What a training run writes about itself besides the model, each kind in a file of its own.

- `reports/metrics/NAME.json`: numbers only (scores, epochs) under the key NAME, the DVC
  metrics, so `dvc metrics show` and `dvc exp show` list scores and nothing else. The key
  makes every column name unique (`baseline.test_accuracy`): DVC then leaves out the file
  path it otherwise puts in front of each column (`reports/metrics/baseline.json:...`).
  Read them with `pipeline.core.files.read_metrics`.
- `reports/details/NAME.json`: what was trained on what (model, base, image size, seed,
  split hash) and the test confusion matrix; a plain DVC output, not a metric.
- `reports/timing/NAME.json`: training seconds. Not a DVC output and git-ignored: timing
  differs on every rerun, and every DVC output of a stage must be byte-identical across
  reruns with the same inputs (`train.runtime.deterministic: true`); the MLflow run holds
  the same figures (`train_seconds`, `seconds_per_epoch`, `epoch_seconds` per epoch).
"""

from __future__ import annotations

import json
import resource
import sys

import numpy as np
import pandas as pd

from pipeline.core.catalog import TrainedModel
from pipeline.core.files import write_text

TIMING_COLUMNS = ("epoch_seconds",)  # per-epoch history columns that are timing


def scores(history: pd.DataFrame, test_loss: float, test_accuracy: float) -> dict:
    """The run's metrics: numbers that depend on the data, the params and the seed only."""
    val_accuracy = history["val_accuracy"]
    return {
        "test_accuracy": round(float(test_accuracy), 4),
        "test_loss": round(float(test_loss), 4),
        "best_val_accuracy": round(float(val_accuracy.max()), 4),
        "best_epoch": int(val_accuracy.idxmax()) + 1,
        "final_val_accuracy": round(float(val_accuracy.iloc[-1]), 4),
        "epochs": len(history),
    }


def timing(history: pd.DataFrame, seconds: float) -> dict:
    return {
        "train_seconds": round(seconds, 1),
        "seconds_per_epoch": round(seconds / len(history), 2),
        "peak_rss_mb": round(peak_rss_mb()),
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def without_timing(history: pd.DataFrame) -> pd.DataFrame:
    return history.drop(columns=[c for c in TIMING_COLUMNS if c in history])


def write(model: TrainedModel, tags: dict, metrics: dict, seconds: dict, confusion: np.ndarray):
    """Write the three files of `model`'s run; return (metrics file, details file)."""
    name = model.name
    details = {
        "model": name,
        **{k: str(v) for k, v in tags.items()},
        "confusion_matrix": confusion.tolist(),  # rows: true class, columns: predicted
    }
    write_text(model.details_file, json.dumps(details, indent=2) + "\n")
    write_text(model.timing_file, json.dumps(seconds, indent=2) + "\n")
    write_text(model.metrics_file, json.dumps({name: metrics}, indent=2) + "\n")
    return model.metrics_file, model.details_file
