"""Get the archive named by data.source onto local disk: a URL, a path, or a file:// URL.

Downloads resume after a broken transfer (HTTP Range) and retry transient failures
(connection errors, timeouts, 5xx, 429, a transfer slower than data.transfer's minimum rate);
anything else fails at once with one clear line. Every attempt ends: a connection or a read
waits at most data.transfer.timeout_seconds, and a server that keeps the connection alive with
a trickle (one byte every 10 s) fails the minimum rate, checked on each read. keras.utils.get_file
does hashing and caching but neither resumes nor retries nor bounds a slow server, hence this.
"""

from __future__ import annotations

import hashlib
import time
import urllib.parse
from pathlib import Path

import requests
import urllib3
from tqdm import tqdm

from pipeline.core.errors import PipelineError, full_disk, is_disk_full
from pipeline.core.files import CHUNK, sha256_of
from pipeline.core.params import TransferParams
from pipeline.core.paths import DOWNLOAD_CACHE, project_root


class _Transient(Exception):
    """A failure worth retrying: the next attempt resumes where this one stopped."""


def is_url(source: str) -> bool:
    return urllib.parse.urlparse(source).scheme in ("http", "https")


def local_path(source: str) -> Path:
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme == "file":
        return Path(urllib.parse.unquote(parsed.path))
    # Relative to the user's project, also from a `dvc exp run --temp` copy of it.
    return project_root() / Path(source).expanduser()


def fetch_archive(
    source: str,
    transfer: TransferParams,
    sha256: str = "",
    cache_dir: Path | None = None,
    backoff_seconds: float = 1.0,
    key: str = "data",
) -> Path:
    """Return a local path to the archive, downloading it first if `source` is a URL.
    `key`: the params section that names it, for the messages (`data`, `mnist.data`)."""
    if is_url(source):
        # One cache in the user's project: experiments in temporary copies reuse it too.
        cache_dir = cache_dir or project_root() / DOWNLOAD_CACHE
        path = _download(source, cache_dir, transfer, backoff_seconds, key)
    else:
        path = local_path(source)
        if not path.is_file():
            raise PipelineError(
                f"{key}.source: {path} does not exist; set {key}.source to an archive path or URL"
            )
    if sha256:
        actual = sha256_of(path)
        if actual != sha256.lower():
            if is_url(source):
                path.unlink()  # a bad download must not be reused by the next run
            raise PipelineError(
                f"{key}.sha256 mismatch for {source}: the archive has sha256 {actual}, "
                f"params.yaml expects {sha256.lower()}; fix {key}.sha256 or {key}.source"
            )
    return path


def discard_damaged(path: Path, stage: str) -> str:
    """Delete a download that fails verification (truncated, damaged), which the next run
    would otherwise reuse and fail on the same way; the advice that says so."""
    path.unlink(missing_ok=True)
    return (
        f"the download is truncated or damaged and is deleted: `dvc repro {stage}` fetches it again"
    )


def _cache_path(url: str, cache_dir: Path) -> Path:
    name = Path(urllib.parse.urlparse(url).path).name or "archive.zip"
    key = hashlib.sha256(url.encode()).hexdigest()[:12]
    return cache_dir / f"{key}-{name}"


def _download(
    url: str, cache_dir: Path, transfer: TransferParams, backoff_seconds: float, key: str
) -> Path:
    target = _cache_path(url, cache_dir)
    if target.is_file():
        print(f"using cached download {target}")
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    last_error, attempts = "", transfer.attempts
    for attempt in range(1, attempts + 1):
        try:
            _stream_to(url, part, transfer, key)
            part.replace(target)
            return target
        except _Transient as exc:
            last_error = str(exc)
            if attempt < attempts:
                wait = backoff_seconds * 2 ** (attempt - 1)
                print(
                    f"download attempt {attempt}/{attempts} failed ({exc}); retrying in {wait:.0f} s"
                )
                time.sleep(wait)
    raise PipelineError(
        f"{key}.source: cannot download {url} after {attempts} attempt"
        f"{'s' if attempts > 1 else ''} ({last_error}); "
        f"check the URL and network, or set {key}.source to a local archive"
    )


def _stream_to(url: str, part: Path, transfer: TransferParams, key: str = "data") -> None:
    """One attempt: resume `part` if the server honours Range, else start it over."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        response = requests.get(url, headers=headers, stream=True, timeout=transfer.timeout_seconds)
    except requests.RequestException as exc:
        raise _Transient(_reason(exc, transfer, key)) from exc
    with response:
        if response.status_code == 416 and have:  # nothing left to fetch: .part was complete
            return
        if response.status_code >= 500 or response.status_code == 429:
            raise _Transient(f"HTTP {response.status_code}")
        if response.status_code >= 400:
            raise PipelineError(
                f"{key}.source: HTTP {response.status_code} {response.reason} for {url}; "
                f"check the URL or set {key}.source to a local archive"
            )
        resumed = response.status_code == 206
        if not resumed:
            have = 0  # the server ignored Range: a clean restart
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with (
            open(part, "ab" if resumed else "wb") as f,
            tqdm(total=total, initial=have, unit="B", unit_scale=True, desc="download") as bar,
        ):
            _copy_body(response, f, bar, transfer, key)
        if total is not None and part.stat().st_size != total:
            raise _Transient(f"transfer broken at {part.stat().st_size} of {total} bytes")


def _copy_body(response, f, bar, transfer: TransferParams, key: str = "data") -> None:
    """Copy the body as it arrives (read1: whatever one read brings, so the clock is checked
    after every read, however slowly the bytes come), within the minimum rate."""
    rate = _RateCheck(transfer, key)
    try:
        while chunk := response.raw.read1(CHUNK, decode_content=True):
            f.write(chunk)
            bar.update(len(chunk))
            rate.received(len(chunk))
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        if is_disk_full(exc):  # the .part stays: the next run, once space is freed, resumes it
            raise full_disk(f.name) from None
        if isinstance(exc, OSError) and exc.filename is not None:
            raise  # the disk, not the network: the CLI names the file
        raise _Transient(f"transfer broken: {_reason(exc, transfer, key)}") from exc


class _RateCheck:
    """Fewer than min_bytes_per_second x timeout_seconds bytes in a window of timeout_seconds
    fails the attempt: a trickle that keeps each read under the timeout still ends."""

    def __init__(self, transfer: TransferParams, key: str = "data"):
        self.transfer, self.key = transfer, key
        self.window_start, self.window_bytes = time.monotonic(), 0

    def received(self, count: int) -> None:
        self.window_bytes += count
        elapsed = time.monotonic() - self.window_start
        if elapsed < self.transfer.timeout_seconds:
            return
        minimum = self.transfer.min_bytes_per_second
        if self.window_bytes < minimum * elapsed:
            raise _Transient(
                f"slower than {self.key}.transfer.min_bytes_per_second={minimum}: "
                f"{self.window_bytes} bytes in {elapsed:.1f} s"
            )
        self.window_start, self.window_bytes = time.monotonic(), 0


def _reason(exc: Exception, transfer: TransferParams, key: str = "data") -> str:
    """The exception's type, and for a timeout the param that set it."""
    timeouts = (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)
    if isinstance(exc, timeouts):
        return (
            f"{type(exc).__name__}: no answer within "
            f"{key}.transfer.timeout_seconds={transfer.timeout_seconds:g} s"
        )
    return type(exc).__name__
