"""The block store contract as test classes (see :mod:`metafs.blockstore.base`).

Subclass :class:`BlockStoreTests` and provide a ``store`` fixture that returns a fresh,
empty store of your implementation::

    class TestMyStore(BlockStoreTests):
        @pytest.fixture
        def store(self, tmp_path):
            return MyStore(tmp_path / "blocks")

:class:`BlockIOTests` is the part of the contract a file's reader and writer use (ranged
get, whole-block put); a view that offers only that, such as a presigned-URL view, runs it
with a ``store`` fixture that returns the view.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from typing import Any

import pytest

from ..blockstore.base import BlockIO, BlockNotFound, BlockStore, ChecksumError, checksum, \
    read_verified
from ..errors import FsError
from .threads import run_threads

PIECE = 4096
"""The checksum piece size the suites use."""

MALFORMED_KEYS = ["", "/abs", "a/../b", "a//b", "a/", "sp ace", "x" * 600, "../up", "bad\0nul"]


class BlockIOTests:
    """Ranged reads and whole-block writes. Subclasses provide the ``store`` fixture: a
    fresh :class:`~metafs.blockstore.base.BlockIO` with no blocks in it."""

    @pytest.fixture
    def store(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must provide a 'store' fixture")

    def test_put_get_roundtrip(self, store: BlockIO) -> None:
        data = os.urandom(100_000)
        store.put("7/0-a", data)
        assert store.get("7/0-a") == data

    def test_ranged_get(self, store: BlockIO) -> None:
        data = bytes(range(256)) * 40
        store.put("7/1-b", data)
        assert store.get("7/1-b", 10, 20) == data[10:20]
        assert store.get("7/1-b", 5000) == data[5000:]
        assert store.get("7/1-b", 10000, 20000) == data[10000:]   # past the end: short
        assert store.get("7/1-b", len(data), len(data) + 5) == b""
        assert store.get("7/1-b", 20000, 20010) == b""
        assert store.get("7/1-b", 3, 3) == b""

    def test_empty_block(self, store: BlockIO) -> None:
        store.put("7/2-e", b"")
        assert store.get("7/2-e") == b""
        assert store.get("7/2-e", 0, 10) == b""

    def test_missing_block_is_enoent(self, store: BlockIO) -> None:
        with pytest.raises(BlockNotFound) as ei:
            store.get("7/404-x")
        assert ei.value.errno == errno.ENOENT
        with pytest.raises(BlockNotFound):
            store.get("7/404-x", 10, 20)

    def test_large_block(self, store: BlockIO) -> None:
        data = os.urandom(4 << 20)
        store.put("11/0-big", data)
        assert store.get("11/0-big") == data
        assert store.get("11/0-big", (4 << 20) - 7) == data[-7:]

    def test_put_keeps_the_bytes_it_was_given(self, store: BlockIO) -> None:
        """A stored block does not change when the caller reuses its buffer (writers
        recycle their chunk buffers as soon as put returns)."""
        buf = bytearray(b"a" * 10_000)
        store.put("13/0-m", buf)
        store.put("13/1-v", memoryview(buf)[100:200])
        buf[:] = b"b" * 10_000
        assert store.get("13/0-m") == b"a" * 10_000
        assert store.get("13/1-v") == b"a" * 100

    def test_checksum_verified_ranged_reads(self, store: BlockIO) -> None:
        data = os.urandom(5 * PIECE + 123)
        cs = checksum(data, PIECE)
        store.put("12/0-c", data)
        for lo, hi in [(0, 1), (PIECE - 1, PIECE + 1), (3 * PIECE + 5, len(data)),
                       (0, len(data)), (len(data) - 1, len(data) + 100)]:
            assert read_verified(store, "12/0-c", cs, lo, hi) == data[lo:hi]
        # a block stored short (lost its tail) fails its checksum
        store.put("12/1-short", data[: 3 * PIECE])
        with pytest.raises(ChecksumError):
            read_verified(store, "12/1-short", cs, 0, len(data))

    def test_concurrent_puts_and_gets(self, store: BlockIO) -> None:
        """Stores are shared by a file's upload and prefetch threads: puts and gets from
        several threads at once each see whole blocks."""
        blobs = {f"14/{t}-{i}": os.urandom(1000 + 97 * t + i) for t in range(6)
                 for i in range(8)}
        start = threading.Barrier(6)

        def worker(t: int) -> None:
            start.wait()
            mine = [k for k in blobs if k.startswith(f"14/{t}-")]
            for k in mine:
                store.put(k, blobs[k])
            for k in blobs:  # others' blocks: whole, or not there yet
                try:
                    got = store.get(k)
                except BlockNotFound:
                    continue
                assert got == blobs[k], k

        run_threads(6, worker)
        for k, v in blobs.items():
            assert store.get(k) == v


class BlockStoreTests(BlockIOTests):
    """The whole :class:`~metafs.blockstore.base.BlockStore` contract. Subclasses provide
    the ``store`` fixture: a fresh, empty store."""

    def test_store_is_a_block_store(self, store: BlockStore) -> None:
        assert isinstance(store, BlockStore)
        assert isinstance(store.url, str) and store.url

    def test_fresh_store_is_empty(self, store: BlockStore) -> None:
        assert list(store.list()) == []

    def test_head_and_exists(self, store: BlockStore) -> None:
        data = os.urandom(100_000)
        store.put("7/0-a", data)
        assert store.exists("7/0-a")
        info = store.head("7/0-a")
        assert info is not None and info.size == len(data) and info.key == "7/0-a"
        assert abs(info.mtime - time.time()) < 3600
        store.put("7/2-e", b"")
        assert store.head("7/2-e").size == 0  # type: ignore[union-attr]

    def test_missing_block_has_no_head(self, store: BlockStore) -> None:
        assert store.head("7/404-x") is None
        assert not store.exists("7/404-x")

    def test_delete_is_idempotent(self, store: BlockStore) -> None:
        store.put("8/0-d", b"x")
        store.delete("8/0-d")
        store.delete("8/0-d")
        assert not store.exists("8/0-d")
        with pytest.raises(BlockNotFound):
            store.get("8/0-d")
        store.delete("8/never-stored")

    def test_list_and_delete_many(self, store: BlockStore) -> None:
        keys = [f"9/{i}-k" for i in range(25)] + ["10/0-z", "90/0-y"]
        for k in keys:
            store.put(k, k.encode())
        listed = {b.key: b.size for b in store.list("9/")}
        assert listed == {k: len(k) for k in keys[:25]}
        assert {b.key for b in store.list()} == set(keys)
        assert store.delete_many(keys[:20]) == 20
        assert {b.key for b in store.list("9/")} == set(keys[20:25])
        assert store.delete_many([]) == 0

    @pytest.mark.parametrize("key", MALFORMED_KEYS)
    def test_malformed_keys(self, store: BlockStore, key: str) -> None:
        with pytest.raises(FsError) as ei:
            store.put(key, b"x")
        assert ei.value.errno == errno.EINVAL

    def test_malformed_keys_on_every_operation(self, store: BlockStore) -> None:
        for key in ("a/../b", "/abs"):
            for op in (lambda: store.get(key), lambda: store.head(key),
                       lambda: store.delete(key)):
                with pytest.raises(FsError) as ei:
                    op()
                assert ei.value.errno == errno.EINVAL, key
        assert list(store.list()) == []

    def test_bad_ranges_are_einval(self, store: BlockStore) -> None:
        store.put("15/0-r", b"0123456789")
        for start, end in ((-1, None), (5, 2)):
            with pytest.raises(FsError) as ei:
                store.get("15/0-r", start, end)
            assert ei.value.errno == errno.EINVAL

    def test_presigned_urls_or_eopnotsupp(self, store: BlockStore) -> None:
        """A store that presigns gives URLs a client without credentials can GET and PUT
        through (:class:`~metafs.blockstore.presigned.PresignedStore`); one that cannot
        says EOPNOTSUPP."""
        from ..blockstore.presigned import PresignedStore
        from ..config import load

        store.put("16/0-p", b"presigned data")
        try:
            get_url = store.presign("16/0-p")
        except FsError as exc:
            assert exc.errno == errno.EOPNOTSUPP
            pytest.skip(f"{type(store).__name__} does not presign URLs")
        http = PresignedStore(store.url, load(environ={}))
        try:
            assert http.get_url(get_url, "16/0-p") == b"presigned data"
            assert http.get_url(get_url, "16/0-p", 4, 8) == b"igne"
            http.put_url(store.presign("16/1-q", put=True), "16/1-q", b"uploaded")
            assert store.get("16/1-q") == b"uploaded"
        finally:
            http.close()
