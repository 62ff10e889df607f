"""Search benchmark: ingest, indexing rate, commit-to-searchable lag, query latency.

    python benchmarks/search.py --files 1000000 [--json out.json]

1. creates N tagged files through the bulk API (Namespace.bulk_create; rate printed);
2. indexes them by replaying the changelog into the embedded back end (docs/s);
3. measures the lag from commit to searchable (p50/p99) with the indexer running in a
   background thread while a writer commits a steady stream of tagged files;
4. measures p50/p99 latency of ten query shapes over the full index.

Reference measured in the same run: the time to scan the same number of rows of the
namenode's own inode table (a plain SQLite full scan), to put query latencies in context.
Targets: lag p99 < 1 s, query p50 < 50 ms, indexing >= 10,000 docs/s.
"""

from __future__ import annotations

import argparse
import json
import queue
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metafs.cdc.consumer import Consumer  # noqa: E402
from metafs.cdc.search.api import Indexer  # noqa: E402
from metafs.cdc.search.embedded import EmbeddedIndex  # noqa: E402
from metafs.cdc.source import NamespaceSource  # noqa: E402
from metafs.config import load  # noqa: E402
from metafs.namenode.engine import engine_for  # noqa: E402
from metafs.namenode.namespace import Namespace  # noqa: E402
from metafs.posix import ROOT  # noqa: E402
from metafs.proto import metafs_pb2 as pb  # noqa: E402

LABELS = ["cat", "dog", "person", "car", "bicycle", "tree", "boat", "bird"]
CAPTIONS = ["a red car on a street", "a dog in the park", "red bicycle by a wall",
            "people crossing", "a blue car", "boats in a harbour"]
DIRS = 1000

QUERIES = [
    ("tag range", "bicycles>3"),
    ("extension", "ext:jpg"),
    ("tag string", "label=cat"),
    ("phrase", '"red car"'),
    ("issue example", 'bicycles>3 ext:jpg under:/datasets/d007 "red car"'),
    ("under dir", "under:/datasets/d042"),
    ("narrow float range", "score>=0.5 score<0.501"),
    ("boolean logic", "(label=cat OR label=dog) NOT reviewed=true"),
    ("name prefix", "name:f00123*"),
    ("sorted by size", "size>100 ext:png"),
]
SORTS = {"sorted by size": "-size"}


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def entry(i: int, rnd: random.Random) -> pb.BulkEntry:
    tags = {
        "user.bicycles": str(rnd.randrange(0, 8)).encode(),
        "user.label": json.dumps(rnd.choice(LABELS)).encode(),
        "user.score": str(round(rnd.random(), 4)).encode(),
        "user.reviewed": b"true" if rnd.random() < 0.5 else b"false",
    }
    if rnd.random() < 0.2:
        tags["user.caption"] = json.dumps(rnd.choice(CAPTIONS)).encode()
    ext = rnd.choice(["jpg", "jpg", "png", "txt"])
    return pb.BulkEntry(path=f"d{i % DIRS:03d}/f{i:07d}.{ext}", mode=0o100644,
                        data=b"x" * rnd.randrange(0, 200), xattrs=tags)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=10_000, help="files per bulk call")
    ap.add_argument("--data", help="data directory (default: a temporary one)")
    ap.add_argument("--lag-seconds", type=float, default=10.0)
    ap.add_argument("--lag-rate", type=float, default=200.0, help="files/s during lag test")
    ap.add_argument("--reps", type=int, default=21, help="runs per query shape")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    data = Path(args.data or tempfile.mkdtemp(prefix="mfsearch"))
    s = load(overrides={"data_dir": str(data)})
    ns = Namespace(engine_for(s.effective_db_url, s), s)
    ns.setup()
    res: dict = {"files": args.files}
    rnd = random.Random(1)

    # 1. ingest
    root = ns.mkdir(ROOT, 1, "datasets", 0o755).ino
    t0 = time.perf_counter()
    done = 0
    while done < args.files:
        n = min(args.batch, args.files - done)
        ns.bulk_create(ROOT, root, [entry(done + i, rnd) for i in range(n)],
                       make_parents=True, exist_ok=True)
        done += n
    t_ingest = time.perf_counter() - t0
    res["bulk_create_files_per_s"] = args.files / t_ingest
    print(f"bulk create: {args.files} files in {t_ingest:.1f}s "
          f"({res['bulk_create_files_per_s']:,.0f}/s)", flush=True)

    # 2. index by replay
    idx = EmbeddedIndex(data / "search" / "index.db")
    src = NamespaceSource(ns)
    cons = Consumer(src, idx, batch=20_000)
    t0 = time.perf_counter()
    recs = cons.catch_up()
    t_index = time.perf_counter() - t0
    t0 = time.perf_counter()
    idx.analyze()
    t_analyze = time.perf_counter() - t0
    res["index_docs_per_s"] = args.files / t_index
    res["index_records_per_s"] = recs / t_index
    res["analyze_s"] = t_analyze
    print(f"index: {args.files} docs ({recs} records) in {t_index:.1f}s "
          f"({res['index_docs_per_s']:,.0f} docs/s); ANALYZE {t_analyze:.1f}s", flush=True)

    # 3. lag under steady write load
    ix = Indexer(src, idx, batch=5000, wait_ms=50).start()
    lags: list[float] = []
    pending: "queue.Queue[tuple[int, float] | None]" = queue.Queue()

    def watcher() -> None:
        while (item := pending.get()) is not None:
            seq, t_commit = item
            ix.wait_for(seq, 30)
            lags.append(time.perf_counter() - t_commit)

    w = threading.Thread(target=watcher)
    w.start()
    lagdir = ns.mkdir(ROOT, 1, "lag", 0o755).ino
    end = time.perf_counter() + args.lag_seconds
    i = 0
    interval = 1.0 / args.lag_rate
    nxt = time.perf_counter()
    while time.perf_counter() < end:
        reply = ns.create(ROOT, lagdir, f"w{i}.jpg", 0o644)
        ns.setxattr(ROOT, reply.attr.ino, "user.bicycles", str(i % 8).encode())
        pending.put((ns.changelog_head(), time.perf_counter()))
        i += 1
        nxt += interval
        time.sleep(max(0.0, nxt - time.perf_counter()))
    pending.put(None)
    w.join()
    ix.stop()
    res["lag_writes"] = i
    res["lag_p50_ms"] = pct(lags, 50) * 1000
    res["lag_p99_ms"] = pct(lags, 99) * 1000
    print(f"lag: {i} writes at {args.lag_rate:g}/s: p50 {res['lag_p50_ms']:.1f} ms, "
          f"p99 {res['lag_p99_ms']:.1f} ms", flush=True)

    # 4. queries
    from sqlalchemy import text

    t0 = time.perf_counter()  # reference: a full scan of the namenode's inode table
    scan = ns.query(lambda conn: conn.execute(text("SELECT count(*), sum(size) FROM inodes"))
                    .fetchone())
    res["reference_full_scan_ms"] = (time.perf_counter() - t0) * 1000
    res["queries"] = []
    rows = []
    for name, qs in QUERIES:
        times = []
        nhits = 0
        for _ in range(args.reps):
            t0 = time.perf_counter()
            r = idx.search(qs, limit=100, sort=SORTS.get(name))
            times.append((time.perf_counter() - t0) * 1000)
            nhits = len(r.hits)
        total = idx.search(qs, limit=0, count=True).total
        row = {"shape": name, "query": qs, "p50_ms": pct(times, 50), "p99_ms": pct(times, 99),
               "returned": nhits, "matches": total}
        res["queries"].append(row)
        rows.append(row)
    print(f"\nreference: full scan of {scan[0]:,} inode rows: "
          f"{res['reference_full_scan_ms']:.0f} ms")
    print(f"\n{'shape':<20} {'p50 ms':>8} {'p99 ms':>8} {'matches':>9}  query")
    for r in rows:
        print(f"{r['shape']:<20} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} {r['matches']:9,}  "
              f"{r['query']}")
    print(json.dumps(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    idx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
