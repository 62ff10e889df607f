"""Provenance: which runs read which data sets and wrote which models.

- Explicit runs: :func:`run` (``with metafs.run("train", params={...}):``) and
  ``metafs run -- CMD`` (:func:`run_command`).
- Implicit inference: :class:`ProvenanceStore` is a changelog consumer sink that turns
  access events and create/write/rename/unlink records into a graph of runs and artifact
  versions (inode + version, never a path).
- The graph is the file system's: the namenode keeps it (:mod:`.service`) and answers
  questions about it with what the caller may see (:mod:`.visible`).
- Questions: :class:`Provenance` (from a :class:`~metafs.client.Client`) asks the namenode
  ``show``/``upstream``/``downstream``/``runs``, as of now or as of a changelog position or
  a time.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any

from ...proto import metafs_pb2 as pb
from .classify import DATASET, KIND_XATTR, MODEL, OTHER, classify
from .query import NOW, AsOf, Graph, ProvenanceQuery
from .runs import RUN_ENV, Run, record_run, run, run_command
from .store import ProvenanceStore, default_url

__all__ = ["AsOf", "DATASET", "Graph", "KIND_XATTR", "MODEL", "OTHER", "Provenance",
           "ProvenanceQuery", "ProvenanceStore", "RUN_ENV", "Run", "classify", "default_url",
           "parse_as_of", "record_run", "run", "run_command"]


def parse_as_of(value: Any) -> AsOf:
    """``None`` -> now; an int or digits -> a changelog position; otherwise an ISO-8601
    time (UTC when no zone is given) or a number of seconds since the epoch with a
    fraction."""
    if value is None or value == "":
        return NOW
    if isinstance(value, AsOf):
        return value
    if isinstance(value, int):
        return AsOf(seq=value)
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return AsOf(ts_ns=int(dt.timestamp() * 1e9))
    s = str(value).strip()
    if s.isdigit():
        return AsOf(seq=int(s))
    if re.fullmatch(r"\d+\.\d*", s):
        return AsOf(ts_ns=int(float(s) * 1e9))
    dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return AsOf(ts_ns=int(dt.timestamp() * 1e9))


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
    """An ``as_of`` for the wire (the namenode parses it as :func:`parse_as_of` does)."""
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
