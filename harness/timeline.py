"""Reading a training stage run with PIPELINE_TIMELINE set (pipeline/training/timeline.py):
Keras' own per-epoch lines, each epoch's parts (train steps, validation, our per-epoch
callbacks, the rest), and where the time before the first epoch and after the last goes."""

from __future__ import annotations

import os
import re
from pathlib import Path

# Keras' verbose=2 epoch line: "100/100 - 17s - 172ms/step - accuracy: ..."
KERAS_LINE = re.compile(r"^\s*(\d+)/(\d+) - (\d+)s - (\d+(?:\.\d+)?)(ms|s)/step")
CALLBACKS = ("history_file", "mlflow", "backup")  # pipeline/training/resume.py, in order


def keras_epochs(output: str) -> list[dict]:
    """Keras' own per-epoch figures, as it prints them."""
    epochs = []
    for line in output.splitlines():
        if match := KERAS_LINE.match(line):
            steps, seconds, per_step, unit = match[1], match[3], match[4], match[5]
            step_ms = float(per_step) * (1000 if unit == "s" else 1)
            epochs.append({"steps": int(steps), "seconds": int(seconds), "ms_per_step": step_ms})
    return epochs


def busy_cpu_seconds() -> float:
    """CPU seconds every process on this machine has used since boot (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def epoch_breakdown(epoch: dict, next_begin: float | None) -> dict:
    """Seconds of each part of one epoch from its timeline marks. `other`: between the end
    of the validation pass and the next epoch's begin, less our callbacks (Keras' own
    History and progress bar, epoch bookkeeping)."""
    end = next_begin if next_begin is not None else epoch[CALLBACKS[-1]]
    parts = {
        "train_steps": epoch["train_end"] - epoch["begin"],
        "validation": epoch["validation_end"] - epoch["validation_begin"],
    }
    previous = "callbacks_begin"
    for name in CALLBACKS:
        parts[name] = epoch[name] - epoch[previous]
        previous = name
    parts["other"] = (end - epoch["begin"]) - sum(parts.values())
    parts["epoch"] = end - epoch["begin"]
    parts["first_step"] = epoch["first_step_end"] - epoch["begin"]
    # the overhead of the stage over its model: the epoch outside train steps and validation
    outside = parts["epoch"] - parts["train_steps"] - parts["validation"]
    parts["outside_fraction"] = outside / parts["epoch"]
    return {k: round(v, 3) for k, v in parts.items()}


def startup(marks: dict, epochs: list[dict], steady: dict, wall: float) -> dict:
    """Seconds before the first epoch's steps, and after the last epoch."""
    first = epochs[0]
    parts = {
        "imports": marks["data_begin"],
        "data_loading": marks["data_loaded"] - marks["data_begin"],
        "setup_build_compile": marks["model_built"] - marks["data_loaded"],
        "mlflow_run_start": marks["fit_begin"] - marks["model_built"],
        "fit_start": first["begin"] - marks["fit_begin"],
        # the first step traces the train function; the first validation the test function
        "tracing_train": (first["first_step_end"] - first["begin"]) - steady["first_step"],
        "tracing_validation": (first["validation_end"] - first["validation_begin"])
        - steady["validation"],
        # from the last epoch's end to fit's return (on_train_end, Keras' own teardown)
        "fit_end": marks["fit_end"] - epochs[-1][CALLBACKS[-1]],
        "test_evaluation": marks["evaluated"] - marks["fit_end"],
        "write_and_log_model": marks["written"] - marks["evaluated"],
        "exit": wall - marks["written"],
    }
    return {k: round(v, 2) for k, v in parts.items()}
