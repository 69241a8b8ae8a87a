"""Where a training stage's wall time goes, for benchmarks/benchmark.py.

With `PIPELINE_TIMELINE=FILE` in its environment, a training stage (the real
`python -m pipeline train <model>`, unchanged otherwise) writes FILE (JSON) when it ends:
- `start`: named moments (seconds since the process started): `data_begin` (after the
  imports), `data_loaded`, `model_built` (runtime set up, model built and compiled),
  `fit_begin`, `fit_end`, `evaluated`, `written`;
- `epochs`: per epoch, the same clock at its begin, its first train step's end (epoch 1:
  tracing), its last train step's end, the validation pass's begin and end, and after each
  per-epoch callback (history file, MLflow, backup) in the order Keras calls them.
Without the variable, nothing is hooked into fit and nothing is written: marks are a dict
entry each. A stage is one process, so module-level marks are the process's own.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import keras
import psutil

ENV = "PIPELINE_TIMELINE"
_STARTED = psutil.Process().create_time()  # wall clock, as time.time()
_marks: dict[str, float] = {}


def enabled() -> bool:
    return bool(os.environ.get(ENV))


def now() -> float:
    return round(time.time() - _STARTED, 4)


def mark(name: str) -> None:
    _marks[name] = now()


class EpochTimeline(keras.callbacks.Callback):
    """First in fit's callbacks: the clock at each phase of each epoch; `after(name)` gives
    the callback to put right after another one, which records when that one finished."""

    def __init__(self):
        super().__init__()
        self.epochs: list[dict] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append({"epoch": epoch + 1, "begin": now()})

    def on_train_batch_end(self, batch, logs=None):
        current = self.epochs[-1]
        current.setdefault("first_step_end", now())
        current["train_end"] = now()

    def on_test_begin(self, logs=None):
        if self.epochs:  # fit's validation pass, not a later evaluate()
            self.epochs[-1]["validation_begin"] = now()

    def on_test_end(self, logs=None):
        if self.epochs:
            self.epochs[-1]["validation_end"] = now()

    def on_epoch_end(self, epoch, logs=None):
        self.epochs[-1]["callbacks_begin"] = now()

    def after(self, name: str) -> keras.callbacks.Callback:
        timeline = self

        class After(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                timeline.epochs[-1][name] = now()

        return After()


def with_timeline(callbacks: dict[str, keras.callbacks.Callback]) -> tuple[list, EpochTimeline]:
    """fit's callbacks (name: callback, in order), each followed by its marker when
    PIPELINE_TIMELINE is set; and the timeline (its epochs stay empty when not)."""
    timeline = EpochTimeline()
    if not enabled():
        return list(callbacks.values()), timeline
    ordered = [timeline]
    for name, callback in callbacks.items():
        ordered += [callback, timeline.after(name)]
    return ordered, timeline


def write(timeline: EpochTimeline) -> None:
    """Write PIPELINE_TIMELINE's file, if set; forget the marks either way."""
    path = os.environ.get(ENV)
    if path:
        Path(path).write_text(json.dumps({"start": _marks, "epochs": timeline.epochs}, indent=1))
    _marks.clear()
