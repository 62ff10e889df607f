"""End to end through the client: files written and read through metafs, compared byte for
byte with the same operations on a local file, on the local store and on S3 (moto)."""

from __future__ import annotations

import hashlib
import os
import random
import time
from pathlib import Path
from typing import Iterator

import pytest

from metafs.namenode.gc import gc
from metafs.client import Client
from metafs.config import load

from blockstore_fixtures import make_bucket, moto_url  # noqa: F401

MiB = 1 << 20


def _settings(tmp_path: Path, store: str, request: pytest.FixtureRequest, **kw: object):
    over: dict[str, object] = {"data_dir": str(tmp_path / "data"), "gc_interval": 0}
    if store == "s3":
        url = request.getfixturevalue("moto_url")
        over.update(blocks_url=f"s3://{make_bucket(url)}/fs", s3_endpoint=url)
    over.update(kw)
    return load(overrides=over, environ={})


@pytest.fixture(params=["local", "s3"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=["small-blocks", "default-blocks"])
def fs(request: pytest.FixtureRequest, tmp_path: Path, store_kind: str) -> Iterator[Client]:
    kw: dict[str, object] = {}
    if request.param == "small-blocks":
        kw = {"block_size": 256 * 1024, "inline_limit": 8192, "block_checksum_piece": 16384}
    c = Client(settings=_settings(tmp_path, store_kind, request, **kw))
    yield c
    c.close()


def _same(fs: Client, path: str, local: Path) -> None:
    """Byte-for-byte comparison, streamed in 8 MiB pieces."""
    assert fs.stat(path).st_size == local.stat().st_size
    with fs.open(path, "rb") as a, open(local, "rb") as b:
        while True:
            x = a.read(8 * MiB)
            y = b.read(8 * MiB)
            assert x == y
            if not y:
                break


def _sizes(fs: Client) -> list[int]:
    return [0, 1, fs.inline_limit, fs.inline_limit + 1, 4 * MiB]


def test_sizes(fs: Client, tmp_path: Path) -> None:
    for n in _sizes(fs):
        data = os.urandom(n)
        local = tmp_path / f"f{n}"
        local.write_bytes(data)
        with fs.open(f"/f{n}", "wb") as f:
            f.write(data)
        _same(fs, f"/f{n}", local)
        assert fs.stat(f"/f{n}").st_size == n
        # a second writer path: small writes through the buffer
        with fs.open(f"/g{n}", "wb") as f:
            for i in range(0, n, 7777):
                f.write(data[i:i + 7777])
        _same(fs, f"/g{n}", local)


def test_random_overwrites_across_block_edges(fs: Client, tmp_path: Path) -> None:
    rnd = random.Random(42)
    size = 9 * MiB
    local = tmp_path / "nine"
    data = rnd.randbytes(size)
    local.write_bytes(data)
    with fs.open("/nine", "wb") as f:
        f.write(data)
    bs = fs._embedded.ns.blocks.block_size  # type: ignore[union-attr]
    with fs.open("/nine", "r+b") as f, open(local, "r+b") as g:
        for i in range(40):
            edge = rnd.randrange(1, size // bs + 1) * bs
            off = max(0, edge - rnd.randrange(1, 5000)) if i % 2 else rnd.randrange(0, size + MiB)
            chunk = rnd.randbytes(rnd.choice([1, 100, 4096, 70_000, bs + 3]))
            f.seek(off)
            f.write(chunk)
            g.seek(off)
            g.write(chunk)
            if i % 10 == 9:  # read back through the same handle mid-way
                f.flush()
                g.flush()
                ro = rnd.randrange(0, size)
                f.seek(ro)
                g.seek(ro)
                assert f.read(bs + 10) == g.read(bs + 10)
    _same(fs, "/nine", local)
    # append and truncate, both directions
    with fs.open("/nine", "ab") as f, open(local, "ab") as g:
        tail = rnd.randbytes(12345)
        f.write(tail)
        g.write(tail)
    _same(fs, "/nine", local)
    for n in (5 * MiB + 17, fs.inline_limit, 3, 2 * MiB + 1):
        fs.truncate("/nine", n)
        os.truncate(local, n)
        _same(fs, "/nine", local)


def test_sparse_two_gib_plus_one(tmp_path: Path, request: pytest.FixtureRequest,
                                 store_kind: str) -> None:
    c = Client(settings=_settings(tmp_path, store_kind, request))
    try:
        local = tmp_path / "sparse"
        n = 2 * 1024**3 + 1
        with c.open("/sparse", "wb") as f, open(local, "wb") as g:
            for off, b in ((0, b"head"), (1024**3 + 12345, b"middle"), (n - 1, b"!")):
                f.seek(off)
                f.write(b)
                g.seek(off)
                g.write(b)
        assert c.stat("/sparse").st_size == n
        # holes store nothing: three chunks hold data
        ino = c.stat("/sparse").st_ino
        keys = [b.key for b in c._embedded.ns.blocks.store.list(f"{ino}/")]  # type: ignore
        assert len(keys) == 3
        with c.open("/sparse", "rb") as f, open(local, "rb") as g:
            h1, h2 = hashlib.blake2b(), hashlib.blake2b()
            while True:
                x = f.read(64 * MiB)
                y = g.read(64 * MiB)
                h1.update(x)
                h2.update(y)
                if not y:
                    break
            assert h1.digest() == h2.digest()
            f.seek(n - 3)
            assert f.read() == b"\0\0!"
    finally:
        c.close()


def test_reader_of_old_version_is_not_torn(tmp_path: Path, request: pytest.FixtureRequest,
                                           store_kind: str) -> None:
    s = _settings(tmp_path, store_kind, request, block_size=256 * 1024, inline_limit=4096)
    c = Client(settings=s)
    try:
        v1 = os.urandom(MiB)
        c.write_bytes("/f", v1)
        r = c.open("/f", "rb", buffering=0)
        assert r.read(100) == v1[:100]  # layout of v1 fetched
        v2 = os.urandom(MiB)
        c.write_bytes("/f", v2)        # commits v2; v1's blocks are garbage, not yet removed
        assert r.read() == v1[100:]    # the open reader still reads v1 whole
        r.close()
        assert c.read_bytes("/f") == v2  # close-to-open: a new open sees v2
        stats = gc(c._embedded.ns, now=time.time() + 2 * s.gc_grace)  # type: ignore[union-attr]
        assert stats.freed_deleted == 4
        assert c.read_bytes("/f") == v2
    finally:
        c.close()


def test_two_writers_last_commit_wins(tmp_path: Path, request: pytest.FixtureRequest,
                                      store_kind: str) -> None:
    s = _settings(tmp_path, store_kind, request, block_size=128 * 1024, inline_limit=4096)
    c = Client(settings=s)
    try:
        a_data, b_data = os.urandom(600_000), os.urandom(600_000)
        a = c.open("/w", "wb")
        b = c.open("/w", "r+b")
        a.write(a_data)
        b.write(b_data)
        a.close()
        b.close()
        assert c.read_bytes("/w") == b_data
    finally:
        c.close()


def test_disk_cache(tmp_path: Path, request: pytest.FixtureRequest, store_kind: str) -> None:
    cache = tmp_path / "cache"
    s = _settings(tmp_path, store_kind, request, block_size=128 * 1024, inline_limit=4096,
                  block_cache_dir=str(cache), block_cache_size=512 * 1024)
    c = Client(settings=s)
    try:
        data = os.urandom(2 * MiB)
        c.write_bytes("/cached", data)
        for _ in range(2):
            assert c.read_bytes("/cached") == data
        used = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
        assert 0 < used <= 512 * 1024
        # a corrupted cache entry is detected, dropped and read from the store instead
        for p in cache.rglob("*"):
            if p.is_file():
                p.write_bytes(b"garbage" * 10)
        assert c.read_bytes("/cached") == data
    finally:
        c.close()
