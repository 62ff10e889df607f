"""Secure unless told otherwise, and no one client can starve the rest: a namenode that
refuses to serve beyond loopback without authentication, `metafs auth init` working end
to end, a client that keeps its token off plaintext networks, and every limit refusing
with its errno and changing nothing."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest

from metafs import config
from metafs.assembly import build_namenode, serve_grpc
from metafs.cli import main
from metafs.client import Client
from metafs.client.transport import LocalTransport
from metafs.config import Settings
from metafs.namenode.server import Namenode
from metafs.proto import metafs_pb2 as pb
from metafs.proto import metafs_pb2_grpc as pb_grpc

ROOT = pb.Caller(uid=0, gid=0)


def _detail(exc: grpc.RpcError) -> pb.ErrorDetail:
    from grpc_status import rpc_status

    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    assert status is not None, exc
    d = pb.ErrorDetail()
    status.details[0].Unpack(d)
    return d


@contextlib.contextmanager
def _serving(s: Settings) -> Iterator[tuple[Namenode, str]]:
    """A namenode of settings ``s`` served on a free loopback port: (it, its address)."""
    nn = build_namenode(s)
    srv = serve_grpc(nn, "127.0.0.1:0")
    try:
        yield nn, srv.address
    finally:
        srv.stop(0)
        nn.close()


def _non_loopback_ip() -> str:
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    for ip in out:
        if ":" not in ip and not ip.startswith("127."):
            return ip
    pytest.skip("this machine has no non-loopback IPv4 address")


# ---------------------------------------------------------------------- serve refuses
def _serve_cmd(tmp: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "metafs.cli", "serve", "--data", str(tmp / "data"),
            "--ready-file", str(tmp / "ready"), *extra]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("METAFS_")}


def test_serve_refuses_all_interfaces_without_auth(tmp_path: Path) -> None:
    res = subprocess.run(_serve_cmd(tmp_path, "--listen", "0.0.0.0:0"), capture_output=True,
                         text=True, timeout=120, env=_env())
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert "refusing to listen on 0.0.0.0:0 without authentication" in lines[0]
    assert "--insecure" in lines[0] and "metafs auth init" in lines[0]
    assert not (tmp_path / "data").exists()  # nothing was started or created


def test_serve_insecure_starts_and_says_so(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        p = subprocess.Popen(_serve_cmd(tmp_path, "--listen", "0.0.0.0:0", "--insecure"),
                             stdout=out, stderr=out, env=_env())
    try:
        deadline = time.monotonic() + 60
        while not ((tmp_path / "ready").exists() and (tmp_path / "ready").read_text()):
            assert p.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "metafs serve did not start"
            time.sleep(0.05)
        assert "INSECURE" in log.read_text() and "claimed uid" in log.read_text()
    finally:
        p.terminate()
        p.wait(30)


def test_serve_on_loopback_needs_no_flag(settings: Settings) -> None:
    nn = build_namenode(settings)
    try:
        srv = serve_grpc(nn, "127.0.0.1:0")
        srv.stop(0)
        with pytest.raises(ValueError, match="refusing to listen"):
            serve_grpc(nn, "0.0.0.0:0")
    finally:
        nn.close()


# ---------------------------------------------------------------------- auth init
@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("team")
    assert main(["auth", "init", str(d / "pki"), "--server-name", "localhost",
                 "--user", "alice:1000:1000:1000,100", "--user", "bob:1001",
                 "--service", "gateway"]) == 0
    return d / "pki"


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_auth_init_writes_secrets_mode_600(team: Path) -> None:
    for secret in ("ca-key.pem", "server-key.pem", "auth.toml", "identities/alice/token",
                   "identities/admin/token", "identities/gateway/token"):
        assert _mode(team / secret) == 0o600, secret
    assert _mode(team / "identities" / "alice") == 0o700
    tokens = {(team / "identities" / n / "token").read_text() for n in
              ("admin", "alice", "bob", "gateway")}
    assert len(tokens) == 4  # every identity its own
    from metafs.ops.auth import IdentityTable

    t = IdentityTable.load(team / "auth.toml")
    ids = {i.name: i for i in t.by_digest.values()}
    assert (ids["alice"].uid, ids["alice"].gid, ids["alice"].groups) == \
        (1000, 1000, frozenset({1000, 100}))
    assert (ids["bob"].uid, ids["bob"].gid) == (1001, 1001)
    assert ids["admin"].uid == 0 and not ids["admin"].trusted
    assert ids["gateway"].trusted
    # run again: a name that exists is refused, nothing written; a new one is added
    assert main(["auth", "init", str(team), "--server-name", "localhost",
                 "--user", "alice:1000"]) == 2
    assert main(["auth", "init", str(team), "--server-name", "localhost",
                 "--user", "carol:1002"]) == 0
    assert (team / "identities" / "carol" / "token").exists()
    assert "alice" in {i.name for i in IdentityTable.load(team / "auth.toml").by_digest.values()}


@pytest.fixture
def team_cluster(team: Path, tmp_path: Path) -> Iterator[str]:
    s = config.load(str(team / "server.toml"), {"data_dir": str(tmp_path / "data"),
                                                 "listen": "127.0.0.1:0"}, environ={})
    with _serving(s) as (_nn, address):
        yield address


def _as(team: Path, name: str, address: str, tmp_path: Path) -> Client:
    s = config.load(str(team / "identities" / name / "config.toml"),
                    {"namenode": address, "data_dir": str(tmp_path / f"client-{name}")},
                    environ={})
    return Client(settings=s)


def test_auth_init_identities_work_over_tls(team: Path, team_cluster: str,
                                            tmp_path: Path) -> None:
    with _as(team, "admin", team_cluster, tmp_path) as admin:
        assert admin.caller.uid == 0
        admin.makedirs("/home/alice")
        admin.chown("/home/alice", 1000, 1000)
        admin.write_bytes("/secret", b"admin only")
        admin.chmod("/secret", 0o600)
        with pytest.raises(PermissionError):  # root, but not allowed to act as others
            with admin.as_user(1000, 1000):
                admin.stat("/")
    with _as(team, "alice", team_cluster, tmp_path) as alice:
        assert (alice.caller.uid, alice.caller.gid) == (1000, 1000)
        alice.write_bytes("/home/alice/notes.txt", b"mine")
        assert alice.stat("/home/alice/notes.txt").st_uid == 1000
        with pytest.raises(PermissionError):
            alice.read_bytes("/secret")


def test_auth_init_client_certificates(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    assert main(["auth", "init", str(d), "--server-name", "localhost", "--credentials", "cert",
                 "--user", "alice:1000"]) == 0
    assert _mode(d / "identities" / "alice" / "client-key.pem") == 0o600
    s = config.load(str(d / "server.toml"), {"data_dir": str(tmp_path / "data")}, environ={})
    assert s.tls_client_auth and s.auth_mode == "cert"
    nn = build_namenode(s)
    srv = serve_grpc(nn, "127.0.0.1:0")
    try:
        with _as(d, "admin", srv.address, tmp_path) as admin:
            admin.makedirs("/home/alice")
            admin.chown("/home/alice", 1000, 1000)
        with _as(d, "alice", srv.address, tmp_path) as alice:
            assert alice.caller.uid == 1000
            alice.write_bytes("/home/alice/a", b"x")
            with pytest.raises(PermissionError):
                alice.write_bytes("/elsewhere", b"x")
    finally:
        srv.stop(0)
        nn.close()


def test_world_readable_token_file_refused(team: Path, tmp_path: Path) -> None:
    tok = tmp_path / "token"
    tok.write_text((team / "identities" / "alice" / "token").read_text())
    tok.chmod(0o644)
    s = config.load(overrides={"namenode": "127.0.0.1:1", "token_file": str(tok),
                               "tls_ca": str(team / "ca.pem")}, environ={})
    with pytest.raises(PermissionError, match="readable by every user.*chmod 600"):
        Client(settings=s)


# ---------------------------------------------------------------------- plaintext tokens
@pytest.fixture
def plaintext_token_namenode(settings: Settings, team: Path) -> Iterator[tuple[str, Settings]]:
    """A namenode with token authentication but no TLS, on a non-loopback address and on
    loopback."""
    s = settings.with_(auth_mode="token", auth_file=str(team / "auth.toml"))
    nn = build_namenode(s)
    ip = _non_loopback_ip()
    outer = serve_grpc(nn, f"{ip}:0")
    inner = serve_grpc(nn, "127.0.0.1:0")
    try:
        yield outer.address, inner.address
    finally:
        outer.stop(0)
        inner.stop(0)
        nn.close()


def test_client_refuses_token_in_clear_beyond_loopback(plaintext_token_namenode, team: Path,
                                                       tmp_path: Path) -> None:
    outer, inner = plaintext_token_namenode
    token = (team / "identities" / "alice" / "token").read_text().strip()
    base = config.load(overrides={"data_dir": str(tmp_path / "c")}, environ={})
    with pytest.raises(PermissionError) as ei:
        Client(settings=base.with_(namenode=outer, token=token))
    assert ei.value.errno == errno.EPERM
    assert "in clear text" in str(ei.value) and "tls_ca" in str(ei.value)
    # on loopback the token never leaves the machine: allowed
    with Client(settings=base.with_(namenode=inner, token=token)) as fs:
        assert fs.caller.uid == 1000


# ---------------------------------------------------------------------- limits
@pytest.fixture
def token_server(settings: Settings, team: Path) -> Iterator[tuple[Any, str, Settings]]:
    """A namenode on loopback with token authentication and small shares."""
    s = settings.with_(auth_mode="token", auth_file=str(team / "auth.toml"), grpc_workers=4,
                       max_long_polls_per_identity=2, max_long_polls=8,
                       max_subscribers_per_identity=2, max_calls_per_identity=3,
                       max_record_bytes=100_000, changelog_reply_bytes=1_000_000,
                       grpc_max_receive_bytes=2 * 1024**2)
    with _serving(s) as (nn, address):
        yield nn, address, s


def _meta(team: Path, name: str) -> tuple[tuple[str, str], ...]:
    token = (team / "identities" / name / "token").read_text().strip()
    return (("authorization", f"Bearer {token}"),)


def _caller(uid: int) -> pb.Caller:
    return pb.Caller(uid=uid, gid=uid)


@pytest.fixture
def stub(token_server) -> Iterator[pb_grpc.NamenodeStub]:
    """A gRPC stub of ``token_server`` with no credentials of its own (calls pass a token)."""
    with grpc.insecure_channel(token_server[1]) as ch:
        yield pb_grpc.NamenodeStub(ch)


def test_long_polls_of_one_identity_do_not_starve_another(stub: pb_grpc.NamenodeStub,
                                                          team: Path) -> None:
    # the changelog is read by service identities (a plain user's read is refused)
    alice, bob = _meta(team, "gateway"), _meta(team, "bob")
    head = stub.ChangelogHead(pb.HeadRequest(caller=_caller(0)), metadata=alice).head
    polls = [stub.ReadChangelog.future(pb.ReadChangelogRequest(
        caller=_caller(0), after=head, wait_ms=20_000), metadata=alice) for _ in range(40)]
    # past the service's share the long-polls are refused at once, not queued: 38 of them end
    # while the 2 admitted keep waiting for a record
    done: list[Any] = []
    while len(done) < 38:
        done = [f for f in polls if f.done()]
        time.sleep(0.01)
    waiting = [f for f in polls if not f.done()]
    assert len(waiting) == 2
    for f in done:
        d = _detail(f.exception())
        assert d.errno == errno.EAGAIN and "max_long_polls_per_identity" in d.message
    # bob's calls are served while alice's long-polls wait (4 workers: without the
    # separate share they would all be taken)
    for _ in range(20):
        stub.GetAttr(pb.InodeRequest(caller=_caller(1001), ino=1), metadata=bob, timeout=10)
    assert not any(f.done() for f in waiting)
    for f in waiting:
        f.cancel()


def test_subscribers_per_identity(stub: pb_grpc.NamenodeStub, team: Path) -> None:
    alice, svc = _meta(team, "alice"), _meta(team, "gateway")
    stub.RecordRun(pb.RunRecordRequest(caller=_caller(1000), run_id="r", json="{}"),
                   metadata=alice)  # a record for each subscription to deliver
    # subscribers are service identities (a plain user's subscription is refused)
    subs = [stub.SubscribeChangelog(pb.ReadChangelogRequest(caller=_caller(0)),
                                    metadata=svc) for _ in range(2)]
    for sub in subs:  # the subscriptions are open
        next(sub)
    third = stub.SubscribeChangelog(pb.ReadChangelogRequest(caller=_caller(0)),
                                    metadata=svc)
    with pytest.raises(grpc.RpcError) as ei:
        next(third)
    d = _detail(ei.value)
    assert d.errno == errno.EAGAIN and "max_subscribers_per_identity" in d.message
    for sub in subs:
        sub.cancel()


def test_calls_per_identity(stub: pb_grpc.NamenodeStub, team: Path) -> None:
    alice, bob = _meta(team, "alice"), _meta(team, "bob")
    # an open call stream is a call in progress: three of them fill alice's share
    import queue

    feeds: list[queue.SimpleQueue] = []
    streams = []
    for _ in range(3):
        q: queue.SimpleQueue = queue.SimpleQueue()
        st = stub.Calls(iter(q.get, None), metadata=alice)
        q.put(pb.CallFrame(method="GetAttr", request=pb.InodeRequest(
            caller=_caller(1000), ino=1).SerializeToString()))
        assert not next(st).HasField("error")
        feeds.append(q)
        streams.append(st)
    with pytest.raises(grpc.RpcError) as ei:
        stub.GetAttr(pb.InodeRequest(caller=_caller(1000), ino=1), metadata=alice, timeout=10)
    assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    d = _detail(ei.value)
    assert d.errno == errno.EAGAIN and "max_calls_per_identity" in d.message
    stub.GetAttr(pb.InodeRequest(caller=_caller(1001), ino=1), metadata=bob, timeout=10)
    for q, st in zip(feeds, streams):
        q.put(None)
        st.cancel()


def test_record_size_cap(token_server, stub: pb_grpc.NamenodeStub, team: Path) -> None:
    nn, _address, _s = token_server
    alice = _meta(team, "alice")
    head = nn.ns.changelog_head()
    big = '{"x": "' + "a" * 200_000 + '"}'
    with pytest.raises(grpc.RpcError) as ei:
        stub.RecordRun(pb.RunRecordRequest(caller=_caller(1000), run_id="r1", json=big),
                       metadata=alice)
    d = _detail(ei.value)
    assert d.errno == errno.E2BIG and "max_record_bytes" in d.message
    with pytest.raises(grpc.RpcError) as ei:
        stub.RecordAccess(pb.RecordAccessRequest(caller=_caller(1000), events=[
            pb.AccessEvent(ino=1, read=True, cmdline="x" * 200_000)]), metadata=alice)
    assert _detail(ei.value).errno == errno.E2BIG
    assert nn.ns.changelog_head() == head  # nothing recorded


def test_message_size_limit(token_server, team: Path, tmp_path: Path) -> None:
    nn, address, _s = token_server
    base = config.load(overrides={"data_dir": str(tmp_path / "c")}, environ={})
    with Client(settings=base.with_(namenode=address, token_file=str(
            team / "identities" / "admin" / "token"), inline_limit=8 * 1024**2)) as fs:
        head = nn.ns.changelog_head()
        with pytest.raises(OSError) as ei:
            fs.bulk_create("/", [("big.bin", os.urandom(3 * 1024**2))])
        assert ei.value.errno == errno.EMSGSIZE
        assert "grpc_max_receive_bytes" in str(ei.value)
        assert nn.ns.changelog_head() == head
        assert not fs.exists("/big.bin")


def test_changelog_reply_capped_by_bytes(engine_settings: Settings) -> None:
    """Large records make ReadChangelog return fewer of them, never fail (before: 27 run
    records of 10 MB stopped every consumer with RESOURCE_EXHAUSTED)."""
    s = engine_settings.with_(changelog_reply_bytes=1_000_000, grpc_max_send_bytes=2 * 1024**2)
    with _serving(s) as (_nn, address):
        stub = pb_grpc.NamenodeStub(grpc.insecure_channel(address))
        body = '{"x": "' + "a" * 200_000 + '"}'
        for i in range(12):
            stub.RecordRun(pb.RunRecordRequest(caller=ROOT, run_id=f"r{i}", json=body))
        after, runs, replies = 0, 0, 0
        while True:
            r = stub.ReadChangelog(pb.ReadChangelogRequest(caller=ROOT, after=after,
                                                           limit=1000))
            if not r.records:
                break
            assert r.ByteSize() < 1_300_000
            replies += 1
            runs += sum(1 for x in r.records if x.op == pb.OP_RUN)
            after = r.records[-1].seq
        assert runs == 12 and replies >= 3


def test_handles_per_session(settings: Settings, tmp_path: Path) -> None:
    nn = build_namenode(settings.with_(max_handles_per_session=5), background=False)
    try:
        with Client(settings=settings, transport=LocalTransport(nn)) as fs:
            fs.write_bytes("/f", b"data")
            ino = fs.ino("/f")
            call = fs.transport.call
            for _ in range(5):
                call("Open", pb.OpenRequest(caller=fs.caller, ino=ino, flags=os.O_RDWR))
            n = nn.ns.query(lambda c: c.exec_driver_sql("SELECT count(*) FROM handles")
                            .scalar())
            with pytest.raises(Exception) as ei:
                call("Open", pb.OpenRequest(caller=fs.caller, ino=ino, flags=os.O_RDWR))
            assert ei.value.errno == errno.EMFILE  # type: ignore[attr-defined]
            assert "max_handles_per_session" in str(ei.value)
            assert nn.ns.query(lambda c: c.exec_driver_sql("SELECT count(*) FROM handles")
                               .scalar()) == n
    finally:
        nn.close()


# ---------------------------------------------------------------------- bulk create
def test_bulk_create_lets_other_writers_in(settings: Settings) -> None:
    """Another writer's creates land between the chunks of a large bulk create (seen in
    the changelog's order), not after the whole of it."""
    nn = build_namenode(settings.with_(bulk_chunk_entries=500), background=False)
    try:
        bulk = Client(settings=settings, transport=LocalTransport(nn))
        other = Client(settings=settings, transport=LocalTransport(nn))
        bulk.mkdir("/bulk")
        other.mkdir("/other")
        done = threading.Event()
        made: list[int] = []

        def writer() -> None:
            i = 0
            while not done.is_set():
                other.write_bytes(f"/other/f{i}", b"")
                made.append(i)
                i += 1

        t = threading.Thread(target=writer)
        t.start()
        try:
            while not made:  # the writer is going
                time.sleep(0.001)
            bulk.bulk_create("/bulk", [(f"d{i // 1000}/f{i}", b"") for i in range(20_000)])
        finally:
            done.set()
            t.join()
        other_ino = other.ino("/other")
        bulk_seqs, other_seqs = [], []
        after = 0
        while True:
            recs, _ = bulk.changelog(after, 10_000)
            if not recs:
                break
            for r in recs:
                if r.op == pb.OP_CREATE:
                    (other_seqs if r.parent == other_ino else bulk_seqs).append(r.seq)
            after = recs[-1].seq
        assert len(bulk_seqs) == 20_000
        inside = [q for q in other_seqs if bulk_seqs[0] < q < bulk_seqs[-1]]
        assert inside, "no other create committed while the bulk create ran"
        bulk.close()
        other.close()
    finally:
        nn.close()


def test_bulk_create_conflict_in_a_later_chunk_changes_nothing(settings: Settings) -> None:
    nn = build_namenode(settings.with_(bulk_chunk_entries=10), background=False)
    try:
        with Client(settings=settings, transport=LocalTransport(nn)) as fs:
            fs.mkdir("/b")
            head = fs.changelog_head()
            entries = [(f"f{i}", b"") for i in range(50)] + [("f3", b"")]
            with pytest.raises(FileExistsError, match="appears twice"):
                fs.bulk_create("/b", entries)
            entries = [(f"g{i}", b"") for i in range(50)] + [("g3/x", b"")]
            with pytest.raises(FileExistsError, match="share a path"):
                fs.bulk_create("/b", entries)
            assert fs.listdir("/b") == [] and fs.changelog_head() == head
            # a later chunk meeting an existing name: earlier chunks stay, and it says so
            fs.write_bytes("/b/h25", b"")
            with pytest.raises(FileExistsError, match="first 20 entries"):
                fs.bulk_create("/b", [(f"h{i}", b"") for i in range(50)])
            assert len(fs.listdir("/b")) == 21
    finally:
        nn.close()


def test_loopback_detection() -> None:
    from metafs.ops.auth import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("[::1]") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1")
    assert not is_loopback("nn1.internal")  # names are not resolved, never trusted
