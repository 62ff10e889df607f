"""fcntl and flock locks between two mounts (two machines) of one namenode: byte ranges,
F_GETLK, blocking waits, flock, OFD locks, release when the holder dies or its mount ends,
and SQLite shared by writers on both mounts."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from fuse_fixtures import GrpcNamenode, Mount, grpc_namenode, mount_factory, needs_fuse  # noqa: F401
from metafs.config import load

pytestmark = [pytest.mark.fuse, needs_fuse]

# struct flock on Linux x86_64/aarch64: short type, short whence, off_t start, off_t len,
# pid_t pid (padded to 32 bytes)
FLOCK_FMT = "hhqqi4x"
F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)

# A process that takes the locks named on its command line, says "ready", then follows
# commands on stdin: "unlock" (prints the time it unlocked), "close" (closes the file),
# "exit". Locks: posix:r|w:START:LEN, ofd:r|w:START:LEN, flock:sh|ex.
_HOLDER = textwrap.dedent("""
    import fcntl, os, struct, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR)
    for spec in sys.argv[2:]:
        kind, *a = spec.split(":")
        if kind == "flock":
            fcntl.flock(fd, fcntl.LOCK_EX if a[0] == "ex" else fcntl.LOCK_SH)
        else:
            t = fcntl.F_WRLCK if a[0] == "w" else fcntl.F_RDLCK
            cmd = fcntl.F_SETLK if kind == "posix" else getattr(fcntl, "F_OFD_SETLK", 37)
            fcntl.fcntl(fd, cmd, struct.pack("hhqqi4x", t, 0, int(a[1]), int(a[2]), 0))
    print("ready", flush=True)
    for line in sys.stdin:
        line = line.strip()
        if line == "unlock":
            fcntl.lockf(fd, fcntl.LOCK_UN, 0, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
            print("unlocked", time.time(), flush=True)
        elif line == "close":
            os.close(fd)
            print("closed", flush=True)
        elif line == "exit":
            break
""")

# Blocks in F_SETLKW (posix) or flock LOCK_EX, then prints the time it got the lock.
_WAITER = textwrap.dedent("""
    import fcntl, os, struct, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR)
    print("waiting", flush=True)
    if sys.argv[2] == "flock":
        fcntl.flock(fd, fcntl.LOCK_EX)
    else:
        fcntl.fcntl(fd, fcntl.F_SETLKW,
                    struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, int(sys.argv[3]), int(sys.argv[4]), 0))
    print("locked", time.time(), flush=True)
    sys.stdin.readline()
""")


class Holder:
    def __init__(self, path: Path, *locks: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path), *locks],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line == "ready", f"holder failed to lock: {line!r}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def say(self, cmd: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.fixture
def holders() -> Iterator[Callable[..., Holder]]:
    made: list[Holder] = []

    def make(path: Path, *locks: str) -> Holder:
        h = Holder(path, *locks)
        made.append(h)
        return h

    yield make
    for h in made:
        h.stop()


@pytest.fixture
def two(grpc_namenode: GrpcNamenode, mount_factory) -> tuple[Mount, Mount]:
    a = mount_factory("--namenode", grpc_namenode.address, name="a")
    b = mount_factory("--namenode", grpc_namenode.address, name="b")
    return a, b


def setlk(fd: int, typ: int, start: int, length: int, cmd: int = fcntl.F_SETLK) -> None:
    fcntl.fcntl(fd, cmd, struct.pack(FLOCK_FMT, typ, os.SEEK_SET, start, length, 0))


def getlk(fd: int, typ: int, start: int, length: int,
          cmd: int = fcntl.F_GETLK) -> tuple[int, int, int, int]:
    """(l_type, l_start, l_len, l_pid) of the first lock in the way, F_UNLCK if none."""
    out = fcntl.fcntl(fd, cmd, struct.pack(FLOCK_FMT, typ, os.SEEK_SET, start, length, 0))
    t, _whence, s, n, pid = struct.unpack(FLOCK_FMT, out)
    return t, s, n, pid


def busy(fn: Callable[[], object]) -> bool:
    try:
        fn()
    except OSError as err:
        assert err.errno in (errno.EAGAIN, errno.EACCES), err
        return True
    return False


def make_file(m: Mount, name: str, size: int = 1000) -> Path:
    (m / name).write_bytes(b"\0" * size)
    return m / name


def eventually_free(fn: Callable[[], object], within: float = 5.0) -> None:
    """Locks that go at the last close of an open file go with its release, which the
    kernel sends after close() returns: allow it a moment."""
    deadline = time.monotonic() + within
    while busy(fn):
        assert time.monotonic() < deadline, "still locked"
        time.sleep(0.01)


def locked_elsewhere(path: Path) -> bool:
    """Whether another process on this machine finds [0, EOF) of ``path`` write-locked."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os
        fd = os.open({str(path)!r}, os.O_RDWR)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 0, 0)
            print("free")
        except OSError:
            print("busy")
    """)], capture_output=True, text=True, check=True).stdout.strip()
    return out == "busy"


def test_posix_ranges_between_mounts(two: tuple[Mount, Mount], holders) -> None:
    a, b = two
    make_file(a, "f")
    h = holders(a / "f", "posix:w:100:100")        # bytes 100..199 on A
    fd = os.open(b / "f", os.O_RDWR)
    try:
        assert busy(lambda: setlk(fd, fcntl.F_WRLCK, 150, 10))
        assert busy(lambda: setlk(fd, fcntl.F_RDLCK, 0, 101))   # touches byte 100
        assert busy(lambda: setlk(fd, fcntl.F_WRLCK, 0, 0))     # 0..EOF
        setlk(fd, fcntl.F_WRLCK, 0, 100)                        # 0..99: free
        setlk(fd, fcntl.F_RDLCK, 200, 0)                        # 200..EOF: free
        assert getlk(fd, fcntl.F_WRLCK, 120, 5) == (fcntl.F_WRLCK, 100, 100, h.pid)
        assert getlk(fd, fcntl.F_RDLCK, 0, 0) == (fcntl.F_WRLCK, 100, 100, h.pid)
        # B's own locks do not get in its own way; a range beyond everything is free
        assert getlk(fd, fcntl.F_WRLCK, 0, 50)[0] == fcntl.F_UNLCK
        # A sees B's locks the same way (from a process of its own)
        out = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
            import fcntl, os, struct
            fd = os.open({str(a / 'f')!r}, os.O_RDONLY)
            r = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 500, 1, 0))
            print(*struct.unpack("hhqqi4x", r))
        """)], capture_output=True, text=True, check=True).stdout.split()
        assert [int(x) for x in out] == [fcntl.F_RDLCK, 0, 200, 0, os.getpid()]
        # an unlock of B's middle range splits B's lock; A's lock is still in the way
        setlk(fd, fcntl.F_UNLCK, 20, 10)
        assert busy(lambda: setlk(fd, fcntl.F_WRLCK, 100, 1))
        h.say("unlock")
        setlk(fd, fcntl.F_WRLCK, 100, 100)
    finally:
        os.close(fd)


def test_read_locks_coexist_write_locks_do_not(two: tuple[Mount, Mount], holders) -> None:
    a, b = two
    make_file(a, "f")
    h = holders(a / "f", "posix:r:0:0")
    fd = os.open(b / "f", os.O_RDWR)
    try:
        setlk(fd, fcntl.F_RDLCK, 0, 0)             # read + read: fine
        assert busy(lambda: setlk(fd, fcntl.F_WRLCK, 10, 1))
        assert getlk(fd, fcntl.F_WRLCK, 10, 1) == (fcntl.F_RDLCK, 0, 0, h.pid)
        h.say("unlock")
        setlk(fd, fcntl.F_WRLCK, 10, 1)            # the upgrade of B's own read lock
    finally:
        os.close(fd)
    # B's close released its locks: A can write-lock everything
    h2 = holders(a / "f", "posix:w:0:0")
    h2.say("unlock")


def test_setlkw_waits_until_the_holder_unlocks(two: tuple[Mount, Mount], holders) -> None:
    a, b = two
    make_file(a, "f")
    for kind, spec in (("posix", "posix:w:0:10"), ("flock", "flock:ex")):
        h = holders(a / "f", spec)
        w = subprocess.Popen([sys.executable, "-c", _WAITER, str(b / "f"), kind, "5", "10"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert w.stdout.readline().strip() == "waiting"
            time.sleep(0.7)
            assert w.poll() is None                   # still waiting
            t_unlock = float(h.say("unlock").split()[1])
            line = w.stdout.readline().split()
            assert line[0] == "locked", line
            waited = float(line[1]) - t_unlock
            assert waited >= 0                        # not before A unlocked
            assert waited < 3.0                       # and soon after (backoff <= 200 ms)
        finally:
            w.kill()
            w.wait(timeout=30)
        h.stop()


def test_flock_between_mounts_independent_of_posix(two: tuple[Mount, Mount], holders) -> None:
    a, b = two
    make_file(a, "f")
    h = holders(a / "f", "flock:ex")
    fd = os.open(b / "f", os.O_RDONLY)
    try:
        for op in (fcntl.LOCK_EX | fcntl.LOCK_NB, fcntl.LOCK_SH | fcntl.LOCK_NB):
            with pytest.raises(BlockingIOError) as ei:
                fcntl.flock(fd, op)
            assert ei.value.errno == errno.EWOULDBLOCK
        setlk(fd, fcntl.F_RDLCK, 0, 0)            # POSIX locks do not see flock locks
        h.say("unlock")
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        h2 = holders(a / "f", "flock:sh")          # shared + shared
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        h2.say("unlock")
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)   # upgrade
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def test_ofd_locks_between_mounts_go_with_the_open_file(two: tuple[Mount, Mount],
                                                        holders) -> None:
    a, b = two
    make_file(a, "f")
    h = holders(a / "f", "ofd:w:0:100")
    fd = os.open(b / "f", os.O_RDWR)
    try:
        assert busy(lambda: setlk(fd, fcntl.F_WRLCK, 50, 1, F_OFD_SETLK))
        assert busy(lambda: setlk(fd, fcntl.F_RDLCK, 50, 1))      # classic vs OFD
        t, s, n, _pid = getlk(fd, fcntl.F_RDLCK, 0, 0, F_OFD_GETLK)
        assert (t, s, n) == (fcntl.F_WRLCK, 0, 100)
        assert h.say("close") == "closed"      # the open file's last close releases it
        eventually_free(lambda: setlk(fd, fcntl.F_WRLCK, 0, 0, F_OFD_SETLK))
    finally:
        os.close(fd)


def test_killed_holder_frees_its_locks_and_a_killed_waiter_stops(
        two: tuple[Mount, Mount], holders) -> None:
    a, b = two
    make_file(a, "f")
    h = holders(a / "f", "posix:w:0:0", "flock:ex")
    fd = os.open(b / "f", os.O_RDWR)
    try:
        # a process waiting on B is killed while it waits: it ends (the wait is interrupted)
        w = subprocess.Popen([sys.executable, "-c", _WAITER, str(b / "f"), "posix", "0", "0"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert w.stdout.readline().strip() == "waiting"
        time.sleep(0.3)
        t0 = time.monotonic()
        w.kill()
        w.wait(timeout=10)
        assert time.monotonic() - t0 < 5
        assert busy(lambda: setlk(fd, fcntl.F_WRLCK, 0, 0))
        h.proc.kill()                  # the kernel closes its files: its locks go
        h.proc.wait(timeout=30)
        setlk(fd, fcntl.F_WRLCK, 0, 0)  # at its exit (the close's flush)
        eventually_free(lambda: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB))  # release
    finally:
        os.close(fd)


def _mount_pid(m: Mount) -> int:
    from metafs.fuse.mount import pid_file

    return int(pid_file(str(m.path)).read_text().strip())


def test_a_mount_that_ends_frees_its_locks(two: tuple[Mount, Mount], holders) -> None:
    a, b = two
    make_file(a, "f")
    h = holders(a / "f", "posix:w:0:0", "flock:ex")
    fd = os.open(b / "f", os.O_RDWR)
    try:
        assert busy(lambda: setlk(fd, fcntl.F_WRLCK, 0, 0))
        pid = _mount_pid(a)
        os.kill(pid, signal.SIGTERM)        # the mount process shuts down (machine shutdown)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        setlk(fd, fcntl.F_WRLCK, 0, 0)      # at once, not after the session's lease
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
        h.stop()


def test_a_crashed_mount_loses_its_locks_with_its_lease(tmp_path: Path, mount_factory,
                                                        holders) -> None:
    s = load(overrides={"data_dir": str(tmp_path / "nn"), "listen": "127.0.0.1:0",
                        "session_lease": 2.0}, environ={})
    nn = GrpcNamenode(s).start()
    try:
        a = mount_factory("--namenode", nn.address, name="a")
        b = mount_factory("--namenode", nn.address, name="b")
        make_file(a, "f")
        h = holders(a / "f", "posix:w:0:0")
        fd = os.open(b / "f", os.O_RDWR)
        try:
            os.kill(_mount_pid(a), signal.SIGKILL)     # no chance to say goodbye
            t0 = time.monotonic()
            while busy(lambda: setlk(fd, fcntl.F_WRLCK, 0, 0)):
                assert time.monotonic() - t0 < 15, "the dead mount's lock was never released"
                time.sleep(0.2)
            assert time.monotonic() - t0 > 0.5        # it went with the lease, not before
        finally:
            os.close(fd)
            h.stop()
    finally:
        for m in ("a", "b"):
            subprocess.run(["fusermount3", "-uz", str(tmp_path / m)], capture_output=True)
        nn.stop()


def test_local_locks_setting_keeps_locks_per_machine(grpc_namenode: GrpcNamenode,
                                                     mount_factory, holders) -> None:
    a = mount_factory("--namenode", grpc_namenode.address, "--local-locks", name="a")
    b = mount_factory("--namenode", grpc_namenode.address, "--local-locks", name="b")
    make_file(a, "f")
    h = holders(a / "f", "posix:w:0:0")
    fd = os.open(b / "f", os.O_RDWR)
    try:
        setlk(fd, fcntl.F_WRLCK, 0, 0)     # the other mount's lock is not seen
        assert locked_elsewhere(a / "f")   # but the kernel's own are, on one mount
    finally:
        os.close(fd)
        h.stop()


_SQLITE_WRITER = textwrap.dedent("""
    import sqlite3, sys
    db = sqlite3.connect(sys.argv[1], timeout=120, isolation_level=None)
    who, n = sys.argv[2], int(sys.argv[3])
    for i in range(n):
        db.execute("BEGIN IMMEDIATE")
        v = db.execute("SELECT v FROM counter").fetchone()[0]
        db.execute("UPDATE counter SET v = ?", (v + 1,))
        db.execute("INSERT INTO rows(who, i, pad) VALUES (?, ?, ?)", (who, i, "x" * 300))
        db.execute("COMMIT")
    db.close()
""")


def test_sqlite_rollback_journal_shared_by_two_mounts(two: tuple[Mount, Mount]) -> None:
    a, b = two
    subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sqlite3, sys
        db = sqlite3.connect(sys.argv[1])
        assert db.execute("PRAGMA journal_mode=delete").fetchone()[0] == "delete"
        db.execute("CREATE TABLE counter(v INTEGER)")
        db.execute("INSERT INTO counter VALUES (0)")
        db.execute("CREATE TABLE rows(who TEXT, i INTEGER, pad TEXT)")
        db.commit()
    """), str(a / "shared.sqlite")], check=True)
    n = 120
    procs = [subprocess.Popen([sys.executable, "-c", _SQLITE_WRITER, str(m / "shared.sqlite"),
                               who, str(n)], stderr=subprocess.PIPE, text=True)
             for m, who in ((a, "a"), (b, "b"))]
    errs = []
    for p in procs:
        p.wait(timeout=600)
        errs.append((p.returncode, p.stderr.read()))
    assert [rc for rc, _ in errs] == [0, 0], errs
    for m in (a, b):  # read in another process: this one serves the namenode
        out = subprocess.run([sys.executable, "-c", textwrap.dedent("""
            import sqlite3, sys
            db = sqlite3.connect(sys.argv[1])
            print(db.execute("PRAGMA integrity_check").fetchone()[0])
            print(db.execute("SELECT v FROM counter").fetchone()[0])
            for row in db.execute("SELECT who, count(*), count(DISTINCT i) FROM rows "
                                  "GROUP BY who ORDER BY who"):
                print(*row)
        """), str(m / "shared.sqlite")], capture_output=True, text=True, check=True)
        assert out.stdout.split("\n")[:4] == ["ok", str(2 * n), f"a {n} {n}", f"b {n} {n}"]
