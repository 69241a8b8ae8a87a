"""Stage `split`: a stratified, seeded, deterministic manifest (path, label, split).

The book takes the lowest file numbers of each class (cat.0-999 train, 1000-1499
validation, 1500-1999 test); `order: shuffle` draws the same counts at random instead.
The manifest points at the images; it never copies them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.errors import PipelineError
from pipeline.core.files import atomic_path
from pipeline.core.params import SplitParams
from pipeline.core.paths import IMAGES_DIR, SPLIT_FILE
from pipeline.data import CLASSES

SPLITS = ("train", "validation", "test")


def numbered_images(images_dir: Path, label: str) -> list[Path]:
    """The images of one class, in the book's order: by file number."""
    paths = [p for p in (images_dir / label).glob("*.jpg") if p.stem.isdigit()]
    return sorted(paths, key=lambda p: int(p.stem))


def make_split(params: SplitParams, images_dir: Path = IMAGES_DIR) -> pd.DataFrame:
    counts = params.counts()
    wanted = sum(counts.values())
    rows = []
    for label in CLASSES:
        paths = numbered_images(images_dir, label)
        if len(paths) < wanted:
            raise PipelineError(
                f"split: {wanted} {label} images wanted (train {params.train} + validation "
                f"{params.validation} + test {params.test}) but {images_dir / label} has only "
                f"{len(paths)}; lower split.train/validation/test"
            )
        if params.order == "shuffle":
            # One generator per class, seeded from (seed, class): adding a class or changing
            # another class's files does not change this class's draw.
            rng = np.random.default_rng([params.seed, CLASSES.index(label)])
            paths = [paths[i] for i in rng.permutation(len(paths))]
        start = 0
        for split in SPLITS:
            for path in sorted(paths[start : start + counts[split]], key=lambda p: int(p.stem)):
                rows.append({"path": path.as_posix(), "label": label, "split": split})
            start += counts[split]
    frame = pd.DataFrame(rows)
    frame["split"] = pd.Categorical(frame["split"], SPLITS, ordered=True)
    return frame.sort_values(["split", "label"], kind="stable").reset_index(drop=True)


def split(
    params: SplitParams, images_dir: Path = IMAGES_DIR, out: Path = SPLIT_FILE
) -> pd.DataFrame:
    frame = make_split(params, images_dir)
    with atomic_path(out) as tmp:
        frame.to_csv(tmp, index=False, lineterminator="\n")
    summary = frame.groupby(["split", "label"], observed=True).size().unstack()
    print(f"wrote {out}:\n{summary.to_string()}")
    return frame


def read_split(path: Path = SPLIT_FILE) -> pd.DataFrame:
    if not path.is_file():
        raise PipelineError(f"{path} not found; run the split stage first (dvc repro split)")
    return pd.read_csv(path)
