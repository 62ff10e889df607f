"""The namespace contract: POSIX semantics through the client, over a metadata engine.

Subclass :class:`EngineTests` and provide an ``engine_settings`` fixture: settings whose
``db_url`` names a fresh, empty database on your engine (the engine is the one
:func:`~metafs.namenode.engine.engine_for` picks for that URL)::

    class TestMyEngine(EngineTests):
        @pytest.fixture
        def engine_settings(self, tmp_path):
            return load(overrides={"data_dir": str(tmp_path / "data"),
                                   "db_url": my_fresh_database_url()}, environ={})

Every test runs on both transports: in-process and gRPC over loopback.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any, Iterator

import pytest

from ..assembly import build_namenode, serve_grpc
from ..client import BulkFile, Client
from ..config import Settings
from ..namenode.server import GrpcServer
from .threads import run_threads

TRANSPORTS = ("local", "grpc")


def err(excinfo: pytest.ExceptionInfo[OSError]) -> int:
    return excinfo.value.errno  # type: ignore[return-value]


class ClientFactory:
    """A namenode (with a gRPC server on loopback) on ``settings``, and clients of it on
    ``transport`` ("local": in-process, "grpc"). Call it to make a client; keyword
    arguments go to :class:`~metafs.client.Client` (``uid``, ``gid``, ``groups``...)."""

    def __init__(self, settings: Settings, transport: str) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r} (use one of {TRANSPORTS})")
        self.settings = settings
        self.transport = transport
        self.namenode = build_namenode(settings)
        try:
            self.server: GrpcServer = serve_grpc(self.namenode, "127.0.0.1:0")
        except BaseException:
            self.namenode.close()
            raise
        self._clients: list[Client] = []

    def __call__(self, **kw: Any) -> Client:
        if self.transport == "local":
            from ..client.transport import LocalTransport

            c = Client(settings=self.settings, transport=LocalTransport(self.namenode), **kw)
        else:
            c = Client(settings=self.settings.with_(namenode=self.server.address), **kw)
        self._clients.append(c)
        return c

    def close(self) -> None:
        for c in self._clients:
            c.close()
        self.server.stop(0)
        self.namenode.close()

    def __enter__(self) -> "ClientFactory":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EngineTests:
    """POSIX namespace semantics on one engine, through the client on every transport.
    Subclasses provide the ``engine_settings`` fixture."""

    @pytest.fixture
    def engine_settings(self) -> Settings:
        raise NotImplementedError(
            f"{type(self).__name__} must provide an 'engine_settings' fixture")

    @pytest.fixture(params=TRANSPORTS)
    def fs_factory(self, request: pytest.FixtureRequest,
                   engine_settings: Settings) -> Iterator[ClientFactory]:
        with ClientFactory(engine_settings, request.param) as make:
            yield make

    @pytest.fixture
    def fs(self, fs_factory: ClientFactory) -> Client:
        return fs_factory()

    def test_mkdir_create_stat_read_write(self, fs: Client) -> None:
        fs.mkdir("/d", 0o750)
        st = fs.stat("/d")
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o750 & ~fs.umask
        assert st.st_nlink == 2
        with fs.open("/d/f.txt", "w") as f:
            f.write("hello world")
        assert fs.read_bytes("/d/f.txt") == b"hello world"
        st = fs.stat("/d/f.txt")
        assert stat.S_ISREG(st.st_mode) and st.st_size == 11 and st.st_nlink == 1
        assert fs.listdir("/d") == ["f.txt"]
        assert fs.stat("/").st_nlink == 3


    def test_open_modes(self, fs: Client) -> None:
        fs.write_bytes("/f", b"0123456789")
        with fs.open("/f", "r+b") as f:
            f.seek(3)
            f.write(b"xy")
            f.seek(0)
            assert f.read() == b"012xy56789"
        with fs.open("/f", "ab") as f:
            f.write(b"END")
        assert fs.read_bytes("/f") == b"012xy56789END"
        with pytest.raises(FileExistsError):
            fs.open("/f", "xb")
        with fs.open("/f", "wb") as f:
            pass
        assert fs.stat("/f").st_size == 0
        with pytest.raises(FileNotFoundError):
            fs.open("/missing", "rb")
        with pytest.raises(IsADirectoryError):
            fs.open("/", "wb")


    def test_sparse_write_and_truncate(self, fs: Client) -> None:
        with fs.open("/s", "wb") as f:
            f.seek(1000)
            f.write(b"x")
        data = fs.read_bytes("/s")
        assert len(data) == 1001 and data[:1000] == b"\0" * 1000 and data[-1:] == b"x"
        fs.truncate("/s", 10)
        assert fs.read_bytes("/s") == b"\0" * 10
        fs.truncate("/s", 20)
        assert fs.read_bytes("/s") == b"\0" * 20
        with pytest.raises(OSError) as e:
            fs.truncate("/s", -1)
        assert err(e) == errno.EINVAL


    def test_errors_map_to_oserror_subclasses(self, fs: Client) -> None:
        fs.mkdir("/d")
        fs.write_bytes("/d/f", b"x")
        with pytest.raises(FileNotFoundError) as e:
            fs.stat("/d/nope")
        assert e.value.filename == "/d/nope"
        with pytest.raises(FileExistsError):
            fs.mkdir("/d")
        with pytest.raises(NotADirectoryError):
            fs.stat("/d/f/x")
        with pytest.raises(NotADirectoryError):
            fs.mkdir("/d/f/x")
        with pytest.raises(IsADirectoryError):
            fs.remove("/d")
        with pytest.raises(NotADirectoryError):
            fs.rmdir("/d/f")
        with pytest.raises(OSError) as e:
            fs.rmdir("/d")
        assert err(e) == errno.ENOTEMPTY


    def test_rename_file_replaces_atomically(self, fs: Client) -> None:
        fs.write_bytes("/a", b"A")
        fs.write_bytes("/b", b"B")
        ino_a = fs.stat("/a").st_ino
        fs.rename("/a", "/b")
        assert not fs.exists("/a")
        assert fs.read_bytes("/b") == b"A" and fs.stat("/b").st_ino == ino_a


    def test_rename_directory_rules(self, fs: Client) -> None:
        fs.makedirs("/x/y/z")
        fs.mkdir("/empty")
        fs.mkdir("/full")
        fs.write_bytes("/full/f", b"")
        fs.write_bytes("/file", b"")
        with pytest.raises(OSError) as e:
            fs.rename("/x", "/x/y/z/w")
        assert err(e) == errno.EINVAL
        with pytest.raises(OSError) as e:
            fs.rename("/x", "/x/y")
        assert err(e) in (errno.EINVAL, errno.ENOTEMPTY)
        with pytest.raises(OSError) as e:
            fs.rename("/x", "/full")
        assert err(e) == errno.ENOTEMPTY
        with pytest.raises(NotADirectoryError):
            fs.rename("/x", "/file")
        with pytest.raises(IsADirectoryError):
            fs.rename("/file", "/empty")
        root_links = fs.stat("/").st_nlink
        fs.rename("/x", "/empty")  # replaces an empty directory
        assert fs.isdir("/empty/y/z") and not fs.exists("/x")
        assert fs.stat("/").st_nlink == root_links - 1
        fs.rename("/empty/y", "/full/y")
        assert fs.stat("/full").st_nlink == 3 and fs.stat("/empty").st_nlink == 2


    def test_rename_noreplace_and_exchange(self, fs: Client) -> None:
        fs.write_bytes("/a", b"A")
        fs.write_bytes("/b", b"B")
        with pytest.raises(FileExistsError):
            fs.rename("/a", "/b", noreplace=True)
        fs.rename("/a", "/c", noreplace=True)
        fs.rename("/c", "/b", exchange=True)
        assert fs.read_bytes("/b") == b"A" and fs.read_bytes("/c") == b"B"
        with pytest.raises(FileNotFoundError):
            fs.rename("/b", "/nope", exchange=True)
        fs.makedirs("/d1/sub")
        fs.rename("/d1", "/b", exchange=True)  # a directory and a file swap places
        assert fs.isdir("/b/sub") and fs.read_bytes("/d1") == b"A"
        with pytest.raises(OSError) as e:
            fs.rename("/b", "/b/sub", exchange=True)
        assert err(e) == errno.EINVAL


    def test_rename_same_inode_is_noop(self, fs: Client) -> None:
        fs.write_bytes("/a", b"A")
        fs.link("/a", "/b")
        fs.rename("/a", "/b")
        assert fs.exists("/a") and fs.exists("/b") and fs.stat("/a").st_nlink == 2


    def test_hard_links(self, fs: Client) -> None:
        fs.write_bytes("/a", b"data")
        fs.mkdir("/d")
        fs.link("/a", "/d/b")
        assert fs.stat("/a").st_nlink == 2 and fs.stat("/a").st_ino == fs.stat("/d/b").st_ino
        fs.remove("/a")
        assert fs.read_bytes("/d/b") == b"data" and fs.stat("/d/b").st_nlink == 1
        with pytest.raises(PermissionError):
            fs.link("/d", "/d2")
        with pytest.raises(FileExistsError):
            fs.link("/d/b", "/d/b")


    def test_symlinks(self, fs: Client) -> None:
        fs.makedirs("/real/dir")
        fs.write_bytes("/real/dir/f", b"content")
        fs.symlink("/real/dir", "/abs")
        fs.symlink("real/dir/f", "/rel")
        fs.symlink("../dir/f", "/real/dir/up")
        assert fs.read_bytes("/abs/f") == b"content"
        assert fs.read_bytes("/rel") == b"content"
        assert fs.read_bytes("/real/dir/up") == b"content"
        assert fs.readlink("/rel") == "real/dir/f"
        assert stat.S_ISLNK(fs.lstat("/rel").st_mode) and fs.lstat("/rel").st_size == 10
        assert stat.S_ISREG(fs.stat("/rel").st_mode)
        fs.symlink("/loop2", "/loop1")
        fs.symlink("/loop1", "/loop2")
        with pytest.raises(OSError) as e:
            fs.stat("/loop1")
        assert err(e) == errno.ELOOP
        fs.symlink("/nowhere", "/dangling")
        with pytest.raises(FileNotFoundError):
            fs.stat("/dangling")
        with pytest.raises(OSError) as e:
            fs.readlink("/real")
        assert err(e) == errno.EINVAL
        fs.remove("/abs")  # removes the link, not the directory
        assert fs.isdir("/real/dir")


    def test_symlink_chain_of_40_resolves_41_fails(self, fs: Client) -> None:
        fs.write_bytes("/t", b"end")
        prev = "/t"
        for i in range(41):
            fs.symlink(prev, f"/l{i}")
            prev = f"/l{i}"
        assert fs.read_bytes("/l39") == b"end"  # 40 links followed
        with pytest.raises(OSError) as e:
            fs.stat("/l40")
        assert err(e) == errno.ELOOP


    def test_xattrs(self, fs: Client) -> None:
        fs.write_bytes("/f", b"")
        fs.setxattr("/f", "user.tags", b'{"bicycles": 4}')
        assert fs.getxattr("/f", "user.tags") == b'{"bicycles": 4}'
        assert fs.listxattr("/f") == ["user.tags"]
        with pytest.raises(FileExistsError):
            fs.setxattr("/f", "user.tags", b"x", os.XATTR_CREATE)
        with pytest.raises(OSError) as e:
            fs.setxattr("/f", "user.other", b"x", os.XATTR_REPLACE)
        assert err(e) == errno.ENODATA
        with pytest.raises(OSError) as e:
            fs.getxattr("/f", "user.missing")
        assert err(e) == errno.ENODATA
        with pytest.raises(OSError) as e:
            fs.setxattr("/f", "user.big", b"x" * (64 * 1024 + 1))
        assert err(e) == errno.E2BIG
        fs.setxattr("/f", "user.max", b"x" * (64 * 1024))
        with pytest.raises(OSError) as e:
            fs.setxattr("/f", "user." + "n" * 300, b"x")
        assert err(e) == errno.ERANGE
        with pytest.raises(OSError) as e:
            fs.setxattr("/f", "nonamespace", b"x")
        assert err(e) == errno.EOPNOTSUPP
        fs.removexattr("/f", "user.tags")
        with pytest.raises(OSError) as e:
            fs.removexattr("/f", "user.tags")
        assert err(e) == errno.ENODATA
        assert fs.listxattr("/f") == ["user.max"]


    def test_chmod_chown_utime(self, fs: Client) -> None:
        fs.write_bytes("/f", b"")
        fs.chmod("/f", 0o4755)
        assert stat.S_IMODE(fs.stat("/f").st_mode) == 0o4755
        fs.chown("/f", 1000, 1000)
        st = fs.stat("/f")
        assert (st.st_uid, st.st_gid) == (1000, 1000)
        assert not st.st_mode & stat.S_ISUID  # chown clears set-user-id
        fs.utime("/f", ns=(1_000_000_123, 2_000_000_456))
        st = fs.stat("/f")
        assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 2_000_000_456)
        from ..client.client import UTIME_NOW, UTIME_OMIT

        fs.utime("/f", ns=(UTIME_OMIT, UTIME_NOW))
        st = fs.stat("/f")
        assert st.st_atime_ns == 1_000_000_123 and st.st_mtime_ns > 2_000_000_456


    def test_readdir_paging(self, fs: Client) -> None:
        fs.mkdir("/big")
        names = [f"f{i:05d}" for i in range(2345)]
        fs.bulk_create("/big", [BulkFile(n, b"") for n in names])
        got = [e.name for e in fs.scandir("/big", page=100)]
        assert got == sorted(names)
        entries = list(fs.scandir("/big", page=1000))
        assert all(e.is_file() and e.stat().st_size == 0 for e in entries[:5])


    def test_bulk_create_all_or_nothing(self, fs: Client) -> None:
        fs.mkdir("/ds")
        inos = fs.bulk_create("/ds", [
            BulkFile("train/a.jpg", b"A" * 100, xattrs={"user.tags": b'{"bicycles": 2}'}),
            BulkFile("train/b.jpg", b"B" * 200),
            BulkFile("val/c.jpg", b"C"),
        ])
        assert len(inos) == 3 and len(set(inos)) == 3
        assert fs.read_bytes("/ds/train/b.jpg") == b"B" * 200
        assert fs.getxattr("/ds/train/a.jpg", "user.tags") == b'{"bicycles": 2}'
        assert fs.stat("/ds").st_nlink == 4
        head = fs.changelog_head()
        with pytest.raises(FileExistsError):
            fs.bulk_create("/ds", [BulkFile("new.jpg", b"n"), BulkFile("train/a.jpg", b"dup")])
        assert not fs.exists("/ds/new.jpg")
        assert fs.changelog_head() == head


    def test_bulk_create_restores_the_garbage_collector(self, fs: Client) -> None:
        """A bulk call pauses Python's cyclic collector while it runs (in the namenode's
        process) and leaves it as it found it, after a success, a failure, or overlapping
        calls from several threads; a collector the program turned off stays off."""
        import gc

        fs.mkdir("/gc")
        assert gc.isenabled()
        fs.bulk_create("/gc", [BulkFile(f"a/{i}", b"x") for i in range(50)])
        assert gc.isenabled()
        with pytest.raises(FileExistsError):
            fs.bulk_create("/gc", [BulkFile("a/0", b"dup")])
        assert gc.isenabled()

        def many(k: int) -> None:
            for j in range(5):
                fs.bulk_create("/gc", [BulkFile(f"t{k}/{j}/{i}", b"y") for i in range(200)])

        run_threads(4, many)
        assert gc.isenabled()
        assert len(fs.listdir("/gc/t3/4")) == 200
        gc.disable()
        try:
            fs.bulk_create("/gc", [BulkFile("off/1", b"z")])
            assert not gc.isenabled()
        finally:
            gc.enable()


    def test_unlinked_open_file_keeps_data(self, fs: Client) -> None:
        fs.write_bytes("/f", b"precious")
        f = fs.open("/f", "r+b")
        fs.remove("/f")
        assert not fs.exists("/f")
        assert f.read() == b"precious"
        f.write(b"!")
        f.flush()
        f.seek(0)
        assert f.read() == b"precious!"
        ino = f.raw.ino
        f.close()
        recs, _ = fs.changelog(0, 10_000)
        assert any(r.op == 13 and r.ino == ino for r in recs)  # OP_FREE after the last close


    def test_statfs(self, fs: Client) -> None:
        fs.write_bytes("/f", b"x" * 1000)
        st = fs.statvfs()
        assert st.namemax == 255 and st.used_inodes >= 2 and st.bsize == 4096


    def test_changelog_records_every_change_in_order(self, fs: Client) -> None:
        start = fs.changelog_head()
        fs.mkdir("/d")
        fs.write_bytes("/d/f", b"x")
        fs.rename("/d/f", "/d/g")
        fs.setxattr("/d/g", "user.k", b"v")
        fs.remove("/d/g")
        fs.rmdir("/d")
        recs, head = fs.changelog(start, 1000)
        ops = [r.op for r in recs]
        # mkdir, create, write, rename, setxattr, unlink, free, rmdir, free
        assert ops == [2, 1, 10, 8, 11, 6, 13, 7, 13]
        assert [r.seq for r in recs] == list(range(start + 1, head + 1))
        ren = recs[3]
        assert (ren.old_name, ren.name) == ("f", "g")
        assert recs[4].xattr_name == "user.k" and recs[4].xattr_value == b"v"
        assert all(r.uid == fs.caller.uid and r.client_id == fs.client_id for r in recs[:6])


    def test_two_clients_see_each_other(self, fs_factory: ClientFactory) -> None:
        a, b = fs_factory(), fs_factory()
        a.write_bytes("/shared", b"from a")
        assert b.read_bytes("/shared") == b"from a"
        b.rename("/shared", "/moved")
        assert a.read_bytes("/moved") == b"from a"


    def test_mknod_fifo_socket_and_devices(self, fs_factory: ClientFactory) -> None:
        root = fs_factory(uid=0, gid=0, groups=[])
        root.umask = 0o022
        root.mkdir("/n", 0o777)
        root.chmod("/n", 0o777)
        root.mknod("/n/fifo")  # os.mknod's default: a FIFO, 0o600
        st = root.stat("/n/fifo")
        assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_rdev == 0 and st.st_size == 0 and st.st_nlink == 1
        root.mknod("/n/sock", stat.S_IFSOCK | 0o777, device=os.makedev(1, 2))
        st = root.lstat("/n/sock")
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o755  # umask
        assert st.st_rdev == 0  # only devices have a device number
        root.mknod("/n/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        st = root.stat("/n/null")
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
        assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)
        root.mknod("/n/sda", stat.S_IFBLK | 0o660, os.makedev(8, 0))
        st = root.stat("/n/sda")
        assert stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(8, 0)
        root.mknod("/n/plain", 0o644)  # no type bits: a regular file, as Linux
        assert stat.S_ISREG(root.stat("/n/plain").st_mode)
        entries = {e.name: e for e in root.scandir("/n")}
        assert not entries["fifo"].is_file() and not entries["fifo"].is_dir()
        with pytest.raises(FileExistsError):
            root.mknod("/n/fifo")
        for bad in (stat.S_IFDIR | 0o755, stat.S_IFLNK | 0o777):
            with pytest.raises(OSError) as e:
                root.mknod("/n/bad", bad)
            assert err(e) == errno.EINVAL
        # a user makes FIFOs and sockets, but devices are root's
        user = fs_factory(uid=1000, gid=1000, groups=[])
        user.mknod("/n/ufifo", stat.S_IFIFO | 0o640)
        st = user.stat("/n/ufifo")
        assert stat.S_ISFIFO(st.st_mode) and (st.st_uid, st.st_gid) == (1000, 1000)
        user.mknod("/n/usock", stat.S_IFSOCK | 0o600)
        for kind in (stat.S_IFCHR, stat.S_IFBLK):
            with pytest.raises(PermissionError) as e:
                user.mknod("/n/udev", kind | 0o600, os.makedev(1, 3))
            assert err(e) == errno.EPERM
        assert not root.exists("/n/udev") and not root.exists("/n/bad")
