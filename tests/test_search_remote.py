"""Search through the namenode (the Search call): remote clients need no index of their
own, the index follows the namespace (wait = read-your-writes), and a user never sees hits
in directories they may not search."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from metafs.assembly import build_namenode, serve_grpc
from metafs.cdc.search.query import QueryError
from metafs.client import Client
from metafs.config import Settings
from test_server import start_serve

REPO = Path(__file__).resolve().parents[1]
ALICE, BOB = (1000, 1000), (1001, 1001)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("METAFS_")}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """`metafs serve --index` in its own process; yields its address."""
    p, address, log = start_serve(tmp_path, "--index")
    try:
        yield address
    finally:
        p.terminate()
        assert p.wait(30) == 0, log.read_text()
    assert "search indexer running in the namenode" in log.read_text()


def _populate(root: Client) -> None:
    root.mkdir("/alice", 0o700)
    root.chown("/alice", *ALICE)
    root.mkdir("/pub", 0o755)
    for p, n in (("/alice/img5.jpg", 5), ("/pub/img4.jpg", 4), ("/pub/x1.jpg", 1)):
        with root.open(p, "wb") as f:
            f.write(b"jpeg")
        root.setxattr(p, "user.bicycles", json.dumps(n).encode())


def test_remote_clients_search_through_the_namenode(served: str, tmp_path: Path) -> None:
    with Client(served) as root, Client(served, uid=ALICE[0], gid=ALICE[1]) as alice, \
            Client(served, uid=BOB[0], gid=BOB[1]) as bob:
        _populate(root)
        # read-your-writes: wait makes the index reach the head first
        got = root.search("bicycles>3", wait=True, sort="name")
        assert got.paths == ["/pub/img4.jpg", "/alice/img5.jpg"]
        assert got.waited_for == root.changelog_head() and got.position >= got.waited_for
        assert alice.search("bicycles>3", sort="name").paths == ["/pub/img4.jpg",
                                                                  "/alice/img5.jpg"]
        # bob may not search /alice (mode 0700): its hit is left out, and counted
        res = bob.search("bicycles>3", sort="name", count=True)
        assert res.paths == ["/pub/img4.jpg"] and res.extra["hidden"] == 0  # not even counted
        assert res.total == 1  # the count does not tell of the hidden file either
        assert root.search("bicycles>3", count=True).total == 2
        assert res.hits[0]["tags"] == {"bicycles": 4}
        # the index follows the namespace: rename, retag, remove
        root.rename("/pub", "/public")
        root.setxattr("/public/x1.jpg", "user.bicycles", b"9")
        root.remove("/alice/img5.jpg")
        got = bob.search("bicycles>3", wait=True, sort="name", count=True)
        assert got.paths == ["/public/img4.jpg", "/public/x1.jpg"] and got.total == 2
        # paging: next_offset walks every match once
        first = root.search("ext:jpg", limit=1, sort="name")
        second = root.search("ext:jpg", limit=1, offset=first.extra["next_offset"], sort="name")
        assert first.paths == ["/public/img4.jpg"] and second.paths == ["/public/x1.jpg"]
        with pytest.raises(QueryError, match="column"):
            bob.search("bicycles>")
    # the command line, as a person would use it
    cli = [sys.executable, "-m", "metafs.cli", "search", "--namenode", served]
    out = subprocess.run([*cli, "bicycles>3", "--json", "--wait"], capture_output=True,
                         text=True, env=_env(), cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert sorted(h["path"] for h in json.loads(out.stdout)["hits"]) == [
        "/public/img4.jpg", "/public/x1.jpg"]
    bad = subprocess.run([*cli, "bicycles>"], capture_output=True, text=True, env=_env(),
                         cwd=REPO)
    assert bad.returncode == 2 and "bad query" in bad.stderr


def test_plain_serve_indexes_its_local_data(tmp_path: Path) -> None:
    """`metafs serve --data DIR` answers remote searches with no flag; --no-index does not."""
    (tmp_path / "plain").mkdir()
    (tmp_path / "off").mkdir()
    p, address, log = start_serve(tmp_path / "plain")
    try:
        with Client(address) as root:
            _populate(root)
            got = root.search("bicycles>3 ext:jpg", wait=True, sort="name")
            assert got.paths == ["/pub/img4.jpg", "/alice/img5.jpg"]
    finally:
        p.terminate()
        assert p.wait(30) == 0, log.read_text()
    assert "search indexer running in the namenode" in log.read_text()
    p, address, log = start_serve(tmp_path / "off", "--no-index")
    try:
        with Client(address) as root:
            with pytest.raises(OSError) as ei:
                root.search("bicycles>3")
            assert ei.value.errno == errno.EOPNOTSUPP
    finally:
        p.terminate()
        assert p.wait(30) == 0, log.read_text()
    assert "search indexer running" not in log.read_text()


def test_namenode_without_index_says_how_to_get_one(settings: Settings) -> None:
    nn = build_namenode(settings)
    srv = serve_grpc(nn, "127.0.0.1:0")
    try:
        with Client(srv.address) as c:
            with pytest.raises(OSError) as ei:
                c.search("bicycles>3")
            assert ei.value.errno == errno.EOPNOTSUPP
            assert "--index" in str(ei.value) and "metafs indexer" in str(ei.value)
    finally:
        srv.stop(0)
        nn.close()


def _search_served_by(settings: Settings, tmp_path: Path, uid: int) -> list[str]:
    nn = build_namenode(settings.with_(search_dir=str(tmp_path / "index")))
    srv = serve_grpc(nn, "127.0.0.1:0")
    try:
        with Client(srv.address, uid=uid, gid=uid) as c:
            return sorted(c.search("bicycles>=1").paths)
    finally:
        srv.stop(0)
        nn.close()


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_namenode_answers_from_a_separate_indexer(engine: str, settings: Settings,
                                                  tmp_path: Path,
                                                  request: pytest.FixtureRequest) -> None:
    """A `metafs indexer` keeps the index; namenodes given its --search-dir answer."""
    s = settings
    if engine == "postgres":
        s = s.with_(db_url=request.getfixturevalue("pg_url"))
    nn = build_namenode(s)
    srv = serve_grpc(nn, "127.0.0.1:0")
    try:
        with Client(srv.address) as root:
            _populate(root)
        out = subprocess.run(
            [sys.executable, "-m", "metafs.cli", "indexer", "--namenode", srv.address,
             "--index", str(tmp_path / "index"), "--once"],
            capture_output=True, text=True, env=_env(), cwd=REPO)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout.splitlines()[-1])["position"] == nn.ns.changelog_head()
    finally:
        srv.stop(0)
        nn.close()
    everything = ["/alice/img5.jpg", "/pub/img4.jpg", "/pub/x1.jpg"]
    assert _search_served_by(s, tmp_path, 0) == everything
    assert _search_served_by(s, tmp_path, BOB[0]) == everything[1:]
