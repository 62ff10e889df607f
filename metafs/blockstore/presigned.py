"""Blocks through presigned URLs, for clients without credentials for the block store.

With ``block_presign = true`` a client never talks to the store with credentials of its
own: it asks the namenode for short-lived URLs (``GetLayout(presign=True)`` gives a GET URL
for every block of a layout, ``Presign`` gives PUT URLs for new blocks and fresh GET URLs
when one has expired) and moves the bytes with plain HTTP requests. The namenode checks
the caller's right to read or write the file before it signs anything.

:class:`PresignedStore` is the HTTP side (one connection pool per store);
:class:`PresignedView` is one open file's view of it: its keys are turned into URLs
through that file. It is not a :class:`~.base.BlockStore` (listing, heads and deletes are
the namenode's business and no URL allows them) but a :class:`~.base.BlockIO`, the ranged
read and whole-block write a file needs, so checksummed reads work as with any store. A
local directory store "presigns" to ``file://`` URLs, read and written directly.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import random
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlparse

from ..errors import FsError
from .base import BlockNotFound, StoreUnavailable

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger("metafs.blockstore.presigned")

_RETRY_STATUS = {500, 502, 503, 504}


class Expired(Exception):
    """The server refused a presigned URL (403): it has expired; ask for a new one."""


class UrlSource(Protocol):
    """Where a :class:`PresignedView` gets its URLs (an open block file)."""

    def presigned_url(self, key: str, put: bool, refresh: bool = False) -> str: ...


class PresignedStore:
    """GETs and PUTs on presigned URLs, with retries and backoff like the S3 store."""

    url: str

    def __init__(self, url: str, s: "Settings") -> None:
        import urllib3

        self.url = url
        self.retries = max(1, s.s3_retries)
        self.outage_timeout = max(0.0, s.s3_outage_timeout)
        self._timeout = urllib3.Timeout(connect=s.s3_connect_timeout, read=s.s3_read_timeout)
        self._http = urllib3.PoolManager(maxsize=max(4, s.s3_max_connections), retries=False)

    # ------------------------------------------------------------ HTTP with retries
    def _request(self, method: str, url: str, key: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> Any:
        """The response to one request, retried like the S3 store's: ``retries`` attempts
        in all for HTTP 500, until ``outage_timeout`` seconds have passed since the first
        failure while the endpoint is unavailable (no connection, no answer in time, HTTP
        502/503/504)."""
        import urllib3

        delay = 0.05
        first = 0.0
        told = False
        for attempt in itertools.count(1):
            try:
                r = self._http.request(method, url, body=body, headers=headers or {},
                                       timeout=self._timeout, preload_content=True,
                                       redirect=False)
            except urllib3.exceptions.HTTPError as exc:
                failure, gone = f"{method} failed: {exc}", True
            else:
                if r.status not in _RETRY_STATUS:
                    if told:
                        log.warning("%s of block %s: the endpoint answers again after "
                                    "%.1f s", method, key, time.monotonic() - first)
                    return r
                failure, gone = f"{method} failed with HTTP {r.status}", r.status != 500
            now = time.monotonic()
            first = first or now
            left = first + self.outage_timeout - now
            if not gone:
                if attempt >= self.retries:
                    raise FsError(errno.EIO, f"block store: {failure}", key)
                log.info("retrying %s of block %s", method, key)
            elif left <= 0:
                raise StoreUnavailable(f"block store unavailable for {now - first:.0f} s: "
                                       f"{failure}", key)
            elif attempt == 3:  # not a blip: say so once
                told = True
                log.warning("%s of block %s: endpoint unavailable (%s); retrying for up to "
                            "%.0f s", method, key, failure, left)
            pause = delay * (0.5 + random.random())
            time.sleep(pause if not gone else min(pause, left))
            delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    def get_url(self, url: str, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` of the object at ``url``. Raises :class:`Expired` on 403."""
        if end is not None and end <= start:
            return b""
        if url.startswith("file:"):
            return _file_get(url, key, start, end)
        headers = {}
        if start or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        r = self._request("GET", url, key, headers=headers)
        if r.status in (200, 206):
            data = r.data
            if r.status == 200 and (start or end is not None):  # range ignored
                data = data[start:end]
            return data
        if r.status == 404:
            raise BlockNotFound(key)
        if r.status == 416:
            return b""
        if r.status == 403:
            raise Expired(key)
        raise FsError(errno.EIO, f"block store: GET failed with HTTP {r.status}", key)

    def put_url(self, url: str, key: str, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` at ``url``. Raises :class:`Expired` on 403."""
        if url.startswith("file:"):
            _file_put(url, key, bytes(data))
            return
        r = self._request("PUT", url, key, body=bytes(data))
        if r.status in (200, 201, 204):
            return
        if r.status == 403:
            raise Expired(key)
        raise FsError(errno.EIO, f"block store: PUT failed with HTTP {r.status}", key)

    def close(self) -> None:
        self._http.clear()


class PresignedView:
    """The block store as one open file sees it through presigned URLs: a
    :class:`~.base.BlockIO` (ranged get, whole-block put), a URL asked for again once when
    the store refuses one as expired."""

    def __init__(self, http: PresignedStore, source: UrlSource) -> None:
        self.http = http
        self.source = source
        self.url = http.url

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        try:
            return self.http.get_url(self.source.presigned_url(key, False), key, start, end)
        except Expired:
            url = self.source.presigned_url(key, False, refresh=True)
            try:
                return self.http.get_url(url, key, start, end)
            except Expired:
                raise FsError(errno.EACCES, "the block store refused a fresh presigned "
                              "URL", key) from None

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        for attempt in (0, 1):
            try:
                self.http.put_url(self.source.presigned_url(key, True), key, data)
                return
            except Expired:
                if attempt:
                    raise FsError(errno.EACCES, "the block store refused a fresh presigned "
                                  "URL", key) from None


# ---------------------------------------------------------------- file:// URLs
def _file_path(url: str) -> Path:
    return Path(unquote(urlparse(url).path))


def _file_get(url: str, key: str, start: int, end: int | None) -> bytes:
    try:
        with open(_file_path(url), "rb") as fh:
            fh.seek(start)
            return fh.read() if end is None else fh.read(end - start)
    except FileNotFoundError:
        raise BlockNotFound(key) from None
    except OSError as exc:
        raise FsError(errno.EIO, f"cannot read block {key}: {exc}", key) from None


def _file_put(url: str, key: str, data: bytes) -> None:
    path = _file_path(url)
    tmp = path.parent / f"{path.name}.{uuid.uuid4().hex}.tmp"  # an orphan for GC if we die
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise FsError(errno.EIO, f"cannot store block {key}: {exc}", key) from None
