"""Access events: which process read and wrote which file, for the provenance graph.

Every :class:`~metafs.client.Client` has an :class:`AccessRecorder`. When a file opened
through the client is closed after it was read from or written to, the recorder notes one
event (inode, data version, read/wrote) stamped with the process's identity (host, pid,
process start time, command line), the user, and the run id (``METAFS_RUN_ID`` or an
active :func:`metafs.run`). Events are de-duplicated in the buffer and sent in batches
with one ``RecordAccess`` call: when ``access_batch`` are waiting, ``access_flush_interval``
seconds after the first one, and when the client closes. A mount uses the same recorder
for the events of the processes it serves (:mod:`metafs.fuse.access`).

Switch it off with the ``access_events`` setting (``METAFS_ACCESS_EVENTS=0``) or per
client with ``client.access_recorder.enabled = False``. Failing to send events never fails a read
or a write: the events wait for the next batch, and are dropped with a warning if the
client closes before the namenode is back.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Hashable

from ..proto import metafs_pb2 as pb

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger("metafs.client.access")

_PROC: tuple[int, int, str] | None = None
MAX_PENDING = 100_000  # events kept while the namenode is away


def process_identity() -> tuple[int, int, str]:
    """(pid, start time in ns since the epoch, command line) of this process."""
    global _PROC
    pid = os.getpid()
    if _PROC is None or _PROC[0] != pid:  # recomputed after a fork
        start = 0
        try:
            import psutil

            start = int(psutil.Process(pid).create_time() * 1e9)
        except Exception:  # psutil missing or /proc unreadable
            start = 0
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = " ".join(a.decode("utf-8", "replace")
                               for a in fh.read().split(b"\0") if a)
        except OSError:
            cmd = " ".join([sys.executable, *sys.argv])
        _PROC = (pid, start, cmd)
    return _PROC


class AccessRecorder:
    """Buffers access events and sends them in batches (one per client: the client's own
    file closes note theirs, a mount adds the events of the processes it serves).

    Events wait until ``batch`` are pending or ``interval`` seconds after the first; if
    the namenode is away they are kept (up to ``MAX_PENDING``) and sent with the next
    batch. Identical events of this process are sent once."""

    def __init__(self, client: "Client") -> None:
        s = client.settings
        self.client = client
        self.enabled: bool = bool(getattr(s, "access_events", True))
        self.batch = max(1, int(getattr(s, "access_batch", 256)))
        self.interval = float(getattr(s, "access_flush_interval", 2.0))
        self.caller: Callable[[], pb.Caller] = lambda: client.caller  # who sends them
        # key -> (event, the caller to send it as; None: ``caller()``)
        self._buf: dict[Hashable, tuple[pb.AccessEvent, pb.Caller | None]] = {}
        self._seq = itertools.count()  # keys of events that are never merged
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self.sent = 0

    def configure(self, *, batch: int, interval: float,
                  caller: Callable[[], pb.Caller] | None = None) -> None:
        """Send in batches of ``batch``, ``interval`` seconds after the first waiting
        event, with the identity ``caller()`` (a mount's own)."""
        self.batch = max(1, batch)
        self.interval = interval
        if caller is not None:
            self.caller = caller

    def note(self, ino: int, version: int, *, read: bool, wrote: bool) -> None:
        """Record that this process read and/or wrote ``ino`` at data ``version``."""
        if not self.enabled or not (read or wrote):
            return
        run_id = self.client.caller.run_id
        pid, start, cmd = process_identity()
        self.add(pb.AccessEvent(
            ino=ino, read=read, wrote=wrote, pid=pid, proc_start=start, cmdline=cmd,
            run_id=run_id, host=self.client.host, ts_ns=time.time_ns(), version=version,
            uid=self.client.caller.uid), key=(ino, version, read, wrote, run_id))

    def add(self, event: pb.AccessEvent, key: Hashable | None = None,
            caller: pb.Caller | None = None) -> None:
        """Queue ``event``, to be sent as ``caller`` (default: ``caller()``); an event with
        the ``key`` of one still waiting is dropped."""
        if not self.enabled:
            return
        with self._lock:
            if key is None:
                key = next(self._seq)
            elif key in self._buf:
                return
            if len(self._buf) >= MAX_PENDING:
                self._buf.pop(next(iter(self._buf)))  # the oldest goes
            self._buf[key] = (event, caller)
            full = len(self._buf) >= self.batch
            self._arm()  # (also when full: the rest of a full batch waits for it)
        if full and self._send_lock.acquire(blocking=False):
            # Full batches go now, from this thread; a thread that finds another sending
            # goes on (the sender takes what is full when its call returns): none waits
            # for another's call, and no call carries just the few events that came in
            # during the one before.
            try:
                self._send(full_only=True)
            finally:
                self._send_lock.release()

    def _arm(self) -> None:
        """Start the interval timer if none runs (caller holds ``_lock``)."""
        if self._timer is None and self.interval > 0:
            self._timer = threading.Timer(self.interval, self.flush)
            self._timer.daemon = True
            self._timer.start()

    def flush(self) -> None:
        """Send the waiting events now; keep them if the namenode is away."""
        with self._send_lock:
            with self._lock:
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
            self._send(full_only=False)

    def _send(self, full_only: bool) -> None:
        """Send waiting events in batches (the caller holds ``_send_lock``): all of them,
        or with ``full_only`` only as many as fill whole batches."""
        while True:
            with self._lock:
                if full_only and len(self._buf) < self.batch:
                    return
                batch = list(itertools.islice(self._buf.items(), self.batch))
            if not batch:
                return
            # one call per identity the events are sent as
            by_caller: dict[bytes, tuple[pb.Caller, list[Hashable], list[pb.AccessEvent]]
                            ] = {}
            for key, (event, caller) in batch:
                who = caller if caller is not None else self.caller()
                group = by_caller.setdefault(who.SerializeToString(deterministic=True),
                                             (who, [], []))
                group[1].append(key)
                group[2].append(event)
            for who, keys, events in by_caller.values():
                try:
                    self.client.inodes.record_access(events, who)
                except PermissionError as exc:  # not theirs to record: never will be
                    log.warning("dropped %d access events: %s", len(events), exc)
                except OSError as exc:
                    log.warning("%d access events not sent yet: %s", len(self._buf), exc)
                    with self._lock:
                        self._arm()  # try again later
                    return
                else:
                    self.sent += len(events)
                with self._lock:
                    for k in keys:
                        self._buf.pop(k, None)

    def close(self) -> None:
        """Send what is left (called by ``Client.close``); what cannot be sent is lost."""
        self.flush()
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._buf:
                log.warning("dropped %d access events: the namenode is away", len(self._buf))
                self._buf.clear()


def note_file_closed(raw: Any) -> None:
    """Called by a raw file as it closes: report what it did, if anything."""
    rec = getattr(raw._client, "access_recorder", None)
    if rec is None or not (raw._did_read or raw._did_write):
        return
    rec.note(raw.ino, int(raw.attr.version), read=raw._did_read, wrote=raw._did_write)
