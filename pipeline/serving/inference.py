"""The MLflow Model of a trained classifier: photos in, the label and P(dog) out.

`mlflow.pyfunc.load_model(uri).predict(frame)`, `mlflow models serve` and `python -m pipeline
predict` all run `ImageClassifier.predict` on a DataFrame with one of two columns:
  image   the bytes of a JPEG, PNG or WebP file (in a JSON request: base64 strings, which
          MLflow decodes for a binary column, as in MLflow's examples/flower_classifier)
  pixels  an (H, W, 3) array of [0, 255] RGB values per image, any size
and it returns one row per image: `label` ("cat" | "dog") and `p_dog`; for a 10-class MNIST
model (pipeline/models/mnist.py) `label` ("0" ... "9", photos turned grey) and `probability`. Images are decoded
and resized as the prepare stage does it, after applying their EXIF orientation
(pipeline/data/images.py); the Keras model carries the rest of its preprocessing.

The Keras model needs the pipeline's custom layers: the MLflow Model holds the `pipeline`
package as its code (code_paths), so a fresh process loads it without any import by hand,
on the Keras backend it was logged on unless KERAS_BACKEND says otherwise.
Input that is not an image is an MlflowException with INVALID_PARAMETER_VALUE: HTTP 400
from the scoring server, with the row and the reason, and the server keeps serving.
"""

from __future__ import annotations

import os

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import AnyType, ColSpec, Schema
from PIL import Image

from pipeline.core.catalog import CLASS_NAMES
from pipeline.data import CLASSES
from pipeline.data.images import ImageTooLarge, UnreadableImage, decode, square_pixels

KERAS_ARTIFACT = "keras_model"
KERAS_BACKEND = "keras_backend"  # the model config's key: the backend it was logged on
IMAGE, PIXELS = "image", "pixels"
BATCH = 32
P_DOG, PROBABILITY = "p_dog", "probability"  # the score column: binary, or 10 classes
DIGITS = CLASS_NAMES["mnist"]


def signature(classes: int = 2) -> ModelSignature:
    # `pixels` is AnyType: MLflow's Array type checks every value in Python (30 s a batch).
    inputs = Schema(
        [ColSpec("binary", IMAGE, required=False), ColSpec(AnyType(), PIXELS, required=False)]
    )
    score = P_DOG if classes == 2 else PROBABILITY
    return ModelSignature(inputs, Schema([ColSpec("string", "label"), ColSpec("double", score)]))


class ImageClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        # Before Keras loads: a process that chose no backend gets the one the model was
        # logged on (where that is JAX, TensorFlow may not be installed). A chosen one, or
        # a Keras already loaded, stays: a .keras file loads on either.
        logged_on = (context.model_config or {}).get(KERAS_BACKEND)
        if logged_on and not os.environ.get("KERAS_BACKEND"):  # empty is unset, as for Keras
            os.environ["KERAS_BACKEND"] = logged_on
        self.model = load_keras(context.artifacts[KERAS_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return classify(self.model, pixels_of(model_input, input_size(self.model)))


def load_keras(path):
    """The Keras model of a logged MLflow Model (its artifact `keras_model`)."""
    from pipeline.models.model_io import load_keras as load
    from pipeline.tracking.registry import retrain_command

    # dvc repro alone reruns nothing: the workspace's model file is intact
    command = retrain_command(_stage_of_logged(path) or "STAGE")
    advice = f"this MLflow Model is damaged: `{command}` logs and registers it again"
    return load(path, advice=advice)


def _stage_of_logged(path) -> str | None:
    """The DVC stage that logged the MLflow Model holding `path` (its tag `dvc.stage`); None
    where its MLmodel or the store cannot tell."""
    from pathlib import Path

    import yaml

    roots = [p for p in Path(path).parents if (p / "MLmodel").is_file()]
    if not roots or not mlflow.is_tracking_uri_set():  # never the default store: it makes one
        return None
    try:
        model_id = yaml.safe_load((roots[0] / "MLmodel").read_text()).get("model_id")
        return mlflow.get_logged_model(model_id).tags.get("dvc.stage")
    except Exception:  # no MLmodel, no store: the advice names STAGE instead
        return None


def input_size(model) -> int:
    return int(model.input_shape[1])


def classify(model, pixels: np.ndarray) -> pd.DataFrame:
    """P(dog) of a uint8 batch, in chunks (predict_on_batch: no tf.data setup per request);
    for a 10-class model, the digit and its probability."""
    if model.input_shape[-1] == 1 and pixels.shape[-1] == 3:
        pixels = grey(pixels)
    chunks = [model.predict_on_batch(pixels[i : i + BATCH]) for i in range(0, len(pixels), BATCH)]
    classes = int(model.output_shape[-1])
    if classes == 1:
        p_dog = np.concatenate(chunks).ravel().astype(np.float64) if chunks else np.empty(0)
        return pd.DataFrame({"label": labels(p_dog), P_DOG: p_dog})
    p = np.concatenate(chunks).astype(np.float64) if chunks else np.empty((0, classes))
    return pd.DataFrame({"label": labels(p), PROBABILITY: p.max(axis=-1, initial=0.0)})


def grey(pixels: np.ndarray) -> np.ndarray:
    """RGB uint8 batch -> (N, H, W, 1), with PIL's "L" weights (ITU-R 601)."""
    weights = np.array([0.299, 0.587, 0.114])
    return np.rint(pixels @ weights).clip(0, 255).astype(np.uint8)[..., None]


def predicted_labels(scores) -> np.ndarray:
    """Class indices: of P(dog) values, a dog above one half, as Keras' binary accuracy
    counts; of (N, classes) probabilities, the most probable class."""
    scores = np.asarray(scores)
    if scores.ndim == 2 and scores.shape[-1] > 1:
        return scores.argmax(axis=-1)
    return (scores.ravel() > 0.5).astype(int)


def labels(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores)
    names = DIGITS if scores.ndim == 2 and scores.shape[-1] > 1 else CLASSES
    return np.asarray(names)[predicted_labels(scores)]


def pixels_of(frame, image_size: int) -> np.ndarray:
    """The (N, size, size, 3) uint8 batch of an `image` or `pixels` column."""
    columns = set(getattr(frame, "columns", ()))
    if not columns & {IMAGE, PIXELS}:
        raise _invalid(_no_known_column(sorted(map(str, columns))))
    column = IMAGE if IMAGE in columns else PIXELS
    batch = np.empty((len(frame), image_size, image_size, 3), np.uint8)
    for row, value in enumerate(frame[column]):
        try:
            batch[row] = (decode if column == IMAGE else resize)(value, image_size)
        except ImageTooLarge as exc:
            raise _invalid(f"row {row}: {exc}") from None
        except UnreadableImage as exc:
            raise _invalid(f"row {row}: {exc}; send JPEG, PNG or WebP file bytes") from None
    return batch


def _no_known_column(got: list[str]) -> str:
    expected = (
        f"expected a column {IMAGE!r} (JPEG, PNG or WebP file bytes; base64 in JSON) "
        f"or {PIXELS!r} (H x W x 3 arrays of 0-255)"
    )
    if got:
        return f"{expected}, got the columns {got}"
    # Served, MLflow's schema check has dropped every column not in the signature already.
    return f"{expected}, got neither; only these two columns are read, any other is dropped"


def resize(pixels, image_size: int) -> np.ndarray:
    """An (H, W, 3) array of [0, 255] values at the model's size, resized as decode() does."""
    array = np.asarray(pixels)
    if array.ndim != 3 or array.shape[-1] != 3 or 0 in array.shape:
        raise UnreadableImage(f"pixels of shape {array.shape} are not an H x W x 3 image")
    if not np.issubdtype(array.dtype, np.number) or array.min() < 0 or array.max() > 255:
        raise UnreadableImage("pixel values must lie in [0, 255]")
    array = np.rint(array).astype(np.uint8)
    if array.shape[:2] == (image_size, image_size):
        return array
    return square_pixels(Image.fromarray(array), image_size)


def _invalid(message: str) -> MlflowException:
    return MlflowException.invalid_parameter_value(message)
