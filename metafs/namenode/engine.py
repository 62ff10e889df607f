"""Metadata engines: the SQL differences between databases, behind one contract.

The namespace logic (namespace.py and its mixins) is written once against :class:`MetaEngine`. An engine
says how to open connections, how to start a read or a write transaction, which errors are
worth retrying, and how to allocate ids; and it owns the few statements whose SQL differs
between databases (row locks, insert-if-absent, and the hot write paths' statements, which
PostgreSQL runs as one data-modifying CTE each where SQLite runs them one by one), so the
namespace has no engine branches.
Engines pass one conformance suite (:class:`metafs.testing.EngineTests`).

- :class:`SqliteEngine`: WAL, a busy timeout, and ``BEGIN IMMEDIATE`` for every write so
  writers queue on the database lock instead of failing with "database is locked".
- :class:`PostgresEngine` (psycopg 3): READ COMMITTED writes with explicit row locks taken
  in one global order, REPEATABLE READ read-only snapshots for lookups, serialization
  failures and deadlocks retried with bounded, jittered backoff, and so are lost
  connections before COMMIT; a write whose connection is lost while it commits fails with
  EIO (its outcome is unknown) instead of being run a second time.
"""

from __future__ import annotations

import collections
import errno
import logging
import random
import stat
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

from sqlalchemy import Column, Select, Table, bindparam, create_engine, event, literal, select
from sqlalchemy import insert as sa_insert
from sqlalchemy import text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.sql.expression import Executable

from ..config import Settings
from ..errors import FsError
from ..posix import Cred
from . import changelog, schema
from .rows import (ATTR_COLS, Q_DELETE_DATA, Q_DELETE_DENTRY, Q_DELETE_INODE, Q_DELETE_XATTRS,
                   Q_ENTRY_INO, Q_INSERT_DATA, Q_INSERT_DENTRY, Q_INSERT_INODE, Q_MOVE_DENTRY,
                   Q_SET_CTIME, Q_SET_NLINK, Q_TOUCH_DIR, Q_UPDATE_DATA, AttrRow, LookupRow,
                   BUMP, STORAGE_INLINE, inherit_group, inode_update, inode_update_params,
                   kill_priv, lookup_both, update_inode)
from .changelog import RecordParts
from .sql import Prepared

log = logging.getLogger("metafs.namenode.engine")

T = TypeVar("T")

_I = schema.inodes
_C = schema.counters


class MetaEngine:
    """The contract every metadata engine implements."""

    name = "abstract"
    at_once = False  # whether create_at_once, remove_at_once and rename_at_once do anything

    def __init__(self, url: str, settings: Settings) -> None:
        self.url = url
        self.settings = settings
        self.engine: Engine = self._create_engine(url)
        self._local = threading.local()
        self._locked_rows: dict[int, Prepared] = {}  # lock_inode_rows' statements by id count
        self.changelog = self._changelog()

    def _changelog(self) -> "changelog.DirectLog | changelog.StampedLog":
        """How this engine numbers changelog records (see changelog.py)."""
        return changelog.DirectLog()

    # -- to implement --
    def _create_engine(self, url: str) -> Engine:
        raise NotImplementedError

    @contextmanager
    def _write_tx(self) -> Iterator[Connection]:
        raise NotImplementedError

    @contextmanager
    def _read_tx(self) -> Iterator[Connection]:
        raise NotImplementedError

    def is_retryable(self, exc: BaseException, *, committing: bool = False) -> bool:
        """Whether the transaction that raised ``exc`` surely rolled back and may be run
        again. ``committing`` says the error came while the transaction committed."""
        raise NotImplementedError

    def is_connection_error(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a lost connection (after which a COMMIT's fate is unknown)."""
        return False

    def allocate_ids(self, conn: Connection, kind: str, n: int) -> list[int]:
        """Reserve ``n`` unused ids of ``kind`` ("inode" or "handle"). Must not serialize
        writers for longer than the statement."""
        raise NotImplementedError

    # -- the dialect surface; the defaults are for databases with row locks --
    def lock_inodes(self, conn: Connection, *inos: int) -> None:
        """Lock inode rows (ids of 0 are ignored) in ascending id order, the global lock
        order of every write transaction, until the transaction ends."""
        ids = sorted({i for i in inos if i})
        if ids:
            conn.execute(select(_I.c.id).where(_I.c.id.in_(ids)).order_by(_I.c.id)
                         .with_for_update()).all()

    def lock_inode_rows(self, conn: Connection, *inos: int) -> dict[int, Any]:
        """:meth:`lock_inodes`, and the attribute columns of the rows it locked (by id; an
        id without a row is missing), read by the same statement."""
        ids = sorted({i for i in inos if i})
        if not ids:
            return {}
        q = self._locked_rows.get(len(ids))
        if q is None:
            q = self._locked_rows[len(ids)] = Prepared(self.for_update(
                select(*ATTR_COLS).where(_I.c.id.in_([bindparam(f"i{k}")
                                                       for k in range(len(ids))]))
                .order_by(_I.c.id)))
        return {r.id: r for r in q.all(conn, **{f"i{k}": v for k, v in enumerate(ids)})}

    def lock_dir_entries(self, conn: Connection, parent: int, *names: str) -> dict[int, Any]:
        """:meth:`lock_inode_rows` of directory ``parent`` and of the inodes its entries
        ``names`` name, as found before any lock is taken: the caller reads the entries
        again under the locks (a concurrent change may have overtaken this lookup)."""
        inos = [Q_ENTRY_INO.scalar(conn, parent=parent, name=n) for n in names]
        return self.lock_inode_rows(conn, parent, *(i or 0 for i in inos))

    # The statements of the hot write paths, one round trip each where the database can
    # merge them (see PostgresEngine); the defaults run them one by one.
    def add_entry(self, conn: Connection, parent: int, name: str, row: dict[str, Any],
                  nlink_delta: int, *, if_absent: bool = False) -> int | None:
        """Insert the inode ``row`` (its id allocated here when it has none) and its entry
        ``name`` in ``parent`` (locked by the caller), whose times are set to the inode's
        ctime and link count changed by ``nlink_delta``. Returns the inode's id. When
        ``parent`` has an entry ``name`` already, nothing changes: None with
        ``if_absent`` (the caller did not look the name up), else EEXIST."""
        if if_absent and Q_ENTRY_INO.first(conn, parent=parent, name=name) is not None:
            return None
        if not row["id"]:
            row["id"] = self.allocate_ids(conn, "inode", 1)[0]
        Q_INSERT_INODE.run(conn, **row)
        Q_INSERT_DENTRY.run(conn, parent=parent, name=name, ino=row["id"],
                            mode=row["mode"] & 0o170000)
        Q_TOUCH_DIR.run(conn, ino=parent, now=row["ctime_ns"], delta=nlink_delta)
        return int(row["id"])

    def add_new_entry(self, conn: Connection, parent: int, name: str, row: dict[str, Any],
                      nlink_delta: int) -> tuple[Any, int | None]:
        """Lock directory ``parent`` and read its row (as :meth:`lock_inode_rows`); when it
        is a directory in use (a link count above 0), :meth:`add_entry` ``name`` naming the
        new inode ``row`` (its group first taken from the directory by
        :func:`~.rows.inherit_group`, ``row`` updated so) unless the name exists. Returns
        the directory's row (None if there is no such inode) and the new inode's id, or
        None when nothing was added."""
        prow = self.lock_inode_rows(conn, parent).get(parent)
        if prow is None or not stat.S_ISDIR(prow.mode) or prow.nlink <= 0:
            return prow, None
        inherit_group(row, prow)
        return prow, self.add_entry(conn, parent, name, row, nlink_delta, if_absent=True)

    def remove_entry(self, conn: Connection, parent: int, name: str, nlink_delta: int,
                     now: int, ino: int, left: int) -> bool:
        """Delete the entry ``name`` of ``parent``, touch ``parent`` (times set to ``now``,
        link count changed by ``nlink_delta``), and set the link count of ``ino``, the
        inode it named, to ``left`` (ctime ``now``); when that is 0 and no handle holds
        ``ino`` open, :meth:`delete_inode` it instead. Returns whether it did (the caller
        frees what else the inode had)."""
        Q_DELETE_DENTRY.run(conn, dparent=parent, dname=name)
        Q_TOUCH_DIR.run(conn, ino=parent, now=now, delta=nlink_delta)
        if Q_SET_NLINK.scalar(conn, ino=ino, new_nlink=left, now=now) or left:
            return False
        self.delete_inode(conn, ino)
        return True

    def move_entry(self, conn: Connection, sp: int, sn: str, dp: int, dn: str, ino: int,
                   now: int, sp_delta: int, dp_delta: int) -> Any:
        """Move the entry ``sn`` of directory ``sp`` to ``dn`` in ``dp`` (which has no
        entry ``dn``); touch both directories (times set to ``now``, link counts changed
        by ``sp_delta`` and, when another directory, ``dp_delta``) and set the ctime of
        ``ino``, the inode moved. Returns its attribute row as changed."""
        Q_MOVE_DENTRY.run(conn, sp=sp, sn=sn, dp=dp, dn=dn)
        Q_TOUCH_DIR.run(conn, ino=sp, now=now, delta=sp_delta)
        if dp != sp:
            Q_TOUCH_DIR.run(conn, ino=dp, now=now, delta=dp_delta)
        return Q_SET_CTIME.first(conn, ino=ino, now=now)

    def rename_within(self, conn: Connection, parent: int, sn: str, dn: str, now: int
                      ) -> tuple[Any, Any, Any]:
        """The inode rows (or None) of the entries ``sn`` and ``dn`` of ``parent`` (locked by
        the caller), as :func:`~.rows.lookup_both` reads them; and when ``sn`` exists and
        ``dn`` does not, ``sn`` renamed ``dn`` as :meth:`move_entry` does within one
        directory, with the moved inode's row as changed (else None) as the third."""
        src, dst = lookup_both(conn, parent, sn, parent, dn)
        if src is None or dst is not None:
            return src, dst, None
        return src, dst, self.move_entry(conn, parent, sn, parent, dn, src.id, now, 0, 0)

    def write_empty_inline(self, conn: Connection, ino: int, data: bytes, now: int, *,
                           kill: bool, replace: bool = False) -> tuple[Any, Any]:
        """Lock inode ``ino`` and read its row (as :meth:`lock_inode_rows`; None if there is
        no such inode); when it is a linked, inline regular file of size 0 (with
        ``replace``, of any size: its content is replaced), make ``data`` its inline data
        and its size, times ``now`` and version bumped (with ``kill``, its mode as
        :func:`~.rows.kill_priv` leaves it), as :meth:`write_inline`. Returns the row as
        locked, and as updated (None when nothing was written)."""
        row = self.lock_inode_rows(conn, ino).get(ino)
        if row is None or (row.size and not replace) or row.storage != STORAGE_INLINE \
                or row.nlink <= 0 or not stat.S_ISREG(row.mode):
            return row, None
        vals: dict[str, Any] = dict(size=len(data), mtime_ns=now, ctime_ns=now, version=BUMP)
        if kill and row.mode & (stat.S_ISUID | stat.S_ISGID):
            vals["mode"] = kill_priv(row.mode)
        if row.size:  # (its old bytes, if any are stored)
            Q_DELETE_DATA.run(conn, ino=ino)
        return row, self.write_inline(conn, ino, data, False, vals)

    def write_inline(self, conn: Connection, ino: int, data: bytes, had: bool,
                     vals: dict[str, Any]) -> Any:
        """Make ``data`` (not empty) the inline data of ``ino`` (``had``: whether it has a
        data row now) and update its columns ``vals`` (:func:`~.rows.update_inode`);
        returns its attribute row as updated."""
        if had:
            Q_UPDATE_DATA.run(conn, ino=ino, new_data=data)
        else:
            Q_INSERT_DATA.run(conn, ino=ino, data=data)
        return update_inode(conn, ino, vals)

    # The plain case of a create, a mkdir, an unlink, an rmdir and a rename, whole, as one
    # statement that commits by itself where the database can (see PostgresEngine and the
    # schema's v12); the defaults do nothing. The caller runs them only where no hook of
    # its own has anything to add, and runs its general path when they did nothing.
    def next_inode_id(self) -> int:
        """An inode id no one else has or will get, for :meth:`create_at_once` (whose
        caller writes it into the new inode's record and result before the statement);
        only where :attr:`at_once` holds."""
        raise NotImplementedError

    def create_at_once(self, cred: Cred, parent: int, name: str, row: dict[str, Any],
                       nlink_delta: int, quota: bool, record: tuple[int, bytes],
                       request: dict[str, Any] | None) -> int | None:
        """Add the entry ``name`` naming the new inode ``row`` (its id from
        :meth:`next_inode_id`, its times its ctime, its group the caller's) to directory
        ``parent`` when nothing but success can come of it, as the namespace would
        (``parent``'s link count changed by ``nlink_delta``; nothing when ``quota`` and a
        quota exists), with its change record ``record`` (op, serialized whole) and the row
        ``request``. Returns the inode's id, or None when nothing was done."""
        return None

    def remove_at_once(self, cred: Cred, parent: int, name: str, is_dir: bool, now: int,
                       record: RecordParts, free: RecordParts,
                       request: dict[str, Any] | None) -> int | None:
        """Unlink (rmdir with ``is_dir``) the entry ``name`` of ``parent`` for ``cred`` at
        ``now`` when nothing but success can come of it, as the namespace would: its
        change record ``record`` (cut at ``nlink``) gets the inode's id and the links
        left, ``free`` the id when the inode is freed, and the row ``request`` records
        the call's result (None). Returns the inode removed, or None when nothing was
        done."""
        return None

    def rename_at_once(self, cred: Cred, sp: int, sn: str, dp: int, dn: str, now: int,
                       quota: bool, record: RecordParts, free: RecordParts,
                       request: dict[str, Any] | None) -> int | None:
        """Rename the entry ``sn`` of ``sp`` to ``dn`` in ``dp`` (replacing what that
        names when neither is a directory) as :meth:`remove_at_once` does an unlink
        (nothing when ``quota`` and a quota exists): ``record``, cut at ``attr``,
        ``target_ino`` and ``nlink``, gets the moved inode's id and attributes, and the
        replaced inode's id and links left. Returns the inode moved, or None when
        nothing was done."""
        return None

    def delete_inode(self, conn: Connection, ino: int) -> None:
        """Delete the rows of inode ``ino``: its inline data, its xattrs, the inode."""
        Q_DELETE_DATA.run(conn, ino=ino)
        Q_DELETE_XATTRS.run(conn, ino=ino)
        Q_DELETE_INODE.run(conn, ino=ino)

    def lock_renames(self, conn: Connection) -> None:
        """Take the one rename lock (a counter row) until the transaction ends."""
        conn.execute(select(_C.c.value).where(_C.c.name == "rename_lock")
                     .with_for_update()).all()

    def for_update(self, query: Select) -> Select:
        """``query`` made to lock the rows it reads until the transaction ends."""
        return query.with_for_update()

    def insert_if_absent(self, table: Table, values: dict[str, Any],
                         key: Sequence[Column]) -> Executable:
        """An INSERT of one row that does nothing when a row with the same ``key`` exists
        (waiting for a concurrent insert of that key to commit or roll back first)."""
        return sa_insert(table).from_select(
            list(values), select(*(literal(v) for v in values.values())).where(
                ~select(*key).where(*(c == values[c.key] for c in key)).exists()))

    # -- shared --
    def setup(self) -> list[int]:
        """Create or migrate the schema; returns the migrations applied."""
        return self.write(lambda conn: schema.migrate(conn, time.time_ns()))

    def write(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in a write transaction, retrying it on transient conflicts."""
        return self._retrying(self._write_tx, fn, write=True)

    def read(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in a consistent read-only snapshot."""
        return self._retrying(self._read_tx, fn)

    def read_statement(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn``, which reads with one statement, outside an explicit transaction
        where the database allows it: one statement sees one consistent snapshot on its
        own, so the BEGIN and COMMIT (and PostgreSQL's isolation settings) are saved."""
        return self._retrying(self._statement_conn, fn)

    def _statement_conn(self) -> Any:
        return self._read_tx()

    def write_statement(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn``, which writes with one statement, as a transaction of its own (no
        BEGIN and no COMMIT of their own round trips), retried as :meth:`write` is; a
        connection lost while it runs leaves its outcome unknown, as one lost while a
        transaction commits."""
        return self._retrying(self._statement_conn, fn, write=True, atomic=True)

    def _retrying(self, tx: Callable[[], Any], fn: Callable[[Connection], T], *,
                  write: bool = False, atomic: bool = False) -> T:
        """Bounded retries with jittered exponential backoff; FsErrors are answers, not
        conflicts, and are never retried.

        A failure while the transaction commits is retried only when the database
        guarantees it rolled back (:meth:`is_retryable` with ``committing=True``). A write
        whose connection is lost once COMMIT may have been sent has an unknown outcome:
        running it again could apply it twice (an append written twice, a mkdir answered
        EEXIST), so it fails with EIO saying so. ``atomic``: ``fn`` is one statement that
        commits by itself, so it is committing from its start."""
        attempts = max(1, self.settings.db_retries)
        delay = 0.002
        for attempt in range(1, attempts + 1):
            committing = atomic
            try:
                with tx() as conn:
                    result = fn(conn)
                    committing = True  # leaving the block sends COMMIT
                return result
            except FsError:
                raise
            except DBAPIError as exc:
                if committing and write and self.is_connection_error(exc):
                    log.warning("connection to the metadata database lost while committing "
                                "(%s): the outcome is unknown", type(exc.orig).__name__)
                    raise FsError(errno.EIO, "connection to the metadata database was lost "
                                  "while committing; the outcome is unknown (the operation "
                                  "may or may not have been applied)") from exc
                if attempt < attempts and self.is_retryable(exc, committing=committing and write):
                    log.debug("retrying transaction after %s (attempt %d)",
                              type(exc.orig).__name__, attempt)
                    time.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 0.25)
                    continue
                raise
        raise AssertionError("unreachable")

    def dispose(self) -> None:
        self.changelog.close()  # stamps this process's last commits first
        self.engine.dispose()


class FifoLock:
    """A lock handed to its waiters in the order they asked for it (no barging)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held = False
        self._waiters: collections.deque[threading.Event] = collections.deque()

    def acquire(self) -> None:
        with self._lock:
            if not self._held:
                self._held = True
                return
            turn = threading.Event()
            self._waiters.append(turn)
        turn.wait()  # set by release(): the lock is now this thread's

    def release(self) -> None:
        with self._lock:
            if self._waiters:
                self._waiters.popleft().set()
            else:
                self._held = False


class WalCheckpointer:
    """Checkpoints a SQLite database's WAL from a thread of its own.

    SQLite checkpoints from inside the COMMIT that takes the WAL past
    ``wal_autocheckpoint`` pages: that commit copies the WAL into the database and syncs
    both files, so one call in about a hundred waited milliseconds (tens of them while
    the disk was busy) for work that is no part of it. Here a PASSIVE checkpoint runs
    after every ``EVERY`` commits (and at least every ``INTERVAL`` seconds after one);
    it waits for no reader or writer, and the calls go on while it syncs. Commits still
    checkpoint themselves past ``FALLBACK_PAGES`` (this thread stalled)."""

    EVERY = 100
    INTERVAL = 1.0
    FALLBACK_PAGES = 16384

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._commits = 0
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="metafs-wal-checkpoint",
                                        daemon=True)
        self._thread.start()

    def committed(self) -> None:
        """A write transaction ended (committed or not: a count, not a ledger)."""
        self._commits += 1  # (a lost increment under a race only delays a checkpoint)
        if self._commits >= self.EVERY:
            self._wake.set()

    def _run(self) -> None:
        conn = None
        try:
            while True:
                self._wake.wait(self.INTERVAL)
                self._wake.clear()
                if self._stop:
                    return
                if not self._commits:
                    continue
                self._commits = 0
                try:
                    if conn is None:
                        conn = self._engine.raw_connection()
                    conn.driver_connection.execute(  # type: ignore[union-attr]
                        "PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except Exception:  # the next round retries (commits checkpoint meanwhile)
                    log.debug("WAL checkpoint failed", exc_info=True)
        finally:
            if conn is not None:
                try:
                    conn.close()
                except Exception:
                    log.debug("closing the checkpoint connection failed", exc_info=True)

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=30)


class SqliteEngine(MetaEngine):
    name = "sqlite"

    def __init__(self, url: str, settings: Settings) -> None:
        self._all: list[Connection] = []
        self._idle: list[Connection] = []  # of _all, those between transactions (a stack)
        self._busy: set[int] = set()  # ids of connections inside a transaction
        self._disposed = False
        self._all_lock = threading.Lock()
        self._turns = FifoLock()
        self._checkpoints: WalCheckpointer | None = None
        super().__init__(url, settings)
        if self._file_path(url):
            self._checkpoints = WalCheckpointer(self.engine)

    @staticmethod
    def _file_path(url: str) -> str:
        """The database file of ``url`` ("" for an in-memory database)."""
        path = url.split("sqlite:///", 1)[1] if url.startswith("sqlite:///") else ""
        return "" if path == ":memory:" else path

    def _create_engine(self, url: str) -> Engine:
        path = self._file_path(url)
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        eng = create_engine(
            url,
            pool_size=self.settings.db_pool_size,
            max_overflow=64,
            connect_args={"timeout": self.settings.sqlite_busy_timeout_ms / 1000,
                          "check_same_thread": False},
        )
        busy = int(self.settings.sqlite_busy_timeout_ms)
        sync = self.settings.sqlite_synchronous.upper()
        if sync not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"sqlite_synchronous must be NORMAL or FULL, not {sync!r}")

        @event.listens_for(eng, "connect")
        def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # We issue BEGIN/COMMIT ourselves: the driver must not.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={busy}")
            cur.execute(f"PRAGMA synchronous={sync}")
            cur.execute("PRAGMA foreign_keys=OFF")
            # the WAL is checkpointed by a thread of its own (WalCheckpointer); a commit
            # checkpoints only if that thread fell far behind
            cur.execute(f"PRAGMA wal_autocheckpoint={WalCheckpointer.FALLBACK_PAGES}")
            cur.close()

        return eng

    # Connections stay checked out of SQLAlchemy's pool, and transactions are begun and
    # ended on the driver connection: SQLAlchemy's pool checkout and transaction events
    # cost more than a primary-key lookup. A transaction takes the connection that ended
    # one last (a stack): every write on one connection empties the page cache of all the
    # others, so calls made one after another on a mount's many threads keep reusing one
    # connection with its pages cached, where one connection per thread re-read them on
    # every call. A nested transaction on the same thread (which the namespace never
    # makes, but an extension might) gets a connection of its own.
    def _take_conn(self) -> tuple[Connection, bool]:
        if getattr(self._local, "busy", False):
            return self.engine.connect(), True
        with self._all_lock:
            while self._idle:
                conn = self._idle.pop()
                if not (conn.closed or conn.invalidated):
                    return conn, False
                self._all.remove(conn)
        conn = self.engine.connect()
        with self._all_lock:
            self._all.append(conn)
        return conn, False

    @contextmanager
    def _tx(self, begin_sql: str | None) -> Iterator[Connection]:
        """A transaction begun with ``begin_sql`` on this thread's connection; with None,
        the connection in autocommit (each statement its own transaction)."""
        conn, private = self._take_conn()
        if not private:
            self._local.busy = True
            with self._all_lock:
                self._busy.add(id(conn))
        raw = conn.connection.dbapi_connection
        try:
            if begin_sql is None:
                yield conn
                return
            raw.execute(begin_sql)  # type: ignore[union-attr]
            try:
                yield conn
            except BaseException:
                if raw.in_transaction:  # type: ignore[union-attr]
                    raw.execute("ROLLBACK")  # type: ignore[union-attr]
                raise
            raw.execute("COMMIT")  # type: ignore[union-attr]
        finally:
            if conn.in_transaction():
                conn.rollback()  # SQLAlchemy's own bookkeeping; the driver has no transaction
            if private:
                conn.close()
            else:
                self._local.busy = False
                with self._all_lock:
                    self._busy.discard(id(conn))
                    late = self._disposed  # dispose() left this one to its thread
                    if late:
                        if conn in self._all:
                            self._all.remove(conn)
                    else:
                        self._idle.append(conn)
                if late:
                    conn.close()

    @contextmanager
    def _write_tx(self) -> Iterator[Connection]:
        # Writers of this process take turns first come, first served: SQLite's own busy
        # handler polls with sleeps of up to 100 ms, so a writer that commits and begins
        # again at once (a bulk create's next chunk) would otherwise keep the others out.
        nested = getattr(self._local, "busy", False)
        if not nested:
            self._turns.acquire()
        try:
            with self._tx("BEGIN IMMEDIATE") as conn:
                yield conn
        finally:
            if not nested:
                self._turns.release()
        if self._checkpoints is not None:
            self._checkpoints.committed()

    @contextmanager
    def _read_tx(self) -> Iterator[Connection]:
        with self._tx("BEGIN") as conn:
            yield conn

    def _statement_conn(self) -> Any:
        return self._tx(None)

    def dispose(self) -> None:
        # A connection inside a transaction on another thread (a call still being served
        # while the namenode shuts down) is closed by that thread when its transaction
        # ends: closing a SQLite connection under a running statement crashes the driver.
        with self._all_lock:
            self._disposed = True
            conns = [c for c in self._all if id(c) not in self._busy]
            self._all = [c for c in self._all if id(c) in self._busy]
            self._idle = []
        for conn in conns:
            try:
                conn.close()
            except Exception:
                log.debug("closing an idle connection at dispose failed", exc_info=True)
        if self._checkpoints is not None:
            self._checkpoints.close()
        super().dispose()

    def is_retryable(self, exc: BaseException, *, committing: bool = False) -> bool:
        # SQLITE_BUSY (also on COMMIT) leaves the transaction uncommitted.
        if isinstance(exc, OperationalError):
            msg = str(exc.orig).lower()
            return "locked" in msg or "busy" in msg
        return False

    # Writers are serialized by BEGIN IMMEDIATE: a write transaction holds the database
    # lock from its start, so there are no row locks to take.
    def lock_inodes(self, conn: Connection, *inos: int) -> None:
        pass

    def lock_renames(self, conn: Connection) -> None:
        pass

    def for_update(self, query: Select) -> Select:
        return query

    def insert_if_absent(self, table: Table, values: dict[str, Any],
                         key: Sequence[Column]) -> Executable:
        return sqlite_insert(table).values(values).on_conflict_do_nothing(index_elements=key)

    def add_entry(self, conn: Connection, parent: int, name: str, row: dict[str, Any],
                  nlink_delta: int, *, if_absent: bool = False) -> int | None:
        if not if_absent:
            return super().add_entry(conn, parent, name, row, nlink_delta)
        # The entry first, inserted unless the name exists: no lookup before it (a create's
        # usual case). When it exists, the id it was to get stays unused.
        if not row["id"]:
            row["id"] = self.allocate_ids(conn, "inode", 1)[0]
        if not _Q_INSERT_DENTRY_IF_ABSENT.run(conn, parent=parent, name=name, ino=row["id"],
                                              mode=row["mode"] & 0o170000):
            return None
        Q_INSERT_INODE.run(conn, **row)
        Q_TOUCH_DIR.run(conn, ino=parent, now=row["ctime_ns"], delta=nlink_delta)
        return int(row["id"])

    def allocate_ids(self, conn: Connection, kind: str, n: int) -> list[int]:
        # Writers are serialized by BEGIN IMMEDIATE, so a counter row costs nothing extra.
        last = _Q_ALLOCATE.scalar(conn, kind=kind, n=n)
        return list(range(int(last) - n + 1, int(last) + 1))


class PostgresEngine(MetaEngine):
    name = "postgresql"
    at_once = True
    _ID_BATCH = 64  # inode ids next_inode_id takes from the sequence at a time

    _RETRY_SQLSTATES = {"40001", "40P01", "55P03"}  # serialization, deadlock, lock n/a

    def _create_engine(self, url: str) -> Engine:
        if url.startswith("postgresql://") or url.startswith("postgres://"):
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        self._statements: Engine | None = None
        self._write_inline: dict[tuple[str, ...], Prepared] = {}  # by updated columns
        self._dir_entries: dict[int, Prepared] = {}  # lock_dir_entries' by names count
        self._driver_url = url
        self._statements_lock = threading.Lock()
        self._ids: collections.deque[int] = collections.deque()  # next_inode_id's
        self._ids_lock = threading.Lock()
        # No liveness ping at checkout (a round trip more per transaction): a transaction
        # on a connection the server dropped fails at its first statement, before it did
        # anything; SQLAlchemy then drops every older connection of the pool and
        # _retrying runs it again (see is_retryable).
        return create_engine(
            url,
            pool_size=self.settings.db_pool_size,
            max_overflow=64,
            isolation_level="READ COMMITTED",
            connect_args=self._session_options(url),
        )

    def _session_options(self, url: str) -> dict[str, str]:
        """Connection options of the write pool: the URL's own ``options``, and the server
        ends a transaction left idle for ``db_idle_in_transaction_timeout`` (its locks go
        with it; the namenode that left it finds its connection gone and retries)."""
        timeout = int(self.settings.db_idle_in_transaction_timeout * 1000)
        if timeout <= 0:
            return {}
        own = make_url(url).query.get("options", "")
        own = " ".join(own) if isinstance(own, tuple) else own
        return {"options": f"{own} -c idle_in_transaction_session_timeout={timeout}".strip()}

    def _statement_engine(self) -> Engine:
        """A second, smaller pool whose connections stay in autocommit, for reads of one
        statement: no isolation level to set and reset on every checkout, no liveness
        ping (a statement on a dead connection fails before it did anything, SQLAlchemy
        then drops every older connection of the pool, and the read is retried), and no
        rollback when a connection comes back (in autocommit none holds a transaction)."""
        eng = self._statements
        if eng is None:
            with self._statements_lock:
                eng = self._statements
                if eng is None:
                    eng = self._statements = create_engine(
                        self._driver_url, pool_size=self.settings.db_pool_size,
                        max_overflow=64, isolation_level="AUTOCOMMIT",
                        pool_reset_on_return=None)
        return eng

    @contextmanager
    def _statement_conn(self) -> Iterator[Connection]:
        with self._statement_engine().connect() as conn:
            yield conn

    def _changelog(self) -> "changelog.DirectLog | changelog.StampedLog":
        # One counter row locked through every commit would serialize the cluster's
        # commits: positions are stamped after commit instead.
        return changelog.StampedLog(self)

    def dispose(self) -> None:
        if self._statements is not None:
            self._statements.dispose()
        super().dispose()

    def setup(self) -> list[int]:
        def migrate(conn: Connection) -> list[int]:
            # namenodes starting together on an empty database migrate one at a time
            # (and create the sequences under the same lock: two CREATE SEQUENCE IF NOT
            # EXISTS at once can both pass the check, and one fails on pg_class)
            conn.execute(text("SELECT pg_advisory_xact_lock(74201)"))
            applied = schema.migrate(conn, time.time_ns())
            for kind in ("inode", "handle"):
                conn.execute(text(
                    f"CREATE SEQUENCE IF NOT EXISTS metafs_{kind}_seq START WITH 2 CACHE 1"))
            # changelog tickets: CACHE 1, so they follow the order they are taken in
            conn.execute(text("CREATE SEQUENCE IF NOT EXISTS metafs_changelog_ord CACHE 1"))
            return applied

        applied = self.write(migrate)
        self.changelog.start()  # also stamps what namenodes that stopped left pending
        return applied

    @contextmanager
    def _write_tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def _read_tx(self) -> Iterator[Connection]:
        # READ ONLY is said by the driver's BEGIN itself (the pool restores the connection's
        # settings when it comes back), not by a SET TRANSACTION of its own round trip
        with self.engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ",
                                          postgresql_readonly=True)
            with conn.begin():
                yield conn

    def is_connection_error(self, exc: BaseException) -> bool:
        if not isinstance(exc, DBAPIError):
            return False
        if exc.connection_invalidated:
            return True
        # connection failures (server restart): class 08 and admin shutdown 57P01..03
        state = getattr(exc.orig, "sqlstate", None) or ""
        return state.startswith("08") or state in ("57P01", "57P02", "57P03")

    def is_retryable(self, exc: BaseException, *, committing: bool = False) -> bool:
        if not isinstance(exc, DBAPIError):
            return False
        # PostgreSQL rolls a transaction back on these, at COMMIT as anywhere else.
        if getattr(exc.orig, "sqlstate", None) in self._RETRY_SQLSTATES:
            return True
        # A lost connection rolled the transaction back only if COMMIT was not yet sent.
        return not committing and self.is_connection_error(exc)

    def insert_if_absent(self, table: Table, values: dict[str, Any],
                         key: Sequence[Column]) -> Executable:
        return pg_insert(table).values(values).on_conflict_do_nothing(index_elements=key)

    def lock_dir_entries(self, conn: Connection, parent: int, *names: str) -> dict[int, Any]:
        # One statement: its entries are read by its snapshot, taken before it waits for
        # any lock (as a lookup of their own before the lock would be); the rows are
        # locked in id order. (An array of ids, not "id = :parent OR id IN (...)", which
        # the planner runs as a scan of every inode.)
        q = self._dir_entries.get(len(names))
        if q is None:
            q = self._dir_entries[len(names)] = Prepared(text(f"""
SELECT {_ATTRS} FROM inodes
WHERE id = ANY (CAST(:parent AS bigint) || ARRAY(
    SELECT ino FROM dentries WHERE parent = CAST(:parent AS bigint)
    AND name IN ({", ".join(f"CAST(:n{k} AS varchar)" for k in range(len(names)))})))
ORDER BY id FOR UPDATE"""))
        rows = q.all(conn, parent=parent, **{f"n{k}": n for k, n in enumerate(names)})
        return {r[0]: AttrRow(*r) for r in rows}

    # One round trip each (data-modifying CTEs); see MetaEngine for what they do.
    def add_entry(self, conn: Connection, parent: int, name: str, row: dict[str, Any],
                  nlink_delta: int, *, if_absent: bool = False) -> int | None:
        if row["id"]:
            return super().add_entry(conn, parent, name, row, nlink_delta,
                                     if_absent=if_absent)
        ino = _Q_PG_ADD_ENTRY.scalar(conn, parent=parent, name=name, delta=nlink_delta,
                                     ftype=row["mode"] & 0o170000,
                                     **{k: v for k, v in row.items() if k != "id"})
        if ino is None:  # the name exists (the entry's insert did nothing, so did the rest)
            if if_absent:
                return None
            raise FsError(errno.EEXIST, "file exists", name)
        row["id"] = int(ino)
        return row["id"]

    def add_new_entry(self, conn: Connection, parent: int, name: str, row: dict[str, Any],
                      nlink_delta: int) -> tuple[Any, int | None]:
        # The lock, the group rule and add_entry's statement in one: the statement
        # waits for the directory's lock before it inserts anything (the inserts take
        # their rows from the locked one), and ON CONFLICT sees a concurrent insert of
        # the name whatever the statement's snapshot.
        if row["id"]:
            return super().add_new_entry(conn, parent, name, row, nlink_delta)
        got = _Q_PG_ADD_NEW_ENTRY.first(conn, parent=parent, name=name, delta=nlink_delta,
                                        ftype=row["mode"] & 0o170000,
                                        **{k: v for k, v in row.items() if k != "id"})
        if got is None:
            return None, None
        n = len(ATTR_COLS)
        prow = AttrRow(*got[:n])
        ino, mode, gid = got[n:]
        if ino is None:
            return prow, None
        row.update(id=int(ino), mode=mode, gid=gid)
        return prow, row["id"]

    def remove_entry(self, conn: Connection, parent: int, name: str, nlink_delta: int,
                     now: int, ino: int, left: int) -> bool:
        return bool(_Q_PG_REMOVE_ENTRY.scalar(conn, parent=parent, name=name,
                                              delta=nlink_delta, now=now, ino=ino, left=left))

    def delete_inode(self, conn: Connection, ino: int) -> None:
        _Q_PG_DELETE_INODE.run(conn, ino=ino)

    def move_entry(self, conn: Connection, sp: int, sn: str, dp: int, dn: str, ino: int,
                   now: int, sp_delta: int, dp_delta: int) -> Any:
        # the rows it changes are distinct: the entry, sp, dp (when another) and ino
        # (neither directory: a directory is never moved into itself)
        got = _Q_PG_MOVE_ENTRY.first(conn, sp=sp, sn=sn, dp=dp, dn=dn, ino=ino, now=now,
                                     sd=sp_delta, dd=dp_delta)
        return None if got is None else AttrRow(*got)

    def rename_within(self, conn: Connection, parent: int, sn: str, dn: str, now: int
                      ) -> tuple[Any, Any, Any]:
        # One statement, after the caller's locks: its snapshot sees the entries as they
        # stay until commit.
        src = dst = moved = None
        n = len(ATTR_COLS)
        for r in _Q_PG_RENAME_WITHIN.all(conn, parent=parent, sn=sn, dn=dn, now=now):
            row = LookupRow(*r[:n], parent, r[n])
            if r[n + 1]:
                moved = AttrRow(*r[:n])
            else:
                if r[n] == sn:
                    src = row
                if r[n] == dn:
                    dst = row
        return src, dst, moved

    def remove_at_once(self, cred: Cred, parent: int, name: str, is_dir: bool, now: int,
                       record: RecordParts, free: RecordParts,
                       request: dict[str, Any] | None) -> int | None:
        return self._at_once(_Q_PG_REMOVE, cred, now, request, record, parent=parent,
                             name=name, dir=is_dir, free_op=free[0], free_parts=free[1])

    def rename_at_once(self, cred: Cred, sp: int, sn: str, dp: int, dn: str, now: int,
                       quota: bool, record: RecordParts, free: RecordParts,
                       request: dict[str, Any] | None) -> int | None:
        return self._at_once(_Q_PG_RENAME_AT_ONCE, cred, now, request, record, sp=sp, sn=sn,
                             dp=dp, dn=dn, quota=quota, free_op=free[0], free_parts=free[1])

    def next_inode_id(self) -> int:
        # ids are taken from the sequence a batch at a time (one round trip per batch);
        # one this process never uses is a gap, as a rolled-back create leaves
        with self._ids_lock:
            if not self._ids:
                self._ids.extend(self.read_statement(
                    lambda conn: self.allocate_ids(conn, "inode", self._ID_BATCH)))
            return self._ids.popleft()

    def create_at_once(self, cred: Cred, parent: int, name: str, row: dict[str, Any],
                       nlink_delta: int, quota: bool, record: tuple[int, bytes],
                       request: dict[str, Any] | None) -> int | None:
        return self._at_once(
            _Q_PG_CREATE_AT_ONCE, cred, row["ctime_ns"], request, (record[0], []),
            parent=parent, name=name, ino=row["id"], mode=row["mode"], nlink=row["nlink"],
            rdev=row["rdev"], delta=nlink_delta, quota=quota, gid=row["gid"],
            body=record[1])

    def _at_once(self, q: Prepared, cred: Cred, now: int, request: dict[str, Any] | None,
                 record: RecordParts, **params: Any) -> int | None:
        """Run one of the schema's functions (v12) that do a call whole."""
        r = request or {}
        params.update(uid=cred.uid, gids=[cred.gid, *cred.groups], ro=list(cred.ro_groups),
                      now=now, op=record[0], parts=record[1],
                      rid=r.get("id"), ridx=r.get("idx"), owner=r.get("owner"),
                      result=r.get("result"))
        got = self.write_statement(lambda conn: q.scalar(conn, **params))
        return None if got is None else int(got)

    def write_empty_inline(self, conn: Connection, ino: int, data: bytes, now: int, *,
                           kill: bool, replace: bool = False) -> tuple[Any, Any]:
        locked = written = None
        n = len(ATTR_COLS)
        for r in _Q_PG_WRITE_EMPTY.all(conn, ino=ino, data=data, size=len(data), now=now,
                                       kill=kill, replace=replace):
            if r[n]:
                written = AttrRow(*r[:n])
            else:
                locked = AttrRow(*r[:n])
        return locked, written

    def write_inline(self, conn: Connection, ino: int, data: bytes, had: bool,
                     vals: dict[str, Any]) -> Any:
        cols = tuple(sorted(vals))
        q = self._write_inline.get(cols)
        if q is None:
            store = pg_insert(schema.file_data).values(ino=bindparam("ino"),
                                                       data=bindparam("data"))
            store = store.on_conflict_do_update(index_elements=[schema.file_data.c.ino],
                                                set_={"data": store.excluded.data})
            q = self._write_inline[cols] = Prepared(
                inode_update({c: vals[c] for c in cols}).add_cte(store.cte("stored")))
        return q.first(conn, ino=ino, data=data, **inode_update_params(vals))

    def allocate_ids(self, conn: Connection, kind: str, n: int) -> list[int]:
        # A sequence takes no lock that lives until commit, so concurrent creators on any
        # number of namenodes never wait for each other here.
        if n == 1:
            return [int(conn.execute(text(f"SELECT nextval('metafs_{kind}_seq')")).scalar_one())]
        return [int(v) for v in conn.execute(text(
            f"SELECT nextval('metafs_{kind}_seq') FROM generate_series(1, :n)"), {"n": n}
        ).scalars().all()]


_Q_ALLOCATE = Prepared(
    update(schema.counters).where(schema.counters.c.name == bindparam("kind"))
    .values(value=schema.counters.c.value + bindparam("n")).returning(schema.counters.c.value))
_Q_INSERT_DENTRY_IF_ABSENT = Prepared(
    sqlite_insert(schema.dentries).values(parent=bindparam("parent"), name=bindparam("name"),
                                          ino=bindparam("ino"), mode=bindparam("mode"))
    .on_conflict_do_nothing(index_elements=["parent", "name"]))


_ATTRS = ", ".join(c.key for c in ATTR_COLS)  # the attribute columns, in SQL text

# The parts add_entry's and add_new_entry's statements share: the entry (from the new id
# ``n``) unless the name exists, the inode's insert up to its values, and the directory's
# times and link count when the entry went in.
_PG_ENTRY_INSERT = """d AS (
    INSERT INTO dentries (parent, name, ino, mode)
    SELECT CAST(:parent AS bigint), CAST(:name AS varchar), n.id, CAST(:ftype AS integer)
    FROM n
    ON CONFLICT (parent, name) DO NOTHING
    RETURNING ino
), i AS (
    INSERT INTO inodes (id, mode, uid, gid, nlink, rdev, size, atime_ns, mtime_ns, ctime_ns,
                        btime_ns, version, generation, storage, target)
"""
_PG_TOUCH_PARENT = """), t AS (
    UPDATE inodes SET nlink = nlink + CAST(:delta AS integer),
                      mtime_ns = CAST(:ctime_ns AS bigint), ctime_ns = CAST(:ctime_ns AS bigint)
    WHERE id = CAST(:parent AS bigint) AND EXISTS (SELECT 1 FROM d)
)
"""

# The entry first: when the name exists (the caller holds the directory's lock, so no
# one else adds it meanwhile) nothing is inserted or updated and no row comes back.
_Q_PG_ADD_ENTRY = Prepared(text(f"""
WITH n AS (SELECT nextval('metafs_inode_seq') AS id),
{_PG_ENTRY_INSERT}    SELECT d.ino, CAST(:mode AS integer), CAST(:uid AS bigint), CAST(:gid AS bigint),
           CAST(:nlink AS integer), CAST(:rdev AS bigint), CAST(:size AS bigint),
           CAST(:atime_ns AS bigint), CAST(:mtime_ns AS bigint), CAST(:ctime_ns AS bigint),
           CAST(:btime_ns AS bigint), CAST(:version AS bigint), CAST(:generation AS bigint),
           CAST(:storage AS integer), CAST(:target AS text)
    FROM d RETURNING id
{_PG_TOUCH_PARENT}SELECT id FROM i
"""))
# add_new_entry: the directory locked first; the entry only in a directory in use (with
# inherit_group's rule on the new inode's group and mode), the rest only with the entry.
_Q_PG_ADD_NEW_ENTRY = Prepared(text(f"""
WITH p AS (
    SELECT {_ATTRS}
    FROM inodes WHERE id = CAST(:parent AS bigint) FOR UPDATE
), n AS (
    SELECT nextval('metafs_inode_seq') AS id FROM p
    WHERE p.mode & {0o170000} = {stat.S_IFDIR} AND p.nlink > 0
), {_PG_ENTRY_INSERT}    SELECT d.ino,
           CASE WHEN p.mode & {stat.S_ISGID} <> 0 AND CAST(:ftype AS integer) = {stat.S_IFDIR}
                THEN CAST(:mode AS integer) | {stat.S_ISGID} ELSE CAST(:mode AS integer) END,
           CAST(:uid AS bigint),
           CASE WHEN p.mode & {stat.S_ISGID} <> 0 THEN p.gid ELSE CAST(:gid AS bigint) END,
           CAST(:nlink AS integer), CAST(:rdev AS bigint), CAST(:size AS bigint),
           CAST(:atime_ns AS bigint), CAST(:mtime_ns AS bigint), CAST(:ctime_ns AS bigint),
           CAST(:btime_ns AS bigint), CAST(:version AS bigint), CAST(:generation AS bigint),
           CAST(:storage AS integer), CAST(:target AS text)
    FROM d, p RETURNING id, mode, gid
{_PG_TOUCH_PARENT}SELECT p.*, i.id AS new_id, i.mode AS new_mode, i.gid AS new_gid FROM p LEFT JOIN i ON true
"""))
# remove_entry: the inode's rows are deleted (free) or its link count set, never both.
_Q_PG_REMOVE_ENTRY = Prepared(text("""
WITH d AS (
    DELETE FROM dentries WHERE parent = CAST(:parent AS bigint) AND name = CAST(:name AS varchar)
), t AS (
    UPDATE inodes SET nlink = nlink + CAST(:delta AS integer), mtime_ns = CAST(:now AS bigint),
                      ctime_ns = CAST(:now AS bigint)
    WHERE id = CAST(:parent AS bigint)
), f AS (
    SELECT CAST(:left AS integer) = 0
           AND NOT EXISTS (SELECT 1 FROM handles WHERE ino = CAST(:ino AS bigint)) AS free
), n AS (
    UPDATE inodes SET nlink = CAST(:left AS integer), ctime_ns = CAST(:now AS bigint)
    WHERE id = CAST(:ino AS bigint) AND NOT (SELECT free FROM f)
), fd AS (
    DELETE FROM file_data WHERE ino = CAST(:ino AS bigint) AND (SELECT free FROM f)
), x AS (
    DELETE FROM xattrs WHERE ino = CAST(:ino AS bigint) AND (SELECT free FROM f)
), i AS (
    DELETE FROM inodes WHERE id = CAST(:ino AS bigint) AND (SELECT free FROM f)
)
SELECT free FROM f
"""))
_Q_PG_MOVE_ENTRY = Prepared(text(f"""
WITH m AS (
    UPDATE dentries SET parent = CAST(:dp AS bigint), name = CAST(:dn AS varchar)
    WHERE parent = CAST(:sp AS bigint) AND name = CAST(:sn AS varchar)
), s AS (
    UPDATE inodes SET nlink = nlink + CAST(:sd AS integer), mtime_ns = CAST(:now AS bigint),
                      ctime_ns = CAST(:now AS bigint)
    WHERE id = CAST(:sp AS bigint)
), t AS (
    UPDATE inodes SET nlink = nlink + CAST(:dd AS integer), mtime_ns = CAST(:now AS bigint),
                      ctime_ns = CAST(:now AS bigint)
    WHERE id = CAST(:dp AS bigint) AND CAST(:dp AS bigint) <> CAST(:sp AS bigint)
)
UPDATE inodes SET ctime_ns = CAST(:now AS bigint) WHERE id = CAST(:ino AS bigint)
RETURNING {_ATTRS}
"""))
# rename_within: the entries first (e), the move only when the target name is absent
# (go); rows (attribute columns, the entry's name, whether it is the moved inode's row).
_Q_PG_RENAME_WITHIN = Prepared(text(f"""
WITH e AS (
    SELECT {", ".join(f"i.{c.key}" for c in ATTR_COLS)}, d.name AS ename
    FROM dentries d JOIN inodes i ON i.id = d.ino
    WHERE d.parent = CAST(:parent AS bigint)
      AND d.name IN (CAST(:sn AS varchar), CAST(:dn AS varchar))
), go AS (
    SELECT id FROM e
    WHERE ename = CAST(:sn AS varchar) AND NOT EXISTS (
        SELECT 1 FROM e WHERE ename = CAST(:dn AS varchar))
), m AS (
    UPDATE dentries SET name = CAST(:dn AS varchar)
    WHERE parent = CAST(:parent AS bigint) AND name = CAST(:sn AS varchar)
      AND EXISTS (SELECT 1 FROM go)
), t AS (
    UPDATE inodes SET mtime_ns = CAST(:now AS bigint), ctime_ns = CAST(:now AS bigint)
    WHERE id = CAST(:parent AS bigint) AND EXISTS (SELECT 1 FROM go)
), c AS (
    UPDATE inodes SET ctime_ns = CAST(:now AS bigint) WHERE id IN (SELECT id FROM go)
    RETURNING {_ATTRS}
)
SELECT {_ATTRS}, ename, false FROM e
UNION ALL SELECT {_ATTRS}, NULL, true FROM c
"""))
# write_empty_inline: the inode locked first, written only when it is a linked, inline,
# empty regular file, or any size with :replace (the data row's upsert replaces its old
# bytes); kill_priv's rule on the mode with :kill; rows (attribute columns, whether the row
# is the one as updated).
_Q_PG_WRITE_EMPTY = Prepared(text(f"""
WITH r AS (
    SELECT {_ATTRS} FROM inodes WHERE id = CAST(:ino AS bigint) FOR UPDATE
), go AS (
    SELECT id FROM r
    WHERE (size = 0 OR CAST(:replace AS boolean)) AND storage = {STORAGE_INLINE} AND nlink > 0
      AND mode & {0o170000} = {stat.S_IFREG}
), s AS (
    INSERT INTO file_data (ino, data) SELECT id, CAST(:data AS bytea) FROM go
    ON CONFLICT (ino) DO UPDATE SET data = excluded.data
), u AS (
    UPDATE inodes SET size = CAST(:size AS bigint), mtime_ns = CAST(:now AS bigint),
                      ctime_ns = CAST(:now AS bigint), version = version + 1,
                      mode = CASE WHEN CAST(:kill AS boolean)
                                  THEN mode & ~{stat.S_ISUID} & ~(CASE WHEN mode & {stat.S_IXGRP} <> 0
                                                            THEN {stat.S_ISGID} ELSE 0 END)
                                  ELSE mode END
    WHERE id IN (SELECT id FROM go)
    RETURNING {_ATTRS}
)
SELECT {_ATTRS}, false FROM r
UNION ALL SELECT {_ATTRS}, true FROM u
"""))
# the schema's functions (v12) that do a call whole, and their caller's parameters
_AT_ONCE_CALLER = """CAST(:uid AS bigint), CAST(:gids AS bigint[]), CAST(:ro AS bigint[]),
    CAST(:now AS bigint), CAST(:op AS smallint), CAST(:parts AS bytea[])"""
_AT_ONCE_REQUEST = """CAST(:rid AS varchar), CAST(:ridx AS integer), CAST(:owner AS text),
    CAST(:result AS bytea)"""
_Q_PG_REMOVE = Prepared(text(f"""
SELECT metafs_remove(CAST(:parent AS bigint), CAST(:name AS varchar), CAST(:dir AS boolean),
    {_AT_ONCE_CALLER}, CAST(:free_op AS smallint), CAST(:free_parts AS bytea[]),
    {_AT_ONCE_REQUEST})
"""))
_Q_PG_CREATE_AT_ONCE = Prepared(text(f"""
SELECT metafs_create(CAST(:parent AS bigint), CAST(:name AS varchar), CAST(:ino AS bigint),
    CAST(:mode AS integer), CAST(:nlink AS integer), CAST(:rdev AS bigint),
    CAST(:delta AS integer), CAST(:quota AS boolean), CAST(:uid AS bigint),
    CAST(:gid AS bigint), CAST(:gids AS bigint[]), CAST(:ro AS bigint[]),
    CAST(:now AS bigint), CAST(:op AS smallint), CAST(:body AS bytea), {_AT_ONCE_REQUEST})
"""))
_Q_PG_RENAME_AT_ONCE = Prepared(text(f"""
SELECT metafs_rename(CAST(:sp AS bigint), CAST(:sn AS varchar), CAST(:dp AS bigint),
    CAST(:dn AS varchar), CAST(:quota AS boolean), {_AT_ONCE_CALLER},
    CAST(:free_op AS smallint), CAST(:free_parts AS bytea[]), {_AT_ONCE_REQUEST})
"""))
_Q_PG_DELETE_INODE = Prepared(text("""
WITH d AS (DELETE FROM file_data WHERE ino = CAST(:ino AS bigint)),
x AS (DELETE FROM xattrs WHERE ino = CAST(:ino AS bigint))
DELETE FROM inodes WHERE id = CAST(:ino AS bigint)
"""))


def engine_for(url: str, settings: Settings) -> MetaEngine:
    if url.startswith("sqlite:"):
        return SqliteEngine(url, settings)
    if url.startswith(("postgresql:", "postgres:", "postgresql+psycopg:")):
        return PostgresEngine(url, settings)
    raise ValueError(f"unsupported metadata database URL {url!r} "
                     "(use sqlite:///PATH or postgresql://USER@HOST/DB)")
