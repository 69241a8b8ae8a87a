"""The data stages under real `dvc repro` in a fresh git + DVC repo made from the project."""

import json

import pytest

from tests.helpers.project import ran_stages, run, tiny_project, update_params


@pytest.mark.extended
@pytest.mark.slow
def test_dvc_repro_data_stages(tmp_path):
    project = tiny_project(
        tmp_path,
        {"split": {"train": 10, "validation": 4, "test": 4}},
        per_class=24,
    )
    archive = tmp_path / "sample.zip"
    targets = ["prepare@32", "prepare@48"]
    first = run(["dvc", "repro", *targets], project)
    stages = ran_stages(first.stdout)
    assert stages[:2] == ["download", "split"]  # DVC orders independent stages as it likes
    assert sorted(stages[2:]) == ["prepare@32", "prepare@48"]
    report = json.loads((project / "reports/download.json").read_text())
    assert report["classes"]["cat"]["valid"] == 24
    assert (project / "data/prepared/48px/train.npz").is_file()

    # How the archive travels (data.transfer) is not a param of the download stage.
    update_params(project, {"data": {"transfer": {"attempts": 2, "timeout_seconds": 5}}})
    second = run(["dvc", "repro", *targets], project)
    assert ran_stages(second.stdout) == []

    update_params(project, {"split": {"train": 12}})
    third = run(["dvc", "repro", *targets], project)
    assert sorted(ran_stages(third.stdout)) == ["prepare@32", "prepare@48", "split"]

    # A failing stage (bad source) exits non-zero with one line and leaves its last good
    # outputs in place (dvc.yaml: persist), the last good run still recorded.
    update_params(project, {"data": {"source": str(tmp_path / "missing.zip")}})
    fourth = run(["dvc", "repro", "download"], project, check=False)
    assert fourth.returncode != 0
    assert "error: data.source:" in fourth.stderr and "missing.zip does not exist" in fourth.stderr
    assert len(list((project / "data/images/cat").iterdir())) == 24
    assert "download" in run(["dvc", "status", "download"], project).stdout
    update_params(project, {"data": {"source": str(archive)}})
    run(["dvc", "checkout", "download"], project)
    assert len(list((project / "data/images/cat").iterdir())) == 24
