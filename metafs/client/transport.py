"""The one seam between clients and a namenode.

A transport turns ``call("Lookup", LookupRequest)`` into a reply or an :class:`FsError`.
:class:`GrpcTransport` talks to a remote namenode; :class:`LocalTransport` calls the
handlers of an in-process namenode directly (no serialization, no sockets): the embedded
default. Both run the same client test-suite.
"""

from __future__ import annotations

import errno
import itertools
import logging
import threading
from typing import Any, Iterator, Protocol

import grpc
from grpc_status import rpc_status

from ..errors import FsError
from ..proto import metafs_pb2 as pb
from ..proto import metafs_pb2_grpc as pb_grpc

log = logging.getLogger("metafs.client")


class Transport(Protocol):
    """What a client needs from a namenode connection."""

    def call(self, method: str, request: Any) -> Any: ...

    def stream(self, method: str, request: Any) -> Iterator[Any]: ...

    def close(self) -> None: ...


class LocalTransport:
    """Calls an in-process namenode's handlers."""

    def __init__(self, namenode: Any, *, owns: bool = False) -> None:
        self.namenode = namenode
        self._handlers = namenode.handlers
        self._owns = owns

    def call(self, method: str, request: Any) -> Any:
        fn = getattr(self._handlers, method, None)
        if fn is None:
            raise FsError(errno.ENOSYS, f"this namenode does not implement {method}")
        try:
            return fn(request)
        except FsError:
            raise
        except Exception as exc:
            from ..namenode.service import internal_error

            raise internal_error(exc, method) from exc

    def stream(self, method: str, request: Any) -> Iterator[Any]:
        return getattr(self._handlers, method)(request)

    def close(self) -> None:
        if self._owns:
            self.namenode.close()


def error_from_rpc(exc: grpc.RpcError, method: str) -> FsError:
    """The FsError a failed call carries, or EIO for transport failures."""
    status = None
    try:
        status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    except Exception:  # a malformed status is a transport failure like any other
        status = None
    if status is not None:
        for detail in status.details:
            if detail.Is(pb.ErrorDetail.DESCRIPTOR):
                d = pb.ErrorDetail()
                detail.Unpack(d)
                return FsError(d.errno, d.message, d.path)
    code = exc.code() if hasattr(exc, "code") else None
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return FsError(errno.EIO, f"namenode did not answer {method} in time")
    if code == grpc.StatusCode.UNAVAILABLE:
        return FsError(errno.EIO, f"namenode unavailable for {method}: {exc.details()}")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return FsError(errno.EACCES, f"not authenticated: {exc.details()}")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return FsError(errno.EACCES, str(exc.details()))
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return FsError(errno.EIO, f"{method} failed: {code}: {details}")


class GrpcTransport:
    """Calls a remote namenode over gRPC. Several addresses (comma-separated) are used
    round-robin; a call that cannot reach one namenode is tried on the next, which is safe
    because every mutating call is one transaction that either happened or did not, and
    only UNAVAILABLE (nothing was sent) is retried."""

    def __init__(self, address: str, *, timeout: float = 30.0,
                 credentials: grpc.ChannelCredentials | None = None,
                 metadata: tuple[tuple[str, str], ...] = (),
                 options: tuple[tuple[str, Any], ...] = ()) -> None:
        addrs = [a.strip() for a in address.split(",") if a.strip()]
        if not addrs:
            raise ValueError("no namenode address given")
        opts = [("grpc.max_receive_message_length", 256 * 1024 * 1024),
                ("grpc.max_send_message_length", 256 * 1024 * 1024),
                ("grpc.enable_retries", 1), *options]
        self.timeout = timeout
        self.metadata = metadata or None
        self._channels = []
        self._stubs = []
        for a in addrs:
            ch = (grpc.secure_channel(a, credentials, options=opts) if credentials
                  else grpc.insecure_channel(a, options=opts))
            self._channels.append(ch)
            self._stubs.append(pb_grpc.NamenodeStub(ch))
        self._rr = itertools.cycle(range(len(self._stubs)))
        self._lock = threading.Lock()
        self.address = address

    def _stub(self) -> pb_grpc.NamenodeStub:
        if len(self._stubs) == 1:
            return self._stubs[0]
        with self._lock:
            return self._stubs[next(self._rr)]

    def call(self, method: str, request: Any) -> Any:
        tries = len(self._stubs)
        for i in range(tries):
            try:
                return getattr(self._stub(), method)(request, timeout=self.timeout,
                                                     metadata=self.metadata)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE and i + 1 < tries:
                    continue
                raise error_from_rpc(exc, method) from None
        raise AssertionError("unreachable")

    def stream(self, method: str, request: Any) -> Iterator[Any]:
        it = getattr(self._stub(), method)(request, metadata=self.metadata)
        try:
            for item in it:
                yield item
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED:
                return
            raise error_from_rpc(exc, method) from None
        finally:
            it.cancel()

    def close(self) -> None:
        for ch in self._channels:
            ch.close()
