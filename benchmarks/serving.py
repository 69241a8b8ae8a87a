"""What using a trained model costs, on the real archive: logging it, loading it, predicting
with it, serving it.

    python benchmarks/serving.py [--archive ../shared/data/dogs-vs-cats-6000.zip]
                                 [--epochs 3] [--requests 50]

In a fresh git + DVC copy of the project (benchmarks/repro.py's, data.source = the archive):
1. `dvc repro baseline` with `train.baseline.epochs` = --epochs (a quick baseline: the
   figures below do not depend on how well it learned);
2. the seconds `logged_model.log_model` adds to a training stage, timed on the baseline in
   a run of its own (MLflow loads the model once to check the input example);
3. the baseline registered and made `champion` (registry.crown_champion on it alone);
4. in a fresh process: seconds to import and load `models:/dogs-vs-cats@champion`, then
   images/s of `predict` over the 1,000 test photos (decoding included) and its accuracy;
5. `mlflow models serve` of the champion: start-up seconds, then the latency of one test
   JPEG POSTed --requests times (after 3 unmeasured), median and 90th percentile.
Figures go to reports/benchmark-serving.md (and .json) and to stdout. Nothing asserts.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from repro import DEFAULT_ARCHIVE, ROOT, command, make_benchmark_project

CHAMPION = "models:/dogs-vs-cats@champion"

LOG_AND_REGISTER = """
import json, time
from types import SimpleNamespace
import mlflow, pandas as pd
from pipeline.serving import logged_model
from pipeline.core import paths
from pipeline.tracking import registry
from pipeline.tracking import store
details = json.loads((paths.DETAILS_DIR / "baseline.json").read_text())
job = SimpleNamespace(name="baseline", stage="baseline", logged_params={},
                      tags={k: details[k] for k in ("base", "image_size", "split_sha256")})
store.connect()
with mlflow.start_run(run_name="benchmark-log-model"):
    started = time.perf_counter()
    logged_model.log_model(job, paths.model_file("baseline"))
    seconds = time.perf_counter() - started
row = {k: metrics[k] for k in ("best_val_accuracy", "test_accuracy")}
registry.crown_champion(pd.DataFrame([{"model": "baseline", **row}]), "dogs-vs-cats")
print(json.dumps({"log_model_seconds": round(seconds, 2), **row}))
"""

LOAD_AND_PREDICT = """
import time
started = time.perf_counter()
import contextlib, io, json, sys
from pathlib import Path
import pandas as pd
from pipeline.serving import predict
classifier = predict.load_classifier(sys.argv[1])
load_seconds = time.perf_counter() - started
split = pd.read_csv("data/split.csv")
test = split[split["split"] == "test"]
started = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()):
    predict.predict_files([Path(p) for p in test["path"]], classifier, Path("test.csv"), 32)
seconds = time.perf_counter() - started
answers = pd.read_csv("test.csv")
print(json.dumps({
    "load_seconds": round(load_seconds, 2),
    "images": len(test),
    "images_per_second": round(len(test) / seconds, 1),
    "accuracy": round(float((answers["label"].to_numpy() == test["label"].to_numpy()).mean()), 4),
}))
"""


def in_project(script: str, project: Path, *args: str) -> dict:
    result = command([sys.executable, "-c", script, *args], project)
    return json.loads(result["output"].strip().splitlines()[-1])


@contextlib.contextmanager
def served(project: Path):
    """`mlflow models serve` of the champion on a free port: (url, start-up seconds)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    serve = [sys.executable, "-m", "mlflow", "models", "serve", "-m", CHAMPION, "-p", str(port)]
    serve += ["--env-manager", "local", "-h", "127.0.0.1"]
    started, url = time.perf_counter(), f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        serve, cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        while server.poll() is None:
            try:
                if requests.get(f"{url}/ping", timeout=2).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.5)
        else:
            raise SystemExit(f"mlflow models serve exited with {server.returncode}")
        yield url, time.perf_counter() - started
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn worker
        server.wait(timeout=60)


def serving_latency(project: Path, photo: Path, requests_count: int) -> dict:
    payload = {"dataframe_records": [{"image": base64.b64encode(photo.read_bytes()).decode()}]}
    latencies = []
    with served(project) as (url, startup):
        for i in range(requests_count + 3):
            sent = time.perf_counter()
            requests.post(f"{url}/invocations", json=payload, timeout=60).raise_for_status()
            if i >= 3:  # the first calls build TensorFlow's functions
                latencies.append((time.perf_counter() - sent) * 1000)
    latencies.sort()
    return {
        "startup_seconds": round(startup, 1),
        "requests": requests_count,
        "photo_bytes": photo.stat().st_size,
        "median_ms": round(latencies[len(latencies) // 2], 1),
        "p90_ms": round(latencies[int(len(latencies) * 0.9)], 1),
    }


def markdown(figures: dict) -> str:
    train, use, serve = figures["baseline"], figures["predict"], figures["serve"]
    return "\n".join(
        [
            "# Using a trained model: benchmark",
            "",
            f"`python benchmarks/serving.py --epochs {figures['epochs']}` on "
            f"{figures['archive']}; {os.cpu_count()} CPU cores. The champion here is a "
            f"{figures['epochs']}-epoch baseline (test accuracy {train['test_accuracy']:.3f}).",
            "",
            "| what | figure |",
            "| --- | --- |",
            f"| model logging in the training stage | {train['log_model_seconds']} s |",
            f"| import + load the champion in a fresh process | {use['load_seconds']} s |",
            f"| `predict` on the {use['images']} test photos | {use['images_per_second']} "
            f"images/s (accuracy {use['accuracy']:.3f}) |",
            f"| `mlflow models serve` start-up | {serve['startup_seconds']} s |",
            f"| one JPEG POSTed ({serve['photo_bytes']:,} bytes), median of "
            f"{serve['requests']} | {serve['median_ms']} ms (90th percentile "
            f"{serve['p90_ms']} ms) |",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="serving-benchmark-") as work:
        epochs = f"train.baseline.epochs={args.epochs}"
        project = make_benchmark_project(Path(work), args.archive, [epochs])
        command(["dvc", "repro", "baseline"], project)
        figures = {"archive": args.archive.name, "epochs": args.epochs}
        figures["baseline"] = in_project(LOG_AND_REGISTER, project)
        figures["predict"] = in_project(LOAD_AND_PREDICT, project, CHAMPION)
        split = (project / "data/split.csv").read_text().splitlines()
        photo = project / next(line for line in split if line.endswith(",test")).split(",")[0]
        figures["serve"] = serving_latency(project, photo, args.requests)
    text = markdown(figures)
    (ROOT / "reports/benchmark-serving.md").write_text(text)
    (ROOT / "reports/benchmark-serving.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
