"""``metafs status``: version, sessions, namenodes, consumer lag and back-end health.

The namenode side (:func:`namenode_status`) answers the ``Status`` call: its version and
process, the metadata database and block store it uses (each checked with one cheap call,
timed), the live client sessions, the changelog head and the changelog readers it has seen
(with their lag behind the head). The client side (:func:`cluster_status`) asks every
configured namenode, so one that is down shows as such instead of hiding the others.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Callable

from sqlalchemy import func, select, text

from ..proto import metafs_pb2 as pb

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
    from ..blockstore import new_key

    layer.store.head(new_key(0, 0))  # one lookup of a key no file has (inode 0)
    return f"{layer.store_url}: reachable"


def namenode_status(ns: Any, settings: Any, *, root: bool) -> pb.StatusReply:
    """The reply to ``Status`` on the namenode of namespace ``ns``; ``root``: the caller
    may see every session."""
    from .. import __version__
    from ..namenode import schema
    from . import metrics

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


# ---------------------------------------------------------------------- client side
def reply_to_dict(msg: Any) -> dict[str, Any]:
    """A status message as plain JSON values (64-bit integers stay numbers)."""
    out: dict[str, Any] = {}
    for f in msg.DESCRIPTOR.fields:
        v = getattr(msg, f.name)
        repeated = hasattr(v, "extend")  # a repeated field (whichever protobuf release)
        if f.message_type is not None:
            out[f.name] = [reply_to_dict(m) for m in v] if repeated else reply_to_dict(v)
        else:
            out[f.name] = list(v) if repeated else v
    return out


def cluster_status(settings: Any, make_client: Callable[[Any], Any]) -> dict[str, Any]:
    """Ask each configured namenode (or the embedded one) for its status. Returns
    ``{"client_version", "changelog_head", "volume", "namenodes": [{"address", "ok",
    "error" | status...}], "ok"}``; ``ok`` is false when any namenode is unreachable or any back end unhealthy."""
    from .. import __version__

    addresses = [a.strip() for a in (settings.namenode or "").split(",") if a.strip()]
    targets = [(a, settings.with_(namenode=a)) for a in addresses] or \
        [(f"embedded:{settings.data_dir}", settings)]
    out: dict[str, Any] = {"client_version": __version__, "namenodes": []}
    for address, s in targets:
        entry: dict[str, Any] = {"address": address}
        try:
            with make_client(s) as fs:
                reply = fs._call("Status", pb.StatusRequest(caller=fs.caller))
                if "volume" not in out:
                    vfs = fs.statvfs()
                    out["volume"] = {"inodes": vfs.used_inodes, "bytes": vfs.used_bytes,
                                     "inline_limit": fs.inline_limit,
                                     "block_size": fs.block_size}
            entry.update(reply_to_dict(reply))
            out["changelog_head"] = max(out.get("changelog_head", 0), reply.changelog_head)
            entry["ok"] = all(c.ok for c in reply.checks)
        except OSError as exc:
            entry.update(ok=False, error=exc.strerror or str(exc))
        out["namenodes"].append(entry)
    out["ok"] = bool(out["namenodes"]) and all(n["ok"] for n in out["namenodes"])
    return out


def format_status(st: dict[str, Any]) -> str:
    """The human-readable form of :func:`cluster_status`'s answer."""
    lines = [f"client version: {st['client_version']}"]
    if "volume" in st:
        v = st["volume"]
        lines.append(f"volume: {v['inodes']} inodes, {v['bytes']} bytes (inline up to "
                     f"{v['inline_limit']} bytes, blocks of {v['block_size']})")
    for n in st["namenodes"]:
        lines.append("")
        if "error" in n:
            lines.append(f"namenode {n['address']}: DOWN ({n['error']})")
            continue
        up = time.time() - int(n["started_ns"]) / 1e9
        lines.append(f"namenode {n['address']}: metafs {n['version']} on {n['host']} "
                     f"(pid {n['pid']}, up {_duration(up)})")
        lines.append(f"  database:   {n['database']}")
        lines.append(f"  blocks:     {n['blocks']}")
        for c in n["checks"]:
            mark = "ok" if c["ok"] else "FAILED"
            lines.append(f"  health {c['name']:<10} {mark:<6} {c['detail']} "
                         f"({c['seconds'] * 1000:.1f} ms)")
        lines.append(f"  changelog_head: {n['changelog_head']}")
        lines.append(f"  live_sessions:  {n['live_sessions']}")
        for s in n["sessions"]:
            lines.append(f"    {s['id'][:12]} {s['host']} uid {s['uid']} pid {s['pid']}")
        if n["consumers"]:
            lines.append("  changelog readers:")
            for c in n["consumers"]:
                lines.append(f"    {c['name']:<24} at {c['position']:>10}  lag {c['lag']:>8}"
                             f"  idle {_duration(c['idle_seconds'])}")
        else:
            lines.append("  changelog readers: none seen by this namenode")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d"
