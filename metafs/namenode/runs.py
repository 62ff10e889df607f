"""Provenance records bound to the caller: access events and run records.

Clients tell the namenode what they read and wrote (``RecordAccess``) and when their runs
start and end (``RecordRun``); the provenance builder turns those changelog records into
lineage. Nothing in them is taken on the caller's word:

- An event is recorded under the caller's uid. Only root, or a trusted gateway (a mount
  serving several local users), may record events for another uid.
- A run id belongs to the uid that first names it (in a ``RecordRun`` or an access event):
  the ``runs`` table records the owner, and an event or run record naming a run of another
  uid is refused with EACCES.
- An event of a caller about itself is accepted only for an inode it could read (for a
  read) or write (for a write, or as its owner), reached through directories it may search.
  Events for inodes that no longer exist are dropped: nothing can be checked against them.

A refused batch records nothing (one transaction).
"""

from __future__ import annotations

import errno
import json
import logging
from typing import TYPE_CHECKING, Any, Iterable

from sqlalchemy import bindparam, insert, select
from sqlalchemy.engine import Connection

from ..errors import FsError
from ..posix import R, W, Cred, allowed
from ..proto import metafs_pb2 as pb
from . import schema
from .lookups import path_reaches
from .rows import I, Tx
from .sql import Prepared

if TYPE_CHECKING:
    from .namespace import Namespace

log = logging.getLogger("metafs.namenode.runs")

RUN_ID_MAX = 128
RUNS = schema.runs
_Q_OWNER = Prepared(select(RUNS.c.uid).where(RUNS.c.id == bindparam("id")))
_INODE_COLUMNS = (I.c.id, I.c.mode, I.c.uid, I.c.gid)
# inodes looked up per statement when checking a batch of access events (well under the
# bound parameters SQLite allows in one statement)
_INODES_PER_QUERY = 500


def acts_for_others(cred: Cred) -> bool:
    """Whether ``cred`` may record events for other uids: root, or a trusted gateway."""
    return cred.is_root or cred.trusted


def volume_uuid(ns: "Namespace") -> str:
    """This file system's identity (made by schema version 6)."""
    v = schema.volume

    def fn(conn: Connection) -> str:
        row = conn.execute(select(v.c.value).where(v.c.key == "uuid")).first()
        if row is None:
            raise FsError(errno.EIO, "the metadata database has no volume uuid (is its "
                          "schema up to date?)")
        return str(row[0])

    return ns.query(fn)


def claim_run(conn: Connection, run_id: str, uid: int, now: int) -> None:
    """Bind ``run_id`` to ``uid`` if no one holds it; EACCES if another uid does."""
    if len(run_id) > RUN_ID_MAX:
        raise FsError(errno.EINVAL, f"a run id is at most {RUN_ID_MAX} characters")
    row = _Q_OWNER.first(conn, id=run_id)
    if row is None:
        conn.execute(insert(RUNS).values(id=run_id, uid=uid, started_ns=now))
    elif int(row.uid) != uid:
        raise FsError(errno.EACCES, f"run {run_id} belongs to uid {row.uid}, not to uid {uid}")


def _inodes(conn: Connection, inos: set[int]) -> dict[int, Any]:
    """The rows (mode, uid, gid) of those of ``inos`` that exist, by inode, in one
    statement per few hundred: a batch of events costs a round trip, not one per event."""
    found: dict[int, Any] = {}
    todo = sorted(inos)
    for i in range(0, len(todo), _INODES_PER_QUERY):
        part = todo[i:i + _INODES_PER_QUERY]
        for row in conn.execute(select(*_INODE_COLUMNS).where(I.c.id.in_(part))):
            found[int(row.id)] = row
    return found


def _may_record(conn: Connection, cred: Cred, ev: pb.AccessEvent, row: Any) -> bool | None:
    """True when ``cred`` could have made this access itself to the inode of ``row``,
    None when the inode is gone (``row`` None: the event is dropped); FsError(EACCES)
    otherwise."""
    if row is None:
        return None
    if cred.is_root:
        return True
    want = (R if ev.read else 0) | (W if ev.wrote else 0)
    owner = int(row.uid) == cred.uid
    ok = allowed(cred, row.mode, row.uid, row.gid, want & ~W if owner else want)
    if not ok or not path_reaches(conn, cred, ev.ino):
        what = " and ".join(w for w, f in (("read", ev.read), ("write", ev.wrote)) if f)
        raise FsError(errno.EACCES, f"an access event for inode {ev.ino}: uid {cred.uid} "
                      f"may not {what} it")
    return True


def record_access(ns: "Namespace", cred: Cred, events: Iterable[pb.AccessEvent]) -> None:
    """Log the access events the caller may record (see the module's rules)."""
    evs = list(events)
    if not evs:
        return
    gateway = acts_for_others(cred)
    for ev in evs:
        if ev.uid and ev.uid != cred.uid and not gateway:
            raise FsError(errno.EACCES, f"an access event claims uid {ev.uid}, but the "
                          f"caller is uid {cred.uid}")
        if not (ev.read or ev.wrote):
            raise FsError(errno.EINVAL, f"an access event for inode {ev.ino} neither read "
                          "nor wrote")

    def fn(tx: Tx) -> None:
        rows = _inodes(tx.conn, {ev.ino for ev in evs if (ev.uid or cred.uid) == cred.uid})
        claimed: set[tuple[str, int]] = set()
        for ev in evs:
            uid = ev.uid or cred.uid
            if uid == cred.uid and _may_record(tx.conn, cred, ev, rows.get(ev.ino)) is None:
                log.debug("dropped an access event for inode %d: it no longer exists",
                          ev.ino)
                continue
            run_id = ev.run_id or cred.run_id
            if run_id and (run_id, uid) not in claimed:
                claim_run(tx.conn, run_id, uid, tx.now)
                claimed.add((run_id, uid))
            tx.log(pb.OP_ACCESS, ev.ino, uid=uid, extra=json.dumps({
                "read": ev.read, "wrote": ev.wrote, "pid": ev.pid,
                "proc_start": ev.proc_start, "cmdline": ev.cmdline, "host": ev.host,
                "ts_ns": ev.ts_ns, "version": ev.version, "uid": uid,
            }), run_id=run_id)

    ns.mutate(cred, fn)


def record_run(ns: "Namespace", cred: Cred, run_id: str, body: str) -> None:
    """Log a run record (start, end, ...) of a run the caller owns, or claim a new one."""
    if not run_id:
        raise FsError(errno.EINVAL, "a run needs an id")
    try:
        doc: Any = json.loads(body or "{}")
    except ValueError as exc:
        raise FsError(errno.EINVAL, f"run record is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise FsError(errno.EINVAL, "a run record is a JSON object")

    def fn(tx: Tx) -> None:
        claim_run(tx.conn, run_id, cred.uid, tx.now)
        tx.log(pb.OP_RUN, 0, run_id=run_id, extra=body)

    ns.mutate(cred, fn)
