"""Settings shared by every end-to-end test."""

import os

# Every WAL segment file is preallocated to the rotation size, and a shard
# keeps its next file ready: at the 128 MiB default a two-shard test server
# takes 512 MiB of disk before its first batch. Tests that need another
# size pass --max-wal-size, which wins over the environment.
os.environ.setdefault("LONGBOW_MAX_WAL_SIZE", "16MiB")
