"""The file system operations of a metafs mount, written against mfusepy's high-level API.

Paths from libfuse are turned into metafs inode numbers through a name table that the mount
keeps (:mod:`.cache`: filled by lookups, creates and directory listings, emptied by its own
changes and by changes other clients make, which :mod:`.follower` learns from the
namenode's changelog). Every call to the namenode carries the identity of the process that
made the FUSE request, so the namenode enforces permissions for every user of a shared
machine.

Everything goes through the client's public API: calls by inode (``client.inodes``) and,
for data, the client's files (:class:`metafs.client.blockfile.BlockFile`). Open files and
directories are served by :class:`.files.FileOperations`; this module holds the operations
on names, attributes and extended attributes.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import stat as stat_mod
import threading
import time
from collections import OrderedDict
from typing import Any, Callable

from ..client.client import Client
from ..client.inodes import RENAME_EXCHANGE, UTIME_NOW, UTIME_OMIT
from ..config import Settings
from ..errors import FsError
from ..posix import ROOT_INO, X, Cred, allowed, check_name
from ..proto import metafs_pb2 as pb
from .access import MountAccess
from .cache import (FOLLOWED_TTL, INLINE_DATA_BYTES, NOCAP_TTL, InlineData, MountCache,
                    created_at, kernel_timeouts)
from .files import FileOperations, lazy_read_handles
from .follower import ChangeFollower, KernelInvalidator, follows_changes
from .handles import DirHandle, FuseError, Handle
from .procinfo import ProcCache, in_rename
from .project import ProjectMount
from .writeback import WriteBack

log = logging.getLogger("metafs.fuse")

XATTR_SECURITY_CAPABILITY = "security.capability"
HIDDEN_PREFIX = ".fuse_hidden"
HIDDEN_NAMES_KEPT = 4096
_FOREVER = float("inf")


def _plain_name(name: str) -> bool:
    """Whether the namenode would look ``name`` up (else its refusal, ENAMETOOLONG or
    EILSEQ, is the answer, not "no such name")."""
    try:
        check_name(name, new=False)
    except FsError:
        return False
    return True


def _unchanged_nlink(at_ns: int) -> tuple[int, int]:
    """For an unlink's reply (its time): the directory's link count stays."""
    return at_ns, 0


# How often a getattr asks again when names changed while it was answering; the last
# answer is given whatever changed meanwhile
_NAME_RACE_TRIES = 3


class MetafsOperations(FileOperations):
    """mfusepy operations for one mount (only the methods a mount needs are defined, since
    every method libfuse sees costs a kernel round trip when it is called)."""

    use_ns = True

    def __init__(self, client: Client, settings: Settings,
                 project: ProjectMount | None = None) -> None:
        self.client = client
        self.settings = settings
        # the mount's root: the namespace's, or a project's directory (paths from libfuse
        # are relative to it, and resolved below root_path by the namenode)
        self.project = project
        self.root_ino = project.root_ino if project is not None else ROOT_INO
        self.root_path = project.root_path if project is not None else ""
        self.nodes = client.inodes
        self.client_id = client.client_id
        self.procs = ProcCache()
        # Projects need a namenode that authenticates; there, each request names its
        # process (its key), so that the project boundary holds across mounts.
        self.follow_processes = bool(getattr(client.transport, "authenticated", False))
        following = follows_changes(settings)
        entry_ttl, attr_ttl = kernel_timeouts(settings, following)
        self.cache = MountCache(FOLLOWED_TTL if following else entry_ttl,
                                FOLLOWED_TTL if following else attr_ttl, self.root_ino,
                                complete_dirs=following)
        self.writeback = WriteBack(self.cache, settings.fuse_write_buffer, self._wrote)
        self.inline = InlineData(INLINE_DATA_BYTES)  # small files' data for their next opens
        self.kernel = KernelInvalidator()
        self.follower = ChangeFollower(self)  # (its thread runs when ``following``)
        self._following = following
        # names libfuse gives open files whose last name was removed (see _hide), and the
        # names they had (kept after the file is gone, for the kernel's late opens)
        self._hidden: dict[str, int] = {}
        self._hidden_from: OrderedDict[str, str] = OrderedDict()
        self.handles: dict[int, Handle] = {}
        self.open_by_ino: dict[int, set[Handle]] = {}
        self._lazy_reads = lazy_read_handles(settings)
        from .mount import default_permissions

        self._kernel_checks = default_permissions(settings)  # the kernel checks mode bits too
        # Other users, and no kernel mode-bit checks: a name this mount cached for one user
        # must not let another skip the search permission of the directories above it, so
        # their paths are walked by the namenode (checked on every component) each time.
        self._walk_paths = bool(settings.fuse_allow_other) and not self._kernel_checks
        self._keepalive: dict[int, int] = {}  # ino -> namenode handle keeping it alive
        self._dirs: dict[int, DirHandle] = {}
        self._next_fh = 1
        self._fh_lock = threading.Lock()
        self.readahead = max(0, settings.fuse_readahead)
        recorder = client.access_recorder
        recorder.enabled = bool(settings.fuse_access_events)  # the mount's events, per process
        self.recorder = MountAccess(self, recorder) if recorder.enabled else None

    # ------------------------------------------------------------------ plumbing
    def caller(self) -> pb.Caller:
        """The identity of the process behind the current FUSE request."""
        from .binding import fuse_context

        uid, gid, pid = fuse_context()
        if self.project is not None:
            c = self.project.caller(self.client, uid, pid)
        else:
            c = self.client.identity(uid, gid, self.procs.groups(pid) if pid else (), pid)
        if pid and self.follow_processes:
            c.process = self.procs.key(pid)
        return c

    def _resolve(self, path: str, caller: pb.Caller) -> pb.Attr:
        """Walk the mount's ``path`` on the namenode (below the mount's root)."""
        return self.nodes.resolve(self.root_path + path, caller)

    def own_caller(self) -> pb.Caller:
        """The mount's own identity (for calls no process asked for)."""
        if self.project is not None and not self.project.gateway:
            return self.project.caller(self.client, self.project.owner_uid, os.getpid())
        return self.client.identity(os.getuid(), os.getgid(), os.getgroups(), os.getpid())

    def start(self) -> None:
        """Start background work (changelog following, kernel cache invalidation)."""
        self.kernel.start()
        if self._following:
            self.follower.start()

    def stop(self) -> None:
        self.follower.stop()
        self.kernel.stop()
        for h in list(self.handles.values()):
            try:
                self._release_handle(h)
            except OSError:
                pass
        if self.recorder is not None:
            self.recorder.stop()

    # ------------------------------------------------------------------ caches
    def _other_names_changed(self, ino: int, except_path: str | None,
                             now: bool = False) -> None:
        """The kernel caches each name of a hard-linked file separately (libfuse's
        high-level API gives every name its own node): drop the cached attributes and
        pages of the other names. ``now``: before this request is answered, so the next
        stat through another name sees the change (for link, unlink, setattr and xattr
        changes: the kernel holds no lock on another name's pages while it waits for
        those); else from the invalidation thread (writes: two writers through two names
        would each wait for the other's pages)."""
        names = self.cache.links.get(ino)
        if names:
            others = [p for p in names if p != except_path]
            if now:
                self.kernel.now(others)
            else:
                for p in others:
                    self.kernel.later(p)

    def forget_all(self) -> None:
        """Drop every cached name and attribute (other clients' changes are unknown)."""
        self.cache.forget_all()

    @staticmethod
    def _split(path: str) -> tuple[str, str]:
        parent, name = posixpath.split(path)
        return parent or "/", name

    def _walked(self, path: str, caller: pb.Caller) -> pb.Attr | None:
        """With ``_walk_paths``, a caller other than root gets ``path`` resolved by the
        namenode (search permission checked on each directory); else None."""
        if not self._walk_paths or caller.uid == 0 or path == "/":
            return None
        return self.cache.remember(path, self._resolve(path, caller))

    def _ino_of(self, path: str, caller: pb.Caller) -> int:
        if path == "/":
            return self.root_ino
        walked = self._walked(path, caller)
        if walked is not None:
            return walked.ino
        hit = self.cache.names.get(path)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        return self._lookup(path, caller).ino

    def _lookup(self, path: str, caller: pb.Caller) -> pb.Attr:
        """Ask the namenode what ``path`` names now (one call)."""
        parent, name = self._split(path)
        if name.startswith(HIDDEN_PREFIX):
            ino = self._hidden.get(path)
            if ino is None:
                raise FuseError(errno.ENOENT)
            return self.cache.set_attr(self.nodes.getattr(ino, caller))
        hit = self.cache.names.get(parent) if parent != "/" else (self.root_ino, _FOREVER)
        if hit is not None and hit[1] > time.monotonic():
            if self.cache.absent(parent, hit[0], path) and self._may_search(hit[0], caller) \
                    and _plain_name(name):
                raise FuseError(errno.ENOENT)  # (a directory this mount made: no such name)
            try:
                return self.cache.remember(path, self.nodes.lookup(hit[0], name, caller))
            except OSError as err:
                # "no such name" in a directory that exists is the answer (the usual case
                # before a create); only a parent that is gone calls for a walk by path
                if err.errno != errno.ENOENT or parent == "/" or err.filename == name:
                    raise
                self.cache.forget_path(parent)
        return self.cache.remember(path, self._resolve(path, caller))

    def _may_search(self, ino: int, caller: pb.Caller) -> bool:
        """Whether the caller may look names up in directory ``ino`` as far as the mount
        can tell without asking (else the namenode answers, with its EACCES)."""
        if self._kernel_checks or caller.uid == 0:
            return True  # (the kernel checked the directory's search permission; root's)
        a = self.cache.attr(ino)
        return a is not None and allowed(Cred(caller.uid, caller.gid, frozenset(caller.groups)),
                                         a.mode, a.uid, a.gid, X)

    def _attr_of_path(self, path: str, caller: pb.Caller) -> pb.Attr:
        """The attributes of what ``path`` names now. An answer asked for before this
        mount renamed or removed a name (the namenode may have answered for the inode the
        name had before) is asked for again: given to the kernel, the old inode's
        attributes would be those of the name's new inode (an atomic save's reader saw
        the old file's size with the new file's data)."""
        for _ in range(_NAME_RACE_TRIES):
            epoch = self.cache.names.epoch
            attr = self._attr_of_path_once(path, caller)
            if self.cache.names.epoch == epoch:
                return attr
        return attr

    def _attr_of_path_once(self, path: str, caller: pb.Caller) -> pb.Attr:
        walked = self._walked(path, caller)
        if walked is not None:
            if walked.ino in self.writeback.dirty:  # buffered writes first: the size must be theirs
                return self._attr_of_ino(walked.ino, caller)
            return walked
        now = time.monotonic()
        hit = self.cache.names.get(path) if path != "/" else (self.root_ino, _FOREVER)
        if hit is not None and hit[1] > now:
            ino = hit[0]
            held = self._held_attr(ino)
            if held is not None:
                return held
            a = self.cache.attrs.get(ino)
            if a is not None and a[1] > now:
                return a[0]
            try:
                return self.cache.remember(path, self.nodes.getattr(ino, caller))
            except OSError as err:
                if err.errno != errno.ENOENT or path == "/":
                    raise
                self.cache.forget_path(path)
        a = self._lookup(path, caller)
        if a.ino in self.writeback.dirty:  # (as above: an open file's writes may be held)
            return self._attr_of_ino(a.ino, caller)
        return a

    def _held_attr(self, ino: int) -> pb.Attr | None:
        """Before the attributes of ``ino`` are answered: the writes this mount holds back
        of it are sent (None), unless all it holds back is an open's truncation, whose
        attributes are known (they are returned; the truncation goes with the write)."""
        if ino not in self.writeback.dirty:
            return None
        held = self.writeback.truncated(ino)
        if held is None:
            self.writeback.flush_ino(ino)
        return held

    def _attr_of_ino(self, ino: int, caller: pb.Caller) -> pb.Attr:
        held = self._held_attr(ino)
        if held is not None:
            return held
        a = self.cache.attrs.get(ino)
        if a is not None and a[1] > time.monotonic():
            return a[0]
        return self.cache.set_attr(self.nodes.getattr(ino, caller))

    # ------------------------------------------------------------------ attributes
    # mfusepy registers a libfuse callback only for methods that exist; the binding
    # (MetafsFUSE) overrides these three callbacks and calls getattr_pb/utimens_raw/stop.
    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
        a = self.getattr_pb(path, fh)
        return {"st_ino": a.ino, "st_mode": a.mode, "st_nlink": a.nlink, "st_uid": a.uid,
                "st_gid": a.gid, "st_size": a.size, "st_atime": a.atime_ns,
                "st_mtime": a.mtime_ns, "st_ctime": a.ctime_ns}

    def utimens(self, path: str | None, times: Any = None) -> int:
        raise FuseError(errno.ENOSYS)

    def destroy(self, path: str) -> None:
        self.stop()

    def getattr_pb(self, path: str | None, fh: int | None) -> pb.Attr:
        """Attributes for libfuse's getattr (``fh`` set when the file is open)."""
        caller = self.caller()
        if fh:
            h = self.handles.get(fh)
            if h is not None:
                return self._attr_of_ino(h.ino, caller)
        if path is None:
            raise FuseError(errno.EBADF)
        return self._attr_of_path(path, caller)

    def _setattr(self, path: str | None, fh: int | None, **fields: Any) -> None:
        caller = self.caller()
        h = self.handles.get(fh) if fh else None
        if h is not None:
            ino = h.ino
        elif path is not None:
            ino = self._ino_of(path, caller)
        else:
            raise FuseError(errno.EBADF)
        if ino in self.writeback.dirty:
            self.writeback.flush_ino(ino)
        if self._lazy_reads and ("mode" in fields or "uid" in fields or "gid" in fields):
            self._pin_handles(ino)
        if "mode" in fields and len(fields) == 1:
            caller = self._kill_priv_caller(ino, fields["mode"], caller, h)
        try:
            attr = self.nodes.setattr(ino, caller, **fields)
        except OSError as err:
            if err.errno == errno.ENOENT and h is None and path is not None:
                self.cache.forget_path(path)
                ino = self._ino_of(path, caller)
                attr = self.nodes.setattr(ino, caller, **fields)
            else:
                raise
        self.cache.set_attr(attr)
        self.cache.nocap.pop(ino, None)
        self._other_names_changed(ino, h.path if h is not None else path, now=True)

    def _kill_priv_caller(self, ino: int, mode: int, caller: pb.Caller,
                          h: Handle | None) -> pb.Caller:
        """The caller to change ``ino``'s mode to ``mode`` with. Before a write (or
        truncate) by a process that is not the owner, the kernel asks to clear the file's
        set-user-ID and set-group-ID bits (Linux clears them on every write by a
        non-owner, without privilege); the namenode lets only the owner change a mode, so
        the mount makes that change itself when it removes nothing but those bits and the
        caller may write the file."""
        if caller.uid == 0:
            return caller
        a = self._attr_of_ino(ino, caller)
        if a.uid == caller.uid or mode & 0o7777 == stat_mod.S_IMODE(a.mode) or \
                mode & 0o7777 != stat_mod.S_IMODE(a.mode) & ~(stat_mod.S_ISUID
                                                             | stat_mod.S_ISGID):
            return caller
        if h is None or h.flags & os.O_ACCMODE == os.O_RDONLY:
            self.nodes.access(ino, os.W_OK, caller)
        return self.own_caller()

    def chmod(self, path: str | None, mode: int, fh: int | None = None) -> int:
        self._setattr(path, fh, mode=mode & 0o7777)
        return 0

    def chown(self, path: str | None, uid: int, gid: int, fh: int | None = None) -> int:
        fields: dict[str, int] = {}
        if uid != -1:
            fields["uid"] = uid
        if gid != -1:
            fields["gid"] = gid
        if fields:
            self._setattr(path, fh, **fields)
        return 0

    def utimens_raw(self, path: str | None, times: tuple[tuple[int, int], tuple[int, int]] | None,
                    fh: int | None = None) -> int:
        """utimensat(2): ``times`` is ((atime s, ns), (mtime s, ns)) with UTIME_NOW and
        UTIME_OMIT in the ns fields, or None for both NOW."""
        if times is None:
            ns: tuple[int | None, int | None] = (None, None)
        else:
            ns = tuple(nsec if nsec in (UTIME_NOW, UTIME_OMIT) else  # type: ignore[assignment]
                       sec * 1_000_000_000 + nsec for sec, nsec in times)
        if ns == (UTIME_OMIT, UTIME_OMIT):
            return 0
        self._setattr(path, fh, times=ns)
        return 0

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        if length < 0:
            raise FuseError(errno.EINVAL)
        caller = self.caller()
        h = self.handles.get(fh) if fh else None
        if h is None and path is not None:
            # truncate(2) by name: the namenode checks write permission and moves data
            ino = self._ino_of(path, caller)
            h2 = next(iter(self.writeback.dirty.get(ino, ())), None)
            if h2 is None:
                if ino in self.writeback.dirty:
                    self.writeback.flush_ino(ino)
                self.writeback.bump(ino)
                attr = self.cache.set_attr(self.nodes.setattr(ino, caller, size=length))
                self.refresh_others(ino, attr)  # open files of it read the new size
                self._other_names_changed(ino, path, now=True)
                return 0
            h = h2
        if h is None:
            raise FuseError(errno.EBADF)
        with h.lock:
            h.did_write = True
            self.writeback.commit(h)
            h.raw.resize(length)
            self._wrote(h)
        self.writeback.bump(h.ino)
        return 0

    def access(self, path: str, amode: int) -> int:
        caller = self.caller()
        ino = self._ino_of(path, caller)
        self.nodes.access(ino, amode, caller)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        r = self.nodes.statfs(self.caller())
        return {"f_bsize": r.bsize, "f_frsize": r.bsize, "f_blocks": r.blocks,
                "f_bfree": r.bfree, "f_bavail": r.bavail, "f_files": r.files,
                "f_ffree": r.ffree, "f_favail": r.ffree, "f_namemax": r.namemax or 255}

    # ------------------------------------------------------------------ names
    def _parent(self, path: str, caller: pb.Caller) -> tuple[int, str, str]:
        parent, name = self._split(path)
        return self._ino_of(parent, caller), name, parent

    def _retry_stale_parent(self, path: str, caller: pb.Caller,
                            fn: Callable[[int, str], Any],
                            stamp: Callable[[Any], tuple[int, int]] | None = None) -> Any:
        """Run ``fn(parent_ino, name)``; if the cached parent inode turned out to be gone,
        look the parent up again and retry once. ``stamp(result)``: when the namenode
        changed the parent and how (:meth:`MountCache.entries_changed`), if the reply
        tells."""
        pino, name, parent = self._parent(path, caller)
        try:
            result = fn(pino, name)
        except OSError as err:
            # (a name this mount does not know of may be there: e.g. EEXIST for a name
            # another client just made in a directory the mount believes complete)
            self.cache.forget_path(path)
            if err.errno not in (errno.ENOENT, errno.ENOTDIR) or parent == "/":
                raise
            hit = self.cache.names.get(parent)
            if hit is None:
                raise
            self.cache.forget_path(parent)
            try:
                pino2 = self._ino_of(parent, caller)
            except OSError:
                raise err from None
            if pino2 == pino:
                raise
            result = fn(pino2, name)
            pino = pino2
        # the namenode changed the directory's mtime and ctime with its entries (the
        # kernel drops its own copy of the directory's attributes after such a request,
        # and asks again: from the cache when the reply says what changed)
        at_ns, nlink_delta = stamp(result) if stamp is not None else (0, 0)
        self.cache.entries_changed(pino, at_ns, nlink_delta)
        return result

    def mkdir(self, path: str, mode: int) -> int:
        caller = self.caller()
        changes = self.cache.dir_changes
        attr = self._retry_stale_parent(path, caller, lambda p, n: self.nodes.mkdir(
            p, n, mode & 0o7777, caller), lambda a: (a.ctime_ns, 1))
        self.cache.remember(path, attr)
        self.cache.mark_complete(path, attr.ino, changes)  # (it is empty)
        return 0

    def mknod(self, path: str, mode: int, dev: int) -> int:
        caller = self.caller()
        r = self._retry_stale_parent(path, caller, lambda p, n: self.nodes.create(
            p, n, mode, caller, rdev=dev), created_at)
        self.cache.remember(path, r.attr)
        return 0

    def symlink(self, path: str, target: str) -> int:
        caller = self.caller()
        attr = self._retry_stale_parent(path, caller, lambda p, n: self.nodes.symlink(
            p, n, target, caller), lambda a: (a.ctime_ns, 0))
        self.cache.remember(path, attr)
        return 0

    def link(self, path: str, existing: str) -> int:
        caller = self.caller()
        ino = self._ino_of(existing, caller)
        attr = self._retry_stale_parent(path, caller, lambda p, n: self.nodes.link(
            ino, p, n, caller), lambda a: (a.ctime_ns, 0))
        self.cache.links.setdefault(ino, set()).update((existing, path))
        self.cache.remember(path, attr)
        self._other_names_changed(ino, path, now=True)
        return 0

    def readlink(self, path: str) -> str:
        caller = self.caller()
        ino = self._ino_of(path, caller)
        return self.nodes.readlink(ino, caller)

    def unlink(self, path: str) -> int:
        if path in self._hidden:
            # the last close of an unlinked file: the namenode frees it on Release
            self._hidden.pop(path, None)
            self.cache.names.pop(path, None)
            return 0
        caller = self.caller()
        self._retry_stale_parent(path, caller, lambda p, n: self.nodes.unlink(
            p, n, caller), _unchanged_nlink)
        hit = self.cache.names.get(path)
        self.cache.forget_path(path, gone=True)
        if hit is not None and hit[0] in self.cache.links:
            names = self.cache.links[hit[0]]
            names.discard(path)
            self.cache.forget_ino(hit[0])  # nlink and ctime changed
            self._other_names_changed(hit[0], None, now=True)
            if len(names) <= 1:
                self.cache.links.pop(hit[0], None)
        return 0

    def rmdir(self, path: str) -> int:
        caller = self.caller()
        self._retry_stale_parent(path, caller, lambda p, n: self.nodes.rmdir(
            p, n, caller), lambda at_ns: (at_ns, -1))
        # the directory was empty: names still cached under it are stale already, and
        # every use of a stale name falls back to a fresh lookup
        self.cache.forget_path(path, gone=True)
        return 0

    def _hide(self, old: str, hidden: str) -> int:
        """libfuse's high-level API cannot serve fstat/fchmod on an open file whose name is
        gone (with hard_remove it answers ESTALE), so it renames such files to a
        ``.fuse_hidden*`` name instead of unlinking them. metafs does not need that name:
        the namenode keeps an unlinked inode alive while handles are open. So the hidden
        name lives only in this mount's table (no directory listing, and no other mount,
        ever shows it), and at the namenode the file is unlinked for real here, unless the
        caller is renaming another file over it: then libfuse's next call is that rename,
        which replaces the name at the namenode in one step (unlinking it here first would
        leave a moment with no such name, where a concurrent open would fail with ENOENT
        and an atomic save would not be atomic)."""
        from .binding import fuse_context

        caller = self.caller()
        ino = self._ino_of(old, caller)
        self._keep_alive(ino)
        if not in_rename(fuse_context()[2]):
            self._retry_stale_parent(old, caller, lambda p, n: self.nodes.unlink(
                p, n, caller), _unchanged_nlink)
            self.cache.forget_path(old, gone=True)
        self._hidden[hidden] = ino
        # libfuse keeps the hidden name until the kernel forgets the node, which the
        # high-level API does not report: only the latest names are kept
        if len(self._hidden_from) >= HIDDEN_NAMES_KEPT:
            self._hidden_from.popitem(last=False)
        self._hidden_from[hidden] = old
        self.cache.names[hidden] = (ino, _FOREVER)
        return 0

    def rename(self, old: str, new: str, flags: int = 0) -> int:
        if posixpath.basename(new).startswith(HIDDEN_PREFIX) and not flags:
            return self._hide(old, new)
        caller = self.caller()
        sp, sn, _ = self._parent(old, caller)
        dp, dn, _ = self._parent(new, caller)
        moved = self.cache.names.get(old)
        replaced = self.cache.names.get(new)
        if self._lazy_reads and self.open_by_ino and not flags & RENAME_EXCHANGE:
            # a file this mount has open without a namenode handle must outlive the
            # name it loses here (its reads go on: the namenode frees it at Release)
            try:
                self._keep_alive(replaced[0] if replaced else self._ino_of(new, caller))
            except OSError:
                pass  # no such name: nothing is replaced
        if moved is not None and self._following:
            self.cache.renaming(moved[0])
        # a file's move changes neither directory's link count (a directory's may)
        file_moved = not flags & RENAME_EXCHANGE and not self.cache.maybe_dir(moved)
        try:
            at_ns = self.nodes.rename(sp, sn, dp, dn, caller, flags=flags)
        except OSError as err:
            for p in (old, new):
                if err.errno == errno.ENOENT or p not in self.cache.names:
                    self.cache.forget_path(p)  # (its directory may hold names it does not know)
            raise
        # (a name this mount names again below is not one it does not know of)
        self.cache.forget_path(new, subtree=self.cache.maybe_dir(replaced) if replaced else False,
                               gone=moved is not None)
        if flags & RENAME_EXCHANGE:
            self.cache.forget_path(old, subtree=self.cache.maybe_dir(moved),
                                   gone=replaced is not None)
        else:
            self.cache.move_below(old, new)  # (a directory's names move with it)
            self.cache.forget_path(old, gone=True)
        for hit in (moved, replaced):
            if hit is not None:
                self.cache.forget_ino(hit[0])
        for pino in {sp, dp}:
            self.cache.entries_changed(pino, at_ns if file_moved else 0)
        if moved is not None and self._following:
            # the follower brings its attributes back, unless the mount has it open (a
            # write committed meanwhile would be newer than the rename's record)
            self.cache.renamed(moved[0], moved[0] not in self.open_by_ino)
        now = time.monotonic()
        if moved is not None:
            self.cache.names[new] = (moved[0], now + self.cache.name_ttl)
            self.cache.path_of[moved[0]] = new
        if flags & RENAME_EXCHANGE and replaced is not None:
            self.cache.names[old] = (replaced[0], now + self.cache.name_ttl)
            self.cache.path_of[replaced[0]] = old
        if moved is None or replaced is None or moved[0] != replaced[0]:
            self._relinked(moved, old, new)
            self._relinked(replaced, new, old if flags & RENAME_EXCHANGE else None)
        return 0

    def _relinked(self, hit: tuple[int, float] | None, frm: str, to: str | None) -> None:
        """A rename moved the inode of ``hit`` from name ``frm`` to ``to`` (None: the name
        was replaced, the inode lost it). The kernel caches the other names of a
        hard-linked file on their own: their ctime (and link count) changed."""
        names = self.cache.links.get(hit[0]) if hit is not None else None
        if not names:
            return
        names.discard(frm)
        if to is not None:
            names.add(to)
        self._other_names_changed(hit[0], to, now=True)
        if len(names) <= 1:
            self.cache.links.pop(hit[0], None)

    # ------------------------------------------------------------------ xattrs
    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0
                 ) -> int:
        caller = self.caller()
        ino = self._ino_of(path, caller)
        self.nodes.setxattr(ino, name, value, options, caller)
        self.cache.forget_ino(ino, xattrs=True)
        self._other_names_changed(ino, path, now=True)  # (ctime)
        return 0

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        caller = self.caller()
        ino = self._ino_of(path, caller)
        if name == XATTR_SECURITY_CAPABILITY:
            # the kernel asks this on every write: answer "none" from cache when known
            until = self.cache.nocap.get(ino)
            if until is not None and until > time.monotonic():
                raise FuseError(errno.ENODATA)
        try:
            return self.nodes.getxattr(ino, name, caller)
        except OSError as err:
            if name == XATTR_SECURITY_CAPABILITY and err.errno in (errno.ENODATA,
                                                                   errno.EOPNOTSUPP):
                self.cache.nocap[ino] = time.monotonic() + NOCAP_TTL
                raise FuseError(errno.ENODATA) from None
            raise

    def listxattr(self, path: str) -> list[str]:
        caller = self.caller()
        ino = self._ino_of(path, caller)
        return self.nodes.listxattr(ino, caller)

    def removexattr(self, path: str, name: str) -> int:
        caller = self.caller()
        ino = self._ino_of(path, caller)
        self.nodes.removexattr(ino, name, caller)
        self.cache.forget_ino(ino, xattrs=True)
        self._other_names_changed(ino, path, now=True)  # (ctime)
        return 0

