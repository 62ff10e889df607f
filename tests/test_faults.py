"""Faults do not break mounts: namenodes killed (SIGKILL) and restarted, hung (SIGSTOP)
and going on, or failing over, under ordinary programs writing, fsyncing and listing on a
real mount. No error reaches the programs, and every file whose fsync returned is intact
byte for byte afterwards.

PostgreSQL stopped and started again under the same load is ridden through the same way
(the namenode's pools reconnect, the mount's retries carry the programs), and so is the S3
endpoint of the block store cut off for seconds under programs writing large files (the
mount's uploads and the namenode's checks at commit wait it out), under a remote namenode
and under one the mount runs in process. A client killed
in the middle of writing a large file leaves nothing behind once its lease has run out:
its handles are dropped, ``metafs gc`` removes the blocks it uploaded but never committed,
and ``metafs fsck`` finds nothing wrong.

A changelog subscriber of two namenodes goes on after its last record on the other one
when its namenode is killed: nothing skipped, nothing repeated.

Also: a call retried under its request id after its first attempt committed answers with
the first attempt's result (no EEXIST or ENOENT from its own earlier success).
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest

from metafs.assembly import build_namenode, serve_grpc
from metafs.client import Client
from metafs.config import Settings
from metafs.config import load as load_settings
from metafs.fuse.cache import MountCache
from metafs.proto import metafs_pb2 as pb
from metafs.proto import metafs_pb2_grpc as pb_grpc
from metafs.testing.faults import NamenodeProcess, TcpProxy, Workload, content

from blockstore_fixtures import make_bucket, moto_url  # noqa: F401
from fuse_fixtures import Mount, needs_fuse, stop_all  # noqa: F401


# ---------------------------------------------------------------------- request ids
def _call(stub: Any, method: str, request: Any, rid: str, attempt: int) -> Any:
    return getattr(stub, method)(request, timeout=30, metadata=(
        ("metafs-request-id", rid), ("metafs-attempt", str(attempt))))


def test_a_retried_mutation_answers_with_its_first_attempts_result(settings: Settings) -> None:
    nn = build_namenode(settings)
    srv = serve_grpc(nn, "127.0.0.1:0")
    ch = grpc.insecure_channel(srv.address)
    stub = pb_grpc.NamenodeStub(ch)
    me = pb.Caller(uid=0, gid=0, client_id="c1")
    try:
        _call(stub, "OpenSession", pb.SessionRequest(caller=me, client_id="c1"), "", 0)
        mk = pb.MkdirRequest(caller=me, parent=1, name="d", mode=0o755)
        rid = uuid.uuid4().hex
        first = _call(stub, "Mkdir", mk, rid, 0)
        again = _call(stub, "Mkdir", mk, rid, 1)        # not EEXIST: the same directory
        assert again.ino == first.ino
        with pytest.raises(grpc.RpcError) as ei:         # a new call is a new mkdir
            _call(stub, "Mkdir", mk, uuid.uuid4().hex, 0)
        assert ei.value.code() == grpc.StatusCode.ALREADY_EXISTS

        cr = pb.CreateRequest(caller=me, parent=first.ino, name="f", mode=0o100644,
                              exclusive=True, open=True, flags=1)
        rid = uuid.uuid4().hex
        made = _call(stub, "Create", cr, rid, 0)
        remade = _call(stub, "Create", cr, rid, 2)       # not EEXIST, and the same handle
        assert (remade.attr.ino, remade.handle) == (made.attr.ino, made.handle)

        rm = pb.NameRequest(caller=me, parent=first.ino, name="f")
        rid = uuid.uuid4().hex
        _call(stub, "Unlink", rm, rid, 0)
        _call(stub, "Unlink", rm, rid, 1)                # not ENOENT
        with pytest.raises(grpc.RpcError) as ei:
            _call(stub, "Unlink", rm, uuid.uuid4().hex, 1)
        assert ei.value.code() == grpc.StatusCode.NOT_FOUND

        # a request id names nothing for another identity's retry... nor for a failed call
        rid = uuid.uuid4().hex
        with pytest.raises(grpc.RpcError):
            _call(stub, "Rmdir", pb.NameRequest(caller=me, parent=1, name="nope"), rid, 0)
        with pytest.raises(grpc.RpcError) as ei:
            _call(stub, "Rmdir", pb.NameRequest(caller=me, parent=1, name="nope"), rid, 1)
        assert ei.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        ch.close()
        srv.stop(0)
        nn.close()


# ---------------------------------------------------------------------- restarts
def test_a_mount_believes_the_later_of_two_crossing_answers() -> None:
    """A listing the namenode answered before a file's write committed can reach the mount
    after the write's own reply (a restart lines them up: the reader's listing and the
    writer's fsync wait through the same outage and are answered together). The mount
    believed the listing, showed the size before the write for its attribute lifetime
    (a minute with the changelog follower), and the kernel, given that size, read the
    fsynced file back empty."""
    cache = MountCache(60.0, 60.0)
    written = pb.Attr(ino=7, mode=0o100644, nlink=1, size=3000, version=1)
    listed = pb.Attr(ino=7, mode=0o100644, nlink=1, size=0, version=0)
    cache.set_attr(written)
    assert cache.set_attr(listed) == written          # readdir pages, getattr replies
    assert cache.remember("/w/f", listed) == written  # lookups
    assert cache.attr(7) == written and cache.names["/w/f"][0] == 7
    truncated = pb.Attr(ino=7, mode=0o100644, nlink=1, size=0, version=2)
    assert cache.set_attr(truncated) == truncated and cache.attr(7) == truncated
    chmodded = pb.Attr(ino=7, mode=0o100600, nlink=1, size=0, version=2)
    assert cache.set_attr(chmodded) == chmodded       # the same version: the newer answer


@pytest.fixture(params=["sqlite", "postgresql"])
def db_args(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if request.param == "sqlite":
        return {"data_dir": tmp_path / "data"}
    return {"db_url": request.getfixturevalue("pg_url"),
            "blocks_url": (tmp_path / "blocks").as_uri()}


def _mounted_load(tmp_path: Path, namenodes: str, stop_all: list[Any],
                  env: dict[str, str] | None = None,
                  size: int = 3000) -> tuple[Mount, Workload]:
    """A mount of ``namenodes`` and two writers of files of ``size`` bytes (and a reader)
    in its directory ``w``."""
    mnt = Mount(tmp_path / "mnt", ["--namenode", namenodes], env).start()
    stop_all.append(mnt)
    (mnt.path / "w").mkdir()
    return mnt, Workload(mnt.path / "w", tmp_path, writers=2, size=size)


def _check_fsynced_through(fs: Any, load: Workload) -> None:
    """Every file the workload fsynced under /w reads back byte for byte through ``fs``."""
    files = load.fsynced()
    assert files
    for name, data in files:
        assert fs.read_bytes(f"/w/{name}") == data, name


def _check(seen: dict[str, Any], load: Workload, mnt: Path) -> None:
    errors = [e for kind in seen.values() for r in kind for e in r["errors"]]
    assert not errors, errors
    files = load.fsynced()
    assert files
    for name, data in files:
        assert (mnt / name).read_bytes() == data, name


@needs_fuse
def test_namenode_killed_and_restarted_under_load(tmp_path: Path, db_args: dict[str, Any],
                                                  stop_all: list[Any]) -> None:
    nn = NamenodeProcess(tmp_path, **db_args).start()
    stop_all.append(nn)
    mnt, load = _mounted_load(tmp_path, nn.address, stop_all)
    try:
        load.wait_for_progress(20)
        for _ in range(2):
            nn.kill()
            nn.start()
            load.wait_for_progress(20)
    finally:
        seen = load.finish()
    _check(seen, load, mnt.path / "w")
    assert "answers again" in mnt.log_text()


@needs_fuse
def test_failover_between_two_namenodes(tmp_path: Path, pg_url: str,
                                        stop_all: list[Any]) -> None:
    blocks = (tmp_path / "blocks").as_uri()
    a = NamenodeProcess(tmp_path, db_url=pg_url, blocks_url=blocks, name="a").start()
    stop_all.append(a)
    b = NamenodeProcess(tmp_path, db_url=pg_url, blocks_url=blocks, name="b").start()
    stop_all.append(b)
    mnt, load = _mounted_load(tmp_path, f"{a.address},{b.address}", stop_all)
    try:
        load.wait_for_progress(20)
        a.kill()                      # a stays down: everything goes to b
        load.wait_for_progress(40)
        a.start()
        b.kill()                      # and back
        load.wait_for_progress(40)
    finally:
        seen = load.finish()
    _check(seen, load, mnt.path / "w")


# short call timeouts, so that a hung namenode is noticed within seconds
HUNG = {"METAFS_FUSE_RPC_TIMEOUT": "2", "METAFS_FAILOVER_TIMEOUT": "30"}


@needs_fuse
def test_a_hung_namenode_is_waited_out(tmp_path: Path, stop_all: list[Any]) -> None:
    """The namenode stops answering (SIGSTOP: its connections stay open, nothing is
    answered) for longer than a call's timeout, and goes on (SIGCONT): the calls it left
    without an answer are tried again until it answers, and no error reaches the programs."""
    nn = NamenodeProcess(tmp_path, data_dir=tmp_path / "data").start()
    stop_all.append(nn)
    mnt, load = _mounted_load(tmp_path, nn.address, stop_all, env=HUNG)
    try:
        load.wait_for_progress(20)
        nn.hang()
        time.sleep(5)
        nn.resume()
        load.wait_for_progress(20)
    finally:
        nn.resume()
        seen = load.finish()
    _check(seen, load, mnt.path / "w")
    assert "DEADLINE_EXCEEDED" in mnt.log_text() and "answers again" in mnt.log_text()


@needs_fuse
def test_failover_from_a_hung_namenode(tmp_path: Path, pg_url: str, stop_all: list[Any],
                                       caplog: pytest.LogCaptureFixture) -> None:
    """Of two namenodes, one stops answering (SIGSTOP) and stays so, then the other one:
    the calls it leaves without an answer go to the other one after their timeout, later
    calls pass it over, and programs writing meanwhile meet no error. (Each is stopped
    while the mount is idle: a namenode stopped inside a write transaction holds its
    database locks, and every namenode's writes wait for them until it goes on or dies.)"""
    blocks = (tmp_path / "blocks").as_uri()
    a = NamenodeProcess(tmp_path, db_url=pg_url, blocks_url=blocks, name="a").start()
    stop_all.append(a)
    b = NamenodeProcess(tmp_path, db_url=pg_url, blocks_url=blocks, name="b").start()
    stop_all.append(b)
    mnt = Mount(tmp_path / "mnt", ["--namenode", f"{a.address},{b.address}"], HUNG).start()
    stop_all.append(mnt)
    for hung in (a, b):            # (the mount's calls may all go to one of them)
        work = tmp_path / hung.name
        work.mkdir()
        (mnt.path / hung.name).mkdir()
        hung.hang()
        load = Workload(mnt.path / hung.name, work, writers=2)
        try:
            load.wait_for_progress(20)     # on the other one alone
        finally:
            hung.resume()
            seen = load.finish()
        _check(seen, load, mnt.path / hung.name)
    # Which namenode the mount's calls went to while one hung is up to its streams. A new
    # client's first call opens its stream to the first address; once that namenode
    # hangs, the next call on the stream goes unanswered, goes to the other one after its
    # timeout, and later calls pass the hung one over.
    with caplog.at_level(logging.WARNING, logger="metafs"):
        with Client(settings=load_settings(overrides={
                "namenode": f"{a.address},{b.address}", "rpc_timeout": 2.0,
                "failover_timeout": 30.0, "data_dir": str(tmp_path / "client")},
                environ={})) as c:
            assert c.isdir("/a")
            a.hang()
            try:
                assert c.isdir("/b")
            finally:
                a.resume()
    assert f"namenode {a.address} answered nothing for 2 s; passing over it" in caplog.text


@needs_fuse
def test_postgres_stopped_and_started_under_load(tmp_path: Path, stop_all: list[Any]) -> None:
    """The PostgreSQL server under a namenode stops (its sessions cut off, as in a crash)
    and starts again on the same data directory a few seconds later, twice, while
    programs write, fsync and list on a mount."""
    pgserver = pytest.importorskip("pgserver")
    from pgserver._commands import pg_ctl
    from sqlalchemy.engine import make_url

    d = tempfile.mkdtemp(prefix="mfpf")  # short: a unix socket lives in it
    srv = pgserver.get_server(d, cleanup_mode="stop")

    socket_dir = make_url(srv.get_uri()).query["host"]   # started as pgserver does

    def pg(*args: str) -> None:
        # pg_ctl itself was once killed by SIGSEGV here (the server was unharmed): a pg_ctl
        # that died of a signal runs again, unless the stop it was making is done
        for attempt in (1, 2):
            try:
                pg_ctl(["-w", *args], pgdata=srv.pgdata, user=srv.system_user)
                return
            except subprocess.CalledProcessError as err:
                if err.returncode >= 0 or attempt == 2:
                    raise
            if args[0] == "stop":
                try:
                    pg_ctl(["status"], pgdata=srv.pgdata, user=srv.system_user)
                except subprocess.CalledProcessError as err:
                    if err.returncode == 3:  # no server running: stopped
                        return
                    raise

    class Server:
        @staticmethod
        def stop() -> None:
            pg("stop", "-m", "immediate")  # (pgserver stops only a postmaster it started)
            srv.cleanup()
            shutil.rmtree(d, ignore_errors=True)

    stop_all.append(Server)

    nn = NamenodeProcess(tmp_path, db_url=srv.get_uri(),
                         blocks_url=(tmp_path / "blocks").as_uri()).start()
    stop_all.append(nn)
    mnt, load = _mounted_load(tmp_path, nn.address, stop_all)
    try:
        load.wait_for_progress(20)
        for _ in range(2):
            pg("stop", "-m", "immediate")
            time.sleep(3)         # an outage, not a blip: calls fail and are retried
            pg("start", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(srv.log))
            load.wait_for_progress(20)
    finally:
        seen = load.finish()
    _check(seen, load, mnt.path / "w")


@needs_fuse
def test_s3_endpoint_cut_off_under_load(tmp_path: Path, moto_url: str,  # noqa: F811
                                        stop_all: list[Any]) -> None:
    """The network to the S3 endpoint goes away for seconds (connections reset, new ones
    refused; the objects stay, as in a real outage) while programs write and fsync files
    in blocks: for everyone, then for the mount alone (its uploads wait it out), then for
    the namenode alone (its checks at commit give up after a while and answer the call as
    unavailable; the mount tries it again). The programs are held up instead of failing,
    and every fsynced file is intact in the store."""
    s3_mount, s3_nn = TcpProxy(moto_url).start(), TcpProxy(moto_url).start()
    stop_all += [s3_mount, s3_nn]
    bucket = make_bucket(moto_url)
    nn = NamenodeProcess(tmp_path, data_dir=tmp_path / "data", blocks_url=f"s3://{bucket}/fs",
                         env={"METAFS_S3_ENDPOINT": s3_nn.url, "METAFS_INLINE_LIMIT": "4096",
                              "METAFS_BLOCK_SIZE": str(64 * 1024)}).start()
    stop_all.append(nn)
    size = 150_000                     # three blocks, none of it inline
    mnt, load = _mounted_load(tmp_path, nn.address, stop_all, size=size, env={
        "METAFS_S3_ENDPOINT": s3_mount.url, "METAFS_BLOCK_CACHE_DIR": "off"})
    try:
        load.wait_for_progress(3)
        for cut in ([s3_mount, s3_nn], [s3_mount], [s3_nn]):
            for proxy in cut:
                proxy.kill()
            time.sleep(5)
            for proxy in cut:
                proxy.start()
            load.wait_for_progress(3)
    finally:
        seen = load.finish()
    print("longest wait of a writer for one file (s):",
          [round(r["slowest"], 1) for r in seen["writer"]])
    errors = [e for kind in seen.values() for r in kind for e in r["errors"]]
    assert not errors, errors
    log = mnt.log_text()
    assert "S3 upload" in log and "endpoint unavailable" in log  # the mount's uploads waited
    assert "block store unavailable" in log   # the namenode answered commits as unavailable
    # read back from the store itself (no local block cache, no page cache)

    fs = Client(settings=load_settings(overrides={
        "namenode": nn.address, "s3_endpoint": moto_url, "block_cache_dir": "off"},
        environ={}))
    try:
        _check_fsynced_through(fs, load)
    finally:
        fs.close()


GROW = textwrap.dedent('''
    import os, sys
    with open(sys.argv[1], "r+b") as f:
        os.ftruncate(f.fileno(), int(sys.argv[2]))
        os.fsync(f.fileno())
''')


@needs_fuse
def test_s3_endpoint_cut_off_under_an_embedded_mount(tmp_path: Path, moto_url: str,  # noqa: F811
                                                     stop_all: list[Any]) -> None:
    """The same outage under a mount that runs its namenode in process (``--data``), longer
    than the namenode waits per call: its calls that met the store unavailable (the checks
    at commit, the bytes of an inline file that a truncation moves to a block) are run
    again until the store answers, as a remote namenode's client retries them. No error
    reaches the programs, and every fsynced file is intact in the store."""
    s3 = TcpProxy(moto_url).start()
    stop_all.append(s3)
    bucket = make_bucket(moto_url)
    size = 150_000                     # three blocks, none of it inline
    mnt = Mount(tmp_path / "mnt", ["--data", str(tmp_path / "data")], env={
        "METAFS_BLOCKS_URL": f"s3://{bucket}/fs", "METAFS_S3_ENDPOINT": s3.url,
        "METAFS_INLINE_LIMIT": "4096", "METAFS_BLOCK_SIZE": str(64 * 1024),
        "METAFS_BLOCK_CACHE_DIR": "off"}).start()
    stop_all.append(mnt)
    (mnt.path / "w").mkdir()
    grown = mnt.path / "grown"
    grown.write_bytes(content(1, 3000))            # inline: in the database alone
    load = Workload(mnt.path / "w", tmp_path, writers=1, size=size)
    try:
        load.wait_for_progress(3)
        s3.kill()
        # past the inline limit: the namenode itself must store the bytes (deterministically
        # in the outage, where the writers' commits may or may not meet it)
        grow = subprocess.Popen([sys.executable, "-c", GROW, str(grown), str(size)])
        time.sleep(5)
        s3.start()
        assert grow.wait(120) == 0
        load.wait_for_progress(3)
    finally:
        seen = load.finish()
    errors = [e for kind in seen.values() for r in kind for e in r["errors"]]
    assert not errors, errors
    log = mnt.log_text()
    assert "block store unavailable" in log and "retrying calls for up to" in log
    assert "the block store answers again" in log
    mnt.stop()

    fs = Client(settings=load_settings(overrides={
        "data_dir": str(tmp_path / "data"), "s3_endpoint": moto_url,
        "blocks_url": f"s3://{bucket}/fs", "block_cache_dir": "off"}, environ={}))
    try:
        assert fs.read_bytes("/grown") == content(1, 3000) + bytes(size - 3000)
        _check_fsynced_through(fs, load)
    finally:
        fs.close()


def test_a_changelog_subscription_resumes_on_the_other_namenode(
        tmp_path: Path, pg_url: str, stop_all: list[Any],
        caplog: pytest.LogCaptureFixture) -> None:
    """A subscriber of ``a,b`` whose namenode is killed goes on after its last record on
    the other one (and back): every record once, in order, none skipped or repeated."""

    blocks = (tmp_path / "blocks").as_uri()
    a = NamenodeProcess(tmp_path, db_url=pg_url, blocks_url=blocks, name="a").start()
    stop_all.append(a)
    b = NamenodeProcess(tmp_path, db_url=pg_url, blocks_url=blocks, name="b").start()
    stop_all.append(b)
    both = f"{a.address},{b.address}"
    reader, writer = Client(both), Client(both)
    start = writer.changelog_head()
    got: list[pb.ChangeRecord] = []
    failed: list[BaseException] = []

    def follow() -> None:
        try:
            for rec in reader.subscribe(after=start):
                got.append(rec)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failed.append(exc)

    def write_and_wait(tag: str) -> None:
        for i in range(10):
            writer.mkdir(f"/{tag}{i}")
        head = writer.changelog_head()
        deadline = time.monotonic() + 60
        while (not got or got[-1].seq < head) and not failed:
            assert time.monotonic() < deadline, f"the subscriber stopped at {got[-1:]}"
            time.sleep(0.05)

    caplog.set_level("WARNING", logger="metafs.client")
    threading.Thread(target=follow, daemon=True).start()
    try:
        write_and_wait("one")
        a.kill()                   # the stream is on one of the two: one kill breaks it
        write_and_wait("two")
        a.start()
        b.kill()
        write_and_wait("three")
        everything, _ = writer.changelog(start, 10_000)
    finally:
        reader.close()
        writer.close()
    assert not failed, failed
    assert [r.seq for r in got] == [r.seq for r in everything]
    assert [r.name for r in got if r.op == pb.OP_MKDIR] == [
        f"{t}{i}" for t in ("one", "two", "three") for i in range(10)]
    assert "SubscribeChangelog resumed" in caplog.text


# ---------------------------------------------------------------------- a client dies
KILLED_WRITER = textwrap.dedent('''
    import os, sys
    from metafs.client import Client
    from metafs.testing.faults import content
    addr, progress = sys.argv[1:3]
    fs = Client(addr)
    fs.write_bytes("/kept", content(7, 6 << 20))      # committed: its blocks must stay
    piece = content(8, 1 << 20)
    with fs.open("/dying", "wb") as f:
        n = 0
        while True:                                    # until SIGKILL
            f.write(piece)
            n += 1
            if n % 4 == 0:
                with open(progress, "w") as p:
                    p.write(str(n))
''')


def _metafs(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "metafs.cli", *args], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_a_client_killed_mid_write_leaves_nothing_behind(tmp_path: Path,
                                                        stop_all: list[Any]) -> None:
    data = tmp_path / "data"
    nn = NamenodeProcess(tmp_path, data_dir=data, env={
        "METAFS_SESSION_LEASE": "3", "METAFS_BLOCK_SIZE": str(1 << 20)}).start()
    stop_all.append(nn)
    progress = tmp_path / "progress"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, nn.address, str(progress)])
    try:
        deadline = time.monotonic() + 300
        while not progress.exists() or int(progress.read_text() or 0) < 12:
            assert proc.poll() is None, f"the writer exited with {proc.returncode}"
            assert time.monotonic() < deadline, "the writer made no progress"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    blocks = data / "blocks"
    uploaded = {p.name for p in blocks.rglob("*") if p.is_file()}

    db = sqlite3.connect(f"file:{data / 'meta.db'}?mode=ro", uri=True)
    try:
        def handles() -> int:
            return int(db.execute("SELECT count(*) FROM handles").fetchone()[0])

        assert handles() > 0                 # the dead client's handle, until its lease ends
        deadline = time.monotonic() + 300
        while handles():
            assert time.monotonic() < deadline, "the dead client's handles were never dropped"
            time.sleep(0.5)
    finally:
        db.close()
    nn.stop()

    done = json.loads(_metafs("gc", "--data", str(data), "--grace", "0", "--json", "-q"))
    left = {p.name for p in blocks.rglob("*") if p.is_file()}
    assert done["orphans_deleted"] + done["freed_deleted"] > 0, done
    assert left < uploaded
    again = json.loads(_metafs("gc", "--data", str(data), "--grace", "0", "--json", "-q",
                               "--dry-run"))
    assert again["orphans_deleted"] + again["freed_deleted"] == 0, again
    assert again["referenced"] > 0
    report = json.loads(_metafs("fsck", "--data", str(data), "--check-blocks", "--json", "-q"))
    assert not report["findings"], report

    nn.start()
    fs = Client(nn.address)
    try:
        assert fs.read_bytes("/kept") == content(7, 6 << 20)
        assert fs.stat("/dying").st_size == 0          # never committed: nothing of it
    finally:
        fs.close()
