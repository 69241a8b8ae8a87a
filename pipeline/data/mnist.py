"""Stage `mnist` (mnist/dvc.yaml): the MNIST digits, checked, split for training.

The source is what `keras.datasets.mnist` downloads (`mnist.npz`, its URL and sha256 are the
defaults of mnist.data), or a local path or URL in the same layout: `x_train` (N, 28, 28)
uint8, `y_train` (N,) integers 0-9, and the same for `x_test`, `y_test`. It travels through
the download machinery of the `download` stage (pipeline/data/fetch.py: resumes, retries,
deadlines). Anything else is one line naming the file and what is wrong, and nothing is
written. Out: mnist/data/digits.npz (train, validation, test; uint8 28 x 28 x 1, as every
model of the pipeline takes raw pixels) and mnist/reports/data.json (counts per class).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.core.files import atomic_path, write_text
from pipeline.core.params import MnistParams
from pipeline.core.paths import MNIST_DATA_REPORT, MNIST_DIGITS
from pipeline.data.fetch import discard_damaged, fetch_archive, is_url

KEY = "mnist.data"  # the params section, as the messages name it
SIDE = 28
CLASSES = 10
SPLITS = ("train", "validation", "test")
VALIDATION_SEED = 0  # one held-out set for every model and seed: their scores compare


def mnist(params: MnistParams, out: Path = MNIST_DIGITS, report_file: Path = MNIST_DATA_REPORT):
    source = params.data
    path = fetch_archive(source.source, source.transfer, sha256=source.sha256, key=KEY)
    (x_train, y_train), (x_test, y_test) = read_npz(path, downloaded=is_url(source.source))
    train, validation = hold_out(x_train, y_train, params.validation, path)
    splits = {"train": train, "validation": validation, "test": (x_test, y_test)}
    write_digits(splits, out)
    report = {
        "source": source.source,
        "splits": {
            name: {str(d): int((y == d).sum()) for d in range(CLASSES)}
            for name, (_, y) in splits.items()
        },
    }
    write_text(report_file, json.dumps(report, indent=2) + "\n")
    print(", ".join(f"{len(y)} {name}" for name, (_, y) in splits.items()) + f" digits: {out}")
    return report


def read_npz(path: Path, downloaded: bool = False):
    """((x_train, y_train), (x_test, y_test)) of an mnist.npz, every array checked."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            found = {name: arrays[name] for name in arrays.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        stage = "mnist/dvc.yaml:mnist"
        advice = (
            discard_damaged(path, stage) if downloaded else f"point {KEY}.source at a good copy"
        )
        raise PipelineError(f"{path}: not a readable .npz file ({reason}); {advice}") from None
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in found]
    if missing:
        raise PipelineError(
            f"{path}: no array {', '.join(missing)} (has {', '.join(sorted(found)) or 'none'}); "
            f"{KEY}.source must be an npz in the layout of keras.datasets.mnist"
        )
    return tuple(_checked(path, found, split) for split in ("train", "test"))


def _checked(path: Path, arrays: dict, split: str):
    x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
    where = f"{path}: x_{split}"
    if x.ndim != 3 or x.shape[1:] != (SIDE, SIDE) or len(x) == 0:
        raise PipelineError(f"{where} has shape {x.shape}, expected (N, {SIDE}, {SIDE})")
    if x.dtype != np.uint8:
        raise PipelineError(f"{where} has dtype {x.dtype}, expected uint8 (pixels 0-255)")
    if y.shape != (len(x),):
        raise PipelineError(f"{path}: y_{split} has shape {y.shape}, expected ({len(x)},)")
    if not np.issubdtype(y.dtype, np.integer):
        raise PipelineError(f"{path}: y_{split} has dtype {y.dtype}, expected integer labels")
    if y.min() < 0 or y.max() >= CLASSES:
        raise PipelineError(
            f"{path}: y_{split} holds labels {int(y.min())}..{int(y.max())}, expected 0-9"
        )
    return x[..., None], y.astype(np.uint8)


def hold_out(x: np.ndarray, y: np.ndarray, count: int, path: Path):
    """(train, validation): `count` training digits held out, as evenly over the classes as
    the count allows, drawn with a fixed seed."""
    if count >= len(x):
        raise PipelineError(
            f"mnist.validation: {count} digits to hold out, but {path} has {len(x)} training "
            "digits; make mnist.validation smaller"
        )
    rng = np.random.default_rng(VALIDATION_SEED)
    order = rng.permutation(len(x))
    # Round-robin over the classes in the shuffled order: the first `count` are balanced.
    rank = np.empty(len(x), np.int64)
    for digit in range(CLASSES):
        members = order[y[order] == digit]
        rank[members] = np.arange(len(members)) * CLASSES + digit
    held = np.sort(np.argsort(rank, kind="stable")[:count])
    kept = np.setdiff1d(np.arange(len(x)), held)
    return (x[kept], y[kept]), (x[held], y[held])


def write_digits(splits: dict, out: Path) -> None:
    """An npz whose bytes depend on the arrays only (a fixed date in the zip)."""
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for split, (x, y) in splits.items():
            for name, array in ((f"x_{split}", x), (f"y_{split}", y)):
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                with archive.open(info, "w") as f:
                    np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)


def load_digits(path: Path = MNIST_DIGITS) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """split -> (uint8 (N, 28, 28, 1) digits, uint8 labels) of the mnist stage's output."""
    if not path.is_file():
        raise PipelineError(f"{path} not found; run `dvc repro mnist/dvc.yaml:mnist` first")
    with np.load(path) as arrays:
        return {split: (arrays[f"x_{split}"], arrays[f"y_{split}"]) for split in SPLITS}
