"""Every train.Job is made here, from the params and the catalog: the model's name and stage,
its typed settings, the split it trains on. The stage modules (scratch.py, pretrained.py)
add what differs per model: how to build it and what data it reads."""

from __future__ import annotations

import numpy as np

from pipeline.core import catalog, paths
from pipeline.core.errors import PipelineError
from pipeline.core.files import sha256_of
from pipeline.core.params import Params
from pipeline.data.prepare import load_prepared
from pipeline.data.split import SPLITS
from pipeline.training import timeline
from pipeline.training.train import Job, Settings, Splits


def settings(params: Params, model: catalog.TrainedModel) -> Settings:
    """The sections `model`'s stage reads (its `params:` in dvc.yaml), typed."""
    kind = model.kind
    return Settings(
        seed=params.train.seed,
        runtime=params.train.runtime,
        fit=getattr(params.train, kind.name),
        augmentation=params.augmentation if kind.augments else None,
        base=catalog.base_settings(params, model.base) if kind.pretrained else None,
    )


def make_job(params: Params, model: catalog.TrainedModel, **work) -> Job:
    """`work` is what differs per model: build_model, data, and maybe export, pixels_model,
    extra_seconds."""
    timeline.mark("data_loaded")  # `work` holds the data, read by the caller
    split_hash = sha256_of(paths.SPLIT_FILE)[:16] if paths.SPLIT_FILE.is_file() else "unknown"
    return Job(model=model, settings=settings(params, model), split_sha256=split_hash, **work)


def load_image_splits(image_size: int) -> Splits:
    timeline.mark("data_begin")
    return Splits(*(load_prepared(image_size, split) for split in SPLITS))


def load_feature_splits(base: str) -> Splits:
    timeline.mark("data_begin")

    def load(split: str):
        path = paths.features_file(base, split)
        if not path.is_file():
            raise PipelineError(f"{path} not found; run `dvc repro extract@{base}` first")
        with np.load(path) as arrays:
            return arrays["features"], arrays["labels"]

    return Splits(*(load(split) for split in SPLITS))
