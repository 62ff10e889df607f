"""What a mount believes of names and inodes: path -> inode, inode -> attributes, each with
an expiry, and what else it knows of inodes (their paths and hard-link names, the data
version the kernel's page cache holds, "no security.capability").

The beliefs are dropped by the mount's own changes and by other clients' changes, which the
changelog follower (:mod:`.follower`) reports. With a follower, beliefs are kept a minute;
without, for the kernel's entry and attribute timeouts (:func:`kernel_timeouts`).
"""

from __future__ import annotations

import stat as stat_mod
import threading
import time
from collections import OrderedDict
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
# The bytes of small files' data a mount keeps for their next opens (see InlineData).
INLINE_DATA_BYTES = 16 << 20


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
        # bumped whenever a cached name goes or comes to name another inode: an answer
        # for a name that was asked for before a bump may be older than the mount's own
        # change of that name (see MetafsOperations._attr_of_path)
        self.epoch = 0

    @staticmethod
    def _parent(path: str) -> str:
        return path.rsplit("/", 1)[0] or "/"

    def __setitem__(self, path: str, value: tuple[int, float]) -> None:
        old = self.get(path)
        if old is None:
            self._kids.setdefault(self._parent(path), set()).add(path)
        elif old[0] != value[0]:
            self.epoch += 1
        super().__setitem__(path, value)

    def pop(self, path: str, default: Any = None) -> Any:  # type: ignore[override]
        if path in self:
            self.epoch += 1
            kids = self._kids.get(self._parent(path))
            if kids is not None:
                kids.discard(path)
                if not kids:
                    del self._kids[self._parent(path)]
        return super().pop(path, default)

    def clear(self) -> None:
        self.epoch += 1
        super().clear()
        self._kids.clear()

    def drop_below(self, path: str) -> list[str]:
        """Forget every cached name strictly under directory ``path``; returns them."""
        self.epoch += 1
        stack = [path.rstrip("/") or "/"]
        dropped: list[str] = []
        while stack:
            for child in self._kids.pop(stack.pop(), ()):
                super().pop(child, None)
                stack.append(child)
                dropped.append(child)
        return dropped

    def move_below(self, old: str, new: str) -> list[tuple[str, str, int]]:
        """Every cached name strictly under directory ``old`` now names the same inode
        under ``new``; returns (old path, new path, inode) of each."""
        self.epoch += 1
        moved: list[tuple[str, str, tuple[int, float]]] = []
        stack = [old]
        while stack:
            for child in self._kids.pop(stack.pop(), ()):
                value = super().pop(child, None)
                if value is not None:
                    moved.append((child, new + child[len(old):], value))
                stack.append(child)
        for _, path, value in moved:
            self[path] = value
        return [(was, path, value[0]) for was, path, value in moved]



class InlineData:
    """The data of small (inline) files this mount opened lately, by inode, each with the
    version, size and mtime it is of. A read-only open revalidates its file with the
    namenode (close-to-open) and names the version held here: a file still at that version
    comes back without its data, which is then taken from here. Data is believed only for
    the attributes of a revalidation that match it (a file's data version changes with
    each write and truncate). At most ``limit`` bytes are kept, the least recently opened
    going first."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._files: OrderedDict[int, tuple[int, int, int, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def version(self, ino: int) -> int | None:
        """The data version of ``ino`` held here, if any."""
        got = self._files.get(ino)
        return None if got is None else got[0]

    def get(self, attr: pb.Attr) -> bytes | None:
        """The data of the file at ``attr`` (fresh attributes), if held here."""
        with self._lock:
            got = self._files.get(attr.ino)
            if (got is None or not attr.inline
                    or got[:3] != (attr.version, attr.size, attr.mtime_ns)):
                return None
            self._files.move_to_end(attr.ino)
            return got[3]

    def put(self, attr: pb.Attr, data: bytes) -> None:
        """Keep ``data``, the whole file at ``attr``."""
        with self._lock:
            old = self._files.pop(attr.ino, None)
            if old is not None:
                self._bytes -= len(old[3])
            if len(data) > self.limit:
                return
            self._files[attr.ino] = (attr.version, attr.size, attr.mtime_ns, data)
            self._bytes += len(data)
            while self._bytes > self.limit:
                self._bytes -= len(self._files.popitem(last=False)[1][3])


def created_at(reply: pb.OpenReply) -> tuple[int, int]:
    """For a Create's reply: when it made the file, which is when it changed the parent
    (0 for a file that was there already: an open of it, without O_EXCL, leaves the
    directory alone; a file made in that call has one time for all four)."""
    a = reply.attr
    fresh = a.btime_ns == a.ctime_ns == a.mtime_ns
    return (a.ctime_ns if fresh else 0), 0


class MountCache:
    """A mount's name table and attribute cache (see the module's docstring)."""

    def __init__(self, name_ttl: float, attr_ttl: float, root_ino: int = ROOT_INO,
                 complete_dirs: bool = False) -> None:
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
        # Directories whose every name is in ``names``: path -> (ino, expiry), and ino ->
        # path. Only with ``complete_dirs`` (a changelog follower reports every name
        # another client adds, and calls dir_changed), for directories this mount made: a
        # name not in ``names`` is known not to exist without asking (the kernel's lookup
        # before every create, mkdir and rename's target), stale for as long as a
        # believed name may be.
        self.complete_dirs = complete_dirs
        self.complete: dict[str, tuple[int, float]] = {}
        self._complete_ino: dict[int, str] = {}
        self.dir_changes = 0  # other clients' changes of directories applied so far
        # Inodes this mount renamed (their ctime changed: their attributes were dropped):
        # ino -> [its renames through this mount whose changelog record the follower has
        # not applied yet, whether the mount left its attributes alone since the last].
        # The follower's record of the last one brings them back (see rename_applied).
        self.renames: dict[int, list[Any]] = {}
        self._rename_seq = 0  # the last such record applied (a record may come twice)

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
        if self.renames:
            self._touched(attr.ino)
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

    def forget_path(self, path: str, subtree: bool = False, gone: bool = False) -> None:
        """Forget what ``path`` names (and, with ``subtree``, every name below it). Unless
        the name is known to be ``gone`` (removed through this mount), it may name
        something this mount does not know of: its directory is no longer complete."""
        hit = self.names.pop(path, None)
        if hit is not None:
            self.attrs.pop(hit[0], None)
            if self.renames:
                self._touched(hit[0])
        if self.complete:
            self._incomplete(path)
            if not gone:
                self._incomplete(path.rsplit("/", 1)[0] or "/")
        if subtree:
            for below in self.names.drop_below(path):
                self._incomplete(below)

    def move_below(self, old: str, new: str) -> None:
        """Directory ``old`` was renamed to ``new`` through this mount: the names below it
        (and their inodes' paths) move with it."""
        for below in self.names.drop_below(new):
            self._incomplete(below)
        for was, path, ino in self.names.move_below(old, new):
            self._incomplete(was)
            if self.path_of.get(ino) == was:
                self.path_of[ino] = path

    def _incomplete(self, path: str) -> None:
        c = self.complete.pop(path, None)
        if c is not None:
            self._complete_ino.pop(c[0], None)

    def mark_complete(self, path: str, ino: int, changes: int) -> None:
        """Directory ``path`` (inode ``ino``, made empty by this mount) has no names but
        those this mount learns of, unless another client's change of a directory was
        applied since ``dir_changes`` was ``changes`` (it may be in this one)."""
        if self.complete_dirs and changes == self.dir_changes:
            self._incomplete(self._complete_ino.get(ino, path))
            self.complete[path] = (ino, time.monotonic() + self.name_ttl)
            self._complete_ino[ino] = path

    def absent(self, parent: str, parent_ino: int, path: str) -> bool:
        """Whether ``path``, a name in directory ``parent`` (inode ``parent_ino``), is known
        not to exist (its directory is complete and the name is not in it)."""
        c = self.complete.get(parent)
        return (c is not None and c[0] == parent_ino and c[1] > time.monotonic()
                and path not in self.names)

    def dir_changed(self, ino: int) -> None:
        """Another client changed the entries of directory ``ino``: it is no longer
        complete."""
        self.dir_changes += 1
        path = self._complete_ino.get(ino)
        if path is not None:
            self._incomplete(path)

    def entries_changed(self, ino: int, at_ns: int, nlink_delta: int = 0) -> None:
        """The namenode changed the entries of directory ``ino`` for this mount: in the same
        transaction it set the directory's mtime and ctime to ``at_ns`` and added
        ``nlink_delta`` to its link count. The cached attributes take that change when they
        are what it was made on as far as this mount knows (nothing of a later time is
        cached: two of this mount's changes may commit in either order); otherwise, or
        with ``at_ns`` 0 (not known), they go. They keep their expiry: what another client
        changes meanwhile is no more stale than it was."""
        cur = self.attrs.get(ino)
        if cur is None:
            return
        attr, expiry = cur
        if not at_ns or at_ns <= attr.ctime_ns or expiry <= time.monotonic():
            self.forget_ino(ino)
            return
        changed = pb.Attr()
        changed.CopyFrom(attr)
        changed.mtime_ns = changed.ctime_ns = at_ns
        changed.nlink = max(attr.nlink + nlink_delta, 0)
        self.attrs[ino] = (changed, expiry)
        if self.renames:
            self._touched(ino)

    def forget_ino(self, ino: int, xattrs: bool = False) -> None:
        """Drop the cached attributes of ``ino`` (and, with ``xattrs``, what is known of its
        extended attributes: data writes leave those alone, so the kernel's
        security.capability question before every write stays answered locally)."""
        self.attrs.pop(ino, None)
        if self.renames:
            self._touched(ino)
        if xattrs:
            self.nocap.pop(ino, None)

    def _touched(self, ino: int) -> None:
        r = self.renames.get(ino)
        if r is not None:
            r[1] = False

    def renaming(self, ino: int) -> None:
        """This mount is about to rename ``ino`` (see :meth:`renamed`)."""
        r = self.renames.setdefault(ino, [0, False])
        r[0] += 1
        r[1] = False

    def renamed(self, ino: int, untouched: bool) -> None:
        """The rename of ``ino`` is done; ``untouched``: nothing else of this mount can
        change it meanwhile (its record's attributes are then its latest)."""
        r = self.renames.get(ino)
        if r is not None:
            r[1] = untouched

    def rename_applied(self, seq: int, ino: int, attr: pb.Attr | None) -> None:
        """The follower applies record ``seq`` of a rename of ``ino`` through this mount
        (with the inode's attributes after it, ``attr``): they are believed when it is the
        last such rename and the mount left them alone since (records come in the order
        of the renames, and before any later change of the inode)."""
        if seq <= self._rename_seq:
            return  # (applied already: a lock grant's catch-up, then the follower)
        self._rename_seq = seq
        r = self.renames.get(ino)
        if r is None:
            return
        r[0] -= 1
        if r[0] <= 0:
            del self.renames[ino]
            if r[1] and attr is not None:
                self._store(attr, time.monotonic())

    def forget_all(self) -> None:
        self.dir_changes += 1
        self.complete.clear()
        self._complete_ino.clear()
        for r in self.renames.values():
            r[1] = False
        self.names.clear()
        self.attrs.clear()
        self.nocap.clear()

    def maybe_dir(self, hit: tuple[int, float] | None) -> bool:
        """Whether a cached name may be a directory (its subtree's names must go)."""
        if hit is None:
            return True
        a = self.attrs.get(hit[0])
        return a is None or stat_mod.S_ISDIR(a[0].mode)
