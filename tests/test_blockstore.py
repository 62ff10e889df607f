"""The block store contract (:class:`metafs.testing.BlockStoreTests`) on the local store and
on S3 (a real moto server), the presigned-URL view, checksums, and the namenode's block
layer (commit, layout, truncate, free, garbage collection)."""

from __future__ import annotations

import errno
import os
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from metafs.assembly import build_namenode
from metafs.blockstore import BlockStore, LocalStore, open_store
from metafs.blockstore.base import (ChecksumError, checksum, new_key, read_verified, verify)
from metafs.blockstore.presigned import PresignedStore, PresignedView
from metafs.config import load
from metafs.errors import FsError
from metafs.namenode.gc import gc, gc_main
from metafs.namenode.server import Namenode
from metafs.proto import metafs_pb2 as pb
from metafs.testing import BlockIOTests, BlockStoreTests
from metafs.testing.blockstore import PIECE

from blockstore_fixtures import FaultProxy, fault_proxy, make_bucket, moto_url  # noqa: F401


class TestLocalStore(BlockStoreTests):
    @pytest.fixture
    def store(self, tmp_path: Path) -> BlockStore:
        return open_store((tmp_path / "blocks").as_uri())

    def test_put_is_atomic_and_leaves_no_temp_files(self, store: LocalStore) -> None:
        store.put("1/0-a", b"abc")
        assert list((store.root / ".tmp").iterdir()) == []

    def test_corruption_is_eio_naming_the_block(self, store: LocalStore,
                                                caplog: pytest.LogCaptureFixture) -> None:
        data = os.urandom(3 * PIECE)
        cs = checksum(data, PIECE)
        store.put("1/0-c", data)
        p = store.root / "1" / "0-c"
        raw = bytearray(p.read_bytes())
        raw[PIECE + 10] ^= 0xFF
        p.write_bytes(bytes(raw))
        assert read_verified(store, "1/0-c", cs, 0, PIECE) == data[:PIECE]  # piece 0 intact
        with pytest.raises(ChecksumError) as ei:
            read_verified(store, "1/0-c", cs, PIECE, PIECE + 1)
        assert ei.value.errno == errno.EIO and "1/0-c" in str(ei.value)


class TestS3Store(BlockStoreTests):
    @pytest.fixture
    def store(self, moto_url: str) -> BlockStore:  # noqa: F811
        bucket = make_bucket(moto_url)
        s = load(overrides={"s3_endpoint": moto_url}, environ={})
        return open_store(f"s3://{bucket}/some/prefix", s)

    def test_presigned_urls(self, store: BlockStore) -> None:
        store.put("3/0-p", b"presigned data")
        url = store.presign("3/0-p")
        with urllib.request.urlopen(url) as r:
            assert r.read() == b"presigned data"
        put_url = store.presign("3/1-q", put=True)
        req = urllib.request.Request(put_url, data=b"uploaded", method="PUT",
                                     headers={"Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(req) as r:
            assert r.status == 200
        assert store.get("3/1-q") == b"uploaded"

    def test_prefix_isolation(self, store: BlockStore, moto_url: str) -> None:  # noqa: F811
        store.put("4/0-a", b"a")
        assert [b.key for b in store.list()] == ["4/0-a"]


# ---------------------------------------------------------------- the presigned-URL view
class Signer:
    """Signs URLs with the store's own credentials, as the namenode does for a client
    without any, and remembers what it was asked for."""

    def __init__(self, store: BlockStore) -> None:
        self.store = store
        self.asked: list[tuple[str, bool, bool]] = []

    def presigned_url(self, key: str, put: bool, refresh: bool = False) -> str:
        self.asked.append((key, put, refresh))
        return self.store.presign(key, put)


def presigned_view(backing: BlockStore) -> tuple[PresignedView, Signer]:
    signer = Signer(backing)
    return PresignedView(PresignedStore(backing.url, load(environ={})), signer), signer


class TestPresignedViewLocal(BlockIOTests):
    """The view over a local directory store: ``file://`` URLs."""

    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[PresignedView]:
        view, _ = presigned_view(LocalStore(tmp_path / "blocks"))
        yield view
        view.http.close()


class TestPresignedViewS3(BlockIOTests):
    """The view over S3: presigned HTTP URLs, GET with a Range header and PUT."""

    @pytest.fixture
    def store(self, moto_url: str) -> Iterator[PresignedView]:  # noqa: F811
        s = load(overrides={"s3_endpoint": moto_url}, environ={})
        view, _ = presigned_view(open_store(f"s3://{make_bucket(moto_url)}/p", s))
        yield view
        view.http.close()


def test_presigned_view_is_not_a_store(tmp_path: Path) -> None:
    """It reads and writes blocks and nothing else: no listing, heads or deletes."""
    view, _ = presigned_view(LocalStore(tmp_path / "blocks"))
    assert not isinstance(view, BlockStore)
    assert not any(hasattr(view, op) for op in ("head", "delete", "list", "exists"))


def test_presigned_view_asks_once_more_for_a_refused_url(
        moto_url: str, fault_proxy: FaultProxy) -> None:  # noqa: F811
    s = load(overrides={"s3_endpoint": fault_proxy.url, "s3_retries": 2}, environ={})
    backing = open_store(f"s3://{make_bucket(moto_url)}/p", s)
    view, signer = presigned_view(backing)
    fault_proxy.fail(1, 403)                     # an expired PUT URL: signed again
    view.put("1/0-a", b"data")
    assert signer.asked == [("1/0-a", True, False)] * 2
    assert backing.get("1/0-a") == b"data"
    signer.asked.clear()
    fault_proxy.fail(1, 403)                     # an expired GET URL: signed afresh
    assert view.get("1/0-a", 1, 3) == b"at"
    assert signer.asked == [("1/0-a", False, False), ("1/0-a", False, True)]
    fault_proxy.fail_always(403)                 # refused even when fresh: EACCES
    for op in (lambda: view.get("1/0-a"), lambda: view.put("1/1-b", b"x")):
        with pytest.raises(FsError) as ei:
            op()
        assert ei.value.errno == errno.EACCES
    fault_proxy.heal()
    assert not backing.exists("1/1-b")
    view.http.close()


def test_checksum_format_and_verify() -> None:
    data = b"a" * 10_000
    cs = checksum(data, 4096)
    assert cs.startswith("crc32:4096:") and len(cs.split(":")[2]) == 3 * 8
    verify("k", data, 0, cs, 3)
    verify("k", data[4096:8192], 1, cs, 1)
    with pytest.raises(ChecksumError):
        verify("k", data[:-1] + b"b", 0, cs, 3)
    with pytest.raises(FsError) as ei:
        verify("k", data, 0, "md5:zz")
    assert ei.value.errno == errno.EINVAL


def test_open_store_rejects_unknown_urls() -> None:
    for url in ("ftp://x/y", "gs://bucket", "s3://"):
        with pytest.raises(FsError) as ei:
            open_store(url)
        assert ei.value.errno == errno.EINVAL


# ---------------------------------------------------------------- the namenode's block layer
ROOT = pb.Caller(uid=0, gid=0, client_id="t")
USER = pb.Caller(uid=1000, gid=1000, client_id="u")
BS = 64 * 1024


@pytest.fixture
def nn(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = load(overrides={"data_dir": str(tmp_path / "d"), "block_size": BS,
                        "inline_limit": 4096, "block_checksum_piece": PIECE,
                        "gc_interval": 0}, environ={})
    n = build_namenode(s, background=False)
    yield n
    n.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def nn_engines(request: pytest.FixtureRequest, nn: Namenode):  # type: ignore[no-untyped-def]
    """``nn``, and the same on PostgreSQL (whose unlink frees an inode in one statement)."""
    if request.param == "sqlite":
        yield nn
        return
    n = build_namenode(nn.settings.with_(db_url=request.getfixturevalue("pg_url")),
                       background=False)
    yield n
    n.close()


def _create(nn: Namenode, name: str = "f", caller: pb.Caller = ROOT, mode: int = 0o644) -> int:
    r = nn.handlers.Create(pb.CreateRequest(caller=caller, parent=1, name=name,
                                            mode=0o100000 | mode))
    return r.attr.ino


def _block(nn: Namenode, ino: int, idx: int, data: bytes) -> pb.BlockRef:
    key = new_key(ino, idx)
    nn.ns.blocks.store.put(key, data)
    return pb.BlockRef(index=idx, key=key, length=len(data), checksum=checksum(data, PIECE))


def _commit(nn: Namenode, ino: int, size: int, refs: list[pb.BlockRef],
            caller: pb.Caller = ROOT, **kw: object) -> pb.Attr:
    return nn.handlers.CommitBlocks(pb.CommitBlocksRequest(caller=caller, ino=ino, size=size,
                                                           blocks=refs, **kw))


def _layout(nn: Namenode, ino: int) -> pb.LayoutReply:
    return nn.handlers.GetLayout(pb.LayoutRequest(caller=ROOT, ino=ino))


def test_commit_layout_and_changelog(nn: Namenode) -> None:
    ino = _create(nn)
    head = nn.ns.changelog_head()
    a = _commit(nn, ino, BS + 10, [_block(nn, ino, 0, b"x" * BS), _block(nn, ino, 1, b"y" * 10)],
                to_blocks=True)
    assert a.size == BS + 10 and not a.inline and a.version == 1
    lay = _layout(nn, ino)
    assert [b.index for b in lay.blocks] == [0, 1] and lay.block_size == BS
    recs, _ = nn.ns.changelog_read(head, 100)
    assert [r.op for r in recs] == [pb.OP_WRITE] and recs[0].attr.size == BS + 10


def test_commit_refuses_block_not_stored_and_changes_nothing(nn: Namenode) -> None:
    ino = _create(nn)
    good = _block(nn, ino, 0, b"a" * 100)
    _commit(nn, ino, 100, [good], to_blocks=True)
    before = _layout(nn, ino)
    missing = pb.BlockRef(index=0, key=new_key(ino, 0), length=5, checksum=checksum(b"12345", PIECE))
    with pytest.raises(FsError) as ei:
        _commit(nn, ino, 5000, [missing])
    assert ei.value.errno == errno.EIO and missing.key in str(ei.value)
    after = _layout(nn, ino)
    assert after == before


@pytest.mark.parametrize("case", ["foreign", "dup_index", "past_end", "bad_len", "bad_sum",
                                  "reused", "freed", "hole_with_data"])
def test_commit_rejects_bad_requests(nn: Namenode, case: str) -> None:
    ino = _create(nn)
    other = _create(nn, "g")
    b0 = _block(nn, ino, 0, b"a" * 100)
    _commit(nn, ino, 100, [b0], to_blocks=True)
    if case == "foreign":
        refs = [_block(nn, other, 0, b"z")]
    elif case == "dup_index":
        refs = [_block(nn, ino, 1, b"1"), _block(nn, ino, 1, b"2")]
    elif case == "past_end":
        refs = [_block(nn, ino, 5, b"1")]
    elif case == "bad_len":
        r = _block(nn, ino, 1, b"123")
        refs = [pb.BlockRef(index=1, key=r.key, length=BS + 1, checksum=r.checksum)]
    elif case == "bad_sum":
        r = _block(nn, ino, 1, b"123")
        refs = [pb.BlockRef(index=1, key=r.key, length=3, checksum=checksum(b"1" * 9000, PIECE))]
    elif case == "reused":   # a block of one chunk cannot be mapped at another
        refs = [pb.BlockRef(index=1, key=b0.key, length=100, checksum=b0.checksum)]
    elif case == "freed":
        b1 = _block(nn, ino, 0, b"b" * 100)
        _commit(nn, ino, 100, [b1])       # b0 is now garbage
        refs = [pb.BlockRef(index=1, key=b0.key, length=100, checksum=b0.checksum)]
    else:
        refs = [pb.BlockRef(index=1, length=5)]
    before = _layout(nn, ino)
    with pytest.raises(FsError) as ei:
        _commit(nn, ino, 2 * BS, refs)
    assert ei.value.errno == errno.EINVAL
    assert _layout(nn, ino) == before


def test_commit_needs_write_permission(nn: Namenode) -> None:
    ino = _create(nn, mode=0o644)
    with pytest.raises(FsError) as ei:
        _commit(nn, ino, 10, [_block(nn, ino, 0, b"x" * 10)], caller=USER)
    assert ei.value.errno == errno.EACCES
    with pytest.raises(FsError) as ei:
        nn.handlers.Presign(pb.PresignRequest(caller=USER, ino=ino, keys=[new_key(ino, 0)],
                                              put=True))
    assert ei.value.errno == errno.EACCES


def test_truncate_moves_between_inline_and_blocks(nn: Namenode) -> None:
    ino = _create(nn)
    nn.handlers.Write(pb.WriteRequest(caller=ROOT, ino=ino, offset=0, data=b"hello"))
    # grow past the inline limit by truncate: the bytes move to a block
    a = nn.handlers.SetAttr(pb.SetAttrRequest(caller=ROOT, ino=ino, size=3 * BS + 7))
    assert not a.inline and a.size == 3 * BS + 7
    lay = _layout(nn, ino)
    assert [b.index for b in lay.blocks] == [0]
    assert nn.ns.blocks.store.get(lay.blocks[0].key) == b"hello"
    # the inline Write call refuses a file in blocks
    with pytest.raises(FsError) as ei:
        nn.handlers.Write(pb.WriteRequest(caller=ROOT, ino=ino, offset=0, data=b"x"))
    assert ei.value.errno == errno.EFBIG
    # shrink within blocks: the tail chunk's length shrinks, chunks past the end go
    b2 = _block(nn, ino, 2, b"q" * BS)
    _commit(nn, ino, 3 * BS + 7, [b2])
    a = nn.handlers.SetAttr(pb.SetAttrRequest(caller=ROOT, ino=ino, size=2 * BS + 3))
    lay = _layout(nn, ino)
    assert {b.index: b.length for b in lay.blocks} == {0: 5, 2: 3}
    # back under the inline limit: inline again, with the right bytes
    a = nn.handlers.SetAttr(pb.SetAttrRequest(caller=ROOT, ino=ino, size=4))
    assert a.inline and a.size == 4
    assert nn.handlers.Read(pb.ReadRequest(caller=ROOT, ino=ino, size=10)).data == b"hell"
    assert not _layout(nn, ino).blocks
    # every replaced block is on the garbage list, then collected
    stats = gc(nn.ns, now=time.time() + 10 * 3600)
    assert stats.freed_deleted == 2
    assert list(nn.ns.blocks.store.list()) == []


def test_a_write_replacing_a_file_in_blocks_frees_its_blocks(nn: Namenode) -> None:
    """A Write that empties the file first (a truncating open's first write) on a file in
    blocks brings it back inline with just the new bytes; its blocks go to garbage."""
    ino = _create(nn)
    _commit(nn, ino, 2 * BS, [_block(nn, ino, 0, b"a" * BS), _block(nn, ino, 1, b"b" * BS)],
            to_blocks=True)
    r = nn.handlers.Write(pb.WriteRequest(caller=ROOT, ino=ino, offset=0, data=b"new",
                                          truncate=True))
    assert r.attr.inline and r.attr.size == 3
    assert nn.handlers.Read(pb.ReadRequest(caller=ROOT, ino=ino, size=BS)).data == b"new"
    assert not _layout(nn, ino).blocks
    stats = gc(nn.ns, now=time.time() + 10 * 3600)
    assert stats.freed_deleted == 2
    assert list(nn.ns.blocks.store.list()) == []


def test_unlink_frees_blocks_and_gc_keeps_referenced(nn_engines: Namenode) -> None:
    nn = nn_engines
    keep = _create(nn, "keep")
    gone = _create(nn, "gone")
    kb = _block(nn, keep, 0, b"k" * 1000)
    _commit(nn, keep, 1000, [kb], to_blocks=True)
    _commit(nn, gone, 1000, [_block(nn, gone, 0, b"g" * 1000)], to_blocks=True)
    nn.handlers.Unlink(pb.NameRequest(caller=ROOT, parent=1, name="gone"))
    # within the grace period nothing goes
    stats = gc(nn.ns)
    assert stats.deleted == 0
    stats = gc(nn.ns, now=time.time() + 10 * 3600)
    assert stats.freed_deleted == 1 and stats.referenced == 1
    assert [b.key for b in nn.ns.blocks.store.list()] == [kb.key]


def test_commit_refuses_stale_uploads(nn: Namenode) -> None:
    ino = _create(nn)
    ref = _block(nn, ino, 0, b"s" * 10)
    p = nn.ns.blocks.store.root / ref.key  # type: ignore[attr-defined]
    old = time.time() - nn.settings.gc_grace
    os.utime(p, (old, old))
    with pytest.raises(FsError) as ei:
        _commit(nn, ino, 10, [ref], to_blocks=True)
    assert ei.value.errno == errno.ESTALE


def test_presign_get_only_for_blocks_of_the_file(nn: Namenode) -> None:
    ino = _create(nn)
    ref = _block(nn, ino, 0, b"p" * 10)
    _commit(nn, ino, 10, [ref], to_blocks=True)
    urls = nn.handlers.Presign(pb.PresignRequest(caller=ROOT, ino=ino, keys=[ref.key])).urls
    assert len(urls) == 1
    with pytest.raises(FsError) as ei:
        nn.handlers.Presign(pb.PresignRequest(caller=ROOT, ino=ino, keys=[new_key(ino, 3)]))
    assert ei.value.errno == errno.ENOENT
    with pytest.raises(FsError) as ei:  # PUT over an existing block: blocks are write-once
        nn.handlers.Presign(pb.PresignRequest(caller=ROOT, ino=ino, keys=[ref.key], put=True))
    assert ei.value.errno == errno.EEXIST


def test_gc_main_cli(nn: Namenode, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ino = _create(nn)
    _commit(nn, ino, 10, [_block(nn, ino, 0, b"c" * 10)], to_blocks=True)
    nn.ns.blocks.store.put(new_key(ino, 1), b"orphan")
    assert gc_main(["--data-dir", nn.settings.data_dir, "--grace", "0", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"orphans_deleted": 1' in out and '"referenced": 1' in out


def test_block_fsync_follows_the_metadata_durability(tmp_path: Path) -> None:
    from metafs.blockstore import open_store
    from metafs.config import load

    s = load(overrides={"data_dir": str(tmp_path)}, environ={})
    url = f"file://{tmp_path / 'blocks'}"
    assert open_store(url, s).fsync is False  # embedded SQLite NORMAL: not power-loss safe
    for durable in (s.with_(sqlite_synchronous="FULL"), s.with_(namenode="nn:7420"),
                    s.with_(db_url="postgresql://u@h/db"), s.with_(block_fsync="on")):
        assert open_store(url, durable).fsync is True
    assert open_store(url, s.with_(db_url="postgresql://u@h/db", block_fsync="off")).fsync \
        is False
    assert open_store(url).fsync is True  # no settings: the safe default


@pytest.mark.parametrize("where", ["tmp", "shm"])
def test_local_store_direct_writes_read_back_exactly(tmp_path: Path, where: str) -> None:
    """Blocks written past the page cache (O_DIRECT, from a page-aligned copy, with an
    unaligned tail written buffered) and small blocks written buffered read back byte for
    byte, on the test directory's file system and on tmpfs."""
    from metafs.blockstore.local import DIRECT_ALIGN, DIRECT_MIN

    if where == "shm":
        if not os.path.isdir("/dev/shm"):
            pytest.skip("no /dev/shm here")
        import tempfile

        root = Path(tempfile.mkdtemp(dir="/dev/shm"))
    else:
        root = tmp_path / "direct"
    store = LocalStore(str(root), fsync=True, direct=True)
    sizes = [DIRECT_MIN, DIRECT_MIN + 1, DIRECT_MIN + DIRECT_ALIGN - 1, 4 * 1024 * 1024,
             DIRECT_MIN - 1, 100]
    blobs = {new_key(7, i): os.urandom(n) for i, n in enumerate(sizes)}
    for k, v in blobs.items():
        store.put(k, v)
    for k, v in blobs.items():
        assert store.get(k) == v
        assert store.get(k, 5, 1000) == v[5:1000]
        assert (root / k).stat().st_size == len(v)
    assert not list((root / ".tmp").iterdir()) if (root / ".tmp").exists() else True
    if where == "shm":
        import shutil

        shutil.rmtree(root, ignore_errors=True)
