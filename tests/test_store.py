"""The project's own MLflow store (pipeline/tracking/store.py): a copied project writes its
own artifacts; a store that cannot be written fails a stage in one line, before any run."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.tracking.store import EXPERIMENT
from tests.helpers.project import ROOT, run
from tests.helpers.tracking import client_of


def _log_run(project: Path) -> str:
    """The id of a run logged from `project` (cwd) into its own store, by a stage's way
    (store.connect), in this process."""
    import mlflow

    from pipeline.tracking import store

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        store.connect()
        with mlflow.start_run() as active:
            mlflow.log_text("hello", "note.txt")
    return active.info.run_id


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_a_copied_project_writes_its_own_artifacts(tmp_path):
    original, copy = tmp_path / "a", tmp_path / "b"
    original.mkdir()
    first = _log_run(original)
    shutil.copytree(original, copy, symlinks=True)  # as cp -r / tar does
    before = (_digest(original / "mlflow.db"), _files(original / "mlartifacts"))

    second = _log_run(copy)

    assert (copy / f"mlartifacts/{second}/artifacts/note.txt").read_text() == "hello"
    assert not (original / f"mlartifacts/{second}").exists()
    assert (_digest(original / "mlflow.db"), _files(original / "mlartifacts")) == before
    client = client_of(copy)
    for run_id in (first, second):  # the copied run reads the copy's files too
        artifact_uri = client.get_run(run_id).info.artifact_uri
        assert artifact_uri == (copy / f"mlartifacts/{run_id}/artifacts").as_uri()
        downloaded = client.download_artifacts(run_id, "note.txt", str(tmp_path / run_id))
        assert Path(downloaded).read_text() == "hello"
    location = client.get_experiment_by_name(EXPERIMENT).artifact_location
    assert location == (copy / "mlartifacts").as_uri()
    assert client_of(original).get_run(first).info.artifact_uri.startswith(original.as_uri())


READ_ARTIFACT = """
import sys
import mlflow
from pipeline.tracking import store

uri = store.tracking_uri()
store.adopt_if_copied(uri)
print(mlflow.MlflowClient(uri).download_artifacts(sys.argv[1], "note.txt", sys.argv[2]))
"""


def test_a_copy_whose_original_is_gone_reads_its_own_artifacts_before_any_stage_logs(tmp_path):
    """What predict does before it loads a model: a read-only command in a copied project."""
    original, copy = tmp_path / "a", tmp_path / "b"
    original.mkdir()
    first = _log_run(original)
    shutil.copytree(original, copy, symlinks=True)
    shutil.rmtree(original)

    env = {"MLFLOW_TRACKING_URI": ""}
    argv = [sys.executable, "-c", READ_ARTIFACT, first, str(tmp_path / "out")]
    downloaded = run(argv, copy, env=env).stdout.split()[-1]

    assert Path(downloaded).read_text() == "hello"
    assert client_of(copy).get_run(first).info.artifact_uri.startswith(copy.as_uri())


def _make_read_only(path: Path):
    """Make `path` unwritable for this user, as sqlite sees it; an undo, or None if it cannot
    be done here (root ignores chmod: it takes chattr +i, which needs CAP_LINUX_IMMUTABLE)."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        return lambda: path.chmod(0o644)
    made = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
    if made.returncode != 0:
        return None
    return lambda: subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_read_only_store_fails_a_stage_in_one_line_and_starts_no_run(tmp_path):
    _log_run(tmp_path)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    store = tmp_path / "mlflow.db"
    runs_before = len(client_of(tmp_path).search_runs([_experiment_id(tmp_path)]))
    undo = _make_read_only(store)
    if undo is None:
        pytest.skip("cannot make a file read-only for root here (chattr +i refused)")
    try:
        result = run(
            [sys.executable, "-m", "pipeline", "train", "baseline"], tmp_path, check=False,
            env={"MLFLOW_TRACKING_URI": ""},
        )  # fmt: skip
        written = subprocess.run(  # what sqlite itself says of the store
            [sys.executable, "-c", f"import sqlite3; c = sqlite3.connect({str(store)!r}); "
             "c.execute('create table t (x)')"], capture_output=True, text=True,
        )  # fmt: skip
    finally:
        undo()
    assert "attempt to write a readonly database" in written.stderr
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: MLflow store {store} is read-only: make it writable")
    runs = client_of(tmp_path).search_runs([_experiment_id(tmp_path)])
    assert len(runs) == runs_before
    assert [r.info.status for r in runs] == ["FINISHED"] * runs_before


def _experiment_id(project: Path) -> str:
    return client_of(project).get_experiment_by_name(EXPERIMENT).experiment_id
