"""The pipeline's MLflow runs as the tests read them: its one experiment
(`pipeline.tracking.store.EXPERIMENT`) in a project's sqlite store, on a tracking server, or
in the store of MLFLOW_TRACKING_URI."""

from __future__ import annotations

from pathlib import Path

# mlflow is imported where it is used: test modules import this at collection, in every worker


def store_uri(project: Path) -> str:
    """The tracking URI of a project's own store, as the pipeline makes it (mlflow.db in it)."""
    return f"sqlite:///{project / 'mlflow.db'}"


def client_of(where=None):
    """An MlflowClient of a project's store (`where` is its folder, with mlflow.db in it), of
    a tracking URI, or (None) of MLFLOW_TRACKING_URI; a client is returned as it is."""
    from mlflow import MlflowClient

    if isinstance(where, MlflowClient):
        return where
    if isinstance(where, Path):
        return MlflowClient(store_uri(where))
    return MlflowClient(where)


def experiment_id(where=None) -> str:
    from pipeline.tracking.store import EXPERIMENT

    return client_of(where).get_experiment_by_name(EXPERIMENT).experiment_id


def tracked_runs(where=None, name: str | None = None, newest_first: bool = False) -> list:
    """The experiment's runs, oldest first (or newest first); only those named `name` if given."""
    client = client_of(where)
    order = "DESC" if newest_first else "ASC"
    return client.search_runs(
        [experiment_id(client)],
        f"attributes.run_name = '{name}'" if name else "",
        order_by=[f"attributes.start_time {order}"],
    )


def new_stores_from_a_template(folder: Path) -> Path:
    """Make every new sqlite store this process opens start as a copy of one store migrated
    here once: MLflow otherwise runs its every schema migration on each new store, seconds
    of a core each, and the in-process tests make dozens. Files only; other databases and
    existing stores are MLflow's as before. Returns the template, for a child process's store."""
    import shutil

    import sqlalchemy
    from mlflow.store.db import utils

    migrate = utils._initialize_tables
    template = folder / "migrated.db"
    migrate(sqlalchemy.create_engine(f"sqlite:///{template}"))

    def initialize_tables(engine) -> None:
        path = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
        if not path or path == ":memory:" or Path(path).stat().st_size:
            migrate(engine)
            return
        engine.dispose()  # the empty file sqlite made on connecting: replaced, reopened lazily
        shutil.copyfile(template, path)

    utils._initialize_tables = initialize_tables
    return template
