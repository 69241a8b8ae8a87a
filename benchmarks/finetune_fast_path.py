"""finetune's CPU fast path (`train.finetune.cached_copies`) against on-the-fly training, per image.

    python benchmarks/finetune_fast_path.py [--base efficientnet_lite0] [--images 200] [--copies 30]

On `--images` real photos of the shared archive (../shared/data/dogs-vs-cats-6000.zip, or
DOGS_VS_CATS_ZIP), at the base's image size, in the precision `mixed_precision: auto` picks
here: milliseconds per image of an on-the-fly finetune step (augmentation, the whole base,
backward through the unfrozen top), of one augmented pass through the folded frozen bottom
(what each cached copy costs), and of a step of the top on cached activations. Then the
book's schedule (train.finetune: epochs x steps x batch images) projected both ways. Each
figure is the second of two timed runs (the first traces). VGG16 gets random weights (the
timings do not depend on them). Prints a line; writes nothing. Not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ZIP = Path(os.environ.get("DOGS_VS_CATS_ZIP") or ROOT.parent / "shared/data/dogs-vs-cats-6000.zip")


def photos(count: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    from pipeline.data.images import square_pixels

    names = [f"train/{c}.{i}.jpg" for i in range(count // 2) for c in ("cat", "dog")]
    with zipfile.ZipFile(ZIP) as archive:
        images = [square_pixels(Image.open(io.BytesIO(archive.read(n))), size) for n in names]
    return np.stack(images), np.arange(len(names)) % 2


def ms_per_image(work, count: int) -> float:
    work()  # traces
    started = time.perf_counter()
    work()
    return (time.perf_counter() - started) / count * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="efficientnet_lite0")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--copies", type=int, default=30)
    args = parser.parse_args()

    import keras

    from pipeline.core.params import load_params
    from pipeline.data.dataset import make_dataset
    from pipeline.models.augment import augmentation
    from pipeline.models.bases import save_base_weights
    from pipeline.models.pretrained import folded_bottom, frozen_base_model, split_at, unfreeze_from
    from pipeline.training import runtime
    from pipeline.training.train import compile_model

    params = load_params(ROOT / "params.yaml")
    settings, fit = params.pretrained.bases[args.base], params.train.finetune
    x, y = photos(args.images, settings.image_size)
    os.chdir(tempfile.mkdtemp(prefix="finetune-fast-path-"))  # models/bases/ goes here
    save_base_weights(args.base, "random" if args.base == "vgg16" else "imagenet", 42)
    policy, _ = runtime.precision_policy(params.train.runtime)
    keras.mixed_precision.set_global_policy(policy)
    layer = augmentation(params.augmentation, params.train.seed)
    size, pooling = settings.image_size, settings.pooling
    network = frozen_base_model(args.base, size, pooling, 256, layer, "network")
    unfreeze_from(network, args.base, settings.finetune_from)
    top = split_at(network, args.base, settings.finetune_from)[1]
    bottom = folded_bottom(network, args.base, settings.finetune_from)

    def fitting(model, inputs):
        compile_model(model, fit.learning_rate)
        data = make_dataset(inputs, y, fit.batch_size, training=True)
        return lambda: model.fit(data, epochs=1, verbose=0)

    augmented = make_dataset(x, y, 32).map(lambda a, b: layer(a, training=True))
    activations = bottom.predict(augmented, verbose=0)
    step = ms_per_image(fitting(network, x), len(x))
    copy = ms_per_image(lambda: bottom.predict(augmented, verbose=0), len(x))
    top_step = ms_per_image(fitting(top, activations), len(x))
    seen = fit.epochs * fit.steps_per_epoch * fit.batch_size
    train_images = params.split.train * 2
    fast = (seen * top_step + args.copies * train_images * copy) / 1000
    print(
        f"{args.base} at {size} px, {policy}, ms per image: on-the-fly step {step:.1f}, "
        f"augmented copy through the folded bottom {copy:.1f}, top step {top_step:.1f}; "
        f"book schedule ({seen:,} images): on the fly {seen * step / 1000:.0f} s, "
        f"cached_copies {args.copies} {fast:.0f} s ({fast / (seen * step / 1000):.2f}x)"
    )


if __name__ == "__main__":
    main()
