"""Backup and restore of the metadata database (see docs/operations.md).

- SQLite: SQLite's online backup API copies a consistent snapshot page by page while the
  namenode keeps serving; the backup is itself a SQLite database file.
- PostgreSQL: ``pg_dump --format=custom`` (one consistent snapshot of the database) and
  ``pg_restore --clean --if-exists`` to restore.

Block data is not in the backup: blocks are immutable and only ever deleted by garbage
collection, so keep ``gc_grace`` longer than the time between backups (or version the
bucket), and after a restore run ``metafs fsck --check-blocks``.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

ProgressFn = Callable[[int, int], None]


def _sqlite_path(url: str) -> Path | None:
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):].split("?", 1)[0])
    return None


def libpq_url(url: str) -> str:
    """``postgresql+psycopg://...`` -> ``postgresql://...`` (what pg_dump understands)."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {url}")
    return urlunsplit(("postgresql",) + tuple(parts[1:]))  # type: ignore[arg-type]


def _pg_tool(name: str) -> str:
    """pg_dump/pg_restore: the newest of the one on PATH, those of installed PostgreSQL
    versions and the one shipped with the pgserver package (a newer pg_dump reads older
    servers; an older one refuses newer servers)."""
    cands: list[Path] = []
    found = shutil.which(name)
    if found:
        cands.append(Path(found))
    cands += sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    try:
        import pgserver

        cands.append(Path(pgserver.__file__).parent / "pginstall" / "bin" / name)
    except ImportError:
        pass
    best: tuple[int, str] | None = None
    for c in cands:
        if not c.exists():
            continue
        try:
            out = subprocess.run([str(c), "--version"], capture_output=True, text=True,
                                 timeout=30).stdout
            major = int(out.split()[-1].split(".")[0])
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            continue
        if best is None or major > best[0]:
            best = (major, str(c))
    if best is None:
        raise FileNotFoundError(errno.ENOENT, "not found: install the PostgreSQL client tools",
                                name)
    return best[1]


def backup(db_url: str, out: str | os.PathLike[str], progress: ProgressFn | None = None
           ) -> Path:
    """Write a consistent backup of the metadata database at ``db_url`` to ``out``."""
    dest = Path(out)
    if dest.exists():
        raise FileExistsError(errno.EEXIST, "backups never overwrite a file", str(dest))
    src_path = _sqlite_path(db_url)
    if src_path is not None:
        if not src_path.exists():
            raise FileNotFoundError(errno.ENOENT, "no SQLite database", str(src_path))
        tmp = dest.with_name(dest.name + ".partial")
        src = sqlite3.connect(f"file:{src_path}?mode=ro", uri=True)
        dst = sqlite3.connect(tmp)
        try:
            with dst:
                src.backup(dst, pages=1024,
                           progress=(lambda _s, rem, tot: progress(tot - rem, tot))
                           if progress else None)
            dst.execute("PRAGMA journal_mode=DELETE")
            ok = dst.execute("PRAGMA integrity_check").fetchone()[0]
            if ok != "ok":
                raise RuntimeError(f"backup failed its integrity check: {ok}")
        finally:
            dst.close()
            src.close()
        os.replace(tmp, dest)
        return dest
    url = libpq_url(db_url)
    proc = subprocess.run([_pg_tool("pg_dump"), "--format=custom", "--no-owner", "--file",
                           str(dest), "--dbname", url], capture_output=True, text=True)
    if proc.returncode != 0:
        dest.unlink(missing_ok=True)
        raise RuntimeError(f"pg_dump failed: {proc.stderr.strip()}")
    return dest


def restore(backup_file: str | os.PathLike[str], db_url: str, *, force: bool = False) -> None:
    """Restore a backup made by :func:`backup` into the database at ``db_url``. Stop the
    namenodes first. A SQLite target that exists is replaced only with ``force``; a
    PostgreSQL target's metafs tables are dropped and recreated from the backup."""
    src = Path(backup_file)
    if not src.exists():
        raise FileNotFoundError(errno.ENOENT, "no backup", str(src))
    dest_path = _sqlite_path(db_url)
    if dest_path is not None:
        if dest_path.exists() and not force:
            raise FileExistsError(errno.EEXIST, "the database exists; pass --force to replace it",
                                  str(dest_path))
        dest_path.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("-wal", "-shm"):
            Path(str(dest_path) + suffix).unlink(missing_ok=True)
        src_db = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
        tmp = dest_path.with_name(dest_path.name + ".restoring")
        dst = sqlite3.connect(tmp)
        try:
            with dst:
                src_db.backup(dst)
        finally:
            dst.close()
            src_db.close()
        os.replace(tmp, dest_path)
        return
    url = libpq_url(db_url)
    proc = subprocess.run([_pg_tool("pg_restore"), "--clean", "--if-exists", "--no-owner",
                           "--single-transaction", "--dbname", url, str(src)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"pg_restore failed: {proc.stderr.strip()}")
