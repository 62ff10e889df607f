"""Shares of a namenode per caller: no one client can starve the rest.

A gRPC namenode serves ordinary calls from ``grpc_workers`` threads. What could take those
threads away is bounded here, per identity (the authenticated token or certificate name;
without authentication, the connection) and in total:

- calls in progress (ordinary calls and open call streams): ``max_calls_per_identity``;
- ReadChangelog calls waiting for records (long-polls): ``max_long_polls_per_identity`` and
  ``max_long_polls``, served by threads beyond ``grpc_workers``;
- changelog subscriptions: ``max_subscribers_per_identity`` and ``max_subscribers``;
- the size of a record a caller may add to the changelog: ``max_record_bytes``.

A call past a share is refused at once (never queued on a worker thread) with EAGAIN and
the gRPC code RESOURCE_EXHAUSTED, naming the setting; it ran nothing, so it may be retried.
"""

from __future__ import annotations

import errno
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from ..config import Settings
from ..errors import FsError
from ..proto import metafs_pb2 as pb


class LimitError(FsError):
    """A call over a caller's share: EAGAIN for the caller, RESOURCE_EXHAUSTED on the wire."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EAGAIN, message)

    @property
    def grpc_code_name(self) -> str:
        return "RESOURCE_EXHAUSTED"


class Shares:
    """Slots of one kind, counted per key and in total."""

    def __init__(self, what: str, per_key: int, per_key_setting: str,
                 total: int = 0, total_setting: str = "") -> None:
        self.what = what
        self.per_key, self.per_key_setting = per_key, per_key_setting
        self.total, self.total_setting = total, total_setting
        self._held: dict[str, int] = {}
        self._all = 0
        self._lock = threading.Lock()

    def take(self, key: str) -> None:
        with self._lock:
            n = self._held.get(key, 0)
            if self.per_key > 0 and n >= self.per_key:
                raise LimitError(f"too many {self.what} by {key} at once (limit "
                                 f"{self.per_key}, setting {self.per_key_setting})")
            if self.total > 0 and self._all >= self.total:
                raise LimitError(f"too many {self.what} on this namenode at once (limit "
                                 f"{self.total}, setting {self.total_setting})")
            self._held[key] = n + 1
            self._all += 1

    def give(self, key: str) -> None:
        with self._lock:
            n = self._held.get(key, 0) - 1
            if n > 0:
                self._held[key] = n
            else:
                self._held.pop(key, None)
            self._all -= 1

    @contextmanager
    def held(self, key: str) -> Iterator[None]:
        self.take(key)
        try:
            yield
        finally:
            self.give(key)


def peer_key(ctx: Any) -> str:
    """Without authentication, a caller is its connection (address and port)."""
    try:
        return f"connection {ctx.peer()}"
    except Exception:  # noqa: BLE001 - an in-process context has no peer
        return "connection (local)"


class Limits:
    """The shares of one gRPC namenode. ``identity_of(ctx)`` names the authenticated
    caller (None when the namenode does not authenticate)."""

    def __init__(self, settings: Settings, identity_of: Callable[[Any], str | None]) -> None:
        s = settings
        self.settings = s
        self._identity_of = identity_of
        self.calls = Shares("calls", s.max_calls_per_identity, "max_calls_per_identity")
        self.long_polls = Shares("waiting ReadChangelog calls", s.max_long_polls_per_identity,
                                 "max_long_polls_per_identity", s.max_long_polls,
                                 "max_long_polls")
        self.subscribers = Shares("changelog subscriptions", s.max_subscribers_per_identity,
                                  "max_subscribers_per_identity", s.max_subscribers,
                                  "max_subscribers")

    def key(self, ctx: Any) -> str:
        return self._identity_of(ctx) or peer_key(ctx)

    def check_request(self, method: str, request: Any) -> None:
        """Refuse a record larger than ``max_record_bytes`` before it reaches the changelog."""
        cap = self.settings.max_record_bytes
        if method == "RecordRun":
            size = len(request.json.encode()) + len(request.run_id.encode())
            if size > cap:
                raise FsError(errno.E2BIG, f"run record of {size} bytes; the limit is {cap} "
                              "bytes (setting max_record_bytes)")
        elif method == "RecordAccess":
            for ev in request.events:
                if ev.ByteSize() > cap:
                    raise FsError(errno.E2BIG, f"access event of {ev.ByteSize()} bytes; the "
                                  f"limit is {cap} bytes (setting max_record_bytes)")


def is_long_poll(method: str, request: Any) -> bool:
    return method == "ReadChangelog" and isinstance(request, pb.ReadChangelogRequest) \
        and request.wait_ms > 0
