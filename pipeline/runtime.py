"""How training runs on this machine: seeds, determinism, devices, mixed precision, XLA.

`auto` turns XLA and the mirrored strategy on only where a GPU is visible, and mixed
precision where it pays: float16 on a GPU, bfloat16 on a CPU with AVX512-BF16/AMX units
(2-2.5x faster convnet training on ours), float32 elsewhere (pipeline/precision.py).
`PIPELINE_LOGICAL_CPUS=N` splits the CPU into N logical devices, so the mirrored strategy
can be exercised without GPUs (it is a machine setting, not a param: results don't change).
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from pipeline import precision
from pipeline.params import Params, RuntimeParams


def _gpus() -> list:
    return tf.config.list_physical_devices("GPU")


def _on(switch: str) -> bool:
    return switch == "on" or (switch == "auto" and bool(_gpus()))


def setup(params: Params) -> tf.distribute.Strategy:
    """Seed everything and configure TensorFlow; call once, before any model is built."""
    runtime: RuntimeParams = params.train.runtime
    logical_cpus = int(os.environ.get("PIPELINE_LOGICAL_CPUS", "1"))
    if logical_cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus
        )
    keras.utils.set_random_seed(params.train.seed)
    if runtime.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(precision_policy(runtime))
    return _strategy(runtime.strategy)


_precision_reason = "not chosen yet"  # why precision_policy chose what it did, for the tags


def precision_policy(runtime: RuntimeParams) -> str:
    global _precision_reason
    policy, _precision_reason = precision.choose(
        runtime.mixed_precision, len(_gpus()), precision.this_cpu_flags()
    )
    return policy


def _strategy(name: str) -> tf.distribute.Strategy:
    gpus = _gpus()
    if name == "default" or (name == "auto" and len(gpus) < 2):
        return tf.distribute.get_strategy()
    devices = [d.name for d in tf.config.list_logical_devices("GPU" if gpus else "CPU")]
    return tf.distribute.MirroredStrategy(devices)


def jit_compile(params: Params) -> bool:
    return _on(params.train.runtime.jit_compile)


def describe(strategy: tf.distribute.Strategy) -> dict[str, str]:
    """Tags that say where a run trained."""
    return {
        "strategy": type(strategy).__name__,
        "replicas": str(strategy.num_replicas_in_sync),
        "precision": keras.mixed_precision.global_policy().name,
        "precision_reason": _precision_reason,
        "gpus": str(len(_gpus())),
    }
