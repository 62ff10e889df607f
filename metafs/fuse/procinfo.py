"""What the mount knows about the processes calling it: supplementary groups (for
permissions), its process key (for the namenode's project flow check), and start time,
command line and METAFS_RUN_ID (for access events).

Reading ``/proc`` costs tens of microseconds, so answers are cached per pid for a short
time; a pid reused within that time by another program would be attributed to the old one
for at most ``ttl`` seconds, which the start time recorded with each event makes visible.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..posix import process_key, start_ticks

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _boot_time_ns() -> int:
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return int(line.split()[1]) * 1_000_000_000
    except OSError:
        pass
    return 0


_BOOT_NS = _boot_time_ns()

# rename(2), renameat(2) and renameat2(2) by machine (asm/unistd.h)
_RENAME_SYSCALLS = {"x86_64": {82, 264, 316}, "aarch64": {38, 276}}.get(os.uname().machine,
                                                                          set())


def in_rename(tid: int) -> bool:
    """Whether thread ``tid`` (the kernel's pid of a FUSE request) is inside a rename
    system call: what it is blocked in, from ``/proc/TID/syscall``; False when that cannot
    be read (another pid namespace, a kernel-internal caller, an unknown machine)."""
    try:
        with open(f"/proc/{tid}/syscall", "rb") as f:
            first = f.read(32).split(b" ", 1)[0]
    except OSError:
        return False
    return first.isdigit() and int(first) in _RENAME_SYSCALLS


@dataclass(frozen=True)
class ProcInfo:
    """One calling process, as seen in /proc."""

    pid: int
    groups: tuple[int, ...]
    start_ns: int
    cmdline: str
    run_id: str


def read_groups(pid: int) -> tuple[int, ...]:
    """Supplementary groups of ``pid`` from /proc/PID/status (empty if it is gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Groups:"):
                    return tuple(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return ()


def read_start_ns(pid: int) -> int:
    """Wall-clock start time of ``pid`` in ns (0 if unknown)."""
    ticks = start_ticks(pid)
    return _BOOT_NS + ticks * 1_000_000_000 // _CLK_TCK if ticks else 0


def read_cmdline(pid: int, limit: int = 4096) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read(limit)
    except OSError:
        return ""
    return " ".join(p.decode("utf-8", "replace") for p in raw.rstrip(b"\0").split(b"\0"))


def read_run_id(pid: int) -> str:
    """METAFS_RUN_ID from the environment of ``pid`` ("" when unset or unreadable)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        return ""
    for item in env.split(b"\0"):
        if item.startswith(b"METAFS_RUN_ID="):
            return item[len(b"METAFS_RUN_ID="):].decode("utf-8", "replace")
    return ""


class ProcCache:
    """A short-lived cache of :class:`ProcInfo` by pid."""

    def __init__(self, ttl: float = 2.0, max_entries: int = 4096) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._groups: dict[int, tuple[tuple[int, ...], float]] = {}
        self._full: dict[int, tuple[ProcInfo, float]] = {}
        self._keys: dict[int, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def groups(self, pid: int) -> tuple[int, ...]:
        return self._cached(self._groups, pid, read_groups)

    def key(self, pid: int) -> str:
        """:func:`~metafs.posix.process_key` of ``pid`` (the namenode's project flow check
        follows processes by it)."""
        return self._cached(self._keys, pid, process_key)

    def _cached(self, table: dict[int, tuple[Any, float]], pid: int,
                read: Callable[[int], Any]) -> Any:
        """``read(pid)``, kept in ``table`` for ``ttl`` seconds."""
        now = time.monotonic()
        hit = table.get(pid)
        if hit is not None and hit[1] > now:
            return hit[0]
        value = read(pid)
        with self._lock:
            if len(table) >= self.max_entries:
                table.clear()
            table[pid] = (value, now + self.ttl)
        return value

    def info(self, pid: int) -> ProcInfo:
        now = time.monotonic()
        hit = self._full.get(pid)
        if hit is not None and hit[1] > now:
            return hit[0]
        info = ProcInfo(pid=pid, groups=self.groups(pid), start_ns=read_start_ns(pid),
                        cmdline=read_cmdline(pid), run_id=read_run_id(pid))
        with self._lock:
            if len(self._full) >= self.max_entries:
                self._full.clear()
            self._full[pid] = (info, now + self.ttl)
        return info
