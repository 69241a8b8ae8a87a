"""A damaged `.keras` file behind the registry's champion: `predict` names the command that
logs and registers the model again, and typing that command makes `predict` work again."""

from __future__ import annotations

import contextlib
import re
import shlex
import sys

import numpy as np
import pytest

from pipeline.tracking import store
from pipeline.tracking.registry import logged_model_id
from pipeline.tracking.store import EXPERIMENT
from tests.helpers.project import run
from tests.helpers.synthetic import synthetic_image
from tests.helpers.tracking import client_of, store_uri

NAME = "dogs-vs-cats"


def champion_keras_file(client):
    """The champion's version and the `.keras` file of its logged model in the store."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    champion = client.get_model_version_by_alias(NAME, "champion")
    logged = client.get_logged_model(logged_model_id(champion))
    repo = get_artifact_repository(logged.artifact_location)
    (keras,) = [f.path for f in repo.list_artifacts("artifacts") if f.path.endswith(".keras")]
    return champion, repo.download_artifacts(keras)


@pytest.mark.extended
@pytest.mark.slow
def test_damaged_champion_is_restored_by_the_command_predict_names(project_copy):
    project = project_copy
    synthetic_image("cat", 64, np.random.default_rng(5)).save(project / "cat.jpg")
    predict = [sys.executable, "-m", "pipeline", "predict", "cat.jpg"]
    client = client_of(project)
    with contextlib.chdir(project):  # the copy's store names the original's artifacts until then
        location = client.get_experiment_by_name(EXPERIMENT).artifact_location
        store.adopt_copied_store(store_uri(project), location)
    damaged, keras_file = champion_keras_file(client)
    with open(keras_file, "r+b") as file:  # truncated, as a full disk or a bad copy leaves it
        file.truncate(100)

    result = run(predict, project, check=False)
    assert result.returncode == 1, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    stage = damaged.tags["dvc.stage"]
    command = f"dvc repro --force --single-item {stage} report"
    assert lines[0].startswith("error: ") and f"`{command}`" in lines[0], lines[0]

    typed = re.search(r"`(dvc repro [^`]+)`", lines[0]).group(1)
    run(shlex.split(typed), project)
    champion = client_of(project).get_model_version_by_alias(NAME, "champion")
    assert champion.version != damaged.version
    assert champion.tags["dvc.stage"] == stage
    result = run(predict, project, check=False)
    assert result.returncode == 0, result.stderr
    assert "cat.jpg" in result.stdout
