"""File operations through the metafs FUSE mount, next to JuiceFS and the local disk,
measured in the same run.

    python benchmarks/fuse_ops.py [--files 10000] [--big-mib 512] [--json out.json]
    python benchmarks/fuse_ops.py --team [--pg-url URL] ...

``--team`` measures the team topology instead: ``metafs serve --db postgresql://...``
with a ``metafs mount --namenode`` of it, against JuiceFS with its metadata in another
database of the same PostgreSQL server (both with blocks in a local directory).

Per-file operations (create, stat, readdir, 4 KiB write and read, rename, directory
rename, unlink, rmdir) run over N files in a two-level tree (100 files per directory);
the big-file test writes and reads one file sequentially in 1 MiB pieces, then makes
``--rand-reads`` random 4 KiB preads in it after dropping the page cache (a map-style data
loader reading samples out of a large shard; the same offsets on every peer). Each figure
is operations (or MiB) per second; the table shows metafs / JuiceFS and metafs / local.
With ``--rounds N`` the peers run alternately N times and each keeps its best figure per
phase (the machine may be shared). ``--only`` limits the run to some phases (``big``:
big_write, big_read and randread). Targets: >= 1.0x JuiceFS on every metadata operation,
on 4 KiB files and on random reads, >= 0.8x on the large file.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit_json, pg_server  # noqa: E402
from _peers import (juicefs_binary, juicefs_mount, juicefs_pg_mount, local_dir,  # noqa: E402
                    metafs_mount, metafs_team_mount)

PER_DIR = 100
RAND_SEED = 16  # the same random offsets on every peer
# one machine: at least JuiceFS's figure on every phase, twice its creates
TARGETS = {"create": 2.0}
# the team topology (metafs adds a namenode hop and still has to win)
TEAM_TARGETS = {"create": 2.0, "write_4k": 2.0, "rename": 2.0, "unlink": 2.0}


def _drop_caches() -> None:
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


def _timed(n: int, fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    return n / dt if dt > 0 else float("inf")


def _small_files(out: dict[str, float], dirs: list[Path], paths: list[Path],
                 payload: bytes) -> None:
    files, ndirs = len(paths), len(dirs)

    def mkdirs() -> None:
        for d in dirs:
            d.mkdir()

    out["mkdir"] = _timed(ndirs, mkdirs)

    def create() -> None:
        for p in paths:
            os.close(os.open(p, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644))

    out["create"] = _timed(files, create)

    def stat() -> None:
        for p in paths:
            os.stat(p)

    out["stat"] = _timed(files, stat)

    def readdir() -> None:
        for d in dirs:
            with os.scandir(d) as it:
                for _ in it:
                    pass

    out["readdir_entries"] = _timed(files, readdir)

    def write4k() -> None:
        for p in paths:
            fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
            os.write(fd, payload)
            os.close(fd)

    out["write_4k"] = _timed(files, write4k)
    _drop_caches()  # reads come from the file system, not from the page cache of the writes

    def read4k() -> None:
        for p in paths:
            fd = os.open(p, os.O_RDONLY)
            os.read(fd, 8192)
            os.close(fd)

    out["read_4k"] = _timed(files, read4k)

    renamed = [p.with_name("r" + p.name[1:]) for p in paths]

    def rename() -> None:
        for a, b in zip(paths, renamed):
            os.rename(a, b)

    out["rename"] = _timed(files, rename)

    moved = [d.with_name("m" + d.name[1:]) for d in dirs]

    def dir_rename() -> None:
        for a, b in zip(dirs, moved):
            os.rename(a, b)

    out["dir_rename"] = _timed(ndirs, dir_rename)
    final = [moved[i // PER_DIR] / renamed[i].name for i in range(files)]

    def unlink() -> None:
        for p in final:
            os.unlink(p)

    out["unlink"] = _timed(files, unlink)

    def rmdir() -> None:
        for d in moved:
            os.rmdir(d)

    out["rmdir"] = _timed(ndirs, rmdir)


def run_suite(root: Path, files: int, big_mib: int, rand_reads: int = 1000) -> dict[str, float]:
    """Operations per second (MiB/s for the big file) under ``root``; ``files=0`` skips
    the per-file phases, ``big_mib=0`` the big-file ones."""
    base = root / "bench"
    base.mkdir()
    ndirs = max(1, (files + PER_DIR - 1) // PER_DIR)
    dirs = [base / f"d{i:04d}" for i in range(ndirs)]
    paths = [dirs[i // PER_DIR] / f"f{i:06d}" for i in range(files)]
    payload = os.urandom(4096)
    out: dict[str, float] = {}
    if files:
        _small_files(out, dirs, paths, payload)

    if big_mib:
        big = base / "big.bin"
        chunk = os.urandom(1 << 20)

        def big_write() -> None:
            with open(big, "wb", buffering=0) as f:
                for _ in range(big_mib):
                    f.write(chunk)
                os.fsync(f.fileno())

        out["big_write_mib_s"] = _timed(big_mib, big_write)
        _drop_caches()

        def big_read() -> None:
            with open(big, "rb", buffering=0) as f:
                while f.read(1 << 20):
                    pass

        out["big_read_mib_s"] = _timed(big_mib, big_read)
        if rand_reads:
            rng = random.Random(RAND_SEED)
            offsets = [rng.randrange(big_mib * (1 << 20) // 4096) * 4096
                       for _ in range(rand_reads)]
            _drop_caches()

            def rand_read() -> None:
                fd = os.open(big, os.O_RDONLY)
                try:
                    for off in offsets:
                        os.pread(fd, 4096, off)
                finally:
                    os.close(fd)

            out["randread"] = _timed(rand_reads, rand_read)
        big.unlink()
    base.rmdir()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--big-mib", type=int, default=512)
    ap.add_argument("--workdir", help="where to put mounts and data (default: a temp dir)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--no-juicefs", action="store_true")
    ap.add_argument("--metafs-args", default="", help="extra `metafs mount` flags")
    ap.add_argument("--team", action="store_true",
                    help="metafs mount -> metafs serve -> PostgreSQL, against JuiceFS on "
                         "the same PostgreSQL server")
    ap.add_argument("--pg-url", default=os.environ.get("METAFS_TEST_PG_URL"),
                    help="with --team: the PostgreSQL server (databases metafs and jfs "
                         "are dropped and made again); default: one started with pgserver")
    ap.add_argument("--rand-reads", type=int, default=1000,
                    help="random 4 KiB reads in the big file (0: none)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="alternating rounds; each peer keeps its best figure per phase")
    ap.add_argument("--only", choices=["all", "small", "big"], default="all",
                    help="run only the per-file phases or only the big-file ones")
    args = ap.parse_args(argv)
    files = 0 if args.only == "big" else args.files
    big_mib = 0 if args.only == "small" else args.big_mib

    work = Path(args.workdir or tempfile.mkdtemp(prefix="metafs-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, float]] = {}
    with contextlib.ExitStack() as stack:
        extra = args.metafs_args.split()
        if args.team:
            url = stack.enter_context(pg_server(args.pg_url))
            peers: list[tuple[str, Path]] = [
                ("metafs", stack.enter_context(metafs_team_mount(work, url, extra)))]
            if not args.no_juicefs and juicefs_binary():
                peers.append(("juicefs", stack.enter_context(juicefs_pg_mount(work, url))))
        else:
            peers = [("metafs", stack.enter_context(metafs_mount(work, extra)))]
            if not args.no_juicefs and juicefs_binary():
                peers.append(("juicefs", stack.enter_context(juicefs_mount(work))))
        peers.append(("local", stack.enter_context(local_dir(work))))
        for rnd in range(max(1, args.rounds)):
            for name, root in peers:
                print(f"round {rnd + 1}: running on {name} ({root}) ...", file=sys.stderr,
                      flush=True)
                got = run_suite(root, files, big_mib, args.rand_reads)
                best = results.setdefault(name, {})
                for op, v in got.items():
                    best[op] = max(best.get(op, 0.0), v)

    ops = list(results["metafs"])
    ratios = {}
    rows = []
    header = f"{'operation':<18}{'metafs':>12}{'juicefs':>12}{'local':>12}{'vs juicefs':>12}" \
             f"{'vs local':>10}{'target':>8}"
    for op in ops:
        m = results["metafs"][op]
        j = results.get("juicefs", {}).get(op)
        loc = results["local"][op]
        rj = m / j if j else None
        target = (TEAM_TARGETS if args.team else TARGETS).get(op, 1.0)
        ratios[op] = {"vs_juicefs": rj, "vs_local": m / loc if loc else None,
                      "target": target, "met": None if rj is None else rj >= target}
        rows.append(f"{op:<18}{m:>12.0f}{(j or 0):>12.0f}{loc:>12.0f}"
                    f"{(f'{rj:.2f}x' if rj else '-'):>12}{m / loc:>9.2f}x"
                    f"{('ok' if rj and rj >= target else 'MISS') if rj else '-':>8}")
    print(header)
    print("\n".join(rows))
    doc = {"files": files, "big_mib": big_mib, "rand_reads": args.rand_reads,
           "rounds": args.rounds, "team": args.team, "loadavg": os.getloadavg(),
           "results": results,
           "ratios": ratios, "units": "ops/s; MiB/s for big_*"}
    emit_json(doc, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
