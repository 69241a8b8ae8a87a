"""Speed and memory of the pipeline against the book's way and against the hardware limit.

    python -m benchmarks.benchmark [--archive ../shared/data/dogs-vs-cats-6000.zip] [--steps 30]
        [--stage-epochs 3] [--stage-models baseline augmented] [--no-epochs] [--no-throughput]
        [--xla]

In one run, on this machine, on the real images, in a fresh project copy:
1. the data stages (download, split, prepare@150, prepare@224): wall seconds and peak RSS,
   each a separate process as DVC runs them; the matmul limit, float32 and bfloat16;
2. seconds per book epoch (100 steps) of `baseline` and `augmented`, ours (prepared uint8
   arrays, tf.data gather + prefetch) against a plain Keras reference that reads the JPEGs
   from folders with keras.utils.image_dataset_from_directory every epoch and augments with
   Keras 3's stock layers (one resampling each), with the same model and batch size; ours in
   bfloat16; "default" is what `mixed_precision: auto` picks here, what a user gets; and the
   default model on one cached batch, for the input pipeline's share (--no-epochs: skip);
   --xla: ours with XLA too (`jit_compile: on`, the GPU default, where the augmentation
   resamples with the gather sampler instead of affine_transform), and milliseconds per
   batch of the resampling alone, affine_transform against the gather sampler without and
   with XLA;
3. the real stage, `python -m pipeline train <model>` for --stage-epochs epochs with
   PIPELINE_TIMELINE set (harness/timeline.py reads it): Keras' epoch lines, where a steady
   epoch (epoch 2 on) goes, start-up and end, and its ratios to 2 (0: skip);
4. images per second of conv-base feature extraction (VGG16, EfficientNet-Lite0) and of
   baseline training, as a fraction of the float32 matmul limit (--no-throughput: skip).
Figures go to --out (and .json beside it) and to stdout. Nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks import common
from benchmarks.common import (
    archive_project,
    command,
    machine,
    matmul_gflops,
    table,
    write_report,
)
from harness.project import dotted_patch, params_patched
from harness.timeline import busy_cpu_seconds, epoch_breakdown, keras_epochs, startup

QUIET = 0.1  # a fit whose neighbours used under 10% of the cores counts as quiet


def forward_flops(model) -> float:
    """Multiply-adds x 2 of the conv, depthwise and dense layers for one image."""
    import keras

    total, stack = 0.0, [model]
    while stack:  # nested models (a base inside a classifier)
        layer = stack.pop()
        if isinstance(layer, keras.Model):
            stack.extend(layer.layers)
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            _, h, w, c = layer.output.shape
            total += 2 * h * w * c * layer.kernel_size[0] * layer.kernel_size[1]
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            total += 2 * h * w * c_out * kh * kw * layer.input.shape[-1]
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.input.shape[-1] * layer.units
    return total


def seconds_per_step(model, dataset, steps: int) -> tuple[float, float]:
    """One untimed pass of `steps` (tracing, warm-up), then a timed one: (seconds per step,
    the share of this machine's cores other processes used meanwhile), so that a tie or a
    busy neighbour shows in the report rather than hides in a best-of."""
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    started, ours, everyone = time.perf_counter(), time.process_time(), busy_cpu_seconds()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    wall = time.perf_counter() - started
    others = (busy_cpu_seconds() - everyone) - (time.process_time() - ours)
    return wall / steps, max(0.0, others / wall / os.cpu_count())


def best_seconds_per_step(candidates: dict, steps: int, rounds: int = 2, max_rounds: int = 4):
    """The candidates (name: (model, dataset)) timed in turn, interleaved so that a noisy
    neighbour slows all of them rather than one, `rounds` times and up to `max_rounds` while
    one has no quiet fit: the best quiet fit of each (else the best), and every timing."""
    timings = {name: [] for name in candidates}
    for round_ in range(max_rounds):
        if round_ >= rounds and all(any(n < QUIET for _, n in t) for t in timings.values()):
            break
        for name, (model, dataset) in candidates.items():
            timings[name].append(seconds_per_step(model, dataset, steps))
    best = {
        n: min([t for t, s in runs if s < QUIET] or [t for t, _ in runs])
        for n, runs in timings.items()
    }
    return best, timings


def keras_preprocessing_layers(params):
    """The book's augmentation the way a Keras 3 reader writes it: one stock layer per
    transform (each resamples the image), in the book's units."""
    import math

    import keras

    nearest = {"fill_mode": "nearest"}
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal"),
            keras.layers.RandomRotation(params.rotation_degrees / 360, **nearest),
            keras.layers.RandomTranslation(params.height_shift, params.width_shift, **nearest),
            keras.layers.RandomShear(
                x_factor=(0.0, math.tan(math.radians(params.shear_degrees))), **nearest
            ),
            keras.layers.RandomZoom(params.zoom, params.zoom, **nearest),
        ]
    )


def reference_folders(work: Path) -> Path:
    """The training images in class folders (links), as the book's readers have them."""
    folders = work / "reference/train"
    split = pd.read_csv(work / "data/split.csv")
    for row in split[split.split == "train"].itertuples():
        target = folders / row.label / Path(row.path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to((work / row.path).resolve())
    return folders


def candidates(name: str, batch_size: int, folders: Path, default: str, xla: bool) -> dict:
    """What to time for one model: {candidate: (compiled model, dataset)}."""
    import keras

    from pipeline.core.params import load_params
    from pipeline.data.dataset import make_dataset
    from pipeline.data.prepare import load_prepared
    from pipeline.models.augment import augmentation
    from pipeline.models.scratch import build_convnet
    from pipeline.training.train import compile_model

    augment = load_params().augmentation if name == "augmented" else None

    def build(policy="float32", reference=False, jit=False):
        keras.mixed_precision.set_global_policy(policy)
        keras.utils.set_random_seed(0)
        layers = keras_preprocessing_layers if reference else lambda p: augmentation(p, 0)
        model = build_convnet(150, 0.5 if augment else 0.0, augment and layers(augment))
        compile_model(model, 1e-4, jit_compile=jit)
        return model

    ours = make_dataset(*load_prepared(150, "train"), batch_size, training=True, repeat=True)
    reference = keras.utils.image_dataset_from_directory(
        folders, label_mode="binary", image_size=(150, 150), batch_size=batch_size,
        shuffle=True, seed=0, verbose=False,
    ).repeat()  # fmt: skip
    models = {"reference": (build(reference=True), reference), "ours": (build(), ours)}
    models["bf16"] = (build("mixed_bfloat16"), ours)
    default_model = models["bf16" if default == "mixed_bfloat16" else "ours"][0]
    models["one_batch"] = (default_model, ours.take(1).cache().repeat())
    if xla:
        models["xla"] = (build(jit=True), ours)
    keras.mixed_precision.set_global_policy("float32")
    return models


def epoch_times(work: Path, steps: int, xla: bool) -> dict:
    from pipeline.training import precision

    os.chdir(work)
    default = precision.choose("auto", 0, precision.this_cpu_flags())[0]  # a CPU run
    folders, results = reference_folders(work), {}
    for name, batch_size in (("baseline", 20), ("augmented", 32)):
        models = candidates(name, batch_size, folders, default, xla)
        best, timings = best_seconds_per_step(models, steps)
        default_s = best["bf16" if default == "mixed_bfloat16" else "ours"]
        ratios = {k: round(best[k] / best["reference"], 3) for k in ("ours", "bf16")}
        results[name] = {
            "batch_size": batch_size,
            "s_per_epoch": {k: round(v * 100, 1) for k, v in best.items()},  # 100 steps
            "default_policy": default,
            "default_s_per_epoch": round(default_s * 100, 1),
            "ratios": ratios | {"default": round(default_s / best["reference"], 3)},
            "input_stall_fraction": round(1 - best["one_batch"] / default_s, 3),
            "compute_dtypes": {k: compute_dtype(m) for k, (m, _) in models.items()},
            "timings": {  # every timed fit: seconds per book epoch, neighbours' CPU share
                k: [(round(t * 100, 1), round(share, 2)) for t, share in runs]
                for k, runs in timings.items()
            },
        }
        print(name, results[name], flush=True)
    return results


def compute_dtype(model) -> str:
    """The compute dtype of the model's first convolution: what a measurement really ran."""
    import keras

    conv = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    return conv.dtype_policy.compute_dtype


def time_stage(work: Path, model: str, epochs: int) -> dict:
    """`python -m pipeline train <model>` for `epochs` epochs with its timeline: wall, peak
    RSS, Keras' epoch lines, each epoch's parts, the steady epochs' medians and start-up."""
    timeline_file = work / f"timeline-{model}.json"
    with params_patched(work, dotted_patch(f"train.{model}.epochs={epochs}")):
        env = {"PIPELINE_TIMELINE": str(timeline_file)}
        ran = command([sys.executable, "-m", "pipeline", "train", model], work, env)
    timeline = json.loads(timeline_file.read_text())
    marks, marked = timeline["start"], timeline["epochs"]
    begins = [e["begin"] for e in marked[1:]] + [None]
    per_epoch = [epoch_breakdown(e, b) for e, b in zip(marked, begins, strict=True)]
    steady = {
        k: round(statistics.median(e[k] for e in per_epoch[1:] or per_epoch), 3)
        for k in per_epoch[0]
    }
    keras = keras_epochs(ran["output"])
    return {
        "model": model,
        "epochs": epochs,
        "wall_s": ran["seconds"],
        **{k: ran[k] for k in ("cpu_s", "neighbours_share", "peak_rss_mb")},
        "keras_epochs": keras,
        "keras_steady_ms_per_step": statistics.median(e["ms_per_step"] for e in keras[1:] or keras),
        "steady": steady,
        "per_epoch": per_epoch,
        "startup": startup(marks, marked, steady, ran["seconds"]),
    }


def stage_times(
    work: Path, epochs: int, models: list[str], micro: dict | None, peak_bf16: float
) -> dict:
    """The real stage per model; with the microbenchmark, a steady epoch's ratio to plain
    Keras's and to ours at the default precision, and the fraction of the bfloat16 limit
    its train steps reach (forward + backward ~ 3 x forward)."""
    from pipeline.models.scratch import build_convnet

    flops = 3 * forward_flops(build_convnet(150))
    results = {}
    for model in models:
        r = results[model] = time_stage(work, model, epochs)
        if micro and model in micro:
            m, steady = micro[model], r["steady"]
            r["ratio_to_plain_keras"] = round(steady["epoch"] / m["s_per_epoch"]["reference"], 3)
            r["ratio_to_microbenchmark"] = round(steady["epoch"] / m["default_s_per_epoch"], 3)
            rate = flops * 100 * m["batch_size"] / steady["train_steps"] / 1e9
            r["fraction_of_bf16_limit"] = round(rate / peak_bf16, 3)
        print(model, "stage", {k: r[k] for k in ("keras_epochs", "steady", "startup")}, flush=True)
    return results


def extraction_seconds(name: str, size: int, images) -> tuple[float, float]:
    """Best of two `predict` passes of the base as extraction runs it (random weights: the
    same FLOPs as ImageNet's), in the global precision policy: (seconds, FLOPs per image)."""
    import keras
    import numpy as np

    from pipeline.data.dataset import make_dataset
    from pipeline.models.bases import BASES

    inputs = keras.Input((size, size, 3))
    base = BASES[name].for_inference(BASES[name].build(size))
    model = keras.Model(
        inputs, keras.layers.GlobalAveragePooling2D()(base(BASES[name].preprocess()(inputs)))
    )
    dataset = make_dataset(images, np.zeros(len(images)), 32).map(lambda x, y: x)
    model.predict(dataset.take(2), verbose=0)  # warm up
    best = float("inf")
    for _ in range(2):  # a background blip only ever slows a run down
        started = time.perf_counter()
        model.predict(dataset, verbose=0)
        best = min(best, time.perf_counter() - started)
    return best, forward_flops(model)


def throughput(work: Path, peak_gflops: float, n_images: int = 384) -> dict:
    import keras

    from pipeline.data.dataset import make_dataset
    from pipeline.data.prepare import load_prepared
    from pipeline.models.scratch import build_convnet
    from pipeline.training.train import compile_model

    os.chdir(work)
    results = {}
    for name, size in (("vgg16", 150), ("efficientnet_lite0", 224)):
        images = load_prepared(size, "train")[0][:n_images]
        for policy, suffix in (("float32", ""), ("mixed_bfloat16", "_bf16")):
            keras.mixed_precision.set_global_policy(policy)
            seconds, flops = extraction_seconds(name, size, images)
            figures = rates(flops, len(images) / seconds, peak_gflops) | {"image_size": size}
            results[f"extract_{name}{suffix}"] = figures
            print(f"extract_{name}{suffix}", figures, flush=True)
    keras.mixed_precision.set_global_policy("float32")
    model = build_convnet(150)
    compile_model(model, 1e-4)
    data = make_dataset(*load_prepared(150, "train"), 20, training=True, repeat=True)
    step, _ = seconds_per_step(model, data, 20)
    results["train_baseline"] = rates(3 * forward_flops(model), 20 / step, peak_gflops)
    print("train baseline", results["train_baseline"], flush=True)
    return results


def rates(flops: float, per_second: float, peak_gflops: float) -> dict:
    return {
        "images_per_s": round(per_second, 1),
        "gflops_per_image": round(flops / 1e9, 2),
        "fraction_of_matmul_limit": round(flops * per_second / 1e9 / peak_gflops, 3),
    }


def resampling_ms(repeats: int = 20, rounds: int = 3) -> dict:
    """Milliseconds per batch of 32 book draws at 150 px, best of `rounds`."""
    import keras
    import numpy as np
    import tensorflow as tf

    from pipeline.models.augment import book_transforms, sample_bilinear

    tf.random.set_seed(0)

    def u(low, high):  # the book's ranges (augmentation params), per image
        return tf.random.uniform((32,), low, high)

    draws = [u(-0.7, 0.7), u(-30, 30), u(-30, 30), u(-0.2, 0.2), u(0.8, 1.2), u(0.8, 1.2)]
    transforms = book_transforms(*draws, tf.cast(u(0, 1) < 0.5, "float32"), 150, 150)
    batch = tf.constant(np.random.default_rng(0).uniform(0, 255, (32, 150, 150, 3)), "float32")
    candidates = {
        "affine_transform": tf.function(
            lambda x, t: keras.ops.image.affine_transform(x, t, fill_mode="nearest")
        ),
        "gather": tf.function(sample_bilinear),
        "gather_xla": tf.function(sample_bilinear, jit_compile=True),
    }
    best = dict.fromkeys(candidates, float("inf"))
    for _ in range(rounds):
        for name, function in candidates.items():
            function(batch, transforms).numpy()  # trace, compile
            started = time.perf_counter()
            for _ in range(repeats):
                function(batch, transforms).numpy()
            best[name] = min(best[name], (time.perf_counter() - started) / repeats * 1000)
    return {name: round(ms, 1) for name, ms in best.items()}


def label(key: str) -> str:
    return key.replace("_", " ")


def report(figures: dict) -> list[str]:
    stages = [[k, v["seconds"], v["peak_rss_mb"]] for k, v in figures["stages"].items()]
    parts = [
        "# Benchmark",
        f"`{figures['command']}` on {figures['machine']}; matmul limit "
        f"{figures['matmul_gflops']:.0f} GFLOP/s float32, {figures['matmul_gflops_bf16']:.0f} "
        "GFLOP/s bfloat16 (2048x2048).",
        "## Data stages (each its own process, as under `dvc repro`)",
        table(["stage", "seconds", "peak RSS (MB)"], stages),
    ]
    if epochs := figures.get("epochs"):
        parts += epochs_report(epochs)
    if runs := list(figures.get("stage", {}).values()):
        title = f"## The real stage: `python -m pipeline train <model>`, {runs[0]['epochs']} epochs"
        parts += [title, *stage_report(runs)]
    if epochs and "xla" in epochs["baseline"]["s_per_epoch"]:
        rows = [[n, r["s_per_epoch"]["ours"], r["s_per_epoch"]["xla"]] for n, r in epochs.items()]
        resampling = [list(kv) for kv in figures["resampling_ms"].items()]
        parts += [
            "## XLA (float32), and the augmentation's resampling",
            table(["model", "ours", "ours, XLA"], rows),
            table(["sampler: one batch of 32 book draws at 150 px", "ms (best of 3)"], resampling),
        ]
    if throughputs := figures.get("throughput"):
        headers = ["what", "images/s", "GFLOP per image", "fraction of the float32 matmul limit"]
        keys = ("images_per_s", "gflops_per_image", "fraction_of_matmul_limit")
        rows = [[name, *(r[k] for k in keys)] for name, r in throughputs.items()]
        parts += ["## Throughput against the FLOP limit", table(headers, rows)]
    return parts


EPOCH_PARTS = ("train_steps", "validation", "history_file", "mlflow", "backup", "other")


def epochs_report(epochs: dict) -> list[str]:
    headers = ["model", "batch", "plain Keras (JPEGs from folders)", "ours", "ratio"]
    headers += ["ours, bfloat16", "ratio", "ours, default (`auto`)", "ratio"]
    rows, notes = [], []
    for name, r in epochs.items():
        s, ratios = r["s_per_epoch"], r["ratios"]
        default = f"{r['default_s_per_epoch']} ({r['default_policy']})"
        rows.append([name, r["batch_size"], s["reference"], s["ours"], ratios["ours"]])
        rows[-1] += [s["bf16"], ratios["bf16"], default, ratios["default"]]
        notes.append(
            f"- {name}: dtypes {r['compute_dtypes']}; one cached batch {s['one_batch']} s, "
            f"input stall {r['input_stall_fraction']:.1%} of the epoch; fits {r['timings']}"
        )
    return [
        "## Seconds per book epoch (100 steps)",
        table(headers, rows),
        "Compute dtype of each measurement, input stall (the default model on one cached "
        "batch against it on the stage's input pipeline) and every timed fit (seconds per "
        f"book epoch, share of the cores other processes used; the best fit under {QUIET} "
        "is taken):",
        "\n".join(notes),
    ]


def stage_report(runs: list[dict]) -> list[str]:
    epoch_headers = ["model", "epochs", "Keras' epoch lines (s)", "steady epoch (s)"]
    epoch_headers += [*map(label, EPOCH_PARTS), "outside steps, val. excluded"]
    start_headers = ["model", "wall", "neighbours' CPU share", "peak RSS (MB)"]
    start_headers += map(label, runs[0]["startup"])
    epoch_rows, start_rows = [], []
    for r in runs:
        steady, lines = r["steady"], ", ".join(str(e["seconds"]) for e in r["keras_epochs"])
        epoch_rows.append([r["model"], r["epochs"], lines, steady["epoch"]])
        epoch_rows[-1] += [*(steady[k] for k in EPOCH_PARTS), f"{steady['outside_fraction']:.1%}"]
        start_rows.append([r["model"], r["wall_s"], r["neighbours_share"], r["peak_rss_mb"]])
        start_rows[-1] += r["startup"].values()
    parts = [
        "Seconds per epoch as Keras prints them, and where a steady epoch (epoch 2 on, from "
        "the stage's timeline) goes:",
        table(epoch_headers, epoch_rows),
        "Start-up and end (seconds): process start to the first epoch, and after the last.",
        table(start_headers, start_rows),
    ]
    if "ratio_to_plain_keras" in runs[0]:
        keys = ("ratio_to_plain_keras", "ratio_to_microbenchmark", "fraction_of_bf16_limit")
        headers = ["model", "stage epoch / plain Keras", "stage epoch / microbenchmark (default)"]
        headers += ["train steps: fraction of the bfloat16 matmul limit"]
        parts.append(table(headers, [[r["model"], *(r[k] for k in keys)] for r in runs]))
    return parts


def arguments() -> argparse.Namespace:
    parser = common.parser("benchmarks.benchmark", __doc__, "benchmark.md")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per fit")
    parser.add_argument("--stage-epochs", type=int, default=3, help="0: skip the real stage")
    parser.add_argument("--stage-models", nargs="+", default=["baseline", "augmented"])
    parser.add_argument("--no-epochs", action="store_true", help="skip the microbenchmark")
    parser.add_argument("--no-throughput", action="store_true", help="skip the throughput")
    parser.add_argument("--xla", action="store_true", help="ours with XLA, and the resampling")
    args = parser.parse_args()
    if not args.archive.is_file():
        raise SystemExit(f"{args.archive} not found: pass --archive")
    args.out = args.out.resolve()  # the measurements chdir into the copy
    return args


def main() -> None:
    args = arguments()
    work = Path(tempfile.mkdtemp(prefix="benchmark-"))
    project = archive_project(work, args.archive, [])
    stages = {}
    for stage in (["download"], ["split"], ["prepare", "150"], ["prepare", "224"]):
        ran = command([sys.executable, "-m", "pipeline", *stage], project)
        stages[" ".join(stage)] = {k: ran[k] for k in ("seconds", "peak_rss_mb")}
        print(*stage, stages[" ".join(stage)], flush=True)
    peak, peak_bf16 = matmul_gflops(), matmul_gflops("bfloat16")
    print(f"matmul limit {peak:.0f} GFLOP/s float32, {peak_bf16:.0f} bfloat16", flush=True)
    figures = {
        "command": " ".join(["python -m benchmarks.benchmark", *sys.argv[1:]]),
        "machine": machine(),
        "matmul_gflops": round(peak, 1),
        "matmul_gflops_bf16": round(peak_bf16, 1),
        "stages": stages,
    }
    if not args.no_epochs:
        figures["epochs"] = epoch_times(project, args.steps, args.xla)
    if args.xla:
        figures["resampling_ms"] = resampling_ms()
    if args.stage_epochs:
        micro = figures.get("epochs")
        figures["stage"] = stage_times(
            project, args.stage_epochs, args.stage_models, micro, peak_bf16
        )
    if not args.no_throughput:
        figures["throughput"] = throughput(project, peak)
    write_report(args.out, figures, *report(figures))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
