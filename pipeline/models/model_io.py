"""Saving a Keras model so that the same weights always give the same bytes.

A `.keras` file is a zip: `metadata.json` (with the save date), `config.json` and
`model.weights.h5`. Keras stamps the date into the metadata and the current time into the
weights' zip entry, and numbers objects shared between layers (a mixed-precision dtype
policy) in config.json by their memory address, so two saves of identical weights differ,
and DVC sees a new model on every rerun (a new cache entry, a changed dvc.lock, downstream
stages rerun). Here the model is saved by Keras to a temporary file, then copied entry by
entry into the final zip with names sorted, one fixed timestamp, a fixed `date_saved` and
the shared-object ids renumbered in order of appearance (the same object keeps one number,
which is all loading needs). The HDF5 weights file carries no timestamps (h5py does not
track object times by default), so its bytes depend on the weights only. Written
atomically: a failed save leaves the old model.
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from pathlib import Path

from pipeline.core import catalog
from pipeline.core.errors import PipelineError, full_disk, is_disk_full
from pipeline.core.files import atomic_path

# The earliest date a zip entry can hold; used for every entry and for `date_saved`.
FIXED_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
FIXED_DATE_SAVED = "1980-01-01@00:00:00"


def save_keras(model, path: Path | str) -> Path:
    """Save `model` to `path` atomically, with bytes that depend on the model only: a
    `.keras` file (normalised as above) or a `.weights.h5` file (`save_weights`); an
    unwritable path or a full disk is one PipelineError naming it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.name.endswith(".weights.h5"):
            with atomic_path(path) as out:
                out.write_bytes(weights_h5(model))
            return path
        with tempfile.TemporaryDirectory(prefix=f".{path.stem}.", dir=path.parent) as tmp:
            raw = Path(tmp) / path.name  # Keras wants the .keras suffix
            model.save(raw)
            with atomic_path(path) as out:
                normalise_keras_zip(raw, out)
    except OSError as exc:
        if is_disk_full(exc):
            raise full_disk(path) from None
        raise PipelineError(
            f"cannot write {path}: {exc.strerror or exc} ({exc.filename})"
        ) from None
    return path


def weights_h5(model) -> bytes:
    """What `model.save_weights` writes to a .weights.h5 file (the weights, and the optimizer's
    state once it is built), made in memory by the same Keras calls: h5py writing to a file
    on a full disk leaves it open and dirty, and its flush fails again when it is collected
    (a traceback at any later moment, or a crash at exit)."""
    from keras.src.saving import saving_lib  # save_weights' own store and walk (keras pinned)

    buffer = io.BytesIO()
    store = saving_lib.H5IOStore(buffer, mode="w")
    try:
        saving_lib._save_state(
            model, weights_store=store, assets_store=None, inner_path="", visited_saveables=set()
        )
    finally:
        store.close()
    return buffer.getvalue()


def load_keras(path: Path | str, compile: bool = False, advice: str = ""):
    """The Keras model saved at `path`, with the pipeline's custom layers. A missing file or one
    that is not a readable Keras model (truncated, damaged, not a model at all) is one
    PipelineError naming it and what to do: for a model of models/, its DVC stage."""
    import keras

    path = Path(path)
    advice = check_keras_file(path, advice)
    try:
        return keras.saving.load_model(path, compile=compile)
    except Exception as exc:  # Keras raises many types: the first line of any says why
        text = str(exc).strip().splitlines()
        why = f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
        raise PipelineError(f"{path}: not a readable Keras model ({why}); {advice}") from None


def check_keras_file(path: Path | str, advice: str = "") -> str:
    """PipelineError now if `path` is missing, or a .keras file that is not a zip (truncated,
    or not a model: Keras would say "File not found", although it exists); else the advice
    for a failure to load it (catalog.model_file_advice)."""
    path = Path(path)
    advice = catalog.model_file_advice(path, advice)
    if path.suffix == ".keras" and not zipfile.is_zipfile(path):
        raise PipelineError(
            f"{path}: not a readable Keras model (not a zip archive: truncated, or not a "
            f"model); {advice}"
        )
    return advice


def normalise_keras_zip(source: Path, target: Path) -> None:
    """Copy the zip `source` to `target`: sorted entries, fixed dates, fixed `date_saved`."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for info in sorted(zin.infolist(), key=lambda i: i.filename):
            data = zin.read(info)
            if info.filename in _REWRITE:
                data = _REWRITE[info.filename](data)
            entry = zipfile.ZipInfo(info.filename, date_time=FIXED_ZIP_DATE)
            entry.compress_type = info.compress_type
            entry.external_attr = 0o644 << 16  # rw-r--r--, whatever the umask was
            zout.writestr(entry, data)


def _fixed_metadata(data: bytes) -> bytes:
    metadata = json.loads(data)
    if "date_saved" in metadata:  # kept, as Keras' file editor reads it
        metadata["date_saved"] = FIXED_DATE_SAVED
    return json.dumps(metadata, sort_keys=True).encode()


def _renumbered_config(data: bytes) -> bytes:
    """config.json with every `shared_object_id` (an id() of the live object) replaced by
    1, 2, ... in order of first appearance."""
    numbers: dict[int, int] = {}

    def walk(node):
        if isinstance(node, dict):
            return {
                key: numbers.setdefault(value, len(numbers) + 1)
                if key == "shared_object_id"
                else walk(value)
                for key, value in node.items()
            }
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    return json.dumps(walk(json.loads(data))).encode()


_REWRITE = {"metadata.json": _fixed_metadata, "config.json": _renumbered_config}
