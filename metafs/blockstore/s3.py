"""A block store in S3 or any S3-compatible service (``s3://bucket/prefix``).

The endpoint comes from the settings (``s3_endpoint``) or boto3's own chain
(``AWS_ENDPOINT_URL``), the region likewise, and credentials from boto3's usual chain
(environment, config files, instance roles). Requests are retried by botocore's "standard"
retry mode (500/502/503/504, throttling, connection errors and read timeouts, with
exponential backoff and jitter); reading a response body that stalls is retried here. What
still fails is EIO.
"""

from __future__ import annotations

import errno
import logging
import random
import time
from typing import TYPE_CHECKING, Any, Iterable, Iterator
from urllib.parse import urlparse

from ..errors import FsError
from .base import BlockInfo, BlockNotFound, BlockStore, check_key

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger("metafs.blockstore.s3")

_MISSING = {"404", "NoSuchKey", "NotFound"}


class S3Store(BlockStore):
    """Blocks as objects ``<prefix><key>`` in one bucket."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 region: str | None = None, retries: int = 8, connect_timeout: float = 5.0,
                 read_timeout: float = 20.0, max_connections: int = 32,
                 client: Any = None) -> None:
        if len(bucket) < 3:
            raise FsError(errno.EINVAL, f"S3 bucket name {bucket!r} is too short")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}"
        self.retries = max(1, retries)
        if client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError:  # pragma: no cover - depends on the install
                raise FsError(errno.EOPNOTSUPP,
                              "the S3 block store needs boto3: pip install 'metafs-ml[s3]'") from None
            cfg = Config(
                retries={"max_attempts": self.retries, "mode": "standard"},
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                max_pool_connections=max_connections,
                s3={"addressing_style": "path"} if endpoint_url else None,
                signature_version="s3v4",
            )
            session = boto3.session.Session()
            client = session.client("s3", endpoint_url=endpoint_url or None,
                                    region_name=region or None, config=cfg)
        self.client = client

    @classmethod
    def from_url(cls, url: str, settings: "Settings | None" = None) -> "S3Store":
        u = urlparse(url)
        if u.scheme != "s3" or not u.netloc:
            raise FsError(errno.EINVAL, f"not an S3 block store URL: {url!r}")
        kw: dict[str, Any] = {}
        if settings is not None:
            kw = dict(endpoint_url=settings.s3_endpoint or None,
                      region=settings.s3_region or None, retries=settings.s3_retries,
                      connect_timeout=settings.s3_connect_timeout,
                      read_timeout=settings.s3_read_timeout,
                      max_connections=settings.s3_max_connections)
        return cls(u.netloc, u.path, **kw)

    # ------------------------------------------------------------ helpers
    def _k(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _fail(self, exc: Exception, what: str, key: str = "") -> FsError:
        log.warning("S3 %s failed%s: %s", what, f" for block {key}" if key else "", exc)
        return FsError(errno.EIO, f"block store: {what} failed: {exc}", key)

    @staticmethod
    def _code(exc: Exception) -> str:
        resp = getattr(exc, "response", None) or {}
        return str(resp.get("Error", {}).get("Code", ""))

    # ------------------------------------------------------------ contract
    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        body = bytes(data)
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=body)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "upload", key) from None

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        if start < 0 or (end is not None and end < start):
            raise FsError(errno.EINVAL, f"bad range [{start}, {end}) for block {key}")
        if end is not None and end == start:
            return b""
        kw: dict[str, Any] = {"Bucket": self.bucket, "Key": self._k(key)}
        if start or end is not None:
            kw["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        delay = 0.05
        for attempt in range(1, self.retries + 1):
            try:
                resp = self.client.get_object(**kw)
                return resp["Body"].read()
            except ClientError as exc:
                code = self._code(exc)
                if code in _MISSING:
                    raise BlockNotFound(key) from None
                if code == "InvalidRange":
                    return b""
                raise self._fail(exc, "download", key) from None
            except BotoCoreError as exc:
                # botocore retried the request itself; a body that stalled or broke while
                # streaming is retried here.
                if attempt == self.retries:
                    raise self._fail(exc, "download", key) from None
                log.info("retrying download of block %s after %s", key, type(exc).__name__)
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    def head(self, key: str) -> BlockInfo | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            r = self.client.head_object(Bucket=self.bucket, Key=self._k(key))
        except ClientError as exc:
            if self._code(exc) in _MISSING:
                return None
            raise self._fail(exc, "head", key) from None
        except BotoCoreError as exc:
            raise self._fail(exc, "head", key) from None
        return BlockInfo(key, int(r["ContentLength"]), r["LastModified"].timestamp())

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._k(key))
        except ClientError as exc:
            if self._code(exc) in _MISSING:
                return
            raise self._fail(exc, "delete", key) from None
        except BotoCoreError as exc:
            raise self._fail(exc, "delete", key) from None

    def delete_many(self, keys: Iterable[str]) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        batch: list[str] = []
        n = 0

        def flush() -> None:
            if not batch:
                return
            try:
                r = self.client.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": self._k(k)} for k in batch], "Quiet": True})
            except (ClientError, BotoCoreError) as exc:
                raise self._fail(exc, "delete") from None
            errs = [e for e in r.get("Errors", []) if e.get("Code") not in _MISSING]
            if errs:
                raise FsError(errno.EIO, f"block store: {len(errs)} deletes failed "
                              f"(first: {errs[0].get('Key')}: {errs[0].get('Message')})")
            batch.clear()

        for k in keys:
            batch.append(k)
            n += 1
            if len(batch) == 1000:
                flush()
        flush()
        return n

    def list(self, prefix: str = "") -> Iterator[BlockInfo]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix)
            for page in pages:
                for obj in page.get("Contents", []):
                    yield BlockInfo(obj["Key"][len(self.prefix):], int(obj["Size"]),
                                    obj["LastModified"].timestamp())
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "list") from None

    def presign(self, key: str, put: bool = False, expires: float = 900.0) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.generate_presigned_url(
                "put_object" if put else "get_object",
                Params={"Bucket": self.bucket, "Key": self._k(key)},
                ExpiresIn=max(1, int(expires)))
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "presign", key) from None

    def create_bucket(self) -> None:
        """Create the bucket if it does not exist (for set-up and tests)."""
        from botocore.exceptions import ClientError

        try:
            self.client.create_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if self._code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._fail(exc, "create bucket") from None

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # pragma: no cover
            pass

    def __repr__(self) -> str:
        return f"S3Store({self.url!r})"
