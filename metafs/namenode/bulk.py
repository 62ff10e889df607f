"""Bulk create: many files and directories (with data and attributes) in one call.

The call commits in transactions of at most ``bulk_chunk_entries`` entries, in order, so
other writers wait for one chunk, never for the whole call: a bulk create is atomic per
chunk. Everything that can be checked without the database (names, sizes, attributes, a
path given twice, a file on another entry's path) is checked before the first chunk; an
error met in a later chunk (a name that exists, a permission, a quota) leaves the earlier
chunks created, and its message says how many entries were.

Part of :class:`~metafs.namenode.namespace.Namespace` (a mixin: its methods use the
namespace's row helpers and transactions)."""

from __future__ import annotations

import errno
import gc
import stat
import threading
from typing import Any, Sequence

from ..errors import FsError
from ..posix import NAME_MAX, W, X, Cred, check, check_name, check_path
from ..proto import metafs_pb2 as pb
from .rows import Q_INSERT_DATA, Q_INSERT_DENTRY, Q_INSERT_INODE, Q_INSERT_XATTR, Tx, dict_attr


class _RowView:
    """Attribute access over a dict of inode columns (rows not yet re-read)."""

    __slots__ = ("_d",)

    def __init__(self, d: dict) -> None:
        self._d = d

    def __getattr__(self, k: str) -> Any:
        try:
            return self._d[k]
        except KeyError:
            raise AttributeError(k) from None


class _CollectorPause:
    """Pauses Python's cyclic garbage collector while any bulk call runs.

    A bulk call makes several container objects per entry (rows, records, attributes) that
    all live until it ends: every collection it triggers (one per 700 allocations, a full
    one every 70,000) scans them and frees nothing. Measured here, that was a fifth of
    the time of a 10,000-file call. Reference counting still frees everything else; the
    collector resumes (if it was on) when the last bulk call ends, and then finds any
    cycles made meanwhile."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._resume = False

    def __enter__(self) -> None:
        with self._lock:
            if self._depth == 0:
                self._resume = gc.isenabled()
                gc.disable()
            self._depth += 1

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0 and self._resume:
                gc.enable()


collector_paused = _CollectorPause()


class BulkCreate:
    """Bulk create: many files and directories (with data and attributes) in one transaction."""

    # ------------------------------------------------------------------ bulk
    def bulk_create(self, cred: Cred, parent: int, entries: Sequence[pb.BulkEntry],
                    make_parents: bool = False, exist_ok: bool = False) -> pb.BulkCreateReply:
        with collector_paused:
            return self._bulk_create(cred, parent, entries, make_parents, exist_ok)

    def _bulk_create(self, cred: Cred, parent: int, entries: Sequence[pb.BulkEntry],
                     make_parents: bool, exist_ok: bool) -> pb.BulkCreateReply:
        if len(entries) > self.settings.bulk_max_entries:
            raise FsError(errno.E2BIG, f"{len(entries)} entries in one bulk call; the limit is "
                          f"{self.settings.bulk_max_entries}")
        plan = []
        for e in entries:
            path = e.path
            check_path(path)
            parts = [p for p in path.split("/") if p]
            if not parts:
                raise FsError(errno.EINVAL, "bulk entry with an empty path", path)
            if len(path) > NAME_MAX // 4 or "." in parts or ".." in parts:
                for p in parts:  # no name of a shorter path can be over NAME_MAX bytes
                    check_name(p)
            ftype = stat.S_IFMT(e.mode) or stat.S_IFREG
            if ftype not in (stat.S_IFREG, stat.S_IFDIR):
                raise FsError(errno.EINVAL, "bulk entries are files or directories", e.path)
            if ftype == stat.S_IFDIR and e.data:
                raise FsError(errno.EISDIR, "a directory cannot have data", e.path)
            if len(e.data) > self.settings.inline_limit:
                raise FsError(errno.EFBIG, f"bulk file data is limited to the inline limit "
                              f"({self.settings.inline_limit} bytes)", e.path)
            for k, v in e.xattrs.items():
                self._check_xattr_name(k)
                if len(v) > self.settings.max_xattr_size:
                    raise FsError(errno.E2BIG, "attribute value too large", e.path)
            plan.append((parts, ftype, e))
        self._check_plan(plan, exist_ok)
        size = max(1, self.settings.bulk_chunk_entries)
        reply = pb.BulkCreateReply()
        for start in range(0, len(plan), size):
            chunk = plan[start:start + size]
            try:
                part = self.mutate(cred, lambda tx: self._bulk(tx, parent, chunk, make_parents,
                                                               exist_ok))
            except FsError as err:
                if start:
                    err.message += (f" (the first {start} entries of this bulk call were "
                                    f"committed: it is atomic per chunk of {size} entries, "
                                    "setting bulk_chunk_entries)")
                raise
            reply.created += part.created
            reply.inos.extend(part.inos)
        return reply

    @staticmethod
    def _check_plan(plan: list, exist_ok: bool) -> None:
        """The conflicts within one call that a single transaction would have found, found
        before any chunk commits."""
        seen: dict[tuple[str, ...], int] = {}  # path -> file type
        parents: set[tuple[str, ...]] = set()  # paths of earlier entries' directories
        for parts, ftype, e in plan:
            key = tuple(parts)
            for i in range(1, len(key)):
                if seen.get(key[:i]) == stat.S_IFREG:
                    raise FsError(errno.EEXIST, "a file and a directory share a path", e.path)
                parents.add(key[:i])
            if key in seen or key in parents:
                if not (ftype == stat.S_IFDIR and exist_ok and
                        seen.get(key, stat.S_IFDIR) == stat.S_IFDIR):
                    raise FsError(errno.EEXIST, "path appears twice in one bulk call", e.path)
            seen[key] = ftype

    def _bulk(self, tx: Tx, parent: int, plan: list, make_parents: bool,
              exist_ok: bool) -> pb.BulkCreateReply:
        conn, cred = tx.conn, tx.cred
        self.lock_inodes(conn, parent)
        base = self._dir(conn, parent)
        dirs: dict[tuple[str, ...], Any] = {(): base}
        touched: dict[int, int] = {}  # dir ino -> nlink delta
        new_names: set[tuple[int, str]] = set()
        inode_rows: list[dict] = []
        dentry_rows: list[dict] = []
        data_rows: list[dict] = []
        xattr_rows: list[dict] = []
        inos: list[int] = []
        ids = iter(self.engine.allocate_ids(conn, "inode", self._bulk_id_budget(plan)))
        created = 0
        searched: set[int] = set()
        empty: dict[int, bool] = {}  # dir ino -> had no entries when this call locked it

        def lookup(pdir: Any, name: str) -> Any:
            # Names made by this call are in new_names; a directory that was empty when
            # locked (or that this call made) holds no other names: no lookup per entry.
            known = empty.get(pdir.id)
            if known is None:
                self.lock_inodes(conn, pdir.id)  # creators lock the parent before inserting
                known = empty[pdir.id] = not self._dir_has_entries(conn, pdir.id)
            return None if known else self._lookup(conn, pdir.id, name)

        def search(pdir: Any) -> None:
            # A name is looked up in (or made in) a directory only with search permission
            # on it, as on a path walk: the base and every directory below it, found or
            # made by this call.
            if pdir.id not in searched:
                check(cred, pdir, X, "search a directory on the path")
                searched.add(pdir.id)

        def get_dir(key: tuple[str, ...]) -> Any:
            if key in dirs:
                return dirs[key]
            pdir = get_dir(key[:-1])
            name = key[-1]
            search(pdir)
            row = None if (pdir.id, name) in new_names else lookup(pdir, name)
            if row is None and (pdir.id, name) not in new_names:
                if not make_parents:
                    raise FsError(errno.ENOENT, "parent directory does not exist", "/".join(key))
                row = add(pdir, name, stat.S_IFDIR | 0o755, b"", {})
            elif row is None:
                raise FsError(errno.EEXIST, "a file and a directory share a path", "/".join(key))
            if not stat.S_ISDIR(row.mode):
                raise FsError(errno.ENOTDIR, "not a directory", "/".join(key))
            dirs[key] = row
            return row

        def add(pdir: Any, name: str, mode: int, data: bytes, xa: Any) -> Any:
            nonlocal created
            pid = pdir.id
            if pid not in touched:
                self.lock_inodes(conn, pid)
                check(cred, pdir, W | X, "create entries in this directory")
                touched[pid] = 0
            row = self._new_inode(tx, pdir, mode, size=len(data), ino=next(ids))
            ino = row["id"]
            is_dir = stat.S_ISDIR(mode)
            inode_rows.append(row)
            dentry_rows.append({"parent": pid, "name": name, "ino": ino,
                                "mode": stat.S_IFMT(mode)})
            new_names.add((pid, name))
            if data:
                data_rows.append({"ino": ino, "data": data})
            if is_dir:
                touched[pid] += 1
                empty[ino] = True
            tx.log(pb.OP_MKDIR if is_dir else pb.OP_CREATE, ino,
                   parent=pid, name=name, attr=dict_attr(row))
            for k, v in xa.items():
                xattr_rows.append({"ino": ino, "name": k, "value": v})
                tx.log(pb.OP_SETXATTR, ino, xattr_name=k,
                       xattr_value=v if k.startswith("user.") else b"")
            created += 1
            return _RowView(row) if is_dir else row

        for parts, ftype, e in plan:
            pdir = get_dir(tuple(parts[:-1]))
            name = parts[-1]
            search(pdir)
            if (pdir.id, name) in new_names:
                if ftype == stat.S_IFDIR and exist_ok:
                    inos.append(dirs.get(tuple(parts), _RowView({"id": 0})).id)
                    continue
                raise FsError(errno.EEXIST, "path appears twice in one bulk call", e.path)
            existing = lookup(pdir, name)
            if existing is not None:
                if ftype == stat.S_IFDIR and exist_ok and stat.S_ISDIR(existing.mode):
                    dirs[tuple(parts)] = existing
                    inos.append(existing.id)
                    continue
                raise FsError(errno.EEXIST, "file exists", e.path)
            xa: Any = {}
            if e.xattrs:
                xa = dict(e.xattrs)
                for k in xa:
                    if k.startswith("trusted.") or k.startswith("security."):
                        if not cred.is_root:
                            raise FsError(errno.EPERM, "only root may set this attribute", e.path)
            perm = stat.S_IMODE(e.mode) or (0o755 if ftype == stat.S_IFDIR else 0o644)
            made = add(pdir, name, ftype | perm, e.data, xa)
            if ftype == stat.S_IFDIR:
                dirs[tuple(parts)] = made
                inos.append(made.id)
            else:
                inos.append(made["id"])

        Q_INSERT_INODE.many(conn, inode_rows)
        Q_INSERT_DENTRY.many(conn, dentry_rows)
        Q_INSERT_DATA.many(conn, data_rows)
        Q_INSERT_XATTR.many(conn, xattr_rows)
        for dino, delta in touched.items():
            self._touch_dir(tx, dino, nlink_delta=delta)
        return pb.BulkCreateReply(created=created, inos=inos)

    @staticmethod
    def _bulk_id_budget(plan: list) -> int:
        # every entry, plus every intermediate directory that might have to be made
        dirs = {tuple(parts[:i]) for parts, _, _ in plan for i in range(1, len(parts))}
        return len(plan) + len(dirs)
