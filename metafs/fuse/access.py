"""Access events: which process read or wrote which file, sent to the namenode in batches
(RecordAccess) for the provenance graph.

An event is made when an open file that was read or written is released: it names the
inode and its data version, the process that opened it (pid, start time, command line,
METAFS_RUN_ID from its environment), the user and the host. Events wait in memory and go
out every ``fuse_access_interval`` seconds or when ``fuse_access_batch`` are pending; if
the namenode is away they are kept (up to a bound) and sent when it returns.

A file counts as read when read calls reached the mount, and also when it was opened for
reading (O_RDONLY or O_RDWR) without O_TRUNC and nothing was written through it: the
kernel keeps the page cache of an unchanged file across opens (keep_cache), so a second
process reading it may send the mount no read call at all, and its read must not go
unrecorded. An open for reading that reads nothing counts as a read too (the mount cannot
tell it from a read the page cache answered).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from ..config import Settings
from ..proto import metafs_pb2 as pb

if TYPE_CHECKING:
    from .handles import Handle
    from .ops import MetafsOperations

log = logging.getLogger("metafs.fuse.access")

MAX_PENDING = 100_000


class AccessRecorder:
    """Collects access events of one mount and sends them in batches."""

    def __init__(self, ops: "MetafsOperations", settings: Settings) -> None:
        self.ops = ops
        self.batch = max(1, settings.fuse_access_batch)
        self.interval = max(0.01, settings.fuse_access_interval)
        self.host = socket.gethostname()
        self._pending: deque[pb.AccessEvent] = deque(maxlen=MAX_PENDING)
        self._openers: dict[int, Any] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="metafs-access",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()

    def opened(self, h: "Handle") -> None:
        """Remember who opened ``h`` now, while the process surely exists."""
        if h.pid:
            self._openers[h.fh] = self.ops.procs.info(h.pid)

    @staticmethod
    def was_read(h: "Handle") -> bool:
        """Whether ``h`` read its file: read calls came, or it was opened for reading of
        the data as it was (no O_TRUNC, no writes) and the page cache may have answered."""
        if h.did_read:
            return True
        readable = (h.flags & os.O_ACCMODE) in (os.O_RDONLY, os.O_RDWR)
        return readable and not (h.flags & os.O_TRUNC) and not h.did_write

    def closed(self, h: "Handle") -> None:
        info = self._openers.pop(h.fh, None)
        read = self.was_read(h)
        if not (read or h.did_write):
            return
        attr = getattr(h.raw, "attr", None)
        ev = pb.AccessEvent(
            ino=h.ino, read=read, wrote=h.did_write, pid=h.pid, host=self.host,
            ts_ns=getattr(h, "io_ns", 0) or time.time_ns(),
            version=attr.version if attr is not None else 0,
            uid=h.uid)
        if info is not None:
            ev.proc_start = info.start_ns
            ev.cmdline = info.cmdline
            ev.run_id = info.run_id
        self._pending.append(ev)
        if len(self._pending) >= self.batch:
            self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        """Send what is pending (in batches); keep it if the namenode is away."""
        while self._pending:
            events = []
            while self._pending and len(events) < self.batch:
                events.append(self._pending.popleft())
            try:
                self.ops.nodes.record_access(events, self.ops.own_caller())
                self.sent += len(events)
            except OSError as err:
                log.debug("access events not sent yet: %s", err)
                self._pending.extendleft(reversed(events))
                return
