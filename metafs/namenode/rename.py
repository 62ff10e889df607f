"""rename(2) with RENAME_NOREPLACE and RENAME_EXCHANGE, in the global lock order.

Part of :class:`~metafs.namenode.namespace.Namespace` (a mixin: its methods use the
namespace's row helpers and transactions)."""

from __future__ import annotations

import errno
import stat
from typing import Any, Callable

from sqlalchemy import update
from sqlalchemy.engine import Connection

from ..errors import FsError
from ..posix import ROOT_INO, W, X, Cred, check, check_name, check_sticky
from ..proto import metafs_pb2 as pb
from .changelog import record_parts
from .rows import D, Q_DELETE_DENTRY, Q_SET_CTIME, Tx, lookup_both, to_attr


_RENAME_ATTEMPTS = 100  # restarts of one rename overtaken by changes of its names
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
# the fields of a rename's record the database writes: the moved inode's attributes, the
# replaced inode and its links left (field numbers)
_FIELDS = tuple(pb.ChangeRecord.DESCRIPTOR.fields_by_name[f].number
                for f in ("attr", "target_ino", "nlink"))
class _RenameRestart(Exception):
    """A rename found other entries under its locks than it locked for: its transaction
    rolls back and it starts over (with the rename lock first when ``rename_lock``)."""

    def __init__(self, rename_lock: bool) -> None:
        super().__init__("rename restarts")
        self.rename_lock = rename_lock


class Renames:
    """rename(2) with RENAME_NOREPLACE and RENAME_EXCHANGE, in the global lock order."""

    # ------------------------------------------------------------------ rename
    def rename(self, cred: Cred, src_parent: int, src_name: str, dst_parent: int,
               dst_name: str, flags: int = 0) -> int:
        """rename(2) with renameat2's flags; returns the time the directories' mtime and
        ctime were set to (0 when nothing changed: two names of one inode)."""
        check_name(src_name, new=False)
        check_name(dst_name, new=False)
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise FsError(errno.EINVAL, f"unknown rename flags {flags:#x}")
        if flags & RENAME_NOREPLACE and flags & RENAME_EXCHANGE:
            raise FsError(errno.EINVAL, "RENAME_NOREPLACE and RENAME_EXCHANGE exclude each other")
        # As Linux: '.' or '..' on either side is EBUSY (EEXIST for a NOREPLACE target).
        if src_name in (".", ".."):
            raise FsError(errno.EBUSY, f"cannot rename {src_name!r}", src_name)
        if dst_name in (".", ".."):
            raise FsError(errno.EEXIST if flags & RENAME_NOREPLACE else errno.EBUSY,
                          f"cannot rename onto {dst_name!r}", dst_name)
        def at_once(tx: Tx, request: Callable[[Any], dict[str, Any] | None]
                    ) -> tuple[bool, int]:
            # the plain case as one statement where the engine can
            # (:meth:`~.engine.MetaEngine.rename_at_once`)
            if self.free_data_hooks != self.sql_free_hooks:
                return False, 0
            rec = tx.log(pb.OP_RENAME, 0, parent=dst_parent, name=dst_name,
                         old_parent=src_parent, old_name=src_name)
            free = tx.log(pb.OP_FREE, 0)
            return self.engine.rename_at_once(
                tx.cred, src_parent, src_name, dst_parent, dst_name, tx.now,
                self.quotas.guard(tx) is not None, record_parts(rec, *_FIELDS),
                record_parts(free), request(tx.now)) is not None, tx.now

        rename_lock = False
        for _ in range(_RENAME_ATTEMPTS):
            try:
                return self.mutate(cred, lambda tx: self._rename(
                    tx, src_parent, src_name, dst_parent, dst_name, flags, rename_lock),
                    None if flags else at_once)
            except _RenameRestart as restart:
                rename_lock = rename_lock or restart.rename_lock
        raise FsError(errno.EAGAIN, "rename kept racing with concurrent changes of its names; "
                      "try again", src_name)

    @staticmethod
    def _moves_dir(sp: int, dp: int, src: Any, dst: Any, exchange: bool) -> bool:
        """Whether a rename gives a directory another parent (and needs the rename lock)."""
        return sp != dp and (
            (src is not None and stat.S_ISDIR(src.mode))
            or (exchange and dst is not None and stat.S_ISDIR(dst.mode)))

    def _rename(self, tx: Tx, sp: int, sn: str, dp: int, dn: str, flags: int,
                rename_lock: bool = False) -> int:
        conn, cred = tx.conn, tx.cred
        exchange = bool(flags & RENAME_EXCHANGE)
        # Locks in the global order: the rename lock first, then inode rows by id. What to
        # lock comes from a lookup made before any lock, which a concurrent change can
        # overtake: the names may then denote other inodes, or a directory where there was
        # a file. Taking the missing locks now would break the order (a rename holding the
        # rename lock and waiting for one of our rows, while we wait for the rename lock,
        # deadlocks), and going on without them would run the subtree check below without
        # the rename lock, where a crossing directory rename can invalidate it and make a
        # cycle. So when what is found under the locks is not what was locked, the
        # transaction rolls back (releasing everything) and the rename starts over, taking
        # the rename lock first if it found that it needs it (``rename_lock``).
        locked_renames = rename_lock and sp != dp
        if sp == dp:
            # nothing changes parent, so no rename lock: the statement that locks the rows
            # looks the names up itself
            rows = self.engine.lock_dir_entries(conn, sp, sn, dn)
            locked = set(rows)
        else:
            if locked_renames:
                self._lock_renames(conn)
            src, dst = lookup_both(conn, sp, sn, dp, dn)
            if not locked_renames and self._moves_dir(sp, dp, src, dst, exchange):
                self._lock_renames(conn)
                locked_renames = True
            locked = {sp, dp, src.id if src else 0, dst.id if dst else 0}
            rows = self.lock_rows(conn, *locked)
        # Re-read everything under the locks. The entries of sp and dp cannot change now
        # (every change of a directory's entries locks its row), nor, once the rename lock
        # is held, the parent of any directory.
        spd = self._dir(conn, sp, rows.get(sp))
        dpd = spd if dp == sp else self._dir(conn, dp, rows.get(dp))
        check(cred, spd, X, "search the source directory")
        check(cred, dpd, X, "search the target directory")
        moved = None
        if sp == dp and not flags:
            # the common case, a new name in the same directory: moved speculatively by the
            # statement that reads the entries under the locks, when the target is absent
            # (every check below that fails raises, rolling the move back)
            src, dst, moved = self.engine.rename_within(conn, sp, sn, dn, tx.now)
        else:
            src, dst = lookup_both(conn, sp, sn, dp, dn)
        if src is None:
            raise FsError(errno.ENOENT, "no such file or directory", sn)
        needs_renames = self._moves_dir(sp, dp, src, dst, exchange)
        if (needs_renames and not locked_renames) or src.id not in locked \
                or (dst is not None and dst.id not in locked):
            raise _RenameRestart(needs_renames)
        if exchange and dst is None:
            raise FsError(errno.ENOENT, "RENAME_EXCHANGE target does not exist", dn)
        if dst is not None and flags & RENAME_NOREPLACE:
            raise FsError(errno.EEXIST, "target exists (RENAME_NOREPLACE)", dn)
        src_dir = stat.S_ISDIR(src.mode)
        dst_dir = dst is not None and stat.S_ISDIR(dst.mode)
        if sp != dp:
            # Linux's order: the subtree checks come before the checks on types. A source
            # directory may not go into its own subtree; a target directory that holds the
            # source is not empty (or, exchanged, would go into its own subtree).
            if src_dir:
                self._check_not_ancestor(conn, src.id, dp, sn)
            if dst_dir:
                try:
                    self._check_not_ancestor(conn, dst.id, sp, dn)
                except FsError as exc:
                    if exc.errno == errno.EINVAL and not exchange:
                        raise FsError(errno.ENOTEMPTY, "target directory is not empty",
                                      dn) from None
                    raise
        if dst is not None and dst.id == src.id:
            return 0  # two names of one inode: POSIX says do nothing
        # As Linux: missing names, subtree checks, then write access to the directories.
        check(cred, spd, W | X, "rename entries in the source directory")
        if dpd is not spd:
            check(cred, dpd, W | X, "create entries in the target directory")
        check_sticky(cred, spd, src)
        if dst is not None:
            check_sticky(cred, dpd, dst)
        if not exchange and dst is not None:
            if src_dir and not dst_dir:
                raise FsError(errno.ENOTDIR, "cannot replace a non-directory with a directory", dn)
            if dst_dir and not src_dir:
                raise FsError(errno.EISDIR, "cannot replace a directory with a non-directory", dn)
            if dst_dir and self._dir_has_entries(conn, dst.id):
                raise FsError(errno.ENOTEMPTY, "target directory is not empty", dn)
        if sp != dp:
            # A directory that changes parent has its '..' rewritten: it needs write access.
            if src_dir:
                check(cred, src, W, "move this directory")
            if exchange and dst_dir:
                check(cred, dst, W, "move the exchanged directory")

        if exchange:
            conn.execute(update(D).where(D.c.parent == sp, D.c.name == sn)
                         .values(ino=dst.id, mode=stat.S_IFMT(dst.mode)))
            conn.execute(update(D).where(D.c.parent == dp, D.c.name == dn)
                         .values(ino=src.id, mode=stat.S_IFMT(src.mode)))
            if sp != dp and src_dir != dst_dir:
                delta = 1 if src_dir else -1
                self._touch_dir(tx, dp, nlink_delta=delta)
                self._touch_dir(tx, sp, nlink_delta=-delta)
            else:
                self._touch_dir(tx, sp)
                if dp != sp:
                    self._touch_dir(tx, dp)
            Q_SET_CTIME.run(conn, ino=dst.id, now=tx.now)
            tx.log(pb.OP_RENAME, src.id, parent=dp, name=dn, old_parent=sp, old_name=sn,
                   target_ino=dst.id, flags=flags,
                   attr=to_attr(Q_SET_CTIME.first(conn, ino=src.id, now=tx.now)))
            return tx.now

        left = 0
        if dst is not None:
            Q_DELETE_DENTRY.run(conn, dparent=dp, dname=dn)
        if sp != dp and src_dir:
            sp_delta, dp_delta = -1, 0 if dst_dir else 1
        else:
            sp_delta, dp_delta = -1 if (dst_dir and sp == dp) else 0, -1 if dst_dir else 0
        if moved is None:
            moved = self.engine.move_entry(conn, sp, sn, dp, dn, src.id, tx.now, sp_delta,
                                           dp_delta)
        rec = tx.log(pb.OP_RENAME, src.id, parent=dp, name=dn, old_parent=sp, old_name=sn,
                     target_ino=dst.id if dst is not None else 0, flags=flags,
                     attr=to_attr(moved))
        if dst is not None:
            left = self._drop_link(tx, dst)
            rec.nlink = left
        return tx.now

    def _check_not_ancestor(self, conn: Connection, moving: int, new_parent: int,
                            name: str) -> None:
        """EINVAL when ``new_parent`` is ``moving`` or lies inside its subtree."""
        cur = new_parent
        seen = 0
        while True:
            if cur == moving:
                raise FsError(errno.EINVAL, "cannot move a directory into its own subtree", name)
            if cur == ROOT_INO:
                return
            cur = self._parent_of_dir(conn, cur)
            seen += 1
            if seen > 100_000:
                raise FsError(errno.EIO, "directory tree is corrupt (cycle)")
