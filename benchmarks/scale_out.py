"""Scale-out of the team topology on one PostgreSQL: client processes over several
``metafs serve`` namenodes, next to JuiceFS on the same PostgreSQL server in the same run.

For each configuration (namenodes x clients) it starts the namenodes on a fresh database,
and every client process (spread round-robin over the namenodes) works in a directory of
its own, making the calls a mount makes, phase by phase (all clients start each phase
together): create N empty files, stat them, write 4 KiB into each (the mount's
handle-less open, one Write, close), rename each, unlink each. Each phase reports the
aggregate operations per second and the machine's CPU time per operation (all processes:
clients, namenodes, PostgreSQL or JuiceFS's mount; when the cores are saturated, that cost
and not the namenode count bounds the aggregate rate; it counts every process on the
machine, so run it on a quiet one); the changelog lag (reply of a create to the moment a
follower on another namenode read its record) is measured during the create phase.

JuiceFS runs with its metadata in another database of the same server and local file
storage: one ``juicefs mount``, with the same number of client processes doing the same
phases through it with ordinary system calls (JuiceFS's client is its mount; it has no
namenode, so only the client count varies).

    python benchmarks/scale_out.py [--n 200] [--configs 1x1,1x8,2x8,4x32] [--json out.json]
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _peers import juicefs_binary, juicefs_pg_mount  # noqa: E402
from _common import emit_json, namenodes, parse_configs, pg_server, scale_parser  # noqa: E402
from changelog_scale import _Follower, _pct  # noqa: E402

PHASES = ("create", "stat", "write_4k", "rename", "unlink")


def _metafs_worker(args: tuple[str, int, int, Any]) -> dict[str, Any]:
    """One client: the phases over gRPC, as a mount makes them; returns per-phase
    (start, end) times and the reply time of each create."""
    address, wid, n, bar = args
    from metafs.client import Client
    from metafs.config import load

    fs = Client(settings=load(overrides={"namenode": address,
                                         "data_dir": tempfile.mkdtemp()}, environ={}))
    nodes = fs.inodes
    fs.mkdir(f"/w{wid}")
    dino = fs.ino(f"/w{wid}")
    names = [f"w{wid}-{i}" for i in range(n)]
    payload = os.urandom(4096)
    out: dict[str, Any] = {"created": {}}

    def create() -> None:
        for name in names:
            nodes.create(dino, name, 0o100644, exclusive=True)
            out["created"][name] = time.time()

    attrs: dict[str, Any] = {}

    def stat() -> None:
        for name in names:
            attrs[name] = nodes.lookup(dino, name)

    def write() -> None:
        for name in names:
            attr = nodes.getattr(attrs[name].ino)  # the open's fresh attributes
            f = nodes.file(f"/w{wid}/{name}", attr, os.O_WRONLY)
            f.write_at(0, payload)
            f.commit()
            f.discard()

    def rename() -> None:
        for name in names:
            nodes.rename(dino, name, dino, "r" + name)

    def unlink() -> None:
        for name in names:
            nodes.unlink(dino, "r" + name)

    for phase, fn in zip(PHASES, (create, stat, write, rename, unlink)):
        bar.wait()
        t0 = time.time()
        fn()
        out[phase] = (t0, time.time())
    fs.close()
    return out


def _posix_worker(args: tuple[str, int, int, Any]) -> dict[str, Any]:
    """One client process doing the phases with system calls under ``root``."""
    root, wid, n, bar = args
    d = Path(root) / f"w{wid}"
    d.mkdir()
    paths = [d / f"f{i}" for i in range(n)]
    payload = os.urandom(4096)
    out: dict[str, Any] = {}

    def create() -> None:
        for p in paths:
            os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))

    def stat() -> None:
        for p in paths:
            os.stat(p)

    def write() -> None:
        for p in paths:
            fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
            os.write(fd, payload)
            os.close(fd)

    def rename() -> None:
        for p in paths:
            os.rename(p, p.with_name("r" + p.name))

    def unlink() -> None:
        for p in paths:
            os.unlink(p.with_name("r" + p.name))

    for phase, fn in zip(PHASES, (create, stat, write, rename, unlink)):
        bar.wait()
        t0 = time.time()
        fn()
        out[phase] = (t0, time.time())
    return out


class _CpuClock:
    """The machine's busy CPU seconds (all processes), sampled every ``every`` seconds, so
    each phase can report the CPU time it cost per operation."""

    def __init__(self, every: float = 0.05) -> None:
        self.every = every
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "_CpuClock":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            t = psutil.cpu_times()
            busy = t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)
            self.samples.append((time.time(), busy))
            if self._stop.wait(self.every):
                return

    def busy_seconds(self, t0: float, t1: float) -> float | None:
        """CPU seconds spent between the first sample at or after ``t0`` and the last at or
        before ``t1``, scaled to the whole window (None if the window is too short)."""
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return None
        (a, ba), (b, bb) = inside[0], inside[-1]
        return (bb - ba) / (b - a) * (t1 - t0)


def _rates(done: list[dict[str, Any]], clients: int, n: int,
           cpu: _CpuClock) -> tuple[dict[str, float], dict[str, float | None]]:
    """Aggregate ops/s per phase, and the machine's CPU milliseconds per operation."""
    rates, cost = {}, {}
    for phase in PHASES:
        t0 = min(d[phase][0] for d in done)
        t1 = max(d[phase][1] for d in done)
        rates[phase] = clients * n / (t1 - t0) if t1 > t0 else float("inf")
        busy = cpu.busy_seconds(t0, t1)
        cost[phase] = busy / (clients * n) * 1000 if busy is not None else None
    return rates, cost


def _run_workers(fn: Any, targets: list[Any], clients: int, n: int) -> list[dict[str, Any]]:
    ctx = mp.get_context("spawn")
    with ctx.Manager() as mgr:
        bar = mgr.Barrier(clients)
        with ctx.Pool(clients) as pool:
            return pool.map(fn, [(targets[w % len(targets)], w, n, bar)
                                 for w in range(clients)])


def run_metafs(url: str, nns: int, clients: int, n: int) -> dict[str, Any]:
    with namenodes(url, nns) as addrs:
        follower = _Follower(addrs[-1], clients * n)
        follower.start()
        with _CpuClock() as cpu:
            done = _run_workers(_metafs_worker, addrs, clients, n)
        lags = follower.finish([d["created"] for d in done])
    rates, cost = _rates(done, clients, n, cpu)
    return {"system": "metafs", "namenodes": nns, "clients": clients,
            "ops_per_s": rates, "cpu_ms_per_op": cost,
            "changelog_missing": clients * n - len(follower.seen),
            "lag_p50_ms": _pct(lags, 0.50) * 1000, "lag_p99_ms": _pct(lags, 0.99) * 1000}


def run_juicefs(url: str, clients: int, n: int, work: Path, k: int) -> dict[str, Any]:
    with juicefs_pg_mount(work / f"jfs{k}", url, f"jfs{k}") as root:
        with _CpuClock() as cpu:
            done = _run_workers(_posix_worker, [str(root)], clients, n)
    rates, cost = _rates(done, clients, n, cpu)
    return {"system": "juicefs", "namenodes": 0, "clients": clients,
            "ops_per_s": rates, "cpu_ms_per_op": cost}


def table(results: list[dict[str, Any]]) -> str:
    """Aggregate ops/s per phase (with the changelog lag), then CPU ms per operation."""
    head = f"| system | namenodes | clients | {' | '.join(PHASES)} | lag p50 / p99 ms |"
    lines = [head, "|" + "---|" * (len(PHASES) + 4)]
    for r in results:
        rates = " | ".join(f"{r['ops_per_s'][p]:,.0f}" for p in PHASES)
        lag = (f"{r['lag_p50_ms']:.0f} / {r['lag_p99_ms']:.0f}" if "lag_p50_ms" in r else "-")
        nn = r["namenodes"] or "-"
        lines.append(f"| {r['system']} | {nn} | {r['clients']} | {rates} | {lag} |")
    lines += ["", f"CPU ms per operation, all processes, {psutil.cpu_count()} cores:", "",
              f"| system | namenodes | clients | {' | '.join(PHASES)} |",
              "|" + "---|" * (len(PHASES) + 3)]
    for r in results:
        cost = " | ".join("-" if r["cpu_ms_per_op"][p] is None
                          else f"{r['cpu_ms_per_op'][p]:.2f}" for p in PHASES)
        lines.append(f"| {r['system']} | {r['namenodes'] or '-'} | {r['clients']} | {cost} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = scale_parser(__doc__, 200, "files per client", "1x1,1x8,2x8,4x8,1x32,2x32,4x32")
    ap.add_argument("--no-juicefs", action="store_true")
    args = ap.parse_args(argv)
    configs = parse_configs(args.configs)
    results: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="mfs-scale-pg-"))
    load0 = os.getloadavg()
    try:
        with pg_server(args.pg_url) as url:
            for nns, clients in configs:
                print(f"metafs: {nns} namenode(s) x {clients} client(s) ...", file=sys.stderr,
                      flush=True)
                results.append(run_metafs(url, nns, clients, args.n))
            if not args.no_juicefs and juicefs_binary():
                for k, clients in enumerate(sorted({c for _, c in configs})):
                    print(f"juicefs: {clients} client(s) ...", file=sys.stderr, flush=True)
                    results.append(run_juicefs(url, clients, args.n, work, k))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(results))
    base = next((r for r in results if r["system"] == "metafs" and r["namenodes"] == 1
                 and r["clients"] == 1), None)
    best = next((r for r in results if r["system"] == "metafs" and r["namenodes"] == 2
                 and r["clients"] == 8), None)
    scale = (best["ops_per_s"]["create"] / base["ops_per_s"]["create"]
             if base and best else None)
    if scale is not None:
        print(f"creates, 8 clients over 2 namenodes / 1 client on 1: {scale:.2f}x (target 4x)")
    payload = {"benchmark": "scale_out", "n": args.n, "cores": psutil.cpu_count(),
               "loadavg_before": load0,
               "loadavg_after": os.getloadavg(), "create_scale_2x8_vs_1x1": scale,
               "results": results}
    emit_json(payload, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
