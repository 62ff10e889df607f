"""The namespace: every metadata operation as one SQL transaction.

Written once against the :class:`~metafs.namenode.engine.MetaEngine` contract. Each
mutating operation runs in a write transaction that takes the row locks it needs in one
global order (the cross-directory rename lock first, then inode rows by ascending id),
checks permissions and POSIX rules, changes the rows, and appends its change records to
the changelog as its last statement.
"""

from __future__ import annotations

import errno
import gc
import json
import logging
import os
import stat
import threading
import time
from collections import namedtuple
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence, TypeVar

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from ..config import Settings
from ..errors import FsError
from ..posix import (NAME_MAX, PATH_MAX, ROOT, ROOT_INO, R, W, X, Cred, access_mask_to_want,
                     allowed, check, check_name, check_path, check_sticky, is_owner)
from ..proto import metafs_pb2 as pb
from . import changelog, schema
from .engine import MetaEngine
from .sql import Prepared

log = logging.getLogger("metafs.namenode")

T = TypeVar("T")

I = schema.inodes
D = schema.dentries
FD = schema.file_data
XA = schema.xattrs
H = schema.handles
S = schema.sessions
C = schema.counters

SYMLOOP_MAX = 40
_RENAME_ATTEMPTS = 100  # restarts of one rename overtaken by changes of its names
MAX_FILE_SIZE = (1 << 63) - 1  # sizes and offsets are signed 64-bit in every database
LINK_MAX = 65000
XATTR_NAME_MAX = 255
XATTR_CREATE, XATTR_REPLACE = 1, 2
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
STORAGE_INLINE, STORAGE_BLOCKS = 0, 1

ATTR_COLS = (I.c.id, I.c.mode, I.c.nlink, I.c.uid, I.c.gid, I.c.rdev, I.c.size,
             I.c.atime_ns, I.c.mtime_ns, I.c.ctime_ns, I.c.btime_ns, I.c.version,
             I.c.generation, I.c.storage, I.c.target)

_Q_INODE = Prepared(select(*ATTR_COLS).where(I.c.id == bindparam("ino")))
_Q_LOOKUP = Prepared(select(*ATTR_COLS).select_from(D.join(I, I.c.id == D.c.ino))
                     .where(D.c.parent == bindparam("parent"), D.c.name == bindparam("name")))
_AttrRow = namedtuple("_AttrRow", [c.key for c in ATTR_COLS])  # type: ignore[misc]
_N_ATTR = len(ATTR_COLS)
WALK_MAX = 16  # path components resolved by one statement; deeper paths walk name by name
_Q_WALK: dict[int, Prepared] = {}


def _walk_query(depth: int) -> Prepared:
    """One statement that follows ``depth`` names from inode :start: the inode rows of
    every level side by side, NULL from the first name that is missing (a chain of outer
    joins of entries and inodes; each step is a primary-key lookup)."""
    q = _Q_WALK.get(depth)
    if q is None:
        levels = [I.alias(f"i{k}") for k in range(depth + 1)]
        joined: Any = levels[0]
        for k in range(1, depth + 1):
            d = D.alias(f"d{k}")
            joined = joined.outerjoin(d, (d.c.parent == levels[k - 1].c.id)
                                      & (d.c.name == bindparam(f"n{k}")))
            joined = joined.outerjoin(levels[k], levels[k].c.id == d.c.ino)
        cols = [lv.c[c.key].label(f"{c.key}_{k}") for k, lv in enumerate(levels)
                for c in ATTR_COLS]
        q = _Q_WALK[depth] = Prepared(
            select(*cols).select_from(joined).where(levels[0].c.id == bindparam("start")))
    return q


def _readdir_query(attrs: bool, after: bool) -> Prepared:
    """A page of a directory in name order: (name, *ATTR_COLS) or (name, ino, type)."""
    q = (select(D.c.name, *ATTR_COLS).select_from(D.join(I, I.c.id == D.c.ino)) if attrs
         else select(D.c.name, D.c.ino, D.c.mode))
    q = q.where(D.c.parent == bindparam("ino"))
    if after:
        q = q.where(D.c.name > bindparam("cursor"))
    return Prepared(q.order_by(D.c.name).limit(bindparam("lim")))


_Q_READDIR = {(a, c): _readdir_query(a, c) for a in (False, True) for c in (False, True)}
_Q_HAS_HANDLES = Prepared(select(H.c.id).where(H.c.ino == bindparam("ino")).limit(1))
_Q_DIR_PARENT = Prepared(select(D.c.parent).where(D.c.ino == bindparam("ino")).limit(1))
_Q_DIR_NONEMPTY = Prepared(select(D.c.name).where(D.c.parent == bindparam("ino")).limit(1))
_Q_TOUCH_DIR = Prepared(update(I).where(I.c.id == bindparam("ino")).values(
    mtime_ns=bindparam("now"), ctime_ns=bindparam("now"), nlink=I.c.nlink + bindparam("delta")))
_Q_INSERT_INODE = Prepared(insert(I))
_Q_INSERT_DENTRY = Prepared(insert(D).values(parent=bindparam("parent"), name=bindparam("name"),
                                             ino=bindparam("ino"), mode=bindparam("mode")))
_Q_INSERT_HANDLE = Prepared(insert(H).values(id=bindparam("id"), ino=bindparam("ino"),
                                             session=bindparam("session"),
                                             flags=bindparam("flags"),
                                             opened_ns=bindparam("opened_ns")))
_Q_HANDLE = Prepared(select(H.c.flags, H.c.session).where(H.c.id == bindparam("hid"),
                                                          H.c.ino == bindparam("ino")))
_Q_INSERT_DATA = Prepared(insert(FD).values(ino=bindparam("ino"), data=bindparam("data")))
_Q_INSERT_XATTR = Prepared(insert(XA).values(ino=bindparam("ino"), name=bindparam("name"),
                                             value=bindparam("value")))
_Q_XATTR = Prepared(select(XA.c.value).where(XA.c.ino == bindparam("ino"),
                                             XA.c.name == bindparam("name")))
_Q_XATTR_NAMES = Prepared(select(XA.c.name).where(XA.c.ino == bindparam("ino"))
                          .order_by(XA.c.name))
_Q_UPDATE_XATTR = Prepared(update(XA).where(XA.c.ino == bindparam("ino"),
                                            XA.c.name == bindparam("name"))
                           .values(value=bindparam("value")))
_Q_DELETE_XATTR = Prepared(delete(XA).where(XA.c.ino == bindparam("ino"),
                                            XA.c.name == bindparam("name")))
_Q_INLINE = Prepared(select(FD.c.data).where(FD.c.ino == bindparam("ino")))
_Q_SET_NLINK = Prepared(update(I).where(I.c.id == bindparam("ino")).values(
    nlink=bindparam("new_nlink"), ctime_ns=bindparam("now")))
_Q_SET_CTIME = Prepared(update(I).where(I.c.id == bindparam("ino")).values(
    ctime_ns=bindparam("now")))
_Q_DELETE_DATA = Prepared(delete(FD).where(FD.c.ino == bindparam("ino")))
_Q_UPDATE_DATA = Prepared(update(FD).where(FD.c.ino == bindparam("ino")).values(
    data=bindparam("new_data")))
_Q_DELETE_XATTRS = Prepared(delete(XA).where(XA.c.ino == bindparam("ino")))
_Q_DELETE_INODE = Prepared(delete(I).where(I.c.id == bindparam("ino")))
_Q_DELETE_DENTRY = Prepared(delete(D).where(D.c.parent == bindparam("dparent"),
                                            D.c.name == bindparam("dname")))
_Q_MOVE_DENTRY = Prepared(update(D).where(D.c.parent == bindparam("sp"),
                                          D.c.name == bindparam("sn")).values(
    parent=bindparam("dp"), name=bindparam("dn")))
_BUMP = object()  # in _update_inode's values: version = version + 1
_Q_UPDATE_INODE: dict[tuple[str, ...], Prepared] = {}


def _update_inode(conn: Connection, ino: int, vals: dict[str, Any]) -> None:
    """UPDATE inodes SET ... WHERE id = ino, prepared once per set of columns (setattr and
    write change a few of a handful of column sets)."""
    cols = tuple(sorted(vals))
    q = _Q_UPDATE_INODE.get(cols)
    if q is None:
        q = Prepared(update(I).where(I.c.id == bindparam("ino")).values(
            {c: (I.c.version + 1 if vals[c] is _BUMP else bindparam(f"v_{c}")) for c in cols}))
        _Q_UPDATE_INODE[cols] = q
    q.run(conn, ino=ino, **{f"v_{c}": v for c, v in vals.items() if v is not _BUMP})


_Q_HANDLE_BY_ID = Prepared(select(H.c.ino, H.c.session).where(H.c.id == bindparam("hid")))
_Q_DELETE_HANDLE = Prepared(delete(H).where(H.c.id == bindparam("hid")))

# The caller of the operation running in this context. Handle checks read it when their
# caller passes no credentials (the block layer's RPCs; see Namespace.__init__).
_CALLER: ContextVar[Cred | None] = ContextVar("metafs_caller", default=None)

_ALLOWED_TYPES = {stat.S_IFREG, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK}


def attr_fields(row: Any) -> dict[str, Any]:
    """The fields of a ``pb.Attr`` of an inode row (a dict, which protobuf builds a nested
    message from in place)."""
    return {"ino": row.id, "mode": row.mode, "nlink": row.nlink, "uid": row.uid,
            "gid": row.gid, "rdev": row.rdev, "size": row.size, "atime_ns": row.atime_ns,
            "mtime_ns": row.mtime_ns, "ctime_ns": row.ctime_ns, "btime_ns": row.btime_ns,
            "version": row.version, "generation": row.generation,
            "inline": row.storage == STORAGE_INLINE}


def to_attr(row: Any) -> pb.Attr:
    return pb.Attr(**attr_fields(row))


def dict_attr(row: dict) -> pb.Attr:
    """to_attr for the column dict of an inode this transaction is creating."""
    return pb.Attr(ino=row["id"], mode=row["mode"], nlink=row["nlink"], uid=row["uid"],
                   gid=row["gid"], rdev=row["rdev"], size=row["size"], atime_ns=row["atime_ns"],
                   mtime_ns=row["mtime_ns"], ctime_ns=row["ctime_ns"], btime_ns=row["btime_ns"],
                   version=row["version"], generation=row["generation"],
                   inline=row["storage"] == STORAGE_INLINE)


@dataclass
class Tx:
    """One write transaction: its connection, caller, clock and pending change records."""

    ns: "Namespace"
    conn: Connection
    cred: Cred
    now: int
    records: list[pb.ChangeRecord] = field(default_factory=list)
    after_commit: list[Callable[[], None]] = field(default_factory=list)
    _who: dict[str, Any] | None = None  # the fields every record of this transaction has

    def log(self, op: int, ino: int, **kw: Any) -> pb.ChangeRecord:
        who = self._who
        if who is None:
            who = self._who = dict(uid=self.cred.uid, client_id=self.cred.client_id,
                                   run_id=self.cred.run_id, ts_ns=self.now)
        # a record may name another run (RecordAccess events do): kw wins
        rec = pb.ChangeRecord(op=op, ino=ino, **(who | kw))
        self.records.append(rec)
        return rec


class Namespace:
    """All metadata operations. Thread-safe; holds no state another namenode could
    contradict (only caches of immutable facts and a statfs cache)."""

    def __init__(self, engine: MetaEngine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.notifier = changelog.Notifier()
        self._statfs_cache: tuple[float, pb.StatFsReply] | None = None
        self._reclaimed_once = False  # the first reclaim round scans for every orphan
        self._statfs_lock = threading.Lock()
        # Hooks for the block layer: free an inode's data (blocks), and commit data
        # that outgrows the inline limit. The inline-only default refuses the latter.
        self.free_data_hooks: list[Callable[[Tx, int], None]] = []
        from .blocks import BlockLayer  # registers its free hook; opens the store lazily

        self.blocks = BlockLayer(self)
        # The block layer checks handles without handing its caller down: run its RPCs
        # with the caller recorded, so that a handle is honoured only for its own session.
        for name in ("get_layout", "presign", "commit"):
            fn = getattr(self.blocks, name, None)
            if fn is not None:
                setattr(self.blocks, name, _with_caller(fn))
        # Checks run inside each write transaction before it commits (quotas).
        self.precommit_hooks: list[Callable[[Tx], None]] = []
        from .quota import Quotas  # registers its EDQUOT check

        self.quotas = Quotas(self)
        from .locks import Locks  # cluster-wide fcntl/flock locks (dropped with sessions)

        self.locks = Locks(self)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        self.engine.setup()
        try:
            self.engine.write(self._ensure_root)
        except IntegrityError:
            # another namenode starting on the same empty database made the root first
            if self.engine.read(lambda c: self._row(c, ROOT_INO)) is None:
                raise

    def _ensure_root(self, conn: Connection) -> None:
        if conn.execute(select(I.c.id).where(I.c.id == ROOT_INO)).first() is None:
            now = time.time_ns()
            conn.execute(insert(I).values(
                id=ROOT_INO, mode=stat.S_IFDIR | 0o755, uid=0, gid=0, nlink=2, rdev=0, size=0,
                atime_ns=now, mtime_ns=now, ctime_ns=now, btime_ns=now, version=0,
                generation=0, storage=STORAGE_INLINE))

    # ------------------------------------------------------------------ plumbing
    def mutate(self, cred: Cred, fn: Callable[[Tx], T]) -> T:
        def body(conn: Connection) -> tuple[T, int, list[Callable[[], None]]]:
            tx = Tx(self, conn, cred, time.time_ns())
            result = fn(tx)
            for hook in self.precommit_hooks:
                hook(tx)
            last = changelog.append(conn, tx.records) if tx.records else 0
            return result, last, tx.after_commit

        token = _CALLER.set(cred)
        try:
            result, last, after = self.engine.write(body)
        finally:
            _CALLER.reset(token)
        if last:
            self.notifier.notify(last)
        for cb in after:
            cb()
        return result

    def query(self, fn: Callable[[Connection], T]) -> T:
        return self.engine.read(fn)

    def _row(self, conn: Connection, ino: int) -> Any:
        return _Q_INODE.first(conn, ino=ino)

    def _get(self, conn: Connection, ino: int) -> Row:
        row = self._row(conn, ino)
        if row is None or (row.nlink == 0 and not self._has_handles(conn, ino)):
            raise FsError(errno.ENOENT, f"no inode {ino}")
        return row

    def _lock(self, conn: Connection, *inos: int) -> None:
        """Lock inode rows in ascending id order (the engine's; a no-op where writers are
        serialized)."""
        self.engine.lock_inodes(conn, *inos)

    def _lock_renames(self, conn: Connection) -> None:
        """Serialize renames that move a directory to another parent (as Linux does with
        its per-filesystem rename mutex): the subtree check is then exact."""
        self.engine.lock_renames(conn)

    def _lookup(self, conn: Connection, parent: int, name: str) -> Any:
        return _Q_LOOKUP.first(conn, parent=parent, name=name)

    def _dir(self, conn: Connection, ino: int) -> Row:
        row = self._get(conn, ino)
        if not stat.S_ISDIR(row.mode):
            raise FsError(errno.ENOTDIR, f"inode {ino} is not a directory")
        if row.nlink == 0:
            raise FsError(errno.ENOENT, "directory has been removed")
        return row

    def _has_handles(self, conn: Connection, ino: int) -> bool:
        return _Q_HAS_HANDLES.first(conn, ino=ino) is not None

    def _parent_of_dir(self, conn: Connection, ino: int) -> int:
        if ino == ROOT_INO:
            return ROOT_INO
        p = _Q_DIR_PARENT.scalar(conn, ino=ino)
        if p is None:
            raise FsError(errno.ENOENT, f"directory {ino} has no parent")
        return int(p)

    def _touch_dir(self, tx: Tx, ino: int, nlink_delta: int = 0) -> None:
        _Q_TOUCH_DIR.run(tx.conn, ino=ino, now=tx.now, delta=nlink_delta)

    def _new_inode(self, tx: Tx, parent: Row, mode: int, *, rdev: int = 0,
                   target: str | None = None, size: int = 0, ino: int | None = None) -> dict:
        cred = tx.cred
        gid = cred.gid
        if parent.mode & stat.S_ISGID:
            gid = parent.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        if mode & stat.S_ISGID and not stat.S_ISDIR(mode) and not cred.is_root \
                and not cred.in_group(gid):
            mode &= ~stat.S_ISGID
        if ino is None:
            ino = self.engine.allocate_ids(tx.conn, "inode", 1)[0]
        return dict(id=ino, mode=mode, uid=cred.uid, gid=gid,
                    nlink=2 if stat.S_ISDIR(mode) else 1, rdev=rdev, size=size,
                    atime_ns=tx.now, mtime_ns=tx.now, ctime_ns=tx.now, btime_ns=tx.now,
                    version=0, generation=0, storage=STORAGE_INLINE, target=target)

    def _link_entry(self, tx: Tx, parent: int, name: str, ino: int, mode: int) -> None:
        _Q_INSERT_DENTRY.run(tx.conn, parent=parent, name=name, ino=ino, mode=stat.S_IFMT(mode))

    def _check_dir_for_entry(self, tx: Tx, parent_ino: int, name: str) -> Row:
        """Lock and check a directory that gets a new entry ``name``."""
        self._lock(tx.conn, parent_ino)
        parent = self._dir(tx.conn, parent_ino)
        # As Linux: a name that exists is EEXIST even where it could not be created.
        check(tx.cred, parent, X, "search this directory")
        if self._lookup(tx.conn, parent_ino, name) is not None:
            raise FsError(errno.EEXIST, "file exists", name)
        check(tx.cred, parent, W | X, "create entries in this directory")
        return parent

    def _drop_link(self, tx: Tx, row: Row) -> int:
        """One name of ``row`` is gone: lower nlink, free the inode if nothing uses it.
        Returns the links left."""
        left = 0 if stat.S_ISDIR(row.mode) else row.nlink - 1
        _Q_SET_NLINK.run(tx.conn, ino=row.id, new_nlink=left, now=tx.now)
        if left == 0 and not self._has_handles(tx.conn, row.id):
            self._free(tx, row.id)
        return left

    def _free(self, tx: Tx, ino: int) -> None:
        for hook in self.free_data_hooks:
            hook(tx, ino)
        _Q_DELETE_DATA.run(tx.conn, ino=ino)
        _Q_DELETE_XATTRS.run(tx.conn, ino=ino)
        _Q_DELETE_INODE.run(tx.conn, ino=ino)
        tx.log(pb.OP_FREE, ino)

    # ------------------------------------------------------------------ sessions
    def open_session(self, cred: Cred, client_id: str, host: str) -> pb.SessionReply:
        if not client_id or len(client_id) > 64:
            raise FsError(errno.EINVAL, "a session needs a client id of 1 to 64 characters")
        lease = self.settings.session_lease

        def fn(tx: Tx) -> None:
            exp = tx.now + int(lease * 1e9)
            n = tx.conn.execute(update(S).where(S.c.id == client_id).values(expires_ns=exp)).rowcount
            if not n:
                tx.conn.execute(insert(S).values(id=client_id, host=host, uid=cred.uid,
                                                 pid=cred.pid, started_ns=tx.now, expires_ns=exp))

        self.mutate(cred, fn)
        return pb.SessionReply(lease_seconds=lease, inline_limit=self.settings.inline_limit,
                               block_size=self.settings.block_size)

    def close_session(self, client_id: str) -> None:
        def fn(tx: Tx) -> None:
            inos = tx.conn.execute(select(H.c.ino).where(H.c.session == client_id)).scalars().all()
            tx.conn.execute(delete(H).where(H.c.session == client_id))
            tx.conn.execute(delete(S).where(S.c.id == client_id))
            self.locks.drop_session(tx, [client_id])
            self._free_orphans(tx, set(inos))

        self.mutate(ROOT, fn)

    def reclaim(self, full: bool | None = None) -> int:
        """Drop handles of sessions whose lease ran out, and free inodes with no names
        and no handles left (after a client crash). Returns the inodes freed.

        An inode is left with no name and no handle only when the session holding its
        last handle dies, so a round frees the inodes of the dead sessions' handles. The
        first round of a namenode (and ``full=True``) also scans every inode for nlink 0
        (orphans from before it started: a database restored or repaired by hand); that
        is a full table scan, so it does not run every round."""
        if full is None:
            full = not self._reclaimed_once

        def fn(tx: Tx) -> int:
            dead = tx.conn.execute(select(S.c.id).where(S.c.expires_ns < tx.now)).scalars().all()
            candidates: set[int] = set()
            if dead:
                candidates.update(tx.conn.execute(
                    select(H.c.ino).where(H.c.session.in_(dead))).scalars().all())
                tx.conn.execute(delete(H).where(H.c.session.in_(dead)))
                tx.conn.execute(delete(S).where(S.c.id.in_(dead)))
                self.locks.drop_session(tx, dead)
            if full:
                candidates.update(
                    tx.conn.execute(select(I.c.id).where(I.c.nlink == 0)).scalars().all())
            return self._free_orphans(tx, candidates)

        n = self.mutate(ROOT, fn)
        self._reclaimed_once = True
        if n:
            log.info("reclaimed %d orphaned inodes", n)
        return n

    def _free_orphans(self, tx: Tx, inos: set[int]) -> int:
        n = 0
        for ino in sorted(inos):
            row = self._row(tx.conn, ino)
            if row is not None and row.nlink == 0 and not self._has_handles(tx.conn, ino):
                self._free(tx, ino)
                n += 1
        return n

    # ------------------------------------------------------------------ lookups
    def lookup(self, cred: Cred, parent: int, name: str) -> pb.Entry:
        check_name(name, new=False)
        if name != "." and name != "..":
            found = self.engine.read_statement(
                lambda conn: self._walk(conn, cred, parent, [name], False, False, name))
            if found is not None:
                return found
        return self.query(lambda conn: self._lookup_entry(conn, cred, parent, name))

    def _lookup_entry(self, conn: Connection, cred: Cred, parent: int, name: str) -> pb.Entry:
        """Lookup by the general rules (the answer, or the exact error, of any case)."""
        d = self._dir(conn, parent)
        check(cred, d, X, "search this directory")
        if name == ".":
            row = d
        elif name == "..":
            row = self._get(conn, self._parent_of_dir(conn, parent))
        else:
            row = self._lookup(conn, parent, name)
            if row is None:
                raise FsError(errno.ENOENT, "no such file or directory", name)
        return pb.Entry(ino=row.id, attr=to_attr(row))

    def resolve(self, cred: Cred, path: str, start: int = 0, follow: bool = True) -> pb.Entry:
        check_path(path)
        start = ROOT_INO if path.startswith("/") else (start or ROOT_INO)
        parts = [p for p in path.split("/") if p]
        if 0 < len(parts) <= WALK_MAX and "." not in parts and ".." not in parts:
            found = self.engine.read_statement(
                lambda conn: self._walk(conn, cred, start, parts, follow, path.endswith("/"),
                                        path))
            if found is not None:
                return found
        return self.query(lambda conn: self._resolve(conn, cred, path, start, follow))

    def _walk(self, conn: Connection, cred: Cred, start: int, parts: list[str], follow: bool,
              must_dir: bool, missing: str) -> pb.Entry | None:
        """Resolve a plain path (no '.', '..') in one statement, as HopsFS resolves a path
        in one round trip. A name missing from a directory it may search is ENOENT (with
        ``missing`` as the path of the error). Returns None whenever the general walk must
        decide: a symlink to follow, a denied search, a name too long, anything unusual;
        it then runs in a transaction of its own and gives the exact answer or error."""
        row = _walk_query(len(parts)).first(
            conn, start=start, **{f"n{k}": n for k, n in enumerate(parts, 1)})
        if row is None or row[0] is None:
            return None
        cur = _AttrRow(*row[:_N_ATTR])
        if cur.nlink == 0:
            return None
        last = len(parts)
        for k in range(1, last + 1):
            if not stat.S_ISDIR(cur.mode) or not allowed(cred, cur.mode, cur.uid, cur.gid, X):
                return None
            if len(parts[k - 1].encode("utf-8", "surrogatepass")) > NAME_MAX:
                return None
            nxt = row[k * _N_ATTR:(k + 1) * _N_ATTR]
            if nxt[0] is None:  # searched for and not there: the answer, as on the long way
                raise FsError(errno.ENOENT, "no such file or directory", missing)
            cur = _AttrRow(*nxt)
            if stat.S_ISLNK(cur.mode) and (k < last or follow):  # "link/" ends below
                return None
        if must_dir and not stat.S_ISDIR(cur.mode):
            return None
        return pb.Entry(ino=cur.id, attr=to_attr(cur))

    def _resolve(self, conn: Connection, cred: Cred, path: str, start: int, follow: bool,
                 *, want_parent: bool = False) -> Any:
        """Walk ``path``; checks search permission on every directory crossed and follows
        symlinks (at most SYMLOOP_MAX). With ``want_parent`` returns (parent row, last name)
        without looking the last name up.

        As POSIX: a path that ends in '/' names a directory (ENOTDIR otherwise), and a
        final symlink is then followed even without ``follow`` ("link/" is what it points
        to); so does a symlink whose target ends in '/'."""
        links = 0
        cur = self._get(conn, ROOT_INO if path.startswith("/") else start)
        parts = [p for p in path.split("/") if p]
        must_dir = path.endswith("/")
        if want_parent and not parts:
            raise FsError(errno.EINVAL, "the root has no parent", path)
        i = 0
        while i < len(parts):
            name = parts[i]
            last = i == len(parts) - 1
            if not stat.S_ISDIR(cur.mode):
                raise FsError(errno.ENOTDIR, "not a directory", path)
            check(cred, cur, X, "search a directory on the path")
            if len(name.encode("utf-8", "surrogatepass")) > NAME_MAX:
                raise FsError(errno.ENAMETOOLONG, "file name too long", path)
            if want_parent and last:
                return cur, name
            if name == ".":
                i += 1
                continue
            if name == "..":
                cur = self._get(conn, self._parent_of_dir(conn, cur.id))
                i += 1
                continue
            row = self._lookup(conn, cur.id, name)
            if row is None:
                raise FsError(errno.ENOENT, "no such file or directory", path)
            if stat.S_ISLNK(row.mode) and (not last or follow or must_dir):
                links += 1
                if links > SYMLOOP_MAX:
                    raise FsError(errno.ELOOP, "too many levels of symbolic links", path)
                target = row.target or ""
                rest = parts[i + 1:]
                tparts = [p for p in target.split("/") if p]
                if not rest and target.endswith("/"):
                    must_dir = True  # the target's last name is now the path's
                if target.startswith("/"):
                    cur = self._get(conn, ROOT_INO)
                parts = tparts + rest
                i = 0
                if want_parent and not parts:
                    raise FsError(errno.EINVAL, "path resolves to the root", path)
                continue
            cur = row
            i += 1
        if must_dir and not stat.S_ISDIR(cur.mode):
            raise FsError(errno.ENOTDIR, "not a directory (the path ends in '/')", path)
        return pb.Entry(ino=cur.id, attr=to_attr(cur))

    def resolve_parent(self, cred: Cred, path: str) -> tuple[int, str]:
        """(parent directory inode, last name) of a path for an entry to be made in it: the
        parent is resolved following links and must be a directory."""
        check_path(path)
        p = path.rstrip("/")
        if not p:
            raise FsError(errno.EEXIST, "the root exists", path)
        head, name = p.rsplit("/", 1) if "/" in p else ("", p)
        e = self.resolve(cred, head or "/", ROOT_INO, True)
        if not stat.S_ISDIR(e.attr.mode):
            raise FsError(errno.ENOTDIR, "not a directory", path)
        return e.ino, name

    def searchable(self, cred: Cred, dirs: Iterable[str]) -> set[str]:
        """The directory paths among ``dirs`` in which ``cred`` may look names up: search
        permission on each of them and on every directory above (what a path walk to a
        file inside needs). Missing or unreadable ones are left out. One read transaction."""
        wanted = sorted(set(dirs))

        def fn(conn: Connection) -> set[str]:
            ok: set[str] = set()
            for d in wanted:
                try:
                    row = self._get(conn, self._resolve(conn, cred, d, ROOT_INO, True).ino)
                    if stat.S_ISDIR(row.mode) and allowed(cred, row.mode, row.uid, row.gid, X):
                        ok.add(d)
                except FsError:
                    pass
            return ok

        return self.query(fn)

    def getattr(self, cred: Cred, ino: int) -> pb.Attr:
        row = self.engine.read_statement(lambda conn: self._row(conn, ino))
        if row is not None and row.nlink > 0:  # one statement for a linked inode
            return to_attr(row)
        # removed, or unlinked but still open: the handles decide, in one snapshot
        return self.query(lambda conn: to_attr(self._get(conn, ino)))

    def readlink(self, cred: Cred, ino: int) -> str:
        def fn(conn: Connection) -> str:
            row = self._get(conn, ino)
            if not stat.S_ISLNK(row.mode):
                raise FsError(errno.EINVAL, "not a symbolic link")
            return row.target or ""

        return self.query(fn)

    def access(self, cred: Cred, ino: int, mask: int) -> None:
        if mask & ~(os.R_OK | os.W_OK | os.X_OK):
            raise FsError(errno.EINVAL, f"bad access mask {mask:#o}")

        def fn(conn: Connection) -> None:
            row = self._get(conn, ino)
            want = access_mask_to_want(mask)
            if want:
                check(cred, row, want, "access this file")

        self.query(fn)

    def readdir(self, cred: Cred, ino: int, cursor: str, limit: int,
                attrs: bool) -> pb.ReadDirReply:
        limit = min(limit or self.settings.readdir_page, 10 * self.settings.readdir_page)

        def fn(conn: Connection) -> pb.ReadDirReply:
            d = self._dir(conn, ino)
            check(cred, d, R, "list this directory")
            params = {"ino": ino, "lim": limit + 1}
            if cursor:
                params["cursor"] = cursor
            cur = _Q_READDIR[bool(attrs), bool(cursor)].execute(conn, params)
            try:
                rows = cur.fetchall()
            finally:
                cur.close()
            reply = pb.ReadDirReply()
            add = reply.entries.add
            for r in rows[:limit]:
                if attrs:  # (name, *ATTR_COLS); the attributes built in place
                    add(name=r[0], ino=r[1], mode=r[2],
                        attr=attr_fields(_AttrRow._make(r[1:])))
                else:
                    add(name=r[0], ino=r[1], mode=r[2])
            reply.eof = len(rows) <= limit
            if reply.entries:
                reply.next_cursor = reply.entries[-1].name
            return reply

        return self.query(fn)

    def statfs(self, cred: Cred) -> pb.StatFsReply:
        with self._statfs_lock:
            cached = self._statfs_cache
            if cached and time.monotonic() - cached[0] < 1.0:
                return cached[1]

        def fn(conn: Connection) -> tuple[int, int]:
            n, used = conn.execute(select(func.count(), func.coalesce(func.sum(I.c.size), 0))
                                   .select_from(I)).one()
            return int(n), int(used)

        n, used = self.query(fn)
        bsize = 4096
        cap = self.settings.capacity_bytes // bsize
        used_blocks = (used + bsize - 1) // bsize
        reply = pb.StatFsReply(bsize=bsize, blocks=cap, bfree=max(cap - used_blocks, 0),
                               bavail=max(cap - used_blocks, 0),
                               files=self.settings.capacity_inodes,
                               ffree=max(self.settings.capacity_inodes - n, 0),
                               namemax=NAME_MAX, used_bytes=used, used_inodes=n)
        with self._statfs_lock:
            self._statfs_cache = (time.monotonic(), reply)
        return reply

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
            self._lock(tx.conn, parent)
            pdir = self._dir(tx.conn, parent)
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
            _Q_INSERT_INODE.run(tx.conn, **row)
            self._link_entry(tx, parent, name, row["id"], row["mode"])
            self._touch_dir(tx, parent)
            attr = dict_attr(row)
            tx.log(pb.OP_CREATE if ftype == stat.S_IFREG else pb.OP_MKNOD, row["id"],
                   parent=parent, name=name, attr=attr)
            handle = self._new_handle(tx, row["id"], flags) if do_open else 0
            return pb.OpenReply(attr=attr, handle=handle)

        return self.mutate(cred, fn)

    def mkdir(self, cred: Cred, parent: int, name: str, mode: int, umask: int = 0) -> pb.Entry:
        check_name(name)
        perm = stat.S_IMODE(mode) & ~umask & 0o7777

        def fn(tx: Tx) -> pb.Entry:
            pdir = self._check_dir_for_entry(tx, parent, name)
            row = self._new_inode(tx, pdir, stat.S_IFDIR | perm)
            _Q_INSERT_INODE.run(tx.conn, **row)
            self._link_entry(tx, parent, name, row["id"], row["mode"])
            self._touch_dir(tx, parent, nlink_delta=1)
            attr = dict_attr(row)
            tx.log(pb.OP_MKDIR, row["id"], parent=parent, name=name, attr=attr)
            return pb.Entry(ino=row["id"], attr=attr)

        return self.mutate(cred, fn)

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
            _Q_INSERT_INODE.run(tx.conn, **row)
            self._link_entry(tx, parent, name, row["id"], row["mode"])
            self._touch_dir(tx, parent)
            attr = dict_attr(row)
            tx.log(pb.OP_SYMLINK, row["id"], parent=parent, name=name, attr=attr,
                   extra=json.dumps({"target": target}))
            return pb.Entry(ino=row["id"], attr=attr)

        return self.mutate(cred, fn)

    def link(self, cred: Cred, ino: int, new_parent: int, new_name: str) -> pb.Entry:
        check_name(new_name)

        def fn(tx: Tx) -> pb.Entry:
            self._lock(tx.conn, ino, new_parent)
            row = self._get(tx.conn, ino)
            # Linux's order: the new name (EEXIST), write access, then the source.
            self._check_dir_for_entry(tx, new_parent, new_name)
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
            attr = to_attr(self._row(tx.conn, ino))
            tx.log(pb.OP_LINK, ino, parent=new_parent, name=new_name, attr=attr)
            return pb.Entry(ino=ino, attr=attr)

        return self.mutate(cred, fn)

    # ------------------------------------------------------------------ removal
    def unlink(self, cred: Cred, parent: int, name: str) -> None:
        check_name(name, new=False)
        if name in (".", ".."):
            raise FsError(errno.EISDIR, "is a directory", name)

        def fn(tx: Tx) -> None:
            target = self._lookup(tx.conn, parent, name)
            self._lock(tx.conn, parent, target.id if target else 0)
            pdir = self._dir(tx.conn, parent)
            check(cred, pdir, X, "search this directory")
            row = self._lookup(tx.conn, parent, name)
            if row is None:  # as Linux: ENOENT before EACCES
                raise FsError(errno.ENOENT, "no such file or directory", name)
            check(cred, pdir, W | X, "remove entries from this directory")
            if stat.S_ISDIR(row.mode):
                raise FsError(errno.EISDIR, "is a directory (use rmdir)", name)
            check_sticky(cred, pdir, row)
            _Q_DELETE_DENTRY.run(tx.conn, dparent=parent, dname=name)
            self._touch_dir(tx, parent)
            rec = tx.log(pb.OP_UNLINK, row.id, parent=parent, name=name)
            rec.nlink = self._drop_link(tx, row)

        self.mutate(cred, fn)

    def rmdir(self, cred: Cred, parent: int, name: str) -> None:
        check_name(name, new=False)
        if name == ".":
            raise FsError(errno.EINVAL, "cannot remove '.'", name)
        if name == "..":
            raise FsError(errno.ENOTEMPTY, "cannot remove '..'", name)

        def fn(tx: Tx) -> None:
            target = self._lookup(tx.conn, parent, name)
            self._lock(tx.conn, parent, target.id if target else 0)
            pdir = self._dir(tx.conn, parent)
            check(cred, pdir, X, "search this directory")
            row = self._lookup(tx.conn, parent, name)
            if row is None:  # as Linux: ENOENT before EACCES
                raise FsError(errno.ENOENT, "no such file or directory", name)
            check(cred, pdir, W | X, "remove entries from this directory")
            if not stat.S_ISDIR(row.mode):
                raise FsError(errno.ENOTDIR, "not a directory", name)
            check_sticky(cred, pdir, row)
            if self._dir_has_entries(tx.conn, row.id):
                raise FsError(errno.ENOTEMPTY, "directory not empty", name)
            _Q_DELETE_DENTRY.run(tx.conn, dparent=parent, dname=name)
            self._touch_dir(tx, parent, nlink_delta=-1)
            tx.log(pb.OP_RMDIR, row.id, parent=parent, name=name)
            self._drop_link(tx, row)

        self.mutate(cred, fn)

    def _dir_has_entries(self, conn: Connection, ino: int) -> bool:
        return _Q_DIR_NONEMPTY.first(conn, ino=ino) is not None

    # ------------------------------------------------------------------ rename
    def rename(self, cred: Cred, src_parent: int, src_name: str, dst_parent: int,
               dst_name: str, flags: int = 0) -> None:
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
        rename_lock = False
        for _ in range(_RENAME_ATTEMPTS):
            try:
                self.mutate(cred, lambda tx: self._rename(tx, src_parent, src_name, dst_parent,
                                                          dst_name, flags, rename_lock))
                return
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
                rename_lock: bool = False) -> None:
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
        if locked_renames:
            self._lock_renames(conn)
        src = self._lookup(conn, sp, sn)
        dst = self._lookup(conn, dp, dn)
        if not locked_renames and self._moves_dir(sp, dp, src, dst, exchange):
            self._lock_renames(conn)
            locked_renames = True
        locked = {sp, dp, src.id if src else 0, dst.id if dst else 0}
        self._lock(conn, *locked)
        # Re-read everything under the locks. The entries of sp and dp cannot change now
        # (every change of a directory's entries locks its row), nor, once the rename lock
        # is held, the parent of any directory.
        spd = self._dir(conn, sp)
        dpd = spd if dp == sp else self._dir(conn, dp)
        check(cred, spd, X, "search the source directory")
        check(cred, dpd, X, "search the target directory")
        src = self._lookup(conn, sp, sn)
        if src is None:
            raise FsError(errno.ENOENT, "no such file or directory", sn)
        dst = self._lookup(conn, dp, dn)
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
            return  # two names of one inode: POSIX says do nothing
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
            for ino in (src.id, dst.id):
                _Q_SET_CTIME.run(conn, ino=ino, now=tx.now)
            tx.log(pb.OP_RENAME, src.id, parent=dp, name=dn, old_parent=sp, old_name=sn,
                   target_ino=dst.id, flags=flags, attr=to_attr(self._row(conn, src.id)))
            return

        left = 0
        if dst is not None:
            _Q_DELETE_DENTRY.run(conn, dparent=dp, dname=dn)
        _Q_MOVE_DENTRY.run(conn, sp=sp, sn=sn, dp=dp, dn=dn)
        if sp != dp and src_dir:
            self._touch_dir(tx, sp, nlink_delta=-1)
            self._touch_dir(tx, dp, nlink_delta=0 if dst_dir else 1)
        else:
            self._touch_dir(tx, sp, nlink_delta=-1 if (dst_dir and sp == dp) else 0)
            if dp != sp:
                self._touch_dir(tx, dp, nlink_delta=-1 if dst_dir else 0)
        _Q_SET_CTIME.run(conn, ino=src.id, now=tx.now)
        rec = tx.log(pb.OP_RENAME, src.id, parent=dp, name=dn, old_parent=sp, old_name=sn,
                     target_ino=dst.id if dst is not None else 0, flags=flags,
                     attr=to_attr(self._row(conn, src.id)))
        if dst is not None:
            left = self._drop_link(tx, dst)
            rec.nlink = left

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
            self._lock(tx.conn, ino)
            row = self._get(tx.conn, ino)
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
                if not self._writable_handle(tx.conn, handle, ino, cred):
                    check(cred, row, W, "truncate this file")
                self._truncate(tx, row, size)
                vals["size"] = size
                vals["mtime_ns"] = vals.get("mtime_ns", tx.now)
                vals["version"] = _BUMP
                if not cred.is_root:
                    vals["mode"] = self._kill_priv(vals.get("mode", new_mode))
            vals["ctime_ns"] = tx.now
            _update_inode(tx.conn, ino, vals)
            attr = to_attr(self._row(tx.conn, ino))
            tx.log(pb.OP_WRITE if size is not None else pb.OP_SETATTR, ino, attr=attr)
            return attr

        return self.mutate(cred, fn)

    @staticmethod
    def _kill_priv(mode: int) -> int:
        mode &= ~stat.S_ISUID
        if mode & stat.S_IXGRP:
            mode &= ~stat.S_ISGID
        return mode

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
            row = self._get(conn, ino)
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
            self._lock(tx.conn, ino)
            row = self._get(tx.conn, ino)
            self._xattr_perm(cred, row, name, write=True)
            have = _Q_XATTR.first(tx.conn, ino=ino, name=name) is not None
            if have and flags & XATTR_CREATE:
                raise FsError(errno.EEXIST, "attribute exists (XATTR_CREATE)", name)
            if not have and flags & XATTR_REPLACE:
                raise FsError(errno.ENODATA, "no such attribute (XATTR_REPLACE)", name)
            (_Q_UPDATE_XATTR if have else _Q_INSERT_XATTR).run(
                tx.conn, ino=ino, name=name, value=value)
            _Q_SET_CTIME.run(tx.conn, ino=ino, now=tx.now)
            tx.log(pb.OP_SETXATTR, ino, xattr_name=name,
                   xattr_value=value if name.startswith("user.") else b"")

        self.mutate(cred, fn)

    def listxattr(self, cred: Cred, ino: int) -> list[str]:
        def fn(conn: Connection) -> list[str]:
            self._get(conn, ino)
            names = [r[0] for r in _Q_XATTR_NAMES.all(conn, ino=ino)]
            if not cred.is_root:
                names = [n for n in names if not n.startswith("trusted.")]
            return list(names)

        return self.query(fn)

    def removexattr(self, cred: Cred, ino: int, name: str) -> None:
        self._check_xattr_name(name)

        def fn(tx: Tx) -> None:
            self._lock(tx.conn, ino)
            row = self._get(tx.conn, ino)
            self._xattr_perm(cred, row, name, write=True)
            n = _Q_DELETE_XATTR.run(tx.conn, ino=ino, name=name)
            if not n:
                raise FsError(errno.ENODATA, "no such attribute", name)
            _Q_SET_CTIME.run(tx.conn, ino=ino, now=tx.now)
            tx.log(pb.OP_REMOVEXATTR, ino, xattr_name=name)

        self.mutate(cred, fn)

    # ------------------------------------------------------------------ handles
    def open(self, cred: Cred, ino: int, flags: int, *, read_inline: bool = False
             ) -> pb.OpenReply:
        if read_inline and flags & (os.O_ACCMODE | os.O_TRUNC) == os.O_RDONLY:
            # A reader of an inline file gets all of it now: no handle, and so no write
            # transaction (the handle would only keep data alive that it already has).
            reply = self.query(lambda conn: self._open_inline(conn, cred, ino))
            if reply is not None:
                return reply
        return self.mutate(cred, lambda tx: self._open(tx, ino, flags))

    def _open_inline(self, conn: Connection, cred: Cred, ino: int) -> pb.OpenReply | None:
        row = self._get(conn, ino)
        if not stat.S_ISREG(row.mode) or row.storage != STORAGE_INLINE:
            return None  # the ordinary open decides (and gives the errors)
        check(cred, row, R, "open this file")
        data = self._inline(conn, ino)
        if len(data) < row.size:  # implied zeros past the stored bytes
            data += b"\0" * (row.size - len(data))
        return pb.OpenReply(attr=to_attr(row), data=data, has_data=True)

    def _open(self, tx: Tx, ino: int, flags: int) -> pb.OpenReply:
        self._lock(tx.conn, ino)
        row = self._get(tx.conn, ino)
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
            mode = row.mode if tx.cred.is_root else self._kill_priv(row.mode)
            _update_inode(tx.conn, ino, dict(size=0, mtime_ns=tx.now, ctime_ns=tx.now,
                                             version=_BUMP, mode=mode))
            row = self._row(tx.conn, ino)
            tx.log(pb.OP_WRITE, ino, attr=to_attr(row))
        handle = self._new_handle(tx, ino, flags)
        return pb.OpenReply(attr=to_attr(row), handle=handle)

    def _new_handle(self, tx: Tx, ino: int, flags: int) -> int:
        hid = self.engine.allocate_ids(tx.conn, "handle", 1)[0]
        _Q_INSERT_HANDLE.run(tx.conn, id=hid, ino=ino, session=tx.cred.client_id or "",
                             flags=flags, opened_ns=tx.now)
        return hid

    def release(self, cred: Cred, handle: int) -> None:
        self.mutate(cred, lambda tx: self._release(tx, handle))

    def _release(self, tx: Tx, handle: int) -> None:
        row = _Q_HANDLE_BY_ID.first(tx.conn, hid=handle)
        if row is None or row.session != (tx.cred.client_id or ""):
            raise FsError(errno.EBADF, f"bad file handle {handle}: not open in this session")
        self._lock(tx.conn, row.ino)
        n = _Q_DELETE_HANDLE.run(tx.conn, hid=handle)
        if not n:  # released meanwhile by another call of the session
            raise FsError(errno.EBADF, f"bad file handle {handle}: not open in this session")
        self._free_orphans(tx, {row.ino})

    def _handle_flags(self, conn: Connection, handle: int, ino: int, cred: Cred | None) -> int:
        """The open flags of ``handle`` on ``ino``. A handle belongs to the session that
        opened it (the session, not the uid: a mount serves all its callers in one session,
        and a file descriptor passes between processes); any other caller gets EBADF, as
        does one that names no caller at all."""
        if cred is None:
            cred = _CALLER.get()
        row = _Q_HANDLE.first(conn, hid=handle, ino=ino)
        if row is None or cred is None or row.session != (cred.client_id or ""):
            raise FsError(errno.EBADF, f"bad file handle {handle}: not open on inode {ino} "
                          "in this session")
        return int(row.flags)

    def _writable_handle(self, conn: Connection, handle: int, ino: int,
                         cred: Cred | None = None) -> bool:
        if not handle:
            return False
        flags = self._handle_flags(conn, handle, ino, cred)
        return flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)

    def _readable_handle(self, conn: Connection, handle: int, ino: int,
                         cred: Cred | None = None) -> bool:
        if not handle:
            return False
        flags = self._handle_flags(conn, handle, ino, cred)
        return flags & os.O_ACCMODE in (os.O_RDONLY, os.O_RDWR)

    # ------------------------------------------------------------------ inline data
    def _inline(self, conn: Connection, ino: int) -> bytes:
        v = _Q_INLINE.scalar(conn, ino=ino)
        return bytes(v) if v is not None else b""

    def _store_inline(self, tx: Tx, ino: int, data: bytes, had: bool) -> None:
        if had:
            if data:
                _Q_UPDATE_DATA.run(tx.conn, ino=ino, new_data=data)
            else:
                _Q_DELETE_DATA.run(tx.conn, ino=ino)
        elif data:
            _Q_INSERT_DATA.run(tx.conn, ino=ino, data=data)

    def _truncate(self, tx: Tx, row: Row, size: int) -> None:
        """Change the data of ``row`` to ``size`` bytes (the size column is the caller's)."""
        if row.storage != STORAGE_INLINE:
            self._truncate_blocks(tx, row, size)
            return
        if size > self.settings.inline_limit:
            self._grow_past_inline(tx, row, size)
            return
        data = self._inline(tx.conn, row.id)
        had = bool(data)
        data = data[:size]
        # Trailing zeros past the stored bytes are implied by the size.
        self._store_inline(tx, row.id, data.rstrip(b"\0") if size > len(data) else data, had)

    def _truncate_blocks(self, tx: Tx, row: Row, size: int) -> None:
        self.blocks.truncate(tx, row, size)

    def _grow_past_inline(self, tx: Tx, row: Row, size: int) -> None:
        self.blocks.grow_past_inline(tx, row, size)

    def read(self, cred: Cred, ino: int, offset: int, size: int, handle: int = 0) -> pb.ReadReply:
        if offset < 0 or size < 0:
            raise FsError(errno.EINVAL, "negative offset or size")

        def fn(conn: Connection) -> pb.ReadReply:
            row = self._get(conn, ino)
            if stat.S_ISDIR(row.mode):
                raise FsError(errno.EISDIR, "is a directory")
            if not self._readable_handle(conn, handle, ino, cred):
                if handle:
                    raise FsError(errno.EBADF, "file is not open for reading")
                check(cred, row, R, "read this file")
            attr = to_attr(row)
            if row.storage != STORAGE_INLINE:
                return pb.ReadReply(inline=False, attr=attr)
            end = min(row.size, offset + size)
            if offset >= end:
                return pb.ReadReply(inline=True, attr=attr)
            data = self._inline(conn, ino)
            chunk = data[offset:end]
            if len(chunk) < end - offset:  # implied zeros past the stored bytes
                chunk = chunk + b"\0" * (end - offset - len(chunk))
            return pb.ReadReply(data=chunk, inline=True, attr=attr)

        return self.query(fn)

    def write(self, cred: Cred, ino: int, offset: int, data: bytes, handle: int = 0,
              append: bool = False, *, release: bool = False) -> pb.WriteReply:
        """Write inline data; with ``release``, release ``handle`` in the same transaction
        (a file's last write at close)."""
        if offset < 0:
            raise FsError(errno.EINVAL, "negative offset")
        if offset + len(data) > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG, "write past the largest file")

        def fn(tx: Tx) -> pb.WriteReply:
            self._lock(tx.conn, ino)
            row = self._get(tx.conn, ino)
            if stat.S_ISDIR(row.mode):
                raise FsError(errno.EISDIR, "is a directory")
            if not stat.S_ISREG(row.mode):
                raise FsError(errno.EINVAL, "not a regular file")
            if not self._writable_handle(tx.conn, handle, ino, cred):
                if handle:
                    raise FsError(errno.EBADF, "file is not open for writing")
                check(cred, row, W, "write this file")
            off = row.size if append else offset
            end = off + len(data)
            if row.storage != STORAGE_INLINE or end > self.settings.inline_limit:
                self.blocks.refuse_inline_write(row, end)
            cur = self._inline(tx.conn, ino)
            had = bool(cur)
            if len(cur) < off:
                cur = cur + b"\0" * (off - len(cur))
            new = cur[:off] + data + cur[end:]
            new_size = max(row.size, end)
            self._store_inline(tx, ino, new, had)
            vals: dict[str, Any] = dict(size=new_size, mtime_ns=tx.now, ctime_ns=tx.now,
                                        version=_BUMP)
            if not cred.is_root and row.mode & (stat.S_ISUID | stat.S_ISGID):
                vals["mode"] = self._kill_priv(row.mode)
            _update_inode(tx.conn, ino, vals)
            attr = to_attr(self._row(tx.conn, ino))
            tx.log(pb.OP_WRITE, ino, attr=attr)
            if release:
                self._release(tx, handle)
            return pb.WriteReply(attr=attr, written=len(data), offset=off)

        return self.mutate(cred, fn)

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
        return self.mutate(cred, lambda tx: self._bulk(tx, parent, plan, make_parents, exist_ok))

    def _bulk(self, tx: Tx, parent: int, plan: list, make_parents: bool,
              exist_ok: bool) -> pb.BulkCreateReply:
        conn, cred = tx.conn, tx.cred
        self._lock(conn, parent)
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
                self._lock(conn, pdir.id)  # creators lock the parent before inserting
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
                self._lock(conn, pid)
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
            return _Obj(row) if is_dir else row

        for parts, ftype, e in plan:
            pdir = get_dir(tuple(parts[:-1]))
            name = parts[-1]
            search(pdir)
            if (pdir.id, name) in new_names:
                if ftype == stat.S_IFDIR and exist_ok:
                    inos.append(dirs.get(tuple(parts), _Obj({"id": 0})).id)
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

        _Q_INSERT_INODE.many(conn, inode_rows)
        _Q_INSERT_DENTRY.many(conn, dentry_rows)
        _Q_INSERT_DATA.many(conn, data_rows)
        _Q_INSERT_XATTR.many(conn, xattr_rows)
        for dino, delta in touched.items():
            self._touch_dir(tx, dino, nlink_delta=delta)
        return pb.BulkCreateReply(created=created, inos=inos)

    @staticmethod
    def _bulk_id_budget(plan: list) -> int:
        # every entry, plus every intermediate directory that might have to be made
        dirs = {tuple(parts[:i]) for parts, _, _ in plan for i in range(1, len(parts))}
        return len(plan) + len(dirs)

    # ------------------------------------------------------------------ changelog
    def changelog_read(self, after: int, limit: int) -> tuple[list[pb.ChangeRecord], int]:
        def fn(conn: Connection) -> tuple[list[pb.ChangeRecord], int]:
            h = changelog.head(conn)
            return changelog.read(conn, after, min(limit or 1000, 10_000)), h

        return self.query(fn)

    def changelog_head(self) -> int:
        return self.query(changelog.head)

    def record_access(self, cred: Cred, events: Iterable[pb.AccessEvent]) -> None:
        evs = list(events)
        if not evs:
            return

        def fn(tx: Tx) -> None:
            for ev in evs:
                tx.log(pb.OP_ACCESS, ev.ino, extra=json.dumps({
                    "read": ev.read, "wrote": ev.wrote, "pid": ev.pid,
                    "proc_start": ev.proc_start, "cmdline": ev.cmdline, "host": ev.host,
                    "ts_ns": ev.ts_ns, "version": ev.version, "uid": ev.uid or cred.uid,
                }), run_id=ev.run_id or cred.run_id)

        self.mutate(cred, fn)

    def record_run(self, cred: Cred, run_id: str, body: str) -> None:
        if not run_id:
            raise FsError(errno.EINVAL, "a run needs an id")
        try:
            json.loads(body or "{}")
        except ValueError as exc:
            raise FsError(errno.EINVAL, f"run record is not JSON: {exc}") from None
        self.mutate(cred, lambda tx: tx.log(pb.OP_RUN, 0, run_id=run_id, extra=body))


class _RenameRestart(Exception):
    """A rename found other entries under its locks than it locked for: its transaction
    rolls back and it starts over (with the rename lock first when ``rename_lock``)."""

    def __init__(self, rename_lock: bool) -> None:
        super().__init__("rename restarts")
        self.rename_lock = rename_lock


def _with_caller(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn(cred, ...)`` run with ``cred`` recorded as the context's caller."""
    import functools

    @functools.wraps(fn)
    def wrapper(cred: Cred, *args: Any, **kw: Any) -> T:
        token = _CALLER.set(cred)
        try:
            return fn(cred, *args, **kw)
        finally:
            _CALLER.reset(token)

    return wrapper


class _Obj:
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
