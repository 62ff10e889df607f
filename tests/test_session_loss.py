"""A mount outlives its session: a namenode killed for longer than the session's lease,
whose expired session (its handles and locks) another namenode reaped meanwhile. The
mount opens a new session, reopens the handles its open files hold, writes what it had
buffered, and the programs go on with no error; an open file whose POSIX lock was lost
with the session answers EIO instead of going on as if it still held the lock, and what
it wrote under that lock and had not committed is dropped, not written over the next
holder's writes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import random
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from metafs.assembly import build_namenode
from metafs.client import Client
from metafs.config import load
from metafs.proto import metafs_pb2 as pb
from metafs.testing.faults import NamenodeProcess

from fuse_fixtures import GrpcNamenode, Mount, needs_fuse, stop_all  # noqa: F401

LEASE = 1.0


# A program holding files open on the mount (a process of its own: the test process forks
# namenodes, and a fork's exec would close, and so flush, files open in it). It runs the
# calls it reads, one a line, and answers each with its result or its errno.
PROGRAM = textwrap.dedent('''
    import fcntl, hashlib, json, os, random, sys

    def blob(seed, n):
        return random.Random(seed).randbytes(n)

    def write(fd, seed, n):
        return os.write(fd, blob(seed, n))

    def lock(fd):
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def digest(path):
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    for line in sys.stdin:
        try:
            print(json.dumps(["ok", eval(line)]), flush=True)
        except OSError as exc:
            print(json.dumps(["err", exc.errno, str(exc)]), flush=True)
''')


class Program:
    def __init__(self, cwd: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", PROGRAM], cwd=cwd, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def __call__(self, line: str) -> Any:
        """The result of ``line`` in the program; OSError when it met one."""
        self.send(line)
        return self.answer()

    def send(self, line: str) -> None:
        """Have the program run ``line`` (its result is read by :meth:`answer`)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def answer(self) -> Any:
        assert self.proc.stdout is not None
        answer = json.loads(self.proc.stdout.readline())
        if answer[0] == "err":
            raise OSError(answer[1], answer[2])
        return answer[1]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _blob(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _digest(*parts: bytes) -> str:
    return hashlib.sha256(b"".join(parts)).hexdigest()


def _rows(data: Path, table: str) -> int:
    db = sqlite3.connect(f"file:{data / 'meta.db'}?mode=ro", uri=True)
    try:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        db.close()


def _reap(data: Path) -> None:
    """What another namenode of the volume does to a session whose lease ran out."""
    nn = build_namenode(load(overrides={"data_dir": str(data), "session_lease": LEASE},
                             environ={}), background=False)
    try:
        nn.ns.reclaim()
    finally:
        nn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def namenode(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GrpcNamenode]:
    """A namenode served over gRPC in the test process, on SQLite or on PostgreSQL."""
    over: dict[str, Any] = {"listen": "127.0.0.1:0"}
    if request.param == "sqlite":
        over["data_dir"] = str(tmp_path / "nn-data")
    else:
        over.update(db_url=request.getfixturevalue("pg_url"),
                    blocks_url=(tmp_path / "blocks").as_uri())
    g = GrpcNamenode(load(overrides=over, environ={})).start()
    try:
        yield g
    finally:
        g.stop()


def test_a_client_goes_on_in_a_new_session(namenode: GrpcNamenode) -> None:
    """The namenode drops the client's session (as its reaper does), the client has not
    noticed: its open files reopen their handles at their next call, a file removed
    meanwhile (kept only by the lost handle, so freed) answers EIO, and opens and locks
    (which the namenode refuses without a live session) are made in a new session."""
    assert namenode.nn is not None
    ns = namenode.nn.ns
    fs = Client(namenode.address)
    try:
        f = fs.open("/f", "wb")
        f.write(b"one")
        f.flush()
        g = fs.open("/g", "wb")
        g.write(b"1")
        fs.remove("/g")                         # kept only by g's handle
        ns.close_session(fs.client_id)          # handles and locks gone, /g freed
        with pytest.raises(OSError) as ei:
            g.close()                           # EBADF, noticed; cannot be reopened
        assert ei.value.errno == errno.EIO
        assert fs.session_epoch == 1
        f.write(b"two")
        f.flush()

        ns.close_session(fs.client_id)
        with fs.open("/h", "wb") as h:          # an open refused (EACCES), then made
            h.write(b"new")
        ns.close_session(fs.client_id)
        ino = fs.ino("/f")
        r = fs.inodes.lock(ino, owner=1, type=pb.LOCK_WRITE, end=10)   # ENOLCK, then made
        assert r.granted
        assert fs.session_epoch == 3
        f.write(b"three")
        f.close()
        assert fs.read_bytes("/f") == b"onetwothree"
        assert fs.read_bytes("/h") == b"new"
    finally:
        fs.close()


@needs_fuse
def test_a_mount_reopens_its_session_and_handles_after_the_lease(tmp_path: Path,
                                                                 stop_all: list[Any]) -> None:
    data = tmp_path / "data"
    nn = NamenodeProcess(tmp_path, data_dir=data, env={
        "METAFS_SESSION_LEASE": str(LEASE), "METAFS_BLOCK_SIZE": str(1 << 20)}).start()
    stop_all.append(nn)
    mnt = Mount(tmp_path / "mnt", ["--namenode", nn.address]).start()
    stop_all.append(mnt)
    run = Program(mnt.path)
    stop_all.append(run)
    big = [(1, 1_700_000), (2, 900_000)]  # a file in blocks (1 MiB chunks)
    small = [(3, 3000), (4, 2000)]        # an inline file
    # a: opened without a namenode handle (the mount's default for this open);
    # b: given one (its mode changes while it is open for writing); c: holds a lock
    a = run("os.open('a', os.O_CREAT | os.O_WRONLY, 0o644)")
    b = run("os.open('b', os.O_CREAT | os.O_WRONLY, 0o644)")
    run(f"os.fchmod({b}, 0o600)")
    c = run("os.open('c', os.O_CREAT | os.O_RDWR, 0o644)")
    assert _rows(data, "handles") >= 1
    run(f"os.write({c}, b'locked')")
    run(f"lock({c})")
    assert _rows(data, "locks") == 1
    run(f"write({a}, *{big[0]})")       # buffered in the mount, not committed
    run(f"write({b}, *{small[0]})")

    nn.kill()
    time.sleep(LEASE * 1.5)
    _reap(data)                         # the session is gone, and its handles and lock
    assert (_rows(data, "sessions"), _rows(data, "handles"), _rows(data, "locks")) \
        == (0, 0, 0)
    nn.start()

    run(f"write({a}, *{big[1]})")
    run(f"write({b}, *{small[1]})")
    run(f"os.fsync({a})")               # no error reaches the program
    run(f"os.fsync({b})")
    want_a = _digest(*(_blob(*x) for x in big))
    want_b = _digest(*(_blob(*x) for x in small))
    assert run("digest('a')") == want_a
    assert run("digest('b')") == want_b
    assert _rows(data, "sessions") == 1

    # the lock went with the session: its holder learns it at its next I/O
    with pytest.raises(OSError) as ei:
        run(f"os.write({c}, b'more')")
    assert ei.value.errno == errno.EIO
    with pytest.raises(OSError):        # (and at close)
        run(f"os.close({c})")

    run("open('new', 'wb').write(b'after')")        # new opens work
    run(f"os.close({a})")
    run(f"os.close({b})")
    assert run("digest('a')") == want_a
    assert run("digest('b')") == want_b
    assert run("digest('new')") == _digest(b"after")
    assert "opened again" in mnt.log_text()


@needs_fuse
def test_writes_under_a_lost_lock_are_not_committed(tmp_path: Path,
                                                    stop_all: list[Any]) -> None:
    """A lock holder's mount is cut off from the namenode past its lease, with writes it
    made under its locks: buffered in one file, and on their way in the other (its fsync
    waits for the namenode). The namenode reaps the holder's session and another mount
    takes the locks and writes. When the holder's mount is back, its fsyncs and closes
    fail with EIO and what it had written under the locks is dropped: it is not committed
    over the new holder's writes as if the locks had been held all along. A file whose
    lock was released before goes on as any other."""
    from metafs.testing.faults import TcpProxy

    nn = NamenodeProcess(tmp_path, data_dir=tmp_path / "data", env={
        "METAFS_SESSION_LEASE": str(LEASE)}).start()
    stop_all.append(nn)
    route = TcpProxy(nn.address).start()          # the holder's way to the namenode
    stop_all.append(route)
    m1 = Mount(tmp_path / "m1", ["--namenode", route.url]).start()
    stop_all.append(m1)
    m2 = Mount(tmp_path / "m2", ["--namenode", nn.address]).start()
    stop_all.append(m2)
    holder, other = Program(m1.path), Program(m2.path)
    stop_all += [holder, other]

    held = {}
    for name in ("buffered", "sent"):
        fd = held[name] = holder(f"os.open('{name}', os.O_CREAT | os.O_RDWR, 0o644)")
        holder(f"os.write({fd}, b'committed')")
        holder(f"os.fsync({fd})")
        holder(f"lock({fd})")
        holder(f"os.pwrite({fd}, b'HOLDER' * 100, 0)")  # buffered in the mount
    free = holder("os.open('free', os.O_CREAT | os.O_RDWR, 0o644)")
    holder(f"lock({free})")
    holder(f"os.write({free}, b'one')")
    holder(f"fcntl.lockf({free}, fcntl.LOCK_UN)")
    holder(f"os.write({free}, b'two')")               # buffered, under no lock
    route.kill()
    holder.send(f"os.fsync({held['sent']})")          # waits for the namenode
    theirs = {}
    deadline = time.monotonic() + 60
    for name in held:
        fd = theirs[name] = other(f"os.open('{name}', os.O_RDWR)")
        while True:                                   # until the holder's session is reaped
            try:
                other(f"lock({fd})")
                break
            except OSError as exc:
                assert exc.errno in (errno.EAGAIN, errno.EACCES), exc
                assert time.monotonic() < deadline, "the lost session was never reaped"
                time.sleep(0.2)
        other(f"os.pwrite({fd}, b'second', 0)")
        other(f"os.fsync({fd})")
    route.start()

    with pytest.raises(OSError) as ei:
        holder.answer()                               # the fsync on its way
    assert ei.value.errno == errno.EIO
    holder(f"os.fsync({free})")
    holder(f"os.close({free})")
    assert other("digest('free')") == _digest(b"onetwo")
    with pytest.raises(OSError) as ei:
        holder(f"os.fsync({held['buffered']})")
    assert ei.value.errno == errno.EIO
    want = _digest(b"secondted")
    for name, fd in held.items():
        with pytest.raises(OSError) as ei:
            holder(f"os.close({fd})")
        assert ei.value.errno == errno.EIO
        assert other(f"digest('{name}')") == want, name
        assert holder(f"digest('{name}')") == want, name
        other(f"os.close({theirs[name]})")
        assert other(f"digest('{name}')") == want, name
