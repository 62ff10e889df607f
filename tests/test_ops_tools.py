"""Operations tools on real namenodes and databases: sync (and --watch), cp, quotas,
fsck finding damage made on purpose, metrics, backup and restore."""

from __future__ import annotations

import errno
import os
import stat
import time
import urllib.request
from pathlib import Path
from typing import Callable

import pytest
from sqlalchemy import delete, insert, update

from metafs.assembly import build_namenode, serve_grpc
from metafs.cli import main
from metafs.client import Client
from metafs.config import Settings
from metafs.namenode import schema
from metafs.namenode.server import Namenode
from metafs.ops.fsck import fsck
from metafs.ops.sync import Watcher, sync_tree


def _until(cond: Callable[[], bool], what: str, limit: float = 60.0) -> None:
    """Wait for an asynchronous effect (watchdog delivery); fails only if it never comes."""
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


def _tree(fs: Client, top: str) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for d, dirs, files in fs.walk(top):
        for x in dirs:
            out[os.path.relpath(f"{d}/{x}", top)] = None
        for x in files:
            out[os.path.relpath(f"{d}/{x}", top)] = fs.read_bytes(f"{d}/{x}")
    return out


def _local_tree(top: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for d, dirs, files in os.walk(top):
        for x in dirs:
            out[os.path.relpath(os.path.join(d, x), top)] = None
        for x in files:
            out[os.path.relpath(os.path.join(d, x), top)] = Path(d, x).read_bytes()
    return out


def _same(fs: Client, top: str, local: Path) -> bool:
    try:
        return _tree(fs, top) == _local_tree(local)
    except FileNotFoundError:  # the watcher is changing the tree under the walk
        return False


@pytest.fixture
def remote(settings: Settings):  # type: ignore[no-untyped-def]
    nn = build_namenode(settings)
    srv = serve_grpc(nn, "127.0.0.1:0")
    try:
        yield settings.with_(namenode=srv.address), nn
    finally:
        srv.stop(0)
        nn.close()


# ---------------------------------------------------------------------- sync and cp
def test_sync_then_watch(remote, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s, _ = remote
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    for i in range(300):
        (src / "a" / f"f{i}.txt").write_text(f"file {i}")
    (src / "a" / "b" / "big.bin").write_bytes(os.urandom(200_000))  # above the inline limit?
    (src / "empty").mkdir()
    with Client(settings=s) as fs:
        st = sync_tree(fs, src, "/proj", progress=False)
        assert st.files_copied == 301 and _tree(fs, "/proj") == _local_tree(src)
        # a second run copies nothing; a change and a deletion are picked up
        assert sync_tree(fs, src, "/proj", progress=False).files_copied == 0
        (src / "a" / "f1.txt").write_text("changed, and longer")
        (src / "a" / "f2.txt").unlink()
        st = sync_tree(fs, src, "/proj", delete=True, progress=False)
        assert st.files_copied == 1 and st.deleted == 1
        assert _tree(fs, "/proj") == _local_tree(src)

        with Watcher(fs, src, "/proj") as w:
            (src / "new.txt").write_text("created")                    # create
            (src / "a" / "f3.txt").write_text("edited")                # edit
            (src / "a" / "f4.txt").rename(src / "a" / "b" / "moved.txt")  # rename a file
            (src / "a" / "f5.txt").unlink()                            # delete a file
            (src / "d1" / "d2").mkdir(parents=True)                    # new directories
            (src / "d1" / "d2" / "deep.txt").write_text("deep")
            (src / "a" / "b").rename(src / "renamed-dir")              # rename a directory
            (src / "empty").rmdir()                                    # delete a directory
            _until(lambda: _same(fs, "/proj", src), "remote matches local")
        assert not w.stats.errors
        assert w.stats.renamed >= 1
        assert fs.read_bytes("/proj/renamed-dir/moved.txt") == b"file 4"


class _ChangesDuringCopy:
    """A client that, when the first copy sends its first batch (after it has listed the
    local folder), changes the local folder: the changes a watcher must not lose."""

    def __init__(self, fs: Client, change: Callable[[], None]) -> None:
        self._fs = fs
        self._change: Callable[[], None] | None = change

    def bulk_create(self, *a, **kw):  # type: ignore[no-untyped-def]
        if self._change is not None:
            change, self._change = self._change, None
            change()
        return self._fs.bulk_create(*a, **kw)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._fs, name)


def test_sync_watch_keeps_changes_made_during_first_copy(remote, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from metafs.ops.sync import sync_and_watch

    s, _ = remote
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    for i in range(20):
        (src / "a" / f"f{i}.txt").write_text(f"file {i}")
    (src / "big.bin").write_bytes(os.urandom(200_000))

    def change() -> None:
        (src / "during").mkdir()
        (src / "during" / "new.txt").write_text("made while copying")
        (src / "a" / "f0.txt").write_text("edited while copying, longer")
        (src / "a" / "f1.txt").unlink()
        (src / "a" / "f2.txt").rename(src / "a" / "renamed.txt")
        (src / "big.bin").unlink()

    with Client(settings=s) as fs:
        st, w = sync_and_watch(_ChangesDuringCopy(fs, change), src, "/proj", progress=False)
        try:
            assert st.files_copied >= 18
            _until(lambda: _same(fs, "/proj", src), "changes during the copy reach metafs",
                   limit=20)
            assert fs.read_bytes("/proj/a/f0.txt") == b"edited while copying, longer"
            assert not fs.exists("/proj/a/f1.txt") and not fs.exists("/proj/big.bin")
            # and it goes on following
            (src / "later.txt").write_text("after")
            (src / "a" / "renamed.txt").rename(src / "during" / "moved.txt")
            _until(lambda: _same(fs, "/proj", src), "later changes reach metafs")
        finally:
            w.stop()
        assert not w.stats.errors, w.stats.errors


def test_sync_watch_cli(remote, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`metafs sync --watch`: the first copy, then live changes, until Ctrl-C."""
    import json
    import signal
    import subprocess
    import sys

    s, _ = remote
    src = tmp_path / "w"
    src.mkdir()
    (src / "one").write_text("1")
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAFS_")}
    p = subprocess.Popen([sys.executable, "-m", "metafs.cli", "sync", "--watch", "-q",
                          "--namenode", s.namenode, str(src), "/watched"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stderr is not None and "watching" in p.stderr.readline()
        with Client(settings=s) as fs:
            assert fs.read_bytes("/watched/one") == b"1"
            (src / "two").write_text("2")
            (src / "one").unlink()
            _until(lambda: _same(fs, "/watched", src), "live changes reach metafs")
    finally:
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    first, last = (json.loads(x) for x in out.splitlines() if x.strip())
    assert first["files_copied"] == 1 and last["files_copied"] >= 1 and last["deleted"] == 1


def test_cp_in_and_out_cli(remote, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s, _ = remote
    src = tmp_path / "in"
    (src / "x").mkdir(parents=True)
    for i in range(50):
        (src / "x" / f"{i}.dat").write_bytes(bytes([i]) * i)
    (src / "top.txt").write_text("top")
    nn = ["--namenode", s.namenode, "-q"]
    assert main(["cp", "-r", *nn, str(src), "mfs:/copied/"]) == 0
    assert main(["cp", *nn, str(src / "top.txt"), "mfs:/single.txt"]) == 0
    out = tmp_path / "out"
    assert main(["cp", "-r", *nn, "mfs:/copied/in", str(out)]) == 0
    assert _local_tree(out) == _local_tree(src)
    assert main(["cp", *nn, "mfs:/single.txt", str(tmp_path / "single")]) == 0
    assert (tmp_path / "single").read_text() == "top"


def test_sync_cli(remote, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s, _ = remote
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "one").write_text("1")
    assert main(["sync", "-q", "--namenode", s.namenode, str(tmp_path / "d"), "/synced"]) == 0
    with Client(settings=s) as fs:
        assert fs.read_bytes("/synced/one") == b"1"


# ---------------------------------------------------------------------- quotas
def test_quota_files_and_bytes(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data", settings.data_dir]
    with Client(settings=settings) as fs:
        fs.makedirs("/team/a")
        fs.makedirs("/other")
    assert main(["quota", "set", "/team", "--files", "5", "--bytes", "1K", *data]) == 0
    with Client(settings=settings) as fs:
        fs.write_bytes("/team/a/one", b"x" * 600)
        fs.write_bytes("/team/two", b"y" * 300)
        # bytes: 600 + 300 + 200 > 1024
        with pytest.raises(OSError) as ei:
            fs.write_bytes("/team/a/three", b"z" * 200)
        assert ei.value.errno == errno.EDQUOT
        # the failed write rolled back its bytes but the create of 'three' stays (1 entry)
        assert fs.stat("/team/a/three").st_size == 0
        # files: a, one, two, three = 4 entries; one more fits, then EDQUOT
        fs.mkdir("/team/b")
        with pytest.raises(OSError) as ei:
            fs.mkdir("/team/c")
        assert ei.value.errno == errno.EDQUOT
        with pytest.raises(OSError) as ei:
            fs.bulk_create("/team/b", [("p", b""), ("q", b"")])
        assert ei.value.errno == errno.EDQUOT
        with pytest.raises(OSError) as ei:  # moving in counts too
            fs.write_bytes("/other/f", b"1")
            fs.rename("/other/f", "/team/b/f")
        assert ei.value.errno == errno.EDQUOT
        fs.write_bytes("/other/g", b"no quota here" * 100)  # outside: unlimited
        fs.remove("/team/two")  # shrinking always works
        fs.mkdir("/team/c")
    capsys.readouterr()
    assert main(["quota", "list", "--json", *data]) == 0
    import json

    (q,) = json.loads(capsys.readouterr().out)
    assert q["path"] == "/team" and q["files"] == 5 and q["max_files"] == 5
    assert main(["quota", "clear", "/team", *data]) == 0
    with Client(settings=settings) as fs:
        fs.mkdir("/team/d")


def test_quota_holds_under_concurrent_creates_on_postgres(settings: Settings,
                                                          pg_url: str) -> None:
    """Two namenodes on one PostgreSQL create files at once in sibling directories under
    one quota'd directory. The window between the quota count and the commit is widened
    on purpose; still the number of entries never exceeds the limit."""
    import threading

    from metafs.client.transport import LocalTransport

    s = settings.with_(db_url=pg_url)
    nns = [build_namenode(s, background=False) for _ in range(2)]
    try:
        fss = [Client(settings=s, transport=LocalTransport(nn), uid=0, gid=0) for nn in nns]
        fss[0].makedirs("/q/a")
        fss[0].makedirs("/q/b")
        # a, b and 3 more: in the second round both creates would fit on their own
        nns[0].ns.quotas.set(fss[0].stat("/q").st_ino, max_files=5)
        for nn in nns:  # runs after the quota check, before the commit
            nn.ns.precommit_hooks.append(lambda tx: time.sleep(0.05))
        barrier = threading.Barrier(2)
        made: list[str] = []
        refused: list[str] = []

        def work(fs: Client, sub: str) -> None:
            for i in range(6):
                barrier.wait()
                name = f"/q/{sub}/f{i}"
                try:
                    fs.write_bytes(name, b"")
                    made.append(name)
                except OSError as e:
                    assert e.errno == errno.EDQUOT, e
                    refused.append(name)

        threads = [threading.Thread(target=work, args=(fs, sub))
                   for fs, sub in zip(fss, ("a", "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        (u,) = nns[0].ns.quotas.list()
        assert u.files <= u.max_files, f"quota of {u.max_files} holds {u.files} entries"
        assert len(made) == 3 and len(refused) == 9, (made, refused)
        for fs in fss:
            fs.close()
    finally:
        for nn in nns:
            nn.close()


# ---------------------------------------------------------------------- fsck
def _damage(nn: Namenode, fn: Callable) -> None:  # type: ignore[type-arg]
    nn.engine.write(fn)


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_fsck_finds_and_repairs_damage(engine: str, settings: Settings,
                                       request: pytest.FixtureRequest,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    s = settings if engine == "sqlite" else settings.with_(db_url=request.getfixturevalue("pg_url"))
    with Client(settings=s) as fs:
        fs.makedirs("/a/b/c")
        fs.makedirs("/x/y")
        fs.write_bytes("/a/file", b"data")
        fs.write_bytes("/a/b/hard", b"h")
        fs.link("/a/b/hard", "/x/hard2")
        fs.write_bytes("/x/y/lost", b"l")
        ino = {p: fs.stat(p).st_ino for p in ("/a", "/a/b", "/a/b/c", "/x", "/x/y",
                                              "/a/file", "/a/b/hard", "/x/y/lost")}
    nn = build_namenode(s, background=False)
    try:
        clean = fsck(nn.engine)
        assert clean.findings == [], clean.findings
        I, D, CL = schema.inodes, schema.dentries, schema.changelog

        def hurt(conn) -> None:  # type: ignore[no-untyped-def]
            # a dangling entry, a wrong nlink, a detached subtree, a directory cycle,
            # inline data of a missing inode, a changelog gap, a wrong cached type
            conn.execute(insert(D).values(parent=ino["/a"], name="ghost", ino=999_999,
                                          mode=stat.S_IFREG))
            conn.execute(update(I).where(I.c.id == ino["/a/b/hard"]).values(nlink=5))
            conn.execute(delete(D).where(D.c.parent == ino["/x"], D.c.name == "y"))
            conn.execute(update(D).where(D.c.parent == ino["/a"], D.c.name == "b")
                         .values(parent=ino["/a/b/c"]))
            conn.execute(insert(schema.file_data).values(ino=888_888, data=b"orphan"))
            conn.execute(delete(CL).where(CL.c.seq == 3))
            conn.execute(update(D).where(D.c.parent == ino["/"] if False else
                                         D.c.ino == ino["/a/file"]).values(mode=stat.S_IFDIR))

        ino["/"] = 1
        _damage(nn, hurt)
        rep = fsck(nn.engine)
        kinds = rep.kinds()
        assert {"dangling-dentry", "nlink", "unreachable", "cycle", "orphan-data",
                "changelog-gap", "dentry-type"} <= kinds, rep.to_dict()
        assert any(f.kind == "unreachable" and f.ino == ino["/x/y"] for f in rep.findings)
        assert any(f.kind == "cycle" and f.ino in (ino["/a/b"], ino["/a/b/c"])
                   for f in rep.findings)
        assert not rep.clean
    finally:
        nn.close()
    # the command reports (exit 1), repairs, and a second run finds only the gap
    data = ["--data", s.data_dir] + (["--db", s.db_url] if s.db_url else [])
    assert main(["fsck", *data]) == 1
    assert main(["fsck", "--repair", *data]) == 1  # the changelog gap cannot be repaired
    capsys.readouterr()
    assert main(["fsck", "--json", *data]) == 1
    import json

    after = json.loads(capsys.readouterr().out)
    assert {f["kind"] for f in after["findings"]} == {"changelog-gap"}
    with Client(settings=s) as fs:
        lost = set(fs.listdir("/lost+found"))
        assert f"#{ino['/x/y']}" in lost
        assert fs.read_bytes(f"/lost+found/#{ino['/x/y']}/lost") == b"l"
        assert fs.stat("/x/hard2").st_nlink == 2
        assert not fs.exists("/a/ghost")
        assert fs.read_bytes("/a/file") == b"data"
        # the cycle is broken and its directories are reachable again
        cyc = [n for n in lost if n != f"#{ino['/x/y']}"]
        assert len(cyc) == 1
        fs.makedirs("/after-repair/ok")


# ---------------------------------------------------------------------- metrics
def test_metrics_endpoint(settings: Settings) -> None:
    from metafs.metrics import serve_metrics

    nn = build_namenode(settings)
    srv = serve_grpc(nn, "127.0.0.1:0")
    http = serve_metrics(0)
    try:
        with Client(settings=settings.with_(namenode=srv.address), run_id="indexer-1") as fs:
            fs.mkdir("/m")
            with pytest.raises(FileNotFoundError):
                fs.stat("/nope")
            fs.changelog(0, 1)  # a consumer one record in
        body = urllib.request.urlopen(
            f"http://127.0.0.1:{http.server_port}/metrics").read().decode()
        assert 'metafs_ops_total{errno="OK",op="Mkdir"}' in body
        assert 'metafs_ops_total{errno="ENOENT",op="Resolve"}' in body
        assert 'metafs_op_seconds_bucket{le="0.005",op="Mkdir"}' in body
        head = nn.ns.changelog_head()
        assert f"metafs_changelog_head {float(head)}" in body
        assert 'metafs_consumer_position{consumer="indexer-1"} 1.0' in body
        assert f'metafs_consumer_lag_records{{consumer="indexer-1"}} {float(head - 1)}' in body
    finally:
        http.shutdown()
        srv.stop(0)
        nn.close()


# ---------------------------------------------------------------------- backup
@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_backup_and_restore(engine: str, settings: Settings, tmp_path: Path,
                            request: pytest.FixtureRequest) -> None:
    s = settings if engine == "sqlite" else settings.with_(db_url=request.getfixturevalue("pg_url"))
    db = ["--data", s.data_dir] + (["--db", s.db_url] if s.db_url else [])
    with Client(settings=s) as fs:
        fs.makedirs("/keep/me")
        fs.write_bytes("/keep/me/f", b"v1")
        assert main(["backup", *db, str(tmp_path / "meta.bak")]) == 0  # while serving
        fs.write_bytes("/keep/me/f", b"v2, after the backup")
        fs.write_bytes("/later", b"x")
    assert main(["backup", *db, str(tmp_path / "meta.bak")]) == 1  # never overwrites
    if engine == "sqlite":
        assert main(["restore", *db, str(tmp_path / "meta.bak")]) == 1  # needs --force
        assert main(["restore", "--force", *db, str(tmp_path / "meta.bak")]) == 0
    else:
        assert main(["restore", *db, str(tmp_path / "meta.bak")]) == 0
    with Client(settings=s) as fs:
        assert fs.read_bytes("/keep/me/f") == b"v1"
        assert not fs.exists("/later")
        fs.write_bytes("/works", b"after restore")
    nn = build_namenode(s, background=False)
    try:
        assert fsck(nn.engine).findings == []
    finally:
        nn.close()
