"""The real training stage, timed: `python -m pipeline train <model>` for a few epochs on
prepared real data, with Keras' own per-epoch lines and where the rest of the time goes.

    python benchmarks/stage.py --work DIR [--epochs 3] [--models baseline augmented]

DIR is a project copy with prepared data (benchmarks/benchmark.py makes one and calls this
beside its microbenchmark, in the same run). The stage runs unchanged, as DVC runs it, with
PIPELINE_TIMELINE set (pipeline/training/timeline.py): per epoch, the train steps, the
validation pass, each per-epoch callback (history file, MLflow, backup) and what is left;
start-up (imports, data, build and compile, tracing of the first step) and the end (test
evaluation, writing and logging the model). Epoch 1 holds the tracing; the steady epochs
are the others. Nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

# Keras' verbose=2 epoch line: "100/100 - 17s - 172ms/step - accuracy: ..."
KERAS_LINE = re.compile(r"^\s*(\d+)/(\d+) - (\d+)s - (\d+(?:\.\d+)?)(ms|s)/step")


def keras_epochs(output: str) -> list[dict]:
    """Keras' own per-epoch figures, as it prints them."""
    epochs = []
    for line in output.splitlines():
        match = KERAS_LINE.match(line)
        if match:
            steps, seconds, per_step, unit = match[1], match[3], match[4], match[5]
            step_ms = float(per_step) * (1000 if unit == "s" else 1)
            epochs.append({"steps": int(steps), "seconds": int(seconds), "ms_per_step": step_ms})
    return epochs


def busy_cpu_seconds() -> float:
    """CPU seconds every process on this machine has used since boot (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


CALLBACKS = ("history_file", "mlflow", "backup")  # pipeline/training/resume.py, in order


def epoch_breakdown(epoch: dict, next_begin: float | None) -> dict:
    """Seconds of each part of one epoch from its timeline marks. `other`: between the end
    of the validation pass and the next epoch's begin, less our callbacks (Keras' own
    History and progress bar, epoch bookkeeping)."""
    end = next_begin if next_begin is not None else epoch[CALLBACKS[-1]]
    parts = {
        "train_steps": epoch["train_end"] - epoch["begin"],
        "validation": epoch["validation_end"] - epoch["validation_begin"],
    }
    previous = "callbacks_begin"
    for name in CALLBACKS:
        parts[name] = epoch[name] - epoch[previous]
        previous = name
    parts["other"] = (end - epoch["begin"]) - sum(parts.values())
    parts["epoch"] = end - epoch["begin"]
    parts["first_step"] = epoch["first_step_end"] - epoch["begin"]
    # What the target counts: the epoch outside its train steps, validation excluded.
    outside = parts["epoch"] - parts["train_steps"] - parts["validation"]
    parts["outside_fraction"] = outside / parts["epoch"]
    return {k: round(v, 3) for k, v in parts.items()}


def startup(marks: dict, epochs: list[dict], steady: dict, wall: float) -> dict:
    """Seconds before the first epoch's steps, and after the last epoch."""
    first = epochs[0]
    parts = {
        "imports": marks["data_begin"],
        "data_loading": marks["data_loaded"] - marks["data_begin"],
        "setup_build_compile": marks["model_built"] - marks["data_loaded"],
        "mlflow_run_start": marks["fit_begin"] - marks["model_built"],
        "fit_start": first["begin"] - marks["fit_begin"],
        # the first step traces the train function; the first validation the test function
        "tracing_train": (first["first_step_end"] - first["begin"]) - steady["first_step"],
        "tracing_validation": (first["validation_end"] - first["validation_begin"])
        - steady["validation"],
        # from the last epoch's end to fit's return (on_train_end, Keras' own teardown)
        "fit_end": marks["fit_end"] - epochs[-1][CALLBACKS[-1]],
        "test_evaluation": marks["evaluated"] - marks["fit_end"],
        "write_and_log_model": marks["written"] - marks["evaluated"],
        "exit": wall - marks["written"],
    }
    return {k: round(v, 2) for k, v in parts.items()}


def time_stage(work: Path, model: str, epochs: int, overrides: dict | None = None) -> dict:
    """`python -m pipeline train <model>` in `work` with `epochs` epochs: wall, peak RSS,
    Keras' epoch lines, the timeline and its breakdown. params.yaml is restored after."""
    params_file = work / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["train"][model]["epochs"] = epochs
    for key, value in (overrides or {}).items():
        params["train"][model][key] = value
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    timeline_file = work / f"timeline-{model}.json"
    env = {**os.environ, "PIPELINE_TIMELINE": str(timeline_file)}
    try:
        started, everyone = time.perf_counter(), busy_cpu_seconds()
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "train", model],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        output = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        others = (busy_cpu_seconds() - everyone) - (usage.ru_utime + usage.ru_stime)
    finally:
        params_file.write_text(original)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"train {model} failed:\n{output[-3000:]}")
    timeline = json.loads(timeline_file.read_text())
    marks, marked = timeline["start"], timeline["epochs"]
    begins = [e["begin"] for e in marked[1:]] + [None]
    per_epoch = [epoch_breakdown(e, b) for e, b in zip(marked, begins, strict=True)]
    steady_epochs = per_epoch[1:] or per_epoch
    steady = {k: round(statistics.median(e[k] for e in steady_epochs), 3) for k in per_epoch[0]}
    keras = keras_epochs(output)
    return {
        "model": model,
        "epochs": epochs,
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        # the share of the cores other processes used meanwhile (benchmark.py: seconds_per_step)
        "neighbours_share": round(max(0.0, others / wall / os.cpu_count()), 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "keras_epochs": keras,
        "keras_steady_s": statistics.median(e["seconds"] for e in keras[1:] or keras),
        "keras_steady_ms_per_step": statistics.median(e["ms_per_step"] for e in keras[1:] or keras),
        "steady": steady,
        "per_epoch": per_epoch,
        "startup": startup(marks, marked, steady, wall),
    }


def markdown(results: list[dict]) -> list[str]:
    lines = [
        "| model | epochs | Keras' epoch lines (s) | steady epoch (s) | train steps | validation "
        "| history file | MLflow | backup | other | outside steps, val. excluded |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        s = r["steady"]
        lines.append(
            f"| {r['model']} | {r['epochs']} | {', '.join(str(e['seconds']) for e in r['keras_epochs'])} "
            f"| {s['epoch']:.2f} | {s['train_steps']:.2f} | {s['validation']:.2f} "
            f"| {s['history_file']:.3f} | {s['mlflow']:.3f} | {s['backup']:.3f} | {s['other']:.3f} "
            f"| {100 * s['outside_fraction']:.1f}% |"
        )
    lines += [
        "",
        "Start-up and end (seconds): process start to the first epoch, and after the last.",
        "",
        "| model | wall | neighbours' CPU share | peak RSS (MB) | "
        + " | ".join(k.replace("_", " ") for k in results[0]["startup"])
        + " |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in results[0]["startup"]) + " |",
    ]
    for r in results:
        lines.append(
            f"| {r['model']} | {r['wall_s']} | {r['neighbours_share']} | {r['peak_rss_mb']} | "
            + " | ".join(str(v) for v in r["startup"].values())
            + " |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="a project with prepared data")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["baseline", "augmented"])
    args = parser.parse_args()
    results = [time_stage(args.work, model, args.epochs) for model in args.models]
    print(json.dumps(results, indent=1))
    print("\n".join(markdown(results)))


if __name__ == "__main__":
    main()
