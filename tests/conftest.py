from __future__ import annotations

import sys
import threading

import pytest

from tests.helpers.servers import ArchiveServer


@pytest.fixture
def archive_server(tmp_path):
    directory = tmp_path / "served"
    directory.mkdir()
    server = ArchiveServer(directory)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def float32_after_each_test():
    """Tests that train in-process set Keras' global dtype policy (mixed_precision: auto is
    bfloat16 on CPUs with bfloat16 units); the next test starts from float32 again."""
    yield
    if "keras" in sys.modules:
        sys.modules["keras"].mixed_precision.set_global_policy("float32")
