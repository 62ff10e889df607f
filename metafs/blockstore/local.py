"""A block store in a local directory (``file:///path``).

A block is written to a temporary file under ``.tmp/``, fsynced, renamed to its key and its
directory fsynced, so a block is durable before ``put`` returns and a crash leaves at worst
a temporary file (listed under ``.tmp/`` so garbage collection removes it). Without
``fsync`` (``block_fsync``: an embedded namenode on SQLite NORMAL, whose commits are not
power-loss durable either) the same steps run without the two fsyncs: a block is complete
in the page cache before ``put`` returns, which any process crash survives.

With ``direct`` (``block_direct_writes``) a block of ``DIRECT_MIN`` bytes or more is written
with O_DIRECT from a page-aligned copy, past the page cache (see ``_write_direct``); other
writes go through the page cache in pieces of ``WRITE_PIECE`` bytes.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import threading
import uuid
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlparse

from ..buffers import address as _address, memmove
from ..errors import FsError
from .base import BlockInfo, BlockNotFound, BlockStore, check_key

TMP = ".tmp"
WRITE_PIECE = 1 << 20  # bytes per write(2) of a block
DIRECT_MIN = 2 * 1024 * 1024  # blocks at least this large are written with O_DIRECT (direct):
# chunks of large files; small files' blocks stay in the page cache for their readers
DIRECT_ALIGN = 4096      # O_DIRECT: offsets, lengths and memory aligned to this
BOUNCE_BUFFERS = 4       # page-aligned buffers kept for O_DIRECT writes, per store


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data`` to ``fd`` in pieces of ``WRITE_PIECE`` bytes: one write(2) of
    a whole 4 MiB block into the page cache was measured ten times slower than four of
    1 MiB (Linux 6.18, ext4: the kernel's copy into the page cache)."""
    mv = memoryview(data).cast("B")
    while mv:
        n = os.write(fd, mv[:WRITE_PIECE])
        mv = mv[n:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStore(BlockStore):
    """Blocks as files under one directory."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True,
                 direct: bool = False) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.direct = direct and hasattr(os, "O_DIRECT")
        self._bounce: list[mmap.mmap] = []  # idle page-aligned buffers (O_DIRECT writes)
        self._bounce_lock = threading.Lock()
        self.url = self.root.resolve().as_uri() if self.root.exists() else self.root.as_uri()
        try:
            (self.root / TMP).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FsError(exc.errno or errno.EIO, f"cannot create block directory: {exc}",
                          str(self.root)) from None
        self.url = self.root.resolve().as_uri()
        self._prefix = os.path.join(str(self.root), "")

    @classmethod
    def from_url(cls, url: str, *, fsync: bool = True, direct: bool = False) -> "LocalStore":
        u = urlparse(url)
        if u.scheme != "file" or u.netloc not in ("", "localhost"):
            raise FsError(errno.EINVAL, f"not a local block store URL: {url!r}")
        return cls(unquote(u.path), fsync=fsync, direct=direct)

    def _path(self, key: str) -> Path:
        if key.startswith(TMP + "/"):  # unfinished uploads, for garbage collection
            check_key(key[len(TMP) + 1:])
            return self.root / key
        return self.root / check_key(key)

    def _file(self, key: str) -> str:
        """The file of block ``key`` as a string: a read of a few KiB costs less than
        building its :class:`Path` did."""
        if key.startswith(TMP + "/"):
            return str(self._path(key))
        return self._prefix + check_key(key)

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        path = self._path(key)
        tmp = self.root / TMP / uuid.uuid4().hex
        try:
            made_dir = not path.parent.exists()
            path.parent.mkdir(parents=True, exist_ok=True)
            if not (self.direct and len(data) >= DIRECT_MIN and self._write_direct(tmp, data)):
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    write_all(fd, data)
                    if self.fsync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
            for attempt in range(5):
                try:
                    os.replace(tmp, path)
                    break
                except FileNotFoundError:
                    # a concurrent delete removed the emptied directory: make it again
                    if attempt == 4:
                        raise
                    path.parent.mkdir(parents=True, exist_ok=True)
                    made_dir = True
            if self.fsync:
                _fsync_dir(path.parent)
                if made_dir:
                    _fsync_dir(path.parent.parent)
        except OSError as exc:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise FsError(errno.EIO, f"cannot store block {key}: {exc}", key) from None

    def _write_direct(self, tmp: Path, data: bytes | bytearray | memoryview) -> bool:
        """Write ``data`` as the new file ``tmp`` with O_DIRECT, from a page-aligned copy
        (False: not done, the caller writes it through the page cache). The block goes
        to the disk without a copy in the page cache: fresh page-cache pages cost more
        than the disk write on machines that hand free memory back to their host, and
        readers of the mount are served from the mount's own page cache anyway."""
        n = len(data)
        cap = -(-n // DIRECT_ALIGN) * DIRECT_ALIGN
        with self._bounce_lock:
            buf = next((b for b in self._bounce if len(b) >= cap), None)
            if buf is not None:
                self._bounce.remove(buf)
        if buf is None:
            buf = mmap.mmap(-1, cap)  # anonymous: page-aligned
        try:
            memmove(_address(buf), data, n)  # (without the interpreter lock)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DIRECT, 0o644)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.direct = False  # this file system has no O_DIRECT
                return False
            try:
                mv = memoryview(buf)
                try:
                    aligned = n - n % DIRECT_ALIGN
                    pos = 0
                    while pos < aligned:
                        done = os.pwrite(fd, mv[pos:aligned], pos)
                        pos += done
                        if done % DIRECT_ALIGN:
                            break  # a short write: the rest through the page cache
                    if pos < n:
                        fcntl.fcntl(fd, fcntl.F_SETFL,
                                    fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
                        while pos < n:
                            pos += os.pwrite(fd, mv[pos:min(n, pos + WRITE_PIECE)], pos)
                finally:
                    del mv
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            return True
        finally:
            with self._bounce_lock:
                if len(self._bounce) < BOUNCE_BUFFERS:
                    self._bounce.append(buf)
                    buf = None
            if buf is not None:
                buf.close()

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes | bytearray:
        """The bytes are read straight into the ``bytes`` returned (``os.pread``: no
        further copy, and no zero-filled buffer first: a fresh 4 MiB ``bytearray`` costs a
        memset of the whole block before the read, a 16 KiB one twice a pread's time)."""
        if start < 0 or (end is not None and end < start):
            raise FsError(errno.EINVAL, f"bad range [{start}, {end}) for block {key}")
        try:
            fd = os.open(self._file(key), os.O_RDONLY)
        except FileNotFoundError:
            raise BlockNotFound(key) from None
        except OSError as exc:
            raise FsError(errno.EIO, f"cannot read block {key}: {exc}", key) from None
        try:
            if end is None:
                end = max(start, os.fstat(fd).st_size)
            want = end - start
            data = os.pread(fd, want, start) if want else b""
            if 0 < len(data) < want:  # a short read before the end (rare): read on
                parts, got = [data], len(data)
                while got < want:
                    more = os.pread(fd, want - got, start + got)
                    if not more:
                        break
                    parts.append(more)
                    got += len(more)
                data = b"".join(parts)
            return data
        except OSError as exc:
            raise FsError(errno.EIO, f"cannot read block {key}: {exc}", key) from None
        finally:
            os.close(fd)

    def head(self, key: str) -> BlockInfo | None:
        try:
            st = os.stat(self._file(key))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise FsError(errno.EIO, f"cannot stat block {key}: {exc}", key) from None
        return BlockInfo(key, st.st_size, st.st_mtime)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise FsError(errno.EIO, f"cannot delete block {key}: {exc}", key) from None
        if path.parent not in (self.root, self.root / TMP):
            try:  # drop the per-inode directory once it is empty
                path.parent.rmdir()
            except OSError:
                pass

    def list(self, prefix: str = "") -> Iterator[BlockInfo]:
        root = str(self.root)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, root)
            rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
            for name in sorted(filenames):
                key = rel_dir + name
                if not key.startswith(prefix):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue
                yield BlockInfo(key, st.st_size, st.st_mtime)

    def presign(self, key: str, put: bool = False, expires: float = 900.0) -> str:
        # A local directory is only reachable by clients on this machine: the URL is
        # the file itself.
        return self._path(key).as_uri()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"
