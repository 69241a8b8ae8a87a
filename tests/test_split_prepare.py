import hashlib

import numpy as np
import pytest

from pipeline.core.errors import PipelineError
from pipeline.core.params import SplitParams
from pipeline.data.download import extract_images
from pipeline.data.prepare import load_prepared, prepare
from pipeline.data.split import split as make_split_file
from tests.helpers.synthetic import write_archive


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    archive = write_archive(root / "a.zip", per_class=30, size=64)
    extract_images(archive, root / "images")
    return root / "images"


def split_file(tmp_path, images_dir, **params):
    out = tmp_path / f"split-{len(list(tmp_path.iterdir()))}.csv"
    make_split_file(SplitParams(train=10, validation=5, test=5, **params), images_dir, out)
    return out


def test_book_order_takes_the_lowest_numbers(tmp_path, images_dir):
    frame = make_split_file(
        SplitParams(train=10, validation=5, test=5), images_dir, tmp_path / "s.csv"
    )
    cats = frame[frame.label == "cat"]

    def numbers(split):
        return sorted(
            int(p.rsplit("/", 1)[1].split(".")[0]) for p in cats[cats.split == split].path
        )

    assert numbers("train") == list(range(10))
    assert numbers("validation") == list(range(10, 15))
    assert numbers("test") == list(range(15, 20))
    assert frame.groupby(["split", "label"], observed=True).size().tolist() == [10, 10, 5, 5, 5, 5]


def test_same_seed_same_bytes_other_seed_other_manifest(tmp_path, images_dir):
    def digest(path):
        return hashlib.sha256(path.read_bytes()).hexdigest()

    a = split_file(tmp_path, images_dir, order="shuffle", seed=1)
    b = split_file(tmp_path, images_dir, order="shuffle", seed=1)
    c = split_file(tmp_path, images_dir, order="shuffle", seed=2)
    book = split_file(tmp_path, images_dir)
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)
    assert digest(a) != digest(book)


def test_asking_for_too_many_images_names_the_counts(tmp_path, images_dir):
    with pytest.raises(
        PipelineError,
        match=r"40 cat images wanted \(train 20 \+ validation 10 \+ test 10\) but .* has only 30",
    ):
        make_split_file(
            SplitParams(train=20, validation=10, test=10), images_dir, tmp_path / "s.csv"
        )
    assert not (tmp_path / "s.csv").exists()


def test_prepare_writes_resized_uint8_arrays(tmp_path, images_dir):
    split = split_file(tmp_path, images_dir)
    prepare(48, split, tmp_path / "prepared")
    images, labels = load_prepared(48, "train", tmp_path / "prepared")
    assert images.shape == (20, 48, 48, 3) and images.dtype == np.uint8
    assert labels.tolist() == [0] * 10 + [1] * 10
    # The synthetic cats are reddish and the dogs bluish: the pixels went with their labels.
    red_minus_blue = images[..., 0].mean(axis=(1, 2)) - images[..., 2].mean(axis=(1, 2))
    assert (red_minus_blue[:10] > 0).all() and (red_minus_blue[10:] < 0).all()
    test_images, _ = load_prepared(48, "test", tmp_path / "prepared")
    assert test_images.shape == (10, 48, 48, 3)
