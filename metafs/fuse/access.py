"""Access events: which process read or wrote which file, sent to the namenode in batches
(RecordAccess) for the provenance graph.

An event is made when an open file that was read or written is released: it names the
inode and its data version, the process that opened it (pid, start time, command line,
METAFS_RUN_ID from its environment), the user and the host. Events wait in memory and go
out every ``fuse_access_interval`` seconds or when ``fuse_access_batch`` are pending,
through the client's recorder (:mod:`metafs.client.access`); if the namenode is away they
are kept (up to a bound) and sent when it returns.

A file counts as read when read calls reached the mount, and also when it was opened for
reading (O_RDONLY or O_RDWR) without O_TRUNC and nothing was written through it: the
kernel keeps the page cache of an unchanged file across opens (keep_cache), so a second
process reading it may send the mount no read call at all, and its read must not go
unrecorded. An open for reading that reads nothing counts as a read too (the mount cannot
tell it from a read the page cache answered).
"""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING, Any

from ..client.access import AccessRecorder
from ..proto import metafs_pb2 as pb

if TYPE_CHECKING:
    from .handles import Handle
    from .ops import MetafsOperations


class MountAccess:
    """Makes the access events of one mount's open files; the client's
    :class:`~metafs.client.access.AccessRecorder` sends them (in batches of
    ``fuse_access_batch``, every ``fuse_access_interval`` seconds)."""

    def __init__(self, ops: "MetafsOperations", recorder: AccessRecorder) -> None:
        self.ops = ops
        self.recorder = recorder
        settings = ops.settings
        recorder.configure(batch=settings.fuse_access_batch,
                           interval=max(0.01, settings.fuse_access_interval),
                           caller=ops.own_caller)
        self.host = socket.gethostname()
        self._openers: dict[int, Any] = {}

    def stop(self) -> None:
        """Send what is pending (at unmount)."""
        self.recorder.flush()

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
        ev = pb.AccessEvent(
            ino=h.ino, read=read, wrote=h.did_write, pid=h.pid, host=self.host,
            ts_ns=h.io_ns or time.time_ns(), version=h.raw.attr.version, uid=h.uid)
        if info is not None:
            ev.proc_start = info.start_ns
            ev.cmdline = info.cmdline
            ev.run_id = info.run_id
        project = self.ops.project
        if project is not None and project.gateway:
            # sent as the member's own project identity (the namenode maps the local uid
            # as for the member's other calls), so the event names the member's uid in
            # the project, not the local one
            ev.uid = 0
            self.recorder.add(ev, caller=project.caller(self.ops.client, h.uid, h.pid))
            return
        self.recorder.add(ev)
