"""The namespace: every metadata operation as one SQL transaction.

Written once against the :class:`~metafs.namenode.engine.MetaEngine` contract. Each
mutating operation runs in a write transaction that takes the row locks it needs in one
global order (the cross-directory rename lock first, then inode rows by ascending id),
checks permissions and POSIX rules, changes the rows, and appends its change records to
the changelog as its last statement.
"""

from __future__ import annotations

import errno
import functools
import stat
import threading
import time
from typing import Any, Callable, Iterable, TypeVar

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from ..config import Settings
from ..errors import FsError
from ..posix import NAME_MAX, ROOT_INO, W, X, Cred, check
from ..proto import metafs_pb2 as pb
from . import changelog, requests, runs
from .attrs import Attributes
from .bulk import BulkCreate
from .data import FileData
from .engine import MetaEngine
from .entries import Entries
from .lookups import Lookups
from .rename import Renames
from .rows import (ATTR_COLS, CALLER, D, H, I, Q_INSERT_DENTRY, Q_SET_NLINK, Q_TOUCH_DIR,
                   STORAGE_INLINE, Tx, inherit_group, update_inode)
from .sessions import Sessions
from .sql import Prepared


T = TypeVar("T")


_Q_INODE = Prepared(select(*ATTR_COLS).where(I.c.id == bindparam("ino")))
_Q_LOOKUP = Prepared(select(*ATTR_COLS).select_from(D.join(I, I.c.id == D.c.ino))
                     .where(D.c.parent == bindparam("parent"), D.c.name == bindparam("name")))
_Q_HAS_HANDLES = Prepared(select(H.c.id).where(H.c.ino == bindparam("ino")).limit(1))
_Q_DIR_PARENT = Prepared(select(D.c.parent).where(D.c.ino == bindparam("ino")).limit(1))


def _with_caller(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn(cred, ...)`` run with ``cred`` recorded as the context's caller."""
    @functools.wraps(fn)
    def wrapper(cred: Cred, *args: Any, **kw: Any) -> T:
        token = CALLER.set(cred)
        try:
            return fn(cred, *args, **kw)
        finally:
            CALLER.reset(token)

    return wrapper


class Namespace(Sessions, Lookups, Entries, Renames, Attributes, FileData, BulkCreate):
    """All metadata operations. Thread-safe; holds no state another namenode could
    contradict (only caches of immutable facts and a statfs cache)."""

    def __init__(self, engine: MetaEngine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.notifier = engine.changelog.notifier
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
        # Checks run inside each write transaction before it commits (the project
        # boundary; quotas are checked with the changelog append, see _mutate).
        self.precommit_hooks: list[Callable[[Tx], None]] = []
        # One for each precommit hook: whether it has nothing to check now. A call made as
        # one statement (mutate's ``at_once``) runs no hook, so it is made so only while
        # every hook is idle.
        self.precommit_idle: list[Callable[[], bool]] = []
        # Other paths of the same directories (projects: a share entry names the data set
        # directory of another project), as (path, alias) pairs worth trying for a caller:
        # see Lookups.visible_paths.
        self.path_aliases: list[Callable[[Cred], list[tuple[str, str]]]] = []
        # Run before every open of a file (they may refuse it: the caller and the open's
        # flags), and after an open for reading succeeded (the caller and the file's
        # attributes): projects follow which process read which project's data by them.
        self.open_checks: list[Callable[[Cred, int], None]] = []
        self.read_hooks: list[Callable[[Cred, pb.Attr], None]] = []
        from .quota import Quotas  # the EDQUOT check

        self.quotas = Quotas(self)
        from .locks import Locks  # cluster-wide fcntl/flock locks (dropped with sessions)

        self.locks = Locks(self)
        # what the engine's one-statement removals do of an inode's freeing themselves
        # (the block layer's and the file locks' hooks): with any other hook they are off
        self.sql_free_hooks = list(self.free_data_hooks)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        self.engine.setup()
        try:
            self.engine.write(self._ensure_root)
        except IntegrityError:
            # another namenode starting on the same empty database made the root first
            if self.engine.read(lambda c: self.inode_row(c, ROOT_INO)) is None:
                raise

    def _ensure_root(self, conn: Connection) -> None:
        if conn.execute(select(I.c.id).where(I.c.id == ROOT_INO)).first() is None:
            now = time.time_ns()
            conn.execute(insert(I).values(
                id=ROOT_INO, mode=stat.S_IFDIR | 0o755, uid=0, gid=0, nlink=2, rdev=0, size=0,
                atime_ns=now, mtime_ns=now, ctime_ns=now, btime_ns=now, version=0,
                generation=0, storage=STORAGE_INLINE))

    # ------------------------------------------------------------------ plumbing
    def mutate(self, cred: Cred, fn: Callable[[Tx], T],
               at_once: Callable[[Tx, Callable[[Any], dict[str, Any] | None]],
                                 tuple[bool, Any]] | None = None) -> T:
        """Run ``fn`` in one write transaction (with the precommit hooks and the change
        records it logs). Within a client's call that carries a request id, a transaction
        an earlier attempt of the call committed is answered from its record instead
        (:mod:`.requests`).

        ``at_once(tx, request)``: the call's plain case whole, its records and the row
        ``request(result)`` (or None) with it, as one statement that commits by itself
        where the engine can (one round trip); tried first while no precommit hook has
        anything to check (``tx`` has no connection). It returns whether it made the call
        and the call's result; when it did not, ``fn`` runs."""
        scope = requests.REQUEST.get()
        if scope is None:
            return self._mutate(cred, fn, None, at_once)
        return requests.once(self, cred, fn, scope,
                             lambda record: self._mutate(cred, fn, record, at_once))

    def _mutate(self, cred: Cred, fn: Callable[[Tx], T],
                record: Callable[[Tx, Any], dict[str, Any] | None] | None,
                at_once: Callable[[Tx, Callable[[Any], dict[str, Any] | None]],
                                  tuple[bool, Any]] | None = None) -> T:
        log = self.engine.changelog
        if at_once is not None and self.engine.at_once \
                and len(self.precommit_idle) == len(self.precommit_hooks) \
                and all(idle() for idle in self.precommit_idle):
            tx = Tx(self, None, cred, time.time_ns())  # type: ignore[arg-type]
            token = CALLER.set(cred)
            try:
                done, result = at_once(
                    tx, lambda result: record(tx, result) if record is not None else None)
            finally:
                CALLER.reset(token)
            if done:
                log.committed(1)
                return result  # type: ignore[no-any-return]

        def body(conn: Connection) -> tuple[T, int, list[Callable[[], None]]]:
            tx = Tx(self, conn, cred, time.time_ns())
            result = fn(tx)
            for hook in self.precommit_hooks:
                hook(tx)
            request = record(tx, result) if record is not None else None
            last: int | None = 0
            if tx.records or request is not None:
                # The quota check costs nothing where no quota exists: the append asks
                # that in its own statement, and writes only then.
                guard = self.quotas.guard(tx)
                last = log.append(conn, tx.records, request, unless=guard)
                if last is None:
                    self.quotas.check(tx)
                    last = log.append(conn, tx.records, request)
            return result, last or 0, tx.after_commit

        token = CALLER.set(cred)
        try:
            result, last, after = self.engine.write(body)
        finally:
            CALLER.reset(token)
        if last:
            log.committed(last)
        for cb in after:
            cb()
        return result

    def query(self, fn: Callable[[Connection], T]) -> T:
        return self.engine.read(fn)

    # The row helpers below are public: the block and lock layers (blocks.py, locks.py)
    # run inside the namespace's transactions and use them too.
    def inode_row(self, conn: Connection, ino: int) -> Any:
        """The attribute columns of inode ``ino``, or None if there is no such row."""
        return _Q_INODE.first(conn, ino=ino)

    def live_inode(self, conn: Connection, ino: int, row: Any = None) -> Row:
        """The row of inode ``ino`` (read here unless given as ``row``) while it is in use:
        ENOENT if it does not exist, or if its last name is gone and no handle holds it
        open."""
        if row is None:
            row = self.inode_row(conn, ino)
        if row is None or (row.nlink == 0 and not self._has_handles(conn, ino)):
            raise FsError(errno.ENOENT, f"no inode {ino}")
        return row

    def locked_live_inode(self, conn: Connection, ino: int) -> Row:
        """:meth:`live_inode` of ``ino`` with its row locked (one statement)."""
        return self.live_inode(conn, ino, self.lock_rows(conn, ino).get(ino))

    def lock_inodes(self, conn: Connection, *inos: int) -> None:
        """Lock inode rows in ascending id order (the engine's; a no-op where writers are
        serialized)."""
        self.engine.lock_inodes(conn, *inos)

    def lock_rows(self, conn: Connection, *inos: int) -> dict[int, Row]:
        """:meth:`lock_inodes`, returning the attribute rows it locked by id (read by the
        same statement)."""
        return self.engine.lock_inode_rows(conn, *inos)

    def _lock_renames(self, conn: Connection) -> None:
        """Serialize renames that move a directory to another parent (as Linux does with
        its per-filesystem rename mutex): the subtree check is then exact."""
        self.engine.lock_renames(conn)

    def _lookup(self, conn: Connection, parent: int, name: str) -> Any:
        return _Q_LOOKUP.first(conn, parent=parent, name=name)

    def _dir(self, conn: Connection, ino: int, row: Any = None) -> Row:
        row = self.live_inode(conn, ino, row)
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
        Q_TOUCH_DIR.run(tx.conn, ino=ino, now=tx.now, delta=nlink_delta)

    def _new_inode(self, tx: Tx, parent: Row | None, mode: int, *, rdev: int = 0,
                   target: str | None = None, size: int = 0, ino: int | None = None) -> dict:
        """The columns of a new inode of ``mode`` the caller makes in directory ``parent``
        (None: the directory's group rule is left to the statement that adds the entry,
        see :meth:`_add_new_entry`)."""
        cred = tx.cred
        row = dict(id=ino or 0, mode=mode, uid=cred.uid, gid=cred.gid,
                   nlink=2 if stat.S_ISDIR(mode) else 1, rdev=rdev, size=size,
                   atime_ns=tx.now, mtime_ns=tx.now, ctime_ns=tx.now, btime_ns=tx.now,
                   version=0, generation=0, storage=STORAGE_INLINE, target=target)
        if parent is not None:
            inherit_group(row, parent)
            row["mode"] = self._setgid_kept(cred, row)
        return row

    @staticmethod
    def _setgid_kept(cred: Cred, row: dict[str, Any]) -> int:
        """The mode of the new inode ``row``: a file's set-group-ID bit is dropped unless
        the caller is root or in the file's group."""
        mode = row["mode"]
        if mode & stat.S_ISGID and not stat.S_ISDIR(mode) and not cred.is_root \
                and not cred.in_group(row["gid"]):
            mode &= ~stat.S_ISGID
        return mode

    def _add_new_entry(self, tx: Tx, parent: int, name: str, mode: int, *, rdev: int = 0
                       ) -> tuple[Any, dict[str, Any] | None]:
        """Lock directory ``parent`` and, when it is a directory in use, add the entry
        ``name`` naming a new inode of ``mode`` unless the name exists: one statement
        where the engine can (:meth:`~.engine.MetaEngine.add_new_entry`). Returns the
        directory's row as locked (None: no such inode) and the new inode's columns, or
        None for them when nothing was added. The caller checks its permissions on the
        directory afterwards: an error then rolls the addition back with the transaction."""
        row = self._new_inode(tx, None, mode, rdev=rdev)
        prow, ino = self.engine.add_new_entry(tx.conn, parent, name, row,
                                              1 if stat.S_ISDIR(mode) else 0)
        if ino is None:
            return prow, None
        kept = self._setgid_kept(tx.cred, row)  # the group is the directory's now
        if kept != row["mode"]:
            row["mode"] = kept
            update_inode(tx.conn, ino, {"mode": kept})
        return prow, row

    def _link_entry(self, tx: Tx, parent: int, name: str, ino: int, mode: int) -> None:
        Q_INSERT_DENTRY.run(tx.conn, parent=parent, name=name, ino=ino, mode=stat.S_IFMT(mode))

    def _locked_dir(self, tx: Tx, ino: int) -> Row:
        """Lock and read directory ``ino`` (one statement), which must be in use."""
        return self._dir(tx.conn, ino, self.lock_rows(tx.conn, ino).get(ino))

    def _check_dir_for_entry(self, tx: Tx, parent_ino: int, name: str,
                             locked: Row | None = None) -> Row:
        """Lock and check a directory that gets a new entry ``name`` (``locked``: its row,
        locked already)."""
        parent = (self._dir(tx.conn, parent_ino, locked) if locked is not None
                  else self._locked_dir(tx, parent_ino))
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
        if not Q_SET_NLINK.scalar(tx.conn, ino=row.id, new_nlink=left, now=tx.now) \
                and left == 0:
            self._free(tx, row.id)
        return left

    def _remove_name(self, tx: Tx, parent: int, name: str, row: Row) -> int:
        """Remove the entry ``name`` of directory ``parent``, which names ``row``: as
        :meth:`_drop_link`, with the entry's removal, the directory's times and the
        inode's own rows in the same statement where the engine can. Returns the links
        left."""
        is_dir = stat.S_ISDIR(row.mode)
        left = 0 if is_dir else row.nlink - 1
        if self.engine.remove_entry(tx.conn, parent, name, -1 if is_dir else 0, tx.now,
                                    row.id, left):
            self._free(tx, row.id, deleted=True)
        return left

    def _free(self, tx: Tx, ino: int, *, deleted: bool = False) -> None:
        """Free inode ``ino`` (``deleted``: its own rows are deleted already)."""
        for hook in self.free_data_hooks:
            hook(tx, ino)
        if not deleted:
            self.engine.delete_inode(tx.conn, ino)
        tx.log(pb.OP_FREE, ino)

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


    # ------------------------------------------------------------------ changelog
    def changelog_read(self, after: int, limit: int, *, settle: bool = True,
                       urgent: bool = True) -> tuple[list[pb.ChangeRecord], int]:
        """Up to ``limit`` records after position ``after`` and the head. With ``settle``,
        every record committed before the call (through any namenode) is among them
        (read-your-writes): a stamping round runs for it at once, or with ``urgent``
        false (a long poll's first read: it waits anyway) the next round the stamping
        interval allows is waited for. A long poll's later reads need no settling."""
        return self._read_changelog(after, min(limit or 1000, 10_000), settle, urgent)

    def changelog_head(self) -> int:
        """The last position, after every record committed before the call has one."""
        return self._read_changelog(0, 0, True, True)[1]

    def _read_changelog(self, after: int, limit: int, settle: bool, urgent: bool
                        ) -> tuple[list[pb.ChangeRecord], int]:
        # One statement (the head, the records, and whether records await a position),
        # with a stamping round before it when this namenode's commits may await theirs,
        # or after it (and the statement again) when the statement saw some awaiting.
        log = self.engine.changelog
        if settle and log.awaiting():
            log.round(urgent=urgent)  # a round that starts now stamps what anyone committed
            settle = False
        cap = self.settings.changelog_reply_bytes

        def read() -> tuple[list[pb.ChangeRecord], int, bool]:
            return self.engine.read_statement(
                lambda conn: changelog.read(conn, after, limit, cap))

        recs, head, pending = read()
        if settle and pending:
            log.round(urgent=urgent)
            recs, head, _ = read()
        return recs, head

    def volume_uuid(self) -> str:
        """This file system's identity (provenance keeps its records under it)."""
        return runs.volume_uuid(self)

    def record_access(self, cred: Cred, events: Iterable[pb.AccessEvent]) -> None:
        runs.record_access(self, cred, events)

    def record_run(self, cred: Cred, run_id: str, body: str) -> None:
        runs.record_run(self, cred, run_id, body)
