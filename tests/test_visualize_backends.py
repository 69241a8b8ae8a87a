"""pipeline/visualize on Keras' JAX backend, in a process where `import tensorflow` fails:
the same saved models give the same Grad-CAM heatmaps, P(dog), filter patterns and
activations as on TensorFlow (tests/helpers/visual_backends.py runs them on each).

Tolerances: float32 models agree to float32 rounding (heatmaps in [0, 1] within 1e-6;
filter patterns, ~200 after five ascent steps, within 1e-3); the bfloat16 model within
bfloat16's resolution (heatmaps 0.02, P(dog) 2e-3, filter patterns 0.5%).

Extended tier: CI draws every figure on JAX under `dvc repro` (tests/test_backend_repro.py);
this is the numbers' agreement with TensorFlow, a JAX child of its own.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import visual_backends
from tests.helpers.project import ROOT, command_env
from tests.helpers.visual_backends import jax_without_tensorflow, tiny_models

pytestmark = [pytest.mark.slow, pytest.mark.extended]

FLOAT32 = {"heats": 1e-6, "upsampled": 1e-6, "p_dog": 1e-6, "filters": 1e-3}
BFLOAT16 = {"heats": 0.02, "upsampled": 0.02, "p_dog": 2e-3}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """{backend: {model: arrays}} of the three tiny models on TensorFlow (in this process)
    and on JAX (in a child). Every test takes it, so each skips where JAX is not installed
    (checked here: importing jax at collection would cost every worker its import)."""
    pytest.importorskip("jax")
    folder = tmp_path_factory.mktemp("backends")
    models = tiny_models(folder / "models")
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    np.save(folder / "images.npy", images)
    found = {}
    for backend in ("tensorflow", "jax"):
        out = folder / backend
        out.mkdir()
        argv = [str(out), str(folder / "images.npy"), *map(str, models.values())]
        if backend == "tensorflow":  # this process's backend
            visual_backends.main(argv)
        else:
            command = [sys.executable, "-m", "tests.helpers.visual_backends", *argv]
            env = command_env(jax_without_tensorflow(folder / "blocked"))
            result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True)
            assert result.returncode == 0, result.stderr.decode()[-3000:]
        found[backend] = {name: dict(np.load(out / f"{name}.npz")) for name in models}
    return found


def test_jax_runs_without_tensorflow(results):
    for arrays in results["jax"].values():
        assert arrays["backend"] == "jax"
        assert not arrays["tensorflow_loaded"] and not arrays["tensorflow_importable"]
    for arrays in results["tensorflow"].values():
        assert arrays["backend"] == "tensorflow" and arrays["tensorflow_loaded"]


@pytest.mark.parametrize("model", ["flat", "nested"])
def test_float32_models_agree_across_backends(results, model):
    tf_arrays, jax_arrays = results["tensorflow"][model], results["jax"][model]
    for name, atol in FLOAT32.items():
        np.testing.assert_allclose(jax_arrays[name], tf_arrays[name], atol=atol, err_msg=name)
    np.testing.assert_allclose(jax_arrays["filter_means"], tf_arrays["filter_means"], rtol=1e-5)
    activations = sorted(name for name in tf_arrays if name.startswith("activation/"))
    assert activations == sorted(name for name in jax_arrays if name.startswith("activation/"))
    assert len(activations) >= 3  # every conv and pool layer
    for name in activations:
        np.testing.assert_allclose(jax_arrays[name], tf_arrays[name], atol=1e-6, err_msg=name)
    assert np.allclose(jax_arrays["heats"].max(axis=(1, 2)), 1)  # each map's peak


def test_a_bfloat16_model_agrees_to_its_precision(results):
    tf_arrays, jax_arrays = results["tensorflow"]["mixed"], results["jax"]["mixed"]
    for name, atol in BFLOAT16.items():
        np.testing.assert_allclose(jax_arrays[name], tf_arrays[name], atol=atol, err_msg=name)
    np.testing.assert_allclose(jax_arrays["filters"], tf_arrays["filters"], rtol=5e-3)
    np.testing.assert_allclose(jax_arrays["p_dog"], results["jax"]["flat"]["p_dog"], atol=2e-3)
