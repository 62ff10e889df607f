"""Looking at a volume from a client: one entry in detail (``info``), a directory tree
summed up (``summary``), and blocks fetched ahead into the local block cache
(``warmup``). Everything here goes through a :class:`metafs.client.Client`, so it works
on an embedded and a remote namenode alike."""

from __future__ import annotations

import errno
import json
import posixpath
import stat
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator

from ..errors import FsError
from ..proto import metafs_pb2 as pb

#: reports progress: (units done so far, units in all or None while unknown)
ProgressFn = Callable[[int, "int | None"], None]


def _call(fs: Any, method: str, request: Any, path: str) -> Any:
    try:
        return fs.transport.call(method, request)
    except FsError as err:
        raise err.to_oserror(path) from None


def layout(fs: Any, path: str) -> pb.LayoutReply:
    """The layout of regular file ``path``: inline data, or its blocks in the store."""
    st = fs.stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory", path)
    return _call(fs, "GetLayout", pb.LayoutRequest(caller=fs.caller, ino=st.st_ino), path)


def _tag_value(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "backslashreplace")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISREG, "file"),
                       (stat.S_ISLNK, "symlink"), (stat.S_ISFIFO, "fifo"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "char device"),
                       (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "other"


def info(fs: Any, path: str, *, lineage: bool = True) -> dict[str, Any]:
    """Everything about one entry: attributes, data version, layout (inline or blocks),
    tags (``user.*`` attributes, JSON decoded) and, with ``lineage``, a summary of its
    provenance (versions, the runs that wrote and read it)."""
    st = fs.lstat(path)
    out: dict[str, Any] = {
        "path": path, "ino": st.st_ino, "type": _kind(st.st_mode),
        "mode": stat.filemode(st.st_mode), "nlink": st.st_nlink, "uid": st.st_uid,
        "gid": st.st_gid, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns}
    if stat.S_ISREG(st.st_mode):
        lay = layout(fs, path)
        out["version"] = lay.attr.version
        out["storage"] = "inline" if lay.attr.inline else "blocks"
        if not lay.attr.inline:
            out["block_size"] = lay.block_size
            out["store"] = lay.store_url
            out["blocks"] = [{"index": b.index, "key": b.key, "length": b.length}
                             for b in lay.blocks]
    elif stat.S_ISLNK(st.st_mode):
        out["target"] = fs.readlink(path)
    elif stat.S_ISDIR(st.st_mode):
        out["entries"] = sum(1 for _ in fs.scandir(path))
    names = fs.listxattr(path, follow_symlinks=False)
    out["tags"] = {n[len("user."):]: _tag_value(fs.getxattr(path, n, follow_symlinks=False))
                   for n in sorted(names) if n.startswith("user.")}
    if lineage:
        out["lineage"] = _lineage(fs, path)
    return out


def _lineage(fs: Any, path: str) -> dict[str, Any]:
    """How many versions the provenance graph knows of ``path`` and which runs wrote and
    read it (names and ids, newest last)."""
    from ..cdc.provenance import Provenance

    with Provenance(fs) as p:
        shown = p.show(path)
    writers: dict[int, str] = {}
    readers: dict[int, str] = {}
    for v in shown["versions"]:
        for r in v["written_by"]:
            writers[r["id"]] = r.get("name") or str(r["id"])
        for r in v["read_by"]:
            readers[r["id"]] = r.get("name") or str(r["id"])
    return {"kind": shown["kind"], "versions": len(shown["versions"]),
            "written_by": [{"run": k, "name": v} for k, v in sorted(writers.items())],
            "read_by": [{"run": k, "name": v} for k, v in sorted(readers.items())]}


# ---------------------------------------------------------------------- summary
@dataclass
class Usage:
    """What a directory holds, all the way down (as ``du`` counts it)."""

    path: str
    dirs: int = 0
    files: int = 0
    others: int = 0        # symlinks, fifos, devices, sockets
    bytes: int = 0
    inline_files: int = 0
    inline_bytes: int = 0
    block_files: int = 0
    block_bytes: int = 0

    def add(self, other: "Usage") -> None:
        for k in ("dirs", "files", "others", "bytes", "inline_files", "inline_bytes",
                  "block_files", "block_bytes"):
            setattr(self, k, getattr(self, k) + getattr(other, k))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Summary:
    total: Usage
    children: list[Usage] = field(default_factory=list)  # per directory, to ``depth``

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total.to_dict(), "dirs": [u.to_dict() for u in self.children]}


def _entries(fs: Any, path: str) -> Iterator[Any]:
    """The entries of directory ``path`` with their attributes (pb.DirEntry)."""
    ino = fs.stat(path).st_ino
    cursor = ""
    while True:
        reply = _call(fs, "ReadDir", pb.ReadDirRequest(caller=fs.caller, ino=ino,
                                                       cursor=cursor, attrs=True), path)
        yield from reply.entries
        if reply.eof or not reply.entries:
            return
        cursor = reply.next_cursor


def summary(fs: Any, path: str, *, depth: int = 1,
            progress: ProgressFn | None = None) -> Summary:
    """Sum up the tree under ``path``: files, bytes, inline against blocks, for the whole
    tree and for each directory down to ``depth`` levels (0: only the total)."""
    st = fs.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        one = Usage(path)
        _count(one, st.st_mode, st.st_size,
               stat.S_ISREG(st.st_mode) and layout(fs, path).attr.inline)
        return Summary(one)
    seen = [0]
    listed: list[Usage] = []

    def walk(p: str, level: int) -> Usage:
        u = Usage(p)
        for e in _entries(fs, p):
            a = e.attr
            child = posixpath.join(p, e.name)
            if stat.S_ISDIR(a.mode):
                sub = walk(child, level + 1)
                u.add(sub)
                u.dirs += 1
            else:
                _count(u, a.mode, a.size, a.inline)
            seen[0] += 1
            if progress:
                progress(seen[0], None)
        if 0 < level <= depth:
            listed.append(u)
        return u

    total = walk(path, 0)
    listed.sort(key=lambda u: u.path)
    return Summary(total, listed)


def _count(u: Usage, mode: int, size: int, inline: bool) -> None:
    if not stat.S_ISREG(mode):
        u.others += 1
        return
    u.files += 1
    u.bytes += size
    if inline:
        u.inline_files += 1
        u.inline_bytes += size
    else:
        u.block_files += 1
        u.block_bytes += size


# ---------------------------------------------------------------------- warmup
@dataclass
class WarmupStats:
    files: int = 0
    inline_files: int = 0   # nothing to fetch: their data lives in the metadata
    blocks: int = 0
    bytes: int = 0
    cached: int = 0         # blocks the local cache holds afterwards
    cache_dir: str = ""     # "" when this client has no block cache

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _files_under(fs: Any, paths: Iterable[str]) -> Iterator[str]:
    for p in paths:
        if stat.S_ISDIR(fs.stat(p).st_mode):
            for top, _dirs, files in fs.walk(p):
                for f in files:
                    full = posixpath.join(top, f)
                    if stat.S_ISREG(fs.lstat(full).st_mode):
                        yield full
        else:
            yield p


def cache_for(fs: Any, store_url: str) -> Any:
    """A view of the local block cache this client fills for ``store_url`` (None: the
    client caches no blocks of that store)."""
    from ..blockstore.cache import DiskCache
    from ..client.blocks import cache_dir_for

    root = cache_dir_for(fs.settings, store_url)
    if not root:
        return None
    s = fs.settings
    return DiskCache(root, s.block_cache_size, s.block_cache_free_ratio, namespace=store_url)


def warmup(fs: Any, paths: Iterable[str], *, progress: ProgressFn | None = None
           ) -> WarmupStats:
    """Fetch the blocks of the files at ``paths`` (directories: every file under them)
    into the client's local block cache, verified against their checksums, so a job that
    reads them later finds them there; then count the blocks the cache holds. Blocks
    already cached are not fetched again. Without a block cache (``block_cache_dir`` off,
    or "auto" on a local store) there is nothing to warm: ``cache_dir`` is "" then."""
    from concurrent.futures import ThreadPoolExecutor

    from ..blockstore import open_store
    from ..blockstore.base import read_verified

    st = WarmupStats()
    refs: list[pb.BlockRef] = []
    store_url = ""
    for path in _files_under(fs, paths):
        lay = layout(fs, path)
        st.files += 1
        if lay.attr.inline:
            st.inline_files += 1
            continue
        store_url = lay.store_url
        refs.extend(lay.blocks)
        st.blocks += len(lay.blocks)
        st.bytes += sum(b.length for b in lay.blocks)
    cache = cache_for(fs, store_url) if refs else None
    if cache is None:
        return st
    if fs.settings.block_presign:
        raise OSError(errno.EOPNOTSUPP, "warmup fetches blocks from the store itself; this "
                      "client reads blocks through presigned URLs (block_presign)")
    st.cache_dir = str(cache.root)
    store = open_store(store_url, fs.settings)
    done = [0]

    def fetch(ref: pb.BlockRef) -> None:
        if not _cached(cache, ref):
            cache.put(ref.key, bytes(read_verified(store, ref.key, ref.checksum, 0,
                                                   ref.length)))

    with ThreadPoolExecutor(max(1, fs.settings.block_parallel)) as pool:
        for ref, _ in zip(refs, pool.map(fetch, refs)):
            done[0] += ref.length
            if progress:
                progress(done[0], st.bytes)
    st.cached = sum(1 for b in refs if _cached(cache, b))
    return st


def _cached(cache: Any, ref: pb.BlockRef) -> bool:
    """Whether ``cache`` holds all of block ``ref``."""
    return cache.get_range(ref.key, max(0, ref.length - 1), ref.length) is not None
