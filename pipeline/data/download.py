"""Stage `download`: fetch the archive, verify every image, keep the good ones.

Both public layouts are understood and normalised to `data/images/{cat,dog}/<number>.jpg`:
Kaggle's train.zip (`train/cat.123.jpg`) and Microsoft's kagglecatsanddogs_*.zip
(`PetImages/Cat/123.jpg`, which holds corrupt and zero-byte files). A file that does not
decode is skipped and counted in `reports/download.json`: never a crash, never silent.
"""

from __future__ import annotations

import io
import json
import re
import warnings
import zipfile
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from pipeline.core.errors import PipelineError
from pipeline.core.files import all_or_none, atomic_dir, write_text
from pipeline.core.params import DataParams
from pipeline.core.paths import DOWNLOAD_REPORT, IMAGES_DIR
from pipeline.data import CLASSES
from pipeline.data.fetch import discard_damaged, fetch_archive, is_url

CHUNK = 512  # images verified per batch: bounded memory

# member name -> (class, number); the number orders images the way the book does.
LAYOUTS = {
    "kaggle": re.compile(r"(?:^|/)train/(cat|dog)\.(\d+)\.[^/]+$", re.IGNORECASE),
    "microsoft": re.compile(r"(?:^|/)PetImages/(Cat|Dog)/(\d+)\.[^/]+$", re.IGNORECASE),
}
# A file inside a class folder that is not named <number>.<ext> (Thumbs.db, ...) is counted too.
CLASS_FOLDER_FILE = re.compile(r"(?:^|/)PetImages/(Cat|Dog)/[^/]+$", re.IGNORECASE)


def classify_image(data: bytes) -> str:
    """'valid', 'zero_byte', 'not_image' or 'corrupt', by fully decoding the bytes."""
    if not data:
        return "zero_byte"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns on odd EXIF; only decoding matters
            with Image.open(io.BytesIO(data)) as image:
                image.convert("RGB").load()
    except UnidentifiedImageError:
        return "not_image"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return "corrupt"
    return "valid"


class DamagedArchive(PipelineError):
    """The archive cannot be read whole: truncated or corrupted."""


def damaged_advice(archive_path: Path, downloaded: bool) -> str:
    """What to do about a damaged archive: a download is deleted (the next run fetches it
    anew); a local data.source may be the user's only copy, so it stays."""
    if downloaded:
        return discard_damaged(archive_path, "download")
    return "the file is damaged (truncated or corrupted): point data.source at a good copy"


def _read_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> bytes:
    try:
        return archive.read(member)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise DamagedArchive(
            f"{archive.filename}: member {member.filename} cannot be read ({exc})"
        ) from None


def _index_members(
    archive: zipfile.ZipFile,
) -> tuple[str, list[tuple[zipfile.ZipInfo, str, int | None]]]:
    """Find the layout and the image members: (layout, [(member, class, number or None)])."""
    files = [m for m in archive.infolist() if not m.is_dir() and "__MACOSX" not in m.filename]
    for layout, pattern in LAYOUTS.items():
        found = []
        for member in files:
            if match := pattern.search(member.filename):
                found.append((member, match.group(1).lower(), int(match.group(2))))
            elif layout == "microsoft" and (match := CLASS_FOLDER_FILE.search(member.filename)):
                found.append((member, match.group(1).lower(), None))
        if found:
            return layout, found
    return "", []


STATUSES = ("valid", "corrupt", "zero_byte", "not_image", "not_numbered")


def extract_images(
    archive_path: Path, images_dir: Path = IMAGES_DIR, downloaded: bool = False
) -> dict:
    """Verify and extract every image; return the report (counts per class and skipped files).
    `downloaded`: the archive is our download (not the user's own file), safe to delete."""
    try:
        archive = zipfile.ZipFile(archive_path)
    except (zipfile.BadZipFile, OSError) as exc:
        advice = damaged_advice(archive_path, downloaded)
        raise PipelineError(
            f"{archive_path}: not a readable zip archive ({exc}); {advice}"
        ) from None
    try:
        with archive:
            layout, counts, skipped = _extract(archive, archive_path, images_dir)
    except DamagedArchive as exc:
        raise PipelineError(f"{exc}; {damaged_advice(archive_path, downloaded)}") from None
    return {
        "archive": str(archive_path),
        "layout": layout,
        "classes": {label: {k: counts[label][k] for k in STATUSES} for label in CLASSES},
        "skipped": sorted(skipped, key=lambda s: s["file"]),
    }


def _extract(archive: zipfile.ZipFile, archive_path: Path, images_dir: Path):
    """(layout, counts, skipped) of the images written to `images_dir`, whole or not at all."""
    with atomic_dir(images_dir) as tmp:
        layout, members = _index_members(archive)
        if not members:
            raise PipelineError(
                f"{archive_path}: no images in a known layout (train/cat.N.jpg or "
                "PetImages/Cat/N.jpg); check data.source"
            )
        counts, skipped = _verify_and_write(archive, members, tmp)
        for label in CLASSES:
            if counts[label]["valid"] == 0:
                raise PipelineError(
                    f"{archive_path}: no valid {label} images in the archive; check data.source"
                )
    return layout, counts, skipped


def _verify_and_write(archive, members: list, out: Path):
    """Decode every member; write the valid ones to out/<class>/<number>.jpg; count the rest."""
    counts = {label: Counter() for label in CLASSES}
    skipped = []
    for label in CLASSES:
        (out / label).mkdir()

    def check(item):
        member, label, number = item
        data = _read_member(archive, member)
        return data, classify_image(data)

    # Bounded chunks keep memory flat; reads are serialised by the lock inside
    # ZipFile, decoding (the slow part) runs in parallel.
    with (
        ThreadPoolExecutor() as pool,
        tqdm(total=len(members), desc="verify images", unit="img") as bar,
    ):
        for start in range(0, len(members), CHUNK):
            chunk = members[start : start + CHUNK]
            for (member, label, number), (data, status) in zip(
                chunk, pool.map(check, chunk), strict=True
            ):
                if status == "valid" and number is None:
                    status = "not_numbered"
                counts[label][status] += 1
                if status == "valid":
                    (out / label / f"{number}.jpg").write_bytes(data)
                else:
                    skipped.append({"file": member.filename, "class": label, "reason": status})
            bar.update(len(chunk))
    return counts, skipped


def download(
    params: DataParams, images_dir: Path = IMAGES_DIR, report_file: Path = DOWNLOAD_REPORT
) -> dict:
    archive = fetch_archive(params.source, params.transfer, sha256=params.sha256)
    downloaded = is_url(params.source)
    with all_or_none():  # the images and their report change together
        report = {"source": params.source, **extract_images(archive, images_dir, downloaded)}
        write_text(report_file, json.dumps(report, indent=2) + "\n")
    for label, c in report["classes"].items():
        bad = sum(c.values()) - c["valid"]
        print(
            f"{label}: {c['valid']} valid images, {bad} skipped ({c['corrupt']} corrupt, "
            f"{c['zero_byte']} zero-byte, {c['not_image']} not images)"
        )
    return report
