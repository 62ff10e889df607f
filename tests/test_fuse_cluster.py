"""Mounts of a namenode served over gRPC: two mounts see each other's changes, an
unreachable namenode gives EIO promptly and the mount recovers, access events arrive."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from typing import Callable

import pytest

from fuse_fixtures import GrpcNamenode, Mount, grpc_namenode, mount_factory, needs_fuse  # noqa: F401
from metafs.client import Client
from metafs.fuse.cache import InlineData
from metafs.namenode.gc import gc
from metafs.proto import metafs_pb2 as pb

pytestmark = [pytest.mark.fuse, needs_fuse]


def eventually(check: Callable[[], bool], within: float) -> None:
    """Metadata between mounts is coherent within a bound (docs/fuse.md, "Caching and
    consistency"): the other mount's changelog follower has to invalidate the kernel's
    cached dentry and attributes first. Fails when ``check`` is still false after
    ``within`` seconds."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"still stale after {within} s"
        time.sleep(0.005)


def test_two_mounts_see_each_others_changes(grpc_namenode: GrpcNamenode, mount_factory) -> None:
    a = mount_factory("--namenode", grpc_namenode.address)
    b = mount_factory("--namenode", grpc_namenode.address)
    (a / "d").mkdir()
    # A answers the kernel's lookups of new names in a directory it made by itself: a name
    # B adds there shows once A's follower reports it
    (b / "d" / "f").write_text("by B")
    eventually(lambda: (a / "d" / "f").exists(), within=3.0)
    assert (a / "d" / "f").read_text() == "by B"
    (a / "d" / "f").write_text("v1")
    assert (b / "d" / "f").read_text() == "v1"          # close-to-open
    (b / "d" / "f").write_text("version two")
    assert (a / "d" / "f").read_text() == "version two"  # A's page cache is not reused
    assert os.stat(a / "d" / "f").st_size == len("version two")
    os.rename(b / "d" / "f", b / "d" / "g")
    assert sorted(os.listdir(a / "d")) == ["g"]
    assert (a / "d" / "g").read_text() == "version two"
    with open(a / "d" / "g", "a") as fh:
        fh.write(" + appended by A")
    assert (b / "d" / "g").read_text() == "version two + appended by A"
    os.unlink(a / "d" / "g")
    assert os.listdir(b / "d") == []
    os.rmdir(b / "d")
    eventually(lambda: not (a / "d").exists(), within=3.0)
    # a large file (blocks) written on one mount is read whole on the other
    data = os.urandom(3 * 1024 * 1024 + 17)
    (a / "big").write_bytes(data)
    assert (b / "big").read_bytes() == data
    (a / "big").write_bytes(data[::-1])
    assert (b / "big").read_bytes() == data[::-1]


def test_followed_changes_beat_long_kernel_timeouts(grpc_namenode: GrpcNamenode,
                                                    mount_factory) -> None:
    """With 60 s kernel caches, another mount's removes, renames and chmods still show
    within the changelog lag (an open that truncates included): the follower invalidates
    what the kernel and the mount cached."""
    a = mount_factory("--namenode", grpc_namenode.address, "--allow-other",
                      "--attr-timeout", "60", "--entry-timeout", "60", public=True)
    b = mount_factory("--namenode", grpc_namenode.address)
    (a / "d").mkdir(mode=0o777)
    os.chmod(a / "d", 0o777)
    (a / "d" / "f").write_text("x")
    os.chmod(a / "d" / "f", 0o666)
    os.stat(a / "d" / "f")                      # cached in A's kernel for 60 s
    os.chmod(b / "d" / "f", 0o600)
    eventually(lambda: os.stat(a / "d" / "f").st_mode & 0o777 == 0o600, within=5.0)
    # an open that truncates goes on the attributes A believes: B's chmod is among them
    res = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          "sh", "-c", f": > {a / 'd' / 'f'}"], capture_output=True, text=True)
    assert res.returncode != 0 and "Permission denied" in res.stderr
    assert (b / "d" / "f").read_text() == "x"
    (b / "d" / "f").write_text("longer contents")
    eventually(lambda: os.stat(a / "d" / "f").st_size == len("longer contents"), within=5.0)
    assert (a / "d" / "f").read_text() == "longer contents"
    os.unlink(b / "d" / "f")
    eventually(lambda: not (a / "d" / "f").exists(), within=5.0)
    os.rmdir(b / "d")
    eventually(lambda: not (a / "d").exists(), within=5.0)


def test_unreachable_namenode_gives_eio_and_recovers(grpc_namenode: GrpcNamenode,
                                                     mount_factory) -> None:
    # an outage longer than the mount waits one out (failover_timeout): calls fail with EIO
    m = mount_factory("--namenode", grpc_namenode.address, "--rpc-timeout", "2",
                      "--attr-timeout", "0", "--entry-timeout", "0",
                      env={"METAFS_FAILOVER_TIMEOUT": "2"})
    (m / "before").write_text("ok")
    port = grpc_namenode.port
    grpc_namenode.stop()
    try:
        with pytest.raises(OSError) as ei:
            os.stat(m / "never-seen")
        assert ei.value.errno == errno.EIO
        with pytest.raises(OSError) as ei:
            (m / "new-file").write_text("x")
        assert ei.value.errno == errno.EIO
    finally:
        grpc_namenode.start(port)
    # the mount reconnects by itself
    deadline_tries = 100
    for _ in range(deadline_tries):
        try:
            assert (m / "before").read_text() == "ok"
            break
        except OSError as exc:
            assert exc.errno == errno.EIO
            import time
            time.sleep(0.1)
    (m / "after").write_text("back")
    assert sorted(os.listdir(m.path)) == ["after", "before"]


def test_access_events_reach_the_namenode(grpc_namenode: GrpcNamenode, mount_factory) -> None:
    m = mount_factory("--namenode", grpc_namenode.address)
    (m / "input.csv").write_text("a,b\n1,2\n")
    code = (f"d = open({str(m / 'input.csv')!r}).read(); "
            f"open({str(m / 'model.bin')!r}, 'w').write(d.upper())")
    subprocess.run([sys.executable, "-c", code, "train-marker"], check=True,
                   env={**os.environ, "METAFS_RUN_ID": "run-42"})
    m.stop()  # unmounting sends what is pending
    with Client(grpc_namenode.address) as c:
        records, _ = c.changelog(0, limit=10_000)
        ino_in, ino_out = c.ino("/input.csv"), c.ino("/model.bin")
    events = [r for r in records if r.op == pb.OP_ACCESS and r.run_id == "run-42"]
    assert events, "no access events recorded for the run"
    by_ino = {r.ino: json.loads(r.extra) for r in events}
    assert by_ino[ino_in]["read"] and not by_ino[ino_in]["wrote"]
    assert by_ino[ino_out]["wrote"]
    assert "train-marker" in by_ino[ino_in]["cmdline"]
    assert by_ino[ino_in]["proc_start"] > 0 and by_ino[ino_in]["pid"] > 0


def test_access_events_can_be_switched_off(grpc_namenode: GrpcNamenode, mount_factory) -> None:
    m = mount_factory("--namenode", grpc_namenode.address, "--no-access-events")
    (m / "f").write_text("x")
    assert (m / "f").read_text() == "x"
    m.stop()
    with Client(grpc_namenode.address) as c:
        records, _ = c.changelog(0, limit=10_000)
    assert not [r for r in records if r.op == pb.OP_ACCESS]


def test_truncating_open_empties_what_another_client_just_wrote(
        grpc_namenode: GrpcNamenode, mount_factory) -> None:
    """A write-only open with O_TRUNC goes on the attributes the mount believes, but still
    empties the file at the namenode: data another client wrote since (the mount still
    believing the file empty) does not survive behind the new, shorter contents."""
    a = mount_factory("--namenode", grpc_namenode.address,
                      env={"METAFS_FUSE_FOLLOW_CHANGES": "off"})
    (a / "f").write_bytes(b"")
    assert os.stat(a / "f").st_size == 0  # believed empty for the attribute timeout
    with Client(grpc_namenode.address) as c:
        c.write_bytes("/f", b"x" * 8192)
        fd = os.open(a / "f", os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, b"new")
        finally:
            os.close(fd)
        assert c.read_bytes("/f") == b"new"


def test_truncating_open_goes_with_the_first_write(grpc_namenode: GrpcNamenode,
                                                   mount_factory) -> None:
    """A truncating open leaves its truncation to the first write (one Write call replaces
    the content) or to the close: another client sees exactly the new contents after the
    close (no tail of the old ones), a file in blocks gives them up, and the mount sees
    the empty file from the open on (fstat and stat answer so by themselves; other opens
    and reads send the truncation first)."""
    a = mount_factory("--namenode", grpc_namenode.address)
    old = os.urandom(10 * 1024)
    new = os.urandom(4096)
    large = os.urandom(3 << 16)  # (past the inline limit: in blocks)
    for name in ("f", "e", "s", "L"):
        (a / name).write_bytes(old)
    (a / "big").write_bytes(os.urandom(1 << 17))
    with Client(grpc_namenode.address) as c:
        _, head = c.changelog(0, limit=10_000)
        ino = {name: c.stat(f"/{name}").st_ino for name in ("f", "e", "s", "L", "big")}
        for name in ("f", "big"):
            fd = os.open(a / name, os.O_WRONLY | os.O_TRUNC)
            try:
                assert os.fstat(fd).st_size == 0 and os.stat(a / name).st_size == 0
                os.write(fd, new)
            finally:
                os.close(fd)
            assert (a / name).read_bytes() == new and c.read_bytes(f"/{name}") == new
        assert c.inodes.getattr(ino["big"]).inline  # (its block freed: see below)
        fd = os.open(a / "L", os.O_WRONLY | os.O_TRUNC)  # new contents in blocks
        try:
            os.write(fd, large)
        finally:
            os.close(fd)
        assert c.read_bytes("/L") == large
        os.close(os.open(a / "e", os.O_WRONLY | os.O_TRUNC))  # nothing written
        assert c.stat("/e").st_size == 0 and c.read_bytes("/e") == b""
        fd = os.open(a / "s", os.O_RDWR | os.O_TRUNC)
        try:
            assert os.fstat(fd).st_size == 0 and os.stat(a / "s").st_size == 0
            assert (a / "s").read_bytes() == b"" and os.pread(fd, 100, 0) == b""
            os.write(fd, new[:100])
        finally:
            os.close(fd)
        assert c.read_bytes("/s") == new[:100]
        recs, _ = c.changelog(head, limit=100)
        assert [(r.ino, r.flags, r.attr.size) for r in recs if r.op == pb.OP_WRITE] == [
            (ino["f"], pb.WRITE_REPLACED, 4096), (ino["big"], pb.WRITE_REPLACED, 4096),
            (ino["L"], pb.WRITE_PLAIN, 0), (ino["L"], pb.WRITE_PLAIN, len(large)),
            (ino["e"], pb.WRITE_PLAIN, 0),
            (ino["s"], pb.WRITE_PLAIN, 0), (ino["s"], pb.WRITE_PLAIN, 100)]
    assert grpc_namenode.nn is not None
    stats = gc(grpc_namenode.nn.ns, now=time.time() + 10 * 3600)
    assert stats.freed_deleted == 1  # (128 KiB: one block of the default size)


def test_an_open_reads_a_small_file_another_client_rewrote_before_it(
        grpc_namenode: GrpcNamenode, mount_factory) -> None:
    """Close-to-open for a small file whose data comes with the open (and that the mount
    keeps for its next opens): each open after another client's rewrite (of the same size,
    so that only the version tells) reads the new bytes, with or without the kernel's
    pages; a change by this mount is read at once through its files already open, and by
    its next open. The mount follows no changelog here: the open's revalidation alone
    must see the change."""
    a = mount_factory("--namenode", grpc_namenode.address,
                      env={"METAFS_FUSE_FOLLOW_CHANGES": "off"})
    f = a / "f"

    def cold_read() -> bytes:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the mount serves the read
            return os.pread(fd, 8192, 0)
        finally:
            os.close(fd)

    with Client(grpc_namenode.address) as c:
        c.write_bytes("/f", b"one " * 500)
        assert f.read_bytes() == b"one " * 500
        assert cold_read() == b"one " * 500    # the kept data, the file unchanged
        c.write_bytes("/f", b"two " * 500)
        assert f.read_bytes() == b"two " * 500
        assert cold_read() == b"two " * 500
        c.write_bytes("/f", b"six " * 500)
        assert cold_read() == b"six " * 500    # the kept data is of the old version
        reader = os.open(f, os.O_RDONLY)       # (open with the data of "six")
        try:
            with open(f, "r+b") as fh:         # this mount's own (buffered) write
                fh.write(b"ten")
            os.posix_fadvise(reader, 0, 0, os.POSIX_FADV_DONTNEED)
            assert os.pread(reader, 8192, 0) == b"ten " + b"six " * 499  # one machine, one file
        finally:
            os.close(reader)
        assert cold_read() == b"ten " + b"six " * 499
        assert c.read_bytes("/f") == b"ten " + b"six " * 499


def test_the_small_files_data_a_mount_keeps_is_bounded() -> None:
    """The data kept for small files' next opens stays within its byte limit, the least
    recently opened file going first, and serves only the attributes it is of."""
    kept = InlineData(10_000)

    def attr(ino: int, version: int = 1) -> pb.Attr:
        return pb.Attr(ino=ino, version=version, size=4000, mtime_ns=7, inline=True)

    for ino in (1, 2):
        kept.put(attr(ino), bytes([ino]) * 4000)
    assert kept.get(attr(1)) == b"\1" * 4000  # (1 is now the one opened last)
    kept.put(attr(3), b"\3" * 4000)  # 12,000 bytes: 2 goes
    assert kept.get(attr(2)) is None and kept.version(2) is None
    assert kept.get(attr(1)) == b"\1" * 4000 and kept.get(attr(3)) == b"\3" * 4000
    assert kept.get(attr(1, version=2)) is None  # (another version of the file)
    kept.put(attr(4), bytes(20_000))  # larger than the limit: not kept, the rest stays
    assert kept.version(4) is None and kept.version(1) == 1


def test_replacing_an_open_file_is_one_rename(grpc_namenode: GrpcNamenode,
                                              mount_factory) -> None:
    """A rename over a file that is open on the mount (an atomic save while a reader has
    the old version open) replaces the name at the namenode in one step: the changelog shows
    one rename and no unlink (an unlink first would leave a moment with no such name, and
    other opens would fail with ENOENT), the open descriptor still reads the old file, and
    an unlink of an open file still removes its name at once."""
    a = mount_factory("--namenode", grpc_namenode.address)
    (a / "old").write_text("old version")
    (a / "new").write_text("new version")
    (a / "gone").write_text("x")
    with Client(grpc_namenode.address) as c:
        _, head = c.changelog(0, limit=10_000)
        fd = os.open(a / "old", os.O_RDONLY)
        gone = os.open(a / "gone", os.O_RDONLY)
        try:
            os.rename(a / "new", a / "old")
            assert os.pread(fd, 64, 0) == b"old version"
            assert (a / "old").read_text() == "new version"
            os.unlink(a / "gone")
            assert not (a / "gone").exists() and not c.exists("/gone")
        finally:
            os.close(fd)
            os.close(gone)
        records, _ = c.changelog(head, limit=10_000)
    ops = [pb.Op.Name(r.op) for r in records]
    assert ops.count("OP_RENAME") == 1 and ops.count("OP_UNLINK") == 1, ops
    assert sorted(os.listdir(a.path)) == ["old"]
