"""uv.lock pins both TensorFlow builds: the CPU one by default, the CUDA one on request.

Offline (`--offline` with an empty cache): what each README command would install is read
from the lock file alone, and `uv lock --check` proves the lock matches pyproject.toml.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib

import pytest

from tests.helpers.project import ROOT

UV = shutil.which("uv")
needs_uv = pytest.mark.skipif(UV is None, reason="uv is not on PATH")


def uv(*args: str, cache) -> subprocess.CompletedProcess:
    env = {**os.environ, "UV_CACHE_DIR": str(cache), "UV_OFFLINE": "1"}
    env.pop("UV_NO_GROUP", None)
    return subprocess.run([UV, *args], cwd=ROOT, capture_output=True, text=True, env=env)


def exported(*groups: str, cache) -> dict[str, str]:
    """{package: 'version ; marker'} that `uv sync --locked <groups>` would install."""
    result = uv("export", "--locked", "--no-hashes", "--no-header", *groups, cache=cache)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "==" in line]
    return dict(line.split("==", 1) for line in lines)


@needs_uv
def test_lock_matches_pyproject_without_network(tmp_path):
    result = uv("lock", "--check", cache=tmp_path)
    assert result.returncode == 0, result.stderr


@needs_uv
def test_default_sync_is_the_cpu_build_and_gpu_is_one_flag_away(tmp_path):
    default = exported(cache=tmp_path)  # `uv sync --locked`, as README and .ci/run do it
    assert default["tensorflow-cpu"].startswith("2.21.0 ; sys_platform == 'linux'")
    assert default["tensorflow"].startswith("2.21.0 ; sys_platform == 'darwin'")
    assert not [name for name in default if name.startswith("nvidia-")]
    gpu = exported("--no-group", "cpu", "--group", "gpu", cache=tmp_path)
    assert "tensorflow-cpu" not in gpu
    assert gpu["tensorflow"].startswith("2.21.0 ; platform_machine == 'x86_64'")
    assert {"nvidia-cudnn-cu12", "nvidia-cublas-cu12"} <= set(gpu)
    both = uv("export", "--locked", "--group", "gpu", cache=tmp_path)  # cpu is a default group
    assert both.returncode != 0 and "incompatible" in both.stderr


def test_lock_holds_both_builds_for_linux_x86_64():
    """Without uv: the lock file itself resolves tensorflow-cpu and tensorflow[and-cuda]."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    packages = {p["name"]: p for p in lock["package"]}
    project = packages["dogs-vs-cats-pipeline"]
    assert "cpu" in project["default-groups"] and "gpu" not in project["default-groups"]
    assert {c["group"] for c in lock["conflicts"][0]} == {"cpu", "gpu"}
    groups = project["dev-dependencies"]
    assert [d["name"] for d in groups["cpu"]] == ["tensorflow", "tensorflow-cpu"]
    nvml, gpu = groups["gpu"]  # sorted by name
    assert (gpu["name"], gpu["extra"]) == ("tensorflow", ["and-cuda"])
    assert nvml["name"] == "nvidia-ml-py"  # MLflow's GPU system metrics
    for name in ("tensorflow", "tensorflow-cpu"):
        assert packages[name]["version"] == "2.21.0"
        wheels = [w["url"] for w in packages[name]["wheels"]]
        assert any("manylinux" in url and url.endswith("x86_64.whl") for url in wheels), name
    cuda = packages["tensorflow"]["optional-dependencies"]["and-cuda"]
    assert "nvidia-cudnn-cu12" in {d["name"] for d in cuda}
