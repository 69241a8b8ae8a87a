"""The machine a figure was measured on: CPU model, bfloat16 units, measured matmul limits.

Seconds mean little across machines (shared 2-core machines differ by 2x from day to day);
the matmul limit measured beside them says how fast this one was, for the kernels of the
Keras backend in use (TensorFlow's and XLA's CPU matmuls differ).
"""

from __future__ import annotations

import os
import platform
import time

from pipeline.training import precision

MATMUL_SIDE = 2048  # large enough to reach the kernels' peak, small enough to take a second
MATMUL_ROUNDS = 5


def matmul_gflops(dtype: str, side: int = MATMUL_SIDE) -> float:
    """The best of a few square matmuls in `dtype` on this CPU, in GFLOP/s, by
    keras.ops.matmul on the Keras backend in use: the kernels its training runs (NumPy has
    no bfloat16 matmul kernel, so it would not measure the same thing)."""
    import keras
    import numpy as np

    with keras.device("cpu:0"):
        a = keras.ops.convert_to_tensor(np.random.default_rng(0).random((side,) * 2), dtype)
        keras.ops.convert_to_numpy(keras.ops.matmul(a, a))  # warm-up: thread pools, kernels
        best = float("inf")
        for _ in range(MATMUL_ROUNDS):
            started = time.perf_counter()
            keras.ops.convert_to_numpy(keras.ops.matmul(a, a))  # waits for the result
            best = min(best, time.perf_counter() - started)
    return 2 * side**3 / best / 1e9


def describe(side: int = MATMUL_SIDE) -> dict:
    """CPU model, cores, bfloat16 units and the float32 / bfloat16 matmul limits, with the
    Keras backend that measured them."""
    import keras

    cpu = precision.this_cpu()
    return {
        "cpu_model": cpu["cpu.model"],
        "cores": os.cpu_count(),
        "bf16_units": cpu["cpu.bf16_units"],
        "machine": platform.machine(),
        "load_average": round(os.getloadavg()[0], 1),  # other work shares the limits above
        "matmul_gflops_float32": round(matmul_gflops("float32", side)),
        "matmul_gflops_bfloat16": round(matmul_gflops("bfloat16", side)),
        "matmul_backend": keras.backend.backend(),
    }
