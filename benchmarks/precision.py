"""The baseline at the book's settings in float32 and in bfloat16, same seed: does
`mixed_precision: auto` (bfloat16 on CPUs with AVX512-BF16/AMX) change its accuracy?

    python benchmarks/precision.py [--archive ../shared/data/dogs-vs-cats-6000.zip]
                                   [--epochs 30] [--seed 42] [-S key=value ...]

In a fresh git + DVC copy of the project (benchmarks/repro.py), `dvc repro prepare@150`,
then `python -m pipeline train baseline` once per precision (`mixed_precision: off` and
`on`), as the stage runs it: seconds per epoch, test accuracy, best and final validation
accuracy, the largest gap between the two validation curves, and what `auto` picks on
this machine. Figures go to reports/benchmark-precision.md (and .json) and to stdout.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd
from repro import (
    DEFAULT_ARCHIVE,
    ROOT,
    command,
    edit_params,
    make_benchmark_project,
    metrics_of,
    timing_of,
    write_figures,
)

sys.path.insert(0, str(ROOT))
PRECISIONS = {"off": "float32", "on": "bfloat16 (CPU) / float16 (GPU)"}


def train_baseline(project: Path, switch: str) -> tuple[dict, pd.DataFrame]:
    edit_params(project, f"train.runtime.mixed_precision={switch}")
    command([sys.executable, "-m", "pipeline", "train", "baseline"], project)
    history = pd.read_csv(project / "reports/history/baseline.csv")
    row = {
        **{k: metrics_of(project, "baseline")[k] for k in ("test_accuracy", "best_val_accuracy")},
        "final_val_accuracy": round(float(history["val_accuracy"].iloc[-1]), 4),
        "seconds_per_epoch": timing_of(project, "baseline")["seconds_per_epoch"],
        "load_average_5min": round(os.getloadavg()[1], 1),  # others on the cores slow it down
    }
    print(switch, row, flush=True)
    return row, history


def markdown(figures: dict) -> str:
    lines = [
        "# Benchmark: the baseline in float32 and bfloat16",
        "",
        f"`python benchmarks/precision.py {' '.join(figures['command_args'])}` on "
        f"{figures['machine']}: the baseline with the book's settings, {figures['epochs']} epochs, seed "
        f"{figures['seed']}, the book's split. `mixed_precision: auto` here: "
        f"{figures['auto'][0]} ({figures['auto'][1]}).",
        "",
        "| mixed_precision | s/epoch | test accuracy | best validation | final validation "
        "| load average (5 min, at the end) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for switch, r in figures["runs"].items():
        lines.append(
            f"| {switch} ({PRECISIONS[switch]}) | {r['seconds_per_epoch']} | {r['test_accuracy']} | "
            f"{r['best_val_accuracy']} | {r['final_val_accuracy']} | "
            f"{r.get('load_average_5min', '')} |"
        )
    lines += [
        "",
        f"Speed-up {figures['speedup']:.2f}x; largest gap between the two validation accuracy "
        f"curves {figures['max_val_gap']:.4f} (epoch {figures['max_val_gap_epoch']}).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    from pipeline.training import precision

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("-S", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=ROOT / "reports/benchmark-precision.md")
    args = parser.parse_args()
    if not args.archive.is_file():
        raise SystemExit(f"{args.archive} not found: pass --archive")

    work = Path(tempfile.mkdtemp(prefix="benchmark-precision-"))
    settings = [f"train.baseline.epochs={args.epochs}", f"train.seed={args.seed}"]
    project = make_benchmark_project(work, args.archive, settings + args.overrides)
    command(["dvc", "repro", "prepare@150"], project)
    runs, curves = {}, {}
    for switch in PRECISIONS:
        runs[switch], curves[switch] = train_baseline(project, switch)
    gap = (curves["off"]["val_accuracy"] - curves["on"]["val_accuracy"]).abs()
    figures = {
        "machine": f"{os.uname().machine}, {os.cpu_count()} cores",
        "command_args": [f"--epochs {args.epochs}", *(f"-S {o}" for o in args.overrides)],
        "epochs": args.epochs,
        "seed": args.seed,
        "auto": precision.choose("auto", 0, precision.this_cpu_flags()),
        "runs": runs,
        "speedup": runs["off"]["seconds_per_epoch"] / runs["on"]["seconds_per_epoch"],
        "max_val_gap": round(float(gap.max()), 4),
        "max_val_gap_epoch": int(gap.idxmax()) + 1,
    }
    write_figures(args.out, figures, markdown(figures))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
