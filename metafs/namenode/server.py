"""The namenode process: database engine, namespace, handlers, background work, gRPC server.

``Namenode(settings)`` is what both an embedded client and ``metafs serve`` run; the gRPC
server in :func:`serve_grpc` wraps its handlers so that every failure reaches the client as
a status carrying an ``ErrorDetail`` (errno, message, path), never a traceback.

The namenode imports no part above it: the code that starts it hands in its extensions
(the Search call, metrics, authentication; see :mod:`metafs.assembly`), as ``extensions``
of :class:`Namenode` and the ``wrap_handlers``/``install``/``bind`` of :class:`GrpcServer`.
"""

from __future__ import annotations

import errno
import logging
import threading
from concurrent import futures
from typing import Any, Callable, Sequence

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from ..blockstore.base import StoreUnavailable
from ..config import Settings
from ..errors import FsError
from ..proto import metafs_pb2 as pb
from ..proto import metafs_pb2_grpc as pb_grpc
from .engine import engine_for
from .limits import Limits, is_long_poll
from . import requests
from .namespace import Namespace
from .service import Handlers, internal_error

log = logging.getLogger("metafs.namenode")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Namenode"].full_name

# A part attached to a namenode when it starts: called with the namenode, returns the part
# (kept in ``Namenode.extensions``; its ``close()``, if any, runs when the namenode closes).
Extension = Callable[["Namenode"], Any]
# Put in front of the handlers a gRPC server calls (metrics, for instance).
HandlerWrapper = Callable[[Any], Any]
# Called with the namenode and its gRPC server before it starts (more services, auth).
ServerInstaller = Callable[["Namenode", grpc.Server], Any]
# Makes the server listen on an address (TLS or not); returns the bound port (0: failed).
Binder = Callable[[grpc.Server, str, Settings], int]


class Namenode:
    """A namenode on one metadata database: what `metafs serve` runs, and what an embedded
    client runs in-process."""

    def __init__(self, settings: Settings, *, background: bool = True,
                 extensions: Sequence[Extension] = ()) -> None:
        self.settings = settings
        self.engine = engine_for(settings.effective_db_url, settings)
        self.ns = Namespace(self.engine, settings)
        self.ns.setup()
        self.handlers = Handlers(self.ns, settings)
        # Names the authenticated caller of a gRPC call for limits per identity (set by
        # authentication; None: not authenticated, the connection is the caller).
        self.identity_key: Callable[[Any], str | None] = lambda ctx: None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.extensions: list[Any] = []  # attached parts (block layer, indexers, ...)
        self._attach_extensions(extensions)
        if background:
            self.start_background(
                "reclaim", self.ns.reclaim, max(1.0, settings.session_lease / 2))

    def _attach_extensions(self, extensions: Sequence[Extension]) -> None:
        """Attach the block layer, then the parts the caller hands in (which register
        themselves on the namespace or the handlers)."""
        from . import blocks

        self.extensions.append(blocks.attach(self))
        for attach in extensions:
            self.extensions.append(attach(self))

    # An unexpected failure of a handler: logged with its traceback, EIO for the caller (the
    # in-process transport raises it; the gRPC server sends it).
    internal_error = staticmethod(internal_error)

    def start_background(self, name: str, fn: Callable[[], Any], every: float) -> None:
        def loop() -> None:
            while not self._stop.wait(every):
                try:
                    fn()
                except Exception:  # keep the namenode up; the next round retries
                    log.exception("background task %s failed", name)

        t = threading.Thread(target=loop, name=f"metafs-{name}", daemon=True)
        t.start()
        self._threads.append(t)

    def close(self) -> None:
        self._stop.set()
        self.handlers.stop()
        for ext in self.extensions:
            close = getattr(ext, "close", None)
            if close:
                close()
        for t in self._threads:
            t.join(timeout=5)
        self.engine.dispose()


# ---------------------------------------------------------------------- gRPC adapter
def _abort(ctx: grpc.ServicerContext, err: FsError) -> None:
    detail = any_pb2.Any()
    detail.Pack(pb.ErrorDetail(errno=err.errno, message=err.message, path=err.path))
    status = status_pb2.Status(code=getattr(code_pb2, err.grpc_code_name),
                               message=str(err), details=[detail])
    ctx.abort_with_status(rpc_status.to_status(status))


def _unary(handlers: Handlers, name: str,
           limits: Limits) -> Callable[[Any, grpc.ServicerContext], Any]:
    def call(request: Any, ctx: grpc.ServicerContext) -> Any:
        try:
            fn = getattr(handlers, name, None)
            if fn is None:
                raise FsError(errno.ENOSYS, f"this namenode does not implement {name}")
            limits.check_request(name, request)
            # a long-poll waits on a thread of its own share, never on an ordinary one
            shares = limits.long_polls if is_long_poll(name, request) else limits.calls
            rid, attempt = _request_id(ctx)
            with shares.held(limits.key(ctx)), requests.scope(name, rid, attempt):
                return fn(request, ctx)
        except StoreUnavailable as exc:
            # nothing was committed: the client retries the call (under the same request id)
            ctx.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except FsError as err:
            _abort(ctx, err)
        except Exception as exc:
            if isinstance(exc, requests.DatabaseUnavailable) or requests.lost_database(exc):
                # no answer: the client retries the call (under the same request id)
                ctx.abort(grpc.StatusCode.UNAVAILABLE, f"metadata database unavailable: {exc}")
            _abort(ctx, internal_error(exc, name))

    call.__name__ = name
    return call


def _streaming(handlers: Handlers, name: str,
               limits: Limits) -> Callable[[Any, grpc.ServicerContext], Any]:
    fn = getattr(handlers, name)

    def call(request: Any, ctx: grpc.ServicerContext) -> Any:
        key = limits.key(ctx)
        try:
            limits.subscribers.take(key)
        except FsError as err:
            _abort(ctx, err)
        try:
            yield from fn(request, ctx)
        except FsError as err:
            _abort(ctx, err)
        except Exception as exc:
            _abort(ctx, internal_error(exc, name))
        finally:
            limits.subscribers.give(key)

    call.__name__ = name
    return call


def _request_id(ctx: grpc.ServicerContext) -> tuple[str, int]:
    """The request id and attempt number a unary call carries in its metadata."""
    rid, attempt = "", 0
    for key, value in ctx.invocation_metadata() or ():
        if key == "metafs-request-id":
            rid = value
        elif key == "metafs-attempt":
            attempt = int(value) if value.isdigit() else 0
    return rid, attempt


# The unary methods a call stream may carry, with their request classes.
UNARY_REQUESTS: dict[str, Any] = {
    m.name: getattr(pb, m.input_type.name)
    for m in pb.DESCRIPTOR.services_by_name["Namenode"].methods
    if not m.server_streaming and not m.client_streaming}


def _frame_error(err: FsError) -> pb.ReplyFrame:
    return pb.ReplyFrame(error=pb.ErrorDetail(errno=err.errno, message=err.message,
                                              path=err.path))


def answer_frame(handlers: Any, frame: pb.CallFrame, ctx: Any,
                 limits: Limits | None = None) -> pb.ReplyFrame:
    """Run one call of a call stream: the same handler, checks and errors as the unary
    call of that name."""
    cls = UNARY_REQUESTS.get(frame.method)
    if cls is None:
        return _frame_error(FsError(errno.ENOSYS, f"{frame.method!r} is not a unary call of "
                                    "this namenode"))
    try:
        request = cls.FromString(frame.request)
    except Exception:
        return _frame_error(FsError(errno.EINVAL, f"malformed {frame.method} request"))
    try:
        fn = getattr(handlers, frame.method, None)
        if fn is None:
            raise FsError(errno.ENOSYS, f"this namenode does not implement {frame.method}")
        if limits is not None:
            limits.check_request(frame.method, request)
        with requests.scope(frame.method, frame.request_id, frame.attempt):
            return pb.ReplyFrame(reply=fn(request, ctx).SerializeToString())
    except StoreUnavailable as exc:
        # no answer: ends the stream, and the client retries the call later
        ctx.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
    except FsError as err:
        return _frame_error(err)
    except Exception as exc:
        if isinstance(exc, requests.DatabaseUnavailable) or requests.lost_database(exc):
            # no answer: ends the stream, and the client retries the call elsewhere or later
            # under the same request id
            ctx.abort(grpc.StatusCode.UNAVAILABLE, f"metadata database unavailable: {exc}")
        return _frame_error(internal_error(exc, frame.method))


def _call_stream(handlers: Handlers, gate: threading.BoundedSemaphore, limit: int,
                 limits: Limits) -> Callable[[Any, grpc.ServicerContext], Any]:
    def Calls(frames: Any, ctx: grpc.ServicerContext) -> Any:
        if limit <= 0 or not gate.acquire(blocking=False):
            ctx.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                      f"this namenode serves at most {limit} call streams; make unary calls")
        key = limits.key(ctx)
        try:
            limits.calls.take(key)  # an open stream is a call in progress of its caller
        except FsError as err:
            gate.release()
            ctx.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, err.message)
        try:
            for frame in frames:
                yield answer_frame(handlers, frame, ctx, limits)
        finally:
            limits.calls.give(key)
            gate.release()

    return Calls


def make_servicer(handlers: Any, limits: Limits,
                  max_call_streams: int = 64) -> pb_grpc.NamenodeServicer:
    """A servicer whose every RPC calls the handler of the same name (within the caller's
    shares, see :mod:`.limits`), and whose Calls stream carries any of the unary ones."""
    methods: dict[str, Any] = {}
    for m in pb.DESCRIPTOR.services_by_name["Namenode"].methods:
        if m.client_streaming:
            methods[m.name] = _call_stream(handlers, threading.BoundedSemaphore(
                max(max_call_streams, 1)), max_call_streams, limits)
        elif m.server_streaming:
            methods[m.name] = _streaming(handlers, m.name, limits)
        else:
            methods[m.name] = _unary(handlers, m.name, limits)
    cls = type("NamenodeServicer", (pb_grpc.NamenodeServicer,),
               {k: staticmethod(v) for k, v in methods.items()})
    return cls()


def _bind_insecure(server: grpc.Server, listen: str, _settings: Settings) -> int:
    return server.add_insecure_port(listen)


class GrpcServer:
    """A namenode's gRPC server: the Namenode service (its handlers behind
    ``wrap_handlers``), health and reflection, whatever ``install`` adds, listening as
    ``bind`` says (plain TCP by default)."""

    def __init__(self, namenode: Namenode, listen: str, *,
                 wrap_handlers: HandlerWrapper | None = None,
                 install: Sequence[ServerInstaller] = (),
                 bind: Binder = _bind_insecure) -> None:
        s = namenode.settings
        self.namenode = namenode
        # Ordinary calls get grpc_workers threads; each changelog stream, changelog
        # long-poll and call stream may hold one more thread, and at most max_subscribers,
        # max_long_polls and max_call_streams of them run at once, so they can never take
        # the threads ordinary calls need (and no identity may hold more than its share
        # of ordinary calls: metafs.namenode.limits).
        self.server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=s.grpc_workers + s.max_subscribers + max(s.max_long_polls, 0)
                + max(s.max_call_streams, 0),
                thread_name_prefix="metafs-grpc"),
            options=[("grpc.max_receive_message_length", s.grpc_max_receive_bytes),
                     ("grpc.max_send_message_length", s.grpc_max_send_bytes),
                     ("grpc.so_reuseport", 0)],
        )
        handlers: Any = namenode.handlers
        if wrap_handlers is not None:
            handlers = wrap_handlers(handlers)
        self.limits = Limits(s, lambda ctx: namenode.identity_key(ctx))
        pb_grpc.add_NamenodeServicer_to_server(
            make_servicer(handlers, self.limits, s.max_call_streams), self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        for add in install:
            add(namenode, self.server)
        self.port = bind(self.server, listen, s)
        if self.port == 0:
            raise OSError(errno.EADDRINUSE, f"cannot listen on {listen}")
        host = listen.rsplit(":", 1)[0]
        self.address = f"{host}:{self.port}"

    def start(self) -> "GrpcServer":
        self.server.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self

    def stop(self, grace: float = 5.0) -> None:
        self.health.enter_graceful_shutdown()
        self.namenode.handlers.stop()
        self.server.stop(grace).wait()

    def wait(self) -> None:
        self.server.wait_for_termination()


def serve_grpc(namenode: Namenode, listen: str | None = None, *,
               wrap_handlers: HandlerWrapper | None = None,
               install: Sequence[ServerInstaller] = (),
               bind: Binder = _bind_insecure) -> GrpcServer:
    """Start serving ``namenode`` over gRPC on ``listen`` (default: its ``listen``)."""
    return GrpcServer(namenode, listen or namenode.settings.listen,
                      wrap_handlers=wrap_handlers, install=install, bind=bind).start()
