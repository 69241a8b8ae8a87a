"""Scaling the pipeline out, with real processes: a shared MLflow tracking server, a DVC
remote (push, clone, pull), and a stage whose output directory cannot be written. (The
parallel sweep through the local DVC queue is tests/test_sweep.py's.)

Each test works on a copy of its own of the shared trained project (tests/helpers/trained.py),
so none depends on another having run (or not run) before it.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.helpers.project import ran_stages, run
from tests.helpers.servers import MlflowServer
from tests.helpers.tracking import experiment_id, tracked_runs

pytestmark = [pytest.mark.slow, pytest.mark.extended]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def project(project_copy) -> Path:
    """A copy of the shared trained project (tests/helpers/trained.py) of this test's own."""
    return project_copy


def commit(project: Path, message: str) -> None:
    """Commit dvc.lock, DVC's .gitignore files, the uncached reports and .dvc/config (the
    project's .gitignore keeps the local MLflow store out)."""
    run(["git", "add", "-A"], project)
    if run(["git", "diff", "--cached", "--quiet"], project, check=False).returncode:
        run(["git", "commit", "-qm", message], project)


def local_runs(project: Path) -> list:
    return tracked_runs(project)


def cache_files(project: Path) -> set[str]:
    return {str(p.relative_to(project)) for p in (project / ".dvc/cache").rglob("*") if p.is_file()}


def test_dvc_remote_push_then_clone_and_pull(project, tmp_path):
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "local", str(remote)], project)
    commit(project, "baseline reproduced; local DVC remote")
    assert "pushed" in run(["dvc", "push"], project).stdout
    assert any(p.is_file() for p in remote.rglob("*"))

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    assert not (clone / "data/images").exists() and not (clone / "models/baseline.keras").exists()
    # What `baseline` needs, not every model of the project.
    run(["dvc", "pull", "--with-deps", "baseline"], clone)
    for name in ("data/images", "data/prepared/48px", "models/baseline.keras"):
        original, restored = project / name, clone / name
        if original.is_dir():
            files = sorted(str(p.relative_to(original)) for p in original.rglob("*") if p.is_file())
            assert files and files == sorted(
                str(p.relative_to(restored)) for p in restored.rglob("*") if p.is_file()
            )
        else:
            assert restored.read_bytes() == original.read_bytes()
    assert (
        run(["dvc", "status", "--with-deps", "baseline"], clone).stdout.strip()
        == "Data and pipelines are up to date."
    )
    assert ran_stages(run(["dvc", "repro", "baseline"], clone).stdout) == []


def test_shared_tracking_server_and_unreachable_server(project, mlflow_server):
    from mlflow.tracking import MlflowClient

    mlflow_server.wait_healthy()
    env = {"MLFLOW_TRACKING_URI": mlflow_server.url}
    result = run(["python", "-m", "pipeline", "train", "baseline"], project, env=env)
    assert "Epoch 3/3" in result.stdout

    client = MlflowClient(tracking_uri=mlflow_server.url)
    (run_,) = tracked_runs(client)
    assert (run_.info.run_name, run_.info.status) == ("baseline", "FINISHED")
    steps = [m.step for m in client.get_metric_history(run_.info.run_id, "val_accuracy")]
    assert steps == [1, 2, 3]
    assert 0 <= run_.data.metrics["test_accuracy"] <= 1
    assert run_.data.params["train.baseline.epochs"] == "3"
    logged = client.search_logged_models([experiment_id(client)])
    assert [model.source_run_id for model in logged] == [run_.info.run_id]  # the MLflow Model
    assert "figures/curves.png" in {
        a.path for a in client.list_artifacts(run_.info.run_id, "figures")
    }
    # Uploaded through the server (mlflow-artifacts:/), not written into the project.
    assert run_.info.artifact_uri.startswith("mlflow-artifacts:")
    assert list(mlflow_server.artifacts.rglob("*.keras"))
    assert run_.info.run_id not in {r.info.run_id for r in local_runs(project)}

    mlflow_server.stop()
    assert not mlflow_server.healthy()
    model_mtime = (project / "models/baseline.keras").stat().st_mtime_ns
    result = run(["python", "-m", "pipeline", "train", "baseline"], project, check=False, env=env)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and mlflow_server.url in errors[0] and "unreachable" in errors[0], (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    assert "Epoch 1" not in result.stdout
    assert (project / "models/baseline.keras").stat().st_mtime_ns == model_mtime


def _make_unwritable(directory: Path) -> str | None:
    """Make `directory` refuse new files, also for root; return how, or None if impossible."""

    def refuses() -> bool:
        probe = directory / ".probe"
        try:
            probe.write_bytes(b"")
        except OSError:
            return True
        probe.unlink()
        return False

    directory.chmod(0o555)
    if not os.access(directory, os.W_OK) and refuses():
        return "chmod"
    directory.chmod(0o755)  # root ignores modes: the immutable attribute (ext2/3/4) binds root too
    if (
        subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode == 0
        and refuses()
    ):
        return "chattr"
    subprocess.run(["chattr", "-i", str(directory)], capture_output=True)
    return None


def _restore_writable(directory: Path, how: str | None) -> None:
    if how == "chattr":
        subprocess.run(["chattr", "-i", str(directory)], check=True)
    directory.chmod(0o755)


def test_unwritable_models_dir_fails_the_stage_cleanly(project):
    models = project / "models"
    (
        models / "baseline.keras"
    ).unlink()  # in the cache; DVC would delete it before the stage anyway
    runs_before = {r.info.run_id for r in local_runs(project)}
    cache_before = cache_files(project)
    models_before = sorted(p.name for p in models.iterdir())  # the other models, .gitignore
    how = _make_unwritable(models)
    if how is None:
        pytest.skip("cannot make a directory unwritable here (root, and no chattr +i)")
    try:
        result = run(["dvc", "repro", "baseline"], project, check=False)
        status = run(["dvc", "status", "baseline"], project).stdout
    finally:
        _restore_writable(models, how)

    assert result.returncode != 0
    assert (
        "Running stage 'baseline'" in result.stdout and "Epoch 3/3" in result.stdout
    )  # the stage itself failed
    assert "failed to reproduce 'baseline'" in result.stderr
    # One line: "error: cannot write models/baseline.keras: Permission denied (<temp file>)".
    assert "error: cannot write models/baseline.keras: " in result.stderr, result.stderr
    assert re.search(r"Operation not permitted|Permission denied", result.stderr), result.stderr
    # The MLflow run is closed as FAILED, not left RUNNING.
    new = [r for r in local_runs(project) if r.info.run_id not in runs_before]
    assert [(r.info.run_name, r.info.status) for r in new] == [("baseline", "FAILED")]
    assert new[0].info.end_time
    # Nothing partial was cached or left behind; DVC still sees the stage as not done.
    assert cache_files(project) == cache_before
    assert sorted(p.name for p in models.iterdir()) == models_before
    assert not [p for p in (project / "reports").rglob("*.tmp")]
    assert status.startswith("baseline:") and re.search(
        r"deleted:\s+models/baseline\.keras", status
    ), status

    result = run(["dvc", "repro", "baseline"], project)
    assert ran_stages(result.stdout) == ["baseline"]
    assert (models / "baseline.keras").stat().st_size > 0
    assert (
        run(["dvc", "status", "baseline"], project).stdout.strip()
        == "Data and pipelines are up to date."
    )
    assert local_runs(project)[-1].info.status == "FINISHED"
