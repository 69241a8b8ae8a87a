"""Every model under every runtime combination `auto` picks: on a GPU machine (XLA, float16
mixed precision, mirrored over two devices) and on a CPU (float32 or bfloat16, no XLA).

CPUs run all of them: XLA compiles for CPUs, float16 is emulated (slow, correct), and two
logical CPUs stand in for two GPUs. PIPELINE_AUTO_AS_GPUS makes `auto` decide as with GPUs.
Each combination trains the five models of one tiny synthetic project in one fresh process
(tests/runtime_matrix_worker.py), through the stage functions `dvc repro` runs; each saved
model is then loaded afresh and must score the test split exactly as the trained one did.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.helpers.project import ONLY_VGG16, run, tiny_project, update_params

pytestmark = pytest.mark.slow

WORKER = Path(__file__).parent / "helpers" / "runtime_matrix_worker.py"
MODELS = ["baseline", "augmented", "features-vgg16", "frozen_aug-vgg16", "finetune-vgg16"]
SHORT = {"epochs": 1, "steps_per_epoch": 2}  # a step or two: it runs, saves and reloads
LONG = {"epochs": 4, "steps_per_epoch": 0}  # 4 passes over 48 images: enough to learn

# name: (environment, train.runtime, how long, what it must resolve to)
COMBINATIONS = {
    # auto on a machine with one GPU
    "gpu-1": (
        {"PIPELINE_AUTO_AS_GPUS": "1"},
        {},
        LONG,
        {"jit_compile": True, "precision": "mixed_float16", "replicas": "1"},
    ),
    # auto on a machine with two GPUs, less XLA: on logical CPUs, XLA fails at the second
    # replica ("Trying to access resource ... located in device CPU:1 from device CPU:0",
    # tensorflow.org/xla/known_issues), also for the baseline; GPUs are separate devices.
    # test_augment_xla.py runs the augmentation under XLA inside a mirrored step.
    "gpu-2": (
        {"PIPELINE_AUTO_AS_GPUS": "2", "PIPELINE_LOGICAL_CPUS": "2"},
        {"jit_compile": "off"},
        SHORT,
        {"jit_compile": False, "precision": "mixed_float16", "replicas": "2"},
    ),
    "cpu-float32": (
        {},
        {"mixed_precision": "off"},
        SHORT,
        {"jit_compile": False, "precision": "float32", "replicas": "1"},
    ),
    "cpu-bfloat16": (
        {},
        {"mixed_precision": "on"},
        SHORT,
        {"jit_compile": False, "precision": "mixed_bfloat16", "replicas": "1"},
    ),
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A tiny project with its data stages run: 48 px for the convnets, 32 for VGG16."""
    root = tmp_path_factory.mktemp("matrix")
    batch_of_8 = {"batch_size": 8, "learning_rate": 1e-3}
    patch = {
        "split": {"train": 24, "validation": 8, "test": 8},
        "train": {
            **{model: batch_of_8 for model in ("baseline", "augmented", "features", "frozen_aug")},
            "finetune": {"batch_size": 8, "epochs": 1, "steps_per_epoch": 2},
        },
        **ONLY_VGG16,
    }
    project = tiny_project(root, patch, per_class=40)
    run(["dvc", "repro", "prepare@32", "prepare@48"], project)
    return project


@pytest.fixture(scope="module")
def trained(prepared):
    """combination name -> (project, the worker's results); each trained once, on demand."""
    done = {}

    def get(name: str):
        if name not in done:
            env, runtime, length, _ = COMBINATIONS[name]
            project = prepared.parent / name
            shutil.copytree(prepared, project)
            epochs = {m: length for m in ("baseline", "augmented", "frozen_aug")}
            update_params(
                project,
                {"train": {"runtime": runtime, **epochs, "features": {"epochs": length["epochs"]}}},
            )
            out = project / "matrix.json"
            run([sys.executable, str(WORKER), str(out)], project, env=env)
            done[name] = project, json.loads(out.read_text())
        return done[name]

    return get


def mlflow_tags(project: Path, run_name: str) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("dogs-vs-cats")
    (found,) = client.search_runs([experiment.experiment_id], f"attributes.run_name = '{run_name}'")
    return found.data.tags


@pytest.mark.parametrize("combination", COMBINATIONS)
@pytest.mark.parametrize("model", MODELS)
def test_model_trains_saves_and_reloads(trained, combination, model):
    project, results = trained(combination)
    _, _, length, expected = COMBINATIONS[combination]
    result = results[model]
    assert "error" not in result, result.get("error")
    assert (results["jit_compile"], results["precision"]) == (
        expected["jit_compile"],
        expected["precision"],
    )
    tags = mlflow_tags(project, model)
    assert (tags["precision"], tags["replicas"]) == (expected["precision"], expected["replicas"])
    metrics, reloaded = result["metrics"], result["reloaded"]
    # The saved model predicts what the trained one did: same classes, same loss.
    assert (
        reloaded["confusion_matrix"]
        == json.loads((project / f"reports/details/{model}.json").read_text())["confusion_matrix"]
    )
    assert reloaded["test_accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-4)
    assert reloaded["test_loss"] == pytest.approx(metrics["test_loss"], abs=2e-4)
    if length is LONG:
        assert metrics["test_accuracy"] >= 0.75, metrics  # 16 test images; chance is 0.5
