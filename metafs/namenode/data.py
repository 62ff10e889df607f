"""Open handles and the data of inline files: open, release, read, write, truncate.

Part of :class:`~metafs.namenode.namespace.Namespace` (a mixin: its methods use the
namespace's row helpers and transactions)."""

from __future__ import annotations

import errno
import os
import secrets
import stat
from typing import Any

from sqlalchemy import bindparam, delete, insert, select
from sqlalchemy.engine import Connection, Row

from ..errors import FsError
from ..posix import R, W, Cred, allowed, check
from ..proto import metafs_pb2 as pb
from . import schema
from .lookups import reach_checked
from .rows import (ATTR_COLS, BUMP, CALLER, FD, H, I, MAX_FILE_SIZE, Q_DELETE_DATA,
                   Q_INSERT_DATA, Q_UPDATE_DATA, STORAGE_INLINE, Tx, kill_priv, to_attr,
                   update_inode)
from .sql import Prepared

S = schema.sessions

_Q_INSERT_HANDLE = Prepared(insert(H).values(id=bindparam("id"), ino=bindparam("ino"),
                                             session=bindparam("session"),
                                             flags=bindparam("flags"),
                                             opened_ns=bindparam("opened_ns")))
# a handle with the identity that owns its session (a handle outlives no session)
_Q_HANDLE = Prepared(select(H.c.flags, H.c.session, S.c.owner)
                     .select_from(H.join(S, S.c.id == H.c.session))
                     .where(H.c.id == bindparam("hid"), H.c.ino == bindparam("ino")))
_Q_INLINE = Prepared(select(FD.c.data).where(FD.c.ino == bindparam("ino")))
# an inode's attributes and its inline data (NULL when it has none, or when the inode is at
# data version :have: the caller holds those bytes), in one statement
_Q_ATTR_DATA = Prepared(select(*ATTR_COLS, FD.c.data.label("data")).select_from(I.outerjoin(
    FD, (FD.c.ino == I.c.id) & (I.c.version != bindparam("have"))))
    .where(I.c.id == bindparam("ino")))
_Q_HANDLE_BY_ID = Prepared(select(H.c.ino, H.c.session, S.c.owner)
                           .select_from(H.join(S, S.c.id == H.c.session))
                           .where(H.c.id == bindparam("hid")))
_HANDLE_MAX = (1 << 63) - 1


def _owns(row: Row | None, cred: Cred | None) -> bool:
    """True when ``row`` (a handle with its session's owner) is ``cred``'s: named by the
    caller's session, and that session opened by the caller's identity."""
    return (row is not None and cred is not None and row.session == (cred.client_id or "")
            and row.owner == cred.identity)
_Q_DELETE_HANDLE = Prepared(delete(H).where(H.c.id == bindparam("hid")))
# a row here means the session already holds ``skip + 1`` handles (an index range scan, no count)
_Q_NTH_HANDLE = Prepared(select(H.c.id).where(H.c.session == bindparam("session"))
                         .limit(1).offset(bindparam("skip")))


class FileData:
    """Open handles and the data of inline files: open, release, read, write, truncate."""

    # ------------------------------------------------------------------ handles
    def open(self, cred: Cred, ino: int, flags: int, *, read_inline: bool = False
             ) -> pb.OpenReply:
        self._opening(cred, flags)
        reply = None
        if read_inline and flags & (os.O_ACCMODE | os.O_TRUNC) == os.O_RDONLY:
            # A reader of an inline file gets all of it now: no handle, and so no write
            # transaction (the handle would only keep data alive that it already has).
            reply = self.query(lambda conn: self._open_inline(conn, cred, ino))
        if reply is None:
            reply = self.mutate(cred, lambda tx: self._open(tx, ino, flags))
        self._opened(cred, flags, reply.attr)
        return reply

    def open_attr(self, cred: Cred, ino: int, flags: int, *, read_inline: bool = False,
                  have_version: int | None = None) -> pb.Attr:
        """The attributes of ``ino`` for an open without a handle (the reads and writes
        through it are checked one by one), checked and recorded as :meth:`open` does.
        With ``read_inline``, a read-only open of an inline file the caller may read gets
        its data too (``inline_data``), or, when the file is at ``have_version``, word
        that the caller's copy is current (``inline_current``)."""
        self._opening(cred, flags)
        attr = None
        if read_inline and flags & (os.O_ACCMODE | os.O_TRUNC) == os.O_RDONLY:
            attr = self._attr_with_data(cred, ino, have_version)
        if attr is None:
            attr = self.getattr(cred, ino)
        self._opened(cred, flags, attr)
        return attr

    def _attr_with_data(self, cred: Cred, ino: int, have: int | None) -> pb.Attr | None:
        """The attributes of linked inode ``ino`` with its inline data (see
        :meth:`open_attr`), read in one statement; None when :meth:`getattr` must decide
        (no such inode, or one whose last name is gone)."""
        if reach_checked(cred, ino):
            self.check_reachable(cred, ino)
        row = self.engine.read_statement(lambda conn: _Q_ATTR_DATA.first(
            conn, ino=ino, have=-1 if have is None else have))
        if row is None or row.nlink == 0:
            return None
        attr = to_attr(row)
        # the read permission is the caller's: one who may only stat the file gets no data,
        # and no word that a copy it holds is current
        if (stat.S_ISREG(row.mode) and row.storage == STORAGE_INLINE
                and allowed(cred, row.mode, row.uid, row.gid, R)):
            if row.version == have:
                attr.inline_current = True
            else:
                data = bytes(row.data) if row.data is not None else b""
                if len(data) < row.size:  # implied zeros past the stored bytes
                    data += b"\0" * (row.size - len(data))
                attr.inline_data = data
        return attr

    def _opening(self, cred: Cred, flags: int) -> None:
        for check_open in self.open_checks:
            check_open(cred, flags)

    def _opened(self, cred: Cred, flags: int, attr: pb.Attr) -> None:
        if flags & os.O_ACCMODE != os.O_WRONLY:
            for hook in self.read_hooks:
                hook(cred, attr)

    def _open_inline(self, conn: Connection, cred: Cred, ino: int) -> pb.OpenReply | None:
        row = self.live_inode(conn, ino)
        self._check_reachable_in(conn, cred, ino)
        if not stat.S_ISREG(row.mode) or row.storage != STORAGE_INLINE:
            return None  # the ordinary open decides (and gives the errors)
        check(cred, row, R, "open this file")
        data = self.inline_data(conn, ino)
        if len(data) < row.size:  # implied zeros past the stored bytes
            data += b"\0" * (row.size - len(data))
        return pb.OpenReply(attr=to_attr(row), data=data, has_data=True)

    def _open(self, tx: Tx, ino: int, flags: int) -> pb.OpenReply:
        row = self.locked_live_inode(tx.conn, ino)
        self._check_reachable_in(tx.conn, tx.cred, ino)
        acc = flags & os.O_ACCMODE
        if acc not in (os.O_RDONLY, os.O_WRONLY, os.O_RDWR):
            raise FsError(errno.EINVAL, f"bad open flags {flags:#o}")
        want = {os.O_RDONLY: R, os.O_WRONLY: W, os.O_RDWR: R | W}[acc]
        if flags & os.O_TRUNC:
            want |= W
        if stat.S_ISDIR(row.mode) and want & W:
            raise FsError(errno.EISDIR, "is a directory")
        if stat.S_ISLNK(row.mode):
            raise FsError(errno.ELOOP, "cannot open a symbolic link")
        check(tx.cred, row, want, "open this file")
        if flags & os.O_TRUNC and stat.S_ISREG(row.mode) and row.size:
            self._truncate(tx, row, 0)
            mode = row.mode if tx.cred.is_root else kill_priv(row.mode)
            row = update_inode(tx.conn, ino, dict(size=0, mtime_ns=tx.now, ctime_ns=tx.now,
                                                   version=BUMP, mode=mode))
            tx.log(pb.OP_WRITE, ino, attr=to_attr(row))
        handle = self._new_handle(tx, ino, flags)
        return pb.OpenReply(attr=to_attr(row), handle=handle)

    def _new_handle(self, tx: Tx, ino: int, flags: int) -> int:
        """A handle of the caller's live session. Its number is random (63 bits): a handle
        is not found by counting, and is honoured only for its own session anyway."""
        self.check_session(tx.conn, tx.cred, tx.now, "opening a file")
        cap = self.settings.max_handles_per_session
        if cap > 0 and _Q_NTH_HANDLE.first(tx.conn, session=tx.cred.client_id,
                                                  skip=cap - 1):
            raise FsError(errno.EMFILE, f"this session holds {cap} open handles, the limit "
                          "(setting max_handles_per_session); close some first")
        hid = secrets.randbelow(_HANDLE_MAX) + 1
        _Q_INSERT_HANDLE.run(tx.conn, id=hid, ino=ino, session=tx.cred.client_id,
                             flags=flags, opened_ns=tx.now)
        return hid

    def release(self, cred: Cred, handle: int) -> None:
        self.mutate(cred, lambda tx: self.release_handle(tx, handle))

    def release_handle(self, tx: Tx, handle: int) -> None:
        """Close ``handle`` (one of the caller's session) in ``tx``, freeing its inode if
        that was the last use of an unlinked file; EBADF for another session's handle."""
        row = _Q_HANDLE_BY_ID.first(tx.conn, hid=handle)
        if not _owns(row, tx.cred):
            raise FsError(errno.EBADF, f"bad file handle {handle}: not open in this session")
        self.lock_inodes(tx.conn, row.ino)
        n = _Q_DELETE_HANDLE.run(tx.conn, hid=handle)
        if not n:  # released meanwhile by another call of the session
            raise FsError(errno.EBADF, f"bad file handle {handle}: not open in this session")
        self._free_orphans(tx, {row.ino})

    def handle_flags(self, conn: Connection, handle: int, ino: int, cred: Cred | None) -> int:
        """The open flags of ``handle`` on ``ino``. A handle belongs to the session that
        opened it (the session, not the uid: a mount serves all its callers in one session,
        and a file descriptor passes between processes), and the session to the identity
        that opened it; any other caller gets EBADF, as does one that names no caller."""
        if cred is None:
            cred = CALLER.get()
        row = _Q_HANDLE.first(conn, hid=handle, ino=ino)
        if not _owns(row, cred):
            raise FsError(errno.EBADF, f"bad file handle {handle}: not open on inode {ino} "
                          "in this session")
        return int(row.flags)

    def writable_handle(self, conn: Connection, handle: int, ino: int,
                        cred: Cred | None = None) -> bool:
        """Whether ``handle`` (0: none) is open for writing on ``ino``; EBADF when it is not
        the caller's (see :meth:`handle_flags`)."""
        if not handle:
            return False
        flags = self.handle_flags(conn, handle, ino, cred)
        return flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)

    def readable_handle(self, conn: Connection, handle: int, ino: int,
                        cred: Cred | None = None) -> bool:
        """Whether ``handle`` (0: none) is open for reading on ``ino``; EBADF when it is not
        the caller's (see :meth:`handle_flags`)."""
        if not handle:
            return False
        flags = self.handle_flags(conn, handle, ino, cred)
        return flags & os.O_ACCMODE in (os.O_RDONLY, os.O_RDWR)

    # ------------------------------------------------------------------ inline data
    def inline_data(self, conn: Connection, ino: int) -> bytes:
        """The data of an inline file (empty when it has none)."""
        v = _Q_INLINE.scalar(conn, ino=ino)
        return bytes(v) if v is not None else b""

    def store_inline(self, tx: Tx, ino: int, data: bytes, had: bool) -> None:
        """Make ``data`` the inline data of ``ino``; ``had``: whether it has a data row now."""
        if had:
            if data:
                Q_UPDATE_DATA.run(tx.conn, ino=ino, new_data=data)
            else:
                Q_DELETE_DATA.run(tx.conn, ino=ino)
        elif data:
            Q_INSERT_DATA.run(tx.conn, ino=ino, data=data)

    def _truncate(self, tx: Tx, row: Row, size: int) -> None:
        """Change the data of ``row`` to ``size`` bytes (the size column is the caller's)."""
        if row.storage != STORAGE_INLINE:
            self._truncate_blocks(tx, row, size)
            return
        if size > self.settings.inline_limit:
            self._grow_past_inline(tx, row, size)
            return
        data = self.inline_data(tx.conn, row.id)
        had = bool(data)
        data = data[:size]
        # Trailing zeros past the stored bytes are implied by the size.
        self.store_inline(tx, row.id, data.rstrip(b"\0") if size > len(data) else data, had)

    def _truncate_blocks(self, tx: Tx, row: Row, size: int) -> None:
        self.blocks.truncate(tx, row, size)

    def _grow_past_inline(self, tx: Tx, row: Row, size: int) -> None:
        self.blocks.grow_past_inline(tx, row, size)

    def read(self, cred: Cred, ino: int, offset: int, size: int, handle: int = 0) -> pb.ReadReply:
        if offset < 0 or size < 0:
            raise FsError(errno.EINVAL, "negative offset or size")

        def fn(conn: Connection) -> pb.ReadReply:
            row = self.live_inode(conn, ino)
            if stat.S_ISDIR(row.mode):
                raise FsError(errno.EISDIR, "is a directory")
            if not self.readable_handle(conn, handle, ino, cred):
                if handle:
                    raise FsError(errno.EBADF, "file is not open for reading")
                check(cred, row, R, "read this file")
            attr = to_attr(row)
            if row.storage != STORAGE_INLINE:
                return pb.ReadReply(inline=False, attr=attr)
            end = min(row.size, offset + size)
            if offset >= end:
                return pb.ReadReply(inline=True, attr=attr)
            data = self.inline_data(conn, ino)
            chunk = data[offset:end]
            if len(chunk) < end - offset:  # implied zeros past the stored bytes
                chunk = chunk + b"\0" * (end - offset - len(chunk))
            return pb.ReadReply(data=chunk, inline=True, attr=attr)

        return self.query(fn)

    def write(self, cred: Cred, ino: int, offset: int, data: bytes, handle: int = 0,
              append: bool = False, *, release: bool = False,
              truncate: bool = False) -> pb.WriteReply:
        """Write inline data; with ``release``, release ``handle`` in the same transaction
        (a file's last write at close); with ``truncate``, the data replaces the file's
        content: it is emptied first (its inline data or blocks dropped, as a truncation
        to 0 by this caller would), in the same transaction."""
        if offset < 0:
            raise FsError(errno.EINVAL, "negative offset")
        if offset + len(data) > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG, "write past the largest file")

        # in an empty file (the common case: a new file's first write; or any inline file
        # whose content it replaces) the data is all there is, so it is written by the
        # statement that locks the inode, before the checks below (one that fails rolls it
        # back with the transaction)
        at = 0 if append else offset
        speculate = bool(data) and at + len(data) <= self.settings.inline_limit
        first = b"\0" * at + data if speculate else b""

        def fn(tx: Tx) -> pb.WriteReply:
            written = None
            if speculate:
                locked, written = self.engine.write_empty_inline(
                    tx.conn, ino, first, tx.now, kill=not cred.is_root, replace=truncate)
                row = self.live_inode(tx.conn, ino, locked)
            else:
                row = self.locked_live_inode(tx.conn, ino)
            if stat.S_ISDIR(row.mode):
                raise FsError(errno.EISDIR, "is a directory")
            if not stat.S_ISREG(row.mode):
                raise FsError(errno.EINVAL, "not a regular file")
            if not self.writable_handle(tx.conn, handle, ino, cred):
                if handle:
                    raise FsError(errno.EBADF, "file is not open for writing")
                check(cred, row, W, "write this file")
            size, storage = row.size, row.storage
            if truncate and written is None and (size or storage != STORAGE_INLINE):
                self._truncate(tx, row, 0)  # (a file in blocks comes back inline, empty)
                size, storage = 0, STORAGE_INLINE
            off = size if append else offset
            end = off + len(data)
            if storage != STORAGE_INLINE or end > self.settings.inline_limit:
                self.blocks.refuse_inline_write(row, end)
            if written is not None:
                return self._written(tx, ino, to_attr(written), len(data), off, handle,
                                     release, truncate)
            # the stored bytes never pass the size (zeros there are implied) and no data
            # row is kept empty: an empty file has nothing to read
            cur = self.inline_data(tx.conn, ino) if size else b""
            had = bool(cur)
            if len(cur) < off:
                cur = cur + b"\0" * (off - len(cur))
            new = cur[:off] + data + cur[end:]
            vals: dict[str, Any] = dict(size=max(size, end), mtime_ns=tx.now,
                                        ctime_ns=tx.now, version=BUMP)
            if not cred.is_root and row.mode & (stat.S_ISUID | stat.S_ISGID):
                vals["mode"] = kill_priv(row.mode)
            if new:
                attr = to_attr(self.engine.write_inline(tx.conn, ino, new, had, vals))
            else:  # nothing stored (a write of no bytes to an empty file)
                attr = to_attr(update_inode(tx.conn, ino, vals))
            return self._written(tx, ino, attr, len(data), off, handle, release, truncate)

        return self.mutate(cred, fn)

    def _written(self, tx: Tx, ino: int, attr: pb.Attr, n: int, off: int, handle: int,
                 release: bool, truncated: bool) -> pb.WriteReply:
        """The end of a write of ``n`` bytes at ``off`` that made ``ino``'s attributes
        ``attr`` (``truncated``: after emptying the file): its change record, the handle
        released if asked, the reply."""
        tx.log(pb.OP_WRITE, ino, attr=attr,
               flags=pb.WRITE_REPLACED if truncated else pb.WRITE_PLAIN)
        if release:
            self.release_handle(tx, handle)
        return pb.WriteReply(attr=attr, written=n, offset=off)
