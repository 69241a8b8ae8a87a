"""Servers the tests start on 127.0.0.1, and only there: the HTTP archive server here, the
MLflow server and Ray head from harness/servers.py (the sweep benchmark uses them too)."""

from __future__ import annotations

import contextlib
import http.server
from pathlib import Path

from harness import servers
from harness.servers import RAY_ENV, MlflowServer, free_port  # noqa: F401  (re-exported)

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1"}


class RayHead(servers.RayHead):
    """The harness's Ray head, with what the tests check of it."""

    def listening(self) -> list[tuple[str, str, int]]:
        """(process name, address, port) of every listening TCP socket of the cluster."""
        import psutil

        pids = {proc.pid: proc for proc in self.processes()}
        sockets = []
        for conn in psutil.net_connections("inet"):
            if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
                with contextlib.suppress(psutil.Error):
                    sockets.append((pids[conn.pid].name(), conn.laddr.ip, conn.laddr.port))
        return sockets

    def assert_loopback_only(self) -> None:
        sockets = self.listening()
        names = {name for name, _, _ in sockets}
        assert {"gcs_server", "raylet"} <= names, sockets
        outside = [s for s in sockets if s[1] not in LOOPBACK]
        assert not outside, f"Ray processes listening beyond 127.0.0.1: {outside}"

    def client_logs(self) -> str:
        """The tails of the head's Ray client server logs, for a failure message."""
        logs = sorted((self.temp / "session_latest/logs").glob("ray_client_server*.err"))
        return "\n".join(f"--- {p.name}\n" + p.read_text()[-3000:] for p in logs)


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


def wait_until_up(url: str, process, log: Path, name: str, timeout: float = 240) -> None:
    """Until a scoring server started as `process` answers /ping; its log on failure."""
    import time

    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{name} exited:\n{log.read_text()}")
        try:
            if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(1)
    raise AssertionError(f"{name} not up after {timeout} s:\n{log.read_text()}")
