"""pipeline/core/files.py: atomic outputs get the permissions the user's umask gives, as
files written in place would (mkstemp alone makes them owner-only)."""

from __future__ import annotations

import os
import stat

import pytest

from pipeline.core.files import atomic_dir, atomic_path, write_text


@pytest.fixture
def umask():
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize(
    ("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775)]
)
def test_atomic_outputs_honour_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    write_text(tmp_path / "reports/metrics.json", "{}\n")
    with atomic_path(tmp_path / "models/model.keras", suffix=".keras") as tmp:
        tmp.write_bytes(b"model")
    with atomic_dir(tmp_path / "data/prepared") as folder:
        (folder / "train.npz").write_bytes(b"arrays")

    for name in ("reports/metrics.json", "models/model.keras"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == file_mode, name
    assert stat.S_IMODE((tmp_path / "data/prepared").stat().st_mode) == dir_mode
    assert (tmp_path / "data/prepared/train.npz").read_bytes() == b"arrays"
