"""Faults do not break mounts: namenodes killed (SIGKILL) and restarted, or failing over,
under ordinary programs writing, fsyncing and listing on a real mount. No error reaches
the programs, and every file whose fsync returned is intact byte for byte afterwards.

Also: a call retried under its request id after its first attempt committed answers with
the first attempt's result (no EEXIST or ENOENT from its own earlier success).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest

from metafs.assembly import build_namenode, serve_grpc
from metafs.config import Settings
from metafs.proto import metafs_pb2 as pb
from metafs.proto import metafs_pb2_grpc as pb_grpc
from metafs.testing.faults import NamenodeProcess, Workload

from fuse_fixtures import Mount, needs_fuse


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
@pytest.fixture(params=["sqlite", "postgresql"])
def db_args(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if request.param == "sqlite":
        return {"data_dir": tmp_path / "data"}
    return {"db_url": request.getfixturevalue("pg_url"),
            "blocks_url": (tmp_path / "blocks").as_uri()}


@pytest.fixture
def stop_all() -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for thing in reversed(started):
        thing.stop()


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
    mnt = Mount(tmp_path / "mnt", ["--namenode", nn.address]).start()
    stop_all.append(mnt)
    (mnt.path / "w").mkdir()
    load = Workload(mnt.path / "w", tmp_path, writers=2)
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
    mnt = Mount(tmp_path / "mnt", ["--namenode", f"{a.address},{b.address}"]).start()
    stop_all.append(mnt)
    (mnt.path / "w").mkdir()
    load = Workload(mnt.path / "w", tmp_path, writers=2)
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
