"""The open files and directories of a metafs mount: open, create, read, write, flush,
fsync, release and fallocate; opendir, readdir and releasedir.

Reads are served by the client's file (:class:`metafs.client.blockfile.BlockFile`) with a
read-ahead buffer per open file on top; writes go through the mount's write-back buffers
(:mod:`.writeback`). With ``fuse_lazy_read_handles`` (the default, embedded or remote) an
open takes no namenode handle: the permission is checked here (with the namenode's rule, on
attributes fetched at the open: close-to-open) and by the namenode on every read and write;
a handle is taken when it becomes needed (the inode's mode changes while a writer has it
open, or its last name is removed through this mount). An open, create or 4 KiB write then
costs the namenode no handle row to insert and delete: a create is one Create call, a
small write over an existing file one Write (its write-only, truncating open goes on the
attributes the mount believes, without a GetAttr, see ``_open_attr``, and leaves the
truncation to that Write, see ``_open_lazy``).
"""

from __future__ import annotations

import errno
import logging
import os
import stat as stat_mod
import time
from collections import OrderedDict
from typing import Any, Iterator

from ..config import Settings
from ..posix import Cred, access_mask_to_want, allowed
from ..proto import metafs_pb2 as pb
from .cache import NOCAP_TTL, InlineData, created_at
from .handles import DirHandle, FuseError, Handle

log = logging.getLogger("metafs.fuse")

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10


def lazy_read_handles(settings: Settings) -> bool:
    """Whether opens skip the namenode handle (``fuse_lazy_read_handles``; ``auto`` is on:
    the mount promises close-to-open consistency between machines, which handle-less
    opens keep)."""
    v = str(settings.fuse_lazy_read_handles).strip().lower()
    return v in ("auto", "", "1", "true", "yes", "on")


def _emptied(attr: pb.Attr) -> pb.Attr:
    """``attr`` as a truncation to 0 leaves it (until the namenode's own answer)."""
    a = pb.Attr()
    a.CopyFrom(attr)
    a.size, a.inline = 0, True
    a.mtime_ns = a.ctime_ns = time.time_ns()
    return a


class FileOperations:
    """The open-file and open-directory operations of :class:`.ops.MetafsOperations`, a
    part of that class: they use its caches (``cache``), write-back buffers
    (``writeback``), calls by inode (``nodes``) and name resolution (``_ino_of``,
    ``_attr_of_path``, ``_attr_of_ino``, ``_retry_stale_parent``)."""

    handles: dict[int, Handle]
    open_by_ino: dict[int, set[Handle]]
    inline: InlineData
    _hidden: dict[str, int]
    _hidden_from: OrderedDict[str, str]
    follow_processes: bool

    # ------------------------------------------------------------------ directories
    def opendir(self, path: str) -> int:
        caller = self.caller()
        attr = self._attr_of_path(path, caller)
        if not stat_mod.S_ISDIR(attr.mode):
            raise FuseError(errno.ENOTDIR)
        with self._fh_lock:
            fh = self._next_fh
            self._next_fh += 1
        self._dirs[fh] = DirHandle(attr.ino, path)
        return fh

    def _fetch_page(self, d: DirHandle, caller: pb.Caller) -> None:
        r = self.nodes.readdir(d.ino, d.cursor, self.settings.readdir_page, caller)
        base = d.path.rstrip("/") + "/"
        name_exp = time.monotonic() + self.cache.name_ttl
        for e in r.entries:
            d.entries.append((e.name, e.mode, e.ino))
            if e.HasField("attr"):
                p = base + e.name
                self.cache.names[p] = (e.ino, name_exp)
                if e.ino not in self.writeback.dirty:
                    # (a page read before a write of this mount committed is older than
                    # the write's reply: set_attr keeps the later version)
                    self.cache.set_attr(e.attr)
                self.cache.path_of[e.ino] = p
        d.cursor = r.next_cursor
        d.eof = r.eof or not r.entries

    def readdir_with_offset(self, path: str | None, offset: int, fh: int
                            ) -> Iterator[tuple[str, dict[str, int], int]]:
        for name, mode, ino, off in self.readdir_entries(fh, offset):
            yield name, {"st_mode": mode, "st_ino": ino}, off

    def readdir_entries(self, fh: int, offset: int) -> Iterator[tuple[str, int, int, int]]:
        """``(name, mode, ino, next offset)`` of the entries from ``offset`` on (the binding
        fills libfuse's buffer from these without a dict per entry)."""
        d = self._dirs.get(fh)
        if d is None:
            raise FuseError(errno.EBADF)
        caller = self.caller()
        if offset == 0:
            yield ".", stat_mod.S_IFDIR, d.ino, 1
        if offset <= 1:
            yield "..", stat_mod.S_IFDIR, d.ino, 2  # (as before)
        i = max(0, offset - 2)
        entries = d.entries
        while True:
            with d.lock:
                if i >= len(entries) and not d.eof:
                    self._fetch_page(d, caller)
                n = len(entries)
                if i >= n:
                    return
                batch = entries[i:n]  # (pages only grow: no lock needed to read them)
            for name, mode, ino in batch:
                i += 1
                yield name, mode, ino, i + 2

    def releasedir(self, path: str | None, fh: int) -> int:
        self._dirs.pop(fh, None)
        return 0

    # ------------------------------------------------------------------ files
    def _new_handle(self, path: str, opened: pb.OpenReply | pb.Attr, flags: int,
                    caller: pb.Caller, fi: Any) -> Handle:
        """A FUSE file over an open by inode (an Attr: a handle-less open)."""
        raw = self.nodes.file(path, opened, flags & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC),
                              caller)
        attr = raw.attr
        with self._fh_lock:
            fh = self._next_fh
            self._next_fh += 1
            h = Handle(fh, attr.ino, path, flags, raw, caller)  # raw's calls carry ``caller``
            self.handles[fh] = h
            self.open_by_ino.setdefault(attr.ino, set()).add(h)
        self.cache.set_attr(attr)
        self.cache.path_of[attr.ino] = path
        versions = self.cache.seen_version.setdefault(attr.ino, {})
        seen = versions.get(path)
        fi.fh = fh
        fi.keep_cache = 1 if (self.settings.fuse_kernel_cache and seen == attr.version) else 0
        versions[path] = attr.version
        if seen != attr.version:
            self.writeback.bump(attr.ino)
        if self.recorder is not None:
            self.recorder.opened(h)
        return h

    def open(self, path: str, fi: Any) -> int:
        try:
            # An open of a hidden name takes a namenode handle: the file has no name left,
            # and only open handles keep it; one of them may close while this open is on
            # its way (a handle-less open would then read a freed inode).
            return self._open(path, fi, lazy=path not in self._hidden)
        except OSError as err:
            replaced = self._hidden_from.get(path) if err.errno == errno.ENOENT else None
            if replaced is None:
                raise
        # The kernel opens a name it looked up just before another process replaced (or
        # removed) it while it was open here: libfuse renamed its node to the hidden name,
        # and the file is gone now. The name it had may name a new file: that is opened,
        # as an open after the replace would (else ENOENT, which the binding turns into
        # ESTALE). The kernel's node is the gone file's: it must keep none of its pages,
        # and its attributes go, so its next read asks for the new file's size; a new
        # file of another type is left to the kernel's new lookup (after ESTALE). This
        # open takes a namenode handle too: libfuse holds no lock on the name it opens
        # (a rename replacing it now would not see a handle-less open in time).
        if not stat_mod.S_ISREG(self._attr_of_path(replaced, self.caller()).mode):
            raise FuseError(errno.ENOENT)
        self._open(replaced, fi, lazy=False)
        fi.keep_cache = 0
        self.kernel.now((path,))
        return 0

    def _open(self, path: str, fi: Any, lazy: bool) -> int:
        """Open ``path``; ``lazy``: without a namenode handle if the mount does so."""
        caller = self.caller()
        flags = fi.flags
        ino = self._ino_of(path, caller)
        if ino in self.writeback.dirty:
            self.writeback.flush_ino(ino)
        if lazy and self._lazy_reads:
            return self._open_lazy(path, ino, flags, caller, fi)
        oflags = flags & ~(os.O_CREAT | os.O_EXCL)
        try:
            reply = self.nodes.open(ino, oflags, caller)
        except OSError as err:
            if err.errno != errno.ENOENT:
                raise
            self.cache.forget_path(path)
            reply = self.nodes.open(self._ino_of(path, caller), oflags, caller)
        if flags & os.O_TRUNC:
            self.writeback.bump(ino)
        self._new_handle(path, reply, flags, caller, fi)
        return 0

    def _open_lazy(self, path: str, ino: int, flags: int, caller: pb.Caller, fi: Any) -> int:
        """Open without a namenode handle (embedded namenode): the namenode checks
        permission on every read and write instead (see ``fuse_lazy_read_handles``)."""
        acc = flags & os.O_ACCMODE
        mask = {os.O_RDONLY: os.R_OK, os.O_WRONLY: os.W_OK}.get(acc, os.R_OK | os.W_OK)
        if flags & os.O_TRUNC:
            mask |= os.W_OK
        attr, believed = self._open_attr(path, ino, caller, flags)
        if stat_mod.S_ISLNK(attr.mode):
            raise FuseError(errno.ELOOP)
        if mask & os.W_OK or not self._kernel_checks:
            # the namenode's own rule, on the attributes it just gave (no second call)
            cred = Cred(caller.uid, caller.gid, frozenset(caller.groups))
            if not allowed(cred, attr.mode, attr.uid, attr.gid, access_mask_to_want(mask)):
                raise FuseError(errno.EACCES)
        truncate = bool(flags & os.O_TRUNC and (attr.size or believed))
        if truncate and self.open_by_ino.get(attr.ino):
            # (this mount's other open files of it see the empty file at once)
            attr = self.cache.set_attr(self.nodes.setattr(attr.ino, caller, size=0))
            self.writeback.bump(attr.ino)
            self.refresh_others(attr.ino, attr)
            truncate = False
        elif truncate:
            # on believed attributes the file is emptied whatever size they say: another
            # client may have written to it since they were fetched
            attr = _emptied(attr)
        h = self._new_handle(path, attr, flags, caller, fi)
        if truncate:
            # The truncation goes to the namenode with the first write through this file
            # (one Write call that replaces the file's content), or alone at its flush.
            # Until then it counts as a buffered write of the file: it is sent before
            # anything reads the file's data through this mount, or another open file of
            # it writes or opens; a stat is answered with the emptied file's attributes
            # (this mount sees the empty file from now on).
            h.raw.defer_truncate()
            self.writeback.truncating(h)
            fi.keep_cache = 0
        return 0

    def _open_attr(self, path: str, ino: int, caller: pb.Caller, flags: int
                   ) -> tuple[pb.Attr, bool]:
        """The attributes an open of ``ino`` with ``flags`` is decided on, and whether they
        are only believed (not fetched). A write-only open that truncates needs nothing of
        the file's old data, version or size: it goes on the attributes the mount believes
        (those of the lookup just before it, kept as long as the kernel's attribute
        timeout, or until the changelog follower reports another client's change) for its
        permission check, as the kernel's own checks do, and the file is emptied by its
        first write (or a SetAttr), which the namenode checks again and answers with the
        fresh attributes: no GetAttr. An open by a process the namenode
        knows (its key: the project boundary's check of an open for writing) asks the
        namenode first."""
        if flags & os.O_ACCMODE == os.O_WRONLY and flags & os.O_TRUNC and not caller.process:
            believed = self.cache.attr(ino)
            if believed is not None:
                return believed, True
        return self._fresh_attr(path, ino, caller, flags), False

    def _pin_handles(self, ino: int) -> None:
        """Give this mount's handle-less write opens of ``ino`` real namenode handles
        before its mode or owner changes: a file opened for writing stays writable
        through its descriptor whatever its mode becomes (POSIX)."""
        for h in list(self.open_by_ino.get(ino, ())):
            raw = h.raw
            if raw.handle or h.flags & os.O_ACCMODE == os.O_RDONLY:
                continue
            try:
                r = self.nodes.open(ino, h.flags & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC),
                                    self.own_caller())
                raw.adopt_handle(r.handle)
            except OSError as err:
                log.warning("cannot pin a handle for inode %d: %s", ino, err)

    def _fresh_attr(self, path: str, ino: int, caller: pb.Caller, flags: int) -> pb.Attr:
        """The inode's current attributes from the namenode (close-to-open), for an open
        with ``flags`` (the namenode checks and records it as an open)."""
        try:
            return self._revalidate(ino, caller, flags)
        except OSError as err:
            if err.errno != errno.ENOENT:
                raise
            self.cache.forget_path(path)
            return self._revalidate(self._lookup(path, caller).ino, caller, flags)

    def _revalidate(self, ino: int, caller: pb.Caller, flags: int) -> pb.Attr:
        """One GetAttr for an open of ``ino``. A read-only open asks for the file's data
        too: a small (inline) file the caller may read comes with it (or, when it is still
        at the version ``inline`` holds, the namenode's word that the caller may read
        that copy), and the attributes returned then carry it (``inline_data``: the open
        file's reads are served from it, see ``Inodes.file``)."""
        read = flags & (os.O_ACCMODE | os.O_TRUNC) == os.O_RDONLY
        attr = self.nodes.getattr(ino, caller, open_flags=flags, read_inline=read,
                                  have_version=self.inline.version(ino) if read else None)
        data = None
        if attr.HasField("inline_data"):
            data = attr.inline_data
            attr.ClearField("inline_data")  # (the attributes are kept, the data only here)
            self.inline.put(attr, data)
        elif attr.inline_current:
            attr.inline_current = False
            data = self.inline.get(attr)
        believed = self.cache.set_attr(attr)
        if data is None or believed is not attr:
            return believed
        opened = pb.Attr()
        opened.CopyFrom(attr)
        opened.inline_data = data
        return opened

    def _keep_alive(self, ino: int) -> None:
        """Take a namenode handle for ``ino`` if a handle-less open of this mount holds it
        (its last name is about to be removed through this mount). Another open's own
        namenode handle is no keeper for it: that open may be closed first (the fallback
        open of a replaced name's new file takes one), and the namenode then frees the
        inode under the handle-less open's reads (ENOENT). The handle taken is kept until
        the mount's last open of the inode is released.

        The open sets, and the keepers, change under ``_fh_lock``, but the namenode call is
        made outside it: a keeper taken while the last open was released, or by a
        concurrent call for the same inode, is given back at once instead of kept."""
        def needs_keeper() -> bool:
            hs = self.open_by_ino.get(ino)
            return bool(hs) and ino not in self._keepalive and \
                not all(h.raw.handle for h in hs)

        with self._fh_lock:
            if not needs_keeper():
                return
        try:
            r = self.nodes.open(ino, os.O_RDONLY, self.own_caller())
        except OSError as err:
            log.warning("cannot keep inode %d alive for its open files: %s", ino, err)
            return
        with self._fh_lock:
            kept = needs_keeper()
            if kept:
                self._keepalive[ino] = r.handle
        if not kept:
            self._release_keeper(r.handle)

    def _release_keeper(self, handle: int) -> None:
        try:
            self.nodes.release(handle, self.own_caller())
        except OSError:
            pass  # the session's lease reclaims it

    def create(self, path: str, mode: int, fi: Any) -> int:
        caller = self.caller()
        flags = fi.flags
        # The creator owns the new file: without a handle, its own mode bits must let it
        # do what it opened the file for (a file made 0444 for writing takes a handle).
        acc = flags & os.O_ACCMODE
        need = {os.O_RDONLY: 0o400, os.O_WRONLY: 0o200}.get(acc, 0o600)
        handle = not (self._lazy_reads and (caller.uid == 0 or mode & need == need))
        reply = self._retry_stale_parent(path, caller, lambda p, n: self.nodes.create(
            p, n, (mode & 0o7777) | stat_mod.S_IFREG, caller, exclusive=bool(flags & os.O_EXCL),
            open=handle, flags=flags & ~(os.O_CREAT | os.O_EXCL)), created_at)
        self.cache.remember(path, reply.attr)
        self.cache.nocap[reply.attr.ino] = time.monotonic() + NOCAP_TTL  # a new file has no xattrs
        self._new_handle(path, reply, flags, caller, fi)
        return 0

    def _handle(self, fi: Any, *, session: bool = False) -> Handle:
        """The open file of ``fi``. With ``session`` (before buffered writes go out), a
        session not renewed for most of its lease is renewed first, so that a lock lost
        with it is known before the writes made under it are committed."""
        if session:
            self.client.ensure_session()
        h = self.handles.get(fi.fh if not isinstance(fi, int) else fi)
        if h is None:
            raise FuseError(errno.EBADF)
        if h.error is not None:
            err, h.error = h.error, None
            raise err
        if h.lock_lost:
            raise FuseError(errno.EIO, "a lock held through this open file was lost with the "
                            "mount's session (its lease ran out while the namenode could not "
                            "be reached); close the file")
        return h

    def read(self, path: str | None, size: int, offset: int,
             fi: Any) -> bytes | bytearray | memoryview:
        h = self._handle(fi)
        if h.ino in self.writeback.dirty:
            self.writeback.flush_ino(h.ino)
        h.did_read = True
        h.io_ns = time.time_ns()
        epoch = self.writeback.epoch(h.ino)
        with h.lock:
            rbuf, rbuf_off, rbuf_epoch = h.rbuf, h.rbuf_off, h.rbuf_epoch
        if rbuf_epoch == epoch:
            start = offset - rbuf_off
            if 0 <= start and offset + size <= rbuf_off + len(rbuf):
                return memoryview(rbuf)[start:start + size]
        # No lock around the read: the kernel's read-ahead sends several reads of one
        # file at once, and the data path serves them in parallel. The result may be a
        # view of an immutable block buffer; the binding copies it into the reply. A
        # sequential reader gets up to ``readahead`` bytes at once (kept for its next
        # calls); a random one only what it asked for.
        data = h.raw.read_view(offset, size, ahead=self.readahead - size)
        if len(data) > size:
            with h.lock:
                h.rbuf, h.rbuf_off, h.rbuf_epoch = data, offset, epoch
            return memoryview(data)[:size]
        return data

    def write(self, path: str | None, data: bytes | memoryview, offset: int, fi: Any) -> int:
        """``data`` may be a view of libfuse's request buffer: it is copied, never kept."""
        h = self._handle(fi)
        self._follow_writer(h)
        self.writeback.write(h, data, offset)
        return len(data)

    def _follow_writer(self, h: Handle) -> None:
        """A process writing through a descriptor another one opened (its parent's: the
        shell's ``{ cat A; } > B``) is checked by the namenode as if it opened the file
        for writing now, and the file's later data calls carry it: the project boundary
        follows the process that writes, not only the one that opened."""
        from .binding import fuse_context

        pid = fuse_context()[2]
        if not pid or pid == h.writer or not self.follow_processes:
            return
        key = self.procs.key(pid)
        if key != h.caller.process:
            writer = pb.Caller()
            writer.CopyFrom(h.caller)
            writer.pid, writer.process = pid, key
            self.nodes.getattr(h.ino, writer, open_flags=os.O_WRONLY)
            with h.lock:  # what the opener wrote goes out as the opener's
                self.writeback.commit(h)
                h.caller.pid, h.caller.process = pid, key
        h.writer = pid

    def _wrote(self, h: Handle) -> None:
        """After a commit: the handle's view of the attributes is the namenode's."""
        attr = h.raw.attr
        if attr.ino == h.ino:
            self.cache.set_attr(attr)
            self.cache.seen_version[h.ino] = {h.path: attr.version}
        else:
            self.cache.forget_ino(h.ino)
            self.cache.seen_version.pop(h.ino, None)
        if h.ino in self.cache.links:
            self._other_names_changed(h.ino, h.path)
        self.refresh_others(h.ino, h.raw.attr, h)

    def refresh_others(self, ino: int, attr: pb.Attr | None,
                        writer: Handle | None = None) -> None:
        """Other open files of ``ino`` in this mount must see what was just committed (at
        version ``attr``; None: ask the namenode if needed) at once, as processes on one
        machine share one file, not only at their next open: their read-ahead buffers go,
        and their files drop the layout, size and version they know (a partial-chunk write
        based on a stale size would write stale bytes back)."""
        fetched: list[pb.Attr] = []

        def current() -> pb.Attr:
            if not fetched:
                fetched.append(self.nodes.getattr(ino, self.own_caller()))
            return fetched[0]

        for o in list(self.open_by_ino.get(ino, ())):
            if o is writer:
                continue
            o.rbuf, o.rbuf_epoch = b"", -1
            # (a file holding uncommitted writes commits them before this handle writes
            # again, see write())
            o.raw.refresh(attr if attr is not None else current)

    def flush(self, path: str | None, fi: Any) -> int:
        h = self._handle(fi, session=True)
        with h.lock:
            self.writeback.commit(h)
            if h.did_write or h.did_read:
                h.io_ns = time.time_ns()  # close(2): the process is still here, in its run
        return 0

    def fsync(self, path: str | None, datasync: int, fi: Any) -> int:
        h = self._handle(fi, session=True)
        with h.lock:
            self.writeback.commit(h)
        return 0

    def _release_handle(self, h: Handle) -> None:
        kept = None
        with self._fh_lock:
            self.handles.pop(h.fh, None)
            hs = self.open_by_ino.get(h.ino)
            if hs is not None:
                hs.discard(h)
                if not hs:
                    self.open_by_ino.pop(h.ino, None)
                    kept = self._keepalive.pop(h.ino, None)
        if kept:
            self._release_keeper(kept)
        err: OSError | None = h.error
        with h.lock:
            try:
                self.writeback.commit(h)
            except OSError as exc:
                err = err or exc
            try:
                if h.raw.handle:
                    h.raw.close()
                else:  # no namenode handle to release
                    h.raw.discard()
            except OSError as exc:
                err = err or exc
        if self.recorder is not None:
            self.recorder.closed(h)
        if err is not None:
            raise FuseError(err.errno or errno.EIO, str(err))

    def release(self, path: str | None, fi: Any) -> int:
        h = self.handles.get(fi.fh)
        if h is None:
            return 0
        self._release_handle(h)
        return 0

    def fallocate(self, path: str | None, mode: int, offset: int, size: int, fi: Any) -> int:
        h = self._handle(fi)
        if offset < 0 or size <= 0:
            raise FuseError(errno.EINVAL)
        if mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
            raise FuseError(errno.EOPNOTSUPP)
        caller = self.caller()
        with h.lock:
            h.did_write = True
            self.writeback.commit(h)
            cur = self._attr_of_ino(h.ino, caller).size
            end = offset + size
            if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
                # metafs has no preallocation: zeroing is writing zeros (holes read as zeros)
                stop = min(end, cur) if mode & FALLOC_FL_KEEP_SIZE else end
                pos = offset
                chunk = 1 << 20
                while pos < stop:
                    n = min(chunk, stop - pos)
                    h.raw.write_at(pos, bytes(n))
                    pos += n
                h.raw.commit()
                self._wrote(h)
            elif not mode & FALLOC_FL_KEEP_SIZE and end > cur:
                h.raw.resize(end)
                self._wrote(h)
        self.writeback.bump(h.ino)
        return 0

