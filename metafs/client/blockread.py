"""The read path of files in blocks: :class:`ReadPattern` (adaptive read-ahead) and
:class:`BlockReads`, the reading half of :class:`~.blockfile.BlockFile`.

A reader is either sequential or random, and may switch. Each read is classified against
the end of the reads before it:

* **sequential** (it starts where the last one ended, or up to twice its length past: the
  kernel's own read-ahead sends several requests at once and they arrive in any order): after two in a
  row, whole blocks are fetched, and a read-ahead window of blocks is prefetched in
  parallel; it starts at one block and doubles with every further sequential read, up to
  ``block_readahead`` blocks;
* **random** (anywhere else): only the checksum pieces around the requested bytes are
  fetched (one ranged GET, from the local block cache when it holds the block), nothing is
  read ahead, and the window starts over;
* a read a little behind the last end (a late request of a burst) changes nothing.
"""

from __future__ import annotations

import errno
import logging
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable

from ..blockstore.base import (BlockIO, BlockNotFound, ChecksumError, checksum_pieces,
                               pieces_for, read_verified, verify)
from ..blockstore.cache import DiskCache, MemoryCache
from ..errors import FsError
from ..proto import metafs_pb2 as pb

if TYPE_CHECKING:
    from ..config import Settings
    from .blocks import BlockContext

log = logging.getLogger("metafs.client.blockfile")

SEQ_SLACK = 1024 * 1024  # the furthest past the last end a read may start and be sequential
SEQ_BEHIND = 8 * 1024 * 1024  # a read starting this far before it is a late request


def _zero(n: int) -> bytes:
    return bytes(n)


class ReadPattern:
    """How one open file is being read, and so how far to read ahead (in blocks).

    :meth:`observe` takes each read's range and returns the read-ahead window: 0 for a
    random reader (fetch only what is asked), else 1, 2, 4 ... up to ``limit`` blocks."""

    __slots__ = ("limit", "behind", "last_end", "streak", "window")

    def __init__(self, limit: int, behind: int = SEQ_BEHIND) -> None:
        self.limit = max(0, limit)
        self.behind = behind      # how far back a late request of a burst may start
        self.last_end = -1        # the furthest end of the reads so far
        self.streak = 0           # sequential reads in a row
        self.window = 0           # blocks to read ahead (0: random)

    def observe(self, offset: int, end: int) -> int:
        last = self.last_end
        # (a request of a burst may overtake the one before it: a read starting up to
        # twice its own length past the last end is still sequential)
        if last >= 0 and last <= offset <= last + min(SEQ_SLACK, 2 * (end - offset)):
            self.streak += 1
            self.last_end = end
            if self.streak >= 2 and self.limit:
                self.window = min(self.limit, max(1, self.window * 2))
        elif last >= 0 and last - self.behind <= offset < last:
            self.last_end = max(last, end)  # late or repeated: neither grows nor resets
        else:
            self.streak = 0
            self.window = 0
            self.last_end = end
        return self.window

    @property
    def sequential(self) -> bool:
        return self.window > 0


class BlockReads:
    """The reading methods of :class:`~.blockfile.BlockFile` (a part of that class; it
    holds the layout, this handle's unsent writes and the lock these use)."""

    name: Any
    _s: "Settings"
    _ctx: "BlockContext"
    _bs: int
    _bsize: int
    _dirty: dict[int, bytearray]
    _uploads: dict[int, Future[pb.BlockRef]]
    _mem: MemoryCache
    _prefetch: dict[str, Future[bytes]]
    _pattern: ReadPattern
    _lock: threading.RLock
    _ref: Callable[[int], pb.BlockRef | None]
    _pending_ref: Callable[[int], pb.BlockRef | None]
    _forget_layout: Callable[[], None]
    _store: Callable[[], BlockIO]
    _dc: Callable[[], DiskCache | None]
    ino: int

    def _plan_read(self, offset: int, size: int, ahead: int = 0) -> list[Any]:
        """What a read of ``[offset, offset + size)`` is made of, decided under the
        handle's lock: per chunk either its bytes (this handle's unsent or uncommitted
        writes, holes) or ``(idx, ref, lo, hi, whole)``, a span of an immutable block that
        :meth:`_read_planned` reads without the lock. A sequential reader gets up to
        ``ahead`` more bytes than it asked for (the mount's read-ahead buffer)."""
        end = min(offset + size, self._bsize)
        if offset >= end:
            return [b""]
        bs = self._bs
        window = self._pattern.observe(offset, end)
        if window and ahead > 0:
            end = min(end + ahead, self._bsize)
        whole = window > 0 or end - offset >= bs // 2
        first, last = offset // bs, (end - 1) // bs
        if window:
            self._readahead(last + 1, window)
        if last > first and whole:
            # several chunks at once: fetch them in parallel
            for idx in range(first, last + 1):
                self._prefetch_chunk(idx)
        plan: list[Any] = []
        for idx in range(first, last + 1):
            lo = max(offset, idx * bs) - idx * bs
            hi = min(end, (idx + 1) * bs) - idx * bs
            if idx in self._dirty or idx in self._uploads:
                plan.append(self._chunk_bytes(idx, lo, hi, whole=whole))
                continue
            ref = self._ref(idx)
            if ref is None or not ref.key:
                plan.append(_zero(hi - lo))
            else:
                plan.append((idx, ref, lo, hi, whole))
        return plan

    def _read_planned(self, idx: int, ref: pb.BlockRef, lo: int, hi: int,
                      whole: bool) -> bytes | bytearray | memoryview:
        """Bytes ``[lo, hi)`` of chunk ``idx``, stored in block ``ref`` (no lock held)."""
        top = min(hi, ref.length)
        try:
            part = self._from_block(ref, lo, top, whole) if lo < top else b""
        except (BlockNotFound, ChecksumError):
            # the layout may be older than a rewrite: the locked path reports and retries
            with self._lock:
                return self._chunk_bytes(idx, lo, hi, whole=whole)
        if len(part) < hi - lo:
            return bytes(part) + _zero(hi - lo - len(part))
        return part

    def _readahead(self, idx: int, window: int) -> None:
        last = (self._bsize - 1) // self._bs
        for i in range(idx, min(idx + window, last + 1)):
            self._prefetch_chunk(i)

    def _prefetch_chunk(self, idx: int) -> None:
        if idx in self._dirty or idx in self._uploads:
            return
        ref = self._ref(idx)
        if ref is None or ref.key in self._prefetch or self._mem.get(ref.key) is not None:
            return
        if len(self._prefetch) > 4 * max(1, self._s.block_readahead):
            for k, f in list(self._prefetch.items()):  # (readers pop entries meanwhile)
                if f.done():
                    self._prefetch.pop(k, None)
        self._prefetch[ref.key] = self._ctx.pool.submit(self._fetch_whole, ref)

    def _fetch_whole(self, ref: pb.BlockRef) -> bytes | bytearray:
        dc = self._dc()
        if dc is not None:
            data = dc.get(ref.key)
            if data is not None:
                try:
                    verify(ref.key, data, 0, ref.checksum, None)
                    if len(data) >= ref.length:
                        return data
                except ChecksumError:
                    pass
                log.warning("dropping cached copy of block %s: it failed its checksum", ref.key)
                dc.discard(ref.key)
        data = read_verified(self._store(), ref.key, ref.checksum, 0, ref.length)
        if dc is not None and len(data) == ref.length:
            dc.put(ref.key, data)
        return data

    def _chunk_bytes(self, idx: int, lo: int, hi: int,
                     whole: bool = False) -> bytes | bytearray | memoryview:
        """Bytes ``[lo, hi)`` of chunk ``idx`` as this handle sees it."""
        if hi <= lo:
            return b""
        buf = self._dirty.get(idx)
        if buf is not None:
            part = bytes(buf[lo:hi])
            return part + _zero(hi - lo - len(part))
        for attempt in (0, 1):
            ref = self._pending_ref(idx)
            if ref is None or not ref.key:
                return _zero(hi - lo)
            top = min(hi, ref.length)
            try:
                if lo >= top:
                    part = b""
                else:
                    part = self._from_block(ref, lo, top, whole)
            except (BlockNotFound, ChecksumError) as err:
                log.error("block %s (chunk %d of %s): %s", ref.key, idx, self.name, err.message)
                self._mem.clear()
                self._prefetch.pop(ref.key, None)
                if attempt == 0 and idx not in self._uploads:
                    # our layout may be older than a rewrite and its garbage collection
                    self._forget_layout()
                    self._ctx.forget_layout(self.ino)
                    continue
                raise FsError(errno.EIO, f"block {ref.key} of chunk {idx} is unreadable: "
                              f"{err.message}", self.name) from None
            if len(part) < hi - lo:
                return bytes(part) + _zero(hi - lo - len(part))
            return part
        raise AssertionError("unreachable")

    def _from_block(self, ref: pb.BlockRef, lo: int, hi: int,
                    whole: bool) -> bytes | bytearray | memoryview:
        """Bytes ``[lo, hi)`` of a block, a view of the whole block when it is in memory
        (or fetched whole). Safe without the handle's lock: concurrent readers of one
        block share its prefetch and its copy in memory."""
        key = ref.key
        data = self._mem.get(key)
        if data is None:
            fut = self._prefetch.get(key)
            if fut is not None:
                try:
                    data = fut.result()
                except BaseException:
                    self._prefetch.pop(key, None)
                    raise
                self._mem.put(key, data)
                self._prefetch.pop(key, None)
            elif whole:
                data = self._fetch_whole(ref)
                self._mem.put(key, data)
            else:
                return self._read_range(ref, lo, hi)
        if lo == 0 and hi >= len(data):
            return data
        return memoryview(data)[lo:hi]

    def _read_range(self, ref: pb.BlockRef, lo: int, hi: int) -> bytes | bytearray:
        """Bytes ``[lo, hi)`` of a block: the checksum pieces around them from the local
        cache when it holds the block, else with one ranged GET of those pieces (and the
        whole block goes into the cache in the background)."""
        dc = self._dc()
        if dc is not None:
            piece, total = checksum_pieces(ref.checksum)
            p0, p1 = lo // piece, min(total, pieces_for(hi, piece))
            if p0 < p1:
                data = dc.get_range(ref.key, p0 * piece, min(p1 * piece, ref.length))
                if data is not None:
                    try:
                        verify(ref.key, data, p0, ref.checksum, p1 - p0)
                        return data[lo - p0 * piece:hi - p0 * piece]
                    except ChecksumError:
                        log.warning("dropping cached copy of block %s: it failed its "
                                    "checksum", ref.key)
                        dc.discard(ref.key)
        data = read_verified(self._store(), ref.key, ref.checksum, lo, hi)
        if dc is not None:  # the next reads of this block are local
            self._ctx.fill_cache(ref.key, lambda: self._fetch_whole(ref))
        return data


__all__ = ["BlockReads", "ReadPattern"]
