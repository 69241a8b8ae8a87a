"""Get the archive named by data.source onto local disk: a URL, a path, or a file:// URL.

Downloads resume after a broken transfer (HTTP Range) and retry transient failures
(connection errors, timeouts, 5xx, 429); anything else fails at once with one clear line.
keras.utils.get_file does hashing and caching but neither resumes nor retries, hence this.
"""

from __future__ import annotations

import hashlib
import time
import urllib.parse
from pathlib import Path

import requests
from tqdm import tqdm

from pipeline.core.errors import PipelineError
from pipeline.core.files import CHUNK, sha256_of
from pipeline.core.paths import DOWNLOAD_CACHE, project_root

RETRIES = 5
TIMEOUT_SECONDS = 30


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
    sha256: str = "",
    cache_dir: Path | None = None,
    retries: int = RETRIES,
    backoff_seconds: float = 1.0,
) -> Path:
    """Return a local path to the archive, downloading it first if `source` is a URL."""
    if is_url(source):
        # One cache in the user's project: experiments in temporary copies reuse it too.
        path = _download(
            source, cache_dir or project_root() / DOWNLOAD_CACHE, retries, backoff_seconds
        )
    else:
        path = local_path(source)
        if not path.is_file():
            raise PipelineError(
                f"data.source: {path} does not exist; set data.source to an archive path or URL"
            )
    if sha256:
        actual = sha256_of(path)
        if actual != sha256.lower():
            if is_url(source):
                path.unlink()  # a bad download must not be reused by the next run
            raise PipelineError(
                f"data.sha256 mismatch for {source}: the archive has sha256 {actual}, "
                f"params.yaml expects {sha256.lower()}; fix data.sha256 or data.source"
            )
    return path


def _cache_path(url: str, cache_dir: Path) -> Path:
    name = Path(urllib.parse.urlparse(url).path).name or "archive.zip"
    key = hashlib.sha256(url.encode()).hexdigest()[:12]
    return cache_dir / f"{key}-{name}"


def _download(url: str, cache_dir: Path, retries: int, backoff_seconds: float) -> Path:
    target = _cache_path(url, cache_dir)
    if target.is_file():
        print(f"using cached download {target}")
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    last_error = ""
    for attempt in range(1, retries + 1):
        try:
            _stream_to(url, part)
            part.replace(target)
            return target
        except _Transient as exc:
            last_error = str(exc)
            if attempt < retries:
                wait = backoff_seconds * 2 ** (attempt - 1)
                print(
                    f"download attempt {attempt}/{retries} failed ({exc}); retrying in {wait:.0f} s"
                )
                time.sleep(wait)
    raise PipelineError(
        f"data.source: cannot download {url} after {retries} attempts ({last_error}); "
        "check the URL and network, or set data.source to a local archive"
    )


def _stream_to(url: str, part: Path) -> None:
    """One attempt: resume `part` if the server honours Range, else start it over."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        response = requests.get(url, headers=headers, stream=True, timeout=TIMEOUT_SECONDS)
    except requests.RequestException as exc:
        raise _Transient(type(exc).__name__) from exc
    with response:
        if response.status_code == 416 and have:  # nothing left to fetch: .part was complete
            return
        if response.status_code >= 500 or response.status_code == 429:
            raise _Transient(f"HTTP {response.status_code}")
        if response.status_code >= 400:
            raise PipelineError(
                f"data.source: HTTP {response.status_code} {response.reason} for {url}; "
                "check the URL or set data.source to a local archive"
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
            try:
                for chunk in response.iter_content(CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
            except requests.RequestException as exc:
                raise _Transient(f"transfer broken: {type(exc).__name__}") from exc
        if total is not None and part.stat().st_size != total:
            raise _Transient(f"transfer broken at {part.stat().st_size} of {total} bytes")
