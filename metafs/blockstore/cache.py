"""Block caches for readers: a size-bounded directory on local disk and a small in-memory
LRU. Blocks are immutable, so a cached block never goes stale; a cached block is checked
against its checksum whenever it is used, and dropped when it fails."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path

from ..metrics import CacheMetrics
from .local import write_all

log = logging.getLogger("metafs.blockstore.cache")
_MEM = CacheMetrics("memory")
_DISK = CacheMetrics("disk")
RECENCY_SLACK = 60.0  # a ranged read refreshes a cached block's recency when older than this


class MemoryCache:
    """Least-recently-used blocks in memory, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, max_bytes)
        self._d: OrderedDict[str, bytes] = OrderedDict()
        self._used = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            v = self._d.get(key)
            if v is not None:
                self._d.move_to_end(key)
        _MEM.lookup(v is not None)
        return v

    def put(self, key: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self._lock:
            before = self._used
            old = self._d.pop(key, None)
            if old is not None:
                self._used -= len(old)
            self._d[key] = data
            self._used += len(data)
            while self._used > self.max_bytes and self._d:
                _, v = self._d.popitem(last=False)
                self._used -= len(v)
                _MEM.evictions.inc()
            _MEM.bytes.inc(self._used - before)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()
            _MEM.bytes.dec(self._used)
            self._used = 0


class DiskCache:
    """Whole blocks as files in a local directory, at most ``max_bytes`` in total, and never
    filling its disk past ``1 - free_ratio`` of its capacity; the least recently used go
    first. Shared safely by several processes (writes are atomic renames; eviction
    tolerates files another process removed)."""

    def __init__(self, root: str | os.PathLike[str], max_bytes: int,
                 free_ratio: float = 0.0, namespace: str = "") -> None:
        self.root = Path(root)
        self.namespace = namespace  # e.g. the store's URL: keys are unique per store only
        self.max_bytes = max(0, max_bytes)
        self.free_ratio = min(max(0.0, free_ratio), 0.99)
        self.root.mkdir(parents=True, exist_ok=True)
        self._prefix = os.path.join(str(self.root), "")
        self._lock = threading.Lock()
        self._used = sum(p.stat().st_size for p in self.root.glob("*/*") if p.is_file())
        _DISK.bytes.inc(self._used)

    def _path(self, key: str) -> Path:
        return Path(self._file(key))

    def _file(self, key: str) -> str:
        """The file of block ``key`` as a string (a random read costs less without a
        :class:`Path`)."""
        name = f"{self.namespace}\0{key}" if self.namespace else key
        h = hashlib.sha256(name.encode()).hexdigest()
        return f"{self._prefix}{h[:2]}/{h[2:]}"

    @property
    def used_bytes(self) -> int:
        return self._used

    def get(self, key: str) -> bytes | None:
        p = self._path(key)
        try:
            with open(p, "rb") as fh:
                data = fh.read()
            os.utime(p)  # recency for eviction
            _DISK.lookup(True)
            return data
        except FileNotFoundError:
            _DISK.lookup(False)
            return None
        except OSError as exc:
            log.warning("block cache read of %s failed: %s", key, exc)
            return None

    def get_range(self, key: str, start: int, end: int) -> bytes | None:
        """Bytes ``[start, end)`` of a cached block (None when it is not cached or is
        shorter than ``end``). A block only read in ranges is in use too: its recency is
        refreshed, at most once a ``RECENCY_SLACK``, so eviction does not take it first."""
        try:
            fd = os.open(self._file(key), os.O_RDONLY)
        except FileNotFoundError:
            _DISK.lookup(False)
            return None
        except OSError as exc:
            log.warning("block cache read of %s failed: %s", key, exc)
            return None
        try:
            data = os.pread(fd, end - start, start)
            if time.time() - os.fstat(fd).st_mtime > RECENCY_SLACK:
                os.utime(fd)
        except OSError as exc:
            log.warning("block cache read of %s failed: %s", key, exc)
            return None
        finally:
            os.close(fd)
        _DISK.lookup(len(data) == end - start)
        return data if len(data) == end - start else None

    def _disk_full(self, incoming: int) -> bool:
        """Would storing ``incoming`` more bytes leave less than ``free_ratio`` free?"""
        if not self.free_ratio:
            return False
        try:
            st = os.statvfs(self.root)
        except OSError:
            return False
        return (st.f_bavail * st.f_frsize - incoming) < self.free_ratio * st.f_blocks * st.f_frsize

    def discard(self, key: str) -> None:
        p = self._path(key)
        try:
            size = p.stat().st_size
            p.unlink()
            with self._lock:
                self._used -= size
            _DISK.bytes.dec(size)
        except OSError:
            pass

    def put(self, key: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        p = self._path(key)
        if p.exists():
            return
        if self._disk_full(len(data)):
            self._evict(extra=len(data))
            if self._disk_full(len(data)):
                return  # the cache never takes a disk's last free space
        try:
            p.parent.mkdir(exist_ok=True)
            tmp = p.parent / f".{uuid.uuid4().hex}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                write_all(fd, data)
            finally:
                os.close(fd)
            os.replace(tmp, p)
        except OSError as exc:  # a full or broken cache disk only costs speed
            log.warning("block cache write of %s failed: %s", key, exc)
            return
        with self._lock:
            self._used += len(data)
            over = self._used > self.max_bytes
        _DISK.bytes.inc(len(data))
        if over:
            self._evict()

    def _evict(self, extra: int = 0) -> None:
        with self._lock:
            files = []
            for p in self.root.glob("*/*"):
                try:
                    st = p.stat()
                except OSError:
                    continue
                files.append((st.st_mtime, st.st_size, p))
            files.sort()
            used = sum(f[1] for f in files)
            target = self.max_bytes * 9 // 10
            if extra:  # the disk is short of space: free what is needed
                target = max(0, min(target, used - extra))
            for _, size, p in files:
                if used <= target:
                    break
                try:
                    p.unlink()
                    used -= size
                    _DISK.evictions.inc()
                except OSError:
                    pass
            _DISK.bytes.inc(used - self._used)
            self._used = used
