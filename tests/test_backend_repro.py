"""`train.runtime.backend: jax` under real `dvc repro`, where TensorFlow cannot be imported:
a tiny project on JAX trains and draws, its MLflow run says it trained on JAX, and the
backend is a param of the stages it changes; and (extended tier) every stage of the trained
project switched to JAX. The units of the JAX path are tests/test_backends.py's."""

from __future__ import annotations

import shutil

import pytest

from pipeline.core.files import read_metrics
from tests.helpers.backends import no_tensorflow_dir
from tests.helpers.project import (
    TINY_BASES,
    TINY_MODELS,
    TINY_TRAINING_STAGES,
    ran_stages,
    run,
    stale_stages,
    tiny_project,
    update_params,
)
from tests.helpers.tracking import tracked_runs

pytestmark = pytest.mark.slow


def test_dvc_repro_on_jax_without_tensorflow_trains_and_draws(tmp_path, migrated_store_template):
    """A project of its own, not the trained one: it needs none of that build's stages, so
    it runs while the build does."""
    project = tiny_project(tmp_path, {"train": {"runtime": {"backend": "jax"}}})
    shutil.copyfile(migrated_store_template, project / "mlflow.db")  # as a first stage makes it
    blocked = {"PYTHONPATH": str(no_tensorflow_dir(tmp_path)), "KERAS_BACKEND": "tensorflow"}

    done = run(["dvc", "repro", "visualize@baseline"], project, env=blocked)

    ran = ["download", "split", "prepare@48", "baseline", "visualize@baseline"]
    assert ran_stages(done.stdout) == ran, done.stdout
    # the param won over the shell's KERAS_BACKEND, and said so once per stage
    said = done.stderr.count("using params.yaml's train.runtime.backend: jax")
    assert said == len(ran), done.stderr
    metrics = read_metrics(project / "reports/metrics/baseline.json")
    assert metrics["test_accuracy"] >= 0.85, metrics  # chance is 0.5
    newest = tracked_runs(project, "baseline", newest_first=True)[0]
    assert newest.data.tags["backend"] == "jax"
    assert newest.data.params["train.runtime.backend"] == "jax"
    figures = project / "reports/figures/baseline/visualize"
    drawn = {p.relative_to(figures).as_posix() for p in figures.rglob("*.png")}
    assert {"gradcam.png", "mistakes.png", "filters/conv2d.png"} <= drawn, sorted(drawn)
    assert "activations/00-input.png" in drawn, sorted(drawn)
    # back to TensorFlow: of the stages that ran, what the backend computes is stale, and
    # only that (visualize follows once baseline reruns)
    update_params(project, {"train": {"runtime": {"backend": "tensorflow"}}})
    assert stale_stages(project) & set(ran) == {"baseline"}


@pytest.mark.extended
def test_every_stage_reruns_on_jax_without_tensorflow_then_predicts(project_copy, tmp_path):
    """The conv base's stages too (extract, features, frozen_aug, finetune), the report, every
    visualize stage, then `predict` of the champion the report registered."""
    update_params(project_copy, {"train": {"runtime": {"backend": "jax"}}})
    blocked = {"PYTHONPATH": str(no_tensorflow_dir(tmp_path))}

    done = run(["dvc", "repro"], project_copy, env=blocked)

    ran = set(ran_stages(done.stdout))
    rerun = {*TINY_TRAINING_STAGES, *(f"extract@{b}" for b in TINY_BASES), "report"}
    assert rerun <= ran, sorted(ran)
    assert {"visualize@baseline", "visualize_finetune@vgg16"} <= ran, sorted(ran)
    assert not stale_stages(project_copy)
    for model in TINY_MODELS:
        newest = tracked_runs(project_copy, model, newest_first=True)[0]
        assert newest.data.tags["backend"] == "jax", model
    photo = next((project_copy / "data/images/cat").glob("*.jpg"))
    predicted = run(["python", "-m", "pipeline", "predict", str(photo)], project_copy, env=blocked)
    assert str(photo.name) in predicted.stdout, predicted.stdout
