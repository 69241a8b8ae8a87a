"""MLflow's system metrics on the training runs (pipeline/tracking/system.py): the sampling
interval, quiet logs, and a sampler that ends with its run, so that no stage process waits
on it at exit. That a tiny training's run carries them when on and none when off is in
tests/test_evaluation.py (its two runs)."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from tests.helpers.tracking import store_uri

SAMPLER = "SystemMetricsMonitor"  # the name MLflow gives its sampling thread


@pytest.fixture
def interval_unset(monkeypatch):
    """No sampling interval in the environment; whatever a test sets is undone after it."""
    from pipeline.tracking.system import INTERVAL_VARIABLE

    monkeypatch.setenv(INTERVAL_VARIABLE, "")  # recorded, so restored after the test, set or not
    monkeypatch.delenv(INTERVAL_VARIABLE)


def test_on_sets_the_interval_unless_the_environment_does(interval_unset, monkeypatch):
    import os

    from pipeline.tracking.system import INTERVAL_VARIABLE, SAMPLING_SECONDS, log_system_metrics

    assert log_system_metrics(False) is False and INTERVAL_VARIABLE not in os.environ
    assert log_system_metrics(True) is True
    assert float(os.environ[INTERVAL_VARIABLE]) == SAMPLING_SECONDS
    monkeypatch.setenv(INTERVAL_VARIABLE, "0.25")
    assert log_system_metrics(True) and os.environ[INTERVAL_VARIABLE] == "0.25"
    # MLflow's start, stop and no-GPU notices are INFO: not in every stage's log
    assert not logging.getLogger("mlflow.system_metrics").isEnabledFor(logging.INFO)


def samplers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == SAMPLER and t.is_alive()]


def test_the_sampler_is_a_daemon_that_ends_with_its_run(tmp_path, monkeypatch):
    """cli._exit skips the interpreter's teardown only when no non-daemon thread is alive:
    the sampler must never be one, and must be gone once the run ends."""
    import mlflow

    from pipeline.tracking import store
    from pipeline.tracking.system import INTERVAL_VARIABLE, log_system_metrics

    monkeypatch.setenv(INTERVAL_VARIABLE, "0.2")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri(tmp_path))
    store.connect()  # as a stage does
    assert samplers() == []
    run = mlflow.start_run(log_system_metrics=log_system_metrics(True))
    try:
        (sampler,) = samplers()
        assert sampler.daemon
        time.sleep(1.0)
    finally:
        started = time.perf_counter()
        mlflow.end_run()
    assert time.perf_counter() - started < 5  # joined at once, not after an interval
    assert samplers() == []
    client = mlflow.MlflowClient()
    history = client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
    assert len(history) >= 2

    run = mlflow.start_run(log_system_metrics=log_system_metrics(False))
    assert samplers() == []
    mlflow.end_run()
    assert not [k for k in client.get_run(run.info.run_id).data.metrics if k.startswith("system/")]
