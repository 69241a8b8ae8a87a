"""What using a trained model costs, on the real archive: logging it, loading it, predicting
with it, serving it, and huge photos under load.

    python -m benchmarks.serving [--archive ../shared/data/dogs-vs-cats-6000.zip]
        [--epochs 3] [--requests 50] [--project DIR] [--huge-side 12000] [--clients 8]
        [--max-rss-gb 8]

In a fresh project copy (data.source = the archive), or in --project DIR where `dvc repro
baseline` has run (its own `pipeline/` code is what runs):
1. `dvc repro baseline` with --epochs epochs (the figures below do not depend on how well
   it learned);
2. the seconds `logged_model.log_model` adds to a training stage, in a run of its own;
3. the baseline registered and made `champion` (registry.crown_champion on it alone);
4. in a fresh process: seconds to import and load `models:/dogs-vs-cats@champion`, then
   images/s of `predict` over the test photos (decoding included) and its accuracy;
5. peak RSS of `python -m pipeline predict` on one test photo and on a --huge-side JPEG;
6. `mlflow models serve` of the champion: start-up seconds, the latency of one test JPEG
   POSTed --requests times (after 3 unmeasured), median and 90th percentile; then --clients
   concurrent clients, with test photos, then with the huge JPEG, each phase bounded to
   --load-requests requests and --load-seconds seconds: requests OK, p50, p95 and the peak
   RSS of the server's process tree (sampled every 20 ms). A tree past --max-rss-gb is
   killed, and the report says so: the guard keeps a shared machine alive.
   `UVICORN_LIMIT_CONCURRENCY=N` in the environment reaches the server (uvicorn reads it).
Figures go to --out (and .json beside it) and to stdout. Nothing asserts.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import requests
import yaml

from benchmarks import common
from benchmarks.common import archive_project, command, table, write_report
from harness.project import command_env
from harness.servers import free_port

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
right = pd.read_csv("test.csv")["label"].to_numpy() == test["label"].to_numpy()
print(json.dumps({"load_seconds": round(load_seconds, 2), "images": len(test),
                  "images_per_second": round(len(test) / seconds, 1),
                  "accuracy": round(float(right.mean()), 4)}))
"""


def in_project(script: str, project: Path, *args: str) -> dict:
    result = command([sys.executable, "-c", script, *args], project)
    return json.loads(result["output"].strip().splitlines()[-1])


def huge_photo(path: Path, side: int) -> Path:
    """A smooth side x side baseline JPEG, as cameras write them: a few MB for 144 megapixels
    (side 12000), like a panorama or a phone's full-resolution mode."""
    from PIL import Image

    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 256, (side // 200, side // 200, 3), np.uint8))
    small.resize((side, side), Image.BILINEAR).save(path, format="JPEG", quality=85)
    return path


def payload(photo: Path) -> dict:
    return {"dataframe_records": [{"image": base64.b64encode(photo.read_bytes()).decode()}]}


class PeakRss:
    """Samples the summed RSS of `pid` and its descendants every 20 ms while in the block;
    kills the tree (and says so) if it passes `limit_mb`."""

    def __init__(self, pid: int, limit_mb: float):
        self.root, self.limit_mb = psutil.Process(pid), limit_mb
        self.peak_mb, self.killed = 0.0, False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _sample(self):
        while not self._stop.wait(0.02):
            try:
                tree = [self.root, *self.root.children(recursive=True)]
                rss = sum(p.memory_info().rss for p in tree) / 2**20
            except psutil.Error:
                continue
            self.peak_mb = max(self.peak_mb, rss)
            if rss > self.limit_mb and not self.killed:
                self.killed = True
                for process in reversed(tree):
                    process.kill()


def load(url: str, payloads: list[dict], clients: int, count: int, seconds: float) -> dict:
    """`clients` threads POST the payloads in turn until `count` requests are sent or
    `seconds` have passed (each request times out at 120 s): OK count, p50, p95."""
    deadline, lock, sent, results = time.monotonic() + seconds, threading.Lock(), [0], []

    def client():
        while True:
            with lock:
                if sent[0] >= count or time.monotonic() > deadline:
                    return
                body, sent[0] = payloads[sent[0] % len(payloads)], sent[0] + 1
            started = time.perf_counter()
            try:
                ok = requests.post(f"{url}/invocations", json=body, timeout=120).ok
            except requests.RequestException:
                ok = False
            results.append((ok, (time.perf_counter() - started) * 1000))

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for _ in range(clients):
            pool.submit(client)
    latencies = sorted(ms for ok, ms in results if ok)
    percentile = {
        q: round(float(np.percentile(latencies, q))) if latencies else None for q in (50, 95)
    }
    return {
        "clients": clients,
        "sent": len(results),
        "ok": len(latencies),
        "seconds": round(time.perf_counter() - started, 1),
        "p50_ms": percentile[50],
        "p95_ms": percentile[95],
    }


@contextlib.contextmanager
def served(project: Path):
    """`mlflow models serve` of the champion on a free port: (url, start-up seconds, pid)."""
    port = free_port()
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    serve = [sys.executable, "-m", "mlflow", "models", "serve", "-m", CHAMPION, "-p", str(port)]
    serve += ["--env-manager", "local", "-h", "127.0.0.1"]
    started, url = time.perf_counter(), f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        serve, cwd=project, env=command_env(env), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        while server.poll() is None and not answers(url, "/ping"):
            time.sleep(0.5)
        if server.poll() is not None:
            raise SystemExit(f"mlflow models serve exited with {server.returncode}")
        yield url, time.perf_counter() - started, server.pid
    finally:
        with contextlib.suppress(ProcessLookupError):  # the RSS guard may have killed it
            os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn worker
        server.wait(timeout=60)


def answers(url: str, path: str = "/invocations", photo: Path | None = None) -> bool:
    try:
        if photo is None:
            return requests.get(f"{url}{path}", timeout=2).ok
        return requests.post(f"{url}{path}", json=payload(photo), timeout=60).ok
    except requests.RequestException:
        return False


def latency(url: str, photo: Path, count: int) -> dict:
    body, latencies = payload(photo), []
    for i in range(count + 3):
        sent = time.perf_counter()
        requests.post(f"{url}/invocations", json=body, timeout=60).raise_for_status()
        if i >= 3:  # the first calls build TensorFlow's functions
            latencies.append((time.perf_counter() - sent) * 1000)
    latencies.sort()
    return {
        "requests": count,
        "photo_bytes": photo.stat().st_size,
        "median_ms": round(latencies[len(latencies) // 2], 1),
        "p90_ms": round(latencies[int(len(latencies) * 0.9)], 1),
    }


def serving(project: Path, photos: list[Path], huge: Path, args) -> dict:
    """Latency of one photo, then the clients' load with ordinary photos and huge ones."""
    with served(project) as (url, startup, pid):
        figures = {"startup_seconds": round(startup, 1), **latency(url, photos[0], args.requests)}
        for phase, bodies in (
            ("ordinary", [payload(p) for p in photos]),
            ("huge", [payload(huge)]),
        ):
            with PeakRss(pid, args.max_rss_gb * 1024) as rss:
                figures[phase] = load(
                    url, bodies, args.clients, args.load_requests, args.load_seconds
                )
            figures[phase] |= {"peak_rss_mb": round(rss.peak_mb), "killed": rss.killed}
            if rss.killed:
                break
        figures["answers_after"] = not rss.killed and answers(url, photo=photos[0])
    return figures


def measure(project: Path, work: Path, args) -> dict:
    figures = {"baseline": in_project(LOG_AND_REGISTER, project)}
    figures["predict"] = in_project(LOAD_AND_PREDICT, project, CHAMPION)
    split = (project / "data/split.csv").read_text().splitlines()
    tests = [project / line.split(",")[0] for line in split if line.endswith(",test")][:16]
    huge = huge_photo(work / "huge.jpg", args.huge_side)
    figures["huge"] = {"megapixels": args.huge_side**2 // 10**6, "bytes": huge.stat().st_size}
    figures["predict_rss"] = {}
    for name, photo in (("ordinary", tests[0]), ("huge", huge)):
        argv = [sys.executable, "-m", "pipeline", "predict", str(photo)]
        ran = command([*argv, "--model", "models/baseline.keras"], project)
        figures["predict_rss"][name] = {k: ran[k] for k in ("peak_rss_mb", "seconds")}
    figures["serve"] = serving(project, tests, huge, args)
    return figures


def load_cell(phase: dict | None, key: str) -> str:
    if phase is None:
        return "not run"
    if key == "ok":
        return f"{phase['ok']} / {phase['sent']} in {phase['seconds']} s"
    if key == "peak_rss_mb":
        return f"{phase[key]} MB" + (" (killed at the guard)" if phase["killed"] else "")
    return "-" if phase[key] is None else f"{phase[key]:.0f} ms"


def report(figures: dict) -> list[str]:
    train, use, serve = figures["baseline"], figures["predict"], figures["serve"]
    huge, rss = figures["huge"], figures["predict_rss"]
    predict = f"{use['images_per_second']} images/s (accuracy {use['accuracy']:.3f})"
    post = f"one JPEG POSTed ({serve['photo_bytes']:,} bytes), median of {serve['requests']}"
    figures_rows = [
        ["model logging in the training stage", f"{train['log_model_seconds']} s"],
        ["import + load the champion in a fresh process", f"{use['load_seconds']} s"],
        [f"`predict` on the {use['images']} test photos", predict],
        ["`mlflow models serve` start-up", f"{serve['startup_seconds']} s"],
        [post, f"{serve['median_ms']} ms (90th percentile {serve['p90_ms']} ms)"],
    ]
    huge_rows = [
        ["`predict PHOTO --model models/baseline.keras`: peak RSS, seconds"]
        + [f"{rss[p]['peak_rss_mb']} MB, {rss[p]['seconds']} s" for p in ("ordinary", "huge")]
    ]
    loads = {
        "ok": "requests OK / sent",
        "p50_ms": "p50",
        "p95_ms": "p95",
        "peak_rss_mb": "peak RSS",
    }
    for key, name in loads.items():
        cells = [load_cell(serve.get(phase), key) for phase in ("ordinary", "huge")]
        huge_rows.append([f"served, {serve['ordinary']['clients']} clients: {name}", *cells])
    return [
        "# Using a trained model: benchmark",
        f"`python -m benchmarks.serving {figures['argv']}` on {figures['archive']}; "
        f"{os.cpu_count()} CPU cores, load average {figures['load_average']} at the end. The "
        f"champion is a {figures['epochs']}-epoch baseline (test accuracy "
        f"{train['test_accuracy']:.3f}).",
        table(["what", "figure"], figures_rows),
        f"Huge photos: a {huge['megapixels']}-megapixel JPEG ({huge['bytes']:,} bytes), beside "
        "a test photo.",
        table(["what", "test photo", "huge JPEG"], huge_rows),
        f"The server answered a test photo afterwards: {serve['answers_after']}.",
    ]


def main() -> None:
    parser = common.parser("benchmarks.serving", __doc__, "benchmark-serving.md")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--project", type=Path, help="a project where baseline is trained")
    parser.add_argument("--huge-side", type=int, default=12000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--load-requests", type=int, default=48, help="per phase")
    parser.add_argument("--load-seconds", type=float, default=120, help="per phase")
    parser.add_argument("--max-rss-gb", type=float, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="serving-benchmark-") as work:
        project = args.project
        if project is None:
            epochs = f"train.baseline.epochs={args.epochs}"
            project = archive_project(Path(work), args.archive, [epochs])
            command(["dvc", "repro", "baseline"], project)
        params = yaml.safe_load((project / "params.yaml").read_text())
        figures = {"archive": args.archive.name, "epochs": params["train"]["baseline"]["epochs"]}
        figures["argv"] = " ".join(sys.argv[1:])
        figures |= measure(project.resolve(), Path(work), args)
        figures["load_average"] = round(os.getloadavg()[0], 1)
    write_report(args.out, figures, *report(figures))


if __name__ == "__main__":
    main()
