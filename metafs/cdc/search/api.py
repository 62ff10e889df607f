"""Opening search indexes, running indexers, and the ``search()`` entry point.

- :func:`open_index` opens the back end chosen by the settings at
  ``settings.effective_search_dir``.
- :class:`Indexer` is a consumer plus its index: ``Indexer(source, index).start()``.
- :func:`indexer_for_client` gives the process-wide indexer of an embedded client (the
  indexer runs inside the namenode's process for the embedded default).
- :func:`search` is what ``Client.search()`` and ``metafs search`` call.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from ...config import Settings
from ..consumer import Consumer, ConsumerStatus
from ..source import source_for
from .base import DEFAULT_LIMIT, SearchBackend, SearchResult

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


_registry_lock = threading.Lock()
_registry: dict[int, Indexer] = {}


def indexer_for_client(client: Any, *, start: bool = True) -> Indexer | None:
    """The in-process indexer of an embedded client's namenode (one per namenode), or None
    for a client of a remote namenode."""
    nn = getattr(client, "embedded", None)
    if nn is None or not getattr(client.settings, "search_in_process", True):
        return None
    served = getattr(getattr(nn, "handlers", None), "search", None)
    if getattr(served, "indexer", None) is not None:
        return served.indexer  # the namenode runs one already (serve_index)
    key = id(nn)
    with _registry_lock:
        ix = _registry.get(key)
        if ix is None:
            settings = client.settings
            ix = Indexer(source_for(nn.ns), open_index(settings), batch=settings.search_batch)
            _registry[key] = ix
            exts = getattr(nn, "extensions", None)
            if isinstance(exts, list):
                exts.append(ix)
            if start:
                ix.start()
        return ix


def attach(namenode: Any) -> Indexer:
    """Run the search indexer inside ``namenode``'s process (embedded default)."""
    key = id(namenode)
    with _registry_lock:
        ix = _registry.get(key)
        if ix is None:
            s = namenode.settings
            ix = Indexer(source_for(namenode.ns), open_index(s), batch=s.search_batch).start()
            _registry[key] = ix
        return ix


def release(namenode_or_client: Any) -> None:
    """Stop and forget the in-process indexer of a namenode (or an embedded client's)."""
    nn = getattr(namenode_or_client, "embedded", None) or namenode_or_client
    with _registry_lock:
        ix = _registry.pop(id(nn), None)
    if ix is not None:
        ix.close()


def search(client: Any, query: str, *, limit: int = DEFAULT_LIMIT, offset: int = 0,
           sort: str | None = None, wait: bool = False, count: bool = False,
           timeout: float | None = None, index: SearchBackend | None = None,
           local: bool = False) -> SearchResult:
    """Search the index that follows ``client``'s namenode.

    An embedded client searches its namenode's index in-process. A client of a remote
    namenode asks the namenode (its Search call, which leaves out what the caller may not
    see), unless ``local`` is set: then it reads the index in ``search_dir`` itself.
    With ``wait``, first read the changelog head and wait until the index has applied it:
    every change committed before the call is reflected (read-your-writes).
    """
    settings: Settings = client.settings
    ix = indexer_for_client(client) if index is None else None
    own = False
    if index is None:
        if ix is not None:
            index = ix.index
        elif getattr(client, "embedded", None) is None and not local:
            return _remote_search(client, query, limit=limit, offset=offset, sort=sort,
                                  wait=wait, count=count, timeout=timeout)
        else:
            d = Path(settings.effective_search_dir)
            if not (d / INDEX_FILE).exists() and not (d / "es-state.db").exists():
                raise FileNotFoundError(
                    f"no search index at {d}: run `metafs indexer` for this namenode (or set "
                    "search_dir to where its index lives)")
            index = open_index(settings)
            own = True
    try:
        waited = None
        if wait:
            head = int(client.changelog_head())
            limit_s = settings.search_wait_timeout if timeout is None else timeout
            ok = (ix.wait_for(head, limit_s) if ix is not None
                  else _poll_position(index, head, limit_s))
            if not ok:
                raise TimeoutError(f"the search index did not reach changelog position {head} "
                                   f"within {limit_s:g}s (is the indexer running?)")
            waited = head
        res = index.search(query, limit=limit, offset=offset, sort=sort, count=count)
        res.waited_for = waited
        return res
    finally:
        if own:
            index.close()


def _remote_search(client: Any, query: str, *, limit: int, offset: int, sort: str | None,
                   wait: bool, count: bool, timeout: float | None) -> SearchResult:
    """Ask the namenode (its Search call), which answers from the index it has and leaves
    out what this caller may not see."""
    import errno
    import json

    from ...errors import FsError
    from ...proto import metafs_pb2 as pb
    from .base import check_paging
    from .query import QueryError

    check_paging(limit, offset)
    req = pb.SearchRequest(caller=client.caller, query=query, limit=limit, offset=offset,
                           sort=sort or "", count=count, wait=wait,
                           timeout_ms=int((timeout or 0) * 1000))
    try:
        rep = client.transport.call("Search", req)
    except FsError as err:
        if err.errno == errno.EINVAL and err.message.startswith("bad query: "):
            raise QueryError(err.message[len("bad query: "):]) from None
        if err.errno == errno.ETIMEDOUT:
            raise TimeoutError(err.message) from None
        raise err.to_oserror() from None
    res = SearchResult(query=query, hits=[json.loads(h.doc_json) for h in rep.hits],
                       position=rep.position, total=None if rep.total < 0 else rep.total,
                       limit=limit, offset=offset, took_ms=rep.took_ms,
                       waited_for=rep.waited_for if wait else None)
    res.extra.update(hidden=rep.hidden, next_offset=rep.next_offset)
    return res


def _poll_position(index: SearchBackend, target: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.01
    while index.committed_position() < target:
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    return True
