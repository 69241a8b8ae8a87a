"""A real seed sweep on real photos, on this machine and through a local Ray cluster.

    python -m benchmarks.sweep [--archive ../shared/data/dogs-vs-cats-6000.zip]
        [--model baseline --model features-efficientnet_lite0 ...] [--seeds 1-3]
        [--ray-model features-efficientnet_lite0 | --no-ray] [-S train.baseline.epochs=10 ...]

In a fresh project copy with `data.source` the archive and only the offline conv base:
1. the stages the models need (data, conv base weights, cached features) once, committed;
2. `python -m pipeline sweep --on local` of --ray-model's seeds alone, then of every other
   --model (DVC's queue, one at a time: a training uses both cores): wall time and the
   compare table;
3. the --ray-model sweep again `--on ray://` a Ray head started here on 127.0.0.1 (one task
   at a time, as locally), with a bare git repo as the remote, a local-folder DVC remote and
   an `mlflow server` (harness/servers.py): its wall time against the local one, each task's
   clone, pull, run and push seconds, and each seed's test accuracy beside the local one's.
Figures go to --out (and .json beside it) and to stdout. Nothing asserts.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common
from benchmarks.common import archive_project, table, write_report
from harness.project import run, update_params
from harness.servers import RAY_ENV, MlflowServer, RayHead

MODELS = ["baseline", "features-efficientnet_lite0", "frozen_aug-efficientnet_lite0"]
PREREQUISITES = ["prepare@150", "extract@efficientnet_lite0"]  # what the sweep's models read


def timed_sweep(project: Path, args: list[str], env: dict | None = None) -> dict:
    """One `python -m pipeline sweep` to the end: wall seconds, what it printed and each
    task's step seconds, {experiment: {step: seconds}}, from its `done <name> (...)` lines."""
    started = time.perf_counter()
    result = run(["python", "-m", "pipeline", "sweep", *args], project, env=env, check=False)
    if result.returncode:
        raise SystemExit(
            f"sweep {' '.join(args)} failed:\n{(result.stdout + result.stderr)[-4000:]}"
        )
    print(result.stdout + result.stderr, flush=True)
    steps = {
        name: {step: float(s) for step, s in re.findall(r"(\w+) ([\d.]+) s", rest)}
        for name, rest in re.findall(r"^done +(\S+) \([^)]*\): (.*)$", result.stdout, re.M)
    }
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "output": result.stdout,
        "steps": steps,
    }


def test_accuracies(tracking_uri: str, model: str) -> dict[int, float]:
    """{seed: test accuracy} of the finished sweep runs of `model` in a tracking store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("dogs-vs-cats")
    runs = client.search_runs(
        [experiment.experiment_id],
        f"attributes.run_name = '{model}' and attributes.status = 'FINISHED' "
        "and tags.`dvc.exp_name` LIKE 'sweep-%'",
    )
    return {
        int(r.data.params["train.seed"]): round(r.data.metrics["test_accuracy"], 4) for r in runs
    }


def ray_sweep(work: Path, project: Path, model: str, seeds: str) -> dict:
    """The sweep of `model` through a Ray head, with the project's commit on a bare git
    remote and its DVC outputs on a local one, tracked by an MLflow server."""
    head, server = RayHead(num_cpus=os.cpu_count()), MlflowServer(work)
    try:
        head.wait_started(120)
        server.wait_healthy()
        # one training at a time, as `-j 1` locally: a training uses both cores
        update_params(project, {"sweep": {"cpus_per_task": os.cpu_count()}})
        run(["git", "init", "-q", "--bare", str(work / "remote.git")], work)
        run(["dvc", "remote", "add", "-d", "store", str(work / "dvc-remote")], project)
        run(["git", "remote", "add", "origin", str(work / "remote.git")], project)
        run(["git", "add", "-A"], project)
        run(["git", "commit", "-qm", "DVC remote"], project)
        run(["git", "push", "-q", "origin", "HEAD:refs/heads/main"], project)
        run(["dvc", "push"], project)
        env = {"MLFLOW_TRACKING_URI": server.url, **RAY_ENV}
        ray = timed_sweep(
            project, [f"--model={model}", "--seeds", seeds, "--on", head.address], env
        )
        return ray | {"accuracy": test_accuracies(server.url, model)}
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None
    finally:
        server.stop()
        head.stop()


def report(figures: dict) -> list[str]:
    local, ray, model = figures["local"], figures.get("ray"), figures["ray_model"]
    alone = figures["alone"]
    every = "--on local, every model (the --ray-model's seeds first, then the rest)"
    rows = [[every, local["experiments"], local["seconds"]]]
    parts = [
        "# Seed sweep on real photos (benchmarks/sweep.py)",
        f"`{figures['command']}`: {figures['images']}, {figures['cpus']} CPUs, load average "
        f"{figures['load_before']:.1f} before and {figures['load_after']:.1f} after.",
        f"Prerequisite stages ({', '.join(PREREQUISITES)} and what they need): "
        f"{figures['prerequisites_seconds']:.0f} s, once, before either sweep.",
    ]
    if ray:
        rows += [[f"--on local, {model} only", len(alone["steps"]), alone["seconds"]]]
        rows += [[f"--on ray (local head), {model}", len(ray["steps"]), ray["seconds"]]]
    headers = ["sweep", "experiments", "wall (s)", "per experiment (s)"]
    parts.append(table(headers, [[*r, round(r[2] / r[1])] for r in rows]))
    if ray:
        names = list(next(iter(ray["steps"].values()), {}))
        ray_rows = []
        for name, steps in sorted(ray["steps"].items()):
            seed = int(name.rsplit("-s", 1)[1])
            accuracies = [ray["local_accuracy"].get(seed), ray["accuracy"].get(seed)]
            ray_rows.append([name, *(f"{steps.get(s, 0):.1f}" for s in names), *accuracies])
        parts += [
            "Each Ray task's steps (seconds): clone, checkout and pull are the Ray path's "
            "overhead, `run` is `dvc exp run`, `push` is `dvc exp push`.",
            table(["experiment", *names, "local test accuracy", "Ray test accuracy"], ray_rows),
        ]
    start = local["output"].find("# Seed spread")  # the compare report the sweep printed
    return [*parts, local["output"][start:].strip() if start >= 0 else "(no compare table)"]


def arguments() -> argparse.Namespace:
    parser = common.parser("benchmarks.sweep", __doc__, "sweep.md")
    parser.add_argument("--model", action="append", dest="models", help="default: MODELS")
    parser.add_argument("--seeds", default="1-3")
    parser.add_argument("--ray-model", default="features-efficientnet_lite0")
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("-S", action="append", default=[], dest="overrides", metavar="KEY=VAL")
    args = parser.parse_args()
    if not args.archive.is_file():
        raise SystemExit(f"{args.archive}: not found; give --archive")
    args.models = args.models or MODELS
    return args


def main() -> None:
    args = arguments()
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="sweep-benchmark-"))
    project = archive_project(work, args.archive, args.overrides)

    started = time.perf_counter()
    print(f"prerequisites: dvc repro {' '.join(PREREQUISITES)}", flush=True)
    run(["dvc", "repro", *PREREQUISITES], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "prerequisite stages"], project)
    prerequisites = time.perf_counter() - started

    seeds = ["--seeds", args.seeds, "-j", "1"]
    alone = timed_sweep(project, [f"--model={args.ray_model}", *seeds])  # the Ray sweep's work
    local = timed_sweep(project, [*(f"--model={m}" for m in args.models), *seeds])  # skips alone's
    local["seconds"] = round(local["seconds"] + alone["seconds"], 1)
    local["experiments"] = len(local["steps"]) + len(alone["steps"])
    figures = {
        "command": " ".join(["python -m benchmarks.sweep", *sys.argv[1:]]),
        "images": args.archive.name,
        "cpus": os.cpu_count(),
        "prerequisites_seconds": round(prerequisites, 1),
        "ray_model": args.ray_model,
        "alone": alone,
        "local": local,
        "load_before": load_before,
    }
    if not args.no_ray:
        figures["ray"] = ray_sweep(work, project, args.ray_model, args.seeds)
        local_store = f"sqlite:///{project / 'mlflow.db'}"
        figures["ray"]["local_accuracy"] = test_accuracies(local_store, args.ray_model)
    figures["load_after"] = os.getloadavg()[0]
    write_report(args.out, figures, *report(figures))
    print(f"(work folder: {work})")


if __name__ == "__main__":
    main()
