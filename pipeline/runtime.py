"""How training runs on this machine: seeds, determinism, devices, mixed precision, XLA.

`auto` turns XLA and the mirrored strategy on only where a GPU is visible, and mixed
precision where it pays: float16 on a GPU, bfloat16 on a CPU with AVX512-BF16/AMX units
(2-2.5x faster convnet training on ours), float32 elsewhere (pipeline/precision.py).
`PIPELINE_LOGICAL_CPUS=N` splits the CPU into N logical devices, so the mirrored strategy
can be exercised without GPUs (it is a machine setting, not a param: results don't change).
`PIPELINE_AUTO_AS_GPUS=N` makes `auto` (and `on`) decide as on a machine with N GPUs: with
N >= 1, XLA and float16 on; with N >= 2 too, the mirrored strategy over the logical CPUs.
It is the seam that lets tests run on CPUs what a GPU machine runs by default.
"""

from __future__ import annotations

import functools
import os

import keras
import tensorflow as tf

from pipeline import precision
from pipeline.errors import PipelineError
from pipeline.params import RuntimeParams


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


def setup(runtime: RuntimeParams, seed: int) -> tf.distribute.Strategy:
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
    keras.mixed_precision.set_global_policy(precision_policy(runtime))
    return _strategy(runtime.strategy)


_precision_reason = "not chosen yet"  # why precision_policy chose what it did, for the tags


def precision_policy(runtime: RuntimeParams) -> str:
    global _precision_reason
    policy, _precision_reason = precision.choose(
        runtime.mixed_precision, _gpu_count(), precision.this_cpu_flags()
    )
    return policy


# One strategy per process: with a second MirroredStrategy in the same process, the next
# model's gradient all-reduce aborted (a shape mismatch in a collective instance).
@functools.cache
def _strategy(name: str) -> tf.distribute.Strategy:
    if name == "default" or (name == "auto" and _gpu_count() < 2):
        return tf.distribute.get_strategy()
    devices = [d.name for d in tf.config.list_logical_devices("GPU" if _gpus() else "CPU")]
    return tf.distribute.MirroredStrategy(devices)


def jit_compile(runtime: RuntimeParams) -> bool:
    return _on(runtime.jit_compile)


def describe(strategy: tf.distribute.Strategy) -> dict[str, str]:
    """Tags that say where a run trained."""
    return {
        "strategy": type(strategy).__name__,
        "replicas": str(strategy.num_replicas_in_sync),
        "precision": keras.mixed_precision.global_policy().name,
        "precision_reason": _precision_reason,
        "gpus": str(len(_gpus())),
    }
