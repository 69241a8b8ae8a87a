"""`python -m pipeline predict PATH...`: cat or dog for photos, with a registered or local model.

One line per image on stdout (file, label, P(dog); for an MNIST model: file, digit, its
probability); a file that is not a readable image
gets its own `error:` line on stderr and the others are still predicted. Photos are decoded
(EXIF orientation applied) in threads while the model predicts the previous batch.
"""

from __future__ import annotations

import csv
import sys
import urllib.parse
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core import catalog
from pipeline.core.errors import PipelineError
from pipeline.core.files import atomic_path
from pipeline.data import images
from pipeline.serving import inference

PROGRESS_FROM = 200  # images: a progress bar (on stderr) from this many on


@dataclass
class Prediction:
    file: str
    label: str = ""
    p_dog: float | None = None  # for an MNIST model: the probability of its label
    error: str = ""

    def line(self) -> str:
        return f"{self.file}\t{self.label}\t{self.p_dog:.4f}"


def predict(targets: Iterable[Path], model: str, csv_file: Path | None, batch_size: int) -> int:
    """Predict every image under `targets`; write `csv_file` if given; return how many failed."""
    files = image_files(targets)
    return predict_files(files, load_classifier(model), csv_file, batch_size)


def predict_files(files: list[Path], classifier, csv_file: Path | None, batch_size: int) -> int:
    """`predict` with the files listed and the classifier (load_classifier) loaded."""
    from tqdm import tqdm

    image_size, scores = classifier
    results, score_name = [], inference.P_DOG
    with tqdm(total=len(files), unit="img", disable=len(files) < PROGRESS_FROM) as bar:
        for batch in _decoded_batches(files, image_size, batch_size):
            predicted, score_name = _predict_batch(batch, scores, bar)
            results += predicted
            bar.update(len(batch))
    if csv_file:
        _write_csv(results, csv_file, score_name)
    failed = sum(1 for r in results if r.error)
    if failed:
        print(
            f"error: {failed} of {len(results)} files could not be read (each has its error line)",
            file=sys.stderr,
        )
    return failed


def image_files(targets: Iterable[Path]) -> list[Path]:
    """Named files as given; folders: their JPEG, PNG and WebP files, recursively, sorted."""
    files = []
    for target in targets:
        if target.is_dir():
            found = (p for p in sorted(target.rglob("*")) if p.is_file())
            files += [p for p in found if p.suffix.lower() in images.IMAGE_SUFFIXES]
        else:
            files.append(target)  # missing or unreadable: its own error line later
    if not files:
        named = ", ".join(map(str, targets))
        raise PipelineError(f"no JPEG, PNG or WebP files in {named}")
    return files


def load_classifier(model: str):
    """(image size, pixels -> a frame of label and P(dog), or label and probability for an
    MNIST model) of a models:/ (or other MLflow) URI, a local Keras
    file, or a local MLflow Model folder. A local path that does not exist is a missing file,
    whatever its suffix: only a URI (`scheme:/...`) is looked up in the MLflow store."""
    if not _is_uri(model) and not Path(model).is_dir():
        return _local_classifier(Path(model))
    pyfunc = _load_registered(model)
    size = (pyfunc.metadata.metadata or {}).get("image_size")
    if size is None:  # another MLflow Model: its input is not known to be photos
        raise PipelineError(
            f"--model {model}: not an MLflow Model of this pipeline (no image_size in its "
            "metadata); give one that its training stages logged, e.g. models:/dogs-vs-cats@champion"
        )
    size = int(size)

    def scores(pixels: np.ndarray):
        import pandas as pd

        return pyfunc.predict(pd.DataFrame({inference.PIXELS: list(pixels)}))

    return size, scores


def _is_uri(model: str) -> bool:
    scheme = urllib.parse.urlparse(model).scheme
    return len(scheme) > 1  # not a Windows drive letter (C:\\...)


def _local_classifier(path: Path):
    try:
        catalog.model_file_advice(path)  # a missing file: said before TensorFlow loads
        from pipeline.models.model_io import load_keras

        keras_model = load_keras(path)
    except PipelineError as exc:  # missing or not a model: it names the file and what to do
        raise PipelineError(f"--model {exc}") from None
    if len(keras_model.input_shape) != 4:
        raise PipelineError(
            f"--model {path} takes conv-base features, not photos (a features-<base> head); "
            "use its registered version instead: --model models:/dogs-vs-cats/<version>"
        )
    _check_task(keras_model, path)
    size = inference.input_size(keras_model)
    return size, lambda pixels: inference.classify(keras_model, pixels)


# (input channels, output units, final activation) of the tasks inference.classify knows
TASKS = {(3, 1, "sigmoid"), (1, 10, "softmax")}  # dogs vs cats, MNIST


def _check_task(keras_model, path: Path) -> None:
    """Refuse a Keras model that is not one of TASKS: it would give confident nonsense."""
    _, height, width, channels = keras_model.input_shape
    output = keras_model.output_shape
    activation = getattr(getattr(keras_model.layers[-1], "activation", None), "__name__", "")
    units = output[-1] if len(output) == 2 else None
    if height is not None and height == width and (channels, units, activation) in TASKS:
        return
    raise PipelineError(
        f"--model {path}: not a dogs-vs-cats or MNIST classifier of this pipeline (input "
        f"{keras_model.input_shape[1:]}, output {output[1:]} {activation or 'unknown'}); "
        "give one that takes square images of 3 channels and ends in one sigmoid unit, "
        "or of 1 channel ending in 10 softmax classes"
    )


def _load_registered(uri: str):
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline.tracking import store

    store_uri = store.tracking_uri()
    store.check_server(store_uri)
    missing = f"--model {uri}: not found in the MLflow store {store_uri}"
    if store.missing_store_file(store_uri):  # say so, rather than create an empty store
        raise PipelineError(f"{missing}; run `dvc repro` to train and register the models")
    mlflow.set_tracking_uri(store_uri)
    store.adopt_if_copied(store_uri)
    try:
        return mlflow.pyfunc.load_model(uri)
    except MlflowException as exc:
        reason = str(exc).splitlines()[0][:200]
        raise PipelineError(
            f"{missing} ({reason}); run `dvc repro` to train and register the models"
        ) from None


def _decoded_batches(files: list[Path], image_size: int, batch_size: int):
    """Batches of (file, pixels or UnreadableImage); the next batch decodes meanwhile."""

    def decode(path: Path):
        try:
            return path, images.decode(path, image_size)
        except images.UnreadableImage as exc:
            return path, exc

    batches = [files[i : i + batch_size] for i in range(0, len(files), batch_size)]
    with ThreadPoolExecutor() as pool:
        pending = [pool.submit(decode, path) for path in batches[0]]
        for i in range(len(batches)):
            current = pending
            if i + 1 < len(batches):
                pending = [pool.submit(decode, path) for path in batches[i + 1]]
            yield [future.result() for future in current]


def _predict_batch(batch, scores, bar) -> tuple[list[Prediction], str]:
    """The batch's predictions, and the name of their score (p_dog, or probability)."""
    readable = [pixels for _, pixels in batch if isinstance(pixels, np.ndarray)]
    frame = scores(np.stack(readable)) if readable else None
    name = inference.P_DOG if frame is None else frame.columns[1]
    predicted = iter(zip(*(() if frame is None else (frame["label"], frame[name])), strict=True))
    results = []
    for path, pixels in batch:
        if isinstance(pixels, images.UnreadableImage):
            results.append(Prediction(str(path), error=str(pixels)))
            bar.write(f"error: {path}: {pixels}", file=sys.stderr)
            continue
        label, score = next(predicted)
        results.append(Prediction(str(path), str(label), float(score)))
        bar.write(results[-1].line(), file=sys.stdout)
    return results, name


def _write_csv(results: list[Prediction], csv_file: Path, score_name: str) -> None:
    with atomic_path(csv_file) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label", score_name, "error"])
        for r in results:
            writer.writerow([r.file, r.label, "" if r.p_dog is None else f"{r.p_dog:.6f}", r.error])
    print(f"wrote {csv_file}", file=sys.stderr)
