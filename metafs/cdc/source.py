"""Where consumers read the changelog from.

A consumer only needs :class:`ChangelogSource`: ``read(after, limit, wait_ms)`` returns the
records with ``seq > after`` (at most ``limit``, waiting up to ``wait_ms`` for the first
one) and the changelog head as of the read. Positions are dense and become visible as a
prefix (metafs/namenode/changelog.py), so a consumer that checkpoints the last position it
handled and resumes after it never skips or repeats a record. Two adapters are provided: one over an
in-process :class:`~metafs.namenode.namespace.Namespace` (the embedded default, where the
indexer runs in the namenode's process) and one over a client transport (a remote
namenode, through the ``ReadChangelog`` RPC).
"""

from __future__ import annotations

import time
from typing import Any, Protocol, Sequence, runtime_checkable

from ..proto import metafs_pb2 as pb


@runtime_checkable
class ChangelogSource(Protocol):
    """Anything a consumer can read the changelog from."""

    def read(self, after: int, limit: int, wait_ms: int = 0
             ) -> tuple[Sequence[pb.ChangeRecord], int]:
        """Records with ``seq > after`` in order, and the head at the time of the read."""
        ...

    def head(self) -> int:
        """The highest committed changelog position."""
        ...


class NamespaceSource:
    """Reads the changelog of a :class:`Namespace` in this process."""

    def __init__(self, ns: Any, *, poll: float | None = None) -> None:
        self.ns = ns
        self.poll = poll if poll is not None else getattr(ns.settings, "changelog_poll", 0.05)

    def read(self, after: int, limit: int, wait_ms: int = 0
             ) -> tuple[Sequence[pb.ChangeRecord], int]:
        recs, head = self.ns.changelog_read(after, limit, urgent=not wait_ms)
        if recs or not wait_ms:
            return recs, head
        deadline = time.monotonic() + wait_ms / 1000
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return recs, head
            # The notifier wakes us when this process gives records their positions (at
            # commit on SQLite, in a stamping round on PostgreSQL); polling covers
            # positions given by other namenodes on the same database.
            self.ns.notifier.wait(after, min(self.poll, left))
            recs, head = self.ns.changelog_read(after, limit, settle=False)
            if recs:
                return recs, head

    def head(self) -> int:
        return int(self.ns.changelog_head())


class TransportSource:
    """Reads the changelog through a client transport (``ReadChangelog`` RPC)."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport

    def read(self, after: int, limit: int, wait_ms: int = 0
             ) -> tuple[Sequence[pb.ChangeRecord], int]:
        reply = self.transport.call("ReadChangelog", pb.ReadChangelogRequest(
            after=after, limit=limit, wait_ms=wait_ms))
        return list(reply.records), int(reply.head)

    def head(self) -> int:
        return int(self.transport.call("ChangelogHead", pb.HeadRequest()).head)


class ClientSource:
    """Reads the changelog through a :class:`metafs.client.Client` (its caller identity
    travels with each request)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def read(self, after: int, limit: int, wait_ms: int = 0
             ) -> tuple[Sequence[pb.ChangeRecord], int]:
        recs, head = self.client.changelog(after, limit, wait_ms)
        return recs, int(head)

    def head(self) -> int:
        return int(self.client.changelog_head())


def source_for(obj: Any) -> ChangelogSource:
    """Adapt a Namespace, a Client (anything with ``.transport``), a transport, or an
    existing source."""
    if hasattr(obj, "changelog_read") and hasattr(obj, "notifier"):
        return NamespaceSource(obj)
    if isinstance(obj, (NamespaceSource, TransportSource, ClientSource)):
        return obj
    embedded = getattr(obj, "embedded", None)
    if embedded is not None and hasattr(embedded, "ns"):
        return NamespaceSource(embedded.ns)  # an embedded client: read in-process
    if hasattr(obj, "changelog") and hasattr(obj, "changelog_head"):
        return ClientSource(obj)
    if hasattr(obj, "transport") and hasattr(obj.transport, "call"):
        return TransportSource(obj.transport)
    if hasattr(obj, "call"):
        return TransportSource(obj)
    if hasattr(obj, "read") and hasattr(obj, "head"):
        return obj  # type: ignore[no-any-return]
    raise TypeError(f"cannot read a changelog from {type(obj).__name__}")
