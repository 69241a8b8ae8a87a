"""The augmented model's epoch time with XLA off and on, and the resampling behind it.

    python benchmarks/augment_xla.py [--steps 30] [--rounds 2] [--before REF]

1. Seconds per book epoch (100 steps of 32 images, 150 px) of `augmented`, XLA off (the CPU
   default: the augmentation resamples with affine_transform) and XLA on (the GPU default:
   it resamples with the gather sampler). Each measurement is a fresh process (XLA and the
   code under test are per process), interleaved over `--rounds`, best of each: a noisy
   neighbour on a shared machine only ever slows a run down (XLA on: first round only).
   `--before REF` adds XLA off with the pipeline package of a git ref (e.g. the commit
   before the XLA change).
2. Milliseconds per batch of the resampling alone: affine_transform, and the gather sampler
   without and with XLA, so the choice between them is visible without the convnet.
Random 150 px images: the timings do not depend on what the pictures show.
Prints a table; writes nothing. Not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCH, SIZE, STEPS_PER_EPOCH = 32, 150, 100


def images(n: int = 640):
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8), rng.integers(0, 2, n)


def measure_epoch(xla: bool, steps: int) -> dict:
    """In this process: seconds per book epoch of the augmented convnet (wall, and CPU
    seconds of the process: steadier when other work shares the cores), and its loss."""
    import keras

    from pipeline.core.params import AugmentationParams
    from pipeline.data.dataset import make_dataset
    from pipeline.models.augment import augmentation
    from pipeline.models.scratch import build_convnet
    from pipeline.training.train import compile_model

    keras.utils.set_random_seed(0)
    model = build_convnet(SIZE, 0.5, augmentation(AugmentationParams(), 0))
    compile_model(model, 1e-4, jit_compile=xla)
    x, y = images()
    dataset = make_dataset(x, y, BATCH, training=True, repeat=True)
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)  # trace, compile, warm up
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    loss = model.evaluate(dataset, steps=2, verbose=0)[0]
    return {
        "s_per_epoch": round(wall / steps * STEPS_PER_EPOCH, 2),
        "cpu_s_per_epoch": round(cpu / steps * STEPS_PER_EPOCH, 2),
        "loss": round(float(loss), 4),
    }


def epoch_in_process(tree: Path, xla: bool, steps: int) -> dict:
    """measure_epoch in a fresh process that imports `pipeline` from `tree`."""
    code = (
        f"import sys, json; sys.path[:0] = [{str(tree)!r}, {str(ROOT / 'benchmarks')!r}]; "
        "import augment_xla; "
        f"print(json.dumps(augment_xla.measure_epoch({xla}, {steps})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tree, capture_output=True, text=True, check=False
    )
    if out.returncode:
        raise SystemExit(f"measurement failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def resampling_ms(repeats: int = 20, rounds: int = 3) -> dict:
    """Milliseconds per batch of 32 book draws at 150 px, best of `rounds`."""
    import keras
    import tensorflow as tf

    from pipeline.models.augment import book_transforms, sample_bilinear

    tf.random.set_seed(0)

    def u(low, high):  # the book's ranges (augmentation params), per image
        return tf.random.uniform((BATCH,), low, high)

    transforms = book_transforms(
        u(-0.7, 0.7), u(-30, 30), u(-30, 30), u(-0.2, 0.2), u(0.8, 1.2), u(0.8, 1.2),
        tf.cast(u(0, 1) < 0.5, "float32"), SIZE, SIZE,
    )  # fmt: skip
    batch = tf.cast(tf.constant(images(BATCH)[0]), "float32")
    candidates = {
        "affine_transform": tf.function(
            lambda x, t: keras.ops.image.affine_transform(x, t, fill_mode="nearest")
        ),
        "gather": tf.function(sample_bilinear),
        "gather_xla": tf.function(sample_bilinear, jit_compile=True),
    }
    best = {name: float("inf") for name in candidates}
    for _ in range(rounds):
        for name, function in candidates.items():
            function(batch, transforms).numpy()  # trace, compile
            started = time.perf_counter()
            for _ in range(repeats):
                function(batch, transforms).numpy()
            best[name] = min(best[name], (time.perf_counter() - started) / repeats * 1000)
    return {name: round(ms, 1) for name, ms in best.items()}


def checkout(ref: str) -> Path:
    """The pipeline package as of `ref`, in a temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix="augment-before-"))
    archive = subprocess.run(
        ["git", "archive", ref, "pipeline"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def timed_rounds(variants: dict, steps: int, rounds: int) -> dict:
    """Each variant (name: (tree, xla)) once a round, interleaved; the best of each figure.
    XLA on runs in the first round only: on a CPU it is several times slower, and one
    measurement shows that it trains and at what speed."""
    best: dict[str, dict] = {}
    for round_ in range(rounds):
        for name, (tree, xla) in variants.items():
            if xla and round_:
                continue
            result = epoch_in_process(tree, xla, steps)
            print(name, result, flush=True)
            previous = best.setdefault(name, result)
            for key in ("s_per_epoch", "cpu_s_per_epoch"):
                previous[key] = min(previous[key], result[key])
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--before", help="git ref whose pipeline package to time too")
    args = parser.parse_args()
    variants = {"XLA off": (ROOT, False), "XLA on": (ROOT, True)}
    if args.before:
        variants = {f"XLA off, {args.before}": (checkout(args.before), False), **variants}
    best = timed_rounds(variants, args.steps, args.rounds)
    sys.path.insert(0, str(ROOT))
    resampling = resampling_ms()
    print(f"\naugmented, {STEPS_PER_EPOCH} steps x {BATCH} images at {SIZE} px")
    print("| variant | s per epoch (best) | CPU s per epoch (best) | loss after |")
    print("| --- | --- | --- | --- |")
    for name, r in best.items():
        print(f"| {name} | {r['s_per_epoch']} | {r['cpu_s_per_epoch']} | {r['loss']} |")
    print(f"\nresampling one batch of {BATCH} (ms, best of 3)")
    print("| sampler | ms per batch |\n| --- | --- |")
    for name, ms in resampling.items():
        print(f"| {name} | {ms} |")


if __name__ == "__main__":
    main()
