"""Cluster-wide file locks in the namenode (metafs/namenode/locks.py): POSIX range
arithmetic (split, merge, replace), conflicts, F_GETLK answers, flock, their independence,
permissions and bad requests, and locks dying with their session; on SQLite and
PostgreSQL, and with two namenodes on one database."""

from __future__ import annotations

import errno
import threading
import time
from typing import Any, Iterator

import pytest

from metafs.assembly import build_namenode, serve_grpc
from metafs.client import Client
from metafs.client.transport import LocalTransport
from metafs.config import Settings
from metafs.errors import FsError
from metafs.namenode.locks import OFFSET_MAX, Range, set_posix
from metafs.namenode.server import Namenode
from metafs.proto import metafs_pb2 as pb

MAX = OFFSET_MAX
P, F = pb.LOCK_POSIX, pb.LOCK_FLOCK
RD, WR, UN = pb.LOCK_READ, pb.LOCK_WRITE, pb.LOCK_UNLOCK


@pytest.fixture
def nn(engine_namenode: Namenode) -> Namenode:
    return engine_namenode


@pytest.fixture
def clients(nn: Namenode) -> Iterator[Any]:
    made: list[Client] = []

    def make() -> Client:
        c = Client(settings=nn.settings, transport=LocalTransport(nn))
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def lk(c: Client, ino: int, owner: int, typ: int, start: int = 0, end: int = MAX,
       kind: int = P, caller: pb.Caller | None = None, **kw: Any) -> pb.LockReply:
    return c.transport.call("Lock", pb.LockRequest(
        caller=caller or c.caller, ino=ino, owner=owner, kind=kind, type=typ, start=start,
        end=end, pid=1000 + owner, **kw))


def held(nn: Namenode, ino: int, kind: str = "posix") -> list[tuple]:
    return [(r["owner"], r["type"][0], r["start"], r["end"])
            for r in nn.ns.locks.list(ino) if r["kind"] == kind]


def conflict(c: Client, ino: int, owner: int, typ: int, start: int = 0, end: int = MAX,
             kind: int = P) -> pb.LockReply:
    r = lk(c, ino, owner, typ, start, end, kind, report_conflict=True)
    assert not r.granted
    return r


def new_file(c: Client, path: str = "/f") -> int:
    c.write_bytes(path, b"data")
    return c.stat(path).st_ino


def test_range_arithmetic_pure() -> None:
    class Row:
        def __init__(self, id: int, start: int, end: int, type: str, pid: int = 1) -> None:
            self.id, self.start, self.end, self.type, self.pid = id, start, end, type, pid

    # unlock in the middle splits
    drop, add = set_posix([Row(1, 0, 99, "write")], 40, 59, None, 7)
    assert drop == [1] and add == [Range(0, 39, "write", 1), Range(60, 99, "write", 1)]
    # same type: overlapping and adjacent locks merge
    drop, add = set_posix([Row(1, 0, 9, "read"), Row(2, 20, 29, "read")], 10, 19, "read", 7)
    assert sorted(drop) == [1, 2] and add == [Range(0, 29, "read", 7)]
    # the other type, adjacent: untouched; overlapping: cut back
    drop, add = set_posix([Row(1, 0, 9, "read"), Row(2, 15, 40, "read")], 10, 19, "write", 7)
    assert drop == [2] and add == [Range(20, 40, "read", 1), Range(10, 19, "write", 7)]


def test_posix_split_merge_replace(clients, nn: Namenode) -> None:
    c = clients()
    ino = new_file(c)
    lk(c, ino, 1, WR, 0, 99)
    lk(c, ino, 1, WR, 100, 199)                       # adjacent, same type: merged
    assert held(nn, ino) == [(1, "w", 0, 199)]
    lk(c, ino, 1, UN, 50, 59)                         # unlock in the middle: split
    assert held(nn, ino) == [(1, "w", 0, 49), (1, "w", 60, 199)]
    lk(c, ino, 1, RD, 40, 69)                         # other type over the gap: replaced
    assert held(nn, ino) == [(1, "w", 0, 39), (1, "r", 40, 69), (1, "w", 70, 199)]
    lk(c, ino, 1, WR, 0, MAX)                         # covers everything: one lock
    assert held(nn, ino) == [(1, "w", 0, MAX)]
    lk(c, ino, 1, RD, 10, 19)                         # downgrade a middle range
    assert held(nn, ino) == [(1, "w", 0, 9), (1, "r", 10, 19), (1, "w", 20, MAX)]
    lk(c, ino, 2, RD, 10, 15, caller=None)            # another owner, read over read: fine
    lk(c, ino, 1, UN, 0, MAX)
    assert held(nn, ino) == [(2, "r", 10, 15)]
    lk(c, ino, 2, UN, 0, MAX)
    assert held(nn, ino) == []


def test_posix_conflicts_and_getlk(clients, nn: Namenode) -> None:
    a, b = clients(), clients()
    ino = new_file(a)
    lk(a, ino, 1, WR, 10, 19)
    lk(a, ino, 1, RD, 30, 39)
    # another session: overlapping a write lock conflicts, a read lock only for writers
    r = conflict(b, ino, 1, RD, 15, 15)
    assert (r.type, r.start, r.end, r.pid, r.same_session) == (WR, 10, 19, 1001, False)
    lk(b, ino, 1, RD, 0, 9)
    lk(b, ino, 1, RD, 35, 50)                 # read + read
    r = conflict(b, ino, 1, WR, 35, 35)
    assert (r.type, r.start, r.end) == (RD, 30, 39)
    lk(b, ino, 1, WR, 40, 50)                 # B upgrades its own 40..50: only A's 30..39 is in the way
    with pytest.raises(FsError) as ei:        # without report_conflict: EAGAIN
        lk(b, ino, 1, WR, 0, MAX)
    assert ei.value.errno == errno.EAGAIN and "10..19" in ei.value.message
    # another owner of the same session conflicts too, and is told so
    r = conflict(a, ino, 2, WR, 11, 12)
    assert r.same_session and r.start == 10
    # F_GETLK: the first conflicting lock (lowest start), or none; nothing changes
    t = clients()
    before = nn.ns.locks.list(ino)
    r = lk(t, ino, 7, WR, 0, MAX, test_only=True)
    assert (r.granted, r.type, r.start, r.end) == (False, RD, 0, 9)
    r = lk(t, ino, 7, WR, 11, MAX, test_only=True)
    assert (r.granted, r.type, r.start, r.end) == (False, WR, 10, 19)
    r = lk(t, ino, 7, RD, 20, 29, test_only=True)
    assert r.granted and r.type == UN
    r = lk(t, ino, 7, RD, 20, MAX, test_only=True)     # read test: write locks only
    assert (r.granted, r.start, r.end) == (False, 40, 50)
    r = lk(b, ino, 1, WR, 0, 9, test_only=True)        # one's own locks are never in the way
    assert r.granted
    assert nn.ns.locks.list(ino) == before
    # to EOF: end = 2^63-1
    lk(a, ino, 3, WR, 1000, MAX)
    r = lk(b, ino, 1, RD, 5000, 5000, test_only=True)
    assert (r.start, r.end, r.pid) == (1000, MAX, 1003)


def test_flock_shared_exclusive_conversion_and_independence(clients, nn: Namenode) -> None:
    a, b = clients(), clients()
    ino = new_file(a)
    lk(a, ino, 1, RD, kind=F)
    lk(b, ino, 1, RD, kind=F)                   # shared + shared
    r = conflict(b, ino, 2, WR, kind=F)          # exclusive vs shared
    assert r.type == RD and (r.start, r.end) == (0, MAX)
    # an upgrade that conflicts removes the old lock first, as Linux does
    conflict(b, ino, 1, WR, kind=F)
    assert [o for o, *_ in held(nn, ino, "flock")] == [1]      # only A's shared lock left
    lk(a, ino, 1, WR, kind=F)                   # A upgrades: nobody else holds it
    lk(a, ino, 1, WR, kind=F)                   # again: no change
    assert held(nn, ino, "flock") == [(1, "w", 0, MAX)]
    lk(a, ino, 1, RD, kind=F)                   # downgrade
    assert held(nn, ino, "flock") == [(1, "r", 0, MAX)]
    # flock and POSIX locks do not see each other
    lk(b, ino, 1, WR, 0, MAX)                   # POSIX write lock over A's flock
    lk(a, ino, 1, WR, kind=F)                   # A's upgrade does not see it
    r = conflict(b, ino, 9, RD, kind=F)          # but B's flock sees A's
    assert r.type == WR
    lk(b, ino, 9, UN, kind=F)                   # unlocking nothing is fine
    assert held(nn, ino, "flock") == [(1, "w", 0, MAX)]
    assert held(nn, ino, "posix") == [(1, "w", 0, MAX)]


def test_bad_requests_and_permissions(clients, nn: Namenode) -> None:
    a, b = clients(), clients()
    ino = new_file(a)
    a.chmod("/f", 0o600)
    bad = [dict(typ=pb.LOCK_TYPE_UNSPECIFIED), dict(typ=WR, start=-1, end=5),
           dict(typ=WR, start=10, end=9), dict(typ=UN, test_only=True),
           dict(typ=WR, kind=7)]
    for kw in bad:
        typ = kw.pop("typ")
        with pytest.raises(FsError) as ei:
            lk(a, ino, 1, typ, **kw)
        assert ei.value.errno == errno.EINVAL, kw
    with pytest.raises(FsError) as ei:          # a lock belongs to a session
        lk(a, ino, 1, WR, caller=pb.Caller(uid=0))
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(FsError) as ei:
        lk(a, 999_999, 1, WR)
    assert ei.value.errno == errno.ENOENT
    # mode bits: a user who may not read or write the file may not lock it
    other = pb.Caller(uid=1000, gid=1000, client_id=b.client_id)
    for typ, kind in ((RD, P), (WR, P), (RD, F)):
        with pytest.raises(FsError) as ei:
            lk(b, ino, 1, typ, kind=kind, caller=other)
        assert ei.value.errno == errno.EACCES
    a.chmod("/f", 0o644)
    lk(b, ino, 1, RD, caller=other)              # may read: a read lock
    lk(b, ino, 2, RD, kind=F, caller=other)       # and flock
    with pytest.raises(FsError) as ei:
        lk(b, ino, 1, WR, caller=other)
    assert ei.value.errno == errno.EACCES
    # with a handle, its open mode decides (as fcntl on a descriptor), and it must be ours
    h = a.transport.call("Open", pb.OpenRequest(caller=a.caller, ino=ino, flags=0)).handle
    with pytest.raises(FsError) as ei:
        lk(a, ino, 3, WR, handle=h)
    assert ei.value.errno == errno.EBADF
    lk(a, ino, 3, RD, handle=h)
    with pytest.raises(FsError) as ei:
        lk(b, ino, 3, RD, handle=h)              # another session's handle
    assert ei.value.errno == errno.EBADF


def test_locks_die_with_their_session_and_inode(clients, nn: Namenode) -> None:
    a, b = clients(), clients()
    f, g = new_file(a, "/f"), new_file(a, "/g")
    lk(a, f, 1, WR, 0, 9)
    lk(a, f, 2, RD, kind=F)
    lk(a, g, 1, WR)
    lk(b, g, 5, RD, kind=F)
    # close_session releases every lock of the session
    nn.ns.close_session(a.client_id)
    assert held(nn, f) == [] and held(nn, f, "flock") == [] and held(nn, g) == []
    with pytest.raises(FsError) as ei:          # no lease, no new locks
        lk(a, f, 1, WR)
    assert ei.value.errno == errno.ENOLCK
    # a session whose lease ran out loses its locks at the next reclaim
    c = clients()
    lk(c, f, 1, WR)
    from metafs.namenode import schema

    nn.engine.write(lambda conn: conn.execute(schema.sessions.update().where(
        schema.sessions.c.id == c.client_id).values(expires_ns=1)))
    nn.ns.reclaim()
    assert held(nn, f) == []
    assert held(nn, g, "flock") == [(5, "r", 0, MAX)]          # B's live session keeps its
    # an unlock of everything the session holds (a mount going away)
    lk(b, f, 1, WR, 0, 0)
    b.transport.call("Lock", pb.LockRequest(caller=b.caller, ino=0, type=UN))
    assert nn.ns.locks.list() == []
    # a freed inode takes its locks with it
    lk(b, g, 1, WR)
    b.unlink("/g")
    assert nn.ns.locks.list() == []


def test_two_namenodes_never_grant_conflicting_locks(engine_settings: Settings) -> None:
    """Writers on two namenodes of one database race for one byte range: at no time do
    two of them hold it (a holder checks it is alone before it unlocks)."""
    nns = [build_namenode(engine_settings, background=False) for _ in range(2)]
    cs = [Client(settings=engine_settings, transport=LocalTransport(nns[i % 2]))
          for i in range(6)]
    try:
        ino = new_file(cs[0])
        inside = [0]
        peak = [0]
        grants = [0]
        mu = threading.Lock()
        errors: list[BaseException] = []
        stop = time.monotonic() + 4.0

        def worker(c: Client, k: int) -> None:
            try:
                while time.monotonic() < stop:
                    r = lk(c, ino, k, WR, 100, 199 if k % 2 else MAX, report_conflict=True)
                    if not r.granted:
                        time.sleep(0.001)
                        continue
                    with mu:
                        inside[0] += 1
                        peak[0] = max(peak[0], inside[0])
                        grants[0] += 1
                    time.sleep(0.0005)
                    with mu:
                        inside[0] -= 1
                    lk(c, ino, k, UN, 0, MAX)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        ts = [threading.Thread(target=worker, args=(c, i + 1)) for i, c in enumerate(cs)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert not errors, errors
        assert peak[0] == 1 and grants[0] > 10
        assert nns[0].ns.locks.list(ino) == []
    finally:
        for c in cs:
            c.close()
        for n in nns:
            n.close()


def test_lock_over_grpc(settings: Settings) -> None:
    nn = build_namenode(settings, background=False)
    server = serve_grpc(nn, "127.0.0.1:0")
    a = Client(settings=settings.with_(namenode=server.address))
    b = Client(settings=settings.with_(namenode=server.address))
    try:
        ino = new_file(a)
        lk(a, ino, 1, WR, 0, 9)
        with pytest.raises(FsError) as ei:
            lk(b, ino, 1, RD, 5, 5)
        assert ei.value.errno == errno.EAGAIN
        r = lk(b, ino, 1, RD, 0, MAX, test_only=True)
        assert (r.type, r.start, r.end, r.pid) == (WR, 0, 9, 1001)
        r = lk(b, ino, 1, RD, 10, 20)
        assert r.granted and r.attr.ino == ino and r.head >= 1
    finally:
        a.close()
        b.close()
        server.stop(0)
        nn.close()


def test_a_grant_carries_a_head_past_every_change_committed_before_it(
        engine_settings: Settings) -> None:
    """The holder of a lock catches up to the changelog position its grant carries: that
    position covers what was committed before the grant, also where positions are given
    after commit (PostgreSQL; here in stamping rounds an hour apart)."""
    s = engine_settings.with_(changelog_stamp_interval=3600.0)
    nn = build_namenode(s, background=False)
    a = Client(settings=s, transport=LocalTransport(nn))
    b = Client(settings=s, transport=LocalTransport(nn))
    try:
        ino = new_file(a)
        a.changelog_head()  # a stamping round now: the next commits wait for the interval
        a.write_bytes("/journal", b"x")
        a.unlink("/journal")
        r = lk(b, ino, 1, WR)
        unlinks = [rec.seq for rec in b.changelog(0, 10_000)[0]
                   if rec.op == pb.OP_UNLINK and rec.name == "journal"]
        assert len(unlinks) == 1 and unlinks[0] <= r.head
    finally:
        a.close()
        b.close()
        nn.close()
