"""Prometheus metrics of a namenode (``metafs serve --metrics-port PORT``) and of a mount
(``metafs mount --metrics-port PORT``), one registry per process.

Namenode:

- ``metafs_ops_total{op, errno}``: calls by RPC and result (``OK`` or the errno name);
- ``metafs_op_seconds{op}``: latency histogram per RPC;
- ``metafs_changelog_head``: the last committed changelog position;
- ``metafs_consumer_position{consumer}`` and ``metafs_consumer_lag_records{consumer}``:
  where each changelog reader (indexer, provenance builder, ``metafs changelog -f``) has
  read up to, as the namenode sees its ReadChangelog/SubscribeChangelog calls, and how far
  behind the head that is. A consumer is named by its run id, else its client id.
- ``metafs_db_pool_size``, ``metafs_db_pool_checked_out``, ``metafs_db_pool_overflow``
  (``{engine}``): the metadata database's connection pool, read at scrape time, and
  ``metafs_db_pool_checkout_seconds{engine}``: how long getting a connection took
  (waiting for a free one, connecting, the liveness check).

Mount (FUSE):

- ``metafs_fuse_ops_total{op, errno}`` and ``metafs_fuse_op_seconds{op}``: every call the
  kernel makes into the mount, by operation and result.

Any process that reads or writes blocks (mount, client, namenode's garbage collection):

- ``metafs_block_ops_total{store, op, errno}``, ``metafs_block_op_seconds{store, op}`` and
  ``metafs_block_bytes_total{store, op}``: block store calls, results, latency and bytes;
- ``metafs_cache_hits_total{cache}``, ``metafs_cache_misses_total{cache}``,
  ``metafs_cache_evictions_total{cache}`` and ``metafs_cache_bytes{cache}``: the block
  caches (``memory``, ``disk``).

Prometheus's standard ``process_*``, ``python_gc_*`` and ``python_info`` are registered too.
"""

from __future__ import annotations

import errno as errno_mod
import threading
import time
import weakref
from typing import Any, Callable, Iterator

from prometheus_client import (GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR,
                               CollectorRegistry, Counter, Gauge, Histogram,
                               start_http_server)
from prometheus_client.core import GaugeMetricFamily

from .errors import FsError

REGISTRY = CollectorRegistry(auto_describe=True)
# the standard process, platform and garbage-collector metrics of the default registry
for _standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_standard)

_BUCKETS = (.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5,
            10)

OPS = Counter("metafs_ops", "Namenode calls by RPC and result", ["op", "errno"],
              registry=REGISTRY)
LATENCY = Histogram("metafs_op_seconds", "Namenode call latency by RPC", ["op"],
                    buckets=_BUCKETS, registry=REGISTRY)
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


def consumers() -> list[tuple[str, int, float]]:
    """The changelog readers seen lately: (name, position, seconds since last seen)."""
    now = time.monotonic()
    with STATE.lock:
        return sorted((name, p, now - seen) for name, (p, seen) in STATE.consumers.items()
                      if now - seen <= CONSUMER_TTL)


def _errno_name(n: int) -> str:
    return errno_mod.errorcode.get(n, str(n))


def _wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    ok = OPS.labels(name, "OK")
    hist = LATENCY.labels(name)
    consumer = name == "ReadChangelog"
    clock = time.perf_counter

    def call(req: Any, ctx: Any = None) -> Any:
        t0 = clock()
        try:
            reply = fn(req, ctx)
        except FsError as err:
            OPS.labels(name, _errno_name(err.errno)).inc()
            raise
        except Exception:
            OPS.labels(name, "EIO").inc()
            raise
        finally:
            hist.observe(clock() - t0)
        ok.inc()
        if consumer:
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
        ns = getattr(handlers, "ns", None)
        if ns is not None:
            STATE.namespaces.add(ns)
            if getattr(ns, "engine", None) is not None:
                watch_pool(ns.engine)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._h, name)
        if not name[:1].isupper() or not callable(attr):
            return attr
        fn = _wrap_stream(name, attr) if name == "SubscribeChangelog" else _wrap(name, attr)
        # kept as an attribute of this view: later calls find it without coming here
        setattr(self, name, fn)
        return fn


# ---------------------------------------------------------------------- database pool
POOL_CHECKOUT = Histogram("metafs_db_pool_checkout_seconds", "Time to get a metadata "
                          "database connection from the pool (waiting, connecting, "
                          "checking it)", ["engine"], buckets=_BUCKETS, registry=REGISTRY)


def watch_pool(engine: Any) -> None:
    """Time the connection checkouts of a :class:`~metafs.namenode.engine.MetaEngine`'s
    pool (its size, use and overflow are read at scrape time from the namespaces)."""
    pool = engine.engine.pool
    if getattr(pool, "_metafs_timed", False):
        return
    hist = POOL_CHECKOUT.labels(engine.name)
    connect = pool.connect

    def timed_connect() -> Any:
        t0 = time.perf_counter()
        try:
            return connect()
        finally:
            hist.observe(time.perf_counter() - t0)

    pool.connect = timed_connect
    pool._metafs_timed = True


class _PoolCollector:
    """Connections of the metadata database pools, read at scrape time."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        fams = {k: GaugeMetricFamily(f"metafs_db_pool_{k}", help_, labels=["engine"])
                for k, help_ in (("size", "Connections the pool keeps"),
                                 ("checked_out", "Connections in use"),
                                 ("overflow", "Connections open beyond the pool size "
                                  "(negative: not yet opened)"))}
        seen = set()
        for ns in list(STATE.namespaces):
            eng = getattr(ns, "engine", None)
            pool = getattr(getattr(eng, "engine", None), "pool", None)
            if pool is None or id(pool) in seen or not hasattr(pool, "checkedout"):
                continue
            seen.add(id(pool))
            fams["size"].add_metric([eng.name], pool.size())
            fams["checked_out"].add_metric([eng.name], pool.checkedout())
            fams["overflow"].add_metric([eng.name], pool.overflow())
        yield from fams.values()


REGISTRY.register(_PoolCollector())


# ---------------------------------------------------------------------- block stores
BLOCK_OPS = Counter("metafs_block_ops", "Block store calls by store, operation and result",
                    ["store", "op", "errno"], registry=REGISTRY)
BLOCK_LATENCY = Histogram("metafs_block_op_seconds", "Block store call latency",
                          ["store", "op"], buckets=_BUCKETS, registry=REGISTRY)
BLOCK_BYTES = Counter("metafs_block_bytes", "Bytes read (get) and written (put) to block "
                      "stores", ["store", "op"], registry=REGISTRY)
_STORE_OPS = ("put", "get", "head", "delete", "delete_many", "list")


def instrument_store(cls: type) -> None:
    """Count and time the calls of a block store class (called for every subclass of
    :class:`~metafs.blockstore.base.BlockStore`). ``list`` is counted once per call."""
    store = cls.__name__.lower().removesuffix("store").removesuffix("view") or "store"
    for op in _STORE_OPS:
        fn = cls.__dict__.get(op)
        if fn is None or getattr(fn, "_metafs_timed", False):
            continue
        setattr(cls, op, _timed_store_call(store, op, fn))


def _timed_store_call(store: str, op: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    hist = BLOCK_LATENCY.labels(store, op)
    ok = BLOCK_OPS.labels(store, op, "OK")
    nbytes = BLOCK_BYTES.labels(store, op) if op in ("get", "put") else None

    def call(self: Any, *args: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            result = fn(self, *args, **kw)
        except FsError as err:
            BLOCK_OPS.labels(store, op, _errno_name(err.errno)).inc()
            raise
        except OSError as err:
            BLOCK_OPS.labels(store, op, _errno_name(err.errno or 5)).inc()
            raise
        except Exception:
            BLOCK_OPS.labels(store, op, "EIO").inc()
            raise
        finally:
            hist.observe(time.perf_counter() - t0)
        ok.inc()
        if nbytes is not None:
            nbytes.inc(len(result) if op == "get" else len(args[1] if len(args) > 1
                                                            else kw["data"]))
        return result

    call.__name__ = fn.__name__
    call.__doc__ = fn.__doc__
    call._metafs_timed = True  # type: ignore[attr-defined]
    return call


# ---------------------------------------------------------------------- block caches
CACHE_HITS = Counter("metafs_cache_hits", "Block cache lookups that found the block",
                     ["cache"], registry=REGISTRY)
CACHE_MISSES = Counter("metafs_cache_misses", "Block cache lookups that did not",
                       ["cache"], registry=REGISTRY)
CACHE_EVICTIONS = Counter("metafs_cache_evictions", "Blocks evicted from a block cache",
                          ["cache"], registry=REGISTRY)
CACHE_BYTES = Gauge("metafs_cache_bytes", "Bytes held by the block caches", ["cache"],
                    registry=REGISTRY)


class CacheMetrics:
    """The counters of one kind of cache (``memory`` or ``disk``)."""

    def __init__(self, cache: str) -> None:
        self.hits = CACHE_HITS.labels(cache)
        self.misses = CACHE_MISSES.labels(cache)
        self.evictions = CACHE_EVICTIONS.labels(cache)
        self.bytes = CACHE_BYTES.labels(cache)

    def lookup(self, found: bool) -> None:
        (self.hits if found else self.misses).inc()


# ---------------------------------------------------------------------- FUSE mounts
FUSE_OPS = Counter("metafs_fuse_ops", "FUSE calls by operation and result", ["op", "errno"],
                   registry=REGISTRY)
FUSE_LATENCY = Histogram("metafs_fuse_op_seconds", "FUSE call latency by operation", ["op"],
                         buckets=_BUCKETS, registry=REGISTRY)


class FuseCallMetrics:
    """Counts and times the calls a FUSE binding dispatches (see ``MetafsFUSE._wrapper``):
    ``observe(name, seconds, result)`` with libfuse's result (negative: -errno)."""

    def __init__(self) -> None:
        self._children: dict[str, tuple[Any, Any]] = {}

    def observe(self, name: str, seconds: float, result: Any) -> None:
        ch = self._children.get(name)
        if ch is None:
            op = name.removesuffix("_fuse_3")
            ch = self._children[name] = (FUSE_LATENCY.labels(op), FUSE_OPS.labels(op, "OK"))
        ch[0].observe(seconds)
        if isinstance(result, int) and result < 0:
            FUSE_OPS.labels(name.removesuffix("_fuse_3"), _errno_name(-result)).inc()
        else:
            ch[1].inc()


def instrument(handlers: Any) -> Any:
    return Instrumented(handlers)


def forget(ns: Any) -> None:
    """A namespace whose namenode closed no longer reports the changelog head."""
    STATE.namespaces.discard(ns)


def serve_metrics(port: int, addr: str = "127.0.0.1") -> Any:
    """Expose the metrics over HTTP (``/metrics``); returns the server (``shutdown()``)."""
    server, _thread = start_http_server(port, addr=addr, registry=REGISTRY)
    return server
