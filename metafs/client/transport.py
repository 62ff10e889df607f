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
import os
import queue
import threading
import time
from typing import Any, Callable, Iterator, Protocol

import grpc
from grpc._common import CYGRPC_CONNECTIVITY_STATE_TO_CHANNEL_CONNECTIVITY as _CONNECTIVITY
from grpc_status import rpc_status

from ..blockstore.base import StoreUnavailable
from ..errors import FsError
from ..proto import metafs_pb2 as pb
from ..proto import metafs_pb2_grpc as pb_grpc

log = logging.getLogger("metafs.client")


class Transport(Protocol):
    """What a client needs from a namenode connection."""

    def call(self, method: str, request: Any) -> Any: ...

    def stream(self, method: str, request: Any,
               resume: Callable[[Any], Any] | None = None) -> Iterator[Any]: ...

    def close(self) -> None: ...


class LocalTransport:
    """Calls an in-process namenode's handlers. ``namenode`` is a
    :class:`metafs.namenode.server.Namenode` (or anything with ``handlers``, ``settings``,
    ``close()`` and ``internal_error(exc, method)``, which logs an unexpected failure and
    returns the FsError the caller gets); the client does not import the namenode itself.

    A call that finds the block store unavailable (:class:`StoreUnavailable`: the namenode
    waits a few seconds per call, then gives up with nothing committed) is run again, as a
    remote namenode's client does when it is answered as unavailable, until
    ``s3_outage_timeout`` seconds have passed since its first failure: an outage of the
    store holds programs up instead of failing them, embedded or remote."""

    def __init__(self, namenode: Any, *, owns: bool = False) -> None:
        self.namenode = namenode
        self._handlers = namenode.handlers
        self._owns = owns
        self.outage_timeout = max(namenode.settings.s3_outage_timeout, 0.0)
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._outage_since = 0.0       # monotonic start of the outage calls wait out now

    def call(self, method: str, request: Any) -> Any:
        fn = getattr(self._handlers, method, None)
        if fn is None:
            raise FsError(errno.ENOSYS, f"this namenode does not implement {method}")
        first_failure = 0.0
        pause = 0.05
        while True:
            try:
                reply = fn(request)
            except StoreUnavailable as exc:
                now = time.monotonic()
                if not first_failure:
                    first_failure = now
                    with self._lock:
                        if not self._outage_since:
                            self._outage_since = now
                            log.warning("%s; retrying calls for up to %.0f s", exc.message,
                                        self.outage_timeout)
                left = first_failure + self.outage_timeout - now
                if left <= 0 or self._closed.is_set():
                    raise
                self._closed.wait(min(pause, left))
                pause = min(pause * 2, 0.5)
                continue
            except FsError:
                raise
            except Exception as exc:
                raise self.namenode.internal_error(exc, method) from exc
            if first_failure:  # (other calls may not need the store: they tell nothing)
                with self._lock:
                    since, self._outage_since = self._outage_since, 0.0
                if since:
                    log.warning("the block store answers again after %.1f s",
                                time.monotonic() - since)
            return reply

    def stream(self, method: str, request: Any,
               resume: Callable[[Any], Any] | None = None) -> Iterator[Any]:
        return getattr(self._handlers, method)(request)  # (in process: nothing breaks)

    def close(self) -> None:
        self._closed.set()
        if self._owns:
            self.namenode.close()


def _answer(exc: grpc.RpcError) -> FsError | None:
    """The FsError a namenode answered with (its status's ErrorDetail), or None when the
    failure is gRPC's own (no namenode, no answer in time, a transport error)."""
    try:
        status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    except Exception:  # a malformed status is a transport failure like any other
        return None
    if status is not None:
        for detail in status.details:
            if detail.Is(pb.ErrorDetail.DESCRIPTOR):
                d = pb.ErrorDetail()
                detail.Unpack(d)
                return FsError(d.errno, d.message, d.path)
    return None


def error_from_rpc(exc: grpc.RpcError, method: str) -> FsError:
    """The FsError a failed call carries, or EIO for transport failures."""
    answer = _answer(exc)
    if answer is not None:
        return answer
    code = exc.code() if hasattr(exc, "code") else None
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return FsError(errno.EIO, f"namenode did not answer {method} in time")
    if code == grpc.StatusCode.UNAVAILABLE:
        return FsError(errno.EIO, f"namenode unavailable for {method}: {exc.details()}")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return FsError(errno.EACCES, f"not authenticated: {exc.details()}")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return FsError(errno.EACCES, str(exc.details()))
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:  # gRPC's own message size limits
        return FsError(errno.EMSGSIZE, f"{method}: {exc.details()} (the limits are the "
                       "settings grpc_max_receive_bytes and grpc_max_send_bytes)")
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return FsError(errno.EIO, f"{method} failed: {code}: {details}")


_REPLIES = {m.name: getattr(pb, m.output_type.name)
            for m in pb.DESCRIPTOR.services_by_name["Namenode"].methods
            if not m.server_streaming and not m.client_streaming}


# Calls whose requests run to megabytes go as unary calls: on a stream the request would be
# serialized, then copied into a frame and serialized again (and parsed twice), which costs
# more than the unary call's set-up for a call that carries thousands of files.
_UNARY_ONLY = frozenset({"BulkCreate"})


class _StreamBroken(Exception):
    """A call stream ended under a call; ``code`` says how."""

    def __init__(self, code: Any, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _CallStream:
    """One open Calls stream: frames go in through a queue that gRPC's own sender thread
    drains, replies come back in order. Used by one caller at a time."""

    def __init__(self, stub: pb_grpc.NamenodeStub, metadata: Any, index: int = 0) -> None:
        self.index = index       # of the namenode address it is connected to
        self._frames: queue.SimpleQueue[pb.CallFrame | None] = queue.SimpleQueue()
        self._replies = stub.Calls(iter(self._frames.get, None), metadata=metadata)
        self.deadline = 0.0      # monotonic deadline of the call in flight; 0 when idle
        self.timed_out = False
        self.used = False        # has answered at least one call

    def alive(self) -> bool:
        return not self.timed_out and not self._replies.done()

    def call(self, method: str, request: Any, timeout: float, rid: str = "",
             attempt: int = 0) -> pb.ReplyFrame:
        self.deadline = time.monotonic() + timeout
        try:
            self._frames.put(pb.CallFrame(method=method, request=request.SerializeToString(),
                                          request_id=rid, attempt=attempt))
            reply = next(self._replies)
        except StopIteration:
            raise _StreamBroken(grpc.StatusCode.UNAVAILABLE, "the namenode ended the stream")
        except grpc.RpcError as exc:
            code = exc.code()
            if self.timed_out:
                code = grpc.StatusCode.DEADLINE_EXCEEDED
            raise _StreamBroken(code, str(exc.details())) from None
        finally:
            self.deadline = 0.0
        self.used = True
        return reply

    def expire(self) -> None:
        self.timed_out = True
        self._replies.cancel()

    def close(self) -> None:
        self._frames.put(None)
        self._replies.cancel()


# Reconnect soon after a namenode comes back: gRPC's own backoff grows to two minutes.
_RECONNECT_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000))

# A namenode that let a call pass its deadline without a word (a hung or stopped process
# keeps its connections open, so gRPC still reports them READY) is passed over for this
# many seconds while another listed namenode is not.
SILENT_PASS = 30.0

REQUEST_ID_KEY = "metafs-request-id"
ATTEMPT_KEY = "metafs-attempt"

# Request ids: 96 random bits of this process and a count of its calls, as unique as a
# random UUID per call but without its cost on every call (a forked child draws its own).
_request_prefix = os.urandom(12).hex()
_request_count = itertools.count(1)


def _new_request_prefix() -> None:
    global _request_prefix
    _request_prefix = os.urandom(12).hex()


os.register_at_fork(after_in_child=_new_request_prefix)


def new_request_id() -> str:
    """A request id no other call of any client has (see ``metafs.namenode.requests``)."""
    return f"{_request_prefix}{next(_request_count):x}"


class _Gone(Exception):
    """One attempt of a call found no namenode to answer it."""

    def __init__(self, code: Any, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class GrpcTransport:
    """Calls a remote namenode over gRPC. Several addresses (comma-separated) are used
    round-robin.

    A call that finds no namenode (refused, reset, UNAVAILABLE, or no answer within
    ``timeout``) is tried again, on the next address when there are several, with a short
    growing pause, until ``failover_timeout`` has passed since its first failure (then
    EIO). A namenode that answers nothing within ``timeout`` while its connection stays
    up (a hung or stopped process) counts as gone: with several, later calls pass over it
    for ``SILENT_PASS`` seconds; with one, a call past its deadline is told from a slow
    one by a trivial call that must be answered within ``timeout`` too. Every attempt of
    a call carries the same request id: a mutation whose first attempt committed before
    its namenode went away is answered from what that attempt recorded instead of running
    twice (see ``metafs.namenode.requests``).

    Calls go over a few long-lived Calls streams (``streams`` of them, one per call in
    flight), which Python's gRPC serves at about twice the rate of unary calls; a call
    that finds every stream busy, or a namenode that refuses streams, goes as a unary
    call. A per-call deadline is kept by cancelling the stream it runs on."""

    def __init__(self, address: str, *, timeout: float = 30.0,
                 credentials: grpc.ChannelCredentials | None = None,
                 metadata: tuple[tuple[str, str], ...] = (),
                 options: tuple[tuple[str, Any], ...] = (), streams: int = 4,
                 max_receive: int = 64 * 1024**2, max_send: int = 64 * 1024**2,
                 failover_timeout: float = 60.0) -> None:
        addrs = [a.strip() for a in address.split(",") if a.strip()]
        if not addrs:
            raise ValueError("no namenode address given")
        opts = [("grpc.max_receive_message_length", max_receive),
                ("grpc.max_send_message_length", max_send),
                ("grpc.enable_retries", 1), *_RECONNECT_OPTIONS, *options]
        self.timeout = timeout
        self.failover_timeout = max(failover_timeout, 0.0)
        self.metadata = metadata or None
        self._channels = []
        self._stubs = []
        for a in addrs:
            ch = (grpc.secure_channel(a, credentials, options=opts) if credentials
                  else grpc.insecure_channel(a, options=opts))
            self._channels.append(ch)
            self._stubs.append(pb_grpc.NamenodeStub(ch))
        self._rr = itertools.cycle(range(len(self._stubs)))
        # monotonic time until which each namenode is passed over (see SILENT_PASS)
        self._silent_until = [0.0] * len(self._channels)
        self._lock = threading.Lock()
        self.address = address
        self._max_streams = max(streams, 0)
        self._idle: list[_CallStream] = []
        self._busy: set[_CallStream] = set()
        self._no_streams_until = 0.0   # a namenode refused streams: unary until then
        self._watchdog: threading.Thread | None = None
        self._closed = threading.Event()
        self._outage_since = 0.0       # monotonic start of the outage calls wait out now

    def _state(self, index: int) -> grpc.ChannelConnectivity:
        """Channel ``index``'s connectivity now, as gRPC reports it (a call that times out
        on a channel that is not READY met a namenode that is gone, not a slow one).

        Asked when a call needs it, not followed with ``channel.subscribe``: a
        subscription keeps a thread of gRPC's waiting on the channel, which on gRPC's
        polling I/O (metafs.config.tune_grpc) polls the connection too and was woken by
        every call's replies (about 0.05 ms of CPU per call, a sixth of the client's CPU
        for a call on a call stream; docs/design.md "Calls over streams")."""
        channel: Any = self._channels[index]
        try:
            got = channel._channel.check_connectivity_state(False)
        except ValueError:  # closed
            return grpc.ChannelConnectivity.SHUTDOWN
        return _CONNECTIVITY[got]

    def _pick(self) -> int:
        """The next namenode in turn, passing over those whose connection is failing, and
        then those recently silent, while another one is not."""
        if len(self._stubs) == 1:
            return 0
        with self._lock:
            return self._next_up()

    def _next_up(self) -> int:
        n = len(self._stubs)
        first = next(self._rr)
        order = [(first + k) % n for k in range(n)]
        up = [i for i in order
              if self._state(i) != grpc.ChannelConnectivity.TRANSIENT_FAILURE]
        now = time.monotonic()
        for i in up:
            if self._silent_until[i] <= now:
                return i
        # all silent lately: the one silent longest ago
        return min(up, key=lambda i: self._silent_until[i]) if up else first

    def _stub(self) -> pb_grpc.NamenodeStub:
        return self._stubs[self._pick()]

    def _gone(self, code: Any, index: int) -> bool:
        """Whether a call that failed with ``code`` on namenode ``index`` found it gone: not
        reachable, or silent past the deadline while its connection is down, with another
        namenode to try, or while it does not answer a trivial call either (a call that
        was merely slow, such as a long poll, fails as it is)."""
        if code == grpc.StatusCode.UNAVAILABLE:
            return True
        if code != grpc.StatusCode.DEADLINE_EXCEEDED:
            return False
        now = time.monotonic()
        if (len(self._stubs) == 1 and self._state(index) == grpc.ChannelConnectivity.READY
                and self._silent_until[index] <= now and self._answers(index)):
            return False
        if self._silent_until[index] <= now and len(self._stubs) > 1:
            log.warning("namenode %s answered nothing for %.0f s; passing over it for %.0f s",
                        self.address.split(",")[index].strip(), self.timeout, SILENT_PASS)
        self._silent_until[index] = time.monotonic() + SILENT_PASS
        return True

    def _answers(self, index: int) -> bool:
        """Whether namenode ``index`` answers a trivial call within the call timeout (with
        anything but its absence)."""
        try:
            self._stubs[index].ChangelogHead(pb.HeadRequest(), timeout=self.timeout,
                                             metadata=self.metadata)
        except grpc.RpcError as exc:
            return _answer(exc) is not None or exc.code() not in (
                grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
        return True

    def _heard(self, index: int) -> None:
        """Namenode ``index`` answered a call: it is no longer passed over."""
        if self._silent_until[index]:
            self._silent_until[index] = 0.0

    def call(self, method: str, request: Any) -> Any:
        rid = new_request_id()
        attempt = 0
        first_failure = 0.0
        pause = 0.05
        while True:
            try:
                reply = self._attempt(method, request, rid, attempt)
            except _Gone as exc:
                now = time.monotonic()
                if "handshake failed" in (exc.details or "").lower() and \
                        attempt + 1 >= len(self._stubs):
                    # not an outage: the two sides do not trust each other's certificates,
                    # which waiting does not change (every namenode has been tried)
                    raise FsError(errno.EIO, f"TLS handshake with namenode {self.address} "
                                  f"failed (check tls_ca and the client certificate): "
                                  f"{exc.details}") from None
                if not first_failure:
                    first_failure = now
                    with self._lock:
                        if not self._outage_since:
                            self._outage_since = now
                            log.warning("namenode %s unreachable (%s: %s); retrying calls for "
                                        "up to %.0f s", self.address, exc.code, exc.details,
                                        self.failover_timeout)
                left = first_failure + self.failover_timeout - now
                if left <= 0 or self._closed.is_set():
                    if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                        raise FsError(errno.EIO, f"namenode did not answer {method} in time"
                                      ) from None
                    raise FsError(errno.EIO, f"namenode unavailable for {method}: "
                                  f"{exc.details}") from None
                time.sleep(min(pause, left))
                pause = min(pause * 2, 0.5)
                attempt += 1
                continue
            if self._outage_since:
                with self._lock:
                    since, self._outage_since = self._outage_since, 0.0
                if since:
                    log.warning("namenode %s answers again after %.1f s", self.address,
                                time.monotonic() - since)
            return reply

    def _attempt(self, method: str, request: Any, rid: str, attempt: int) -> Any:
        """One try of a call; raises _Gone when no namenode answered it."""
        if method in _UNARY_ONLY:
            return self._unary(method, request, rid, attempt)
        st = self._take_stream()
        if st is not None:
            try:
                frame = st.call(method, request, self.timeout, rid, attempt)
            except _StreamBroken as exc:
                self._drop(st)
                if exc.code in (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                grpc.StatusCode.UNIMPLEMENTED):
                    # refused before the call was read: the namenode serves no more streams
                    # (or none at all); unary calls for a while
                    self._no_streams_until = time.monotonic() + (
                        30.0 if exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED else 1e12)
                elif self._gone(exc.code, st.index):
                    raise _Gone(exc.code, exc.details) from None
                elif exc.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise FsError(errno.EIO, f"namenode did not answer {method} in time") \
                        from None
                else:
                    raise FsError(errno.EIO, f"{method} failed: {exc.code}: {exc.details}") \
                        from None
            else:
                self._heard(st.index)
                self._give_back(st)
                if frame.HasField("error"):
                    e = frame.error
                    raise FsError(e.errno, e.message, e.path)
                return _REPLIES[method].FromString(frame.reply)
        return self._unary(method, request, rid, attempt)

    # -- call streams
    def _take_stream(self) -> _CallStream | None:
        if not self._max_streams or self._closed.is_set():
            return None
        with self._lock:
            if time.monotonic() < self._no_streams_until:
                return None
            now = time.monotonic()
            while self._idle:
                st = self._idle.pop()
                if st.alive() and self._silent_until[st.index] <= now:
                    self._busy.add(st)
                    return st
                st.close()
            if len(self._busy) >= self._max_streams:
                return None
            i = self._next_up() if len(self._stubs) > 1 else 0
            st = _CallStream(self._stubs[i], self.metadata, i)
            self._busy.add(st)
            if self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch, daemon=True,
                                                  name="metafs-call-deadlines")
                self._watchdog.start()
            return st

    def _give_back(self, st: _CallStream) -> None:
        with self._lock:
            self._busy.discard(st)
            if self._closed.is_set():
                st.close()
            else:
                self._idle.append(st)

    def _drop(self, st: _CallStream) -> None:
        with self._lock:
            self._busy.discard(st)
        st.close()

    def _watch(self) -> None:
        """Cancel the stream of a call that is past its deadline (the caller gets EIO)."""
        tick = min(max(self.timeout / 20, 0.01), 0.25)
        while not self._closed.wait(tick):
            now = time.monotonic()
            with self._lock:
                late = [st for st in self._busy if st.deadline and st.deadline < now]
            for st in late:
                st.expire()

    def _unary(self, method: str, request: Any, rid: str, attempt: int) -> Any:
        deadline = time.monotonic() + self.timeout
        pause = 0.005
        metadata = (*(self.metadata or ()), (REQUEST_ID_KEY, rid), (ATTEMPT_KEY, str(attempt)))
        while True:
            i = self._pick()
            try:
                reply = getattr(self._stubs[i], method)(request, timeout=self.timeout,
                                                        metadata=metadata)
                self._heard(i)
                return reply
            except grpc.RpcError as exc:
                if self._gone(exc.code(), i) and _answer(exc) is None:
                    raise _Gone(exc.code(), str(exc.details())) from None
                err = error_from_rpc(exc, method)
                if (exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                        and err.errno == errno.EAGAIN and time.monotonic() + pause < deadline):
                    # over this caller's share of the namenode (calls per identity): it
                    # ran nothing; wait for one of the caller's own calls to end
                    time.sleep(pause)
                    pause = min(pause * 2, 0.2)
                    continue
                raise err from None

    def stream(self, method: str, request: Any,
               resume: Callable[[Any], Any] | None = None) -> Iterator[Any]:
        """The items of a server stream. With ``resume``, an endless stream (a changelog
        subscription) survives its namenode: when the stream breaks (the namenode is
        gone, stops, or answers UNAVAILABLE) it is opened again, on the next namenode when
        there are several, with ``resume(last item)`` as its request (``request`` again if
        none came yet), so that it goes on after the last item it gave, nothing skipped or
        repeated. It is tried again with a pause growing to 0.5 s until
        ``failover_timeout`` seconds have passed since it broke (then EIO)."""
        broken = 0.0
        pause = 0.05
        while True:
            i = self._pick()
            opened = time.monotonic()
            it = getattr(self._stubs[i], method)(request, metadata=self.metadata)
            try:
                for item in it:
                    if broken:
                        log.warning("%s resumed on namenode %s after %.1f s", method,
                                    self.address.split(",")[i].strip(),
                                    time.monotonic() - broken)
                        broken, pause = 0.0, 0.05
                    if resume is not None:
                        request = resume(item)
                    yield item
                if resume is None or self._closed.is_set():
                    return
                failure = "the namenode ended the stream"
            except grpc.RpcError as exc:
                code = exc.code()
                if self._closed.is_set() or (code == grpc.StatusCode.CANCELLED
                                             and resume is None):
                    return
                if resume is None or _answer(exc) is not None or code not in (
                        grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                    raise error_from_rpc(exc, method) from None
                failure = f"{code}: {exc.details()}"
            finally:
                it.cancel()
            now = time.monotonic()
            if now - opened > 1.0:
                broken = 0.0  # it had been up (quiet streams give no sign of that)
            if not broken:
                broken = now
                log.warning("%s broke (%s); resuming for up to %.0f s", method, failure,
                            self.failover_timeout)
            left = broken + self.failover_timeout - now
            if left <= 0:
                raise FsError(errno.EIO, f"{method} could not be resumed: {failure}")
            self._closed.wait(min(pause, left))
            pause = min(pause * 2, 0.5)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            streams = self._idle + list(self._busy)
            self._idle.clear()
        for st in streams:
            st.close()
        for ch in self._channels:
            ch.close()
