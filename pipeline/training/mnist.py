"""The training stages of mnist/dvc.yaml (section 5.1): `mnist_dense@<seed>` and
`mnist_convnet@<downsampling>-<padding>-<seed>`. Each builds its network from its params and
hands a Job to the one training routine (train.run): the same outputs, MLflow run, logged
Model and resume as the dogs-vs-cats models, for ten classes. Nothing here imports a conv base.
"""

from __future__ import annotations

from pipeline.core import catalog, paths
from pipeline.core.files import sha256_of
from pipeline.core.params import FitParams, Params
from pipeline.training import train


def mnist_dense(params: Params, seed: int) -> dict:
    """Chapter 2's dense network, the section's reference."""
    from pipeline.models.mnist import build_dense

    model = catalog.mnist_model(params, "mnist_dense", seed)
    settings = params.mnist.dense
    return _run(params, model, settings, seed, lambda: build_dense(settings.units, model.name))


def mnist_convnet(params: Params, downsampling: str, padding: str, seed: int) -> dict:
    """Listing 5.1's convnet, downsampled and padded as the grid says."""
    from pipeline.models.mnist import build_convnet

    model = catalog.mnist_model(params, "mnist_convnet", seed, downsampling, padding)
    variant = {"downsampling": downsampling, "padding": padding}

    def build_model():
        return build_convnet(downsampling, padding, model.name)

    return _run(params, model, params.mnist.convnet, seed, build_model, variant)


def _run(params: Params, model, fit: FitParams, seed: int, build_model, variant=None) -> dict:
    from pipeline.data.mnist import SPLITS, load_digits

    digits = load_digits()
    section = model.kind.name.removeprefix("mnist_")
    # What the run logs: the sections of `mnist` the stage declares, its seed and variant.
    logged = {
        "mnist": {"seed": seed, "validation": params.mnist.validation},
        "train": {"runtime": params.train.runtime.model_dump()},
    }
    logged["mnist"][section] = {**fit.model_dump(), **(variant or {})}
    settings = train.Settings(seed=seed, runtime=params.train.runtime, fit=fit, logged=logged)
    job = train.Job(
        model=model,
        settings=settings,
        build_model=build_model,
        data=train.Splits(*(digits[split] for split in SPLITS)),
        split_sha256=sha256_of(paths.MNIST_DIGITS)[:16],
    )
    return train.run(job)
