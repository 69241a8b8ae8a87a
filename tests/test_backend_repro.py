"""`train.runtime.backend: jax` under real `dvc repro`, where TensorFlow cannot be imported:
the trained project switched to JAX reruns what the backend changes, learns, and its MLflow
run says it trained on JAX; and (extended tier) every stage of it. The units of the JAX
path are tests/test_backends.py's."""

from __future__ import annotations

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
    update_params,
)
from tests.helpers.tracking import tracked_runs

pytestmark = pytest.mark.slow


def test_dvc_repro_on_jax_without_tensorflow_trains_and_draws(project_copy, tmp_path):
    update_params(project_copy, {"train": {"runtime": {"backend": "jax"}}})
    stale = stale_stages(project_copy)
    assert "baseline" in stale and "extract@efficientnet_lite0" in stale, stale
    figures = project_copy / "reports/figures/baseline/visualize"
    before = {p: p.stat().st_mtime_ns for p in figures.rglob("*.png")}
    blocked = {"PYTHONPATH": str(no_tensorflow_dir(tmp_path)), "KERAS_BACKEND": "tensorflow"}

    done = run(["dvc", "repro", "visualize@baseline"], project_copy, env=blocked)

    assert ran_stages(done.stdout) == ["baseline", "visualize@baseline"], done.stdout
    # the param won over the shell's KERAS_BACKEND, and said so once per stage
    assert done.stderr.count("using params.yaml's train.runtime.backend: jax") == 2, done.stderr
    metrics = read_metrics(project_copy / "reports/metrics/baseline.json")
    assert metrics["test_accuracy"] >= 0.85, metrics  # chance is 0.5
    newest = tracked_runs(project_copy, "baseline", newest_first=True)[0]
    assert newest.data.tags["backend"] == "jax"
    assert newest.data.params["train.runtime.backend"] == "jax"
    after = {p: p.stat().st_mtime_ns for p in figures.rglob("*.png")}
    assert before and after.keys() == before.keys(), sorted(after)
    assert all(after[p] > before[p] for p in before)  # every figure drawn again, on JAX


@pytest.mark.extended
def test_every_stage_reruns_on_jax_without_tensorflow_then_predicts(project_copy, tmp_path):
    """Both conv bases' stages too (extract, features, frozen_aug, finetune), the report, every
    visualize stage, then `predict` of the champion the report registered."""
    update_params(project_copy, {"train": {"runtime": {"backend": "jax"}}})
    blocked = {"PYTHONPATH": str(no_tensorflow_dir(tmp_path))}

    done = run(["dvc", "repro"], project_copy, env=blocked)

    ran = set(ran_stages(done.stdout))
    rerun = {*TINY_TRAINING_STAGES, *(f"extract@{b}" for b in TINY_BASES), "report"}
    assert rerun <= ran, sorted(ran)
    assert {"visualize@baseline", "visualize_finetune@efficientnet_lite0"} <= ran, sorted(ran)
    assert not stale_stages(project_copy)
    for model in TINY_MODELS:
        newest = tracked_runs(project_copy, model, newest_first=True)[0]
        assert newest.data.tags["backend"] == "jax", model
    photo = next((project_copy / "data/images/cat").glob("*.jpg"))
    predicted = run(["python", "-m", "pipeline", "predict", str(photo)], project_copy, env=blocked)
    assert str(photo.name) in predicted.stdout, predicted.stdout
