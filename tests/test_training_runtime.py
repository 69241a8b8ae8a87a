"""Training under a distribution strategy, and training that is interrupted and resumed."""

from __future__ import annotations

import os
import signal
import sys
import time

import psutil
import pytest

from pipeline.core.files import read_metrics
from tests.helpers.project import (
    backed_up_epoch,
    params_patched,
    ran_stages,
    run,
    start_repro,
    tiny_project,
    update_params,
)
from tests.helpers.tracking import client_of, tracked_runs

pytestmark = [pytest.mark.slow, pytest.mark.extended]

EPOCHS = 4  # three epochs of 40 steps after the first backup: time to signal the trainer


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("runtime")
    long_baseline = {"epochs": EPOCHS, "batch_size": 8, "steps_per_epoch": 40}
    patch = {
        "split": {"train": 24, "validation": 8, "test": 8},
        "prepare": {"image_sizes": [48]},
        "train": {"baseline": long_baseline},
        "pretrained": {"bases": {"vgg16": {"image_size": 48}, "efficientnet_lite0": None}},
    }
    project = tiny_project(root, patch, per_class=40)
    run(["dvc", "repro", "prepare@48"], project)
    return project


def runs_of(project, name):
    client = client_of(project)
    return client, tracked_runs(client, name)


TWO_PASSES = {"baseline": {"epochs": 2, "steps_per_epoch": 0}}


def test_mirrored_strategy_on_two_logical_cpus(project):
    with params_patched(project, {"train": {"runtime": {"strategy": "mirrored"}, **TWO_PASSES}}):
        train = [sys.executable, "-m", "pipeline", "train", "baseline"]
        result = run(train, project, env={"PIPELINE_LOGICAL_CPUS": "2"})
    assert "test accuracy" in result.stdout
    _, runs = runs_of(project, "baseline")
    tags = runs[-1].data.tags
    assert (tags["strategy"], tags["replicas"]) == ("MirroredStrategy", "2")
    assert runs[-1].data.metrics["test_accuracy"] >= 0.75  # it learns when split over two devices


def start_stage(project):
    """`dvc repro baseline` in the background; return it and the training process under it."""
    # SHELL=/bin/sh as on CI, where DVC's shell stays between it and the trainer.
    env = {
        **os.environ,
        "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
        "SHELL": "/bin/sh",
    }
    dvc = start_repro(project, "baseline", env)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if (
            backed_up_epoch(project, "baseline") >= 1
        ):  # a whole backup to resume from, not just its history
            children = psutil.Process(dvc.pid).children(recursive=True)
            # The python process itself, not DVC's `sh -c` around it: dash forks rather than execs.
            trainer = [p for p in children if p.cmdline()[1:3] == ["-m", "pipeline"]]
            if trainer:  # a backup from an earlier interruption can be there before it starts
                return dvc, trainer[0]
        assert dvc.poll() is None, dvc.stdout.read()
        time.sleep(0.1)
    dvc.kill()
    raise AssertionError("training did not reach epoch 2 in time")


def outputs_of(project) -> dict:
    """The baseline's model and metrics as bytes (None where absent)."""
    files = ("models/baseline.keras", "reports/metrics/baseline.json")
    return {f: (project / f).read_bytes() if (project / f).exists() else None for f in files}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_interrupted_training_leaves_nothing_and_resumes(project, sig):
    before = outputs_of(project)
    dvc, trainer = start_stage(project)
    trainer.send_signal(sig)
    output, _ = dvc.communicate(timeout=120)
    assert dvc.returncode != 0
    # Nothing half-written: each output is as it was before (persist keeps the last good
    # ones, or there were none); the stage is still to be run.
    assert outputs_of(project) == before
    assert "baseline" in run(["dvc", "status", "baseline"], project).stdout
    client, runs = runs_of(project, "baseline")
    interrupted = runs[-1]
    if sig == signal.SIGTERM:
        assert interrupted.info.status == "KILLED"  # ended by the stage itself
    else:
        assert interrupted.info.status == "RUNNING"  # nobody could end it: the next run will

    result = run(["dvc", "repro", "baseline"], project)
    assert ran_stages(result.stdout) == ["baseline"]
    assert "resuming after epoch" in result.stdout
    metrics = read_metrics(project / "reports/metrics/baseline.json")
    assert metrics["epochs"] == EPOCHS
    client, runs = runs_of(project, "baseline")
    assert client.get_run(interrupted.info.run_id).info.status == "KILLED"
    resumed = runs[-1]
    assert resumed.info.status == "FINISHED" and int(resumed.data.tags["resumed_from_epoch"]) >= 1
    steps = [m.step for m in client.get_metric_history(resumed.info.run_id, "val_accuracy")]
    assert steps == list(
        range(1, EPOCHS + 1)
    )  # the whole curve, also the epochs before the interruption
    assert not list((project / ".checkpoints").glob("baseline-*"))  # cleaned up after success
    # The next parametrisation trains again from scratch: another param, another stage run.
    update_params(
        project,
        {"train": {"baseline": {"learning_rate": 1e-3 * (2 if sig == signal.SIGTERM else 3)}}},
    )


def test_a_backup_damaged_by_a_kill_falls_back_or_starts_afresh(tmp_path):
    """SIGKILL can land while Keras writes its backup: use the previous one, else start over."""
    import h5py

    from pipeline.training.resume import completed_epochs

    (tmp_path / "history.csv").write_text("epoch,loss\n1,0.6\n2,0.5\n3,0.4\n")
    (tmp_path / "latest.weights.h5").write_bytes(b"half-written")
    (tmp_path / "training_metadata.json").write_text('{"epoch": 3, "batch": 0}')
    with h5py.File(tmp_path / "latest.weights.h5.bkp", "w"):
        pass
    (tmp_path / "training_metadata.json.bkp").write_text('{"epoch": 2, "batch": 0}')
    assert [row["epoch"] for row in completed_epochs(tmp_path)] == [1, 2]
    (tmp_path / "latest.weights.h5.bkp").write_bytes(b"")
    assert completed_epochs(tmp_path) == [] and not tmp_path.exists()
