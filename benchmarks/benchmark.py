"""Speed and memory of the pipeline against the book's way and against the hardware limit.

    python benchmarks/benchmark.py [--archive ../shared/data/dogs-vs-cats-6000.zip] [--steps 30]

In one run, on this machine, on the real images:
1. the data stages (download, split, prepare@150, prepare@224): wall seconds and peak RSS,
   each a separate process as DVC runs them;
2. seconds per book epoch (100 steps) of `baseline` and `augmented`, ours (prepared uint8
   arrays, tf.data gather + prefetch) against a plain Keras reference that reads the JPEGs
   from folders with keras.utils.image_dataset_from_directory every epoch, with the same
   model, augmentation and batch size; and ours with bfloat16 mixed precision. The reference
   augments with Keras 3's stock layers (one resampling each), ours with one affine map.
   "default" is what `mixed_precision: auto` picks on this machine (pipeline/training/precision.py):
   its ratio to plain Keras is what a user gets without touching a setting;
3. images per second of conv-base feature extraction (VGG16, EfficientNet-Lite0) and of
   baseline training, as a fraction of the FLOP limit: model FLOPs per image x images/s
   over the rate a large float32 matmul reaches here, measured in the same run.
Figures go to reports/benchmark.md (and .json) and to stdout. Not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from repro import write_figures  # noqa: E402
from stage import busy_cpu_seconds  # noqa: E402

DEFAULT_ARCHIVE = ROOT.parent / "shared/data/dogs-vs-cats-6000.zip"


def run_stage(args: list[str], cwd: Path) -> dict:
    """One pipeline stage as its own process, as DVC runs it: wall seconds and peak RSS."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"stage {' '.join(args)} failed: {process.stderr.read()[-2000:]}")
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
    }


def matmul_gflops(dtype: str = "float32", size: int = 2048, repeats: int = 10) -> float:
    """The FLOP rate a large matmul reaches: the practical limit of this CPU for `dtype`."""
    import tensorflow as tf

    a = tf.cast(tf.random.normal((size, size)), dtype)
    b = tf.cast(tf.random.normal((size, size)), dtype)
    tf.matmul(a, b).numpy()  # warm up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        tf.matmul(a, b).numpy()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def forward_flops(model) -> float:
    """Multiply-adds x 2 of the conv, depthwise and dense layers for one image."""
    import keras

    total = 0.0
    layers = []
    stack = [model]
    while stack:  # nested models (a base inside a classifier)
        layer = stack.pop()
        if isinstance(layer, keras.Model):
            stack.extend(layer.layers)
        else:
            layers.append(layer)
    for layer in layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            _, h, w, c = layer.output.shape
            kh, kw = layer.kernel_size
            total += 2 * h * w * c * kh * kw
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            total += 2 * h * w * c_out * kh * kw * layer.input.shape[-1]
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return total


def best_seconds(run, repeats: int = 2) -> float:
    """Fastest of a few runs: a background blip on a 2-core machine only ever slows one down."""
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        timings.append(time.perf_counter() - started)
    return min(timings)


def seconds_per_step(model, dataset, steps: int) -> tuple[float, float]:
    """One untimed pass of `steps` (tracing, warm-up), then a timed one: (seconds per step,
    the share of this machine's cores that other processes used meanwhile).

    On the development machine whole fits snap to step times of about 85 ms x n (171, 256,
    341, 683 ms), for different models and precisions, also in fits where no other process
    ran: the 34.1 s (341 ms a step) that baseline float32, augmented float32 and augmented
    bfloat16 all printed in issue 22. A busy neighbour adds to it. Every fit is kept with
    this share, so a reader sees a tie and whether a neighbour was there."""
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    started, ours, everyone = time.perf_counter(), time.process_time(), busy_cpu_seconds()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    wall = time.perf_counter() - started
    others = (busy_cpu_seconds() - everyone) - (time.process_time() - ours)
    return wall / steps, max(0.0, others / wall / os.cpu_count())


QUIET = 0.1  # a fit whose neighbours used under 10% of the cores counts as quiet


def best_seconds_per_step(
    candidates: dict, steps: int, rounds: int = 2, max_rounds: int = 4
) -> tuple[dict, dict]:
    """The candidates (name: (model, dataset)) timed in turn, `rounds` times, and up to
    `max_rounds` while a candidate has no quiet fit; the best quiet fit of each (the best
    fit, if none was quiet), and every timing with its neighbours' share. Interleaving
    spreads a noisy neighbour over all of them rather than one."""
    timings = {name: [] for name in candidates}
    for round_ in range(max_rounds):
        quiet = all(any(n < QUIET for _, n in runs) for runs in timings.values())
        if round_ >= rounds and quiet:
            break
        for name, (model, dataset) in candidates.items():
            timings[name].append(seconds_per_step(model, dataset, steps))
    best = {}
    for name, runs in timings.items():
        quiet_runs = [t for t, n in runs if n < QUIET]
        best[name] = min(quiet_runs or [t for t, _ in runs])
    return best, timings


def compute_dtype(model) -> str:
    """The compute dtype of the model's first convolution: what a measurement really ran."""
    import keras

    conv = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    return conv.dtype_policy.compute_dtype


def keras_preprocessing_layers(params):
    """The book's augmentation the way a Keras 3 reader writes it: one stock layer per
    transform (each resamples the image), in the book's units."""
    import math

    import keras

    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal"),
            keras.layers.RandomRotation(params.rotation_degrees / 360, fill_mode="nearest"),
            keras.layers.RandomTranslation(
                params.height_shift, params.width_shift, fill_mode="nearest"
            ),
            keras.layers.RandomShear(
                x_factor=(0.0, math.tan(math.radians(params.shear_degrees))), fill_mode="nearest"
            ),
            keras.layers.RandomZoom(params.zoom, params.zoom, fill_mode="nearest"),
        ]
    )


def epoch_times(work: Path, steps: int) -> dict:
    import keras
    import pandas as pd

    from pipeline.core.params import load_params
    from pipeline.data.dataset import make_dataset
    from pipeline.data.prepare import load_prepared
    from pipeline.models.augment import augmentation
    from pipeline.models.scratch import build_convnet
    from pipeline.training import precision
    from pipeline.training.train import compile_model

    os.chdir(work)
    params = load_params()
    default_policy = precision.choose("auto", 0, precision.this_cpu_flags())[0]  # a CPU run
    images, labels = load_prepared(150, "train")
    # The reference reads the same training images from folders, as the book's readers do.
    folders = work / "reference/train"
    split = pd.read_csv("data/split.csv")
    for row in split[split.split == "train"].itertuples():
        target = folders / row.label / Path(row.path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to((work / row.path).resolve())

    results = {}
    for model_name, batch_size in (("baseline", 20), ("augmented", 32)):
        augmented = model_name == "augmented"

        def build(policy: str = "float32", reference: bool = False):
            keras.mixed_precision.set_global_policy(policy)
            keras.utils.set_random_seed(0)
            aug = None
            if augmented:
                aug = (
                    keras_preprocessing_layers(params.augmentation)
                    if reference
                    else augmentation(params.augmentation, 0)
                )
            model = build_convnet(150, 0.5 if augmented else 0.0, aug)
            compile_model(model, 1e-4)
            return model

        ours = make_dataset(images, labels, batch_size, training=True, repeat=True)
        reference = keras.utils.image_dataset_from_directory(
            folders,
            label_mode="binary",
            image_size=(150, 150),
            batch_size=batch_size,
            shuffle=True,
            seed=0,
            verbose=False,
        ).repeat()
        models = {"reference": (build(reference=True), reference), "ours": (build(), ours)}
        models["bf16"] = (build("mixed_bfloat16"), ours)
        # Input stalls: the default model on one batch, cached, against it on the stage's
        # input pipeline; the difference is what the pipeline costs the train steps.
        one_batch = ours.take(1).cache().repeat()
        default_model = models["bf16" if default_policy == "mixed_bfloat16" else "ours"][0]
        models["one_batch"] = (default_model, one_batch)
        keras.mixed_precision.set_global_policy("float32")
        best, timings = best_seconds_per_step(models, steps)
        ref_s, ours_s, bf16_s = best["reference"], best["ours"], best["bf16"]
        default_s = bf16_s if default_policy == "mixed_bfloat16" else ours_s
        results[model_name] = {
            "batch_size": batch_size,
            "reference_s_per_epoch": round(ref_s * 100, 1),
            "ours_s_per_epoch": round(ours_s * 100, 1),
            "ratio": round(ours_s / ref_s, 3),
            "ours_bf16_s_per_epoch": round(bf16_s * 100, 1),
            "ratio_bf16": round(bf16_s / ref_s, 3),
            "default_policy": default_policy,
            "default_s_per_epoch": round(default_s * 100, 1),
            "ratio_default": round(default_s / ref_s, 3),
            "one_batch_s_per_epoch": round(best["one_batch"] * 100, 1),
            "input_stall_fraction": round(1 - best["one_batch"] / default_s, 3),
            "compute_dtypes": {name: compute_dtype(m) for name, (m, _) in models.items()},
            "timings": {  # every timed fit: seconds per book epoch, neighbours' CPU share
                name: [(round(t * 100, 1), round(share, 2)) for t, share in runs]
                for name, runs in timings.items()
            },
        }
        print(model_name, results[model_name], flush=True)
    return results


def throughput(work: Path, peak_gflops: float, n_images: int = 384) -> dict:
    import keras
    import numpy as np

    from pipeline.data.dataset import make_dataset
    from pipeline.data.prepare import load_prepared
    from pipeline.models.bases import BASES
    from pipeline.models.scratch import build_convnet
    from pipeline.training.train import compile_model

    os.chdir(work)
    results = {}
    for name, size in (("vgg16", 150), ("efficientnet_lite0", 224)):
        images, _ = load_prepared(size, "train")
        images = images[:n_images]
        for policy in ("float32", "mixed_bfloat16"):
            keras.mixed_precision.set_global_policy(policy)
            inputs = keras.Input((size, size, 3))
            # Random weights (the same FLOPs as ImageNet's), in the form extraction runs it.
            base = BASES[name].for_inference(BASES[name].build(size))
            model = keras.Model(
                inputs,
                keras.layers.GlobalAveragePooling2D()(base(BASES[name].preprocess()(inputs))),
            )
            dataset = make_dataset(images, np.zeros(len(images)), 32).map(lambda x, y: x)
            model.predict(dataset.take(2), verbose=0)  # warm up
            per_second = len(images) / best_seconds(lambda: model.predict(dataset, verbose=0))
            flops = forward_flops(model)
            key = f"extract_{name}" + ("_bf16" if policy != "float32" else "")
            results[key] = {
                "image_size": size,
                "images_per_s": round(per_second, 1),
                "gflops_per_image": round(flops / 1e9, 2),
                "fraction_of_matmul_limit": round(flops * per_second / 1e9 / peak_gflops, 3),
            }
            print(key, results[key], flush=True)
    keras.mixed_precision.set_global_policy("float32")
    images, labels = load_prepared(150, "train")
    model = build_convnet(150)
    compile_model(model, 1e-4)
    step = seconds_per_step(model, make_dataset(images, labels, 20, training=True, repeat=True), 20)
    flops = 3 * forward_flops(model)  # forward + backward ~ 3 x forward
    results["train_baseline"] = {
        "images_per_s": round(20 / step, 1),
        "gflops_per_image": round(flops / 1e9, 2),
        "fraction_of_matmul_limit": round(flops * 20 / step / 1e9 / peak_gflops, 3),
    }
    print("train baseline", results["train_baseline"], flush=True)
    return results


def stage_times(work: Path, epochs: int, micro: dict, peak_bf16: float) -> dict:
    """The real stage command for `epochs` epochs (benchmarks/stage.py), its ratio to the
    microbenchmark's plain Keras and to ours at the default precision, and the fraction of
    the bfloat16 matmul limit its train steps reach (forward + backward ~ 3 x forward)."""
    from stage import time_stage

    from pipeline.models.scratch import build_convnet

    flops = 3 * forward_flops(build_convnet(150))
    results = {}
    for model in ("baseline", "augmented"):
        r = time_stage(work, model, epochs)
        steady = r["steady"]["epoch"]
        r["ratio_to_plain_keras"] = round(steady / micro[model]["reference_s_per_epoch"], 3)
        r["ratio_to_microbenchmark"] = round(steady / micro[model]["default_s_per_epoch"], 3)
        images = 100 * micro[model]["batch_size"]  # a book epoch: 100 steps
        rate = flops * images / r["steady"]["train_steps"] / 1e9
        r["fraction_of_bf16_limit"] = round(rate / peak_bf16, 3)
        results[model] = r
        print(model, "stage", {k: r[k] for k in ("keras_epochs", "steady", "startup")}, flush=True)
    return results


def markdown(figures: dict) -> str:
    lines = [
        "# Benchmark",
        "",
        f"`python benchmarks/benchmark.py` on {figures['machine']}; matmul limit "
        f"{figures['matmul_gflops']:.0f} GFLOP/s float32, {figures['matmul_gflops_bf16']:.0f} GFLOP/s bfloat16 "
        "(2048x2048; fractions below are of the float32 limit).",
        "",
        "## Data stages (each its own process, as under `dvc repro`)",
        "",
        "| stage | seconds | peak RSS (MB) |",
        "| --- | --- | --- |",
    ]
    lines += [
        f"| {k} | {v['seconds']} | {v['peak_rss_mb']} |" for k, v in figures["stages"].items()
    ]
    lines += [
        "",
        "## Seconds per book epoch (100 steps)",
        "",
        "| model | batch | plain Keras (JPEGs from folders) | ours | ratio | ours, bfloat16 | ratio "
        "| ours, default (`auto`) | ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in figures["epochs"].items():
        lines.append(
            f"| {name} | {r['batch_size']} | {r['reference_s_per_epoch']} | {r['ours_s_per_epoch']} | "
            f"{r['ratio']} | {r['ours_bf16_s_per_epoch']} | {r['ratio_bf16']} | "
            f"{r['default_s_per_epoch']} ({r['default_policy']}) | {r['ratio_default']} |"
        )
    lines += [
        "",
        "Compute dtype of each measurement, input stalls (the default model on one cached "
        "batch against it on the stage's input pipeline) and every timed fit "
        "(seconds per book epoch, share of the cores other processes used meanwhile; "
        f"the best fit under {QUIET} is taken):",
        "",
    ]
    for name, r in figures["epochs"].items():
        lines.append(
            f"- {name}: dtypes {r['compute_dtypes']}; one cached batch "
            f"{r['one_batch_s_per_epoch']} s, input stall {100 * r['input_stall_fraction']:.1f}% "
            f"of the epoch; fits {r['timings']}"
        )
    if figures.get("stage"):
        from stage import markdown as stage_markdown

        stages = list(figures["stage"].values())
        lines += [
            "",
            f"## The real stage: `python -m pipeline train <model>`, {stages[0]['epochs']} epochs",
            "",
            "Seconds per epoch as Keras prints them, the steady epochs (epoch 2 on) from the "
            "stage's timeline (`PIPELINE_TIMELINE`, pipeline/training/timeline.py) and where "
            "they go; the ratio of a steady epoch to plain Keras's and to the microbenchmark's "
            "default-precision epoch above:",
            "",
            *stage_markdown(stages),
            "",
            "| model | stage epoch / plain Keras | stage epoch / microbenchmark (default) "
            "| train steps: fraction of the bfloat16 matmul limit |",
            "| --- | --- | --- | --- |",
            *(
                f"| {r['model']} | {r['ratio_to_plain_keras']} | {r['ratio_to_microbenchmark']} "
                f"| {r['fraction_of_bf16_limit']} |"
                for r in stages
            ),
        ]
    if not figures.get("throughput"):
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "## Throughput against the FLOP limit",
        "",
        "| what | images/s | GFLOP per image | fraction of the matmul limit |",
        "| --- | --- | --- | --- |",
    ]
    for name, r in figures["throughput"].items():
        lines.append(
            f"| {name} | {r['images_per_s']} | {r['gflops_per_image']} | {r['fraction_of_matmul_limit']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument(
        "--steps", type=int, default=30, help="timed training steps per measurement"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "reports/benchmark.md")
    parser.add_argument(
        "--stage-epochs",
        type=int,
        default=3,
        help="epochs of the real stage (python -m pipeline train <model>); 0: skip it",
    )
    parser.add_argument(
        "--no-throughput", action="store_true", help="skip the extraction throughput part"
    )
    args = parser.parse_args()
    args.out = args.out.resolve()  # the measurements chdir into a scratch copy
    if not args.archive.is_file():
        raise SystemExit(f"{args.archive} not found: pass --archive")

    work = Path(tempfile.mkdtemp(prefix="benchmark-"))
    for name in ("pipeline", "params.yaml"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, work / name)
    import yaml

    params = yaml.safe_load((work / "params.yaml").read_text())
    params["data"]["source"] = str(args.archive.resolve())
    (work / "params.yaml").write_text(yaml.safe_dump(params))

    stages = {}
    for stage in (["download"], ["split"], ["prepare", "150"], ["prepare", "224"]):
        stages[" ".join(stage)] = run_stage(stage, work)
        print(" ".join(stage), stages[" ".join(stage)], flush=True)
    peak = matmul_gflops()
    peak_bf16 = matmul_gflops("bfloat16")
    print(f"matmul limit {peak:.0f} GFLOP/s float32, {peak_bf16:.0f} bfloat16", flush=True)
    figures = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "matmul_gflops": round(peak, 1),
        "matmul_gflops_bf16": round(peak_bf16, 1),
        "stages": stages,
        "epochs": epoch_times(work, args.steps),
    }
    if args.stage_epochs:
        figures["stage"] = stage_times(work, args.stage_epochs, figures["epochs"], peak_bf16)
    if not args.no_throughput:
        figures["throughput"] = throughput(work, peak)
    write_figures(args.out, figures, markdown(figures))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
