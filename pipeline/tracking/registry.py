"""The Model Registry: each trained model of the pipeline is a version of one registered model
(`registry.model_name`, default `dogs-vs-cats`), and the alias `champion` points at the one
with the best validation accuracy (never chosen on test).

The report stage calls `crown_champion` with its progression table, i.e. the models in the
workspace now. Each one's logged MLflow Model is found by the hash of its `.keras` file
(pipeline/serving/logged_model.py tags it), registered unless it already is (a model that a repro
did not retrain keeps its version), and tagged with its run, DVC stage, git commit and
split hash.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pandas as pd

from pipeline.core import catalog, paths
from pipeline.core.files import sha256_of

CHAMPION = "champion"
# The tag of a logged model that names its `.keras` file: the first 16 hex digits of its sha256
# (pipeline/serving/logged_model.py sets it), how the registry finds the model of a file.
MODEL_HASH_TAG = "model_sha256"
RUN_TAGS = ("dvc.stage", "git.commit", "split_sha256", "pipeline.repro_id")


def crown_champion(table: pd.DataFrame, name: str) -> str:
    """Register the table's models, point @champion at the best on validation; return the
    paragraph for reports/progression.md that names it."""
    from mlflow import MlflowClient

    client = MlflowClient()
    versions = {row.model: version(client, name, row) for row in table.itertuples()}
    ranked = table[table["model"].map(versions).notna()]
    if ranked.empty:
        return (
            f"\nNo model is registered as `{name}`: no trained model has a logged MLflow Model.\n"
        )
    # idxmax: the first of equals, in the book's order (the simpler model).
    best = ranked.loc[ranked["best_val_accuracy"].idxmax()]
    champion = versions[best["model"]]
    client.set_registered_model_alias(name, CHAMPION, champion.version)
    print(f"models:/{name}@{CHAMPION} -> version {champion.version} ({best['model']})")
    return (
        f"\n**Champion**: `models:/{name}@{CHAMPION}` is version {champion.version}, "
        f"**{best['model']}**: the best validation accuracy ({best['best_val_accuracy']:.4f}) "
        "of these models (chosen on validation, never on test). "
        "`python -m pipeline predict PHOTO...` uses it.\n"
    )


def version(client, name: str, row):
    """The registered version of the table row's model file; registered now if need be.
    None, with a warning, when the file has no logged MLflow Model."""
    # The table names the file where it is not models/<model>.keras (MNIST: mnist/models/).
    model_file = Path(getattr(row, "model_file", paths.model_file(row.model)))
    digest = sha256_of(model_file)[:16] if model_file.is_file() else "missing"
    found = client.search_model_versions(
        f"name = '{name}' and tags.{MODEL_HASH_TAG} = '{digest}'",
        max_results=1,
        order_by=["version_number DESC"],
    )
    # a version whose artifact was damaged since is replaced, so the alias moves off it
    if found and readable(logged_model_id(found[0])):
        return found[0]
    logged = _logged_model(digest)
    if logged is None or (found and logged.model_id == logged_model_id(found[0])):
        why = (
            "a damaged Keras artifact"
            if found
            else "no logged MLflow Model (trained before models were logged, or in another store)"
        )
        command = retrain_command(catalog.stage_of(row.model))
        print(f"warning: {model_file} has {why}; `{command}` logs and registers one")
        return found[0] if found else None
    return _register(client, name, logged, row, digest)


def retrain_command(stage: str) -> str:
    """The command that trains `stage` (a run's tag `dvc.stage`) again and registers its
    model, although DVC sees nothing changed."""
    report = "report"
    if stage.partition("@")[0] in catalog.MNIST_KINDS:  # its own pipeline: mnist/dvc.yaml
        stage, report = f"mnist/dvc.yaml:{stage}", "mnist/dvc.yaml:convolution"
    # --single-item: --force alone reruns every stage upstream too
    return f"dvc repro --force --single-item {stage} {report}"


def logged_model_id(model_version) -> str | None:
    """The id of the logged model a version was registered from; None for a run's path."""
    # the sqlite store leaves `model_id` empty: the source `models:/<id>` names it
    source = model_version.source or ""
    return model_version.model_id or (source[8:] if source.startswith("models:/m-") else None)


def readable(model_id: str | None) -> bool:
    """Whether the logged model's `.keras` artifact exists and opens as a zip (cheap: not
    loaded), as pipeline/models/model_io.py's check_keras_file asks."""
    import mlflow
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    # not model_io itself: the report stage would depend on the Keras code
    if model_id is None:  # a version registered from a run's path, not a logged model
        return True
    repo = get_artifact_repository(mlflow.get_logged_model(model_id).artifact_location)
    files = [f.path for f in repo.list_artifacts("artifacts") if f.path.endswith(".keras")]
    if not files:
        return False
    try:
        return zipfile.is_zipfile(repo.download_artifacts(files[0]))
    except OSError:
        return False


def _logged_model(digest: str):
    import mlflow

    from pipeline.tracking.store import EXPERIMENT

    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    found = mlflow.search_logged_models(
        experiment_ids=[experiment.experiment_id],
        filter_string=f"tags.{MODEL_HASH_TAG} = '{digest}'",
        order_by=[{"field_name": "creation_time", "ascending": False}],
        max_results=1,
        output_format="list",
    )
    return found[0] if found else None


def _register(client, name: str, logged, row, digest: str):
    import mlflow

    run_tags = client.get_run(logged.source_run_id).data.tags
    tags = {key: run_tags.get(key, "unknown") for key in RUN_TAGS}
    tags |= {"run_id": logged.source_run_id, MODEL_HASH_TAG: digest}
    tags |= {"best_val_accuracy": str(row.best_val_accuracy), "model": row.model}
    registered = mlflow.register_model(logged.model_uri, name, tags=tags)
    description = (
        f"{row.model}: best validation accuracy {row.best_val_accuracy:.4f}, "
        f"test accuracy {row.test_accuracy:.4f} (DVC stage {tags['dvc.stage']})"
    )
    client.update_model_version(name, registered.version, description=description)
    print(f"registered {row.model} as {name} version {registered.version}")
    return registered
