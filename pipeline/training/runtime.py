"""How training runs on this machine: seeds, determinism, devices, mixed precision, XLA.

`auto` turns XLA and the mirrored strategy on only where a GPU is visible, and mixed
precision where it pays: float16 on a GPU, bfloat16 on a CPU with AVX512-BF16/AMX units
(faster at the same accuracy: docs/performance.md), float32 elsewhere (pipeline/training/precision.py).
`PIPELINE_LOGICAL_CPUS=N` splits the CPU into N logical devices, so the mirrored strategy
can be exercised without GPUs (it is a machine setting, not a param: results don't change).
`PIPELINE_AUTO_AS_GPUS=N` makes `auto` (and `on`) decide as on a machine with N GPUs: with
N >= 1, XLA and float16 on; with N >= 2 too, the mirrored strategy over the logical CPUs.
It is the seam that lets tests run on CPUs what a GPU machine runs by default.

On JAX (`train.runtime.backend`, docs/backends.md) nothing here imports TensorFlow: the GPUs
are JAX's, `mirrored` (or `auto` with several GPUs) is Keras' DataParallel over the devices,
Keras compiles every step with XLA (`jit_compile: off` runs eagerly), and the logical CPUs
are XLA's host devices, which `python -m pipeline` asks for before JAX starts (backend.py).
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import keras

from pipeline.core.errors import PipelineError
from pipeline.core.params import RuntimeParams
from pipeline.training import precision

GPU_PLATFORMS = ("gpu", "cuda", "rocm")  # jax.Device.platform of an accelerator we train on


def _tensorflow() -> bool:
    return keras.backend.backend() == "tensorflow"


def _gpus() -> list:
    if not _tensorflow():
        import jax

        return [d for d in jax.devices() if d.platform in GPU_PLATFORMS]
    import tensorflow as tf

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
class JaxStrategy:
    """What train.py asks of a tf.distribute strategy, on JAX: a scope to build the model in
    (none is needed: Keras' distribution, set globally, places the variables) and the
    replica count."""

    name: str  # the tag: DataParallel, or Default for one device
    num_replicas_in_sync: int

    def scope(self):
        return contextlib.nullcontext()


@dataclass(frozen=True)
class Runtime:
    """How this process trains, as `setup` configured it."""

    strategy: object  # a tf.distribute.Strategy, or a JaxStrategy
    precision: str  # the Keras dtype policy: float32, mixed_bfloat16, mixed_float16
    precision_reason: str  # why precision.choose took it
    jit_compile: bool
    backend: str = "tensorflow"


def setup(runtime: RuntimeParams, seed: int) -> Runtime:
    """Seed everything and configure the backend; call once, before any model is built."""
    _check_backend(runtime.backend)
    logical_cpus = int(os.environ.get("PIPELINE_LOGICAL_CPUS", "1"))
    if _tensorflow():
        import tensorflow as tf

        if logical_cpus > 1:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus
            )
        keras.utils.set_random_seed(seed)
        if runtime.deterministic:
            tf.config.experimental.enable_op_determinism()
        strategy, jit = _strategy(runtime.strategy), _on(runtime.jit_compile)
    else:
        _check_host_devices(logical_cpus)
        _seed_without_tensorflow(seed)
        strategy, jit = _jax_strategy(runtime.strategy), runtime.jit_compile != "off"
    policy, reason = precision_policy(runtime)
    keras.mixed_precision.set_global_policy(policy)
    return Runtime(strategy, policy, reason, jit, keras.backend.backend())


def _check_backend(wanted: str) -> None:
    running = keras.backend.backend()
    if running != wanted:
        raise PipelineError(
            f"train.runtime.backend is {wanted}, but Keras runs on {running}: KERAS_BACKEND is "
            "read once, as Keras is first imported; run the stage with `python -m pipeline` "
            f"(it sets it from params.yaml) or set KERAS_BACKEND={wanted} before Python starts"
        )


def _check_host_devices(logical_cpus: int) -> None:
    """On JAX, PIPELINE_LOGICAL_CPUS is an XLA flag read as JAX starts: say so if it came late."""
    import jax

    found = len(jax.devices("cpu"))
    if logical_cpus > 1 and found != logical_cpus:
        raise PipelineError(
            f"PIPELINE_LOGICAL_CPUS={logical_cpus}, but JAX started with {found} CPU devices: "
            f"set XLA_FLAGS=--xla_force_host_platform_device_count={logical_cpus} before "
            "JAX starts (python -m pipeline does)"
        )


def _seed_without_tensorflow(seed: int) -> None:
    """keras.utils.set_random_seed, minus its TensorFlow seed: it imports TensorFlow wherever
    it is installed (for tf.data's shuffles, which no JAX stage runs)."""
    from keras.src.utils import module_utils

    tensorflow = module_utils.tensorflow
    known, tensorflow._available = tensorflow._available, False
    try:
        keras.utils.set_random_seed(seed)
    finally:
        tensorflow._available = known


def precision_policy(runtime: RuntimeParams) -> tuple[str, str]:
    """(the dtype policy the params ask for on this machine, why)."""
    return precision.choose(runtime.mixed_precision, _gpu_count(), precision.this_cpu_flags())


# One strategy per process: with a second MirroredStrategy in the same process, the next
# model's gradient all-reduce aborted (a shape mismatch in a collective instance).
@functools.cache
def _strategy(name: str):
    import tensorflow as tf

    if name == "default" or (name == "auto" and _gpu_count() < 2):
        return tf.distribute.get_strategy()
    devices = [d.name for d in tf.config.list_logical_devices("GPU" if _gpus() else "CPU")]
    return tf.distribute.MirroredStrategy(devices)


def _jax_strategy(name: str) -> JaxStrategy:
    """Keras' DataParallel over every GPU (else every CPU device) where `mirrored`, or `auto`
    with two GPUs or more; one device otherwise. Set for the process, as MirroredStrategy."""
    import jax

    devices = _gpus() or jax.devices("cpu")
    if name == "default" or (name == "auto" and _gpu_count() < 2) or len(devices) < 2:
        keras.distribution.set_distribution(None)
        return JaxStrategy("Default", 1)
    names = [f"{d.platform}:{d.id}" for d in devices]
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=names))
    return JaxStrategy("DataParallel", len(devices))


def check_batch_size(setup: Runtime, batch_size: int, param: str) -> None:
    """Refuse a batch size that DataParallel cannot split: JAX shards every batch evenly
    across the devices, and fails on each batch they do not divide (pipeline/data/dataset.py
    trims or fills only a last partial batch)."""
    devices = setup.strategy.num_replicas_in_sync
    if isinstance(setup.strategy, JaxStrategy) and batch_size % devices:
        raise PipelineError(
            f"params.yaml: {param} is {batch_size}, which {devices} devices cannot split evenly "
            f"(DataParallel on JAX); use a multiple of {devices}"
        )


def describe(runtime: Runtime) -> dict[str, str]:
    """Tags that say where a run trained."""
    strategy = runtime.strategy
    return {
        "backend": runtime.backend,
        "strategy": strategy.name if isinstance(strategy, JaxStrategy) else type(strategy).__name__,
        "replicas": str(strategy.num_replicas_in_sync),
        "precision": runtime.precision,
        "precision_reason": runtime.precision_reason,
        "jit_compile": str(runtime.jit_compile).lower(),  # XLA: what the runs compare
        "gpus": str(len(_gpus())),
        **precision.this_cpu(),
    }
