from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from tests.helpers.project import TrainedProject, copy_project, run, tiny_project
from tests.helpers.servers import ArchiveServer


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory) -> TrainedProject:
    """The tiny real project (tests/helpers/project.py), `dvc repro`ed once per test run: every
    stage, both conv bases, a real MLflow store. Tests that only read it share it; a test
    that changes it takes `project_copy` instead."""
    root = tmp_path_factory.mktemp("trained")
    # deterministic: a forced rerun must write the same bytes (test_reproducible_bytes.py)
    project = tiny_project(root, {"train": {"runtime": {"deterministic": True}}})
    result = run(["dvc", "repro"], project)
    (root / "first-repro.log").write_text(result.stdout + result.stderr)
    return TrainedProject(project, result.stdout)


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


# tryfirst: xdist's worker reads the xdist_group marks in its own pytest_collection_modifyitems,
# which otherwise runs before this one and sees none
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    if config.getoption("--reverse"):
        items.reverse()
    for item in items:
        if group := _shared_fixture_group(item):
            item.add_marker(pytest.mark.xdist_group(group))


def _shared_fixture_group(item) -> str | None:
    """Under `pytest -n 2 --dist loadgroup` (README: tests), tests that share an expensive
    fixture run on one worker, so it is built once: the trained project (session) on one
    worker, a module's own trained model on one worker, and the rest spread over both."""
    if "trained_project" in item.fixturenames:
        return "trained_project"
    scopes = {
        fixturedef.scope
        for fixturedefs in item._fixtureinfo.name2fixturedefs.values()
        for fixturedef in fixturedefs
    }
    if "module" in scopes:
        return item.module.__name__
    return None
