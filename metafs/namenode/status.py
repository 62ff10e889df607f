"""The namenode's answer to ``Status``: its version and process, the metadata database and
block store it uses (each checked with one cheap call, timed), the live client sessions, the
changelog head and the changelog readers it has seen (with their lag behind the head).
``metafs status`` (:mod:`metafs.ops.status`) asks every configured namenode for it."""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Callable

from sqlalchemy import func, select, text

from .. import metrics
from ..blockstore import new_key
from ..proto import metafs_pb2 as pb
from ..version import __version__
from . import schema

STARTED_NS = time.time_ns()  # when this process (the namenode) started
SESSIONS_LISTED = 200  # most sessions listed in one reply


def _check(name: str, fn: Callable[[], str]) -> pb.HealthCheck:
    t0 = time.perf_counter()
    try:
        detail, ok = fn(), True
    except Exception as exc:  # a health check reports failures, it does not raise them
        detail, ok = f"{type(exc).__name__}: {exc}", False
    return pb.HealthCheck(name=name, ok=ok, detail=detail, seconds=time.perf_counter() - t0)


def _database_check(ns: Any) -> str:
    eng = ns.engine
    eng.read_statement(lambda conn: conn.execute(text("SELECT 1")).scalar_one())
    pool = eng.engine.pool
    if hasattr(pool, "checkedout"):
        return f"{eng.name}: reachable; pool {pool.checkedout()}/{pool.size()} in use"
    return f"{eng.name}: reachable"


def _blockstore_check(ns: Any) -> str:
    layer = getattr(ns, "blocks", None)
    if layer is None:
        return "no block layer"
    layer.store.head(new_key(0, 0))  # one lookup of a key no file has (inode 0)
    return f"{layer.store_url}: reachable"


def namenode_status(ns: Any, settings: Any, *, root: bool) -> pb.StatusReply:
    """The reply to ``Status`` on the namenode of namespace ``ns``; ``root``: the caller
    may see every session."""
    eng = ns.engine
    reply = pb.StatusReply(
        version=__version__, host=socket.gethostname(), pid=os.getpid(),
        started_ns=STARTED_NS, engine=eng.name,
        database=eng.engine.url.render_as_string(hide_password=True),
        blocks=settings.effective_blocks_url)
    reply.checks.append(_check("database", lambda: _database_check(ns)))
    reply.checks.append(_check("blockstore", lambda: _blockstore_check(ns)))
    if not reply.checks[0].ok:
        return reply  # nothing below can be read
    head = ns.changelog_head()
    reply.changelog_head = head
    S = schema.sessions
    now = time.time_ns()

    def sessions(conn: Any) -> tuple[int, list[Any]]:
        live = S.c.expires_ns > now
        n = conn.execute(select(func.count()).select_from(S).where(live)).scalar_one()
        rows = conn.execute(select(S).where(live).order_by(S.c.started_ns)
                            .limit(SESSIONS_LISTED)).all() if root else []
        return int(n), rows

    n, rows = eng.read(sessions)
    reply.live_sessions = n
    for r in rows:
        reply.sessions.add(id=r.id, host=r.host, uid=r.uid, pid=r.pid,
                           started_ns=r.started_ns, expires_ns=r.expires_ns)
    for name, position, idle in metrics.consumers():
        reply.consumers.add(name=name, position=position, lag=max(head - position, 0),
                            idle_seconds=idle)
    return reply
