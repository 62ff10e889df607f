"""What one mount shows agrees with what was just done through it: the attributes of every
name of a hard-linked file, a directory's times as its entries change, the set-id bits a
write by another user clears, device files, a truncate by name (and an open that
truncates) seen through a descriptor that is still open, directory times copied by rsync,
names replaced while a reader opens them, and what another process changes in an embedded
mount's data directory."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from blockstore_fixtures import free_port
from fuse_fixtures import (Mount, grpc_namenode, mnt, mount_factory, needs_fuse,  # noqa: F401
                           shared_mnt)

pytestmark = [pytest.mark.fuse, needs_fuse]

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _tick() -> None:
    """Let the clock move past the file system's time granularity (1 ns) for certain,
    and past the kernel's attribute cache of a name not touched since (1 s)."""
    time.sleep(1.05)


def test_hard_link_attributes_agree_through_every_name(mnt: Mount) -> None:
    a, b, c = mnt / "a", mnt / "b", mnt / "c"
    a.write_bytes(b"x")
    assert os.lstat(a).st_nlink == 1
    os.link(a, b)
    assert os.lstat(a).st_nlink == 2 and os.lstat(b).st_nlink == 2
    os.link(b, c)  # a is neither the source nor the new name
    assert [os.lstat(p).st_nlink for p in (a, b, c)] == [3, 3, 3]
    os.chmod(b, 0o640)  # (every name's attributes are in the kernel's cache now)
    assert [stat.S_IMODE(os.lstat(p).st_mode) for p in (a, b, c)] == [0o640] * 3
    os.chown(b, 65534, 65533)
    for p in (a, b, c):
        st = os.lstat(p)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 65534, 65533)
    os.truncate(c, 5)
    assert [os.lstat(p).st_size for p in (a, b, c)] == [5] * 3
    os.utime(a, ns=(7_000_000_000, 8_000_000_000))
    assert [os.lstat(p).st_mtime_ns for p in (a, b, c)] == [8_000_000_000] * 3
    ctime = os.lstat(c).st_ctime_ns
    _tick()
    os.unlink(a)
    assert os.lstat(b).st_nlink == 2 and os.lstat(c).st_nlink == 2
    assert os.lstat(c).st_ctime_ns > ctime  # unlink changes the inode (its link count)
    ctime = os.lstat(c).st_ctime_ns
    _tick()
    os.setxattr(b, "user.k", b"v")
    assert os.lstat(c).st_ctime_ns > ctime
    # a rename over one name (pjdfstest rename/23): the other loses a link
    ctime = os.lstat(c).st_ctime_ns
    _tick()
    (mnt / "new").write_bytes(b"")
    os.rename(mnt / "new", b)
    assert os.lstat(c).st_nlink == 1 and os.lstat(c).st_ctime_ns > ctime


@pytest.mark.parametrize("kind", ["file", "fifo", "symlink", "dir", "link", "device"])
def test_creating_an_entry_changes_the_directory_times(mnt: Mount, kind: str) -> None:
    d = mnt / "d"
    d.mkdir()
    (mnt / "src").write_bytes(b"")
    before = os.stat(d)
    _tick()
    new = d / "n"
    if kind == "file":
        os.close(os.open(new, os.O_CREAT | os.O_WRONLY, 0o644))
    elif kind == "fifo":
        os.mkfifo(new, 0o644)
    elif kind == "symlink":
        os.symlink("target", new)
    elif kind == "dir":
        os.mkdir(new)
    elif kind == "link":
        os.link(mnt / "src", new)
    else:
        os.mknod(new, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    after = os.stat(d)
    assert after.st_mtime_ns > before.st_mtime_ns
    assert after.st_ctime_ns > before.st_ctime_ns
    _tick()
    (os.rmdir if kind == "dir" else os.unlink)(new)
    gone = os.stat(d)
    assert gone.st_mtime_ns > after.st_mtime_ns and gone.st_ctime_ns > after.st_ctime_ns


@pytest.mark.parametrize("mode, group_exec, left", [
    (0o4777, True, 0o777), (0o2777, True, 0o777), (0o6777, True, 0o777),
    (0o2767, False, 0o2767),  # set-group-ID without group execute is a lock mark: it stays
])
def test_write_by_another_user_clears_set_id_bits(shared_mnt: Mount, mode: int,
                                                  group_exec: bool, left: int) -> None:
    d = shared_mnt / "d"
    d.mkdir(mode=0o777)
    os.chmod(d, 0o777)
    f = d / "prog"
    f.write_bytes(b"#!/bin/sh\n")
    os.chmod(f, mode)
    code = textwrap.dedent(f"""
        import os, stat, sys
        fd = os.open({str(f)!r}, os.O_WRONLY)
        os.write(fd, b"x")
        print(oct(stat.S_IMODE(os.fstat(fd).st_mode)))
        os.close(fd)
    """)
    res = subprocess.run(NOBODY + [sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert int(res.stdout.strip(), 8) == left
    assert stat.S_IMODE(os.stat(f).st_mode) == left
    # the owner's own writes leave the bits alone
    os.chmod(f, 0o4755)
    with open(f, "r+b") as fh:
        fh.write(b"y")
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o4755


def test_chmod_by_another_user_is_still_refused(shared_mnt: Mount) -> None:
    """Clearing set-id bits on the kernel's behalf does not let others chmod."""
    f = shared_mnt / "f"
    f.write_bytes(b"")
    os.chmod(f, 0o4777)
    res = subprocess.run(NOBODY + ["chmod", "0777", str(f)], capture_output=True, text=True)
    assert res.returncode != 0 and "not permitted" in res.stderr
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o4777


def test_device_files(mnt: Mount) -> None:
    for kind, ftype in (("c", stat.S_IFCHR), ("b", stat.S_IFBLK)):
        p = mnt / f"dev-{kind}"
        os.mknod(p, 0o640 | ftype, os.makedev(8, 17))
        st = os.lstat(p)
        assert stat.S_IFMT(st.st_mode) == ftype and stat.S_IMODE(st.st_mode) == 0o640
        assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (8, 17)
        out = subprocess.run(["stat", "-c", "%F %t:%T", str(p)], capture_output=True,
                             text=True, check=True).stdout.strip()
        assert out == ("character special file 8:11" if kind == "c"
                       else "block special file 8:11")
    res = subprocess.run(NOBODY + ["mknod", str(mnt / "nope"), "c", "1", "3"],
                         capture_output=True, text=True)
    assert res.returncode != 0 and not (mnt / "nope").exists()


@pytest.mark.parametrize("committed", [True, False])
def test_truncate_by_name_is_seen_by_an_open_descriptor(mnt: Mount, committed: bool) -> None:
    p = mnt / "big"
    size = 8 << 20
    block = os.urandom(1 << 20)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for i in range(size >> 20):
            os.pwrite(fd, block, i << 20)
        if committed:
            os.fsync(fd)
        os.truncate(p, size + (3 << 20))
        assert os.fstat(fd).st_size == size + (3 << 20)
        assert os.pread(fd, 1 << 20, size + (1 << 20)) == bytes(1 << 20)
        assert os.pread(fd, 16, size - 16) == block[-16:]
        os.truncate(p, 1000)  # and shrinking
        assert os.pread(fd, 4096, 0) == block[:1000]
        assert os.pread(fd, 4096, 5000) == b""
        os.pwrite(fd, b"end", 2000)  # writes after it go on the new size
    finally:
        os.close(fd)
    data = p.read_bytes()
    assert len(data) == 2003 and data[:1000] == block[:1000]
    assert data[1000:2000] == bytes(1000) and data[2000:] == b"end"


def test_truncating_open_is_seen_by_an_open_descriptor(mnt: Mount) -> None:
    """An open with O_TRUNC empties the file for the mount's other descriptors of it at
    once: a write through one of them goes on the empty file, not on the blocks it read."""
    p = mnt / "big"
    block = os.urandom(1 << 20)
    p.write_bytes(block)
    fd = os.open(p, os.O_RDWR)
    try:
        assert os.pread(fd, 16, 0) == block[:16]
        os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))
        assert os.fstat(fd).st_size == 0
        os.pwrite(fd, b"end", 5)
    finally:
        os.close(fd)
    assert p.read_bytes() == bytes(5) + b"end"


def test_times_and_xattrs_by_name_while_open(mnt: Mount) -> None:
    p = mnt / "f"
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"buffered, not yet committed")
        os.utime(p, ns=(1_000_000_000, 2_000_000_000))
        os.chmod(p, 0o600)
        os.setxattr(p, "user.tag", b"1")
        st = os.fstat(fd)
        assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_000, 2_000_000_000)
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_size == 27
    finally:
        os.close(fd)
    st = os.stat(p)
    assert (st.st_mtime_ns, stat.S_IMODE(st.st_mode)) == (2_000_000_000, 0o600)
    assert p.read_bytes() == b"buffered, not yet committed"
    assert os.getxattr(p, "user.tag") == b"1"


@pytest.mark.skipif(shutil.which("rsync") is None, reason="needs rsync")
def test_rsync_keeps_directory_times(mnt: Mount, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    for i in range(5):
        (src / "a" / f"f{i}").write_text(f"{i}\n")
        (src / "a" / "b" / f"g{i}").write_text(f"{i}\n")
    for d, t in ((src / "a" / "b", 1_500_000_000), (src / "a", 1_400_000_000)):
        os.utime(d, (t, t))
    subprocess.run(["rsync", "-a", f"{src}/", f"{mnt / 'dst'}/"], check=True,
                   capture_output=True, timeout=120)
    for rel in ("a", "a/b", "a/f0", "a/b/g4"):
        assert os.stat(mnt / "dst" / rel).st_mtime == os.stat(src / rel).st_mtime, rel
    # a second run finds nothing to do (times and sizes agree)
    res = subprocess.run(["rsync", "-ai", f"{src}/", f"{mnt / 'dst'}/"], check=True,
                         capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == ""


def _mount_answers(port: int, op: str, errno_name: str) -> float:
    """How many ``op`` calls the mount answered with ``errno_name`` (its metrics)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read()
    want = f'metafs_fuse_ops_total{{errno="{errno_name}",op="{op}"}} '
    return sum(float(line[len(want):]) for line in text.decode().splitlines()
               if line.startswith(want))


@pytest.mark.parametrize("remote", [False, True], ids=["embedded", "remote"])
def test_replaced_file_stays_readable_while_open(request: pytest.FixtureRequest,
                                                  remote: bool) -> None:
    """A file replaced while it is open twice in the mount, once with a namenode handle of
    its own (a write open gets one before a chmod) and once without, is still read through
    the second after the first is closed: the replace has the mount keep the inode alive
    for as long as it has the inode open. (The handle of the first open was taken as the
    keeper; it went with that open, the namenode freed the inode, and the other open's
    reads failed with ENOENT: seen in atomic saves, where an open of a replaced name's new
    file takes a namenode handle.)"""
    port = free_port()
    # (a remote mount's namenode first: it must outlive the mount)
    args = ["--namenode", request.getfixturevalue("grpc_namenode").address] if remote else []
    mnt = request.getfixturevalue("mount_factory")("--metrics-port", str(port), *args)
    name = mnt / "state.json"
    name.write_text("old\n")
    w = os.open(name, os.O_WRONLY)
    os.chmod(name, 0o644)
    r = os.open(name, os.O_RDONLY)
    try:
        (mnt / "tmp").write_text("new\n")
        os.replace(mnt / "tmp", name)
        os.close(w)
        # the kernel sends a release after close(2) has returned: wait for all three
        # (of the two files written and of ``w``) to have been answered
        deadline = time.monotonic() + 60
        while _mount_answers(port, "release", "OK") < 3:
            assert time.monotonic() < deadline, "the mount never had the releases"
            time.sleep(0.05)
        os.posix_fadvise(r, 0, 0, os.POSIX_FADV_DONTNEED)  # (the read goes to the mount)
        assert os.pread(r, 100, 0) == b"old\n"
    finally:
        os.close(r)
    assert name.read_text() == "new\n"


def test_replaced_name_never_gives_estale(mount_factory) -> None:  # type: ignore[no-untyped-def]
    """One process saves a file atomically (write a temporary file, os.replace it over the
    name) again and again; another opens the name meanwhile: every open finds the old or
    the new file, complete, and the mount itself hardly ever answers an open with ESTALE
    (an open of the kernel's node of a replaced name goes to the name's new file).

    libfuse's high-level API still answers ESTALE itself, without asking the mount, to an
    OPEN of a node whose name a rename took before the OPEN came (the node has no path);
    Linux retries such an open once after a new lookup, and the program sees ESTALE when
    the retry meets the next rename too (a few opens in 3,000 here): that remains a
    known failure of libfuse's path-based API (xfail), never a wrong or partial file, nor
    any other error of an open or a read (an ENOENT from reads of a replaced file, about
    one open in 3,000 on a loaded machine, was the mount's: see
    test_replaced_file_stays_readable_while_open)."""
    port = free_port()
    mnt = mount_factory("--metrics-port", str(port))
    name = mnt / "state.json"
    name.write_text("0\n")
    writer = textwrap.dedent(f"""
        import os, sys
        d = {str(mnt.path)!r}
        i = 0
        while not os.path.exists(os.path.join(d, "stop")):
            i += 1
            tmp = os.path.join(d, f".state.{{i}}.tmp")
            with open(tmp, "w") as f:
                f.write(f"{{i}}\\n")
            os.replace(tmp, os.path.join(d, "state.json"))
        print(i)
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    errors: list[str] = []
    stale = 0
    opens = 0
    try:
        while opens < 3000:
            opens += 1
            try:
                f = open(name)
            except OSError as exc:
                if exc.errno == errno.ESTALE:
                    stale += 1
                else:
                    errors.append(f"open: {type(exc).__name__}: {exc}")
                continue
            try:
                with f:
                    text = f.read()
                if not text.endswith("\n"):
                    errors.append(f"partial content {text!r}")
            except OSError as exc:
                errors.append(f"read: {type(exc).__name__}: {exc}")
    finally:
        (mnt / "stop").write_text("")
        out, _ = proc.communicate(timeout=60)
    assert int(out) > 10, "the writer hardly ran: the test proves nothing"
    assert errors == [], f"{len(errors)} of {opens} opens failed: {errors[:5]}"
    # The mount answers ESTALE itself only when the name's new file was replaced again
    # before it could open it (the same race, one step later): now and then. Before it
    # looked the name up again it answered hundreds (270 of 3,000 opens in one run).
    own = _mount_answers(port, "open", "ESTALE")
    assert own <= 10, f"the mount answered {own} opens with ESTALE"
    if stale:
        pytest.xfail(f"{stale} of {opens} opens got ESTALE from libfuse itself (a node "
                     "renamed away before its OPEN came, twice in a row)")


def test_embedded_mount_follows_other_processes_on_its_data_dir(mount_factory, tmp_path: Path
                                                                ) -> None:  # type: ignore[no-untyped-def]
    """An embedded mount's kernel caches last 60 s by default; another process opening the
    same data directory (here this one, through the client) still has its chmod, write,
    rename and unlink seen through the mount within the follower's poll."""
    from metafs.client import Client
    from metafs.config import Settings
    from metafs.fuse.cache import kernel_timeouts

    embedded = Settings(data_dir=str(tmp_path / "any"))
    assert kernel_timeouts(embedded, True) == (60.0, 60.0)
    assert kernel_timeouts(embedded, False) == (1.0, 1.0)
    assert kernel_timeouts(embedded.with_(namenode="localhost:1"), True) == (1.0, 1.0)
    assert kernel_timeouts(embedded.with_(fuse_attr_timeout=2.5), True) == (60.0, 2.5)
    data = tmp_path / "shared-data"
    m = mount_factory(data=data)
    (m / "f").write_text("x")
    (m / "g").write_text("y")
    os.stat(m / "f"), os.stat(m / "g")  # cached by the kernel (60 s)

    def eventually(check, within: float = 5.0) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + within
        while not check():
            assert time.monotonic() < deadline, f"still stale after {within} s"
            time.sleep(0.01)

    with Client(data_dir=str(data)) as c:
        c.chmod("/f", 0o600)
        eventually(lambda: os.stat(m / "f").st_mode & 0o777 == 0o600)
        c.write_bytes("/f", b"longer contents")
        eventually(lambda: os.stat(m / "f").st_size == len("longer contents"))
        assert (m / "f").read_text() == "longer contents"
        c.rename("/g", "/h")
        eventually(lambda: not (m / "g").exists())
        assert (m / "h").read_text() == "y"
        c.remove("/f")
        eventually(lambda: not (m / "f").exists())


def _getattr_calls() -> float:
    """GetAttr calls the namenode of this process (grpc_namenode) has answered."""
    from metafs.metrics import REGISTRY

    return REGISTRY.get_sample_value("metafs_ops_total", {"op": "GetAttr", "errno": "OK"}
                                     ) or 0.0


def test_directory_attributes_follow_its_entries(grpc_namenode, mount_factory
                                                 ) -> None:  # type: ignore[no-untyped-def]
    """A remote mount keeps a directory's attributes while entries are made, removed and
    renamed in it: the namenode changed the directory's mtime, ctime and link count in the
    same transaction and says when (the new entry's time, or the time in the reply of an
    unlink, rmdir or rename), so the mount applies that to its copy instead of asking
    again (a directory renamed or removed after files were made, renamed or removed in it
    cost one more call each). What it shows is what the namenode holds; an open with
    O_CREAT of a file that is there already leaves the directory alone."""
    from metafs.client import Client

    mnt = mount_factory("--namenode", grpc_namenode.address)
    d = mnt / "d"
    d.mkdir()
    (mnt / "src").write_bytes(b"")
    (d / "old").write_bytes(b"")
    os.stat(d)
    with Client(namenode=grpc_namenode.address) as c:
        def shown() -> tuple[int, int, int]:
            st = os.stat(d)
            return st.st_mtime_ns, st.st_ctime_ns, st.st_nlink

        def held() -> tuple[int, int, int]:
            st = c.stat("/d")
            return st.st_mtime_ns, st.st_ctime_ns, st.st_nlink

        steps = [lambda: os.close(os.open(d / "f", os.O_CREAT | os.O_WRONLY, 0o644)),
                 lambda: os.mkdir(d / "sub"),
                 lambda: os.symlink("f", d / "s"),
                 lambda: os.link(mnt / "src", d / "l"),
                 lambda: os.mkfifo(d / "p"),
                 lambda: os.rename(d / "f", d / "g"),
                 lambda: os.unlink(d / "p"),
                 # a file known to be one: both directories (see below)
                 lambda: (os.lstat(d / "g"), os.rename(d / "g", mnt / "g")),
                 lambda: os.rename(mnt / "src", d / "src"),
                 lambda: os.rmdir(d / "sub"),
                 lambda: os.mkdir(d / "sub")]
        for step, make in enumerate(steps):
            before = shown()
            make()
            calls = _getattr_calls()
            now = shown()
            assert _getattr_calls() == calls, f"step {step}: the mount asked the namenode"
            assert now == held()
            assert now[0] > before[0] and now[1] > before[1]
        assert shown()[2] == 3  # ".", "..", and "sub"
        root = os.stat(mnt.path)
        assert (root.st_mtime_ns, root.st_ctime_ns) == (c.stat("/").st_mtime_ns,
                                                         c.stat("/").st_ctime_ns)
        # the file is there: the open neither creates nor changes the directory
        before = shown()
        os.close(os.open(d / "old", os.O_CREAT | os.O_WRONLY, 0o644))
        assert shown() == before == held()
