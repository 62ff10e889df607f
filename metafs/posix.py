"""POSIX rules shared by the namenode and the clients: permission checks and name limits.

The namenode decides every call by these rules; a mount applies the same ones to answer
``access`` and cached lookups without a round trip. The caller's uid, gid and supplementary
groups arrive with each request. Root (uid 0) bypasses read and write checks, and execute
checks when any execute bit is set (or for directories), as Linux does with
CAP_DAC_OVERRIDE.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

from .errors import FsError

ROOT_INO = 1  # the inode number of the root directory
NAME_MAX = 255  # bytes in one file name
PATH_MAX = 4096  # bytes in a path, its terminating NUL included

R, W, X = 4, 2, 1


@dataclass(frozen=True, slots=True)
class Cred:
    uid: int = 0
    gid: int = 0
    groups: frozenset[int] = field(default_factory=frozenset)
    pid: int = 0
    client_id: str = ""
    run_id: str = ""
    # Who authenticated the call (metafs.ops.auth), never taken from the request: the name
    # of its identity ("" when the namenode authenticates no one, or in-process), and
    # whether that identity is a trusted service or gateway (every caller is, where no one
    # authenticates: every claim is then believed anyway).
    identity: str = ""
    trusted: bool = True
    # The project an identity works in (metafs.namenode.projects; "" for none), and the
    # groups among ``groups`` that grant reading only (data sets shared read-only into it).
    project: str = ""
    ro_groups: frozenset[int] = field(default_factory=frozenset)
    # The calling process (boot id, pid, start time) as its mount saw it: which process
    # read which project's data (metafs.namenode.projects); "" when unknown.
    process: str = ""

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    def in_group(self, gid: int) -> bool:
        return gid == self.gid or gid in self.groups

    @classmethod
    def from_pb(cls, c) -> "Cred":  # type: ignore[no-untyped-def]
        return cls(c.uid, c.gid, frozenset(c.groups), c.pid, c.client_id, c.run_id,
                   process=c.process)


ROOT = Cred()


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


_BOOT_ID = _boot_id()


def start_ticks(pid: int) -> int:
    """When process ``pid`` started, in clock ticks since boot (0 if unknown): with the
    boot id and the pid, it names one process for good (pids are reused, start times not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        # the command name (field 2) may hold spaces and parentheses: split after the last ')'
        return int(data[data.rindex(b")") + 2:].split()[19])  # field 22: starttime
    except (OSError, ValueError, IndexError):
        return 0


def process_key(pid: int) -> str:
    """``BOOT_ID:PID:START`` naming process ``pid`` of this machine ("" if unknown). Every
    mount of the machine derives the same key for one process from facts of the kernel
    (the pid the kernel gives with each request, /proc), which the process cannot choose."""
    ticks = start_ticks(pid) if pid > 0 else 0
    return f"{_BOOT_ID}:{pid}:{ticks}" if ticks and _BOOT_ID else ""


def allowed(cred: Cred, mode: int, uid: int, gid: int, want: int) -> bool:
    """True when ``cred`` may access an inode with ``mode``/``uid``/``gid`` for ``want``
    (a combination of R, W, X)."""
    if cred.uid == 0:
        if want & X and not stat.S_ISDIR(mode) and not mode & 0o111:
            return False
        return True
    if cred.uid == uid:
        bits = (mode >> 6) & 7
    elif cred.in_group(gid):
        bits = (mode >> 3) & 7
        if cred.ro_groups and gid in cred.ro_groups:
            bits &= ~W
    else:
        bits = mode & 7
    return bits & want == want


def check(cred: Cred, row, want: int, what: str = "") -> None:  # type: ignore[no-untyped-def]
    if not allowed(cred, row.mode, row.uid, row.gid, want):
        where = (f" (the caller works in project {cred.project!r}: what is not in it or "
                 "shared into it lies beyond the project boundary)") if cred.project else ""
        raise FsError(errno.EACCES,
                      f"permission denied{(' to ' + what) if what else ''}{where}")


def check_sticky(cred: Cred, parent, child) -> None:  # type: ignore[no-untyped-def]
    """In a sticky directory only the owner of the entry, of the directory, or root may
    remove or rename an entry."""
    if parent.mode & stat.S_ISVTX and cred.uid not in (0, parent.uid, child.uid):
        raise FsError(errno.EPERM,
                      "sticky directory: only the owner may remove or rename this entry")


def is_owner(cred: Cred, row) -> bool:  # type: ignore[no-untyped-def]
    return cred.uid == 0 or cred.uid == row.uid


def access_mask_to_want(mask: int) -> int:
    """The R/W/X bits of an access(2) mask (R_OK, W_OK, X_OK)."""
    want = 0
    if mask & os.R_OK:
        want |= R
    if mask & os.W_OK:
        want |= W
    if mask & os.X_OK:
        want |= X
    return want


def check_name(name: str, *, new: bool = True) -> None:
    """Validate one path component; ``new`` when it names an entry to be made."""
    if not name:
        raise FsError(errno.ENOENT, "empty file name")
    if "/" in name or "\0" in name:
        raise FsError(errno.EINVAL, "a file name may not contain '/' or NUL", name)
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise FsError(errno.EILSEQ, "file names must be valid UTF-8", name) from None
    if size > NAME_MAX:
        raise FsError(errno.ENAMETOOLONG, f"file name is {size} bytes; the limit is {NAME_MAX}")
    if new and name in (".", ".."):
        raise FsError(errno.EEXIST, f"{name!r} always exists", name)  # as Linux


def check_path(path: str) -> None:
    """Validate a whole path: no NUL, valid UTF-8, shorter than PATH_MAX bytes."""
    if "\0" in path:
        raise FsError(errno.EINVAL, "a path may not contain NUL")
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        raise FsError(errno.EILSEQ, "paths must be valid UTF-8") from None
    if size >= PATH_MAX:
        raise FsError(errno.ENAMETOOLONG, f"path is longer than {PATH_MAX - 1} bytes")
