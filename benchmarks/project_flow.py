"""The per-call cost of following processes across project mounts: a mount's handle-less
open for reading and for writing, and a create, by an identity working in a project whose
calls carry a process key (as a mount's do), against the same calls without one, on one
namenode in the same run.

    python benchmarks/project_flow.py [--n 1000] [--rounds 7] [--db-url URL] [--json FILE]

A key costs nothing on an open for reading once its process's read of the file's group is
recorded on this namenode (the first read writes one row); one indexed query of what the
process read on every open for writing (a statement of its own); and the same query inside
the transaction of every write (create here). Prints the median per-call times in us.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import emit_json  # noqa: E402

from metafs.assembly import build_namenode  # noqa: E402
from metafs.config import Settings  # noqa: E402
from metafs.namenode.projects import Caller, serve  # noqa: E402
from metafs.posix import Cred  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="calls of each kind per round")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--db-url", default="", help="a PostgreSQL database (default: SQLite)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    nn = build_namenode(Settings().with_(data_dir=tempfile.mkdtemp(), db_url=args.db_url),
                        background=False)
    ns, pr = nn.ns, nn.projects
    made = serve(pr, Caller("alice"), {"action": "create", "name": "A"})
    groups, ro = pr.state().groups("A")
    plain = Cred(made["owner_uid"], made["gid"], groups, project="A", ro_groups=ro)
    keyed = dataclasses.replace(plain, process="bench-boot:4242:17")
    runs = ns.resolve(plain, "/Projects/A/runs").ino
    ino = ns.create(plain, runs, "probe", 0o644).attr.ino
    made_files = iter(range(10**9))
    calls: dict[str, Callable[[Cred], Any]] = {
        "open for reading": lambda c: ns.open_attr(c, ino, os.O_RDONLY),
        "open for writing": lambda c: ns.open_attr(c, ino, os.O_WRONLY),
        "create": lambda c: ns.create(c, runs, f"f{next(made_files)}", 0o644)}
    times: dict[str, dict[str, list[float]]] = {op: {"no key": [], "key": []} for op in calls}
    for r in range(args.rounds):
        for op, fn in calls.items():
            for way, cred in (("no key", plain), ("key", keyed))[::1 if r % 2 else -1]:
                t = time.perf_counter()
                for _ in range(args.n):
                    fn(cred)
                times[op][way].append((time.perf_counter() - t) / args.n * 1e6)
    nn.close()
    results = {op: {way: round(statistics.median(v), 1) for way, v in ways.items()}
               for op, ways in times.items()}
    for op, r in results.items():
        print(f"{op:17s} no key {r['no key']:8.1f} us  with a process key {r['key']:8.1f} us")
    emit_json({"engine": "postgres" if args.db_url else "sqlite", "n": args.n,
               "rounds": args.rounds, "us_per_call": results}, args.json, echo=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
