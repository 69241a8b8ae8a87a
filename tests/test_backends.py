"""Keras' backends (docs/backends.md): `train.runtime.backend` chooses TensorFlow or JAX for
every stage (pipeline/training/backend.py, before Keras loads); on JAX the training path runs
where TensorFlow is not installed (pipeline/data/dataset.py's ArrayBatches in place of
tf.data, runtime.py's devices), resumes on the same batches, and its model files load on
TensorFlow and the other way round. The children that run JAX import no TensorFlow: a
`tensorflow` package that fails to import is first on their path (tests/helpers/backends.py)."""

from __future__ import annotations

import numpy as np

from tests.helpers.backends import backend_env, call_in_child


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
