"""``metafs://`` for fsspec, so pandas, pyarrow, dask and friends open metafs paths:

    import pandas as pd
    df = pd.read_parquet("metafs:///datasets/coco/labels.parquet")   # configured namenode
    df = pd.read_parquet("metafs://nn1:7420/datasets/coco/labels.parquet")
    fs = fsspec.filesystem("metafs", data_dir="/tmp/mfs")            # embedded

Registered through the ``fsspec.specs`` entry point. URLs are ``metafs:///ABS/PATH``
(the namenode comes from the metafs configuration: config file, METAFS_NAMENODE, ...) or
``metafs://HOST:PORT/ABS/PATH``. Files are the client's own file objects (seekable,
buffered, ranged reads), so readers like pyarrow read only the byte ranges they need.
Writing a file makes its parent directories, as object-store file systems do.
"""

from __future__ import annotations

import datetime as dt
import errno
import posixpath
import stat
from typing import Any

from fsspec.spec import AbstractFileSystem

from .client import Client


def _type(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISREG(mode):
        return "file"
    return "other"


class MetaFileSystem(AbstractFileSystem):
    """An fsspec file system over a :class:`metafs.Client`."""

    protocol = ("metafs",)
    root_marker = "/"
    sep = "/"

    def __init__(self, namenode: str | None = None, *, data_dir: str | None = None,
                 client: Client | None = None, config: str | None = None,
                 **storage_options: Any) -> None:
        super().__init__(namenode=namenode, data_dir=data_dir, client=client, config=config,
                         **storage_options)
        if client is None:
            from .. import config as config_mod

            overrides: dict[str, Any] = {k: v for k, v in storage_options.items()
                                         if k in config_mod._FIELDS}
            if namenode:
                overrides["namenode"] = namenode
            if data_dir:
                overrides["data_dir"] = data_dir
                overrides["namenode"] = ""
            client = Client(settings=config_mod.load(config, overrides))
            self._owns = True
        else:
            self._owns = False
        self.client = client

    # -- URLs
    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]  # type: ignore[return-value]
        path = str(path)
        if path.startswith("metafs://"):
            rest = path[len("metafs://"):]
            if not rest.startswith("/"):
                head, _, tail = rest.partition("/")
                rest = "/" + tail if ":" in head else "/" + rest
            path = rest
        if not path.startswith("/"):
            path = "/" + path
        path = posixpath.normpath(path) if path not in ("/", "") else "/"
        if path.startswith("//"):
            path = "/" + path.lstrip("/")
        return path

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, Any]:
        if path.startswith("metafs://"):
            head = path[len("metafs://"):].split("/", 1)[0]
            if head and ":" in head:
                return {"namenode": head}
        return {}

    def unstrip_protocol(self, name: str) -> str:
        return "metafs://" + self._strip_protocol(name)

    # -- metadata
    def _info(self, path: str, st: Any) -> dict[str, Any]:
        return {"name": path, "size": st.st_size if stat.S_ISREG(st.st_mode) else 0,
                "type": _type(st.st_mode), "mode": st.st_mode, "ino": st.st_ino,
                "nlink": st.st_nlink, "uid": st.st_uid, "gid": st.st_gid,
                "mtime": st.st_mtime, "created": st.st_ctime,
                "islink": stat.S_ISLNK(st.st_mode)}

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        p = self._strip_protocol(path)
        st = self.client.stat(p)
        return self._info(p, st)

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        p = self._strip_protocol(path)
        st = self.client.stat(p)
        if not stat.S_ISDIR(st.st_mode):
            out = [self._info(p, st)]
        else:
            out = []
            for e in self.client.scandir(p):
                full = posixpath.join(p, e.name)
                try:
                    est = e.stat(follow_symlinks=True)
                except FileNotFoundError:  # a dangling symlink
                    est = e.stat(follow_symlinks=False)
                out.append(self._info(full, est))
        out.sort(key=lambda d: d["name"])
        return out if detail else [d["name"] for d in out]

    def exists(self, path: str, **kwargs: Any) -> bool:
        return self.client.exists(self._strip_protocol(path))

    def isdir(self, path: str) -> bool:
        return self.client.isdir(self._strip_protocol(path))

    def isfile(self, path: str) -> bool:
        return self.client.isfile(self._strip_protocol(path))

    def created(self, path: str) -> dt.datetime:
        st = self.client.stat(self._strip_protocol(path))
        return dt.datetime.fromtimestamp(st.st_ctime, tz=dt.timezone.utc)

    def modified(self, path: str) -> dt.datetime:
        st = self.client.stat(self._strip_protocol(path))
        return dt.datetime.fromtimestamp(st.st_mtime, tz=dt.timezone.utc)

    # -- changes
    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        p = self._strip_protocol(path)
        if create_parents:
            if self.client.exists(p):
                raise FileExistsError(errno.EEXIST, "file exists", p)
            self.client.makedirs(p, exist_ok=True)
        else:
            self.client.mkdir(p)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        self.client.makedirs(self._strip_protocol(path), exist_ok=exist_ok)

    def rmdir(self, path: str) -> None:
        self.client.rmdir(self._strip_protocol(path))

    def _rm(self, path: str) -> None:
        p = self._strip_protocol(path)
        if self.client.isdir(p) and not self.client.islink(p):
            self.client.rmdir(p)
        else:
            self.client.remove(p)

    def rm_file(self, path: str) -> None:
        self.client.remove(self._strip_protocol(path))

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        paths = self.expand_path(path, recursive=recursive, maxdepth=maxdepth)
        for p in sorted(paths, reverse=True):  # children before their directories
            try:
                self._rm(p)
            except FileNotFoundError:
                pass

    def touch(self, path: str, truncate: bool = True, **kwargs: Any) -> None:
        p = self._strip_protocol(path)
        if truncate or not self.client.exists(p):
            self._parents(p)
            with self.client.open(p, "wb"):
                pass
        else:
            self.client.utime(p)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        src, dst = self._strip_protocol(path1), self._strip_protocol(path2)
        if self.client.isdir(src):
            self.client.makedirs(dst, exist_ok=True)
            return
        self._parents(dst)
        with self.client.open(src, "rb") as fin, self.client.open(dst, "wb") as fout:
            while chunk := fin.read(4 << 20):
                fout.write(chunk)

    def mv(self, path1: Any, path2: Any, recursive: bool = False,
           maxdepth: int | None = None, **kwargs: Any) -> None:
        """A single source is one atomic rename(2); lists and globs go entry by entry."""
        if isinstance(path1, str) and isinstance(path2, str) and not self._has_magic(path1):
            src, dst = self._strip_protocol(path1), self._strip_protocol(path2)
            if self.client.isdir(dst) and not self.client.isdir(src):
                dst = posixpath.join(dst, posixpath.basename(src))
            self._parents(dst)
            self.client.rename(src, dst)
            return
        super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)

    @staticmethod
    def _has_magic(p: str) -> bool:
        return any(c in p for c in "*?[")

    def _parents(self, p: str) -> None:
        parent = posixpath.dirname(p)
        if parent and parent != "/" and not self.client.isdir(parent):
            self.client.makedirs(parent, exist_ok=True)

    # -- data
    def _open(self, path: str, mode: str = "rb", block_size: Any = None,
              autocommit: bool = True, cache_options: Any = None, **kwargs: Any) -> Any:
        p = self._strip_protocol(path)
        if "b" not in mode:
            mode += "b"
        if any(c in mode for c in "wax"):
            self._parents(p)
        return self.client.open(p, mode)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None,
                 **kwargs: Any) -> bytes:
        p = self._strip_protocol(path)
        with self.client.open(p, "rb") as f:
            if start is not None or end is not None:
                size = self.client.stat(p).st_size
                s = 0 if start is None else (start if start >= 0 else max(size + start, 0))
                e = size if end is None else (end if end >= 0 else max(size + end, 0))
                if e <= s:
                    return b""
                f.seek(s)
                return f.read(e - s)
            return f.read()

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any
                  ) -> None:
        p = self._strip_protocol(path)
        self._parents(p)
        with self.client.open(p, "xb" if mode == "create" else "wb") as f:
            f.write(value)

    def close(self) -> None:
        if self._owns:
            self.client.close()
