"""The namenode as a server: `metafs serve` (health, reflection, logs,
signals), configuration precedence, and orphans reclaimed after a client dies."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from metafs.assembly import build_namenode, serve_grpc
from metafs.client import Client
from metafs.client.transport import LocalTransport
from metafs.config import DEFAULT_PORT, Settings, load
from metafs.namenode.server import Namenode
from metafs.proto import metafs_pb2 as pb

REPO = Path(__file__).resolve().parents[1]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAFS_")}
    env.update(extra)
    return env


def start_serve(tmp: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    """`metafs serve --data TMP/data` (plus ``extra`` flags) in its own process, once it
    serves: (process, address, log file)."""
    ready, log = tmp / "ready", tmp / "serve.log"
    p = subprocess.Popen(
        [sys.executable, "-m", "metafs.cli", "serve", "--data", str(tmp / "data"),
         "--listen", "127.0.0.1:0", "--ready-file", str(ready), *extra],
        stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=clean_env(), cwd=REPO)
    deadline = time.monotonic() + 60
    while not (ready.exists() and ready.read_text()):
        assert p.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "metafs serve did not start"
        time.sleep(0.05)
    return p, ready.read_text(), log


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_health_reflection_logs_and_signals(tmp_path: Path, sig: int) -> None:
    p, addr, log = start_serve(tmp_path)
    try:
        with grpc.insecure_channel(addr) as ch:
            h = health_pb2_grpc.HealthStub(ch)
            for service in ("", "metafs.v1.Namenode"):
                r = h.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                assert r.status == health_pb2.HealthCheckResponse.SERVING
            refl = reflection_pb2_grpc.ServerReflectionStub(ch)
            reply = next(iter(refl.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)))
            names = {s.name for s in reply.list_services_response.service}
            assert "metafs.v1.Namenode" in names and "grpc.health.v1.Health" in names
        with Client(settings=Settings(data_dir=str(tmp_path / "c"), namenode=addr),
                    uid=0, gid=0) as c:
            c.write_bytes("/hello", b"world")
        p.send_signal(sig)
        assert p.wait(60) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    lines = log.read_text().splitlines()
    assert sum("started" in ln for ln in lines) == 1, lines
    assert sum("stopped" in ln for ln in lines) == 1, lines
    assert not any("Traceback" in ln for ln in lines), lines
    # what was written is there for the next namenode
    with Client(data_dir=str(tmp_path / "data"), uid=0, gid=0) as c:
        assert c.read_bytes("/hello") == b"world"


def test_config_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "metafs.toml"
    cfg.write_text(textwrap.dedent("""
        inline_limit = 1000
        block_size = 2000
        listen = "127.0.0.1:1111"
        session_lease = 5.5
    """))
    env = {"METAFS_BLOCK_SIZE": "3000", "METAFS_LISTEN": "127.0.0.1:2222"}
    s = load(str(cfg), overrides={"listen": "127.0.0.1:3333"}, environ=env)
    assert s.inline_limit == 1000  # file over default
    assert s.session_lease == 5.5
    assert s.block_size == 3000  # env over file
    assert s.listen == "127.0.0.1:3333"  # flag over env
    d = load(overrides={}, environ={})
    assert d.listen.endswith(f":{DEFAULT_PORT}") and d.inline_limit == 64 * 1024
    # the file named by METAFS_CONFIG is read, and unknown settings are refused
    assert load(environ={"METAFS_CONFIG": str(cfg)}).inline_limit == 1000
    monkeypatch.setenv("METAFS_CONFIG", str(cfg))
    assert load().inline_limit == 1000
    monkeypatch.delenv("METAFS_CONFIG")
    bad = tmp_path / "bad.toml"
    bad.write_text("no_such_setting = 1\n")
    with pytest.raises(ValueError):
        load(str(bad), environ={})
    # and through the command line: flags beat the environment beat the file
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent("""
            import sys
            from metafs.cli import build_parser, settings_from
            args = build_parser().parse_args(sys.argv[1:])
            s = settings_from(args)
            print(s.listen, s.inline_limit, s.block_size)
        """), "serve", "--config", str(cfg), "--data", str(tmp_path / "d"),
         "--listen", "127.0.0.1:4444"],
        env=clean_env(METAFS_BLOCK_SIZE="3000", METAFS_LISTEN="127.0.0.1:2222"),
        capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0 and "build_parser" in out.stderr:
        pytest.skip("the cli has no build_parser to inspect")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["127.0.0.1:4444", "1000", "3000"]


CHILD = textwrap.dedent("""
    import sys, time
    from metafs.client import Client
    from metafs.config import Settings
    c = Client(settings=Settings(data_dir=sys.argv[2], namenode=sys.argv[1]), uid=0, gid=0)
    f = c.open("/victim", "wb")
    f.write(b"kept while open")
    f.flush()
    print("open", flush=True)
    time.sleep(600)
""")


def test_orphans_reclaimed_after_client_crash(settings: Settings, tmp_path: Path) -> None:
    s = settings.with_(session_lease=1.0)
    nn = build_namenode(s, background=False)  # reclaim is called by hand below
    srv = serve_grpc(nn, "127.0.0.1:0")
    live = Client(settings=s, transport=LocalTransport(nn), uid=0, gid=0)
    try:
        # a live client holds an unlinked file open
        keep = live.open("/kept", "wb")
        keep.write(b"still mine")
        keep.flush()
        kept_ino = keep.raw.ino if hasattr(keep, "raw") else live.stat("/kept").st_ino
        live.unlink("/kept")
        # a client process opens a file, the file is unlinked, the process is killed
        child = subprocess.Popen([sys.executable, "-c", CHILD, srv.address,
                                  str(tmp_path / "child")],
                                 stdout=subprocess.PIPE, env=clean_env(), cwd=REPO)
        assert child.stdout is not None and child.stdout.readline().strip() == b"open"
        victim = live.stat("/victim").st_ino
        live.unlink("/victim")
        child.send_signal(signal.SIGKILL)
        child.wait()
        head = live.changelog_head()
        nn.ns.reclaim(full=True)  # a full scan now: nothing to free while leases live
        # wait out the lease (the live client renews its own session meanwhile); the
        # rounds from now on only look at the dead sessions' handles
        deadline = time.monotonic() + 30
        freed: list[int] = []
        while victim not in freed and time.monotonic() < deadline:
            time.sleep(0.3)
            nn.ns.reclaim(full=False)
            recs, _ = live.changelog(after=head, limit=1000)
            freed = [r.ino for r in recs if r.op == pb.OP_FREE]
        assert victim in freed, "the dead client's unlinked file was not reclaimed"
        assert kept_ino not in freed, "a live client's open unlinked file was freed"
        keep.seek(0)
        keep.write(b"STILL")
        keep.flush()
        with pytest.raises(FileNotFoundError):
            live.stat("/victim")
        keep.close()  # the last handle: now it goes
        recs, _ = live.changelog(after=head, limit=1000)
        assert kept_ino in [r.ino for r in recs if r.op == pb.OP_FREE]
    finally:
        live.close()
        srv.stop(0)
        nn.close()


@pytest.mark.postgres
def test_postgres_restart_mid_workload(settings: Settings) -> None:
    """PostgreSQL restarts under a running workload: nothing committed is lost, and the
    namenode recovers by itself (its transactions are retried on new connections)."""
    pgserver = pytest.importorskip("pgserver")
    import tempfile
    import threading

    from pgserver._commands import pg_ctl

    d = tempfile.mkdtemp(prefix="mfpr")  # short: a unix socket lives in it
    srv = pgserver.get_server(d, cleanup_mode="stop")
    nn = None
    try:
        nn = build_namenode(settings.with_(db_url=srv.get_uri()), background=False)
        fs = Client(settings=nn.settings, transport=LocalTransport(nn), uid=0, gid=0)
        fs.mkdir("/w")
        done: list[str] = []
        failed: list[str] = []
        stop = threading.Event()

        def work() -> None:
            i = 0
            while not stop.is_set():
                name = f"/w/f{i}"
                try:
                    fs.write_bytes(name, b"%d" % i)
                    done.append(name)
                except OSError:
                    failed.append(name)  # may or may not have committed
                i += 1

        stats: list[bool] = []

        def read() -> None:
            # path walks of one statement run on their own pool of autocommit connections
            while not stop.is_set():
                try:
                    fs.stat("/w")
                    stats.append(True)
                except OSError:
                    stats.append(False)

        threads = [threading.Thread(target=work), threading.Thread(target=read)]
        for t in threads:
            t.start()
        while len(done) < 20 or len(stats) < 20:
            time.sleep(0.01)
        pg_ctl(["-w", "restart", "-m", "fast"], pgdata=srv.pgdata, user=srv.system_user)
        n, m = len(done), len(stats)
        deadline = time.monotonic() + 60
        while (len(done) < n + 20 or stats[m:].count(True) < 20) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join()
        assert len(done) >= n + 20, "the namenode did not recover after the restart"
        assert stats[m:].count(True) >= 20, "stats did not recover after the restart"
        assert stats[-1], "the last stat failed: the read pool kept a dead connection"
        have = set(fs.listdir("/w"))
        for name in done:
            assert name.rsplit("/", 1)[1] in have, f"{name} was committed and is lost"
            assert fs.read_bytes(name) == name.rsplit("f", 1)[1].encode()
        fs.close()
    finally:
        if nn is not None:
            nn.close()
        srv.cleanup()
        import shutil

        shutil.rmtree(d, ignore_errors=True)


class _CommitDropper:
    """A unix-socket proxy in front of PostgreSQL that, once armed, forwards the next
    COMMIT (or the next message holding ``marker``: a statement that commits by itself),
    lets the server answer it, and then drops the client's connection without passing
    the answer on: the transaction is committed and the client cannot know."""

    COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"  # the simple-protocol message psycopg sends

    def __init__(self, server_url: str, marker: bytes = COMMIT) -> None:
        import socket
        import tempfile
        import threading

        from sqlalchemy.engine import make_url

        url = make_url(server_url)
        self.upstream = os.path.join(url.query["host"], ".s.PGSQL.5432")  # type: ignore[arg-type]
        self.dir = tempfile.mkdtemp(prefix="mfcd")
        self.url = url.set(query={**url.query, "host": self.dir}).render_as_string(
            hide_password=False)
        self.marker = marker
        self.armed = threading.Event()
        self.dropped = threading.Event()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(os.path.join(self.dir, ".s.PGSQL.5432"))
        self._sock.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.connect(self.upstream)
            state = {"drop": False}
            threading.Thread(target=self._c2s, args=(client, server, state), daemon=True).start()
            threading.Thread(target=self._s2c, args=(client, server, state), daemon=True).start()

    def _c2s(self, client, server, state) -> None:  # type: ignore[no-untyped-def]
        try:
            while data := client.recv(65536):
                if self.armed.is_set() and self.marker in data:
                    self.armed.clear()
                    state["drop"] = True
                server.sendall(data)
        except OSError:
            pass
        finally:
            self._close(client, server)

    def _s2c(self, client, server, state) -> None:  # type: ignore[no-untyped-def]
        try:
            while data := server.recv(65536):
                if state["drop"]:
                    if b"Z\x00\x00\x00\x05" in data:  # ReadyForQuery: the COMMIT is done
                        self.dropped.set()
                        break
                    continue
                client.sendall(data)
        except OSError:
            pass
        finally:
            self._close(client, server)

    @staticmethod
    def _close(*socks) -> None:  # type: ignore[no-untyped-def]
        import socket

        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        import shutil

        self._sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.mark.parametrize("call", ["mkdir", "symlink"])
def test_connection_lost_during_commit_is_answered_once(settings: Settings, pg_url: str,
                                                        call: str) -> None:
    """The connection drops after the server committed a mkdir (one statement that
    commits by itself) or a symlink (a transaction's COMMIT) but before the namenode
    heard so: the outcome is unknown, so the namenode answers UNAVAILABLE and the client
    asks again under the same request id; the retry finds the first attempt's recorded
    result and answers with it. The call runs once (no EEXIST) and the caller sees
    success."""
    proxy = _CommitDropper(pg_url, b"metafs_create" if call == "mkdir"
                           else _CommitDropper.COMMIT)
    nn = build_namenode(settings.with_(db_url=proxy.url), background=False)
    server = serve_grpc(nn, "127.0.0.1:0")  # (request ids, and retries under them)
    try:
        fs = Client(settings=nn.settings.with_(namenode=server.address), uid=0, gid=0)
        fs.mkdir("/before")
        # no stamping round awaits: the next COMMIT is the symlink's (but for a rare idle
        # round of the changelog's assigner, whose lost COMMIT it retries by itself)
        nn.ns.changelog_head()
        proxy.armed.set()
        if call == "mkdir":
            fs.mkdir("/d")
            assert fs.isdir("/d"), "the server committed the mkdir"
        else:
            fs.symlink("/before", "/d")
            assert fs.readlink("/d") == "/before", "the server committed the symlink"
        assert proxy.dropped.is_set()
        # the namenode goes on working on new connections
        fs.write_bytes("/before/f", b"x")
        assert fs.read_bytes("/before/f") == b"x"
        fs.close()
    finally:
        server.stop(0)
        nn.close()
        proxy.close()


def test_connection_lost_before_commit_is_retried(settings: Settings, pg_url: str) -> None:
    """A connection that dies in the middle of a transaction (before COMMIT) rolled it
    back: the engine runs it again on a new connection, and the caller sees success."""
    import psycopg
    from sqlalchemy import text

    from metafs.namenode.engine import engine_for

    eng = engine_for(pg_url, settings)
    admin = pg_url.replace("postgresql+psycopg://", "postgresql://")
    calls: list[int] = []
    try:
        eng.engine.connect().close()
        with eng.engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (v int)"))

        def body(conn):  # type: ignore[no-untyped-def]
            calls.append(1)
            conn.execute(text("INSERT INTO t VALUES (1)"))
            if len(calls) == 1:
                pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
                with psycopg.connect(admin, autocommit=True) as other:
                    other.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
                conn.execute(text("SELECT 1"))  # the connection is gone
            return "ok"

        assert eng.write(body) == "ok"
        assert len(calls) == 2
        with eng.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 1
    finally:
        eng.dispose()


def test_a_transaction_left_idle_loses_its_locks(settings: Settings, pg_url: str) -> None:
    """A namenode that stops in the middle of a write transaction (SIGSTOP, a cut cable)
    does not hold its row locks for ever: PostgreSQL ends the transaction after
    ``db_idle_in_transaction_timeout``, another connection gets the rows, and the stopped
    one finds its connection gone (and would retry)."""
    import psycopg
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from metafs.namenode.engine import engine_for

    eng = engine_for(pg_url, settings.with_(db_idle_in_transaction_timeout=0.5))
    admin = pg_url.replace("postgresql+psycopg://", "postgresql://")
    try:
        with eng.engine.begin() as conn:
            conn.execute(text("CREATE TABLE idle (v int)"))
            conn.execute(text("INSERT INTO idle VALUES (1)"))
        conn = eng.engine.connect()
        tx = conn.begin()
        conn.execute(text("SELECT v FROM idle WHERE v = 1 FOR UPDATE"))
        with psycopg.connect(admin) as other:  # waits for the lock, then gets it
            other.execute("SET lock_timeout = '20s'")
            assert other.execute("SELECT v FROM idle WHERE v = 1 FOR UPDATE").fetchone() == (1,)
        with pytest.raises(DBAPIError) as err:
            conn.execute(text("SELECT 1"))
        assert eng.is_connection_error(err.value)
        tx.rollback()
        conn.close()
    finally:
        eng.dispose()


def test_hot_path_statement_conflict_is_retried(settings: Settings, pg_url: str) -> None:
    """The prepared statements of the hot paths (run on the driver's cursor) raise their
    conflicts like any other statement: a lock that could not be had (as a deadlock or a
    serialization failure) rolls the transaction back and the engine runs it again,
    instead of failing the call with the driver's raw error."""
    import threading

    import psycopg
    from sqlalchemy import text

    from metafs.namenode.engine import engine_for
    from metafs.namenode.sql import Prepared

    eng = engine_for(pg_url, settings)
    admin = pg_url.replace("postgresql+psycopg://", "postgresql://")
    take = Prepared(text("SELECT v FROM hot WHERE v = 1 FOR UPDATE"))
    calls: list[int] = []
    try:
        with eng.engine.begin() as conn:
            conn.execute(text("CREATE TABLE hot (v int)"))
            conn.execute(text("INSERT INTO hot VALUES (1)"))
        with psycopg.connect(admin) as holder:
            holder.execute("SELECT v FROM hot WHERE v = 1 FOR UPDATE")  # held until commit
            threading.Timer(0.5, holder.commit).start()

            def body(conn):  # type: ignore[no-untyped-def]
                calls.append(1)
                if len(calls) == 1:  # the first attempt gives up on the lock at once
                    conn.execute(text("SET LOCAL lock_timeout = '20ms'"))
                return take.scalar(conn)

            assert eng.write(body) == 1
        assert len(calls) == 2
    finally:
        eng.dispose()


@pytest.mark.postgres
def test_namenodes_starting_together_on_an_empty_database(settings: Settings,
                                                          pg_url: str) -> None:
    """Several namenodes set up one fresh PostgreSQL database at once: migrations run one
    at a time and exactly one of them makes the root; every one starts."""
    import threading

    s = settings.with_(db_url=pg_url)
    errors: list[BaseException] = []
    started: list[Namenode] = []
    go = threading.Barrier(4)

    def start() -> None:
        try:
            go.wait()
            started.append(build_namenode(s, background=False))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not errors, errors
        assert len(started) == 4
        with Client(settings=s, transport=LocalTransport(started[0])) as c:
            c.mkdir("/made-after")
            assert c.listdir("/") == ["made-after"]
    finally:
        for nn in started:
            nn.close()
