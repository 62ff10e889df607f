"""Prometheus metrics of a namenode, served by ``metafs serve --metrics-port PORT``.

- ``metafs_ops_total{op, errno}``: calls by RPC and result (``OK`` or the errno name);
- ``metafs_op_seconds{op}``: latency histogram per RPC;
- ``metafs_changelog_head``: the last committed changelog position;
- ``metafs_consumer_position{consumer}`` and ``metafs_consumer_lag_records{consumer}``:
  where each changelog reader (indexer, provenance builder, ``metafs changelog -f``) has
  read up to, as the namenode sees its ReadChangelog/SubscribeChangelog calls, and how far
  behind the head that is. A consumer is named by its run id, else its client id.
"""

from __future__ import annotations

import errno as errno_mod
import threading
import time
import weakref
from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from ..errors import FsError

REGISTRY = CollectorRegistry(auto_describe=True)

OPS = Counter("metafs_ops", "Namenode calls by RPC and result", ["op", "errno"],
              registry=REGISTRY)
LATENCY = Histogram("metafs_op_seconds", "Namenode call latency by RPC", ["op"],
                    buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5,
                             5, 10), registry=REGISTRY)
CONSUMER_TTL = 600.0  # seconds a silent consumer stays listed


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.consumers: dict[str, tuple[int, float]] = {}  # name -> (position, seen)
        self.namespaces: "weakref.WeakSet[Any]" = weakref.WeakSet()

    def saw(self, name: str, position: int) -> None:
        with self.lock:
            self.consumers[name] = (position, time.monotonic())


STATE = _State()


def _consumer_name(req: Any) -> str:
    c = getattr(req, "caller", None)
    if c is None:
        return "unknown"
    return c.run_id or (c.client_id[:12] if c.client_id else f"pid-{c.pid}")


class _Collector:
    """Changelog head and consumer lag, read at scrape time."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        head = None
        for ns in list(STATE.namespaces):
            try:
                head = ns.changelog_head()
                break
            except Exception:
                continue
        g = GaugeMetricFamily("metafs_changelog_head", "Last committed changelog position")
        if head is not None:
            g.add_metric([], head)
        yield g
        pos = GaugeMetricFamily("metafs_consumer_position",
                                "Changelog position a consumer has read up to", labels=["consumer"])
        lag = GaugeMetricFamily("metafs_consumer_lag_records",
                                "Changelog records a consumer is behind the head",
                                labels=["consumer"])
        now = time.monotonic()
        with STATE.lock:
            for name, (p, seen) in list(STATE.consumers.items()):
                if now - seen > CONSUMER_TTL:
                    del STATE.consumers[name]
                    continue
                pos.add_metric([name], p)
                if head is not None:
                    lag.add_metric([name], max(head - p, 0))
        yield pos
        yield lag


REGISTRY.register(_Collector())


def _errno_name(n: int) -> str:
    return errno_mod.errorcode.get(n, str(n))


def _wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    ok = OPS.labels(name, "OK")
    hist = LATENCY.labels(name)

    def call(req: Any, ctx: Any = None) -> Any:
        t0 = time.perf_counter()
        try:
            reply = fn(req, ctx)
        except FsError as err:
            OPS.labels(name, _errno_name(err.errno)).inc()
            raise
        except Exception:
            OPS.labels(name, "EIO").inc()
            raise
        finally:
            hist.observe(time.perf_counter() - t0)
        ok.inc()
        if name == "ReadChangelog":
            last = reply.records[-1].seq if reply.records else req.after
            STATE.saw(_consumer_name(req), last)
        return reply

    return call


def _wrap_stream(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(req: Any, ctx: Any = None) -> Iterator[Any]:
        who = _consumer_name(req)
        STATE.saw(who, req.after)
        try:
            for rec in fn(req, ctx):
                STATE.saw(who, rec.seq)
                yield rec
        except FsError as err:
            OPS.labels(name, _errno_name(err.errno)).inc()
            raise
        OPS.labels(name, "OK").inc()

    return call


class Instrumented:
    """A view of a Handlers object whose RPC methods count and time themselves."""

    def __init__(self, handlers: Any) -> None:
        self._h = handlers
        self._cache: dict[str, Callable[..., Any]] = {}
        ns = getattr(handlers, "ns", None)
        if ns is not None:
            STATE.namespaces.add(ns)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._h, name)
        if not name[:1].isupper() or not callable(attr):
            return attr
        fn = self._cache.get(name)
        if fn is None:
            fn = _wrap_stream(name, attr) if name == "SubscribeChangelog" else _wrap(name, attr)
            self._cache[name] = fn
        return fn


def instrument(handlers: Any) -> Any:
    return Instrumented(handlers)


def forget(ns: Any) -> None:
    """A namespace whose namenode closed no longer reports the changelog head."""
    STATE.namespaces.discard(ns)


def serve_metrics(port: int, addr: str = "127.0.0.1") -> Any:
    """Expose the metrics over HTTP (``/metrics``); returns the server (``shutdown()``)."""
    server, _thread = start_http_server(port, addr=addr, registry=REGISTRY)
    return server
