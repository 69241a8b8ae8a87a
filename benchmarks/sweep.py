"""A real seed sweep on real photos, on this machine and through a local Ray cluster.

    python benchmarks/sweep.py [--archive ../shared/data/dogs-vs-cats-6000.zip]
        [--model baseline --model features-efficientnet_lite0 ...] [--seeds 1-3]
        [--ray-model features-efficientnet_lite0] [-S train.baseline.epochs=10 ...]

In a fresh git + DVC copy of the project (workspace.py) with `data.source` set to the archive
and only the offline conv base (efficientnet_lite0):
1. the stages the models need (data, conv base weights, cached features) once, committed;
2. `python -m pipeline sweep --on local` over every --model and seed (DVC's queue, one at a
   time: a training uses both cores): its wall time and the compare table;
3. the same sweep of --ray-model only (its seeds also swept alone in 2, first), `--on ray://`
   a Ray head started here on 127.0.0.1 (sweep.cpus_per_task: all CPUs, one task at a time),
   with a bare git repo as the remote, a local-folder DVC remote and an `mlflow server`:
   its wall time against the local sweep's for that model, each task's clone, pull, run
   and push seconds, and each seed's test accuracy beside the local one's.
Figures go to reports/sweep.md (and .json) and to stdout. Nothing asserts.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from repro import DEFAULT_ARCHIVE, make_benchmark_project, write_figures
from services import RAY_ENV, MlflowServer, RayHead
from workspace import run, update_params

ROOT = Path(__file__).resolve().parents[1]
PREREQUISITES = ["prepare@150", "extract@efficientnet_lite0"]  # what the sweep's models read


def timed_sweep(project: Path, args: list[str], env: dict | None = None) -> dict:
    """One `python -m pipeline sweep` to the end: wall seconds and what it printed."""
    started = time.perf_counter()
    result = run(["python", "-m", "pipeline", "sweep", *args], project, env=env, check=False)
    output = result.stdout + result.stderr
    if result.returncode:
        raise SystemExit(f"sweep {' '.join(args)} failed:\n{output[-4000:]}")
    print(output, flush=True)
    return {"seconds": round(time.perf_counter() - started, 1), "output": result.stdout}


def compare_table(output: str) -> str:
    """The compare report the sweep printed at its end (from its '# Seed spread' heading)."""
    start = output.find("# Seed spread")
    return output[start:].strip() if start >= 0 else "(no compare table)"


def task_steps(output: str) -> dict[str, dict[str, float]]:
    """{experiment: {step: seconds}} from the sweep's `done <name> (...): step N s, ...` lines."""
    steps = {}
    for name, rest in re.findall(r"^done +(\S+) \([^)]*\): (.*)$", output, re.M):
        steps[name] = {s: float(v) for s, v in re.findall(r"(\w+) ([\d.]+) s", rest)}
    return steps


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


class LocalCluster:
    """What a Ray sweep needs, all on 127.0.0.1 in `work`: a Ray head, an MLflow server, a bare
    git repo and a folder as the DVC remote (services.py: the tests start the same ones)."""

    def __init__(self, work: Path):
        self.work = work
        self.head, self.server = RayHead(num_cpus=os.cpu_count()), MlflowServer(work)
        try:
            self.head.wait_started(120)
            self.server.wait_healthy()
        except RuntimeError as exc:
            self.stop()
            raise SystemExit(str(exc)) from None

    @property
    def tracking_uri(self) -> str:
        return self.server.url

    @property
    def address(self) -> str:
        return self.head.address

    def publish(self, project: Path) -> None:
        """The project's commit on a bare git remote, its DVC outputs on a local remote."""
        bare = self.work / "remote.git"
        run(["git", "init", "-q", "--bare", str(bare)], self.work)
        run(["dvc", "remote", "add", "-d", "store", str(self.work / "dvc-remote")], project)
        run(["git", "remote", "add", "origin", str(bare)], project)
        run(["git", "add", "-A"], project)
        run(["git", "commit", "-qm", "DVC remote"], project)
        run(["git", "push", "-q", "origin", "HEAD:refs/heads/main"], project)
        run(["dvc", "push"], project)

    def stop(self) -> None:
        self.server.stop()
        self.head.stop()


def report(figures: dict) -> str:
    local, ray = figures["local"], figures.get("ray")
    lines = [
        "# Seed sweep on real photos (benchmarks/sweep.py)",
        "",
        f"`{figures['command']}`: {figures['images']}, {figures['cpus']} CPUs, load average "
        f"{figures['load_before']:.1f} before and {figures['load_after']:.1f} after.",
        "",
        f"Prerequisite stages ({', '.join(PREREQUISITES)} and what they need): "
        f"{figures['prerequisites_seconds']:.0f} s, once, before either sweep.",
        "",
        "| sweep | experiments | wall | per experiment |",
        "| --- | --- | --- | --- |",
        f"| --on local, every model (the --ray-model's seeds first, then the rest) | {local['experiments']} | {local['seconds']:.0f} s | "
        f"{local['seconds'] / local['experiments']:.0f} s |",
    ]
    if ray:
        lines += [
            f"| --on local, {ray['model']} only | {ray['experiments']} | "
            f"{ray['local_seconds']:.0f} s | "
            f"{ray['local_seconds'] / ray['experiments']:.0f} s |",
            f"| --on ray (local head), {ray['model']} | {ray['experiments']} | "
            f"{ray['seconds']:.0f} s | {ray['seconds'] / ray['experiments']:.0f} s |",
            "",
            "Each Ray task's steps (seconds): clone, checkout and pull are the Ray path's "
            "overhead, `run` is `dvc exp run`, `push` is `dvc exp push`.",
            "",
            "| experiment | " + " | ".join(ray["step_names"]) + " | local test accuracy "
            "| Ray test accuracy |",
            "| --- |" + " --- |" * (len(ray["step_names"]) + 2),
        ]
        for name, steps in sorted(ray["steps"].items()):
            seed = int(name.rsplit("-s", 1)[1])
            lines.append(
                f"| {name} | "
                + " | ".join(f"{steps.get(s, 0):.1f}" for s in ray["step_names"])
                + f" | {ray['local_accuracy'].get(seed, '?')} | {ray['ray_accuracy'].get(seed, '?')} |"
            )
    lines += ["", compare_table(local["output"]), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--model", action="append", dest="models")
    parser.add_argument("--seeds", default="1-3")
    parser.add_argument("--ray-model", default="features-efficientnet_lite0")
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("-S", "--set-param", action="append", default=[], dest="overrides")
    parser.add_argument("--out", type=Path, default=ROOT / "reports/sweep.md")
    args = parser.parse_args()
    if not args.archive.is_file():
        raise SystemExit(f"{args.archive}: not found; give --archive")
    models = args.models or [
        "baseline",
        "features-efficientnet_lite0",
        "frozen_aug-efficientnet_lite0",
    ]
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="sweep-benchmark-"))
    project = make_benchmark_project(work, args.archive, args.overrides)

    started = time.perf_counter()
    print(f"prerequisites: dvc repro {' '.join(PREREQUISITES)}", flush=True)
    run(["dvc", "repro", *PREREQUISITES], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "prerequisite stages"], project)
    prerequisites = time.perf_counter() - started

    # The Ray model's seeds first, alone: the same work as the Ray sweep, timed on its own.
    seeds = ["--seeds", args.seeds, "-j", "1"]
    alone = timed_sweep(project, [f"--model={args.ray_model}", *seeds])
    local = timed_sweep(project, [*(f"--model={m}" for m in models), *seeds])
    local["experiments"] = len(task_steps(local["output"])) + len(task_steps(alone["output"]))
    local["seconds"] = round(local["seconds"] + alone["seconds"], 1)
    local_store = f"sqlite:///{project / 'mlflow.db'}"
    figures = {
        "command": " ".join(["python benchmarks/sweep.py", *sys.argv[1:]]),
        "images": f"{args.archive.name}",
        "cpus": os.cpu_count(),
        "prerequisites_seconds": round(prerequisites, 1),
        "local": local,
    }
    if not args.no_ray:
        cluster = LocalCluster(work)
        try:
            # One training at a time on the cluster too (a training uses both cores, as
            # -j 1 does here): the same work as the local sweep of that model.
            update_params(project, {"sweep": {"cpus_per_task": os.cpu_count()}})
            cluster.publish(project)
            ray = timed_sweep(
                project,
                [f"--model={args.ray_model}", "--seeds", args.seeds, "--on", cluster.address],
                env={"MLFLOW_TRACKING_URI": cluster.tracking_uri, **RAY_ENV},
            )
            steps = task_steps(ray["output"])
            figures["ray"] = {
                "model": args.ray_model,
                "seconds": ray["seconds"],
                "output": ray["output"],
                "experiments": len(steps),
                "steps": steps,
                "step_names": list(next(iter(steps.values()), {})),
                "local_seconds": alone["seconds"],
                "local_accuracy": test_accuracies(local_store, args.ray_model),
                "ray_accuracy": test_accuracies(cluster.tracking_uri, args.ray_model),
            }
        finally:
            cluster.stop()
    figures["load_after"] = os.getloadavg()[0]
    figures["load_before"] = load_before
    write_figures(args.out, figures, report(figures))
    print(f"(work folder: {work})")


if __name__ == "__main__":
    main()
