"""Block data throughput: metafs (namenode in its own process, client over gRPC, blocks
straight to the store) next to JuiceFS (through its FUSE mount) and the local disk, on a
local directory and on a moto S3 endpoint, in the same run.

    python benchmarks/blocks.py [--quick] [--json out.json] [--no-juicefs]

Workloads: sequential write and read of one large file (1 GiB; 128 MiB with --quick),
random 4 KiB reads in it, and many 1 MiB files (write, then read); and small files that stay
inline in the namenode (10,000 of 4 KiB and of 60 KiB; 1,000 with --quick), written and read
one open/write/close at a time (as through JuiceFS's mount) and, for metafs, also written
with bulk_create in batches of 1,000; the small files are also run through a client with
its namenode in-process ("metafs-embedded": SQLite in the client's process, as JuiceFS
keeps its SQLite metadata in its mount's process). Prints a table and JSON with metafs/JuiceFS ratios,
and the namenode process's CPU seconds per GiB moved (it should not grow with the bytes: the
namenode is not in the data path).

Caching: JuiceFS runs with its defaults (a local block cache that keeps what it writes and
reads). metafs runs with its defaults too: ``block_cache_dir = "auto"``, which caches blocks
of an S3 store (written and read) in the user's cache directory -- here pointed at the run's
temporary directory -- and does not cache a local directory store.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

MiB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the workloads
class Target:
    """Opens files somewhere: a local directory (disk, JuiceFS mount) or a metafs client."""

    def __init__(self, opener: Callable[[str, str], Any], mkdir: Callable[[str], None]) -> None:
        self.open = opener
        self.mkdir = mkdir


def run_workloads(t: Target, big: int, nrand: int, nsmall: int,
                  cpu: Callable[[], float] | None = None) -> dict[str, float]:
    res: dict[str, float] = {}
    block = os.urandom(4 * MiB)
    cpu0 = cpu() if cpu else 0.0
    t0 = time.perf_counter()
    with t.open("/big", "wb") as f:
        for _ in range(big // len(block)):
            f.write(block)
    res["seq_write_MiBps"] = big / MiB / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    with t.open("/big", "rb") as f:
        while f.read(4 * MiB):
            pass
    res["seq_read_MiBps"] = big / MiB / (time.perf_counter() - t0)
    if cpu:
        res["namenode_cpu_s_big"] = cpu() - cpu0
    rnd = random.Random(7)
    t0 = time.perf_counter()
    with t.open("/big", "rb", ) as f:
        for _ in range(nrand):
            f.seek(rnd.randrange(0, big - 4096) & ~4095)
            f.read(4096)
    res["rand_4k_read_ops"] = nrand / (time.perf_counter() - t0)
    t.mkdir("/small")
    one = os.urandom(MiB)
    cpu1 = cpu() if cpu else 0.0
    t0 = time.perf_counter()
    for i in range(nsmall):
        with t.open(f"/small/{i}", "wb") as f:
            f.write(one)
    res["1MiB_write_files_s"] = nsmall / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(nsmall):
        with t.open(f"/small/{i}", "rb") as f:
            f.read()
    res["1MiB_read_files_s"] = nsmall / (time.perf_counter() - t0)
    if cpu:
        res["namenode_cpu_s_small"] = cpu() - cpu1
    return res


SMALL_SIZES = (4096, 60 * 1024)


def run_small(t: Target, n: int, bulk: Callable[[str, list[tuple[str, bytes]]], None] | None
              = None) -> dict[str, float]:
    """``n`` files of each small size written and read one at a time (and, with ``bulk``,
    written in batches of 1,000)."""
    res: dict[str, float] = {}
    for size in SMALL_SIZES:
        tag = f"{size // 1024}KiB"
        d = f"/small{tag}"
        t.mkdir(d)
        data = os.urandom(size)
        t0 = time.perf_counter()
        for i in range(n):
            with t.open(f"{d}/{i}", "wb") as f:
                f.write(data)
        res[f"{tag}_write_files_s"] = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in range(n):
            with t.open(f"{d}/{i}", "rb") as f:
                f.read()
        res[f"{tag}_read_files_s"] = n / (time.perf_counter() - t0)
        if bulk is not None:
            t0 = time.perf_counter()
            for b in range(0, n, 1000):
                bulk(f"{d}b", [(str(i), data) for i in range(b, min(n, b + 1000))])
            res[f"{tag}_bulk_write_files_s"] = n / (time.perf_counter() - t0)
    return res


def dir_target(root: Path) -> Target:
    def opener(p: str, mode: str) -> Any:
        return open(root / p.lstrip("/"), mode, buffering=4 * MiB)

    return Target(opener, lambda p: (root / p.lstrip("/")).mkdir(exist_ok=True))


# ---------------------------------------------------------------- metafs
NAMENODE = """
import sys, time
from metafs.assembly import build_namenode, serve_grpc
from metafs.config import load
s = load(overrides={"data_dir": sys.argv[1], "blocks_url": sys.argv[2] or None,
                    "s3_endpoint": sys.argv[3] or None, "gc_interval": 0})
nn = build_namenode(s)
srv = serve_grpc(nn, "127.0.0.1:0")
print(srv.address, flush=True)
while True:
    time.sleep(3600)
"""


def metafs_run(work: Path, blocks_url: str, endpoint: str, big: int, nrand: int,
               nsmall: int, ntiny: int = 0) -> dict[str, float]:
    import psutil

    from metafs.client import Client
    from metafs.config import load

    data = work / "metafs-data"
    proc = subprocess.Popen([sys.executable, "-c", NAMENODE, str(data), blocks_url, endpoint],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        addr = proc.stdout.readline().strip()
        ps = psutil.Process(proc.pid)

        def cpu() -> float:
            t = ps.cpu_times()
            return t.user + t.system

        s = load(overrides={"namenode": addr, "data_dir": str(data),
                            "s3_endpoint": endpoint or None})
        c = Client(settings=s)
        t = Target(lambda p, m: c.open(p, m), lambda p: c.mkdir(p))
        res = run_workloads(t, big, nrand, nsmall, cpu)
        gib_big = 2 * big / (1 << 30)            # written + read
        gib_small = 2 * nsmall * MiB / (1 << 30)
        res["namenode_cpu_s_per_GiB_big"] = res["namenode_cpu_s_big"] / gib_big
        res["namenode_cpu_s_per_GiB_small"] = res["namenode_cpu_s_small"] / gib_small
        if ntiny:
            from metafs.client.client import BulkFile

            res.update(run_small(t, ntiny, lambda d, fs: c.bulk_create(
                d, [BulkFile(path=p, data=b) for p, b in fs])))
        c.close()
        return res
    finally:
        proc.kill()
        proc.wait()


def metafs_embedded_small(work: Path, ntiny: int) -> dict[str, float]:
    """Small files through a client with its namenode in-process (SQLite file, local
    blocks): the set-up that matches JuiceFS's here (its metadata engine, SQLite, runs
    inside its mount process)."""
    from metafs.client import Client
    from metafs.client.client import BulkFile
    from metafs.config import load

    s = load(overrides={"data_dir": str(work / "metafs-embedded")}, environ={})
    with Client(settings=s) as c:
        t = Target(lambda p, m: c.open(p, m), lambda p: c.mkdir(p))
        return run_small(t, ntiny, lambda d, fs: c.bulk_create(
            d, [BulkFile(path=p, data=b) for p, b in fs]))


# ---------------------------------------------------------------- JuiceFS
def juicefs_run(work: Path, storage: str, bucket: str, big: int, nrand: int, nsmall: int,
                env: dict[str, str], ntiny: int = 0) -> dict[str, float] | None:
    jfs = shutil.which("juicefs")
    if jfs is None:
        return None
    meta = f"sqlite3://{work / 'jfs.db'}"
    mnt = work / "jfs-mnt"
    mnt.mkdir()
    fmt = [jfs, "format", "--storage", storage, "--bucket", bucket, "--trash-days", "0"]
    if storage == "s3":
        fmt += ["--access-key", env["AWS_ACCESS_KEY_ID"], "--secret-key",
                env["AWS_SECRET_ACCESS_KEY"]]
    subprocess.run(fmt + [meta, "bench"], check=True, capture_output=True)
    subprocess.run([jfs, "mount", "-d", meta, str(mnt)], check=True, capture_output=True)
    try:
        res = run_workloads(dir_target(mnt), big, nrand, nsmall)
        if ntiny:
            res.update(run_small(dir_target(mnt), ntiny))
        return res
    finally:
        subprocess.run([jfs, "umount", str(mnt)], capture_output=True)


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes")
    ap.add_argument("--json", help="also write the JSON here")
    ap.add_argument("--no-juicefs", action="store_true")
    ap.add_argument("--stores", default="local,s3")
    ap.add_argument("--small-files", type=int, default=None,
                    help="files per small size (default 10000; 1000 with --quick; 0: skip)")
    a = ap.parse_args(argv)
    big = (128 if a.quick else 1024) * MiB
    nrand = 300 if a.quick else 2000
    nsmall = 50 if a.quick else 300
    ntiny = a.small_files if a.small_files is not None else (1000 if a.quick else 10000)
    results: dict[str, dict[str, Any]] = {}
    base = Path(tempfile.mkdtemp(prefix="mfsbench"))
    # metafs's default block cache ("auto") goes to the user's cache dir: keep it in the run
    os.environ["XDG_CACHE_HOME"] = str(base / "cache-home")
    moto = None
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        work = base / "disk"
        work.mkdir()
        results["disk"] = {"local": run_workloads(dir_target(work), big, nrand, nsmall)}
        if ntiny:
            results["disk"]["local"].update(run_small(dir_target(work), ntiny))
        for store in a.stores.split(","):
            if store == "local":
                w = base / "m-local"
                w.mkdir()
                results.setdefault("metafs", {})["local"] = metafs_run(
                    w, (w / "blocks").as_uri(), "", big, nrand, nsmall, ntiny)
                if ntiny:
                    results["metafs-embedded"] = {"local": metafs_embedded_small(w, ntiny)}
                if not a.no_juicefs:
                    w = base / "j-local"
                    w.mkdir()
                    r = juicefs_run(w, "file", str(w / "bucket") + "/", big, nrand, nsmall, env,
                                    ntiny)
                    if r:
                        results.setdefault("juicefs", {})["local"] = r
            elif store == "s3":
                import boto3
                from moto.server import ThreadedMotoServer

                os.environ.update(env)
                port = free_port()
                moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
                moto.start()
                ep = f"http://127.0.0.1:{port}"
                s3 = boto3.client("s3", endpoint_url=ep)
                s3.create_bucket(Bucket="mfsbench")
                s3.create_bucket(Bucket="jfsbench")
                w = base / "m-s3"
                w.mkdir()
                results.setdefault("metafs", {})["s3"] = metafs_run(
                    w, "s3://mfsbench/fs", ep, big, nrand, nsmall)
                if not a.no_juicefs:
                    w = base / "j-s3"
                    w.mkdir()
                    r = juicefs_run(w, "s3", f"{ep}/jfsbench", big, nrand, nsmall, env)
                    if r:
                        results.setdefault("juicefs", {})["s3"] = r
    finally:
        if moto is not None:
            moto.stop()
        shutil.rmtree(base, ignore_errors=True)

    ratios: dict[str, dict[str, float]] = {}
    for sysname, tag in (("metafs", ""), ("metafs-embedded", "embedded-")):
        for store, m in results.get(sysname, {}).items():
            j = results.get("juicefs", {}).get(store)
            if j:
                ratios[tag + store] = {k: round(m[k] / j[k], 2) for k in j if j[k] and k in m}
    out = {"sizes": {"big_MiB": big // MiB, "random_reads": nrand, "1MiB_files": nsmall,
                     "inline_files_per_size": ntiny},
           "caching": "JuiceFS: its default local cache; metafs: block_cache_dir=auto "
                      "(S3 blocks cached locally, written and read; local store uncached)",
           "results": results, "metafs_over_juicefs": ratios}
    keys = ["seq_write_MiBps", "seq_read_MiBps", "rand_4k_read_ops", "1MiB_write_files_s",
            "1MiB_read_files_s"]
    print(f"{'system/store':<16}" + "".join(f"{k:>20}" for k in keys))
    for sysname, per in results.items():
        for store, r in per.items():
            if keys[0] in r:
                print(f"{sysname + '/' + store:<16}" + "".join(f"{r[k]:>20.1f}" for k in keys))
    for store, r in ratios.items():
        if keys[0] in r:
            print(f"{'ratio/' + store:<16}" + "".join(f"{r.get(k, 0):>20.2f}" for k in keys))
    skeys = [f"{sz // 1024}KiB_{op}_files_s" for sz in SMALL_SIZES for op in ("write", "read")]
    if ntiny:
        print(f"\nsmall (inline) files, {ntiny} per size, files/s")
        print(f"{'system/store':<16}" + "".join(f"{k:>20}" for k in skeys)
              + "".join(f"{f'{sz // 1024}KiB_bulk_write':>20}" for sz in SMALL_SIZES))
        for sysname, per in results.items():
            for store, r in per.items():
                if skeys[0] in r:
                    print(f"{sysname + '/' + store:<16}"
                          + "".join(f"{r[k]:>20.1f}" for k in skeys)
                          + "".join(f"{r.get(f'{sz // 1024}KiB_bulk_write_files_s', 0):>20.1f}"
                                    for sz in SMALL_SIZES))
        for store, r in ratios.items():
            if skeys[0] in r:
                print(f"{'ratio/' + store:<16}" + "".join(f"{r.get(k, 0):>20.2f}" for k in skeys))
        for sysname, tag in (("metafs", ""), ("metafs-embedded", "embedded-")):
            for store, m in results.get(sysname, {}).items():
                j = results.get("juicefs", {}).get(store, {})
                for sz in SMALL_SIZES:
                    k = f"{sz // 1024}KiB_bulk_write_files_s"
                    jw = j.get(f"{sz // 1024}KiB_write_files_s")
                    if k in m and jw:
                        ratios[tag + store][f"{sz // 1024}KiB_bulk_write_vs_juicefs_write"] = \
                            round(m[k] / jw, 2)
    for store, r in results.get("metafs", {}).items():
        if "namenode_cpu_s_big" not in r:
            continue
        print(f"namenode CPU ({store}): {r['namenode_cpu_s_big']:.2f}s for "
              f"{2 * big // MiB} MiB in one file ({r['namenode_cpu_s_per_GiB_big']:.3f} s/GiB); "
              f"{r['namenode_cpu_s_small']:.2f}s for {2 * nsmall} MiB in 1 MiB files")
    print(json.dumps(out, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
