from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
SHARED_ZIP = Path(
    os.environ.get("DOGS_VS_CATS_ZIP", ROOT.parent / "shared/data/dogs-vs-cats-6000.zip")
)


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


@pytest.fixture
def archive_server(tmp_path):
    directory = tmp_path / "served"
    directory.mkdir()
    server = ArchiveServer(directory)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def tracked_project_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [line for line in out.stdout.splitlines() if line]


def make_project(dest: Path, params_update: dict | None = None) -> Path:
    """A fresh git + DVC repo holding the project's committed files (and working-tree
    edits to them), with params.yaml updated by `params_update` (nested dict merge)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in tracked_project_files():
        if name.startswith("tests/") or not (ROOT / name).exists():
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    if params_update:
        update_params(dest, params_update)
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "init"], dest)
    return dest


def update_params(project: Path, update: dict) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())

    def merge(into: dict, new: dict) -> None:
        for key, value in new.items():
            if (
                isinstance(value, dict)
                and isinstance(into.get(key), dict)
                and not value.get("__replace__")
            ):
                merge(into[key], value)
            else:
                into[key] = (
                    {k: v for k, v in value.items() if k != "__replace__"}
                    if isinstance(value, dict)
                    else value
                )

    merge(params, update)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def run(
    cmd: list[str], cwd: Path, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run a command (dvc, python -m pipeline, git) with the project's venv on PATH."""
    full_env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    for role in ("AUTHOR", "COMMITTER"):  # `dvc exp` commits; CI may have no git identity
        full_env.setdefault(f"GIT_{role}_NAME", "pipeline tests")
        full_env.setdefault(f"GIT_{role}_EMAIL", "tests@localhost")
    full_env.update(env or {})
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=full_env)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def ran_stages(output: str) -> list[str]:
    """Stage names that `dvc repro` actually ran, from its output."""
    return [
        line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")
    ]
