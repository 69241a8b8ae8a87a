"""`pytest -n 2 --dist loadgroup` builds a module's expensive fixture on one worker only if the
groups tests/run_order.py assigns reach xdist's scheduler. With pytest 9.2 they silently do
not (pytest-dev/pytest-xdist#1386): every test still passes, and the fixtures are built on
both workers. The readers of the session's trained project carry no group: it is built once
for all workers (tests/helpers/trained.py), and they spread over them. This runs the
project's own grouping hook under xdist and reads the groups back from the node ids xdist
reports."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONFTEST = """
import pytest
# the hooks under test (the grouping reads the `--reverse` option it adds)
from tests.run_order import pytest_addoption, pytest_collection_modifyitems

@pytest.fixture(scope="session")
def trained_project():
    return "built"

@pytest.fixture(scope="module")
def module_model():
    return "trained"
"""

TESTS = """
import os, pathlib, pytest

@pytest.fixture(autouse=True)
def report_node_id(request):  # the id as the worker ran it: xdist appends "@group"
    with open(pathlib.Path(os.environ["NODE_IDS"]), "a") as ids:
        ids.write(request.node.nodeid + "\\n")

def test_reads_project_1(trained_project): pass
def test_reads_project_2(trained_project): pass
def test_module_model_1(module_model): pass
def test_module_model_2(module_model): pass
def test_plain_1(): pass
def test_plain_2(): pass
"""


def test_shared_fixtures_are_grouped_on_one_worker(tmp_path):
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_grouped.py").write_text(TESTS)
    node_ids = tmp_path / "node-ids.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NODE_IDS": str(node_ids)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider"]
        + ["-q", "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    ran = dict(re.findall(r"^test_grouped\.py::(\w+?)(@\w+)?$", node_ids.read_text(), re.M))
    assert ran == {
        "test_reads_project_1": "",
        "test_reads_project_2": "",
        "test_module_model_1": "@test_grouped",
        "test_module_model_2": "@test_grouped",
        "test_plain_1": "",
        "test_plain_2": "",
    }, node_ids.read_text()
