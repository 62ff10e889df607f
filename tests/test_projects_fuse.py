"""Project mounts: ``metafs mount MNT --project NAME`` against a real namenode over TLS.

Alice owns project A and is a data scientist in bob's project B. She mounts each project
with her credential of that project, on one machine, and works with ordinary programs
(``cp``, ``mv``, ``ln``): each mount shows its project's tree, works inside it, moving or
linking across the two mounts is refused (EXDEV: two mounts), and so is copying (EACCES:
the namenode follows the process that read A). After a read-only share of A's data set
into B, B's mount reads it (and B's programs write what they make of it in B) and cannot
write, move or link it.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from fuse_fixtures import GrpcNamenode, Mount, metafs_cmd, mount_factory, needs_fuse  # noqa: F401
from metafs.client import Client
from metafs.client.auth import make_transport, project_call
from metafs.config import Settings, load
from metafs.fuse.project import open_project
from metafs.ops import certs
from metafs.ops.auth import add_token
from metafs.proto import metafs_pb2 as pb

pytestmark = needs_fuse

TOKENS = {"alice": "alice-token-1", "bob": "bob-token-2", "carol": "carol-token-3",
          "gw": "gateway-token-4"}
ALICE, BOB, CAROL = 2401, 2402, 2403  # local uids (no one else's on the machine)
SECRET = b"patient_id,diagnosis\n17,flu\n"


class Projects:
    """A namenode with TLS and tokens, projects A (alice) and B (bob, with alice)."""

    def __init__(self, tmp: Path) -> None:
        certs.init_cluster(tmp, hosts=["localhost", "127.0.0.1"])
        auth = tmp / "auth.toml"
        for name, uid in (("alice", ALICE), ("bob", BOB), ("carol", CAROL)):
            add_token(auth, name, uid, uid, [uid], TOKENS[name])
        add_token(auth, "gw", 0, 0, [0], TOKENS["gw"], trusted=True)  # a gateway service
        self.tmp = tmp
        self.ca = tmp / "ca.pem"
        self.nn = GrpcNamenode(load(overrides={
            "data_dir": str(tmp / "data"), "listen": "127.0.0.1:0",
            "tls_cert": str(tmp / "server.pem"), "tls_key": str(tmp / "server-key.pem"),
            "tls_ca": str(self.ca), "auth_mode": "token", "auth_file": str(auth)},
            environ={})).start()
        self.tokens = dict(TOKENS)

    def settings(self, who: str) -> Settings:
        return Settings().with_(namenode=self.nn.address, token=self.tokens[who],
                                tls_ca=str(self.ca))

    def call(self, who: str, **req: Any) -> Any:
        t = make_transport(self.settings(who))
        try:
            return project_call(t, req)
        finally:
            t.close()

    def credential(self, project: str, user: str) -> Path:
        """``user``'s token for ``project``, in a file (what ``--token-file`` takes)."""
        token = self.call(user, action="credential", project=project, user=user)["token"]
        self.tokens[f"{user}@{project}"] = token
        f = self.tmp / f"{user}@{project}.token"
        f.write_text(token + "\n")
        f.chmod(0o600)
        return f

    def token_file(self, who: str) -> Path:
        f = self.tmp / f"{who}.token"
        f.write_text(self.tokens[who] + "\n")
        f.chmod(0o600)
        return f

    def mount_args(self, token_file: Path, *extra: str) -> list[str]:
        return ["--namenode", self.nn.address, "--tls-ca", str(self.ca),
                "--token-file", str(token_file), *extra]


@pytest.fixture
def projects(tmp_path: Path) -> Iterator[Projects]:
    p = Projects(tmp_path / "cluster")
    try:
        p.call("alice", action="create", name="A")
        p.call("bob", action="create", name="B")
        p.call("bob", action="add", project="B", user="alice", role="data_scientist")
        yield p
    finally:
        p.nn.stop()


@pytest.fixture
def two_mounts(projects: Projects, mount_factory: Any) -> tuple[Mount, Mount]:
    a = mount_factory(*projects.mount_args(projects.credential("A", "alice"), "--project", "A"),
                      name="A")
    b = mount_factory(*projects.mount_args(projects.credential("B", "alice"), "--project", "B"),
                      name="B")
    return a, b


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)


def test_each_mount_shows_its_project_and_works_inside_it(
        projects: Projects, two_mounts: tuple[Mount, Mount]) -> None:
    a, b = two_mounts
    assert sorted(os.listdir(a.path)) == ["datasets", "models", "runs"]
    assert sorted(os.listdir(b.path)) == ["datasets", "models", "runs"]
    (a / "datasets" / "patients").mkdir()
    (a / "datasets" / "patients" / "records.csv").write_bytes(SECRET)
    # ordinary programs inside the project
    for cmd in (["cp", "datasets/patients/records.csv", "runs/copy.csv"],
                ["mv", "runs/copy.csv", "runs/moved.csv"],
                ["ln", "runs/moved.csv", "models/linked.csv"],
                ["ln", "-s", "../datasets/patients/records.csv", "runs/sym.csv"]):
        r = subprocess.run(cmd, cwd=a.path, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (cmd, r.stderr, a.log_text())
    # B's mount is B's tree: nothing of A is in it (B first: this process
    # is about to read A, and may then write in A only)
    assert not (b / "datasets" / "patients").exists()
    (b / "runs" / "notes.txt").write_text("B's own")
    r = subprocess.run(["mv", "runs/notes.txt", "models/notes.txt"], cwd=b.path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (b / "models" / "notes.txt").read_text() == "B's own"
    assert (a / "runs" / "moved.csv").read_bytes() == SECRET
    assert (a / "runs" / "sym.csv").read_bytes() == SECRET
    assert os.stat(a / "models" / "linked.csv").st_nlink == 2
    # what the mount makes is alice@A's, in A's group, as seen from her A client
    members = {m["user"]: m["uid"] for m in projects.call("alice", action="show",
                                                          name="A")["members"]}
    st = os.stat(a / "runs" / "moved.csv")
    assert st.st_uid == members["alice"]
    with Client(settings=projects.settings("alice@A")) as c:
        assert c.read_bytes("/Projects/A/runs/moved.csv") == SECRET


def test_copying_moving_or_linking_across_the_two_mounts_is_refused(
        two_mounts: tuple[Mount, Mount]) -> None:
    """The two mounts are one person's: the kernel moves or links nothing across them
    (EXDEV), and the namenode follows the process across them: what a program read through
    A's mount it may not write through B's (EACCES, also for ``mv``, which copies after
    EXDEV, and for a shell redirection made before the read)."""
    a, b = two_mounts
    (a / "datasets" / "patients").mkdir()
    src = a / "datasets" / "patients" / "records.csv"
    src.write_bytes(SECRET)  # (written, not read, by this process)
    with pytest.raises(OSError) as info:
        os.rename(src, b / "datasets" / "records.csv")
    assert info.value.errno == errno.EXDEV
    with pytest.raises(OSError) as info:
        os.link(src, b / "datasets" / "records.csv")
    assert info.value.errno == errno.EXDEV
    r = run("ln", str(src), str(b / "datasets" / "records.csv"))
    assert r.returncode != 0 and "cross-device" in r.stderr.lower(), r.stderr
    assert not (b / "datasets" / "records.csv").exists()
    runs = b / "runs"
    for cmd in (["cp", str(src), str(runs / "copy.csv")],
                ["mv", str(src), str(runs / "moved.csv")],
                ["sh", "-c", f"cat '{src}' > '{runs / 'cat.csv'}'"]):
        r = run(*cmd)
        assert r.returncode != 0, cmd
        assert "permission denied" in r.stderr.lower(), (cmd, r.stderr)
    assert sorted(os.listdir(runs)) == ["cat.csv"]  # made by the shell before cat read A
    assert (runs / "cat.csv").stat().st_size == 0
    assert src.read_bytes() == SECRET
    # inside A a program copies what it read; another program writes in B
    r = run("sh", "-c", f"cp '{src}' '{a / 'runs'}/' && echo B > '{runs / 'own.txt'}'")
    assert r.returncode == 0, r.stderr
    assert (a / "runs" / "records.csv").read_bytes() == SECRET

def test_a_read_only_share_is_read_in_b_and_not_written(
        projects: Projects, two_mounts: tuple[Mount, Mount]) -> None:
    a, b = two_mounts
    (a / "datasets" / "patients").mkdir()
    (a / "datasets" / "patients" / "records.csv").write_bytes(SECRET)
    entry = projects.call("alice", action="share", path="/Projects/A/datasets/patients",
                          to="B", read_only=True)["entry"]
    assert entry == "/Projects/B/datasets/A::patients"
    shared = b / "datasets" / "A::patients"
    assert os.listdir(shared) == ["records.csv"]
    assert (shared / "records.csv").read_bytes() == SECRET
    r = run("cp", str(shared / "records.csv"), str(b / "runs" / "copy.csv"))
    assert r.returncode == 0, r.stderr  # B may process what is shared with it
    # ... but not write, add to, move or link the shared data set
    for cmd in (["sh", "-c", f"echo changed >> '{shared / 'records.csv'}'"],
                ["cp", str(b / "runs" / "copy.csv"), str(shared / "new.csv")],
                ["mv", str(shared / "records.csv"), str(b / "runs" / "taken.csv")],
                ["mv", str(shared / "records.csv"), str(shared / "renamed.csv")],
                ["ln", str(shared / "records.csv"), str(shared / "again.csv")],
                ["rm", str(shared / "records.csv")]):
        r = run(*cmd)
        assert r.returncode != 0, cmd
        assert "permission denied" in r.stderr.lower(), (cmd, r.stderr)
    assert os.listdir(shared) == ["records.csv"]
    assert (a / "datasets" / "patients" / "records.csv").read_bytes() == SECRET
    # a write in A is seen in B at once (no copy)
    (a / "datasets" / "patients" / "records.csv").write_bytes(SECRET + b"18,cold\n")
    with Client(settings=projects.settings("alice@B")) as c:
        assert c.read_bytes("/Projects/B/datasets/A::patients/records.csv").endswith(
            b"18,cold\n")


def test_a_mount_refuses_a_credential_of_another_project(
        projects: Projects, tmp_path: Path) -> None:
    mnt = tmp_path / "wrong"
    mnt.mkdir()
    for token_file, said in ((projects.credential("A", "alice"), "works in project 'A'"),
                             (tmp_path / "alice.token", "is not a project credential")):
        if not token_file.exists():
            token_file.write_text(TOKENS["alice"])
            token_file.chmod(0o600)
        r = subprocess.run(metafs_cmd("mount", str(mnt), "--log-file",
                                      str(tmp_path / "wrong.log"),
                                      *projects.mount_args(token_file, "--project", "B")),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode != 0
        assert said in r.stderr, r.stderr
        assert not os.path.ismount(mnt)


def test_allow_other_acts_only_for_the_credentials_holder(
        projects: Projects, mount_factory: Any) -> None:
    m = mount_factory(*projects.mount_args(projects.credential("A", "alice"), "--project",
                                           "A", "--allow-other"), name="A", public=True)
    (m / "runs" / "mine.txt").write_text("alice's")  # the user who mounted works in A
    assert sorted(os.listdir(m.path)) == ["datasets", "models", "runs"]
    probe = ("import os, sys\n"
             "for fn in (lambda: os.listdir(sys.argv[1]),\n"
             "           lambda: open(sys.argv[1] + '/runs/x', 'w')):\n"
             "    try:\n"
             "        fn(); print('ok')\n"
             "    except PermissionError:\n"
             "        print('denied')\n")
    r = subprocess.run(["setpriv", "--reuid=2302", "--regid=2302", "--clear-groups",
                        sys.executable, "-c", probe, str(m.path)],
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["denied", "denied"], r.stderr + m.log_text()
    assert sorted(os.listdir(m / "runs")) == ["mine.txt"]



GATEWAY_PROBE = """
import os, sys
m = sys.argv[1]
try:
    with open(m + "/runs/" + sys.argv[2], "w") as f:
        f.write("mine")
    print(sorted(os.listdir(m + "/runs")))
except PermissionError:
    print("denied")
"""


def test_a_project_gateway_acts_for_each_member_and_no_one_else(
        projects: Projects, mount_factory: Any) -> None:
    """A service authorized as A's gateway mounts A with --allow-other: alice and carol
    (members) each work as their own A identity; bob (in B only) and root are refused."""
    with Client(settings=projects.settings("gw")) as gw:  # what the mount checks first
        with pytest.raises(PermissionError, match="is not a gateway of project 'A'"):
            open_project(gw, "A")
    projects.call("alice", action="add", project="A", user="carol", role="data_scientist")
    projects.call("alice", action="gateway", project="A", service="gw")
    m = mount_factory(*projects.mount_args(projects.token_file("gw"), "--project", "A",
                                           "--allow-other"), name="A", public=True)
    said = {}
    for uid, name in ((ALICE, "alice"), (CAROL, "carol"), (BOB, "bob")):
        r = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                            sys.executable, "-c", GATEWAY_PROBE, str(m.path), name],
                           capture_output=True, text=True, timeout=60)
        said[name] = r.stdout.strip()
    assert said == {"alice": "['alice']", "carol": "['alice', 'carol']", "bob": "denied"}, \
        (said, m.log_text())
    # nothing the kernel cached for alice answers bob: his stat right after hers is asked
    # of the mount, and refused
    seen = [subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                            "stat", "-c", "%s", str(m / "runs" / "alice")],
                           capture_output=True, text=True, timeout=30) for uid in (ALICE, BOB)]
    assert [(r.returncode, r.stdout.strip()) for r in seen] == [(0, "4"), (1, "")], seen
    assert "Permission denied" in seen[1].stderr
    members = {u["user"]: u["uid"] for u in projects.call("alice", action="show",
                                                          name="A")["members"]}
    projects.credential("A", "alice")
    with Client(settings=projects.settings("alice@A")) as c:
        assert {n: c.stat(f"/Projects/A/runs/{n}").st_uid for n in ("alice", "carol")} == \
            {"alice": members["alice"], "carol": members["carol"]}
    with pytest.raises(PermissionError):  # root (this process) is no member of A
        os.listdir(m / "datasets")
    m.stop()  # sends the access events still waiting
    with Client(settings=projects.settings("gw")) as gw:  # a service reads the changelog
        records, _ = gw.changelog(0, limit=100_000)
        wrote = {r.ino: r.uid for r in records if r.op == pb.OP_ACCESS
                 and json.loads(r.extra)["wrote"]}
    with Client(settings=projects.settings("alice@A")) as c:
        inos = {n: c.stat(f"/Projects/A/runs/{n}").st_ino for n in ("alice", "carol")}
    # each member's writes are on record under the member's uid in the project
    assert {n: wrote.get(ino) for n, ino in inos.items()} == \
        {"alice": members["alice"], "carol": members["carol"]}
