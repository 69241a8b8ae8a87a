"""Wall time and peak memory of a whole offline `dvc repro`, stage by stage, and what a
head-only change and the frozen_aug fast path cost.

    python benchmarks/repro.py [--archive ../shared/data/dogs-vs-cats-6000.zip]
                               [-S train.augmented.epochs=10 ...]

In a fresh git + DVC copy of the project, with `data.source` set to the archive and only
the offline conv base (efficientnet_lite0) in `pretrained.bases`:
1. every stage in order, each as `dvc repro --single-item <stage>`: wall seconds and peak
   RSS of the stage process tree, and the test accuracy it reached; then a plain
   `dvc repro`, which must run nothing;
2. a classifier-head-only change (`train.features.learning_rate`) and a second
   `dvc repro`: which stages ran and its wall time against the first run of that base;
3. frozen_aug's CPU fast path (`cached_copies`, default: as many copies as on-the-fly
   epochs, so the base sees the same number of augmented images) against the on-the-fly
   training of step 1: test accuracy and seconds of both.
`-S key=value` overrides params as `dvc exp run -S` does (shorter runs for a quick look).
Figures go to reports/benchmark-repro.md (and .json) and to stdout. Nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from workspace import (
    command_env,
    dotted_patch,
    make_project,
    ran_stages,
    update_params,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ARCHIVE = ROOT.parent / "shared/data/dogs-vs-cats-6000.zip"
BASE = "efficientnet_lite0"
STAGES = [
    "download",
    "split",
    "prepare@150",
    "prepare@224",
    "baseline",
    "augmented",
    f"base_weights@{BASE}",
    f"extract@{BASE}",
    f"features@{BASE}",
    f"frozen_aug@{BASE}",
    f"finetune@{BASE}",
    "report",
]
METRICS = {
    "baseline": "baseline",
    "augmented": "augmented",
    f"features@{BASE}": f"features-{BASE}",
    f"frozen_aug@{BASE}": f"frozen_aug-{BASE}",
    f"finetune@{BASE}": f"finetune-{BASE}",
}


def command(args: list[str], cwd: Path) -> dict:
    """Run a command to the end: wall seconds, peak RSS of its process tree, its output."""
    env = command_env()
    started = time.perf_counter()
    process = subprocess.Popen(
        args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)  # ru_maxrss covers the reaped descendants too
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{output[-3000:]}")
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "output": output,
    }


def make_benchmark_project(work: Path, archive: Path, overrides: list[str]) -> Path:
    """A real project (workspace.py) with only the offline conv base."""
    data = {"data": {"source": str(archive.resolve())}}
    only_lite0 = {"pretrained": {"bases": {"vgg16": None}}}
    return make_project(work / "project", data, only_lite0, dotted_patch(*overrides))


def edit_params(project: Path, *assignments: str) -> None:
    """`dvc exp run -S` style edits of the project's params.yaml."""
    update_params(project, dotted_patch(*assignments))


def write_figures(out: Path, figures: dict, text: str) -> None:
    """A benchmark's markdown report, its figures as JSON beside it, and the report on stdout."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(figures, indent=2) + "\n")
    print(text)


def metrics_of(project: Path, name: str) -> dict:
    return json.loads((project / f"reports/metrics/{name}.json").read_text())[name]


def timing_of(project: Path, name: str) -> dict:
    """Training seconds: not in the metrics, which must not change between reruns."""
    return json.loads((project / f"reports/timing/{name}.json").read_text())


def whole_repro(project: Path) -> dict:
    stages = {}
    for stage in STAGES:
        result = command(["dvc", "repro", "--single-item", stage], project)
        stages[stage] = {k: result[k] for k in ("seconds", "peak_rss_mb")}
        if stage in METRICS:
            stages[stage]["test_accuracy"] = round(
                metrics_of(project, METRICS[stage])["test_accuracy"], 4
            )
        print(stage, stages[stage], flush=True)
    again = command(["dvc", "repro"], project)
    base_seconds = sum(v["seconds"] for k, v in stages.items() if k.endswith(f"@{BASE}"))
    return {
        "stages": stages,
        "total_seconds": round(sum(v["seconds"] for v in stages.values()), 1),
        f"{BASE}_seconds": round(base_seconds, 1),
        "second_repro": {"seconds": again["seconds"], "ran": ran_stages(again["output"])},
    }


def head_only_change(project: Path, first: dict) -> dict:
    params = yaml.safe_load((project / "params.yaml").read_text())
    learning_rate = params["train"]["features"]["learning_rate"] * 2
    edit_params(project, f"train.features.learning_rate={learning_rate}")
    result = command(["dvc", "repro"], project)
    base_seconds = first[f"{BASE}_seconds"]
    return {
        "changed": "train.features.learning_rate (x2)",
        "ran": ran_stages(result["output"]),
        "seconds": result["seconds"],
        f"first_{BASE}_seconds": base_seconds,
        "fraction": round(result["seconds"] / base_seconds, 3),
    }


def fast_path(project: Path, copies: int | None) -> dict:
    """frozen_aug once more with cached_copies, outside DVC, against step 1's on-the-fly run."""
    name = f"frozen_aug-{BASE}"
    on_the_fly = metrics_of(project, name), timing_of(project, name)
    params = yaml.safe_load((project / "params.yaml").read_text())
    copies = copies or params["train"]["frozen_aug"]["epochs"]
    edit_params(project, f"train.frozen_aug.cached_copies={copies}")
    result = command(
        [sys.executable, "-m", "pipeline", "train", "frozen_aug", "--base", BASE], project
    )
    cached = metrics_of(project, name), timing_of(project, name)

    def row(figures: tuple[dict, dict], wall: float | None) -> dict:
        metrics, timing = figures
        return {
            "test_accuracy": round(metrics["test_accuracy"], 4),
            "best_val_accuracy": round(metrics["best_val_accuracy"], 4),
            "train_seconds": round(timing["train_seconds"], 1),
            "stage_seconds": wall,
        }

    return {
        "epochs": params["train"]["frozen_aug"]["epochs"],
        "cached_copies": copies,
        "on_the_fly": row(on_the_fly, None),
        "cached": row(cached, result["seconds"]),
    }


def markdown(figures: dict) -> str:
    repro = figures["repro"]
    lines = [
        "# Benchmark: a whole offline `dvc repro`",
        "",
        f"`python benchmarks/repro.py {' '.join(figures['command_args'])}` on {figures['machine']}; "
        f"`pretrained.bases` holds only {BASE}.",
        "",
        "| stage | seconds | peak RSS (MB) | test accuracy |",
        "| --- | --- | --- | --- |",
    ]
    for stage, r in repro["stages"].items():
        lines.append(
            f"| {stage} | {r['seconds']} | {r['peak_rss_mb']} | {r.get('test_accuracy', '')} |"
        )
    lines += [
        "",
        f"Whole `dvc repro`: {repro['total_seconds']} s, of which the {BASE} stages "
        f"{repro[f'{BASE}_seconds']} s. A second `dvc repro` ran {repro['second_repro']['ran'] or 'nothing'} "
        f"in {repro['second_repro']['seconds']} s.",
        "",
    ]
    head = figures["head_only"]
    lines += [
        f"Head-only change ({head['changed']}): `dvc repro` ran {', '.join(head['ran'])} in {head['seconds']} s, "
        f"{head['fraction']:.1%} of the first run's {head[f'first_{BASE}_seconds']} s for {BASE}.",
        "",
    ]
    fast = figures["fast_path"]
    lines += [
        f"frozen_aug@{BASE}, {fast['epochs']} epochs: on the fly against `cached_copies: {fast['cached_copies']}`",
        "",
        "| frozen_aug | test accuracy | best validation | training seconds |",
        "| --- | --- | --- | --- |",
    ]
    for name in ("on_the_fly", "cached"):
        r = fast[name]
        lines.append(
            f"| {name.replace('_', ' ')} | {r['test_accuracy']} | {r['best_val_accuracy']} | {r['train_seconds']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument(
        "-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE"
    )
    parser.add_argument(
        "--cached-copies", type=int, default=None, help="default: frozen_aug's epochs"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "reports/benchmark-repro.md")
    args = parser.parse_args()
    if not args.archive.is_file():
        raise SystemExit(f"{args.archive} not found: pass --archive")

    work = Path(tempfile.mkdtemp(prefix="benchmark-repro-"))
    project = make_benchmark_project(work, args.archive, args.overrides)
    figures = {
        "machine": f"{os.uname().machine}, {os.cpu_count()} cores",
        "command_args": [f"-S {o}" for o in args.overrides],
    }
    figures["repro"] = whole_repro(project)
    figures["head_only"] = head_only_change(project, figures["repro"])
    print("head-only change", figures["head_only"], flush=True)
    figures["fast_path"] = fast_path(project, args.cached_copies)
    print("fast path", figures["fast_path"], flush=True)
    write_figures(args.out, figures, markdown(figures))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
