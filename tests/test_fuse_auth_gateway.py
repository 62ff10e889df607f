"""A FUSE mount with ``--allow-other`` as a trusted gateway of an authenticating namenode.

The namenode runs with TLS and authentication, its identities made by ``metafs auth init``
(as a team sets one up); the mount authenticates as the trusted service identity, with a
bearer token or a client certificate, and serves two local users of the machine. Each
user, an ordinary process with its own uid (``setpriv``), sees only what the mode bits
let it see, and what it makes is owned by it on the namenode.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from fuse_fixtures import GrpcNamenode, Mount, mount_factory, needs_fuse  # noqa: F401
from metafs.config import load
from metafs.ops.team import Member, init_team

pytestmark = needs_fuse

ALICE, BOB = 2301, 2302


def as_user(uid: int, code: str, *args: str) -> subprocess.CompletedProcess:
    """Run Python ``code`` as ``uid`` (gid the same, no other groups)."""
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                           sys.executable, "-c", code, *args],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(params=("token", "cert"))
def gateway(request: pytest.FixtureRequest, tmp_path: Path, mount_factory) -> Iterator[Mount]:
    kind = request.param
    pki = tmp_path / "pki"
    init_team(pki, ["localhost"], [Member("alice", ALICE, ALICE), Member("bob", BOB, BOB),
                                   Member("fuse-gateway", 0, 0, trusted=True)],
              credentials=kind)
    s = load(overrides={"data_dir": str(tmp_path / "nn-data"), "listen": "127.0.0.1:0",
                        "tls_cert": str(pki / "server.pem"),
                        "tls_key": str(pki / "server-key.pem"), "tls_ca": str(pki / "ca.pem"),
                        "auth_mode": kind, "auth_file": str(pki / "auth.toml"),
                        "tls_client_auth": kind == "cert"}, environ={})
    nn = GrpcNamenode(s).start()
    home = pki / "identities" / "fuse-gateway"
    cred = ["--token-file", str(home / "token")] if kind == "token" else \
        ["--tls-client-cert", str(home / "client.pem"),
         "--tls-client-key", str(home / "client-key.pem")]
    try:
        m = mount_factory("--allow-other", "--namenode", nn.address,
                          "--tls-ca", str(pki / "ca.pem"), *cred, public=True)
        yield m
        m.stop()  # while its namenode is there to take its last calls
    finally:
        nn.stop()


WRITE_OWN = """
import os, sys
m = sys.argv[1]
os.mkdir(m + "/alice", 0o700)
with open(m + "/alice/secret", "w") as f:
    f.write("alice's secret")
with open(m + "/shared.txt", "w") as f:
    f.write("anyone may read")
os.chmod(m + "/shared.txt", 0o644)
print(sorted(os.listdir(m + "/alice")))
"""

PROBE = """
import os, sys
m = sys.argv[1]
def attempt(what, fn):
    try:
        fn()
        print(what, "ok")
    except PermissionError:
        print(what, "denied")
attempt("list", lambda: os.listdir(m + "/alice"))
attempt("stat", lambda: os.stat(m + "/alice/secret"))
attempt("read", lambda: open(m + "/alice/secret").read())
attempt("read-shared", lambda: open(m + "/shared.txt").read())
attempt("write-shared", lambda: open(m + "/shared.txt", "a").write("bob was here"))
attempt("unlink-shared", lambda: os.unlink(m + "/shared.txt"))
with open(m + "/bob.txt", "w") as f:
    f.write("bob's")
print("own", os.stat(m + "/bob.txt").st_uid)
"""


def test_each_local_user_sees_what_posix_allows(gateway: Mount) -> None:
    m = gateway.path
    os.chmod(m, 0o1777)  # root, through the gateway: a sticky directory all users write in
    r = as_user(ALICE, WRITE_OWN, str(m))
    assert r.returncode == 0, r.stderr + gateway.log_text()
    assert r.stdout.strip() == "['secret']"
    r = as_user(BOB, PROBE, str(m))
    assert r.returncode == 0, r.stderr + gateway.log_text()
    assert r.stdout.split("\n")[:7] == [
        "list denied", "stat denied", "read denied", "read-shared ok", "write-shared denied",
        "unlink-shared denied", f"own {BOB}"]
    # what each made is its own on the namenode, and nothing of bob's attempts got through
    assert os.stat(m / "alice").st_uid == ALICE
    assert os.stat(m / "alice" / "secret").st_uid == ALICE
    assert os.stat(m / "shared.txt").st_uid == ALICE
    assert (m / "shared.txt").read_text() == "anyone may read"
    assert os.stat(m / "bob.txt").st_uid == BOB
    r = as_user(ALICE, "import sys; print(open(sys.argv[1]).read())", str(m / "alice/secret"))
    assert r.stdout.strip() == "alice's secret"
