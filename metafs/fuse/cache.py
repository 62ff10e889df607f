"""What a mount believes of names and inodes: path -> inode, inode -> attributes, each with
an expiry, and what else it knows of inodes (their paths and hard-link names, the data
version the kernel's page cache holds, "no security.capability").

The beliefs are dropped by the mount's own changes and by other clients' changes, which the
changelog follower (:mod:`.follower`) reports. With a follower, beliefs are kept a minute;
without, for the kernel's entry and attribute timeouts (:func:`kernel_timeouts`).
"""

from __future__ import annotations

import stat as stat_mod
import time
from typing import Any

from ..config import Settings
from ..posix import ROOT_INO
from ..proto import metafs_pb2 as pb

# How long "no security.capability" (asked by the kernel before every write) is believed:
# changes through this mount, and other clients' changes seen in the changelog, drop it.
NOCAP_TTL = 300.0
# What a mount's own tables believe while it follows the changelog, and the kernel's
# timeouts on a following mount of an embedded namenode (see kernel_timeouts).
FOLLOWED_TTL = 60.0


def kernel_timeouts(settings: Settings, following: bool) -> tuple[float, float]:
    """The (entry, attribute) timeouts of the kernel's caches: the settings', or where
    they are negative (the default), 1 s on a mount of a remote namenode and
    :data:`FOLLOWED_TTL` on a following mount of an embedded one. An embedded namenode's
    only other writers are other processes opening the same data directory, and the
    follower has the kernel drop the attributes and pages of whatever they change within
    a poll (``fuse_follow_poll_ms``); what the timeout still bounds is how long a name
    they removed or renamed stays in the kernel's dentry cache (an open of it is then
    looked up again, a stat of it asks the mount: neither sees the old file)."""
    auto = FOLLOWED_TTL if following and not settings.namenode else 1.0
    entry, attr = float(settings.fuse_entry_timeout), float(settings.fuse_attr_timeout)
    return (auto if entry < 0 else entry), (auto if attr < 0 else attr)


class NameTable(dict):  # type: ignore[type-arg]
    """The mount's path -> (ino, expiry) table, with the cached names under each directory
    indexed, so that forgetting a renamed or removed directory's subtree costs the names
    cached under it, not a scan of every name the mount knows."""

    def __init__(self) -> None:
        super().__init__()
        self._kids: dict[str, set[str]] = {}

    @staticmethod
    def _parent(path: str) -> str:
        return path.rsplit("/", 1)[0] or "/"

    def __setitem__(self, path: str, value: tuple[int, float]) -> None:
        if path not in self:
            self._kids.setdefault(self._parent(path), set()).add(path)
        super().__setitem__(path, value)

    def pop(self, path: str, default: Any = None) -> Any:  # type: ignore[override]
        if path in self:
            kids = self._kids.get(self._parent(path))
            if kids is not None:
                kids.discard(path)
                if not kids:
                    del self._kids[self._parent(path)]
        return super().pop(path, default)

    def clear(self) -> None:
        super().clear()
        self._kids.clear()

    def drop_below(self, path: str) -> None:
        """Forget every cached name strictly under directory ``path``."""
        stack = [path.rstrip("/") or "/"]
        while stack:
            for child in self._kids.pop(stack.pop(), ()):
                super().pop(child, None)
                stack.append(child)



class MountCache:
    """A mount's name table and attribute cache (see the module's docstring)."""

    def __init__(self, name_ttl: float, attr_ttl: float, root_ino: int = ROOT_INO) -> None:
        self.name_ttl = name_ttl
        self.attr_ttl = attr_ttl
        self.names = NameTable()  # path -> (ino, expiry)
        self.attrs: dict[int, tuple[pb.Attr, float]] = {}  # ino -> (attr, expiry)
        self.path_of: dict[int, str] = {root_ino: "/"}  # the last path an inode was seen at
        self.nocap: dict[int, float] = {}  # inodes known to have no security.capability
        self.links: dict[int, set[str]] = {}  # known names of inodes with several links
        # data version the kernel page cache holds, per inode and name: libfuse's high-level
        # API gives each name of a hard-linked file its own kernel inode (and page cache)
        self.seen_version: dict[int, dict[str, int]] = {}

    def remember(self, path: str, attr: pb.Attr) -> pb.Attr:
        """``path`` names ``attr.ino`` now, with these attributes (see :meth:`set_attr`)."""
        now = time.monotonic()
        self.names[path] = (attr.ino, now + self.name_ttl)
        attr = self._store(attr, now)
        self.path_of[attr.ino] = path
        if attr.nlink > 1 and not stat_mod.S_ISDIR(attr.mode):
            self.links.setdefault(attr.ino, set()).add(path)
        return attr

    def set_attr(self, attr: pb.Attr) -> pb.Attr:
        """Believe ``attr``, unless the cached attributes of its inode are of a later data
        version; returns the attributes believed."""
        return self._store(attr, time.monotonic())

    def _store(self, attr: pb.Attr, now: float) -> pb.Attr:
        # Replies cross: a listing or lookup the namenode answered before this mount's
        # write committed can arrive after the write's own reply. Believing it would show
        # the size before the write (an fsynced file read back empty) for the whole
        # attribute lifetime. An inode's data version only ever grows, and it changes with
        # every write and truncate, the only changes of its size.
        cur = self.attrs.get(attr.ino)
        if cur is not None and cur[0].version > attr.version:
            return cur[0]  # (an older answer makes the later one no more certain)
        self.attrs[attr.ino] = (attr, now + self.attr_ttl)
        return attr

    def attr(self, ino: int) -> pb.Attr | None:
        """The cached attributes of ``ino`` while they are believed."""
        a = self.attrs.get(ino)
        if a is not None and a[1] > time.monotonic():
            return a[0]
        return None

    def forget_path(self, path: str, subtree: bool = False) -> None:
        hit = self.names.pop(path, None)
        if hit is not None:
            self.attrs.pop(hit[0], None)
        if subtree:
            self.names.drop_below(path)

    def forget_ino(self, ino: int, xattrs: bool = False) -> None:
        """Drop the cached attributes of ``ino`` (and, with ``xattrs``, what is known of its
        extended attributes: data writes leave those alone, so the kernel's
        security.capability question before every write stays answered locally)."""
        self.attrs.pop(ino, None)
        if xattrs:
            self.nocap.pop(ino, None)

    def forget_all(self) -> None:
        self.names.clear()
        self.attrs.clear()
        self.nocap.clear()

    def maybe_dir(self, hit: tuple[int, float] | None) -> bool:
        """Whether a cached name may be a directory (its subtree's names must go)."""
        if hit is None:
            return True
        a = self.attrs.get(hit[0])
        return a is None or stat_mod.S_ISDIR(a[0].mode)
