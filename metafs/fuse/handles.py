"""The records of a mount's open files and directories, and its errno exception."""

from __future__ import annotations

import os
import threading

from ..client.blockfile import BlockFile
from ..proto import metafs_pb2 as pb


class FuseError(OSError):
    """An errno for the kernel (mfusepy turns OSError into -errno)."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(code, message or os.strerror(code))


class Handle:
    """One FUSE open file: a namenode handle plus the mount's buffers."""

    __slots__ = ("fh", "ino", "path", "flags", "raw", "lock", "buf", "buf_off", "append", "rbuf",
                 "rbuf_off", "rbuf_epoch", "did_read", "did_write", "pid", "uid", "error", "io_ns",
                 "lock_lost", "caller", "writer")

    def __init__(self, fh: int, ino: int, path: str, flags: int, raw: BlockFile,
                 caller: pb.Caller) -> None:
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
        self.pid = caller.pid
        self.uid = caller.uid  # of the process that opened it
        # what the file's data calls carry: the opener, then the last process that wrote
        # through it (a descriptor passes to children: ``{ cat A; } > B``)
        self.caller = caller
        self.writer = caller.pid
        self.error: OSError | None = None
        self.io_ns = 0  # wall time of the last read, write or flush (access events' time)
        # a lock taken through this open file went with the mount's lost session: its I/O
        # fails with EIO until it is closed (see MountLocks.session_lost)
        self.lock_lost = False


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
