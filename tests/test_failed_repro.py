"""A failed `dvc repro` keeps a stage's last good outputs, and every fix a message names works
when typed: the real commands in a tiny real project.

Stages with an output DVC cannot restore (cache: false) declare their outputs `persist`
(dvc.yaml): DVC leaves them while the command runs, and the command replaces them only once
it has written them all (pipeline/core/files.py). Stages whose outputs are all cached keep
DVC's run cache and name `dvc checkout STAGE` in their error line.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers.project import params_patched, ran_stages, run, start_repro

pytestmark = pytest.mark.slow

BASELINE_OUTPUTS = [
    "models/baseline.keras",
    "reports/history/baseline.csv",
    "reports/details/baseline.json",
    "reports/figures/baseline/curves.png",
    "reports/figures/baseline/confusion.png",
    "reports/metrics/baseline.json",
]
DOWNLOAD_OUTPUTS = ["reports/download.json", "data/images/cat/0.jpg", "data/images/dog/49.jpg"]


@pytest.fixture
def project(project_copy) -> Path:
    """A copy of the shared trained project (tests/helpers/trained.py) of this test's own, to
    break one thing in: every stage ran once, so each output has a last good version."""
    return project_copy


def snapshot(project: Path, files: list[str]) -> dict[str, bytes]:
    return {file: (project / file).read_bytes() for file in files}


def error_lines(done) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("error")]


def typed(command: str, project: Path):
    """A command a message names, as the user types it (`python` is the project's)."""
    words = command.split()
    return run([sys.executable if words[0] == "python" else words[0], *words[1:]], project)


def named_command(line: str) -> str:
    """The command between the backquotes of an error line."""
    return line.split("`")[1]


@pytest.mark.parametrize(
    ("how", "patch", "env"),
    [
        ("bad params", {"train": {"baseline": {"epochs": True}}}, {}),
        ("unreachable server", {}, {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}),
    ],
)
def test_a_training_stage_that_fails_keeps_its_outputs(project, how, patch, env):
    before = snapshot(project, BASELINE_OUTPUTS)
    with params_patched(project, patch):
        done = run(["dvc", "repro", "--force", "--single-item", "baseline"], project, False, env)
    assert done.returncode != 0 and len(error_lines(done)) == 1, done.stderr
    assert snapshot(project, BASELINE_OUTPUTS) == before  # never removed
    assert run(["dvc", "status", "baseline"], project).stdout.strip().endswith("up to date.")


@pytest.mark.extended
def test_a_killed_training_stage_keeps_its_outputs(project):
    before = snapshot(project, BASELINE_OUTPUTS)
    with params_patched(project, {"train": {"baseline": {"epochs": 40}}}):
        dvc = start_repro(project, "baseline")
        deadline = time.monotonic() + 300
        while not list((project / ".checkpoints").glob("baseline-*/training_metadata.json")):
            assert dvc.poll() is None and time.monotonic() < deadline, dvc.stdout.read()
            time.sleep(0.05)
        import psutil

        trainer = next(
            p
            for p in psutil.Process(dvc.pid).children(recursive=True)
            if p.cmdline()[1:3] == ["-m", "pipeline"]
        )
        trainer.send_signal(signal.SIGKILL)
        dvc.communicate(timeout=120)
    assert dvc.returncode != 0
    assert snapshot(project, BASELINE_OUTPUTS) == before


def test_a_download_that_fails_keeps_its_outputs(project, archive_server):
    before = snapshot(project, DOWNLOAD_OUTPUTS)
    with params_patched(project, {"data": {"source": f"{archive_server.url}/missing.zip"}}):
        done = run(["dvc", "repro", "download"], project, check=False)
    assert done.returncode != 0 and "HTTP 404" in done.stderr
    assert snapshot(project, DOWNLOAD_OUTPUTS) == before
    assert run(["dvc", "status", "download"], project).stdout.strip().endswith("up to date.")


@pytest.mark.extended
def test_a_truncated_download_is_deleted_and_the_command_named_fetches_it_again(
    project, archive_server
):
    archive = Path(yaml.safe_load((project / "params.yaml").read_text())["data"]["source"])
    archive = archive.read_bytes()
    (archive_server.directory / "sample.zip").write_bytes(archive[: len(archive) // 2])
    with params_patched(project, {"data": {"source": f"{archive_server.url}/sample.zip"}}):
        done = run(["dvc", "repro", "download"], project, check=False)
        [line] = error_lines(done)
        assert "the download is truncated or damaged and is deleted" in line
        assert not list((project / "data/downloads").glob("*sample.zip*"))
        (archive_server.directory / "sample.zip").write_bytes(archive)  # the source is good again
        fetched = typed(named_command(line), project)
        assert ran_stages(fetched.stdout) == ["download"]


@pytest.mark.extended
def test_a_stage_whose_outputs_dvc_removed_names_the_checkout_that_restores_them(project):
    before = snapshot(project, ["data/split.csv"])
    with params_patched(project, {"split": {"train": 10_000}}):
        done = run(["dvc", "repro", "split"], project, check=False)
    [line] = error_lines(done)
    assert line.endswith("; `dvc checkout split` restores its last outputs"), line
    assert not (project / "data/split.csv").exists()  # cached: DVC removed it
    typed(named_command(line.rpartition(";")[2]), project)
    assert snapshot(project, ["data/split.csv"]) == before


@pytest.mark.extended
def test_a_damaged_model_is_restored_by_the_command_its_message_names(project, tmp_path):
    import numpy as np

    from tests.helpers.synthetic import synthetic_image

    model = project / "models/baseline.keras"
    good = model.read_bytes()
    model.write_bytes(good[: len(good) // 2])
    photo = tmp_path / "cat.jpg"
    synthetic_image("cat", 64, np.random.default_rng(0)).save(photo)
    done = run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "predict",
            "--model",
            "models/baseline.keras",
            str(photo),
        ],
        project,
        check=False,
    )
    [line] = error_lines(done)
    restore = named_command(line)
    assert restore == "dvc checkout --force baseline", line
    typed(restore, project)
    assert model.read_bytes() == good
    assert run(["dvc", "status", "baseline"], project).stdout.strip().endswith("up to date.")


@pytest.mark.extended
def test_the_project_reruns_a_changed_stage_and_is_then_up_to_date(project):
    """persist changes nothing of when a stage reruns: a changed param reruns it, then all is
    up to date."""
    # a changed param (and a short training, where the first repro trained 3 epochs)
    with params_patched(project, {"train": {"baseline": {"epochs": 1}}}):
        done = run(["dvc", "repro", "baseline"], project)
        assert ran_stages(done.stdout) == ["baseline"]
        assert run(["dvc", "status", "baseline"], project).stdout.strip().endswith("up to date.")
    assert ran_stages(run(["dvc", "repro", "baseline"], project).stdout) == ["baseline"]
    assert run(["dvc", "status", "baseline"], project).stdout.strip().endswith("up to date.")
