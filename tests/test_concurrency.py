"""Concurrency: the tree invariant under crossing renames, the changelog's order, SQLite
without "database is locked", and changelog streams that do not starve ordinary calls.

The PostgreSQL tests run two real namenode processes (``metafs serve``) on one database;
clients spread their calls over both.
"""

from __future__ import annotations

import errno
import os
import random
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from sqlalchemy import create_engine, func, select

from metafs.assembly import build_namenode, serve_grpc
from metafs.client import Client
from metafs.client.transport import LocalTransport
from metafs.config import Settings
from metafs.errors import FsError
from metafs.namenode import schema
from metafs.proto import metafs_pb2 as pb
from metafs.testing.changelog import OrderedReader
from metafs.testing.threads import run_threads

ROOT = 1


# ---------------------------------------------------------------------- helpers
@contextmanager
def namenode_processes(db_url: str, tmp: Path, n: int = 2,
                       env: dict[str, str] | None = None) -> Iterator[list[str]]:
    """``n`` `metafs serve` processes on one database; yields their addresses."""
    procs, addrs = [], []
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("METAFS_")}
    base_env.update({"METAFS_DATA_DIR": str(tmp / "nn-data"), **(env or {})})
    try:
        for i in range(n):
            ready = tmp / f"ready-{i}-{time.monotonic_ns()}"
            log = open(tmp / f"namenode-{i}.log", "ab")
            p = subprocess.Popen(
                [sys.executable, "-m", "metafs.cli", "serve", "--db", db_url,
                 "--listen", "127.0.0.1:0", "--ready-file", str(ready)],
                stdout=log, stderr=subprocess.STDOUT, env=base_env)
            procs.append(p)
            deadline = time.monotonic() + 60
            while not (ready.exists() and ready.read_text()):
                assert p.poll() is None, (tmp / f"namenode-{i}.log").read_text()
                assert time.monotonic() < deadline, "namenode did not start"
                time.sleep(0.05)
            addrs.append(ready.read_text())
        yield addrs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def check_tree(fs: Client, db_url: str, dirs: set[int], files: dict[str, int]) -> None:
    """Walk the whole tree by inode: every directory reachable exactly once, no cycle,
    every file exactly where one entry names it, nlink right, no entry off the tree."""
    seen_dirs: set[int] = {ROOT}
    seen_files: dict[str, int] = {}
    entries = 0
    todo = [ROOT]
    while todo:
        d = todo.pop()
        cursor, subdirs = "", 0
        while True:
            r = fs._call("ReadDir", pb.ReadDirRequest(caller=fs.caller, ino=d, cursor=cursor,
                                                      attrs=True))
            for e in r.entries:
                entries += 1
                if e.mode & 0o170000 == 0o040000:
                    assert e.ino not in seen_dirs, f"directory {e.ino} reached twice (cycle?)"
                    seen_dirs.add(e.ino)
                    subdirs += 1
                    todo.append(e.ino)
                else:
                    assert e.name not in seen_files, f"file {e.name} named twice"
                    seen_files[e.name] = e.ino
            if r.eof or not r.entries:
                break
            cursor = r.next_cursor
        nlink = fs._call("GetAttr", pb.InodeRequest(caller=fs.caller, ino=d)).nlink
        assert nlink == 2 + subdirs, f"directory {d}: nlink {nlink}, {subdirs} subdirectories"
    assert dirs <= seen_dirs, f"directories lost: {dirs - seen_dirs}"
    assert seen_files == files, "files lost, duplicated or moved"
    # every entry row in the database is on the tree (a detached cycle would not be)
    url = db_url.replace("postgresql://", "postgresql+psycopg://", 1) \
        if db_url.startswith("postgresql://") else db_url
    eng = create_engine(url)
    try:
        with eng.connect() as conn:
            rows = conn.execute(select(func.count()).select_from(schema.dentries)).scalar_one()
            orphan_dirs = conn.execute(
                select(func.count()).select_from(schema.inodes)
                .where(schema.inodes.c.mode.op("&")(0o170000) == 0o040000)).scalar_one()
    finally:
        eng.dispose()
    assert rows == entries, f"{rows} entries in the database, {entries} on the tree"
    assert orphan_dirs == len(seen_dirs), "directories exist off the tree"


def crossing_renames(make_client: Callable[[int], Client], db_url: str, threads: int,
                     rounds: int) -> dict[str, int]:
    setup = make_client(0)
    names = [f"D{i}" for i in range(8)]
    # a chain and a few siblings: renames cross in every direction
    setup.makedirs("/D0/D1/D2")
    for n in names[3:]:
        setup.mkdir("/" + n)
    dirs = {setup.stat(p).st_ino for p in ("/D0", "/D0/D1", "/D0/D1/D2")} | {
        setup.stat("/" + n).st_ino for n in names[3:]}
    ino = {n: setup.stat(p).st_ino for n, p in zip(names, ["/D0", "/D0/D1", "/D0/D1/D2"] + [
        "/" + n for n in names[3:]])}
    created: dict[str, int] = {}
    lock = threading.Lock()
    ok = [0]

    def worker(t: int) -> None:
        fs = make_client(t)
        rnd = random.Random(t)
        for i in range(rounds):
            x, y = rnd.sample(names, 2)
            if rnd.random() < 0.25:
                # a file into some directory (its parent does not move away: no error)
                name = f"f-{t}-{i}"
                parent = rnd.choice([ROOT] + list(ino.values()))
                reply = fs._call("Create", pb.CreateRequest(
                    caller=fs.caller, parent=parent, name=name, mode=0o100644,
                    exclusive=True))
                with lock:
                    created[name] = reply.attr.ino
                continue
            guess = rnd.choice([ROOT] + [ino[n] for n in names if n != x])
            to = ROOT if rnd.random() < 0.15 else ino[y]
            try:
                fs._call("Rename", pb.RenameRequest(caller=fs.caller, src_parent=guess,
                                                    src_name=x, dst_parent=to, dst_name=x))
                with lock:
                    ok[0] += 1
            except OSError as exc:
                # not there (moved meanwhile), or into its own subtree
                assert exc.errno in (errno.ENOENT, errno.EINVAL), exc

    run_threads(threads, worker)
    assert ok[0] > 0, "no rename succeeded: the test tested nothing"
    check_tree(setup, db_url, dirs, created)
    return created


def crossing_pairs(make_client: Callable[[int], Client], db_url: str, rounds: int,
                   files: dict[str, int] | None = None) -> None:
    """The deep crossing: /A into /B/b1/b2 while /B goes into /A/a1/a2, both at once, round
    after round. The two renames lock disjoint inode rows, so only the subtree check under
    the rename lock keeps exactly one of them from succeeding."""
    c1, c2 = make_client(0), make_client(1)
    # different parents: the two renames share no inode row at all
    c1.makedirs("/P/A/a1/a2")
    c1.makedirs("/Q/B/b1/b2")
    pp, q = c1.stat("/P").st_ino, c1.stat("/Q").st_ino
    a, b = c1.stat("/P/A").st_ino, c1.stat("/Q/B").st_ino
    a2, b2 = c1.stat("/P/A/a1/a2").st_ino, c1.stat("/Q/B/b1/b2").st_ino
    barrier = threading.Barrier(2)
    results: list[list[bool]] = [[], []]

    def mover(i: int) -> None:
        fs = (c1, c2)[i]
        name, home, into = (("A", pp, b2), ("B", q, a2))[i]
        for _ in range(rounds):
            barrier.wait()
            try:
                fs._call("Rename", pb.RenameRequest(caller=fs.caller, src_parent=home,
                                                    src_name=name, dst_parent=into,
                                                    dst_name=name))
                results[i].append(True)
            except OSError as exc:
                assert exc.errno == errno.EINVAL, exc
                results[i].append(False)
            barrier.wait()
            if i == 0:  # put back whichever moved
                for n, frm, to in (("A", b2, pp), ("B", a2, q)):
                    try:
                        fs._call("Rename", pb.RenameRequest(
                            caller=fs.caller, src_parent=frm, src_name=n, dst_parent=to,
                            dst_name=n))
                    except FileNotFoundError:
                        pass
            barrier.wait()

    run_threads(2, mover)
    for x, y in zip(*results):
        assert x != y, "both crossing renames succeeded (a cycle) or neither did"
    check_tree(c1, db_url, {pp, q, a, b, a2, b2}, files or {})


# ---------------------------------------------------------------------- (a) tree invariant
@pytest.mark.postgres
def test_crossing_renames_two_namenodes_postgres(pg_url: str, tmp_path: Path) -> None:
    with namenode_processes(pg_url, tmp_path) as addrs:
        s = Settings(data_dir=str(tmp_path / "c"), namenode=",".join(addrs))
        clients: list[Client] = []

        def make(t: int) -> Client:
            # each client spreads its calls over both namenodes (round robin)
            c = Client(settings=s.with_(namenode=",".join(addrs[t % 2:] + addrs[:t % 2])),
                       uid=0, gid=0, groups=[])
            clients.append(c)
            return c

        try:
            crossing_renames(make, pg_url, threads=8, rounds=250)
        finally:
            for c in clients:
                c.close()


@pytest.mark.postgres
def test_deep_crossing_renames_two_namenodes_postgres(pg_url: str, tmp_path: Path) -> None:
    with namenode_processes(pg_url, tmp_path) as addrs:
        s = Settings(data_dir=str(tmp_path / "c"))
        clients: list[Client] = []

        def make(t: int) -> Client:
            c = Client(settings=s.with_(namenode=addrs[t % 2]), uid=0, gid=0, groups=[])
            clients.append(c)
            return c

        try:
            crossing_pairs(make, pg_url, rounds=150)
        finally:
            for c in clients:
                c.close()


@pytest.mark.postgres
def test_rename_rechecks_the_rename_lock_after_locking(pg_url: str, settings: Settings) -> None:
    """A rename decides from a lookup made before its locks whether it moves a directory
    (and needs the rename lock). Here /P/A is a file at that lookup and a directory by the
    time the row locks are held, while a crossing directory rename holds the rename lock
    (paused before its commit, its subtree check done): moving A into B's subtree must wait
    for it and then fail with EINVAL, never make a cycle beside it."""
    from metafs.posix import ROOT as ROOT_CRED

    nn = build_namenode(settings.with_(db_url=pg_url), background=False)
    ns = nn.ns
    c = Client(settings=nn.settings, transport=LocalTransport(nn), uid=0, gid=0, groups=[])
    try:
        def mkdir(parent: int, name: str) -> int:
            return ns.mkdir(ROOT_CRED, parent, name, 0o755).ino

        p, q = mkdir(ROOT, "P"), mkdir(ROOT, "Q")
        ns.create(ROOT_CRED, p, "A", 0o100644)  # a file, for now
        adir = mkdir(p, "Adir")
        a2 = mkdir(mkdir(adir, "a1"), "a2")
        b = mkdir(q, "B")
        b2 = mkdir(mkdir(b, "b1"), "b2")
        dirs = {p, q, adir, a2, b, b2}

        paused, resume = threading.Event(), threading.Event()

        def pause_b_mover(tx: Any) -> None:
            if threading.current_thread().name == "move-B":
                paused.set()
                assert resume.wait(60)

        real_lock = ns.lock_rows
        swapped = threading.Event()

        def lock_after_swap(conn: Any, *inos: int) -> Any:
            # between the first rename's lookup and its locks: the file A gives way to
            # the directory Adir (two other transactions, committed)
            if threading.current_thread().name == "move-A" and not swapped.is_set():
                swapped.set()
                ns.unlink(ROOT_CRED, p, "A")
                ns.rename(ROOT_CRED, p, "Adir", p, "A")
            return real_lock(conn, *inos)

        ns.precommit_hooks.append(pause_b_mover)
        ns.lock_rows = lock_after_swap  # type: ignore[method-assign]
        results: dict[str, Any] = {}

        def move(name: str, sp: int, dp: int) -> None:
            try:
                ns.rename(ROOT_CRED, sp, name, dp, name)
                results[name] = True
            except FsError as exc:
                results[name] = exc.errno

        tb = threading.Thread(target=move, args=("B", q, a2), name="move-B")
        tb.start()
        assert paused.wait(30), "the rename of B did not get to its commit"
        ta = threading.Thread(target=move, args=("A", p, b2), name="move-A")
        ta.start()
        ta.join(2)  # it must wait for the rename lock B's rename holds
        waited = ta.is_alive()
        resume.set()
        tb.join(30)
        ta.join(30)
        assert swapped.is_set()
        assert results == {"B": True, "A": errno.EINVAL}, results
        assert waited, "the rename of a directory to another parent ran beside another one"
        ns.lock_rows = real_lock  # type: ignore[method-assign]
        ns.precommit_hooks.remove(pause_b_mover)
        check_tree(c, pg_url, dirs, {})
    finally:
        resume.set()
        c.close()
        nn.close()


def test_crossing_renames_sqlite(settings: Settings) -> None:
    nn = build_namenode(settings, background=False)
    clients: list[Client] = []

    def make(t: int) -> Client:
        c = Client(settings=settings, transport=LocalTransport(nn), uid=0, gid=0, groups=[])
        clients.append(c)
        return c

    try:
        created = crossing_renames(make, settings.effective_db_url, threads=8, rounds=400)
        crossing_pairs(make, settings.effective_db_url, rounds=100, files=created)
    finally:
        for c in clients:
            c.close()
        nn.close()


def test_sqlite_threads_that_end_give_their_connections_back(settings: Settings) -> None:
    """Each thread keeps one SQLite connection; a thread that ends (a timer's, as the
    access recorder's flushes) must return it, or the pool runs dry after a few dozen."""
    nn = build_namenode(settings, background=False)
    c = Client(settings=settings, transport=LocalTransport(nn), uid=0, gid=0, groups=[])
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            c.mkdir(f"/d{i}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    try:
        for i in range(200):  # more than the pool's size and overflow together
            t = threading.Thread(target=one, args=(i,))
            t.start()
            t.join(timeout=60)
        assert errors == []
        assert len(c.listdir("/")) == 200
    finally:
        c.close()
        nn.close()


# ---------------------------------------------------------------------- (b) changelog order
@pytest.mark.postgres
def test_changelog_order_two_namenodes(pg_url: str, tmp_path: Path) -> None:
    writers, per_writer = 8, 40
    with namenode_processes(pg_url, tmp_path) as addrs:
        s = Settings(data_dir=str(tmp_path / "c"))
        mk = lambda i: Client(settings=s.with_(namenode=addrs[i % 2]),  # noqa: E731
                              uid=0, gid=0, groups=[])
        setup = mk(0)
        for w in range(writers):
            setup.mkdir(f"/w{w}")
        start = setup.changelog_head()
        committed: set[tuple[int, str]] = set()  # (op, name) each writer got success for
        clock = threading.Lock()

        def writer(w: int) -> None:
            fs = mk(w)
            rnd = random.Random(w)
            try:
                for i in range(per_writer):
                    name = f"w{w}-{i}"
                    roll = rnd.random()
                    if roll < 0.6:
                        fs.write_bytes(f"/w{w}/{name}", b"x")  # create (+ write records)
                        with clock:
                            committed.add((pb.OP_CREATE, name))
                    elif roll < 0.8:
                        fs.mkdir(f"/w{(w + i) % writers}/{name}")  # into another's dir
                        with clock:
                            committed.add((pb.OP_MKDIR, name))
                    else:
                        # a failing call: rolled back, must leave no record and no gap
                        with pytest.raises(FileExistsError):
                            fs.mkdir(f"/w{w}")
            finally:
                fs.close()

        followers = [mk(0), mk(1)]
        reader = OrderedReader([lambda after, c=c: c.changelog(after=after, limit=37,
                                                               wait_ms=100)
                                for c in followers], start)
        reader.start()
        try:
            run_threads(writers, writer)
        finally:
            seen = reader.finish()
            for c in followers:
                c.close()
        # what the reader saw is exactly what is committed, in one order, no gaps
        got = {(r.op, r.name) for r in seen if r.op in (pb.OP_CREATE, pb.OP_MKDIR)}
        assert committed <= got, f"records missing: {sorted(committed - got)[:5]}"
        assert got == committed, f"records for calls that failed: {sorted(got - committed)[:5]}"
        assert [r.seq for r in seen] == list(range(start + 1, start + 1 + len(seen)))
        # and nothing the reader saw disappears or changes later
        again: list[pb.ChangeRecord] = []
        after = start
        while True:
            recs, head = setup.changelog(after=after, limit=1000)
            if not recs:
                break
            again.extend(recs)
            after = recs[-1].seq
        assert [r.SerializeToString() for r in again] == [r.SerializeToString() for r in seen]
        assert after == head == setup.changelog_head()
        setup.close()


# ---------------------------------------------------------------------- (c) SQLite locking
def test_sqlite_many_clients_never_locked(settings: Settings) -> None:
    """Several namenodes (separate connection pools, as separate processes would have) on
    one SQLite file and many client threads: no call fails with "database is locked"."""
    nns = [build_namenode(settings, background=False) for _ in range(3)]
    failures: list[str] = []
    try:
        boot = Client(settings=settings, transport=LocalTransport(nns[0]), uid=0, gid=0)
        boot.mkdir("/shared")

        def worker(t: int) -> None:
            fs = Client(settings=settings, transport=LocalTransport(nns[t % 3]), uid=0, gid=0)
            try:
                for i in range(40):
                    p = f"/shared/t{t}-{i}"
                    try:
                        fs.write_bytes(p, b"v" * (i % 7))
                        fs.setxattr(p, "user.i", str(i).encode())
                        fs.rename(p, p + ".done")
                        fs.stat(p + ".done")
                        fs.listdir("/shared")
                        if i % 3 == 0:
                            fs.unlink(p + ".done")
                    except OSError as exc:
                        failures.append(f"{p}: {exc}")
            finally:
                fs.close()

        run_threads(16, worker)
        assert not failures, failures[:5]
        names = boot.listdir("/shared")
        assert len(names) == 16 * (40 - 14)
        boot.close()
    finally:
        for nn in nns:
            nn.close()


# ---------------------------------------------------------------------- (d) subscriptions
def test_subscribers_do_not_starve_calls(settings: Settings) -> None:
    s = settings.with_(max_subscribers=3, grpc_workers=2)
    nn = build_namenode(s, background=False)
    srv = serve_grpc(nn, "127.0.0.1:0")
    cs = s.with_(namenode=srv.address)
    clients = [Client(settings=cs, uid=0, gid=0) for _ in range(5)]
    got: list[list[pb.ChangeRecord]] = [[], [], []]
    streams = [clients[i].subscribe(after=clients[0].changelog_head()) for i in range(3)]
    stop = threading.Event()

    def consume(i: int) -> None:
        try:
            for r in streams[i]:
                got[i].append(r)
                if stop.is_set():
                    return
        except OSError:
            pass

    ts = [threading.Thread(target=consume, args=(i,), daemon=True) for i in range(3)]
    try:
        for t in ts:
            t.start()
        # all three streams are open (each has seen the first record) ...
        clients[3].mkdir("/first")
        deadline = time.monotonic() + 30
        while not all(g for g in got) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert all(g and g[0].name == "first" for g in got)
        # ... ordinary calls are still served, several at once ...
        run_threads(4, lambda i: [clients[3 + i % 2].mkdir(f"/d{i}-{k}") for k in range(10)])
        assert len(clients[4].listdir("/")) == 41
        # ... and one stream more is refused clearly
        with pytest.raises(OSError) as info:
            next(iter(clients[4].subscribe()))
        assert info.value.errno == errno.EAGAIN
        assert "subscribers" in str(info.value)
        # the subscribers saw every record, in order
        head = clients[3].changelog_head()
        deadline = time.monotonic() + 30
        while any(g[-1].seq < head for g in got) and time.monotonic() < deadline:
            time.sleep(0.02)
        for g in got:
            assert [r.seq for r in g] == list(range(g[0].seq, head + 1))
    finally:
        stop.set()
        for c in clients:
            c.close()
        srv.stop(0)
        nn.close()


def test_sqlite_dispose_leaves_a_running_transaction_to_its_thread(tmp_path: Path) -> None:
    """A namenode shutting down while another thread is inside a transaction (a call still
    being served) must not close that thread's SQLite connection under it: closing a
    connection under a running statement crashed the driver. The transaction finishes and
    commits; its connection is closed when it ends."""
    from metafs.namenode.engine import engine_for
    from sqlalchemy import text

    s = Settings(data_dir=str(tmp_path))
    eng = engine_for(s.effective_db_url, s)
    eng.write(lambda c: c.execute(text("CREATE TABLE t (v INTEGER)")))
    inside, go = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def slow(conn: Any) -> None:
        conn.execute(text("INSERT INTO t VALUES (1)"))
        inside.set()
        go.wait(10)
        conn.execute(text("INSERT INTO t VALUES (2)"))  # after dispose() began

    def worker() -> None:
        try:
            eng.write(slow)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    assert inside.wait(10)
    eng.dispose()
    go.set()
    t.join(10)
    assert not t.is_alive() and errors == []
    check = create_engine(s.effective_db_url)
    with check.connect() as c:
        assert c.execute(text("SELECT count(*) FROM t")).scalar() == 2
    check.dispose()
