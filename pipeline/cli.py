"""`python -m pipeline <stage>`: what dvc.yaml calls. Thin: parse, load params, call one function."""

from __future__ import annotations

import functools
import sys

import typer

from pipeline.errors import PipelineError
from pipeline.params import load_params

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
            print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(1) from None

    return app.command()(wrapper)


@stage
def download() -> None:
    """Fetch data.source, verify every image, write data/images/ and reports/download.json."""
    from pipeline.data.download import run_download

    params = load_params()
    run_download(params.data.source, params.data.sha256)


@stage
def split() -> None:
    """Write the manifest data/split.csv (path, label, split) from data/images/."""
    from pipeline.data.split import run_split

    run_split(load_params().split)


@stage
def prepare(image_size: int = typer.Argument(..., help="Side in pixels; must be in prepare.image_sizes.")) -> None:
    """Decode and resize every split once into data/prepared/<size>px/<split>.npz."""
    from pipeline.data.prepare import run_prepare

    params = load_params()
    if image_size not in params.prepare.image_sizes:
        raise PipelineError(f"prepare: {image_size} is not in prepare.image_sizes {params.prepare.image_sizes}")
    run_prepare(image_size)


def main() -> None:
    app()
