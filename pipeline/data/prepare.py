"""Stage `prepare@<size>`: decode and resize every image of the split once.

Training then reads uint8 arrays (`data/prepared/<size>px/<split>.npz`: images NHWC,
labels 0 = cat, 1 = dog) and never decodes a JPEG again.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.core.errors import PipelineError
from pipeline.core.files import atomic_dir
from pipeline.core.paths import PREPARED_DIR, SPLIT_FILE
from pipeline.data import CLASSES
from pipeline.data.images import square_pixels
from pipeline.data.split import SPLITS, read_split


def prepared_dir(image_size: int, root: Path = PREPARED_DIR) -> Path:
    return root / f"{image_size}px"


def load_image(path: str, image_size: int) -> np.ndarray:
    with Image.open(path) as image:
        return square_pixels(image, image_size)


def prepare(image_size: int, split_file: Path = SPLIT_FILE, root: Path = PREPARED_DIR) -> Path:
    frame = read_split(split_file)
    out = prepared_dir(image_size, root)
    with atomic_dir(out) as tmp, ThreadPoolExecutor() as pool:
        for split in SPLITS:
            rows = frame[frame["split"] == split]
            if rows.empty:
                raise PipelineError(
                    f"{split_file}: the {split} split is empty; rerun the split stage"
                )
            # Filled in place: np.stack over a list would hold every image twice.
            images = np.empty((len(rows), image_size, image_size, 3), np.uint8)
            decoded = pool.map(lambda p: load_image(p, image_size), rows["path"])
            for i, image in enumerate(
                tqdm(decoded, total=len(rows), desc=f"prepare {split} {image_size}px", unit="img")
            ):
                images[i] = image
            labels = rows["label"].map(CLASSES.index).to_numpy(np.uint8)
            np.savez(tmp / f"{split}.npz", images=images, labels=labels)
    print(f"wrote {out}")
    return out


def load_prepared(
    image_size: int, split: str, root: Path = PREPARED_DIR
) -> tuple[np.ndarray, np.ndarray]:
    path = prepared_dir(image_size, root) / f"{split}.npz"
    if not path.is_file():
        raise PipelineError(f"{path} not found; run `dvc repro prepare@{image_size}` first")
    with np.load(path) as arrays:
        return arrays["images"], arrays["labels"]
