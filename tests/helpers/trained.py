"""The tiny trained project of a test run, built once however many xdist workers run.

`dvc repro` of the tiny project is the slow tier's most expensive step and CI's critical
path: every stage of the pipeline on one conv base, 17 stage processes in sequence, most of
their time TensorFlow's, Keras' and MLflow's imports, on one core. Each worker that has
tests needing it starts a builder process as its session begins (tests/conftest.py), so the
build overlaps the tests that do not need it; the builders take one file lock, and the first
to hold it builds while the others wait and find it done. tests/run_order.py hands the tests
that need the project out last, so a worker reaches them as late as it can; they then spread
over every worker instead of queueing on one.

The build is never changed afterwards: each worker reads a copy of its own
(`trained_project`) and each test that changes it takes another (`project_copy`).

Why a process and not a thread: the build's commands read the environment as they start,
and tests set variables such as MLFLOW_TRACKING_URI in-process while it runs.

    python -m tests.helpers.trained ROOT    # what each builder runs
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from tests.helpers.project import ROOT, TrainedProject, copy_project, run, tiny_project

# deterministic: a forced rerun must write the same bytes (test_reproducible_bytes.py);
# mixed_precision on: bfloat16 on any CPU, so the build is also the runtime matrix's CPU
# bfloat16 combination (tests/test_runtime_matrix.py)
BUILD_PATCH = {"train": {"runtime": {"deterministic": True, "mixed_precision": "on"}}}
BUILD_TIMEOUT_S = 3600


def build_once(root: Path) -> None:
    """Build the trained project under `root` unless a builder before this one did."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when this process exits, whatever happens
        if (root / "result.json").exists():
            return
        # a builder killed mid-build (its worker interrupted) leaves a partial project
        shutil.rmtree(root / "project", ignore_errors=True)
        (root / "sample.zip").unlink(missing_ok=True)
        project = tiny_project(root, BUILD_PATCH)
        result = run(["dvc", "repro"], project, check=False)
        (root / "first-repro.log").write_text(result.stdout + result.stderr)
        # both streams: the stages' own lines (TensorFlow's among them) go to stderr
        outcome = {"returncode": result.returncode, "stdout": result.stdout + result.stderr}
        tmp = root / "result.json.tmp"
        tmp.write_text(json.dumps(outcome))
        tmp.rename(root / "result.json")  # last: its presence says the build ended


class SharedBuild:
    """One worker's handle on the run's build in `root` (a folder every worker sees)."""

    def __init__(self, root: Path):
        self.root = root
        self.log = root.parent / f"{root.name}-builder-{os.getpid()}.log"
        with open(self.log, "ab") as log:
            self.builder = subprocess.Popen(
                [sys.executable, "-m", "tests.helpers.trained", str(root)],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,  # its own group: close() stops `dvc repro` with it
            )

    def result(self) -> TrainedProject:
        """Wait for the build; the trained project (the build itself: copy it, never change it)."""
        if self.builder.wait(timeout=BUILD_TIMEOUT_S):
            raise RuntimeError(
                f"building the trained project failed:\n{self.log.read_text()[-4000:]}"
            )
        outcome = json.loads((self.root / "result.json").read_text())
        if outcome["returncode"]:
            log = (self.root / "first-repro.log").read_text()
            raise AssertionError(f"dvc repro of the tiny project failed:\n{log[-6000:]}")
        return TrainedProject(self.root / "project", outcome["stdout"])

    def copy(self, dest: Path) -> TrainedProject:
        """A copy of the trained project at `dest`, with what its first repro printed."""
        built = self.result()
        return TrainedProject(copy_project(built.project, dest), built.output)

    def close(self) -> None:
        """At the session's end: let a build another worker may still need finish; if the
        session is interrupted meanwhile, stop it (the next builder starts it afresh)."""
        try:
            self.builder.wait(timeout=BUILD_TIMEOUT_S)
        except BaseException:
            os.killpg(self.builder.pid, signal.SIGKILL)
            self.builder.wait()
            raise


if __name__ == "__main__":
    build_once(Path(sys.argv[1]))
