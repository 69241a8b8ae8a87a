"""How training runs on this machine: seeds, determinism, devices, mixed precision, XLA.

`auto` turns XLA and the mirrored strategy on only where a GPU is visible, and mixed
precision where it pays: float16 on a GPU, bfloat16 on a CPU with AVX512-BF16/AMX units
(faster at the same accuracy: docs/performance.md), float32 elsewhere (pipeline/training/precision.py).
`PIPELINE_LOGICAL_CPUS=N` splits the CPU into N logical devices, so the mirrored strategy
can be exercised without GPUs (it is a machine setting, not a param: results don't change).
`PIPELINE_AUTO_AS_GPUS=N` makes `auto` (and `on`) decide as on a machine with N GPUs: with
N >= 1, XLA and float16 on; with N >= 2 too, the mirrored strategy over the logical CPUs.
It is the seam that lets tests run on CPUs what a GPU machine runs by default.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import keras
import tensorflow as tf

from pipeline.core.errors import PipelineError
from pipeline.core.params import RuntimeParams
from pipeline.training import precision


def _gpus() -> list:
    return tf.config.list_physical_devices("GPU")


def _gpu_count() -> int:
    """The GPUs that `auto` decides by: the visible ones, or PIPELINE_AUTO_AS_GPUS."""
    forced = os.environ.get("PIPELINE_AUTO_AS_GPUS", "")
    if not forced:
        return len(_gpus())
    if not forced.isdigit():
        raise PipelineError(
            f"PIPELINE_AUTO_AS_GPUS={forced}: give a number of GPUs (0, 1, 2, ...) or unset it"
        )
    return int(forced)


def _on(switch: str) -> bool:
    return switch == "on" or (switch == "auto" and _gpu_count() > 0)


@dataclass(frozen=True)
class Runtime:
    """How this process trains, as `setup` configured it."""

    strategy: tf.distribute.Strategy
    precision: str  # the Keras dtype policy: float32, mixed_bfloat16, mixed_float16
    precision_reason: str  # why precision.choose took it
    jit_compile: bool


def setup(runtime: RuntimeParams, seed: int) -> Runtime:
    """Seed everything and configure TensorFlow; call once, before any model is built."""
    logical_cpus = int(os.environ.get("PIPELINE_LOGICAL_CPUS", "1"))
    if logical_cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus
        )
    keras.utils.set_random_seed(seed)
    if runtime.deterministic:
        tf.config.experimental.enable_op_determinism()
    policy, reason = precision_policy(runtime)
    keras.mixed_precision.set_global_policy(policy)
    return Runtime(_strategy(runtime.strategy), policy, reason, _on(runtime.jit_compile))


def precision_policy(runtime: RuntimeParams) -> tuple[str, str]:
    """(the dtype policy the params ask for on this machine, why)."""
    return precision.choose(runtime.mixed_precision, _gpu_count(), precision.this_cpu_flags())


# One strategy per process: with a second MirroredStrategy in the same process, the next
# model's gradient all-reduce aborted (a shape mismatch in a collective instance).
@functools.cache
def _strategy(name: str) -> tf.distribute.Strategy:
    if name == "default" or (name == "auto" and _gpu_count() < 2):
        return tf.distribute.get_strategy()
    devices = [d.name for d in tf.config.list_logical_devices("GPU" if _gpus() else "CPU")]
    return tf.distribute.MirroredStrategy(devices)


def describe(runtime: Runtime) -> dict[str, str]:
    """Tags that say where a run trained."""
    return {
        "strategy": type(runtime.strategy).__name__,
        "replicas": str(runtime.strategy.num_replicas_in_sync),
        "precision": runtime.precision,
        "precision_reason": runtime.precision_reason,
        "jit_compile": str(runtime.jit_compile).lower(),  # XLA: what the runs compare
        "gpus": str(len(_gpus())),
        **precision.this_cpu(),
    }
