"""A fresh copy of the project run stage by stage: seconds, peak RSS and scores of each stage.

    python -m benchmarks.repro [--args experiments/fast.args ...] [-S key=value ...]
        [--stages STAGE ...] [--dvcfile mnist/dvc.yaml] [--head-change]
        [--fast-path {frozen_aug,finetune} [--copies K]] [--against OTHER.json]
        [--archive ../shared/data/dogs-vs-cats-6000.zip] [--out reports/benchmark-repro.md] [--keep]

In a fresh git + DVC copy of the project (harness/project.py), `data.source` the archive and
only the offline conv base (an -S may add vgg16 back), then the params of each --args file
(as `dvc exp run $(cat FILE)` reads it) and of each -S:
1. the matmul limit of this machine, float32 and bfloat16;
2. every stage of the dvcfile, or of the --stages and what they need, upstream first, each as
   `dvc repro --single-item <stage>`: wall seconds, peak RSS of its process tree, the load
   average after it; a training stage's test, best and final validation accuracy, seconds per
   epoch and the book's accuracy; the seconds of each kind of figure a visualize stage prints;
   then one more `dvc repro` of the same, which must run nothing;
3. with every stage of dvc.yaml run: the seconds from prepared data against the 30-minute
   target, scaled by the bfloat16 limit measured here;
4. --head-change: features' learning rate doubled, what `dvc repro` reruns and its seconds;
5. --fast-path M: model M again with `cached_copies: K` (default: its epochs), outside DVC,
   against its stage's run in 2 (on the fly, unless the params cache copies already);
6. --against: each training stage's seconds per epoch and largest validation-accuracy gap
   against another run of this script (its JSON), e.g. one with mixed precision off.
A relative path in a `*.source` param is taken from here. Figures go to --out (and .json
beside it) and to stdout. Nothing asserts.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

from benchmarks import common
from benchmarks.common import (
    archive_project,
    command,
    machine,
    matmul_limit,
    table,
    write_report,
)
from harness.project import args_file_assignments, dotted_patch, ran_stages, run, update_params
from pipeline.training import precision

TARGET_S, TARGET_GFLOPS = 30 * 60, 800.0  # the target: 30 minutes where bfloat16 reaches 800
# The book's test accuracies (Deep Learning with Python, 1st ed., ch. 5; VGG16's for the
# pretrained models)
BOOK = {"baseline": 0.70, "augmented": 0.82, "features": 0.90, "frozen_aug": 0.96, "finetune": 0.97}
DATA_STAGES = ("download", "split", "prepare")


def stages_to_run(project: Path, dvcfile: str, targets: list[str]) -> list[str]:
    """The dvcfile's stages in its order (upstream first), or only the targets' ancestors."""
    stages = run(["dvc", "stage", "list", "--name-only", dvcfile], project).stdout.split()
    if not targets:
        return stages
    needed = set()
    for target in targets:
        dot = run(["dvc", "dag", "--dot", target], project).stdout
        needed |= set(re.findall(r'^"([^"]+)";$', dot, re.M))
    return [s for s in stages if s in needed]


def scores(project: Path, metrics: Path) -> dict:
    """A training run's scores from its metrics file, and its history and timing beside it."""
    name, reports = metrics.stem, metrics.parent.parent
    row = json.loads(metrics.read_text())[name]
    row = {k: row.get(k) for k in ("test_accuracy", "best_val_accuracy", "final_val_accuracy")}
    if (timing := reports / f"timing/{name}.json").is_file():
        row |= json.loads(timing.read_text())  # train_seconds, seconds_per_epoch
    if (history := reports / f"history/{name}.csv").is_file():
        with history.open() as rows:
            row["val_accuracy"] = [float(r["val_accuracy"]) for r in csv.DictReader(rows)]
    return row


def run_stage(project: Path, stage: str) -> dict:
    def metrics() -> dict:
        return {p: p.stat().st_mtime for p in project.glob("**/reports/metrics/*.json")}

    before = metrics()
    result = command(["dvc", "repro", "--single-item", stage], project)
    load = round(os.getloadavg()[0], 1)
    row = {"seconds": result["seconds"], "peak_rss_mb": result["peak_rss_mb"], "load": load}
    if written := [p for p, mtime in metrics().items() if before.get(p) != mtime]:
        row |= scores(project, written[0]) | {"book": BOOK.get(stage.split("@")[0])}
    if line := re.search(r": (.*); wrote", result["output"]):  # a visualize stage's figures
        row["figures"] = ", ".join(f"{k} {v}" for k, v in re.findall(r"(\w+) ([\d.]+) s", line[1]))
    print(stage, {k: v for k, v in row.items() if k != "val_accuracy"}, flush=True)
    return row


def param(project: Path, dotted: str):
    value = yaml.safe_load((project / "params.yaml").read_text())
    for key in dotted.split("."):
        value = value[key]
    return value


def head_change(project: Path, stages: dict, base: str) -> dict:
    rate = param(project, "train.features.learning_rate") * 2
    update_params(project, dotted_patch(f"train.features.learning_rate={rate}"))
    result = command(["dvc", "repro"], project)
    first = round(sum(r["seconds"] for s, r in stages.items() if s.endswith(f"@{base}")), 1)
    ran, seconds = ran_stages(result["output"]), result["seconds"]
    return {
        "ran": ran,
        "seconds": seconds,
        "first_base_seconds": first,
        "fraction": seconds / first,
    }


def fast_path(project: Path, model: str, base: str, copies: int | None, on_the_fly: dict) -> dict:
    """`model` trained again with cached_copies, outside DVC, beside its stage's run."""
    epochs, before = (param(project, f"train.{model}.{k}") for k in ("epochs", "cached_copies"))
    copies = copies or epochs
    update_params(project, dotted_patch(f"train.{model}.cached_copies={copies}"))
    command([sys.executable, "-m", "pipeline", "train", model, "--base", base], project)
    cached = scores(project, project / f"reports/metrics/{model}-{base}.json")
    runs = {f"cached_copies: {before} (the stage)": on_the_fly, f"cached_copies: {copies}": cached}
    return {"model": f"{model}@{base}", "epochs": epochs, "runs": runs}


def against(stages: dict, other: dict) -> list[list]:
    """Per training stage in both runs: seconds per epoch, their ratio, the largest gap
    between the validation-accuracy curves and its epoch."""
    rows = []
    for stage, ours in stages.items():
        theirs = other["stages"].get(stage, {})
        if "val_accuracy" in ours and "val_accuracy" in theirs:
            pairs = zip(ours["val_accuracy"], theirs["val_accuracy"], strict=False)
            gaps = [abs(a - b) for a, b in pairs]
            there, here = theirs["seconds_per_epoch"], ours["seconds_per_epoch"]
            gap = max(gaps)
            rows.append(
                [stage, there, here, f"{there / here:.2f}x", f"{gap:.4f}", gaps.index(gap) + 1]
            )
    return rows


COLUMNS = {  # the stage table: header, key in a stage's row
    "peak RSS (MB)": "peak_rss_mb",
    "load (1 min)": "load",
    "test accuracy": "test_accuracy",
    "best val.": "best_val_accuracy",
    "final val.": "final_val_accuracy",
    "s/epoch": "seconds_per_epoch",
    "book": "book",
    "figures (s)": "figures",
}


def report(figures: dict) -> list[str]:
    limit, stages, again = figures["matmul_gflops"], figures["stages"], figures["again"]
    rows = [[s, r["seconds"], *(r.get(k) for k in COLUMNS.values())] for s, r in stages.items()]
    parts = [
        "# Benchmark: the project stage by stage",
        f"`{figures['command']}` on {figures['machine']}; params: {' '.join(figures['params'])}. "
        f"Matmul limit {limit['float32']:.0f} GFLOP/s float32, {limit['bfloat16']:.0f} bfloat16; "
        f"`mixed_precision: auto` picks {figures['auto'][0]} here ({figures['auto'][1]}).",
        table(["stage", "seconds", *COLUMNS], rows),
        f"All stages: {sum(r['seconds'] for r in stages.values()):.1f} s. `dvc repro` again ran "
        f"{', '.join(again['ran']) or 'nothing'} in {again['seconds']} s.",
    ]
    if "schedule_seconds" in figures:
        s, target = figures["schedule_seconds"], figures["target_seconds"]
        parts.append(
            f"From prepared data (every stage after `prepare`): {s:.0f} s ({s / 60:.1f} min) "
            f"against {target / 60:.1f} min (30 min at {TARGET_GFLOPS:.0f} GFLOP/s bfloat16, "
            f"scaled by the {limit['bfloat16']:.0f} measured here): {s / target:.2f}x the target."
        )
    if head := figures.get("head_change"):
        parts.append(
            f"Head-only change (train.features.learning_rate x2): `dvc repro` ran "
            f"{', '.join(head['ran'])} in {head['seconds']} s, {head['fraction']:.1%} of the "
            f"first run's {head['first_base_seconds']} s for the base's stages."
        )
    if fast := figures.get("fast_path"):
        keys = ("test_accuracy", "best_val_accuracy", "train_seconds")
        rows = [[name, *(r.get(k) for k in keys)] for name, r in fast["runs"].items()]
        headers = [fast["model"], "test accuracy", "best validation", "training seconds"]
        parts += [f"{fast['model']}, {fast['epochs']} epochs, as the stage ran and cached:"]
        parts += [table(headers, rows)]
    if rows := figures.get("against"):
        headers = ["stage", "s/epoch there", "s/epoch here", "speed-up here", "largest val. gap"]
        parts += [f"Against `{figures['against_run']}`:", table([*headers, "at epoch"], rows)]
    return parts


def arguments() -> argparse.Namespace:
    parser = common.parser("benchmarks.repro", __doc__, "benchmark-repro.md")
    parser.add_argument("--args", type=Path, action="append", default=[], help="an args file")
    parser.add_argument("-S", dest="overrides", action="append", default=[], metavar="KEY=VAL")
    parser.add_argument("--stages", nargs="+", default=[], help="these and what they need")
    parser.add_argument("--dvcfile", default="dvc.yaml")
    parser.add_argument("--base", default="efficientnet_lite0", help="for the two options below")
    parser.add_argument("--head-change", action="store_true")
    parser.add_argument("--fast-path", choices=["frozen_aug", "finetune"])
    parser.add_argument("--copies", type=int, help="--fast-path's cached_copies")
    parser.add_argument("--against", type=Path, help="another run's JSON")
    parser.add_argument("--keep", action="store_true", help="keep the project; print its path")
    args = parser.parse_args()
    if args.dvcfile == "dvc.yaml" and not args.archive.is_file():
        raise SystemExit(f"{args.archive} not found: pass --archive")
    args.assignments = [a for f in args.args for a in args_file_assignments(f)] + args.overrides
    for i, assignment in enumerate(args.assignments):  # the copy runs elsewhere
        key, _, value = assignment.partition("=")
        if key.endswith(".source") and Path(value).is_file():
            args.assignments[i] = f"{key}={Path(value).resolve()}"
    return args


def main() -> None:
    args = arguments()
    assignments = args.assignments
    limit = matmul_limit()
    print("matmul limit", limit, flush=True)
    figures = {
        "command": " ".join(["python -m benchmarks.repro", *sys.argv[1:]]),
        "machine": machine(),
        "params": [f"-S {a}" for a in assignments],
        "matmul_gflops": limit,
        "auto": precision.choose("auto", 0, precision.this_cpu_flags()),
    }
    work = Path(tempfile.mkdtemp(prefix="benchmark-repro-"))
    project = archive_project(work, args.archive, assignments)
    stages = {s: run_stage(project, s) for s in stages_to_run(project, args.dvcfile, args.stages)}
    again = command(["dvc", "repro", *(args.stages or [args.dvcfile])], project)
    figures |= {
        "stages": stages,
        "again": {"seconds": again["seconds"], "ran": ran_stages(again["output"])},
    }
    if args.dvcfile == "dvc.yaml" and not args.stages:
        prepared = sum(r["seconds"] for s, r in stages.items() if not s.startswith(DATA_STAGES))
        figures["schedule_seconds"] = round(prepared, 1)
        figures["target_seconds"] = round(TARGET_S * TARGET_GFLOPS / limit["bfloat16"], 1)
    if args.head_change:
        figures["head_change"] = head_change(project, stages, args.base)
    if model := args.fast_path:
        if (on_the_fly := stages.get(f"{model}@{args.base}")) is None:
            raise SystemExit(f"--fast-path {model}: {model}@{args.base} did not run")
        figures["fast_path"] = fast_path(project, model, args.base, args.copies, on_the_fly)
    if args.against:
        other = json.loads(args.against.read_text())
        figures |= {"against_run": other["command"], "against": against(stages, other)}
    write_report(args.out, figures, *report(figures))
    if args.keep:
        print(f"kept {project}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
