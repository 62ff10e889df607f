"""Provenance: which runs read which data sets and wrote which models.

- Explicit runs: :func:`run` (``with metafs.run("train", params={...}):``) and
  ``metafs run -- CMD`` (:func:`run_command`).
- Implicit inference: :class:`ProvenanceStore` is a changelog consumer sink that turns
  access events and create/write/rename/unlink records into a graph of runs and artifact
  versions (inode + version, never a path).
- The graph is the file system's: the namenode keeps it (:mod:`.service`) and answers
  questions about it with what the caller may see (:mod:`.visible`).
- Questions: :class:`~metafs.client.provenance.Provenance` (``Client.provenance()``) asks
  the namenode ``show``/``upstream``/``downstream``/``runs``, as of now or as of a changelog
  position or a time; it is the client's, re-exported here.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

from ...client.provenance import Provenance
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
