"""Directory quotas: a limit on the files (inodes) and bytes under a directory.

A quota row names a directory inode and its limits (0: no limit). The check runs inside
every write transaction, just before it commits (the namespace's commit asks whether any
quota exists in the statement that appends the changelog records, and runs the check when
one does):
when the transaction's change records add entries under a directory, move entries into
it, or write data to files in it, every quota on that directory and its ancestors is
re-evaluated *in the same transaction*, and a limit exceeded fails the operation with
EDQUOT and rolls it back. Because usage is counted in the transaction, quotas hold across
any number of namenodes with no counters to drift; the cost is a subtree count per
growing operation inside a quota'd tree (fine for trees of up to ~10^5 entries). Where
writers are not serialized by the database (PostgreSQL, READ COMMITTED), the check first
locks the quota rows it evaluates (``FOR UPDATE``, ascending ino), so growing operations
under one quota take turns between the count and the commit.

Shrinking operations (unlink, rmdir, truncation) are never refused, so a tree that is
over its quota (because the quota was lowered) can always be cleaned up.
"""

from __future__ import annotations

import errno
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.engine import Connection

from ..errors import FsError
from ..proto import metafs_pb2 as pb
from . import schema
from .rows import Tx

if TYPE_CHECKING:
    from .namespace import Namespace

Q = schema.quotas
D = schema.dentries

_ANY_QUOTA = "EXISTS (SELECT 1 FROM quotas)"

_CREATES = {pb.OP_CREATE, pb.OP_MKDIR, pb.OP_MKNOD, pb.OP_SYMLINK, pb.OP_LINK}

_USAGE_SQL = text("""
WITH RECURSIVE sub(ino) AS (
    SELECT CAST(:root AS BIGINT)
    UNION
    SELECT d.ino FROM dentries d JOIN sub ON d.parent = sub.ino WHERE d.mode = :dirtype
)
SELECT COUNT(DISTINCT d.ino) AS files,
       COALESCE(SUM(CASE WHEN d.mode = :regtype THEN i.size ELSE 0 END), 0) AS bytes
FROM dentries d JOIN sub ON d.parent = sub.ino JOIN inodes i ON i.id = d.ino
""")


@dataclass
class Usage:
    ino: int
    max_files: int
    max_bytes: int
    files: int
    bytes: int

    def to_dict(self) -> dict[str, int]:
        return dict(ino=self.ino, max_files=self.max_files, max_bytes=self.max_bytes,
                    files=self.files, bytes=self.bytes)


def usage(conn: Connection, ino: int) -> tuple[int, int]:
    """(entries, bytes of regular files) under directory ``ino``; hard links count once."""
    row = conn.execute(_USAGE_SQL, {"root": ino, "dirtype": stat.S_IFDIR,
                                    "regtype": stat.S_IFREG}).first()
    return (int(row.files), int(row.bytes)) if row else (0, 0)


class Quotas:
    """Quota administration and the EDQUOT check of one namespace."""

    def __init__(self, ns: "Namespace") -> None:
        self.ns = ns

    # -- administration (``metafs quota``)
    def set(self, ino: int, max_files: int = 0, max_bytes: int = 0) -> None:
        def fn(conn: Connection) -> None:
            row = conn.execute(select(schema.inodes.c.mode)
                               .where(schema.inodes.c.id == ino)).first()
            if row is None or not stat.S_ISDIR(row.mode):
                raise FsError(errno.ENOTDIR, "quotas are set on directories")
            if conn.execute(select(Q.c.ino).where(Q.c.ino == ino)).first():
                conn.execute(update(Q).where(Q.c.ino == ino)
                             .values(max_files=max_files, max_bytes=max_bytes))
            else:
                conn.execute(insert(Q).values(ino=ino, max_files=max_files,
                                              max_bytes=max_bytes))

        self.ns.engine.write(fn)

    def clear(self, ino: int) -> None:
        self.ns.engine.write(lambda conn: conn.execute(delete(Q).where(Q.c.ino == ino)))

    def list(self) -> list[Usage]:
        def fn(conn: Connection) -> list[Usage]:
            out = []
            for q in conn.execute(select(Q).order_by(Q.c.ino)).all():
                files, nbytes = usage(conn, q.ino)
                out.append(Usage(q.ino, q.max_files, q.max_bytes, files, nbytes))
            return out

        return self.ns.engine.read(fn)

    # -- enforcement
    def guard(self, tx: "Tx") -> str | None:
        """For a transaction about to commit: None if no quota can refuse it, else the SQL
        condition under which :meth:`check` must run first (a quota exists anywhere). The
        namespace's commit asks it in the statement that appends the transaction's
        records (one round trip where there are no quotas)."""
        if not self.ns.settings.quota_enabled:
            return None
        for r in tx.records:
            if r.op in _CREATES or r.op == pb.OP_WRITE or (
                    r.op == pb.OP_RENAME and r.parent != r.old_parent):
                return _ANY_QUOTA
        return None

    def check(self, tx: "Tx") -> None:
        """EDQUOT if the transaction takes a directory past a quota; run when a quota
        exists (:meth:`guard`), before the transaction appends its records."""
        conn = tx.conn
        starts: set[int] = set()
        for r in tx.records:
            if r.op in _CREATES:
                starts.add(r.parent)
            elif r.op == pb.OP_RENAME and r.parent != r.old_parent:
                starts.add(r.parent)
            elif r.op == pb.OP_WRITE:
                starts.update(conn.execute(select(D.c.parent).where(D.c.ino == r.ino))
                              .scalars().all())
        if not starts:
            return
        dirs: set[int] = set()
        for d in starts:
            dirs.update(self._ancestors(conn, d))
        # Lock the quota rows (ascending ino, one global order) before counting: a
        # concurrent grower under the same quota waits here until this transaction ends,
        # and its count (a new statement, so a new READ COMMITTED snapshot) then sees what
        # this one added. Without it both could count, pass and commit.
        quotas = self.ns.engine.for_update(
            select(Q).where(Q.c.ino.in_(sorted(dirs))).order_by(Q.c.ino))
        for q in conn.execute(quotas).all():
            files, nbytes = usage(conn, q.ino)
            if q.max_files and files > q.max_files:
                raise FsError(errno.EDQUOT, f"quota exceeded: directory inode {q.ino} may hold "
                              f"{q.max_files} entries, this would make {files}")
            if q.max_bytes and nbytes > q.max_bytes:
                raise FsError(errno.EDQUOT, f"quota exceeded: directory inode {q.ino} may hold "
                              f"{q.max_bytes} bytes, this would make {nbytes}")

    @staticmethod
    def _ancestors(conn: Connection, ino: int) -> list[int]:
        out = [ino]
        seen = {ino}
        while ino != schema.ROOT_INO:
            parent: Any = conn.execute(select(D.c.parent).where(D.c.ino == ino).limit(1)).scalar()
            if parent is None or parent in seen:
                break
            out.append(parent)
            seen.add(parent)
            ino = parent
        return out
