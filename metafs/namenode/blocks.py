"""The namenode's side of block data: layouts, commits, truncation, freeing, presigning.

A file above the inline limit is a sequence of ``block_size`` chunks; chunk ``i`` is an
immutable block in the block store, mapped by a row of the ``blocks`` table. Clients
upload new blocks straight to the store and then call CommitBlocks, which, in one
transaction, checks that every new block is stored, swaps the chunk mappings, sets the size,
bumps the data version and appends an OP_WRITE record. Replaced blocks go to the
``block_garbage`` list and stay in the store for the grace period, so a reader that holds
an older layout is never torn; garbage collection (:mod:`metafs.namenode.gc`) removes
them afterwards.

The namenode moves block bytes only when a file crosses the inline limit by truncation
(at most ``inline_limit`` bytes); all other data flows between clients and the store.
"""

from __future__ import annotations

import errno
import logging
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.engine import Connection, Row

from ..blockstore import BlockStore, open_store
from ..blockstore.base import (BlockInfo, check_key, checksum, key_belongs_to, new_key,
                               parse_checksum, pieces_for, read_verified)
from ..errors import FsError
from ..posix import R, W, Cred, check
from ..proto import metafs_pb2 as pb
from . import schema
from .rows import BUMP, Tx, kill_priv, to_attr, update_inode
from .sql import Prepared

if TYPE_CHECKING:
    from .namespace import Namespace

log = logging.getLogger("metafs.namenode.blocks")

B = schema.blocks
G = schema.block_garbage
I = schema.inodes
FD = schema.file_data
C = schema.counters

STORAGE_INLINE, STORAGE_BLOCKS = 0, 1
MAX_FILE_SIZE = (1 << 63) - 1

_Q_BLOCK_KEYS = Prepared(select(B.c.key).where(B.c.ino == bindparam("ino")))
# A commit of a few blocks (most files: one) runs these per block, prepared, instead of
# building IN-list statements each time.
_FEW = 8
_Q_BLOCK_BY_KEY = Prepared(select(B.c.key, B.c.ino, B.c.idx).where(B.c.key == bindparam("key")))
_Q_FREED_KEY = Prepared(select(G.c.key).where(G.c.key == bindparam("key")))
_Q_BLOCK_AT = Prepared(select(B.c.idx, B.c.key).where(B.c.ino == bindparam("ino"),
                                                        B.c.idx == bindparam("idx")))
_Q_INSERT_BLOCK = Prepared(insert(B).values(
    ino=bindparam("ino"), idx=bindparam("idx"), key=bindparam("key"),
    length=bindparam("length"), checksum=bindparam("checksum")))
_Q_DELETE_DATA = Prepared(delete(FD).where(FD.c.ino == bindparam("ino")))


# Seconds a call waits for an unavailable block store before the namenode answers it as
# unavailable (its client tries the call again, for up to its failover_timeout; the client
# of an embedded namenode for up to s3_outage_timeout): far less than any client's call
# deadline, and no call holds a thread (or a transaction) for long.
STORE_WAIT = 3.0


def attach(namenode: Any) -> "BlockLayer":
    """Called by :class:`~metafs.namenode.server.Namenode`: the namespace already carries its
    block layer; start its background garbage collection (``gc_interval``; 0: off)."""
    layer: BlockLayer = namenode.ns.blocks
    layer.start_background_gc()
    return layer


class BlockLayer:
    """Block data for one :class:`~metafs.namenode.namespace.Namespace` (``ns.blocks``)."""

    def __init__(self, ns: "Namespace", store: BlockStore | None = None) -> None:
        self.ns = ns
        self.settings = ns.settings
        self._store = store
        self._block_size: int | None = None
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._gc_thread: threading.Thread | None = None
        self._gc_stop = threading.Event()
        ns.free_data_hooks.append(self._on_free)

    # ------------------------------------------------------------ plumbing
    @property
    def store(self) -> BlockStore:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    # a call that finds the store unavailable gives up well within its
                    # client's deadline, answered as unavailable: the client retries it
                    s = self.settings
                    wait = min(s.s3_outage_timeout, STORE_WAIT)
                    self._store = open_store(s.effective_blocks_url,
                                             s.with_(s3_outage_timeout=wait))
        return self._store

    @property
    def store_url(self) -> str:
        return self.settings.effective_blocks_url

    @property
    def block_size(self) -> int:
        """The file system's chunk size (see :meth:`_bs`)."""
        if self._block_size is None:
            return self.ns.engine.write(lambda c: self._bs(c, write=True))
        return self._block_size

    def _bs(self, conn: Connection, write: bool = False) -> int:
        """The chunk size, fixed in the database when first used (a later change of the
        setting must not reinterpret existing files). ``write``: inside a write
        transaction, which may record it."""
        if self._block_size is not None:
            return self._block_size
        val = conn.execute(select(C.c.value).where(C.c.name == "block_size")).scalar()
        if val is None:
            if not write:
                return self.settings.block_size  # nothing is stored in blocks yet
            # Several namenodes may record it at the same moment: the first one wins and
            # the others read what it recorded (no unique-key error).
            conn.execute(self.ns.engine.insert_if_absent(
                C, {"name": "block_size", "value": self.settings.block_size}, [C.c.name]))
            val = conn.execute(select(C.c.value).where(C.c.name == "block_size")).scalar()
            if val is None:  # pragma: no cover - a conflicting row must be visible now
                raise FsError(errno.EAGAIN, "the block size is being recorded; try again")
        val = int(val)
        if val <= 0:
            raise FsError(errno.EIO, f"bad block size {val} in the database")
        if val != self.settings.block_size:
            log.warning("block_size setting %d differs from the file system's %d; using %d",
                        self.settings.block_size, val, val)
        self._block_size = val
        return val

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max(1, self.settings.block_parallel),
                                                    thread_name_prefix="metafs-blocks")
        return self._pool

    def close(self) -> None:
        self.stop_background_gc()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        if self._store is not None:
            self._store.close()

    # ------------------------------------------------------------ seams of Namespace
    def _on_free(self, tx: "Tx", ino: int) -> None:
        """An inode is freed: its blocks go to the garbage list."""
        keys = [r[0] for r in _Q_BLOCK_KEYS.all(tx.conn, ino=ino)]
        if keys:
            self._to_garbage(tx, keys)
            tx.conn.execute(delete(B).where(B.c.ino == ino))

    @staticmethod
    def _to_garbage(tx: "Tx", keys: Iterable[str]) -> None:
        rows = [{"key": k, "freed_ns": tx.now} for k in keys]
        if rows:
            tx.conn.execute(insert(G), rows)

    def refuse_inline_write(self, row: Row, end: int) -> None:
        """Write (the inline data call) reaches a file in blocks or past the inline limit."""
        where = "is in blocks" if row.storage != STORAGE_INLINE else \
            f"would exceed the inline limit of {self.settings.inline_limit} bytes"
        raise FsError(errno.EFBIG, f"file data {where}: write it through the block store "
                      "(GetLayout, then CommitBlocks)")

    def grow_past_inline(self, tx: "Tx", row: Row, size: int) -> None:
        """Truncate makes an inline file larger than the inline limit: its bytes move to
        blocks (the caller sets the size)."""
        self._inline_to_blocks(tx, row.id, provided=set())

    def _inline_to_blocks(self, tx: "Tx", ino: int, provided: set[int]) -> None:
        data = self.ns.inline_data(tx.conn, ino)
        bs = self._bs(tx.conn, write=True)
        if data:
            for idx in range(0, pieces_for(len(data), bs)):
                if idx in provided:
                    continue
                chunk = data[idx * bs:(idx + 1) * bs]
                if chunk.count(0) == len(chunk):
                    continue
                key = new_key(ino, idx)
                self.store.put(key, chunk)
                tx.conn.execute(insert(B).values(
                    ino=ino, idx=idx, key=key, length=len(chunk),
                    checksum=checksum(chunk, self.settings.block_checksum_piece)))
        _Q_DELETE_DATA.run(tx.conn, ino=ino)
        update_inode(tx.conn, ino, {"storage": STORAGE_BLOCKS})

    def truncate(self, tx: "Tx", row: Row, size: int) -> None:
        """Truncate a file in blocks to ``size`` bytes (the caller sets the size column). At
        or under the inline limit the file's bytes move back inline."""
        bs = self._bs(tx.conn, write=True)
        if size <= self.settings.inline_limit:
            parts = []
            if size:
                maps = {r.idx: r for r in tx.conn.execute(
                    select(B).where(B.c.ino == row.id, B.c.idx < pieces_for(size, bs)))}
                for idx in range(pieces_for(size, bs)):
                    want = min(bs, size - idx * bs)
                    m = maps.get(idx)
                    got = b""
                    if m is not None:
                        got = read_verified(self.store, m.key, m.checksum, 0,
                                            min(want, m.length))
                    parts.append(got + b"\0" * (want - len(got)))
            data = b"".join(parts).rstrip(b"\0")
            keys = tx.conn.execute(select(B.c.key).where(B.c.ino == row.id)).scalars().all()
            self._to_garbage(tx, keys)
            tx.conn.execute(delete(B).where(B.c.ino == row.id))
            self.ns.store_inline(tx, row.id, data, had=False)
            tx.conn.execute(update(I).where(I.c.id == row.id).values(storage=STORAGE_INLINE))
            return
        self._drop_beyond(tx, row.id, size)

    def _drop_beyond(self, tx: "Tx", ino: int, size: int) -> None:
        """Unmap chunks past ``size`` and shorten the chunk that now ends the file."""
        bs = self._bs(tx.conn, write=True)
        n = pieces_for(size, bs)
        keys = tx.conn.execute(select(B.c.key).where(B.c.ino == ino, B.c.idx >= n)
                               ).scalars().all()
        if keys:
            self._to_garbage(tx, keys)
            tx.conn.execute(delete(B).where(B.c.ino == ino, B.c.idx >= n))
        if n:
            last = size - (n - 1) * bs
            tx.conn.execute(update(B).where(B.c.ino == ino, B.c.idx == n - 1,
                                            B.c.length > last).values(length=last))

    # ------------------------------------------------------------ RPCs
    def get_layout(self, cred: Cred, ino: int, handle: int = 0, first: int = 0,
                   count: int = 0, presign: bool = False) -> pb.LayoutReply:
        def fn(conn: Connection) -> pb.LayoutReply:
            bs = self._bs(conn)
            row = self.ns.live_inode(conn, ino)
            if stat.S_ISDIR(row.mode):
                raise FsError(errno.EISDIR, "is a directory")
            if not stat.S_ISREG(row.mode):
                raise FsError(errno.EINVAL, "not a regular file")
            # A handle open for writing may see the layout too: writers read the chunks
            # they partly change (read-modify-write), as the kernel's page cache does.
            if not (self.ns.readable_handle(conn, handle, ino)
                    or self.ns.writable_handle(conn, handle, ino)):
                check(cred, row, R, "read this file")
            reply = pb.LayoutReply(attr=to_attr(row), block_size=bs, store_url=self.store_url)
            if row.storage == STORAGE_INLINE:
                reply.inline_data = self.ns.inline_data(conn, ino)
                return reply
            q = select(B.c.idx, B.c.key, B.c.length, B.c.checksum).where(
                B.c.ino == ino, B.c.idx >= first)
            if count:
                q = q.where(B.c.idx < first + count)
            for r in conn.execute(q.order_by(B.c.idx)):
                reply.blocks.add(index=r.idx, key=r.key, length=r.length, checksum=r.checksum)
            return reply

        reply = self.ns.query(fn)
        if presign and reply.blocks:
            exp = self.settings.presign_expiry
            reply.urls.extend(self.store.presign(b.key, False, exp) for b in reply.blocks)
        return reply

    def presign(self, cred: Cred, ino: int, handle: int, keys: Sequence[str],
                put: bool) -> pb.PresignReply:
        """Presigned URLs for a client without store credentials: PUT for new blocks of a
        file it may write, GET for blocks the file references and it may read."""
        if len(keys) > 10_000:
            raise FsError(errno.E2BIG, "at most 10000 keys per presign call")
        for k in keys:
            check_key(k)
            if not key_belongs_to(k, ino):
                raise FsError(errno.EINVAL, f"block key {k} does not belong to inode {ino}")

        def fn(conn: Connection) -> None:
            row = self.ns.live_inode(conn, ino)
            if not stat.S_ISREG(row.mode):
                raise FsError(errno.EINVAL, "not a regular file")
            if put:
                if not self.ns.writable_handle(conn, handle, ino):
                    if handle:
                        raise FsError(errno.EBADF, "file is not open for writing")
                    check(cred, row, W, "write this file")
                used = self._keys_in_use(conn, keys)
                if used:
                    raise FsError(errno.EEXIST, f"block {sorted(used)[0]} already exists; "
                                  "blocks are written once")
            else:
                if not self.ns.readable_handle(conn, handle, ino):
                    if handle:
                        raise FsError(errno.EBADF, "file is not open for reading")
                    check(cred, row, R, "read this file")
                have = set(conn.execute(select(B.c.key).where(
                    B.c.ino == ino, B.c.key.in_(list(keys)))).scalars())
                missing = set(keys) - have
                if missing:
                    raise FsError(errno.ENOENT, f"block {sorted(missing)[0]} is not part "
                                  "of this file")

        self.ns.query(fn)
        exp = self.settings.presign_expiry
        return pb.PresignReply(urls=[self.store.presign(k, put, exp) for k in keys])

    @staticmethod
    def _keys_in_use(conn: Connection, keys: Sequence[str]) -> set[str]:
        keys = list(keys)
        used: set[str] = set()
        for i in range(0, len(keys), 500):
            part = keys[i:i + 500]
            used |= set(conn.execute(select(B.c.key).where(B.c.key.in_(part))).scalars())
            used |= set(conn.execute(select(G.c.key).where(G.c.key.in_(part))).scalars())
        return used

    def commit(self, cred: Cred, req: pb.CommitBlocksRequest) -> pb.Attr:
        """Point chunks of ``req.ino`` at newly stored blocks and set its size, atomically."""
        bs = self.block_size
        ino = req.ino
        if req.size > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG, f"file size {req.size} is too large")
        refs = list(req.blocks)
        seen: set[int] = set()
        new: dict[str, pb.BlockRef] = {}
        for ref in refs:
            if ref.index in seen:
                raise FsError(errno.EINVAL, f"chunk {ref.index} appears twice in one commit")
            seen.add(ref.index)
            if ref.index * bs >= max(req.size, 1) and ref.key:
                raise FsError(errno.EINVAL, f"chunk {ref.index} lies past the file's end "
                              f"({req.size} bytes)")
            if not ref.key:  # a hole
                if ref.length or ref.checksum:
                    raise FsError(errno.EINVAL, f"hole at chunk {ref.index} with data")
                continue
            check_key(ref.key)
            if not key_belongs_to(ref.key, ino):
                raise FsError(errno.EINVAL, f"block key {ref.key} does not belong to inode {ino}")
            if not 0 < ref.length <= bs:
                raise FsError(errno.EINVAL, f"block {ref.key}: length {ref.length} is not in "
                              f"1..{bs}")
            if ref.key in new:
                raise FsError(errno.EINVAL, f"block {ref.key} named twice in one commit")
            new[ref.key] = ref

        self._check_stored(list(new.values()))

        def fn(tx: "Tx") -> pb.Attr:
            conn = tx.conn
            self.ns.lock_inodes(conn, ino)
            row = self.ns.live_inode(conn, ino)
            if stat.S_ISDIR(row.mode):
                raise FsError(errno.EISDIR, "is a directory")
            if not stat.S_ISREG(row.mode):
                raise FsError(errno.EINVAL, "not a regular file")
            if not self.ns.writable_handle(conn, req.handle, ino):
                if req.handle:
                    raise FsError(errno.EBADF, "file is not open for writing")
                check(tx.cred, row, W, "write this file")
            few = len(new) <= _FEW and len(seen) <= _FEW
            if new:
                if few:
                    current = {k: r for k in new
                               if (r := _Q_BLOCK_BY_KEY.first(conn, key=k)) is not None}
                else:
                    current = {r.key: r for r in conn.execute(
                        select(B.c.key, B.c.ino, B.c.idx).where(B.c.key.in_(list(new))))}
                for key, ref in new.items():
                    cur = current.get(key)
                    if cur is not None and (cur.ino != ino or cur.idx != ref.index):
                        raise FsError(errno.EINVAL, f"block {key} is already referenced")
                if few:
                    freed = {k for k in new if _Q_FREED_KEY.first(conn, key=k) is not None}
                else:
                    freed = set(conn.execute(select(G.c.key).where(G.c.key.in_(list(new))))
                                .scalars())
                if freed:
                    raise FsError(errno.EINVAL, f"block {sorted(freed)[0]} was freed and "
                                  "cannot be referenced again")
            if row.storage == STORAGE_INLINE:
                self._inline_to_blocks(tx, ino, provided=seen)
            if not seen or row.storage == STORAGE_INLINE:
                old = {}  # (an inline file's new blocks are all in this commit)
            elif few:
                old = {i: r for i in seen
                       if (r := _Q_BLOCK_AT.first(conn, ino=ino, idx=i)) is not None}
            else:
                old = {r.idx: r for r in conn.execute(
                    select(B.c.idx, B.c.key).where(B.c.ino == ino, B.c.idx.in_(list(seen))))}
            garbage = []
            for ref in refs:
                o = old.get(ref.index)
                if o is not None and o.key == ref.key:
                    conn.execute(update(B).where(B.c.ino == ino, B.c.idx == ref.index)
                                 .values(length=ref.length, checksum=ref.checksum))
                    continue
                if o is not None:
                    garbage.append(o.key)
                    conn.execute(delete(B).where(B.c.ino == ino, B.c.idx == ref.index))
                if ref.key:
                    _Q_INSERT_BLOCK.run(conn, ino=ino, idx=ref.index, key=ref.key,
                                        length=ref.length, checksum=ref.checksum)
            self._to_garbage(tx, garbage)
            size = req.size
            if size < row.size and req.base_version and req.base_version != row.version:
                # Another writer grew the file since this one looked: keep its bytes.
                size = row.size
            if size < row.size:
                self._drop_beyond(tx, ino, size)
            vals: dict[str, Any] = dict(size=size, mtime_ns=tx.now, ctime_ns=tx.now,
                                        version=BUMP, storage=STORAGE_BLOCKS)
            if not tx.cred.is_root and row.mode & (stat.S_ISUID | stat.S_ISGID):
                vals["mode"] = kill_priv(row.mode)
            attr = to_attr(update_inode(conn, ino, vals))
            tx.log(pb.OP_WRITE, ino, attr=attr)
            if req.release:
                self.ns.release_handle(tx, req.handle)
            return attr

        return self.ns.mutate(cred, fn)

    def _check_stored(self, refs: list[pb.BlockRef]) -> None:
        """Every block must be in the store, long enough for its length, recent enough that
        garbage collection cannot have judged it an orphan, and its checksum must describe
        exactly the stored bytes."""
        if not refs:
            return
        infos: list[BlockInfo | None]
        if len(refs) == 1:
            infos = [self.store.head(refs[0].key)]
        else:
            infos = list(self._executor().map(lambda r: self.store.head(r.key), refs))
        now = time.time()
        max_age = self.settings.gc_grace / 2
        for ref, info in zip(refs, infos):
            if info is None:
                raise FsError(errno.EIO, f"block {ref.key} is not in the block store; "
                              "nothing was committed", ref.key)
            piece, crcs = parse_checksum(ref.checksum)
            if info.size < ref.length or len(crcs) != pieces_for(info.size, piece):
                raise FsError(errno.EINVAL, f"block {ref.key} holds {info.size} bytes, which "
                              "does not match its length and checksum", ref.key)
            if now - info.mtime > max_age:
                raise FsError(errno.ESTALE, f"block {ref.key} was stored too long ago to be "
                              "committed safely; upload it again", ref.key)

    # ------------------------------------------------------------ garbage collection
    def garbage_due(self, cutoff_ns: int, limit: int = 10_000) -> list[str]:
        """Keys on the garbage list freed before ``cutoff_ns``."""
        return list(self.ns.query(lambda c: c.execute(
            select(G.c.key).where(G.c.freed_ns < cutoff_ns).order_by(G.c.freed_ns)
            .limit(limit)).scalars().all()))

    def forget_garbage(self, keys: Sequence[str]) -> None:
        keys = list(keys)

        def fn(c: Connection) -> None:
            for i in range(0, len(keys), 500):
                c.execute(delete(G).where(G.c.key.in_(keys[i:i + 500])))

        if keys:
            self.ns.engine.write(fn)

    def known_keys(self) -> set[str]:
        """Every key the metadata knows: referenced blocks and those awaiting collection."""
        def fn(c: Connection) -> set[str]:
            ks = set(c.execute(select(B.c.key)).scalars())
            ks.update(c.execute(select(G.c.key)).scalars())
            return ks

        return self.ns.query(fn)

    def is_referenced(self, keys: Sequence[str]) -> set[str]:
        keys = list(keys)

        def fn(c: Connection) -> set[str]:
            out: set[str] = set()
            for i in range(0, len(keys), 500):
                out |= set(c.execute(select(B.c.key).where(B.c.key.in_(keys[i:i + 500])))
                           .scalars())
            return out

        return self.ns.query(fn) if keys else set()

    def start_background_gc(self, interval: float | None = None) -> None:
        """Collect garbage every ``interval`` seconds (``gc_interval``) in a daemon thread."""
        interval = self.settings.gc_interval if interval is None else interval
        if interval <= 0 or self._gc_thread is not None:
            return
        from .gc import gc

        def loop() -> None:
            while not self._gc_stop.wait(interval):
                try:
                    stats = gc(self)
                    if stats.deleted:
                        log.info("garbage collection: %s", stats)
                except Exception:
                    log.exception("background garbage collection failed")

        with self._lock:
            if self._gc_thread is None:
                self._gc_thread = threading.Thread(target=loop, name="metafs-gc", daemon=True)
                self._gc_thread.start()

    def stop_background_gc(self) -> None:
        self._gc_stop.set()
