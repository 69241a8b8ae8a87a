"""Section 5.1 on the real 5,000-digit MNIST sample: `dvc repro mnist/dvc.yaml` in a fresh
project (benchmarks/workspace.py) with the book's settings, then the table and stage times.

    python benchmarks/mnist.py                     # 3 seeds, the whole grid (~35 min, 2 cores)
    python benchmarks/mnist.py --seeds 1 --epochs 1 --downsampling max none   # a smoke run

The sample: ../shared/data/mnist-5k.npz (or --source). Prints reports/convolution.md and the
seconds of every stage (from dvc.lock's order and `dvc repro`'s output timestamps).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.workspace import command_env, make_project  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "data" / "mnist-5k.npz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SAMPLE)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--downsampling", nargs="+", default=["max", "average", "strided", "none"])
    parser.add_argument("--padding", nargs="+", default=["valid", "same"])
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it")
    args = parser.parse_args()
    if not args.source.is_file():
        sys.exit(f"{args.source}: not found (the offline MNIST sample; see --source)")
    patch = {
        "mnist": {
            "data": {"source": str(args.source.resolve()), "sha256": ""},
            "seeds": args.seeds,
            "dense": {"epochs": args.epochs},
            "convnet": {"epochs": args.epochs},
            "grid": {"downsampling": args.downsampling, "padding": args.padding},
            "visualize": {
                "downsampling": args.downsampling[0],
                "padding": args.padding[0],
                "seed": args.seeds[0],
            },
        }
    }
    folder = args.keep or Path(tempfile.mkdtemp(prefix="mnist-bench-"))
    project = make_project(folder / "project", patch)
    started = time.perf_counter()
    times = repro(project)
    total = time.perf_counter() - started
    print((project / "reports/convolution.md").read_text())
    print("| stage | seconds |\n| --- | --- |")
    for stage, seconds in times.items():
        print(f"| {stage} | {seconds:.0f} |")
    print(f"\n{len(times)} stages, {total:.0f} s in all; project: {project}")
    (folder / "stage-times.json").write_text(json.dumps(times, indent=2))


def repro(project: Path) -> dict[str, float]:
    """Run `dvc repro mnist/dvc.yaml`, timing each stage from when its line appears."""
    process = subprocess.Popen(
        ["dvc", "repro", "mnist/dvc.yaml"],
        cwd=project,
        env=command_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    times, current, since = {}, None, time.perf_counter()
    for line in process.stdout:
        if line.startswith("Running stage '"):
            now = time.perf_counter()
            if current:
                times[current] = now - since
            current, since = line.split("'")[1], now
            print(line.rstrip(), flush=True)
        elif "test accuracy" in line or line.startswith(("ERROR", "error")):
            print("  " + line.rstrip(), flush=True)
    if current:
        times[current] = time.perf_counter() - since
    if process.wait() != 0:
        sys.exit(f"dvc repro failed ({process.returncode}); project: {project}")
    return times


if __name__ == "__main__":
    main()
