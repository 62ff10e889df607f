"""TLS, mutual TLS and authentication: a namenode refuses a wrong certificate, an expired
one, a missing token and a spoofed uid, each with a clear error, and serves the right
identity otherwise."""

from __future__ import annotations

import datetime as dt
import errno
import os
from pathlib import Path

import grpc
import pytest

from metafs.assembly import build_namenode, serve_grpc
from metafs.client import Client
from metafs.config import Settings
from metafs.ops import certs
from metafs.ops.auth import add_cert_identity, add_token
from metafs.proto import metafs_pb2 as pb
from metafs.proto import metafs_pb2_grpc as pb_grpc

ALICE_TOKEN = "alice-secret-token"
ROOT_TOKEN = "gateway-secret-token"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    certs.init_cluster(d, hosts=["localhost", "127.0.0.1"], clients=["alice", "mallory"])
    # a certificate from another CA, and an expired one from the right CA
    other = certs.make_ca("some other CA")
    certs.issue(other, "alice", server=False).write(d / "foreign.pem", d / "foreign-key.pem")
    ca = certs.load(d / "ca.pem", d / "ca-key.pem")
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=10)
    certs.issue(ca, "alice", server=False, not_before=past - dt.timedelta(days=30),
                not_after=past).write(d / "expired.pem", d / "expired-key.pem")
    certs.issue(other, "localhost", server=True, hosts=["127.0.0.1"]).write(
        d / "foreign-server.pem", d / "foreign-server-key.pem")
    auth = d / "auth.toml"
    add_token(auth, "alice", 1000, 1000, [1000, 50], ALICE_TOKEN)
    add_token(auth, "gateway", 0, 0, [], ROOT_TOKEN, trusted=True)
    add_cert_identity(auth, "alice", 1000, 1000, [1000])
    return {p.stem: p for p in d.iterdir()} | {"auth": auth, "dir": d}


def _serve(settings: Settings, pki: dict[str, Path], **kw: object):  # type: ignore[no-untyped-def]
    s = settings.with_(tls_cert=str(pki["server"]), tls_key=str(pki["server-key"]),
                       tls_ca=str(pki["ca"]), auth_file=str(pki["auth"]), rpc_timeout=10.0,
                       **kw)
    nn = build_namenode(s)
    return nn, serve_grpc(nn, "127.0.0.1:0"), s


def _client_settings(s: Settings, address: str, **kw: object) -> Settings:
    base = dict(namenode=address, tls_cert="", tls_key="", tls_client_auth=False,
                auth_mode="none", auth_file="", token="", tls_client_cert="",
                tls_client_key="")
    base.update(kw)  # type: ignore[arg-type]
    return s.with_(**base)  # type: ignore[arg-type]


@pytest.fixture
def token_cluster(settings: Settings, pki: dict[str, Path]):  # type: ignore[no-untyped-def]
    nn, srv, s = _serve(settings, pki, auth_mode="token")
    # a world-writable place for alice
    with Client(settings=_client_settings(s, srv.address, tls_ca=str(pki["ca"]),
                                          token=ROOT_TOKEN), uid=0, gid=0, groups=[]) as root:
        root.mkdir("/home", 0o755)
        root.mkdir("/home/alice", 0o755)
        root.chown("/home/alice", 1000, 1000)
        root.write_bytes("/rootfile", b"root only")
        root.chmod("/rootfile", 0o600)
    try:
        yield srv.address, s
    finally:
        srv.stop(0)
        nn.close()


@pytest.fixture
def mtls_cluster(settings: Settings, pki: dict[str, Path]):  # type: ignore[no-untyped-def]
    nn, srv, s = _serve(settings, pki, auth_mode="cert", tls_client_auth=True)
    try:
        yield srv.address, s
    finally:
        srv.stop(0)
        nn.close()


def test_token_identity_is_bound(token_cluster, pki) -> None:  # type: ignore[no-untyped-def]
    address, s = token_cluster
    with Client(settings=_client_settings(s, address, tls_ca=str(pki["ca"]),
                                          token=ALICE_TOKEN)) as fs:
        # the client learned its identity from the namenode and claims it
        assert (fs.caller.uid, fs.caller.gid) == (1000, 1000)
        fs.write_bytes("/home/alice/notes.txt", b"hello")
        st = fs.stat("/home/alice/notes.txt")
        assert (st.st_uid, st.st_gid) == (1000, 1000)
        with pytest.raises(PermissionError):
            fs.read_bytes("/rootfile")


def test_missing_token_refused(token_cluster, pki) -> None:  # type: ignore[no-untyped-def]
    address, s = token_cluster
    with pytest.raises(PermissionError) as ei:
        Client(settings=_client_settings(s, address, tls_ca=str(pki["ca"])))
    assert "not authenticated" in str(ei.value) and "bearer token" in str(ei.value)


def test_unknown_token_refused(token_cluster, pki) -> None:  # type: ignore[no-untyped-def]
    address, s = token_cluster
    with pytest.raises(PermissionError) as ei:
        Client(settings=_client_settings(s, address, tls_ca=str(pki["ca"]), token="guess"))
    assert "token is not known" in str(ei.value)


def test_spoofed_uid_refused(token_cluster, pki) -> None:  # type: ignore[no-untyped-def]
    address, s = token_cluster
    cs = _client_settings(s, address, tls_ca=str(pki["ca"]), token=ALICE_TOKEN)
    with pytest.raises(PermissionError) as ei:
        Client(settings=cs, uid=0, gid=0, groups=[])
    assert "claims uid 0" in str(ei.value) and "bound to uid 1000" in str(ei.value)
    with Client(settings=cs) as fs:
        with pytest.raises(PermissionError) as ei:
            with fs.as_user(0, 0):
                fs.read_bytes("/rootfile")
        assert "claims uid 0" in str(ei.value)
        # a gid the identity does not have, or an extra group, is refused too
        with pytest.raises(PermissionError, match="claims gid 0"):
            with fs.as_user(1000, 0):
                fs.stat("/")
        with pytest.raises(PermissionError, match=r"claims groups \[4\]"):
            with fs.as_user(1000, 50, [4]):
                fs.stat("/")
        with fs.as_user(1000, 50, [1000]):  # a subset of its own groups is fine
            assert fs.stat("/").st_ino == 1


def test_trusted_gateway_may_act_for_users(token_cluster, pki) -> None:  # type: ignore[no-untyped-def]
    address, s = token_cluster
    with Client(settings=_client_settings(s, address, tls_ca=str(pki["ca"]),
                                          token=ROOT_TOKEN)) as fs:
        with fs.as_user(1000, 1000):
            with pytest.raises(PermissionError):
                fs.read_bytes("/rootfile")
        assert fs.read_bytes("/rootfile") == b"root only"


def test_plaintext_client_refused_by_tls_namenode(token_cluster) -> None:  # type: ignore[no-untyped-def]
    address, s = token_cluster
    with pytest.raises(OSError) as ei:
        Client(settings=_client_settings(s, address, token=ALICE_TOKEN, tls_ca="",
                                        rpc_timeout=5.0))
    assert ei.value.errno == errno.EIO


def test_client_rejects_server_of_another_ca(settings, pki) -> None:  # type: ignore[no-untyped-def]
    s = settings.with_(tls_cert=str(pki["foreign-server"]),
                       tls_key=str(pki["foreign-server-key"]))
    nn = build_namenode(s)
    srv = serve_grpc(nn, "127.0.0.1:0")
    try:
        with pytest.raises(OSError) as ei:
            Client(settings=_client_settings(s, srv.address, tls_ca=str(pki["ca"]),
                                             rpc_timeout=5.0))
        assert ei.value.errno == errno.EIO  # at once: no failover wait for a distrust
        assert "TLS handshake" in str(ei.value) and "CERTIFICATE_VERIFY_FAILED" in str(ei.value)
    finally:
        srv.stop(0)
        nn.close()


def test_mtls_certificate_identity(mtls_cluster, pki) -> None:  # type: ignore[no-untyped-def]
    address, s = mtls_cluster
    cs = _client_settings(s, address, tls_ca=str(pki["ca"]),
                          tls_client_cert=str(pki["client-alice"]),
                          tls_client_key=str(pki["client-alice-key"]))
    with Client(settings=cs) as fs:
        assert fs.caller.uid == 1000
        assert fs.stat("/").st_ino == 1
    with pytest.raises(PermissionError, match="claims uid 0"):
        Client(settings=cs, uid=0, gid=0, groups=[])


def test_mtls_unmapped_certificate_refused(mtls_cluster, pki) -> None:  # type: ignore[no-untyped-def]
    address, s = mtls_cluster
    cs = _client_settings(s, address, tls_ca=str(pki["ca"]),
                          tls_client_cert=str(pki["client-mallory"]),
                          tls_client_key=str(pki["client-mallory-key"]))
    with pytest.raises(PermissionError, match="'mallory' is not mapped"):
        Client(settings=cs)


def _raw_call(address: str, pki: dict[str, Path], cert: str, key: str) -> grpc.RpcError:
    creds = grpc.ssl_channel_credentials(pki["ca"].read_bytes(), pki[key].read_bytes(),
                                         pki[cert].read_bytes())
    with grpc.secure_channel(address, creds) as ch:
        stub = pb_grpc.NamenodeStub(ch)
        with pytest.raises(grpc.RpcError) as ei:
            stub.ChangelogHead(pb.HeadRequest(caller=pb.Caller(uid=1000, gid=1000)),
                               timeout=5)
    return ei.value


def test_mtls_wrong_ca_certificate_refused(mtls_cluster, pki) -> None:  # type: ignore[no-untyped-def]
    address, s = mtls_cluster
    err = _raw_call(address, pki, "foreign", "foreign-key")
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    cs = _client_settings(s, address, tls_ca=str(pki["ca"]), rpc_timeout=5.0,
                          tls_client_cert=str(pki["foreign"]),
                          tls_client_key=str(pki["foreign-key"]))
    with pytest.raises(OSError) as ei:
        Client(settings=cs)
    assert ei.value.errno == errno.EIO and "unavailable" in str(ei.value).lower()


def test_mtls_expired_certificate_refused(mtls_cluster, pki) -> None:  # type: ignore[no-untyped-def]
    address, s = mtls_cluster
    # the namenode refuses the TLS handshake ...
    err = _raw_call(address, pki, "expired", "expired-key")
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    # ... and the client says why before it even tries
    cs = _client_settings(s, address, tls_ca=str(pki["ca"]),
                          tls_client_cert=str(pki["expired"]),
                          tls_client_key=str(pki["expired-key"]))
    with pytest.raises(PermissionError, match="client certificate .* expired on"):
        Client(settings=cs)


def test_mtls_without_certificate_refused(mtls_cluster, pki) -> None:  # type: ignore[no-untyped-def]
    address, s = mtls_cluster
    with pytest.raises(OSError) as ei:
        # the server drops the connection in its handshake: to the client that looks like
        # a namenode going away, so it would wait out an outage first (failover_timeout)
        Client(settings=_client_settings(s, address, tls_ca=str(pki["ca"]), rpc_timeout=5.0,
                                         failover_timeout=1.0))
    assert ei.value.errno in (errno.EIO, errno.EACCES)


def test_namenode_refuses_expired_server_certificate(settings, pki) -> None:  # type: ignore[no-untyped-def]
    s = settings.with_(tls_cert=str(pki["expired"]), tls_key=str(pki["expired-key"]))
    nn = build_namenode(s)
    try:
        with pytest.raises(PermissionError, match="expired on"):
            serve_grpc(nn, "127.0.0.1:0")
    finally:
        nn.close()


def test_auth_without_identity_table_is_a_config_error(settings) -> None:  # type: ignore[no-untyped-def]
    nn = build_namenode(settings.with_(auth_mode="token"))
    try:
        with pytest.raises(ValueError, match="needs an auth_file"):
            serve_grpc(nn, "127.0.0.1:0")
    finally:
        nn.close()


def test_certs_and_token_commands(tmp_path: Path) -> None:
    from metafs.cli import main

    assert main(["certs", str(tmp_path / "pki"), "--host", "nn.example", "--client", "bob",
                 "--auth-file", str(tmp_path / "auth.toml"), "--uid", "1001"]) == 0
    assert main(["token", "carol", "--auth-file", str(tmp_path / "auth.toml"), "--uid",
                 "1002", "--out", str(tmp_path / "carol.token")]) == 0
    from metafs.ops.auth import IdentityTable

    t = IdentityTable.load(tmp_path / "auth.toml")
    assert t.by_cn["bob"].uid == 1001
    tok = (tmp_path / "carol.token").read_text().strip()
    assert t.by_token(tok).uid == 1002  # type: ignore[union-attr]
    assert certs.common_name((tmp_path / "pki" / "client-bob.pem").read_bytes()) == "bob"


# ---------------------------------------------------------------------- FUSE mounts
def _serve_process(tmp: Path, pki: dict[str, Path]):  # type: ignore[no-untyped-def]
    """`metafs serve` with TLS and token authentication, as a process of its own."""
    import os
    import subprocess
    import sys
    import time

    ready, log = tmp / "ready", tmp / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAFS_")}
    with open(log, "wb") as out:
        p = subprocess.Popen(
            [sys.executable, "-m", "metafs.cli", "serve", "--data", str(tmp / "data"),
             "--listen", "127.0.0.1:0", "--ready-file", str(ready),
             "--tls-cert", str(pki["server"]), "--tls-key", str(pki["server-key"]),
             "--auth-mode", "token", "--auth-file", str(pki["auth"])],
            stdout=out, stderr=out, env=env)
    deadline = time.monotonic() + 60
    while not (ready.exists() and ready.read_text()):
        assert p.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "metafs serve did not start"
        time.sleep(0.05)
    return p, ready.read_text().strip()


@pytest.fixture
def tls_token_serve(tmp_path: Path, pki: dict[str, Path]):  # type: ignore[no-untyped-def]
    p, address = _serve_process(tmp_path, pki)
    try:
        yield address
    finally:
        p.terminate()
        p.wait(30)


from fuse_fixtures import metafs_cmd, mount_factory, needs_fuse  # noqa: E402,F401


@needs_fuse
def test_mount_of_tls_token_namenode(tls_token_serve, pki, mount_factory,  # type: ignore[no-untyped-def]
                                     tmp_path: Path) -> None:
    """`metafs mount --namenode` reaches a namenode that serves TLS and requires a token:
    what is written through the mount is read back through it and by a client."""
    address = tls_token_serve
    tok = tmp_path / "gateway.token"
    tok.write_text(ROOT_TOKEN + "\n")
    tok.chmod(0o600)
    m = mount_factory("--namenode", address, "--tls-ca", str(pki["ca"]),
                      "--token-file", str(tok))
    (m / "hello.txt").write_bytes(b"over TLS, with a token")
    assert (m / "hello.txt").read_bytes() == b"over TLS, with a token"
    assert "hello.txt" in os.listdir(m.path)
    from metafs.config import load

    s = load(overrides={"data_dir": str(tmp_path / "client")}, environ={})
    with Client(settings=_client_settings(s, address,
                                          tls_ca=str(pki["ca"]), token=ROOT_TOKEN)) as fs:
        assert fs.read_bytes("/hello.txt") == b"over TLS, with a token"


@needs_fuse
def test_mount_with_wrong_token_fails_clearly(tls_token_serve, pki,  # type: ignore[no-untyped-def]
                                              tmp_path: Path) -> None:
    import subprocess

    address = tls_token_serve
    tok = tmp_path / "wrong.token"
    tok.write_text("guess\n")
    tok.chmod(0o600)
    mp = tmp_path / "m"
    mp.mkdir()
    for extra in (["--token-file", str(tok)], []):
        res = subprocess.run(
            metafs_cmd("mount", str(mp), "--log-file", str(tmp_path / "m.log"),
                       "--namenode", address, "--tls-ca", str(pki["ca"]), *extra),
            capture_output=True, text=True, timeout=120)
        assert res.returncode != 0
        assert not os.path.ismount(mp)
        want = "token is not known" if extra else "requires a bearer token"
        assert "cannot mount" in res.stderr and want in res.stderr, res.stderr
        assert "EACCES" in res.stderr, res.stderr


@pytest.mark.parametrize("text, wanted", [
    ('[token.alice]\ntoken = "t"\nuid = 1000\n',
     "unknown table [token] (valid tables: certs, tokens)"),
    ('[tokens.alice]\ntoken = "t"\nuid = 1000\ntrustd = true\n',
     "unknown key 'trustd' in [tokens.alice] (valid keys: gid, groups, token, token_sha256, "
     "trusted, uid)"),
    ('[certs.bob]\nuid = 1000\ntoken = "t"\n',
     "unknown key 'token' in [certs.bob] (valid keys: gid, groups, trusted, uid)"),
    ('[tokens]\ntoken = "t"\nuid = 1000\n', "tokens.token is not a table"),
    ('[tokens.alice]\ntoken = "t"\nuid = 1000\ntrusted = "false"\n',
     "[tokens.alice]: trusted must be true or false, not 'false'"),
    ('[tokens.alice]\ntoken = "t"\nuid = "1000"\n',
     "[tokens.alice]: uid, gid and groups must be integers"),
    ('[tokens.alice]\nuid = 1000\n', "[tokens.alice] needs a token or token_sha256 string"),
    ('[certs.bob]\ngid = 1000\n', "[certs.bob] has no uid"),
    ('[tokens.alice\n', "not valid TOML"),
])
def test_identity_table_refuses_what_it_does_not_understand(tmp_path: Path, text: str,
                                                           wanted: str) -> None:
    from metafs.ops.auth import IdentityTable, write_secret

    path = tmp_path / "auth.toml"
    write_secret(path, text)
    with pytest.raises(OSError) as got:
        IdentityTable.load(path)
    assert got.value.errno == errno.EINVAL
    assert got.value.filename == str(path)
    assert wanted in got.value.strerror


def test_identity_table_reads_every_valid_key(tmp_path: Path) -> None:
    from metafs.ops.auth import IdentityTable, token_digest, write_secret

    path = tmp_path / "auth.toml"
    write_secret(path, '[tokens.alice]\ntoken = "a"\nuid = 1000\ngid = 100\ngroups = [100, 5]\n'
                       f'[tokens.gw]\ntoken_sha256 = "{token_digest("g").upper()}"\nuid = 0\n'
                       'trusted = true\n[certs.bob]\nuid = 1001\n')
    t = IdentityTable.load(path)
    alice, gw = t.by_token("a"), t.by_token("g")
    assert alice is not None and (alice.uid, alice.gid, alice.groups, alice.trusted) == (
        1000, 100, frozenset({100, 5}), False)
    assert gw is not None and (gw.uid, gw.gid, gw.trusted) == (0, 0, True)
    assert (t.by_cn["bob"].uid, t.by_cn["bob"].gid, t.by_cn["bob"].kind) == (1001, 1001, "cert")


def test_identity_table_that_is_missing_is_enoent(tmp_path: Path) -> None:
    from metafs.ops.auth import IdentityTable

    with pytest.raises(FileNotFoundError) as got:
        IdentityTable.load(tmp_path / "nothing.toml")
    assert (got.value.errno, got.value.filename) == (errno.ENOENT,
                                                      str(tmp_path / "nothing.toml"))


def test_serve_with_a_misspelt_identity_table_is_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    from metafs.ops.auth import write_secret

    auth = tmp_path / "auth.toml"
    write_secret(auth, '[tokens.alice]\ntoken = "t"\nuid = 1000\ntrustd = true\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAFS_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    ready = tmp_path / "ready"
    p = subprocess.Popen([sys.executable, "-m", "metafs.cli", "serve", "--data",
                          str(tmp_path / "d"), "--listen", "127.0.0.1:0", "--auth-mode",
                          "token", "--auth-file", str(auth), "--ready-file", str(ready)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    while p.poll() is None and not (ready.exists() and ready.read_text()):
        time.sleep(0.05)
    if p.poll() is None:  # it started serving with the table: stop it, then fail
        p.terminate()
    _, err = p.communicate(timeout=60)
    assert not ready.exists(), "metafs serve started with a misspelt identity table"
    assert p.returncode == 1
    assert err.splitlines()[-1] == (
        "metafs serve: unknown key 'trustd' in [tokens.alice] (valid keys: gid, groups, "
        f"token, token_sha256, trusted, uid): {auth} [EINVAL]")
