"""``metafs status``: version, sessions, namenodes, consumer lag and back-end health.

:func:`cluster_status` asks every configured namenode for the reply of its ``Status`` call
(:mod:`metafs.namenode.status`), so one that is down shows as such instead of hiding the
others; :func:`format_status` prints it for a person.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from ..proto import metafs_pb2 as pb

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
    from ..version import __version__

    addresses = [a.strip() for a in (settings.namenode or "").split(",") if a.strip()]
    # each namenode on its own, and one that does not answer is reported as down at once
    # rather than waited for as a client waits out an outage
    probe = min(settings.failover_timeout, settings.rpc_timeout)
    targets = [(a, settings.with_(namenode=a, failover_timeout=probe)) for a in addresses] or \
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
