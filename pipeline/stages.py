"""The model stages. Each function is a DVC stage of the same name (dvc.yaml): it builds its
model and data from its params sections and hands a train.Job to the one training routine."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pipeline import paths
from pipeline.data.prepare import load_prepared
from pipeline.data.split import SPLITS
from pipeline.errors import PipelineError
from pipeline.files import atomic_dir, sha256_of
from pipeline.params import BaseParams, Params

AUGMENTED_MODELS = ("augmented", "frozen_aug", "finetune")


def baseline(params: Params) -> dict:
    """The book's listing 5.5: the from-scratch convnet."""
    return _scratch(params, "baseline", augment=False)


def augmented(params: Params) -> dict:
    """Listing 5.13: the same convnet with augmentation and dropout."""
    return _scratch(params, "augmented", augment=True)


def _scratch(params: Params, model: str, augment: bool) -> dict:
    from pipeline import train
    from pipeline.models.augment import augmentation
    from pipeline.models.scratch import build_convnet

    settings = getattr(params.train, model)

    def build_model():  # in the strategy's scope: the augmentation layer has a seed variable
        layer = augmentation(params.augmentation, params.train.seed) if augment else None
        return build_convnet(settings.image_size, settings.dropout, layer, model)

    data = load_image_splits(settings.image_size)
    return train.run(_job(params, model, build_model=build_model, data=data))


def base_weights(params: Params, base: str) -> Path:
    """Resolve pretrained.bases.<base>.weights once into models/bases/<base>.weights.h5."""
    from pipeline.models.bases import save_base_weights

    return save_base_weights(base, _base_settings(params, base).weights, params.train.seed)


def extract(params: Params, base: str, batch_size: int = 32) -> Path:
    """Run the frozen base once over every split; cache the features for the dense head."""
    from pipeline.models.pretrained import extract_features

    extractor = _feature_extractor(params, base)
    image_size = _base_settings(params, base).image_size
    out = paths.FEATURES_DIR / base
    with atomic_dir(out) as tmp:
        for split in SPLITS:
            images, labels = load_prepared(image_size, split)
            print(f"extract {base} features of {len(images)} {split} images")
            features = extract_features(extractor, images, batch_size)
            np.savez(tmp / f"{split}.npz", features=features, labels=labels)
    print(f"wrote {out}")
    return out


def features(params: Params, base: str) -> dict:
    """The book's listing 5.17-5.18: a dense head on the cached conv-base features."""
    from pipeline import train
    from pipeline.models.pretrained import dense_head

    settings, data = params.train.features, load_feature_splits(base)

    def build_model():
        width = data.train[0].shape[1]
        return dense_head(width, settings.dense_units, settings.dropout, f"features_{base}")

    return train.run(_job(params, "features", base, build_model=build_model, data=data))


def frozen_aug(params: Params, base: str) -> dict:
    """Listing 5.20-5.21: the frozen base inside the model, trained with augmentation.

    With `cached_copies: K` (the CPU fast path) the base runs once over K augmented copies
    of the training set and the dense head trains on those features; the saved model is
    the same architecture as on-the-fly training, so finetune continues from either."""
    from pipeline import train
    from pipeline.models.augment import augmentation
    from pipeline.models.pretrained import dense_head, frozen_base_model, with_head

    settings, base_settings = params.train.frozen_aug, _base_settings(params, base)

    def full_model():
        layer = augmentation(params.augmentation, params.train.seed)
        size, pooling, units = base_settings.image_size, base_settings.pooling, settings.dense_units
        return frozen_base_model(base, size, pooling, units, layer, f"frozen_aug_{base}")

    data = load_image_splits(base_settings.image_size)
    if not settings.cached_copies:
        return train.run(_job(params, "frozen_aug", base, build_model=full_model, data=data))
    started = time.perf_counter()
    data = _augmented_features(params, base, data, settings.cached_copies)
    width, units = data.train[0].shape[1], settings.dense_units
    job = _job(
        params,
        "frozen_aug",
        base,
        build_model=lambda: dense_head(width, units, 0.0, f"frozen_aug_head_{base}"),
        data=data,
        export=lambda head: with_head(full_model(), head),
        extra_seconds=time.perf_counter() - started,
    )
    return train.run(job)


def finetune(params: Params, base: str) -> dict:
    """Listing 5.22-5.23: continue from frozen_aug with the top of the base unfrozen."""
    import keras

    from pipeline import train
    from pipeline.models.pretrained import unfreeze_from

    base_settings = _base_settings(params, base)
    source = paths.model_file(f"frozen_aug-{base}")
    if not source.is_file():
        raise PipelineError(f"{source} not found; run `dvc repro frozen_aug@{base}` first")

    def build_model():
        model = keras.models.load_model(source)
        unfreeze_from(model, base, base_settings.finetune_from)
        return model

    data = load_image_splits(base_settings.image_size)
    return train.run(_job(params, "finetune", base, build_model=build_model, data=data))


def _job(params: Params, model: str, base: str | None = None, **work):
    """Every train.Job is built here: names, the stage's params sections, tags.
    `work` is what differs per model: build_model, data, and maybe export, extra_seconds."""
    from pipeline import train

    if base is None:
        name, stage, image_size = model, model, getattr(params.train, model).image_size
    else:
        name, stage = f"{model}-{base}", f"{model}@{base}"
        image_size = _base_settings(params, base).image_size
    split_hash = sha256_of(paths.SPLIT_FILE)[:16] if paths.SPLIT_FILE.is_file() else "unknown"
    tags = {"base": base or "none", "image_size": image_size, "seed": params.train.seed}
    return train.Job(
        name=name,
        stage=stage,
        fit=getattr(params.train, model),
        runtime=params.train.runtime,
        seed=params.train.seed,
        logged_params=_stage_params(params, model, base),
        tags={**tags, "split_sha256": split_hash},
        **work,
    )


def _stage_params(params: Params, model: str, base: str | None) -> dict:
    """The params.yaml sections a model's stage reads (dvc.yaml), for its MLflow run."""
    section = getattr(params.train, model)
    train_params = {"seed": params.train.seed, "runtime": params.train.runtime.model_dump()}
    logged = {"train": {**train_params, model: section.model_dump()}}
    if model in AUGMENTED_MODELS:
        logged["augmentation"] = params.augmentation.model_dump()
    if base:
        logged["pretrained"] = {"base": base, base: _base_settings(params, base).model_dump()}
    return logged


def _base_settings(params: Params, base: str) -> BaseParams:
    if base not in params.pretrained.bases:
        known = ", ".join(params.pretrained.bases)
        raise PipelineError(f"conv base {base!r} is not in pretrained.bases ({known})")
    return params.pretrained.bases[base]


def load_image_splits(image_size: int):
    from pipeline.train import Splits

    return Splits(*(load_prepared(image_size, split) for split in SPLITS))


def load_feature_splits(base: str):
    from pipeline.train import Splits

    def load(split: str):
        path = paths.features_file(base, split)
        if not path.is_file():
            raise PipelineError(f"{path} not found; run `dvc repro extract@{base}` first")
        with np.load(path) as arrays:
            return arrays["features"], arrays["labels"]

    return Splits(*(load(split) for split in SPLITS))


def _feature_extractor(params: Params, base: str):
    """The frozen base + pooling, in the precision the runtime params ask for."""
    import keras

    from pipeline import runtime
    from pipeline.models.pretrained import feature_extractor

    settings = _base_settings(params, base)
    keras.mixed_precision.set_global_policy(runtime.precision_policy(params.train.runtime))
    return feature_extractor(base, settings.image_size, settings.pooling)


def _augmented_features(params: Params, base: str, images, copies: int):
    """Features of `copies` augmented passes over the training set, and of the clean
    validation and test sets, through the frozen base."""
    from pipeline.data.dataset import make_dataset
    from pipeline.models.augment import augmentation
    from pipeline.models.pretrained import extract_features
    from pipeline.train import Splits

    extractor = _feature_extractor(params, base)
    augment = augmentation(params.augmentation, params.train.seed)
    x_train, y_train = images.train
    train_features = []
    for copy in range(copies):
        print(f"augmented copy {copy + 1}/{copies} through {base}")
        dataset = make_dataset(x_train, y_train, 32).map(lambda x, y: augment(x, training=True))
        train_features.append(extractor.predict(dataset, verbose=2).astype(np.float32))
    return Splits(
        (np.concatenate(train_features), np.tile(y_train, copies)),
        (extract_features(extractor, images.validation[0]), images.validation[1]),
        (extract_features(extractor, images.test[0]), images.test[1]),
    )
