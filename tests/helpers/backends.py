"""Code on another Keras backend than the test process's (TensorFlow): a child Python process
with KERAS_BACKEND set before Keras loads, where `import tensorflow` can be made to fail (a
directory first on PYTHONPATH whose `tensorflow` package raises ImportError), so that what
runs there shows it needs no TensorFlow. The children's work is here as functions, each
writing what the test checks to a JSON file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.helpers.project import ROOT

BLOCKER = 'raise ImportError("TensorFlow is not installed here (tests/helpers/backends.py)")\n'


def no_tensorflow_dir(folder: Path) -> Path:
    """A folder whose `tensorflow` package fails to import, to put first on PYTHONPATH."""
    package = folder / "no-tensorflow" / "tensorflow"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(BLOCKER)
    return package.parent


def backend_env(backend: str, folder: Path, block_tensorflow: bool = True, **extra) -> dict:
    """The environment of a child on `backend`: ROOT importable, TensorFlow maybe not."""
    path = [str(ROOT)]
    if block_tensorflow:
        path.insert(0, str(no_tensorflow_dir(folder)))
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": os.pathsep.join(path)}
    env.pop("XLA_FLAGS", None)  # what the child asks of XLA is its test's, not the shell's
    return {**env, **extra}


def run_child(code: str, env: dict, timeout: int = 300, args=()) -> subprocess.CompletedProcess:
    """`python -c code args...` in ROOT with `env`; a failure shows the child's last output."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-6000:])
    return done


def call_in_child(function: str, out: Path, env: dict, timeout: int = 300) -> dict:
    """Run `tests.helpers.backends.<function>(out)` in a child; what it wrote to `out`."""
    code = f"from pathlib import Path\nfrom tests.helpers import backends\nbackends.{function}(Path({str(out)!r}))\n"
    run_child(code, env, timeout)
    return json.loads(out.read_text())


def synthetic(count: int, seed: int, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Learnable cats and dogs (tests/helpers/synthetic.py), uint8 as the prepared arrays."""
    from tests.helpers.synthetic import synthetic_image

    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    images = [np.asarray(synthetic_image(("cat", "dog")[y], size, rng)) for y in labels]
    return np.stack(images), labels.astype(np.int64)


def _runtime(seed: int = 42, strategy: str = "default"):
    """What train.py sets up on this backend before it builds a model."""
    import keras

    from pipeline.core.params import RuntimeParams
    from pipeline.training import runtime

    return runtime.setup(RuntimeParams(backend=keras.backend.backend(), strategy=strategy), seed)


def _baseline(seed: int = 42, strategy: str = "default"):
    """The book's convnet at 48 px, compiled as train.py compiles it, on this backend."""
    from pipeline.models.scratch import build_convnet
    from pipeline.training.train import compile_model

    setup = _runtime(seed, strategy)
    with setup.strategy.scope():
        model = build_convnet(48, 0.0, None, "baseline")
        compile_model(model, 1e-3, setup.jit_compile)
    return model, setup


def _recording(dataset):
    """`dataset` (an ArrayBatches) noting, in `.read`, the rows of every batch Keras reads."""
    from pipeline.data.dataset import ArrayBatches

    class Recording(ArrayBatches):
        def __getitem__(self, index):
            self.read.append(self.rows(index).tolist())
            return super().__getitem__(index)

    dataset.__class__, dataset.read = Recording, []  # PyDataset's adapter reads py_dataset[i]
    return dataset


def resume_streams(out: Path) -> None:
    """On this backend (no TensorFlow needed), a fit resumed after two of four epochs
    (resume.resumed_data) reads the batches the uninterrupted fit read in epochs three and
    four: for one pass an epoch and for a repeated stream. With the runtime's description of
    how train.py trains here (that it learns on JAX: test_training_in_process)."""
    import keras

    from pipeline.data.dataset import make_dataset
    from pipeline.training import resume, runtime

    x, y = synthetic(60, 1)
    setup = _runtime()
    streams = {}
    for steps in (0, 4):
        fits = []
        for done in (0, 2):
            dataset = make_dataset(x, y, 10, training=True, seed=7, repeat=steps > 0)
            recorded = _recording(resume.resumed_data(dataset, done, steps))
            tiny = keras.Sequential([keras.Input((48, 48, 3)), keras.layers.Flatten()])
            tiny.add(keras.layers.Dense(1, activation="sigmoid"))
            tiny.compile("rmsprop", "binary_crossentropy")
            steps_per_epoch = steps or None
            tiny.fit(
                recorded,
                epochs=4,
                initial_epoch=done,
                steps_per_epoch=steps_per_epoch,
                shuffle=False,
                verbose=0,
            )
            fits.append(recorded.read)
        streams[steps] = fits
    record = {
        "tags": runtime.describe(setup),
        "streams": {str(k): v for k, v in streams.items()},
        "tensorflow_loaded": "tensorflow" in sys.modules,
    }
    out.write_text(json.dumps(record))


def cross_backend_inputs() -> np.ndarray:
    return synthetic(8, 5)[0].astype(np.float32)


def augmented_convnet(seed: int = 3):
    """The augmented convnet (BookAugmentation and dropout: the layers a file must carry)."""
    import keras

    from pipeline.core.params import AugmentationParams
    from pipeline.models.augment import augmentation
    from pipeline.models.scratch import build_convnet

    keras.utils.set_random_seed(seed)
    layer = augmentation(AugmentationParams(), seed)
    return build_convnet(48, 0.5, layer, "augmented")


def load_and_save(out: Path) -> None:
    """Predict with the model file another backend saved (other.keras), and save one made
    here (here.keras) with its predictions: what the test compares across backends."""
    import keras

    from pipeline.models.model_io import load_keras, save_keras

    x = cross_backend_inputs()
    other = load_keras(out.parent / "other.keras")
    model = augmented_convnet()
    save_keras(model, out.parent / "here.keras")
    record = {
        "backend": keras.backend.backend(),
        "other": np.asarray(other.predict(x, verbose=0)).tolist(),
        "here": np.asarray(model.predict(x, verbose=0)).tolist(),
        "tensorflow_loaded": "tensorflow" in sys.modules,
    }
    out.write_text(json.dumps(record))


def data_parallel(out: Path) -> None:
    """The tiny baseline trained on one CPU device, then with Keras' DataParallel over two
    (XLA's host devices: the child starts with them), from the same seed and batches. 55
    training and 21 validation images in batches of 10: every pass ends on a batch the two
    devices cannot split as it is. The one device reads the training batches as two devices
    cut them (multiple=2) and the validation images as they are, unfilled and unweighted."""
    import keras

    from pipeline.data.dataset import make_dataset, predictions
    from pipeline.training import runtime

    (x, y), (xv, yv) = synthetic(55, 1), synthetic(21, 2)
    record = {"devices": len(keras.distribution.list_devices("cpu"))}
    for strategy in ("default", "mirrored"):
        model, setup = _baseline(strategy=strategy)
        multiple = 2 if strategy == "default" else None  # None: the distribution's
        history = model.fit(
            make_dataset(x, y, 10, training=True, seed=42, multiple=multiple),
            validation_data=make_dataset(xv, yv, 10),
            epochs=4,
            shuffle=False,
            verbose=0,
        )
        record[strategy] = {
            "tags": runtime.describe(setup),
            "val_accuracy": history.history["val_accuracy"],
            "val_loss": history.history["val_loss"],
            "loss": history.history["loss"],
            "predictions": predictions(model, make_dataset(xv, yv, 10), verbose=0).ravel().tolist(),
        }
    out.write_text(json.dumps(record))
