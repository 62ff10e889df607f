"""Access events: which process read and wrote which file, for the provenance graph.

Every :class:`~metafs.client.Client` has an :class:`AccessRecorder`. When a file opened
through the client is closed after it was read from or written to, the recorder notes one
event (inode, data version, read/wrote) stamped with the process's identity (host, pid,
process start time, command line), the user, and the run id (``METAFS_RUN_ID`` or an
active :func:`metafs.run`). Events are de-duplicated in the buffer and sent in batches
with one ``RecordAccess`` call: when ``access_batch`` are waiting, ``access_flush_interval``
seconds after the first one, and when the client closes.

Switch it off with the ``access_events`` setting (``METAFS_ACCESS_EVENTS=0``) or per
client with ``client.access_recorder.enabled = False``. Failing to send events never fails a read
or a write: the events are dropped with a warning.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from ..errors import FsError
from ..proto import metafs_pb2 as pb

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger("metafs.client.access")

_PROC: tuple[int, int, str] | None = None


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
    """Buffers a client's access events and sends them in batches."""

    def __init__(self, client: "Client") -> None:
        s = client.settings
        self.client = client
        self.enabled: bool = bool(getattr(s, "access_events", True))
        self.batch = max(1, int(getattr(s, "access_batch", 256)))
        self.interval = float(getattr(s, "access_flush_interval", 2.0))
        self._buf: dict[tuple[int, int, bool, bool, str], pb.AccessEvent] = {}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self.sent = 0

    def note(self, ino: int, version: int, *, read: bool, wrote: bool) -> None:
        """Record that this process read and/or wrote ``ino`` at data ``version``."""
        if not self.enabled or not (read or wrote):
            return
        run_id = self.client.caller.run_id
        key = (ino, version, read, wrote, run_id)
        with self._lock:
            if key in self._buf:
                return
            pid, start, cmd = process_identity()
            self._buf[key] = pb.AccessEvent(
                ino=ino, read=read, wrote=wrote, pid=pid, proc_start=start, cmdline=cmd,
                run_id=run_id, host=self.client.host, ts_ns=time.time_ns(), version=version,
                uid=self.client.caller.uid)
            full = len(self._buf) >= self.batch
            if not full and self._timer is None and self.interval > 0:
                self._timer = threading.Timer(self.interval, self.flush)
                self._timer.daemon = True
                self._timer.start()
        if full:
            self.flush()

    def flush(self) -> None:
        """Send the buffered events now."""
        with self._send_lock:
            with self._lock:
                events = list(self._buf.values())
                self._buf.clear()
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
            if not events:
                return
            try:
                self.client.transport.call("RecordAccess", pb.RecordAccessRequest(
                    caller=self.client.caller, events=events))
                self.sent += len(events)
            except FsError as exc:
                log.warning("dropped %d access events: %s", len(events), exc)

    def close(self) -> None:
        """Flush what is left (called by ``Client.close``)."""
        self.flush()


def note_file_closed(raw: Any) -> None:
    """Called by a raw file as it closes: report what it did, if anything."""
    rec = getattr(raw._client, "access_recorder", None)
    if rec is None or not (raw._did_read or raw._did_write):
        return
    rec.note(raw.ino, int(raw.attr.version), read=raw._did_read, wrote=raw._did_write)
