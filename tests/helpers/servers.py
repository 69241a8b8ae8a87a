"""Servers the tests start on 127.0.0.1, and only there."""

from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

MLFLOW = str(Path(sys.executable).parent / "mlflow")


class ArchiveServer(http.server.ThreadingHTTPServer):
    """A real HTTP server on 127.0.0.1 serving files from a directory, with HTTP Range
    support and scripted faults: `faults[name]` is a list of what the next requests get
    (an int status code, or "cut" to drop the connection halfway through the body)."""

    daemon_threads = True

    def __init__(self, directory: Path):
        self.directory = directory
        self.faults: dict[str, list] = {}
        self.requests: list[dict] = []
        self.honour_range = True  # False: a server that always sends the whole file
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        server: ArchiveServer = self.server
        name = self.path.lstrip("/")
        server.requests.append({"path": name, "range": self.headers.get("Range")})
        fault = server.faults.get(name, []).pop(0) if server.faults.get(name) else None
        if isinstance(fault, int):
            self.send_error(fault)
            return
        path = server.directory / name
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        if (rng := self.headers.get("Range")) and server.honour_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if fault == "cut":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)  # a broken transfer, as the network does it
            return
        self.wfile.write(body)


class MlflowServer:
    """`mlflow server` on 127.0.0.1 (sqlite backend, artifacts proxied by the server: the
    default --serve-artifacts), in its own process group so that stopping it stops uvicorn."""

    def __init__(self, root: Path):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.artifacts = root / "server-artifacts"
        self.log = root / "server.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [
                    MLFLOW,
                    "server",
                    "--backend-store-uri",
                    f"sqlite:///{root / 'server.db'}",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--workers",
                    "1",
                    "--artifacts-destination",
                    str(self.artifacts),
                ],
                cwd=root,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # MLflow 3 also starts a job runner with 7 huey consumers: not needed here, and
                # it doubles the start-up time on a loaded machine.
                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            )

    def healthy(self) -> bool:
        try:
            return requests.get(f"{self.url}/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def wait_healthy(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.process.poll() is not None:
                pytest.fail(
                    f"mlflow server exited ({self.process.returncode}):\n{self.log.read_text()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not healthy after {timeout} s:\n{self.log.read_text()}")
            time.sleep(1)

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self.process.wait(10)
