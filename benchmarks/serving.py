"""What using a trained model costs, on the real archive: logging it, loading it, predicting
with it, serving it, and huge photos under load.

    python benchmarks/serving.py [--archive ../shared/data/dogs-vs-cats-6000.zip]
                                 [--epochs 3] [--requests 50] [--project DIR]
                                 [--huge-side 12000] [--clients 8] [--max-rss-gb 8]

In a fresh git + DVC copy of the project (benchmarks/repro.py's, data.source = the archive),
or in --project DIR where `dvc repro baseline` has run (its own `pipeline/` code is what runs):
1. `dvc repro baseline` with `train.baseline.epochs` = --epochs (a quick baseline: the
   figures below do not depend on how well it learned);
2. the seconds `logged_model.log_model` adds to a training stage, timed on the baseline in
   a run of its own (MLflow loads the model once to check the input example);
3. the baseline registered and made `champion` (registry.crown_champion on it alone);
4. in a fresh process: seconds to import and load `models:/dogs-vs-cats@champion`, then
   images/s of `predict` over the 1,000 test photos (decoding included) and its accuracy;
5. peak RSS of `python -m pipeline predict` on one test photo and on a --huge-side JPEG
   (12000: 144 megapixels);
6. `mlflow models serve` of the champion: start-up seconds, the latency of one test JPEG
   POSTed --requests times (after 3 unmeasured), median and 90th percentile; then --clients
   concurrent clients, first with test photos, then with the huge JPEG, each phase bounded
   to --load-requests requests and --load-seconds seconds: requests OK, p50, p95 and the
   peak RSS of the server's process tree (sampled every 20 ms). A tree past --max-rss-gb is
   killed, and the table says so: the guard keeps a shared machine alive.
   `UVICORN_LIMIT_CONCURRENCY=N` in the environment reaches the server (uvicorn reads it).
Figures go to reports/benchmark-serving.md (and .json) and to stdout. Nothing asserts.
"""

from __future__ import annotations

import argparse
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
import yaml
from load_test import PeakRss, huge_photo, load, payload
from repro import DEFAULT_ARCHIVE, ROOT, command, make_benchmark_project, write_figures

CHAMPION = "models:/dogs-vs-cats@champion"

LOG_AND_REGISTER = """
import json, time
from types import SimpleNamespace
import mlflow, pandas as pd
from pipeline.core import catalog, paths
from pipeline.core.files import read_metrics
from pipeline.core.params import load_params
from pipeline.serving import logged_model
from pipeline.tracking import registry, store
details = json.loads((paths.DETAILS_DIR / "baseline.json").read_text())
job = SimpleNamespace(name="baseline", stage="baseline", pixels_model=None,
                      model=catalog.trained_model(load_params(), "baseline"),
                      split_sha256=details["split_sha256"])
store.connect()
with mlflow.start_run(run_name="benchmark-log-model"):
    started = time.perf_counter()
    logged_model.log_model(job, paths.model_file("baseline"))
    seconds = time.perf_counter() - started
metrics = read_metrics(paths.metrics_file("baseline"))
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
    """`mlflow models serve` of the champion on a free port: (url, start-up seconds, pid)."""
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
        yield url, time.perf_counter() - started, server.pid
    finally:
        with contextlib.suppress(ProcessLookupError):  # the RSS guard may have killed it
            os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn worker
        server.wait(timeout=60)


def latency(url: str, photo: Path, requests_count: int) -> dict:
    body = payload(photo)
    latencies = []
    for i in range(requests_count + 3):
        sent = time.perf_counter()
        requests.post(f"{url}/invocations", json=body, timeout=60).raise_for_status()
        if i >= 3:  # the first calls build TensorFlow's functions
            latencies.append((time.perf_counter() - sent) * 1000)
    latencies.sort()
    return {
        "requests": requests_count,
        "photo_bytes": photo.stat().st_size,
        "median_ms": round(latencies[len(latencies) // 2], 1),
        "p90_ms": round(latencies[int(len(latencies) * 0.9)], 1),
    }


def serving(project: Path, photos: list[Path], huge: Path, args) -> dict:
    """Latency of one photo, then the clients' load with ordinary photos and huge ones."""
    with served(project) as (url, startup, pid):
        figures = {"startup_seconds": round(startup, 1), **latency(url, photos[0], args.requests)}
        bounds = (args.clients, args.load_requests, args.load_seconds)
        for phase, bodies in (
            ("ordinary", [payload(p) for p in photos]),
            ("huge", [payload(huge)]),
        ):
            with PeakRss(pid, args.max_rss_gb * 1024) as rss:
                figures[phase] = load(url, bodies, *bounds)
            figures[phase] |= {"peak_rss_mb": round(rss.peak_mb), "killed": rss.killed}
            if rss.killed:
                break
        killed = any(figures.get(phase, {}).get("killed") for phase in ("ordinary", "huge"))
        figures["answers_after"] = not killed and _answers(url, photos[0])
    return figures


def _answers(url: str, photo: Path) -> bool:
    try:
        return requests.post(f"{url}/invocations", json=payload(photo), timeout=60).ok
    except requests.RequestException:
        return False


def predict_peak_rss(project: Path, photos: dict[str, Path]) -> dict:
    """Peak RSS and seconds of `python -m pipeline predict PHOTO --model models/baseline.keras`."""
    figures = {}
    for name, photo in photos.items():
        argv = [sys.executable, "-m", "pipeline", "predict", str(photo)]
        ran = command([*argv, "--model", "models/baseline.keras"], project)
        figures[name] = {"peak_rss_mb": ran["peak_rss_mb"], "seconds": ran["seconds"]}
    return figures


def markdown(figures: dict) -> str:
    train, use, serve = figures["baseline"], figures["predict"], figures["serve"]
    return "\n".join(
        [
            "# Using a trained model: benchmark",
            "",
            f"`python benchmarks/serving.py {figures['argv']}` on {figures['archive']}; "
            f"{os.cpu_count()} CPU cores, load average {figures['load_average']} at the end "
            "(other jobs share the machine when it is over the cores). The champion here is a "
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
            *huge_markdown(figures),
        ]
    )


def huge_markdown(figures: dict) -> list[str]:
    huge, predict, serve = figures["huge"], figures["predict_rss"], figures["serve"]
    rows = [
        f"Huge photos: a {huge['megapixels']}-megapixel JPEG ({huge['bytes']:,} bytes), "
        "beside a test photo.",
        "",
        "| what | test photo | huge JPEG |",
        "| --- | --- | --- |",
        f"| `predict PHOTO --model models/baseline.keras`: peak RSS, seconds | "
        f"{predict['ordinary']['peak_rss_mb']} MB, {predict['ordinary']['seconds']} s | "
        f"{predict['huge']['peak_rss_mb']} MB, {predict['huge']['seconds']} s |",
    ]
    for key, label in (("ok", "requests OK / sent"), ("p50_ms", "p50"), ("p95_ms", "p95")):
        cells = [_load_cell(serve.get(phase), key) for phase in ("ordinary", "huge")]
        rows.append(
            f"| served, {serve['ordinary']['clients']} clients: {label} | {' | '.join(cells)} |"
        )
    cells = [_load_cell(serve.get(phase), "peak_rss_mb") for phase in ("ordinary", "huge")]
    rows += [f"| served: peak RSS of the server | {' | '.join(cells)} |", ""]
    rows.append(f"The server answered a test photo afterwards: {serve['answers_after']}.")
    return [*rows, ""]


def _load_cell(phase: dict | None, key: str) -> str:
    if phase is None:
        return "not run"
    if key == "ok":
        return f"{phase['ok']} / {phase['sent']} in {phase['seconds']} s"
    if key == "peak_rss_mb":
        return f"{phase[key]} MB" + (" (killed at the guard)" if phase["killed"] else "")
    return "-" if phase[key] is None else f"{phase[key]:.0f} ms"


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--project", type=Path, help="a project where baseline is trained")
    parser.add_argument("--huge-side", type=int, default=12000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--load-requests", type=int, default=48, help="per phase")
    parser.add_argument("--load-seconds", type=float, default=120, help="per phase")
    parser.add_argument("--max-rss-gb", type=float, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "reports/benchmark-serving.md")
    return parser.parse_args()


def measure(project: Path, work: Path, args) -> dict:
    figures = {"baseline": in_project(LOG_AND_REGISTER, project)}
    figures["predict"] = in_project(LOAD_AND_PREDICT, project, CHAMPION)
    split = (project / "data/split.csv").read_text().splitlines()
    tests = [project / line.split(",")[0] for line in split if line.endswith(",test")][:16]
    huge = huge_photo(work / "huge.jpg", args.huge_side)
    figures["huge"] = {"megapixels": args.huge_side**2 // 10**6, "bytes": huge.stat().st_size}
    figures["predict_rss"] = predict_peak_rss(project, {"ordinary": tests[0], "huge": huge})
    figures["serve"] = serving(project, tests, huge, args)
    return figures


def main() -> None:
    args = arguments()
    with tempfile.TemporaryDirectory(prefix="serving-benchmark-") as work:
        project = args.project
        if project is None:
            epochs = f"train.baseline.epochs={args.epochs}"
            project = make_benchmark_project(Path(work), args.archive, [epochs])
            command(["dvc", "repro", "baseline"], project)
        params = yaml.safe_load((project / "params.yaml").read_text())
        figures = {"archive": args.archive.name, "epochs": params["train"]["baseline"]["epochs"]}
        figures["argv"] = " ".join(sys.argv[1:])
        figures |= measure(project.resolve(), Path(work), args)
        figures["load_average"] = round(os.getloadavg()[0], 1)
    write_figures(args.out, figures, markdown(figures))


if __name__ == "__main__":
    main()
