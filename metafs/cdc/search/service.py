"""The namenode's Search call: queries answered where the index is, for every client.

A namenode answers ``Search`` from the index in its ``search_dir``: the one its own
in-process indexer keeps (``metafs serve`` runs one by default over a local SQLite
database, see :func:`serve_index_default`; ``--index`` asks for it elsewhere), or one kept
by a ``metafs indexer`` on the same host or a shared volume. Hits in directories the caller
may not search (no ``x`` permission on the directory or on one above it) are left out
before anything is counted: a caller other than root pages and counts only what it may see
(``hidden`` stays 0), so a shared index never shows a user names, or numbers of names, the
namespace would not.
"""

from __future__ import annotations

import errno
import json
import logging
import threading
from pathlib import Path
from typing import Any

from ...errors import FsError
from ...proto import metafs_pb2 as pb
from .api import INDEX_FILE, Indexer, _poll_position, open_index
from ...client.search import DEFAULT_LIMIT, MAX_LIMIT, QueryError
from .base import SearchBackend

log = logging.getLogger("metafs.search")


class SearchService:
    """What ``Handlers.Search`` calls. The index is opened on the first search."""

    def __init__(self, namenode: Any, *, index_on_first_search: bool = False) -> None:
        # the namespace, not the namenode: the namenode's handlers hold this service, and
        # a reference back would keep every closed namenode alive until a GC pass
        self.ns = namenode.ns
        self.settings = namenode.settings
        self.indexer: Indexer | None = None
        self.index_on_first_search = index_on_first_search
        self._index: SearchBackend | None = None
        self._lock = threading.Lock()

    def start_indexer(self) -> Indexer:
        """Run the indexer in this process, following this namenode's changelog."""
        from ..source import source_for

        with self._lock:
            if self.indexer is None:
                s = self.settings
                self.indexer = Indexer(source_for(self.ns), open_index(s),
                                       batch=s.search_batch).start()
                log.info("search indexer running in the namenode (index in %s)",
                         s.effective_search_dir)
            return self.indexer

    def index(self) -> SearchBackend:
        if self.indexer is None and self.index_on_first_search:
            self.start_indexer()
        if self.indexer is not None:
            return self.indexer.index
        with self._lock:
            if self._index is None:
                d = Path(self.settings.effective_search_dir)
                if not (d / INDEX_FILE).exists() and not (d / "es-state.db").exists():
                    raise FsError(errno.EOPNOTSUPP,
                                  f"this namenode has no search index (none in {d}): start it "
                                  "with `metafs serve --index`, or point --search-dir at the "
                                  "index of a `metafs indexer`")
                self._index = open_index(self.settings)
            return self._index

    def _wait(self, index: SearchBackend, head: int, timeout: float) -> None:
        ok = (self.indexer.wait_for(head, timeout) if self.indexer is not None
              else _poll_position(index, head, timeout))
        if not ok:
            raise FsError(errno.ETIMEDOUT, f"the search index did not reach changelog position "
                          f"{head} within {timeout:g}s (is the indexer running?)")

    def __call__(self, cred: Any, req: pb.SearchRequest) -> pb.SearchReply:
        index = self.index()
        waited = 0
        if req.wait:
            head = self.ns.changelog_head()
            timeout = req.timeout_ms / 1000 if req.timeout_ms else self.settings.search_wait_timeout
            self._wait(index, head, timeout)
            waited = head
        limit = req.limit or DEFAULT_LIMIT
        try:
            if cred.is_root:
                res = index.search(req.query, limit=limit, offset=req.offset,
                                   sort=req.sort or None, count=req.count)
                hits, total, position, took = res.hits, res.total, res.position, res.took_ms
                next_offset = req.offset + len(hits)
            else:
                hits, position, took = self._visible_page(cred, index, req, limit)
                next_offset = req.offset + len(hits)
                total = self._count_visible(cred, index, req.query) if req.count else None
        except QueryError as exc:
            raise FsError(errno.EINVAL, f"bad query: {exc}") from None
        return pb.SearchReply(
            hits=[pb.SearchHit(ino=int(h["ino"]), path=h.get("path") or "",
                               doc_json=json.dumps(h, default=str)) for h in hits],
            position=position, total=-1 if total is None else total,
            took_ms=took, waited_for=waited, hidden=0, next_offset=next_offset)

    def _visible_page(self, cred: Any, index: SearchBackend, req: pb.SearchRequest,
                      limit: int) -> tuple[list[dict[str, Any]], int, float]:
        """One page of the hits ``cred`` may see, with offsets counted in visible hits:
        the page's length, its next offset and the count tell nothing of hidden files.
        Walks the index's matches from the start (the cost grows with the offset)."""
        step = min(max(limit + req.offset, DEFAULT_LIMIT), MAX_LIMIT)
        skip, off, took, position = req.offset, 0, 0.0, None
        out: list[dict[str, Any]] = []
        while len(out) < limit:
            res = index.search(req.query, limit=step, offset=off, sort=req.sort or None)
            took += res.took_ms
            position = res.position if position is None else position
            seen = self._visible(cred, res.hits)
            drop = min(skip, len(seen))
            skip -= drop
            out.extend(seen[drop:])
            if len(res.hits) < step:
                break
            off += step
        return out[:limit], position or 0, took

    def _visible(self, cred: Any, hits: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The hits with a name in a directory ``cred`` may search, each with only the
        names it may see (a file's other hard links may sit in hidden directories), and
        each name as the caller reaches it: a file of a data set shared into the caller's
        project by the share's entry in that project, not by the owning project's path."""
        if not hits:
            return hits
        seen = self.ns.visible_paths(cred, [p for h in hits for p in h.get("paths") or ()])
        out = []
        for h in hits:
            paths = list(dict.fromkeys(seen[p] for p in h.get("paths") or () if p in seen))
            if paths:
                path = seen.get(h.get("path") or "")
                out.append({**h, "path": path if path is not None else paths[0],
                            "paths": paths})
        return out

    def _count_visible(self, cred: Any, index: SearchBackend, query: str) -> int:
        """Every match ``cred`` may see (a count must not tell of hidden files either):
        walks all matches, page by page, checking each distinct path once."""
        seen_ok: dict[str, bool] = {}
        n = offset = 0
        while True:
            page = index.search(query, limit=MAX_LIMIT, offset=offset, sort="ino").hits
            new = {p for h in page for p in h.get("paths") or ()} - set(seen_ok)
            if new:
                ok = self.ns.visible_paths(cred, new)
                seen_ok.update((p, p in ok) for p in new)
            n += sum(1 for h in page if any(seen_ok.get(p) for p in h.get("paths") or ()))
            if len(page) < MAX_LIMIT:
                return n
            offset += MAX_LIMIT

    def close(self) -> None:
        with self._lock:
            if self.indexer is not None:
                self.indexer.close()
                self.indexer = None
            if self._index is not None:
                self._index.close()
                self._index = None


def serve_index_default(settings: Any) -> bool:
    """Whether ``metafs serve`` runs the search indexer when neither ``--index`` nor
    ``--no-index`` is given: when ``serve_index`` is configured, or when the namenode keeps
    its metadata in a SQLite file (a single namenode with a local data directory, so no
    other process would index it) and the index is the embedded one (Elasticsearch, a
    server of its own, is opted into with ``--index``)."""
    if settings.serve_index:
        return True
    return (settings.effective_db_url.startswith("sqlite:")
            and settings.search_backend == "embedded")


def attach(namenode: Any, *, embedded: bool = False) -> SearchService:
    """Give ``namenode`` its Search call (and its indexer, with ``serve_index``; an
    ``embedded`` namenode starts it with its first search, with ``search_in_process``)."""
    svc = SearchService(namenode, index_on_first_search=embedded
                        and namenode.settings.search_in_process)
    namenode.handlers.search = svc
    if namenode.settings.serve_index:
        svc.start_indexer()
    return svc
