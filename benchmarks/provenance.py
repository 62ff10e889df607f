"""Provenance query speed on a large graph.

Builds a graph of ``--runs`` runs and ``--artifacts`` artifact versions straight into a
provenance store (SQLite file by default, ``--db URL`` for PostgreSQL): ``--projects``
independent pipelines; in each, the first run ingests a data set and every later run reads
one data-set file and two outputs of the previous few runs and writes its own outputs;
``--hubs`` shared data sets (100 by default) are each read by a share of all runs across
every project, and ``downstream`` from them is timed too (depth 1 and 3).
Then times ``upstream`` and ``downstream`` (the full answer: the recursive SQL walk plus
the runs', artifacts' and paths' details) from random artifact versions, unbounded and
``--depth 3``, and prints JSON and a table with p50/p99. Target: p50 under 100 ms at
100,000 runs and 1,000,000 artifact versions.

As a machine-speed reference measured in the same run, it also times one indexed point
lookup of an edge.

    python benchmarks/provenance.py                      # 100k runs, 1M versions
    python benchmarks/provenance.py --runs 10000 --artifacts 100000
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import insert, select

from metafs.cdc.provenance.query import ProvenanceQuery
from metafs.cdc.provenance.store import EDGES, FILES, RUNS, VERSIONS, ProvenanceStore


def build(store: ProvenanceStore, runs: int, artifacts: int, projects: int,
          seed: int = 1, hubs: int = 0, hub_p: float = 0.3) -> dict[str, Any]:
    """Fill ``store`` with a synthetic lineage graph; returns what was built. ``hubs``
    shared data sets (written by one ingest run) are each read by a fraction ``hub_p`` of
    all later runs, spread over every project: the "ImageNet" of a team."""
    rng = random.Random(seed)
    per_run = max(1, artifacts // runs)
    per_project = max(2, runs // projects)
    t0 = time.perf_counter()
    files: list[dict[str, Any]] = []
    versions: list[dict[str, Any]] = []
    run_rows: list[dict[str, Any]] = []
    edges: list[dict[str, Any]] = []
    ino = 1
    # one directory per project
    project_dir: dict[int, int] = {}
    for p in range((runs + per_project - 1) // per_project):
        ino += 1
        project_dir[p] = ino
        files.append(dict(ino=ino, parent=1, name=f"project-{p}", is_dir=True, kind_x=None,
                          data_children=0, deleted=False, seq=0))
    av = 0
    seq = 0
    hub_avs: list[int] = []
    if hubs:
        ino += 1
        shared = ino
        files.append(dict(ino=shared, parent=1, name="shared", is_dir=True, kind_x=None,
                          data_children=0, deleted=False, seq=0))
        ingest = runs + 1
        run_rows.append(dict(id=ingest, key="run:bench-ingest", explicit=True, name="ingest",
                             params="{}", host="bench", user_name="bench", uid=0, pid=0,
                             cmdline="python ingest.py", status="completed", exit_code=0,
                             start_ns=0, end_ns=0, seq=0, ts_ns=0, end_seq=0))
        for h in range(hubs):
            av += 1
            ino += 1
            files.append(dict(ino=ino, parent=shared, name=f"dataset-{h}", is_dir=True,
                              kind_x="dataset", data_children=0, deleted=False, seq=0))
            versions.append(dict(id=av, ino=ino, v_lo=1, v_hi=1, writer="run:bench-ingest",
                                 open=False, size=10**9, seq=0, ts_ns=0))
            edges.append(dict(av=av, dir="w", run=ingest, seq=0, ts_ns=0))
            hub_avs.append(av)
    outputs: dict[int, list[int]] = {}
    for r in range(1, runs + 1):
        p = (r - 1) // per_project
        first = (r - 1) % per_project == 0
        seq += 1
        run_rows.append(dict(id=r, key=f"run:bench-{r}", explicit=True, name=f"step-{r}",
                             params="{}", host="bench", user_name="bench", uid=0, pid=r,
                             cmdline=f"python step.py --run {r}", status="completed",
                             exit_code=0, start_ns=seq, end_ns=seq + 1, seq=seq, ts_ns=seq,
                             end_seq=seq))
        if not first:
            prev = [q for q in range(max(r - 5, r - (r - 1) % per_project), r)
                    if q in outputs]
            ingest = outputs.get(r - (r - 1) % per_project, [])
            picks = set(rng.sample(ingest, 1)) if ingest else set()
            for q in rng.sample(prev, min(2, len(prev))):
                picks.add(rng.choice(outputs[q]))
            if hub_avs and rng.random() < hub_p:
                picks.add(rng.choice(hub_avs))
            for a in picks:
                edges.append(dict(av=a, dir="r", run=r, seq=seq, ts_ns=seq))
        outs = []
        for k in range(per_run):
            av += 1
            ino += 1
            ext = ".parquet" if first else (".pt" if k == 0 else ".json")
            files.append(dict(ino=ino, parent=project_dir[p], name=f"r{r}-{k}{ext}",
                              is_dir=False, kind_x=None, data_children=0, deleted=False,
                              seq=seq))
            versions.append(dict(id=av, ino=ino, v_lo=1, v_hi=1, writer=f"run:bench-{r}",
                                 open=False, size=1000, seq=seq, ts_ns=seq))
            edges.append(dict(av=av, dir="w", run=r, seq=seq, ts_ns=seq))
            outs.append(av)
        outputs[r] = outs
    with store.engine.begin() as c:
        for table, rows in ((FILES, files), (RUNS, run_rows), (VERSIONS, versions),
                            (EDGES, edges)):
            for i in range(0, len(rows), 50_000):
                c.execute(insert(table), rows[i:i + 50_000])
    # no ANALYZE: the store runs without planner statistics (see ProvenanceStore)
    return {"runs": runs, "artifact_versions": av, "edges": len(edges),
            "projects": len(project_dir), "hubs": hub_avs,
            "build_s": round(time.perf_counter() - t0, 1)}


def mount_cost(files: int = 200, rounds: int = 3) -> dict[str, Any]:
    """4 KiB reads and file opens on a real FUSE mount with access events on and off
    (same namenode, same files, alternating mounts to share any drift)."""
    import os
    import subprocess

    from metafs import config
    from metafs.client import Client

    tmp = Path(tempfile.mkdtemp(prefix="metafs-prov-mount-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAFS_")}
    (tmp / "none.toml").write_text("")
    env["METAFS_CONFIG"] = str(tmp / "none.toml")
    ready = tmp / "ready"
    nn = subprocess.Popen([sys.executable, "-m", "metafs.cli", "serve", "--data",
                           str(tmp / "nn"), "--listen", "127.0.0.1:0", "--ready-file",
                           str(ready)], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        while not (ready.exists() and ready.read_text()):
            time.sleep(0.05)
        env["METAFS_NAMENODE"] = ready.read_text().strip()
        with Client(settings=config.load(environ=env)) as fs:
            fs.makedirs("/bench")
            for i in range(files):
                fs.write_bytes(f"/bench/f{i}", os.urandom(4096))
        out: dict[str, list[float]] = {"on_open_read_us": [], "off_open_read_us": []}
        for _ in range(rounds):
            for mode in ("on", "off"):
                mnt = tmp / f"mnt-{mode}"
                mnt.mkdir(exist_ok=True)
                extra = [] if mode == "on" else ["--no-access-events"]
                subprocess.run([sys.executable, "-m", "metafs.cli", "mount", str(mnt),
                                *extra], env=env, check=True, capture_output=True)
                try:
                    names = [mnt / "bench" / f"f{i}" for i in range(files)]
                    for n in names:  # warm the namenode and kernel lookups
                        os.stat(n)
                    t = time.perf_counter()
                    for n in names:
                        fd = os.open(n, os.O_RDONLY)
                        os.read(fd, 4096)
                        os.close(fd)
                    out[f"{mode}_open_read_us"].append(
                        (time.perf_counter() - t) / files * 1e6)
                finally:
                    subprocess.run([sys.executable, "-m", "metafs.cli", "umount", str(mnt)],
                                   env=env, capture_output=True)
        on = statistics.median(out["on_open_read_us"])
        off = statistics.median(out["off_open_read_us"])
        return {"files": files, "rounds": rounds, "events_on_us_per_open_read": round(on, 1),
                "events_off_us_per_open_read": round(off, 1),
                "slowdown_pct": round((on / off - 1) * 100, 1), "target_pct": 10}
    finally:
        nn.terminate()
        nn.wait(30)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def timed(fn: Callable[[], Any], n: int) -> tuple[list[float], list[int]]:
    out, sizes = [], []
    for _ in range(n):
        t = time.perf_counter()
        g = fn()
        out.append((time.perf_counter() - t) * 1000)
        sizes.append(len(g.runs) + len(g.artifacts) if hasattr(g, "runs") else 0)
    return out, sizes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--artifacts", type=int, default=1_000_000)
    ap.add_argument("--projects", type=int, default=0,
                    help="independent pipelines (default: runs / 100)")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--hubs", type=int, default=100,
                    help="shared data sets, each read by --hub-p of all runs (0: none)")
    ap.add_argument("--hub-p", type=float, default=0.3)
    ap.add_argument("--db", help="database URL (default: a SQLite file in a temp dir)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--mount", action="store_true",
                    help="also measure access events' cost on a real FUSE mount")
    ap.add_argument("--mount-only", action="store_true", help="only the mount measurement")
    args = ap.parse_args(argv)
    if args.mount_only:
        r = mount_cost()
        print(json.dumps({"mount": r}, indent=2))
        return 0
    tmp = tempfile.TemporaryDirectory(prefix="metafs-prov-bench-")
    url = args.db or f"sqlite:///{Path(tmp.name) / 'provenance.db'}"
    store = ProvenanceStore(url)
    store.reset()
    built = build(store, args.runs, args.artifacts, args.projects or max(1, args.runs // 100),
                  hubs=args.hubs, hub_p=args.hub_p)
    hub_avs = built.pop("hubs")
    built["hubs"] = len(hub_avs)
    q = ProvenanceQuery(store)
    rng = random.Random(7)
    n_av = built["artifact_versions"]
    results: dict[str, Any] = {"graph": built, "db": url.split("://")[0]}
    # reference: one indexed point lookup, same database, same run
    with store.reader.connect() as c:
        ref = []
        for _ in range(args.queries):
            a = rng.randint(1, n_av)
            t = time.perf_counter()
            c.execute(select(EDGES.c.run).where(EDGES.c.av == a, EDGES.c.dir == "w")).all()
            ref.append((time.perf_counter() - t) * 1000)
    results["reference_point_lookup_ms"] = {"p50": round(pct(ref, .5), 3),
                                            "p99": round(pct(ref, .99), 3)}
    for name, depth in (("upstream", None), ("upstream_depth3", 3),
                        ("downstream", None), ("downstream_depth3", 3)):
        walk = q.upstream if name.startswith("up") else q.downstream
        starts = [rng.randint(1, n_av) for _ in range(args.queries)]
        it = iter(starts)
        ms, sizes = timed(lambda: walk([next(it)], depth), args.queries)
        results[name] = {"p50_ms": round(pct(ms, .5), 2), "p99_ms": round(pct(ms, .99), 2),
                         "mean_ms": round(statistics.fmean(ms), 2),
                         "nodes_p50": int(pct(sizes, .5)), "nodes_max": max(sizes)}
    # "which models did this data set feed?" for the shared data sets every project reads
    for name, depth in (("downstream_hub_depth3", 3), ("downstream_hub_depth1", 1)):
        if not hub_avs:
            break
        it = iter([rng.choice(hub_avs) for _ in range(max(10, args.queries // 10))])
        ms, sizes = timed(lambda: q.downstream([next(it)], depth), max(10, args.queries // 10))
        results[name] = {"p50_ms": round(pct(ms, .5), 2), "p99_ms": round(pct(ms, .99), 2),
                         "mean_ms": round(statistics.fmean(ms), 2),
                         "nodes_p50": int(pct(sizes, .5)), "nodes_max": max(sizes)}
    results["target_p50_ms"] = 100
    results["meets_target"] = all(results[k]["p50_ms"] < 100 for k in
                                  ("upstream", "downstream", "upstream_depth3",
                                   "downstream_depth3"))
    if args.mount:
        results["mount"] = mount_cost()
    print(json.dumps(results, indent=2))
    print(f"\n{'query':<20} {'p50 ms':>8} {'p99 ms':>8} {'nodes p50':>10} {'nodes max':>10}",
          file=sys.stderr)
    for k in ("upstream", "upstream_depth3", "downstream", "downstream_depth3",
              "downstream_hub_depth1", "downstream_hub_depth3"):
        if k not in results:
            continue
        r = results[k]
        print(f"{k:<20} {r['p50_ms']:>8} {r['p99_ms']:>8} {r['nodes_p50']:>10} "
              f"{r['nodes_max']:>10}", file=sys.stderr)
    print(f"{'point lookup (ref)':<20} {results['reference_point_lookup_ms']['p50']:>8} "
          f"{results['reference_point_lookup_ms']['p99']:>8}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    store.close()
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
