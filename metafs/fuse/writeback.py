"""Write-back buffering of a mount's open files.

Small writes that continue each other are gathered in the open file's buffer (up to
``fuse_write_buffer`` bytes) and reach the client's file in one piece; large writes go
through unbuffered. Buffered writes are committed (and so made visible to everyone) at
flush, fsync and close, before anything reads the file's data or size through this mount,
and before another open file of the same inode writes (writes reach a file in the order
they were made). A failure of a commit that nobody waits for is kept on the open file and
reported at its next write, flush or close.
"""

from __future__ import annotations

import errno
import time
from typing import Callable

from ..proto import metafs_pb2 as pb
from .cache import MountCache
from .handles import FuseError, Handle

LARGE_WRITE = 128 * 1024  # writes this large go to the data path unbuffered


class WriteBack:
    """The buffered writes of one mount, by inode; ``committed(h)`` is called after each
    commit of open file ``h`` that wrote."""

    def __init__(self, cache: MountCache, write_buffer: int,
                 committed: Callable[[Handle], None]) -> None:
        self.cache = cache
        self.write_buffer = max(0, write_buffer)
        self._committed = committed
        self.dirty: dict[int, set[Handle]] = {}  # ino -> open files holding buffered writes
        self._epoch: dict[int, int] = {}  # data generation per inode (read-ahead validity)

    def epoch(self, ino: int) -> int:
        """The data generation of ``ino``: read-ahead buffers of another are stale."""
        return self._epoch.get(ino, 0)

    def bump(self, ino: int) -> None:
        """The data of ``ino`` changed."""
        self._epoch[ino] = self._epoch.get(ino, 0) + 1

    def truncating(self, h: Handle) -> None:
        """``h``'s open truncated the file and left the truncation to its file (sent with
        its first write): until it is sent it counts as a buffered write."""
        self.dirty.setdefault(h.ino, set()).add(h)
        self.bump(h.ino)

    def truncated(self, ino: int) -> pb.Attr | None:
        """The attributes of ``ino`` when all this mount holds back of it is an open's
        truncation (its open file's attributes are those of the emptied file, so its size
        and attributes need nothing sent: Python's open() asks fstat before it writes);
        None otherwise."""
        attr = None
        for h in list(self.dirty.get(ino, ())):
            if h.did_write or h.buf or not h.raw.pending_truncate:
                return None
            attr = h.raw.attr
        return attr

    def write(self, h: Handle, data: bytes | memoryview, offset: int) -> None:
        """``data`` may be a view of libfuse's request buffer: it is copied, never kept."""
        n = len(data)
        others = self.dirty.get(h.ino)
        if others and (len(others) > 1 or h not in others):
            # writes through several handles of one file must reach it in the order they
            # were made: commit what the other handles hold before buffering this one
            for o in list(others):
                if o is not h:
                    with o.lock:
                        try:
                            self.commit(o)
                        except OSError as err:
                            o.error = err
        with h.lock:
            h.did_write = True
            h.io_ns = time.time_ns()
            if h.buf and (h.append or h.buf_off + len(h.buf) == offset) \
                    and len(h.buf) + n <= self.write_buffer:
                h.buf += data
            else:
                self.push(h)
                if n >= min(self.write_buffer, LARGE_WRITE):
                    self.write_through(h, offset, data)
                else:
                    h.buf = bytearray(data)
                    h.buf_off = offset
            self.dirty.setdefault(h.ino, set()).add(h)
        self.bump(h.ino)

    def write_through(self, h: Handle, offset: int,
                      data: bytes | bytearray | memoryview) -> None:
        """Write to the client's file now (caller holds ``h.lock``)."""
        try:
            h.raw.write_at(offset, data, h.append)
        except OSError as err:
            self.cache.forget_ino(h.ino)
            raise FuseError(err.errno or errno.EIO, str(err)) from None
        self.cache.forget_ino(h.ino)  # size and times changed (maybe not committed yet)

    def push(self, h: Handle) -> None:
        """Send the handle's buffered writes to its file (caller holds ``h.lock``)."""
        if not h.buf:
            return
        data, off = h.buf, h.buf_off
        h.buf = bytearray()  # (the old buffer is handed over, not copied)
        self.write_through(h, off, data)

    def commit(self, h: Handle) -> None:
        """Push buffered writes and make them visible to everyone (the client's file
        commits what it buffers, e.g. blocks, and a truncation its open left to it);
        caller holds ``h.lock``."""
        changed = h.did_write or h.raw.pending_truncate
        try:
            self.push(h)
            if changed:
                h.raw.commit()
        except OSError as err:
            self.cache.forget_ino(h.ino)
            raise FuseError(err.errno or errno.EIO, str(err)) from None
        finally:
            s = self.dirty.get(h.ino)
            if s is not None:
                s.discard(h)
                if not s:
                    self.dirty.pop(h.ino, None)
        if changed:
            self._committed(h)

    def flush_ino(self, ino: int) -> None:
        """Commit every buffered write to ``ino`` (before anything reads its data or size)."""
        for h in list(self.dirty.get(ino, ())):
            with h.lock:
                try:
                    self.commit(h)
                except OSError as err:
                    h.error = err  # reported to the writer at its next write/flush/close
