"""Operations by inode number: the client's API for a mount (``client.inodes``).

A FUSE mount keeps its own table of names, and acts for many users of one machine: so it
names files by inode (or by parent inode and name) and passes the identity of the process
behind each request as ``caller``. Every method here is one namenode call; ``caller``
defaults to the client's own identity. Failures raise the matching ``OSError`` subclass,
with the namenode's message and, when it names one, the path (``filename``) it was about.
Replies are the protocol's messages (``Attr``, ``OpenReply``, ``ReadDirReply``, ...).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from ..proto import metafs_pb2 as pb

if TYPE_CHECKING:
    from .blockfile import BlockFile
    from .client import Client

UTIME_NOW = (1 << 30) - 1   # utimensat(2)'s special nanosecond values
UTIME_OMIT = (1 << 30) - 2
RENAME_NOREPLACE = pb.RENAME_NOREPLACE  # renameat2(2)'s flags (the same numbers)
RENAME_EXCHANGE = pb.RENAME_EXCHANGE


def time_fields(atime_ns: int | None, mtime_ns: int | None) -> dict[str, int]:
    """SetAttr's time fields for utimensat(2)'s times in ns (UTIME_NOW, UTIME_OMIT and
    None for "now" too)."""
    fields: dict[str, int] = {}
    for which, v in (("atime", atime_ns), ("mtime", mtime_ns)):
        if v is None or v == UTIME_NOW:
            fields[f"{which}_how"] = pb.TIME_NOW
        elif v == UTIME_OMIT:
            fields[f"{which}_how"] = pb.TIME_OMIT
        else:
            fields[f"{which}_how"] = pb.TIME_SET
            fields[f"{which}_ns"] = int(v)
    return fields


class Inodes:
    """The namenode's calls by inode for one client (see the module's docstring)."""

    def __init__(self, client: "Client") -> None:
        self._client = client

    def _call(self, method: str, request: object) -> object:
        return self._client._call(method, request)

    def _who(self, caller: pb.Caller | None) -> pb.Caller:
        return self._client.caller if caller is None else caller

    # ------------------------------------------------------------------ names
    def lookup(self, parent: int, name: str, caller: pb.Caller | None = None) -> pb.Attr:
        """What ``name`` in directory ``parent`` is. ENOENT with ``filename == name`` means
        the name is missing; another ENOENT means the directory itself is gone."""
        return self._call("Lookup", pb.LookupRequest(caller=self._who(caller), parent=parent,
                                                     name=name)).attr

    def resolve(self, path: str, caller: pb.Caller | None = None, *,
                follow: bool = False) -> pb.Attr:
        """Walk ``path`` from the root, checking search permission on every directory."""
        return self._call("Resolve", pb.ResolveRequest(caller=self._who(caller), path=path,
                                                       follow=follow)).attr

    def mkdir(self, parent: int, name: str, mode: int, caller: pb.Caller | None = None,
              *, umask: int = 0) -> pb.Attr:
        return self._call("Mkdir", pb.MkdirRequest(caller=self._who(caller), parent=parent,
                                                   name=name, mode=mode, umask=umask)).attr

    def create(self, parent: int, name: str, mode: int, caller: pb.Caller | None = None, *,
               umask: int = 0, exclusive: bool = True, open: bool = False, flags: int = 0,
               rdev: int = 0) -> pb.OpenReply:
        """Make a node (``mode`` carries its type); with ``open``, also open it with
        ``flags`` (the reply then holds a handle)."""
        return self._call("Create", pb.CreateRequest(
            caller=self._who(caller), parent=parent, name=name, mode=mode, umask=umask,
            exclusive=exclusive, open=open, flags=flags, rdev=rdev))

    def symlink(self, parent: int, name: str, target: str,
                caller: pb.Caller | None = None) -> pb.Attr:
        return self._call("Symlink", pb.SymlinkRequest(caller=self._who(caller), parent=parent,
                                                       name=name, target=target)).attr

    def link(self, ino: int, parent: int, name: str,
             caller: pb.Caller | None = None) -> pb.Attr:
        return self._call("Link", pb.LinkRequest(caller=self._who(caller), ino=ino,
                                                 new_parent=parent, new_name=name)).attr

    def readlink(self, ino: int, caller: pb.Caller | None = None) -> str:
        return self._call("Readlink", pb.InodeRequest(caller=self._who(caller),
                                                      ino=ino)).target

    # unlink, rmdir and rename return the time the namenode set the directories' mtime and
    # ctime to (0: not known, or nothing changed)
    def unlink(self, parent: int, name: str, caller: pb.Caller | None = None) -> int:
        return int(self._call("Unlink", pb.NameRequest(
            caller=self._who(caller), parent=parent, name=name)).time_ns)

    def rmdir(self, parent: int, name: str, caller: pb.Caller | None = None) -> int:
        return int(self._call("Rmdir", pb.NameRequest(
            caller=self._who(caller), parent=parent, name=name)).time_ns)

    def rename(self, src_parent: int, src_name: str, dst_parent: int, dst_name: str,
               caller: pb.Caller | None = None, *, flags: int = 0) -> int:
        """rename(2), with renameat2's ``RENAME_NOREPLACE`` and ``RENAME_EXCHANGE``."""
        return int(self._call("Rename", pb.RenameRequest(
            caller=self._who(caller), src_parent=src_parent, src_name=src_name,
            dst_parent=dst_parent, dst_name=dst_name, flags=flags)).time_ns)

    def readdir(self, ino: int, cursor: str = "", limit: int = 0,
                caller: pb.Caller | None = None) -> pb.ReadDirReply:
        """One page of directory ``ino`` after ``cursor``, with each entry's attributes."""
        return self._call("ReadDir", pb.ReadDirRequest(caller=self._who(caller), ino=ino,
                                                       cursor=cursor, limit=limit, attrs=True))

    # ------------------------------------------------------------------ attributes
    def getattr(self, ino: int, caller: pb.Caller | None = None,
                open_flags: int | None = None, *, read_inline: bool = False,
                have_version: int | None = None) -> pb.Attr:
        """The attributes of ``ino``; with ``open_flags``, for an open without a handle
        (the namenode checks and records it as an open). With ``read_inline`` too, a
        read-only open of an inline file that ``caller`` may read brings the whole file
        (``inline_data``), or, if the file is still at ``have_version``, word that the
        caller's copy is current (``inline_current``)."""
        req = pb.InodeRequest(caller=self._who(caller), ino=ino)
        if open_flags is not None:
            req.open, req.flags = True, open_flags
            if read_inline:
                req.read_inline = True
                if have_version is not None:
                    req.have_version = have_version
        return self._call("GetAttr", req)

    def setattr(self, ino: int, caller: pb.Caller | None = None, *, mode: int | None = None,
                uid: int | None = None, gid: int | None = None, size: int | None = None,
                times: tuple[int | None, int | None] | None = None,
                handle: int = 0) -> pb.Attr:
        """Change what is given: ``mode`` (permission bits), owner, ``size`` (truncate) and
        ``times`` (atime, mtime in ns as utimensat(2) takes them, see :func:`time_fields`).
        Returns the new attributes."""
        req = pb.SetAttrRequest(caller=self._who(caller), ino=ino, handle=handle)
        if mode is not None:
            req.mode = mode
        if uid is not None:
            req.uid = uid
        if gid is not None:
            req.gid = gid
        if size is not None:
            req.size = size
        if times is not None:
            for k, v in time_fields(*times).items():
                setattr(req, k, v)
        return self._call("SetAttr", req)

    def access(self, ino: int, mask: int, caller: pb.Caller | None = None) -> None:
        """access(2): EACCES unless ``caller`` may do ``mask`` (R_OK | W_OK | X_OK)."""
        self._call("Access", pb.AccessRequest(caller=self._who(caller), ino=ino, mask=mask))

    def statfs(self, caller: pb.Caller | None = None) -> pb.StatFsReply:
        return self._call("StatFs", pb.StatFsRequest(caller=self._who(caller)))

    # ------------------------------------------------------------------ xattrs
    def getxattr(self, ino: int, name: str, caller: pb.Caller | None = None) -> bytes:
        return self._call("GetXattr", pb.GetXattrRequest(caller=self._who(caller), ino=ino,
                                                         name=name)).value

    def setxattr(self, ino: int, name: str, value: bytes, flags: int = 0,
                 caller: pb.Caller | None = None) -> None:
        self._call("SetXattr", pb.SetXattrRequest(caller=self._who(caller), ino=ino, name=name,
                                                  value=bytes(value), flags=flags))

    def listxattr(self, ino: int, caller: pb.Caller | None = None) -> list[str]:
        return list(self._call("ListXattr", pb.InodeRequest(caller=self._who(caller),
                                                            ino=ino)).names)

    def removexattr(self, ino: int, name: str, caller: pb.Caller | None = None) -> None:
        self._call("RemoveXattr", pb.RemoveXattrRequest(caller=self._who(caller), ino=ino,
                                                        name=name))

    # ------------------------------------------------------------------ open files
    def open(self, ino: int, flags: int, caller: pb.Caller | None = None) -> pb.OpenReply:
        """Open inode ``ino`` (a namenode handle: the open's permission is checked now,
        and the inode lives while the handle does)."""
        return self._call("Open", pb.OpenRequest(caller=self._who(caller), ino=ino,
                                                 flags=flags))

    def release(self, handle: int, caller: pb.Caller | None = None) -> None:
        """Give back a handle from :meth:`open` that no file object holds."""
        self._call("Release", pb.ReleaseRequest(caller=self._who(caller), handle=handle))

    def file(self, path: str, opened: pb.OpenReply | pb.Attr, flags: int,
             caller: pb.Caller | None = None) -> "BlockFile":
        """The raw file over an open made by inode (:meth:`open` or :meth:`create`), or,
        given an inode's attributes, over a handle-less open (the namenode then checks
        permission on every read and write; attributes with ``inline_data``, the whole
        file as a :meth:`getattr` for the open brought it, serve the reads). Its data
        calls carry ``caller``."""
        from .blockfile import BlockFile

        if isinstance(opened, pb.OpenReply):
            reply = opened
        elif opened.HasField("inline_data"):
            reply = pb.OpenReply(attr=opened, data=opened.inline_data, has_data=True)
            reply.attr.ClearField("inline_data")  # (the file's attributes, kept with it)
        else:
            reply = pb.OpenReply(attr=opened)
        owner = self._client if caller is None else _CallerView(self._client, caller)
        return BlockFile(owner, path, reply, flags)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ locks
    def lock(self, ino: int, *, owner: int = 0, kind: int = pb.LOCK_POSIX,
             type: int = pb.LOCK_UNLOCK, start: int = 0, end: int = 0, pid: int = 0,
             handle: int = 0, test_only: bool = False, report_conflict: bool = False,
             caller: pb.Caller | None = None) -> pb.LockReply:
        """One try at a cluster-wide lock (never waits): ``kind`` LOCK_POSIX or LOCK_FLOCK,
        ``type`` LOCK_READ, LOCK_WRITE or LOCK_UNLOCK over bytes ``[start, end]``. The
        reply says whether it was granted, the conflicting lock otherwise, and the
        changelog position of the grant. ``ino`` 0 with LOCK_UNLOCK drops every lock of
        this client's session."""
        return self._call("Lock", pb.LockRequest(
            caller=self._who(caller), ino=ino, owner=owner, kind=kind, type=type, start=start,
            end=end, pid=pid, handle=handle, test_only=test_only,
            report_conflict=report_conflict))

    # ------------------------------------------------------------------ changelog, events
    def changelog_head(self, caller: pb.Caller | None = None) -> int:
        return self._call("ChangelogHead", pb.HeadRequest(caller=self._who(caller))).head

    def changelog(self, after: int, limit: int = 1000, wait_ms: int = 0,
                  caller: pb.Caller | None = None) -> list[pb.ChangeRecord]:
        """Records after position ``after`` (waiting up to ``wait_ms`` for the first)."""
        return list(self._call("ReadChangelog", pb.ReadChangelogRequest(
            caller=self._who(caller), after=after, limit=limit, wait_ms=wait_ms)).records)

    def record_access(self, events: Iterable[pb.AccessEvent],
                      caller: pb.Caller | None = None) -> None:
        """Send access events (which process read or wrote which file version)."""
        self._call("RecordAccess", pb.RecordAccessRequest(caller=self._who(caller),
                                                          events=list(events)))


class _CallerView:
    """The client as one open file sees it: the same connection, with the identity of the
    process that opened the file (so that file's data calls carry it)."""

    def __init__(self, client: "Client", caller: pb.Caller) -> None:
        self._client = client
        self.caller = caller

    def __getattr__(self, name: str) -> object:
        return getattr(self._client, name)
