"""A full disk, wherever it strikes (a checkpoint, the model, a figure, a report, the MLflow
store or its artifacts), is one line naming what it stopped and saying to free space, exit 1,
no half-written file, the MLflow run FAILED, and the next run after freeing space works.

Fast: each writer in this process, the disk's refusal injected where the bytes go
(OSError(ENOSPC), or sqlite's "database or disk is full" as MLflow raises it). Slow: the real
stage command in a tiny project on a small tmpfs that really fills (mounted here: root only).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from pipeline.core.errors import DiskFull, full_disk_path, is_disk_full

ADVICE = "no space left on device; free space on that disk and run again"
HDF5_WORDS = (
    "[Errno 28] Can't synchronously write data (file write failed: time = Mon Dec  7 12:43:00 "
    "2026\n, filename = '.checkpoints/baseline-6b74916a1cae/pending.weights.h5', file "
    "descriptor = 5, errno = 28, error message = 'No space left on device', buf = 0x5610f9)"
)


def enospc(filename: str | None = None, filename2: str | None = None) -> OSError:
    """ENOSPC as the OS raises it; a copy names its source, then its target."""
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename, None, filename2)


def sqlite_full() -> Exception:
    """What MLflow's sqlite store raises on a full disk: its own exception, sqlite's behind it."""
    from mlflow.exceptions import MlflowException

    try:
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as cause:
            raise MlflowException("(sqlite3.OperationalError) database or disk is full") from cause
    except MlflowException as exc:
        return exc


def half_then_enospc(path) -> None:
    """A write the disk stops halfway: some bytes land, then ENOSPC."""
    with open(path, "wb") as f:
        f.write(b"half")
    raise enospc()


def _raise(exc: Exception):
    raise exc


def test_every_writers_words_for_a_full_disk_are_recognised_and_nothing_else():
    assert is_disk_full(enospc()) and is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_disk_full(OSError(errno.ENOSPC, HDF5_WORDS))  # h5py under Keras
    assert is_disk_full(sqlite_full())
    wrapped = RuntimeError("Keras failed")
    wrapped.__context__ = enospc()
    assert is_disk_full(wrapped)
    assert not is_disk_full(PermissionError(errno.EACCES, "Permission denied", "x"))
    assert not is_disk_full(ValueError("database is locked"))


def test_the_file_a_full_disk_stopped_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert full_disk_path(enospc("src.json", "mlartifacts/1/artifacts/src.json")) == (
        "mlartifacts/1/artifacts/src.json"  # a copy: its target
    )
    assert full_disk_path(enospc("models/baseline.keras")) == "models/baseline.keras"
    hdf5 = full_disk_path(OSError(errno.ENOSPC, HDF5_WORDS))
    assert hdf5 == ".checkpoints/baseline-6b74916a1cae/pending.weights.h5"
    assert full_disk_path(sqlite_full(), store="/data/mlflow.db") == "/data/mlflow.db"
    assert full_disk_path(enospc()) == str(tmp_path)  # nothing named: where the stage runs


def test_atomic_path_on_a_full_disk_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    from pipeline.core.files import atomic_path

    target = tmp_path / "reports/metrics/baseline.json"
    target.parent.mkdir(parents=True)
    target.write_text("old\n")
    with pytest.raises(DiskFull) as error, atomic_path(target) as tmp:
        half_then_enospc(tmp)
    assert str(error.value) == f"{target}: {ADVICE}"
    assert target.read_text() == "old\n" and os.listdir(target.parent) == ["baseline.json"]


def test_atomic_dir_on_a_full_disk_keeps_the_old_folder_and_leaves_no_temporary(tmp_path):
    from pipeline.core.files import atomic_dir

    target = tmp_path / "data/images"
    (target / "cat").mkdir(parents=True)
    with pytest.raises(DiskFull) as error, atomic_dir(target) as tmp:
        half_then_enospc(tmp / "1.jpg")
    assert str(error.value) == f"{target}: {ADVICE}"
    assert os.listdir(tmp_path / "data") == ["images"] and os.listdir(target) == ["cat"]


@pytest.fixture
def tiny_model():
    import keras

    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dropout(0.5), keras.layers.Dense(1, activation="sigmoid")]
    )
    model.compile(optimizer=keras.optimizers.RMSprop(1e-3), loss="binary_crossentropy")
    return model


@pytest.mark.parametrize("name", ["baseline.keras", "bases/vgg16.weights.h5"])
def test_a_model_save_on_a_full_disk_is_one_error_and_the_old_model_stays(
    tmp_path, monkeypatch, tiny_model, name
):
    import keras

    from pipeline.models.model_io import save_keras

    target = tmp_path / "models" / name
    target.parent.mkdir(parents=True)
    target.write_bytes(b"the last good model")
    # where each kind of file's bytes go: Keras' own save, or ours of its weights file
    monkeypatch.setattr(keras.Model, "save", lambda self, path, **kw: half_then_enospc(path))
    monkeypatch.setattr(Path, "write_bytes", lambda self, data: half_then_enospc(self))
    with pytest.raises(DiskFull) as error:
        save_keras(tiny_model, target)
    assert str(error.value) == f"{target}: {ADVICE}"
    assert target.read_bytes() == b"the last good model"
    assert os.listdir(target.parent) == [target.name]  # no temporary file or folder


def test_a_figure_on_a_full_disk_is_one_error_naming_it(tmp_path, monkeypatch):
    import matplotlib.figure

    from pipeline.reporting import plots

    out = tmp_path / "reports/figures/baseline/curves.png"
    savefig = lambda self, fname, **kw: half_then_enospc(fname)  # noqa: E731
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    with pytest.raises(DiskFull) as error:
        plots.save_png(matplotlib.figure.Figure(), out)
    assert str(error.value) == f"{out}: {ADVICE}"
    assert os.listdir(out.parent) == []


def backup_callbacks(checkpoints: Path) -> list:
    """fit's history file and epoch backup (not the MLflow logger: no run here)."""
    from pipeline.training import resume

    callbacks = resume.callbacks(checkpoints, resume.completed_epochs(checkpoints))
    return [callbacks["history_file"], callbacks["backup"]]


def test_an_epoch_backup_on_a_full_disk_stops_fit_and_keeps_the_last_good_backup(
    tmp_path, monkeypatch, tiny_model
):
    import numpy as np

    from pipeline.training import resume

    checkpoints = tmp_path / ".checkpoints/tiny-0123"
    x, y = np.ones((8, 4)), np.ones((8, 1))
    tiny_model.fit(x, y, epochs=3, verbose=0, callbacks=backup_callbacks(checkpoints))
    good = (checkpoints / resume.WEIGHTS).read_bytes()
    monkeypatch.setattr(Path, "write_bytes", lambda self, data: half_then_enospc(self))
    with pytest.raises(DiskFull) as error:
        tiny_model.fit(x, y, epochs=5, verbose=0, callbacks=backup_callbacks(checkpoints))
    assert str(error.value) == f"{checkpoints / resume.WEIGHTS}: {ADVICE}"
    monkeypatch.undo()
    assert (checkpoints / resume.WEIGHTS).read_bytes() == good
    assert resume.backup(checkpoints)[1]["epoch"] == 3
    assert sorted(os.listdir(checkpoints)) == ["history.csv", resume.WEIGHTS, resume.METADATA]


@pytest.fixture(scope="module")
def store_folder(tmp_path_factory) -> Path:
    """A real MLflow store with the pipeline's experiment, made once (its tables take seconds)."""
    from pipeline.tracking import store

    folder = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        store.connect()
    return folder


@pytest.fixture
def store(store_folder, monkeypatch):
    """The module's MLflow store, as the pipeline finds it (this test's working directory)."""
    import mlflow

    from pipeline.tracking import store

    monkeypatch.chdir(store_folder)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store_folder / 'mlflow.db'}")
    store.connect()
    yield store_folder / "mlflow.db"
    mlflow.end_run()  # none is left active for the next test


@pytest.mark.parametrize(
    ("fault", "named"),
    [
        (sqlite_full, "mlflow.db"),  # a metric, param or tag into the store
        (lambda: enospc("history.csv", "mlartifacts/1/artifacts/history.csv"), "mlartifacts"),
    ],
    ids=["store", "artifact"],
)
def test_a_full_disk_under_mlflow_fails_the_run_and_names_what_it_stopped(store, fault, named):
    import mlflow

    from pipeline.training import train

    run = mlflow.start_run(run_name="baseline")
    with pytest.raises(DiskFull) as error:
        try:
            raise fault()
        except Exception as exc:
            train.end_failed_run(exc)
    message = str(error.value)
    assert named in message.split(":")[0] and message.endswith(ADVICE)
    assert mlflow.get_run(run.info.run_id).info.status == "FAILED"
    assert mlflow.active_run() is None


def test_a_store_too_full_to_take_failed_still_says_what_to_do(store, monkeypatch):
    import mlflow

    from pipeline.training import train

    run = mlflow.start_run(run_name="baseline")
    monkeypatch.setattr(
        mlflow.tracking.MlflowClient, "set_terminated", lambda *a, **k: _raise(sqlite_full())
    )
    with pytest.raises(DiskFull) as error:
        try:
            raise sqlite_full()
        except Exception as exc:
            train.end_failed_run(exc)
    assert str(error.value) == f"{store}: {ADVICE}"
    monkeypatch.undo()
    # left RUNNING for the next run of the stage to close (store.close_stale_runs)
    assert mlflow.get_run(run.info.run_id).info.status == "RUNNING"
    assert mlflow.active_run() is None


def test_the_cli_says_a_full_disk_in_one_line_and_exits_1(tmp_path, monkeypatch, capsys):
    """Any stage, any writer the pipeline does not wrap: the CLI's last word, MLflow's own
    logged traceback of sqlite's error hidden."""
    import mlflow  # noqa: F401  (its loggers, as a stage has them)

    from pipeline import cli
    from pipeline.data import download
    from tests.helpers.project import ROOT

    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")

    def full(params):
        logging.getLogger("mlflow.store.db.utils").error("SQLAlchemy: database or disk is full")
        raise sqlite_full()

    monkeypatch.setattr(download, "download", full)
    monkeypatch.setattr("sys.argv", ["pipeline", "download"])
    monkeypatch.setattr(cli, "_exit", lambda code: _raise(SystemExit(code)))
    with pytest.raises(SystemExit) as ended:
        cli.main()
    assert ended.value.code == 1
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path / 'mlflow.db'}: {ADVICE}\n"


# --- the real thing: a small tmpfs that fills --------------------------------------------

FS_MB = 30


def mount_tmpfs(folder: Path, megabytes: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")


def fill(folder: Path, leave_bytes: int) -> Path:
    """A file that takes all of `folder`'s disk but `leave_bytes`."""
    filler = folder / "filler"
    filler.unlink(missing_ok=True)
    free = shutil.disk_usage(folder).free
    with open(filler, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, max(free - leave_bytes, 1))
    return filler


@pytest.fixture
def small_disk(tmp_path):
    disks = [tmp_path / "disk", tmp_path / "store-disk"]
    yield disks
    for disk in disks:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def last_run_status(store_db: Path) -> str:
    from tests.helpers.tracking import tracked_runs

    return tracked_runs(f"sqlite:///{store_db}", "baseline", newest_first=True)[0].info.status


def train_baseline(project: Path, env: dict | None = None):
    import sys

    from tests.helpers.project import run

    return run([sys.executable, "-m", "pipeline", "train", "baseline"], project, False, env)


def assert_one_line_about(done, named: str) -> None:
    """Exit 1, no traceback, and one error line: `named` (a regular expression), the advice."""
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and re.fullmatch(f"error: {named}: {re.escape(ADVICE)}", errors[0])


def half_files(*folders: Path) -> list[str]:
    patterns = (".*.tmp", "*pending*", ".*.keras.*", "*-journal")
    return [str(p) for folder in folders for pattern in patterns for p in folder.rglob(pattern)]


@pytest.mark.slow
@pytest.mark.extended
def test_a_real_full_disk_fails_the_training_stage_and_freeing_space_lets_it_train(small_disk):
    """The project on a 30 MB tmpfs, its MLflow store on a 3 MB one: full at the first epoch's
    backup (h5py's words), then the store full (sqlite's). Each is one line and exit 1 and
    leaves no half file, the first a FAILED run; once space is freed the stage trains and
    finishes. The other writers (the model, figures, reports, MLflow's artifacts) meet the
    disk's refusal in this process, above."""
    from tests.helpers.project import prepared_in_process, tiny_project

    disk, store_disk = small_disk
    mount_tmpfs(disk, FS_MB)
    mount_tmpfs(store_disk, 3)
    vgg16_at_48 = {"vgg16": {"image_size": 48}, "efficientnet_lite0": None}
    patch = {"prepare": {"image_sizes": [48]}, "pretrained": {"bases": vgg16_at_48}}
    project = tiny_project(disk, patch)
    prepared_in_process(project, 48)
    store_db = store_disk / "mlflow.db"
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{store_db}"}

    filler = fill(disk, 1_000_000)  # less than one epoch's backup (a model's size)
    checkpoint = r"\.checkpoints/baseline-[0-9a-f]{12}/latest\.weights\.h5"
    assert_one_line_about(train_baseline(project, env), checkpoint)
    assert not half_files(project) and last_run_status(store_db) == "FAILED"
    filler.unlink()

    store_filler = fill(store_disk, 0)
    assert_one_line_about(train_baseline(project, env), re.escape(str(store_db)))
    assert not half_files(project, store_disk)
    store_filler.unlink()

    done = train_baseline(project, env)
    assert done.returncode == 0, done.stderr
    assert last_run_status(store_db) == "FINISHED" and not half_files(project, store_disk)
    assert json.loads((project / "reports/metrics/baseline.json").read_text())["baseline"]
