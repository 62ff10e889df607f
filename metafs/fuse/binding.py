"""mfusepy on libfuse 3, with the pieces mfusepy 3.1 leaves out.

mfusepy loads libfuse 2 whenever it is installed unless ``FUSE_LIBRARY_NAME=fuse3`` is set
before it is imported, so this module sets it first. Its libfuse 3 callbacks drop the
rename flags (RENAME_NOREPLACE, RENAME_EXCHANGE) and the open file of truncate, chmod,
chown and utimens, and turn UTIME_NOW/UTIME_OMIT into bogus times; :class:`MetafsFUSE`
overrides those callbacks to read the low-level arguments itself. It also fills ``struct
stat`` straight from the namenode's attributes, pins the Python thread state of libfuse's
worker threads, and sets the connection and config options (page cache kept across writes,
1 MiB writes, timeouts, use_ino, nullpath_ok) in init. With ``fuse_global_locks`` it
registers the lock and flock callbacks (with the kernel's lock owner, which mfusepy's
operations-level API drops) and hands them to :class:`metafs.fuse.locks.MountLocks`.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import threading
import time
from typing import Any, Callable

os.environ["FUSE_LIBRARY_NAME"] = "fuse3"
os.environ.pop("FUSE_LIBRARY_PATH", None)

import mfusepy  # noqa: E402

from ..buffers import memmove  # noqa: E402
from ..config import Settings  # noqa: E402
from ..metrics import FuseCallMetrics  # noqa: E402
from .cache import kernel_timeouts  # noqa: E402
from .follower import follows_changes  # noqa: E402

if mfusepy.fuse_version_major != 3:  # pragma: no cover - depends on the machine
    raise ImportError(f"metafs needs libfuse 3 (found {mfusepy.fuse_version_major}."
                      f"{mfusepy.fuse_version_minor}); install the fuse3 package")

log = logging.getLogger("metafs.fuse")

_libfuse = mfusepy._libfuse
_libfuse.fuse_invalidate_path.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_libfuse.fuse_invalidate_path.restype = ctypes.c_int
_libfuse.fuse_interrupted.argtypes = []
_libfuse.fuse_interrupted.restype = ctypes.c_int

# fuse_common.h capability bits (libfuse 3)
CAP_POSIX_LOCKS = 1 << 1
CAP_ATOMIC_O_TRUNC = 1 << 3
CAP_FLOCK_LOCKS = 1 << 10
CAP_AUTO_INVAL_DATA = 1 << 12
CAP_WRITEBACK_CACHE = 1 << 16
CAP_PARALLEL_DIROPS = 1 << 18


def fuse_interrupted() -> bool:
    """Whether the kernel interrupted the current request (a signal to its process)."""
    return bool(_libfuse.fuse_interrupted())


def fuse_context() -> tuple[int, int, int]:
    """(uid, gid, pid) of the process behind the current request."""
    ctx = _libfuse.fuse_get_context().contents
    return ctx.uid, ctx.gid, ctx.pid


_tls = threading.local()
_CALLS = FuseCallMetrics()
# METAFS_FUSE_COUNT_CALLS=1: count the kernel's calls by operation (logged at unmount)
CALL_COUNTS: dict[str, int] | None = {} if os.environ.get("METAFS_FUSE_COUNT_CALLS") else None
_PyGILState_Ensure = ctypes.pythonapi.PyGILState_Ensure
_PyGILState_Ensure.restype = ctypes.c_int


def _pin_thread_state() -> None:
    """Keep this libfuse worker thread's Python thread state alive between callbacks.

    A ctypes callback on a thread Python did not start gets a new thread state for each
    call, and so a fresh ``threading.local``: per-thread state (the embedded namenode
    marks the thread inside a transaction there) would be rebuilt, and leaked, on every
    request. One extra PyGILState_Ensure, never released, pins the thread state to the
    thread for its lifetime (libfuse keeps a fixed set of worker threads)."""
    if not getattr(_tls, "pinned", False):
        _PyGILState_Ensure()
        _tls.pinned = True


def set_kernel_readahead(dev: int, kb: int) -> bool:
    """Set the read-ahead window of the mount's backing device info (``dev`` is the
    mount's st_dev). Needs root; without it the kernel's default stays, and reads are
    only cut into more calls."""
    if kb <= 0:
        return False
    path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
    try:
        with open(path, "w") as fh:
            fh.write(f"{kb}\n")
        return True
    except OSError as exc:
        log.info("kernel read-ahead left at its default (%s: %s)", path, exc.strerror)
        return False


class MetafsFUSE(mfusepy.FUSE):
    """mfusepy's FUSE with complete libfuse 3 callbacks for metafs."""

    def _wrapper(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        _pin_thread_state()
        name = getattr(func, "__name__", "?")
        if CALL_COUNTS is not None:
            CALL_COUNTS[name] = CALL_COUNTS.get(name, 0) + 1
        t0 = time.perf_counter()
        result = super()._wrapper(func, *args, **kwargs)
        _CALLS.observe(name, time.perf_counter() - t0, result)  # Prometheus (metafs.metrics)
        return result

    def __init__(self, operations: Any, mountpoint: str, settings: Settings,
                 on_ready: Callable[[], None] | None = None, **options: Any) -> None:
        self._settings = settings
        self._mountpoint = mountpoint
        self._on_ready = on_ready
        self._fuse_ptr: int | None = None
        self._locks: Any = None
        if settings.fuse_global_locks:
            from .locks import MountLocks

            self._locks = MountLocks(operations, settings, interrupted=fuse_interrupted)
            # mfusepy registers a libfuse callback only for methods the operations object
            # has; the calls themselves come through lock()/flock() below
            operations.lock = self._locks.lock
            operations.flock = self._locks.flock
        super().__init__(operations, mountpoint, raw_fi=True, **options)

    def _d(self, path: bytes | None) -> str | None:
        return None if path is None else path.decode(self.encoding, self.errors)

    # -- init: connection and config options
    def init_fuse_3(self, conn: Any, config: Any) -> None:
        s = self._settings
        c = conn.contents
        off = CAP_AUTO_INVAL_DATA | CAP_WRITEBACK_CACHE
        on = [CAP_ATOMIC_O_TRUNC, CAP_PARALLEL_DIROPS]
        if self._locks is not None:  # the kernel sends fcntl and flock locks to the mount
            on += [CAP_POSIX_LOCKS, CAP_FLOCK_LOCKS]
            if c.capable & (CAP_POSIX_LOCKS | CAP_FLOCK_LOCKS) != (CAP_POSIX_LOCKS
                                                                  | CAP_FLOCK_LOCKS):
                log.warning("the kernel cannot pass locks to the mount: fcntl/flock locks "
                            "stay local to this machine")
        else:  # the kernel keeps locks itself (coherent within this machine only)
            off |= CAP_POSIX_LOCKS | CAP_FLOCK_LOCKS
        want = c.want & ~off
        for cap in on:
            if c.capable & cap:
                want |= cap
        c.want = want
        if s.fuse_max_write:
            c.max_write = min(int(s.fuse_max_write), 1 << 20)
        c.max_background = 64
        c.congestion_threshold = 48
        c.time_gran = 1
        if config:
            cfg = config.contents
            from .mount import default_permissions

            # Several users and no kernel checks (a project gateway): a name or attributes
            # the kernel cached for one user would answer another without asking the
            # mount, and so without the namenode's check of that user. Cache none.
            shared = bool(s.fuse_allow_other) and not default_permissions(s)
            entry, attr = kernel_timeouts(s, follows_changes(s))
            cfg.entry_timeout = 0.0 if shared else entry
            cfg.attr_timeout = 0.0 if shared else attr
            cfg.negative_timeout = 0.0 if shared else float(s.fuse_negative_timeout)
            # open files whose name is removed get a .fuse_hidden name that exists only in
            # the mount (MetafsOperations._hide): hard_remove would make fstat fail
            cfg.hard_remove = 0
            cfg.use_ino = 1
            cfg.readdir_ino = 0
            cfg.nullpath_ok = 1
            cfg.kernel_cache = 0  # the mount decides keep_cache per open (data version)
            cfg.auto_cache = 0
            cfg.direct_io = 0
            cfg.intr = 0
        self._fuse_ptr = _libfuse.fuse_get_context().contents.fuse
        self.operations.kernel.invalidate = self._invalidate
        self.operations.start()
        threading.Thread(target=self._signal_ready, name="metafs-ready", daemon=True).start()

    def _signal_ready(self) -> None:
        try:
            st = os.stat(self._mountpoint)  # returns once the kernel has our INIT reply
            set_kernel_readahead(st.st_dev, int(self._settings.fuse_kernel_readahead_kb))
        except OSError as exc:
            log.warning("mount point check failed: %s", exc)
        if self._on_ready is not None:
            self._on_ready()

    def _invalidate(self, path: str) -> None:
        if self._fuse_ptr:
            _libfuse.fuse_invalidate_path(self._fuse_ptr, path.encode(self.encoding,
                                                                      self.errors))

    def destroy(self, private_data: Any) -> None:
        if CALL_COUNTS is not None:
            log.warning("FUSE calls: %s", sorted(CALL_COUNTS.items(), key=lambda kv: -kv[1]))
        try:
            self.operations.stop()
        finally:
            if self._locks is not None:
                self._locks.close()  # the session's locks go now, not when its lease ends

    # -- locks (metafs/fuse/locks.py): the kernel's lock owner is in fuse_file_info
    def lock(self, path: bytes | None, fip: Any, cmd: int, lock: Any) -> int:
        return self._locks.posix(fip.contents.fh, fip.contents.lock_owner, cmd, lock.contents)

    def flock(self, path: bytes | None, fip: Any, op: int) -> int:
        return self._locks.bsd(fip.contents.fh, fip.contents.lock_owner, op)

    def release(self, path: bytes | None, fip: Any) -> int:
        fi = fip.contents
        fh, owner, flock_release = fi.fh, fi.lock_owner, bool(fi.flock_release)
        try:
            return super().release(path, fip)
        finally:
            if self._locks is not None:
                try:
                    self._locks.released(fh, owner, flock_release)
                except Exception:
                    log.exception("dropping the locks of a released file failed")

    # -- the data path without Python copies: mfusepy copies every write into a new bytes
    # object (ctypes.string_at, holding the interpreter lock) and needs bytes back from
    # read; here a write hands the operations a view of libfuse's buffer (valid for the
    # call only: the data path copies what it keeps) and a read's result, which may be a
    # view of a block in memory, is copied into libfuse's buffer once.
    def read(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        ret = self.operations.read(self._d(path), size, offset, fip.contents)
        if not ret:
            return 0
        n = len(ret)
        if n > size:
            raise ValueError(f"read returned {n} bytes where {size} were asked for")
        memmove(ctypes.cast(buf, ctypes.c_void_p).value, ret, n)
        return n

    def write(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        if not size:
            return self.operations.write(self._d(path), b"", offset, fip.contents)
        addr = ctypes.cast(buf, ctypes.c_void_p).value
        view = memoryview((ctypes.c_ubyte * size).from_address(addr)).cast("B")
        try:
            return self.operations.write(self._d(path), view, offset, fip.contents)
        finally:
            view.release()

    def readdir_fuse_3(self, path: bytes | None, buf: Any, filler: Any, offset: int,
                       fip: Any, flags: int) -> int:
        """Directory entries into libfuse's buffer: only the mode and inode number reach
        the kernel, so one ``struct stat`` is reused and no dict is built per entry."""
        st = mfusepy.c_stat()
        enc, errs = self.encoding, self.errors
        for name, mode, ino, off in self.operations.readdir_entries(fip.contents.fh, offset):
            st.st_mode = mode
            st.st_ino = ino
            if filler(buf, name.encode(enc, errs), st, off, 0) != 0:
                break
        return 0

    # -- the callbacks mfusepy 3.1 gets wrong on libfuse 3
    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        return self.operations.rename(self._d(old), self._d(new), flags)

    def open(self, path: bytes, fip: Any) -> int:
        try:
            return super().open(path, fip)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            # The kernel sends OPEN only for a name it has cached: one that is gone means
            # another client removed it (the kernel's dentry outlives that until the entry
            # timeout), or it was removed here and no new file took it (an open of a hidden
            # name goes to the name's new file: FileOperations.open). ESTALE makes the
            # kernel look the name up again, so an O_CREAT open creates the file and any
            # other open fails with ENOENT after a fresh lookup.
            raise OSError(errno.ESTALE, "the name was removed by another client") from None

    @staticmethod
    def _fh(fip: Any) -> int | None:
        return fip.contents.fh if fip else None

    def chmod_fuse_3(self, path: bytes | None, mode: int, fip: Any) -> int:
        return self.operations.chmod(self._d(path), mode, self._fh(fip))

    def chown_fuse_3(self, path: bytes | None, uid: int, gid: int, fip: Any) -> int:
        uid = -1 if uid in (-1, 0xFFFFFFFF) else uid
        gid = -1 if gid in (-1, 0xFFFFFFFF) else gid
        return self.operations.chown(self._d(path), uid, gid, self._fh(fip))

    def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
        return self.operations.truncate(self._d(path), length, self._fh(fip))

    def utimens_fuse_3(self, path: bytes | None, buf: Any, fip: Any) -> int:
        times = None
        if buf:
            a, m = buf.contents.actime, buf.contents.modtime
            times = ((a.tv_sec, a.tv_nsec), (m.tv_sec, m.tv_nsec))
        return self.operations.utimens_raw(self._d(path), times, self._fh(fip))

    def fgetattr(self, path: bytes | None, buf: Any, fip: Any) -> int:
        a = self.operations.getattr_pb(self._d(path), self._fh(fip))
        ctypes.memset(buf, 0, ctypes.sizeof(mfusepy.c_stat))
        st = buf.contents
        st.st_ino = a.ino
        st.st_mode = a.mode
        st.st_nlink = a.nlink
        st.st_uid = a.uid
        st.st_gid = a.gid
        st.st_rdev = a.rdev
        st.st_size = a.size
        st.st_blksize = 65536
        st.st_blocks = (a.size + 511) // 512
        st.st_atimespec.tv_sec, st.st_atimespec.tv_nsec = divmod(a.atime_ns, 1_000_000_000)
        st.st_mtimespec.tv_sec, st.st_mtimespec.tv_nsec = divmod(a.mtime_ns, 1_000_000_000)
        st.st_ctimespec.tv_sec, st.st_ctimespec.tv_nsec = divmod(a.ctime_ns, 1_000_000_000)
        return 0
