"""``metafs.Client``: the Python client library.

    from metafs import Client

    with Client(data_dir="/tmp/mfs") as fs:          # embedded namenode, in-process
        fs.makedirs("/datasets/coco", exist_ok=True)
        with fs.open("/datasets/coco/a.json", "w") as f:
            f.write("{}")
        fs.setxattr("/datasets/coco/a.json", "user.tags", b'{"bicycles": 4}')

    fs = Client("namenode-host:7420")                 # a remote namenode over gRPC

Paths are absolute (relative paths are taken from the root). Every failure is raised as the
matching ``OSError`` subclass (``FileNotFoundError``, ``PermissionError``, ...) with the
path in it, exactly as the ``os`` module does.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import socket
import stat as stat_mod
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from .. import config as config_mod
from ..config import Settings
from ..errors import FsError
from ..posix import ROOT_INO
from ..proto import metafs_pb2 as pb
from . import file as file_mod
from . import search as search_mod
from .access import AccessRecorder
from .blockfile import BlockFile
from .blocks import WINDOW, BlockContext
from .inodes import Inodes, time_fields
from .provenance import Graph, Provenance
from .search import DEFAULT_LIMIT, SearchResult
from .inodes import UTIME_NOW as UTIME_NOW, UTIME_OMIT as UTIME_OMIT  # os.utime's specials
from .transport import GrpcTransport, LocalTransport, Transport


log = logging.getLogger("metafs.client")

# A session not renewed for this share of its lease is renewed before the next call.
_LATE = 0.75
# Calls that need a live session, and the errno a namenode refuses them with without one
# (a session it lost before this client noticed: the call is made again in a new one)
_NEEDS_SESSION = {"Open": errno.EACCES, "Create": errno.EACCES, "Lock": errno.ENOLCK}


def _check_utf8(p: str) -> str:
    """metafs names are UTF-8: a lone surrogate (os.fsdecode of other bytes) is EILSEQ."""
    try:
        p.encode("utf-8")
    except UnicodeEncodeError:
        raise OSError(errno.EILSEQ, "metafs names must be valid UTF-8", p) from None
    return p


def to_stat(a: pb.Attr) -> os.stat_result:
    """An ``os.stat_result`` for a metafs inode (st_dev is 0: metafs is not a local device)."""
    blocks = (a.size + 511) // 512
    return os.stat_result((
        a.mode, a.ino, 0, a.nlink, a.uid, a.gid, a.size,
        a.atime_ns // 1_000_000_000, a.mtime_ns // 1_000_000_000, a.ctime_ns // 1_000_000_000,
        a.atime_ns / 1e9, a.mtime_ns / 1e9, a.ctime_ns / 1e9,
        a.atime_ns, a.mtime_ns, a.ctime_ns,
        4096, blocks, a.rdev,
    ))


@dataclass
class BulkFile:
    """One entry of :meth:`Client.bulk_create`."""

    path: str
    data: bytes = b""
    mode: int = 0o644
    xattrs: Mapping[str, bytes] = field(default_factory=dict)
    is_dir: bool = False


class DirEntry:
    """Like ``os.DirEntry``, for :meth:`Client.scandir`."""

    __slots__ = ("name", "path", "_ino", "_mode", "_attr", "_client")

    def __init__(self, client: "Client", parent: str, e: pb.DirEntry) -> None:
        self.name = e.name
        self.path = posixpath.join(parent, e.name)
        self._ino = e.ino
        self._mode = e.mode
        self._attr = e.attr if e.HasField("attr") else None
        self._client = client

    def inode(self) -> int:
        return self._ino

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        if follow_symlinks and stat_mod.S_ISLNK(self._mode):
            try:
                return stat_mod.S_ISDIR(self._client.stat(self.path).st_mode)
            except OSError:
                return False
        return stat_mod.S_ISDIR(self._mode)

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        if follow_symlinks and stat_mod.S_ISLNK(self._mode):
            try:
                return stat_mod.S_ISREG(self._client.stat(self.path).st_mode)
            except OSError:
                return False
        return stat_mod.S_ISREG(self._mode)

    def is_symlink(self) -> bool:
        return stat_mod.S_ISLNK(self._mode)

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        if self._attr is not None and not (follow_symlinks and self.is_symlink()):
            return to_stat(self._attr)
        return self._client.stat(self.path, follow_symlinks=follow_symlinks)

    def __repr__(self) -> str:
        return f"<metafs.DirEntry {self.name!r}>"


def start_embedded_namenode(settings: Settings) -> Any:
    """Start the in-process namenode of ``Client(data_dir=...)``. The package entry
    (``metafs/__init__``) replaces this with the factory of a namenode with its parts;
    the client does not import the namenode itself."""
    raise RuntimeError("no embedded namenode factory is installed")


class Client:
    """A connection to a metafs namenode (remote over gRPC, or embedded in-process)."""

    def __init__(self, namenode: str | None = None, *, data_dir: str | None = None,
                 settings: Settings | None = None, transport: Transport | None = None,
                 uid: int | None = None, gid: int | None = None,
                 groups: Sequence[int] | None = None, run_id: str | None = None,
                 host: str | None = None) -> None:
        if settings is None:
            overrides: dict[str, Any] = {}
            if namenode:
                overrides["namenode"] = namenode
            if data_dir:
                overrides["data_dir"] = data_dir
            settings = config_mod.load(overrides=overrides)
        elif namenode or data_dir:
            settings = settings.with_(**{k: v for k, v in
                                         (("namenode", namenode), ("data_dir", data_dir)) if v})
        self.settings = settings
        self._embedded = None
        if transport is None:
            if settings.namenode and not data_dir:
                from .auth import identity_for_client, make_transport  # TLS, tokens

                transport = make_transport(settings)
                bound = identity_for_client(transport)  # claim the ids we authenticate as
                if bound is not None and uid is None and gid is None and groups is None:
                    uid, gid, groups = bound
            else:
                self._embedded = start_embedded_namenode(settings)
                transport = LocalTransport(self._embedded, owns=True)
        self.transport = transport
        self.client_id = uuid.uuid4().hex
        self.host = host or socket.gethostname()
        self.caller = pb.Caller(
            uid=os.getuid() if uid is None else uid,
            gid=os.getgid() if gid is None else gid,
            groups=list(os.getgroups() if groups is None else groups),
            pid=os.getpid(), client_id=self.client_id,
            run_id=os.environ.get("METAFS_RUN_ID", "") if run_id is None else run_id)
        self._closed = threading.Event()
        # The session: renewed every third of its lease. ``session_epoch`` counts the
        # sessions this client had to open again because the namenode had lost the one
        # before (see renew_session); open files compare it with the epoch of their handle.
        self.session_epoch = 0
        self._session_mu = threading.Lock()
        self._session_started: int | None = None
        self._renewed_at = 0.0
        self._lease = float("inf")
        self._lost_listeners: list[Callable[[], None]] = []
        try:
            reply = self._open_session()
        except FsError as err:
            raise err.to_oserror(err.path) from None
        self.inline_limit = reply.inline_limit
        self.block_size = reply.block_size
        self.io_buffer_size = max(reply.inline_limit, 64 * 1024)
        self._renewer = threading.Thread(target=self._renew, name="metafs-session", daemon=True)
        self._renewer.start()
        # the block data path: stores, block cache, layouts shared by the files it opens
        self.blocks = BlockContext(settings)
        # chunks of layout a read-only open asks for (presigned reads need URLs: GetLayout
        # asks for them)
        self.open_layout_blocks = 0 if settings.block_presign else WINDOW
        self.access_recorder = AccessRecorder(self)  # provenance: what it reads and writes
        self.inodes = Inodes(self)  # the calls by inode number (a mount's API)

    # ------------------------------------------------------------------ plumbing
    @property
    def embedded(self) -> Any:
        """The in-process namenode, when this client runs one."""
        return self._embedded

    def _renew(self) -> None:
        while not self._closed.wait(max(self._lease / 3, 0.5)):
            try:
                self.renew_session()
            except FsError:
                pass  # namenode away for now: try again next round

    def _open_session(self) -> pb.SessionReply:
        """Open or renew this client's session (caller holds ``_session_mu``, or is
        ``__init__``); notices a session the namenode lost (see :meth:`renew_session`)."""
        sent = time.monotonic()
        reply = self.transport.call("OpenSession", pb.SessionRequest(
            caller=self.caller, client_id=self.client_id, host=self.host))
        self._lease = reply.lease_seconds
        before, self._session_started = self._session_started, reply.started_ns
        lost = before is not None and reply.started_ns != before
        if lost:
            self.session_epoch += 1
        # (after the epoch: a call that finds the session renewed finds the new epoch too)
        self._renewed_at = sent
        if lost:
            log.warning("session %s was lost (its lease ran out while the namenode could not "
                        "be reached, and it was reaped) and is opened again: open files "
                        "reopen their handles; locks held in it are lost", self.client_id)
            for fn in list(self._lost_listeners):
                fn()
        return reply

    def renew_session(self) -> bool:
        """Renew this client's session now. True when the namenode had lost it (closed, or
        reaped after its lease ran out, with the handles and locks it held) and this call
        opened a new one under the same client id: :attr:`session_epoch` then grows by
        one and the listeners of :meth:`on_session_lost` are called. Raises FsError when
        the namenode cannot be reached."""
        with self._session_mu:
            epoch = self.session_epoch
            self._open_session()
            return self.session_epoch != epoch

    def on_session_lost(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` (from the thread that noticed, which must not wait for it to make
        namenode calls) each time the namenode is found to have lost this client's
        session."""
        self._lost_listeners.append(fn)

    def ensure_session(self) -> None:
        """Renew the session now if it was not renewed for most of its lease (the namenode
        was away, or this process was stopped): a session lost meanwhile is noticed, and a
        new one opened, before what follows depends on it. Every call does this first."""
        if time.monotonic() - self._renewed_at > self._lease * _LATE:
            self._late_renewal()

    def _late_renewal(self) -> None:
        """The renewal of :meth:`ensure_session` (one thread renews, the others wait)."""
        with self._session_mu:
            if time.monotonic() - self._renewed_at <= self._lease * _LATE:
                return  # renewed meanwhile by another thread
            try:
                self._open_session()
            except FsError:
                pass  # the call itself finds out

    def identity(self, uid: int, gid: int, groups: Iterable[int] = (), pid: int = 0,
                 project: str = "") -> pb.Caller:
        """The identity of another user or process, for calls made on its behalf in this
        client's session (a mount acts for every process of its machine; a namenode with
        authentication ignores claims it cannot verify). ``project``: a project gateway's
        claim, ``uid`` as its member in that project."""
        return pb.Caller(uid=uid, gid=gid, groups=groups, pid=pid, client_id=self.client_id,
                         project=project)

    def _call(self, method: str, request: Any, path: str | None = None,
              epoch: int | None = None) -> Any:
        """``epoch``: the call is part of what a lock held in session number ``epoch``
        covers (see ``RawFile.fence``); EIO, and nothing sent, once that session is lost."""
        self.ensure_session()
        if epoch is not None and epoch != self.session_epoch:
            raise OSError(errno.EIO, "a lock this write depends on was lost with the client's "
                          "session (its lease ran out while the namenode could not be "
                          "reached); nothing was written", path)
        try:
            return self.transport.call(method, request)
        except FsError as err:
            failed = err
        if _NEEDS_SESSION.get(method) == failed.errno and self._session_was_lost():
            try:
                return self.transport.call(method, request)  # in the new session
            except FsError as err:
                failed = err
        raise failed.to_oserror(path if path is not None else failed.path) from None

    def _session_was_lost(self) -> bool:
        """After a call was refused for want of a live session: whether the namenode had
        lost the session (a new one is open now, see :meth:`renew_session`)."""
        try:
            return self.renew_session()
        except FsError:
            return False

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self.access_recorder.close()
        if self._embedded is not None:
            try:
                self._embedded.ns.close_session(self.client_id)
            except Exception:
                pass
        self.transport.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ resolution
    @staticmethod
    def _norm(path: str | os.PathLike[str]) -> str:
        p = os.fspath(path)
        if not isinstance(p, str):
            raise TypeError("metafs paths are str")
        if not p:
            raise FileNotFoundError(errno.ENOENT, "empty path", p)
        _check_utf8(p)
        return p if p.startswith("/") else "/" + p

    def _resolve(self, path: str, follow: bool = True) -> pb.Entry:
        return self._call("Resolve", pb.ResolveRequest(
            caller=self.caller, path=path, follow=follow), path)

    def _split(self, path: str) -> tuple[int, str]:
        """(parent inode, last name) of a path, resolving the parent (following links)."""
        p = path.rstrip("/")
        if not p:
            raise OSError(errno.EBUSY, "the root cannot be changed this way", path)
        parent, name = posixpath.split(p)
        if parent in ("", "/"):
            return ROOT_INO, name
        entry = self._resolve(parent, follow=True)
        if not stat_mod.S_ISDIR(entry.attr.mode):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", path)
        return entry.ino, name

    def ino(self, path: str | os.PathLike[str], follow_symlinks: bool = True) -> int:
        return self._resolve(self._norm(path), follow_symlinks).ino

    # ------------------------------------------------------------------ metadata
    def stat(self, path: str | os.PathLike[str], *, follow_symlinks: bool = True
             ) -> os.stat_result:
        return to_stat(self._resolve(self._norm(path), follow_symlinks).attr)

    def lstat(self, path: str | os.PathLike[str]) -> os.stat_result:
        return self.stat(path, follow_symlinks=False)

    def exists(self, path: str | os.PathLike[str]) -> bool:
        try:
            self.stat(path)
            return True
        except FileNotFoundError:
            return False

    def isdir(self, path: str | os.PathLike[str]) -> bool:
        try:
            return stat_mod.S_ISDIR(self.stat(path).st_mode)
        except OSError:
            return False

    def isfile(self, path: str | os.PathLike[str]) -> bool:
        try:
            return stat_mod.S_ISREG(self.stat(path).st_mode)
        except OSError:
            return False

    def islink(self, path: str | os.PathLike[str]) -> bool:
        try:
            return stat_mod.S_ISLNK(self.lstat(path).st_mode)
        except OSError:
            return False

    def access(self, path: str | os.PathLike[str], mode: int) -> bool:
        p = self._norm(path)
        try:
            e = self._resolve(p)
            self._call("Access", pb.AccessRequest(caller=self.caller, ino=e.ino, mask=mode), p)
            return True
        except (PermissionError, FileNotFoundError, NotADirectoryError):
            return False

    def statvfs(self) -> pb.StatFsReply:
        return self._call("StatFs", pb.StatFsRequest(caller=self.caller))

    def scandir(self, path: str | os.PathLike[str] = "/", *, page: int = 0
                ) -> Iterator[DirEntry]:
        """Entries of a directory (without '.' and '..'), fetched page by page, so a
        directory of millions of entries is never held whole."""
        p = self._norm(path)
        ino = self._resolve(p).ino
        cursor = ""
        while True:
            reply = self._call("ReadDir", pb.ReadDirRequest(
                caller=self.caller, ino=ino, cursor=cursor, limit=page, attrs=True), p)
            for e in reply.entries:
                yield DirEntry(self, p, e)
            if reply.eof or not reply.entries:
                return
            cursor = reply.next_cursor

    def listdir(self, path: str | os.PathLike[str] = "/") -> list[str]:
        return [e.name for e in self.scandir(path)]

    def walk(self, top: str | os.PathLike[str] = "/", topdown: bool = True
             ) -> Iterator[tuple[str, list[str], list[str]]]:
        top = self._norm(top)
        try:
            entries = list(self.scandir(top))
        except OSError:
            return
        dirs = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
        files = [e.name for e in entries if not e.is_dir(follow_symlinks=False)]
        if topdown:
            yield top, dirs, files
        for d in list(dirs):
            yield from self.walk(posixpath.join(top, d), topdown)
        if not topdown:
            yield top, dirs, files

    # ------------------------------------------------------------------ changes
    def mkdir(self, path: str | os.PathLike[str], mode: int = 0o777) -> None:
        p = self._norm(path)
        parent, name = self._split(p)
        self._call("Mkdir", pb.MkdirRequest(caller=self.caller, parent=parent, name=name,
                                            mode=mode, umask=self.umask), p)

    umask = 0o022

    def mknod(self, path: str | os.PathLike[str], mode: int = 0o600 | stat_mod.S_IFIFO,
              device: int = 0) -> None:
        """Like ``os.mknod``: make a file system node of the type in ``mode``'s type bits,
        a FIFO (``S_IFIFO``), a socket (``S_IFSOCK``), a regular file (``S_IFREG``, or no
        type bits) or, for root only (EPERM otherwise), a character or block device
        (``S_IFCHR``, ``S_IFBLK``) numbered ``device`` (as ``os.makedev`` makes it; it is
        ``st_rdev``). The permission bits are masked with :attr:`umask`. EEXIST when
        ``path`` exists; directories and symlinks have their own calls (EINVAL here)."""
        p = self._norm(path)
        parent, name = self._split(p)
        self._call("Create", pb.CreateRequest(caller=self.caller, parent=parent, name=name,
                                              mode=mode, umask=self.umask, exclusive=True,
                                              open=False, rdev=device), p)

    def makedirs(self, path: str | os.PathLike[str], mode: int = 0o777,
                 exist_ok: bool = False) -> None:
        p = self._norm(path).rstrip("/") or "/"
        if p == "/":
            if not exist_ok:
                raise FileExistsError(errno.EEXIST, "file exists", p)
            return
        head, _ = posixpath.split(p)
        if head and head != "/" and not self.exists(head):
            self.makedirs(head, mode, exist_ok=True)
        try:
            self.mkdir(p, mode)
        except FileExistsError:
            if not exist_ok or not self.isdir(p):
                raise

    def remove(self, path: str | os.PathLike[str]) -> None:
        p = self._norm(path)
        parent, name = self._split(p)
        self._call("Unlink", pb.NameRequest(caller=self.caller, parent=parent, name=name), p)

    unlink = remove

    def rmdir(self, path: str | os.PathLike[str]) -> None:
        p = self._norm(path)
        parent, name = self._split(p)
        self._call("Rmdir", pb.NameRequest(caller=self.caller, parent=parent, name=name), p)

    def rmtree(self, path: str | os.PathLike[str]) -> None:
        p = self._norm(path)
        for top, dirs, files in list(self.walk(p, topdown=False)):
            for f in files:
                self.remove(posixpath.join(top, f))
            for d in dirs:
                self.rmdir(posixpath.join(top, d))
        self.rmdir(p)

    def rename(self, src: str | os.PathLike[str], dst: str | os.PathLike[str], *,
               noreplace: bool = False, exchange: bool = False) -> None:
        """POSIX rename(2): atomically replaces ``dst`` (a file, or an empty directory when
        ``src`` is a directory). ``noreplace`` and ``exchange`` are renameat2's flags."""
        s, d = self._norm(src), self._norm(dst)
        sp, sn = self._split(s)
        dp, dn = self._split(d)
        flags = (pb.RENAME_NOREPLACE if noreplace else 0) | (pb.RENAME_EXCHANGE if exchange else 0)
        self._call("Rename", pb.RenameRequest(caller=self.caller, src_parent=sp, src_name=sn,
                                              dst_parent=dp, dst_name=dn, flags=flags), s)

    def replace(self, src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        self.rename(src, dst)

    def symlink(self, target: str, path: str | os.PathLike[str]) -> None:
        p = self._norm(path)
        parent, name = self._split(p)
        self._call("Symlink", pb.SymlinkRequest(caller=self.caller, parent=parent, name=name,
                                                target=_check_utf8(os.fspath(target))), p)

    def readlink(self, path: str | os.PathLike[str]) -> str:
        p = self._norm(path)
        e = self._resolve(p, follow=False)
        return self._call("Readlink", pb.InodeRequest(caller=self.caller, ino=e.ino), p).target

    def link(self, src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        s, d = self._norm(src), self._norm(dst)
        e = self._resolve(s, follow=False)
        dp, dn = self._split(d)
        self._call("Link", pb.LinkRequest(caller=self.caller, ino=e.ino, new_parent=dp,
                                          new_name=dn), d)

    def chmod(self, path: str | os.PathLike[str], mode: int, *,
              follow_symlinks: bool = True) -> None:
        p = self._norm(path)
        e = self._resolve(p, follow_symlinks)
        self._call("SetAttr", pb.SetAttrRequest(caller=self.caller, ino=e.ino, mode=mode), p)

    def chown(self, path: str | os.PathLike[str], uid: int, gid: int, *,
              follow_symlinks: bool = True) -> None:
        p = self._norm(path)
        e = self._resolve(p, follow_symlinks)
        req = pb.SetAttrRequest(caller=self.caller, ino=e.ino)
        if uid != -1:
            req.uid = uid
        if gid != -1:
            req.gid = gid
        self._call("SetAttr", req, p)

    def utime(self, path: str | os.PathLike[str], times: tuple[float, float] | None = None,
              *, ns: tuple[int, int] | None = None, follow_symlinks: bool = True) -> None:
        """As ``os.utime``; a time of UTIME_NOW or UTIME_OMIT (nanoseconds) has their
        utimensat(2) meaning."""
        p = self._norm(path)
        e = self._resolve(p, follow_symlinks)
        if times is not None and ns is not None:
            raise ValueError("utime: you may specify either 'times' or 'ns' but not both")
        if times is None and ns is None:
            fields = time_fields(None, None)
        else:
            vals = ns if ns is not None else tuple(int(t * 1e9) for t in times)  # type: ignore
            fields = time_fields(*vals)
        self._call("SetAttr", pb.SetAttrRequest(caller=self.caller, ino=e.ino, **fields), p)

    def truncate(self, path: str | os.PathLike[str], size: int) -> None:
        p = self._norm(path)
        if size < 0:
            raise OSError(errno.EINVAL, "negative size", p)
        e = self._resolve(p)
        if not e.attr.inline or size > self.inline_limit:
            with self.open(p, "r+b") as f:
                f.truncate(size)
            return
        self._call("SetAttr", pb.SetAttrRequest(caller=self.caller, ino=e.ino, size=size), p)

    # ------------------------------------------------------------------ xattrs
    def getxattr(self, path: str | os.PathLike[str], name: str, *,
                 follow_symlinks: bool = True) -> bytes:
        p = self._norm(path)
        e = self._resolve(p, follow_symlinks)
        return self._call("GetXattr", pb.GetXattrRequest(caller=self.caller, ino=e.ino,
                                                         name=name), p).value

    def setxattr(self, path: str | os.PathLike[str], name: str, value: bytes, flags: int = 0,
                 *, follow_symlinks: bool = True) -> None:
        p = self._norm(path)
        e = self._resolve(p, follow_symlinks)
        self._call("SetXattr", pb.SetXattrRequest(caller=self.caller, ino=e.ino, name=name,
                                                  value=bytes(value), flags=flags), p)

    def listxattr(self, path: str | os.PathLike[str], *, follow_symlinks: bool = True
                  ) -> list[str]:
        p = self._norm(path)
        e = self._resolve(p, follow_symlinks)
        return list(self._call("ListXattr", pb.InodeRequest(caller=self.caller, ino=e.ino),
                               p).names)

    def removexattr(self, path: str | os.PathLike[str], name: str, *,
                    follow_symlinks: bool = True) -> None:
        p = self._norm(path)
        e = self._resolve(p, follow_symlinks)
        self._call("RemoveXattr", pb.RemoveXattrRequest(caller=self.caller, ino=e.ino,
                                                        name=name), p)

    # ------------------------------------------------------------------ data
    def open(self, path: str | os.PathLike[str], mode: str = "r", buffering: int = -1,
             encoding: str | None = None, errors: str | None = None,
             newline: str | None = None, *, perm: int = 0o666) -> Any:
        """Open a file like the built-in ``open()``; returns a normal file object."""
        p = self._norm(path)
        flags, binary, _ = file_mod.parse_mode(mode)
        reply = self._open(p, flags, perm)
        f = file_mod.make_file(self, p, reply, flags, binary=binary, buffering=buffering,
                               encoding=encoding, errors=errors, newline=newline,
                               raw_class=BlockFile)
        if not binary:
            f.mode = mode
        return f

    def _open(self, p: str, flags: int, perm: int) -> pb.OpenReply:
        """Open (or create) ``p``: one call, the namenode resolving the path. A read-only
        open of an inline file brings its data along and holds no handle."""
        if flags & os.O_CREAT and p.rstrip("/"):
            try:
                return self._call("Create", pb.CreateRequest(
                    caller=self.caller, path=p, mode=stat_mod.S_IFREG | perm,
                    umask=self.umask, exclusive=bool(flags & os.O_EXCL), open=True,
                    flags=flags & ~(os.O_CREAT | os.O_EXCL)), p)
            except OSError as exc:
                # an existing symlink: open what it points to (creating it if missing)
                if exc.errno != errno.ELOOP or flags & os.O_EXCL:
                    raise
                try:
                    target = self._resolve(p, follow=True)
                except FileNotFoundError:
                    link = self.readlink(p)
                    dest = link if link.startswith("/") else posixpath.join(
                        posixpath.dirname(p), link)
                    return self._open(dest, flags, perm)
                return self._call("Open", pb.OpenRequest(
                    caller=self.caller, ino=target.ino, flags=flags & ~os.O_CREAT), p)
        return self._call("Open", pb.OpenRequest(
            caller=self.caller, path=p, flags=flags,
            read_inline=flags & (os.O_ACCMODE | os.O_TRUNC) == os.O_RDONLY,
            layout_blocks=self.open_layout_blocks), p)

    def read_bytes(self, path: str | os.PathLike[str]) -> bytes:
        with self.open(path, "rb") as f:
            return f.read()

    def write_bytes(self, path: str | os.PathLike[str], data: bytes) -> int:
        with self.open(path, "wb") as f:
            return f.write(data)

    # ------------------------------------------------------------------ bulk
    def bulk_create(self, parent: str | os.PathLike[str], entries: Iterable[BulkFile | tuple],
                    *, make_parents: bool = True, exist_ok: bool = True) -> list[int]:
        """Create many files (with their small contents and xattrs) in one call, committed
        in transactions of ``bulk_chunk_entries`` entries: an error found before the
        first (a bad name, a path given twice) creates none; one met in a later chunk
        leaves the earlier chunks created. Returns their inode numbers."""
        p = self._norm(parent)
        try:
            base = self._resolve(p).ino
        except FileNotFoundError:
            if not make_parents:
                raise
            self.makedirs(p, exist_ok=True)
            base = self._resolve(p).ino
        req = pb.BulkCreateRequest(caller=self.caller, parent=base, make_parents=make_parents,
                                   exist_ok=exist_ok)
        for e in entries:
            if isinstance(e, tuple):
                e = BulkFile(*e)
            mode = (stat_mod.S_IFDIR if e.is_dir else stat_mod.S_IFREG) | (e.mode & 0o7777)
            req.entries.add(path=e.path, mode=mode, data=bytes(e.data),
                            xattrs={k: bytes(v) for k, v in e.xattrs.items()})
        return list(self._call("BulkCreate", req, p).inos)

    # ------------------------------------------------------------------ changelog
    def changelog(self, after: int = 0, limit: int = 1000, wait_ms: int = 0
                  ) -> tuple[list[pb.ChangeRecord], int]:
        """Records with seq > ``after`` (at most ``limit``), and the head."""
        r = self._call("ReadChangelog", pb.ReadChangelogRequest(
            caller=self.caller, after=after, limit=limit, wait_ms=wait_ms))
        return list(r.records), r.head

    def subscribe(self, after: int = 0) -> Iterator[pb.ChangeRecord]:
        """Every record after ``after``, then new ones as they commit (until closed).
        A stream that breaks (its namenode gone or restarting) goes on after the last
        record it gave, on another namenode when there are several, for up to
        ``failover_timeout`` (see :meth:`GrpcTransport.stream`). Failures (a namenode at its
        subscriber limit: EAGAIN) raise OSError like any call."""
        stream = self.transport.stream(
            "SubscribeChangelog", pb.ReadChangelogRequest(caller=self.caller, after=after),
            resume=lambda rec: pb.ReadChangelogRequest(caller=self.caller, after=rec.seq))
        try:
            yield from stream
        except FsError as err:
            raise err.to_oserror() from None

    def changelog_head(self) -> int:
        return self._call("ChangelogHead", pb.HeadRequest(caller=self.caller)).head

    # ------------------------------------------------------------------ search
    def search(self, query: str, *, limit: int = DEFAULT_LIMIT, offset: int = 0,
               sort: str | None = None, wait: bool = False, count: bool = False,
               timeout: float | None = None) -> SearchResult:
        """Search files by name, attributes and JSON tags, e.g.
        ``fs.search('bicycles>3 ext:jpg under:/datasets/coco', limit=20, wait=True)``:
        the namenode's Search call, for an embedded namenode as for a remote one.
        ``wait=True`` first waits (up to ``timeout`` seconds) until the index reflects
        every change committed before the call. Returns a
        :class:`~metafs.client.search.SearchResult` (``.hits``, ``.paths``, ``.position``);
        a malformed query raises :class:`~metafs.client.search.QueryError`."""
        return search_mod.search(self, query, limit=limit, offset=offset, sort=sort,
                                 wait=wait, count=count, timeout=timeout)

    # ------------------------------------------------------------------ provenance
    def provenance(self) -> Provenance:
        """A :class:`~metafs.client.provenance.Provenance` over this client: ``show``,
        ``upstream``, ``downstream`` and ``runs`` of paths, with ``as_of``."""
        return Provenance(self)

    def upstream(self, path: str, **kw: Any) -> Graph:
        """What went into ``path``: the runs that wrote it and what they read (a Graph)."""
        return Provenance(self).upstream(path, **kw)

    def downstream(self, path: str, **kw: Any) -> Graph:
        """What ``path`` fed: the runs that read it and what they wrote (a Graph)."""
        return Provenance(self).downstream(path, **kw)

    @contextmanager
    def as_user(self, uid: int, gid: int, groups: Sequence[int] = ()) -> Iterator["Client"]:
        """Temporarily claim another identity (for tools running as root on behalf of a
        user; a namenode with authentication ignores claims it cannot verify)."""
        saved = pb.Caller()
        saved.CopyFrom(self.caller)
        self.caller.uid, self.caller.gid = uid, gid
        del self.caller.groups[:]
        self.caller.groups.extend(groups)
        try:
            yield self
        finally:
            self.caller.CopyFrom(saved)
