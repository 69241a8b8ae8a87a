"""Getting the data (pipeline/data/download.py, pipeline/data/fetch.py): both archive layouts
over HTTP, from a path or a file URL; bad images skipped and counted; retries, resumed and
cached transfers; and every way a download or an archive fails, in one line, with deadlines
of a fraction of a second against local servers that trickle or never answer."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
import zipfile

import pytest

from pipeline.core.errors import PipelineError
from pipeline.core.params import DataParams, TransferParams
from pipeline.data.download import download
from pipeline.data.fetch import fetch_archive
from tests.helpers.project import BOOK_PARAMS
from tests.helpers.synthetic import corrupt_jpeg, write_archive

TRANSFER = BOOK_PARAMS.data.transfer  # params.yaml's, the one place that holds the defaults


@pytest.fixture
def outputs(tmp_path):
    return {
        "images_dir": tmp_path / "data/images",
        "report_file": tmp_path / "reports/download.json",
    }


def fetch_over_http(server, name, **kwargs):
    kwargs.setdefault("cache_dir", server.directory.parent / "cache")
    kwargs.setdefault("backoff_seconds", 0)
    kwargs.setdefault("transfer", TRANSFER)
    return fetch_archive(f"{server.url}/{name}", **kwargs)


@pytest.mark.parametrize("layout", ["kaggle", "microsoft"])
def test_http_download_of_both_layouts(archive_server, outputs, layout):
    archive = write_archive(archive_server.directory / f"{layout}.zip", layout=layout, per_class=6)
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    source = f"{archive_server.url}/{layout}.zip"
    report = download(DataParams(transfer=TRANSFER, source=source, sha256=sha), **outputs)
    assert report["layout"] == layout
    assert report["classes"]["cat"]["valid"] == report["classes"]["dog"]["valid"] == 6
    assert sorted(p.name for p in (outputs["images_dir"] / "dog").iterdir()) == [
        f"{i}.jpg" for i in range(6)
    ]
    assert json.loads(outputs["report_file"].read_text())["classes"] == report["classes"]


def test_bad_images_are_skipped_and_counted_per_class(archive_server, outputs):
    bad = {("cat", 1): b"", ("cat", 2): corrupt_jpeg(), ("dog", 3): b"<html>not an image</html>"}
    write_archive(
        archive_server.directory / "ms.zip",
        layout="microsoft",
        per_class=8,
        bad=bad,
        extra={"PetImages/Cat/Thumbs.db": b"\x00" * 10},
    )
    report = download(
        DataParams(transfer=TRANSFER, source=f"{archive_server.url}/ms.zip"), **outputs
    )
    assert report["classes"]["cat"] == {
        "valid": 6,
        "corrupt": 1,
        "zero_byte": 1,
        "not_image": 1,
        "not_numbered": 0,
    }
    assert report["classes"]["dog"] == {
        "valid": 7,
        "corrupt": 0,
        "zero_byte": 0,
        "not_image": 1,
        "not_numbered": 0,
    }
    reasons = {s["file"]: s["reason"] for s in report["skipped"]}
    assert reasons == {
        "PetImages/Cat/1.jpg": "zero_byte",
        "PetImages/Cat/2.jpg": "corrupt",
        "PetImages/Cat/Thumbs.db": "not_image",
        "PetImages/Dog/3.jpg": "not_image",
    }
    assert not (outputs["images_dir"] / "cat/2.jpg").exists()
    assert len(list((outputs["images_dir"] / "cat").iterdir())) == 6


def test_wrong_checksum_fails_and_leaves_nothing(archive_server, outputs):
    write_archive(archive_server.directory / "a.zip", per_class=3)
    with pytest.raises(PipelineError, match=r"data.sha256 mismatch .* expects 0000"):
        download(
            DataParams(transfer=TRANSFER, source=f"{archive_server.url}/a.zip", sha256="0" * 64),
            **outputs,
        )
    assert not outputs["images_dir"].exists() and not outputs["report_file"].exists()
    assert (
        not list((archive_server.directory.parent / "cache").glob("*"))
        if (archive_server.directory.parent / "cache").exists()
        else True
    )


def test_http_404_fails_at_once(archive_server, tmp_path):
    with pytest.raises(PipelineError, match=r"HTTP 404 .*missing.zip"):
        fetch_over_http(archive_server, "missing.zip")
    assert len(archive_server.requests) == 1  # a 404 is not retried


def test_unreachable_url_fails_after_retries(tmp_path):
    with pytest.raises(
        PipelineError, match=r"cannot download http://127.0.0.1:9/x.zip after 3 attempts"
    ):
        fetch_archive(
            "http://127.0.0.1:9/x.zip",
            cache_dir=tmp_path,
            transfer=TRANSFER.model_copy(update={"attempts": 3}),
            backoff_seconds=0,
        )


def test_transient_errors_are_retried(archive_server):
    archive = write_archive(archive_server.directory / "a.zip", per_class=2)
    archive_server.faults["a.zip"] = [503, 500]
    path = fetch_over_http(archive_server, "a.zip")
    assert path.read_bytes() == archive.read_bytes()
    assert len(archive_server.requests) == 3


def test_broken_transfer_resumes_with_range(archive_server):
    archive = write_archive(archive_server.directory / "a.zip", per_class=40)
    archive_server.faults["a.zip"] = ["cut"]
    path = fetch_over_http(archive_server, "a.zip")
    assert path.read_bytes() == archive.read_bytes()
    first, second = archive_server.requests
    assert first["range"] is None
    resumed_at = int(second["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= archive.stat().st_size // 2


def test_broken_transfer_restarts_cleanly_when_range_is_ignored(archive_server):
    archive = write_archive(archive_server.directory / "a.zip", per_class=40)
    archive_server.honour_range = False
    archive_server.faults["a.zip"] = ["cut"]
    path = fetch_over_http(archive_server, "a.zip")
    assert path.read_bytes() == archive.read_bytes()  # not the first half twice
    assert archive_server.requests[1]["range"] is not None  # it asked to resume, got a 200


def test_cached_download_is_reused(archive_server):
    write_archive(archive_server.directory / "a.zip", per_class=2)
    fetch_over_http(archive_server, "a.zip")
    fetch_over_http(archive_server, "a.zip")
    assert len(archive_server.requests) == 1


def test_local_path_and_file_url(tmp_path, outputs):
    archive = write_archive(tmp_path / "local.zip", per_class=3)
    assert (
        download(DataParams(transfer=TRANSFER, source=str(archive)), **outputs)["classes"]["cat"][
            "valid"
        ]
        == 3
    )
    assert (
        download(DataParams(transfer=TRANSFER, source=archive.as_uri()), **outputs)["classes"][
            "dog"
        ]["valid"]
        == 3
    )
    with pytest.raises(PipelineError, match="does not exist"):
        download(DataParams(transfer=TRANSFER, source=str(tmp_path / "nope.zip")), **outputs)


def test_truncated_and_non_zip_archives(tmp_path, outputs):
    archive = write_archive(tmp_path / "a.zip", per_class=5)
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size * 2 // 3])
    with pytest.raises(PipelineError, match="truncated"):
        download(DataParams(transfer=TRANSFER, source=str(truncated)), **outputs)
    html = tmp_path / "page.zip"
    html.write_text("<html>404</html>")
    with pytest.raises(PipelineError, match="not a readable zip archive"):
        download(DataParams(transfer=TRANSFER, source=str(html)), **outputs)
    assert not outputs["images_dir"].exists() and not outputs["report_file"].exists()


def test_no_recognisable_images_or_a_missing_class(tmp_path, outputs):
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("photos/a.jpg", b"x")
    with pytest.raises(PipelineError, match="no images in a known layout"):
        download(DataParams(transfer=TRANSFER, source=str(other)), **outputs)
    cats_only = write_archive(tmp_path / "cats.zip", per_class=3, classes=("cat",))
    with pytest.raises(PipelineError, match="no valid dog images"):
        download(DataParams(transfer=TRANSFER, source=str(cats_only)), **outputs)
    assert not outputs["images_dir"].exists()


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
    # the window measured: at least the 0.4 s asked for, more on a loaded machine
    window = re.search(
        r"slower than data.transfer.min_bytes_per_second=1000: \d+ bytes in ([\d.]+) s", message
    )
    assert window and 0.4 <= float(window[1]) < 1.5, message


def test_a_server_that_never_answers_gives_up_after_attempts_times_timeout(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as silent:  # listens, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/a.zip"
        transfer = TRANSFER.model_copy(update={"timeout_seconds": 0.3, "attempts": 2})
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
            download(DataParams(transfer=TRANSFER, source=str(tmp_path / name)), **outputs)
        message = str(error.value)
        assert message.startswith(f"{tmp_path / name}: ") and "the file is damaged" in message
        assert "delete" not in message
        assert (tmp_path / name).is_file()
    (archive_server.directory / "crc.zip").write_bytes(bytes(data))
    with pytest.raises(PipelineError, match="the download is truncated or damaged and is deleted"):
        download(DataParams(transfer=TRANSFER, source=f"{archive_server.url}/crc.zip"), **outputs)
