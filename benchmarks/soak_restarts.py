"""Soak: namenodes killed (SIGKILL) and restarted again and again under writers on a mount.

    python benchmarks/soak_restarts.py --minutes 3 [--db postgresql://...] [--writers 3]
        [--interval 10] [--json out.json]

Starts a ``metafs serve`` (SQLite in a scratch directory, or ``--db``), mounts it, runs
``--writers`` programs that write and fsync small files and one that lists the directory,
and kills and restarts the namenode every ``--interval`` seconds. For each restart it
reports the outage the programs saw: the seconds from the kill until the writers had
fsynced a file again (the longest a program waited), and at the end the errors that
reached the programs (the goal: none) and whether every fsynced file is intact.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from metafs.testing.faults import NamenodeProcess, Workload


def _mount(path: Path, address: str, log: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "metafs.cli", "mount", str(path), "--namenode",
                    address, "--log-file", str(log)], check=True, timeout=120)


def _umount(path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "metafs.cli", "umount", str(path)],
                         capture_output=True, timeout=60)
    if res.returncode != 0:
        subprocess.run(["fusermount3", "-uz", str(path)], capture_output=True)


def soak(minutes: float, interval: float, writers: int, db: str) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="mfsoak"))
    nn = NamenodeProcess(work, data_dir=None if db else work / "data", db_url=db,
                         blocks_url=(work / "blocks").as_uri() if db else "")
    mnt = work / "mnt"
    restarts: list[dict[str, float]] = []
    try:
        nn.start()
        _mount(mnt, nn.address, work / "mount.log")
        (mnt / "w").mkdir()
        load = Workload(mnt / "w", work, writers=writers)
        try:
            load.wait_for_progress(10)
            end = time.monotonic() + minutes * 60
            while time.monotonic() < end:
                time.sleep(interval)
                before = load.written()
                t0 = time.monotonic()
                nn.kill()
                nn.start()
                up = time.monotonic() - t0
                while load.written() <= before:   # the first fsync after the kill
                    time.sleep(0.01)
                restarts.append({"restart": len(restarts) + 1,
                                 "namenode_down_s": round(up, 2),
                                 "outage_s": round(time.monotonic() - t0, 2)})
        finally:
            seen = load.finish()
        bad = [name for name, data in load.fsynced()
               if (mnt / "w" / name).read_bytes() != data]
        errors = [e for kind in seen.values() for r in kind for e in r["errors"]]
        return {"restarts": restarts, "files_fsynced": load.written(),
                "program_errors": errors, "corrupt_or_missing": bad,
                "longest_wait_s": round(max(r["slowest"] for k in seen.values() for r in k), 2),
                "db": "postgresql" if db else "sqlite", "writers": writers}
    finally:
        _umount(mnt)
        nn.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--interval", type=float, default=10.0,
                    help="seconds between restarts")
    ap.add_argument("--writers", type=int, default=3)
    ap.add_argument("--db", default="", help="a PostgreSQL URL (default: SQLite)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    res = soak(args.minutes, args.interval, args.writers, args.db)
    print(f"{'restart':>7} {'namenode down s':>16} {'outage s':>9}")
    for r in res["restarts"]:
        print(f"{r['restart']:>7} {r['namenode_down_s']:>16.2f} {r['outage_s']:>9.2f}")
    print(f"files fsynced: {res['files_fsynced']}, longest wait of a program: "
          f"{res['longest_wait_s']} s, errors seen by programs: {len(res['program_errors'])}, "
          f"fsynced files corrupt or missing: {len(res['corrupt_or_missing'])}")
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
