"""Reading files in blocks: the adaptive read-ahead, seen through the ranges a real block
store serves, and the local block cache (size limit, eviction, corrupt entries, several
processes sharing one directory, reads through a mount while the store is gone)."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import random
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest

from metafs.blockstore.cache import DiskCache
from metafs.blockstore.local import LocalStore
from metafs.client import Client
from metafs.client.blockread import ReadPattern
from metafs.config import load

from fuse_fixtures import mount_factory  # noqa: F401

BS = 64 * 1024
PIECE = 4096
LIMIT = 4  # block_readahead


class RecordingStore(LocalStore):
    """A local-directory store that logs every ranged GET it serves."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gets: list[tuple[str, int, int | None]] = []
        self._log_lock = threading.Lock()

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes | bytearray:
        with self._log_lock:
            self.gets.append((key, start, end))
        return super().get(key, start, end)

    def take(self) -> list[tuple[str, int, int | None]]:
        with self._log_lock:
            got, self.gets = self.gets, []
        return got


@pytest.fixture
def logged(tmp_path: Path) -> Iterator[tuple[Client, RecordingStore, bytes]]:
    s = load(overrides={"data_dir": str(tmp_path / "data"), "gc_interval": 0,
                        "block_size": BS, "inline_limit": 4096, "block_checksum_piece": PIECE,
                        "block_readahead": LIMIT, "block_cache_dir": "off"}, environ={})
    c = Client(settings=s)
    data = random.Random(1).randbytes(32 * BS)
    c.write_bytes("/f", data)
    c.read_bytes("/f")  # learn the store's URL
    url = c.blocks.store_url
    assert url is not None
    store = RecordingStore(tmp_path / "data" / "blocks")
    c.blocks._stores[url] = store  # this client's reads now go through the logging store
    try:
        yield c, store, data
    finally:
        c.close()


def _settle(f: object) -> None:
    """Wait for the file's read-ahead fetches in flight."""
    concurrent.futures.wait(list(f._prefetch.values()))  # type: ignore[attr-defined]


def _block(key: str) -> int:
    return int(key.split("/")[1].split("-")[0])


def test_pattern_grows_for_sequential_and_resets_for_random() -> None:
    p = ReadPattern(limit=8)
    windows = [p.observe(i * 4096, (i + 1) * 4096) for i in range(7)]
    assert windows == [0, 0, 1, 2, 4, 8, 8]
    assert p.observe(10 << 20, (10 << 20) + 4096) == 0      # a jump: random, reset
    assert p.observe((10 << 20) + 4096, (10 << 20) + 8192) == 0
    assert p.observe((10 << 20) + 8192, (10 << 20) + 12288) == 1  # starts again from 1
    late = (10 << 20) - 65536
    assert p.observe(late, late + 4096) == 1  # a late request a little behind: no change
    assert ReadPattern(limit=0).observe(0, 1) == 0


def test_random_reads_fetch_only_the_pieces_asked_for(logged) -> None:
    c, store, data = logged
    rng = random.Random(7)
    with c.open("/f", "rb", buffering=0) as f:
        for _ in range(50):
            off = rng.randrange(len(data) // 4096) * 4096
            f.seek(off)
            assert f.read(4096) == data[off:off + 4096]
        _settle(f)
    gets = store.take()
    assert len(gets) == 50
    for _key, start, end in gets:   # one checksum piece each, never a whole block
        assert end is not None and end - start == PIECE and start % PIECE == 0


def test_sequential_reads_read_ahead_within_the_limit(logged) -> None:
    c, store, data = logged
    with c.open("/f", "rb", buffering=0) as f:
        got = b""
        for _ in range(3 * BS // 16384):  # three blocks in 16 KiB reads
            got += f.read(16384)
            _settle(f)
        assert got == data[:3 * BS]
    gets = store.take()
    whole = [(_block(k), s, e) for k, s, e in gets if s == 0 and e == BS]
    blocks = sorted({b for b, _, _ in whole})
    # blocks after the ones read were fetched ahead, whole; never more than LIMIT ahead
    assert blocks and max(blocks) > 2 and max(blocks) <= 2 + LIMIT
    assert len(whole) == len(blocks)  # each block fetched once


def test_a_switch_to_random_reads_resets_the_window(logged) -> None:
    c, store, data = logged
    with c.open("/f", "rb", buffering=0) as f:
        for _ in range(8):
            f.read(16384)
        _settle(f)
        store.take()
        f.seek(20 * BS + 8192)
        assert f.read(4096) == data[20 * BS + 8192:20 * BS + 12288]
        f.seek(9 * BS + 4096)
        assert f.read(100) == data[9 * BS + 4096:9 * BS + 4196]
        _settle(f)
    gets = store.take()
    assert [(_block(k), s, e) for k, s, e in gets] == [(20, 8192, 12288), (9, 4096, 8192)]


# ---------------------------------------------------------------- the disk cache
def test_disk_cache_size_limit_and_eviction(tmp_path: Path) -> None:
    dc = DiskCache(tmp_path / "c", max_bytes=10 * 1000)
    for i in range(8):
        dc.put(f"1/{i}-k", bytes([i]) * 1000)
    os.utime(dc._path("1/0-k"), (1, 1))   # make the order of use unambiguous
    for i in range(1, 8):
        os.utime(dc._path(f"1/{i}-k"), (100 + i, 100 + i))
    assert dc.get("1/0-k") == bytes(1000)  # used now: the most recent
    assert dc.get_range("1/2-k", 100, 300) == bytes([2]) * 200  # a ranged read uses it too
    for i in range(8, 12):
        dc.put(f"1/{i}-k", bytes([i]) * 1000)
    assert dc.used_bytes <= 10 * 1000
    on_disk = sum(p.stat().st_size for p in (tmp_path / "c").glob("*/*"))
    assert on_disk == dc.used_bytes
    assert dc.get("1/0-k") == bytes(1000)   # recently used: kept
    assert dc.get("1/1-k") is None          # least recently used: evicted first
    assert dc.get("1/3-k") is None          # (the next, as 2 was read in a range)
    assert dc.get("1/2-k") == bytes([2]) * 1000
    assert dc.get("1/11-k") == bytes([11]) * 1000
    dc.put("big", b"x" * 20_000)            # larger than the whole cache: not kept
    assert dc.get("big") is None


def _cached_client(tmp_path: Path, cache: Path, **kw: object) -> Client:
    over = {"data_dir": str(tmp_path / "data"), "gc_interval": 0, "block_size": BS,
            "inline_limit": 4096, "block_checksum_piece": PIECE,
            "block_cache_dir": str(cache), "block_cache_size": 64 * BS}
    over.update(kw)
    return Client(settings=load(overrides=over, environ={}))


def test_corrupt_cache_entries_are_dropped_and_read_from_the_store(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    data = random.Random(3).randbytes(4 * BS)
    with _cached_client(tmp_path, cache) as c:
        c.write_bytes("/f", data)  # the writer's blocks go into the cache too
    entries = [p for p in cache.glob("*/*") if p.is_file()]
    assert len(entries) == 4
    for p in entries:  # flip bytes in every cached block
        b = bytearray(p.read_bytes())
        b[5000] ^= 0xFF
        p.write_bytes(bytes(b))
    with _cached_client(tmp_path, cache) as c:
        with c.open("/f", "rb", buffering=0) as f:
            f.seek(BS + 4096)
            assert f.read(4096) == data[BS + 4096:BS + 8192]  # ranged, from the store
        assert c.read_bytes("/f") == data                     # whole blocks too
    # the corrupt copies are gone: what the cache holds now is the blocks' real bytes
    blocks = {data[i:i + BS] for i in range(0, len(data), BS)}
    kept = [p.read_bytes() for p in cache.glob("*/*") if p.is_file()]
    assert kept and all(k in blocks for k in kept)


_WRITER = """
import hashlib, sys
from metafs.blockstore.cache import DiskCache
dc = DiskCache(sys.argv[1], int(sys.argv[2]))
for i in range(int(sys.argv[3])):
    key = f"{sys.argv[4]}/{i}-k"
    data = hashlib.sha256(key.encode()).digest() * 128
    dc.put(key, data)
    got = dc.get(key)
    assert got is None or got == data, key
"""


def test_two_processes_share_a_cache_directory(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    limit = 60 * 4096
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(root), str(limit), "200",
                               str(n)], env=env) for n in (1, 2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    files = [p for p in root.glob("*/*")]
    assert not [p for p in files if p.name.endswith(".tmp")]  # no half-written entries
    total = sum(p.stat().st_size for p in files)
    assert total <= limit + 2 * 4096  # each may overshoot by the entry it just added
    dc = DiskCache(root, limit)
    seen = 0
    for n in (1, 2):
        for i in range(200):
            key = f"{n}/{i}-k"
            got = dc.get(key)
            if got is not None:
                seen += 1
                assert got == hashlib.sha256(key.encode()).digest() * 128
    assert seen == len(files)


def test_mount_reads_cached_blocks_while_the_store_is_gone(tmp_path: Path,
                                                           mount_factory) -> None:  # noqa: F811
    cache = tmp_path / "cache"
    data_dir = tmp_path / "mdata"
    m = mount_factory("--cache-dir", str(cache), "--cache-size", "64", data=data_dir,
                      env={"METAFS_BLOCK_SIZE": str(BS), "METAFS_INLINE_LIMIT": "4096"})
    data = random.Random(5).randbytes(6 * BS + 123)
    (m.path / "f").write_bytes(data)
    assert len([p for p in cache.glob("*/*") if p.is_file()]) == 7
    (data_dir / "blocks").rename(tmp_path / "blocks-away")  # the store is gone
    with open(m.path / "f", "rb", buffering=0) as f:
        # no page cache either (of this file only: dropping every cache would disturb the
        # call counts of tests running beside this one)
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        assert os.pread(f.fileno(), 4096, 3 * BS + 100) == data[3 * BS + 100:3 * BS + 4196]
        rng = random.Random(6)
        for _ in range(40):  # random reads, several per block, each asked of the mount
            off = rng.randrange(len(data) - 4096)
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            assert os.pread(f.fileno(), 4096, off) == data[off:off + 4096]
        assert f.read() == data
