"""Folder sync and bulk copies between a local directory and metafs.

:func:`sync_tree` copies a local folder into metafs: new small files go in batches through
the client's bulk API (one transaction per batch of up to ``batch_files`` files), bigger
and changed files are streamed; with ``delete`` entries that are gone locally are removed.
A file is copied when metafs lacks it, its size differs, or the local copy was modified
after the metafs one.

:class:`Watcher` keeps a folder in sync afterwards with watchdog: creates, edits, renames
(done as renames in metafs, so a moved directory is one atomic rename) and deletes.
:func:`sync_and_watch` (``metafs sync --watch``) starts the watcher *before* the first full
copy, holding its events, and applies what was held once the copy is done: a change made
while the copy runs is not lost. Held events are applied by state, not replayed: each path
they name is made to match what the local folder holds now (copied, or removed when it is
gone), which is right whether the copy saw the change or not.

:func:`copy_in` / :func:`copy_out` are ``metafs cp``.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import queue
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

log = logging.getLogger("metafs.sync")

CHUNK = 4 << 20


@dataclass
class SyncStats:
    files_copied: int = 0
    bytes_copied: int = 0
    dirs_made: int = 0
    deleted: int = 0
    renamed: int = 0
    unchanged: int = 0
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


class Progress:
    """A rich progress bar over bytes (silent when ``enabled`` is false)."""

    def __init__(self, description: str, enabled: bool = True) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._task: Any = None
        self._description = description

    def __enter__(self) -> "Progress":
        if self.enabled:
            from rich.progress import (BarColumn, DownloadColumn, Progress as RichProgress,
                                       TextColumn, TimeRemainingColumn, TransferSpeedColumn)

            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(),
                                     DownloadColumn(), TransferSpeedColumn(),
                                     TimeRemainingColumn(), TextColumn("{task.fields[files]}"),
                                     transient=False)
            self._bar.__enter__()
            self._task = self._bar.add_task(self._description, total=None, files="")
        return self

    def total(self, nbytes: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, total=nbytes)

    def advance(self, nbytes: int, files: int | None = None) -> None:
        if self._bar is not None:
            kw: dict[str, Any] = {"advance": nbytes}
            if files is not None:
                kw["files"] = f"{files} files"
            self._bar.update(self._task, **kw)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def _join(remote: str, rel: str) -> str:
    rel = rel.replace(os.sep, "/")
    return posixpath.normpath(posixpath.join(remote, rel)) if rel not in ("", ".") else remote


def _remote_index(client: Any, remote: str) -> dict[str, os.stat_result]:
    """Relative path -> stat of everything under ``remote`` (empty when it is missing)."""
    out: dict[str, os.stat_result] = {}
    if not client.isdir(remote):
        return out
    stack = [("", remote)]
    while stack:
        rel, path = stack.pop()
        for e in client.scandir(path):
            r = posixpath.join(rel, e.name) if rel else e.name
            st = e.stat(follow_symlinks=False)
            out[r] = st
            if stat.S_ISDIR(st.st_mode):
                stack.append((r, posixpath.join(path, e.name)))
    return out


def _local_walk(local: Path) -> Iterator[tuple[str, os.stat_result]]:
    for root, dirs, files in os.walk(local):
        dirs.sort()
        relroot = os.path.relpath(root, local)
        for name in dirs + sorted(files):
            p = os.path.join(root, name)
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            rel = name if relroot == "." else os.path.join(relroot, name)
            yield rel.replace(os.sep, "/"), st


def upload_file(client: Any, src: str | os.PathLike[str], dst: str,
                progress: Progress | None = None) -> int:
    """Stream one local file into metafs (created or replaced); bytes copied."""
    n = 0
    with open(src, "rb") as fin, client.open(dst, "wb") as fout:
        while chunk := fin.read(CHUNK):
            fout.write(chunk)
            n += len(chunk)
            if progress:
                progress.advance(len(chunk))
    return n


def download_file(client: Any, src: str, dst: str | os.PathLike[str],
                  progress: Progress | None = None) -> int:
    n = 0
    tmp = Path(str(dst) + ".metafs-partial")
    with client.open(src, "rb") as fin, open(tmp, "wb") as fout:
        while chunk := fin.read(CHUNK):
            fout.write(chunk)
            n += len(chunk)
            if progress:
                progress.advance(len(chunk))
    os.replace(tmp, dst)
    return n


def sync_tree(client: Any, local: str | os.PathLike[str], remote: str, *,
              delete: bool = False, progress: bool = True, batch_files: int = 2000,
              batch_bytes: int = 32 << 20) -> SyncStats:
    """Make ``remote`` hold what ``local`` holds (see the module docstring)."""
    from ..client.client import BulkFile

    src = Path(local)
    if not src.is_dir():
        if not src.exists():
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(src))
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(src))
    remote = "/" + remote.strip("/") if remote.strip("/") else "/"
    client.makedirs(remote, exist_ok=True)
    have = _remote_index(client, remote)
    stats = SyncStats()
    local_entries = list(_local_walk(src))
    limit = client.inline_limit
    todo_small: list[tuple[str, os.stat_result]] = []
    todo_big: list[tuple[str, os.stat_result]] = []
    new_dirs: list[str] = []
    seen: set[str] = set()
    for rel, st in local_entries:
        seen.add(rel)
        r = have.get(rel)
        if stat.S_ISDIR(st.st_mode):
            if r is None:
                new_dirs.append(rel)
            elif not stat.S_ISDIR(r.st_mode):
                client.remove(_join(remote, rel))
                new_dirs.append(rel)
            continue
        if not stat.S_ISREG(st.st_mode):
            continue  # sockets, fifos, symlinks: not synced
        if r is not None and stat.S_ISREG(r.st_mode) and r.st_size == st.st_size \
                and r.st_mtime_ns >= st.st_mtime_ns:
            stats.unchanged += 1
            continue
        if r is not None and stat.S_ISDIR(r.st_mode):
            client.rmtree(_join(remote, rel))
            r = None
        if r is None and st.st_size <= limit:
            todo_small.append((rel, st))
        else:
            todo_big.append((rel, st))
    total = sum(st.st_size for _, st in todo_small + todo_big)
    with Progress(f"sync {src} -> {remote}", progress) as bar:
        bar.total(total)
        # directories (and new small files) in bulk transactions
        batch: list[BulkFile] = [BulkFile(path=d, is_dir=True, mode=0o755) for d in new_dirs]
        size = 0
        stats.dirs_made += len(new_dirs)

        def flush() -> None:
            nonlocal batch, size
            if batch:
                client.bulk_create(remote, batch, make_parents=True, exist_ok=True)
                files = [b for b in batch if not b.is_dir]
                stats.files_copied += len(files)
                stats.bytes_copied += size
                bar.advance(size, stats.files_copied)
            batch, size = [], 0

        for rel, st in todo_small:
            try:
                data = (src / rel).read_bytes()
            except FileNotFoundError:
                continue
            batch.append(BulkFile(path=rel, data=data, mode=stat.S_IMODE(st.st_mode)))
            size += len(data)
            if len(batch) >= batch_files or size >= batch_bytes:
                flush()
        flush()
        for rel, st in todo_big:
            dst = _join(remote, rel)
            client.makedirs(posixpath.dirname(dst), exist_ok=True)
            try:
                n = upload_file(client, src / rel, dst, bar)
            except FileNotFoundError:
                continue
            stats.files_copied += 1
            stats.bytes_copied += n
            bar.advance(0, stats.files_copied)
        if delete:
            gone = sorted((rel for rel in have if rel not in seen), key=len)
            removed: list[str] = []
            for rel in gone:
                if any(rel.startswith(p + "/") for p in removed):
                    continue
                path = _join(remote, rel)
                if stat.S_ISDIR(have[rel].st_mode):
                    client.rmtree(path)
                else:
                    client.remove(path)
                removed.append(rel)
                stats.deleted += 1
    return stats


# ---------------------------------------------------------------------- watch
class Watcher:
    """Follow a local folder with watchdog and apply each change to metafs, in order, from
    one worker thread. ``on_applied`` is called after each event (tests and progress)."""

    def __init__(self, client: Any, local: str | os.PathLike[str], remote: str,
                 on_applied: Callable[[str, str], None] | None = None) -> None:
        self.client = client
        self.local = Path(local).resolve()
        self.remote = "/" + remote.strip("/") if remote.strip("/") else "/"
        self.on_applied = on_applied
        self.stats = SyncStats()
        self._q: "queue.Queue[Any]" = queue.Queue()
        self._observer: Any = None
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()

    def _rel(self, path: str | bytes) -> str | None:
        p = Path(os.fsdecode(path)).resolve() if os.path.exists(path) else \
            Path(os.path.abspath(os.fsdecode(path)))
        try:
            rel = p.relative_to(self.local)
        except ValueError:
            try:
                rel = Path(os.path.abspath(os.fsdecode(path))).relative_to(self.local)
            except ValueError:
                return None
        s = rel.as_posix()
        if s == "." or s.endswith(".metafs-partial"):
            return None
        return s

    def start(self, *, hold: bool = False) -> "Watcher":
        """Start watching. With ``hold``, events are only queued until :meth:`release`
        (so a full copy can run meanwhile without losing the changes made during it)."""
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                watcher._q.put(event)

        self._observer = Observer()
        self._observer.schedule(Handler(), str(self.local), recursive=True)
        self._observer.start()
        if not hold:
            self._start_worker()
        return self

    def _start_worker(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._run, name="metafs-sync", daemon=True)
            self._worker.start()

    def release(self) -> int:
        """Apply the events held since :meth:`start` (``hold=True``) by state, then follow
        live. Returns the number of paths made to match the local folder."""
        held: list[Any] = []
        while True:
            try:
                ev = self._q.get_nowait()
            except queue.Empty:
                break
            if ev is not None:
                held.append(ev)
        done: set[str] = set()
        for ev in held:
            for path in (ev.src_path, getattr(ev, "dest_path", "") or ""):
                rel = self._rel(path) if path else None
                if rel is None or rel in done:
                    continue
                if ev.event_type == "modified" and ev.is_directory and path == ev.src_path:
                    continue  # its entries have events of their own
                done.add(rel)
                try:
                    self._reconcile(rel)
                except Exception as exc:  # keep going; report the failure
                    log.warning("sync of %s failed: %s", rel, exc)
                    self.stats.errors.append(f"{ev.event_type} {path}: {exc}")
                    continue
                if self.on_applied:
                    self.on_applied(ev.event_type, rel)
        self._start_worker()
        return len(done)

    def _reconcile(self, rel: str) -> None:
        """Make ``rel`` in metafs match the local folder as it is now (idempotent)."""
        src = self.local / rel
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            self._remove(rel)
            return
        if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
            self._upload(rel)

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=10)
        self._stop.set()
        self._q.put(None)
        if self._worker is not None:
            self._worker.join(timeout=30)

    def __enter__(self) -> "Watcher":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _run(self) -> None:
        while True:
            ev = self._q.get()
            if ev is None:
                return
            try:
                self._apply(ev)
            except Exception as exc:  # keep following; report the failure
                log.warning("sync of %s failed: %s", getattr(ev, "src_path", ev), exc)
                self.stats.errors.append(f"{ev.event_type} {ev.src_path}: {exc}")

    def _upload(self, rel: str) -> None:
        src = self.local / rel
        dst = _join(self.remote, rel)
        if src.is_dir():
            self.client.makedirs(dst, exist_ok=True)
            # a directory moved in from outside the watched tree: copy its contents
            sync_tree(self.client, src, dst, progress=False)
            return
        if not src.is_file():
            return
        self.client.makedirs(posixpath.dirname(dst), exist_ok=True)
        if self.client.isdir(dst):
            self.client.rmtree(dst)
        self.stats.bytes_copied += upload_file(self.client, src, dst)
        self.stats.files_copied += 1

    def _remove(self, rel: str) -> None:
        dst = _join(self.remote, rel)
        try:
            st = self.client.lstat(dst)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            self.client.rmtree(dst)
        else:
            self.client.remove(dst)
        self.stats.deleted += 1

    def _apply(self, ev: Any) -> None:
        kind = ev.event_type
        rel = self._rel(ev.src_path)
        if kind == "moved":
            dest = self._rel(ev.dest_path)
            if rel is None and dest is None:
                return
            if dest is None:
                assert rel is not None
                self._remove(rel)
            elif rel is None or not self.client.exists(_join(self.remote, rel)):
                self._upload(dest)
            else:
                dst = _join(self.remote, dest)
                self.client.makedirs(posixpath.dirname(dst), exist_ok=True)
                try:
                    self.client.rename(_join(self.remote, rel), dst)
                    self.stats.renamed += 1
                except OSError:  # e.g. replacing a non-empty directory: copy instead
                    self._remove(rel)
                    self._upload(dest)
            if self.on_applied:
                self.on_applied(kind, dest or rel or "")
            return
        if rel is None:
            return
        if kind == "deleted":
            self._remove(rel)
        elif kind == "created":
            if ev.is_directory:
                self.client.makedirs(_join(self.remote, rel), exist_ok=True)
                self.stats.dirs_made += 1
            else:
                self._upload(rel)
        elif kind in ("modified", "closed"):
            if not ev.is_directory:
                self._upload(rel)
        if self.on_applied:
            self.on_applied(kind, rel)


def sync_and_watch(client: Any, local: str | os.PathLike[str], remote: str, *,
                   delete: bool = False, progress: bool = True,
                   on_applied: Callable[[str, str], None] | None = None
                   ) -> tuple[SyncStats, Watcher]:
    """``metafs sync --watch``: start watching (events held), copy the whole folder, then
    apply the held events and go on following. Stop the returned watcher when done."""
    w = Watcher(client, local, remote, on_applied=on_applied).start(hold=True)
    try:
        st = sync_tree(client, local, remote, delete=delete, progress=progress)
        w.release()
    except BaseException:
        w.stop()
        raise
    return st, w


# ---------------------------------------------------------------------- cp
#: why copy_in/copy_out refuse a directory when not asked to copy recursively
_NOT_RECURSIVE = "is a directory (copy it with recursive=True)"


def copy_in(client: Any, sources: list[str], dst: str, *, recursive: bool = False,
            progress: bool = True) -> SyncStats:
    """Copy local files (and with ``recursive`` directories) into metafs directory or
    path ``dst``."""
    stats = SyncStats()
    dst_is_dir = client.isdir(dst) or len(sources) > 1 or dst.endswith("/")
    if dst_is_dir:
        client.makedirs(dst, exist_ok=True)
    for s in sources:
        p = Path(s)
        target = posixpath.join(dst, p.name) if dst_is_dir else dst
        if p.is_dir():
            if not recursive:
                raise IsADirectoryError(errno.EISDIR, _NOT_RECURSIVE, str(p))
            st = sync_tree(client, p, target, progress=progress)
            stats.files_copied += st.files_copied
            stats.bytes_copied += st.bytes_copied
            stats.dirs_made += st.dirs_made
        else:
            with Progress(f"cp {p}", progress) as bar:
                bar.total(p.stat().st_size)
                stats.bytes_copied += upload_file(client, p, target, bar)
            stats.files_copied += 1
    return stats


def copy_out(client: Any, sources: list[str], dst: str, *, recursive: bool = False,
             progress: bool = True) -> SyncStats:
    """Copy metafs files (and with ``recursive`` directories) to local path ``dst``."""
    stats = SyncStats()
    dpath = Path(dst)
    dst_is_dir = dpath.is_dir() or len(sources) > 1 or dst.endswith(os.sep)
    if dst_is_dir:
        dpath.mkdir(parents=True, exist_ok=True)
    plan: list[tuple[str, Path, int]] = []
    for s in sources:
        st = client.stat(s)
        base = dpath / posixpath.basename(s.rstrip("/")) if dst_is_dir else dpath
        if stat.S_ISDIR(st.st_mode):
            if not recursive:
                raise IsADirectoryError(errno.EISDIR, _NOT_RECURSIVE, s)
            base.mkdir(parents=True, exist_ok=True)
            for top, dirs, files in client.walk(s):
                rel = posixpath.relpath(top, s)
                for d in dirs:
                    (base / rel / d).mkdir(parents=True, exist_ok=True)
                    stats.dirs_made += 1
                for f in files:
                    src = posixpath.join(top, f)
                    fst = client.lstat(src)
                    if stat.S_ISREG(fst.st_mode):
                        plan.append((src, base / rel / f, fst.st_size))
        else:
            plan.append((s, base, st.st_size))
    with Progress(f"cp -> {dst}", progress) as bar:
        bar.total(sum(n for _, _, n in plan))
        for src, target, _ in plan:
            target.parent.mkdir(parents=True, exist_ok=True)
            stats.bytes_copied += download_file(client, src, target, bar)
            stats.files_copied += 1
            bar.advance(0, stats.files_copied)
    return stats
