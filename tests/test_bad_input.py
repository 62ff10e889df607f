"""Bad input gets the right errno and changes nothing (invariant 7).

Every case runs through the client (in-process and over gRPC) or as a raw request through
the gRPC stub, and checks that the changelog head and the whole tree are what they were.
An unexpected server error reaches the client as EIO with the namenode logging it, never as
a traceback.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc
import pytest
from grpc_status import rpc_status

from metafs.assembly import build_namenode, serve_grpc
from metafs.client import Client
from metafs.client.transport import LocalTransport
from metafs.config import Settings
from metafs.errors import FsError
from metafs.proto import metafs_pb2 as pb
from metafs.proto import metafs_pb2_grpc as pb_grpc

ROOT = pb.Caller(uid=0, gid=0, client_id="bad-input-test")


@pytest.fixture
def server(settings: Settings) -> Iterator[Any]:
    nn = build_namenode(settings, background=False)
    srv = serve_grpc(nn, "127.0.0.1:0")
    try:
        yield nn, srv
    finally:
        srv.stop(0)
        nn.close()


@pytest.fixture(params=["local", "grpc"])
def fs(request: pytest.FixtureRequest, server: Any) -> Iterator[Client]:
    nn, srv = server
    if request.param == "local":
        c = Client(settings=nn.settings, transport=LocalTransport(nn), uid=0, gid=0, groups=[])
    else:
        c = Client(settings=nn.settings.with_(namenode=srv.address), uid=0, gid=0, groups=[])
    c.makedirs("/d/sub")
    c.write_bytes("/d/f", b"data")
    c.setxattr("/d/f", "user.k", b"v")
    c.symlink("/d/f", "/d/l")
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def stub(server: Any) -> Iterator[pb_grpc.NamenodeStub]:
    _, srv = server
    with grpc.insecure_channel(srv.address) as ch:
        stub = pb_grpc.NamenodeStub(ch)
        # handles live in a session: the raw caller opens its own, as a client does
        stub.OpenSession(pb.SessionRequest(caller=ROOT, client_id=ROOT.client_id), timeout=10)
        yield stub


def snapshot(fs: Client) -> tuple[int, list[Any]]:
    tree = []
    for top, dirs, files in fs.walk("/"):
        for n in sorted(dirs + files):
            p = os.path.join(top, n)
            s = fs.lstat(p)
            xa = {} if stat.S_ISLNK(s.st_mode) else {
                k: fs.getxattr(p, k) for k in fs.listxattr(p)}
            data = fs.read_bytes(p) if stat.S_ISREG(s.st_mode) else b""
            tree.append((p, s.st_ino, s.st_mode, s.st_nlink, s.st_size, s.st_uid, s.st_gid,
                         s.st_mtime_ns, s.st_ctime_ns, xa, data))
    return fs.changelog_head(), tree


@contextmanager
def unchanged(fs: Client) -> Iterator[None]:
    before = snapshot(fs)
    yield
    assert snapshot(fs) == before, "a rejected call changed the file system"


def fails(fs: Client, code: int | set[int], fn: Callable[[], Any]) -> None:
    """``fn`` fails with ``code`` (as an OSError) and changes nothing."""
    codes = {code} if isinstance(code, int) else code
    with unchanged(fs):
        with pytest.raises(OSError) as info:
            fn()
    got = info.value.errno
    assert got in codes, f"errno {errno.errorcode.get(got, got)}, expected " \
                         f"{[errno.errorcode[c] for c in codes]}"
    assert "Traceback" not in str(info.value)


def raw_errno(stub: pb_grpc.NamenodeStub, method: str, req: Any) -> int:
    """Call a method with a raw request; the errno of the structured status it fails with."""
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, method)(req, timeout=10)
    status = rpc_status.from_call(info.value)  # type: ignore[arg-type]
    assert status is not None, f"{method}: no structured status ({info.value.details()})"
    for d in status.details:
        if d.Is(pb.ErrorDetail.DESCRIPTOR):
            e = pb.ErrorDetail()
            d.Unpack(e)
            assert "Traceback" not in e.message
            return e.errno
    raise AssertionError(f"{method}: status without ErrorDetail")


# ---------------------------------------------------------------------- names and paths
@pytest.mark.parametrize("name", ["a\0b", "\0"])
def test_nul_in_names(fs: Client, name: str) -> None:
    fails(fs, errno.EINVAL, lambda: fs.mkdir("/d/" + name))
    fails(fs, errno.EINVAL, lambda: fs.open("/d/" + name, "wb"))
    fails(fs, errno.EINVAL, lambda: fs.symlink("x", "/d/" + name))
    fails(fs, errno.EINVAL, lambda: fs.rename("/d/f", "/d/" + name))
    fails(fs, errno.EINVAL, lambda: fs.link("/d/f", "/d/" + name))
    fails(fs, errno.EINVAL, lambda: fs.stat("/d/" + name))
    fails(fs, errno.EINVAL, lambda: fs.symlink("x\0y", "/d/ok"))


def test_slash_and_nul_in_raw_names(fs: Client, stub: pb_grpc.NamenodeStub) -> None:
    d = fs.stat("/d").st_ino
    f = fs.stat("/d/f").st_ino
    with unchanged(fs):
        for name in ("a/b", "/", "a\0", "x/../y"):
            assert raw_errno(stub, "Mkdir", pb.MkdirRequest(
                caller=ROOT, parent=d, name=name, mode=0o755)) == errno.EINVAL
            assert raw_errno(stub, "Create", pb.CreateRequest(
                caller=ROOT, parent=d, name=name, mode=0o644)) == errno.EINVAL
            assert raw_errno(stub, "Symlink", pb.SymlinkRequest(
                caller=ROOT, parent=d, name=name, target="t")) == errno.EINVAL
            assert raw_errno(stub, "Link", pb.LinkRequest(
                caller=ROOT, ino=f, new_parent=d, new_name=name)) == errno.EINVAL
            assert raw_errno(stub, "Rename", pb.RenameRequest(
                caller=ROOT, src_parent=d, src_name="f", dst_parent=d, dst_name=name)
            ) == errno.EINVAL
            assert raw_errno(stub, "Lookup", pb.LookupRequest(
                caller=ROOT, parent=d, name=name)) == errno.EINVAL
        # an empty name names nothing
        assert raw_errno(stub, "Mkdir", pb.MkdirRequest(caller=ROOT, parent=d, name="",
                                                          mode=0o755)) == errno.ENOENT


def test_dot_names_as_new_names(fs: Client, stub: pb_grpc.NamenodeStub) -> None:
    # As Linux: '.' and '..' always exist.
    for n in (".", ".."):
        fails(fs, errno.EEXIST, lambda: fs.mkdir(f"/d/{n}"))
        fails(fs, errno.EEXIST, lambda: fs.symlink("x", f"/d/{n}"))
        fails(fs, errno.EEXIST, lambda: fs.link("/d/f", f"/d/{n}"))
        fails(fs, errno.EEXIST, lambda: fs.open(f"/d/{n}", "xb"))
        fails(fs, errno.EISDIR, lambda: fs.open(f"/d/{n}", "wb"))
        fails(fs, errno.EBUSY, lambda: fs.rename("/d/f", f"/d/{n}"))
        fails(fs, errno.EBUSY, lambda: fs.rename(f"/d/sub/{n}", "/d/x"))
        fails(fs, errno.EEXIST, lambda: fs.rename("/d/f", f"/d/{n}", noreplace=True))
    fails(fs, errno.EISDIR, lambda: fs.unlink("/d/."))
    fails(fs, errno.EINVAL, lambda: fs.rmdir("/d/sub/."))
    fails(fs, errno.ENOTEMPTY, lambda: fs.rmdir("/d/sub/.."))
    d = fs.stat("/d").st_ino
    with unchanged(fs):
        assert raw_errno(stub, "Mkdir", pb.MkdirRequest(
            caller=ROOT, parent=d, name="..", mode=0o755)) == errno.EEXIST


def test_trailing_slash_names_a_directory(fs: Client, stub: pb_grpc.NamenodeStub) -> None:
    """As POSIX: "path/" resolves only to a directory; a final symlink is followed first
    (also by lstat), as is one whose target ends in '/'."""
    fs.symlink("/d/sub", "/d/dirlink")
    fs.symlink("/d/f/", "/d/slashlink")  # a target with a trailing slash, onto a file
    fs.symlink("/d/sub/", "/d/slashdir")
    fs.symlink("/nowhere", "/d/dangling")
    for path in ("/d/f/", "/d/f//", "/d/l/", "/d/slashlink", "/d/slashlink/", "/d/f/."):
        fails(fs, errno.ENOTDIR, lambda: fs.stat(path))
        fails(fs, errno.ENOTDIR, lambda: fs.read_bytes(path))
        if path != "/d/slashlink":  # lstat of the link itself follows nothing
            fails(fs, errno.ENOTDIR, lambda: fs.lstat(path))
    fails(fs, errno.ENOENT, lambda: fs.stat("/d/dangling/"))
    fails(fs, errno.ENOENT, lambda: fs.stat("/d/missing/"))
    with unchanged(fs):
        sub = fs.stat("/d/sub").st_ino
        for path in ("/d/sub/", "/d/sub//", "/d/dirlink/", "/d/slashdir", "/d/slashdir/",
                     "/d/./sub/", "/d/sub/../sub/"):
            assert fs.stat(path).st_ino == sub, path
        # a trailing slash follows the final link even without following
        assert fs.lstat("/d/dirlink/").st_ino == sub
        assert stat.S_ISLNK(fs.lstat("/d/dirlink").st_mode)
        assert stat.S_ISLNK(fs.lstat("/d/slashlink").st_mode)
        assert fs.stat("/").st_ino == fs.stat("//").st_ino == 1
        # the same through a raw Resolve
        assert raw_errno(stub, "Resolve", pb.ResolveRequest(caller=ROOT, path="/d/f/",
                                                            follow=False)) == errno.ENOTDIR
        assert stub.Resolve(pb.ResolveRequest(caller=ROOT, path="/d/dirlink/", follow=False),
                            timeout=10).ino == sub


def test_name_too_long(fs: Client) -> None:
    long = "x" * 256
    wide = "é" * 128  # 256 bytes in UTF-8
    assert len(wide.encode()) == 256
    fs.mkdir("/d/" + "y" * 255)  # the limit itself is fine
    for n in (long, wide):
        fails(fs, errno.ENAMETOOLONG, lambda: fs.mkdir("/d/" + n))
        fails(fs, errno.ENAMETOOLONG, lambda: fs.open("/d/" + n, "wb"))
        fails(fs, errno.ENAMETOOLONG, lambda: fs.symlink("t", "/d/" + n))
        fails(fs, errno.ENAMETOOLONG, lambda: fs.rename("/d/f", "/d/" + n))
        fails(fs, errno.ENAMETOOLONG, lambda: fs.link("/d/f", "/d/" + n))
        fails(fs, errno.ENAMETOOLONG, lambda: fs.stat("/d/" + n))
        fails(fs, errno.ENAMETOOLONG, lambda: fs.stat("/d/" + n + "/x"))


def test_path_too_long(fs: Client) -> None:
    deep = "/d" + "/." * 2100  # resolves fine component by component, but is > 4096 bytes
    assert len(deep) > 4096
    fails(fs, errno.ENAMETOOLONG, lambda: fs.stat(deep))
    fails(fs, errno.ENAMETOOLONG, lambda: fs.mkdir(deep + "/new"))
    fails(fs, errno.ENAMETOOLONG, lambda: fs.symlink("a/" * 2048, "/d/link"))
    # 4095 bytes is the longest target
    fs.symlink("a/" * 2047 + "a", "/d/longlink")
    assert len(fs.readlink("/d/longlink")) == 4095


def test_surrogate_names(fs: Client) -> None:
    # os.fsdecode of a non-UTF-8 byte gives a lone surrogate; metafs names are UTF-8
    bad = b"caf\xe9".decode("utf-8", "surrogateescape")
    fails(fs, {errno.EILSEQ, errno.EINVAL}, lambda: fs.mkdir("/d/" + bad))
    fails(fs, {errno.EILSEQ, errno.EINVAL}, lambda: fs.open("/d/" + bad, "wb"))
    fails(fs, {errno.EILSEQ, errno.EINVAL}, lambda: fs.stat("/d/" + bad))
    fails(fs, {errno.EILSEQ, errno.EINVAL}, lambda: fs.rename("/d/f", "/d/" + bad))
    fails(fs, {errno.EILSEQ, errno.EINVAL}, lambda: fs.symlink(bad, "/d/ok"))


def test_surrogate_names_in_process(server: Any) -> None:
    """Straight to the namespace (no protobuf encoding on the way): still a clean error."""
    nn, _ = server
    from metafs.posix import ROOT as R

    bad = "\udce9x"
    for call in (lambda: nn.ns.mkdir(R, 1, bad, 0o755), lambda: nn.ns.lookup(R, 1, bad),
                 lambda: nn.ns.resolve(R, "/" + bad), lambda: nn.ns.symlink(R, 1, "s", bad),
                 lambda: nn.ns.rename(R, 1, "nope", 1, bad)):
        before = nn.ns.changelog_head()
        with pytest.raises(FsError) as info:
            call()
        assert info.value.errno in (errno.EILSEQ, errno.EINVAL, errno.ENOENT)
        assert nn.ns.changelog_head() == before


# ---------------------------------------------------------------------- xattrs
def test_xattr_limits(fs: Client) -> None:
    limit = fs.settings.max_xattr_size
    fs.setxattr("/d/f", "user.big", b"x" * limit)  # the limit itself is fine
    fails(fs, errno.E2BIG, lambda: fs.setxattr("/d/f", "user.k", b"x" * (limit + 1)))
    fails(fs, errno.ERANGE, lambda: fs.setxattr("/d/f", "user." + "n" * 251, b"v"))
    fails(fs, errno.ERANGE, lambda: fs.getxattr("/d/f", "user." + "n" * 251))
    fails(fs, errno.ERANGE, lambda: fs.removexattr("/d/f", "user." + "n" * 251))
    fs.setxattr("/d/f", "user." + "n" * 250, b"v")  # 255 bytes is fine
    for flags in (3, 4, 0x80000000, 0xFFFFFFFF):
        fails(fs, errno.EINVAL, lambda: fs.setxattr("/d/f", "user.k", b"v", flags))
    fails(fs, errno.EEXIST, lambda: fs.setxattr("/d/f", "user.k", b"v", 1))
    fails(fs, errno.ENODATA, lambda: fs.setxattr("/d/f", "user.none", b"v", 2))
    fails(fs, errno.ENODATA, lambda: fs.getxattr("/d/f", "user.none"))
    fails(fs, errno.ENODATA, lambda: fs.removexattr("/d/f", "user.none"))
    fails(fs, errno.EOPNOTSUPP, lambda: fs.setxattr("/d/f", "nonamespace", b"v"))
    fails(fs, errno.EOPNOTSUPP, lambda: fs.setxattr("/d/f", "system.posix_acl_access", b"v"))
    fails(fs, {errno.EINVAL, errno.ERANGE}, lambda: fs.setxattr("/d/f", "", b"v"))
    fails(fs, errno.EINVAL, lambda: fs.setxattr("/d/f", "user.a\0b", b"v"))


def test_getxattr_small_buffer(fs: Client, stub: pb_grpc.NamenodeStub) -> None:
    f = fs.stat("/d/f").st_ino
    # size 0 asks for the size only; a buffer too small is ERANGE
    r = stub.GetXattr(pb.GetXattrRequest(caller=ROOT, ino=f, name="user.k", size=0))
    assert r.size == 1
    fs.setxattr("/d/f", "user.k", b"0123456789")
    assert raw_errno(stub, "GetXattr", pb.GetXattrRequest(
        caller=ROOT, ino=f, name="user.k", size=4)) == errno.ERANGE


# ---------------------------------------------------------------------- sizes, offsets, flags
def test_negative_sizes_and_offsets(fs: Client, stub: pb_grpc.NamenodeStub) -> None:
    f = fs.stat("/d/f").st_ino
    fails(fs, errno.EINVAL, lambda: fs.truncate("/d/f", -1))
    with unchanged(fs):
        for off, size in ((-1, 10), (0, -1), (-(2**63), 1)):
            assert raw_errno(stub, "Read", pb.ReadRequest(
                caller=ROOT, ino=f, offset=off, size=size)) == errno.EINVAL
        for off in (-1, -(2**63)):
            assert raw_errno(stub, "Write", pb.WriteRequest(
                caller=ROOT, ino=f, offset=off, data=b"x")) == errno.EINVAL
    with fs.open("/d/f", "r+b") as fh:
        with pytest.raises((OSError, ValueError)):
            fh.seek(-1)


def test_huge_sizes_and_offsets(fs: Client, stub: pb_grpc.NamenodeStub) -> None:
    """Sizes past what any file may hold are refused cleanly (EFBIG/EINVAL), not EIO."""
    f = fs.stat("/d/f").st_ino
    with unchanged(fs):
        for size in (2**63, 2**64 - 1):
            e = raw_errno(stub, "SetAttr", pb.SetAttrRequest(caller=ROOT, ino=f, size=size))
            assert e in (errno.EFBIG, errno.EINVAL), errno.errorcode[e]
        e = raw_errno(stub, "Write", pb.WriteRequest(caller=ROOT, ino=f, offset=2**63 - 1,
                                                    data=b"xy"))
        assert e in (errno.EFBIG, errno.EINVAL), errno.errorcode[e]


def test_bad_flags_and_enums(fs: Client, stub: pb_grpc.NamenodeStub) -> None:
    d, f = fs.stat("/d").st_ino, fs.stat("/d/f").st_ino
    with unchanged(fs):
        for flags in (4, 3, 0x80, 0xFFFFFFFF):
            assert raw_errno(stub, "Rename", pb.RenameRequest(
                caller=ROOT, src_parent=d, src_name="f", dst_parent=d, dst_name="g",
                flags=flags)) == errno.EINVAL
        for how in (3, 99, -1):
            assert raw_errno(stub, "SetAttr", pb.SetAttrRequest(
                caller=ROOT, ino=f, atime_how=how)) == errno.EINVAL
            assert raw_errno(stub, "SetAttr", pb.SetAttrRequest(
                caller=ROOT, ino=f, mtime_how=how, mtime_ns=5)) == errno.EINVAL
        assert raw_errno(stub, "Access", pb.AccessRequest(caller=ROOT, ino=f, mask=8)
                         ) == errno.EINVAL
        assert raw_errno(stub, "Open", pb.OpenRequest(caller=ROOT, ino=f, flags=3)
                         ) == errno.EINVAL
        # Create makes files, FIFOs, sockets and devices; not directories or links
        for mode in (stat.S_IFDIR | 0o755, stat.S_IFLNK | 0o777, 0o170000 | 0o644):
            assert raw_errno(stub, "Create", pb.CreateRequest(
                caller=ROOT, parent=d, name="n", mode=mode)) == errno.EINVAL
        # mode bits past 0o7777 in mkdir/chmod are not types
        assert raw_errno(stub, "Mkdir", pb.MkdirRequest(caller=ROOT, parent=f, name="n",
                                                          mode=0o755)) == errno.ENOTDIR
    # chmod of mode with type bits: only the permission bits are taken
    fs.chmod("/d/f", stat.S_IFDIR | 0o600)
    assert fs.lstat("/d/f").st_mode == stat.S_IFREG | 0o600


def test_unknown_inodes_and_handles(fs: Client, stub: pb_grpc.NamenodeStub) -> None:
    with unchanged(fs):
        for ino in (0, 2**40, 2**64 - 1):
            assert raw_errno(stub, "GetAttr", pb.InodeRequest(caller=ROOT, ino=ino)
                             ) == errno.ENOENT
            assert raw_errno(stub, "Mkdir", pb.MkdirRequest(caller=ROOT, parent=ino, name="x",
                                                              mode=0o755)) == errno.ENOENT
            assert raw_errno(stub, "SetXattr", pb.SetXattrRequest(
                caller=ROOT, ino=ino, name="user.x", value=b"v")) == errno.ENOENT
        assert raw_errno(stub, "Release", pb.ReleaseRequest(caller=ROOT, handle=987654)
                         ) == errno.EBADF
        f = fs.stat("/d/f").st_ino
        assert raw_errno(stub, "Write", pb.WriteRequest(caller=ROOT, ino=f, data=b"x",
                                                        handle=987654)) == errno.EBADF


def test_paths_in_open_create_and_release(fs: Client, stub: pb_grpc.NamenodeStub) -> None:
    """Open and Create by path, and a Release carrying a last write: bad combinations and
    bad paths get clear errors and change nothing."""
    f = fs.stat("/d/f").st_ino
    with unchanged(fs):
        assert raw_errno(stub, "Create", pb.CreateRequest(
            caller=ROOT, path="/d/new", parent=1, name="new", mode=0o100644)) == errno.EINVAL
        assert raw_errno(stub, "Open", pb.OpenRequest(caller=ROOT, path="/d/f", ino=f)
                         ) == errno.EINVAL
        assert raw_errno(stub, "Create", pb.CreateRequest(
            caller=ROOT, path="/d/f/x", mode=0o100644)) == errno.ENOTDIR
        assert raw_errno(stub, "Create", pb.CreateRequest(
            caller=ROOT, path="/nowhere/x", mode=0o100644)) == errno.ENOENT
        assert raw_errno(stub, "Create", pb.CreateRequest(
            caller=ROOT, path="/", mode=0o100644)) == errno.EEXIST
        assert raw_errno(stub, "Open", pb.OpenRequest(caller=ROOT, path="/d/missing",
                                                      read_inline=True)) == errno.ENOENT
        assert raw_errno(stub, "Open", pb.OpenRequest(caller=ROOT, path="/d/l\0",
                                                      read_inline=True)) == errno.EINVAL
    # a last write on another handle than the one released: refused, the handle stays
    h = stub.Open(pb.OpenRequest(caller=ROOT, path="/d/f", flags=os.O_WRONLY), timeout=10)
    with unchanged(fs):
        assert raw_errno(stub, "Release", pb.ReleaseRequest(
            caller=ROOT, handle=h.handle, write=pb.WriteRequest(
                ino=f, data=b"zz", handle=h.handle + 1))) == errno.EINVAL
    stub.Release(pb.ReleaseRequest(caller=ROOT, handle=h.handle), timeout=10)
    # a read-only open of an inline file gives its data and no handle; a write open does not
    r = stub.Open(pb.OpenRequest(caller=ROOT, path="/d/l", read_inline=True), timeout=10)
    assert (r.has_data, r.data, r.handle) == (True, b"data", 0)
    w = stub.Open(pb.OpenRequest(caller=ROOT, path="/d/f", flags=os.O_RDWR, read_inline=True),
                  timeout=10)
    assert not w.has_data and w.handle
    stub.Release(pb.ReleaseRequest(caller=ROOT, handle=w.handle), timeout=10)


def test_bulk_create_is_all_or_nothing(fs: Client) -> None:
    from metafs.client import BulkFile

    fails(fs, errno.EINVAL, lambda: fs.bulk_create("/d", [BulkFile("ok1", b"1"),
                                                          BulkFile("bad\0", b"2")]))
    fails(fs, errno.ENAMETOOLONG, lambda: fs.bulk_create("/d", [BulkFile("ok1", b"1"),
                                                                BulkFile("z" * 300)]))
    fails(fs, errno.EEXIST, lambda: fs.bulk_create("/d", [BulkFile("ok1", b"1"),
                                                          BulkFile("f", b"2")]))
    fails(fs, errno.E2BIG, lambda: fs.bulk_create("/d", [BulkFile(
        "ok1", b"1", xattrs={"user.x": b"x" * (fs.settings.max_xattr_size + 1)})]))


# ---------------------------------------------------------------------- malformed requests
def test_malformed_grpc_requests(server: Any, fs: Client) -> None:
    _, srv = server
    with grpc.insecure_channel(srv.address) as ch:
        for method in ("Mkdir", "Rename", "GetAttr", "SetXattr"):
            raw = ch.unary_unary(f"/metafs.v1.Namenode/{method}",
                                 request_serializer=lambda b: b,
                                 response_deserializer=lambda b: b)
            for body in (b"\xff\xff\xff", b"\x0a\x05ab", b"\x1a\x02\xff\xfe"):
                with unchanged(fs):
                    with pytest.raises(grpc.RpcError) as info:
                        raw(body, timeout=10)
                    # refused as undecodable, or decoded (unknown fields are allowed) and
                    # refused by the namenode: never OK, never a traceback
                    assert info.value.code() != grpc.StatusCode.OK
                    assert "Traceback" not in (info.value.details() or "")
        # a name that is not UTF-8 cannot even be decoded
        raw = ch.unary_unary("/metafs.v1.Namenode/Mkdir", request_serializer=lambda b: b,
                             response_deserializer=lambda b: b)
        body = pb.MkdirRequest(parent=1, mode=0o755, name="x").SerializeToString()
        with unchanged(fs):
            with pytest.raises(grpc.RpcError) as info:
                raw(body.replace(b"x", b"\xff"), timeout=10)
            assert info.value.code() in (grpc.StatusCode.INTERNAL,
                                         grpc.StatusCode.INVALID_ARGUMENT)
        # an unknown method
        raw = ch.unary_unary("/metafs.v1.Namenode/NoSuchCall", request_serializer=lambda b: b,
                             response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as info:
            raw(b"", timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    # and the server still serves
    assert fs.stat("/d/f").st_size == 4


# ---------------------------------------------------------------------- internal errors
def test_unexpected_error_is_eio_and_logged(settings: Settings, caplog: Any) -> None:
    """A real unexpected failure (a table gone from under the namenode): EIO for the caller,
    the traceback in the namenode's log only."""
    nn = build_namenode(settings, background=False)
    srv = serve_grpc(nn, "127.0.0.1:0")
    try:
        for c in (Client(settings=settings, transport=LocalTransport(nn), uid=0, gid=0),
                  Client(settings=settings.with_(namenode=srv.address), uid=0, gid=0)):
            with c:
                c.write_bytes("/f", b"x")
                db = Path(settings.effective_db_url.split("sqlite:///", 1)[1])
                con = sqlite3.connect(db)
                con.execute("ALTER TABLE xattrs RENAME TO xattrs_gone")
                con.commit()
                try:
                    caplog.clear()
                    with caplog.at_level(logging.ERROR, logger="metafs"):
                        with pytest.raises(OSError) as info:
                            c.getxattr("/f", "user.k")
                    assert info.value.errno == errno.EIO
                    text = str(info.value)
                    assert "Traceback" not in text and "xattrs" not in text
                    assert "internal" in text
                    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
                    assert logged and logged[0].exc_info is not None
                    assert c.stat("/f").st_size == 1  # everything else still works
                finally:
                    con.execute("ALTER TABLE xattrs_gone RENAME TO xattrs")
                    con.commit()
                    con.close()
    finally:
        srv.stop(0)
        nn.close()
