"""The gRPC transport: calls multiplexed over Calls streams, the unary fallback, per-call
deadlines on a stream, and bad frames."""

from __future__ import annotations

import errno
import threading
import time
from pathlib import Path

import grpc
import pytest

from metafs.assembly import build_namenode, serve_grpc
from metafs.client import Client
from metafs.client.transport import GrpcTransport
from metafs.config import Settings
from metafs.proto import metafs_pb2 as pb
from metafs.proto import metafs_pb2_grpc as pb_grpc


def _workload(c: Client, root: str) -> list[object]:
    """A few operations, with their results and errnos, for comparing transports."""
    out: list[object] = []
    c.mkdir(root)
    c.write_bytes(f"{root}/a", b"hello")
    out.append(c.read_bytes(f"{root}/a"))
    for bad in (lambda: c.mkdir(root), lambda: c.stat(f"{root}/missing"),
                lambda: c.rmdir(f"{root}/a"), lambda: c.listdir(f"{root}/a")):
        try:
            bad()
            out.append("no error")
        except OSError as exc:
            out.append((type(exc).__name__, exc.errno, exc.filename))
    c.rename(f"{root}/a", f"{root}/b")
    out.append(sorted(c.listdir(root)))
    out.append(c.stat(f"{root}/b").st_size)
    return out


def _streams_in_use(t: GrpcTransport) -> int:
    return len(t._idle) + len(t._busy)


def test_streams_and_unary_calls_give_the_same_results(settings: Settings) -> None:
    nn = build_namenode(settings)
    srv = serve_grpc(nn, "127.0.0.1:0")
    try:
        with Client(settings=settings.with_(namenode=srv.address)) as streamed, \
                Client(settings=settings.with_(namenode=srv.address, call_streams=0)) as unary:
            a = _workload(streamed, "/s")
            b = _workload(unary, "/u")
            assert _streams_in_use(streamed.transport) >= 1
            assert _streams_in_use(unary.transport) == 0
        a[4] = b[4] = None  # (the paths differ)
        assert [x if not isinstance(x, tuple) else x[:2] for x in a] == \
            [x if not isinstance(x, tuple) else x[:2] for x in b]
        assert ("FileExistsError", errno.EEXIST) in [x[:2] for x in a if isinstance(x, tuple)]
    finally:
        srv.stop(0)
        nn.close()


def test_clients_beyond_the_stream_limit_make_unary_calls(settings: Settings) -> None:
    s = settings.with_(max_call_streams=1)
    nn = build_namenode(s)
    srv = serve_grpc(nn, "127.0.0.1:0")
    clients = [Client(settings=s.with_(namenode=srv.address)) for _ in range(3)]
    errors: list[BaseException] = []

    def work(i: int, c: Client) -> None:
        try:
            for j in range(30):
                c.write_bytes(f"/f{i}_{j}", str(j).encode())
                assert c.read_bytes(f"/f{i}_{j}") == str(j).encode()
        except BaseException as exc:  # reported below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=work, args=(i, c)) for i, c in enumerate(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert len(clients[0].listdir("/")) == 90
        # one client holds the only stream; the others were refused and went unary
        assert sum(_streams_in_use(c.transport) for c in clients) == 1
    finally:
        for c in clients:
            c.close()
        srv.stop(0)
        nn.close()


def test_a_call_past_its_deadline_on_a_stream_is_eio_and_the_next_call_works(
        settings: Settings) -> None:
    nn = build_namenode(settings)
    srv = serve_grpc(nn, "127.0.0.1:0")
    t = GrpcTransport(srv.address, timeout=0.5)
    try:
        head = t.call("ChangelogHead", pb.HeadRequest()).head
        t0 = time.monotonic()
        with pytest.raises(Exception) as ei:  # a long poll that outlasts the deadline
            t.call("ReadChangelog", pb.ReadChangelogRequest(after=head, wait_ms=10_000))
        assert time.monotonic() - t0 < 5
        assert getattr(ei.value, "errno", None) == errno.EIO
        assert "in time" in str(ei.value)
        assert t.call("ChangelogHead", pb.HeadRequest()).head == head
    finally:
        t.close()
        srv.stop(0)
        nn.close()


def test_bad_frames_get_clear_errors_and_the_stream_goes_on(settings: Settings) -> None:
    nn = build_namenode(settings)
    srv = serve_grpc(nn, "127.0.0.1:0")
    ch = grpc.insecure_channel(srv.address)
    try:
        frames = [pb.CallFrame(method="NoSuchCall"),
                  pb.CallFrame(method="SubscribeChangelog"),
                  pb.CallFrame(method="Resolve", request=b"\xff\xff\xff"),
                  pb.CallFrame(method="Mkdir", request=pb.MkdirRequest(
                      caller=pb.Caller(), parent=1, name="a/b", mode=0o755).SerializeToString()),
                  pb.CallFrame(method="Resolve", request=pb.ResolveRequest(
                      caller=pb.Caller(), path="/", follow=True).SerializeToString())]
        replies = list(pb_grpc.NamenodeStub(ch).Calls(iter(frames), timeout=10))
        assert [r.error.errno for r in replies[:4]] == [errno.ENOSYS, errno.ENOSYS,
                                                        errno.EINVAL, errno.EINVAL]
        assert "NoSuchCall" in replies[0].error.message
        assert not replies[4].HasField("error")
        assert pb.Entry.FromString(replies[4].reply).ino == 1
        assert nn.ns.changelog_head() == 0  # the bad Mkdir changed nothing
    finally:
        ch.close()
        srv.stop(0)
        nn.close()


def test_a_restarted_namenode_is_reached_again_through_new_streams(tmp_path: Path,
                                                                   settings: Settings) -> None:
    nn = build_namenode(settings)
    srv = serve_grpc(nn, "127.0.0.1:0")
    port = srv.port
    c = Client(settings=settings.with_(namenode=srv.address, rpc_timeout=5,
                                       failover_timeout=1.0))
    try:
        c.write_bytes("/before", b"1")
        srv.stop(0)
        nn.close()
        with pytest.raises(OSError) as ei:  # EIO once failover_timeout has passed
            c.stat("/before")
        assert ei.value.errno == errno.EIO
        nn = build_namenode(settings)
        srv = serve_grpc(nn, f"127.0.0.1:{port}")
        deadline = time.monotonic() + 20
        while True:
            try:
                assert c.read_bytes("/before") == b"1"
                break
            except OSError as exc:
                assert exc.errno == errno.EIO and time.monotonic() < deadline
                time.sleep(0.2)
        c.write_bytes("/after", b"2")
        assert sorted(c.listdir("/")) == ["after", "before"]
    finally:
        c.close()
        srv.stop(0)
        nn.close()


def test_a_transport_asks_its_channels_state_and_follows_none(settings: Settings) -> None:
    """A subscription to a channel's connectivity keeps a thread of gRPC's polling the
    connection, which every reply woke (docs/design.md "Calls over streams"): the transport
    asks a channel's state when a failed call needs it instead."""
    nn = build_namenode(settings)
    srv = serve_grpc(nn, "127.0.0.1:0")
    try:
        c = Client(settings=settings.with_(namenode=srv.address))
        c.mkdir("/d")
        t = c.transport
        assert t._state(0) == grpc.ChannelConnectivity.READY
        assert not t._channels[0]._connectivity_state.callbacks_and_connectivities
        c.close()
        assert t._state(0) == grpc.ChannelConnectivity.SHUTDOWN
    finally:
        srv.stop(0)
        nn.close()


def test_bulk_calls_go_unary_and_others_over_streams(settings: Settings) -> None:
    """A bulk request of megabytes is not framed into a stream (it would be serialized and
    parsed twice); the small calls around it still use the streams."""
    from metafs.client import BulkFile

    nn = build_namenode(settings)
    srv = serve_grpc(nn, "127.0.0.1:0")
    try:
        with Client(settings=settings.with_(namenode=srv.address)) as c:
            unary: list[str] = []
            plain = c.transport._unary

            def counted(method: str, request: object, *ids: object) -> object:
                unary.append(method)
                return plain(method, request, *ids)

            c.transport._unary = counted  # type: ignore[method-assign]
            c.mkdir("/ds")
            inos = c.bulk_create("/ds", [BulkFile(f"{i}.bin", bytes([i]) * 4096)
                                         for i in range(256)])
            assert len(set(inos)) == 256
            assert c.read_bytes("/ds/7.bin") == bytes([7]) * 4096
            assert unary == ["BulkCreate"]
            assert _streams_in_use(c.transport) >= 1
    finally:
        srv.stop(0)
        nn.close()


def test_importing_metafs_chooses_grpc_polling_io_unless_the_user_did() -> None:
    """gRPC reads GRPC_EXPERIMENTS when it is first imported: `import metafs` sets it
    before that (docs/design.md), and leaves a value the user set, even an empty one."""
    import os
    import subprocess
    import sys

    from metafs.config import GRPC_EXPERIMENTS

    probe = ("import os, sys, metafs, metafs.config as c; "
             "print(os.environ.get('GRPC_EXPERIMENTS')); print(c.tune_grpc())")
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                         text=True, check=True).stdout.split("\n")
    assert out[0] == GRPC_EXPERIMENTS
    assert out[1] == "False"  # grpc is loaded now: too late to choose again
    for mine in ("", "-event_engine_client"):
        out = subprocess.run([sys.executable, "-c", probe],
                             env={**env, "GRPC_EXPERIMENTS": mine}, capture_output=True,
                             text=True, check=True).stdout.split("\n")
        assert out[0] == mine
