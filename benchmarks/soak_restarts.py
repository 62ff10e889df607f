"""Soak: namenodes killed (SIGKILL) and restarted again and again under writers on a mount.

    python benchmarks/soak_restarts.py --minutes 3 [--topologies sqlite,postgresql,failover]
        [--writers 3] [--interval 10] [--pg-url URL] [--json out.json]

For each topology it mounts the file system, runs ``--writers`` programs that write and
fsync small files and one that lists the directory, and every ``--interval`` seconds kills
a namenode:

- ``sqlite``: one namenode on SQLite, killed and started again at once;
- ``postgresql``: the same on PostgreSQL;
- ``failover``: two namenodes on one PostgreSQL, mounted with ``--namenode a,b``; they are
  killed in turn (the one killed last has been started again since), so each kill leaves
  the mount one namenode to go on with.

The outage of a kill is the seconds from it until every writer has fsynced a file again:
the longest a program waited. At the end come the errors that reached the programs and a
byte-for-byte check of every file whose fsync returned (the goal: no errors, no
mismatches). A topology with errors or mismatches keeps its scratch directory (namenode
and mount logs) for a look.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import emit_json, pg_server, reset_pg  # noqa: E402
from changelog_scale import _pct  # noqa: E402

from metafs.testing.faults import NamenodeProcess, Workload  # noqa: E402

TOPOLOGIES = ("sqlite", "postgresql", "failover")


def _mount(path: Path, address: str, log: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "metafs.cli", "mount", str(path), "--namenode",
                    address, "--log-file", str(log)], check=True, timeout=120)


def _umount(path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "metafs.cli", "umount", str(path)],
                         capture_output=True, timeout=60)
    if res.returncode != 0:
        subprocess.run(["fusermount3", "-uz", str(path)], capture_output=True)


def _wait_all_progressed(load: Workload, before: list[int], timeout: float) -> bool:
    """Until every writer has fsynced a file more than ``before``; False on timeout."""
    deadline = time.monotonic() + timeout
    while any(n <= b for n, b in zip(load.written_each(), before)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _mismatch(path: Path, data: bytes) -> str | None:
    """None if ``path`` holds ``data``, else what is there instead."""
    try:
        got = path.read_bytes()
    except OSError as exc:
        return f"{path.name}: {exc}"
    if got == data:
        return None
    return f"{path.name}: {len(got)} bytes, expected {len(data)}" + (
        "" if len(got) != len(data) else " (other contents)")


def soak(topology: str, minutes: float, interval: float, writers: int,
         pg_url: str = "", stall_s: float = 180.0) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="mfsoak"))
    if topology == "sqlite":
        nodes = [NamenodeProcess(work, data_dir=work / "data")]
    else:
        reset_pg(pg_url)
        nodes = [NamenodeProcess(work, db_url=pg_url, blocks_url=(work / "blocks").as_uri(),
                                 name=name)
                 for name in ("a", "b")[:2 if topology == "failover" else 1]]
    mnt = work / "mnt"
    outages: list[float] = []
    restart_s: list[float] = []
    stalls = 0
    keep = False
    try:
        for nn in nodes:
            nn.start()
        _mount(mnt, ",".join(nn.address for nn in nodes), work / "mount.log")
        (mnt / "w").mkdir()
        load = Workload(mnt / "w", work, writers=writers)
        try:
            load.wait_for_progress(10)
            end = time.monotonic() + minutes * 60
            while time.monotonic() < end:
                time.sleep(interval)
                nn = nodes[(len(outages) + stalls) % len(nodes)]
                before = load.written_each()
                t0 = time.monotonic()
                nn.kill()
                if len(nodes) == 1:         # nothing to fail over to: back at once
                    nn.start()
                    restart_s.append(time.monotonic() - t0)
                ok = _wait_all_progressed(load, before, stall_s)
                outage = time.monotonic() - t0
                if len(nodes) > 1:          # the survivor carried the load; back up
                    t1 = time.monotonic()
                    nn.start()
                    restart_s.append(time.monotonic() - t1)
                if ok:
                    outages.append(outage)
                else:
                    stalls += 1
                print(f"{topology}: kill {len(outages) + stalls} of {nn.name}: "
                      + (f"outage {outage:.2f} s" if ok else f"no progress in {stall_s:.0f} s")
                      + f", {load.written()} files fsynced", file=sys.stderr, flush=True)
        finally:
            seen = load.finish()
        files = load.fsynced()
        bad = [(name, data, m) for name, data in files
               if (m := _mismatch(mnt / "w" / name, data))]
        if bad:  # again once the mount's cached attributes have expired: stale, or lost?
            time.sleep(3)
        later = [m for name, data, _ in bad if (m := _mismatch(mnt / "w" / name, data))]
        errors = [e for kind in seen.values() for r in kind for e in r["errors"]]
        keep = bool(bad or errors or stalls)
        return {
            "topology": topology, "writers": writers, "interval_s": interval,
            "restarts": len(outages) + stalls, "stalls": stalls,
            "outage_s": {"median": round(_pct(outages, 0.5), 2),
                         "p95": round(_pct(outages, 0.95), 2),
                         "max": round(max(outages, default=float("nan")), 2)},
            "namenode_restart_s_median": round(_pct(restart_s, 0.5), 2),
            # one file written and fsynced; one pass of listing and stat-ing the directory
            "longest_write_s": round(max(r["slowest"] for r in seen["writer"]), 2),
            "longest_listing_s": round(max(r["slowest"] for r in seen["reader"]), 2),
            "program_errors": errors, "files_checked": len(files),
            "mismatches": [m for _, _, m in bad],
            "mismatches_3s_later": later,
            "outages_s": [round(o, 2) for o in outages],
            "kept": str(work) if keep else None}
    finally:
        _umount(mnt)
        for nn in nodes:
            nn.stop()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=3.0, help="per topology")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between kills")
    ap.add_argument("--writers", type=int, default=3)
    ap.add_argument("--topologies", default=",".join(TOPOLOGIES))
    ap.add_argument("--pg-url", default=os.environ.get("METAFS_TEST_PG_URL"),
                    help="PostgreSQL server to use (its database is emptied!); default: "
                         "a throwaway server started with pgserver")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    topologies = args.topologies.split(",")
    unknown = set(topologies) - set(TOPOLOGIES)
    if unknown:
        ap.error(f"unknown topologies {sorted(unknown)}; known: {', '.join(TOPOLOGIES)}")
    results = []
    needs_pg = set(topologies) != {"sqlite"}
    with pg_server(args.pg_url) if needs_pg else contextlib.nullcontext("") as url:
        for t in topologies:
            print(f"{t}: {args.minutes} min, a kill every {args.interval} s ...",
                  file=sys.stderr, flush=True)
            results.append(soak(t, args.minutes, args.interval, args.writers, url))
    print(f"{'topology':<11} {'restarts':>8} {'outage s median':>15} {'p95':>6} {'max':>6} "
          f"{'errors':>6} {'files checked':>13} {'mismatches':>10}")
    for r in results:
        o = r["outage_s"]
        print(f"{r['topology']:<11} {r['restarts']:>8} {o['median']:>15.2f} {o['p95']:>6.2f} "
              f"{o['max']:>6.2f} {len(r['program_errors']):>6} {r['files_checked']:>13} "
              f"{len(r['mismatches']):>10}")
    emit_json(results, args.json)


if __name__ == "__main__":
    main()
