"""fcntl and flock locks of a mount, held cluster-wide by the namenode.

libfuse hands every POSIX lock request (fcntl F_GETLK/F_SETLK/F_SETLKW, OFD locks too)
and every flock to the mount with the kernel's lock owner (the process's file table for
classic POSIX locks, the open file description for OFD and flock locks). The mount sends
them to the namenode's Lock call in its own session, so locks taken through two mounts (two
machines) of one namenode exclude each other as they would on one machine.

* **Blocking waits** (F_SETLKW, flock without LOCK_NB) retry the non-blocking call with
  backoff (5 ms, doubling to 200 ms) until it is granted. Each waiter occupies one FUSE
  worker thread: at most ``fuse_max_threads - 4`` wait at once (further waits fail with
  ENOLCK), so some threads always remain to serve the unlock. A signal to the waiting
  process (including SIGKILL) interrupts the wait (EINTR). A single-threaded mount cannot
  serve anything while it waits: a wait for a lock held through the same mount would never
  end, so it fails with EDEADLK.
* **Cheap closes.** libfuse unlocks the closing process's POSIX locks at every flush
  (close), when a lock callback exists. The mount remembers, per inode, the owners it took
  locks for (and through which open files); an unlock for an owner that holds nothing
  here is answered without a namenode call.
* **Session loss.** An open file through which a lock is granted holds a namenode
  handle and is fenced by the session (``RawFile.fence``) until it holds no lock: when
  the session is lost (and the lock with it), its calls fail with EIO and what it wrote
  under the lock is dropped instead of being committed in the new session over the next
  holder's writes (a commit already sent is refused by the namenode: its handle went
  with the session).
* **Release.** When the last descriptor of an open file goes (release, also when the
  kernel closes the descriptors of a killed process), the locks of owners that used only
  that open file (its flock and OFD locks) are dropped. Drops that cannot reach the
  namenode are retried in the background; at unmount every lock of the session is
  dropped; a mount that dies loses its locks when its session's lease runs out.
* **Coherence.** A lock is a synchronization point, as on NFS: before a lock changes,
  the mount commits the file's buffered writes (so the next holder sees them); when a lock
  is granted, the mount first applies every change other clients committed before the
  grant (the reply names the changelog position; changes the mount's changelog follower
  has not applied yet are read at once), so names removed or created elsewhere are
  current, and it compares the file's data version with what its caches hold, dropping
  the kernel's pages and attributes and its own read buffers of the file when another
  client changed it. This is what lets a database such as SQLite (rollback-journal mode:
  the lock decides, and the journal's existence must be current) be shared by processes
  on several mounts.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time
from typing import Any, Callable

from ..proto import metafs_pb2 as pb
from .handles import FuseError

log = logging.getLogger("metafs.fuse")

OFFSET_MAX = (1 << 63) - 1
LOCK_SH, LOCK_EX, LOCK_NB, LOCK_UN = fcntl.LOCK_SH, fcntl.LOCK_EX, fcntl.LOCK_NB, fcntl.LOCK_UN
F_GETLK, F_SETLK, F_SETLKW = fcntl.F_GETLK, fcntl.F_SETLK, fcntl.F_SETLKW
F_RDLCK, F_WRLCK, F_UNLCK = fcntl.F_RDLCK, fcntl.F_WRLCK, fcntl.F_UNLCK
_TYPE_OF = {F_RDLCK: pb.LOCK_READ, F_WRLCK: pb.LOCK_WRITE, F_UNLCK: pb.LOCK_UNLOCK}
_F_TYPE = {pb.LOCK_READ: F_RDLCK, pb.LOCK_WRITE: F_WRLCK}
BACKOFF_FIRST, BACKOFF_MAX = 0.005, 0.2
_RETRY_EVERY = 1.0  # seconds between attempts of drops that failed


class MountLocks:
    """The lock and flock callbacks of one mount (``ops`` is its MetafsOperations)."""

    def __init__(self, ops: Any, settings: Any,
                 interrupted: Callable[[], bool] = lambda: False) -> None:
        self.ops = ops
        self.interrupted = interrupted  # the current FUSE request was interrupted
        self.threaded = bool(settings.fuse_threads)
        self._wait_slots = threading.BoundedSemaphore(
            max(1, int(settings.fuse_max_threads) - 4)) if self.threaded else None
        self._mu = threading.Lock()
        # ino -> owner -> fhs through which this mount may hold that owner's locks
        self._posix: dict[int, dict[int, set[int]]] = {}
        self._flock: dict[int, dict[int, set[int]]] = {}
        self._fh_ino: dict[int, int] = {}  # open files that took locks -> inode
        self._used = False
        self._retry: set[tuple[int, int, int]] = set()  # (ino, owner, kind) drops to redo
        self._retrier: threading.Thread | None = None
        self._closed = threading.Event()
        ops.client.on_session_lost(self.session_lost)
        # Changelog position up to which this mount's caches reflect other clients' changes
        # (what this object read, or what the mount's follower applied). Only a mount of
        # a remote namenode has other clients to catch up with; a single-threaded mount
        # cannot invalidate the kernel's caches from inside a request (a reader waiting
        # for that one thread may hold the pages), so it leaves it to its follower.
        self._sync = bool(settings.namenode) and self.threaded
        self._applied = 0
        self._applied_mu = threading.Lock()
        if self._sync:
            try:
                self._applied = int(ops.nodes.changelog_head(ops.own_caller()))
            except Exception:  # the namenode is away: start at the first grant's position
                self._applied = -1
            # what the follower applies counts too
            ops.follower.on_applied(lambda records: self._advance(records[-1].seq))

    # ------------------------------------------------------------------ callbacks
    # (operations-level signatures: ``fi`` is the fuse_file_info, ``flp`` a pointer to
    # struct flock; the binding calls them with the low-level arguments)
    def lock(self, path: str | None, fi: Any, cmd: int, flp: Any) -> int:
        fl = flp.contents if hasattr(flp, "contents") else flp
        return self.posix(fi.fh, fi.lock_owner, cmd, fl)

    def flock(self, path: str | None, fi: Any, op: int) -> int:
        return self.bsd(fi.fh, fi.lock_owner, op)

    # ------------------------------------------------------------------ POSIX locks
    def posix(self, fh: int, owner: int, cmd: int, fl: Any) -> int:
        typ = _TYPE_OF.get(fl.l_type)
        if typ is None:
            raise FuseError(errno.EINVAL)
        start, length = int(fl.l_start), int(fl.l_len)
        if start < 0 or length < 0:  # the kernel sends absolute, normalized ranges
            raise FuseError(errno.EINVAL)
        end = OFFSET_MAX if length == 0 else min(start + length - 1, OFFSET_MAX)
        if cmd == F_GETLK:
            if typ == pb.LOCK_UNLOCK:
                raise FuseError(errno.EINVAL)
            h = self._open_file(fh)
            r = self._call(self._request(h, owner, pb.LOCK_POSIX, typ, start, end, 0,
                                         test_only=True))
            if r.granted:
                fl.l_type = F_UNLCK
            else:
                fl.l_type = _F_TYPE[r.type]
                fl.l_whence = os.SEEK_SET
                fl.l_start = r.start
                fl.l_len = 0 if r.end >= OFFSET_MAX else r.end - r.start + 1
                fl.l_pid = r.pid
            return 0
        if cmd not in (F_SETLK, F_SETLKW):
            raise FuseError(errno.EINVAL)
        if typ == pb.LOCK_UNLOCK:
            return self._unlock(fh, owner, pb.LOCK_POSIX, start, end)
        h = self._open_file(fh)
        acc = h.flags & os.O_ACCMODE
        if typ == pb.LOCK_READ and acc not in (os.O_RDONLY, os.O_RDWR) or \
                typ == pb.LOCK_WRITE and acc not in (os.O_WRONLY, os.O_RDWR):
            raise FuseError(errno.EBADF)
        pid = int(fl.l_pid) or self._pid()
        self._take(h, owner, pb.LOCK_POSIX, typ, start, end, pid, wait=cmd == F_SETLKW)
        return 0

    # ------------------------------------------------------------------ flock
    def bsd(self, fh: int, owner: int, op: int) -> int:
        if op & LOCK_UN:
            return self._unlock(fh, owner, pb.LOCK_FLOCK, 0, OFFSET_MAX)
        if op & LOCK_EX:
            typ = pb.LOCK_WRITE
        elif op & LOCK_SH:
            typ = pb.LOCK_READ
        else:
            raise FuseError(errno.EINVAL)
        h = self._open_file(fh)
        self._take(h, owner, pb.LOCK_FLOCK, typ, 0, OFFSET_MAX, self._pid(),
                   wait=not op & LOCK_NB)
        return 0

    # ------------------------------------------------------------------ set and unlock
    def _take(self, h: Any, owner: int, kind: int, typ: int, start: int, end: int, pid: int,
              *, wait: bool) -> None:
        self._commit_writes(h.ino)
        if not h.raw.handle and h.flags & os.O_ACCMODE != os.O_RDONLY:
            # a namenode handle: a commit already on its way when the session (and the
            # lock) is lost is then refused by the namenode too, the handle gone with it
            self.ops._pin_handles(h.ino)
        req = self._request(h, owner, kind, typ, start, end, pid, report_conflict=True)
        # record first: a close racing with the grant must find the owner (the namenode
        # is asked once too often at worst)
        self._remember(h.ino, owner, kind, h.fh)
        r = self._call(req)
        if not r.granted:
            if not wait:
                raise FuseError(errno.EAGAIN)
            r = self._wait(req, r)
        with self._mu:  # what it writes from now on is not committed once the lock is lost
            h.raw.fence()
        self._catch_up(r.head)
        self._fresh(h.ino, r.attr)

    def _wait(self, req: dict[str, Any], r: pb.LockReply) -> pb.LockReply:
        slots = self._wait_slots
        if slots is None:
            if r.same_session:
                raise FuseError(errno.EDEADLK, "the lock is held through this mount, which "
                                "serves one request at a time")
        elif not slots.acquire(blocking=False):
            raise FuseError(errno.ENOLCK, "too many lock waits in this mount")
        try:
            delay = BACKOFF_FIRST
            while True:
                deadline = time.monotonic() + delay
                while True:  # sleep in slices so that a signal ends the wait soon
                    if self.interrupted() or self._closed.is_set():
                        raise FuseError(errno.EINTR)
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    time.sleep(min(left, 0.05))
                r = self._call(req)
                if r.granted:
                    return r
                if slots is None and r.same_session:
                    raise FuseError(errno.EDEADLK)
                delay = min(delay * 2, BACKOFF_MAX)
        finally:
            if slots is not None:
                slots.release()

    def _unlock(self, fh: int, owner: int, kind: int, start: int, end: int) -> int:
        table = self._posix if kind == pb.LOCK_POSIX else self._flock
        with self._mu:
            ino = self._fh_ino.get(fh)
            if ino is None:
                h = self.ops.handles.get(fh)
                ino = h.ino if h is not None else None
            owners = table.get(ino) if ino is not None else None
            if not owners or owner not in owners:
                return 0  # nothing held here for this owner: no namenode call
        self._commit_writes(ino)
        whole = start == 0 and end == OFFSET_MAX
        try:
            self._call(dict(caller=self.ops.caller(), ino=ino, owner=owner, kind=kind,
                            type=pb.LOCK_UNLOCK, start=start, end=end))
        except OSError:
            if whole:  # (libfuse ignores errors of the unlock at close): try again later
                self._forget(ino, owner, kind)
                self._defer(ino, owner, kind)
            raise
        if whole:
            self._forget(ino, owner, kind)
        return 0

    def released(self, fh: int, lock_owner: int, flock_release: bool) -> None:
        """The last descriptor of open file ``fh`` is gone: drop the locks of owners that
        took locks only through it (its flock and OFD locks)."""
        drops: list[tuple[int, int, int]] = []
        with self._mu:
            ino = self._fh_ino.pop(fh, None)
            if ino is None:
                return
            for kind, table in ((pb.LOCK_POSIX, self._posix), (pb.LOCK_FLOCK, self._flock)):
                owners = table.get(ino)
                if not owners:
                    continue
                for owner, fhs in list(owners.items()):
                    if fh in fhs:
                        fhs.discard(fh)
                        if not fhs:
                            del owners[owner]
                            drops.append((ino, owner, kind))
                if flock_release and kind == pb.LOCK_FLOCK and lock_owner in owners:
                    del owners[lock_owner]
                    drops.append((ino, lock_owner, kind))
                if not owners:
                    table.pop(ino, None)
        for d in drops:
            self._drop(*d)

    def _drop(self, ino: int, owner: int, kind: int) -> None:
        try:
            self.ops.nodes.lock(ino, owner=owner, kind=kind, type=pb.LOCK_UNLOCK, start=0,
                                end=OFFSET_MAX, caller=self.ops.own_caller())
        except Exception as exc:  # the namenode is away: keep trying in the background
            log.info("lock release of inode %d deferred: %s", ino, exc)
            self._defer(ino, owner, kind)

    def _defer(self, ino: int, owner: int, kind: int) -> None:
        with self._mu:
            self._retry.add((ino, owner, kind))
            if self._retrier is None:
                self._retrier = threading.Thread(target=self._retry_drops,
                                                 name="metafs-lock-retry", daemon=True)
                self._retrier.start()

    def _retry_drops(self) -> None:
        while not self._closed.wait(_RETRY_EVERY):
            with self._mu:
                todo = [d for d in self._retry if d[1] not in self._posix.get(d[0], {})
                        and d[1] not in self._flock.get(d[0], {})]
                self._retry.clear()
            for d in todo:  # (an owner that took a new lock meanwhile keeps it)
                self._drop(*d)

    def session_lost(self) -> None:
        """The namenode lost the mount's session (its lease ran out while the namenode
        could not be reached) and released its locks; another process may have taken
        them since. They are not taken again behind their holders' backs: as NFS does
        with a lock it cannot recover, every open file through which one was held fails
        its reads and writes with EIO until it is closed, and what it buffered under the
        lock is never committed (its file was fenced by the session when the lock was
        granted, see ``RawFile.fence``)."""
        with self._mu:
            fhs = {fh for table in (self._posix, self._flock) for owners in table.values()
                   for held in owners.values() for fh in held}
            self._posix.clear()
            self._flock.clear()
            self._fh_ino.clear()
            self._retry.clear()
        for fh in fhs:
            h = self.ops.handles.get(fh)
            if h is not None:
                h.lock_lost = True
        if fhs:
            log.warning("locks held through %d open files were lost with the session; "
                        "their I/O fails with EIO until they are closed", len(fhs))

    def close(self) -> None:
        """At unmount: every lock this mount's session holds is released."""
        self._closed.set()
        if not self._used:
            return
        try:
            self.ops.nodes.lock(0, type=pb.LOCK_UNLOCK, caller=self.ops.own_caller())
        except Exception as exc:
            log.warning("could not release this mount's locks (they go when its session's "
                        "lease runs out): %s", exc)

    # ------------------------------------------------------------------ helpers
    def _open_file(self, fh: int) -> Any:
        h = self.ops.handles.get(fh)
        if h is None:
            raise FuseError(errno.EBADF)
        return h

    def _pid(self) -> int:
        from .binding import fuse_context

        return fuse_context()[2]

    def _request(self, h: Any, owner: int, kind: int, typ: int, start: int, end: int,
                 pid: int, **kw: Any) -> dict[str, Any]:
        """The arguments of one lock call (``Inodes.lock``) for open file ``h``."""
        return dict(caller=self.ops.caller(), ino=h.ino, owner=owner, kind=kind, type=typ,
                    start=start, end=end, pid=pid, handle=h.raw.current_handle(), **kw)

    def _call(self, req: dict[str, Any]) -> pb.LockReply:
        return self.ops.nodes.lock(**req)

    def _remember(self, ino: int, owner: int, kind: int, fh: int) -> None:
        table = self._posix if kind == pb.LOCK_POSIX else self._flock
        with self._mu:
            table.setdefault(ino, {}).setdefault(owner, set()).add(fh)
            self._fh_ino[fh] = ino
            self._used = True

    def _forget(self, ino: int, owner: int, kind: int) -> None:
        table = self._posix if kind == pb.LOCK_POSIX else self._flock
        with self._mu:
            owners = table.get(ino)
            if owners is not None:
                fhs = owners.pop(owner, set())
                if not owners:
                    table.pop(ino, None)
                # open files that hold no lock any more: a later loss of the session
                # takes nothing from them (their writes under the lock were committed)
                for fh in fhs - self._holding(ino):
                    h = self.ops.handles.get(fh)
                    if h is not None:
                        h.raw.unfence()

    def _holding(self, ino: int) -> set[int]:
        """Open files through which this mount holds locks on ``ino`` (caller holds _mu)."""
        return {fh for table in (self._posix, self._flock)
                for held in table.get(ino, {}).values() for fh in held}

    def _commit_writes(self, ino: int) -> None:
        """Buffered writes to ``ino`` reach the namenode before a lock changes hands."""
        if ino in self.ops.writeback.dirty:
            self.ops.writeback.flush_ino(ino)

    def _advance(self, seq: int) -> None:
        with self._applied_mu:
            if seq > self._applied:
                self._applied = seq

    def _catch_up(self, head: int) -> None:
        """Apply what other clients changed up to changelog position ``head`` (the
        grant's) that this mount has not applied yet."""
        if not self._sync or head <= self._applied:
            return
        if self._applied < 0:  # no position yet (see __init__): from now on
            self._advance(head)
            return
        ops = self.ops
        after = self._applied
        try:
            for _ in range(10):
                records = ops.nodes.changelog(after, 1000, 0, ops.own_caller())
                if not records:
                    break
                ops.follower.apply(records)
                after = records[-1].seq
                self._advance(after)
                if after >= head:
                    return
            else:  # far behind: drop every cached name and attribute instead
                ops.forget_all()
                self._advance(head)
        except Exception as exc:  # the lock is held; the follower catches up later
            log.info("changelog catch-up after a lock grant failed: %s", exc)

    def _fresh(self, ino: int, attr: pb.Attr) -> None:
        """A lock was granted: when the file's data changed elsewhere since this mount
        cached it, drop the kernel's pages and attributes and the mount's buffers of it,
        before the holder reads."""
        ops = self.ops
        if not attr.ino:
            return
        cache = ops.cache
        seen = cache.seen_version.get(ino)
        cache.set_attr(attr)
        if seen and all(v == attr.version for v in seen.values()):
            return
        ops.writeback.bump(ino)  # read-ahead buffers of open files
        if ino in ops.open_by_ino:
            # the data path of open files drops its cached size, layout and inline bytes
            ops.refresh_others(ino, attr)
        paths = {h.path for h in list(ops.open_by_ino.get(ino, ()))}
        p = cache.path_of.get(ino)
        if p:
            paths.add(p)
        paths.update(cache.links.get(ino, ()))
        if self.threaded:
            ops.kernel.now(paths)
        else:  # the only thread cannot wait for the kernel
            for path in paths:
                ops.kernel.later(path)
        cache.seen_version[ino] = {path: attr.version for path in paths}
