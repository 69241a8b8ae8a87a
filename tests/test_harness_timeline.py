"""harness/timeline.py's reading of a stage: Keras' epoch lines and the timeline's breakdown."""

from __future__ import annotations

import pytest

from harness.timeline import epoch_breakdown, keras_epochs


def test_keras_epoch_lines_are_read_as_printed():
    output = (
        "Epoch 1/2\n"
        "100/100 - 17s - 172ms/step - accuracy: 0.6130 - loss: 0.6601 - val_accuracy: 0.61\n"
        "logged MLflow model\n"
        "Epoch 2/2\n"
        "100/100 - 3s - 1.2s/step - accuracy: 0.7\n"
    )
    assert keras_epochs(output) == [
        {"steps": 100, "seconds": 17, "ms_per_step": 172.0},
        {"steps": 100, "seconds": 3, "ms_per_step": 1200.0},
    ]


def test_epoch_breakdown_adds_up_to_the_epoch():
    epoch = {
        "begin": 10.0,
        "first_step_end": 10.5,
        "train_end": 20.0,
        "validation_begin": 20.0,
        "validation_end": 22.0,
        "callbacks_begin": 22.25,
        "history_file": 22.3,
        "mlflow": 22.35,
        "backup": 22.5,
    }
    parts = epoch_breakdown(epoch, next_begin=23.0)
    assert parts["epoch"] == 13.0
    assert parts["train_steps"] == 10.0 and parts["validation"] == 2.0
    assert parts["history_file"] == pytest.approx(0.05) and parts["backup"] == pytest.approx(0.15)
    named = ("train_steps", "validation", "history_file", "mlflow", "backup", "other")
    assert sum(parts[k] for k in named) == pytest.approx(13.0)
    assert parts["outside_fraction"] == pytest.approx(1.0 / 13.0, abs=1e-3)
    assert epoch_breakdown(epoch, next_begin=None)["epoch"] == 12.5  # the last epoch


def test_startup_accounts_for_the_whole_wall_time():
    from harness.timeline import startup

    marks = {"data_begin": 5.0, "data_loaded": 6.0, "model_built": 7.5, "fit_begin": 8.0}
    marks |= {"fit_end": 40.0, "evaluated": 42.0, "written": 44.0}
    epochs = [
        {"begin": 8.1, "first_step_end": 9.0, "validation_begin": 20.0, "validation_end": 22.0},
        {"begin": 23.0, "backup": 35.0},
    ]
    steady = {"first_step": 0.4, "validation": 1.5}
    parts = startup(marks, epochs, steady, wall=45.0)
    assert parts["tracing_train"] == 0.5 and parts["tracing_validation"] == 0.5
    assert parts["fit_end"] == 5.0 and parts["exit"] == 1.0
    outside_epochs = sum(v for k, v in parts.items() if not k.startswith("tracing"))
    assert outside_epochs + (epochs[-1]["backup"] - epochs[0]["begin"]) == 45.0


def test_busy_cpu_seconds_counts_this_process_work():
    import time

    from harness.timeline import busy_cpu_seconds

    before, ours = busy_cpu_seconds(), time.process_time()
    while time.process_time() - ours < 0.3:  # 0.3 s of CPU work
        pass
    assert busy_cpu_seconds() - before >= 0.2  # /proc/stat ticks are 10 ms
