"""The block data path's shortcuts: files that go straight to blocks, layouts cached per
file version, the default local block cache (write-through, ranged reads), presigned URLs
for clients without store credentials (moto, real HTTP), and the chunk size recorded by
two namenodes on PostgreSQL at once."""

from __future__ import annotations

import collections
import errno
import os
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from metafs.assembly import build_namenode, serve_grpc
from metafs.client import blocks as client_blocks
from metafs.client.blocks import cache_dir_for
from metafs.blockstore.presigned import PresignedStore
from metafs.client import Client
from metafs.config import Settings, load
from metafs.namenode.server import Namenode

from blockstore_fixtures import FaultProxy, fault_proxy, make_bucket, moto_url  # noqa: F401

MiB = 1 << 20
LIMIT = 8192


def _settings(tmp_path: Path, **kw: object) -> Settings:
    over: dict[str, object] = {"data_dir": str(tmp_path / "data"), "gc_interval": 0,
                               "block_size": 256 * 1024, "inline_limit": LIMIT,
                               "block_checksum_piece": 16384}
    over.update(kw)
    return load(overrides=over, environ={})


def _count(c: Client) -> collections.Counter[str]:
    """Count the client's namenode calls by method."""
    calls: collections.Counter[str] = collections.Counter()
    orig = c.transport.call

    def call(method: str, request: Any) -> Any:
        calls[method] += 1
        return orig(method, request)

    c.transport.call = call  # type: ignore[method-assign]
    return calls


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[Client]:
    c = Client(settings=_settings(tmp_path))
    yield c
    c.close()


# ---------------------------------------------------------------- straight to blocks
def test_new_file_goes_straight_to_blocks(fs: Client) -> None:
    fs.write_bytes("/first", os.urandom(100_000))   # the client learns chunk size and store
    calls = _count(fs)
    data = os.urandom(700_000)
    fs.write_bytes("/big", data)
    # the commit at close also releases the handle: two calls for the whole file
    assert dict(calls) == {"Create": 1, "CommitBlocks": 1}
    assert not fs.stat("/big").st_size != len(data)
    assert fs.read_bytes("/big") == data


def _open_handles(fs: Client) -> int:
    from sqlalchemy import func, select

    from metafs.namenode import schema

    ns = fs.embedded.ns if fs.embedded is not None else None
    assert ns is not None, "this check needs the in-process namenode"
    return ns.engine.read(lambda c: c.execute(
        select(func.count()).select_from(schema.handles)).scalar_one())


def test_a_failed_commit_at_close_still_releases_the_handle(tmp_path: Path) -> None:
    from metafs.cli import main

    s = _settings(tmp_path)
    with Client(settings=s) as fs:
        fs.makedirs("/q")
        fs.write_bytes("/q/small", b"x" * 1000)
    assert main(["quota", "set", "/q", "--bytes", "200K", "--data", s.data_dir]) == 0
    with Client(settings=s) as fs:
        before = _open_handles(fs)
        with pytest.raises(OSError) as ei:
            fs.write_bytes("/q/big", os.urandom(700_000))
        assert ei.value.errno == errno.EDQUOT
        assert fs.stat("/q/big").st_size == 0        # nothing committed
        assert _open_handles(fs) == before           # and the handle is gone


@pytest.mark.parametrize("piece", [1000, 1024])
def test_buffered_small_writes_skip_the_inline_write(fs: Client, piece: int) -> None:
    fs.write_bytes("/first", os.urandom(100_000))
    calls = _count(fs)
    data = os.urandom(300_000)
    with fs.open("/pieces", "wb", buffering=LIMIT) as f:   # first flush: near the limit
        for i in range(0, len(data), piece):
            f.write(data[i:i + piece])
    assert calls["Write"] == 0 and calls["GetLayout"] == 0
    assert fs.read_bytes("/pieces") == data


@pytest.mark.parametrize("size", [LIMIT - 1, LIMIT, LIMIT + 1])
def test_inline_limit_edges_after_held_back_write(fs: Client, size: int) -> None:
    data = os.urandom(size)
    with fs.open("/e", "wb", buffering=0) as f:
        f.write(data[:LIMIT] if size >= LIMIT else data)  # exactly the limit: held back
        if size > LIMIT:
            f.write(data[LIMIT:])
    assert fs.read_bytes("/e") == data
    assert fs.stat("/e").st_size == size


def test_held_back_bytes_are_visible_to_the_same_handle(fs: Client) -> None:
    data = os.urandom(LIMIT)
    with fs.open("/rw", "w+b", buffering=0) as f:
        f.write(data)                       # held back
        assert f.seek(0, os.SEEK_END) == LIMIT
        f.seek(0)
        assert f.read() == data             # written before it is read
        f.write(b"tail")
    assert fs.read_bytes("/rw") == data + b"tail"


def test_small_files_are_read_and_written_in_few_calls(fs: Client) -> None:
    small = os.urandom(LIMIT - 10)
    calls = _count(fs)
    fs.write_bytes("/s", small)       # Create by path; the data rides on the Release
    assert dict(calls) == {"Create": 1, "Release": 1}
    calls.clear()
    assert fs.read_bytes("/s") == small
    assert dict(calls) == {"Open": 1}  # the data rides on the Open; no handle to release
    calls.clear()
    with fs.open("/s", "rb") as f:     # reads past what the open brought ask again
        assert f.read(100) == small[:100]
        assert f.read() == small[100:]
        with fs.open("/s", "ab") as g:
            g.write(b"more")
        assert f.read() == b"more"
    assert calls["Read"] >= 1
    assert fs.read_bytes("/s") == small + b"more"


def test_a_reader_keeps_what_its_open_brought_when_the_name_goes(fs: Client) -> None:
    fs.write_bytes("/gone", b"still here")
    with fs.open("/gone", "rb") as f:
        fs.remove("/gone")
        assert f.read() == b"still here"
    with fs.open("/gone2", "wb") as f:
        f.write(b"x" * 100)
    with fs.open("/gone2", "rb", buffering=0) as f:   # read(n) to the end: an EOF probe
        fs.remove("/gone2")
        got = b""
        while chunk := f.read(30):
            got += chunk
        assert got == b"x" * 100
    assert not fs.exists("/gone") and not fs.exists("/gone2")


# ---------------------------------------------------------------- layouts per version
def test_layout_cached_per_version_and_refreshed_when_changed(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    nn = build_namenode(s)
    srv = serve_grpc(nn, "127.0.0.1:0")
    a = Client(settings=s.with_(namenode=srv.address))
    b = Client(settings=s.with_(namenode=srv.address))
    try:
        v1 = os.urandom(600_000)
        a.write_bytes("/f", v1)
        calls = _count(a)
        assert a.read_bytes("/f") == v1
        assert calls["GetLayout"] == 0          # the writer knows the new version's layout
        v2 = os.urandom(500_000)
        calls.clear()
        b.write_bytes("/f", v2)                 # another client: a new version
        assert a.read_bytes("/f") == v2
        # the new layout came with the open: one call to open, one to close
        assert dict(calls) == {"Open": 1, "Release": 1}
        assert a.read_bytes("/f") == v2 and calls["GetLayout"] == 0
        with b.open("/f", "r+b") as f:          # a partial overwrite by the other client
            f.seek(100_000)
            f.write(b"x" * 300_000)
        want = v2[:100_000] + b"x" * 300_000 + v2[400_000:]
        assert a.read_bytes("/f") == want
        with b.open("/f", "r+b") as f:
            f.truncate(300_000)
        assert a.read_bytes("/f") == want[:300_000]
    finally:
        a.close()
        b.close()
        srv.stop(0)
        nn.close()


# ---------------------------------------------------------------- local block cache
def test_cache_dir_defaults(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    assert s.block_cache_dir == "auto"
    assert cache_dir_for(s, "file:///srv/blocks") == ""
    assert cache_dir_for(s, "s3://bucket/p").endswith(os.path.join("metafs", "blocks"))
    assert cache_dir_for(s.with_(block_cache_dir="off"), "s3://bucket/p") == ""
    assert cache_dir_for(s.with_(block_cache_dir=str(tmp_path)), "file:///x") == str(tmp_path)


def test_default_cache_serves_reads_when_s3_fails(tmp_path: Path, fault_proxy: FaultProxy,  # noqa: F811
                                                   moto_url: str) -> None:  # noqa: F811
    bucket = make_bucket(moto_url)
    s = _settings(tmp_path, blocks_url=f"s3://{bucket}/fs", s3_endpoint=fault_proxy.url,
                  s3_retries=2)
    c = Client(settings=s)
    try:
        data = os.urandom(MiB)
        c.write_bytes("/f", data)              # uploaded and kept in the cache
        root = Path(cache_dir_for(s, s.blocks_url))
        assert root.is_dir() and any(p.is_file() for p in root.rglob("*"))
        fault_proxy.fail_always(500)
        assert c.read_bytes("/f") == data      # whole blocks from the cache
        with c.open("/f", "rb", buffering=0) as f:  # ranged reads from the cache
            for off in (0, 300_000, 777_777, MiB - 5):
                f.seek(off)
                assert f.read(4096) == data[off:off + 4096]
        # a corrupted cached block is dropped; with the store down that is EIO
        for p in root.rglob("*"):
            if p.is_file():
                p.write_bytes(b"garbage" * 100)
        with pytest.raises(OSError) as ei:
            c.read_bytes("/f")
        assert ei.value.errno == errno.EIO
        fault_proxy.heal()
        assert c.read_bytes("/f") == data      # and read from the store again
    finally:
        fault_proxy.heal()
        c.close()


def test_cache_keeps_free_space(tmp_path: Path) -> None:
    from metafs.blockstore.cache import DiskCache

    dc = DiskCache(tmp_path / "c", 1 << 40, free_ratio=0.99)  # the disk is never that free
    dc.put("1/0-a", b"x" * 1000)
    assert dc.get("1/0-a") is None
    dc = DiskCache(tmp_path / "c2", 1 << 40, free_ratio=0.0, namespace="s3://b/p")
    dc.put("1/0-a", b"abcdef")
    assert dc.get_range("1/0-a", 2, 5) == b"cde" and dc.get_range("1/0-a", 2, 50) is None
    other = DiskCache(tmp_path / "c2", 1 << 40, namespace="s3://other/p")
    assert other.get("1/0-a") is None          # keys are per store


# ---------------------------------------------------------------- presigned URLs
@pytest.fixture
def presigned(tmp_path: Path, moto_url: str,  # noqa: F811
              monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Client, Namenode]]:
    """A namenode with S3 credentials and a client that has none: it may not open a store
    itself, so every byte goes through URLs the namenode signed."""
    bucket = make_bucket(moto_url)
    s = _settings(tmp_path, blocks_url=f"s3://{bucket}/fs", s3_endpoint=moto_url,
                  block_cache_dir="off")
    nn = build_namenode(s)
    srv = serve_grpc(nn, "127.0.0.1:0")

    def no_credentials(*a: object, **k: object) -> None:
        raise AssertionError("a presigning client must not open the store itself")

    monkeypatch.setattr(client_blocks, "open_store", no_credentials)
    c = Client(settings=s.with_(namenode=srv.address, block_presign=True, s3_endpoint=""))
    try:
        yield c, nn
    finally:
        c.close()
        srv.stop(0)
        nn.close()


def test_presigned_write_and_read(presigned: tuple[Client, Namenode]) -> None:
    c, nn = presigned
    calls = _count(c)
    data = os.urandom(900_000)
    c.write_bytes("/p", data)
    assert calls["Presign"] == 4                 # one PUT URL per new block
    assert c.read_bytes("/p") == data
    with c.open("/p", "r+b") as f:               # read-modify-write through URLs
        f.seek(250_000)
        f.write(b"y" * 20_000)
    want = data[:250_000] + b"y" * 20_000 + data[270_000:]
    c2 = Client(settings=c.settings)             # a fresh client: GET URLs from the layout
    try:
        calls2 = _count(c2)
        with c2.open("/p", "rb", buffering=0) as f:
            f.seek(600_000)
            assert f.read(5000) == want[600_000:605_000]
            assert f.read() == want[605_000:]
        assert calls2["GetLayout"] == 1 and calls2["Presign"] == 0
        assert c2.read_bytes("/p") == want
    finally:
        c2.close()
    assert all(isinstance(st, PresignedStore) for st in c.blocks._stores.values())
    keys = {b.key for b in nn.ns.blocks.store.list()}
    assert keys and all(k.startswith(f"{c.stat('/p').st_ino}/") for k in keys)


def test_presigned_url_refreshed_when_refused(tmp_path: Path, moto_url: str,  # noqa: F811
                                             fault_proxy: FaultProxy,  # noqa: F811
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = make_bucket(moto_url)
    s = _settings(tmp_path, blocks_url=f"s3://{bucket}/fs", s3_endpoint=fault_proxy.url,
                  block_cache_dir="off", s3_retries=2)
    nn = build_namenode(s)
    srv = serve_grpc(nn, "127.0.0.1:0")
    c = Client(settings=s.with_(namenode=srv.address, block_presign=True, s3_endpoint=""))
    try:
        data = os.urandom(600_000)
        fault_proxy.fail(1, 403)                 # an expired PUT URL: signed again
        c.write_bytes("/q", data)
        calls = _count(c)
        with c.open("/q", "rb", buffering=0) as f:
            fault_proxy.fail(1, 403)             # an expired GET URL: signed again
            assert f.read() == data
        assert calls["GetLayout"] == 1 and calls["Presign"] == 1  # URLs come with the layout
        fault_proxy.fail_always(403)             # refused even when fresh: EACCES
        with pytest.raises(OSError) as ei:
            with c.open("/q", "rb", buffering=0) as f:
                f._urls.clear()  # type: ignore[attr-defined]
                f._mem.clear()  # type: ignore[attr-defined]
                f.read()
        assert ei.value.errno == errno.EACCES
    finally:
        fault_proxy.heal()
        c.close()
        srv.stop(0)
        nn.close()


def test_presigned_local_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = _settings(tmp_path)
    nn = build_namenode(s)
    srv = serve_grpc(nn, "127.0.0.1:0")
    c = Client(settings=s.with_(namenode=srv.address, block_presign=True))
    try:
        data = os.urandom(700_000)
        c.write_bytes("/l", data)
        assert c.read_bytes("/l") == data
    finally:
        c.close()
        srv.stop(0)
        nn.close()


# ---------------------------------------------------------------- two namenodes, one PG
def test_block_size_recorded_by_two_namenodes_at_once(pg_url: str) -> None:
    """Two transactions insert the chunk size at the same moment: the second waits for the
    first and then reads its value instead of failing on the unique key."""
    from sqlalchemy import select

    from metafs.namenode import schema
    from metafs.namenode.engine import PostgresEngine

    s = load(overrides={"db_url": pg_url, "data_dir": "/nonexistent"}, environ={})
    build_namenode(s, background=False).close()       # creates the schema
    pg = PostgresEngine(pg_url, s)
    eng = pg.engine                              # READ COMMITTED, as the namenode writes
    C = schema.counters

    def insert_block_size(value: int):  # type: ignore[no-untyped-def]
        return pg.insert_if_absent(C, {"name": "block_size", "value": value}, [C.c.name])

    first_inserted = threading.Event()
    errors: list[BaseException] = []
    seen: list[int] = []

    def second() -> None:
        try:
            first_inserted.wait()
            with eng.begin() as conn:
                conn.execute(insert_block_size(999))
                seen.append(conn.execute(select(C.c.value).where(
                    C.c.name == "block_size")).scalar_one())
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=second)
    t.start()
    with eng.begin() as conn:
        conn.execute(insert_block_size(4 * MiB))
        first_inserted.set()
        t.join(0.5)                              # the second one waits on our row
    t.join()
    pg.dispose()
    assert not errors and seen == [4 * MiB]
    # and the namenodes agree on it
    a, b = build_namenode(s, background=False), build_namenode(s, background=False)
    try:
        assert a.ns.blocks.block_size == b.ns.blocks.block_size == 4 * MiB
    finally:
        a.close()
        b.close()


def test_held_back_bytes_survive_a_move_to_blocks_by_another_writer(fs: Client) -> None:
    held = os.urandom(LIMIT)
    other = os.urandom(400_000)
    with fs.open("/m", "wb", buffering=0) as f:
        f.write(held)                          # held back: the file is still empty
        fs.write_bytes("/m", other)            # another writer puts it in blocks
    assert fs.read_bytes("/m") == held + other[LIMIT:]


# ---------------------------------------------------------------- whole-chunk write buffers
def _stored_lengths(fs: Client, path: str) -> dict[int, int]:
    """Chunk index -> length of its stored block (holes absent)."""
    from metafs.proto import metafs_pb2 as pb

    reply = fs._call("GetLayout", pb.LayoutRequest(  # type: ignore[attr-defined]
        caller=fs.caller, ino=fs.stat(path).st_ino, first_index=0, count=1024), path)
    return {b.index: b.length for b in reply.blocks if b.key}


def test_whole_chunk_write_buffer_reads_zeros_and_stores_only_the_file(fs: Client) -> None:
    """A new chunk's write buffer spans the whole chunk from its first write: bytes past the
    end of the file read as zeros when the file grows over them, and a block never stores
    more than the file holds."""
    bs = 256 * 1024
    with fs.open("/z", "w+b", buffering=0) as f:
        f.write(b"a" * 100_000)             # a new chunk, partly written
        f.seek(200_000)
        f.write(b"b" * 10)                  # a gap inside the same chunk
        f.seek(0)
        assert f.read() == b"a" * 100_000 + bytes(100_000) + b"b" * 10
        f.seek(2 * bs + 5)
        f.write(b"c" * 7)                   # chunk 0's tail and chunk 1 become holes
    want = b"a" * 100_000 + bytes(100_000) + b"b" * 10 + bytes(2 * bs + 5 - 200_010) + b"c" * 7
    assert fs.read_bytes("/z") == want
    assert _stored_lengths(fs, "/z") == {0: bs, 2: 12}
    data = os.urandom(100_000)
    with fs.open("/short", "wb", buffering=0) as f:
        f.write(data)
    assert fs.read_bytes("/short") == data
    assert _stored_lengths(fs, "/short") == {0: 100_000}
    # a chunk filled in pieces goes to the store as soon as it is full
    data = os.urandom(3 * bs + 1000)
    with fs.open("/pieces", "wb", buffering=0) as f:
        for i in range(0, len(data), 64 * 1024):
            f.write(data[i:i + 64 * 1024])
    assert fs.read_bytes("/pieces") == data
    assert _stored_lengths(fs, "/pieces") == {0: bs, 1: bs, 2: bs, 3: 1000}


def test_parallel_reads_of_one_handle(fs: Client) -> None:
    """Reads of one open file from several threads at once (the kernel's read-ahead sends
    them so) each get their own bytes, sequential and random."""
    import random

    bs = 256 * 1024
    data = os.urandom(9 * bs + 4321)
    fs.write_bytes("/par", data)
    errors: list[object] = []
    with fs.open("/par", "rb", buffering=0) as f:
        raw: Any = f

        def worker(seed: int) -> None:
            rnd = random.Random(seed)
            try:
                for i in range(30):
                    if seed % 2:   # sequential pieces, as read-ahead asks for them
                        off = (i * 64 * 1024 + seed * bs) % len(data)
                        n = 64 * 1024
                    else:
                        off = rnd.randrange(0, len(data))
                        n = rnd.choice([1, 4096, 100_000, bs, 2 * bs + 7])
                    got = raw.read_view(off, n)
                    if bytes(got) != data[off:off + n]:
                        errors.append((seed, off, n))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert f.read() == data
    assert not errors


def test_reused_chunk_buffers_hold_no_old_bytes(fs: Client) -> None:
    """Whole-chunk write buffers are reused once their block is stored: a reused one reads
    as zeros wherever the new file was not written."""
    bs = 256 * 1024
    old = os.urandom(4 * bs)
    with fs.open("/old", "wb", buffering=0) as f:
        for i in range(0, len(old), 64 * 1024):   # pieces: whole-chunk buffers, stored
            f.write(old[i:i + 64 * 1024])
    ctx = fs.blocks
    assert ctx._chunk_bufs                          # kept for the next writer
    with fs.open("/new", "w+b", buffering=0) as f:
        f.write(b"x" * 100_000)
        f.seek(200_000)
        f.write(b"y")
        f.seek(bs + 10)
        f.write(b"z")
        f.seek(0)
        want = b"x" * 100_000 + bytes(100_000) + b"y" + bytes(bs + 10 - 200_001) + b"z"
        assert f.read() == want
    assert fs.read_bytes("/new") == want
    assert fs.read_bytes("/old") == old
