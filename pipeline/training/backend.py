"""Which Keras backend a process trains on (`train.runtime.backend`), chosen before Keras loads.

Keras reads `KERAS_BACKEND` once, at its first import, and JAX reads `XLA_FLAGS` once, as it
starts: so `python -m pipeline` calls `choose` before any command imports either. The param
wins over a `KERAS_BACKEND` already in the environment (DVC tracks the param, not the shell);
only where they differ does it say, in one line, which it used. Without a params.yaml
(predict or serve elsewhere) the environment, or Keras' default, stays.

On JAX two machine settings become XLA flags, as JAX reads them only at its start:
`PIPELINE_LOGICAL_CPUS=N` splits the CPU into N devices
(`--xla_force_host_platform_device_count`), and `deterministic: true` asks XLA for
deterministic GPU kernels (`--xla_gpu_deterministic_ops`). Nothing here imports Keras.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import yaml

from pipeline.core.paths import PARAMS_FILE

BACKENDS = ("tensorflow", "jax")
INSTALLS = {"tensorflow": "uv sync --locked", "jax": "uv sync --locked --group jax"}
DEFAULT = "tensorflow"  # RuntimeParams.backend's default


def configured(params_file: Path = PARAMS_FILE) -> tuple[str | None, bool]:
    """(train.runtime.backend of `params_file`, deterministic); (None, False) where there is
    no readable params.yaml or the value is not a backend: the stage's own load_params then
    names the problem, before Keras loads."""
    try:
        raw = yaml.safe_load(params_file.read_text())
        runtime = raw["train"]["runtime"]
        backend = runtime.get("backend", DEFAULT)
        deterministic = runtime.get("deterministic", False) is True
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return None, False
    return (backend, deterministic) if backend in BACKENDS else (None, False)


def choose(params_file: Path = PARAMS_FILE, environ=os.environ) -> str | None:
    """Set KERAS_BACKEND (and on JAX its XLA flags) from `params_file`; the backend, or None
    where the environment decides."""
    backend, deterministic = configured(params_file)
    if backend is None:
        return None
    if importlib.util.find_spec(backend) is None:  # else Keras' own traceback, at its import
        other = next(b for b in BACKENDS if b != backend)
        raise SystemExit(
            f"error: {params_file.name}: train.runtime.backend is {backend}, which is not "
            f"installed here; set it to {other}, or install {backend} ({INSTALLS[backend]})"
        )
    before = environ.get("KERAS_BACKEND", "")
    if before and before != backend:
        print(
            f"KERAS_BACKEND={before} in the environment; using {params_file}'s "
            f"train.runtime.backend: {backend}",
            file=sys.stderr,
        )
    environ["KERAS_BACKEND"] = backend
    if backend == "jax":
        flags = jax_flags(environ.get("PIPELINE_LOGICAL_CPUS", ""), deterministic)
        add_xla_flags(flags, environ)
    return backend


def jax_flags(logical_cpus: str, deterministic: bool) -> list[str]:
    """The XLA flags that stand on JAX for PIPELINE_LOGICAL_CPUS and `deterministic`."""
    flags = []
    if logical_cpus.isdigit() and int(logical_cpus) > 1:
        flags.append(f"--xla_force_host_platform_device_count={int(logical_cpus)}")
    if deterministic:
        flags.append("--xla_gpu_deterministic_ops=true")
    return flags


def add_xla_flags(flags: list[str], environ=os.environ) -> None:
    """Append `flags` to XLA_FLAGS, leaving any flag the user set there as it is."""
    present = environ.get("XLA_FLAGS", "").split()
    names = {flag.partition("=")[0] for flag in present}
    added = [flag for flag in flags if flag.partition("=")[0] not in names]
    if added:
        environ["XLA_FLAGS"] = " ".join(present + added)
