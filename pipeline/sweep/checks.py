"""Setups refused before any work, one line each (PipelineError): a Ray sweep whose workers
could not fetch the sweep's code and data, or could not report back.

Each check is cheap and bounded in time (git and DVC config reads, one TCP connect), so a
bad setup costs seconds, never a cluster's worth of failed tasks.
"""

from __future__ import annotations

import os
import socket
import subprocess
import urllib.parse
from pathlib import Path

from pipeline.core.errors import PipelineError

CONNECT_TIMEOUT_S = 3.0  # an unreachable Ray address fails within this
GIT_TIMEOUT_S = 30.0  # git ls-remote against the project's remote


def _git(root: Path, *args: str, timeout: float = GIT_TIMEOUT_S) -> subprocess.CompletedProcess:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}  # never wait for a password
    try:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=timeout, env=env
        )
    except subprocess.TimeoutExpired:
        raise PipelineError(f"git {' '.join(args)}: no answer in {timeout:.0f} s") from None


def ray_address(on: str) -> str:
    """The address to connect to: `ray://HOST:PORT` as given, or RAY_ADDRESS for `auto`."""
    if on == "auto":
        address = os.environ.get("RAY_ADDRESS", "")
        if not address:
            raise PipelineError(
                "--on auto: RAY_ADDRESS is not set; set it to the cluster "
                "(ray://HOST:10001) or give --on ray://HOST:PORT"
            )
        return address
    if not on.startswith("ray://"):
        raise PipelineError(f"--on {on}: expected local, auto or ray://HOST:PORT")
    return on


def host_port(address: str) -> tuple[str, int]:
    parsed = urllib.parse.urlparse(address if "://" in address else f"ray://{address}")
    if not parsed.hostname or not parsed.port:
        raise PipelineError(f"Ray address {address}: expected ray://HOST:PORT or HOST:PORT")
    return parsed.hostname, parsed.port


def tracking_store_is_shared(uri: str) -> None:
    """Workers on other machines cannot write a local sqlite file (or a folder) of this one."""
    if urllib.parse.urlparse(uri).scheme not in ("http", "https"):
        raise PipelineError(
            f"MLFLOW_TRACKING_URI={uri}: a local store that Ray workers cannot write; "
            "start a tracking server (mlflow server) and set MLFLOW_TRACKING_URI=http://HOST:PORT"
        )


def git_remote_url(root: Path, remote: str) -> str:
    result = _git(root, "remote", "get-url", remote)
    if result.returncode != 0:
        raise PipelineError(
            f"git remote {remote!r}: not set; workers clone the project from it: "
            f"`git remote add {remote} URL` and push, or give --git-remote"
        )
    return result.stdout.strip()


def commit_is_pushed(root: Path, remote: str) -> str:
    """The sweep's commit (HEAD): committed, and on some branch or tag of `remote`."""
    dirty = _git(root, "status", "--porcelain", "--untracked-files=no").stdout.splitlines()
    if dirty:
        changed = ", ".join(line[3:] for line in dirty[:3])
        raise PipelineError(
            f"uncommitted changes ({changed}): workers clone the commit, not this work tree; "
            "commit and push them first"
        )
    commit = _git(root, "rev-parse", "HEAD").stdout.strip()
    listed = _git(root, "ls-remote", "--heads", "--tags", remote)
    if listed.returncode != 0:
        raise PipelineError(
            f"git remote {remote!r}: cannot list its branches ({listed.stderr.strip()[:200]})"
        )
    for line in listed.stdout.splitlines():
        tip = line.split()[0]
        contains = _git(root, "merge-base", "--is-ancestor", commit, tip)
        if contains.returncode == 0:
            return commit
    raise PipelineError(
        f"commit {commit[:10]} is not pushed to git remote {remote!r}: workers could not "
        f"check it out; `git push {remote}` first"
    )


def dvc_remote(root: Path) -> str:
    """The default DVC remote: workers pull the sweep's inputs from it and push results to it."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        name = repo.config["core"].get("remote")
    if not name:
        raise PipelineError(
            "no default DVC remote: workers pull inputs and push results through it; "
            "`dvc remote add -d NAME URL`, commit and push"
        )
    return name


def ray_reachable(address: str) -> None:
    """One TCP connect, CONNECT_TIMEOUT_S at most: before Ray's own client, which retries
    for a long time."""
    host, port = host_port(address)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = (
            "timed out" if isinstance(exc, TimeoutError) else exc.strerror or type(exc).__name__
        )
        raise PipelineError(
            f"Ray address {address}: unreachable ({reason}); start the cluster "
            "(ray start --head) or give the address it printed"
        ) from None


def refuse_bad_ray_setup(root: Path, on: str, tracking_uri: str, remote: str) -> tuple[str, str]:
    """Every refusal of a Ray sweep, cheapest first; (ray address, git remote URL)."""
    address = ray_address(on)
    host_port(address)
    tracking_store_is_shared(tracking_uri)
    url = git_remote_url(root, remote)
    commit_is_pushed(root, remote)
    dvc_remote(root)
    ray_reachable(address)
    return address, url
