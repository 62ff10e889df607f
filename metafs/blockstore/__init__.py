"""Block stores: where the data of files above the inline limit lives.

``open_store(url, settings)`` picks the store by URL: ``file:///path`` for a local directory
(:class:`LocalStore`), ``s3://bucket/prefix`` for S3 or any S3-compatible service
(:class:`S3Store`). Clients read and write blocks here directly; the namenode only commits
the metadata that points at them (see :mod:`metafs.namenode.blocks`).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from ..errors import FsError
from .base import (BlockInfo, BlockNotFound, BlockStore, ChecksumError, checksum,
                   check_key, new_key, verify)
from .local import LocalStore

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["BlockInfo", "BlockNotFound", "BlockStore", "ChecksumError", "LocalStore",
           "S3Store", "checksum", "check_key", "new_key", "open_store", "verify"]


def open_store(url: str, settings: "Settings | None" = None) -> BlockStore:
    """The block store named by ``url`` (``file:///path`` or ``s3://bucket/prefix``)."""
    scheme = urlparse(url).scheme
    if scheme == "file":
        return LocalStore.from_url(url, fsync=settings.blocks_fsync if settings else True,
                                   direct=bool(settings.block_direct_writes) if settings else False)
    if scheme == "s3":
        from .s3 import S3Store

        return S3Store.from_url(url, settings)
    raise FsError(errno.EINVAL, f"unsupported block store URL {url!r} "
                  "(use file:///path or s3://bucket/prefix)")


def __getattr__(name: str):  # lazy: boto3 is optional
    if name == "S3Store":
        from .s3 import S3Store

        return S3Store
    raise AttributeError(name)
