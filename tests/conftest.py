"""The fixtures every test module can use; the run order is tests/run_order.py's."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from tests.helpers.project import NO_ANALYTICS, TrainedProject, copy_project
from tests.helpers.servers import ArchiveServer
from tests.helpers.tracking import new_stores_from_a_template
from tests.helpers.trained import SharedBuild

# the order the tests reach the xdist workers, and `--reverse`
pytest_plugins = ["tests.run_order"]

# and for the processes the tests start without command_env (the build, Ray, MLflow servers)
os.environ.update(NO_ANALYTICS)
# One thread per TensorFlow process, in the workers and every process they start: the workers
# already fill the cores, and TensorFlow's pools, each sized to every core, spend what they
# wait on a busy core spinning. A value set in the shell stays.
for _pool in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
    os.environ.setdefault(_pool, "1")

# CFS weight 335 against the build's 1024: the build gets the larger share of a core, and
# the tests that wait beside it (the Ray sweep's) still get enough of theirs. Where the kernel
# groups processes by session (Linux's autogroup), the builder's own session gets a group's
# share whatever the niceness.
BUILD_HEADSTART_NICENESS = 5


@pytest.fixture(scope="session", autouse=True)
def shared_build(request, tmp_path_factory) -> SharedBuild | None:
    """Starts the build of the trained project as this worker's session begins, if any of its
    collected tests needs it (tests/helpers/trained.py: one build for every worker)."""
    if not any("trained_project" in item.fixturenames for item in request.session.items):
        yield None
        return
    # under xdist each worker's basetemp is a folder of the run's own (popen-gwN)
    run_root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        run_root = run_root.parent
    build = SharedBuild(run_root / "trained-build")
    # The build is the slow tier's critical path: the tests overlapping it (this worker and the
    # processes it starts) yield it the CPU. A builder started before this line keeps niceness 0.
    os.nice(BUILD_HEADSTART_NICENESS)
    yield build
    build.close()


@pytest.fixture(scope="session")
def trained_project(shared_build, tmp_path_factory) -> TrainedProject:
    """The tiny real project (tests/helpers/project.py), `dvc repro`ed once per test run: every
    stage on VGG16, a real MLflow store. This worker's tests read one copy of it; a
    test that changes it takes `project_copy` instead."""
    return shared_build.copy(tmp_path_factory.mktemp("trained") / "project")


@pytest.fixture
def project_copy(trained_project, tmp_path) -> Path:
    """A copy of the trained project of this test's own, to change as it likes."""
    return copy_project(trained_project.project, tmp_path / "project")


@pytest.fixture
def archive_server(tmp_path):
    directory = tmp_path / "served"
    directory.mkdir()
    server = ArchiveServer(directory)
    # poll_interval: shutdown() waits up to one interval (0.5 s by default, per test)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session", autouse=True)
def migrated_store_template(tmp_path_factory) -> Path:
    """New MLflow stores in this process start migrated (tests/helpers/tracking.py); a test
    copies the template to where a child process will make its store."""
    return new_stores_from_a_template(tmp_path_factory.mktemp("store-template"))


# what mlflow.set_tracking_uri and set_experiment write to os.environ, for child processes
MLFLOW_ENVIRONMENT = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")


@pytest.fixture(autouse=True)
def no_inherited_mlflow_store(request, monkeypatch):
    """The trained project's readers start processes (stages, `predict`) on its own store: none
    of the MLflow variables that an in-process test of the same worker left in os.environ."""
    if "trained_project" in request.fixturenames:
        for name in MLFLOW_ENVIRONMENT:
            monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def float32_after_each_test():
    """Tests that train in-process set Keras' global dtype policy (mixed_precision: auto is
    bfloat16 on CPUs with bfloat16 units); the next test starts from float32 again."""
    yield
    if "keras" in sys.modules:
        sys.modules["keras"].mixed_precision.set_global_policy("float32")
