from __future__ import annotations

import os
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers.project import NO_ANALYTICS, TrainedProject, copy_project
from tests.helpers.servers import ArchiveServer
from tests.helpers.trained import SharedBuild

# and for the processes the tests start without command_env (the build, Ray, MLflow servers)
os.environ.update(NO_ANALYTICS)

TRAINED = "trained_project"
COPY = "project_copy"  # a test that changes a copy of the trained project
# CFS weight 335 against the build's 1024; 15 starved the Ray sweep test (77 -> 231 s)
BUILD_HEADSTART_NICENESS = 5


@pytest.fixture(scope="session", autouse=True)
def shared_build(request, tmp_path_factory) -> SharedBuild | None:
    """Starts the build of the trained project as this worker's session begins, if any of its
    collected tests needs it (tests/helpers/trained.py: one build for every worker)."""
    if not any(TRAINED in item.fixturenames for item in request.session.items):
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
    stage, both conv bases, a real MLflow store. This worker's tests read one copy of it; a
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


@pytest.fixture(autouse=True)
def float32_after_each_test():
    """Tests that train in-process set Keras' global dtype policy (mixed_precision: auto is
    bfloat16 on CPUs with bfloat16 units); the next test starts from float32 again."""
    yield
    if "keras" in sys.modules:
        sys.modules["keras"].mixed_precision.set_global_policy("float32")


def pytest_addoption(parser):
    parser.addoption(
        "--reverse",
        action="store_true",
        help="run the tests in reverse order (a check that no test depends on another's run)",
    )


def pytest_configure(config):
    # xdist hands out its work units (a group, or a test) in the order _RunOrder leaves them,
    # not reordered by its own rule (most tests first), which put the Ray sweep's test, a
    # unit of one, behind every group
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False
    config.pluginmanager.register(_RunOrder(), "run-order")


# tryfirst: xdist's worker reads the xdist_group marks in its own pytest_collection_modifyitems,
# which otherwise runs before this one and sees none
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    for item in items:
        if group := _module_fixture_group(item):
            item.add_marker(pytest.mark.xdist_group(group))


class _RunOrder:
    """The order of the work units (a group, or a test) xdist hands to its workers."""

    @pytest.hookimpl(trylast=True)  # after `-m` has deselected what does not run
    def pytest_collection_modifyitems(self, config, items):
        unit = {item.nodeid: _module_fixture_group(item) or item.nodeid for item in items}
        size = Counter(unit.values())
        reads = {unit[item.nodeid] for item in items if TRAINED in item.fixturenames}
        waits = {unit[item.nodeid] for item in items if item.get_closest_marker("waits")}
        copies = {unit[item.nodeid] for item in items if COPY in item.fixturenames}

        # First the units that wait (on a Ray cluster's start, say), so other tests' work fills
        # their waits: the Ray sweep started late was the slow tier's idle last 90 s. Then the
        # largest units (most tests) first, as xdist orders them itself. Last the units that
        # read the trained project: its build (started as the session begins) overlaps every
        # other test, and then they spread over the workers; of those, first the ones that
        # change a copy and rerun stages (10-35 s each), so that the tier ends on short reads
        # and not on one worker still retraining (the last 30 s ran at half load that way).
        # Stable: file order within a rank.
        def rank(item):
            u = unit[item.nodeid]
            return u in reads, u not in waits, u not in copies, -size[u]

        items.sort(key=rank)
        if config.getoption("--reverse"):
            items.reverse()


def _module_fixture_group(item) -> str | None:
    """Under `pytest -n N --dist loadgroup` (README: tests), the tests of a module that share a
    module-scoped fixture (its own trained model, say) run on one worker, so it is built
    once; the rest spread over the workers. The session's trained project is built once
    for every worker (tests/helpers/trained.py), so its readers need no group."""
    scopes = {
        fixturedef.scope
        for fixturedefs in item._fixtureinfo.name2fixturedefs.values()
        for fixturedef in fixturedefs
    }
    if "module" in scopes:
        return item.module.__name__
    return None
