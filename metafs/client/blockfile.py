"""Files in blocks: :class:`BlockFile`, the raw file a :class:`~metafs.client.Client`
opens, read and written straight from and to the block store above the inline limit.

Inline files keep using the namenode's Read/Write calls (:class:`~.file.RawFile`); a file
in blocks, or one that grows past the inline limit, is cut into ``block_size`` chunks.

Writing: changed chunks are buffered (a random write reads the chunk it changes first:
read-modify-write of the affected chunks only), finished chunks are uploaded in the
background as NEW blocks, and ``flush()``/``close()`` commits them with one CommitBlocks
call. Chunks of zeros are holes and store nothing. If an upload fails, nothing is committed
and the file keeps its previous version.

Reading: the layout is fetched on first use after open (close-to-open consistency), in
windows; random reads fetch only the checksum pieces they need (ranged GETs); sequential
reads fetch whole blocks in parallel with read-ahead; blocks are kept in a small memory
cache and, when ``block_cache_dir`` is set, in a size-bounded local cache directory.
"""

from __future__ import annotations

import errno
import io
import logging
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable

from ..blockstore.base import BlockIO, checksum, new_key
from ..blockstore.cache import DiskCache, MemoryCache
from ..blockstore.presigned import PresignedView
from ..buffers import address, memmove
from ..errors import FsError
from ..proto import metafs_pb2 as pb
from .blockread import BlockReads, ReadPattern, _zero
from .blocks import WINDOW, BlockContext, Layout
from .file import RawFile

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger("metafs.client.blockfile")

COPY_UNLOCKED = 64 * 1024  # writes this large are copied without the interpreter lock


_ZEROS: dict[int, bytes] = {}


def _all_zero(data: bytes | bytearray) -> bool:
    """True for a block of zeros (a hole), answered at memcmp speed: data with a non-zero
    first or last byte (nearly all data) costs nothing."""
    n = len(data)
    if not n or data[0] or data[-1]:
        return n == 0
    z = _ZEROS.get(n)
    if z is None:
        z = bytes(n)
        if len(_ZEROS) < 8:
            _ZEROS[n] = z
    return data == z


class BlockFile(BlockReads, RawFile):
    """A :class:`~metafs.client.file.RawFile` that also handles files in blocks."""

    def __init__(self, client: "Client", path: str, reply: pb.OpenReply, flags: int) -> None:
        super().__init__(client, path, reply, flags)
        self._ctx: BlockContext = client.blocks
        self._s = client.settings
        self._inline = reply.attr.inline
        self._bs = 0                            # chunk size, from the first layout
        self._bsize = reply.attr.size           # size in blocks mode (ours once dirty)
        self._version = reply.attr.version      # version our layout / writes are based on
        self._store_url = ""
        self._refs: dict[int, pb.BlockRef] = {}  # layout cache (holes absent)
        self._windows: set[int] = set()
        self._layout_version: int | None = None
        self._dirty: dict[int, bytearray] = {}   # chunk -> new content (may be short)
        self._dirty_bytes = 0
        self._uploads: dict[int, Future[pb.BlockRef]] = {}  # chunk -> upload (uncommitted)
        self._inline_data = b""
        self._to_blocks = False
        self._mem = MemoryCache(self._s.block_memory_cache)
        self._prefetch: dict[str, Future[bytes]] = {}
        self._pattern = ReadPattern(self._s.block_readahead)
        self._lock = threading.RLock()
        # An empty inline file needs no layout to be written: its chunks are all new.
        self._fresh = reply.attr.inline and reply.attr.size == 0
        self._pend: bytearray | None = None     # inline bytes held back (see _write_at)
        self._truncating = False                # see defer_truncate
        self._complete = False                  # _refs is the whole layout of its version
        self._urls: dict[str, str] = {}         # presigned GET URLs (block_presign)
        if not self._inline and not self._s.block_presign:  # (presigning needs URLs)
            lay = self._ctx.cached_layout(self.ino, reply.attr.version)
            if lay is not None and lay.size == reply.attr.size:
                self._adopt(lay)
            elif reply.HasField("layout"):  # the open brought the first window
                self._apply_layout(reply.layout, 0)

    # ------------------------------------------------------------ helpers
    @property
    def _c(self) -> "Client":
        return self._client

    def _oserror(self, err: FsError) -> OSError:
        return err.to_oserror(self.name)

    def _store(self) -> BlockIO:
        if self._s.block_presign:
            return PresignedView(self._ctx.store(self._store_url), self)  # type: ignore[arg-type]
        return self._ctx.store(self._store_url)

    def _dc(self) -> DiskCache | None:
        return self._ctx.disk_cache(self._store_url) if self._store_url else None

    def _adopt(self, lay: Layout) -> None:
        """Use a complete layout the client already knows for this version."""
        self._bs = lay.block_size
        self._store_url = lay.store_url
        self._refs = dict(lay.refs)
        self._windows.clear()
        self._layout_version = lay.version
        self._bsize = lay.size
        self._version = lay.version
        self._complete = True

    def _load_window(self, w: int) -> None:
        reply = self._with_handle("GetLayout", lambda handle: pb.LayoutRequest(
            caller=self._c.caller, ino=self.ino, handle=handle, first_index=w * WINDOW,
            count=WINDOW, presign=self._s.block_presign))
        self._apply_layout(reply, w)

    # presigned URLs (block_presign: this client has no store credentials)
    def presigned_url(self, key: str, put: bool, refresh: bool = False) -> str:
        """A URL to GET (or PUT) block ``key`` of this file, from the namenode."""
        if not put and not refresh:
            url = self._urls.get(key)
            if url:
                return url
        reply = self._with_handle("Presign", lambda handle: pb.PresignRequest(
            caller=self._c.caller, ino=self.ino, handle=handle, keys=[key], put=put))
        url = reply.urls[0]
        if not put:
            self._urls[key] = url
        return url

    def _apply_layout(self, reply: pb.LayoutReply, w: int) -> None:
        if self._layout_version is not None and reply.attr.version != self._layout_version:
            # the file changed between two windows: start over on the new version
            self._refs.clear()
            self._windows.clear()
        self._layout_version = reply.attr.version
        self._bs = reply.block_size
        self._store_url = reply.store_url
        self._ctx.learn(reply.block_size, reply.store_url)
        self.attr = reply.attr
        if not self._dirty and not self._uploads:
            self._bsize = reply.attr.size
            self._version = reply.attr.version
        for b in reply.blocks:
            self._refs[b.index] = b
        for b, url in zip(reply.blocks, reply.urls):
            self._urls[b.key] = url
        self._windows.add(w)
        if reply.attr.inline:
            self._inline_data = bytes(reply.inline_data)
        elif w == 0 and len(self._windows) == 1 \
                and (reply.attr.size + self._bs - 1) // self._bs <= WINDOW:
            # one window holds the whole file: remember it for the next open of this version
            self._complete = True
            self._ctx.remember_layout(self.ino, Layout(
                reply.attr.version, reply.attr.size, self._bs, self._store_url,
                dict(self._refs)))

    def _ref(self, idx: int) -> pb.BlockRef | None:
        if self._complete:
            return self._refs.get(idx)
        w = idx // WINDOW
        if w not in self._windows:
            self._load_window(w)
        return self._refs.get(idx)

    def _forget_layout(self) -> None:
        self._refs.clear()
        self._windows.clear()
        self._layout_version = None
        self._complete = False

    def _enter_blocks(self) -> None:
        """Switch this handle to the block path (the file is in blocks, or grows past the
        inline limit now). A file that was empty when this handle opened it and that this
        handle has not written inline needs no GetLayout once the client knows the chunk
        size and store: its layout is empty."""
        if self._truncating:
            self._send_truncate()
        self._inline_data = b""
        self._forget_layout()
        pend, self._pend = self._pend, None
        if self._fresh and self._ctx.block_size and self._ctx.store_url:
            self._bs = self._ctx.block_size
            self._store_url = self._ctx.store_url
            self._layout_version = self._version
            self._complete = True
            data, size, inline = b"", 0, True
        else:
            self._load_window(0)
            data, size, inline = self._inline_data, self.attr.size, self.attr.inline
            if inline:
                self._complete = True  # an inline file has no blocks: its layout is empty
        if pend:
            # inline bytes this handle held back go over what the file holds
            merged = bytearray(data)
            if len(merged) < len(pend):
                merged.extend(bytes(len(pend) - len(merged)))
            merged[:len(pend)] = pend
            data, size = bytes(merged), max(size, len(pend))
        if inline:
            # Move the inline bytes into chunk buffers; CommitBlocks(to_blocks) moves the file.
            bs = self._bs
            for i in range(0, len(data), bs):
                self._dirty[i // bs] = bytearray(data[i:i + bs])
                self._dirty_bytes += len(data[i:i + bs])
            self._bsize = size
            self._to_blocks = True
        self._inline = False
        self._fresh = False
        if pend and not inline:
            # the file went to blocks meanwhile (another writer): our bytes go over it
            self._write_blocks(0, bytes(pend))

    def _flush_pend(self) -> None:
        """Send inline bytes held back by :meth:`_write_at` (one Write call, which also
        empties the file first if its open's truncation is still to be sent), or that
        truncation alone when nothing is held back."""
        pend, self._pend = self._pend, None
        self._fresh = False
        if not pend:
            if self._truncating:
                self._send_truncate()
            return
        try:
            self._write_call(0, bytes(pend), False, truncate=self._truncating)
            self._truncating = False
        except OSError as exc:
            if exc.errno != errno.EFBIG:
                raise
            # the file moved to blocks meanwhile (another writer): write them as blocks
            self._pend = pend
            self._enter_blocks()

    def defer_truncate(self) -> None:
        """This file's open truncates it (O_TRUNC), and leaves the truncation to it: the
        file is empty to this handle from now on, and the truncation goes to the namenode
        with the first bytes written (one Write that replaces the file's content, when
        they fit inline), else alone (a SetAttr to 0) before anything reads the file or
        its size through this handle, before data goes to blocks, or at the commit."""
        with self._lock:
            self._truncating = True
            self._inline = True
            self._bsize = 0
            self._fresh = True
            self._inline_data = b""
            self._forget_layout()

    @property
    def pending_truncate(self) -> bool:
        """Whether a truncation left to this file (:meth:`defer_truncate`) is not sent yet."""
        return self._truncating

    def _send_truncate(self) -> None:
        """Send the truncation :meth:`defer_truncate` left to this file (a SetAttr; one
        that fails stays to be sent)."""
        RawFile._truncate(self, 0)
        self._truncating = False
        a = self.attr
        self._inline, self._bsize, self._version = a.inline, a.size, a.version
        self._fresh = a.inline and a.size == 0
        self._inline_data = b""
        self._forget_layout()

    # ------------------------------------------------------------ RawFile data path
    def _size(self) -> int:
        if self._pend is not None or self._truncating:
            self._flush_pend()
        if not self._inline and (self._dirty or self._uploads):
            return self._bsize
        a = self._c._call("GetAttr", pb.InodeRequest(caller=self._c.caller, ino=self.ino),
                          self.name)
        return a.size

    def _read_at(self, offset: int, size: int) -> bytes:
        data = self.read_view(offset, size)
        return data if type(data) is bytes else bytes(data)

    def read_view(self, offset: int, size: int,
                  ahead: int = 0) -> bytes | bytearray | memoryview:
        """Bytes ``[offset, offset + size)`` (fewer at the end of the file) as a buffer,
        which may be a view of a cached block: callers must not change it. When the reads
        of this file are sequential, up to ``ahead`` bytes past them come too (a caller's
        read-ahead buffer; see :class:`~.blockread.ReadPattern`).

        Reads of one handle run in parallel: the handle's lock covers only the planning
        (layout, read-ahead, this handle's own buffers); waiting for blocks, verifying
        and slicing them do not take it (blocks are immutable)."""
        with self._lock:
            if self._pend is not None or self._truncating:
                self._flush_pend()
            if self._inline:
                got = self._read_inline(offset, size)
                if got is not None:
                    return got
                self._enter_blocks()
            elif self._bs == 0:
                self._load_window(0)
            try:
                plan = self._plan_read(offset, size, ahead)
            except FsError as err:
                raise self._oserror(err) from None
        try:
            parts = [p if type(p) is not tuple else self._read_planned(*p) for p in plan]
        except FsError as err:
            raise self._oserror(err) from None
        if len(parts) == 1:
            return parts[0]
        return b"".join(parts)  # several chunks: one copy

    def _write_at(self, offset: int, data: bytes | bytearray | memoryview,
                  append: bool) -> int:
        """``data`` may be any buffer: it is copied, never kept."""
        with self._lock:
            if self._inline:
                if append:
                    offset = self._size()
                end = offset + len(data)
                limit = self._c.inline_limit
                if end <= limit:
                    if self._pend is not None or (self._fresh and (offset == 0
                                                                   or self._truncating)):
                        # A new file's first bytes are held back: if it grows past the
                        # inline limit (a buffered writer's first flush of a larger file)
                        # it goes straight to blocks; else they are written inline once,
                        # at flush or by the Release call at close (so are a truncated
                        # file's, wherever they start: it is empty before them).
                        pend = self._pend if self._pend is not None else bytearray()
                        if len(pend) < offset:
                            pend.extend(bytes(offset - len(pend)))
                        pend[offset:end] = data
                        self._pend = pend
                        return end
                    try:
                        self._fresh = False
                        return super()._write_at(offset, bytes(data), False)
                    except OSError as exc:
                        if exc.errno != errno.EFBIG:
                            raise
                self._enter_blocks()
            elif self._bs == 0:
                self._load_window(0)
            if append:
                offset = self._bsize
            try:
                self._write_blocks(offset, data)
            except FsError as err:
                raise self._oserror(err) from None
            return offset + len(data)

    def _truncate(self, size: int) -> None:
        with self._lock:
            self._commit()
            super()._truncate(size)
            self._inline = self.attr.inline
            self._bsize = self.attr.size
            self._version = self.attr.version
            self._fresh = False
            self._forget_layout()
            self._mem.clear()

    def readall(self) -> bytes:
        """The rest of the file in one go (one Read call for an inline file; the blocks
        fetched in parallel), instead of io's default of many small reads."""
        self._check_open()
        if not self._readable:
            raise io.UnsupportedOperation("file not open for reading")
        data = self._read_at(self._pos, 1 << 62)
        self._pos += len(data)
        self._did_read = True
        return data

    def _last_write(self) -> tuple[int, bytes] | None:
        with self._lock:
            if self._pend is None or not self._inline or self._dirty or self._uploads \
                    or self._truncating:
                return None
            pend, self._pend = self._pend, None
            self._fresh = False
            return 0, bytes(pend)

    def _write_after_close(self, offset: int, data: bytes) -> None:
        with self._lock:
            self._pend = bytearray(data)  # (offset is 0: held-back bytes start the file)
            self._commit()               # in blocks, if the file went there meanwhile

    def _flush_data(self) -> None:
        with self._lock:
            self._commit()

    def flush(self) -> None:
        """Commit written blocks (a metafs file's data is visible to others after this)."""
        if not self.closed:
            self._flush_data()
        super().flush()

    def close(self) -> None:
        try:
            super().close()
        finally:
            for f in list(self._prefetch.values()):
                f.cancel()
            self._prefetch.clear()
            self._mem.clear()

    # ------------------------------------------------------------ driven by offset
    # A mount names the offset of every read and write and commits at flush, fsync and
    # close; these are its entry points (with :meth:`read_view`).
    def write_at(self, offset: int, data: bytes | bytearray | memoryview,
                 append: bool = False) -> int:
        """Write ``data`` (any buffer: copied, never kept) at ``offset``, or at the end
        with ``append``; returns the offset after it. Block data stays buffered (and
        invisible to others) until :meth:`commit`."""
        return self._write_at(offset, data, append)

    def resize(self, size: int) -> None:
        """truncate(2) to ``size`` bytes (what this file buffered is committed first)."""
        self._truncate(size)

    def commit(self) -> None:
        """Make what was written visible to everyone (one CommitBlocks for block data)."""
        self._flush_data()

    def refresh(self, attr: "pb.Attr | Callable[[], pb.Attr]") -> bool:
        """Another open file committed a new version: drop the layout, size and version
        this file knows, so its next read or write starts from ``attr`` (or from what the
        callable returns, asked only when needed). Returns False, and changes nothing,
        while this file holds writes it has not committed (they go over the new version
        at the next commit)."""
        with self._lock:
            if self._dirty or self._uploads or self._pend is not None or self._truncating:
                return False
            if callable(attr):
                attr = attr()
            self.attr = attr
            self._inline = attr.inline
            self._bsize = attr.size
            self._version = attr.version
            self._inline_data = b""
            self._opened_data = None  # (what the open brought is of the old version)
            self._fresh = False
            self._forget_layout()
            self._bs = 0  # the layout is loaded again at the next read or write
            return True

    def adopt_handle(self, handle: int) -> None:
        """Hold namenode handle ``handle`` (from ``Inodes.open`` of this inode) from now on:
        a file opened without one keeps its access whatever the inode's mode becomes."""
        self.handle = handle
        self._session = self._c.session_epoch

    def discard(self) -> None:
        """Close a file opened without a namenode handle, after :meth:`commit`: nothing to
        release, and no access event (whoever drives it by offset records its own)."""
        io.RawIOBase.close(self)
        for f in list(self._prefetch.values()):
            f.cancel()
        self._prefetch.clear()
        self._mem.clear()

    # ------------------------------------------------------------ writing
    def _chunk_for_write(self, idx: int, lo: int, hi: int) -> bytearray:
        """The buffer of chunk ``idx``, loaded with its current bytes unless the write
        ``[lo, hi)`` (offsets inside the chunk) replaces all of them."""
        buf = self._dirty.get(idx)
        if buf is not None:
            return buf
        bs = self._bs
        start = idx * bs
        valid = max(0, min(bs, self._bsize - start))  # bytes of the chunk inside the file
        if lo == 0 and hi >= valid:
            # Nothing of the chunk's current bytes is kept: a buffer of the whole chunk at
            # once (zeros past the end of the file, cut off at upload), so a sequential
            # writer's pieces are copied into place instead of regrowing (and recopying)
            # the buffer at every write.
            buf = self._ctx.chunk_buffer(bs) if hi < bs else bytearray()
        else:
            buf = bytearray(self._chunk_bytes(idx, 0, valid))
        self._dirty[idx] = buf
        self._dirty_bytes += len(buf)
        return buf

    def _write_blocks(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` (any buffer; not kept after the call) into the chunk buffers."""
        bs = self._bs
        mv = memoryview(data)
        pos = offset
        end = offset + len(data)
        while pos < end:
            idx = pos // bs
            lo = pos - idx * bs
            hi = min(bs, lo + (end - pos))
            buf = self._chunk_for_write(idx, lo, hi)
            before = len(buf)
            if len(buf) < lo:
                buf.extend(bytes(lo - len(buf)))
            src = mv[pos - offset:pos - offset + (hi - lo)]
            if hi - lo >= COPY_UNLOCKED and len(buf) >= hi:
                memmove(address(buf) + lo, src, hi - lo)  # (other threads run meanwhile)
            else:
                buf[lo:hi] = src
            del src
            self._dirty_bytes += len(buf) - before
            pos += hi - lo
            if hi == bs and len(buf) == bs:
                # a finished chunk goes now (sequential writers)
                self._start_upload(idx, max(self._bsize, end))
        self._bsize = max(self._bsize, end)
        if self._dirty_bytes > self._s.block_write_buffer:
            for idx in list(self._dirty):
                self._start_upload(idx)

    def _start_upload(self, idx: int, size: int | None = None) -> None:
        """Upload chunk ``idx`` of a file of ``size`` bytes (default: the current size)."""
        buf = self._dirty.pop(idx)
        self._dirty_bytes -= len(buf)
        keep = max(0, (self._bsize if size is None else size) - idx * self._bs)
        if len(buf) > keep:
            del buf[keep:]  # the zeros of a whole-chunk buffer past the end of the file
        data = buf  # no longer written to: upload it as it is (a copy costs the GIL)
        old = self._uploads.pop(idx, None)
        if old is not None:
            old.cancel()  # superseded; if it ran, its block is an orphan for GC
        # bound the memory held by uploads in flight
        limit = max(2, self._s.block_write_buffer // max(self._bs, 1))
        busy = [f for f in self._uploads.values() if not f.done()]
        while len(busy) >= limit:
            try:
                busy[0].result()
            except Exception:  # noqa: BLE001 - reported by the commit
                pass
            busy = [f for f in busy if not f.done()]
        self._uploads[idx] = self._ctx.pool.submit(self._upload, idx, data)

    def _pending_ref(self, idx: int) -> pb.BlockRef | None:
        """The chunk's uploaded, not yet committed block, else its committed one."""
        fut = self._uploads.get(idx)
        if fut is not None:
            try:
                return fut.result()
            except FsError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise FsError(errno.EIO, f"block upload failed: {exc}") from None
        return self._ref(idx)

    def _upload(self, idx: int, data: bytearray) -> pb.BlockRef:
        """Store chunk buffer ``data`` (popped from ``_dirty``: nothing else refers to it)
        as a new block; a whole chunk's buffer is reused by later writes once stored."""
        if _all_zero(data):
            ref = pb.BlockRef(index=idx)  # a hole: nothing stored
        else:
            key = new_key(self.ino, idx)
            self._store().put(key, data)
            if self._s.block_cache_writes:
                dc = self._dc()
                if dc is not None:
                    dc.put(key, data)  # readers on this machine need not fetch it again
            ref = pb.BlockRef(index=idx, key=key, length=len(data),
                              checksum=checksum(data, self._s.block_checksum_piece))
        if type(data) is bytearray and len(data) == self._bs:
            self._ctx.recycle_chunk_buffer(data)
        return ref

    def _flush_final(self) -> bool:
        with self._lock:
            return self._commit(release=True)

    def _commit(self, release: bool = False) -> bool:
        """Upload what is written and commit it; with ``release`` (at close) the commit
        also releases the handle. True when it did."""
        if self._pend is not None or self._truncating:
            self._flush_pend()
        if self._inline or (not self._dirty and not self._uploads):
            return False
        for idx in list(self._dirty):
            self._start_upload(idx)
        refs: list[pb.BlockRef] = []
        failure: BaseException | None = None
        for idx, fut in sorted(self._uploads.items()):
            try:
                ref = fut.result()
            except BaseException as exc:  # noqa: BLE001 - reported below
                failure = failure or exc
                continue
            # a chunk wholly past the end (after a shrink) is not committed
            if ref.key and idx * self._bs >= self._bsize:
                continue
            refs.append(ref)
        self._uploads.clear()
        if failure is not None:
            self._dirty.clear()
            self._dirty_bytes = 0
            self._to_blocks = False
            # Nothing is committed: the file keeps its last version; uploaded blocks are
            # orphans for garbage collection.
            self._inline = self.attr.inline
            self._bsize = self.attr.size
            if isinstance(failure, FsError):
                raise self._oserror(FsError(errno.EIO, f"writing blocks failed; nothing was "
                                            f"committed: {failure.message}")) from None
            raise OSError(errno.EIO, f"writing blocks failed: {failure}", self.name)
        base, old_size = self._version, self.attr.size
        try:
            attr = self._with_handle("CommitBlocks", lambda handle: pb.CommitBlocksRequest(
                caller=self._c.caller, ino=self.ino, handle=handle, size=self._bsize,
                blocks=refs, base_version=base, to_blocks=self._to_blocks,
                release=release))
        except OSError:
            self._ctx.forget_layout(self.ino)
            raise
        self.attr = attr
        self._to_blocks = False
        self._version = attr.version
        size = self._bsize
        self._bsize = attr.size
        for r in refs:
            if r.key:
                self._refs[r.index] = r
            else:
                self._refs.pop(r.index, None)
        self._layout_version = attr.version
        # Our layout is the new version's whole layout if it was complete, nobody else
        # committed in between and the namenode shortened nothing.
        if self._complete and attr.version == base + 1 and attr.size == size >= old_size:
            self._ctx.remember_layout(self.ino, Layout(attr.version, attr.size, self._bs,
                                                       self._store_url, dict(self._refs)))
        else:
            self._complete = False
            self._ctx.forget_layout(self.ino)
        return release


__all__ = ["BlockFile"]
