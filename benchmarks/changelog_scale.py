"""Write scaling and changelog lag on PostgreSQL: namenode processes on one database.

For each configuration (namenodes x client processes) it starts ``metafs serve`` processes
on a fresh PostgreSQL database, has every client create N empty files over gRPC (clients
spread round-robin over the namenodes), and meanwhile follows the changelog through one
namenode. It reports the aggregate creates/s and the changelog lag: for each create, the
time from the call's reply (the commit) to the moment the follower read its record (p50,
p99, max; a record read before the reply counts as 0).

``--baseline TREE`` runs the same configurations with the namenodes of another checkout
(e.g. the main branch) in the same run, so the two can be compared on a noisy machine.

    python benchmarks/changelog_scale.py [--n 500] [--configs 1x1,1x8,2x8] [--baseline /path/to/tree]
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _common  # noqa: E402


def _creator(args: tuple[str, int, int, Any]) -> dict[str, float]:
    """Create ``n`` files in a directory of its own; returns name -> reply time."""
    address, wid, n, bar = args
    from metafs.client import Client
    from metafs.config import load
    from metafs.proto import metafs_pb2 as pb

    fs = Client(settings=load(overrides={"namenode": address,
                                         "data_dir": tempfile.mkdtemp()}, environ={}))
    fs.mkdir(f"/w{wid}")
    dino = fs.ino(f"/w{wid}")
    call, caller = fs.transport.call, fs.caller
    done: dict[str, float] = {}
    bar.wait()
    for i in range(n):
        name = f"w{wid}-{i}"
        call("Create", pb.CreateRequest(caller=caller, parent=dino, name=name, mode=0o100644))
        done[name] = time.time()
    fs.close()
    return done


class _Follower(threading.Thread):
    """Follows the changelog through one namenode; notes when each create is read."""

    def __init__(self, address: str, expect: int) -> None:
        super().__init__(daemon=True)
        from metafs.client import Client
        from metafs.config import load

        self.fs = Client(settings=load(overrides={"namenode": address,
                                                  "data_dir": tempfile.mkdtemp()}, environ={}))
        self.expect = expect
        self.seen: dict[str, float] = {}
        self.after = self.fs.changelog_head()
        self.stop = threading.Event()

    def run(self) -> None:
        from metafs.proto import metafs_pb2 as pb

        while len(self.seen) < self.expect and not self.stop.is_set():
            recs, _ = self.fs.changelog(after=self.after, limit=1000, wait_ms=200)
            now = time.time()
            for r in recs:
                assert r.seq == self.after + 1, f"gap or reorder: {self.after} then {r.seq}"
                self.after = r.seq
                if r.op == pb.OP_CREATE:
                    self.seen[r.name] = now

    def finish(self, created: list[dict[str, float]]) -> list[float]:
        """Wait (up to 60 s) for the records of the creates ``created`` (name -> reply time,
        a dict per client), stop, and return the lag of each create read."""
        self.join(60)
        self.stop.set()
        self.fs.close()
        return [max(0.0, self.seen[name] - t) for d in created for name, t in d.items()
                if name in self.seen]


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def run_config(tree: Path, url: str, namenodes: int, clients: int, n: int) -> dict[str, Any]:
    with _common.namenodes(url, namenodes, tree) as addrs:
        follower = _Follower(addrs[-1], clients * n)
        follower.start()
        ctx = mp.get_context("spawn")
        with ctx.Manager() as mgr:
            bar = mgr.Barrier(clients + 1)
            with ctx.Pool(clients) as pool:
                res = pool.map_async(_creator, [(addrs[w % namenodes], w, n, bar)
                                                for w in range(clients)])
                bar.wait()
                t0 = time.time()
                done = res.get()
        elapsed = max(max(d.values()) for d in done) - t0
        lags = follower.finish(done)
    return {"namenodes": namenodes, "clients": clients,
            "creates_per_s": clients * n / elapsed, "records_read": len(follower.seen),
            "missing": clients * n - len(follower.seen),
            "lag_p50_ms": _pct(lags, 0.50) * 1000, "lag_p99_ms": _pct(lags, 0.99) * 1000,
            "lag_max_ms": max(lags, default=float("nan")) * 1000}


def main(argv: list[str] | None = None) -> int:
    ap = _common.scale_parser(__doc__, 500, "creates per client", "1x1,1x8,2x8")
    ap.add_argument("--baseline", help="another checkout whose namenodes to measure too")
    args = ap.parse_args(argv)
    configs = _common.parse_configs(args.configs)
    trees = [("this", _common.HERE)] + ([("baseline", Path(args.baseline).resolve())]
                                if args.baseline else [])
    results = []
    with _common.pg_server(args.pg_url) as url:
        for label, tree in trees:
            for nns, clients in configs:
                print(f"{label}: {nns} namenode(s) x {clients} client(s) ...",
                      file=sys.stderr, flush=True)
                results.append({"tree": label, **run_config(tree, url, nns, clients, args.n)})
    print(f"{'tree':<9}{'nn':>3}{'clients':>8}{'creates/s':>11}{'lag p50 ms':>12}"
          f"{'lag p99 ms':>12}{'max ms':>9}{'missing':>8}")
    for r in results:
        print(f"{r['tree']:<9}{r['namenodes']:>3}{r['clients']:>8}{r['creates_per_s']:>11,.0f}"
              f"{r['lag_p50_ms']:>12.1f}{r['lag_p99_ms']:>12.1f}{r['lag_max_ms']:>9.1f}"
              f"{r['missing']:>8}")
    _common.emit_json({"benchmark": "changelog_scale", "n": args.n, "results": results},
                      args.json, echo=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
