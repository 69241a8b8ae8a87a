"""How training runs on this machine: seeds, determinism, devices, mixed precision, XLA.

`auto` turns mixed precision, XLA and the mirrored strategy on only where a GPU is
visible. Mixed precision `on` means float16 on a GPU and bfloat16 on a CPU: CPUs emulate
float16, while bfloat16 runs on AVX512-BF16/AMX units (2-2.5x faster convnet training on
ours, benchmarks/benchmark.py); on a CPU without them it is slower, so it is not automatic.
`PIPELINE_LOGICAL_CPUS=N` splits the CPU into N logical devices, so the mirrored strategy
can be exercised without GPUs (it is a machine setting, not a param: results don't change).
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from pipeline.params import RuntimeParams


def _gpus() -> list:
    return tf.config.list_physical_devices("GPU")


def _on(switch: str) -> bool:
    return switch == "on" or (switch == "auto" and bool(_gpus()))


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


def precision_policy(runtime: RuntimeParams) -> str:
    if not _on(runtime.mixed_precision):
        return "float32"
    return "mixed_float16" if _gpus() else "mixed_bfloat16"


def _strategy(name: str) -> tf.distribute.Strategy:
    gpus = _gpus()
    if name == "default" or (name == "auto" and len(gpus) < 2):
        return tf.distribute.get_strategy()
    devices = [d.name for d in tf.config.list_logical_devices("GPU" if gpus else "CPU")]
    return tf.distribute.MirroredStrategy(devices)


def jit_compile(runtime: RuntimeParams) -> bool:
    return _on(runtime.jit_compile)


def describe(strategy: tf.distribute.Strategy) -> dict[str, str]:
    """Tags that say where a run trained."""
    return {
        "strategy": type(strategy).__name__,
        "replicas": str(strategy.num_replicas_in_sync),
        "precision": keras.mixed_precision.global_policy().name,
        "gpus": str(len(_gpus())),
    }
