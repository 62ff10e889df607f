"""What one file operation costs on the team path: a mount of a remote namenode on
PostgreSQL. Counts, not times: the namenode calls the mount makes per operation, and per
call the transactions and SQL statements the namenode runs (each statement is a database
round trip). A change that adds a call, a transaction or a statement to these paths fails
here; one that removes some should lower the pinned numbers."""

from __future__ import annotations

import collections
import os
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from metafs.assembly import build_namenode
from metafs.client import Client
from metafs.config import load
from metafs.metrics import instrument
from metafs.namenode.server import GrpcServer

from fuse_fixtures import mount_factory, needs_fuse  # noqa: F401 (fixture)

pytestmark = needs_fuse
psycopg = pytest.importorskip("psycopg")

N = 8  # files per phase: every count below is per operation, so N only averages

# operation -> {namenode call: calls per operation}
CALLS = {
    "create": {"Lookup": 1, "Create": 1},     # the kernel's lookup of the new name
    "write_4k": {"Write": 1},                 # the O_TRUNC open's truncation goes with it
    "write_4k_py": {"Write": 1},              # Python's open() asks fstat before it writes
    "read_4k": {"GetAttr": 1},                # the data is in the open's page cache
    # after the kernel dropped its caches: the open's GetAttr brings the small file's data
    # (the kernel's new lookup of the directory costs none: the mount's copy of its
    # attributes took the time of each create in it)
    "read_4k_cold": {"GetAttr": 1},
    "rename": {"Lookup": 1, "Rename": 1},     # the kernel's lookup of the new name
    "unlink": {"Unlink": 1},
    "rmdir": {"Rmdir": 1},
}
# namenode call -> (transactions, most SQL statements) per call on PostgreSQL; a writing
# call's statements include the one that records its result under its request id. A
# transaction costs two round trips more (BEGIN, COMMIT); a call of no transaction and
# one statement (a create, a mkdir, a rename within a directory, an unlink, an rmdir: a
# function of the schema, in autocommit) is one round trip.
SQL = {"Lookup": (0, 1), "GetAttr": (0, 1), "Create": (0, 1), "Mkdir": (0, 1),
       "Write": (1, 2), "Rename": (0, 1), "Unlink": (0, 1), "Rmdir": (0, 1),
       # a following mount's read of the changelog: the head, the records and whether
       # records await a position come from one statement (a stamping round it may wait
       # for runs on the namenode's assigner thread)
       "ReadChangelog": (0, 1)}


class Counts:
    """Namenode calls, and the transactions and statements each call ran."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.calls: collections.Counter[str] = collections.Counter()
        self.stmts: collections.Counter[str] = collections.Counter()
        self.txs: collections.Counter[str] = collections.Counter()
        # per call made: (transactions, statements) of that one call
        self.each: collections.defaultdict[str, list[tuple[int, int]]] = \
            collections.defaultdict(list)
        # per GetAttr of an open that asked for a small file's data: (caller's uid, whether
        # the reply carried the data, whether it said the caller's copy is current)
        self.inline: list[tuple[int, bool, bool]] = []

    def snapshot(self) -> tuple[collections.Counter[str], ...]:
        return self.calls.copy(), self.stmts.copy(), self.txs.copy()

    def wrap(self, handlers: Any) -> Any:
        counts = self

        class Counted:
            def __getattr__(self, name: str) -> Any:
                fn = getattr(handlers, name)
                if not name[:1].isupper() or not callable(fn):
                    return fn

                def call(req: Any, ctx: Any = None) -> Any:
                    counts.calls[name] += 1
                    counts.local.op = name
                    counts.local.one = [0, 0]
                    try:
                        reply = fn(req, ctx)
                        if name == "GetAttr" and req.read_inline:
                            counts.inline.append((req.caller.uid,
                                                  reply.HasField("inline_data"),
                                                  reply.inline_current))
                        return reply
                    finally:
                        counts.local.op = None
                        counts.each[name].append((counts.local.one[0], counts.local.one[1]))
                return call
        return Counted()

    def cursor_class(self) -> type:
        counts = self

        class CountingCursor(psycopg.Cursor):  # type: ignore[misc,name-defined]
            def execute(self, *a: Any, **kw: Any) -> Any:
                op = getattr(counts.local, "op", None)
                if op:
                    counts.stmts[op] += 1
                    counts.local.one[1] += 1
                return super().execute(*a, **kw)
        return CountingCursor


@pytest.fixture
def counted_namenode(tmp_path: Path, pg_url: str) -> Iterator[tuple[str, Counts]]:
    from sqlalchemy import event

    counts = Counts()
    s = load(overrides={"data_dir": str(tmp_path / "nn"), "db_url": pg_url,
                        "listen": "127.0.0.1:0"}, environ={})
    nn = build_namenode(s)
    cursor = counts.cursor_class()
    engines = [nn.engine.engine, nn.engine._statement_engine()]  # type: ignore[attr-defined]
    for eng in engines:
        @event.listens_for(eng, "checkout")
        def _checkout(dbapi_conn: Any, _rec: Any, _proxy: Any) -> None:
            dbapi_conn.cursor_factory = cursor

        @event.listens_for(eng, "begin")
        def _begin(_conn: Any) -> None:
            op = getattr(counts.local, "op", None)
            if op:
                counts.txs[op] += 1
                counts.local.one[0] += 1
    server = GrpcServer(nn, "127.0.0.1:0",
                        wrap_handlers=lambda h: counts.wrap(instrument(h))).start()
    try:
        yield server.address, counts
    finally:
        server.stop(0)
        nn.close()


def test_file_operations_cost_pinned_calls_and_statements(counted_namenode, mount_factory
                                                          ) -> None:
    address, counts = counted_namenode
    # long kernel caches, no changelog follower and no access events: the calls left are
    # the ones each operation itself needs
    m = mount_factory("--namenode", address, "--attr-timeout", "60", "--entry-timeout", "60",
                      "--no-follow-changes", "--no-access-events")
    d = m.path / "d"
    d.mkdir()
    paths = [d / f"f{i}" for i in range(N)]
    renamed = [d / f"r{i}" for i in range(N)]
    dirs = [m.path / f"x{i}" for i in range(N)]
    payload = os.urandom(4096)

    def create() -> None:
        for p in paths:
            os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))

    def write_4k() -> None:
        for p in paths:
            fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
            os.write(fd, payload)
            os.close(fd)

    def write_4k_py() -> None:
        for p in paths:
            p.write_bytes(payload)

    def read_4k() -> None:
        for p in paths:
            fd = os.open(p, os.O_RDONLY)
            assert os.read(fd, 8192) == payload
            os.close(fd)

    def read_4k_cold() -> None:
        with open("/proc/sys/vm/drop_caches", "w") as f:  # pages, names and inodes
            f.write("3\n")
        read_4k()

    def rename() -> None:
        for a, b in zip(paths, renamed):
            os.rename(a, b)

    def unlink() -> None:
        for p in renamed:
            os.unlink(p)

    def rmdir() -> None:
        for x in dirs:
            os.rmdir(x)

    phases: dict[str, Callable[[], None]] = {
        "create": create, "write_4k": write_4k, "write_4k_py": write_4k_py, "read_4k": read_4k,
        "read_4k_cold": read_4k_cold, "rename": rename, "unlink": unlink}
    seen: dict[str, dict[str, float]] = {}

    # GetAttr replies of a phase that carried file data, and that said the copy is current
    data_sent: dict[str, tuple[int, int]] = {}

    def run(name: str, fn: Callable[[], None]) -> None:
        c0, _, _ = counts.snapshot()
        i0 = len(counts.inline)
        fn()
        c1, _, _ = counts.snapshot()
        seen[name] = {k: (c1[k] - c0[k]) / N for k in c1 if c1[k] != c0[k]}
        data_sent[name] = (sum(sent for _, sent, _ in counts.inline[i0:]),
                           sum(current for _, _, current in counts.inline[i0:]))

    for name, fn in phases.items():
        run(name, fn)
    for x in dirs:
        x.mkdir()
    run("rmdir", rmdir)
    with Client(address) as c:
        head = c.changelog_head()
        for _ in range(N):
            assert len(c.changelog(head - N, 1000)[0]) == N

    assert seen == CALLS
    # the first reads of the files bring their data with the open; the mount keeps it, and
    # the opens after the kernel dropped its caches find the files unchanged: no data again
    assert (data_sent["read_4k"], data_sent["read_4k_cold"]) == ((N, 0), (0, N))
    # what a call costs is what most of its calls cost: one now and then retried after a
    # transient conflict (a deadlock, a serialization failure) runs its transaction twice
    for call, (want_txs, most) in SQL.items():
        txs = statistics.median_low(t for t, _ in counts.each[call])
        stmts = statistics.median_low(s for _, s in counts.each[call])
        assert txs == want_txs, f"{call}: {txs} transactions per call, pinned {want_txs}"
        assert stmts <= most, f"{call}: {stmts} SQL statements per call, pinned {most}"


def test_names_in_a_directory_the_mount_made_cost_no_lookup(counted_namenode, mount_factory
                                                           ) -> None:
    """While the mount follows the changelog, the kernel's lookup of a new name in a
    directory the mount made (before a create, a mkdir, a rename's target) is answered
    without the namenode: every name in it is one the mount made or the follower reported.
    A renamed file's attributes (its new ctime) come back with the follower's record of
    the rename, and the names in a renamed directory move with it, so the kernel's lookup
    again before an unlink costs no call either."""
    address, counts = counted_namenode
    m = mount_factory("--namenode", address, "--no-access-events")
    d = m.path / "d"
    d.mkdir()
    (d / "s").mkdir()
    seen: dict[str, dict[str, float]] = {}

    def run(phase: str, fn: Callable[[int], None]) -> None:
        c0, _, _ = counts.snapshot()
        for i in range(N):
            fn(i)
        c1, _, _ = counts.snapshot()
        seen[phase] = {k: (c1[k] - c0[k]) / N for k in c1
                       if c1[k] != c0[k] and k not in ("ReadChangelog", "ChangelogHead")}

    run("create", lambda i: os.close(os.open(d / "s" / f"f{i}",
                                             os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)))
    created = os.stat(d / "s" / "f0").st_ctime_ns
    run("rename", lambda i: os.rename(d / "s" / f"f{i}", d / "s" / f"r{i}"))
    run("mkdir", lambda i: (d / f"x{i}").mkdir())
    os.rename(d / "s", d / "t")
    # Once the follower has applied the renames (it applies another client's later change
    # after them) and the kernel's dentries are stale (1 s), the kernel looks each name up
    # again before unlinking it.
    with Client(address) as c:
        c.write_bytes("/d/other", b"")
    deadline = time.monotonic() + 10
    while not (d / "other").exists():
        assert time.monotonic() < deadline, "the follower did not report another client's file"
        time.sleep(0.01)
    time.sleep(1.05)
    os.stat(d / "t")  # (the directory's own lookup is not what is counted)
    assert os.stat(d / "t" / "r0").st_ctime_ns > created  # (the rename's)
    run("unlink", lambda i: os.unlink(d / "t" / f"r{i}"))
    assert seen == {"create": {"Create": 1}, "rename": {"Rename": 1}, "mkdir": {"Mkdir": 1},
                    "unlink": {"Unlink": 1}}
    assert sorted(os.listdir(d)) == sorted(["other", "t"] + [f"x{i}" for i in range(N)])


def test_an_open_without_read_permission_gets_no_data(counted_namenode, mount_factory) -> None:
    """The data a read-only open's GetAttr may bring is given only to a caller the
    namenode lets read the file: another user who may stat a private file gets EACCES on
    open (here from the namenode's rule alone: no kernel mode-bit checks), and neither the
    file's bytes nor word that the copy the mount holds (its owner read it) is current
    reached the mount for that user."""
    address, counts = counted_namenode
    m = mount_factory("--namenode", address, "--allow-other", "--no-access-events",
                      public=True, env={**os.environ, "METAFS_FUSE_DEFAULT_PERMISSIONS": "0"})
    os.chmod(m.path, 0o755)
    private, public = m.path / "private", m.path / "public"
    private.write_bytes(b"secret")
    os.chmod(private, 0o600)
    public.write_bytes(b"hello")
    os.chmod(public, 0o644)
    assert private.read_bytes() == b"secret"  # (its owner reads it: the mount keeps it)
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    r = subprocess.run([*nobody, "cat", str(private)], capture_output=True, text=True)
    assert r.returncode != 0 and "Permission denied" in r.stderr
    assert os.stat(private).st_size == 6  # (the user may stat it)
    r = subprocess.run([*nobody, "cat", str(public)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == "hello"
    by_nobody = [(sent, current) for uid, sent, current in counts.inline if uid == 65534]
    # asked for both files' data; got only the readable one's
    assert by_nobody == [(False, False), (True, False)]
