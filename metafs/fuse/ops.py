"""The file system operations of a metafs mount, written against mfusepy's high-level API.

Paths from libfuse are turned into metafs inode numbers through a name table that the mount
keeps (filled by lookups, creates and directory listings, emptied by its own changes and by
changes other clients make, which it learns from the namenode's changelog). Every call to
the namenode carries the identity of the process that made the FUSE request, so the
namenode enforces permissions for every user of a shared machine.

Data goes through :class:`metafs.client.file.RawFile` (``client.raw_file_class``): inline
files through Read/Write, large files through the block layer once it is attached to the
client. The mount adds write-back buffering of small writes and read-ahead on top of it.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import posixpath
import queue
import stat as stat_mod
import threading
import time
from typing import Any, Callable, Iterator

from ..client.blockfile import BlockFile
from ..client.client import Client
from ..config import Settings
from ..errors import FsError
from ..posix import Cred, access_mask_to_want, allowed
from ..proto import metafs_pb2 as pb
from .access import AccessRecorder
from .procinfo import ProcCache

log = logging.getLogger("metafs.fuse")

ROOT_INO = 1
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
XATTR_SECURITY_CAPABILITY = "security.capability"
HIDDEN_PREFIX = ".fuse_hidden"
# How long "no security.capability" (asked by the kernel before every write) is believed:
# changes through this mount, and other clients' changes seen in the changelog, drop it.
NOCAP_TTL = 300.0
LARGE_WRITE = 128 * 1024  # writes this large go to the data path unbuffered
_FOREVER = float("inf")


def follows_changes(settings: Settings) -> bool:
    """Whether the mount follows the changelog (``fuse_follow_changes``)."""
    v = str(settings.fuse_follow_changes).strip().lower()
    if v in ("auto", ""):
        return bool(settings.namenode)
    return v in ("1", "true", "yes", "on")


def lazy_read_handles(settings: Settings) -> bool:
    """Whether opens skip the namenode handle (``fuse_lazy_read_handles``)."""
    v = str(settings.fuse_lazy_read_handles).strip().lower()
    if v in ("auto", ""):
        return not settings.namenode
    return v in ("1", "true", "yes", "on")


class NameTable(dict):  # type: ignore[type-arg]
    """The mount's path -> (ino, expiry) table, with the cached names under each directory
    indexed, so that forgetting a renamed or removed directory's subtree costs the names
    cached under it, not a scan of every name the mount knows."""

    def __init__(self) -> None:
        super().__init__()
        self._kids: dict[str, set[str]] = {}

    @staticmethod
    def _parent(path: str) -> str:
        return path.rsplit("/", 1)[0] or "/"

    def __setitem__(self, path: str, value: tuple[int, float]) -> None:
        if path not in self:
            self._kids.setdefault(self._parent(path), set()).add(path)
        super().__setitem__(path, value)

    def pop(self, path: str, default: Any = None) -> Any:  # type: ignore[override]
        if path in self:
            kids = self._kids.get(self._parent(path))
            if kids is not None:
                kids.discard(path)
                if not kids:
                    del self._kids[self._parent(path)]
        return super().pop(path, default)

    def clear(self) -> None:
        super().clear()
        self._kids.clear()

    def drop_below(self, path: str) -> None:
        """Forget every cached name strictly under directory ``path``."""
        stack = [path.rstrip("/") or "/"]
        while stack:
            for child in self._kids.pop(stack.pop(), ()):
                super().pop(child, None)
                stack.append(child)


class FuseError(OSError):
    """An errno for the kernel (mfusepy turns OSError into -errno)."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(code, message or os.strerror(code))


class _ClientView:
    """The client as one open file sees it: the same connection, with the identity of the
    process that opened the file (so data calls carry it)."""

    def __init__(self, client: Client, caller: pb.Caller) -> None:
        self._client = client
        self.caller = caller

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class Handle:
    """One FUSE open file: a namenode handle plus the mount's buffers."""

    __slots__ = ("fh", "ino", "path", "flags", "raw", "lock", "buf", "buf_off", "append", "rbuf",
                 "rbuf_off", "rbuf_epoch", "did_read", "did_write", "pid", "error", "io_ns")

    def __init__(self, fh: int, ino: int, path: str, flags: int, raw: Any, pid: int) -> None:
        self.fh = fh
        self.ino = ino
        self.path = path
        self.flags = flags
        self.raw = raw
        self.lock = threading.Lock()
        self.buf = bytearray()
        self.buf_off = 0
        self.append = bool(flags & os.O_APPEND)
        self.rbuf = b""
        self.rbuf_off = 0
        self.rbuf_epoch = -1
        self.did_read = False
        self.did_write = False
        self.pid = pid
        self.error: OSError | None = None
        self.io_ns = 0  # wall time of the last read, write or flush (access events' time)


class DirHandle:
    """One open directory: the entries fetched so far (the namenode pages them)."""

    __slots__ = ("ino", "path", "entries", "cursor", "eof", "lock")

    def __init__(self, ino: int, path: str) -> None:
        self.ino = ino
        self.path = path
        self.entries: list[tuple[str, int, int]] = []  # (name, mode, ino)
        self.cursor = ""
        self.eof = False
        self.lock = threading.Lock()


class MetafsOperations:
    """mfusepy operations for one mount (only the methods a mount needs are defined, since
    every method libfuse sees costs a kernel round trip when it is called)."""

    use_ns = True

    def __init__(self, client: Client, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.transport = client.transport
        self.client_id = client.client_id
        self.procs = ProcCache()
        # name table and attribute cache: path -> (ino, expires), ino -> (attr, expires)
        self._names = NameTable()  # path -> (ino, expiry)
        self._attrs: dict[int, tuple[pb.Attr, float]] = {}
        self._path_of: dict[int, str] = {ROOT_INO: "/"}
        self._nocap: dict[int, float] = {}  # inodes known to have no security.capability
        # names libfuse gives open files whose last name was removed (see unlink below)
        self._hidden: dict[str, int] = {}
        following = follows_changes(settings)
        self._name_ttl = 60.0 if following else settings.fuse_entry_timeout
        self._attr_ttl = 60.0 if following else settings.fuse_attr_timeout
        self._handles: dict[int, Handle] = {}
        self._open_by_ino: dict[int, set[Handle]] = {}
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
        self._dirty: dict[int, set[Handle]] = {}
        self._epoch: dict[int, int] = {}  # data generation per inode (read-ahead validity)
        # data version the kernel page cache holds, per inode and name: libfuse's high-level
        # API gives each name of a hard-linked file its own kernel inode (and page cache)
        self._seen_version: dict[int, dict[str, int]] = {}
        self._links: dict[int, set[str]] = {}  # known names of inodes with several links
        self._kq: "queue.SimpleQueue[str | None]" = queue.SimpleQueue()
        self.write_buffer = max(0, settings.fuse_write_buffer)
        self.readahead = max(0, settings.fuse_readahead)
        self.recorder = AccessRecorder(self, settings) if settings.fuse_access_events else None
        self.invalidate_kernel: Callable[[str], None] | None = None  # set by the binding
        self._follower: threading.Thread | None = None
        self._stop = threading.Event()

    # ------------------------------------------------------------------ plumbing
    def caller(self) -> pb.Caller:
        """The identity of the process behind the current FUSE request."""
        from .binding import fuse_context

        uid, gid, pid = fuse_context()
        return pb.Caller(uid=uid, gid=gid, groups=self.procs.groups(pid) if pid else (),
                         pid=pid, client_id=self.client_id)

    def own_caller(self) -> pb.Caller:
        return pb.Caller(uid=os.getuid(), gid=os.getgid(), groups=os.getgroups(),
                         pid=os.getpid(), client_id=self.client_id)

    def rpc(self, method: str, request: Any) -> Any:
        try:
            return self.transport.call(method, request)
        except FsError as err:
            raise FuseError(err.errno, err.message) from None

    def start(self) -> None:
        """Start background work (changelog following, access events)."""
        if self.recorder is not None:
            self.recorder.start()
        threading.Thread(target=self._kernel_invalidator, name="metafs-inval",
                         daemon=True).start()
        if follows_changes(self.settings) and self._follower is None:
            self._follower = threading.Thread(target=self._follow, name="metafs-follow",
                                              daemon=True)
            self._follower.start()

    def stop(self) -> None:
        self._stop.set()
        self._kq.put(None)
        for h in list(self._handles.values()):
            try:
                self._release_handle(h)
            except OSError:
                pass
        if self.recorder is not None:
            self.recorder.stop()

    # ------------------------------------------------------------------ caches
    def _remember(self, path: str, attr: pb.Attr) -> pb.Attr:
        now = time.monotonic()
        self._names[path] = (attr.ino, now + self._name_ttl)
        self._attrs[attr.ino] = (attr, now + self._attr_ttl)
        self._path_of[attr.ino] = path
        if attr.nlink > 1 and not stat_mod.S_ISDIR(attr.mode):
            self._links.setdefault(attr.ino, set()).add(path)
        return attr

    def _other_names_changed(self, ino: int, except_path: str | None) -> None:
        """The kernel caches each name of a hard-linked file separately: drop the cached
        attributes and pages of the other names (asynchronously, outside the request)."""
        names = self._links.get(ino)
        if names and self.invalidate_kernel is not None:
            for p in names:
                if p != except_path:
                    self._kq.put(p)

    def _kernel_invalidator(self) -> None:
        while True:
            p = self._kq.get()
            if p is None:
                return
            inval = self.invalidate_kernel
            if inval is not None:
                try:
                    inval(p)
                except Exception:
                    pass

    def _set_attr(self, attr: pb.Attr) -> pb.Attr:
        self._attrs[attr.ino] = (attr, time.monotonic() + self._attr_ttl)
        return attr

    def _forget_path(self, path: str, subtree: bool = False) -> None:
        hit = self._names.pop(path, None)
        if hit is not None:
            self._attrs.pop(hit[0], None)
        if subtree:
            self._names.drop_below(path)

    def _forget_ino(self, ino: int, xattrs: bool = False) -> None:
        """Drop the cached attributes of ``ino`` (and, with ``xattrs``, what is known of its
        extended attributes: data writes leave those alone, so the kernel's
        security.capability question before every write stays answered locally)."""
        self._attrs.pop(ino, None)
        if xattrs:
            self._nocap.pop(ino, None)

    def forget_all(self) -> None:
        self._names.clear()
        self._attrs.clear()
        self._nocap.clear()

    @staticmethod
    def _split(path: str) -> tuple[str, str]:
        parent, name = posixpath.split(path)
        return parent or "/", name

    def _walked(self, path: str, caller: pb.Caller) -> pb.Attr | None:
        """With ``_walk_paths``, a caller other than root gets ``path`` resolved by the
        namenode (search permission checked on each directory); else None."""
        if not self._walk_paths or caller.uid == 0 or path == "/":
            return None
        e = self.rpc("Resolve", pb.ResolveRequest(caller=caller, path=path, follow=False))
        return self._remember(path, e.attr)

    def _ino_of(self, path: str, caller: pb.Caller) -> int:
        if path == "/":
            return ROOT_INO
        walked = self._walked(path, caller)
        if walked is not None:
            return walked.ino
        hit = self._names.get(path)
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
            return self._set_attr(self.rpc("GetAttr", pb.InodeRequest(caller=caller, ino=ino)))
        hit = self._names.get(parent) if parent != "/" else (ROOT_INO, _FOREVER)
        if hit is not None and hit[1] > time.monotonic():
            try:
                e = self.transport.call("Lookup", pb.LookupRequest(caller=caller, parent=hit[0],
                                                                   name=name))
                return self._remember(path, e.attr)
            except FsError as err:
                # "no such name" in a directory that exists is the answer (the usual case
                # before a create); only a parent that is gone calls for a walk by path
                if err.errno != errno.ENOENT or parent == "/" or err.path == name:
                    raise FuseError(err.errno, err.message) from None
                self._forget_path(parent)
        e = self.rpc("Resolve", pb.ResolveRequest(caller=caller, path=path, follow=False))
        return self._remember(path, e.attr)

    def _attr_of_path(self, path: str, caller: pb.Caller) -> pb.Attr:
        walked = self._walked(path, caller)
        if walked is not None:
            if walked.ino in self._dirty:  # buffered writes first: the size must be theirs
                return self._attr_of_ino(walked.ino, caller)
            return walked
        now = time.monotonic()
        hit = self._names.get(path) if path != "/" else (ROOT_INO, _FOREVER)
        if hit is not None and hit[1] > now:
            ino = hit[0]
            if ino in self._dirty:
                self._flush_ino(ino)
            a = self._attrs.get(ino)
            if a is not None and a[1] > now:
                return a[0]
            try:
                return self._remember(path, self.rpc("GetAttr", pb.InodeRequest(
                    caller=caller, ino=ino)))
            except FuseError as err:
                if err.errno != errno.ENOENT or path == "/":
                    raise
                self._forget_path(path)
        return self._lookup(path, caller)

    def _attr_of_ino(self, ino: int, caller: pb.Caller) -> pb.Attr:
        if ino in self._dirty:
            self._flush_ino(ino)
        a = self._attrs.get(ino)
        if a is not None and a[1] > time.monotonic():
            return a[0]
        return self._set_attr(self.rpc("GetAttr", pb.InodeRequest(caller=caller, ino=ino)))

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
            h = self._handles.get(fh)
            if h is not None:
                return self._attr_of_ino(h.ino, caller)
        if path is None:
            raise FuseError(errno.EBADF)
        return self._attr_of_path(path, caller)

    def _setattr(self, path: str | None, fh: int | None, **fields: Any) -> None:
        caller = self.caller()
        h = self._handles.get(fh) if fh else None
        if h is not None:
            ino = h.ino
        elif path is not None:
            ino = self._ino_of(path, caller)
        else:
            raise FuseError(errno.EBADF)
        if ino in self._dirty:
            self._flush_ino(ino)
        if self._lazy_reads and ("mode" in fields or "uid" in fields or "gid" in fields):
            self._pin_handles(ino)
        req = pb.SetAttrRequest(caller=caller, ino=ino, **fields)
        try:
            attr = self.rpc("SetAttr", req)
        except FuseError as err:
            if err.errno == errno.ENOENT and h is None and path is not None:
                self._forget_path(path)
                req.ino = self._ino_of(path, caller)
                attr = self.rpc("SetAttr", req)
            else:
                raise
        self._set_attr(attr)
        self._nocap.pop(ino, None)

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
        fields: dict[str, int] = {}
        if times is None:
            fields.update(atime_how=pb.TIME_NOW, mtime_how=pb.TIME_NOW)
        else:
            for which, (sec, nsec) in zip(("atime", "mtime"), times):
                if nsec == UTIME_NOW:
                    fields[f"{which}_how"] = pb.TIME_NOW
                elif nsec == UTIME_OMIT:
                    fields[f"{which}_how"] = pb.TIME_OMIT
                else:
                    fields[f"{which}_how"] = pb.TIME_SET
                    fields[f"{which}_ns"] = sec * 1_000_000_000 + nsec
        if fields.get("atime_how") == pb.TIME_OMIT and fields.get("mtime_how") == pb.TIME_OMIT:
            return 0
        self._setattr(path, fh, **fields)
        return 0

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        if length < 0:
            raise FuseError(errno.EINVAL)
        caller = self.caller()
        h = self._handles.get(fh) if fh else None
        if h is None and path is not None:
            # truncate(2) by name: the namenode checks write permission and moves data
            ino = self._ino_of(path, caller)
            h2 = next(iter(self._dirty.get(ino, ())), None)
            if h2 is None:
                if ino in self._dirty:
                    self._flush_ino(ino)
                self._bump(ino)
                self._set_attr(self.rpc("SetAttr", pb.SetAttrRequest(
                    caller=caller, ino=ino, size=length)))
                return 0
            h = h2
        if h is None:
            raise FuseError(errno.EBADF)
        with h.lock:
            h.did_write = True
            self._commit(h)
            h.raw._truncate(length)
            self._wrote(h)
        self._bump(h.ino)
        return 0

    def access(self, path: str, amode: int) -> int:
        caller = self.caller()
        ino = self._ino_of(path, caller)
        self.rpc("Access", pb.AccessRequest(caller=caller, ino=ino, mask=amode))
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        r = self.rpc("StatFs", pb.StatFsRequest(caller=self.caller()))
        return {"f_bsize": r.bsize, "f_frsize": r.bsize, "f_blocks": r.blocks,
                "f_bfree": r.bfree, "f_bavail": r.bavail, "f_files": r.files,
                "f_ffree": r.ffree, "f_favail": r.ffree, "f_namemax": r.namemax or 255}

    # ------------------------------------------------------------------ names
    def _parent(self, path: str, caller: pb.Caller) -> tuple[int, str, str]:
        parent, name = self._split(path)
        return self._ino_of(parent, caller), name, parent

    def _retry_stale_parent(self, path: str, caller: pb.Caller,
                            fn: Callable[[int, str], Any]) -> Any:
        """Run ``fn(parent_ino, name)``; if the cached parent inode turned out to be gone,
        look the parent up again and retry once."""
        pino, name, parent = self._parent(path, caller)
        try:
            return fn(pino, name)
        except FuseError as err:
            if err.errno not in (errno.ENOENT, errno.ENOTDIR) or parent == "/":
                raise
            hit = self._names.get(parent)
            if hit is None:
                raise
            self._forget_path(parent)
            try:
                pino2 = self._ino_of(parent, caller)
            except FuseError:
                raise err from None
            if pino2 == pino:
                raise
            return fn(pino2, name)

    def mkdir(self, path: str, mode: int) -> int:
        caller = self.caller()
        e = self._retry_stale_parent(path, caller, lambda p, n: self.rpc("Mkdir", pb.MkdirRequest(
            caller=caller, parent=p, name=n, mode=mode & 0o7777, umask=0)))
        self._remember(path, e.attr)
        self._forget_ino(self._names.get(self._split(path)[0], (ROOT_INO,))[0])
        return 0

    def mknod(self, path: str, mode: int, dev: int) -> int:
        caller = self.caller()
        r = self._retry_stale_parent(path, caller, lambda p, n: self.rpc(
            "Create", pb.CreateRequest(caller=caller, parent=p, name=n, mode=mode, umask=0,
                                       exclusive=True, open=False, rdev=dev)))
        self._remember(path, r.attr)
        return 0

    def symlink(self, path: str, target: str) -> int:
        caller = self.caller()
        e = self._retry_stale_parent(path, caller, lambda p, n: self.rpc(
            "Symlink", pb.SymlinkRequest(caller=caller, parent=p, name=n, target=target)))
        self._remember(path, e.attr)
        return 0

    def link(self, path: str, existing: str) -> int:
        caller = self.caller()
        ino = self._ino_of(existing, caller)
        e = self._retry_stale_parent(path, caller, lambda p, n: self.rpc(
            "Link", pb.LinkRequest(caller=caller, ino=ino, new_parent=p, new_name=n)))
        self._links.setdefault(ino, set()).update((existing, path))
        self._remember(path, e.attr)
        self._other_names_changed(ino, path)
        return 0

    def readlink(self, path: str) -> str:
        caller = self.caller()
        ino = self._ino_of(path, caller)
        return self.rpc("Readlink", pb.InodeRequest(caller=caller, ino=ino)).target

    def unlink(self, path: str) -> int:
        if path in self._hidden:
            # the last close of an unlinked file: the namenode frees it on Release
            self._hidden.pop(path, None)
            self._names.pop(path, None)
            return 0
        caller = self.caller()
        self._retry_stale_parent(path, caller, lambda p, n: self.rpc(
            "Unlink", pb.NameRequest(caller=caller, parent=p, name=n)))
        hit = self._names.get(path)
        self._forget_path(path)
        if hit is not None and hit[0] in self._links:
            names = self._links[hit[0]]
            names.discard(path)
            self._other_names_changed(hit[0], None)
            if len(names) <= 1:
                self._links.pop(hit[0], None)
        return 0

    def rmdir(self, path: str) -> int:
        caller = self.caller()
        self._retry_stale_parent(path, caller, lambda p, n: self.rpc(
            "Rmdir", pb.NameRequest(caller=caller, parent=p, name=n)))
        # the directory was empty: names still cached under it are stale already, and
        # every use of a stale name falls back to a fresh lookup
        self._forget_path(path)
        self._forget_ino(self._names.get(self._split(path)[0], (ROOT_INO,))[0])
        return 0

    def _hide(self, old: str, hidden: str) -> int:
        """libfuse's high-level API cannot serve fstat/fchmod on an open file whose name is
        gone (with hard_remove it answers ESTALE), so it renames such files to a
        ``.fuse_hidden*`` name instead of unlinking them. metafs does not need that name:
        the namenode keeps an unlinked inode alive while handles are open. So the file is
        unlinked for real here, and the hidden name lives only in this mount's table
        (no directory listing, and no other mount, ever shows it)."""
        caller = self.caller()
        ino = self._ino_of(old, caller)
        self._keep_alive(ino)
        self._retry_stale_parent(old, caller, lambda p, n: self.rpc(
            "Unlink", pb.NameRequest(caller=caller, parent=p, name=n)))
        self._forget_path(old)
        self._hidden[hidden] = ino
        self._names[hidden] = (ino, _FOREVER)
        return 0

    def _maybe_dir(self, hit: tuple[int, float] | None) -> bool:
        """Whether a cached name may be a directory (its subtree's names must go)."""
        if hit is None:
            return True
        a = self._attrs.get(hit[0])
        return a is None or stat_mod.S_ISDIR(a[0].mode)

    def rename(self, old: str, new: str, flags: int = 0) -> int:
        if posixpath.basename(new).startswith(HIDDEN_PREFIX) and not flags:
            return self._hide(old, new)
        caller = self.caller()
        sp, sn, _ = self._parent(old, caller)
        dp, dn, _ = self._parent(new, caller)
        moved = self._names.get(old)
        replaced = self._names.get(new)
        try:
            self.rpc("Rename", pb.RenameRequest(caller=caller, src_parent=sp, src_name=sn,
                                                dst_parent=dp, dst_name=dn, flags=flags))
        except FuseError as err:
            if err.errno == errno.ENOENT:
                self._forget_path(old)
                self._forget_path(new)
            raise
        self._forget_path(old, subtree=self._maybe_dir(moved))
        self._forget_path(new, subtree=self._maybe_dir(replaced) if replaced else False)
        for hit in (moved, replaced):
            if hit is not None:
                self._forget_ino(hit[0])
        self._forget_ino(sp)
        self._forget_ino(dp)
        now = time.monotonic()
        if moved is not None:
            self._names[new] = (moved[0], now + self._name_ttl)
            self._path_of[moved[0]] = new
        if flags & pb.RENAME_EXCHANGE and replaced is not None:
            self._names[old] = (replaced[0], now + self._name_ttl)
            self._path_of[replaced[0]] = old
        return 0

    # ------------------------------------------------------------------ directories
    def opendir(self, path: str) -> int:
        caller = self.caller()
        attr = self._attr_of_path(path, caller)
        if not stat_mod.S_ISDIR(attr.mode):
            raise FuseError(errno.ENOTDIR)
        with self._fh_lock:
            fh = self._next_fh
            self._next_fh += 1
        self._dirs[fh] = DirHandle(attr.ino, path)
        return fh

    def _fetch_page(self, d: DirHandle, caller: pb.Caller) -> None:
        r = self.rpc("ReadDir", pb.ReadDirRequest(caller=caller, ino=d.ino, cursor=d.cursor,
                                                  limit=self.settings.readdir_page, attrs=True))
        now = time.monotonic()
        base = d.path.rstrip("/") + "/"
        name_exp, attr_exp = now + self._name_ttl, now + self._attr_ttl
        for e in r.entries:
            d.entries.append((e.name, e.mode, e.ino))
            if e.HasField("attr"):
                p = base + e.name
                self._names[p] = (e.ino, name_exp)
                if e.ino not in self._dirty:
                    self._attrs[e.ino] = (e.attr, attr_exp)
                self._path_of[e.ino] = p
        d.cursor = r.next_cursor
        d.eof = r.eof or not r.entries

    def readdir_with_offset(self, path: str | None, offset: int, fh: int
                            ) -> Iterator[tuple[str, dict[str, int], int]]:
        for name, mode, ino, off in self.readdir_entries(fh, offset):
            yield name, {"st_mode": mode, "st_ino": ino}, off

    def readdir_entries(self, fh: int, offset: int) -> Iterator[tuple[str, int, int, int]]:
        """``(name, mode, ino, next offset)`` of the entries from ``offset`` on (the binding
        fills libfuse's buffer from these without a dict per entry)."""
        d = self._dirs.get(fh)
        if d is None:
            raise FuseError(errno.EBADF)
        caller = self.caller()
        if offset == 0:
            yield ".", stat_mod.S_IFDIR, d.ino, 1
        if offset <= 1:
            yield "..", stat_mod.S_IFDIR, d.ino, 2  # (as before)
        i = max(0, offset - 2)
        entries = d.entries
        while True:
            with d.lock:
                if i >= len(entries) and not d.eof:
                    self._fetch_page(d, caller)
                n = len(entries)
                if i >= n:
                    return
                batch = entries[i:n]  # (pages only grow: no lock needed to read them)
            for name, mode, ino in batch:
                i += 1
                yield name, mode, ino, i + 2

    def releasedir(self, path: str | None, fh: int) -> int:
        self._dirs.pop(fh, None)
        return 0

    # ------------------------------------------------------------------ xattrs
    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0
                 ) -> int:
        caller = self.caller()
        ino = self._ino_of(path, caller)
        self.rpc("SetXattr", pb.SetXattrRequest(caller=caller, ino=ino, name=name,
                                                value=bytes(value), flags=options))
        self._forget_ino(ino, xattrs=True)
        return 0

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        caller = self.caller()
        ino = self._ino_of(path, caller)
        if name == XATTR_SECURITY_CAPABILITY:
            # the kernel asks this on every write: answer "none" from cache when known
            until = self._nocap.get(ino)
            if until is not None and until > time.monotonic():
                raise FuseError(errno.ENODATA)
        try:
            return self.rpc("GetXattr", pb.GetXattrRequest(caller=caller, ino=ino,
                                                           name=name)).value
        except FuseError as err:
            if name == XATTR_SECURITY_CAPABILITY and err.errno in (errno.ENODATA,
                                                                   errno.EOPNOTSUPP):
                self._nocap[ino] = time.monotonic() + NOCAP_TTL
                raise FuseError(errno.ENODATA) from None
            raise

    def listxattr(self, path: str) -> list[str]:
        caller = self.caller()
        ino = self._ino_of(path, caller)
        return list(self.rpc("ListXattr", pb.InodeRequest(caller=caller, ino=ino)).names)

    def removexattr(self, path: str, name: str) -> int:
        caller = self.caller()
        ino = self._ino_of(path, caller)
        self.rpc("RemoveXattr", pb.RemoveXattrRequest(caller=caller, ino=ino, name=name))
        self._forget_ino(ino, xattrs=True)
        return 0

    # ------------------------------------------------------------------ files
    def _new_handle(self, path: str, reply: pb.OpenReply, flags: int, caller: pb.Caller,
                    fi: Any) -> None:
        attr = reply.attr
        raw = BlockFile(_ClientView(self.client, caller), path, reply,
                        flags & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC))
        with self._fh_lock:
            fh = self._next_fh
            self._next_fh += 1
        h = Handle(fh, attr.ino, path, flags, raw, caller.pid)
        self._handles[fh] = h
        self._open_by_ino.setdefault(attr.ino, set()).add(h)
        self._set_attr(attr)
        self._path_of[attr.ino] = path
        versions = self._seen_version.setdefault(attr.ino, {})
        seen = versions.get(path)
        fi.fh = fh
        fi.keep_cache = 1 if (self.settings.fuse_kernel_cache and seen == attr.version) else 0
        versions[path] = attr.version
        if seen != attr.version:
            self._bump(attr.ino)
        if self.recorder is not None:
            self.recorder.opened(h)

    def open(self, path: str, fi: Any) -> int:
        caller = self.caller()
        flags = fi.flags
        ino = self._ino_of(path, caller)
        if ino in self._dirty:
            self._flush_ino(ino)
        if self._lazy_reads:
            return self._open_lazy(path, ino, flags, caller, fi)
        req = pb.OpenRequest(caller=caller, ino=ino, flags=flags & ~(os.O_CREAT | os.O_EXCL))
        try:
            reply = self.rpc("Open", req)
        except FuseError as err:
            if err.errno != errno.ENOENT:
                raise
            self._forget_path(path)
            req.ino = self._ino_of(path, caller)
            reply = self.rpc("Open", req)
        if flags & os.O_TRUNC:
            self._bump(ino)
        self._new_handle(path, reply, flags, caller, fi)
        return 0

    def _open_lazy(self, path: str, ino: int, flags: int, caller: pb.Caller, fi: Any) -> int:
        """Open without a namenode handle (embedded namenode): the namenode checks
        permission on every read and write instead (see ``fuse_lazy_read_handles``)."""
        acc = flags & os.O_ACCMODE
        mask = {os.O_RDONLY: os.R_OK, os.O_WRONLY: os.W_OK}.get(acc, os.R_OK | os.W_OK)
        if flags & os.O_TRUNC:
            mask |= os.W_OK
        attr = self._fresh_attr(path, ino, caller)
        if stat_mod.S_ISLNK(attr.mode):
            raise FuseError(errno.ELOOP)
        if mask & os.W_OK or not self._kernel_checks:
            # the namenode's own rule, on the attributes it just gave (no second call)
            cred = Cred(caller.uid, caller.gid, frozenset(caller.groups))
            if not allowed(cred, attr.mode, attr.uid, attr.gid, access_mask_to_want(mask)):
                raise FuseError(errno.EACCES)
        if flags & os.O_TRUNC and attr.size:
            attr = self._set_attr(self.rpc("SetAttr", pb.SetAttrRequest(
                caller=caller, ino=attr.ino, size=0)))
            self._bump(attr.ino)
        self._new_handle(path, pb.OpenReply(attr=attr, handle=0), flags, caller, fi)
        return 0

    def _pin_handles(self, ino: int) -> None:
        """Give this mount's handle-less write opens of ``ino`` real namenode handles
        before its mode or owner changes: a file opened for writing stays writable
        through its descriptor whatever its mode becomes (POSIX)."""
        for h in list(self._open_by_ino.get(ino, ())):
            raw = h.raw
            if raw.handle or h.flags & os.O_ACCMODE == os.O_RDONLY:
                continue
            try:
                r = self.rpc("Open", pb.OpenRequest(
                    caller=self.own_caller(), ino=ino,
                    flags=h.flags & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC)))
                raw.handle = r.handle
            except FuseError as err:
                log.warning("cannot pin a handle for inode %d: %s", ino, err)

    def _fresh_attr(self, path: str, ino: int, caller: pb.Caller) -> pb.Attr:
        """The inode's current attributes from the namenode (close-to-open)."""
        try:
            return self._set_attr(self.rpc("GetAttr", pb.InodeRequest(caller=caller, ino=ino)))
        except FuseError as err:
            if err.errno != errno.ENOENT:
                raise
            self._forget_path(path)
            return self._lookup(path, caller)

    def _keep_alive(self, ino: int) -> None:
        """Take a namenode handle for ``ino`` if only handle-less opens hold it (its last
        name is about to be removed through this mount)."""
        hs = self._open_by_ino.get(ino)
        if not hs or ino in self._keepalive or any(h.raw.handle for h in hs):
            return
        try:
            r = self.rpc("Open", pb.OpenRequest(caller=self.own_caller(), ino=ino,
                                                flags=os.O_RDONLY))
            self._keepalive[ino] = r.handle
        except FuseError as err:
            log.warning("cannot keep inode %d alive for its open files: %s", ino, err)

    def create(self, path: str, mode: int, fi: Any) -> int:
        caller = self.caller()
        flags = fi.flags
        # The creator owns the new file: without a handle, its own mode bits must let it
        # do what it opened the file for (a file made 0444 for writing takes a handle).
        acc = flags & os.O_ACCMODE
        need = {os.O_RDONLY: 0o400, os.O_WRONLY: 0o200}.get(acc, 0o600)
        handle = not (self._lazy_reads and (caller.uid == 0 or mode & need == need))
        reply = self._retry_stale_parent(path, caller, lambda p, n: self.rpc(
            "Create", pb.CreateRequest(caller=caller, parent=p, name=n,
                                       mode=(mode & 0o7777) | stat_mod.S_IFREG, umask=0,
                                       exclusive=bool(flags & os.O_EXCL), open=handle,
                                       flags=flags & ~(os.O_CREAT | os.O_EXCL))))
        self._remember(path, reply.attr)
        self._nocap[reply.attr.ino] = time.monotonic() + NOCAP_TTL  # a new file has no xattrs
        self._new_handle(path, reply, flags, caller, fi)
        return 0

    def _bump(self, ino: int) -> None:
        self._epoch[ino] = self._epoch.get(ino, 0) + 1

    def _handle(self, fi: Any) -> Handle:
        h = self._handles.get(fi.fh if not isinstance(fi, int) else fi)
        if h is None:
            raise FuseError(errno.EBADF)
        if h.error is not None:
            err, h.error = h.error, None
            raise err
        return h

    def read(self, path: str | None, size: int, offset: int,
             fi: Any) -> bytes | bytearray | memoryview:
        h = self._handle(fi)
        if h.ino in self._dirty:
            self._flush_ino(h.ino)
        h.did_read = True
        h.io_ns = time.time_ns()
        epoch = self._epoch.get(h.ino, 0)
        with h.lock:
            rbuf, rbuf_off, rbuf_epoch = h.rbuf, h.rbuf_off, h.rbuf_epoch
        if rbuf_epoch == epoch:
            start = offset - rbuf_off
            if 0 <= start and offset + size <= rbuf_off + len(rbuf):
                return memoryview(rbuf)[start:start + size]
        # No lock around the read: the kernel's read-ahead sends several reads of one
        # file at once, and the data path serves them in parallel. The result may be a
        # view of an immutable block buffer; the binding copies it into the reply.
        want = max(size, self.readahead)
        read_view = getattr(h.raw, "read_view", None)
        data = read_view(offset, want) if read_view is not None \
            else h.raw._read_at(offset, want)
        if len(data) > size:
            with h.lock:
                h.rbuf, h.rbuf_off, h.rbuf_epoch = data, offset, epoch
            return memoryview(data)[:size]
        return data

    def write(self, path: str | None, data: bytes | memoryview, offset: int, fi: Any) -> int:
        """``data`` may be a view of libfuse's request buffer: it is copied, never kept."""
        h = self._handle(fi)
        n = len(data)
        others = self._dirty.get(h.ino)
        if others and (len(others) > 1 or h not in others):
            # writes through several handles of one file must reach it in the order they
            # were made: commit what the other handles hold before buffering this one
            for o in list(others):
                if o is not h:
                    with o.lock:
                        try:
                            self._commit(o)
                        except OSError as err:
                            o.error = err
        with h.lock:
            h.did_write = True
            h.io_ns = time.time_ns()
            if h.buf and (h.append or h.buf_off + len(h.buf) == offset) \
                    and len(h.buf) + n <= self.write_buffer:
                h.buf += data
            else:
                self._push(h)
                if n >= min(self.write_buffer, LARGE_WRITE):
                    self._write_raw(h, offset, data)
                else:
                    h.buf = bytearray(data)
                    h.buf_off = offset
            self._dirty.setdefault(h.ino, set()).add(h)
        self._bump(h.ino)
        return n

    def _write_raw(self, h: Handle, offset: int, data: bytes | bytearray | memoryview) -> None:
        if type(data) is not bytes and not hasattr(h.raw, "_write_blocks"):
            data = bytes(data)  # (the block data path takes any buffer)
        try:
            h.raw._write_at(offset, data, h.append)
        except OSError as err:
            self._forget_ino(h.ino)
            raise FuseError(err.errno or errno.EIO, str(err)) from None
        self._forget_ino(h.ino)  # size and times changed (maybe not committed yet)

    def _wrote(self, h: Handle) -> None:
        """After a commit: the handle's view of the attributes is the namenode's."""
        attr = getattr(h.raw, "attr", None)
        if attr is not None and attr.ino == h.ino:
            self._set_attr(attr)
            self._seen_version[h.ino] = {h.path: attr.version}
        else:
            self._forget_ino(h.ino)
            self._seen_version.pop(h.ino, None)
        if h.ino in self._links:
            self._other_names_changed(h.ino, h.path)
        self._refresh_others(h.ino, h)

    def _refresh_others(self, ino: int, writer: Handle | None) -> None:
        """Other open files of ``ino`` in this mount must see what was just committed at
        once (processes on one machine share one file), not only at their next open: their
        data path must drop the layout, size and version it cached (a partial-chunk write
        based on a stale size would write stale bytes back)."""
        attr = getattr(writer.raw, "attr", None) if writer is not None else None
        for o in list(self._open_by_ino.get(ino, ())):
            if o is writer:
                continue
            o.rbuf, o.rbuf_epoch = b"", -1
            raw = o.raw
            inval = getattr(raw, "invalidate", None)
            if inval is not None:
                inval(attr)
                continue
            if not hasattr(raw, "_forget_layout"):
                if attr is not None:
                    raw.attr = attr
                continue
            with raw._lock:
                if getattr(raw, "_dirty", None) or getattr(raw, "_uploads", None) \
                        or getattr(raw, "_pend", None) is not None:
                    continue  # committed before this handle writes again (see write())
                if attr is None:
                    attr = self.rpc("GetAttr", pb.InodeRequest(caller=self.own_caller(),
                                                               ino=ino))
                raw.attr = attr
                raw._inline = attr.inline
                raw._bsize = attr.size
                raw._version = attr.version
                raw._inline_data = b""
                raw._fresh = False
                raw._forget_layout()
                raw._bs = 0  # reload the layout at the next read or write

    def _push(self, h: Handle) -> None:
        """Send the handle's buffered writes to its file (caller holds ``h.lock``)."""
        if not h.buf:
            return
        data, off = h.buf, h.buf_off
        h.buf = bytearray()  # (the old buffer is handed over, not copied)
        self._write_raw(h, off, data)

    def _commit(self, h: Handle) -> None:
        """Push buffered writes and make them visible to everyone (the data path commits
        what it buffers, e.g. blocks); caller holds ``h.lock``."""
        try:
            self._push(h)
            if h.did_write:
                h.raw._flush_data()
        except OSError as err:
            self._forget_ino(h.ino)
            raise FuseError(err.errno or errno.EIO, str(err)) from None
        finally:
            s = self._dirty.get(h.ino)
            if s is not None:
                s.discard(h)
                if not s:
                    self._dirty.pop(h.ino, None)
        if h.did_write:
            self._wrote(h)

    def _flush_ino(self, ino: int) -> None:
        """Commit every buffered write to ``ino`` (before anything reads its data or size)."""
        for h in list(self._dirty.get(ino, ())):
            with h.lock:
                try:
                    self._commit(h)
                except OSError as err:
                    h.error = err  # reported to the writer at its next write/flush/close

    def flush(self, path: str | None, fi: Any) -> int:
        h = self._handle(fi)
        with h.lock:
            self._commit(h)
            if h.did_write or h.did_read:
                h.io_ns = time.time_ns()  # close(2): the process is still here, in its run
        return 0

    def fsync(self, path: str | None, datasync: int, fi: Any) -> int:
        h = self._handle(fi)
        with h.lock:
            self._commit(h)
        return 0

    def _release_handle(self, h: Handle) -> None:
        self._handles.pop(h.fh, None)
        hs = self._open_by_ino.get(h.ino)
        if hs is not None:
            hs.discard(h)
            if not hs:
                self._open_by_ino.pop(h.ino, None)
                kept = self._keepalive.pop(h.ino, None)
                if kept:
                    try:
                        self.rpc("Release", pb.ReleaseRequest(caller=self.own_caller(),
                                                              handle=kept))
                    except FuseError:
                        pass  # the session's lease reclaims it
        err: OSError | None = h.error
        with h.lock:
            try:
                self._commit(h)
            except OSError as exc:
                err = err or exc
            try:
                if h.raw.handle:
                    h.raw.close()
                else:  # no namenode handle to release
                    io.RawIOBase.close(h.raw)
            except OSError as exc:
                err = err or exc
        if self.recorder is not None:
            self.recorder.closed(h)
        if err is not None:
            raise FuseError(err.errno or errno.EIO, str(err))

    def release(self, path: str | None, fi: Any) -> int:
        h = self._handles.get(fi.fh)
        if h is None:
            return 0
        self._release_handle(h)
        return 0

    def fallocate(self, path: str | None, mode: int, offset: int, size: int, fi: Any) -> int:
        h = self._handle(fi)
        if offset < 0 or size <= 0:
            raise FuseError(errno.EINVAL)
        if mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
            raise FuseError(errno.EOPNOTSUPP)
        caller = self.caller()
        with h.lock:
            h.did_write = True
            self._commit(h)
            cur = self._attr_of_ino(h.ino, caller).size
            end = offset + size
            if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
                # metafs has no preallocation: zeroing is writing zeros (holes read as zeros)
                stop = min(end, cur) if mode & FALLOC_FL_KEEP_SIZE else end
                pos = offset
                chunk = 1 << 20
                while pos < stop:
                    n = min(chunk, stop - pos)
                    h.raw._write_at(pos, bytes(n), False)
                    pos += n
                h.raw._flush_data()
                self._wrote(h)
            elif not mode & FALLOC_FL_KEEP_SIZE and end > cur:
                h.raw._truncate(end)
                self._wrote(h)
        self._bump(h.ino)
        return 0

    # ------------------------------------------------------------------ other mounts
    def _follow(self) -> None:
        """Drop what this mount caches about inodes other clients change (from the
        changelog), so several mounts of one namenode see each other's changes."""
        after = None
        own = self.own_caller()
        wait = max(1, self.settings.fuse_follow_poll_ms)
        while not self._stop.is_set():
            try:
                if after is None:
                    after = self.transport.call("ChangelogHead", pb.HeadRequest(caller=own)).head
                r = self.transport.call("ReadChangelog", pb.ReadChangelogRequest(
                    caller=own, after=after, limit=1000, wait_ms=wait))
            except Exception:
                # the namenode is away: whatever changed meanwhile is unknown
                self.forget_all()
                after = None
                self._stop.wait(1.0)
                continue
            if r.records:
                self._apply_changes(r.records)
                after = r.records[-1].seq

    def _apply_changes(self, records: Any) -> None:
        kernel: set[str] = set()
        for rec in records:
            if rec.client_id == self.client_id or rec.op in (pb.OP_ACCESS, pb.OP_RUN):
                continue
            for ino in (rec.ino, rec.target_ino, rec.parent, rec.old_parent):
                if ino:
                    self._forget_ino(ino, xattrs=True)
                    p = self._path_of.get(ino)
                    if p is not None:
                        kernel.add(p)
            if rec.op in (pb.OP_WRITE, pb.OP_SETATTR, pb.OP_FREE) and rec.ino:
                self._bump(rec.ino)
                self._seen_version.pop(rec.ino, None)
                if rec.ino in self._open_by_ino:
                    self._refresh_others(rec.ino, None)
            for parent, name in ((rec.parent, rec.name), (rec.old_parent, rec.old_name)):
                if parent and name:
                    pp = self._path_of.get(parent)
                    if pp is not None:
                        path = posixpath.join(pp, name)
                        self._forget_path(path, subtree=rec.op in (pb.OP_RENAME, pb.OP_RMDIR))
            if rec.op == pb.OP_RENAME:
                # paths remembered for inodes under a moved directory are now wrong
                self._path_of = {k: v for k, v in self._path_of.items() if k == ROOT_INO
                                 or k in (rec.parent, rec.old_parent)
                                 or (self._names.get(v, (0,))[0] == k)}
        inval = self.invalidate_kernel
        if inval is not None:
            for p in kernel:
                try:
                    inval(p)
                except Exception:  # the kernel may not know the path: nothing cached
                    pass
