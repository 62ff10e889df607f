"""Attributes: setattr (chmod, chown, utimens, truncate) and extended attributes.

Part of :class:`~metafs.namenode.namespace.Namespace` (a mixin: its methods use the
namespace's row helpers and transactions)."""

from __future__ import annotations

import errno
import stat
from typing import Any

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.engine import Connection, Row

from ..errors import FsError
from ..posix import R, W, Cred, check, is_owner
from ..proto import metafs_pb2 as pb
from .rows import (BUMP, MAX_FILE_SIZE, Q_INSERT_XATTR, Q_SET_CTIME, XA, Tx, kill_priv, to_attr,
                   update_inode)
from .sql import Prepared


XATTR_NAME_MAX = 255
XATTR_CREATE, XATTR_REPLACE = 1, 2
_Q_XATTR = Prepared(select(XA.c.value).where(XA.c.ino == bindparam("ino"),
                                             XA.c.name == bindparam("name")))
_Q_XATTR_NAMES = Prepared(select(XA.c.name).where(XA.c.ino == bindparam("ino"))
                          .order_by(XA.c.name))
_Q_UPDATE_XATTR = Prepared(update(XA).where(XA.c.ino == bindparam("ino"),
                                            XA.c.name == bindparam("name"))
                           .values(value=bindparam("value")))
_Q_DELETE_XATTR = Prepared(delete(XA).where(XA.c.ino == bindparam("ino"),
                                            XA.c.name == bindparam("name")))


class Attributes:
    """Attributes: setattr (chmod, chown, utimens, truncate) and extended attributes."""

    # ------------------------------------------------------------------ attributes
    def setattr(self, cred: Cred, ino: int, *, mode: int | None = None, uid: int | None = None,
                gid: int | None = None, size: int | None = None,
                atime: tuple[int, int] = (pb.TIME_OMIT, 0),
                mtime: tuple[int, int] = (pb.TIME_OMIT, 0), handle: int = 0) -> pb.Attr:
        if size is not None and size < 0:
            raise FsError(errno.EINVAL, "negative file size")
        if size is not None and size > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG, f"file size {size} is past the largest file")
        for how, ns in (atime, mtime):
            if how not in (pb.TIME_OMIT, pb.TIME_NOW, pb.TIME_SET):
                raise FsError(errno.EINVAL, f"unknown time setting {how}")

        def fn(tx: Tx) -> pb.Attr:
            self.lock_inodes(tx.conn, ino)
            row = self.live_inode(tx.conn, ino)
            vals: dict[str, Any] = {}
            new_mode = row.mode
            if mode is not None:
                if not is_owner(cred, row):
                    raise FsError(errno.EPERM, "only the owner may change the mode")
                new_mode = stat.S_IFMT(row.mode) | (mode & 0o7777)
                if not cred.is_root and not cred.in_group(row.gid if gid is None else gid):
                    new_mode &= ~stat.S_ISGID
            if uid is not None or gid is not None:
                new_uid = row.uid if uid is None else uid
                new_gid = row.gid if gid is None else gid
                if not cred.is_root:
                    if new_uid != row.uid:
                        raise FsError(errno.EPERM, "only root may change a file's owner")
                    if cred.uid != row.uid:  # as Linux, even to the same values
                        raise FsError(errno.EPERM, "only the owner may change the group")
                    if new_gid != row.gid and not cred.in_group(new_gid):
                        raise FsError(errno.EPERM, "you are not a member of that group")
                vals["uid"], vals["gid"] = new_uid, new_gid
                if not stat.S_ISDIR(row.mode):
                    new_mode &= ~stat.S_ISUID
                    if new_mode & stat.S_IXGRP:
                        new_mode &= ~stat.S_ISGID
            if new_mode != row.mode:
                vals["mode"] = new_mode
            for (how, ns), col in ((atime, "atime_ns"), (mtime, "mtime_ns")):
                if how == pb.TIME_OMIT:
                    continue
                if how == pb.TIME_SET and not is_owner(cred, row):
                    raise FsError(errno.EPERM, "only the owner may set explicit times")
                if how == pb.TIME_NOW and not is_owner(cred, row):
                    check(cred, row, W, "set times on this file")
                vals[col] = tx.now if how == pb.TIME_NOW else ns
            if size is not None:
                if stat.S_ISDIR(row.mode):
                    raise FsError(errno.EISDIR, "cannot truncate a directory")
                if not stat.S_ISREG(row.mode):
                    raise FsError(errno.EINVAL, "only regular files can be truncated")
                if not self.writable_handle(tx.conn, handle, ino, cred):
                    check(cred, row, W, "truncate this file")
                self._truncate(tx, row, size)
                vals["size"] = size
                vals["mtime_ns"] = vals.get("mtime_ns", tx.now)
                vals["version"] = BUMP
                if not cred.is_root:
                    vals["mode"] = kill_priv(vals.get("mode", new_mode))
            vals["ctime_ns"] = tx.now
            attr = to_attr(update_inode(tx.conn, ino, vals))
            tx.log(pb.OP_WRITE if size is not None else pb.OP_SETATTR, ino, attr=attr)
            return attr

        return self.mutate(cred, fn)

    # ------------------------------------------------------------------ xattrs
    @staticmethod
    def _check_xattr_name(name: str) -> None:
        if not name:
            raise FsError(errno.EINVAL, "empty attribute name")
        if len(name.encode("utf-8", "surrogatepass")) > XATTR_NAME_MAX:
            raise FsError(errno.ERANGE, f"attribute name longer than {XATTR_NAME_MAX} bytes")
        if "\0" in name:
            raise FsError(errno.EINVAL, "attribute name contains NUL")
        if not name.startswith(("user.", "trusted.", "security.", "system.")):
            raise FsError(errno.EOPNOTSUPP,
                          "attribute names need a namespace: user., trusted. or security.", name)
        if name.startswith("system."):
            raise FsError(errno.EOPNOTSUPP, "system.* attributes (ACLs) are not supported", name)

    def _xattr_perm(self, cred: Cred, row: Row, name: str, write: bool) -> None:
        if name.startswith("trusted."):
            if not cred.is_root:
                raise FsError(errno.EPERM if write else errno.ENODATA,
                              "trusted.* attributes are for root only", name)
            return
        if name.startswith("security."):
            if write and not cred.is_root:
                raise FsError(errno.EPERM, "only root may set security.* attributes", name)
            return
        # user.*
        if not (stat.S_ISREG(row.mode) or stat.S_ISDIR(row.mode)):
            raise FsError(errno.EPERM if write else errno.ENODATA,
                          "user.* attributes exist only on files and directories", name)
        check(cred, row, W if write else R, "use this file's attributes")

    def getxattr(self, cred: Cred, ino: int, name: str, size: int = 0) -> pb.XattrReply:
        self._check_xattr_name(name)

        def fn(conn: Connection) -> pb.XattrReply:
            row = self.live_inode(conn, ino)
            self._xattr_perm(cred, row, name, write=False)
            v = _Q_XATTR.scalar(conn, ino=ino, name=name)
            if v is None:
                raise FsError(errno.ENODATA, "no such attribute", name)
            v = bytes(v)
            if size and len(v) > size:
                raise FsError(errno.ERANGE, f"attribute value is {len(v)} bytes, buffer {size}")
            return pb.XattrReply(value=v, size=len(v))

        return self.query(fn)

    def setxattr(self, cred: Cred, ino: int, name: str, value: bytes, flags: int = 0) -> None:
        self._check_xattr_name(name)
        if flags & ~(XATTR_CREATE | XATTR_REPLACE) or flags == XATTR_CREATE | XATTR_REPLACE:
            raise FsError(errno.EINVAL, f"bad xattr flags {flags:#x}")
        if len(value) > self.settings.max_xattr_size:
            raise FsError(errno.E2BIG, f"attribute value is {len(value)} bytes; the limit is "
                          f"{self.settings.max_xattr_size}", name)

        def fn(tx: Tx) -> None:
            self.lock_inodes(tx.conn, ino)
            row = self.live_inode(tx.conn, ino)
            self._xattr_perm(cred, row, name, write=True)
            have = _Q_XATTR.first(tx.conn, ino=ino, name=name) is not None
            if have and flags & XATTR_CREATE:
                raise FsError(errno.EEXIST, "attribute exists (XATTR_CREATE)", name)
            if not have and flags & XATTR_REPLACE:
                raise FsError(errno.ENODATA, "no such attribute (XATTR_REPLACE)", name)
            (_Q_UPDATE_XATTR if have else Q_INSERT_XATTR).run(
                tx.conn, ino=ino, name=name, value=value)
            Q_SET_CTIME.run(tx.conn, ino=ino, now=tx.now)
            tx.log(pb.OP_SETXATTR, ino, xattr_name=name,
                   xattr_value=value if name.startswith("user.") else b"")

        self.mutate(cred, fn)

    def listxattr(self, cred: Cred, ino: int) -> list[str]:
        def fn(conn: Connection) -> list[str]:
            self.live_inode(conn, ino)
            names = [r[0] for r in _Q_XATTR_NAMES.all(conn, ino=ino)]
            if not cred.is_root:
                names = [n for n in names if not n.startswith("trusted.")]
            return list(names)

        return self.query(fn)

    def removexattr(self, cred: Cred, ino: int, name: str) -> None:
        self._check_xattr_name(name)

        def fn(tx: Tx) -> None:
            self.lock_inodes(tx.conn, ino)
            row = self.live_inode(tx.conn, ino)
            self._xattr_perm(cred, row, name, write=True)
            n = _Q_DELETE_XATTR.run(tx.conn, ino=ino, name=name)
            if not n:
                raise FsError(errno.ENODATA, "no such attribute", name)
            Q_SET_CTIME.run(tx.conn, ino=ino, now=tx.now)
            tx.log(pb.OP_REMOVEXATTR, ino, xattr_name=name)

        self.mutate(cred, fn)
