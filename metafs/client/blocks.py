"""What a client shares between its open files in blocks: the block stores it talks to,
the thread pool that moves block data, the local block cache, and the complete layouts of
recently seen file versions (see :class:`BlockContext`)."""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable
from urllib.parse import urlparse

from ..blockstore import open_store
from ..blockstore.base import BlockStore
from ..blockstore.cache import DiskCache
from ..blockstore.presigned import PresignedStore
from ..buffers import address
from ..config import Settings
from ..proto import metafs_pb2 as pb

log = logging.getLogger("metafs.client.blocks")

WINDOW = 1024  # chunks per GetLayout call
LAYOUTS = 4096  # complete layouts a client remembers (see BlockContext.cached_layout)
CHUNK_BUFFERS = 8  # zeroed chunk buffers a client keeps for reuse by writers


class Layout:
    """Everything a reader needs of one version of a file in blocks, complete."""

    __slots__ = ("version", "size", "block_size", "store_url", "refs")

    def __init__(self, version: int, size: int, block_size: int, store_url: str,
                 refs: dict[int, pb.BlockRef]) -> None:
        self.version = version
        self.size = size
        self.block_size = block_size
        self.store_url = store_url
        self.refs = refs


class BlockContext:
    """Per-client shared parts: the stores, the thread pool, the disk cache, what the client
    learned of the file system (chunk size, store URL) and complete layouts of recently
    seen file versions.

    A layout is cached by inode and data version: every change of a file's data or size
    bumps its version and inode numbers are never reused, so a cached layout of the version
    an Open reports is exactly what GetLayout would return (blocks are immutable, and blocks
    of a version that is still current are never collected). A handle that finds its
    version here skips the GetLayout round trip; a handle that wrote the whole layout of a
    new version (a new file, or one nobody else committed to in between) puts it here."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stores: dict[str, BlockStore] = {}
        self._lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max(4, self.settings.block_parallel * 2),
                                       thread_name_prefix="metafs-blockio")
        self._disk_cache: DiskCache | None = None
        self._disk_cache_for: str | None = None
        self.block_size: int | None = None     # the file system's chunk size, once seen
        self.store_url: str | None = None      # the file system's store, once seen
        self._layouts: OrderedDict[int, Layout] = OrderedDict()
        self._chunk_bufs: list[bytearray] = []  # zeroed whole-chunk write buffers, for reuse
        self._filling: set[str] = set()  # blocks being fetched into the disk cache

    def learn(self, block_size: int, store_url: str) -> None:
        """Remember the file system's chunk size and store (from a layout reply)."""
        self.block_size = block_size
        self.store_url = store_url

    def store(self, url: str) -> BlockStore:
        with self._lock:
            st = self._stores.get(url)
            if st is None:
                if self.settings.block_presign:
                    st = PresignedStore(url, self.settings)
                else:
                    st = open_store(url, self.settings)
                self._stores[url] = st
            return st

    def disk_cache(self, store_url: str) -> DiskCache | None:
        """The local block cache for blocks of ``store_url`` (None: no cache). With
        ``block_cache_dir = "auto"`` (the default) blocks of a remote store (S3) are cached
        under the user's cache directory and a local store is not cached."""
        with self._lock:
            if self._disk_cache_for is None:
                self._disk_cache_for = store_url
                root = cache_dir_for(self.settings, store_url)
                if root:
                    try:
                        self._disk_cache = DiskCache(root, self.settings.block_cache_size,
                                                     self.settings.block_cache_free_ratio,
                                                     namespace=store_url)
                    except OSError as exc:
                        log.warning("no local block cache: cannot use %s: %s", root, exc)
            return self._disk_cache

    def fill_cache(self, key: str, fetch: Callable[[], object]) -> bool:
        """Run ``fetch`` (which brings block ``key`` whole into the disk cache) in the
        background, unless it is already under way or ``block_cache_fill`` fetches are.
        True when it was started."""
        limit = self.settings.block_cache_fill
        with self._lock:
            if limit <= 0 or key in self._filling or len(self._filling) >= limit:
                return False
            self._filling.add(key)

        def run() -> None:
            try:
                fetch()
            except Exception as exc:  # noqa: BLE001 - only a cache fill: the read succeeded
                log.info("could not cache block %s: %s", key, exc)
            finally:
                with self._lock:
                    self._filling.discard(key)

        self.pool.submit(run)
        return True

    def cached_layout(self, ino: int, version: int) -> Layout | None:
        with self._lock:
            lay = self._layouts.get(ino)
            if lay is None or lay.version != version:
                return None
            self._layouts.move_to_end(ino)
            return lay

    def remember_layout(self, ino: int, layout: Layout) -> None:
        with self._lock:
            self._layouts[ino] = layout
            self._layouts.move_to_end(ino)
            while len(self._layouts) > LAYOUTS:
                self._layouts.popitem(last=False)

    def chunk_buffer(self, size: int) -> bytearray:
        """A zeroed buffer of ``size`` bytes for a chunk being written: a recycled one when
        there is one (no allocation, no page faults, no memset under the interpreter
        lock), else a new one."""
        with self._lock:
            bufs = self._chunk_bufs
            for i in range(len(bufs) - 1, -1, -1):
                if len(bufs[i]) == size:
                    return bufs.pop(i)
        return bytearray(size)

    def recycle_chunk_buffer(self, buf: bytearray) -> None:
        """Take back a chunk buffer nothing refers to any more (its upload is done):
        zeroed here (on the upload's thread, without the interpreter lock) and kept for
        the next chunk, up to ``CHUNK_BUFFERS``."""
        with self._lock:
            if len(self._chunk_bufs) >= CHUNK_BUFFERS:
                return
        ctypes.memset(address(buf), 0, len(buf))
        with self._lock:
            if len(self._chunk_bufs) < CHUNK_BUFFERS:
                self._chunk_bufs.append(buf)

    def forget_layout(self, ino: int) -> None:
        with self._lock:
            self._layouts.pop(ino, None)


def cache_dir_for(settings: Any, store_url: str) -> str:
    """The block cache directory to use for ``store_url`` ("" for none)."""
    d = settings.block_cache_dir.strip()
    if d.lower() in ("", "off", "none"):
        return ""
    if d.lower() == "auto":
        if urlparse(store_url).scheme == "file":
            return ""  # a local directory needs no second copy on the same disk
        import platformdirs

        d = os.path.join(platformdirs.user_cache_dir("metafs", appauthor=False), "blocks")
    return d

