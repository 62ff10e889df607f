"""The changelog on PostgreSQL: positions stamped after commit, one order, no gap.

Two namenodes (each with its own engine and connection pool) share one database; writers
on both make creates, renames, unlinks and setxattrs in shared directories, many of which
fail and roll back (EEXIST, ENOENT); a consumer follows the changelog meanwhile. Afterwards
what it read is compared with the database and with what each writer was told succeeded.
A second test drives two transactions by hand through the case that breaks
transaction-id ordering.
"""

from __future__ import annotations

import errno
import json
import os
import random
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import func, select, text

from metafs.assembly import build_namenode
from metafs.cdc.source import NamespaceSource
from metafs.config import Settings
from metafs.errors import FsError
from metafs.namenode import changelog, schema
from metafs.namenode.server import Namenode
from metafs.posix import Cred
from metafs.proto import metafs_pb2 as pb
from metafs.testing.changelog import OrderedReader

pytestmark = pytest.mark.postgres

ROOT = 1
DIRS = 3
NAMES = 12  # names per directory: small, so that writers collide


@pytest.fixture
def two_namenodes(pg_url: str, settings: Settings) -> Iterator[list[Namenode]]:
    s = settings.with_(db_url=pg_url)
    nodes = [build_namenode(s, background=False) for _ in range(2)]
    try:
        yield nodes
    finally:
        for n in nodes:
            n.close()


def _apply(model: dict[tuple[int, str], int], r: pb.ChangeRecord) -> None:
    """Replay one record on a model of the shared directories; a record that does not fit
    the state the records before it left means they are out of order."""
    if r.op == pb.OP_CREATE:
        assert (r.parent, r.name) not in model, f"seq {r.seq}: create of an existing name"
        model[(r.parent, r.name)] = r.ino
    elif r.op == pb.OP_RENAME:
        src = (r.old_parent, r.old_name)
        assert model.get(src) == r.ino, f"seq {r.seq}: rename of a name that is not there"
        assert model.get((r.parent, r.name), 0) == r.target_ino, \
            f"seq {r.seq}: rename replaced an inode that is not the target"
        del model[src]
        model[(r.parent, r.name)] = r.ino
    elif r.op == pb.OP_UNLINK:
        assert model.get((r.parent, r.name)) == r.ino, f"seq {r.seq}: unlink of a missing name"
        del model[(r.parent, r.name)]
    elif r.op == pb.OP_FREE:
        assert r.ino not in model.values(), f"seq {r.seq}: an inode freed while linked"
    elif r.op == pb.OP_SETXATTR:
        assert r.ino in model.values(), f"seq {r.seq}: setxattr of an unlinked inode"


def test_two_namenodes_sixteen_writers_each(two_namenodes: list[Namenode]) -> None:
    a, b = (n.ns for n in two_namenodes)
    root = Cred()
    dirs = [a.mkdir(root, ROOT, f"d{i}", 0o777).ino for i in range(DIRS)]
    start = a.changelog_head()
    writers, per_writer = 16, 30
    told: dict[str, list[tuple[int, str]]] = {}  # client id -> successes, in call order
    failures = [0]
    errors: list[BaseException] = []

    def writer(node: int, w: int) -> None:
        ns = (a, b)[node]
        cid = f"n{node}w{w}"
        cred = Cred(client_id=cid)
        rnd = random.Random(cid)
        mine: list[tuple[int, str]] = told.setdefault(cid, [])
        try:
            for _ in range(per_writer):
                d = rnd.choice(dirs)
                name = f"f{rnd.randrange(NAMES)}"
                roll = rnd.random()
                try:
                    if roll < 0.4:
                        ns.create(cred, d, name, 0o644, exclusive=True)
                        mine.append((pb.OP_CREATE, name))
                    elif roll < 0.65:
                        dst, new = rnd.choice(dirs), f"f{rnd.randrange(NAMES)}"
                        if (dst, new) == (d, name):
                            continue  # renaming a name onto itself changes nothing
                        ns.rename(cred, d, name, dst, new)
                        mine.append((pb.OP_RENAME, new))
                    elif roll < 0.85:
                        ns.unlink(cred, d, name)
                        mine.append((pb.OP_UNLINK, name))
                    else:
                        ino = ns.lookup(cred, d, name).ino
                        ns.setxattr(cred, ino, "user.k", cid.encode())
                        mine.append((pb.OP_SETXATTR, "user.k"))
                except FsError as exc:
                    assert exc.errno in (errno.EEXIST, errno.ENOENT), exc
                    failures[0] += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    reader = OrderedReader([lambda after, src=NamespaceSource(ns): src.read(after, 50, wait_ms=100)
                            for ns in (a, b)], start)
    reader.start()
    threads = [threading.Thread(target=writer, args=(node, w))
               for node in (0, 1) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seen = reader.finish()
    if errors:
        raise errors[0]
    assert failures[0] > 0, "no call failed: the rolled-back case was not exercised"

    # nothing skipped, nothing twice, and exactly the database's changelog
    assert [r.seq for r in seen] == list(range(start + 1, start + 1 + len(seen)))
    stored = two_namenodes[0].engine.read(lambda c: c.execute(
        select(schema.changelog.c.seq, schema.changelog.c.body)
        .where(schema.changelog.c.seq > start).order_by(schema.changelog.c.seq)).all())
    assert [(s, bytes(body)) for s, body in stored] == [(r.seq, _body(r)) for r in seen]
    pending = two_namenodes[0].engine.read(lambda c: c.execute(
        select(func.count()).select_from(schema.changelog_pending)).scalar())
    assert pending == 0
    assert seen[-1].seq == a.changelog_head() == b.changelog_head()

    # every success once, in each writer's own order; no record of a failed call
    for cid, ops in told.items():
        got = [(r.op, r.xattr_name if r.op == pb.OP_SETXATTR else r.name)
               for r in seen if r.client_id == cid and r.op != pb.OP_FREE]
        assert got == ops, f"{cid}: records differ from the calls that succeeded"
    assert {r.client_id for r in seen} <= set(told)
    # a transaction's records are contiguous: an inode freed by an unlink or a replacing
    # rename is logged right after it
    for prev, r in zip(seen, seen[1:]):
        if r.op == pb.OP_FREE:
            assert prev.client_id == r.client_id and \
                r.ino == (prev.ino if prev.op == pb.OP_UNLINK else prev.target_ino)

    # replayed in order, the records rebuild the directories as the database holds them
    model: dict[tuple[int, str], int] = {}
    for r in seen:
        _apply(model, r)
    for d in dirs:
        listing = a.engine.read(lambda c, d=d: c.execute(
            select(schema.dentries.c.name, schema.dentries.c.ino)
            .where(schema.dentries.c.parent == d)).all())
        assert {(d, n): i for n, i in listing} == {k: v for k, v in model.items() if k[0] == d}


def _body(r: pb.ChangeRecord) -> bytes:
    """The record as stored (positions are not part of the stored body)."""
    c = pb.ChangeRecord()
    c.CopyFrom(r)
    c.seq = 0
    return c.SerializeToString()


# ---------------------------------------------------------------------- the hard case
def _record(name: str) -> pb.ChangeRecord:
    return pb.ChangeRecord(op=pb.OP_CREATE, ino=7, parent=ROOT, name=name, ts_ns=1)


def _read_all(ns: Any, after: int) -> list[pb.ChangeRecord]:
    recs, _ = ns.changelog_read(after, 1000)
    return recs


def test_lower_xid_committing_later_lands_after(two_namenodes: list[Namenode]) -> None:
    """A takes its transaction id first and appends; B takes a later id, appends and
    commits; a reader then sees B (committed) and not A. A commits and lands after B:
    positions follow commit, not transaction ids, and nothing the reader passed appears
    behind it. A rolled-back transaction leaves nothing."""
    nn = two_namenodes[0]
    ns, eng = nn.ns, nn.engine
    log = eng.changelog
    assert isinstance(log, changelog.StampedLog)
    start = ns.changelog_head()
    ca, cb, cc = (eng.engine.connect() for _ in range(3))
    try:
        ta, tb, tc = ca.begin(), cb.begin(), cc.begin()
        xa = int(ca.execute(text("SELECT pg_current_xact_id()::text::bigint")).scalar_one())
        xb = int(cb.execute(text("SELECT pg_current_xact_id()::text::bigint")).scalar_one())
        assert xa < xb
        log.append(ca, [_record("a")])
        log.append(cb, [_record("b1"), _record("b2")])
        log.append(cc, [_record("rolled-back")])
        tb.commit()
        log.committed(1)
        tc.rollback()

        recs = _read_all(ns, start)
        assert [(r.seq, r.name) for r in recs] == [(start + 1, "b1"), (start + 2, "b2")]
        checkpoint = recs[-1].seq

        ta.commit()
        log.committed(1)
        recs = _read_all(ns, checkpoint)
        assert [(r.seq, r.name) for r in recs] == [(start + 3, "a")]
        assert [r.name for r in _read_all(ns, start)] == ["b1", "b2", "a"]
        assert ns.changelog_head() == start + 3
    finally:
        for c in (ca, cb, cc):
            c.close()


def test_dependent_transactions_keep_their_order(two_namenodes: list[Namenode]) -> None:
    """A takes its transaction id first, B then writes a row and commits, and A writes the
    same row after B's commit: both commit before any round, and A's record follows B's
    although A's transaction id is lower (ordering by transaction id would invert them)."""
    nn = two_namenodes[0]
    ns, eng = nn.ns, nn.engine
    log = eng.changelog
    start = ns.changelog_head()
    ca, cb = eng.engine.connect(), eng.engine.connect()
    # no stamping round may run between the two commits: hold the stamp lock meanwhile
    holder = eng.engine.connect()
    try:
        holder.begin()
        holder.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": changelog.STAMP_LOCK})
        ta, tb = ca.begin(), cb.begin()
        xa = int(ca.execute(text("SELECT pg_current_xact_id()::text::bigint")).scalar_one())
        xb = int(cb.execute(text("SELECT pg_current_xact_id()::text::bigint")).scalar_one())
        assert xa < xb
        bump = text("UPDATE inodes SET version = version + 1 WHERE id = 1")
        cb.execute(bump)
        log.append(cb, [_record("first")])
        tb.commit()
        ca.execute(bump)  # sees B's committed row version
        log.append(ca, [_record("second")])
        ta.commit()
        holder.rollback()  # lets the rounds run
        log.committed(1)
        assert [r.name for r in _read_all(ns, start)] == ["first", "second"]
    finally:
        for c in (ca, cb, holder):
            c.close()


def test_records_of_a_namenode_that_stopped_are_stamped_by_another(
        two_namenodes: list[Namenode]) -> None:
    """Records committed but left without a position (their namenode stopped before its
    round) get one from any other namenode's assigner."""
    a, b = two_namenodes
    start = b.ns.changelog_head()
    with a.engine.engine.begin() as conn:  # appended and committed, no round requested
        a.engine.changelog.append(conn, [_record("orphan")])
    assert [r.name for r in _read_all(b.ns, start)] == ["orphan"]


def test_dump_stamps_what_awaits_a_position(two_namenodes: list[Namenode],
                                            tmp_path: Path) -> None:
    from metafs.ops.dump import dump

    nn = two_namenodes[0]
    start = nn.ns.changelog_head()
    with nn.engine.engine.begin() as conn:
        nn.engine.changelog.append(conn, [_record("late")])
    dump(nn.engine, tmp_path / "d.jsonl")
    kinds = [json.loads(ln)["kind"] for ln in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert kinds.count("change") == start + 1


def test_commits_share_rounds_and_a_reader_still_sees_its_writes(
        pg_url: str, settings: Settings) -> None:
    """Commits within the stamping interval wait for one round together (an interval
    longer than the test: only the first commit's round has run), while a read settles
    at once: it sees every record committed before it."""
    nn = build_namenode(settings.with_(db_url=pg_url, changelog_stamp_interval=3600.0),
                        background=False)
    try:
        ns, log = nn.ns, nn.engine.changelog
        root = Cred()
        start = ns.changelog_head()
        rounds = log.stats()["rounds"]
        for i in range(20):
            ns.create(root, ROOT, f"batched{i}", 0o644, exclusive=True)
        assert log.stats()["rounds"] - rounds <= 1
        recs, head = ns.changelog_read(start, 1000)
        assert [r.name for r in recs] == [f"batched{i}" for i in range(20)]
        assert head == recs[-1].seq
        assert log.stats()["rounds"] - rounds <= 2
    finally:
        nn.close()


def test_one_statement_calls_write_the_records_the_namespace_would(
        two_namenodes: list[Namenode]) -> None:
    """A create, a mkdir, an unlink, an rmdir and a rename run as one statement of the
    database (schema v12), which completes their records: stored byte for byte as the
    namespace serializes them, a time before 1970, the links left, a replaced file and a
    moved directory's links included; their errors, and a set-group-ID directory's
    group, are the namespace's."""
    nn = two_namenodes[0]
    ns = nn.ns
    cred = Cred(uid=1000, gid=1000, client_id="c", run_id="r")
    d = ns.mkdir(Cred(), ROOT, "one", 0o777).ino
    ns.open_session(cred, "c", "here")
    start = ns.changelog_head()
    f = ns.create(cred, d, "f", 0o644).attr.ino
    ns.setattr(cred, f, mtime=(pb.TIME_SET, -1_500_000_000_123))
    ns.rename(cred, d, "f", d, "g")
    ns.link(cred, f, d, "h")
    ns.unlink(cred, d, "g")
    handle = ns.open(cred, f, os.O_RDONLY).handle
    ns.unlink(cred, d, "h")  # the last name of an inode held open: not freed
    s = ns.mkdir(cred, d, "s", 0o755).ino
    ns.mkdir(cred, s, "t", 0o755)
    for call, err in ((lambda: ns.unlink(cred, d, "g"), errno.ENOENT),
                      (lambda: ns.rmdir(cred, d, "s"), errno.ENOTEMPTY),
                      (lambda: ns.unlink(cred, d, "s"), errno.EISDIR),
                      (lambda: ns.rename(Cred(uid=7), s, "t", s, "u"), errno.EACCES),
                      (lambda: ns.create(cred, d, "s", 0o644, exclusive=True), errno.EEXIST),
                      (lambda: ns.mkdir(Cred(uid=7), s, "v", 0o755), errno.EACCES)):
        with pytest.raises(FsError) as exc:
            call()
        assert exc.value.errno == err
    ns.rmdir(cred, s, "t")
    ns.setattr(cred, s, mode=0o2777)
    assert ns.mkdir(Cred(uid=7, gid=7), s, "g", 0o755).attr.gid == 1000
    ns.rmdir(cred, s, "g")
    x = ns.create(cred, d, "x", 0o644).attr.ino
    y = ns.create(cred, s, "y", 0o644).attr.ino
    ns.rename(cred, d, "x", s, "y")  # into another directory, over a file
    q = ns.mkdir(cred, d, "q", 0o755).ino
    ns.rename(cred, d, "q", s, "q")  # a directory into another one
    with pytest.raises(FsError) as exc:
        ns.rename(Cred(), ROOT, "one", s, "z")  # into its own subtree
    assert exc.value.errno == errno.EINVAL
    assert (ns.getattr(cred, d).nlink, ns.getattr(cred, s).nlink) == (3, 3)
    recs = _read_all(ns, start)
    stored = nn.engine.read(lambda c: c.execute(
        select(schema.changelog.c.seq, schema.changelog.c.body)
        .where(schema.changelog.c.seq > start).order_by(schema.changelog.c.seq)).all())
    assert [(s, bytes(body)) for s, body in stored] == [(r.seq, _body(r)) for r in recs]
    ops = [(r.op, r.name, r.nlink) for r in recs if r.op != pb.OP_SETATTR]
    assert ops == [(pb.OP_CREATE, "f", 0), (pb.OP_RENAME, "g", 0), (pb.OP_LINK, "h", 0),
                   (pb.OP_UNLINK, "g", 1), (pb.OP_UNLINK, "h", 0), (pb.OP_MKDIR, "s", 0),
                   (pb.OP_MKDIR, "t", 0), (pb.OP_RMDIR, "t", 0), (pb.OP_FREE, "", 0),
                   (pb.OP_MKDIR, "g", 0), (pb.OP_RMDIR, "g", 0), (pb.OP_FREE, "", 0),
                   (pb.OP_CREATE, "x", 0), (pb.OP_CREATE, "y", 0), (pb.OP_RENAME, "y", 0),
                   (pb.OP_FREE, "", 0), (pb.OP_MKDIR, "q", 0), (pb.OP_RENAME, "q", 0)]
    assert (recs[-4].ino, recs[-4].old_parent, recs[-4].parent, recs[-4].target_ino,
            recs[-3].ino) == (x, d, s, y, y)
    assert (recs[-1].ino, recs[-1].parent, recs[-1].attr.nlink) == (q, s, 2)
    moved = next(r for r in recs if r.op == pb.OP_RENAME)
    assert moved.ino == f and moved.attr.mtime_ns == -1_500_000_000_123
    assert moved.attr.ctime_ns == moved.ts_ns and moved.attr.inline
    ns.release(cred, handle)
