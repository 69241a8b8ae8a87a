"""The order the tests reach pytest-xdist's workers (a plugin: tests/conftest.py loads it).

Under `--dist loadgroup` the tests of a module that share a module-scoped fixture form one
group, so one worker builds that fixture once; every other test is a unit of its own. The
units are handed out in this order, not xdist's own (most tests first): the tests marked
`waits` first, so other tests' work fills their waits; then the larger units; last the
readers of the trained project, whose build overlaps everything before them, and among
those first the ones that change a copy and rerun stages, so the run ends on short reads
rather than one worker retraining. `--reverse` turns the order round.
"""

from __future__ import annotations

from collections import Counter

import pytest

TRAINED = "trained_project"
COPY = "project_copy"  # a test that changes a copy of the trained project


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

        # First the units that wait (on a Ray cluster's start, say), so that other tests'
        # work fills their waits rather than leaving the tier's end idle. Then the largest
        # units (most tests) first, as xdist orders them itself. Last the units that read the
        # trained project: its build (started as the session begins) overlaps every other
        # test, and then they spread over the workers; of those, first the ones that change a
        # copy and rerun stages, so that the tier ends on short reads and not on one worker
        # still retraining at half load. Stable: file order within a rank.
        def rank(item):
            u = unit[item.nodeid]
            return u in reads, u not in waits, u not in copies, -size[u]

        items.sort(key=rank)
        if config.getoption("--reverse"):
            items.reverse()


def _module_fixture_group(item) -> str | None:
    """Under `pytest -n N --dist loadgroup` (docs/testing.md), the tests of a module that share
    a module-scoped fixture (its own trained model, say) run on one worker, so it is built
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
