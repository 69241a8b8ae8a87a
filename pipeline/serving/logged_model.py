"""A trained model as an MLflow Model on its run (train.write_and_log calls `log_model`).

What the run gains, beside the `.keras` file that stays a DVC output:
- a logged model `classifier` (MLflow 3: its own entity, the runs list's Models column): the
  pyfunc of pipeline/serving/inference.py, which takes photos; for `features-<base>` (a head trained on
  cached conv-base features) the model logged is conv base + head, so it takes photos too;
- the split manifest as the run's input dataset (the Dataset column): name `split`, digest
  = the split hash of the run's tags, source = data/split.csv, its DVC path;
- the test and validation scores linked to the logged model (MLflow 3's log_model links
  the run's step-0 metrics, which write_and_log has just logged);
- the Keras backend it was logged on (model config `keras_backend`): the pyfunc loads on it
  where its process chose none, and requires that backend's packages (jax and jaxlib, or
  tensorflow), not the other's.
The report stage registers these models and picks the champion (pipeline/tracking/registry.py); it
finds each one by the hash of its `.keras` file (tag `model_sha256`).
"""

from __future__ import annotations

import io
import tempfile
import warnings
from importlib import metadata
from pathlib import Path

import pandas as pd
from PIL import Image

from pipeline.core import paths
from pipeline.core.files import sha256_of
from pipeline.data.split import read_split
from pipeline.serving import inference
from pipeline.tracking.registry import MODEL_HASH_TAG

LOGGED_MODEL = "classifier"
# What the pyfunc imports (the pipeline package travels with the model as its code), beside
# the packages of the Keras backend the model was logged on.
REQUIREMENTS = ("mlflow", "keras", "numpy", "pandas", "pillow", "pydantic", "pyyaml")
BACKEND_REQUIREMENTS = {"tensorflow": ("tensorflow", "tensorflow-cpu"), "jax": ("jax", "jaxlib")}


def log_model(job, model_file: Path) -> str:
    """Log `model_file` (job's DVC output) as an MLflow Model on the active run, with the
    run's input dataset; return the model id."""
    import keras
    import mlflow

    # A stage run by hand where only data/prepared was pulled has no manifest: no dataset then.
    # The MNIST models (mnist/dvc.yaml) did not train on that manifest.
    mnist = job.model.kind.task == "mnist"
    split = read_split(paths.SPLIT_FILE) if paths.SPLIT_FILE.is_file() and not mnist else None
    if split is not None:
        mlflow.log_input(split_dataset(split, job.split_sha256), context="training")
    image_size = job.model.image_size
    classes = job.model.kind.classes
    example = _example_digit(job) if mnist else _example_image(split, image_size)
    with tempfile.TemporaryDirectory() as tmp:
        info = mlflow.pyfunc.log_model(
            name=LOGGED_MODEL,
            python_model=Path(inference.__file__).with_name("entry.py"),
            artifacts={inference.KERAS_ARTIFACT: str(_image_model(job, model_file, Path(tmp)))},
            code_paths=[str(Path(inference.__file__).parents[1])],  # the whole package
            signature=inference.signature(len(classes)),
            input_example=pd.DataFrame({inference.IMAGE: [example]}),
            pip_requirements=requirements(keras.backend.backend()),
            model_config={inference.KERAS_BACKEND: keras.backend.backend()},
            metadata={"image_size": image_size, "classes": list(classes)},
            tags={MODEL_HASH_TAG: sha256_of(model_file)[:16], "dvc.stage": job.stage},
        )
    print(f"logged MLflow model {info.model_uri} ({job.name})")
    return info.model_id


def split_dataset(split: pd.DataFrame, split_hash: str):
    import mlflow

    with warnings.catch_warnings():  # a relative path "can be interpreted in multiple ways"
        warnings.simplefilter("ignore", UserWarning)
        source = str(paths.SPLIT_FILE)
        return mlflow.data.from_pandas(
            split, source=source, targets="label", name="split", digest=split_hash
        )


def _image_model(job, model_file: Path, tmp: Path) -> Path:
    """The model file to log: `model_file`, or the job's model from photos where the saved
    one takes something else (a head on features: conv base + head)."""
    if job.pixels_model is None:
        return model_file
    from pipeline.models.model_io import load_keras

    model = job.pixels_model(load_keras(model_file))
    model.save(tmp / "model.keras")
    return tmp / "model.keras"


def _example_image(split: pd.DataFrame | None, image_size: int) -> bytes:
    """The input example MLflow shows and checks the model with: the first test photo, or a
    gray one where the manifest or its photos are not in the workspace."""
    if split is not None:
        first = Path(split.loc[split["split"] == "test", "path"].iloc[0])
        if first.is_file():
            return first.read_bytes()
    buffer = io.BytesIO()
    Image.new("RGB", (image_size, image_size), (128, 128, 128)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _example_digit(job) -> bytes:
    """The first test digit, as a PNG file's bytes."""
    buffer = io.BytesIO()
    Image.fromarray(job.data.test[0][0][..., 0]).save(buffer, format="PNG")
    return buffer.getvalue()


def requirements(backend: str) -> list[str]:
    """The pyfunc's pinned requirements on the Keras backend `backend`."""
    return _pinned((REQUIREMENTS[0], *BACKEND_REQUIREMENTS[backend], *REQUIREMENTS[1:]))


def _pinned(names) -> list[str]:
    pinned = []
    for name in names:
        try:
            pinned.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:  # tensorflow or tensorflow-cpu, not both
            continue
    return pinned
