"""A block store in S3 or any S3-compatible service (``s3://bucket/prefix``).

The endpoint comes from the settings (``s3_endpoint``) or boto3's own chain
(``AWS_ENDPOINT_URL``), the region likewise, and credentials from boto3's usual chain
(environment, config files, instance roles).

Requests are retried here, each one whole (a response body that stalls or breaks is
fetched again), with exponential backoff and jitter. Every request is idempotent: blocks
are immutable and their keys never reused, so a put repeated after its first attempt was
stored stores the same bytes again. Two kinds of failure are told apart:

- the endpoint is unavailable (connection refused, reset or timed out, HTTP 502/503/504,
  throttling): the request is retried until ``outage_timeout`` seconds have passed since
  its first failure (0: not at all), so that an outage of the store holds programs up
  instead of failing them; then :class:`~.base.StoreUnavailable` (EIO);
- the endpoint answers with another server error (500, a request timeout): ``retries``
  attempts, then EIO.
"""

from __future__ import annotations

import errno
import itertools
import logging
import random
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, TypeVar
from urllib.parse import urlparse

from ..errors import FsError
from .base import BlockInfo, BlockNotFound, BlockStore, StoreUnavailable, check_key

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger("metafs.blockstore.s3")

T = TypeVar("T")

_MISSING = {"404", "NoSuchKey", "NotFound"}
# answers meaning the service is unavailable for now (not that this request is bad)
_UNAVAILABLE_STATUS = {502, 503, 504}
_THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
              "TooManyRequestsException", "ServiceUnavailable", "RequestThrottled"}
# answers worth a few more attempts
_TRANSIENT = {"InternalError", "RequestTimeout", "RequestTimeoutException"}


class S3Store(BlockStore):
    """Blocks as objects ``<prefix><key>`` in one bucket."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 region: str | None = None, retries: int = 8, connect_timeout: float = 5.0,
                 read_timeout: float = 20.0, max_connections: int = 32,
                 outage_timeout: float = 120.0, client: Any = None) -> None:
        if len(bucket) < 3:
            raise FsError(errno.EINVAL, f"S3 bucket name {bucket!r} is too short")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}"
        self.retries = max(1, retries)
        self.outage_timeout = max(0.0, outage_timeout)
        if client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError:  # pragma: no cover - depends on the install
                raise FsError(errno.EOPNOTSUPP,
                              "the S3 block store needs boto3: pip install 'metafs-ml[s3]'") from None
            cfg = Config(
                retries={"total_max_attempts": 1, "mode": "standard"},  # see _call
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
                      max_connections=settings.s3_max_connections,
                      outage_timeout=settings.s3_outage_timeout)
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

    @classmethod
    def _kind(cls, exc: Exception) -> str:
        """``"unavailable"`` (the endpoint cannot serve anything now), ``"transient"``
        (worth a few more attempts) or ``""`` (an answer: retrying changes nothing)."""
        from botocore.exceptions import (ClientError, ConnectionError, HTTPClientError,
                                         IncompleteReadError)

        if isinstance(exc, (ConnectionError, HTTPClientError, IncompleteReadError)):
            return "unavailable"  # refused, reset, timed out, or broken mid-body
        if isinstance(exc, ClientError):
            resp = getattr(exc, "response", None) or {}
            status = int(resp.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            code = cls._code(exc)
            if status in _UNAVAILABLE_STATUS or code in _THROTTLED:
                return "unavailable"
            if status >= 500 or code in _TRANSIENT:
                return "transient"
        return ""

    def _call(self, what: str, key: str, fn: Callable[[], T]) -> T:
        """``fn()``, tried again after a failure worth it: ``retries`` attempts in all for a
        server error, and until ``outage_timeout`` seconds have passed since the first
        failure while the endpoint is unavailable. Other failures are raised as they are;
        an outage past its time is :class:`StoreUnavailable`."""
        delay = 0.05
        first = 0.0
        told = False
        for attempt in itertools.count(1):
            try:
                result = fn()
            except Exception as exc:
                kind = self._kind(exc)
                if not kind:
                    raise
                now = time.monotonic()
                first = first or now
                left = first + self.outage_timeout - now
                where = f" of block {key}" if key else ""
                if kind == "transient":
                    if attempt >= self.retries:
                        raise
                    log.info("retrying S3 %s%s after %s", what, where, exc)
                elif left <= 0:
                    log.warning("S3 %s%s: the endpoint was unavailable for %.1f s: %s",
                                what, where, now - first, exc)
                    raise StoreUnavailable(f"block store unavailable for {now - first:.0f} s:"
                                           f" {what} failed: {exc}", key) from None
                elif attempt == 3:  # not a blip: say so once
                    told = True
                    log.warning("S3 %s%s: endpoint unavailable (%s); retrying for up to "
                                "%.0f s", what, where, exc, left)
                pause = delay * (0.5 + random.random())
                time.sleep(pause if kind == "transient" else min(pause, left))
                delay = min(delay * 2, 2.0)
                continue
            if told:
                log.warning("S3 %s%s: the endpoint answers again after %.1f s", what,
                            f" of block {key}" if key else "", time.monotonic() - first)
            return result
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ contract
    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        body = bytes(data)
        k = self._k(key)
        try:
            self._call("upload", key, lambda: self.client.put_object(
                Bucket=self.bucket, Key=k, Body=body))
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
        try:
            # the body is read inside the attempt: one that stalls or breaks is fetched again
            return self._call("download", key,
                              lambda: self.client.get_object(**kw)["Body"].read())
        except ClientError as exc:
            code = self._code(exc)
            if code in _MISSING:
                raise BlockNotFound(key) from None
            if code == "InvalidRange":
                return b""
            raise self._fail(exc, "download", key) from None
        except BotoCoreError as exc:
            raise self._fail(exc, "download", key) from None

    def head(self, key: str) -> BlockInfo | None:
        from botocore.exceptions import BotoCoreError, ClientError

        k = self._k(key)
        try:
            r = self._call("head", key, lambda: self.client.head_object(
                Bucket=self.bucket, Key=k))
        except ClientError as exc:
            if self._code(exc) in _MISSING:
                return None
            raise self._fail(exc, "head", key) from None
        except BotoCoreError as exc:
            raise self._fail(exc, "head", key) from None
        return BlockInfo(key, int(r["ContentLength"]), r["LastModified"].timestamp())

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        k = self._k(key)
        try:
            self._call("delete", key, lambda: self.client.delete_object(
                Bucket=self.bucket, Key=k))
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
            objects = [{"Key": self._k(k)} for k in batch]
            try:
                r = self._call("delete", "", lambda: self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}))
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

        kw: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        while True:
            try:
                page = self._call("list", "", lambda: self.client.list_objects_v2(**kw))
            except (ClientError, BotoCoreError) as exc:
                raise self._fail(exc, "list") from None
            for obj in page.get("Contents", []):
                yield BlockInfo(obj["Key"][len(self.prefix):], int(obj["Size"]),
                                obj["LastModified"].timestamp())
            if not page.get("IsTruncated"):
                return
            kw["ContinuationToken"] = page["NextContinuationToken"]

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
