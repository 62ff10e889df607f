"""Request handlers: protobuf requests in, protobuf replies out, FsError on failure.

The same handlers serve both transports: the gRPC server wraps them (turning FsError into
a structured status), and the in-process transport calls them directly.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from typing import Any, Callable, Iterator

from ..config import Settings
from ..errors import FsError
from ..posix import ROOT_INO, Cred
from ..proto import metafs_pb2 as pb
from .namespace import Namespace
from .status import namenode_status  # version, sessions, lag, health

log = logging.getLogger("metafs.namenode")

EMPTY = pb.Empty()
_ID_FIELDS = ("ino", "parent", "src_parent", "dst_parent", "new_parent", "start", "handle")
_ID_MAX = (1 << 63) - 1


_ID_FIELDS_OF: dict[type, tuple[str, ...]] = {}


def _id_fields(cls: type) -> tuple[str, ...]:
    """The id fields a request class has (looked up once per class, not per call)."""
    got = _ID_FIELDS_OF.get(cls)
    if got is None:
        names = cls.DESCRIPTOR.fields_by_name  # type: ignore[attr-defined]
        got = _ID_FIELDS_OF[cls] = tuple(f for f in _ID_FIELDS if f in names)
    return got


def _inode_fields(cls: type) -> tuple[str, ...]:
    """The inode-number fields of a request class (its id fields but the handle)."""
    return tuple(f for f in _id_fields(cls) if f != "handle")


def _time(how: int, ns: int) -> tuple[int, int]:
    return how, ns


class Handlers:
    """One method per RPC of the Namenode service."""

    def __init__(self, ns: Namespace, settings: Settings) -> None:
        self.ns = ns
        self.settings = settings
        # Authentication (metafs.ops.auth, installed by the caller) may replace this to bind callers to ids.
        self.cred_of: Callable[[pb.Caller, Any], Cred] = lambda c, ctx: Cred.from_pb(c)
        self._stopping = threading.Event()
        # The search service (metafs.cdc.search.service) attaches itself here when the
        # caller starts the namenode with it (metafs.assembly).
        self.search: Callable[[Cred, pb.SearchRequest], pb.SearchReply] | None = None
        # Likewise the provenance service (metafs.cdc.provenance.service).
        self.provenance: Callable[[Cred, pb.ProvenanceRequest], pb.ProvenanceReply] | None = None

    def stop(self) -> None:
        self._stopping.set()

    def c(self, req: Any, ctx: Any = None, *, reach: bool = True) -> Cred:
        """The caller's credentials. Unless ``reach`` is False (the operation checks
        within its own statement or transaction: GetAttr, Lookup, Open), the inodes the
        request names are checked as the paths to them would be."""
        for f in _id_fields(type(req)):  # uint64 ids past what any database holds name nothing
            v = getattr(req, f)
            if v > _ID_MAX:
                raise FsError(errno.EBADF if f == "handle" else errno.ENOENT,
                              f"no {'handle' if f == 'handle' else 'inode'} {v}")
        cred = self.cred_of(req.caller, ctx)
        if reach and not cred.trusted and not cred.is_root:
            # An authenticated, untrusted caller names inodes only as a path would reach
            # them (see lookups.reach_checked).
            for f in _inode_fields(type(req)):
                v = getattr(req, f)
                if v:
                    self.ns.check_reachable(cred, v)
        return cred

    def service_cred(self, req: Any, ctx: Any, what: str) -> Cred:
        """The caller of a call that reads the whole namespace's changes: only a trusted
        (service) identity, or any caller where no one is authenticated."""
        cred = self.c(req, ctx)
        if not cred.trusted:
            raise FsError(errno.EACCES, f"{what} needs a service identity (one marked "
                          "trusted in the namenode's auth_file): the changelog names files "
                          "in every directory, and identity "
                          f"{cred.identity!r} is not trusted")
        return cred

    # -- sessions
    def OpenSession(self, req: pb.SessionRequest, ctx: Any = None) -> pb.SessionReply:
        return self.ns.open_session(self.c(req, ctx), req.client_id, req.host)

    # -- lookups
    def Lookup(self, req: pb.LookupRequest, ctx: Any = None) -> pb.Entry:
        return self.ns.lookup(self.c(req, ctx, reach=False), req.parent, req.name)

    def Resolve(self, req: pb.ResolveRequest, ctx: Any = None) -> pb.Entry:
        return self.ns.resolve(self.c(req, ctx), req.path, req.start, req.follow)

    def GetAttr(self, req: pb.InodeRequest, ctx: Any = None) -> pb.Attr:
        cred = self.c(req, ctx, reach=False)
        if req.open:
            return self.ns.open_attr(
                cred, req.ino, req.flags, read_inline=req.read_inline,
                have_version=req.have_version if req.HasField("have_version") else None)
        return self.ns.getattr(cred, req.ino)

    def SetAttr(self, req: pb.SetAttrRequest, ctx: Any = None) -> pb.Attr:
        return self.ns.setattr(
            self.c(req, ctx), req.ino,
            mode=req.mode if req.HasField("mode") else None,
            uid=req.uid if req.HasField("uid") else None,
            gid=req.gid if req.HasField("gid") else None,
            size=req.size if req.HasField("size") else None,
            atime=_time(req.atime_how, req.atime_ns), mtime=_time(req.mtime_how, req.mtime_ns),
            handle=req.handle)

    # -- namespace changes
    def Create(self, req: pb.CreateRequest, ctx: Any = None) -> pb.OpenReply:
        cred = self.c(req, ctx)
        parent, name = req.parent, req.name
        if req.path:
            if parent or name:
                raise FsError(errno.EINVAL, "give either a path or a parent and a name")
            parent, name = self.ns.resolve_parent(cred, req.path)
        return self.ns.create(cred, parent, name, req.mode, req.umask,
                              req.exclusive, req.open, req.flags, req.rdev)

    def Mkdir(self, req: pb.MkdirRequest, ctx: Any = None) -> pb.Entry:
        return self.ns.mkdir(self.c(req, ctx), req.parent, req.name, req.mode, req.umask)

    def Unlink(self, req: pb.NameRequest, ctx: Any = None) -> pb.Changed:
        return pb.Changed(time_ns=self.ns.unlink(self.c(req, ctx), req.parent, req.name) or 0)

    def Rmdir(self, req: pb.NameRequest, ctx: Any = None) -> pb.Changed:
        return pb.Changed(time_ns=self.ns.rmdir(self.c(req, ctx), req.parent, req.name) or 0)

    def Rename(self, req: pb.RenameRequest, ctx: Any = None) -> pb.Changed:
        return pb.Changed(time_ns=self.ns.rename(
            self.c(req, ctx), req.src_parent, req.src_name, req.dst_parent, req.dst_name,
            req.flags) or 0)

    def Link(self, req: pb.LinkRequest, ctx: Any = None) -> pb.Entry:
        return self.ns.link(self.c(req, ctx), req.ino, req.new_parent, req.new_name)

    def Symlink(self, req: pb.SymlinkRequest, ctx: Any = None) -> pb.Entry:
        return self.ns.symlink(self.c(req, ctx), req.parent, req.name, req.target)

    def Readlink(self, req: pb.InodeRequest, ctx: Any = None) -> pb.ReadlinkReply:
        return pb.ReadlinkReply(target=self.ns.readlink(self.c(req, ctx), req.ino))

    def ReadDir(self, req: pb.ReadDirRequest, ctx: Any = None) -> pb.ReadDirReply:
        return self.ns.readdir(self.c(req, ctx), req.ino, req.cursor, req.limit, req.attrs)

    def StatFs(self, req: pb.StatFsRequest, ctx: Any = None) -> pb.StatFsReply:
        return self.ns.statfs(self.c(req, ctx))

    # -- xattrs
    def GetXattr(self, req: pb.GetXattrRequest, ctx: Any = None) -> pb.XattrReply:
        return self.ns.getxattr(self.c(req, ctx), req.ino, req.name, req.size)

    def SetXattr(self, req: pb.SetXattrRequest, ctx: Any = None) -> pb.Empty:
        self.ns.setxattr(self.c(req, ctx), req.ino, req.name, req.value, req.flags)
        return EMPTY

    def ListXattr(self, req: pb.InodeRequest, ctx: Any = None) -> pb.ListXattrReply:
        return pb.ListXattrReply(names=self.ns.listxattr(self.c(req, ctx), req.ino))

    def RemoveXattr(self, req: pb.RemoveXattrRequest, ctx: Any = None) -> pb.Empty:
        self.ns.removexattr(self.c(req, ctx), req.ino, req.name)
        return EMPTY

    def Access(self, req: pb.AccessRequest, ctx: Any = None) -> pb.Empty:
        self.ns.access(self.c(req, ctx), req.ino, req.mask)
        return EMPTY

    # -- handles and data
    def Open(self, req: pb.OpenRequest, ctx: Any = None) -> pb.OpenReply:
        cred = self.c(req, ctx, reach=False)  # checked in the open's own transaction
        ino = req.ino
        if req.path:
            if ino:
                raise FsError(errno.EINVAL, "give either a path or an inode number")
            ino = self.ns.resolve(cred, req.path, ROOT_INO, True).ino
        reply = self.ns.open(cred, ino, req.flags, read_inline=req.read_inline)
        if (req.layout_blocks and not reply.has_data and not reply.attr.inline
                and req.flags & (os.O_ACCMODE | os.O_TRUNC) == os.O_RDONLY
                and stat.S_ISREG(reply.attr.mode)):
            # what the reader's first GetLayout would ask for, without the call (if it
            # cannot be had, the open still stands: the reader asks with GetLayout)
            try:
                reply.layout.CopyFrom(self.ns.blocks.get_layout(
                    cred, ino, reply.handle, 0, req.layout_blocks))
            except Exception as exc:  # noqa: BLE001 - the handle must reach its owner
                log.info("open of inode %d: no layout with it (%s)", ino, exc)
        return reply

    def Release(self, req: pb.ReleaseRequest, ctx: Any = None) -> pb.WriteReply:
        cred = self.c(req, ctx)
        reply = pb.WriteReply()
        if req.HasField("write"):
            w = req.write
            if w.handle != req.handle:
                raise FsError(errno.EINVAL, "the last write must be on the handle released")
            return self.ns.write(cred, w.ino, w.offset, w.data, w.handle, w.append,
                                 release=True, truncate=w.truncate)
        self.ns.release(cred, req.handle)
        return reply

    def Read(self, req: pb.ReadRequest, ctx: Any = None) -> pb.ReadReply:
        return self.ns.read(self.c(req, ctx), req.ino, req.offset, req.size, req.handle)

    def Write(self, req: pb.WriteRequest, ctx: Any = None) -> pb.WriteReply:
        return self.ns.write(self.c(req, ctx), req.ino, req.offset, req.data, req.handle,
                             req.append, truncate=req.truncate)

    def BulkCreate(self, req: pb.BulkCreateRequest, ctx: Any = None) -> pb.BulkCreateReply:
        return self.ns.bulk_create(self.c(req, ctx), req.parent, req.entries,
                                   req.make_parents, req.exist_ok)

    # -- changelog
    def ReadChangelog(self, req: pb.ReadChangelogRequest,
                      ctx: Any = None) -> pb.ReadChangelogReply:
        self.service_cred(req, ctx, "reading the changelog")
        recs, head = self.ns.changelog_read(req.after, req.limit, urgent=not req.wait_ms)
        if not recs and req.wait_ms:
            deadline = time.monotonic() + min(req.wait_ms, 60_000) / 1000
            while not recs and time.monotonic() < deadline and not self._stopping.is_set():
                self.ns.notifier.wait(req.after, min(self.settings.changelog_poll,
                                                     max(deadline - time.monotonic(), 0)))
                recs, head = self.ns.changelog_read(req.after, req.limit, settle=False)
        return pb.ReadChangelogReply(records=recs, head=head)

    def SubscribeChangelog(self, req: pb.ReadChangelogRequest,
                           ctx: Any = None) -> Iterator[pb.ChangeRecord]:
        """Stream every record after ``req.after``, then follow the tail until cancelled."""
        self.service_cred(req, ctx, "subscribing to the changelog")
        after = req.after
        batch = min(req.limit or 1000, 10_000)
        settle = True  # read-your-writes once, for what was committed before the call
        while not self._stopping.is_set() and (ctx is None or ctx.is_active()):
            recs, _ = self.ns.changelog_read(after, batch, settle=settle, urgent=False)
            settle = False
            for r in recs:
                yield r
                after = r.seq
            if len(recs) < batch:
                self.ns.notifier.wait(after, self.settings.changelog_poll)

    def ChangelogHead(self, req: pb.HeadRequest, ctx: Any = None) -> pb.HeadReply:
        self.c(req, ctx)
        return pb.HeadReply(head=self.ns.changelog_head())

    # -- provenance records: bound to the caller's uid, its runs and what it may access
    # (metafs.namenode.runs)
    def RecordAccess(self, req: pb.RecordAccessRequest, ctx: Any = None) -> pb.Empty:
        self.ns.record_access(self.c(req, ctx), req.events)
        return EMPTY

    def RecordRun(self, req: pb.RunRecordRequest, ctx: Any = None) -> pb.Empty:
        self.ns.record_run(self.c(req, ctx), req.run_id, req.json)
        return EMPTY

    def Provenance(self, req: pb.ProvenanceRequest, ctx: Any = None) -> pb.ProvenanceReply:
        """Lineage questions (metafs.cdc.provenance.service), filtered for the caller."""
        cred = self.c(req, ctx)
        if self.provenance is None:
            raise FsError(errno.EOPNOTSUPP, "this namenode has no provenance service")
        return self.provenance(cred, req)

    # -- block data (large files): metafs.namenode.blocks
    def GetLayout(self, req: pb.LayoutRequest, ctx: Any = None) -> pb.LayoutReply:
        return self.ns.blocks.get_layout(self.c(req, ctx), req.ino, req.handle,
                                         req.first_index, req.count, req.presign)

    def CommitBlocks(self, req: pb.CommitBlocksRequest, ctx: Any = None) -> pb.Attr:
        return self.ns.blocks.commit(self.c(req, ctx), req)

    def Presign(self, req: pb.PresignRequest, ctx: Any = None) -> pb.PresignReply:
        return self.ns.blocks.presign(self.c(req, ctx), req.ino, req.handle, req.keys, req.put)


    # -- file locks (metafs.namenode.locks): never waits, EAGAIN on a conflict
    def Lock(self, req: pb.LockRequest, ctx: Any = None) -> pb.LockReply:
        return self.ns.locks.lock(self.c(req, ctx), req)

    # -- search (metafs.cdc.search.service)
    def Status(self, req: pb.StatusRequest, ctx: Any = None) -> pb.StatusReply:

        return namenode_status(self.ns, self.settings, root=self.c(req, ctx).uid == 0)

    def Search(self, req: pb.SearchRequest, ctx: Any = None) -> pb.SearchReply:
        cred = self.c(req, ctx)
        if self.search is None:
            raise FsError(errno.EOPNOTSUPP, "this namenode has no search service")
        return self.search(cred, req)


def internal_error(exc: BaseException, method: str) -> FsError:
    """An unexpected failure: logged here with its traceback, EIO for the caller."""
    log.exception("internal error in %s", method)
    return FsError(errno.EIO, f"internal namenode error in {method} ({type(exc).__name__}); "
                   "see the namenode log")
