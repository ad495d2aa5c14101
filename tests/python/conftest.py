"""Settings shared by every end-to-end test."""

import os

import pytest

# Every WAL segment file is preallocated to the rotation size, and a shard
# keeps its next file ready: at the 128 MiB default a two-shard test server
# takes 512 MiB of disk before its first batch. Tests that need another
# size pass --max-wal-size, which wins over the environment.
os.environ.setdefault("LONGBOW_MAX_WAL_SIZE", "16MiB")


@pytest.fixture
def server(tmp_path):
    """A two-shard longbow on loopback with its data under tmp_path."""
    from test_pyarrow_e2e import Server

    s = Server(tmp_path / "data")
    yield s
    s.kill()
