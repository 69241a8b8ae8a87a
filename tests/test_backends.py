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


def test_jax_resumes_on_the_same_batches_where_tensorflow_cannot_be_imported(tmp_path):
    record = call_in_child("resume_streams", tmp_path / "out.json", backend_env("jax", tmp_path))
    assert record["tensorflow_loaded"] is False
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
@pytest.mark.extended
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
@pytest.mark.extended
def test_data_parallel_on_two_cpu_devices_learns_as_one_device(tmp_path):
    """Keras' DataParallel over two of XLA's host devices (the mirrored strategy on JAX)
    trains the tiny baseline as one device does, from the same seed and batches, with sets
    that end on a batch two devices cannot split as it is (dataset.py's ArrayBatches)."""
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
    # the validation rows repeated for two devices weigh nothing: the scores of the 21 images
    assert two["val_loss"] == pytest.approx(one["val_loss"], rel=DATA_PARALLEL_REL)
    assert two["val_accuracy"] == pytest.approx(one["val_accuracy"], abs=DATA_PARALLEL_ABS)
    assert len(two["predictions"]) == len(one["predictions"]) == 21
    assert two["predictions"] == pytest.approx(one["predictions"], abs=DATA_PARALLEL_ABS)


def params_with(tmp_path, runtime: dict):
    import yaml

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"train": {"runtime": runtime}}))
    return path


@pytest.mark.parametrize(
    "shell, param, said",
    [
        (None, "jax", ""),
        ("jax", "jax", ""),
        ("torch", "jax", "KERAS_BACKEND=torch in the environment; using "),
        ("jax", None, "KERAS_BACKEND=jax in the environment; using "),  # the param's default
    ],
)
def test_the_param_chooses_the_backend_over_the_environment(tmp_path, capsys, shell, param, said):
    from pipeline.training import backend

    environ = {} if shell is None else {"KERAS_BACKEND": shell}
    path = params_with(tmp_path, {} if param is None else {"backend": param})
    assert backend.choose(path, environ) == (param or "tensorflow")
    assert environ["KERAS_BACKEND"] == (param or "tensorflow")
    err = capsys.readouterr().err
    assert err.startswith(said) and err.count("\n") == (1 if said else 0)
    assert "XLA_FLAGS" not in environ


def test_a_backend_that_is_not_installed_is_one_line(tmp_path, monkeypatch):
    import importlib.util

    from pipeline.training import backend

    found = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "tensorflow" else found(name)
    )
    environ = {}
    with pytest.raises(SystemExit) as exc:
        backend.choose(params_with(tmp_path, {}), environ)
    assert str(exc.value) == (
        "error: params.yaml: train.runtime.backend is tensorflow, which is not installed here; "
        "set it to jax, or install tensorflow (uv sync --locked)"
    )
    assert environ == {}


def test_without_params_the_environment_decides_and_jax_gets_its_xla_flags(tmp_path):
    from pipeline.training import backend

    environ = {"KERAS_BACKEND": "torch"}
    assert backend.choose(tmp_path / "missing.yaml", environ) is None
    assert environ == {"KERAS_BACKEND": "torch"}
    environ = {"PIPELINE_LOGICAL_CPUS": "2", "XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    path = params_with(tmp_path, {"backend": "jax", "deterministic": True})
    backend.choose(path, environ)
    assert environ["XLA_FLAGS"].split() == [
        "--xla_dump_to=/tmp/x",
        "--xla_force_host_platform_device_count=2",
        "--xla_gpu_deterministic_ops=true",
    ]
    environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"  # the user's stays
    backend.choose(path, {**environ, "PIPELINE_LOGICAL_CPUS": "2"})
    assert environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=4"


def test_a_process_on_another_backend_than_its_param_is_one_clear_error():
    from pipeline.core.errors import PipelineError
    from pipeline.core.params import RuntimeParams
    from pipeline.training import runtime

    with pytest.raises(PipelineError, match="train.runtime.backend is jax, but Keras runs on "):
        runtime.setup(RuntimeParams(backend="jax"), 42)


def test_array_batches_shuffle_by_pass_and_stream_across_passes():
    """ArrayBatches (the loader off TensorFlow), read as Keras reads it: each row once a pass,
    reshuffled each pass by the seed; repeated, one stream batched across the passes' joins;
    uint8 cast to float32 per batch, other dtypes kept; images alone where labels are None."""
    from pipeline.data.dataset import ArrayBatches

    pixels = np.random.default_rng(0).integers(0, 256, (25, 4, 4, 3), dtype=np.uint8)
    labels = np.arange(25)  # each row's label is its index
    data = ArrayBatches(pixels, labels, 10, training=True, seed=3)
    assert data.num_batches == 3

    def one_pass(data):
        data.on_epoch_begin()
        batches = [data[i] for i in range(data.num_batches)]
        return np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])

    x, y = one_pass(data)
    rows = y.ravel().astype(int)
    assert sorted(rows) == list(range(25)) and x.dtype == np.float32
    assert np.array_equal(x, pixels[rows].astype(np.float32))
    assert not np.array_equal(one_pass(data)[1], y)  # the next pass: another order
    again = ArrayBatches(pixels, labels, 10, training=True, seed=3)
    assert np.array_equal(one_pass(again)[1], y)  # the seed's
    stream = ArrayBatches(pixels, labels, 10, training=True, seed=3, repeat=True)
    assert stream.num_batches is None
    joined = np.concatenate([stream.order(p) for p in range(4)])
    assert np.array_equal(np.concatenate([stream.rows(i) for i in range(10)]), joined)
    assert np.array_equal(stream.advanced(2, 3).rows(0), joined[60:70])  # batch 6 of the stream
    features = pixels.reshape(25, -1).astype(np.float16)
    (x,) = ArrayBatches(features, None, 10, transform=lambda x: x * 2)[2]
    assert x.dtype == np.float16 and np.array_equal(x, features[20:] * 2)


def test_array_batches_cut_or_fill_a_last_batch_for_the_devices():
    """multiple=2 (DataParallel over two devices): training, a pass reads the largest even
    number of its rows, other rows left out each pass, and resumes on the same batches;
    evaluating, the last batch repeats its last row, weighted 0, the real rows weighted so
    that Keras' loss (a batch's weighted sum over its row count) is their mean; predictions
    cut the repeated rows off; multiple=1 is every batch as before."""
    from pipeline.data.dataset import ArrayBatches, predictions

    pixels = np.random.default_rng(0).integers(0, 256, (25, 4, 4, 3), dtype=np.uint8)
    labels = np.arange(25)  # each row's label is its index
    data = ArrayBatches(pixels, labels, 10, training=True, seed=3, multiple=2)
    passes = []
    for _ in range(3):
        data.on_epoch_begin()
        batches = [data[i] for i in range(len(data))]
        assert [len(x) for x, _ in batches] == [10, 10, 4]
        passes.append(np.concatenate([y for _, y in batches]).ravel().astype(int).tolist())
        assert len(set(passes[-1])) == 24
    assert len({frozenset(range(25)) - set(rows) for rows in passes}) > 1  # not one row always
    resumed = ArrayBatches(pixels, labels, 10, training=True, seed=3, multiple=2).advanced(2, 0)
    resumed.on_epoch_begin()
    assert np.concatenate([resumed.rows(i) for i in range(3)]).tolist() == passes[2]
    assert len(ArrayBatches(pixels[:21], labels[:21], 10, training=True, multiple=2)) == 2

    evaluated = ArrayBatches(pixels, labels, 10, multiple=2)
    batches = [evaluated[i] for i in range(len(evaluated))]
    assert [len(x) for x, _, _ in batches] == [10, 10, 6]
    x, y, weights = batches[-1]
    assert y.ravel().tolist() == [20, 21, 22, 23, 24, 24]
    assert np.array_equal(x[-1], x[-2]) and weights[-1] == 0 and weights[0] == np.float32(26 / 25)
    loss = sum(float(np.sum(w * y.ravel())) for _, y, w in batches) / 26  # rows' value: label
    assert loss == pytest.approx(np.mean(labels))
    (x,) = ArrayBatches(pixels, None, 10, multiple=2)[2]
    assert len(x) == 6

    class Model:  # predicts each row's first pixel
        def predict(self, dataset, verbose):
            return np.concatenate([b[0][:, 0, 0, 0] for b in map(dataset.__getitem__, range(3))])

    assert np.array_equal(predictions(Model(), evaluated), pixels[:, 0, 0, 0])
    one = ArrayBatches(pixels, labels, 10, multiple=1)
    assert [[len(part) for part in one[i]] for i in range(len(one))] == [[10, 10]] * 2 + [[5, 5]]
    with pytest.raises(ValueError, match="batch size 10: 3 devices cannot split it"):
        ArrayBatches(pixels, labels, 10, multiple=3)


def test_a_batch_size_the_devices_cannot_split_is_refused_naming_its_param():
    from pipeline.core import catalog
    from pipeline.core.errors import PipelineError
    from pipeline.training import runtime

    def on(strategy):
        return runtime.Runtime(strategy, "float32", "", True, "jax")

    three = on(runtime.JaxStrategy("DataParallel", 3))
    param = f"{catalog.KINDS['baseline'].section}.batch_size"
    with pytest.raises(PipelineError) as refused:
        runtime.check_batch_size(three, 20, param)
    assert str(refused.value) == (
        "params.yaml: train.baseline.batch_size is 20, which 3 devices cannot split evenly "
        "(DataParallel on JAX); use a multiple of 3"
    )
    runtime.check_batch_size(three, 30, param)
    runtime.check_batch_size(on(runtime.JaxStrategy("Default", 1)), 7, param)
    assert catalog.MNIST_KINDS["mnist_convnet"].section == "mnist.convnet"


def test_a_jax_process_also_exits_without_the_teardown():
    """cli._exit skips the interpreter's teardown after JAX too (it frees only C++ state)."""
    from tests.test_cli_exit import CHILD, child

    code = CHILD.replace('sys.modules["tensorflow"]', 'sys.modules["jax"]')
    assert code != CHILD
    from unittest import mock

    with mock.patch("tests.test_cli_exit.CHILD", code):
        done = child("3")
    assert (done.returncode, done.stdout) == (3, "outputexit hook\n")
