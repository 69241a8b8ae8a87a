"""`python -m pipeline <stage>`: what dvc.yaml calls. Thin: parse, load params, call one function."""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from pipeline.core import catalog, errors
from pipeline.core.errors import PipelineError
from pipeline.core.files import training_lock
from pipeline.core.params import load_params

app = typer.Typer(
    help="Dogs vs. cats (Deep Learning with Python, ch. 5) as DVC stages. "
    "Each command is one stage; `dvc repro` runs them in order.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def stage(func):
    """Register a stage command; a PipelineError becomes one line on stderr and exit 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except PipelineError as exc:
            print(f"error: {exc}{restore_hint()}", file=sys.stderr)
            raise typer.Exit(1) from None
        except Exception as exc:  # a full disk anywhere, an unwritable file: no traceback
            if (line := fault_line(exc)) is None:
                raise
            print(f"error: {line}{restore_hint()}", file=sys.stderr)
            raise typer.Exit(1) from None

    return app.command()(wrapper)


# Stages whose outputs are all in DVC's cache: dvc.yaml does not persist them (that would turn
# DVC's run cache off), so `dvc repro` removes them before the command, and checkout restores.
CACHED_OUTPUT_STAGES = ("split", "prepare", "base_weights", "extract")


def restore_hint() -> str:
    """Under `dvc repro` (DVC_STAGE names the stage), for a stage of CACHED_OUTPUT_STAGES:
    the command that brings back the outputs DVC removed before this one failed."""
    stage = os.environ.get("DVC_STAGE", "")
    if stage.partition("@")[0] in CACHED_OUTPUT_STAGES:
        return f"; `dvc checkout {stage}` restores its last outputs"
    return ""


def fault_line(exc: Exception) -> str | None:
    """The one line for a fault outside the pipeline's own checks: a full disk (the file it
    stopped, or the MLflow store), an OSError naming its file; None for anything else."""
    if errors.is_disk_full(exc):
        from pipeline.tracking.store import tracking_uri

        store = tracking_uri().removeprefix("sqlite:///")
        return str(errors.full_disk(errors.full_disk_path(exc, store)))
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return None


@stage
def check() -> None:
    """Not a stage: validate params.yaml, every section, as each stage does before any work.
    `dvc repro` removes a changed stage's outputs before its command can say that a param is
    wrong (`dvc checkout` brings them back): `python -m pipeline check && dvc repro` does not."""
    load_params()
    print("params.yaml: valid")


@stage
def download() -> None:
    """Fetch data.source, verify every image, write data/images/ and reports/download.json."""
    from pipeline.data.download import download

    download(load_params().data)


@stage
def split() -> None:
    """Write the manifest data/split.csv (path, label, split) from data/images/."""
    from pipeline.data.split import split

    split(load_params().split)


@stage
def prepare(
    image_size: int = typer.Argument(..., help="Side in pixels; must be in prepare.image_sizes."),
) -> None:
    """Decode and resize every split once into data/prepared/<size>px/<split>.npz."""
    from pipeline.data.prepare import prepare

    params = load_params()
    if image_size not in params.prepare.image_sizes:
        raise PipelineError(
            f"prepare: {image_size} is not in prepare.image_sizes {params.prepare.image_sizes}"
        )
    prepare(image_size)


ModelName = typer.Argument(..., help=" | ".join(catalog.KINDS))
BaseOption = typer.Option(
    None, "--base", help="Conv base (a key of pretrained.bases); for the pretrained models."
)


@stage
def train(model: str = ModelName, base: str = BaseOption) -> None:
    """Train one model, evaluate it on test, write models/ and reports/, log an MLflow run."""
    import importlib

    from pipeline.tracking import store

    params = load_params()
    trained = catalog.trained_model(params, model, base)  # a bad name fails before TensorFlow
    store.check_reachable(store.tracking_uri())  # in a second, before TensorFlow loads
    # The catalog names the function that trains each model (tests/test_stage_deps.py
    # follows the same name to check that dvc.yaml declares all the code it runs).
    module, function = trained.kind.trained_by.split(":")
    with training_lock(trained.name):  # a second training of it refuses before TensorFlow loads
        stage_function = getattr(importlib.import_module(module), function)
        if trained.base:
            stage_function(params, base)
        else:
            stage_function(params)


@stage
def base_weights(base: str = typer.Argument(..., help="A key of pretrained.bases.")) -> None:
    """Resolve pretrained.bases.<base>.weights into models/bases/<base>.weights.h5."""
    from pipeline.training import pretrained

    pretrained.base_weights(load_params(), base)


@stage
def extract(base: str = typer.Argument(..., help="A key of pretrained.bases.")) -> None:
    """Run the frozen conv base once over every split into data/features/<base>/."""
    from pipeline.training import pretrained

    pretrained.extract(load_params(), base)


@stage
def visualize(
    model: str = typer.Argument(
        ..., help="A trained model: baseline, augmented, features-<base>, frozen_aug-<base>, ..."
    ),
) -> None:
    """Grad-CAM, worst mistakes, activations, filter patterns of one trained model into
    reports/figures/<model>/visualize/; logged to the model's MLflow run."""
    from pipeline.tracking import store

    params = load_params()
    try:
        catalog.by_name(params, model)  # in a second, before TensorFlow loads
    except PipelineError as exc:
        raise PipelineError(f"visualize: {exc}") from None
    store.check_reachable(store.tracking_uri())
    from pipeline.visualize.stage import visualize as draw_figures

    draw_figures(params, model)


@stage
def mnist() -> None:
    """mnist/dvc.yaml: fetch mnist.data.source, check it, write mnist/data/digits.npz."""
    from pipeline.data.mnist import mnist as fetch_digits

    fetch_digits(catalog.mnist_settings(load_params()))


Seed = typer.Argument(..., help="A seed of mnist.seeds.")


@stage
def mnist_dense(seed: int = Seed) -> None:
    """mnist/dvc.yaml: train chapter 2's dense network on MNIST at one seed."""
    from pipeline.training.mnist import mnist_dense as train_dense

    params = load_params()
    catalog.mnist_model(params, "mnist_dense", seed)  # a bad seed fails before TensorFlow
    train_dense(params, seed)


@stage
def mnist_convnet(
    downsampling: str = typer.Argument(..., help="max | average | strided | none"),
    padding: str = typer.Argument(..., help="valid | same"),
    seed: int = Seed,
) -> None:
    """mnist/dvc.yaml: train section 5.1's convnet on MNIST, one variant at one seed."""
    from pipeline.training.mnist import mnist_convnet as train_convnet

    params = load_params()
    catalog.mnist_model(params, "mnist_convnet", seed, downsampling, padding)
    train_convnet(params, downsampling, padding, seed)


@stage
def convolution() -> None:
    """mnist/dvc.yaml: section 5.1 measured, reports/convolution.md and .png."""
    from pipeline.reporting.convolution import convolution as write_report

    write_report(load_params())


@stage
def mnist_visualize() -> None:
    """mnist/dvc.yaml: activations and filter patterns of the convnet of mnist.visualize."""
    from pipeline.visualize.digits import mnist_visualize as draw_figures

    draw_figures(load_params())


@stage
def report() -> None:
    """Write reports/progression.md and .png from every model's metrics; log them to MLflow."""
    from pipeline.reporting.report import report

    report(load_params())


PhotoPaths = typer.Argument(
    ..., metavar="PATH...", help="Photos (JPEG, PNG, WebP) or folders of them."
)
ModelOption = typer.Option(
    None,
    help="A models:/ URI or a local .keras file. "
    "Default: models:/<registry.model_name>@champion (dogs-vs-cats).",
)
CsvOption = typer.Option(None, help="Also write file,label,p_dog,error rows to this CSV file.")
BatchOption = typer.Option(32, min=1, help="Images per model call.")


@stage
def predict(
    targets: list[Path] = PhotoPaths,
    model: str = ModelOption,
    csv: Path = CsvOption,
    batch_size: int = BatchOption,
) -> None:
    """Cat or dog for photos: one line per image (file, label, P(dog)); exit 1 if any failed."""
    from pipeline.serving.predict import predict as predict_images

    if model is None:  # params.yaml names the registered model, where there is one
        from pipeline.core.params import RegistryParams
        from pipeline.core.paths import PARAMS_FILE

        registry = load_params().registry if PARAMS_FILE.is_file() else RegistryParams()
        model = f"models:/{registry.model_name}@champion"
    if predict_images(targets, model, csv, batch_size):
        raise typer.Exit(1)


@stage
def serve(
    model: str = typer.Option(
        None, help="A models:/ URI or an MLflow Model folder. Default: as predict's."
    ),
    host: Annotated[str, typer.Option("--host", "-h", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", help="Port to listen on.")] = 5001,
) -> None:
    """Not a stage: serve a model as `mlflow models serve` does (POST /invocations), refusing
    a request body over serving.max_request_mb with HTTP 413 before reading it."""
    from pipeline.core.params import RegistryParams, ServingParams
    from pipeline.core.paths import PARAMS_FILE
    from pipeline.serving.server import serve as serve_model

    params = load_params() if PARAMS_FILE.is_file() else None
    serving = params.serving if params else ServingParams()
    registry = params.registry if params else RegistryParams()
    serve_model(
        model or f"models:/{registry.model_name}@champion", host, port, serving.max_request_mb
    )


@stage
def compare(
    by: Annotated[
        list[str] | None,
        typer.Option(help="A param that tells groups apart (repeatable); default: all but --over."),
    ] = None,
    over: Annotated[str, typer.Option(help="The param whose values are the draws.")] = "train.seed",
    model: Annotated[
        list[str] | None, typer.Option(help="Only these run names (repeatable).")
    ] = None,
    commit: Annotated[str, typer.Option(help="Only runs trained at this git revision.")] = "",
    since: Annotated[str, typer.Option(help="Only runs started since this ISO date/time.")] = "",
    where: Annotated[
        str,
        typer.Option(
            "--filter", help="An MLflow filter: \"params.`train.baseline.epochs` = '30'\"."
        ),
    ] = "",
) -> None:
    """Not a stage: each model's accuracy as mean ± std over seeds, from the MLflow store."""
    import shlex

    from pipeline.reporting.compare import Selection, run_compare

    selection = Selection(over, tuple(by or ()), tuple(model or ()), commit, since, where)
    run_compare(selection, "".join(" " + shlex.quote(a) for a in sys.argv[2:]))


@stage
def results(
    where: Annotated[
        str,
        typer.Option(
            "--filter", help="An MLflow filter: \"params.`train.baseline.epochs` = '30'\"."
        ),
    ] = "",
    stores: Annotated[
        list[str] | None,
        typer.Option(
            "--store", help="A tracking URI to read (repeatable); default: the project's."
        ),
    ] = None,
) -> None:
    """Not a stage: reports/results.md and .json, every model's figures over seeds, from the
    MLflow store, with the machine they ran on; also the README's generated tables."""
    import shlex

    from pipeline.reporting.results import results as write_results

    argv = "".join(" " + shlex.quote(a) for a in sys.argv[2:])
    write_results(where, argv, tuple(stores or ()))


# Options that sweep and search share
ArgsFile = Annotated[
    str | None, typer.Option(help="A file of -S options (experiments/*.args), before -S.")
]
On = Annotated[
    str, typer.Option(help="local (the DVC queue), ray://HOST:PORT, or auto (RAY_ADDRESS).")
]
GitRemote = Annotated[str, typer.Option(help="--on ray: the git remote workers clone and push to.")]


@stage
def sweep(
    model: Annotated[
        list[str] | None,
        typer.Option(
            help="A model (repeatable): baseline, features-vgg16, ...; default: every one."
        ),
    ] = None,
    seeds: Annotated[
        str | None, typer.Option(help="Seeds: 1-5, 1,3,7 or 1-3,9; default sweep.seeds.")
    ] = None,
    set_param: Annotated[
        list[str] | None,
        typer.Option(
            "--set-param",
            "-S",
            help="key=value, or a grid: key=0.3,0.5, key=choice(...), key=range(...) (repeatable).",
        ),
    ] = None,
    args_file: ArgsFile = None,
    on: On = "local",
    jobs: Annotated[
        int | None,
        typer.Option("--jobs", "-j", min=1, help="--on local: at once; default sweep.jobs."),
    ] = None,
    git_remote: GitRemote = "origin",
) -> None:
    """Not a stage: one DVC experiment per (model, configuration of the grid, seed), here or
    on a Ray cluster; skips the finished ones, reruns the failed ones, then ranks the
    configurations (reports/sweep-<id>.md)."""
    import shlex

    from pipeline.sweep.run import sweep as run_sweep

    argv = "".join(" " + shlex.quote(a) for a in sys.argv[2:])
    seeds = seeds or load_params().sweep.seeds
    run_sweep(model or [], seeds, set_param or [], on, jobs, git_remote, args_file, argv)


@stage
def search(
    model: Annotated[str, typer.Option(help="The model to tune: baseline, augmented, ...")],
    trials: Annotated[int, typer.Option(min=1, help="Complete trials the study reaches.")] = 20,
    set_param: Annotated[
        list[str] | None,
        typer.Option(
            "--set-param",
            "-S",
            help="The space: key=choice(...), range(...), interval(...); key=value is fixed.",
        ),
    ] = None,
    args_file: ArgsFile = None,
    seeds: Annotated[
        str | None,
        typer.Option(help="Seeds the winner and the book's settings train; default sweep.seeds."),
    ] = None,
    study: Annotated[
        str | None, typer.Option(help="The study, in .optuna/<study>.db; default from the space.")
    ] = None,
    on: On = "local",
    git_remote: GitRemote = "origin",
) -> None:
    """Not a stage: an Optuna TPE search, one DVC experiment per trial, resumable; then the
    winner against the book's settings over seeds (reports/search-<study>.md)."""
    import shlex

    from pipeline.sweep.search import search as run_search

    argv = "".join(" " + shlex.quote(a) for a in sys.argv[2:])
    seeds = seeds or load_params().sweep.seeds
    run_search(model, trials, set_param or [], seeds, study, on, git_remote, args_file, argv)


def main() -> None:
    """`python -m pipeline`: one command, then a quick exit (`_exit`)."""
    # TensorFlow's start-up notices (oneDNN, CPU features) are INFO; its warnings still show
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    # Keras imports scikit-learn only for wrappers no command uses: every stage process skips it
    sys.modules.setdefault("sklearn", None)
    logging.getLogger("mlflow.store.db.utils").addFilter(errors.HideFullDiskLogs())
    from pipeline.training import backend

    backend.choose()  # KERAS_BACKEND from params.yaml: before any command imports Keras
    try:
        app()
    except SystemExit as exc:
        _exit(exc.code)
    _exit(0)


# Keras backends whose teardown only frees C++ globals and thread pools (JAX's: about as
# long as TensorFlow's), so an exit can skip it
HEAVY_RUNTIMES = ("tensorflow", "jax")


def _exit(code) -> None:
    """Exit with `code`, skipping the interpreter's teardown where TensorFlow or JAX was
    loaded: it only frees their C++ globals and thread pools, seconds of every stage process
    (docs/performance.md). By now every output is closed (atomic files, MLflow's committed
    sqlite rows); Python's exit hooks still run. With another non-daemon thread alive, the
    normal exit waits."""
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message")
        print(code, file=sys.stderr)
        code = 1
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    loaded = any(name in sys.modules for name in HEAVY_RUNTIMES)
    if not loaded or any(t.is_alive() and not t.daemon for t in others):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed, or a closed pipe
            stream.flush()
    os._exit(code)
