"""The changelog: every committed change, in one total order equal to commit order.

Each mutating transaction appends its records as its very last statement:

    UPDATE counters SET value = value + n WHERE name = 'changelog' RETURNING value

and inserts its records with the n positions just below the returned value. The UPDATE
takes the counter row's lock, which is held until the transaction commits or rolls back.
So positions are handed out one transaction at a time, in the order the transactions
commit: a transaction can only take position k+1 after the holder of k has committed
(releasing the lock) or rolled back (releasing the lock *and* undoing its increment, so
k is handed out again). Hence:

- no gap: every position up to the counter's committed value belongs to a committed row;
- no reordering: if a reader's snapshot holds the row at k, it holds every row below k;
- no uncommitted record is ever visible (plain MVCC).

A reader therefore follows the tail with ``seq > checkpoint ORDER BY seq`` and can never
skip a record, on SQLite (one writer at a time anyway) and on PostgreSQL with any number of
namenodes. The price is that the final moments of each writing transaction (the append and
the commit) are serialized; every other part of the transaction runs concurrently. This is
the "single sequencer" design; a PgQ-style snapshot tick would avoid that wait at the cost of
records becoming visible only at the next tick.
"""

from __future__ import annotations

import threading
import time
from typing import Sequence

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Connection

from ..proto import metafs_pb2 as pb
from . import schema
from .sql import Prepared

_ct = schema.counters
_cl = schema.changelog

_Q_BUMP = Prepared(update(_ct).where(_ct.c.name == "changelog")
                   .values(value=_ct.c.value + bindparam("n")).returning(_ct.c.value))
_Q_INSERT = Prepared(insert(_cl).values(seq=bindparam("seq"), op=bindparam("op"),
                                        ino=bindparam("ino"), ts_ns=bindparam("ts_ns"),
                                        body=bindparam("body")))


def append(conn: Connection, records: Sequence[pb.ChangeRecord]) -> int:
    """Append ``records`` in the current transaction; returns the last position."""
    n = len(records)
    last = int(_Q_BUMP.scalar(conn, n=n))
    first = last - n + 1
    rows = []
    for i, r in enumerate(records):
        rows.append({"seq": first + i, "op": r.op, "ino": r.ino, "ts_ns": r.ts_ns,
                     "body": r.SerializeToString()})
        r.seq = first + i
    if n == 1:
        _Q_INSERT.run(conn, **rows[0])
    else:
        _Q_INSERT.many(conn, rows)
    return last


def head(conn: Connection) -> int:
    return int(conn.execute(select(_ct.c.value).where(_ct.c.name == "changelog")).scalar_one())


def read(conn: Connection, after: int, limit: int,
         max_bytes: int = 0) -> list[pb.ChangeRecord]:
    """Up to ``limit`` records after position ``after``, in order. With ``max_bytes``,
    the records stop before the one that would take their encoded size past it (but the
    first is always returned): a reader asking for many large records gets fewer of them,
    never a reply too large to send."""
    # streamed (a server-side cursor on PostgreSQL): rows past the cap are never fetched
    rows = conn.execute(
        select(_cl.c.seq, _cl.c.body).where(_cl.c.seq > after).order_by(_cl.c.seq)
        .limit(limit).execution_options(stream_results=True, max_row_buffer=256))
    out = []
    size = 0
    try:
        for seq, body in rows:
            size += len(body) + 16  # the record's framing and its seq field
            if max_bytes and out and size > max_bytes:
                break
            rec = pb.ChangeRecord.FromString(bytes(body))
            rec.seq = seq
            out.append(rec)
    finally:
        rows.close()
    return out


class Notifier:
    """Wakes changelog readers in this process when a commit moves the head.

    Commits made by other namenode processes are noticed by the readers' own polling
    (Settings.changelog_poll), so a subscriber never depends on this for correctness.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._head = 0

    def notify(self, head: int) -> None:
        with self._cond:
            if head > self._head:
                self._head = head
                self._cond.notify_all()

    def wait(self, after: int, timeout: float) -> bool:
        """Wait until a commit past ``after`` is known here, or ``timeout``; True if one is."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._head <= after:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True
