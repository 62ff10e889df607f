"""Provenance: which runs read which data sets and wrote which models.

- Explicit runs: :func:`run` (``with metafs.run("train", params={...}):``) and
  ``metafs run -- CMD`` (:func:`run_command`).
- Implicit inference: :class:`ProvenanceStore` is a changelog consumer sink that turns
  access events and create/write/rename/unlink records into a graph of runs and artifact
  versions (inode + version, never a path).
- Questions: :class:`Provenance` (from a :class:`~metafs.client.Client`) catches the graph
  up with the changelog and answers ``show``/``upstream``/``downstream``/``runs``, as of now
  or as of a changelog position or a time.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

from ..consumer import Consumer
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
    """Provenance questions through a client. The graph is brought up to date with the
    changelog (its own checkpoint) before each answer, unless ``sync=False``."""

    def __init__(self, client: Any, store: ProvenanceStore | None = None, *,
                 sync: bool = True) -> None:
        self.client = client
        self.store = store or ProvenanceStore.for_settings(client.settings)
        self._owns_store = store is None
        self.consumer = Consumer(client, self.store, name="provenance")
        self.query = ProvenanceQuery(self.store)
        self.auto_sync = sync

    def close(self) -> None:
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> "Provenance":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def sync(self) -> int:
        """Apply the changelog up to its current head (flushing this client's own access
        events first). Returns the number of records applied."""
        self.client.access_recorder.flush()
        return self.consumer.catch_up()

    def _maybe_sync(self) -> None:
        if self.auto_sync:
            self.sync()

    def artifact(self, path: str) -> int:
        """The inode the graph records ``path`` under: its data-set directory when it lies
        in one, else its own. Falls back to names the graph has seen (deleted files)."""
        try:
            ino = int(self.client.ino(path))
        except FileNotFoundError:
            found = self.query.ino_for_path(path)
            if found is None:
                raise
            ino = found
        return self.query.artifact_of(ino)

    def _starts(self, path: str, version: int | None, asof: AsOf, latest: bool) -> list[int]:
        vers = self.query.versions(self.artifact(path), asof)
        if not vers:
            return []
        if version is not None:
            pick = [v for v in vers if v["version"] == version]
            if not pick:
                raise ValueError(f"{path} has no version {version} (it has {len(vers)})")
            return [pick[0]["id"]]
        return [vers[-1]["id"]] if latest else [v["id"] for v in vers]

    def show(self, path: str, as_of: Any = None) -> dict[str, Any]:
        self._maybe_sync()
        return self.query.show(self.artifact(path), parse_as_of(as_of))

    def upstream(self, path: str, depth: int | None = None, as_of: Any = None,
                 version: int | None = None, all_versions: bool = False) -> Graph:
        """What went into ``path`` (its latest version unless ``version``/``all_versions``)."""
        self._maybe_sync()
        asof = parse_as_of(as_of)
        return self.query.upstream(self._starts(path, version, asof, not all_versions),
                                   depth, asof)

    def downstream(self, path: str, depth: int | None = None, as_of: Any = None,
                   version: int | None = None, all_versions: bool = True) -> Graph:
        """What ``path`` fed (all its versions unless ``version`` is given)."""
        self._maybe_sync()
        asof = parse_as_of(as_of)
        return self.query.downstream(self._starts(path, version, asof, not all_versions),
                                     depth, asof)

    def runs(self, path: str | None = None, as_of: Any = None, limit: int = 1000
             ) -> list[dict[str, Any]]:
        self._maybe_sync()
        asof = parse_as_of(as_of)
        return self.query.runs(self.artifact(path) if path else None, asof, limit)


def upstream(client: Any, path: str, **kw: Any) -> Graph:
    """One-shot :meth:`Provenance.upstream` for a client."""
    with Provenance(client) as p:
        return p.upstream(path, **kw)


def downstream(client: Any, path: str, **kw: Any) -> Graph:
    """One-shot :meth:`Provenance.downstream` for a client."""
    with Provenance(client) as p:
        return p.downstream(path, **kw)
