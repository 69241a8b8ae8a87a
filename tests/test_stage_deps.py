"""dvc.yaml declares, for every stage, all the code its command can run.

DVC reruns a stage when one of its declared deps changes, and only then: a module the command
imports but the stage does not declare is a change `dvc repro` cannot see, and it would call
models built by old code up to date. Each stage's import closure is found statically from
its command (tests/helpers/closure.py); every module in it must lie in a declared dep.
Stages are resolved with DVC's own API (foreach/matrix expanded as `dvc repro` does).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.closure import command_closure, covered, relative_file
from tests.helpers.project import stale_stages

ROOT = Path(__file__).resolve().parents[1]


def project_stages(root: Path = ROOT) -> list:
    """(name, command, deps) of every stage of the project at `root`, as DVC resolves them:
    both pipelines, dvc.yaml's stages by name, mnist/dvc.yaml's as `mnist/dvc.yaml:<name>`
    (they run from the root, wdir: .., so their deps are named from the root too)."""
    from dvc.repo import Repo

    def name(stage) -> str:  # not stage.addressing: that is relative to this process's cwd
        dvcfile = Path(stage.dvcfile.path).relative_to(root).as_posix()
        return stage.name if dvcfile == "dvc.yaml" else f"{dvcfile}:{stage.name}"

    with Repo(str(root)) as repo:
        return [
            (name(stage), stage.cmd, [str(Path(d.def_path)) for d in stage.deps])
            for stage in repo.index.stages
        ]


STAGES = project_stages()


def closure_files(cmd: str, root: Path = ROOT) -> list[str]:
    return sorted(relative_file(root, m) for m in command_closure(root, cmd).modules)


@pytest.mark.parametrize(("stage", "cmd", "deps"), STAGES, ids=[s[0] for s in STAGES])
def test_every_module_a_stage_can_import_is_a_declared_dep(stage, cmd, deps):
    missing = [path for path in closure_files(cmd) if not covered(path, deps)]
    assert not missing, f"stage {stage}: {', '.join(missing)} not covered by its deps in dvc.yaml"


def test_the_scratch_convnets_do_not_depend_on_the_conv_bases():
    by_name = {name: (cmd, deps) for name, cmd, deps in STAGES}
    for stage in ("baseline", "augmented"):
        cmd, deps = by_name[stage]
        files = closure_files(cmd)
        assert not [f for f in files if "efficientnet_lite0" in f or "bases" in f], stage
        lite0 = "pipeline/models/efficientnet_lite0/lite0.py"
        assert not covered(lite0, deps), f"{stage} declares the Lite0 port"
    for base in ("vgg16", "efficientnet_lite0"):
        files = closure_files(by_name[f"features@{base}"][0])
        assert "pipeline/models/efficientnet_lite0/lite0.py" in files  # bases.py imports it


def test_the_mnist_stages_are_checked_and_import_no_conv_base():
    by_name = {name: (cmd, deps) for name, cmd, deps in STAGES}
    mnist = [name for name in by_name if name.startswith("mnist/dvc.yaml:")]
    assert "mnist/dvc.yaml:mnist_convnet@max-valid-1" in mnist and len(mnist) >= 5
    for stage in mnist:
        files = closure_files(by_name[stage][0])
        assert not [f for f in files if "efficientnet_lite0" in f or "bases" in f], stage


def test_plain_dvc_repro_never_runs_the_mnist_pipeline():
    """`dvc repro` reproduces dvc.yaml (its default target) and what its stages depend on:
    no stage of mnist/dvc.yaml is connected to one of dvc.yaml's, either way."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        graph = repo.index.graph.to_undirected()
        for stage in graph:
            if stage.addressing.startswith("mnist/dvc.yaml:"):
                linked = nx.node_connected_component(graph, stage)
                assert all(s.addressing.startswith("mnist/") for s in linked), stage


def test_the_closure_follows_lazy_imports_inside_functions(tmp_path):
    from tests.helpers.closure import follow

    package = tmp_path / "pipeline"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pipeline.sub import b\n")
    (package / "sub" / "b.py").write_text("from . import c\n")
    (package / "sub" / "c.py").write_text("import json\n")
    (package / "unused.py").write_text("")
    assert follow(tmp_path, {"pipeline.a"}) == {
        "pipeline", "pipeline.a", "pipeline.sub", "pipeline.sub.b", "pipeline.sub.c"
    }  # fmt: skip


def test_every_training_stage_declares_the_params_its_run_logs():
    """The MLflow params of a run come from its Job's typed settings; dvc.yaml's `params:`
    must name every section they hold (else a changed value would not rerun the stage)."""
    import yaml

    from pipeline.core import catalog
    from pipeline.core.params import load_params
    from pipeline.tracking.store import flatten
    from pipeline.training.job import settings

    params = load_params(ROOT / "params.yaml")
    raw = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for model in catalog.every_model(params):
        declared = raw[model.kind.name].get("params") or raw[model.kind.name]["do"]["params"]
        declared = [key.replace("${key}", model.base or "") for key in declared]
        job_settings = settings(params, model)
        logged = {"train": {"seed": 1, "runtime": 1, model.kind.name: 1}}
        if job_settings.augmentation:
            logged["augmentation"] = 1
        for key in flatten(logged):
            assert any(key == d or key.startswith(d + ".") for d in declared), (model.stage, key)


# One module of each folder (and the CLI): an edit to it must make stale exactly the stages
# whose import closure holds it. Each is imported, whole or in part, by every stage that
# declares its folder, so DVC's folder deps give the exact set (an edit to, say,
# reporting/compare.py also reruns the stages that declare pipeline/reporting: folder deps
# err on the side of a needless rerun, never of a stale model).
EDITED = [
    "pipeline/cli.py",
    "pipeline/core/errors.py",
    "pipeline/data/dataset.py",
    "pipeline/models/augment.py",
    "pipeline/models/efficientnet_lite0/lite0.py",
    "pipeline/training/runtime.py",
    "pipeline/tracking/store.py",
    "pipeline/serving/inference.py",
    "pipeline/reporting/plots.py",
    "pipeline/visualize/gradcam.py",
]


@pytest.mark.extended
@pytest.mark.slow
def test_an_edit_to_a_module_makes_stale_exactly_the_stages_that_run_it(project_copy):
    project = project_copy
    assert stale_stages(project) == set()
    holders = {
        stage: set(closure_files(cmd, project))
        for stage, cmd, _ in project_stages(project)
        if ":" not in stage  # dvc.yaml's own (stale_stages)
    }
    for module in EDITED:
        path = project / module
        original = path.read_bytes()
        path.write_bytes(original + b"# an edit\n")
        try:
            stale = stale_stages(project)
        finally:
            path.write_bytes(original)
        expected = {stage for stage, files in holders.items() if module in files}
        assert stale == expected, (module, sorted(stale ^ expected))
        if "efficientnet_lite0" in module:
            assert not stale & {"baseline", "augmented"}
        print(f"{module}: {len(stale)} stale: {', '.join(sorted(stale))}")  # pytest -s
