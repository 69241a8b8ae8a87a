"""`python -m pipeline serve` (pipeline/serving/server.py): MLflow's scoring server with a
limit on the request body, run for real on 127.0.0.1 with a logged, registered model."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import requests

from pipeline.serving.server import MB, cut_error, unparseable
from tests.helpers.project import ROOT, command_env, run, update_params
from tests.helpers.servers import wait_until_up
from tests.helpers.synthetic import jpeg_bytes, synthetic_image

LIMIT_MB = 4  # serving.max_request_mb of the test project
BAD_BODIES = 8  # sent at once

# A tiny Keras model logged as the pipeline logs one (pipeline/serving/logged_model.py),
# registered as dogs-vs-cats with the alias champion, in the project's own store.
LOG_MODEL = """
from pathlib import Path
import keras, mlflow
from pipeline.serving import inference
from pipeline.tracking import store

model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D(),
                          keras.layers.Dense(1, activation="sigmoid")])
model.save("tiny.keras")
store.connect()
with mlflow.start_run():
    info = mlflow.pyfunc.log_model(
        name="classifier",
        python_model=Path(inference.__file__).with_name("entry.py"),
        artifacts={inference.KERAS_ARTIFACT: "tiny.keras"},
        code_paths=[str(Path(inference.__file__).parents[1])],
        signature=inference.signature(),
        pip_requirements=[],
        metadata={"image_size": 32, "classes": ["cat", "dog"]},
        registered_model_name="dogs-vs-cats",
    )
mlflow.MlflowClient().set_registered_model_alias(
    "dogs-vs-cats", "champion", info.registered_model_version
)
"""


def _own_store_env() -> dict:
    """The environment of a command that uses the project's own store."""
    env = command_env()
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(name, None)
    return env


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(URL, pid) of `python -m pipeline serve` of the project's champion, on 127.0.0.1."""
    project = tmp_path_factory.mktemp("served")
    (project / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    update_params(project, {"serving": {"max_request_mb": LIMIT_MB}})
    logged = subprocess.run(
        [sys.executable, "-c", LOG_MODEL], cwd=project, env=_own_store_env(),
        capture_output=True, text=True,
    )  # fmt: skip
    assert logged.returncode == 0, logged.stderr
    port = _free_port()
    log_path = project / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "serve", "-p", str(port)],
            cwd=project, env=_own_store_env(), stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, process, log_path, "pipeline serve")
        yield url, process.pid
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def _post(url: str, data, content_type: str = "application/json") -> requests.Response:
    headers = {"Content-Type": content_type}
    return requests.post(f"{url}/invocations", data=data, headers=headers, timeout=120)


def _photo_request(label: str) -> bytes:
    photo = jpeg_bytes(synthetic_image(label, 64, np.random.default_rng(7)))
    return json.dumps({"dataframe_records": [{"image": base64.b64encode(photo).decode()}]}).encode()


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


@pytest.mark.extended
@pytest.mark.slow
def test_served_model_refuses_large_and_bad_bodies_in_a_few_bytes_and_serves_on(served):
    url, _ = served
    good = _post(url, _photo_request("dog"))
    assert good.status_code == 200, good.text
    (answer,) = good.json()["predictions"]
    assert answer["label"] in ("cat", "dog") and 0 <= answer["p_dog"] <= 1

    too_large = _post(url, b"\xff" * (LIMIT_MB * MB + 1))  # Content-Length says so
    assert too_large.status_code == 413
    assert "serving.max_request_mb (4 MB)" in too_large.json()["message"]
    streamed = (b"\xff" * MB for _ in range(2 * LIMIT_MB))  # chunked: counted as it comes
    assert _post(url, streamed).status_code == 413

    for body, content_type in [
        (b"\xff" * (LIMIT_MB * MB - 100), "application/json"),  # not UTF-8
        (b"not json " * 100_000, "application/json"),
        (b"\xff" * 100_000, "text/csv"),
    ]:
        refused = _post(url, body, content_type)
        assert refused.status_code == 400, refused.text[:200]
        assert len(refused.content) < 300 and refused.json()["error_code"] == "BAD_REQUEST"

    assert _post(url, _photo_request("cat")).status_code == 200  # still serving


@pytest.mark.extended
@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc")
def test_memory_of_the_server_stays_bounded_under_concurrent_bad_bodies(served):
    url, pid = served
    assert _post(url, _photo_request("dog")).status_code == 200  # warm: its first request
    before = _peak_rss_mb(pid)
    statuses = []

    def send(body: bytes) -> None:
        statuses.append(_post(url, body).status_code)

    for body in (b"\xff" * 31_500_000, b"\xff" * (LIMIT_MB * MB - 100)):
        threads = [threading.Thread(target=send, args=(body,)) for _ in range(BAD_BODIES)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert sorted(set(statuses)) == [400, 413] and len(statuses) == 2 * BAD_BODIES
    # Each refused body is held once, and joined once: about 2 x limit each at most;
    # unguarded, MLflow built a ~10 x body error for each (GBs here).
    growth = _peak_rss_mb(pid) - before
    assert growth < 3 * BAD_BODIES * LIMIT_MB, f"peak RSS grew {growth:.0f} MB"


def test_the_checks_before_mlflow_say_what_is_wrong_in_one_short_line():
    assert unparseable(b'{"dataframe_records": []}', b"application/json; charset=utf-8") == ""
    assert unparseable(b"a,b\n1,2\n", b"text/csv") == ""
    assert "not JSON at byte 3" in unparseable(b"{} x", b"application/json")
    assert "not JSON" in unparseable(b"\xff\xfe junk", b"application/json")
    assert "not UTF-8" in unparseable(b"\xff", b"text/csv")
    assert unparseable(b"\x00PAR1", b"application/vnd.apache.parquet") == ""  # MLflow's to read


def test_a_long_error_is_cut_to_its_code_and_the_start_of_its_message():
    echo = json.dumps({"error_code": "BAD_REQUEST", "message": "Bad input: " + "\\xff" * 10**5})
    cut = json.loads(cut_error(echo.encode()[:16_385], len(echo)))
    assert cut["error_code"] == "BAD_REQUEST"
    assert cut["message"].startswith("Bad input: \\xff") and len(cut["message"]) < 400
    assert f"cut from {len(echo):,} bytes" in cut["message"]


def test_serve_without_a_store_says_to_train_first(tmp_path):
    result = run(
        [sys.executable, "-m", "pipeline", "serve", "-p", str(_free_port())],
        tmp_path, check=False, env={"MLFLOW_TRACKING_URI": ""},
    )  # fmt: skip
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: --model models:/dogs-vs-cats@champion: not found")
    assert line.endswith("run `dvc repro` to train and register the models")
    assert not (tmp_path / "mlflow.db").exists()
