"""Projects: a real namenode over TLS with bearer tokens and per-project credentials.

Alice owns project A (holding a sensitive data set) and is a data scientist in bob's
project B. Working in A (with her A credential) she reads A's data, but nothing of it gets
into B or anywhere outside A by any route: create, open for write, rename, link, bulk
create. A read-only share lets B read the data set in place and not write it; after the
unshare B sees nothing. Quotas hold per project, and search and provenance in B never show
A's unshared files; what is shared into B, B finds under the share's entry. The boundary,
share and quota tests run on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Any, Iterator

import pytest

from metafs.assembly import build_namenode, serve_grpc
from metafs.client import Client
from metafs.client.auth import make_transport, project_call
from metafs.config import Settings
from metafs.namenode.projects import CALL
from metafs.ops import certs
from metafs.ops.auth import add_token
from metafs.proto import metafs_pb2 as pb

from conftest import ENGINES, pg_database

TOKENS = {"alice": "alice-token-1", "bob": "bob-token-2", "admin": "admin-token-3",
          "gw": "gateway-token-4", "gw2": "gateway-token-5"}
IDS = {"alice": (1000, 1000), "bob": (1001, 1001), "admin": (0, 0)}
SECRET = b"patient_id,diagnosis\n17,flu\n"


class Cluster:
    def __init__(self, tmp: Path, db_url: str = "") -> None:
        certs.init_cluster(tmp, hosts=["localhost", "127.0.0.1"])
        auth = tmp / "auth.toml"
        for name, (uid, gid) in IDS.items():
            add_token(auth, name, uid, gid, [gid], TOKENS[name])
        for service in ("gw", "gw2"):  # services (root's uid, as a mount run by root has)
            add_token(auth, service, 0, 0, [0], TOKENS[service], trusted=True)
        self.ca = tmp / "ca.pem"
        s = Settings().with_(data_dir=str(tmp / "data"), tls_cert=str(tmp / "server.pem"),
                             tls_key=str(tmp / "server-key.pem"), tls_ca=str(self.ca),
                             auth_mode="token", auth_file=str(auth), serve_index=True)
        if db_url:
            s = s.with_(db_url=db_url)
        self.nn_settings = s
        self.nn = build_namenode(s)
        self.server = serve_grpc(self.nn, "127.0.0.1:0")
        self.address = self.server.address
        self.creds: dict[str, str] = {}

    def settings(self, token: str, address: str = "") -> Settings:
        return Settings().with_(namenode=address or self.address, token=token,
                                tls_ca=str(self.ca))

    def client(self, who: str, address: str = "") -> Client:
        """A client as ``who``: "alice" (her own identity) or "alice@A" (working in A)."""
        return Client(settings=self.settings(self.creds.get(who) or TOKENS[who], address))

    def project(self, who: str, **req: Any) -> Any:
        t = make_transport(self.settings(self.creds.get(who) or TOKENS[who]))
        try:
            return project_call(t, req)
        finally:
            t.close()

    def gateway(self, service: str, project: str, uid: int) -> Client:
        """A client of ``service`` claiming local ``uid`` in ``project`` on every call
        after opening its session (as a project gateway mount does for the process
        behind a request)."""
        c = Client(settings=self.settings(TOKENS[service]), uid=uid, gid=uid, groups=[uid])
        c.caller.project = project
        return c

    def credential(self, project: str, user: str) -> None:
        out = self.project(user, action="credential", project=project, user=user)
        self.creds[f"{user}@{project}"] = out["token"]

    def close(self) -> None:
        self.server.stop(0)
        self.nn.close()


# The boundary, share and quota tests run on both engines; the rest on SQLite only.
ON_BOTH_ENGINES = {"test_layout_members_and_roles",
                   "test_a_member_of_a_and_b_working_in_a_cannot_copy_a_into_b",
                   "test_read_only_share_then_unshare", "test_quota_holds_per_project"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "cluster" in metafunc.fixturenames:
        engines = ENGINES if metafunc.function.__name__ in ON_BOTH_ENGINES else ["sqlite"]
        metafunc.parametrize("cluster", [pytest.param(e, marks=[pytest.mark.postgres])
                                         if e == "postgres" else e for e in engines],
                             indirect=True, scope="module")


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Cluster]:
    with contextlib.ExitStack() as stack:
        db_url = ""
        if request.param == "postgres":
            db_url = stack.enter_context(pg_database(request.getfixturevalue("pg_server_url")))
        c = Cluster(tmp_path_factory.mktemp("projects"), db_url)
        stack.callback(c.close)
        c.project("alice", action="create", name="A")
        c.project("bob", action="create", name="B")
        c.project("bob", action="add", project="B", user="alice", role="data_scientist")
        c.credential("A", "alice")
        c.credential("B", "alice")
        c.credential("B", "bob")
        with c.client("alice@A") as a:
            a.mkdir("/Projects/A/datasets/patients")
            a.write_bytes("/Projects/A/datasets/patients/records.csv", SECRET)
        with c.client("admin") as root:
            root.mkdir("/tmp", 0o1777)
            root.write_bytes("/tmp/open.txt", b"anyone may write this")
            root.chmod("/tmp/open.txt", 0o666)
        yield c


def refused(fn: Any, *args: Any, **kwargs: Any) -> OSError:
    with pytest.raises(OSError) as info:
        fn(*args, **kwargs)
    return info.value


def test_layout_members_and_roles(cluster: Cluster) -> None:
    with cluster.client("alice@A") as a:
        assert sorted(a.listdir("/Projects/A")) == ["datasets", "models", "runs"]
        st = a.stat("/Projects/A/datasets")
        assert st.st_mode & 0o7777 == 0o2770
    shown = cluster.project("bob", action="show", name="B")
    assert {(m["user"], m["role"]) for m in shown["members"]} == {
        ("bob", "data_owner"), ("alice", "data_scientist")}
    # a data scientist manages nothing
    with pytest.raises(OSError) as info:
        cluster.project("alice", action="add", project="B", user="carol", role="data_owner")
    assert info.value.errno == errno.EACCES
    names = [p["name"] for p in cluster.project("alice", action="list")]
    assert names == ["A", "B"]
    assert [p["name"] for p in cluster.project("alice@A", action="list")] == ["A"]
    with pytest.raises(OSError) as info:
        cluster.project("bob", action="create", name="B")
    assert info.value.errno == errno.EEXIST


def test_a_member_of_a_and_b_working_in_a_cannot_copy_a_into_b(cluster: Cluster) -> None:
    with cluster.client("alice@A") as a:
        assert a.read_bytes("/Projects/A/datasets/patients/records.csv") == SECRET
        routes = {
            "create": lambda: a.write_bytes("/Projects/B/datasets/copy.csv", SECRET),
            "rename": lambda: a.rename("/Projects/A/datasets/patients/records.csv",
                                       "/Projects/B/datasets/records.csv"),
            "link": lambda: a.link("/Projects/A/datasets/patients/records.csv",
                                   "/Projects/B/datasets/records.csv"),
            "bulk": lambda: a.bulk_create("/Projects/B/datasets", [("copy.csv", SECRET)],
                                          make_parents=False),
            "outside": lambda: a.write_bytes("/tmp/leak.csv", SECRET),
            "open-write": lambda: a.write_bytes("/tmp/open.txt", SECRET),
            "mkdir-outside": lambda: a.mkdir("/tmp/leak"),
        }
        for route, fn in routes.items():
            err = refused(fn)
            assert err.errno == errno.EACCES, route
            assert "project" in str(err), (route, str(err))
        # nothing changed
        assert a.read_bytes("/tmp/open.txt") == b"anyone may write this"
        assert not a.exists("/tmp/leak.csv")
        # inside the project everything works
        a.write_bytes("/Projects/A/models/m.bin", b"weights")
        a.rename("/Projects/A/models/m.bin", "/Projects/A/runs/m.bin")
        a.link("/Projects/A/runs/m.bin", "/Projects/A/models/m.bin")
        a.bulk_create("/Projects/A/runs", [("r1.json", b"{}")])
    with cluster.client("alice@B") as b:
        # the same person in B cannot even see A
        assert refused(b.listdir, "/Projects/A").errno == errno.EACCES
        assert refused(b.read_bytes,
                       "/Projects/A/datasets/patients/records.csv").errno == errno.EACCES
    with cluster.client("admin") as root:
        assert sorted(root.listdir("/Projects/B/datasets")) == []


def test_read_only_share_then_unshare(cluster: Cluster) -> None:
    with pytest.raises(OSError) as info:  # only a data owner of A shares
        cluster.project("bob", action="share", path="/Projects/A/datasets/patients", to="B",
                        read_only=True)
    assert info.value.errno == errno.EACCES
    out = cluster.project("alice", action="share", path="/Projects/A/datasets/patients",
                          to="B", read_only=True)
    assert out["entry"] == "/Projects/B/datasets/A::patients"
    entry = out["entry"]
    with cluster.client("bob@B") as b, cluster.client("alice@A") as a:
        assert b.read_bytes(f"{entry}/records.csv") == SECRET
        assert refused(b.write_bytes, f"{entry}/records.csv", b"x").errno == errno.EACCES
        assert refused(b.write_bytes, f"{entry}/new.csv", b"x").errno == errno.EACCES
        assert refused(b.remove, f"{entry}/records.csv").errno == errno.EACCES
        assert refused(b.rmdir, entry).errno in (errno.EPERM, errno.ENOTEMPTY, errno.EACCES)
        assert refused(b.rename, entry, "/Projects/B/datasets/mine").errno == errno.EPERM
        # no copy: a write and a rename in A are seen at once
        a.write_bytes("/Projects/A/datasets/patients/more.csv", b"18,cold\n")
        assert b.read_bytes(f"{entry}/more.csv") == b"18,cold\n"
        a.rename("/Projects/A/datasets/patients/more.csv",
                 "/Projects/A/datasets/patients/renamed.csv")
        assert sorted(b.listdir(entry)) == ["records.csv", "renamed.csv"]
        # A still writes its own shared data set; the share is busy for rmdir
        a.write_bytes("/Projects/A/datasets/patients/more.csv", b"more")
        shown = cluster.project("alice", action="show", name="A")
        assert shown["shared_out"][0]["to"] == "B" and shown["shared_out"][0]["read_only"]
    cluster.project("alice", action="unshare", path="/Projects/A/datasets/patients", to="B")
    with cluster.client("bob@B") as b:
        assert "A::patients" not in b.listdir("/Projects/B/datasets")
        assert refused(b.read_bytes, f"{entry}/records.csv").errno == errno.ENOENT
    records = [r for r in cluster.nn.ns.changelog_read(0, 10_000)[0]
               if r.op == pb.OP_PROJECT]
    import json

    actions = [json.loads(r.extra)["action"] for r in records]
    assert actions[:3] == ["create", "create", "add"]
    assert "share" in actions and actions[-1] == "unshare"


def test_quota_holds_per_project(cluster: Cluster) -> None:
    with pytest.raises(OSError) as info:
        cluster.project("alice", action="quota", project="A", files=1, nbytes=0)
    assert info.value.errno == errno.EACCES  # administrators set quotas
    used = cluster.project("alice", action="show", name="A")["quota"]["files"]
    cluster.project("admin", action="quota", project="A", files=used + 1, nbytes=0)
    with cluster.client("alice@A") as a, cluster.client("bob@B") as b:
        a.write_bytes("/Projects/A/runs/q1", b"1")
        assert refused(a.write_bytes, "/Projects/A/runs/q2", b"2").errno == errno.EDQUOT
        b.write_bytes("/Projects/B/runs/q2", b"2")  # B has no quota
        b.write_bytes("/Projects/B/runs/q3", b"3")
    q = cluster.project("alice", action="show", name="A")["quota"]
    assert q["max_files"] == used + 1 and q["files"] == used + 1
    cluster.project("admin", action="quota", project="A", files=0, nbytes=0)


def test_search_and_provenance_in_b_never_show_a(cluster: Cluster) -> None:
    with cluster.client("alice@A") as a:
        a.setxattr("/Projects/A/datasets/patients/records.csv", "user.sensitive", b"1")
        assert a.search("sensitive:1", wait=True).paths == [
            "/Projects/A/datasets/patients/records.csv"]
    with cluster.client("bob@B") as b, cluster.client("alice@B") as ab:
        for c in (b, ab):
            res = c.search("sensitive:1", wait=True, count=True)
            assert res.paths == [] and res.total == 0
            got = c.search("ext:csv", wait=True)
            assert not [p for p in got.paths if p.startswith("/Projects/A/")]
            with pytest.raises(OSError):
                c.upstream("/Projects/A/datasets/patients/records.csv")


@pytest.mark.postgres
def test_a_process_is_followed_across_two_namenodes(tmp_path: Path, pg_url: str) -> None:
    """One process of alice's machine, through two mounts (here: clients sending what her
    mounts send for it, its process key) and two namenodes of one PostgreSQL database:
    after it read A's data set it writes nothing into B nor outside every project; a share
    into B is B's to read and process."""
    c = Cluster(tmp_path, db_url=pg_url)
    nn2 = build_namenode(c.nn_settings.with_(serve_index=False))
    server2 = serve_grpc(nn2, "127.0.0.1:0")
    try:
        c.project("alice", action="create", name="A")
        c.project("bob", action="create", name="B")
        c.project("bob", action="add", project="B", user="alice", role="data_scientist")
        c.credential("A", "alice")
        c.credential("B", "alice")
        with c.client("alice@A") as a:
            for d in ("patients", "public"):
                a.mkdir(f"/Projects/A/datasets/{d}")
                a.write_bytes(f"/Projects/A/datasets/{d}/records.csv", SECRET)
        c.project("alice", action="share", path="/Projects/A/datasets/public", to="B",
                  read_only=True)
        with c.client("admin") as root:
            root.mkdir("/tmp")
            root.chmod("/tmp", 0o1777)
        with c.client("alice@A") as a, c.client("alice@B", server2.address) as b, \
                c.client("alice", server2.address) as own:
            for client in (a, b, own):
                client.caller.process = "boot:4242:17"  # one process, as its mounts name it
            assert b.read_bytes("/Projects/B/datasets/A::public/records.csv") == SECRET
            b.write_bytes("/Projects/B/runs/summary.csv", b"1 row\n")  # a share is B's to read
            assert a.read_bytes("/Projects/A/datasets/patients/records.csv") == SECRET
            err = refused(b.write_bytes, "/Projects/B/runs/copy.csv", SECRET)
            assert err.errno == errno.EACCES
            assert "read data of project 'A'; copying it into project 'B'" in str(err)
            assert refused(b.write_bytes, "/Projects/B/runs/summary.csv", SECRET).errno == \
                errno.EACCES  # an open for writing, too
            err = refused(own.write_bytes, "/tmp/copy.csv", SECRET)
            assert err.errno == errno.EACCES and "out of the project" in str(err)
            a.write_bytes("/Projects/A/runs/copy.csv", SECRET)  # inside A, as ever
        with c.client("alice@B", server2.address) as b:  # another process
            b.caller.process = "boot:4243:18"
            b.write_bytes("/Projects/B/runs/copy.csv", b"B's own")
            assert b.read_bytes("/Projects/B/runs/summary.csv") == b"1 row\n"
            b.caller.process = "k" * 129  # no such key: refused, nothing recorded
            assert refused(b.read_bytes, "/Projects/B/runs/copy.csv").errno == errno.EINVAL
    finally:
        server2.stop(0)
        nn2.close()
        c.close()


def test_the_client_names_the_call_the_namenode_serves() -> None:
    """The client cannot import the namenode (the layers), so it names the call itself."""
    from metafs.client.auth import PROJECTS_CALL

    assert PROJECTS_CALL == CALL



def test_search_and_lineage_across_a_share(cluster: Cluster) -> None:
    """B finds the files of a data set shared into it, under the share's entry; a model B
    trains on it shows the data set upstream, and A sees downstream that a run of another
    identity read its data set, not B's model."""
    import metafs

    entry = cluster.project("alice", action="share", path="/Projects/A/datasets/patients",
                            to="B", read_only=True)["entry"]
    try:
        with cluster.client("alice@A") as a:
            a.setxattr("/Projects/A/datasets/patients/records.csv", "user.cohort", b"2026")
        with cluster.client("bob@B") as b:
            with metafs.run("train-on-shared", client=b):
                b.read_bytes(f"{entry}/records.csv")
                b.write_bytes("/Projects/B/models/triage.bin", b"weights")
            res = b.search("cohort:2026", wait=True, count=True)
            assert res.paths == [f"{entry}/records.csv"] and res.total == 1
            ds = b.search("name:patients type:dir").hits  # the data set: by its entry
            st = b.stat(entry)
            assert [(h["path"], h["mode"], h["uid"]) for h in ds] == [
                (entry, st.st_mode, st.st_uid)]
            for under in ("/Projects/B", entry):  # the share's files are below its entry
                assert b.search(f"under:{under} cohort:2026").paths == [
                    f"{entry}/records.csv"]
            assert not [p for p in b.search("ext:csv", wait=True).paths
                        if p.startswith("/Projects/A/")]
            up = b.upstream("/Projects/B/models/triage.bin")
            paths = {x["path"] for x in up.artifacts.values()}
            # the file read, or its data set (a directory of files), under B's path
            shared = {entry, f"{entry}/records.csv"}
            assert "/Projects/B/models/triage.bin" in paths and paths & shared, paths
            assert not [p for p in paths if p.startswith("/Projects/A/")]
            assert b.provenance().show(f"{entry}/records.csv")["path"] in shared
        with cluster.client("alice@A") as a:
            down = a.downstream("/Projects/A/datasets/patients/records.csv")
            run = next(r for r in down.runs.values() if r["name"] == "train-on-shared")
            assert run["cmdline"] == ""  # another identity's run: how it ran is not shown
            assert not [x for x in down.artifacts.values()
                        if x["path"].startswith("/Projects/B/")]
    finally:
        cluster.project("alice", action="unshare", path="/Projects/A/datasets/patients",
                        to="B")
    with cluster.client("bob@B") as b:
        assert b.search("cohort:2026", wait=True).paths == []
    with cluster.client("alice@A") as a:  # the data set's document is whole again
        st = a.stat("/Projects/A/datasets/patients")
        assert [(h["paths"], h["nlink"]) for h in
                a.search("name:patients type:dir", wait=True).hits] == [
            (["/Projects/A/datasets/patients"], st.st_nlink)]


def test_a_project_client_certificate(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """`metafs project credential A alice --cert DIR` issues a client certificate the
    namenode (mutual TLS) takes as alice@A: it works inside A, is refused in B and by a
    project mount of B; a certificate of the same name that was never registered, or
    whose member was removed, is refused."""
    from metafs.cli import main
    from metafs.config import load
    from metafs.fuse.project import open_project
    from metafs.ops.auth import add_cert_identity

    pki = tmp_path / "pki"
    certs.init_cluster(pki, hosts=["localhost", "127.0.0.1"], clients=["alice", "bob"])
    auth = pki / "auth.toml"
    add_cert_identity(auth, "alice", 1000, 1000, [1000])
    add_cert_identity(auth, "bob", 1001, 1001, [1001])
    nn = build_namenode(Settings().with_(
        data_dir=str(tmp_path / "data"), tls_cert=str(pki / "server.pem"),
        tls_key=str(pki / "server-key.pem"), tls_ca=str(pki / "ca.pem"), tls_client_auth=True,
        auth_mode="cert", auth_file=str(auth)))
    server = serve_grpc(nn, "127.0.0.1:0")
    try:
        def own(name: str) -> Path:
            cfg = tmp_path / f"{name}.toml"
            cfg.write_text(f'namenode = "{server.address}"\ntls_ca = "{pki}/ca.pem"\n'
                           f'tls_client_cert = "{pki}/client-{name}.pem"\n'
                           f'tls_client_key = "{pki}/client-{name}-key.pem"\n')
            return cfg

        def project(name: str, *argv: str) -> tuple[int, str]:
            """The exit status and error output of `metafs project ...` as ``name``."""
            rc = main(["project", *argv, "--config", str(own(name))])
            return rc, capsys.readouterr().err

        assert project("alice", "create", "A")[0] == 0
        assert project("bob", "create", "B")[0] == 0
        rc, err = project("bob", "gateway", "A", "--service", "fuse-gw")
        assert rc == 1 and "only a data owner" in err, err
        assert project("alice", "gateway", "A", "--service", "fuse-gw") == (0, "")
        assert project("alice", "gateway", "A", "--service", "fuse-gw", "--remove") == (0, "")
        rc, err = project("alice", "gateway", "A", "--service", "fuse-gw", "--remove")
        assert rc == 1 and "is not a gateway" in err, err
        home = tmp_path / "alice@A"
        # signed where the CA's key is, registered by the namenode: only for a member,
        # by itself, a data owner or an administrator (bob is none of these in A)
        rc, err = project("bob", "credential", "A", "alice", "--cert", str(home),
                          "--ca-dir", str(pki))
        assert rc == 1 and "only a data owner" in err, err
        assert not home.exists()
        assert project("alice", "credential", "A", "alice", "--cert", str(home),
                       "--ca-dir", str(pki)) == (0, "")
        assert certs.common_name((home / "client.pem").read_bytes()) == "alice@A"
        with Client(settings=load(str(home / "config.toml"), environ={})) as a:
            assert a.transport.whoami()["project"] == "A"
            a.write_bytes("/Projects/A/runs/by-cert.txt", b"in A")
            assert refused(a.listdir, "/Projects/B").errno == errno.EACCES
            assert refused(a.write_bytes, "/Projects/B/runs/x", b"x").errno == errno.EACCES
            assert open_project(a, "A").identity == "alice@A"
            assert refused(open_project, a, "B").errno == errno.EACCES
        # a certificate with the same name, signed by the same CA, never registered
        forged = certs.issue(certs.load(pki / "ca.pem", pki / "ca-key.pem"), "alice@A",
                             server=False)
        forged.write(tmp_path / "forged.pem", tmp_path / "forged-key.pem")
        s = load(str(home / "config.toml"), environ={}).with_(
            tls_client_cert=str(tmp_path / "forged.pem"),
            tls_client_key=str(tmp_path / "forged-key.pem"))
        with pytest.raises(PermissionError, match="nor registered as a project credential"):
            Client(settings=s).close()
        # a removed member's certificate stops working
        assert project("alice", "add", "A", "carol") == (0, "")
        carol = tmp_path / "carol@A"
        assert project("alice", "credential", "A", "carol", "--cert", str(carol),
                       "--ca-dir", str(pki)) == (0, "")
        assert project("alice", "remove", "A", "carol") == (0, "")
        with pytest.raises(PermissionError, match="nor registered as a project credential"):
            Client(settings=load(str(carol / "config.toml"), environ={})).close()
    finally:
        server.stop(0)
        nn.close()


def test_a_project_gateway_acts_for_members_only(cluster: Cluster) -> None:
    """A service authorized as A's gateway acts for each local uid that is a member of A,
    as its A identity (boundary included); any other uid, root (not a member) included,
    and any service not authorized for A, are refused per call with EACCES naming A."""
    c = cluster

    def denied(service: str, project: str, uid: int) -> str:
        with c.gateway(service, project, uid) as g:
            err = refused(g.listdir, f"/Projects/{project}/datasets")
        assert err.errno == errno.EACCES, err
        assert repr(project) in str(err), err
        return str(err)

    assert "is not a gateway" in denied("gw", "A", 1000)  # not authorized yet
    err = refused(c.project, "bob", action="gateway", project="A", service="gw")
    assert err.errno == errno.EACCES  # not A's data owner
    assert c.project("alice", action="gateway", project="A", service="gw")["gateway"]
    assert c.project("alice", action="show", name="A")["gateways"] == ["gw"]
    try:
        alice_uid = {m["user"]: m["uid"] for m in
                     c.project("alice", action="show", name="A")["members"]}["alice"]
        with c.gateway("gw", "A", 1000) as g:  # alice's local uid: alice@A
            assert g.listdir("/Projects/A/datasets") == ["patients"]
            assert g.read_bytes("/Projects/A/datasets/patients/records.csv") == SECRET
            g.write_bytes("/Projects/A/runs/out.txt", b"result")
            assert g.stat("/Projects/A/runs/out.txt").st_uid == alice_uid
            # the boundary holds through the gateway: nothing of A into B (alice is a
            # member of B too) nor into a world-writable place
            for fn, args in ((g.write_bytes, ("/Projects/B/runs/copy.csv", SECRET)),
                             (g.rename, ("/Projects/A/runs/out.txt", "/Projects/B/runs/o")),
                             (g.write_bytes, ("/tmp/open.txt", SECRET))):
                e = refused(fn, *args)
                assert e.errno == errno.EACCES and "boundary" in str(e), (fn, e)
            g.unlink("/Projects/A/runs/out.txt")
        assert "not a member's" in denied("gw", "A", 1001)  # bob is not in A
        c.project("alice", action="add", project="A", user="bob", role="data_scientist")
        with c.gateway("gw", "A", 1001) as g:  # ... until he is, as bob@A
            assert g.listdir("/Projects/A/datasets") == ["patients"]
        c.project("alice", action="remove", project="A", user="bob")
        assert "not a member's" in denied("gw", "A", 1001)  # ... and no longer
        assert "not a member's" in denied("gw", "A", 0)  # nor is root (admin)
        assert "not a member's" in denied("gw", "A", 4242)  # an unknown uid
        assert "is not a gateway" in denied("gw2", "A", 1000)
        assert "is not a gateway" in denied("gw", "B", 1000)  # authorized for A only
        with c.client("alice") as a:  # a person is no gateway, even to her own project
            a.caller.project = "A"
            e = refused(a.listdir, "/Projects/A/datasets")
        assert e.errno == errno.EACCES and "only a service identity" in str(e)
    finally:
        c.project("alice", action="gateway", project="A", service="gw", remove=True)
    assert c.project("alice", action="show", name="A")["gateways"] == []
    denied("gw", "A", 1000)
