"""Permissions are the namenode's (invariant 6): several users over the gRPC transport.

alice (1000:1000), bob (1001:1001, also in 2000) and carol (1002:1002, also in 1000) call a
namenode that decides by mode bits, supplementary groups, search permission on every
component, the sticky bit and setgid directories; root bypasses. Where POSIX leaves the
order of errors open, Linux's is expected (EEXIST/ENOENT before EACCES).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any, Callable, Iterator

import pytest

from metafs.assembly import build_namenode, serve_grpc
from metafs.client import Client
from metafs.config import Settings
from metafs.errors import FsError
from metafs.proto import metafs_pb2 as pb

ALICE, BOB, CAROL = (1000, 1000, []), (1001, 1001, [2000]), (1002, 1002, [1000])


class Users:
    def __init__(self, address: str, settings: Settings) -> None:
        self._clients: list[Client] = []
        s = settings.with_(namenode=address)

        def make(uid: int, gid: int, groups: list[int]) -> Client:
            c = Client(settings=s, uid=uid, gid=gid, groups=groups)
            c.umask = 0o022
            self._clients.append(c)
            return c

        self.root = make(0, 0, [])
        self.alice = make(*ALICE)
        self.bob = make(*BOB)
        self.carol = make(*CAROL)

    def close(self) -> None:
        for c in self._clients:
            c.close()


@pytest.fixture
def u(engine_settings: Settings) -> Iterator[Users]:
    s = engine_settings
    nn = build_namenode(s, background=False)
    srv = serve_grpc(nn, "127.0.0.1:0")
    users = Users(srv.address, s)
    # a home for each user, and a shared /tmp
    for name, (uid, gid, _) in (("alice", ALICE), ("bob", BOB), ("carol", CAROL)):
        users.root.mkdir(f"/{name}", 0o755)
        users.root.chown(f"/{name}", uid, gid)
    users.root.mkdir("/tmp")
    users.root.chmod("/tmp", 0o1777)
    try:
        yield users
    finally:
        users.close()
        srv.stop(0)
        nn.close()


def eno(code: int, fn: Callable[[], Any]) -> None:
    with pytest.raises(OSError) as info:
        fn()
    assert info.value.errno == code, \
        f"{errno.errorcode.get(info.value.errno)} instead of {errno.errorcode[code]}"


def test_owner_group_other_bits(u: Users) -> None:
    u.alice.write_bytes("/alice/f", b"secret")
    u.alice.chmod("/alice/f", 0o640)
    assert u.alice.read_bytes("/alice/f") == b"secret"
    assert u.carol.read_bytes("/alice/f") == b"secret"  # supplementary group 1000
    eno(errno.EACCES, lambda: u.carol.open("/alice/f", "r+b"))
    eno(errno.EACCES, lambda: u.bob.read_bytes("/alice/f"))
    assert u.root.read_bytes("/alice/f") == b"secret"
    # the owner class decides for the owner, even when it gives less than the others get
    u.alice.chmod("/alice/f", 0o067)
    eno(errno.EACCES, lambda: u.alice.read_bytes("/alice/f"))
    assert u.carol.read_bytes("/alice/f") == b"secret"
    assert u.bob.read_bytes("/alice/f") == b"secret"
    u.alice.chmod("/alice/f", 0o604)
    eno(errno.EACCES, lambda: u.carol.read_bytes("/alice/f"))  # group class: nothing
    assert u.bob.read_bytes("/alice/f") == b"secret"
    assert u.alice.access("/alice/f", os.R_OK | os.W_OK)
    assert not u.carol.access("/alice/f", os.R_OK)
    assert u.bob.access("/alice/f", os.R_OK) and not u.bob.access("/alice/f", os.W_OK)
    # writing needs w; creating and removing need w+x on the directory
    eno(errno.EACCES, lambda: u.bob.write_bytes("/alice/f", b"x"))
    # a write refused by inode changes nothing (an empty file's data is written before
    # the check on PostgreSQL, and rolled back)
    u.alice.write_bytes("/alice/e", b"")
    e = u.alice.stat("/alice/e")
    with pytest.raises(FsError) as refused:
        u.bob.transport.call("Write", pb.WriteRequest(caller=u.bob.caller, ino=e.st_ino,
                                                      offset=0, data=b"x"))
    assert refused.value.errno == errno.EACCES
    assert u.alice.read_bytes("/alice/e") == b"" and u.alice.stat("/alice/e") == e
    eno(errno.EACCES, lambda: u.bob.write_bytes("/alice/new", b"x"))
    eno(errno.EACCES, lambda: u.bob.mkdir("/alice/d"))
    eno(errno.EACCES, lambda: u.bob.unlink("/alice/f"))
    eno(errno.EACCES, lambda: u.bob.rename("/alice/f", "/tmp/f"))
    eno(errno.EACCES, lambda: u.bob.rename("/alice/f", "/alice/g"))
    assert u.bob.read_bytes("/alice/f") == b"secret" and not u.bob.exists("/alice/g")
    eno(errno.EACCES, lambda: u.bob.symlink("x", "/alice/l"))
    eno(errno.EACCES, lambda: u.bob.link("/alice/f", "/alice/g"))
    u.alice.chmod("/alice", 0o775)
    u.carol.write_bytes("/alice/by-carol", b"c")  # group write on the directory
    assert u.carol.lstat("/alice/by-carol").st_uid == CAROL[0]
    # readdir needs r, lookup needs x
    u.alice.mkdir("/alice/xonly", 0o711)
    u.alice.write_bytes("/alice/xonly/known", b"k")
    eno(errno.EACCES, lambda: u.bob.listdir("/alice/xonly"))
    assert u.bob.read_bytes("/alice/xonly/known") == b"k"
    u.alice.chmod("/alice/xonly", 0o744)
    assert u.bob.listdir("/alice/xonly") == ["known"]
    eno(errno.EACCES, lambda: u.bob.stat("/alice/xonly/known"))


def test_a_write_replacing_the_content_is_checked_as_a_write(u: Users) -> None:
    """A Write that empties the file first (a truncating open's truncation sent with its
    first write) is one transaction: refused, it changes nothing; allowed, the file holds
    exactly the new bytes (no tail of the old ones), the set-id bits are cleared for a
    caller other than root, and one change record says the content was replaced."""
    old = os.urandom(10 * 1024)
    u.alice.write_bytes("/alice/f", old)
    u.alice.chmod("/alice/f", 0o644)
    before = u.alice.stat("/alice/f")

    def replace(who: Client, data: bytes) -> pb.WriteReply:
        return who.transport.call("Write", pb.WriteRequest(
            caller=who.caller, ino=before.st_ino, offset=0, data=data, truncate=True))

    with pytest.raises(FsError) as refused:
        replace(u.bob, b"x" * 4096)
    assert refused.value.errno == errno.EACCES
    assert u.alice.read_bytes("/alice/f") == old and u.alice.stat("/alice/f") == before
    u.alice.chmod("/alice/f", 0o6776)
    _, head = u.root.changelog(0, limit=10_000)
    new = os.urandom(4096)
    reply = replace(u.bob, new)
    assert reply.attr.size == 4096 and reply.written == 4096
    assert u.alice.read_bytes("/alice/f") == new
    st = u.alice.stat("/alice/f")
    assert st.st_size == 4096 and stat.S_IMODE(st.st_mode) == 0o776
    assert st.st_mtime_ns > before.st_mtime_ns and st.st_ctime_ns > before.st_ctime_ns
    recs, _ = u.root.changelog(head, limit=100)
    assert [(r.op, r.ino, r.flags, r.attr.size) for r in recs] == \
        [(pb.OP_WRITE, before.st_ino, pb.WRITE_REPLACED, 4096)]


def test_search_permission_on_every_component(u: Users) -> None:
    u.alice.makedirs("/alice/a/b/c")
    u.alice.write_bytes("/alice/a/b/c/f", b"deep")
    assert u.bob.read_bytes("/alice/a/b/c/f") == b"deep"
    for comp in ("/alice", "/alice/a", "/alice/a/b", "/alice/a/b/c"):
        u.alice.chmod(comp, 0o754)  # no x for others
        eno(errno.EACCES, lambda: u.bob.stat("/alice/a/b/c/f"))
        eno(errno.EACCES, lambda: u.bob.read_bytes("/alice/a/b/c/f"))
        eno(errno.EACCES, lambda: u.bob.stat("/alice/a/b/c/nothing"))  # EACCES, not ENOENT
        assert u.root.read_bytes("/alice/a/b/c/f") == b"deep"
        u.alice.chmod(comp, 0o755)
    # the owner needs x too
    u.alice.chmod("/alice/a", 0o600)
    eno(errno.EACCES, lambda: u.alice.stat("/alice/a/b"))
    eno(errno.EACCES, lambda: u.alice.write_bytes("/alice/a/b/new", b"x"))
    u.alice.chmod("/alice/a", 0o700)
    # symlinks are followed with the same checks on the target's path
    u.bob.symlink("/alice/a/b/c/f", "/bob/link")
    eno(errno.EACCES, lambda: u.bob.read_bytes("/bob/link"))
    assert u.alice.read_bytes("/bob/link") == b"deep"


def test_sticky_directory(u: Users) -> None:
    u.alice.write_bytes("/tmp/af", b"a")
    u.bob.write_bytes("/tmp/bf", b"b")
    u.alice.mkdir("/tmp/ad")
    eno(errno.EPERM, lambda: u.bob.unlink("/tmp/af"))
    eno(errno.EPERM, lambda: u.bob.rmdir("/tmp/ad"))
    eno(errno.EPERM, lambda: u.bob.rename("/tmp/af", "/tmp/mine"))
    eno(errno.EPERM, lambda: u.bob.rename("/tmp/bf", "/tmp/af"))  # replacing hers
    eno(errno.EPERM, lambda: u.bob.rename("/tmp/bf", "/tmp/af", exchange=True))
    assert u.alice.read_bytes("/tmp/af") == b"a"
    u.bob.rename("/tmp/bf", "/tmp/bf2")  # his own: fine
    u.alice.unlink("/tmp/af")  # her own: fine
    u.root.unlink("/tmp/bf2")  # root: fine
    # the owner of a sticky directory may remove anything in it
    u.alice.mkdir("/alice/st")
    u.alice.chmod("/alice/st", 0o1777)
    u.bob.write_bytes("/alice/st/bob", b"b")
    u.carol.write_bytes("/alice/st/carol", b"c")
    eno(errno.EPERM, lambda: u.bob.unlink("/alice/st/carol"))
    u.alice.unlink("/alice/st/bob")
    u.alice.unlink("/alice/st/carol")


def test_setgid_directories(u: Users) -> None:
    u.root.mkdir("/g")
    u.root.chown("/g", 0, 2000)
    u.root.chmod("/g", 0o2777)
    u.bob.write_bytes("/g/bf", b"b")
    assert u.bob.stat("/g/bf").st_gid == 2000
    u.alice.write_bytes("/g/af", b"a")  # not in group 2000, still inherits it
    assert u.alice.stat("/g/af").st_gid == 2000
    u.alice.mkdir("/g/sub")
    st = u.alice.stat("/g/sub")
    assert st.st_gid == 2000 and st.st_mode & stat.S_ISGID
    u.alice.mkdir("/g/sub/deeper")
    st = u.alice.stat("/g/sub/deeper")
    assert st.st_gid == 2000 and st.st_mode & stat.S_ISGID
    u.alice.symlink("af", "/g/l")
    assert u.alice.lstat("/g/l").st_gid == 2000
    # outside setgid directories files get the creator's group
    u.alice.write_bytes("/alice/plain", b"p")
    u.alice.mkdir("/alice/pd")
    assert u.alice.stat("/alice/plain").st_gid == 1000
    assert not u.alice.stat("/alice/pd").st_mode & stat.S_ISGID
    # a file made set-group-ID in a group one is not in loses the bit (the directory's
    # group decides, not the creator's); in one's own group it keeps it
    u.alice.mknod("/g/an", 0o2755 | stat.S_IFREG)
    assert (u.alice.stat("/g/an").st_gid, stat.S_IMODE(u.alice.stat("/g/an").st_mode)) \
        == (2000, 0o755)
    u.bob.mknod("/g/bn", 0o2755 | stat.S_IFREG)
    assert stat.S_IMODE(u.bob.stat("/g/bn").st_mode) == 0o2755
    # setting S_ISGID on a file of a group one is not in silently drops it
    u.alice.chmod("/g/af", 0o2755)
    assert stat.S_IMODE(u.alice.stat("/g/af").st_mode) == 0o755
    u.bob.chmod("/g/bf", 0o2755)
    assert stat.S_IMODE(u.bob.stat("/g/bf").st_mode) == 0o2755
    # writing by a non-root user clears set-id bits
    u.bob.chmod("/g/bf", 0o6777)
    with u.alice.open("/g/bf", "r+b") as f:
        f.write(b"x")
    assert stat.S_IMODE(u.bob.stat("/g/bf").st_mode) == 0o777
    # and so does the first write to an empty file
    u.bob.chmod("/g/bn", 0o6777)
    with u.alice.open("/g/bn", "r+b") as f:
        f.write(b"x")
    assert stat.S_IMODE(u.bob.stat("/g/bn").st_mode) == 0o777
    assert u.bob.read_bytes("/g/bn") == b"x"


def test_chmod_chown_rules(u: Users) -> None:
    u.alice.write_bytes("/alice/f", b"x")
    eno(errno.EPERM, lambda: u.bob.chmod("/alice/f", 0o777))
    eno(errno.EPERM, lambda: u.carol.chmod("/alice/f", 0o777))  # group member, not owner
    eno(errno.EPERM, lambda: u.alice.chown("/alice/f", BOB[0], -1))  # give away
    eno(errno.EPERM, lambda: u.alice.chown("/alice/f", -1, 2000))  # not her group
    eno(errno.EPERM, lambda: u.bob.chown("/alice/f", -1, 1001))  # not his file
    eno(errno.EPERM, lambda: u.carol.chown("/alice/f", -1, 1000))
    u.alice.chown("/alice/f", -1, 1000)  # her own group: fine
    u.alice.chown("/alice/f", ALICE[0], -1)  # to herself: fine
    u.bob.write_bytes("/bob/f", b"x")
    u.bob.chown("/bob/f", -1, 2000)  # a supplementary group: fine
    assert u.bob.stat("/bob/f").st_gid == 2000
    u.root.chown("/alice/f", BOB[0], 2000)
    st = u.root.stat("/alice/f")
    assert (st.st_uid, st.st_gid) == (BOB[0], 2000)
    # chown clears set-user-id, and set-group-id when group-executable
    u.bob.chmod("/bob/f", 0o6755)
    u.bob.chown("/bob/f", -1, 1001)
    assert stat.S_IMODE(u.bob.stat("/bob/f").st_mode) == 0o755
    # only root makes device files
    eno(errno.EPERM, lambda: _mknod(u.alice, "/alice/dev"))


def _mknod(c: Client, path: str) -> None:
    from metafs.proto import metafs_pb2 as pb

    parent = c.stat(os.path.dirname(path)).st_ino
    c._call("Create", pb.CreateRequest(caller=c.caller, parent=parent,
                                       name=os.path.basename(path),
                                       mode=stat.S_IFCHR | 0o600, rdev=1), path)


def test_utimens_rules(u: Users) -> None:
    u.alice.write_bytes("/alice/f", b"x")
    u.alice.chmod("/alice/f", 0o666)
    u.alice.utime("/alice/f", ns=(1_000_000_123, 2_000_000_456))  # owner: explicit ok
    st = u.alice.stat("/alice/f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 2_000_000_456)
    u.bob.utime("/alice/f")  # write permission: "now" is fine
    assert u.alice.stat("/alice/f").st_mtime_ns > 2_000_000_456
    eno(errno.EPERM, lambda: u.bob.utime("/alice/f", ns=(1, 2)))  # explicit: owner only
    u.alice.chmod("/alice/f", 0o644)
    eno(errno.EACCES, lambda: u.bob.utime("/alice/f"))  # no write: not even "now"
    u.root.utime("/alice/f", ns=(5, 6))
    assert u.alice.stat("/alice/f").st_mtime_ns == 6


def test_root_bypass(u: Users) -> None:
    u.alice.write_bytes("/alice/f", b"x")
    u.alice.chmod("/alice/f", 0o000)
    u.alice.chmod("/alice", 0o000)
    assert u.root.read_bytes("/alice/f") == b"x"
    u.root.write_bytes("/alice/f", b"root")
    u.root.mkdir("/alice/rootdir")
    u.root.unlink("/alice/f")
    assert u.root.listdir("/alice") == ["rootdir"]
    eno(errno.EACCES, lambda: u.alice.listdir("/alice"))
    # sticky and ownership rules do not bind root either
    u.bob.write_bytes("/tmp/b", b"b")
    u.root.rename("/tmp/b", "/tmp/c")
    u.root.chmod("/tmp/c", 0o4755)
    assert stat.S_IMODE(u.root.stat("/tmp/c").st_mode) == 0o4755


def test_xattr_namespaces(u: Users) -> None:
    u.alice.write_bytes("/alice/f", b"x")
    u.alice.setxattr("/alice/f", "user.tag", b"t")
    assert u.bob.getxattr("/alice/f", "user.tag") == b"t"  # readable file
    eno(errno.EACCES, lambda: u.bob.setxattr("/alice/f", "user.tag", b"b"))
    eno(errno.EACCES, lambda: u.bob.removexattr("/alice/f", "user.tag"))
    u.alice.chmod("/alice/f", 0o600)
    eno(errno.EACCES, lambda: u.bob.getxattr("/alice/f", "user.tag"))
    # trusted.* is root's: others cannot set it, and do not see it
    eno(errno.EPERM, lambda: u.alice.setxattr("/alice/f", "trusted.x", b"t"))
    u.root.setxattr("/alice/f", "trusted.x", b"t")
    eno(errno.ENODATA, lambda: u.alice.getxattr("/alice/f", "trusted.x"))
    assert u.alice.listxattr("/alice/f") == ["user.tag"]
    assert u.root.listxattr("/alice/f") == ["trusted.x", "user.tag"]
    eno(errno.EPERM, lambda: u.alice.removexattr("/alice/f", "trusted.x"))
    # security.* is written by root only
    eno(errno.EPERM, lambda: u.alice.setxattr("/alice/f", "security.label", b"s"))
    u.root.setxattr("/alice/f", "security.label", b"s")
    assert u.alice.getxattr("/alice/f", "security.label") == b"s"
    # user.* attributes exist only on files and directories
    u.alice.symlink("f", "/alice/l")
    eno(errno.EPERM, lambda: u.alice.setxattr("/alice/l", "user.x", b"v",
                                              follow_symlinks=False))


def test_eacces_vs_eperm_and_linux_order(u: Users) -> None:
    u.alice.write_bytes("/alice/f", b"x")
    u.alice.mkdir("/alice/d")
    # an existing name is EEXIST even where bob could not create it
    eno(errno.EEXIST, lambda: u.bob.mkdir("/alice/d"))
    eno(errno.EEXIST, lambda: u.bob.symlink("t", "/alice/f"))
    eno(errno.EEXIST, lambda: u.bob.open("/alice/f", "xb"))
    eno(errno.EEXIST, lambda: u.bob.link("/bob", "/alice/f"))
    # a missing name is ENOENT even where bob could not remove it
    eno(errno.ENOENT, lambda: u.bob.unlink("/alice/none"))
    eno(errno.ENOENT, lambda: u.bob.rmdir("/alice/none"))
    eno(errno.ENOENT, lambda: u.bob.rename("/alice/none", "/bob/x"))
    # and where it exists: EACCES (no write on the directory)
    eno(errno.EACCES, lambda: u.bob.unlink("/alice/f"))
    eno(errno.EACCES, lambda: u.bob.rmdir("/alice/d"))
    eno(errno.EACCES, lambda: u.bob.rename("/alice/f", "/bob/x"))
    eno(errno.EACCES, lambda: u.bob.rename("/bob", "/alice/b"))  # bob can't write "/"
    # moving a directory to another parent rewrites its '..': needs write on it
    u.alice.mkdir("/alice/ro")
    u.alice.mkdir("/alice/to")
    u.alice.chmod("/alice/ro", 0o555)
    eno(errno.EACCES, lambda: u.alice.rename("/alice/ro", "/alice/to/ro"))
    u.alice.rename("/alice/ro", "/alice/ro2")  # same parent: fine
    # hard links to directories: EPERM, whoever asks
    eno(errno.EPERM, lambda: u.alice.link("/alice/d", "/alice/dlink"))
    eno(errno.EPERM, lambda: u.root.link("/alice/d", "/alice/dlink"))


def test_handles_belong_to_the_session_that_opened_them(u: Users) -> None:
    """Handle ids are small sequential numbers: another session (whatever its uid) naming
    one gets EBADF, and the handle keeps working for its own session."""
    from metafs.proto import metafs_pb2 as pb

    u.alice.write_bytes("/alice/f", b"alice's data")
    u.alice.chmod("/alice/f", 0o600)
    ino = u.alice.stat("/alice/f").st_ino
    h = u.alice._call("Open", pb.OpenRequest(caller=u.alice.caller, ino=ino,
                                             flags=os.O_RDWR)).handle
    assert h
    for other in (u.bob, u.root):
        eno(errno.EBADF, lambda: other._call("Write", pb.WriteRequest(
            caller=other.caller, ino=ino, offset=0, data=b"EVIL", handle=h)))
        eno(errno.EBADF, lambda: other._call("Read", pb.ReadRequest(
            caller=other.caller, ino=ino, offset=0, size=100, handle=h)))
        eno(errno.EBADF, lambda: other._call("SetAttr", pb.SetAttrRequest(
            caller=other.caller, ino=ino, size=0, handle=h)))
        eno(errno.EBADF, lambda: other._call("GetLayout", pb.LayoutRequest(
            caller=other.caller, ino=ino, handle=h)))
        eno(errno.EBADF, lambda: other._call("Presign", pb.PresignRequest(
            caller=other.caller, ino=ino, handle=h, keys=[], put=False)))
        eno(errno.EBADF, lambda: other._call("Release", pb.ReleaseRequest(
            caller=other.caller, handle=h)))
    # a caller claiming no session at all is another session too
    anon = pb.Caller(uid=BOB[0], gid=BOB[1])
    eno(errno.EBADF, lambda: u.bob._call("Write", pb.WriteRequest(
        caller=anon, ino=ino, offset=0, data=b"EVIL", handle=h)))
    eno(errno.EBADF, lambda: u.bob._call("Release", pb.ReleaseRequest(caller=anon, handle=h)))
    assert u.alice.read_bytes("/alice/f") == b"alice's data"
    # the owner's session still reads and writes through it, whatever uid a call claims
    # (a mount serves all its callers in one session; a descriptor passes between processes)
    r = u.alice._call("Read", pb.ReadRequest(caller=u.alice.caller, ino=ino, offset=0,
                                             size=100, handle=h))
    assert r.data == b"alice's data"
    with u.alice.as_user(*BOB) as as_bob:
        as_bob._call("Write", pb.WriteRequest(caller=as_bob.caller, ino=ino, offset=0,
                                              data=b"ALICE", handle=h))
    # an unlinked file stays alive until its own session releases it
    u.alice.unlink("/alice/f")
    eno(errno.EBADF, lambda: u.bob._call("Release", pb.ReleaseRequest(caller=u.bob.caller,
                                                                      handle=h)))
    r = u.alice._call("Read", pb.ReadRequest(caller=u.alice.caller, ino=ino, offset=0,
                                             size=100, handle=h))
    assert r.data == b"ALICE's data"
    u.alice._call("Release", pb.ReleaseRequest(caller=u.alice.caller, handle=h))
    eno(errno.EBADF, lambda: u.alice._call("Release", pb.ReleaseRequest(
        caller=u.alice.caller, handle=h)))
    eno(errno.ENOENT, lambda: u.root._call("GetAttr", pb.InodeRequest(caller=u.root.caller,
                                                                      ino=ino)))


def test_bulk_create_needs_search_permission_on_every_directory(u: Users) -> None:
    """BulkCreate walks its paths like a path walk: x on the base and on every directory
    it goes through (found or made), w+x where it makes entries; a refusal makes nothing."""
    from metafs.client import BulkFile
    from metafs.proto import metafs_pb2 as pb

    u.alice.mkdir("/alice/p", 0o700)
    u.alice.mkdir("/alice/p/open")
    u.alice.chmod("/alice/p/open", 0o777)
    p_ino = u.alice.stat("/alice/p").st_ino
    head = u.root.changelog_head()

    def raw(parent: int, *entries: pb.BulkEntry, make_parents: bool = True) -> Any:
        req = pb.BulkCreateRequest(caller=u.bob.caller, parent=parent,
                                   make_parents=make_parents, exist_ok=True)
        req.entries.extend(entries)
        return u.bob._call("BulkCreate", req)

    f = stat.S_IFREG | 0o644
    # through a directory bob may not search, into one he may write
    eno(errno.EACCES, lambda: u.bob.bulk_create("/alice", [BulkFile("p/open/evil", b"x")]))
    eno(errno.EACCES, lambda: u.bob.bulk_create("/alice", [BulkFile("p/new/evil", b"x")]))
    # a base directory bob may not search (named by inode, past the client's path walk)
    eno(errno.EACCES, lambda: raw(p_ino, pb.BulkEntry(path="open/evil", mode=f)))
    eno(errno.EACCES, lambda: raw(p_ino, pb.BulkEntry(path="evil", mode=f)))
    eno(errno.EACCES, lambda: raw(p_ino, pb.BulkEntry(path="open", mode=stat.S_IFDIR | 0o755)))
    # a later entry below an unsearchable directory undoes the earlier ones
    eno(errno.EACCES, lambda: u.bob.bulk_create("/", [BulkFile("tmp/ok", b"1"),
                                                      BulkFile("alice/p/open/evil", b"x")]))
    # a directory made by the call itself without x for its maker
    eno(errno.EACCES, lambda: u.bob.bulk_create("/bob", [
        BulkFile("shut", is_dir=True, mode=0o600), BulkFile("shut/f", b"x")]))
    assert u.root.changelog_head() == head, "a refused BulkCreate changed something"
    # search without write is not enough to make entries
    u.alice.chmod("/alice/p", 0o711)
    head = u.root.changelog_head()
    eno(errno.EACCES, lambda: u.bob.bulk_create("/alice/p", [BulkFile("evil", b"x")]))
    assert u.root.changelog_head() == head, "a refused BulkCreate changed something"
    assert u.root.listdir("/alice/p/open") == [] and u.root.listdir("/tmp") == []
    assert u.root.listdir("/bob") == []
    # with search permission the same walk works; root needs none
    assert len(u.bob.bulk_create("/alice", [BulkFile("p/open/fine", b"x")])) == 1
    u.alice.chmod("/alice/p", 0o700)
    u.root.bulk_create("/alice", [BulkFile("p/open/by-root", b"r")])
    assert sorted(u.root.listdir("/alice/p/open")) == ["by-root", "fine"]
