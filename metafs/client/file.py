"""File objects: ``Client.open()`` gives a normal buffered binary (or text) file over
:class:`RawFile`, which reads and writes through the namenode for inline files.

The data path is kept behind :class:`RawFile`'s ``_read_at``/``_write_at``/``_truncate``
methods so that the block layer can take over for files above the inline limit.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import threading
from typing import TYPE_CHECKING, Any, Callable

from ..errors import FsError
from ..proto import metafs_pb2 as pb
from . import access

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger("metafs.client")


def parse_mode(mode: str) -> tuple[int, bool, bool]:
    """``open()`` mode string -> (os flags, binary, plus)."""
    chars = set(mode)
    if not mode or len(chars) != len(mode) or chars - set("rwaxbt+"):
        raise ValueError(f"invalid mode: {mode!r}")
    kinds = chars & set("rwax")
    if len(kinds) != 1 or ("b" in chars and "t" in chars):
        raise ValueError(f"invalid mode: {mode!r}")
    kind = kinds.pop()
    plus = "+" in chars
    flags = {
        "r": os.O_RDONLY,
        "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
        "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
        "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
    }[kind]
    if plus:
        flags = (flags & ~os.O_WRONLY) | os.O_RDWR
    return flags, "b" in chars, plus


class RawFile(io.RawIOBase):
    """Unbuffered access to one open metafs file (one namenode handle)."""

    def __init__(self, client: "Client", path: str, reply: pb.OpenReply, flags: int) -> None:
        super().__init__()
        self._client = client
        self.name = path
        self.mode_flags = flags
        self.handle = reply.handle
        self._session = client.session_epoch  # of the session ``handle`` belongs to
        self.fenced: int | None = None  # see fence()
        self._reopen_mu = threading.Lock()
        self.attr = reply.attr
        self.ino = reply.attr.ino
        self._pos = 0
        acc = flags & os.O_ACCMODE
        self._readable = acc in (os.O_RDONLY, os.O_RDWR)
        self._writable = acc in (os.O_WRONLY, os.O_RDWR)
        self._append = bool(flags & os.O_APPEND)
        self._did_read = self._did_write = False  # reported as an access event at close
        # A read-only open of an inline file came with the whole file (and no handle):
        # reads are served from it; reads past its end ask the namenode again.
        self._opened_data: bytes | None = reply.data if reply.has_data else None

    # -- io.RawIOBase
    def readable(self) -> bool:
        return self._readable

    def writable(self) -> bool:
        return self._writable

    def seekable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        self._check_open()
        if not self._readable:
            raise io.UnsupportedOperation("file not open for reading")
        view = memoryview(b).cast("B")
        data = self._read_at(self._pos, len(view))
        n = len(data)
        view[:n] = data
        self._pos += n
        self._did_read = True
        return n

    def write(self, b: Any) -> int:
        self._check_open()
        if not self._writable:
            raise io.UnsupportedOperation("file not open for writing")
        data = bytes(b)
        if not data:
            return 0
        end = self._write_at(self._pos, data, self._append)
        self._pos = end
        self._did_write = True
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_open()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size() + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if pos < 0:
            raise OSError(errno.EINVAL, "negative seek position", self.name)
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos

    def truncate(self, size: int | None = None) -> int:
        self._check_open()
        if not self._writable:
            raise io.UnsupportedOperation("file not open for writing")
        size = self._pos if size is None else size
        if size < 0:
            raise OSError(errno.EINVAL, "negative size", self.name)
        self._truncate(size)
        return size

    def close(self) -> None:
        if self.closed:
            return
        last, flushed, released = None, False, False
        try:
            last = self._last_write()
            if last is None:
                released = self._flush_final()
            flushed = True
        finally:
            super().close()
            if self.handle and not released:
                self._release(last)
        if flushed:  # provenance: this process read/wrote the file (at its new version)
            access.note_file_closed(self)

    def _release(self, last: tuple[int, bytes] | None) -> None:
        """Release the handle; with ``last``, write those bytes first, in the same call."""
        c = self._client
        if last is None and self._session != c.session_epoch:
            return  # the handle went with the session it was opened in

        def release(handle: int) -> pb.ReleaseRequest:
            req = pb.ReleaseRequest(caller=c.caller, handle=handle)
            if last is not None:
                req.write.CopyFrom(pb.WriteRequest(caller=c.caller, ino=self.ino,
                                                   offset=last[0], data=last[1], handle=handle))
            return req

        try:
            reply = self._with_handle("Release", release)
            if last is not None:
                self.attr = reply.attr
            return
        except OSError as exc:
            if last is None:
                return  # the session's lease reclaims the handle
            if exc.errno != errno.EFBIG:
                try:  # nothing was written (one transaction): free the handle, report
                    c._call("Release", pb.ReleaseRequest(caller=c.caller, handle=self.handle))
                except OSError:
                    pass
                raise
        # the file went to blocks meanwhile (another writer): write the ordinary way
        self._write_after_close(*last)
        c._call("Release", pb.ReleaseRequest(caller=c.caller, handle=self.handle), self.name)

    def _flush_final(self) -> bool:
        """Push buffered data at close; True when that also released the handle."""
        self._flush_data()
        return False

    def _last_write(self) -> tuple[int, bytes] | None:
        """Bytes still held back at close that the Release call can carry (offset, data);
        none for plain inline files (written at once)."""
        return None

    def _write_after_close(self, offset: int, data: bytes) -> None:
        self._write_at(offset, data, False)

    def fileno(self) -> int:
        raise io.UnsupportedOperation("metafs files have no OS file descriptor")

    # -- the namenode handle across sessions
    def fence(self) -> None:
        """A lock was taken through this file in the client's current session: what it
        writes from now on (and reads) may rely on that lock, so once the session is lost
        (and with it the lock, which another client may have taken since) its calls fail
        with EIO instead of going on in a new session, and what it buffered is never
        committed over the next holder's writes, until :meth:`unfence`."""
        self.fenced = self._client.session_epoch

    def unfence(self) -> None:
        """No lock taken through this file is held any more (what it wrote under them
        was committed before they were released): a lost session takes nothing from it."""
        self.fenced = None

    def current_handle(self) -> int:
        """This file's namenode handle (0: none) in the client's current session. A handle
        that went with a session the namenode lost (its lease ran out while the namenode
        could not be reached) is opened again first: the same inode with the same flags,
        and the permission checked again; EIO when that is impossible (the file was
        removed meanwhile and nothing else kept it, or its mode no longer allows it)."""
        c = self._client
        if not self.handle or self._session == c.session_epoch:
            return self.handle
        if self.fenced is not None:
            raise OSError(errno.EIO, "this file's handle was lost with the client's session, "
                          "and a lock taken through it with it: it is not opened again",
                          self.name)
        with self._reopen_mu:
            epoch = c.session_epoch
            if self._session == epoch:
                return self.handle  # reopened meanwhile by another thread
            flags = self.mode_flags & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC)
            try:
                reply = c._call("Open", pb.OpenRequest(caller=c.caller, ino=self.ino,
                                                       flags=flags), self.name)
            except OSError as exc:
                raise OSError(errno.EIO, "this file's handle was lost with the client's "
                              f"session and cannot be opened again: {exc.strerror}",
                              self.name) from None
            log.info("handle of inode %d opened again in the new session", self.ino)
            self.handle = reply.handle
            self._session = epoch
            return self.handle

    def _with_handle(self, method: str, make: Callable[[int], Any]) -> Any:
        """Call ``method`` with the request ``make(handle)`` builds for this file's handle
        (:meth:`current_handle`). EBADF for a handle of a session that the namenode lost
        before this client noticed (or ENOENT: the inode that handle alone kept is freed)
        is answered by opening it again and calling once more."""
        c = self._client
        handle = self.current_handle()
        try:
            return c._call(method, make(handle), self.name, self.fenced)
        except OSError as exc:
            if exc.errno not in (errno.EBADF, errno.ENOENT) or not handle \
                    or not self._handle_lost():
                raise
        return c._call(method, make(self.current_handle()), self.name, self.fenced)

    def _handle_lost(self) -> bool:
        """After EBADF (or ENOENT) for this file's handle: whether the session it belongs
        to is gone (the namenode is asked when this client has not noticed yet)."""
        c = self._client
        if self._session == c.session_epoch:
            try:
                c.renew_session()
            except FsError:
                return False
        return self._session != c.session_epoch

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file.")

    # -- the data path (inline files; the block layer overrides these)
    def _size(self) -> int:
        return self._client._call("GetAttr", pb.InodeRequest(
            caller=self._client.caller, ino=self.ino), self.name).size

    def _read_opened(self, offset: int, size: int) -> bytes | None:
        """Bytes from the data the open brought, or None to ask the namenode."""
        data = self._opened_data
        if data is None or offset >= len(data):
            return None
        return data[offset:offset + size]

    def _read_call(self, offset: int, size: int) -> pb.ReadReply | None:
        """Read from the namenode; None (end of file) when this reader holds no handle,
        read everything its open brought, and the file is gone meanwhile."""
        try:
            return self._with_handle("Read", lambda handle: pb.ReadRequest(
                caller=self._client.caller, ino=self.ino, offset=offset, size=size,
                handle=handle))
        except FileNotFoundError:
            if self.handle or self._opened_data is None:
                raise
            return None

    def _read_inline(self, offset: int, size: int) -> bytes | None:
        """Bytes of an inline file: from what the open brought, else from the namenode;
        None when the file's data is in blocks."""
        got = self._read_opened(offset, size)
        if got is not None:
            return got
        reply = self._read_call(offset, size)
        if reply is None:
            return b""
        if not reply.inline:
            return None
        self.attr = reply.attr
        return reply.data

    def _read_at(self, offset: int, size: int) -> bytes:
        got = self._read_inline(offset, size)
        if got is None:
            raise OSError(errno.EIO, "file data is in blocks and no block store is configured",
                          self.name)
        return got

    def _write_at(self, offset: int, data: bytes, append: bool) -> int:
        return self._write_call(offset, data, append)

    def _write_call(self, offset: int, data: bytes, append: bool,
                    truncate: bool = False) -> int:
        """One Write call (``truncate``: the data replaces the file's content); returns
        the offset after the data."""
        reply = self._with_handle("Write", lambda handle: pb.WriteRequest(
            caller=self._client.caller, ino=self.ino, offset=offset, data=data,
            handle=handle, append=append, truncate=truncate))
        self.attr = reply.attr
        return reply.offset + reply.written

    def _truncate(self, size: int) -> None:
        self.attr = self._with_handle("SetAttr", lambda handle: pb.SetAttrRequest(
            caller=self._client.caller, ino=self.ino, size=size, handle=handle))

    def _flush_data(self) -> None:
        """Push data buffered below the buffered layer (none for inline files)."""


def make_file(client: "Client", path: str, reply: pb.OpenReply, flags: int, *, binary: bool,
              buffering: int, encoding: str | None, errors: str | None,
              newline: str | None, raw_class: type[RawFile] | None = None) -> Any:
    raw = (raw_class or RawFile)(client, path, reply, flags)
    if flags & os.O_APPEND:
        raw.seek(0, io.SEEK_END)
    if buffering == 0:
        if not binary:
            raise ValueError("can't have unbuffered text I/O")
        return raw
    size = buffering if buffering > 1 else max(io.DEFAULT_BUFFER_SIZE, client.io_buffer_size)
    buffered: io.BufferedIOBase
    if raw.readable() and raw.writable():
        buffered = io.BufferedRandom(raw, size)
    elif raw.writable():
        buffered = io.BufferedWriter(raw, size)
    else:
        buffered = io.BufferedReader(raw, size)
    if binary:
        return buffered
    text = io.TextIOWrapper(buffered, encoding=encoding or "utf-8", errors=errors,
                            newline=newline, line_buffering=buffering == 1)
    text.mode = "r"  # type: ignore[misc]
    return text


def to_oserror(err: FsError, path: str) -> OSError:
    return err.to_oserror(path)
