"""Provenance is the cluster's, and checked: over a real gRPC namenode with TLS and token
identities, one user's lineage shows another nothing it may not see, access and run
records are bound to the caller, two clusters never mix their lineage in one client, and
an embedded volume keeps its graph in its own data directory."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any, Iterator

import pytest

import metafs
from metafs.assembly import build_namenode, serve_grpc
from metafs.cdc.provenance import Provenance
from metafs.client import Client
from metafs.config import Settings
from metafs.errors import FsError
from metafs.ops import certs
from metafs.ops.auth import add_token
from metafs.proto import metafs_pb2 as pb

TOKENS = {"alice": "alice-token-7f3a", "bob": "bob-token-91c2", "admin": "admin-token-5d0e"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    certs.init_cluster(d, hosts=["localhost", "127.0.0.1"], clients=[])
    auth = d / "auth.toml"
    add_token(auth, "alice", 1000, 1000, [1000], TOKENS["alice"])
    add_token(auth, "bob", 1001, 1001, [1001], TOKENS["bob"])
    add_token(auth, "admin", 0, 0, [], TOKENS["admin"])
    return {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server-key.pem",
            "auth": auth}


class Cluster:
    def __init__(self, settings: Settings, pki: dict[str, Path]) -> None:
        self.settings = settings.with_(tls_cert=str(pki["cert"]), tls_key=str(pki["key"]),
                                       tls_ca=str(pki["ca"]), auth_file=str(pki["auth"]),
                                       auth_mode="token", rpc_timeout=30.0)
        self.nn = build_namenode(self.settings)
        self.srv = serve_grpc(self.nn, "127.0.0.1:0")
        self.ca = str(pki["ca"])

    def client(self, who: str) -> Client:
        s = self.settings.with_(namenode=self.srv.address, tls_cert="", tls_key="",
                                auth_mode="none", auth_file="", token=TOKENS[who],
                                tls_ca=self.ca)
        return Client(settings=s)

    def close(self) -> None:
        self.srv.stop(0)
        self.nn.close()


@pytest.fixture
def cluster(settings: Settings, pki: dict[str, Path]) -> Iterator[Cluster]:
    c = Cluster(settings, pki)
    with c.client("admin") as root:
        root.mkdir("/home", 0o755)
        root.mkdir("/home/alice", 0o700)
        root.chown("/home/alice", 1000, 1000)
        root.mkdir("/shared")
        root.chmod("/shared", 0o777)
    try:
        yield c
    finally:
        c.close()


SECRET = "/home/alice/secret-data"


def alice_trains(c: Cluster) -> str:
    """Alice, inside a run, reads a data set in her 0700 home and writes two models: one
    in her home, one in the shared directory. Returns the run id."""
    with c.client("alice") as fs:
        fs.mkdir(SECRET)
        for i in range(3):
            fs.write_bytes(f"{SECRET}/img{i}.png", b"\x89PNG" + bytes([i]) * 20)
        with metafs.run("secret-train", params={"lr": 0.5}, client=fs) as r:
            for name in fs.listdir(SECRET):
                fs.read_bytes(f"{SECRET}/{name}")
            fs.write_bytes("/home/alice/cats.pt", b"private weights")
            fs.makedirs("/shared/models", exist_ok=True)
            fs.write_bytes("/shared/models/cats.pt", b"public weights")
        return r.run_id


def test_bob_sees_nothing_of_alices_private_lineage(cluster: Cluster) -> None:
    run_id = alice_trains(cluster)
    with cluster.client("alice") as fs, Provenance(fs) as p:
        mine = p.upstream("/home/alice/cats.pt")
        assert SECRET in {a["path"] for a in mine.artifacts.values()}
        assert {r["run_id"] for r in mine.runs.values()} >= {run_id}
    with cluster.client("bob") as fs, Provenance(fs) as p:
        # the private model and data set: refused as a stat would be
        for path in ("/home/alice/cats.pt", SECRET):
            with pytest.raises(PermissionError):
                p.upstream(path)
            with pytest.raises(PermissionError):
                p.show(path)
        # the public model: its writer run (how it ran left out), nothing of the data set
        g = p.upstream("/shared/models/cats.pt")
        assert {a["path"] for a in g.artifacts.values()} == {"/shared/models/cats.pt"}
        assert [d for _, d, _ in g.edges] == ["w"]
        (run,) = g.runs.values()
        assert run["run_id"] == run_id and run["params"] == {} and run["cmdline"] == ""
        text = json.dumps([g.to_dict(), p.runs(), p.runs("/shared/models/cats.pt"),
                           p.show("/shared/models/cats.pt"), p.status()])
        assert "/home/alice" not in text and "secret" not in text.replace("secret-train", "")
        assert "lr" not in text
        # no sizes of the whole graph, and no walk through the hidden data set
        assert set(p.status()) == {"position", "head", "lag"}
        assert p.downstream("/shared/models/cats.pt").runs == {}
        # alice's run listed only for the public model it wrote
        assert [r["run_id"] for r in p.runs() if r["run_id"] == run_id] == [run_id]
        with pytest.raises(PermissionError):
            p.reads_of(run_id)
        with pytest.raises(PermissionError):
            p.sync(rebuild=True)


def test_bob_sees_no_run_that_touched_only_hidden_files(cluster: Cluster) -> None:
    with cluster.client("alice") as fs:
        fs.mkdir(SECRET)
        fs.write_bytes(f"{SECRET}/a.csv", b"1,2\n")
        with metafs.run("hidden-only", client=fs):
            fs.read_bytes(f"{SECRET}/a.csv")
            fs.write_bytes("/home/alice/out.pt", b"w")
    with cluster.client("bob") as fs, Provenance(fs) as p:
        assert p.runs() == []
    with cluster.client("admin") as fs, Provenance(fs) as p:
        assert "hidden-only" in {r["name"] for r in p.runs()}


def _refused(fs: Client, method: str, req: Any) -> FsError:
    with pytest.raises(FsError) as ei:
        fs.transport.call(method, req)
    return ei.value


def test_records_are_bound_to_the_caller(cluster: Cluster) -> None:
    run_id = alice_trains(cluster)
    with cluster.client("admin") as root:
        public = root.ino("/shared/models/cats.pt")
        private = root.ino("/home/alice/cats.pt")
        root.write_bytes("/shared/bob-may-read.txt", b"x")
        readable = root.ino("/shared/bob-may-read.txt")
    with cluster.client("admin") as root:  # after the admin's own access events
        head = root.changelog_head()
    with cluster.client("bob") as bob:
        me = bob.caller
        attempts = [
            # an event claiming alice's uid
            ("RecordAccess", pb.RecordAccessRequest(caller=me, events=[pb.AccessEvent(
                ino=readable, read=True, uid=1000)]), "claims uid 1000"),
            # an event naming alice's run
            ("RecordAccess", pb.RecordAccessRequest(caller=me, events=[pb.AccessEvent(
                ino=readable, read=True, run_id=run_id)]), "belongs to uid 1000"),
            # alice's run as the caller's current run
            ("RecordAccess", pb.RecordAccessRequest(
                caller=pb.Caller(uid=me.uid, gid=me.gid, groups=me.groups,
                                 client_id=me.client_id, run_id=run_id),
                events=[pb.AccessEvent(ino=readable, read=True)]), "belongs to uid 1000"),
            # a run record for alice's run ("alice's run wrote this model")
            ("RecordRun", pb.RunRecordRequest(caller=me, run_id=run_id, json=json.dumps(
                {"event": "end", "status": "completed"})), "belongs to uid 1000"),
            # reading a file in alice's 0700 home, and writing a file bob may only read
            ("RecordAccess", pb.RecordAccessRequest(caller=me, events=[pb.AccessEvent(
                ino=private, read=True)]), "may not read"),
            ("RecordAccess", pb.RecordAccessRequest(caller=me, events=[pb.AccessEvent(
                ino=public, wrote=True)]), "may not write"),
            # one good event does not carry a bad one in with it
            ("RecordAccess", pb.RecordAccessRequest(caller=me, events=[
                pb.AccessEvent(ino=readable, read=True),
                pb.AccessEvent(ino=private, read=True)]), "may not read"),
        ]
        for method, req, why in attempts:
            err = _refused(bob, method, req)
            assert err.errno == errno.EACCES and why in err.message, (method, err)
        # what bob may do, he may: his own run, his own reads
        bob.transport.call("RecordRun", pb.RunRecordRequest(caller=me, run_id="bobs-run",
                                                            json='{"event": "start"}'))
        bob.transport.call("RecordAccess", pb.RecordAccessRequest(caller=me, events=[
            pb.AccessEvent(ino=readable, read=True, run_id="bobs-run")]))
    with cluster.client("admin") as root:
        assert root.changelog_head() == head + 2  # only bob's two good records
    with cluster.client("alice") as fs:  # and bob's run id is bob's now
        err = _refused(fs, "RecordRun", pb.RunRecordRequest(caller=fs.caller,
                                                            run_id="bobs-run", json="{}"))
        assert err.errno == errno.EACCES
        with Provenance(fs) as p:  # alice's lineage holds nothing of bob's
            names = {r["name"] for r in p.runs("/shared/models/cats.pt")}
            assert names == {"secret-train"}


def test_a_change_naming_someone_elses_run_is_not_that_run(cluster: Cluster) -> None:
    run_id = alice_trains(cluster)
    with cluster.client("bob") as bob:
        bob.caller.run_id = run_id  # claimed on an ordinary write
        bob.access_recorder.enabled = False
        bob.write_bytes("/shared/forged.pt", b"not alice's")
    with cluster.client("admin") as root, Provenance(root) as p:
        assert run_id not in {r["run_id"] for r in p.runs("/shared/forged.pt")}
        down = p.downstream(SECRET)
        assert "/shared/forged.pt" not in {a["path"] for a in down.artifacts.values()}


def test_two_clusters_never_mix(settings: Settings, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """One client home, two file systems: each answers from its own lineage."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local/share"))
    nodes = []
    for name in ("one", "two"):
        nn = build_namenode(settings.with_(data_dir=str(tmp_path / name)))
        nodes.append((nn, serve_grpc(nn, "127.0.0.1:0")))
    try:
        (_, one), (_, two) = nodes
        with Client(one.address) as fs:
            fs.makedirs("/data")
            for i in range(3):
                fs.write_bytes(f"/data/img{i}.png", b"x" * 10)
            with metafs.run("train-on-one", client=fs):
                for n in fs.listdir("/data"):
                    fs.read_bytes(f"/data/{n}")
                fs.makedirs("/models")
                fs.write_bytes("/models/cats.pt", b"w1")
            with Provenance(fs) as p:
                assert "/data" in {a["path"] for a in p.upstream("/models/cats.pt").datasets()}
        with Client(two.address) as fs:
            fs.makedirs("/models")
            fs.write_bytes("/models/cats.pt", b"w2")
            with Provenance(fs) as p:
                g = p.upstream("/models/cats.pt")
                assert g.datasets() == []
                assert "train-on-one" not in {r["name"] for r in g.runs.values()}
                assert "train-on-one" not in {r["name"] for r in p.runs()}
        assert not list(home.rglob("*provenance*"))  # no client keeps a graph
        dbs = {n: list((tmp_path / n / "provenance").glob("*.db")) for n in ("one", "two")}
        assert len(dbs["one"]) == len(dbs["two"]) == 1
        assert dbs["one"][0].name != dbs["two"][0].name  # named by each volume's uuid
    finally:
        for nn, srv in nodes:
            srv.stop(0)
            nn.close()


def test_embedded_volume_keeps_its_graph_in_its_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "vol"
    with Client(data_dir=str(data)) as fs:
        fs.makedirs("/d")
        for i in range(2):
            fs.write_bytes(f"/d/x{i}.csv", b"1\n")
        with metafs.run("embedded", client=fs):
            fs.read_bytes("/d/x0.csv")
            fs.write_bytes("/m.pt", b"w")
        with Provenance(fs) as p:
            assert "embedded" in {r["name"] for r in p.upstream("/m.pt").runs.values()}
            db = p.status()["db"]
        from metafs.namenode.runs import volume_uuid

        uuid = volume_uuid(fs.embedded.ns)
    assert db == f"sqlite:///{data / 'provenance' / (uuid + '.db')}"
    assert (data / "provenance" / f"{uuid}.db").exists()


def test_a_batch_of_access_events_is_checked_as_a_whole(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """A batch of access events (a mount sends them a hundred at a time) looks its inodes
    up a few hundred per statement, not one statement per event, and claims each run once:
    every event of an inode that exists is recorded, in order, with its run; an event of
    an inode removed meanwhile is dropped."""
    from metafs.namenode import runs

    monkeypatch.setattr(runs, "_INODES_PER_QUERY", 2)  # several statements for 6 inodes
    with Client(data_dir=str(tmp_path / "data")) as fs:
        inos = []
        for i in range(6):
            fs.write_bytes(f"/f{i}", b"x")
            inos.append(fs.ino(f"/f{i}"))
        fs.unlink("/f3")
        head = fs.changelog_head()
        events = [pb.AccessEvent(ino=ino, read=True, run_id="batch-run") for ino in inos]
        events.append(pb.AccessEvent(ino=inos[0], wrote=True, run_id="batch-run"))
        fs.transport.call("RecordAccess", pb.RecordAccessRequest(caller=fs.caller,
                                                                 events=events))
        records, _ = fs.changelog(head, 1000)
    access = [r for r in records if r.op == pb.OP_ACCESS]
    assert [r.ino for r in access] == [inos[i] for i in (0, 1, 2, 4, 5, 0)]
    assert {r.run_id for r in access} == {"batch-run"}
    assert [json.loads(r.extra)["wrote"] for r in access] == [False] * 5 + [True]


def test_access_events_go_in_full_batches_from_many_threads(tmp_path: Path) -> None:
    """Threads closing files at once (a mount's release threads) send their access events
    in full batches: a thread that finds a batch being sent goes on instead of waiting to
    send, after it, the few events that came in meanwhile (calls of one or two events
    each, and release threads queued behind them, on a busy mount). What is left of a
    batch goes with the next flush; every event arrives once."""
    import threading

    with Client(data_dir=str(tmp_path / "data")) as fs:
        fs.write_bytes("/f", b"x")
        ino = fs.ino("/f")
        rec = fs.access_recorder
        rec.flush()  # (the write's own event)
        rec.configure(batch=8, interval=60.0)
        sizes: list[int] = []
        send = fs.inodes.record_access

        def counted(events: Any, who: Any = None) -> None:
            sizes.append(len(events))
            send(events, who)

        fs.inodes.record_access = counted  # type: ignore[method-assign]
        head = fs.changelog_head()

        def closer(t: int) -> None:
            for i in range(50):
                rec.add(pb.AccessEvent(ino=ino, read=True, pid=t, ts_ns=i + 1))

        threads = [threading.Thread(target=closer, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sizes and all(n == 8 for n in sizes)
        rec.flush()
        assert sum(sizes) == 200 and all(n == 8 for n in sizes[:-1])
        records, _ = fs.changelog(head, 1000)
    assert len([r for r in records if r.op == pb.OP_ACCESS]) == 200
