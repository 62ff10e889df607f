"""What the namespace modules share: the tables, the statements several of them run, the
limits, the transaction object (:class:`Tx`) and the mapping of inode rows to ``pb.Attr``."""

from __future__ import annotations

import stat
from collections import namedtuple
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy import and_, bindparam, delete, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql.dml import Update

from ..posix import Cred
from ..proto import metafs_pb2 as pb
from . import schema
from .sql import Prepared

if TYPE_CHECKING:
    from .namespace import Namespace


I = schema.inodes
D = schema.dentries
FD = schema.file_data
XA = schema.xattrs
H = schema.handles
C = schema.counters
MAX_FILE_SIZE = (1 << 63) - 1  # sizes and offsets are signed 64-bit in every database
STORAGE_INLINE, STORAGE_BLOCKS = 0, 1
ATTR_COLS = (I.c.id, I.c.mode, I.c.nlink, I.c.uid, I.c.gid, I.c.rdev, I.c.size,
             I.c.atime_ns, I.c.mtime_ns, I.c.ctime_ns, I.c.btime_ns, I.c.version,
             I.c.generation, I.c.storage, I.c.target)
AttrRow = namedtuple("AttrRow", [c.key for c in ATTR_COLS])  # type: ignore[misc]
# an inode's attribute columns with the entry (parent, name) that named it
LookupRow = namedtuple("LookupRow", [*AttrRow._fields, "parent", "name"])  # type: ignore[misc]
Q_INSERT_INODE = Prepared(insert(I))
Q_ENTRY_INO = Prepared(select(D.c.ino).where(D.c.parent == bindparam("parent"),
                                             D.c.name == bindparam("name")))
Q_INSERT_DENTRY = Prepared(insert(D).values(parent=bindparam("parent"), name=bindparam("name"),
                                            ino=bindparam("ino"), mode=bindparam("mode")))
Q_INSERT_DATA = Prepared(insert(FD).values(ino=bindparam("ino"), data=bindparam("data")))
Q_UPDATE_DATA = Prepared(update(FD).where(FD.c.ino == bindparam("ino")).values(
    data=bindparam("new_data")))
Q_INSERT_XATTR = Prepared(insert(XA).values(ino=bindparam("ino"), name=bindparam("name"),
                                            value=bindparam("value")))
Q_SET_CTIME = Prepared(update(I).where(I.c.id == bindparam("ino")).values(
   ctime_ns=bindparam("now")).returning(*ATTR_COLS))  # the row as changed
Q_MOVE_DENTRY = Prepared(update(D).where(D.c.parent == bindparam("sp"),
                                         D.c.name == bindparam("sn")).values(
    parent=bindparam("dp"), name=bindparam("dn")))
Q_DELETE_DATA = Prepared(delete(FD).where(FD.c.ino == bindparam("ino")))
Q_DELETE_DENTRY = Prepared(delete(D).where(D.c.parent == bindparam("dparent"),
                                           D.c.name == bindparam("dname")))
Q_TOUCH_DIR = Prepared(update(I).where(I.c.id == bindparam("ino")).values(
    mtime_ns=bindparam("now"), ctime_ns=bindparam("now"), nlink=I.c.nlink + bindparam("delta")))
# a name of the inode is gone: its new link count, and whether a handle still holds it
Q_SET_NLINK = Prepared(update(I).where(I.c.id == bindparam("ino")).values(
    nlink=bindparam("new_nlink"), ctime_ns=bindparam("now")).returning(
    select(H.c.id).where(H.c.ino == bindparam("ino")).exists().label("held")))
Q_DELETE_XATTRS = Prepared(delete(XA).where(XA.c.ino == bindparam("ino")))
Q_DELETE_INODE = Prepared(delete(I).where(I.c.id == bindparam("ino")))
_Q_LOOKUP_BOTH = Prepared(
    select(*ATTR_COLS, D.c.parent, D.c.name).select_from(D.join(I, I.c.id == D.c.ino))
    .where(or_(and_(D.c.parent == bindparam("sp"), D.c.name == bindparam("sn")),
               and_(D.c.parent == bindparam("dp"), D.c.name == bindparam("dn")))))


def lookup_both(conn: Connection, sp: int, sn: str, dp: int, dn: str) -> tuple[Any, Any]:
    """The inode rows (or None) of the entries ``sn`` of ``sp`` and ``dn`` of ``dp`` (a
    rename's two names), read by one statement."""
    found = {(r.parent, r.name): r for r in _Q_LOOKUP_BOTH.all(conn, sp=sp, sn=sn, dp=dp,
                                                               dn=dn)}
    return found.get((sp, sn)), found.get((dp, dn))


BUMP = object()  # in update_inode's values: version = version + 1
_Q_UPDATE_INODE: dict[tuple[str, ...], Prepared] = {}


def inode_update(vals: dict[str, Any]) -> Update:
    """UPDATE inodes SET <the columns of vals> WHERE id = :ino RETURNING the attribute
    columns; the values are parameters ``v_<column>`` (see :func:`inode_update_params`)."""
    return update(I).where(I.c.id == bindparam("ino")).values(
        {c: (I.c.version + 1 if v is BUMP else bindparam(f"v_{c}")) for c, v in vals.items()}
    ).returning(*ATTR_COLS)


def inode_update_params(vals: dict[str, Any]) -> dict[str, Any]:
    return {f"v_{c}": v for c, v in vals.items() if v is not BUMP}


def update_inode(conn: Connection, ino: int, vals: dict[str, Any]) -> Any:
    """UPDATE inodes SET ... WHERE id = ino, prepared once per set of columns (setattr and
    write change a few of a handful of column sets). Returns the attribute columns of the
    row as updated (None if there is no such row): no second statement reads them."""
    cols = tuple(sorted(vals))
    q = _Q_UPDATE_INODE.get(cols)
    if q is None:
        q = _Q_UPDATE_INODE[cols] = Prepared(inode_update({c: vals[c] for c in cols}))
    return q.first(conn, ino=ino, **inode_update_params(vals))


# The caller of the operation running in this context. Handle checks read it when their
# caller passes no credentials (the block layer's RPCs; see Namespace.__init__).
CALLER: ContextVar[Cred | None] = ContextVar("metafs_caller", default=None)


def inherit_group(row: dict[str, Any], parent: Any) -> None:
    """The group rule of a new inode (the column dict ``row``) made in directory
    ``parent``: in a set-group-ID directory it takes the directory's group, and a new
    directory the set-group-ID bit too. (Whether a new file keeps a set-group-ID bit of
    its own is the namespace's rule, by the caller's groups.)"""
    if parent.mode & stat.S_ISGID:
        row["gid"] = parent.gid
        if stat.S_ISDIR(row["mode"]):
            row["mode"] |= stat.S_ISGID


def kill_priv(mode: int) -> int:
    """``mode`` as a write or truncate by a caller other than root leaves it: set-user-ID
    cleared, and set-group-ID cleared where group execute makes it one (without group
    execute it marks mandatory locking and stays)."""
    mode &= ~stat.S_ISUID
    if mode & stat.S_IXGRP:
        mode &= ~stat.S_ISGID
    return mode


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
