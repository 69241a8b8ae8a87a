"""`python -m pipeline predict` (pipeline/serving/predict.py) refusing what it cannot answer:
a tracking server that does not answer, a Keras model of another task."""

from __future__ import annotations

import socket
import sys
import time

import numpy as np
import pytest

from pipeline.core.errors import PipelineError
from tests.helpers.project import run
from tests.helpers.synthetic import synthetic_image


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens once the probe closes


def _photo(folder) -> str:
    synthetic_image("cat", 64, np.random.default_rng(1)).save(folder / "cat.jpg")
    return "cat.jpg"


def test_predict_with_an_unreachable_tracking_server_fails_in_seconds(tmp_path):
    uri = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    result = run(
        [sys.executable, "-m", "pipeline", "predict", _photo(tmp_path)],
        tmp_path, check=False, env={"MLFLOW_TRACKING_URI": uri},
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: MLFLOW_TRACKING_URI={uri}: tracking server unreachable")
    assert "dvc repro" not in line
    assert elapsed < 15, f"took {elapsed:.1f} s"


def _keras_model(input_shape, units: int, activation: str):
    import keras

    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(units, activation=activation),
        ]
    )


@pytest.mark.parametrize(
    "input_shape, units, activation",
    [
        ((32, 32, 3), 2, "softmax"),  # another two-class head
        ((32, 32, 3), 1, "linear"),  # a logit, not P(dog)
        ((32, 32, 3), 10, "softmax"),  # ten classes of colour photos
        ((28, 28, 1), 1, "sigmoid"),  # one unit on grey digits
        ((32, 32, 4), 1, "sigmoid"),  # RGBA
        ((32, 48, 3), 1, "sigmoid"),  # not square: photos are resized to squares
    ],
)
def test_predict_refuses_a_keras_model_of_another_task(tmp_path, input_shape, units, activation):
    from pipeline.serving.predict import load_classifier

    path = tmp_path / "foreign.keras"
    _keras_model(input_shape, units, activation).save(path)
    with pytest.raises(PipelineError, match="not a dogs-vs-cats or MNIST classifier") as error:
        load_classifier(str(path))
    assert str(error.value).startswith(f"--model {path}: ")


@pytest.mark.parametrize(
    "input_shape, units, activation", [((32, 32, 3), 1, "sigmoid"), ((28, 28, 1), 10, "softmax")]
)
def test_predict_takes_the_two_tasks_it_knows(tmp_path, input_shape, units, activation):
    from pipeline.serving.predict import load_classifier

    path = tmp_path / "model.keras"
    _keras_model(input_shape, units, activation).save(path)
    size, scores = load_classifier(str(path))
    assert size == input_shape[0]
    assert len(scores(np.zeros((2, size, size, 3), np.uint8))) == 2


def test_predict_command_refuses_a_foreign_model_in_one_line(tmp_path):
    path = tmp_path / "foreign.keras"
    _keras_model((32, 32, 3), 2, "softmax").save(path)
    result = run(
        [sys.executable, "-m", "pipeline", "predict", _photo(tmp_path), "--model", str(path)],
        tmp_path, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith(f"error: --model {path}: not a dogs-vs-cats or MNIST classifier")
    assert "Traceback" not in result.stderr
    assert "\tcat\t" not in result.stdout and "\tdog\t" not in result.stdout
