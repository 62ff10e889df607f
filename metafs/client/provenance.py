"""Provenance questions through a client: the namenode's ``Provenance`` call.

The namenode keeps the lineage graph of its file system (which runs read which artifact
versions and wrote which) and answers ``show``/``upstream``/``downstream``/``runs`` with
what the caller may see, as of now or as of a changelog position or a time. This module
is the client's side of that call: the request, and the answer as plain data
(:class:`Graph`, dicts). The graph itself, and the code that keeps it, live with the
changelog's consumers (:mod:`metafs.cdc.provenance`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..proto import metafs_pb2 as pb

__all__ = ["AsOf", "Graph", "NOW", "Provenance", "downstream", "upstream"]


@dataclass(frozen=True)
class AsOf:
    """A point in the changelog: a position, a time (ns since the epoch), or neither."""

    seq: int | None = None
    ts_ns: int | None = None

    def includes(self, seq: int | None, ts_ns: int | None) -> bool:
        """Whether something first seen at ``seq`` (and ``ts_ns``) is at or before it."""
        if seq is None:
            return False
        if self.seq is not None and seq > self.seq:
            return False
        if self.ts_ns is not None and ts_ns is not None and ts_ns > self.ts_ns:
            return False
        return True


NOW = AsOf()


@dataclass
class Graph:
    """A lineage answer: runs, artifact versions and the edges between them."""

    direction: str
    roots: list[int]
    runs: dict[int, dict[str, Any]] = field(default_factory=dict)
    artifacts: dict[int, dict[str, Any]] = field(default_factory=dict)
    edges: list[tuple[int, str, int]] = field(default_factory=list)  # (run, 'r'|'w', av)

    def to_dict(self) -> dict[str, Any]:
        return {"direction": self.direction, "roots": self.roots,
                "artifacts": [self.artifacts[a] for a in sorted(self.artifacts)],
                "runs": [self.runs[r] for r in sorted(self.runs)],
                "edges": [{"run": r, "type": "read" if d == "r" else "wrote", "artifact": a}
                          for r, d, a in sorted(self.edges)]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Graph":
        """The graph :meth:`to_dict` described (as the Provenance call sends it)."""
        return cls(direction=d["direction"], roots=[int(a) for a in d["roots"]],
                   runs={int(r["id"]): r for r in d["runs"]},
                   artifacts={int(a["id"]): a for a in d["artifacts"]},
                   edges=[(int(e["run"]), "r" if e["type"] == "read" else "w",
                           int(e["artifact"])) for e in d["edges"]])

    def datasets(self) -> list[dict[str, Any]]:
        return [a for a in self.artifacts.values() if a["kind"] == "dataset"]


class Provenance:
    """Provenance questions through a client, answered by the namenode (the ``Provenance``
    call) from the lineage graph it keeps of its file system, with only what the caller
    may see. The graph is brought up to date with the changelog before each answer,
    unless ``sync=False``."""

    def __init__(self, client: Any, *, sync: bool = True) -> None:
        self.client = client
        self.auto_sync = sync

    def close(self) -> None:
        """Nothing to release (kept so ``with Provenance(fs) as p:`` reads naturally)."""

    def __enter__(self) -> "Provenance":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _ask(self, action: str, path: str | None = None, **fields: Any) -> Any:
        if action not in ("sync", "status"):
            self.client.access_recorder.flush()  # this client's own events count too
        req = pb.ProvenanceRequest(caller=self.client.caller, action=action,
                                   path=path or "", no_sync=not self.auto_sync,
                                   **{k: v for k, v in fields.items() if v is not None})
        return json.loads(self.client._call("Provenance", req, path).json)

    def sync(self, rebuild: bool = False) -> int:
        """Have the namenode apply its changelog up to the head (this client's pending
        access events first); ``rebuild`` replays it from the start (root only).
        Returns the number of records applied."""
        self.client.access_recorder.flush()
        return int(self._ask("sync", rebuild=rebuild)["applied"])

    def status(self) -> dict[str, Any]:
        """The graph's position, the changelog head and the lag (and sizes, for root)."""
        return dict(self._ask("status"))

    def show(self, path: str, as_of: Any = None) -> dict[str, Any]:
        return dict(self._ask("show", path, as_of=_as_of(as_of)))

    def upstream(self, path: str, depth: int | None = None, as_of: Any = None,
                 version: int | None = None, all_versions: bool = False) -> Graph:
        """What went into ``path`` (its latest version unless ``version``/``all_versions``)."""
        return Graph.from_dict(self._ask("upstream", path, depth=depth, as_of=_as_of(as_of),
                                         version=version, all_versions=all_versions))

    def downstream(self, path: str, depth: int | None = None, as_of: Any = None,
                   version: int | None = None) -> Graph:
        """What ``path`` fed (all its versions unless ``version`` is given)."""
        return Graph.from_dict(self._ask("downstream", path, depth=depth,
                                         as_of=_as_of(as_of), version=version))

    def runs(self, path: str | None = None, as_of: Any = None, limit: int = 1000
             ) -> list[dict[str, Any]]:
        return list(self._ask("runs", path, as_of=_as_of(as_of), limit=limit))

    def reads_of(self, run_id: str) -> list[dict[str, Any]]:
        """The artifact versions the caller's explicit run ``run_id`` read."""
        return list(self._ask("reads", run_id=run_id))


def _as_of(value: Any) -> str | None:
    """An ``as_of`` for the wire: a changelog position, a time (ISO-8601, or seconds since
    the epoch with a fraction), or None for now. The namenode parses it
    (:func:`metafs.cdc.provenance.parse_as_of`)."""
    if value is None or value == "":
        return None
    if isinstance(value, AsOf):
        return str(value.seq) if value.seq is not None else str(value.ts_ns / 1e9)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value).strip()


def upstream(client: Any, path: str, **kw: Any) -> Graph:
    """One-shot :meth:`Provenance.upstream` for a client."""
    with Provenance(client) as p:
        return p.upstream(path, **kw)


def downstream(client: Any, path: str, **kw: Any) -> Graph:
    """One-shot :meth:`Provenance.downstream` for a client."""
    with Provenance(client) as p:
        return p.downstream(path, **kw)
