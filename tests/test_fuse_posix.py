"""The FUSE mount behaves like a local file system for ordinary system calls."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fuse_fixtures import Mount, mnt, mount_factory, needs_fuse, shared_mnt  # noqa: F401

pytestmark = [pytest.mark.fuse, needs_fuse]

_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2


def renameat2(src: Path, dst: Path, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def run(*cmd: str, cwd: Path | None = None, env: dict | None = None, check: bool = True,
        **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True,
                         env=None if env is None else {**os.environ, **env}, **kw)
    if check and res.returncode != 0:
        raise AssertionError(f"{cmd} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def test_files_directories_and_links(mnt: Mount) -> None:
    d = mnt / "dir"
    d.mkdir()
    (d / "a").write_bytes(b"hello")
    assert (d / "a").read_bytes() == b"hello"
    assert sorted(os.listdir(d)) == ["a"]
    os.symlink("a", d / "ln")
    assert os.readlink(d / "ln") == "a"
    assert (d / "ln").read_bytes() == b"hello"
    os.link(d / "a", d / "hard")
    assert os.stat(d / "a").st_nlink == 2
    assert os.stat(d / "hard").st_ino == os.stat(d / "a").st_ino
    os.rename(d / "a", d / "b")
    assert not (d / "a").exists() and (d / "b").read_bytes() == b"hello"
    os.chmod(d / "b", 0o640)
    assert stat.S_IMODE(os.stat(d / "b").st_mode) == 0o640
    os.chown(d / "b", 1234, 5678)
    st = os.stat(d / "b")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.truncate(d / "b", 2)
    assert (d / "b").read_bytes() == b"he"
    os.mkfifo(d / "fifo")
    assert stat.S_ISFIFO(os.lstat(d / "fifo").st_mode)
    with pytest.raises(OSError) as ei:
        os.rmdir(d)
    assert ei.value.errno == errno.ENOTEMPTY
    for n in ("b", "ln", "hard", "fifo"):
        os.unlink(d / n)
    os.rmdir(d)
    assert not d.exists()
    sv = os.statvfs(mnt.path)
    assert sv.f_namemax == 255 and sv.f_blocks > 0
    assert os.access(mnt.path, os.W_OK)


def test_rename_flags(mnt: Mount) -> None:
    a, b = mnt / "a", mnt / "b"
    a.write_text("A")
    b.write_text("B")
    with pytest.raises(OSError) as ei:
        renameat2(a, b, RENAME_NOREPLACE)
    assert ei.value.errno == errno.EEXIST
    renameat2(a, b, RENAME_EXCHANGE)
    assert a.read_text() == "B" and b.read_text() == "A"
    renameat2(a, mnt / "c", RENAME_NOREPLACE)
    assert (mnt / "c").read_text() == "B" and not a.exists()
    (mnt / "d1").mkdir()
    (mnt / "d1" / "f").write_text("in d1")
    renameat2(mnt / "d1", mnt / "c", RENAME_EXCHANGE)  # a directory and a file swap
    assert (mnt / "c" / "f").read_text() == "in d1" and (mnt / "d1").read_text() == "B"


def test_utimens_ns_now_and_omit(mnt: Mount) -> None:
    f = mnt / "t"
    f.write_text("x")
    os.utime(f, ns=(1_000_000_123, 2_000_000_456))
    st = os.stat(f)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 2_000_000_456)
    run("touch", "-m", str(f))  # UTIME_OMIT for atime
    st = os.stat(f)
    assert st.st_atime_ns == 1_000_000_123 and st.st_mtime_ns > 2_000_000_456
    run("touch", "-a", "-d", "@7", str(f))  # mtime omitted
    st2 = os.stat(f)
    assert st2.st_atime_ns == 7_000_000_000 and st2.st_mtime_ns == st.st_mtime_ns
    fd = os.open(f, os.O_RDONLY)
    try:
        os.utime(fd, ns=(9_000_000_001, 9_000_000_002))  # futimens: through the handle
    finally:
        os.close(fd)
    st = os.stat(f)
    assert (st.st_atime_ns, st.st_mtime_ns) == (9_000_000_001, 9_000_000_002)


def test_unlinked_open_file_keeps_working(mnt: Mount) -> None:
    f = mnt / "tmpfile"
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"before")
        os.unlink(f)
        assert not f.exists()
        os.write(fd, b" after")
        os.ftruncate(fd, 9)
        os.fchmod(fd, 0o600)
        st = os.fstat(fd)
        assert st.st_size == 9 and stat.S_IMODE(st.st_mode) == 0o600
        assert os.pread(fd, 100, 0) == b"before af"
        assert os.listdir(mnt.path) == []  # no .fuse_hidden* file ever shows
    finally:
        os.close(fd)
    assert os.listdir(mnt.path) == []


def test_sparse_files(mnt: Mount) -> None:
    small = mnt / "small"
    with open(small, "wb") as fh:
        fh.seek(30_000)
        fh.write(b"end")
    data = small.read_bytes()
    assert len(data) == 30_003 and data[:30_000] == bytes(30_000) and data[-3:] == b"end"
    big = mnt / "big"
    with open(big, "wb") as fh:
        fh.write(b"start")
        fh.seek(20 * 1024 * 1024)
        fh.write(b"end")
    assert big.stat().st_size == 20 * 1024 * 1024 + 3
    with open(big, "rb") as fh:
        assert fh.read(5) == b"start"
        fh.seek(10 * 1024 * 1024)
        assert fh.read(4096) == bytes(4096)
        fh.seek(20 * 1024 * 1024)
        assert fh.read() == b"end"
    os.truncate(big, 6)
    assert big.read_bytes() == b"start\0"


def test_parallel_reads_of_one_descriptor(mnt: Mount) -> None:
    """Reads of one open file from several threads at once reach the mount together (it
    serves them in parallel) and each gets its own bytes; then one sequential read of the
    whole file, which the kernel's read-ahead splits into parallel requests."""
    import random
    import threading

    data = os.urandom(5 * 4 * 1024 * 1024 + 12345)  # five chunks and a bit
    f = mnt / "par"
    f.write_bytes(data)
    errors: list[object] = []
    fd = os.open(f, os.O_RDONLY)
    try:
        def worker(seed: int) -> None:
            rnd = random.Random(seed)
            try:
                for _ in range(12):
                    off = rnd.randrange(0, len(data))
                    n = rnd.choice([4096, 131072, 1 << 20, (3 << 20) + 77])
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # ask the mount
                    got = os.pread(fd, n, off)
                    if got != data[off:off + n]:
                        errors.append((seed, off, n))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        pieces, pos = [], 0
        while True:
            piece = os.pread(fd, 1 << 20, pos)
            if not piece:
                break
            pieces.append(piece)
            pos += len(piece)
        assert b"".join(pieces) == data
    finally:
        os.close(fd)
    assert not errors


def test_fallocate(mnt: Mount) -> None:
    f = mnt / "fa"
    f.write_bytes(b"abc")
    fd = os.open(f, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, 10_000)
        assert os.fstat(fd).st_size == 10_000
        assert os.pread(fd, 3, 0) == b"abc"
    finally:
        os.close(fd)


def test_mmap_shared_write(mnt: Mount) -> None:
    f = mnt / "mm"
    f.write_bytes(bytes(16384))
    with open(f, "r+b") as fh:
        m = mmap.mmap(fh.fileno(), 16384)
        m[0:5] = b"hello"
        m[8192:8197] = b"world"
        m.flush()
        m.close()
    code = f"d=open({str(f)!r},'rb').read(); print(d[:5].decode(), d[8192:8197].decode())"
    assert run(sys.executable, "-c", code).stdout.split() == ["hello", "world"]
    with open(f, "rb") as fh:
        m = mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ)
        assert m[0:5] == b"hello"
        m.close()


def test_o_append_from_two_processes(mnt: Mount) -> None:
    f = mnt / "log"
    f.write_bytes(b"")
    code = textwrap.dedent(f"""
        import os, sys
        fd = os.open({str(f)!r}, os.O_WRONLY | os.O_APPEND)
        tag = sys.argv[1]
        for i in range(300):
            os.write(fd, f"{{tag}} {{i:05d}} {{'x' * 40}}\\n".encode())
        os.close(fd)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, t]) for t in ("A", "B")]
    assert [p.wait() for p in procs] == [0, 0]
    lines = f.read_text().splitlines()
    assert len(lines) == 600
    for tag in ("A", "B"):
        mine = [ln for ln in lines if ln.startswith(tag + " ")]
        assert [int(ln.split()[1]) for ln in mine] == list(range(300))
        assert all(ln.endswith("x" * 40) and len(ln) == 48 for ln in mine)


def test_xattrs_with_setfattr_getfattr(mnt: Mount) -> None:
    f = mnt / "x"
    f.write_text("x")
    run("setfattr", "-n", "user.tags", "-v", "cats,dogs", str(f))
    run("setfattr", "-n", "user.empty", str(f))
    out = run("getfattr", "-d", "--absolute-names", str(f)).stdout
    assert 'user.tags="cats,dogs"' in out and "user.empty" in out
    assert os.getxattr(f, "user.tags") == b"cats,dogs"
    run("setfattr", "-x", "user.tags", str(f))
    with pytest.raises(OSError) as ei:
        os.getxattr(f, "user.tags")
    assert ei.value.errno == errno.ENODATA
    assert os.listxattr(f) == ["user.empty"]


def test_locks_fcntl_and_flock(mnt: Mount) -> None:
    import fcntl

    f = mnt / "lockfile"
    f.write_text("")
    code = textwrap.dedent(f"""
        import fcntl, sys
        fh = open({str(f)!r}, "r+")
        kind = sys.argv[1]
        try:
            if kind == "flock":
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)
            print("got")
        except BlockingIOError:
            print("busy")
    """)
    with open(f, "r+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        assert run(sys.executable, "-c", code, "flock").stdout.strip() == "busy"
        fcntl.flock(fh, fcntl.LOCK_UN)
        assert run(sys.executable, "-c", code, "flock").stdout.strip() == "got"
        fcntl.lockf(fh, fcntl.LOCK_EX, 10, 0)
        assert run(sys.executable, "-c", code, "posix").stdout.strip() == "busy"
        fcntl.lockf(fh, fcntl.LOCK_UN, 10, 0)
        assert run(sys.executable, "-c", code, "posix").stdout.strip() == "got"


@pytest.mark.parametrize("kernel_checks", ["1", "0"])
def test_other_user_denied_by_mode_bits(mount_factory, kernel_checks: str) -> None:
    """With the kernel's default_permissions on, and off (then every refusal below comes
    from the namenode, through the caller's uid, gid and groups the mount sends)."""
    env = {**os.environ, "METAFS_FUSE_DEFAULT_PERMISSIONS": kernel_checks}
    mnt = mount_factory("--allow-other", public=True, env=env)
    grouped = mnt / "grouped"
    grouped.write_text("for group 4242")
    os.chown(grouped, 0, 4242)
    os.chmod(grouped, 0o640)
    private = mnt / "private"
    private.write_text("secret")
    os.chmod(private, 0o600)
    public = mnt / "public"
    public.write_text("hello")
    os.chmod(public, 0o644)
    closed = mnt / "closed"
    closed.mkdir(mode=0o700)
    (closed / "inner").write_text("inner")
    os.chmod(mnt.path, 0o755)
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    assert run(*nobody, "cat", str(public)).stdout == "hello"
    member = ["setpriv", "--reuid=65534", "--regid=65534", "--groups=4242"]
    assert run(*member, "cat", str(grouped)).stdout == "for group 4242"
    r = run(*nobody, "cat", str(grouped), check=False)
    assert r.returncode != 0 and "Permission denied" in r.stderr
    r = run(*nobody, "cat", str(private), check=False)
    assert r.returncode != 0 and "Permission denied" in r.stderr
    r = run(*nobody, "cat", str(closed / "inner"), check=False)
    assert r.returncode != 0 and "Permission denied" in r.stderr
    r = run(*nobody, "touch", str(mnt / "new-by-nobody"), check=False)
    assert r.returncode != 0 and "Permission denied" in r.stderr
    r = run(*nobody, "sh", "-c", f"echo x >> {public}", check=False)
    assert r.returncode != 0 and "Permission denied" in r.stderr
    # a directory the user may write: the new file is theirs
    shared = mnt / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o1777)
    run(*nobody, "sh", "-c", f"echo mine > {shared}/n.txt")
    st = os.stat(shared / "n.txt")
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    # sticky directory: others' files cannot be removed
    (shared / "roots").write_text("r")
    r = run(*nobody, "rm", "-f", str(shared / "roots"), check=False)
    assert r.returncode != 0 and (shared / "roots").exists()


def test_unlinked_file_open_for_reading_keeps_working(mnt: Mount) -> None:
    f = mnt / "readme"
    data = os.urandom(200_000)  # in blocks
    f.write_bytes(data)
    small = mnt / "small"
    small.write_bytes(b"small data")
    fds = [os.open(f, os.O_RDONLY), os.open(small, os.O_RDONLY)]
    try:
        os.unlink(f)
        os.unlink(small)
        assert os.listdir(mnt.path) == []
        assert os.pread(fds[0], len(data) + 10, 0) == data
        assert os.pread(fds[1], 100, 0) == b"small data"
        assert os.fstat(fds[0]).st_size == len(data)
    finally:
        for fd in fds:
            os.close(fd)


def test_descriptor_keeps_its_rights_after_chmod(shared_mnt: Mount) -> None:
    """Opens for writing on an embedded mount take no namenode handle; a descriptor
    must still write after its file is made read-only (and one made 0444 at creation
    must write too, as tar and git do)."""
    mnt = shared_mnt
    os.chmod(mnt.path, 0o777)
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    code = (
        "import os, sys\n"
        "d = sys.argv[1]\n"
        "fd = os.open(d + '/w', os.O_CREAT | os.O_WRONLY, 0o644)\n"
        "os.write(fd, b'one ')\n"
        "os.chmod(d + '/w', 0o444)\n"
        "os.write(fd, b'two')\n"
        "os.close(fd)\n"
        "fd = os.open(d + '/ro', os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o444)\n"
        "os.write(fd, b'made read-only')\n"
        "os.close(fd)\n"
        "try:\n"
        "    os.open(d + '/ro', os.O_WRONLY)\n"
        "    print('opened')\n"
        "except PermissionError:\n"
        "    print('denied')\n")
    r = run(*nobody, sys.executable, "-c", code, str(mnt.path))
    assert r.stdout.strip() == "denied"
    assert (mnt / "w").read_bytes() == b"one two"
    assert (mnt / "ro").read_bytes() == b"made read-only"
    assert os.stat(mnt / "ro").st_mode & 0o777 == 0o444
