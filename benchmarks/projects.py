"""The per-call cost of the project boundary: stat and create by an identity working in a
project against the same calls by a plain identity, on one namenode in the same run.

    python benchmarks/projects.py [--n 2000]

Both callers work in directories of their own with the same permissions; the project
caller's creates pass the boundary check before commit. Target: under 10% overhead.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from metafs.assembly import build_namenode
from metafs.config import Settings
from metafs.namenode.projects import Caller, serve
from metafs.posix import Cred


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    n = ap.parse_args().n
    rounds = ap.parse_args().rounds
    nn = build_namenode(Settings().with_(data_dir=tempfile.mkdtemp()), background=False)
    ns, pr = nn.ns, nn.projects
    made = serve(pr, Caller("alice"), {"action": "create", "name": "A"})
    st = pr.state()
    groups, ro = st.groups("A")
    in_project = Cred(made["owner_uid"], made["gid"], groups, project="A", ro_groups=ro)
    plain = Cred(1000, 1000, frozenset({1000}))
    home = ns.mkdir(Cred(), 1, "home", 0o755).ino
    pdir = ns.resolve(in_project, "/Projects/A/runs").ino
    top = ns.mkdir(Cred(), home, "alice", 0o2770).ino
    pl = ns.mkdir(Cred(), top, "runs", 0o2770).ino  # as deep as /Projects/A/runs
    ns.mutate(Cred(), lambda tx: tx.conn.exec_driver_sql(  # alice's own directories
        f"UPDATE inodes SET uid=1000, gid=1000 WHERE id IN ({top}, {pl})"))
    times: dict[str, list[float]] = {k: [] for k in ("create", "create+project",
                                                      "stat", "stat+project")}
    for r in range(rounds):
        for key, cred, parent in (("create", plain, pl), ("create+project", in_project, pdir)):
            t = time.perf_counter()
            for i in range(n):
                ns.create(cred, parent, f"f{r}-{i}", 0o644)
            times[key].append((time.perf_counter() - t) / n * 1e6)
        for key, cred, path in (("stat", plain, "/home/alice/runs/f0-0"),
                                ("stat+project", in_project, "/Projects/A/runs/f0-0")):
            t = time.perf_counter()
            for _ in range(n):
                ns.resolve(cred, path)
            times[key].append((time.perf_counter() - t) / n * 1e6)
    med = {k: statistics.median(v) for k, v in times.items()}
    for op in ("create", "stat"):
        over = (med[f"{op}+project"] / med[op] - 1) * 100
        print(f"{op:7s} plain {med[op]:8.1f} us  in a project {med[op + '+project']:8.1f} us"
              f"  overhead {over:+.1f}%")
    nn.close()


if __name__ == "__main__":
    main()
