"""Identity bound end to end, and nothing visible that the caller may not see.

A real namenode over gRPC with TLS, its identities made as `metafs auth init` makes them,
run twice: once with bearer tokens and once with client certificates (mutual TLS, the
certificate's common name naming the identity). Alice keeps files in a 0700
directory; bob, a second authenticated user, attacks them with raw protocol messages
(forged client ids and handles, an unregistered session, the changelog, calls by inode
number, hard links, locks, search counts). Every attack is refused with the right errno,
and the namespace is unchanged afterwards. A hypothesis test then sends hostile and
malformed messages as bob and checks each gets a clean errno and changes nothing.
"""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor as FD
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from metafs.assembly import build_namenode, serve_grpc
from metafs.client import Client
from metafs.config import Settings
from metafs.errors import FsError
from metafs.namenode import schema
from metafs.namenode.server import UNARY_REQUESTS
from metafs.ops.team import Member, init_team
from metafs.posix import Cred
from metafs.proto import metafs_pb2 as pb
from metafs.proto import metafs_pb2_grpc as pb_grpc

ALICE, BOB = (1000, 1000), (1001, 1001)
SECRET = b"alice's secret model weights"
CREDENTIALS = ("token", "cert")


class Pki:
    """A cluster's PKI and identities as `metafs auth init` makes them: alice and bob are
    users, ``gateway`` a trusted service; each holds a bearer token or a client
    certificate (mutual TLS), by ``kind``."""

    def __init__(self, d: Path, kind: str) -> None:
        self.dir, self.kind = d, kind
        init_team(d, ["localhost"], [Member("alice", *ALICE, (ALICE[1],)),
                                     Member("bob", *BOB, (BOB[1],)),
                                     Member("gateway", 0, 0, trusted=True)],
                  credentials=kind)
        self.ca, self.server, self.key = d / "ca.pem", d / "server.pem", d / "server-key.pem"
        self.auth = d / "auth.toml"

    def home(self, name: str) -> Path:
        return self.dir / "identities" / name

    def token(self, name: str) -> str:
        return (self.home(name) / "token").read_text().strip()

    def channel_credentials(self, name: str) -> grpc.ChannelCredentials:
        if self.kind == "token":
            return grpc.ssl_channel_credentials(self.ca.read_bytes())
        return grpc.ssl_channel_credentials(
            self.ca.read_bytes(), private_key=(self.home(name) / "client-key.pem").read_bytes(),
            certificate_chain=(self.home(name) / "client.pem").read_bytes())

    def metadata(self, name: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token(name)}"),) if self.kind == "token" \
            else ()

    def client_settings(self, name: str) -> dict[str, str]:
        if self.kind == "token":
            return {"token": self.token(name)}
        return {"tls_client_cert": str(self.home(name) / "client.pem"),
                "tls_client_key": str(self.home(name) / "client-key.pem")}

    def server_settings(self) -> dict[str, Any]:
        return {"tls_cert": str(self.server), "tls_key": str(self.key), "tls_ca": str(self.ca),
                "auth_file": str(self.auth), "auth_mode": self.kind,
                "tls_client_auth": self.kind == "cert"}


@pytest.fixture(scope="module", params=CREDENTIALS)
def pki(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Every attack runs twice: against tokens over TLS and against client certificates."""
    return Pki(tmp_path_factory.mktemp(f"pki-{request.param}"), request.param)


class Raw:
    """Raw protocol calls as one identity (its token or its client certificate), over TLS."""

    def __init__(self, address: str, pki: Pki, name: str, uid: int, gid: int) -> None:
        self.channel = grpc.secure_channel(address, pki.channel_credentials(name))
        self.stub = pb_grpc.NamenodeStub(self.channel)
        self.metadata = pki.metadata(name)
        self.client_id = uuid.uuid4().hex
        self.caller = pb.Caller(uid=uid, gid=gid, groups=[gid], pid=os.getpid(),
                                client_id=self.client_id)

    def __call__(self, method: str, req: Any) -> Any:
        return getattr(self.stub, method)(req, timeout=20, metadata=self.metadata)

    def open_session(self) -> None:
        self("OpenSession", pb.SessionRequest(caller=self.caller, client_id=self.client_id))

    def with_session(self, client_id: str) -> pb.Caller:
        c = pb.Caller()
        c.CopyFrom(self.caller)
        c.client_id = client_id
        return c

    def close(self) -> None:
        self.channel.close()


def errno_of(exc: grpc.RpcError) -> int:
    """The errno a failed call carries in its structured status (failing the test when
    there is none: every refusal must be a clean errno)."""
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    assert status is not None, f"no structured status: {exc.code()} {exc.details()}"
    for d in status.details:
        if d.Is(pb.ErrorDetail.DESCRIPTOR):
            detail = pb.ErrorDetail()
            d.Unpack(detail)
            return detail.errno
    raise AssertionError(f"no ErrorDetail in {status}")


def refused(raw: Raw, method: str, req: Any) -> tuple[int, str]:
    with pytest.raises(grpc.RpcError) as info:
        raw(method, req)
    return errno_of(info.value), info.value.details() or ""


class Cluster:
    def __init__(self, nn: Any, address: str, settings: Settings, pki: Pki) -> None:
        self.nn, self.address, self.settings, self.pki = nn, address, settings, pki

    def raw(self, name: str, ids: tuple[int, int]) -> Raw:
        return Raw(self.address, self.pki, name, *ids)

    def client(self, name: str, **kw: Any) -> Client:
        s = self.settings.with_(namenode=self.address, tls_cert="", tls_key="", auth_file="",
                                auth_mode="none", tls_client_auth=False,
                                tls_ca=str(self.pki.ca), **self.pki.client_settings(name))
        return Client(settings=s, **kw)

    def rows(self, table: Any) -> int:
        from sqlalchemy import func, select

        return self.nn.ns.query(lambda c: c.execute(select(func.count()).select_from(table))
                                .scalar_one())

    def state(self) -> tuple[Any, ...]:
        """What an attack must not change: the changelog head (every namespace change
        appends to it), every inode's attributes and names, file contents and xattrs."""
        with self.client("gateway", uid=0, gid=0, groups=[]) as root:
            tree = []
            for path in ("/home/alice/private/secret", "/home/alice/mine.txt",
                         "/home/alice/open.txt"):
                st_ = root.stat(path)
                tree.append((path, st_.st_mode, st_.st_uid, st_.st_nlink, st_.st_size,
                             st_.st_mtime_ns, root.read_bytes(path),
                             sorted(root.listxattr(path))))
            tree.append(sorted(root.listdir("/shared")))
        return (self.changes(), self.rows(schema.inodes), self.rows(schema.dentries), tree)

    def changes(self) -> int:
        """Namespace changes in the changelog (reads made by the checks themselves add
        access records, which are not changes)."""
        from sqlalchemy import func, select

        CL = schema.changelog
        return self.nn.ns.query(lambda c: c.execute(
            select(func.count()).select_from(CL)
            .where(CL.c.op.notin_([pb.OP_ACCESS, pb.OP_RUN]))).scalar_one())


@pytest.fixture
def cluster(settings: Settings, pki: Pki, tmp_path: Path) -> Iterator[Cluster]:
    s = settings.with_(**pki.server_settings(),
                       rpc_timeout=20.0, serve_index=True, search_dir=str(tmp_path / "index"))
    nn = build_namenode(s)
    srv = serve_grpc(nn, "127.0.0.1:0")
    c = Cluster(nn, srv.address, s, pki)
    with c.client("gateway", uid=0, gid=0, groups=[]) as root:
        root.mkdir("/home", 0o755)
        root.mkdir("/home/alice", 0o755)
        root.chown("/home/alice", *ALICE)
        root.mkdir("/shared")
        root.chmod("/shared", 0o1777)
    with c.client("alice") as alice:
        alice.mkdir("/home/alice/private", 0o700)
        alice.write_bytes("/home/alice/private/secret", SECRET)
        alice.chmod("/home/alice/private/secret", 0o600)
        alice.setxattr("/home/alice/private/secret", "user.cats", b"3")
        alice.write_bytes("/home/alice/mine.txt", b"only alice may read this")
        alice.chmod("/home/alice/mine.txt", 0o600)
        alice.write_bytes("/home/alice/open.txt", b"anyone may read and write this")
        alice.chmod("/home/alice/open.txt", 0o666)
    try:
        yield c
    finally:
        srv.stop(0)
        nn.close()


def _ino(c: Cluster, path: str) -> int:
    with c.client("gateway", uid=0, gid=0, groups=[]) as root:
        return root.stat(path).st_ino


def test_another_sessions_handle_is_refused(cluster: Cluster) -> None:
    alice, bob = cluster.raw("alice", ALICE), cluster.raw("bob", BOB)
    alice.open_session()
    bob.open_session()
    ino = _ino(cluster, "/home/alice/mine.txt")
    h = alice("Open", pb.OpenRequest(caller=alice.caller, ino=ino, flags=os.O_RDWR)).handle
    before = cluster.state()
    # bob names alice's session (its client id is all a changelog record used to tell)
    forged = bob.with_session(alice.client_id)
    e, msg = refused(bob, "Read", pb.ReadRequest(caller=forged, ino=ino, size=100, handle=h))
    assert e == errno.EBADF and "not open" in msg
    e, _ = refused(bob, "Write", pb.WriteRequest(caller=forged, ino=ino, data=b"pwned",
                                                 handle=h))
    assert e == errno.EBADF
    e, _ = refused(bob, "Release", pb.ReleaseRequest(caller=forged, handle=h))
    assert e == errno.EBADF
    # ... or guesses it under his own session
    for cand in (h, h + 1, h - 1):
        e, _ = refused(bob, "Read", pb.ReadRequest(caller=bob.caller, ino=ino, size=9,
                                                   handle=cand))
        assert e == errno.EBADF
    # he cannot take alice's session over either (renewing it, opening in it, locking in it)
    e, msg = refused(bob, "OpenSession", pb.SessionRequest(caller=forged,
                                                           client_id=alice.client_id))
    assert e == errno.EPERM and "another identity" in msg
    e, msg = refused(bob, "Open", pb.OpenRequest(caller=forged, ino=_ino(
        cluster, "/home/alice/open.txt"), flags=os.O_RDONLY))
    assert e == errno.EPERM and "another identity" in msg
    assert cluster.state() == before
    # alice's handle still works for alice, and handle numbers are not a sequence
    assert alice("Read", pb.ReadRequest(caller=alice.caller, ino=ino, size=100,
                                        handle=h)).data == b"only alice may read this"
    h2 = alice("Open", pb.OpenRequest(caller=alice.caller, ino=ino, flags=os.O_RDONLY)).handle
    assert abs(h2 - h) > 1 << 20
    alice.close()
    bob.close()


def test_trusted_gateway_acts_only_within_its_own_sessions(cluster: Cluster) -> None:
    alice, gw = cluster.raw("alice", ALICE), cluster.raw("gateway", (0, 0))
    alice.open_session()
    ino = _ino(cluster, "/home/alice/mine.txt")
    h = alice("Open", pb.OpenRequest(caller=alice.caller, ino=ino, flags=os.O_RDONLY)).handle
    # the gateway may claim alice's uid, but not her session
    as_alice = pb.Caller(uid=ALICE[0], gid=ALICE[1], client_id=alice.client_id)
    e, _ = refused(gw, "Read", pb.ReadRequest(caller=as_alice, ino=ino, size=9, handle=h))
    assert e == errno.EBADF
    gw.open_session()
    own = pb.Caller(uid=ALICE[0], gid=ALICE[1], client_id=gw.client_id)
    h3 = gw("Open", pb.OpenRequest(caller=own, ino=ino, flags=os.O_RDONLY)).handle
    assert gw("Read", pb.ReadRequest(caller=own, ino=ino, size=4, handle=h3)).data == b"only"
    alice.close()
    gw.close()


def test_open_without_a_live_session_is_refused(cluster: Cluster) -> None:
    bob = cluster.raw("bob", BOB)
    ino = _ino(cluster, "/home/alice/open.txt")
    handles = cluster.rows(schema.handles)
    for _ in range(50):
        e, msg = refused(bob, "Open", pb.OpenRequest(caller=bob.caller, ino=ino,
                                                     flags=os.O_RDONLY))
        assert e == errno.EACCES and "live session" in msg
    e, _ = refused(bob, "Open", pb.OpenRequest(caller=bob.with_session(""), ino=ino,
                                               flags=os.O_RDONLY))
    assert e == errno.EACCES
    assert cluster.rows(schema.handles) == handles
    bob.open_session()
    assert bob("Open", pb.OpenRequest(caller=bob.caller, ino=ino, flags=os.O_RDONLY)).handle
    assert cluster.rows(schema.handles) == handles + 1
    bob.close()


def test_changelog_needs_a_service_identity(cluster: Cluster) -> None:
    bob, gw = cluster.raw("bob", BOB), cluster.raw("gateway", (0, 0))
    e, msg = refused(bob, "ReadChangelog", pb.ReadChangelogRequest(caller=bob.caller))
    assert e == errno.EACCES and "service identity" in msg
    with pytest.raises(grpc.RpcError) as info:
        next(iter(bob("SubscribeChangelog", pb.ReadChangelogRequest(caller=bob.caller))))
    assert errno_of(info.value) == errno.EACCES
    # a trusted service reads it (and so sees the secret's tags: it is trusted to)
    recs = gw("ReadChangelog", pb.ReadChangelogRequest(caller=gw.caller, limit=1000)).records
    assert any(r.name == "secret" for r in recs)
    bob.close()
    gw.close()


def test_calls_by_inode_are_checked_along_the_path(cluster: Cluster) -> None:
    bob = cluster.raw("bob", BOB)
    bob.open_session()
    ino = _ino(cluster, "/home/alice/private/secret")
    priv = _ino(cluster, "/home/alice/private")
    # the file is 0600 but alice's: make its own mode bits no obstacle, so that only the
    # 0700 directory above stands in the way
    with cluster.client("alice") as alice:
        alice.chmod("/home/alice/private/secret", 0o666)
    before = cluster.state()
    c = bob.caller
    attacks = [
        ("GetAttr", pb.InodeRequest(caller=c, ino=ino)),
        ("SetAttr", pb.SetAttrRequest(caller=c, ino=ino, size=0)),
        ("Open", pb.OpenRequest(caller=c, ino=ino, flags=os.O_RDWR)),
        ("Open", pb.OpenRequest(caller=c, ino=ino, flags=os.O_RDONLY, read_inline=True)),
        ("Read", pb.ReadRequest(caller=c, ino=ino, size=100)),
        ("Write", pb.WriteRequest(caller=c, ino=ino, data=b"x")),
        ("GetXattr", pb.GetXattrRequest(caller=c, ino=ino, name="user.cats", size=100)),
        ("ListXattr", pb.InodeRequest(caller=c, ino=ino)),
        ("SetXattr", pb.SetXattrRequest(caller=c, ino=ino, name="user.x", value=b"1")),
        ("Access", pb.AccessRequest(caller=c, ino=ino, mask=os.R_OK)),
        ("Lookup", pb.LookupRequest(caller=c, parent=priv, name="secret")),
        ("ReadDir", pb.ReadDirRequest(caller=c, ino=priv)),
        ("Resolve", pb.ResolveRequest(caller=c, path="secret", start=priv)),
        ("Link", pb.LinkRequest(caller=c, ino=ino, new_parent=_ino(cluster, "/shared"),
                                new_name="stolen")),
    ]
    for method, req in attacks:
        e, msg = refused(bob, method, req)
        assert e == errno.EACCES, (method, e, msg)
    assert cluster.state() == before
    bob.close()


def test_by_inode_check_follows_the_whole_path_at_once(cluster: Cluster) -> None:
    """GetAttr, Lookup and Open check the path in their own statement: a directory far
    above that closes is enough to refuse, and a chmod takes effect on the next call."""
    with cluster.client("alice") as alice:
        alice.mkdir("/home/alice/private/pub", 0o777)
        alice.write_bytes("/home/alice/private/pub/f", b"deep")
        alice.chmod("/home/alice/private/pub/f", 0o666)
    bob = cluster.raw("bob", BOB)
    bob.open_session()
    c = bob.caller
    pub, f = _ino(cluster, "/home/alice/private/pub"), _ino(cluster, "/home/alice/private/pub/f")
    calls = [("GetAttr", pb.InodeRequest(caller=c, ino=f)),
             ("Lookup", pb.LookupRequest(caller=c, parent=pub, name="f")),
             ("Open", pb.OpenRequest(caller=c, ino=f, flags=os.O_RDONLY, read_inline=True))]
    for method, req in calls:  # /home/alice/private is 0700: pub and f are out of reach
        e, msg = refused(bob, method, req)
        assert e == errno.EACCES and "not reachable" in msg, (method, e, msg)
    with cluster.client("alice") as alice:
        alice.chmod("/home/alice/private", 0o711)
    assert bob("GetAttr", calls[0][1]).size == 4
    assert bob("Lookup", calls[1][1]).ino == f
    assert bob("Open", calls[2][1]).data == b"deep"
    with cluster.client("alice") as alice:
        alice.chmod("/home/alice", 0o700)  # closed higher up now
    for method, req in calls:
        assert refused(bob, method, req)[0] == errno.EACCES, method
    # nonexistent inodes are ENOENT, as for anyone
    assert refused(bob, "GetAttr", pb.InodeRequest(caller=c, ino=1 << 40))[0] == errno.ENOENT
    assert refused(bob, "Lookup", pb.LookupRequest(caller=c, parent=1 << 40, name="x"))[0] \
        == errno.ENOENT
    bob.close()


def test_by_inode_check_on_each_engine(engine_namenode: Any) -> None:
    """The combined statements (attributes or a lookup joined with the ancestry) give the
    same answers on SQLite and PostgreSQL: a file with two names is reachable while one
    of its paths is open, an open handle keeps an unreachable file usable."""
    ns = engine_namenode.ns
    root = Cred()
    bob = Cred(*BOB, frozenset({BOB[1]}), client_id="bob-s", identity="token:bob",
               trusted=False)
    a = ns.mkdir(root, 1, "a", 0o700).ino
    b = ns.mkdir(root, 1, "b", 0o755).ino
    sub = ns.mkdir(root, a, "sub", 0o777).ino
    f = ns.create(root, sub, "f", 0o100644).attr.ino
    with pytest.raises(FsError) as info:
        ns.getattr(bob, f)
    assert info.value.errno == errno.EACCES
    with pytest.raises(FsError) as info:
        ns.lookup(bob, sub, "f")
    assert info.value.errno == errno.EACCES
    ns.link(root, f, b, "g")  # a second path, through a searchable directory
    assert ns.getattr(bob, f).nlink == 2
    assert ns.lookup(bob, b, "g").ino == f
    ns.unlink(root, b, "g")
    with pytest.raises(FsError) as info:
        ns.getattr(bob, f)
    assert info.value.errno == errno.EACCES
    ns.setattr(root, a, mode=0o711)
    assert ns.getattr(bob, f).nlink == 1 and ns.lookup(bob, sub, "f").ino == f
    with pytest.raises(FsError) as info:
        ns.lookup(bob, sub, "nothing")
    assert info.value.errno == errno.ENOENT


def test_link_follows_protected_hardlinks(cluster: Cluster) -> None:
    bob = cluster.raw("bob", BOB)
    shared = _ino(cluster, "/shared")
    before = cluster.state()
    # alice's 0600 file in a directory bob may search: bob may not pin it with a name
    mine = _ino(cluster, "/home/alice/mine.txt")
    e, msg = refused(bob, "Link", pb.LinkRequest(caller=bob.caller, ino=mine,
                                                 new_parent=shared, new_name="pinned"))
    assert e == errno.EPERM and "hard link" in msg
    # nor a set-user-id file, even one he could read and write
    with cluster.client("alice") as alice:
        alice.chmod("/home/alice/open.txt", 0o4666)
    before = cluster.state()
    e, _ = refused(bob, "Link", pb.LinkRequest(caller=bob.caller, ino=_ino(
        cluster, "/home/alice/open.txt"), new_parent=shared, new_name="suid"))
    assert e == errno.EPERM
    assert cluster.state() == before
    # a regular file he may read and write: allowed, as on Linux
    with cluster.client("alice") as alice:
        alice.chmod("/home/alice/open.txt", 0o666)
    bob("Link", pb.LinkRequest(caller=bob.caller, ino=_ino(cluster, "/home/alice/open.txt"),
                               new_parent=shared, new_name="fine"))
    with cluster.client("gateway", uid=0, gid=0, groups=[]) as root:
        assert root.stat("/shared/fine").st_nlink == 2
    bob.close()


def test_lock_in_another_session_is_refused(cluster: Cluster) -> None:
    from sqlalchemy import select

    alice, bob = cluster.raw("alice", ALICE), cluster.raw("bob", BOB)
    alice.open_session()
    bob.open_session()
    ino = _ino(cluster, "/home/alice/open.txt")
    alice("Lock", pb.LockRequest(caller=alice.caller, ino=ino, owner=7, kind=pb.LOCK_POSIX,
                                 type=pb.LOCK_WRITE, start=0, end=99))

    def locks() -> list[Any]:
        L = schema.locks
        return cluster.nn.ns.query(lambda c: [tuple(r) for r in c.execute(
            select(L.c.session, L.c.owner, L.c.type, L.c.start, L.c.end)).all()])

    held = locks()
    forged = bob.with_session(alice.client_id)
    for req in (pb.LockRequest(caller=forged, ino=ino, owner=7, kind=pb.LOCK_POSIX,
                               type=pb.LOCK_UNLOCK, start=0, end=99),
                pb.LockRequest(caller=forged, ino=0, type=pb.LOCK_UNLOCK),
                pb.LockRequest(caller=forged, ino=ino, owner=7, kind=pb.LOCK_POSIX,
                               type=pb.LOCK_WRITE, start=100, end=200)):
        e, msg = refused(bob, "Lock", req)
        assert e == errno.EPERM and "another identity" in msg
    assert locks() == held
    # in his own session, bob meets alice's lock as a conflict, as he should
    e, _ = refused(bob, "Lock", pb.LockRequest(caller=bob.caller, ino=ino, owner=7,
                                               kind=pb.LOCK_POSIX, type=pb.LOCK_READ,
                                               start=0, end=0))
    assert e == errno.EAGAIN
    alice.close()
    bob.close()


def test_search_reveals_no_hidden_hit_nor_count(cluster: Cluster) -> None:
    bob, gw = cluster.raw("bob", BOB), cluster.raw("gateway", (0, 0))
    with cluster.client("alice") as alice:
        alice.setxattr("/home/alice/open.txt", "user.cats", b"1")
    everything = gw("Search", pb.SearchRequest(caller=gw.caller, query="cats>0", wait=True,
                                               count=True))
    assert everything.total == 2
    got = bob("Search", pb.SearchRequest(caller=bob.caller, query="cats>0", count=True,
                                         limit=10))
    assert [h.path for h in got.hits] == ["/home/alice/open.txt"]
    assert got.total == 1 and got.hidden == 0 and got.next_offset == 1
    assert b"secret" not in got.SerializeToString()
    # paging counts what bob sees: the second page is empty, whatever hides behind it
    page = bob("Search", pb.SearchRequest(caller=bob.caller, query="cats>0", limit=1,
                                          offset=1, count=False))
    assert list(page.hits) == [] and page.total == -1 and page.hidden == 0
    bob.close()
    gw.close()


# ---------------------------------------------------------------------- hostile messages
_HOSTILE_METHODS = sorted(set(UNARY_REQUESTS) - {
    "RecordAccess", "RecordRun",  # append provenance records by design (checked elsewhere)
    "ReadChangelog",  # refused to bob anyway; a wait_ms would only slow the run
})
_INT_RANGES = {FD.TYPE_UINT32: (0, 2**32 - 1), FD.TYPE_UINT64: (0, 2**64 - 1),
               FD.TYPE_INT32: (-2**31, 2**31 - 1), FD.TYPE_INT64: (-2**63, 2**63 - 1),
               FD.TYPE_SINT64: (-2**63, 2**63 - 1), FD.TYPE_SINT32: (-2**31, 2**31 - 1),
               FD.TYPE_FIXED64: (0, 2**64 - 1), FD.TYPE_SFIXED64: (-2**63, 2**63 - 1)}


@st.composite
def _hostile_request(draw: st.DrawFn, known: list[int], sessions: list[str]) -> tuple[str, Any]:
    method = draw(st.sampled_from(_HOSTILE_METHODS))
    req = UNARY_REQUESTS[method]()
    for f in req.DESCRIPTOR.fields:
        if f.name == "caller":
            req.caller.CopyFrom(pb.Caller(uid=BOB[0], gid=BOB[1], groups=[BOB[1]],
                                          client_id=draw(st.sampled_from(sessions))))
            continue
        if f.is_repeated or f.type == FD.TYPE_MESSAGE or not draw(st.booleans()):
            continue
        if f.type in _INT_RANGES:
            lo, hi = _INT_RANGES[f.type]
            v = draw(st.one_of(st.sampled_from([x for x in known + [0, 1, lo, hi]
                                                if lo <= x <= hi]),
                               st.integers(lo, hi)))
        elif f.type == FD.TYPE_ENUM:
            v = draw(st.sampled_from([e.number for e in f.enum_type.values]))
        elif f.type == FD.TYPE_BOOL:
            v = draw(st.booleans())
        elif f.type == FD.TYPE_STRING:
            v = draw(st.one_of(st.text(max_size=40), st.sampled_from(
                ["secret", "..", ".", "a/b", "x\0y", "é" * 200, "/home/alice/private/secret",
                 "user.cats"])))
        elif f.type == FD.TYPE_BYTES:
            v = draw(st.binary(max_size=300))
        else:
            continue
        setattr(req, f.name, v)
    if method == "ReadChangelog":
        req.wait_ms = 0
    return method, req


@pytest.mark.slow
def test_hostile_messages_get_clean_errors_and_change_nothing(cluster: Cluster) -> None:
    bob = cluster.raw("bob", BOB)
    bob.open_session()
    alice = cluster.raw("alice", ALICE)
    alice.open_session()
    known = [_ino(cluster, p) for p in ("/home/alice/private/secret", "/home/alice/private",
                                        "/home/alice/mine.txt", "/home/alice")]
    known += [alice("Open", pb.OpenRequest(caller=alice.caller, ino=known[2],
                                           flags=os.O_RDWR)).handle]
    sessions = [bob.client_id, alice.client_id, "", "x" * 65, "never-opened"]
    with cluster.client("gateway", uid=0, gid=0, groups=[]) as root:
        # nothing left that bob may change by right (the file anyone may write, the
        # directory anyone may add to): then any change at all is one he may not make
        root.chmod("/home/alice/open.txt", 0o644)
        root.chmod("/shared", 0o755)
    before = cluster.state()
    frames = bob.stub.Calls

    @hsettings(max_examples=150, deadline=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture,
                                      HealthCheck.too_slow])
    @given(_hostile_request(known, sessions), st.binary(max_size=200))
    def run(call: tuple[str, Any], garbage: bytes) -> None:
        method, req = call
        try:
            bob(method, req)
        except grpc.RpcError as exc:
            e = errno_of(exc)
            assert e != errno.EIO, f"{method}: internal error {exc.details()}"
        # the same method with random bytes for its request, through the call stream
        reply = next(iter(frames(iter([pb.CallFrame(method=method, request=garbage)]),
                                 timeout=20, metadata=bob.metadata)))
        if reply.HasField("error"):
            assert reply.error.errno != errno.EIO, reply.error.message

    run()
    assert cluster.state() == before
    assert alice("Read", pb.ReadRequest(caller=alice.caller, ino=known[2], size=100,
                                        handle=known[-1])).data == b"only alice may read this"
    bob.close()
    alice.close()
