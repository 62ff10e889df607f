"""Opening search indexes, running indexers, and the ``search()`` entry point.

- :func:`open_index` opens the back end chosen by the settings at
  ``settings.effective_search_dir``.
- :class:`Indexer` is a consumer plus its index: ``Indexer(source, index).start()``.
- :func:`search` is what ``metafs search`` calls: ``Client.search()`` (the namenode's
  Search call), or a read of an index directory in this process (``--index DIR``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ...config import Settings
from ..consumer import Consumer, ConsumerStatus
from ...client.search import DEFAULT_LIMIT, SearchResult
from .base import SearchBackend

log = logging.getLogger("metafs.search")

INDEX_FILE = "index.db"


def open_index(settings: Settings, *, backend: str | None = None, es_client: Any = None,
               path: str | None = None) -> SearchBackend:
    """Open (creating if needed) the search back end the settings name."""
    kind = (backend or settings.search_backend or "embedded").lower()
    d = Path(path or settings.effective_search_dir)
    if kind == "embedded":
        from .embedded import EmbeddedIndex

        return EmbeddedIndex(d / INDEX_FILE)
    if kind in ("elasticsearch", "es"):
        from .elastic import ElasticIndex

        return ElasticIndex(d / "es-state.db", url=settings.es_url, index=settings.es_index,
                            client=es_client)
    raise ValueError(f"unknown search back end {kind!r}: use 'embedded' or 'elasticsearch'")


class Indexer:
    """A search index kept up to date from a changelog by a :class:`Consumer`."""

    def __init__(self, source: Any, index: SearchBackend, *, batch: int = 5000,
                 wait_ms: int = 100, name: str = "search") -> None:
        self.index = index
        self.consumer = Consumer(source, index, name=name, batch=batch, wait_ms=wait_ms)

    def start(self) -> "Indexer":
        self.consumer.start()
        return self

    def stop(self) -> None:
        self.consumer.stop()

    def close(self) -> None:
        self.consumer.close()

    def catch_up(self) -> int:
        return self.consumer.catch_up()

    def rebuild(self) -> int:
        return self.consumer.rebuild()

    def status(self) -> ConsumerStatus:
        return self.consumer.status()

    def wait_for(self, position: int, timeout: float | None = None) -> bool:
        return self.consumer.wait_for(position, timeout)

    def search(self, query: str, **kw: Any) -> SearchResult:
        return self.index.search(query, **kw)


def search(client: Any, query: str, *, limit: int = DEFAULT_LIMIT, offset: int = 0,
           sort: str | None = None, wait: bool = False, count: bool = False,
           timeout: float | None = None, index: SearchBackend | None = None,
           local: bool = False) -> SearchResult:
    """Search the index that follows ``client``'s namenode.

    By default this is :meth:`Client.search() <metafs.client.Client.search>`: the
    namenode's Search call, which leaves out what the caller may not see. With ``index``
    (an open back end) or ``local`` (the index in the client's ``search_dir``, kept by a
    ``metafs indexer``), this process reads that index itself instead.
    With ``wait``, first read the changelog head and wait until the index has applied it:
    every change committed before the call is reflected (read-your-writes).
    """
    if index is None and not local:
        return client.search(query, limit=limit, offset=offset, sort=sort, wait=wait,
                             count=count, timeout=timeout)
    settings: Settings = client.settings
    own = index is None
    if index is None:
        d = Path(settings.effective_search_dir)
        if not (d / INDEX_FILE).exists() and not (d / "es-state.db").exists():
            raise FileNotFoundError(
                f"no search index at {d}: run `metafs indexer` for this namenode (or set "
                "search_dir to where its index lives)")
        index = open_index(settings)
    try:
        waited = None
        if wait:
            head = int(client.changelog_head())
            limit_s = settings.search_wait_timeout if timeout is None else timeout
            if not _poll_position(index, head, limit_s):
                raise TimeoutError(f"the search index did not reach changelog position {head} "
                                   f"within {limit_s:g}s (is the indexer running?)")
            waited = head
        res = index.search(query, limit=limit, offset=offset, sort=sort, count=count)
        res.waited_for = waited
        return res
    finally:
        if own:
            index.close()


def _poll_position(index: SearchBackend, target: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.01
    while index.committed_position() < target:
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    return True
