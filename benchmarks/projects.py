"""The per-call cost of projects: create and stat by an identity working in a project,
against the same calls on the same namenode with the project check taken out, in the same
run.

    python benchmarks/projects.py [--n 200] [--rounds 30] [--json FILE]

One embedded namenode on SQLite, three ways per round, interleaved:

- ``no projects``: a plain identity in a directory of its own (``/home/alice/runs``) with
  the project check removed from the write transactions (a namenode without projects);
- ``projects, plain identity``: the same with the check in place (every namenode with
  projects pays this for every caller: the check finds the caller works in no project);
- ``in a project``: an identity working in project A, in ``/Projects/A/runs`` (as deep,
  same permissions), whose creates pass the boundary check before commit.

Prints a table (the median of the rounds' per-call times, and the overhead as the median
of the rounds' ratios to ``no projects``) and the JSON of the results.
Target: under 10% overhead for an identity in a project.
"""

from __future__ import annotations

import argparse
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

WAYS = ("no projects", "projects, plain identity", "in a project")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="calls of each kind per round and way")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    n, rounds = args.n, args.rounds
    nn = build_namenode(Settings().with_(data_dir=tempfile.mkdtemp()), background=False)
    ns, pr = nn.ns, nn.projects
    made = serve(pr, Caller("alice"), {"action": "create", "name": "A"})
    groups, ro = pr.state().groups("A")
    in_project = Cred(made["owner_uid"], made["gid"], groups, project="A", ro_groups=ro)
    plain = Cred(1000, 1000, frozenset({1000}))
    home = ns.mkdir(Cred(), 1, "home", 0o755).ino
    pdir = ns.resolve(in_project, "/Projects/A/runs").ino
    top = ns.mkdir(Cred(), home, "alice", 0o2770).ino
    pl = ns.mkdir(Cred(), top, "runs", 0o2770).ino  # as deep as /Projects/A/runs
    ns.mutate(Cred(), lambda tx: tx.conn.exec_driver_sql(  # alice's own directories
        f"UPDATE inodes SET uid=1000, gid=1000 WHERE id IN ({top}, {pl})"))
    ns.create(plain, pl, "probe", 0o644)
    ns.create(in_project, pdir, "probe", 0o644)
    ways: dict[str, tuple[Cred, int, str, bool]] = {  # cred, dir, a file in it, check on
        "no projects": (plain, pl, "/home/alice/runs/probe", False),
        "projects, plain identity": (plain, pl, "/home/alice/runs/probe", True),
        "in a project": (in_project, pdir, "/Projects/A/runs/probe", True)}
    times: dict[str, dict[str, list[float]]] = {op: {w: [] for w in WAYS}
                                                 for op in ("create", "stat")}

    def timed(fn: Callable[[int], Any]) -> float:
        t = time.perf_counter()
        for i in range(n):
            fn(i)
        return (time.perf_counter() - t) / n * 1e6

    for r in range(rounds):
        order = WAYS[r % 3:] + WAYS[:r % 3]  # rotated, so no way always runs first
        for way in order:
            cred, parent, probe, check = ways[way]
            hooks = ns.precommit_hooks
            if not check:
                ns.precommit_hooks = [h for h in hooks if h != pr.check]
            try:
                times["create"][way].append(
                    timed(lambda i: ns.create(cred, parent, f"f{r}-{way[:2]}-{i}", 0o644)))
            finally:
                ns.precommit_hooks = hooks
            times["stat"][way].append(timed(lambda i: ns.resolve(cred, probe)))
    nn.close()
    med = {op: {w: statistics.median(v) for w, v in ways_.items()}
           for op, ways_ in times.items()}
    results: dict[str, Any] = {
        "n": n, "rounds": rounds, "engine": "sqlite", "mode": "embedded",
        "us_per_call": {op: {w: round(v, 1) for w, v in m.items()} for op, m in med.items()},
        # the median of the rounds' ratios: each round's three ways ran close in time
        "overhead_pct": {op: {w: round((statistics.median(
            a / b for a, b in zip(t[w], t["no projects"])) - 1) * 100, 1)
            for w in WAYS[1:]} for op, t in times.items()},
        "target_pct": 10}
    print(f"{'call':7s} {'way':26s} {'us/call':>9s} {'overhead':>9s}")
    for op, m in med.items():
        for w in WAYS:
            over = "" if w == WAYS[0] else f"{results['overhead_pct'][op][w]:+.1f}%"
            print(f"{op:7s} {w:26s} {m[w]:9.1f} {over:>9s}")
    emit_json(results, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
