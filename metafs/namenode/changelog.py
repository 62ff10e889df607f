"""The changelog: every committed change, in one total order consistent with commit order.

Consumers see records at dense positions ``seq`` = 1, 2, 3, ... and follow the tail with
``seq > checkpoint ORDER BY seq``. Every engine guarantees:

- **nothing uncommitted is visible**: a record gets its position only once its transaction
  has committed (or, on SQLite, in the transaction itself, under MVCC);
- **no gap a reader could skip**: positions are handed out densely and become visible as a
  prefix: a reader that sees position k sees every position below k;
- **nothing twice**: a record is moved or written once, in one transaction;
- **commit order**: if a transaction wrote a row another transaction had written (or read
  what the other committed), the other's records come first. A transaction's records are
  contiguous (a rename of a big tree is one record).

Two ways to get there, chosen by the engine (:mod:`metafs.namenode.engine`):

:class:`DirectLog` (SQLite, one writer at a time). The transaction's last statement bumps
the ``changelog`` counter and inserts its records at the positions below the new value.
The counter row is held until commit, so positions are handed out in commit order; a
rollback undoes the increment. With one writer at a time that costs nothing.

:class:`StampedLog` (PostgreSQL, any number of namenodes). Holding one row lock through
every commit would serialize all commits of the cluster, so positions are stamped *after*
commit instead:

1. *Append*: a transaction's last statement inserts its records into
   ``changelog_pending`` under one ticket ``ord = nextval('metafs_changelog_ord')`` (one
   per transaction; ``idx`` orders its records). A sequence takes no lock that lives until
   commit, so appends never wait for each other. Rolled-back records vanish with their
   transaction.
2. *Stamp*: an assigner thread in each namenode runs rounds. A round holds a cluster-wide
   advisory lock (one round at a time in the cluster), and in one statement moves every
   pending row its snapshot sees (i.e. of committed transactions) into ``changelog``,
   numbered after the head counter in ``(ord, idx)`` order, and advances the counter.
   Rounds are batched: a local commit wakes the local assigner (the first since its
   last round; later ones find a round due), which runs a round at once when the last
   one began at least ``changelog_stamp_interval`` (20 ms) ago, and otherwise when that
   interval has passed; each round takes everything committed meanwhile. So under load a namenode runs at most one round per interval however many
   commits it makes (a round is a transaction with a commit of its own: one after every
   commit made a single sequential writer's creates about 1.6 times as slow), and the
   number of rounds (not commits) is what the lock serializes. A reader that needs
   read-your-writes gets a round at once (below). An idle assigner still polls, so
   records committed by a namenode that died before stamping are stamped by another one.
3. *Read*: readers read ``changelog`` as before, in one statement that also returns the
   head and whether records await a position.

Why this is correct. *No gap, nothing uncommitted, nothing twice*: only committed rows are
visible to a round; a round deletes what it moves in the same transaction; rounds are
serialized by the lock and each commits atomically, so stamped positions become visible
as whole, dense prefixes. *Order*: take T1 whose effect T2 depends on (T2 wrote a row T1
wrote, which in PostgreSQL means T2 waited for T1's commit, or T2 read what T1
committed). Then T1 committed before T2 did anything with it, and the append is T2's last
statement, so (a) ``ord(T1) < ord(T2)``, and (b) any round whose snapshot sees T2
committed also sees T1 committed (T1 was visible before T2 could proceed). So T1 is
stamped in an earlier round than T2, or in the same one, and there the ``(ord, idx)``
order puts it first. Independent concurrent transactions may be stamped in an order other
than the exact instant of their commits, which no reader can observe: the stamped order is
a serialization order of the transactions, as the single counter's was.

Why not PgQ's rule alone. PgQ hands a consumer the events between two snapshots whose xid
is below the later snapshot's xmin; ordering those by transaction id is not commit order:
a transaction that took its id early (its first write) may write a row after a later-id
transaction wrote and committed it. Stamping after commit needs no xmin at all: a
long-running transaction delays only its own records, never anyone else's, and the lag of
a record is at most the stamping interval and one round after its commit
(:meth:`StampedLog.stats` reports it, measured on the database clock from append to
stamp). Batching changes none of the guarantees above: they hold for any round, whenever
it runs; the interval only decides how many commits a round takes.

Read-your-writes: a read first waits (bounded) for a round that starts after the read
began whenever records await a position (:meth:`StampedLog.settle`; that round runs at
once, not after the interval), so a client that writes through any namenode and then
reads the changelog through any other sees its records, as it did when positions were
handed out in the transaction. A long poll, which waits anyway, settles its first read
with the next round the interval allows instead of one of its own, and its later reads
not at all: what commits while it waits comes with the rounds that follow.

``metafs_changelog_ord`` must not cache values per session (CACHE 1): with a cache,
tickets would not follow the order in which transactions take them.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Sequence

from sqlalchemy import bindparam, insert, text, update
from sqlalchemy.engine import Connection

from ..proto import metafs_pb2 as pb
from . import schema
from .sql import Prepared

if TYPE_CHECKING:
    from .engine import MetaEngine

log = logging.getLogger("metafs.namenode.changelog")

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


# One statement, so one snapshot without a transaction around it: the head, whether
# records await a position (StampedLog's changelog_pending), and up to :lim records after
# :after, cut in SQL before the record that would take their encoded size (each with its
# framing and seq field, 16 bytes) past :max_bytes; the first always comes. No record: one
# row with the head and a NULL seq.
_Q_READ = Prepared(text("""
SELECT h.value, EXISTS (SELECT 1 FROM changelog_pending) AS pending, r.seq, r.body
FROM counters AS h LEFT JOIN (
    SELECT seq, body, row_number() OVER (ORDER BY seq) AS n,
           sum(length(body) + 16) OVER (ORDER BY seq) AS size
    FROM (SELECT seq, body FROM changelog WHERE seq > :after ORDER BY seq LIMIT :lim) AS t
) AS r ON (:max_bytes = 0 OR r.n = 1 OR r.size <= :max_bytes)
WHERE h.name = 'changelog'
ORDER BY r.seq
"""))


def read(conn: Connection, after: int, limit: int,
         max_bytes: int = 0) -> tuple[list[pb.ChangeRecord], int, bool]:
    """Up to ``limit`` records after position ``after``, in order, the head, and whether
    records await a position, in one statement. With ``max_bytes``, the records stop
    before the one that would take their encoded size past it (but the first is always
    returned): a reader asking for many large records gets fewer of them, never a reply
    too large to send."""
    rows = _Q_READ.all(conn, after=after, lim=limit, max_bytes=max_bytes)
    out = []
    for _, _, seq, body in rows:
        if seq is not None:
            rec = pb.ChangeRecord.FromString(bytes(body))
            rec.seq = seq
            out.append(rec)
    return out, int(rows[0][0]), bool(rows[0][1])


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


_Q_REQUEST = Prepared(insert(schema.requests))

# A change record the database completes (the schema's functions, v12): its op, and its
# serialized fields cut where the fields the database writes go (``ino``, 3, and the
# ones named to record_parts); the database puts them between the parts, so the body is
# byte for byte what serializing the whole record gives.
RecordParts = tuple[int, list[bytes]]


def record_parts(rec: pb.ChangeRecord, *fields: int) -> RecordParts:
    """``rec`` (its ``ino`` and the fields numbered ``fields``, ascending, unset) cut for
    the database to complete (see :data:`RecordParts`)."""
    cuts = [3, *fields]
    bounds = zip([0] + [c + 1 for c in cuts], cuts + [1 << 29])
    parts = []
    for lo, hi in bounds:
        part = pb.ChangeRecord()
        part.CopyFrom(rec)
        for fd, _ in rec.ListFields():
            if not lo <= fd.number < hi:
                part.ClearField(fd.name)
        parts.append(part.SerializeToString())
    return int(rec.op), parts


class DirectLog:
    """Positions handed out inside the writing transaction (engines with one writer)."""

    def __init__(self) -> None:
        self.notifier = Notifier()
        # the ``unless`` conditions' statements (a few fixed strings; asked on every
        # create: built and compiled once, not per transaction)
        self._unless: dict[str, Prepared] = {}

    def append(self, conn: Connection, records: Sequence[pb.ChangeRecord],
               request: dict[str, Any] | None = None, unless: str | None = None
               ) -> int | None:
        """Append ``records`` (none: only ``request``) as the transaction's last writes,
        with ``request``, the row that records the call's result (:mod:`.requests`), if
        any. Returns a token for :meth:`committed` (here: the last position; 0 for no
        records); or None, having written nothing, when the SQL condition ``unless`` (an
        EXISTS over a table) holds: the caller then has checks to run before appending."""
        if unless is not None:
            q = self._unless.get(unless)
            if q is None:
                q = self._unless[unless] = Prepared(text(f"SELECT {unless}"))
            if q.scalar(conn):
                return None
        if request is not None:
            _Q_REQUEST.run(conn, **request)
        return append(conn, records) if records else 0

    def committed(self, token: int) -> None:
        """The transaction that appended (``token``) has committed."""
        self.notifier.notify(token)

    def settle(self, timeout: float = 0) -> bool:
        return True

    def awaiting(self) -> bool:
        return False

    def round(self, timeout: float = 0, *, urgent: bool = True) -> bool:
        return True

    def flush(self) -> int:
        return 0

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def stats(self) -> dict[str, float]:
        return {}


# The cluster-wide lock a stamping round holds (pg_advisory_xact_lock key).
STAMP_LOCK = 74202

_NOW_NS = "(extract(epoch FROM clock_timestamp()) * 1000000000)::bigint"

def _append_sql(records: bool, request: bool, unless: str | None) -> str:
    """One statement: unless ``unless`` holds, insert the request row (parameters
    ``r_<column>``) and the records, under one ticket per transaction (``idx`` orders
    them; they are unnested from arrays); returns whether it wrote."""
    parts = [f"g AS (SELECT NOT ({unless}) AS go)" if unless else "g AS (SELECT true AS go)"]
    if request:
        parts.append("""r AS (
    INSERT INTO requests (id, idx, owner, result, created_ns)
    SELECT CAST(:r_id AS varchar), CAST(:r_idx AS integer), CAST(:r_owner AS text),
           CAST(:r_result AS bytea), CAST(:r_created_ns AS bigint) FROM g WHERE g.go)""")
    if records:
        parts.append(f"""c AS (
    INSERT INTO changelog_pending (ord, idx, op, ino, ts_ns, body, added_ns)
    SELECT o.ord, t.idx - 1, t.op, t.ino, t.ts_ns, t.body, {_NOW_NS}
    FROM g, (SELECT nextval('metafs_changelog_ord') AS ord) AS o,
         unnest(CAST(:ops AS smallint[]), CAST(:inos AS bigint[]), CAST(:ts AS bigint[]),
                CAST(:bodies AS bytea[])) WITH ORDINALITY AS t(op, ino, ts_ns, body, idx)
    WHERE g.go)""")
    return "WITH " + ",\n".join(parts) + "\nSELECT go FROM g"


_SQL_ANY_PENDING = text("SELECT EXISTS (SELECT 1 FROM changelog_pending)")

# A round: every pending row this snapshot sees, numbered after the head in ticket order.
# Returns the rows moved, the head after the round, and the oldest and median lag (ns).
_SQL_STAMP = text(f"""
WITH moved AS (
    DELETE FROM changelog_pending
    RETURNING ord, idx, op, ino, ts_ns, body, added_ns
), n AS (
    SELECT count(*) AS n FROM moved
), bump AS (
    UPDATE counters SET value = value + (SELECT n FROM n)
    WHERE name = 'changelog' AND (SELECT n FROM n) > 0
    RETURNING value
), stamped AS (
    INSERT INTO changelog (seq, op, ino, ts_ns, body)
    SELECT (SELECT value FROM bump) - (SELECT n FROM n)
           + row_number() OVER (ORDER BY ord, idx), op, ino, ts_ns, body
    FROM moved
)
SELECT (SELECT n FROM n) AS n,
       COALESCE((SELECT value FROM bump),
                (SELECT value FROM counters WHERE name = 'changelog')) AS head,
       {_NOW_NS} - (SELECT min(added_ns) FROM moved) AS lag_max,
       {_NOW_NS} - (SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY added_ns)
                    FROM moved) AS lag_p50
""")


# (run on the driver's cursor: a round runs 50 times a second on a busy namenode, and
# SQLAlchemy's own execution of the two statements cost more CPU than the round's SQL)
_Q_STAMP_LOCK = Prepared(text(f"SELECT pg_advisory_xact_lock({STAMP_LOCK})"))
_Q_STAMP = Prepared(_SQL_STAMP)


def stamp(conn: Connection) -> tuple[int, int, int, int]:
    """One stamping round in the transaction of ``conn`` (READ COMMITTED): waits for the
    cluster-wide stamp lock, then stamps what is committed. Returns (records stamped,
    head, oldest lag ns, median lag ns)."""
    _Q_STAMP_LOCK.first(conn)
    n, head, lag_max, lag_p50 = _Q_STAMP.first(conn)
    return int(n), int(head), int(lag_max or 0), int(lag_p50 or 0)


class StampedLog:
    """Records appended under a ticket and stamped with positions after commit by an
    assigner thread (PostgreSQL); see the module docstring."""

    def __init__(self, engine: "MetaEngine", *, idle_poll: float = 0.5) -> None:
        self.engine = engine
        self.notifier = Notifier()
        self.idle_poll = idle_poll
        self.interval = engine.settings.changelog_stamp_interval
        self._cond = threading.Condition()
        # Requests for a round (a local commit, a reader settling) are counted; a round
        # that starts once ``_requested`` is n serves the first n requests. A reader's
        # request is urgent: the round for it runs at once, not after ``interval``.
        self._requested = 0
        self._urgent = 0
        self._stamped = 0
        self._closed = False
        self._thread: threading.Thread | None = None
        self._appends: dict[tuple[bool, bool, str | None], Prepared] = {}
        self._stats = {"rounds": 0, "stamped": 0, "lag_max_s": 0.0, "lag_p50_s": 0.0,
                       "round_s": 0.0}

    def append(self, conn: Connection, records: Sequence[pb.ChangeRecord],
               request: dict[str, Any] | None = None, unless: str | None = None
               ) -> int | None:
        """Append ``records`` as the transaction's last statement, with the ``request`` row
        and the ``unless`` condition in the same statement (one round trip); see
        :meth:`DirectLog.append`. Returns 1 when records were appended."""
        key = (bool(records), request is not None, unless)
        q = self._appends.get(key)
        if q is None:
            q = self._appends[key] = Prepared(text(_append_sql(*key)))
        params: dict[str, Any] = {}
        if records:
            params.update(
                ops=[int(r.op) for r in records], inos=[int(r.ino) for r in records],
                ts=[int(r.ts_ns) for r in records],
                bodies=[r.SerializeToString() for r in records])
        if request is not None:
            params.update({f"r_{k}": v for k, v in request.items()})
        if not q.scalar(conn, **params):
            return None
        return 1 if records else 0

    def committed(self, token: int) -> None:
        with self._cond:
            # Only an assigner waiting out its idle poll has a reason to look again: one
            # that already has commits to stamp runs its round when the interval allows
            # whatever more come, and one running a round looks again after it. (Waking
            # it on every commit cost a thread switch per call for nothing.)
            idle = self._stamped >= self._requested
            self._requested += 1
            if idle:
                self._cond.notify_all()
        self.start()

    def settle(self, timeout: float = 5.0) -> bool:
        """Wait (up to ``timeout``) until every record committed before this call, through
        any namenode, has its position; True if so. Cheap when nothing awaits one."""
        if not self.awaiting() and not self.engine.read_statement(
                lambda conn: conn.execute(_SQL_ANY_PENDING).scalar()):
            return True
        return self.round(timeout)

    def awaiting(self) -> bool:
        """Whether commits of this process may still await their positions."""
        with self._cond:
            return self._stamped < self._requested

    def round(self, timeout: float = 5.0, *, urgent: bool = True) -> bool:
        """Wait (up to ``timeout``) for a round that starts after this call: it stamps
        every record committed before the call, through any namenode. True once it has.
        ``urgent``: the round runs at once; otherwise it is the next round the interval
        allows (for a reader that waits anyway, a long poll: it adds no round)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._requested += 1
            target = self._requested
            if urgent:
                self._urgent = target
        self.start()
        with self._cond:
            self._cond.notify_all()
            while self._stamped < target:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    return False
                self._cond.wait(left)
            return True

    def flush(self) -> int:
        """Run one round now (in this thread); returns the head."""
        with self._cond:
            target = self._requested
        n, head, lag_max, lag_p50 = self.engine.write(stamp)
        self._done(target, n, head, lag_max, lag_p50, 0.0)
        return head

    def start(self) -> None:
        """Start the assigner thread (idempotent)."""
        if self._thread is not None or self._closed:
            return
        with self._cond:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="metafs-changelog",
                                                daemon=True)
                self._thread.start()

    def close(self) -> None:
        """Stop the assigner after a last round, so this process's commits are stamped."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=10)
            try:
                self.flush()
            except Exception as exc:  # the database is gone: another namenode stamps
                log.warning("changelog: last stamping round failed: %s", exc)

    def stats(self) -> dict[str, float]:
        """Rounds and records stamped so far, and the last round's lag (seconds from the
        append, on the database clock, to the stamp) and duration."""
        with self._cond:
            return dict(self._stats)

    def _done(self, target: int, n: int, head: int, lag_max: int, lag_p50: int,
              took: float) -> None:
        with self._cond:
            self._stamped = max(self._stamped, target)
            self._stats["rounds"] += 1
            if n:
                self._stats["stamped"] += n
                self._stats["lag_max_s"] = lag_max / 1e9
                self._stats["lag_p50_s"] = lag_p50 / 1e9
                self._stats["round_s"] = took
            self._cond.notify_all()
        if head:
            self.notifier.notify(head)

    def _run(self) -> None:
        backoff = 0.05
        last = float("-inf")  # when the last round started (monotonic)
        while True:
            with self._cond:
                # Wait for a reason to run a round: a reader settling, at once; commits
                # of this process, once ``interval`` has passed since the last round
                # began; none, once ``idle_poll`` has passed (what other namenodes left).
                idle_until = time.monotonic() + self.idle_poll
                while not self._closed and self._urgent <= self._stamped:
                    now = time.monotonic()
                    if self._stamped < self._requested:
                        left = last + self.interval - now
                    else:
                        left = idle_until - now
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if self._closed:
                    return
                target = self._requested
            t0 = last = time.monotonic()
            try:
                n, head, lag_max, lag_p50 = self.engine.write(stamp)
            except Exception as exc:  # keep stamping once the database is back
                log.warning("changelog: stamping round failed (%s); retrying", exc)
                with self._cond:
                    self._cond.wait(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            self._done(target, n, head, lag_max, lag_p50, time.monotonic() - t0)
