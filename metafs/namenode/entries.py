"""Making and removing names: create, mkdir, symlink, link, unlink, rmdir.

Part of :class:`~metafs.namenode.namespace.Namespace` (a mixin: its methods use the
namespace's row helpers and transactions)."""

from __future__ import annotations

import errno
import json
import stat
from typing import Any, Callable

from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import Connection

from ..errors import FsError
from ..posix import PATH_MAX, R, W, X, Cred, allowed, check, check_name, check_sticky
from ..proto import metafs_pb2 as pb
from .changelog import record_parts
from .rows import ATTR_COLS, D, I, Tx, dict_attr, to_attr
from .sql import Prepared


LINK_MAX = 65000
_REMOVE_ATTEMPTS = 100  # restarts of one unlink/rmdir overtaken by a change of its name
_NLINK = pb.ChangeRecord.DESCRIPTOR.fields_by_name["nlink"].number  # (a field number)


class _Overtaken(Exception):
    """An unlink or rmdir found its name naming another inode under its locks than the
    one it looked up and locked (replaced in between): its transaction rolls back and it
    starts over."""
_Q_DIR_NONEMPTY = Prepared(select(D.c.name).where(D.c.parent == bindparam("ino")).limit(1))
# rmdir's lookup under its locks: the row, and whether it has entries (a directory's
# entries change only under its row's lock, which rmdir holds by then)
_ENTRIES = D.alias("entries")
_Q_LOOKUP_RMDIR = Prepared(
    select(*ATTR_COLS, select(_ENTRIES.c.name).where(_ENTRIES.c.parent == I.c.id).exists()
           .label("nonempty"))
    .select_from(D.join(I, I.c.id == D.c.ino))
    .where(D.c.parent == bindparam("parent"), D.c.name == bindparam("name")))
_ALLOWED_TYPES = {stat.S_IFREG, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK}


def check_hardlink_source(cred: Cred, row: Any) -> None:
    """Linux's ``protected_hardlinks`` (fs/namei.c, may_linkat): only the owner (or root)
    links any file; anyone else only a regular file without set-user-id, without
    set-group-id with group execute, that the caller may both read and write. Otherwise a
    user could pin another user's file with a name of their own (its owner could then no
    longer delete it) or keep an old set-id program alive. EPERM, as Linux."""
    if cred.is_root or cred.uid == row.uid:
        return
    mode = row.mode
    safe = (stat.S_ISREG(mode) and not mode & stat.S_ISUID
            and mode & (stat.S_ISGID | stat.S_IXGRP) != (stat.S_ISGID | stat.S_IXGRP)
            and allowed(cred, mode, row.uid, row.gid, R | W))
    if not safe:
        raise FsError(errno.EPERM, "operation not permitted: a hard link to a file of "
                      "another owner needs a regular, non-set-id file the caller may read "
                      "and write")


class Entries:
    """Making and removing names: create, mkdir, symlink, link, unlink, rmdir."""

    # ------------------------------------------------------------------ creation
    def create(self, cred: Cred, parent: int, name: str, mode: int, umask: int = 0,
               exclusive: bool = False, do_open: bool = False, flags: int = 0,
               rdev: int = 0) -> pb.OpenReply:
        if name in (".", ".."):  # as Linux: open(O_CREAT) of a directory
            raise FsError(errno.EISDIR if do_open and not exclusive else errno.EEXIST,
                          "is a directory" if do_open and not exclusive else "file exists", name)
        check_name(name)
        ftype = stat.S_IFMT(mode) or stat.S_IFREG
        if ftype not in _ALLOWED_TYPES:
            raise FsError(errno.EINVAL, f"cannot create a file of type {ftype:#o} this way")
        if ftype in (stat.S_IFCHR, stat.S_IFBLK) and not cred.is_root:
            raise FsError(errno.EPERM, "only root may create device files")
        perm = stat.S_IMODE(mode) & ~umask & 0o7777
        if ftype not in (stat.S_IFCHR, stat.S_IFBLK):
            rdev = 0  # as mknod(2): only devices have a device number
        if do_open and ftype != stat.S_IFREG:
            raise FsError(errno.EINVAL, "only regular files can be created open")

        def fn(tx: Tx) -> pb.OpenReply:
            # the common case, a new name: added unless it exists, without looking it up
            # first, in the statement that locks the directory
            pdir, row = self._add_new_entry(tx, parent, name, ftype | perm, rdev=rdev)
            if row is not None:
                check(cred, pdir, W | X, "create entries in this directory")
                return made(tx, row)
            pdir = self._dir(tx.conn, parent, pdir)
            existing = self._lookup(tx.conn, parent, name)
            if existing is not None:
                check(cred, pdir, X, "search this directory")
                if exclusive:
                    raise FsError(errno.EEXIST, "file exists", name)
                if stat.S_ISDIR(existing.mode):
                    raise FsError(errno.EISDIR, "is a directory", name)
                if not do_open:
                    raise FsError(errno.EEXIST, "file exists", name)
                return self._open(tx, existing.id, flags)
            check(cred, pdir, W | X, "create entries in this directory")
            row = self._new_inode(tx, pdir, ftype | perm, rdev=rdev)
            self.engine.add_entry(tx.conn, parent, name, row, nlink_delta=0)
            return made(tx, row)

        def made(tx: Tx, row: dict[str, Any]) -> pb.OpenReply:
            attr = dict_attr(row)
            tx.log(pb.OP_CREATE if ftype == stat.S_IFREG else pb.OP_MKNOD, row["id"],
                   parent=parent, name=name, attr=attr)
            handle = self._new_handle(tx, row["id"], flags) if do_open else 0
            return pb.OpenReply(attr=attr, handle=handle)

        def at_once(tx: Tx, request: Callable[[Any], dict[str, Any] | None]
                    ) -> tuple[bool, pb.OpenReply]:
            row = self._new_inode(tx, None, ftype | perm, rdev=rdev,
                                  ino=self.engine.next_inode_id())
            reply = made(tx, row)  # (no handle: not open)
            return self._create_at_once(tx, parent, name, row, 0, request(reply)), reply

        return self.mutate(cred, fn, None if do_open else at_once)

    def mkdir(self, cred: Cred, parent: int, name: str, mode: int, umask: int = 0) -> pb.Entry:
        check_name(name)
        perm = stat.S_IMODE(mode) & ~umask & 0o7777

        def fn(tx: Tx) -> pb.Entry:
            pdir, row = self._add_new_entry(tx, parent, name, stat.S_IFDIR | perm)
            if row is None:  # no directory in use, or the name exists: the checks say which
                self._check_dir_for_entry(tx, parent, name, pdir)
                raise FsError(errno.EEXIST, "file exists", name)
            # as Linux, in this order (a name that exists was EEXIST before either)
            check(cred, pdir, X, "search this directory")
            check(cred, pdir, W | X, "create entries in this directory")
            attr = dict_attr(row)
            tx.log(pb.OP_MKDIR, row["id"], parent=parent, name=name, attr=attr)
            return pb.Entry(ino=row["id"], attr=attr)

        def at_once(tx: Tx, request: Callable[[Any], dict[str, Any] | None]
                    ) -> tuple[bool, pb.Entry]:
            row = self._new_inode(tx, None, stat.S_IFDIR | perm,
                                  ino=self.engine.next_inode_id())
            attr = dict_attr(row)
            tx.log(pb.OP_MKDIR, row["id"], parent=parent, name=name, attr=attr)
            entry = pb.Entry(ino=row["id"], attr=attr)
            return self._create_at_once(tx, parent, name, row, 1, request(entry)), entry

        return self.mutate(cred, fn, at_once)

    def _create_at_once(self, tx: Tx, parent: int, name: str, row: dict[str, Any],
                        nlink_delta: int, request: dict[str, Any] | None) -> bool:
        """A create's or a mkdir's plain case as one statement where the engine can
        (:meth:`~.engine.MetaEngine.create_at_once`): the new inode ``row`` (its id taken
        ahead, its group the caller's) and the record ``tx`` logged for it, whole, as the
        general path would make them; whether it was made."""
        rec = tx.records[-1]
        return self.engine.create_at_once(
            tx.cred, parent, name, row, nlink_delta, self.quotas.guard(tx) is not None,
            (int(rec.op), rec.SerializeToString()), request) is not None

    def symlink(self, cred: Cred, parent: int, name: str, target: str) -> pb.Entry:
        check_name(name)
        if not target:
            raise FsError(errno.ENOENT, "a symbolic link needs a target")
        if "\0" in target:
            raise FsError(errno.EINVAL, "a symlink target may not contain NUL")
        try:
            tsize = len(target.encode("utf-8"))
        except UnicodeEncodeError:
            raise FsError(errno.EILSEQ, "a symlink target must be valid UTF-8") from None
        if tsize >= PATH_MAX:
            raise FsError(errno.ENAMETOOLONG, f"symlink target longer than {PATH_MAX - 1} bytes")

        def fn(tx: Tx) -> pb.Entry:
            pdir = self._check_dir_for_entry(tx, parent, name)
            row = self._new_inode(tx, pdir, stat.S_IFLNK | 0o777, target=target, size=tsize)
            self.engine.add_entry(tx.conn, parent, name, row, nlink_delta=0)
            attr = dict_attr(row)
            tx.log(pb.OP_SYMLINK, row["id"], parent=parent, name=name, attr=attr,
                   extra=json.dumps({"target": target}))
            return pb.Entry(ino=row["id"], attr=attr)

        return self.mutate(cred, fn)

    def link(self, cred: Cred, ino: int, new_parent: int, new_name: str) -> pb.Entry:
        check_name(new_name)

        def fn(tx: Tx) -> pb.Entry:
            self.lock_inodes(tx.conn, ino, new_parent)
            row = self.live_inode(tx.conn, ino)
            # Linux's order: the new name (EEXIST), write access, then the source.
            self._check_dir_for_entry(tx, new_parent, new_name)
            check_hardlink_source(tx.cred, row)
            if stat.S_ISDIR(row.mode):
                raise FsError(errno.EPERM, "hard links to directories are not allowed")
            if row.nlink == 0:
                raise FsError(errno.ENOENT, "cannot link a file that has been removed")
            if row.nlink >= LINK_MAX:
                raise FsError(errno.EMLINK, "too many links")
            self._link_entry(tx, new_parent, new_name, ino, row.mode)
            tx.conn.execute(update(I).where(I.c.id == ino).values(nlink=I.c.nlink + 1,
                                                                   ctime_ns=tx.now))
            self._touch_dir(tx, new_parent)
            attr = to_attr(self.inode_row(tx.conn, ino))
            tx.log(pb.OP_LINK, ino, parent=new_parent, name=new_name, attr=attr)
            return pb.Entry(ino=ino, attr=attr)

        return self.mutate(cred, fn)

    # ------------------------------------------------------------------ removal
    def _entry_to_remove(self, tx: Tx, cred: Cred, parent: int, name: str,
                         lookup: Prepared | None = None) -> tuple[Any, Any]:
        """The directory ``parent`` and the inode ``name`` names in it, both locked, for a
        caller who may remove entries there (Linux's order: ENOENT before EACCES). The
        inode's row is read under the locks by ``lookup`` when given (parameters parent
        and name; the attribute columns first)."""
        locked = self.engine.lock_dir_entries(tx.conn, parent, name)
        pdir = self._dir(tx.conn, parent, locked.get(parent))
        check(cred, pdir, X, "search this directory")
        row = (lookup.first(tx.conn, parent=parent, name=name) if lookup is not None
               else self._lookup(tx.conn, parent, name))
        if row is None:
            raise FsError(errno.ENOENT, "no such file or directory", name)
        if row.id not in locked:  # the name was replaced between the lookup and the locks
            raise _Overtaken()
        check(cred, pdir, W | X, "remove entries from this directory")
        return pdir, row

    def _removing(self, cred: Cred, parent: int, name: str, is_dir: bool,
                  fn: Callable[[Tx], int]) -> int:
        """Run the removal ``fn`` of ``name``; again when it found ``name`` naming another
        inode under its locks than the one it locked. Its plain case runs as one
        statement where the engine can (:meth:`~.engine.MetaEngine.remove_at_once`).
        Returns the time the directory's mtime and ctime were set to."""
        def at_once(tx: Tx, request: Callable[[Any], dict[str, Any] | None]
                    ) -> tuple[bool, int]:
            if self.free_data_hooks != self.sql_free_hooks:
                return False, 0
            rec = tx.log(pb.OP_RMDIR if is_dir else pb.OP_UNLINK, 0, parent=parent, name=name)
            free = tx.log(pb.OP_FREE, 0)
            return self.engine.remove_at_once(
                tx.cred, parent, name, is_dir, tx.now, record_parts(rec, _NLINK),
                record_parts(free), request(tx.now)) is not None, tx.now

        for _ in range(_REMOVE_ATTEMPTS):
            try:
                return self.mutate(cred, fn, at_once)
            except _Overtaken:
                continue
        raise FsError(errno.EAGAIN, "the name kept being replaced while it was being "
                      "removed; try again", name)

    def unlink(self, cred: Cred, parent: int, name: str) -> int:
        """unlink(2); returns the time the directory's mtime and ctime were set to."""
        check_name(name, new=False)
        if name in (".", ".."):
            raise FsError(errno.EISDIR, "is a directory", name)

        def fn(tx: Tx) -> int:
            pdir, row = self._entry_to_remove(tx, cred, parent, name)
            if stat.S_ISDIR(row.mode):
                raise FsError(errno.EISDIR, "is a directory (use rmdir)", name)
            check_sticky(cred, pdir, row)
            rec = tx.log(pb.OP_UNLINK, row.id, parent=parent, name=name)
            rec.nlink = self._remove_name(tx, parent, name, row)
            return tx.now

        return self._removing(cred, parent, name, False, fn)

    def rmdir(self, cred: Cred, parent: int, name: str) -> int:
        """rmdir(2); returns the time the directory's mtime and ctime were set to."""
        check_name(name, new=False)
        if name == ".":
            raise FsError(errno.EINVAL, "cannot remove '.'", name)
        if name == "..":
            raise FsError(errno.ENOTEMPTY, "cannot remove '..'", name)

        def fn(tx: Tx) -> int:
            pdir, row = self._entry_to_remove(tx, cred, parent, name, _Q_LOOKUP_RMDIR)
            if not stat.S_ISDIR(row.mode):
                raise FsError(errno.ENOTDIR, "not a directory", name)
            check_sticky(cred, pdir, row)
            if row.nonempty:
                raise FsError(errno.ENOTEMPTY, "directory not empty", name)
            tx.log(pb.OP_RMDIR, row.id, parent=parent, name=name)
            self._remove_name(tx, parent, name, row)
            return tx.now

        return self._removing(cred, parent, name, True, fn)

    def _dir_has_entries(self, conn: Connection, ino: int) -> bool:
        return _Q_DIR_NONEMPTY.first(conn, ino=ino) is not None
