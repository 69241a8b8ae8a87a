"""MLflow: one store, one experiment, one run per trained model, tags that make runs comparable.

- The store is `MLFLOW_TRACKING_URI` when set, else `sqlite:///<project>/mlflow.db` (what
  `mlflow ui` opens from the project root) with artifacts in `<project>/mlartifacts`. The
  project root is found even from `dvc exp run --temp/--queue`, which runs in a copy under
  `.dvc/tmp/exps/`: a relative URI there would put the runs in the copy, and they'd vanish.
- Each DVC stage is its own process: the runs of one `dvc repro` / `dvc exp run` share the
  tag `pipeline.repro_id`, taken from the DVC process that started the stage.
- An unreachable tracking server fails the stage before any training.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path

import psutil
import requests

from pipeline.core.errors import PipelineError
from pipeline.core.paths import project_root

EXPERIMENT = os.environ.get("MLFLOW_EXPERIMENT_NAME", "dogs-vs-cats")


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or own_store_uri()


def check_server(uri: str) -> None:
    """A tracking server that does not answer, in seconds: MLflow's own client retries for
    minutes. Nothing to check for a store that is not a server."""
    if urllib.parse.urlparse(uri).scheme in ("http", "https"):
        try:
            requests.get(uri.rstrip("/") + "/health", timeout=10).raise_for_status()
        except requests.RequestException as exc:
            raise PipelineError(
                f"MLFLOW_TRACKING_URI={uri}: tracking server unreachable ({type(exc).__name__}); "
                "start the server or unset MLFLOW_TRACKING_URI to use the local store"
            ) from None


def check_reachable(uri: str) -> None:
    """Fail fast, with the URI named, before a stage spends minutes training: a server that
    does not answer, a sqlite store that cannot be written (before any run starts in it)."""
    check_server(uri)
    if urllib.parse.urlparse(uri).scheme == "sqlite":
        path = Path(uri.removeprefix("sqlite:///"))
        if not os.access(path.parent, os.W_OK):
            raise PipelineError(f"MLFLOW_TRACKING_URI={uri}: {path.parent} is not writable")
        # os.access sees chmod, chattr +i and a read-only mount, as sqlite will
        if path.is_file() and not os.access(path, os.W_OK):
            raise PipelineError(
                f"MLflow store {path} is read-only: make it writable (chmod u+w, or chattr -i) "
                "and run again, or set MLFLOW_TRACKING_URI to a store you can write"
            )


def missing_store_file(uri: str) -> Path | None:
    """The file of a sqlite store that does not exist (MLflow would create an empty one on
    first use); None for a store that exists or is not a sqlite file."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        return None if path.is_file() else path
    return None


def connect() -> str:
    """Point MLflow at the store and experiment; return the URI. Call before training."""
    import mlflow

    uri = tracking_uri()
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        artifacts = None
        if uri.startswith("sqlite:"):
            artifacts = artifact_root().as_uri()
        # Another stage may create it in the meantime.
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts)
    elif uri == own_store_uri():
        adopt_copied_store(uri, experiment.artifact_location)
    mlflow.set_experiment(EXPERIMENT)
    return uri


def adopt_if_copied(uri: str) -> None:
    """For a command that only reads the store (predict): a copied project's own store is
    taken over as a logging stage would, so its models load from the copy's files. A store
    it cannot write stays as it is (reads go to the original's paths, where those exist)."""
    import mlflow
    import sqlalchemy as sa

    if uri != own_store_uri():
        return
    experiment = mlflow.MlflowClient(uri).get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        with contextlib.suppress(sa.exc.OperationalError):
            adopt_copied_store(uri, experiment.artifact_location)


def own_store_uri() -> str:
    """The project's own store, where MLFLOW_TRACKING_URI is not set."""
    return f"sqlite:///{project_root() / 'mlflow.db'}"


def artifact_root() -> Path:
    """Where the project's own store keeps run artifacts."""
    return project_root() / "mlartifacts"


def _artifact_columns():
    """Every column where MLflow's sqlite store keeps an absolute artifact location."""
    from mlflow.store.model_registry.dbmodels.models import SqlModelVersion
    from mlflow.store.tracking.dbmodels.models import SqlExperiment, SqlLoggedModel, SqlRun

    return (
        SqlExperiment.artifact_location,
        SqlRun.artifact_uri,
        SqlLoggedModel.artifact_location,
        SqlModelVersion.storage_location,
        SqlModelVersion.source,
    )


def adopt_copied_store(uri: str, location: str) -> None:
    """A project copied or moved (cp -r, tar) brings a store whose artifact locations are the
    original's `mlartifacts`: point them at this project's (the copy holds the same files),
    so that the copy reads and writes its own. MLflow stores them absolute and has no API to
    change them: its own table models rewrite them here, in one transaction."""
    import sqlalchemy as sa

    ours = artifact_root().as_uri()
    if location == ours or not (
        location.startswith("file://") and location.endswith("/mlartifacts")
    ):
        return
    engine = sa.create_engine(uri)
    try:
        with engine.begin() as connection:
            for column in _artifact_columns():
                moved = sa.literal(ours) + sa.func.substr(column, len(location) + 1)
                inside = sa.or_(
                    column == location, column.startswith(location + "/", autoescape=True)
                )
                connection.execute(sa.update(column.class_).where(inside).values({column: moved}))
    finally:
        engine.dispose()
    print(f"MLflow store {uri}: copied from {location}; its artifacts are now in {ours}")


def repro_id() -> str:
    """One id per `dvc repro` / `dvc exp run`: the nearest DVC ancestor process and its start
    time. Outside DVC (a stage run by hand) every process gets its own."""
    process = psutil.Process()
    for parent in process.parents():
        try:
            cmdline = " ".join(parent.cmdline())
        except psutil.Error:
            continue
        if "dvc" in cmdline and any(word in cmdline for word in ("repro", "exp", "queue")):
            process = parent
            break
    started = datetime.fromtimestamp(process.create_time(), UTC).strftime("%Y%m%dT%H%M%S")
    return f"{socket.gethostname()}-{process.pid}-{started}"


def git_state() -> dict[str, str]:
    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], capture_output=True, text=True)
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    # DVC rewrites dvc.lock between stages of one repro: that alone is not a dirty tree.
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!dvc.lock")
    return {"git.commit": commit or "unknown", "git.dirty": str(bool(dirty)).lower()}


def run_tags(stage: str, extra: dict[str, str]) -> dict[str, str]:
    tags = {
        "dvc.stage": stage,
        "pipeline.repro_id": repro_id(),
        "pipeline.host": socket.gethostname(),
        "pipeline.pid": str(os.getpid()),
        **git_state(),
        **extra,
    }
    if exp := os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = exp
    return tags


def flatten(params: dict, prefix: str = "") -> dict[str, object]:
    """{'train': {'baseline': {'epochs': 30}}} -> {'train.baseline.epochs': 30}."""
    flat: dict[str, object] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def close_stale_runs(stage: str) -> None:
    """Mark KILLED the runs of `stage` left RUNNING by a process that died without cleanup
    (SIGKILL, power loss): same host, and that process is gone."""
    import mlflow

    client = mlflow.tracking.MlflowClient()
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    stale = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`dvc.stage` = '{stage}' and attributes.status = 'RUNNING'",
    )
    for run in stale:
        tags = run.data.tags
        if tags.get("pipeline.host") == socket.gethostname() and not psutil.pid_exists(
            int(tags.get("pipeline.pid", 0))
        ):
            client.set_terminated(run.info.run_id, status="KILLED")
            print(f"marked MLflow run {run.info.run_id} of {stage} KILLED: its process is gone")
