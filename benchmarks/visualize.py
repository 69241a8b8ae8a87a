"""Seconds per model for each kind of figure of the visualize stages, and for all of them.

    python benchmarks/visualize.py [--project DIR] [--archive ../shared/data/dogs-vs-cats-6000.zip]

With --project, a project whose models are trained: its visualize stages are run there.
Without, a fresh git + DVC copy of the project on the archive, with both default conv
bases (VGG16 with `weights: random`: it costs what the ImageNet weights cost, and those
cannot be downloaded offline) and every model trained briefly (QUICK: how long a model
trained does not change what drawing its figures costs); its directory is printed.
Each visualize stage runs as `dvc repro --single-item <stage>`, one process per model as in
the pipeline: its wall seconds (process start, TensorFlow import, model load included) and
the seconds of each kind of figure that the stage prints. Figures go to
reports/benchmark-visualize.md (and .json) and to stdout. Nothing asserts.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
from pathlib import Path

import yaml
from repro import (
    DEFAULT_ARCHIVE,
    ROOT,
    command,
    edit_params,
    make_benchmark_project,
    write_figures,
)

BASES = ("vgg16", "efficientnet_lite0")
VGG16_RANDOM = "{image_size: 150, weights: random, pooling: flatten, finetune_from: block5_conv1}"
QUICK = [
    *(f"train.{m}.epochs=1" for m in ("baseline", "augmented", "frozen_aug", "finetune")),
    *(f"train.{m}.steps_per_epoch=20" for m in ("baseline", "augmented")),
    *(f"train.{m}.steps_per_epoch=10" for m in ("frozen_aug", "finetune")),
    "train.features.epochs=3",
]
KINDS = ("load", "gradcam", "mistakes", "activations", "filters")


def stages(project: Path) -> list[tuple[str, str]]:
    """(visualize stage, model) for every trained model of the project's params."""
    bases = yaml.safe_load((project / "params.yaml").read_text())["pretrained"]["bases"]
    pairs = [(f"visualize@{m}", m) for m in ("baseline", "augmented")]
    for kind in ("features", "frozen_aug", "finetune"):
        pairs += [(f"visualize_{kind}@{base}", f"{kind}-{base}") for base in bases]
    return pairs


def quick_project(archive: Path) -> Path:
    work = Path(tempfile.mkdtemp(prefix="benchmark-visualize-"))
    project = make_benchmark_project(work, archive, QUICK)
    edit_params(project, f"pretrained.bases.vgg16={VGG16_RANDOM}")
    training = [model.replace("-", "@", 1) for _, model in stages(project)]  # features@vgg16
    print(f"training quick models in {project}", flush=True)
    command(["dvc", "repro", *training], project)
    return project


def measure(project: Path) -> dict:
    rows = {}
    for stage, model in stages(project):
        result = command(["dvc", "repro", "--single-item", "--force", stage], project)
        line = re.search(rf"visualize {re.escape(model)}: (.*); wrote", result["output"])
        if line is None:
            raise SystemExit(f"{stage}: no timing line in its output:\n{result['output'][-2000:]}")
        kinds = dict(re.findall(r"(\w+) ([\d.]+) s", line.group(1)))
        rows[model] = {
            **{kind: float(kinds[kind]) for kind in KINDS if kind in kinds},
            "stage_seconds": result["seconds"],
            "peak_rss_mb": result["peak_rss_mb"],
        }
        print(model, rows[model], flush=True)
    return rows


def markdown(figures: dict) -> str:
    rows = figures["models"]
    lines = [
        "# Benchmark: the visualize stages",
        "",
        f"`python benchmarks/visualize.py` on {figures['machine']} (1-minute load average "
        f"{figures['load_average'][0]} before, {figures['load_average'][1]} after), params "
        "`visualize` as shipped; seconds. The stage column is the whole `dvc repro "
        "--single-item` process.",
        "",
        "| model | " + " | ".join(KINDS) + " | stage | peak RSS (MB) |",
        "| --- |" + " --- |" * (len(KINDS) + 2),
    ]
    for model, r in rows.items():
        cells = [str(r.get(kind, "")) for kind in KINDS]
        lines.append(
            f"| {model} | {' | '.join(cells)} | {r['stage_seconds']} | {r['peak_rss_mb']} |"
        )
    total = sum(r["stage_seconds"] for r in rows.values())
    lines += ["", f"Every figure of every model: {total:.1f} s."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, help="a project with trained models")
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--out", type=Path, default=ROOT / "reports/benchmark-visualize.md")
    args = parser.parse_args()
    if args.project is None and not args.archive.is_file():
        raise SystemExit(f"{args.archive} not found: pass --archive or --project")
    project = args.project.resolve() if args.project else quick_project(args.archive)
    figures = {"machine": f"{os.uname().machine}, {os.cpu_count()} cores", "project": str(project)}
    load_before = os.getloadavg()[0]
    figures["models"] = measure(project)
    # Other work on the machine slows every number: say how busy it was.
    figures["load_average"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
    write_figures(args.out, figures, markdown(figures))
    print(markdown(figures))


if __name__ == "__main__":
    main()
