"""The book's whole schedule as a user runs it, stage by stage, against the 30-minute target.

    python benchmarks/schedule.py [--args experiments/fast.args] [-S key=value ...]
                                  [--archive ../shared/data/dogs-vs-cats-6000.zip]

In a fresh git + DVC copy of the project (workspace.py) with `data.source` set to the
archive and the params of `--args` (an experiments/*.args file, as `dvc exp run $(cat F)`
reads it) and any `-S`:
1. the matmul limit of this machine, float32 and bfloat16, measured first;
2. every stage, in dvc.yaml's order (upstream first), each as
   `dvc repro --single-item <stage>`: wall seconds, peak RSS of the stage's process tree,
   and for a training stage its test accuracy beside the book's;
3. the schedule's time from prepared data (every stage after `prepare`) against the
   target, 30 minutes where bfloat16 matmuls reach 800 GFLOP/s, scaled by the limit
   measured here (a machine half as fast gets 60 minutes).
Figures go to reports/benchmark-schedule.md (and .json) and to stdout; `--keep` keeps the
project (benchmarks/finetune_accuracy.py starts from it). Nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from repro import DEFAULT_ARCHIVE, ROOT, command, make_benchmark_project, metrics_of, write_figures
from workspace import args_file_assignments, run

TARGET_S, TARGET_GFLOPS = 30 * 60, 800.0  # issue 22: 30 minutes at the README machine's limit
# The book's test accuracies (Deep Learning with Python, 1st ed., ch. 5; VGG16 for the
# pretrained ones: this schedule runs EfficientNet-Lite0, whose weights are offline here)
BOOK = {"baseline": 0.70, "augmented": 0.82, "features": 0.90, "frozen_aug": 0.96, "finetune": 0.97}
DATA_STAGES = ("download", "split", "prepare")


def matmul_limit() -> dict:
    """benchmark.py's matmul limit, float32 and bfloat16, measured in a process of its own:
    TensorFlow loaded here would count in every stage's peak RSS (a fork starts with it)."""
    code = (
        "import json; from benchmark import matmul_gflops; "
        "print(json.dumps({d: matmul_gflops(d) for d in ('float32', 'bfloat16')}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    return json.loads(out.splitlines()[-1])


def stages_in_order(project: Path) -> list[str]:
    """Every stage, upstream first (`dvc repro --dry` needs the data): dvc.yaml's order, but
    the pretrained base's stages before the from-scratch convnets' (an interrupted run has
    measured the new fast paths first)."""
    stages = run(["dvc", "stage", "list", "--name-only"], project).stdout.split()
    first = [s for s in stages if s.startswith(DATA_STAGES)]
    pretrained = [s for s in stages if "@" in s and s not in first and "visualize" not in s]
    return first + pretrained + [s for s in stages if s not in first + pretrained]


def test_accuracy_of(project: Path, stage: str) -> float | None:
    """A training stage's test accuracy (repro.metrics_of), else None."""
    name = stage.replace("@", "-")
    if (
        stage.startswith(("visualize", "report"))
        or not (project / f"reports/metrics/{name}.json").is_file()
    ):
        return None
    return metrics_of(project, name)["test_accuracy"]


def run_schedule(project: Path) -> dict:
    stages = {}
    for stage in stages_in_order(project):
        result = command(["dvc", "repro", "--single-item", stage], project)
        row = {k: result[k] for k in ("seconds", "peak_rss_mb")}
        if (accuracy := test_accuracy_of(project, stage)) is not None:
            row["test_accuracy"] = round(accuracy, 4)
            row["book"] = BOOK[stage.split("@")[0]]
        stages[stage] = row
        print(stage, row, flush=True)
    return stages


def markdown(figures: dict) -> str:
    stages, limit = figures["stages"], figures["matmul_gflops"]
    lines = [
        "# Benchmark: the book's whole schedule",
        "",
        f"`python benchmarks/schedule.py {' '.join(figures['command_args'])}` "
        f"({figures['started']}); params: {' '.join(figures['assignments'])}.",
        "",
        f"Matmul limit measured first: {limit['float32']:.0f} GFLOP/s float32, "
        f"{limit['bfloat16']:.0f} bfloat16.",
        "",
        "| stage | seconds | peak RSS (MB) | test accuracy | book (VGG16 for the pretrained) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for stage, r in stages.items():
        lines.append(
            f"| {stage} | {r['seconds']} | {r['peak_rss_mb']:,} | {r.get('test_accuracy', '')} "
            f"| {r.get('book', '')} |"
        )
    lines += [
        "",
        f"From prepared data (every stage after `prepare`): {figures['schedule_seconds']:,.0f} s "
        f"({figures['schedule_seconds'] / 60:.1f} min) against a target of "
        f"{figures['target_seconds'] / 60:.1f} min (30 min at {TARGET_GFLOPS:.0f} GFLOP/s bfloat16, "
        f"scaled by the {limit['bfloat16']:.0f} measured here): "
        f"{figures['schedule_seconds'] / figures['target_seconds']:.2f}x the target.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--args", type=Path, default=ROOT / "experiments/fast.args")
    parser.add_argument(
        "-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "reports/benchmark-schedule.md")
    parser.add_argument("--keep", action="store_true", help="keep the project; print its path")
    args = parser.parse_args()
    if not args.archive.is_file():
        raise SystemExit(f"{args.archive} not found: pass --archive")

    assignments = [*args_file_assignments(args.args), *args.overrides]
    limit = matmul_limit()
    print(f"matmul limit: {limit}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="benchmark-schedule-"))
    project = make_benchmark_project(work, args.archive, assignments)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    stages = run_schedule(project)
    prepared = sum(r["seconds"] for s, r in stages.items() if not s.startswith(DATA_STAGES))
    figures = {
        "command_args": [f"--args {args.args}", *[f"-S {o}" for o in args.overrides]],
        "assignments": [f"-S {a}" for a in assignments],
        "started": started,
        "matmul_gflops": limit,
        "stages": stages,
        "schedule_seconds": round(prepared, 1),
        "target_seconds": round(TARGET_S * TARGET_GFLOPS / limit["bfloat16"], 1),
    }
    write_figures(args.out, figures, markdown(figures))
    if args.keep:
        print(f"kept {project}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
