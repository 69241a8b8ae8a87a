"""Bad input, third pass (issue 21): damaged models, huge photos, endless downloads, and the
small ones. Fast and in-process: a tiny Keras model in tmp_path, photos made here, a local
HTTP server that trickles or never answers, with deadlines of a fraction of a second."""

from __future__ import annotations

import io
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.exceptions import MlflowException
from PIL import Image

from pipeline.core.errors import PipelineError
from pipeline.core.params import DataParams, TransferParams, load_params
from pipeline.data import images
from pipeline.data.download import download
from pipeline.data.fetch import fetch_archive
from tests.helpers.project import ROOT
from tests.helpers.synthetic import write_archive

# --- damaged models -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_keras(tmp_path_factory) -> Path:
    """A real Keras model file: photos of 32 px in, P(dog) out."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return path


def damaged(kind: str, intact: Path) -> bytes:
    data = intact.read_bytes()
    if kind == "truncated":
        return data[: len(data) // 2]
    if kind == "text":
        return b"not a model\n"
    buffer = io.BytesIO()  # "zip": a zip, but not of a model
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "hello")
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["truncated", "text", "zip"])
@pytest.mark.parametrize(
    ("name", "stage"), [("baseline", "baseline"), ("frozen_aug-vgg16", "frozen_aug@vgg16")]
)
def test_a_damaged_model_file_names_itself_and_its_stage(
    tmp_path, monkeypatch, tiny_keras, kind, name, stage
):
    from pipeline.models.model_io import load_keras

    monkeypatch.chdir(tmp_path)
    path = Path("models") / f"{name}.keras"
    path.parent.mkdir()
    path.write_bytes(damaged(kind, tiny_keras))
    with pytest.raises(PipelineError) as error:
        load_keras(path)
    message = str(error.value)
    assert message.startswith(f"{path}: not a readable Keras model (")
    assert f"run `dvc checkout {stage}`" in message and f"`dvc repro {stage}`" in message
    assert "File not found" not in message and "\n" not in message


def test_a_model_file_of_no_stage_and_a_good_one(tmp_path, tiny_keras):
    from pipeline.models.model_io import load_keras

    assert load_keras(tiny_keras).input_shape == (None, 32, 32, 3)
    text = tmp_path / "x.keras"
    text.write_text("not a model")
    with pytest.raises(PipelineError, match=r"x.keras: not a readable Keras model \(not a zip"):
        load_keras(text)
    with pytest.raises(PipelineError, match=r"nope.keras: no such file; give a .keras file"):
        load_keras(tmp_path / "nope.keras")


def test_visualize_and_finetune_say_which_model_to_restore(tmp_path, monkeypatch, tiny_keras):
    from pipeline.core import catalog
    from pipeline.training.pretrained import finetune
    from pipeline.visualize.stage import load_model

    params = load_params(ROOT / "params.yaml")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    for name in ("baseline", "frozen_aug-vgg16"):
        (tmp_path / f"models/{name}.keras").write_bytes(damaged("truncated", tiny_keras))
    with pytest.raises(PipelineError, match=r"^models/baseline.keras: .*dvc checkout baseline"):
        load_model(params, catalog.by_name(params, "baseline"))
    # Before any data is read (there is none here) or TensorFlow runs.
    with pytest.raises(PipelineError, match=r"^models/frozen_aug-vgg16.keras: .*frozen_aug@vgg16"):
        finetune(params, "vgg16")


def test_predict_model_is_a_local_file_unless_it_is_a_uri(tmp_path, monkeypatch, tiny_keras):
    from pipeline.serving import predict

    def no_store(uri):
        raise AssertionError(f"{uri} was looked up in the MLflow store")

    monkeypatch.setattr(predict, "_load_registered", no_store)
    for missing in ("missing.h5", "missing.keras", str(tmp_path / "dir/model")):
        with pytest.raises(PipelineError, match=f"^--model {re.escape(missing)}: no such file"):
            predict.load_classifier(missing)
    size, scores = predict.load_classifier(str(tiny_keras))
    assert size == 32 and scores(np.zeros((2, 32, 32, 3), np.uint8))["p_dog"].shape == (2,)
    with pytest.raises(AssertionError, match="models:/dogs-vs-cats@champion was looked up"):
        predict.load_classifier("models:/dogs-vs-cats@champion")


# --- huge photos ----------------------------------------------------------------------


def photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A smooth photo-like image of `size` (w, h): noise of a 50th of the size, upscaled."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(size[1] // 50, 2), max(size[0] // 50, 2), 3), np.uint8)
    return Image.fromarray(small).resize(size, Image.BILINEAR)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    if fmt == "PNG":
        options.setdefault("compress_level", 1)  # fast
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_ordinary_photos_decode_exactly_as_prepare_does():
    # The book's photos are about 500 x 375: no draft, no reduce, prepare's resize.
    for fmt in ("JPEG", "PNG"):
        data = encoded(photo((500, 375)), fmt)
        with Image.open(io.BytesIO(data)) as image:
            expected = images.square_pixels(image, 150)
        np.testing.assert_array_equal(images.decode(data, 150), expected)


def test_a_huge_jpeg_decodes_small_within_the_pixel_limit(monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 1_000_000)
    big = photo((2400, 2400))  # 5.8 megapixels: over this limit unless decoded at 1/4
    data = encoded(big, "JPEG", quality=90)
    pixels = images.decode(data, 150)
    full = images.square_pixels(big, 150)  # the whole image, resized as prepare does
    assert np.abs(pixels.astype(int) - full).mean() < 2  # of 255
    with pytest.raises(images.ImageTooLarge, match=r"too large: 2400 x 2400 pixels, 5.76 mega"):
        images.decode(encoded(big, "PNG"), 150)  # a PNG cannot be decoded smaller
    progressive = encoded(big, "JPEG", progressive=True)
    with pytest.raises(images.ImageTooLarge, match=r"a progressive JPEG \(decoded whole\)"):
        images.decode(progressive, 150)


def test_exif_orientation_survives_the_reduction():
    upright = photo((1024, 512), seed=4)  # reduced 2x on decoding for 64 px
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side; rotate 90 degrees clockwise to display
    stored = encoded(upright.transpose(Image.Transpose.ROTATE_90), "PNG", exif=exif)
    np.testing.assert_array_equal(
        images.decode(stored, 64), images.decode(encoded(upright, "PNG"), 64)
    )


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims to be `width` x `height`: Pillow refuses it on opening."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_pillows_own_bomb_limit_reads_as_too_large():
    with pytest.raises(images.ImageTooLarge, match=r"^too large: more than 179 megapixels"):
        images.decode(png_header_only(20_000, 10_000), 150)


# --- the served model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def served_pyfunc(tmp_path_factory, tiny_keras):
    """The MLflow Model of the tiny Keras model, saved and loaded as MLflow serves it: its
    schema check runs before our pyfunc."""
    import mlflow

    from pipeline.serving import inference

    path = tmp_path_factory.mktemp("pyfunc") / "model"
    mlflow.pyfunc.save_model(
        path,
        python_model=Path(inference.__file__).with_name("entry.py"),
        artifacts={inference.KERAS_ARTIFACT: str(tiny_keras)},
        signature=inference.signature(),
        pip_requirements=[],
    )
    return mlflow.pyfunc.load_model(str(path))


def test_the_served_model_says_which_columns_it_reads(served_pyfunc):
    from pipeline.serving.inference import pixels_of

    with pytest.raises(MlflowException, match="got neither; only these two columns are read"):
        served_pyfunc.predict(pd.DataFrame({"img": [b"x"]}))
    with pytest.raises(MlflowException, match=r"got the columns \['img'\]"):
        pixels_of(pd.DataFrame({"img": [b"x"]}), 32)  # without MLflow's schema check


def test_the_served_model_refuses_a_photo_over_the_limit_and_serves_on(served_pyfunc, monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 1_000_000)
    too_big = encoded(photo((1500, 1000)), "PNG")
    with pytest.raises(MlflowException, match=r"row 0: too large: 1500 x 1000 pixels") as error:
        served_pyfunc.predict(pd.DataFrame({"image": [too_big]}))
    assert error.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "send JPEG, PNG or WebP" not in str(error.value)
    huge_jpeg = encoded(photo((2400, 2400)), "JPEG")  # decoded at 1/8 for 32 px: 300 x 300
    answer = served_pyfunc.predict(pd.DataFrame({"image": [huge_jpeg]}))
    assert answer["label"].iloc[0] in ("cat", "dog") and 0 <= answer["p_dog"].iloc[0] <= 1


# --- downloads ------------------------------------------------------------------------


class _Trickle(threading.Thread):
    """An HTTP server on 127.0.0.1 that answers at once, then sends its body one byte per
    `every` seconds, for at most `seconds` per connection."""

    def __init__(self, every: float = 0.05, seconds: float = 5.0):
        super().__init__(daemon=True)
        self.every, self.seconds = every, seconds
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}/a.zip"
        self.connections = 0

    def run(self):
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:  # closed: the test is over
                return
            self.connections += 1
            threading.Thread(target=self._trickle, args=(connection,), daemon=True).start()

    def _trickle(self, connection):
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            deadline = time.monotonic() + self.seconds
            try:
                while time.monotonic() < deadline:
                    connection.sendall(b"x")
                    time.sleep(self.every)
            except OSError:  # the client gave up
                return


def test_a_trickling_server_fails_the_minimum_rate(tmp_path):
    server = _Trickle()
    server.start()
    transfer = TransferParams(timeout_seconds=0.4, attempts=2, min_bytes_per_second=1000)
    started = time.monotonic()
    try:
        with pytest.raises(PipelineError) as error:
            fetch_archive(server.url, cache_dir=tmp_path, transfer=transfer, backoff_seconds=0)
    finally:
        server.socket.close()
    assert time.monotonic() - started < 3  # two windows of 0.4 s, not the server's 5 s
    assert server.connections == 2
    message = str(error.value)
    assert f"cannot download {server.url} after 2 attempts" in message
    # the window measured: at least the 0.4 s asked for, more on a loaded machine (0.5 seen)
    window = re.search(
        r"slower than data.transfer.min_bytes_per_second=1000: \d+ bytes in ([\d.]+) s", message
    )
    assert window and 0.4 <= float(window[1]) < 1.5, message


def test_a_server_that_never_answers_gives_up_after_attempts_times_timeout(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as silent:  # listens, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/a.zip"
        transfer = TransferParams(timeout_seconds=0.3, attempts=2)
        started = time.monotonic()
        with pytest.raises(
            PipelineError, match=r"no answer within data.transfer.timeout_seconds=0.3 s"
        ):
            fetch_archive(url, cache_dir=tmp_path, transfer=transfer, backoff_seconds=0)
        assert time.monotonic() - started < 2


def test_a_damaged_local_archive_is_never_to_be_deleted(tmp_path, archive_server):
    archive = write_archive(tmp_path / "mine.zip", per_class=3)
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as z:
        member = z.infolist()[2]
    start = member.header_offset + 30 + len(member.filename) + 100
    data[start : start + 16] = bytes(16)  # its CRC no longer matches
    outputs = {"images_dir": tmp_path / "images", "report_file": tmp_path / "report.json"}
    cut = tmp_path / "cut.zip"
    cut.write_bytes(archive.read_bytes()[: len(data) // 2])
    (tmp_path / "crc.zip").write_bytes(bytes(data))
    for name in ("cut.zip", "crc.zip"):
        with pytest.raises(PipelineError) as error:
            download(DataParams(source=str(tmp_path / name)), **outputs)
        message = str(error.value)
        assert message.startswith(f"{tmp_path / name}: ") and "the file is damaged" in message
        assert "delete" not in message
        assert (tmp_path / name).is_file()
    (archive_server.directory / "crc.zip").write_bytes(bytes(data))
    with pytest.raises(PipelineError, match="the download is truncated or damaged: delete it"):
        download(DataParams(source=f"{archive_server.url}/crc.zip"), **outputs)


# --- params and the rest ---------------------------------------------------------------


def numeric_keys(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from numeric_keys(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield f"{prefix}{key}"
        elif isinstance(value, list) and value and isinstance(value[0], int):
            yield f"{prefix}{key}.0"


SHIPPED = yaml.safe_load((ROOT / "params.yaml").read_text())
NUMBERS = list(numeric_keys(SHIPPED))


def test_every_number_of_params_is_found():
    assert len(NUMBERS) > 40 and "train.baseline.epochs" in NUMBERS
    assert "data.transfer.min_bytes_per_second" in NUMBERS and "prepare.image_sizes.0" in NUMBERS


@pytest.mark.parametrize("key", NUMBERS)
def test_a_boolean_is_no_number_anywhere_in_params(tmp_path, key):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node[part]
    node[int(leaf) if isinstance(node, list) else leaf] = True
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(PipelineError, match=rf"{re.escape(key)}: Input should be a .*\(got True\)"):
        load_params(path)


@pytest.mark.parametrize(
    ("section", "value", "expected"),
    [
        ("data", {"source": "x.zip", "sha256": "abc"}, "empty, or 64 hex digits (0-9, a-f)"),
        ("data", {"source": "x.zip", "transfer": {"timeout_seconds": 0}}, "greater than 0"),
        ("data", {"source": "x.zip", "transfer": {"atempts": 2}}, "did you mean 'attempts'"),
    ],
)
def test_data_params_in_words(tmp_path, section, value, expected):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw[section] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(PipelineError, match=re.escape(expected)):
        load_params(path)


def test_an_unknown_conv_base_is_named_before_tensorflow_loads():
    script = (
        "import sys\nfrom pipeline.cli import app\n"
        "try:\n    app(['train', 'features', '--base', 'resnet50'])\n"
        "except SystemExit as exit:\n    print(exit.code, 'tensorflow' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.split() == ["1", "False"], result.stderr
    assert result.stderr.strip() == (
        "error: conv base 'resnet50' is not in pretrained.bases (vgg16, efficientnet_lite0)"
    )


def test_compare_refuses_a_store_that_does_not_exist(tmp_path, monkeypatch):
    from pipeline.reporting.compare import Selection, run_compare

    store = tmp_path / "nope.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    with pytest.raises(PipelineError, match=f"the MLflow store sqlite:///{store} does not exist"):
        run_compare(Selection())
    assert not store.exists()


def test_check_validates_params_before_dvc_removes_anything(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pipeline.cli import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    assert CliRunner().invoke(app, ["check"]).output == "params.yaml: valid\n"
    raw = yaml.safe_load((tmp_path / "params.yaml").read_text())
    raw["split"]["trian"] = 5
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["check"])
    assert result.exit_code == 1
    assert "unknown key 'split.trian': did you mean 'train'?" in result.output
