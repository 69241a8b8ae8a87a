"""Resuming a training stage (pipeline/training/resume.py): one training of a model at a time
(pipeline/core/files.py training_lock), and a killed deterministic training that resumes gives
the model and history an uninterrupted one gives.

Fast: the lock between two processes, the backup's seed states, the data order a resumed fit
reads. Slow: the real stage command in a tiny project, killed (SIGKILL) after an epoch's
backup and run again; a hand-run training beside `dvc repro`'s.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline.core.errors import PipelineError
from tests.helpers.project import ROOT, backed_up_epoch

HOLD = """
import sys, time
from pipeline.core.files import training_lock
with training_lock(sys.argv[1]):
    print("holding", flush=True)
    time.sleep(60)
"""


def holder(cwd: Path, name: str) -> subprocess.Popen:
    """Another process that holds `name`'s training lock in `cwd` until killed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLD), name],
        cwd=cwd,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout.readline() == "holding\n"
    return process


def test_a_second_training_of_a_model_refuses_naming_the_first_and_touches_nothing(
    tmp_path, monkeypatch
):
    from pipeline.core.files import training_lock

    monkeypatch.chdir(tmp_path)
    backup = tmp_path / ".checkpoints/baseline-0123456789ab/history.csv"
    backup.parent.mkdir(parents=True)
    backup.write_text("epoch,loss\n1,0.5\n")
    first = holder(tmp_path, "baseline")
    try:
        with pytest.raises(PipelineError) as error, training_lock("baseline"):
            pass
        assert str(error.value) == (
            f"baseline is already training (PID {first.pid}, lock .checkpoints/baseline.lock); "
            f"wait for it to end or stop it (kill {first.pid}), then run again"
        )
        with training_lock("augmented"), training_lock("augmented"):  # another; re-entrant
            pass
    finally:
        first.kill()
        first.wait()
    assert backup.read_text() == "epoch,loss\n1,0.5\n"
    with training_lock("baseline"):  # the kernel let go of the dead one's lock
        assert (tmp_path / ".checkpoints/baseline.lock").read_text() == f"{os.getpid()}\n"


def test_the_backup_holds_the_seed_states_and_a_resumed_fit_restores_them(tmp_path):
    import keras
    import numpy as np

    from pipeline.training import resume

    def model():
        keras.utils.set_random_seed(3)
        built = keras.Sequential(
            [keras.Input((4,)), keras.layers.Dropout(0.5), keras.layers.Dense(1)]
        )
        built.compile(optimizer="rmsprop", loss="mse")
        return built

    x, y = np.ones((8, 4)), np.ones((8, 1))
    checkpoints = tmp_path / "tiny-0123"
    trained = model()
    callbacks = resume.callbacks(checkpoints, [])
    trained.fit(
        x, y, epochs=2, verbose=0, callbacks=[callbacks["history_file"], callbacks["backup"]]
    )
    states = [v.numpy().tolist() for v in resume.seed_variables(trained)]
    assert states and resume.backup(checkpoints)[1]["seed_states"] == states
    restored = model()
    assert [v.numpy().tolist() for v in resume.seed_variables(restored)] != states
    backup = resume.AtomicBackup(str(checkpoints))
    backup.set_model(restored)
    backup.on_train_begin()
    assert [v.numpy().tolist() for v in resume.seed_variables(restored)] == states
    assert restored._initial_epoch == 2
    assert restored.optimizer.iterations.numpy() == trained.optimizer.iterations.numpy()


@pytest.mark.parametrize("steps", [0, 3], ids=["a-pass-an-epoch", "a-repeated-stream"])
def test_a_fit_resumed_from_its_backup_ends_as_the_uninterrupted_one(tmp_path, steps):
    """In this process: the data order (resumed_data), the seed states (dropout) and the
    optimizer state together, checked through Keras' own fit."""
    import keras
    import numpy as np

    from pipeline.data.dataset import make_dataset
    from pipeline.training import resume

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 255, (30, 4)).astype(np.uint8), rng.integers(0, 2, 30)

    def fit(checkpoints: Path, epochs: int) -> keras.Model:
        keras.utils.set_random_seed(1)
        model = keras.Sequential(
            [keras.Input((4,)), keras.layers.Dropout(0.5), keras.layers.Dense(1, "sigmoid")]
        )
        model.compile(optimizer="rmsprop", loss="binary_crossentropy")
        previous = resume.completed_epochs(checkpoints)
        data = make_dataset(x, y, 4, training=True, seed=2, repeat=steps > 0)
        callbacks = resume.callbacks(checkpoints, previous)
        model.fit(
            resume.resumed_data(data, len(previous), steps),
            epochs=epochs,
            steps_per_epoch=steps or None,
            callbacks=[callbacks["history_file"], callbacks["backup"]],
            verbose=0,
        )
        return model

    uninterrupted = fit(tmp_path / "whole", 4)
    fit(tmp_path / "halves", 2)
    resumed = fit(tmp_path / "halves", 4)
    for ours, theirs in zip(resumed.variables, uninterrupted.variables, strict=True):
        assert np.array_equal(ours.numpy(), theirs.numpy()), ours.path
    whole = (tmp_path / "whole/history.csv").read_text().splitlines()
    halves = (tmp_path / "halves/history.csv").read_text().splitlines()
    assert [row.split(",")[:2] for row in halves] == [row.split(",")[:2] for row in whole]


# --- the real stage -----------------------------------------------------------------------

EPOCHS = 8
# augmented: dropout and augmentation draws (seed states) and a repeated stream of batches;
# baseline: one reshuffled pass an epoch
FITS = {
    "augmented": {"epochs": EPOCHS, "batch_size": 8, "steps_per_epoch": 12},
    "baseline": {"epochs": EPOCHS, "batch_size": 8, "steps_per_epoch": 0},
}


@pytest.fixture(scope="module")
def deterministic_project(tmp_path_factory):
    from tests.helpers.project import prepared_in_process, tiny_project

    patch = {
        "prepare": {"image_sizes": [48]},
        "train": {"runtime": {"deterministic": True}, **FITS},
        "pretrained": {"bases": {"vgg16": {"image_size": 48}, "efficientnet_lite0": None}},
    }
    project = tiny_project(tmp_path_factory.mktemp("resume"), patch)
    prepared_in_process(project, 48)  # the data stages, outside DVC
    return project


def trainer(project: Path, name: str) -> subprocess.Popen:
    from tests.helpers.project import command_env

    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "train", name],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=command_env(),
    )


def outputs(project: Path, name: str) -> dict[str, bytes]:
    files = [f"models/{name}.keras", f"reports/history/{name}.csv", f"reports/metrics/{name}.json"]
    return {file: (project / file).read_bytes() for file in files}


def kill_after_a_backup(project: Path, name: str) -> int:
    """Train `name`, SIGKILL it once an epoch (not the last) is backed up; that epoch."""
    process = trainer(project, name)
    deadline = time.monotonic() + 300
    while (done := backed_up_epoch(project, name)) < 1:
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert done < EPOCHS, "the training ended before it could be killed"
    return done


@pytest.mark.slow
@pytest.mark.extended
@pytest.mark.parametrize("name", list(FITS))
def test_a_killed_deterministic_training_resumes_to_the_same_bytes(deterministic_project, name):
    from tests.helpers.project import run
    from tests.helpers.tracking import tracked_runs

    project = deterministic_project
    train = [sys.executable, "-m", "pipeline", "train", name]
    run(train, project)
    uninterrupted = outputs(project, name)
    for file in uninterrupted:
        (project / file).unlink()
    killed_after = kill_after_a_backup(project, name)
    resumed = run(train, project)
    assert f"resuming after epoch {killed_after}" in resumed.stdout
    assert outputs(project, name) == uninterrupted
    runs = tracked_runs(project, name, newest_first=True)
    assert runs[0].data.tags["resumed_from_epoch"] == str(killed_after)
    assert runs[0].info.status == "FINISHED"


@pytest.mark.slow
@pytest.mark.extended
def test_a_hand_run_training_beside_dvc_repro_refuses_and_leaves_it_alone(deterministic_project):
    from tests.helpers.project import ran_stages, start_repro

    project = deterministic_project
    # --single-item: the data stages ran outside DVC (deterministic_project)
    dvc = start_repro(project, "baseline", options=("--single-item",))
    deadline = time.monotonic() + 300
    while backed_up_epoch(project, "baseline") < 1:
        assert dvc.poll() is None and time.monotonic() < deadline, dvc.stdout.read()
        time.sleep(0.02)
    lock = (project / ".checkpoints/baseline.lock").read_text().strip()
    second = trainer(project, "baseline")
    output, _ = second.communicate(timeout=300)
    assert second.returncode == 1
    errors = [line for line in output.splitlines() if line.startswith("error")]
    assert errors == [
        f"error: baseline is already training (PID {lock}, lock .checkpoints/baseline.lock); "
        f"wait for it to end or stop it (kill {lock}), then run again"
    ]
    assert "training baseline" not in output  # refused before any MLflow run or epoch
    repro_output, _ = dvc.communicate(timeout=600)
    assert dvc.returncode == 0, repro_output
    assert ran_stages(repro_output) == ["baseline"] and "resuming" not in repro_output
