"""What other clients change, made visible through a mount: the changelog follower, and
the kernel cache invalidations it (and the mount's own hard-link changes) calls for.

The follower reads the namenode's changelog after the position it started at and, for
every change another client made, drops what the mount caches about the inodes and names
it touched, refreshes this mount's open files of a file whose data changed, and asks the
kernel to drop its cached attributes and pages of those paths. Listeners (the lock table,
which catches up to a lock grant's position) learn what was applied.
"""

from __future__ import annotations

import logging
import posixpath
import queue
import threading
from typing import TYPE_CHECKING, Callable, Sequence

from ..config import Settings
from ..proto import metafs_pb2 as pb

if TYPE_CHECKING:
    from .ops import MetafsOperations

log = logging.getLogger("metafs.fuse")


def follows_changes(settings: Settings) -> bool:
    """Whether the mount follows the changelog (``fuse_follow_changes``)."""
    v = str(settings.fuse_follow_changes).strip().lower()
    if v in ("auto", ""):
        return True
    return v in ("1", "true", "yes", "on")


class KernelInvalidator:
    """Drops the kernel's cached attributes and pages of paths, outside the FUSE request
    that found them stale (a request cannot wait for the kernel to drop pages it holds).
    ``invalidate`` is set by the binding once the mount runs."""

    def __init__(self) -> None:
        self.invalidate: Callable[[str], None] | None = None
        self._q: "queue.SimpleQueue[str | None]" = queue.SimpleQueue()

    def start(self) -> None:
        threading.Thread(target=self._run, name="metafs-inval", daemon=True).start()

    def stop(self) -> None:
        self._q.put(None)

    def later(self, path: str) -> None:
        """Drop the kernel's caches of ``path`` soon (from the invalidation thread)."""
        if self.invalidate is not None:
            self._q.put(path)

    def now(self, paths: Sequence[str] | set[str]) -> None:
        """Drop the kernel's caches of ``paths`` (not from inside a FUSE request)."""
        inval = self.invalidate
        if inval is not None:
            for p in paths:
                try:
                    inval(p)
                except Exception:  # the kernel may not know the path: nothing cached
                    pass

    def _run(self) -> None:
        while True:
            p = self._q.get()
            if p is None:
                return
            self.now((p,))


class ChangeFollower:
    """Applies other clients' changes (from the changelog) to one mount's caches."""

    def __init__(self, ops: "MetafsOperations") -> None:
        self.ops = ops
        self._listeners: list[Callable[[Sequence[pb.ChangeRecord]], None]] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.refused = False  # the namenode refuses this mount the changelog: not following

    def on_applied(self, listener: Callable[[Sequence[pb.ChangeRecord]], None]) -> None:
        """Call ``listener(records)`` after the follower applied ``records``."""
        self._listeners.append(listener)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._follow, name="metafs-follow",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _follow(self) -> None:
        """Drop what this mount caches about inodes other clients change, so several
        mounts of one namenode see each other's changes."""
        ops = self.ops
        after = None
        own = ops.own_caller()
        wait = max(1, ops.settings.fuse_follow_poll_ms)
        # After a batch, changes are left to gather for ``delay`` before the next read, so
        # that under load one read (and one reply) covers many operations instead of the
        # namenode answering about one read per operation. The first change after a quiet
        # spell still comes at once (the long poll returns with it).
        delay = max(0, ops.settings.fuse_follow_delay_ms) / 1000
        # An embedded namenode's long poll would return at each of the mount's own
        # commits (its changelog wakes readers in the process): so its changelog is read
        # every ``wait`` ms instead, and what this mount wrote meanwhile is skipped at once.
        embedded = not ops.settings.namenode
        limit = 1000
        while not self._stop.is_set():
            try:
                if after is None:
                    after = ops.nodes.changelog_head(own)
                records = ops.nodes.changelog(after, limit, 0 if embedded else wait, own)
            except PermissionError as exc:
                # the changelog is for trusted service identities: a mount of a plain
                # user's identity relies on its attribute and entry timeouts instead
                log.warning("not following other clients' changes: the namenode refuses "
                            "this mount's identity the changelog (%s); what other clients "
                            "change shows once cached attributes and names time out "
                            "(--attr-timeout, --entry-timeout)", exc.strerror or exc)
                self.refused = True
                return
            except Exception:
                # the namenode is away: whatever changed meanwhile is unknown (and the
                # records of this mount's renames until now will not come)
                ops.forget_all()
                ops.cache.renames.clear()
                after = None
                self._stop.wait(1.0)
                continue
            if records:
                self.apply(records)
                for listener in self._listeners:
                    listener(records)
                after = records[-1].seq
            if len(records) < limit:  # (a full batch: more are waiting, read on)
                if embedded:
                    self._stop.wait(wait / 1000)
                elif records and delay:
                    self._stop.wait(delay)

    def apply(self, records: Sequence[pb.ChangeRecord]) -> None:
        """Apply changelog ``records`` (of those this mount's client made, only renames
        count: they bring back the attributes of the files renamed)."""
        ops = self.ops
        cache = ops.cache
        kernel: set[str] = set()
        for rec in records:
            if rec.client_id == ops.client_id:
                if rec.op == pb.OP_RENAME:  # (the moved inode's new ctime)
                    cache.rename_applied(rec.seq, rec.ino,
                                         rec.attr if rec.HasField("attr") else None)
                continue
            if rec.op in (pb.OP_ACCESS, pb.OP_RUN):
                continue
            for ino in (rec.parent, rec.old_parent):
                if ino:
                    cache.dir_changed(ino)
            for ino in (rec.ino, rec.target_ino, rec.parent, rec.old_parent):
                if ino:
                    cache.forget_ino(ino, xattrs=True)
                    p = cache.path_of.get(ino)
                    if p is not None:
                        kernel.add(p)
            if rec.op in (pb.OP_WRITE, pb.OP_SETATTR, pb.OP_FREE) and rec.ino:
                ops.writeback.bump(rec.ino)
                cache.seen_version.pop(rec.ino, None)
                if rec.ino in ops.open_by_ino:
                    ops.refresh_others(rec.ino, None)
            for parent, name in ((rec.parent, rec.name), (rec.old_parent, rec.old_name)):
                if parent and name:
                    pp = cache.path_of.get(parent)
                    if pp is not None:
                        path = posixpath.join(pp, name)
                        cache.forget_path(path, subtree=rec.op in (pb.OP_RENAME, pb.OP_RMDIR))
            if rec.op == pb.OP_RENAME:
                # paths remembered for inodes under a moved directory are now wrong
                cache.path_of = {k: v for k, v in cache.path_of.items() if k == ops.root_ino
                                 or k in (rec.parent, rec.old_parent)
                                 or (cache.names.get(v, (0,))[0] == k)}
        ops.kernel.now(kernel)
