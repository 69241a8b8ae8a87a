"""Keras' backends (docs/backends.md): `train.runtime.backend` chooses TensorFlow or JAX for
every stage (pipeline/training/backend.py, before Keras loads); on JAX the training path runs
where TensorFlow is not installed (pipeline/data/dataset.py's ArrayBatches in place of
tf.data, runtime.py's devices), resumes on the same batches, and its model files load on
TensorFlow and the other way round. The children that run JAX import no TensorFlow: a
`tensorflow` package that fails to import is first on their path (tests/helpers/backends.py)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.backends import backend_env, call_in_child

# The same weights on TensorFlow and on JAX give P(dog) within this: a float32 convnet whose
# convolutions each backend sums in its own order (measured: a unit in the last place)
CROSS_BACKEND_ABS = 1e-6
# Two devices sum the gradients of half batches, then all-reduce them: float32 rounding only
# (measured: far below these after four epochs)
DATA_PARALLEL_REL, DATA_PARALLEL_ABS = 1e-5, 1e-6


def test_jax_trains_where_tensorflow_cannot_be_imported_and_resumes_on_the_same_batches(
    tmp_path,
):
    record = call_in_child("learn_and_resume", tmp_path / "out.json", backend_env("jax", tmp_path))
    assert record["tensorflow_loaded"] is False
    assert record["val_accuracy"][-1] >= 0.85  # chance is 0.5
    tags = record["tags"]
    assert (tags["backend"], tags["strategy"], tags["replicas"]) == ("jax", "Default", "1")
    assert tags["jit_compile"] == "true"  # Keras compiles every step on JAX
    for steps, batches in (("0", 6), ("4", 4)):  # one pass an epoch; a repeated stream
        uninterrupted, resumed = record["streams"][steps]
        # each fit first reads one batch to build the model, then its epochs
        assert len(uninterrupted) == 1 + 4 * batches and len(resumed) == 1 + 2 * batches
        assert resumed[1:] == uninterrupted[1 + 2 * batches :]
        epochs = [uninterrupted[1 + e * batches : 1 + (e + 1) * batches] for e in range(4)]
        assert epochs[0] != epochs[1]  # reshuffled
    one_pass = np.concatenate(record["streams"]["0"][0][1:7])
    assert sorted(one_pass) == list(range(60))


@pytest.mark.slow
def test_a_model_file_is_backend_free_both_ways(tmp_path):
    """A .keras file saved on TensorFlow predicts the same on JAX, and one saved on JAX the
    same on TensorFlow (the augmented convnet: its custom augmentation layer too)."""
    from pipeline.models.model_io import load_keras, save_keras
    from tests.helpers.backends import augmented_convnet, cross_backend_inputs

    x = cross_backend_inputs()
    model = augmented_convnet()
    save_keras(model, tmp_path / "other.keras")
    on_tensorflow = model.predict(x, verbose=0)
    record = call_in_child("load_and_save", tmp_path / "out.json", backend_env("jax", tmp_path))
    assert (record["backend"], record["tensorflow_loaded"]) == ("jax", False)
    assert np.asarray(record["other"]) == pytest.approx(on_tensorflow, abs=CROSS_BACKEND_ABS)
    jax_model = load_keras(tmp_path / "here.keras")
    on_jax = np.asarray(record["here"])
    assert jax_model.predict(x, verbose=0) == pytest.approx(on_jax, abs=CROSS_BACKEND_ABS)
    assert on_jax.std() > 0  # a real convnet's outputs, not a constant


@pytest.mark.slow
def test_data_parallel_on_two_cpu_devices_learns_as_one_device(tmp_path):
    """Keras' DataParallel over two of XLA's host devices (the mirrored strategy on JAX)
    trains the tiny baseline as one device does, from the same seed and batches."""
    env = backend_env(
        "jax",
        tmp_path,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        PIPELINE_LOGICAL_CPUS="2",
    )
    record = call_in_child("data_parallel", tmp_path / "out.json", env)
    assert record["devices"] == 2
    one, two = record["default"], record["mirrored"]
    assert (one["tags"]["strategy"], one["tags"]["replicas"]) == ("Default", "1")
    assert (two["tags"]["strategy"], two["tags"]["replicas"]) == ("DataParallel", "2")
    assert two["val_accuracy"][-1] >= 0.85  # chance is 0.5
    assert two["loss"] == pytest.approx(one["loss"], rel=DATA_PARALLEL_REL)
    assert two["predictions"] == pytest.approx(one["predictions"], abs=DATA_PARALLEL_ABS)
