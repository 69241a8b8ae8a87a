"""MLflow's own system metrics on every training run (`train.runtime.system_metrics`):
`system/cpu_utilization_percentage`, `system/system_memory_usage_megabytes`, disk and network,
and `system/gpu_<i>_...` where the NVIDIA management library's bindings (nvidia-ml-py) see a
GPU. MLflow samples them in a daemon thread that `mlflow.end_run` stops and joins: a stage
never waits on it at exit (cli._exit waits only for non-daemon threads)."""

from __future__ import annotations

import logging
import os

# Each sample reads the run and writes a batch to the store: at this interval, a cost no
# training can measure, and still several samples in the shortest stage.
SAMPLING_SECONDS = 10.0
INTERVAL_VARIABLE = "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"  # set by hand, it wins


def log_system_metrics(on: bool) -> bool:
    """`mlflow.start_run(log_system_metrics=...)`: `on`, after setting the sampling interval.
    A run shorter than one interval logs none (MLflow publishes a sample after its wait)."""
    import mlflow

    if on and not os.environ.get(INTERVAL_VARIABLE):
        mlflow.set_system_metrics_sampling_interval(SAMPLING_SECONDS)
    # its start, stop and no-GPU notices are INFO lines in every stage's log
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    return on
