"""What finetune's CPU fast path costs in accuracy: the real stage on the fly, then with
`cached_copies`, from the same frozen_aug model, seed and data.

    python benchmarks/finetune_accuracy.py --project DIR [--base efficientnet_lite0]
                                           [--epochs 10] [--copies 5] [--seed 42]

DIR is a project whose `frozen_aug@<base>` has run (benchmarks/schedule.py keeps its
project with --keep). In a copy of it, `python -m pipeline train finetune --base <base>`
runs twice, with `train.finetune.epochs` and `train.seed` set: `cached_copies: 0` (the
book's on-the-fly augmentation), then `cached_copies: K`. Prints test and best validation
accuracy and the training seconds of both. Not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from repro import metrics_of, timing_of
from workspace import command_env, dotted_patch, update_params


def finetune(project: Path, base: str, copies: int) -> dict:
    update_params(project, dotted_patch(f"train.finetune.cached_copies={copies}"))
    subprocess.run(
        [sys.executable, "-m", "pipeline", "train", "finetune", "--base", base],
        cwd=project, env=command_env(), check=True,
    )  # fmt: skip
    metrics, timing = (
        metrics_of(project, f"finetune-{base}"),
        timing_of(project, f"finetune-{base}"),
    )
    return {
        "test_accuracy": round(metrics["test_accuracy"], 4),
        "best_val_accuracy": round(metrics["best_val_accuracy"], 4),
        "train_seconds": round(timing["train_seconds"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, required=True)
    parser.add_argument("--base", default="efficientnet_lite0")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--copies", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    if not (args.project / f"models/frozen_aug-{args.base}.keras").is_file():
        raise SystemExit(f"{args.project}: no models/frozen_aug-{args.base}.keras; run it first")

    work = Path(tempfile.mkdtemp(prefix="finetune-accuracy-")) / "project"
    shutil.copytree(args.project, work, symlinks=True)
    update_params(
        work, dotted_patch(f"train.finetune.epochs={args.epochs}", f"train.seed={args.seed}")
    )
    rows = {"on the fly": finetune(work, args.base, 0)}
    print(rows, flush=True)
    rows[f"cached_copies {args.copies}"] = finetune(work, args.base, args.copies)
    print(
        f"finetune@{args.base}, {args.epochs} epochs, seed {args.seed}, from {args.project}:\n\n"
        "| finetune | test accuracy | best validation | training seconds |\n"
        "| --- | --- | --- | --- |"
    )
    for name, row in rows.items():
        print(
            f"| {name} | {row['test_accuracy']} | {row['best_val_accuracy']} "
            f"| {row['train_seconds']} |"
        )
    shutil.rmtree(work.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
