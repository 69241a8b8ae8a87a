"""The model stages: each builds its model and data from params and hands a Job to train.run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.data.prepare import load_prepared
from pipeline.data.split import SPLIT_FILE, SPLITS
from pipeline.errors import PipelineError
from pipeline.io import atomic_dir
from pipeline.params import Params
from pipeline.project import MODELS_DIR

FEATURES_DIR = Path("data/features")


def _images(image_size: int):
    from pipeline.train import Splits

    return Splits(*(load_prepared(image_size, split) for split in SPLITS))


def _common_tags(params: Params, image_size: int, base: str = "none") -> dict:
    from pipeline.tracking import file_hash

    split_hash = file_hash(SPLIT_FILE) if SPLIT_FILE.is_file() else "unknown"
    return {
        "base": base,
        "image_size": image_size,
        "seed": params.train.seed,
        "split_sha256": split_hash,
    }


def _logged_params(params: Params, model: str, augmented: bool, base: str | None = None) -> dict:
    """The params.yaml sections a model's stage reads, for its MLflow run."""
    logged = {
        "train": {
            "seed": params.train.seed,
            "runtime": params.train.runtime.model_dump(),
            model: getattr(params.train, model).model_dump(),
        }
    }
    if augmented:
        logged["augmentation"] = params.augmentation.model_dump()
    if base:
        logged["pretrained"] = {"base": base, base: params.pretrained.bases[base].model_dump()}
    return logged


def train_scratch(params: Params, model: str) -> dict:
    """`baseline` (listing 5.5) or `augmented` (5.13: augmentation + dropout)."""
    from pipeline import train
    from pipeline.models.augment import augmentation
    from pipeline.models.scratch import build_convnet

    settings = getattr(params.train, model)
    augmented = model == "augmented"
    job = train.Job(
        name=model,
        stage=model,
        build_model=lambda: build_convnet(
            settings.image_size,
            settings.dropout,
            augmentation(params.augmentation, params.train.seed) if augmented else None,
            name=model,
        ),
        data=_images(settings.image_size),
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        steps_per_epoch=settings.steps_per_epoch,
        seed=params.train.seed,
        params=_logged_params(params, model, augmented),
        tags=_common_tags(params, settings.image_size),
    )
    return train.run(job, params)


def save_base_weights(params: Params, base: str) -> Path:
    from pipeline.models.bases import save_base_weights as save

    return save(base, _base(params, base).weights, params.train.seed)


def _base(params: Params, base: str):
    if base not in params.pretrained.bases:
        raise PipelineError(
            f"conv base {base!r} is not in pretrained.bases ({', '.join(params.pretrained.bases)})"
        )
    return params.pretrained.bases[base]


def extract(params: Params, base: str, batch_size: int = 32) -> Path:
    """Run the frozen base once over every split; cache the features for the dense head."""
    import keras

    from pipeline import runtime
    from pipeline.models.pretrained import extract_features, feature_extractor

    settings = _base(params, base)
    keras.mixed_precision.set_global_policy(runtime.precision_policy(params.train.runtime))
    extractor = feature_extractor(base, settings.image_size, settings.pooling)
    out = FEATURES_DIR / base
    with atomic_dir(out) as tmp:
        for split in SPLITS:
            images, labels = load_prepared(settings.image_size, split)
            print(f"extract {base} features of {len(images)} {split} images")
            np.savez(
                tmp / f"{split}.npz",
                features=extract_features(extractor, images, batch_size),
                labels=labels,
            )
    print(f"wrote {out}")
    return out


def _features(base: str):
    from pipeline.train import Splits

    def load(split: str):
        path = FEATURES_DIR / base / f"{split}.npz"
        if not path.is_file():
            raise PipelineError(f"{path} not found; run `dvc repro extract@{base}` first")
        with np.load(path) as arrays:
            return arrays["features"], arrays["labels"]

    return Splits(*(load(split) for split in SPLITS))


def train_features(params: Params, base: str) -> dict:
    """The book's listing 5.17-5.18: a dense head on the cached conv-base features."""
    from pipeline import train
    from pipeline.models.pretrained import dense_head

    settings, base_settings = params.train.features, _base(params, base)
    data = _features(base)
    job = train.Job(
        name=f"features-{base}",
        stage=f"features@{base}",
        build_model=lambda: dense_head(
            data.train[0].shape[1], settings.dense_units, settings.dropout, f"features_{base}"
        ),
        data=data,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        seed=params.train.seed,
        params=_logged_params(params, "features", augmented=False, base=base),
        tags=_common_tags(params, base_settings.image_size, base),
    )
    return train.run(job, params)


def train_frozen_aug(params: Params, base: str) -> dict:
    """Listing 5.20-5.21: the frozen base inside the model, trained with augmentation.

    With `cached_copies: K` (the CPU fast path) the base runs once over K augmented copies
    of the training set and the dense head trains on those features; the saved model is
    the same architecture as on-the-fly training, so finetune continues from either."""
    import time

    from pipeline import train
    from pipeline.models.augment import augmentation
    from pipeline.models.pretrained import dense_head, frozen_base_model, with_head

    settings, base_settings = params.train.frozen_aug, _base(params, base)

    def full_model():
        return frozen_base_model(
            base,
            base_settings.image_size,
            base_settings.pooling,
            settings.dense_units,
            augmentation(params.augmentation, params.train.seed),
            f"frozen_aug_{base}",
        )

    build_model, export, data, extra_seconds = (
        full_model,
        None,
        _images(base_settings.image_size),
        0.0,
    )
    if settings.cached_copies:
        started = time.perf_counter()
        data = _augmented_features(params, base, data, settings.cached_copies)
        extra_seconds = time.perf_counter() - started

        def build_model():
            return dense_head(
                data.train[0].shape[1], settings.dense_units, 0.0, f"frozen_aug_head_{base}"
            )

        def export(head):
            return with_head(full_model(), head)

    job = train.Job(
        name=f"frozen_aug-{base}",
        stage=f"frozen_aug@{base}",
        build_model=build_model,
        export=export,
        data=data,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        steps_per_epoch=settings.steps_per_epoch,
        seed=params.train.seed,
        extra_seconds=extra_seconds,
        params=_logged_params(params, "frozen_aug", augmented=True, base=base),
        tags=_common_tags(params, base_settings.image_size, base),
    )
    return train.run(job, params)


def _augmented_features(params: Params, base: str, images, copies: int):
    """Features of `copies` augmented passes over the training set, and of the clean
    validation and test sets, through the frozen base."""
    import keras

    from pipeline import runtime
    from pipeline.data.dataset import make_dataset
    from pipeline.models.augment import augmentation
    from pipeline.models.pretrained import extract_features, feature_extractor
    from pipeline.train import Splits

    settings = _base(params, base)
    keras.mixed_precision.set_global_policy(runtime.precision_policy(params.train.runtime))
    extractor = feature_extractor(base, settings.image_size, settings.pooling)
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


def train_finetune(params: Params, base: str) -> dict:
    """Listing 5.22-5.23: continue from frozen_aug with the top of the base unfrozen."""
    import keras

    from pipeline import train
    from pipeline.models.pretrained import unfreeze_from

    settings, base_settings = params.train.finetune, _base(params, base)
    source = MODELS_DIR / f"frozen_aug-{base}.keras"
    if not source.is_file():
        raise PipelineError(f"{source} not found; run `dvc repro frozen_aug@{base}` first")

    def build_model():
        model = keras.models.load_model(source)
        unfreeze_from(model, base, base_settings.finetune_from)
        return model

    job = train.Job(
        name=f"finetune-{base}",
        stage=f"finetune@{base}",
        build_model=build_model,
        data=_images(base_settings.image_size),
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        steps_per_epoch=settings.steps_per_epoch,
        seed=params.train.seed,
        params=_logged_params(params, "finetune", augmented=True, base=base),
        tags=_common_tags(params, base_settings.image_size, base),
    )
    return train.run(job, params)
