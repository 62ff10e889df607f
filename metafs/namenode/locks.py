"""Cluster-wide file locks: POSIX record locks (fcntl, OFD) and BSD flock locks.

A lock is a row of the ``locks`` table: the inode, the holder (``session``, the client id
of the mount or client that took it, and ``owner``, the 64-bit lock owner the kernel
names inside that session), ``kind`` (``posix`` or ``flock``), ``type`` (``read`` or
``write``) and the byte range ``start``..``end``, *inclusive*, where ``end`` =
:data:`OFFSET_MAX` (2^63-1) means "to the end of the file, however it grows" (the kernel's
own convention, so ranges pass through the mount unchanged). ``pid`` is the holder's
process id, for F_GETLK.

Semantics are Linux's:

* **POSIX locks** of one (session, owner) never conflict with each other. Setting a lock
  replaces that owner's locks over the range: an overlapping lock of the other type is cut
  back (an unlock, or a lock of the other type, in the middle of a lock splits it in two),
  and overlapping or adjacent locks of the same type merge into one. Locks of other
  owners conflict when the ranges overlap and either is a write lock. A test (F_GETLK)
  reports the first conflicting lock (lowest start), or that there is none.
* **flock locks** cover the whole file, one per owner (the kernel's owner of an flock is
  the open file description); shared or exclusive. Taking the other type replaces the
  owner's lock; as on Linux the conversion is not atomic: the old lock is removed first,
  so an upgrade that conflicts leaves the owner without a lock (EAGAIN, or the caller
  waits for the new one). flock and POSIX locks are independent of each other.

Every set or unlock is one write transaction that first locks the inode row (``FOR
UPDATE`` on PostgreSQL; SQLite serializes writers), so two namenodes on one database never
both grant conflicting locks. Locks are not changelog records: they change no file.

Nothing here waits. A set that conflicts fails with EAGAIN (or, with
``report_conflict``, answers ``granted=false`` and the conflict); a caller that wants to
block (F_SETLKW, flock without LOCK_NB) retries with backoff, so no database transaction
and no server thread is held while it waits (the mount retries from 5 ms, doubling to
200 ms; see docs/fuse.md). There is therefore no queue, no fairness between waiters and
no deadlock detection across clients.

Locks die with their holder: the namespace drops a session's locks when the session is
closed and when its lease runs out (:meth:`Locks.drop_session`), and an inode's locks when
the inode is freed.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from sqlalchemy import bindparam, delete, insert, or_, select
from sqlalchemy.engine import Connection

from ..errors import FsError
from ..posix import R, W, Cred, allowed
from ..proto import metafs_pb2 as pb
from . import schema
from .changelog import StampedLog
from .rows import Tx, to_attr
from .sql import Prepared

if TYPE_CHECKING:
    from .namespace import Namespace

OFFSET_MAX = (1 << 63) - 1
POSIX, FLOCK = "posix", "flock"
READ, WRITE = "read", "write"
_KINDS = {pb.LOCK_POSIX: POSIX, pb.LOCK_FLOCK: FLOCK}
_TYPES = {pb.LOCK_READ: READ, pb.LOCK_WRITE: WRITE}
_PB_TYPE = {READ: pb.LOCK_READ, WRITE: pb.LOCK_WRITE}

L = schema.locks
S = schema.sessions
C = schema.counters

_COLS = (L.c.id, L.c.session, L.c.owner, L.c.type, L.c.start, L.c.end, L.c.pid)
# the first lock of another holder over [start, end] (any type; a read set filters writes)
_Q_CONFLICT = Prepared(
    select(*_COLS).where(L.c.ino == bindparam("ino"), L.c.kind == bindparam("kind"),
                         L.c.start <= bindparam("end"), L.c.end >= bindparam("start"),
                         or_(L.c.session != bindparam("session"),
                             L.c.owner != bindparam("owner")))
    .order_by(L.c.start, L.c.id).limit(1))
_Q_CONFLICT_W = Prepared(
    select(*_COLS).where(L.c.ino == bindparam("ino"), L.c.kind == bindparam("kind"),
                         L.c.start <= bindparam("end"), L.c.end >= bindparam("start"),
                         L.c.type == WRITE,
                         or_(L.c.session != bindparam("session"),
                             L.c.owner != bindparam("owner")))
    .order_by(L.c.start, L.c.id).limit(1))
# the owner's own locks touching [start, end] (callers widen by one byte to find neighbours)
_Q_OWN = Prepared(
    select(*_COLS).where(L.c.ino == bindparam("ino"), L.c.kind == bindparam("kind"),
                         L.c.session == bindparam("session"), L.c.owner == bindparam("owner"),
                         L.c.start <= bindparam("end"), L.c.end >= bindparam("start"))
    .order_by(L.c.start))
_Q_DELETE = Prepared(delete(L).where(L.c.id == bindparam("id")))
_Q_DELETE_INO = Prepared(delete(L).where(L.c.ino == bindparam("ino")))
_Q_INSERT = Prepared(insert(L).values(
    ino=bindparam("ino"), session=bindparam("session"), owner=bindparam("owner"),
    kind=bindparam("kind"), type=bindparam("type"), start=bindparam("start"),
    end=bindparam("end"), pid=bindparam("pid")))
_Q_SESSION = Prepared(select(S.c.expires_ns).where(S.c.id == bindparam("id")))
_Q_OWNER = Prepared(select(S.c.owner).where(S.c.id == bindparam("id")))
_Q_HEAD = Prepared(select(C.c.value).where(C.c.name == "changelog"))


def signed64(v: int) -> int:
    """A uint64 owner id as the signed 64-bit integer every database stores."""
    return v - (1 << 64) if v >= 1 << 63 else v


@dataclass(frozen=True)
class Range:
    start: int
    end: int
    type: str
    pid: int


def set_posix(own: list[Any], start: int, end: int, typ: str | None,
              pid: int) -> tuple[list[int], list[Range]]:
    """The change to one owner's POSIX locks that setting ``typ`` (None: unlock) over
    [start, end] makes: (ids of locks to delete, ranges to insert).

    ``own`` holds the owner's locks that overlap [start - 1, end + 1] (so that adjacent
    locks of the same type merge). The owner's locks never overlap one another, and the
    result keeps it so."""
    drop: list[int] = []
    add: list[Range] = []
    s, e = start, end
    for r in own:
        overlaps = r.start <= end and r.end >= start
        if typ is not None and r.type == typ:
            # same type, overlapping or adjacent: merge into the new lock
            s, e = min(s, r.start), max(e, r.end)
            drop.append(r.id)
        elif overlaps:
            drop.append(r.id)
            if r.start < start:
                add.append(Range(r.start, start - 1, r.type, r.pid))
            if r.end > end:
                add.append(Range(end + 1, r.end, r.type, r.pid))
        # else: adjacent with the other type, untouched
    if typ is not None:
        add.append(Range(s, e, typ, pid))
    return drop, add


class Locks:
    """The Lock call of one namespace, and the cleanup of dead holders' locks."""

    def __init__(self, ns: "Namespace") -> None:
        self.ns = ns
        ns.free_data_hooks.append(self._freed)

    # ------------------------------------------------------------------ the call
    @staticmethod
    def _check_owner(conn: Connection, cred: Cred, session: str) -> None:
        owner = _Q_OWNER.scalar(conn, id=session)
        if owner is not None and owner != cred.identity:
            raise FsError(errno.EPERM, f"session {session!r} belongs to another identity: "
                          "locks are set and released only in the caller's own sessions")

    def lock(self, cred: Cred, req: pb.LockRequest) -> pb.LockReply:
        session = cred.client_id or ""
        if not session:
            raise FsError(errno.EINVAL, "a lock belongs to a session: the caller names no "
                          "client id")
        # a lock owner lives inside its session, and the session is its identity's: no one
        # sets, tests or drops locks in another identity's session
        self.ns.query(lambda conn: self._check_owner(conn, cred, session))
        if req.type == pb.LOCK_UNLOCK and not req.ino:
            if req.test_only:
                raise FsError(errno.EINVAL, "nothing to test without an inode")
            self.ns.mutate(cred, lambda tx: self._drop_where(tx.conn, L.c.session == session))
            return pb.LockReply(granted=True)
        kind = _KINDS.get(req.kind)
        if kind is None:
            raise FsError(errno.EINVAL, f"bad lock kind {req.kind}")
        if req.type != pb.LOCK_UNLOCK and req.type not in _TYPES:
            raise FsError(errno.EINVAL, f"bad lock type {req.type}")
        if req.test_only and req.type == pb.LOCK_UNLOCK:
            raise FsError(errno.EINVAL, "a lock test needs a read or write lock type")
        if kind == FLOCK:
            start, end = 0, OFFSET_MAX
        else:
            start, end = req.start, req.end
            if start < 0 or end < start or end > OFFSET_MAX:
                raise FsError(errno.EINVAL, f"bad lock range {start}..{end}")
        typ = _TYPES.get(req.type)  # None: unlock
        args = dict(ino=req.ino, kind=kind, session=session, owner=signed64(req.owner),
                    start=start, end=end)
        if req.test_only:
            return self.ns.query(lambda conn: self._test(conn, cred, req, typ, args))
        reply = self.ns.mutate(cred, lambda tx: self._set(tx, req, typ, args))
        if not reply.granted and not req.report_conflict:
            raise FsError(errno.EAGAIN, describe(kind, reply))
        if reply.granted and typ is not None and isinstance(self.ns.engine.changelog,
                                                            StampedLog):
            # positions are stamped after commit: records committed before the grant (its
            # predecessor's changes) may still await theirs, past the grant's head
            reply.head = self.ns.changelog_head()
        return reply

    def _check(self, conn: Connection, cred: Cred, req: pb.LockRequest, kind: str,
               typ: str | None) -> Any:
        """The inode (ENOENT if gone), if the caller may lock it: with a handle, as its
        open mode allows (a read lock needs it open for reading, a write lock for writing,
        as fcntl needs of a descriptor: EBADF otherwise); without one, as the mode bits
        allow (read permission for a read lock, write for a write lock; either for flock
        and tests)."""
        row = self.ns.live_inode(conn, req.ino)
        if req.handle:
            flags = self.ns.handle_flags(conn, req.handle, req.ino, cred)
            acc = flags & os.O_ACCMODE
            if kind == POSIX and not req.test_only:
                if typ == READ and acc not in (os.O_RDONLY, os.O_RDWR):
                    raise FsError(errno.EBADF, "a read lock needs a file open for reading")
                if typ == WRITE and acc not in (os.O_WRONLY, os.O_RDWR):
                    raise FsError(errno.EBADF, "a write lock needs a file open for writing")
            return row
        if kind == POSIX and not req.test_only:
            want = R if typ == READ else W
            if not allowed(cred, row.mode, row.uid, row.gid, want):
                raise FsError(errno.EACCES, f"permission denied to take a {typ} lock "
                              f"(needs {'read' if want == R else 'write'} permission)")
        elif not (allowed(cred, row.mode, row.uid, row.gid, R)
                  or allowed(cred, row.mode, row.uid, row.gid, W)):
            raise FsError(errno.EACCES, "permission denied to lock this file (needs read "
                          "or write permission)")
        return row

    @staticmethod
    def _conflict(conn: Connection, typ: str, args: dict[str, Any]) -> Any:
        q = _Q_CONFLICT if typ == WRITE else _Q_CONFLICT_W
        return q.first(conn, **args)

    def _test(self, conn: Connection, cred: Cred, req: pb.LockRequest, typ: str | None,
              args: dict[str, Any]) -> pb.LockReply:
        self._check(conn, cred, req, args["kind"], typ)
        c = self._conflict(conn, typ or WRITE, args)
        return self._reply(c, args["session"])

    @staticmethod
    def _reply(c: Any, session: str) -> pb.LockReply:
        if c is None:
            return pb.LockReply(granted=True, type=pb.LOCK_UNLOCK)
        return pb.LockReply(granted=False, type=_PB_TYPE[c.type], start=c.start, end=c.end,
                            pid=int(c.pid) & 0xFFFFFFFF, same_session=c.session == session)

    def _set(self, tx: "Tx", req: pb.LockRequest, typ: str | None,
             args: dict[str, Any]) -> pb.LockReply:
        conn = tx.conn
        kind = args["kind"]
        if typ is None:  # unlock: only the caller's own rows change; the inode may be gone
            self.ns.lock_inodes(conn, req.ino)
            if kind == FLOCK:
                for r in _Q_OWN.all(conn, **args):
                    _Q_DELETE.run(conn, id=r.id)
            else:
                self._apply(conn, args, None, 0)
            return pb.LockReply(granted=True, type=pb.LOCK_UNLOCK)
        self.ns.lock_inodes(conn, req.ino)
        row = self._check(conn, tx.cred, req, kind, typ)
        expires = _Q_SESSION.scalar(conn, id=args["session"])
        if expires is None or expires < tx.now:
            raise FsError(errno.ENOLCK, "this session has no lease (closed or expired): "
                          "its locks were released; open a session first")
        if kind == FLOCK:
            mine = _Q_OWN.all(conn, **args)
            if mine and len(mine) == 1 and mine[0].type == typ:
                return self._granted(conn, row)
            for r in mine:  # a conversion removes the old lock first (as Linux does)
                _Q_DELETE.run(conn, id=r.id)
            c = self._conflict(conn, typ, args)
            if c is not None:
                return self._reply(c, args["session"])
            _Q_INSERT.run(conn, ino=req.ino, session=args["session"], owner=args["owner"],
                          kind=FLOCK, type=typ, start=0, end=OFFSET_MAX, pid=req.pid)
        else:
            c = self._conflict(conn, typ, args)
            if c is not None:
                return self._reply(c, args["session"])
            self._apply(conn, args, typ, req.pid)
        return self._granted(conn, row)

    @staticmethod
    def _granted(conn: Connection, row: Any) -> pb.LockReply:
        # a holder that sees everything up to ``head`` sees every change made before it
        # got the lock, in particular everything its predecessor did while holding it
        return pb.LockReply(granted=True, type=pb.LOCK_UNLOCK, attr=to_attr(row),
                            head=int(_Q_HEAD.scalar(conn) or 0))

    @staticmethod
    def _apply(conn: Connection, args: dict[str, Any], typ: str | None, pid: int) -> None:
        start, end = args["start"], args["end"]
        wide = dict(args, start=start - 1, end=min(end, OFFSET_MAX - 1) + 1)
        own = _Q_OWN.all(conn, **wide)
        drop, add = set_posix(own, start, end, typ, pid)
        for i in drop:
            _Q_DELETE.run(conn, id=i)
        if add:
            _Q_INSERT.many(conn, [dict(ino=args["ino"], session=args["session"],
                                       owner=args["owner"], kind=POSIX, type=r.type,
                                       start=r.start, end=r.end, pid=r.pid) for r in add])

    # ------------------------------------------------------------------ cleanup
    def drop_session(self, tx: "Tx", sessions: Iterable[str]) -> int:
        """Release every lock of these sessions (closed, or their lease ran out)."""
        ids = sorted(set(sessions))
        if not ids:
            return 0
        return self._drop_where(tx.conn, L.c.session.in_(ids))

    @staticmethod
    def _drop_where(conn: Connection, cond: Any) -> int:
        return int(conn.execute(delete(L).where(cond)).rowcount or 0)

    def _freed(self, tx: "Tx", ino: int) -> None:
        # (every unlink and rmdir that frees an inode runs this: prepared, not built)
        _Q_DELETE_INO.run(tx.conn, ino=ino)

    # ------------------------------------------------------------------ inspection
    def list(self, ino: int | None = None) -> list[dict[str, Any]]:
        """Every lock (of ``ino``), for tools and tests."""
        def fn(conn: Connection) -> list[dict[str, Any]]:
            q = select(L).order_by(L.c.ino, L.c.kind, L.c.start, L.c.id)
            if ino is not None:
                q = q.where(L.c.ino == ino)
            return [dict(r._mapping) for r in conn.execute(q)]

        return self.ns.query(fn)


def describe(kind: str, reply: pb.LockReply) -> str:
    typ = "write" if reply.type == pb.LOCK_WRITE else "read"
    if kind == FLOCK:
        what = f"an flock {'exclusive' if typ == 'write' else 'shared'} lock"
    else:
        end = "EOF" if reply.end == OFFSET_MAX else str(reply.end)
        what = f"a {typ} lock on bytes {reply.start}..{end}"
    holder = " of another owner in this session" if reply.same_session else ""
    return f"conflicting lock: {what} held by pid {reply.pid}{holder}"
