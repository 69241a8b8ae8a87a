"""Servers started on 127.0.0.1, and only there: an `mlflow server` and a Ray head, for the
tests (tests/helpers/servers.py) and the sweep benchmark. A server that does not come up
raises RuntimeError with its log."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent  # the venv's mlflow and ray
RAY_ENV = {  # keeps every Ray process on 127.0.0.1, and silent (README: seed sweeps)
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # else ray start resolves 127.0.0.1 away
    # The head starts a client server per `ray://` connection; on a loaded 2-core machine its
    # start can outlast Ray's 30 s default.
    "RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S": "120",
    # The head's client proxy forks a server per connection while its gRPC threads run: with
    # gRPC's fork handlers on, the child can abort before it execs and the driver waits out
    # the timeout above; the child always execs at once, when gRPC says to turn them off.
    "GRPC_ENABLE_FORK_SUPPORT": "false",
}


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on once this returns."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """`mlflow server` on 127.0.0.1 (sqlite backend, artifacts proxied by the server: the
    default --serve-artifacts), in its own process group so that stopping it stops uvicorn.
    It starts in the background: `wait_healthy` before the first request."""

    def __init__(self, root: Path, store: str | None = None):
        """Its log and artifacts under `root`; its runs in `store` (default: root's server.db)."""
        self.url = f"http://127.0.0.1:{free_port()}"
        store = store or f"sqlite:///{root / 'server.db'}"
        self.artifacts = root / "server-artifacts"
        self.log = root / "server.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [str(BIN / "mlflow"), "server",
                 "--backend-store-uri", store,
                 "--host", "127.0.0.1", "--port", self.url.rsplit(":", 1)[1],
                 "--workers", "1", "--artifacts-destination", str(self.artifacts)],
                cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                # MLflow 3 also starts a job runner: not needed here, and slow to start on a
                # loaded machine.
                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            )  # fmt: skip

    def healthy(self) -> bool:
        import requests

        try:
            return requests.get(f"{self.url}/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def wait_healthy(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited ({self.process.returncode}):\n{self.log.read_text()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"mlflow server not healthy after {timeout} s:\n{self.log.read_text()}"
                )
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


class RayHead:
    """`ray start --head` on 127.0.0.1 with its own temp dir (short: Ray's socket paths must
    fit in 107 bytes), so its processes can be told apart from any other Ray's. It starts in
    the background: `wait_started` before the first task."""

    def __init__(self, num_cpus: int = 2):
        self.temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
        self.client_port = free_port()
        self.env = {**os.environ, **RAY_ENV}
        self.process = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
             f"--port={free_port()}", f"--ray-client-server-port={self.client_port}",
             "--include-dashboard=false", f"--num-cpus={num_cpus}", "--disable-usage-stats",
             f"--temp-dir={self.temp}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env,
        )  # fmt: skip

    @property
    def address(self) -> str:
        return f"ray://127.0.0.1:{self.client_port}"

    def wait_started(self, timeout: float = 60) -> None:
        try:
            output, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"ray start not done after {timeout} s") from None
        if self.process.returncode != 0:
            raise RuntimeError(f"ray start failed ({self.process.returncode}):\n{output}")

    def processes(self) -> list:
        """Every process of this cluster: those naming its temp dir, and their children."""
        import psutil

        found = {}
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                if str(self.temp) in " ".join(proc.info["cmdline"] or ()):
                    found[proc.pid] = proc
                    found.update((c.pid, c) for c in proc.children(recursive=True))
        return list(found.values())

    def stop(self) -> None:
        import psutil

        procs = self.processes()  # ours, by pid; then Ray's own stop for anything left
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(procs, timeout=10)
        subprocess.run(
            [str(BIN / "ray"), "stop", "--force"], env=self.env, capture_output=True, timeout=60
        )
        shutil.rmtree(self.temp, ignore_errors=True)
