"""Sessions, their leases, and the reclaim of what dead sessions leave behind.

Part of :class:`~metafs.namenode.namespace.Namespace` (a mixin: its methods use the
namespace's row helpers and transactions)."""

from __future__ import annotations

import errno
import logging

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.engine import Connection

from ..errors import FsError
from ..posix import ROOT, Cred
from ..proto import metafs_pb2 as pb
from . import requests, schema
from .rows import H, I, Tx
from .sql import Prepared


log = logging.getLogger("metafs.namenode")


S = schema.sessions
_Q_SESSION = Prepared(select(S.c.owner, S.c.expires_ns, S.c.started_ns)
                      .where(S.c.id == bindparam("sid")))


def session_error(sid: str, owner: str | None, expires_ns: int, cred: Cred, now: int,
                  what: str) -> FsError | None:
    """Why ``cred`` may not use session ``sid`` (whose row has ``owner`` and
    ``expires_ns``; ``owner`` None when there is no such session), or None when it may.

    A session belongs to the identity that opened it: another identity naming it, even a
    trusted gateway (which acts for its users only within its own sessions), is refused."""
    if not sid:
        return FsError(errno.EACCES, f"{what} needs a session: the caller names no client id "
                       "(open one with OpenSession)")
    if owner is None or expires_ns < now:
        return FsError(errno.EACCES, f"{what} needs a live session: session {sid!r} is not "
                       "open (never opened, closed, or its lease ran out; open it again)")
    if owner != cred.identity:
        return FsError(errno.EPERM, f"session {sid!r} belongs to another identity: {what} is "
                       "allowed only in the caller's own sessions")
    return None


class Sessions:
    """Sessions, their leases, and the reclaim of what dead sessions leave behind."""

    # ------------------------------------------------------------------ sessions
    def open_session(self, cred: Cred, client_id: str, host: str) -> pb.SessionReply:
        if not client_id or len(client_id) > 64:
            raise FsError(errno.EINVAL, "a session needs a client id of 1 to 64 characters")
        lease = self.settings.session_lease

        def fn(tx: Tx) -> int:
            exp = tx.now + int(lease * 1e9)
            row = _Q_SESSION.first(tx.conn, sid=client_id)
            if row is None:
                tx.conn.execute(insert(S).values(id=client_id, host=host, uid=cred.uid,
                                                 pid=cred.pid, started_ns=tx.now,
                                                 expires_ns=exp, owner=cred.identity))
                return tx.now
            if row.owner != cred.identity:
                raise FsError(errno.EPERM, f"session {client_id!r} belongs to another "
                              "identity: a client renews only its own sessions")
            # (a session past its lease that no namenode reaped yet still holds its handles
            # and locks, which no one else could take meanwhile: renewing it loses nothing)
            tx.conn.execute(update(S).where(S.c.id == client_id).values(expires_ns=exp))
            return int(row.started_ns)

        started = self.mutate(cred, fn)
        return pb.SessionReply(lease_seconds=lease, inline_limit=self.settings.inline_limit,
                               block_size=self.settings.block_size, started_ns=started)

    def check_session(self, conn: Connection, cred: Cred, now: int, what: str) -> None:
        """Refuse (EACCES, EPERM) unless ``cred`` names a live session of its own."""
        row = _Q_SESSION.first(conn, sid=cred.client_id) if cred.client_id else None
        err = session_error(cred.client_id, None if row is None else row.owner,
                            0 if row is None else row.expires_ns, cred, now, what)
        if err is not None:
            raise err

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
        requests.prune(self, self.settings.request_retention)
        if n:
            log.info("reclaimed %d orphaned inodes", n)
        return n

    def _free_orphans(self, tx: Tx, inos: set[int]) -> int:
        n = 0
        for ino in sorted(inos):
            row = self.inode_row(tx.conn, ino)
            if row is not None and row.nlink == 0 and not self._has_handles(tx.conn, ino):
                self._free(tx, ino)
                n += 1
        return n
