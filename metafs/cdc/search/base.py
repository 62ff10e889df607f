"""The search back-end contract and its results.

A back end is a consumer :class:`~metafs.cdc.consumer.Sink` (it applies change records and
keeps its checkpoint) that can also answer queries. Every back end keeps the indexer's own
state in a :class:`~metafs.cdc.search.store.StateStore` (documents, directory tree, tags);
the embedded back end answers from it directly, the Elasticsearch one projects documents
to an index and answers there. Both resolve ``under:`` and result paths through the
state's directory table, and both pass one shared test suite.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from ...client.search import DEFAULT_LIMIT, MAX_LIMIT, SearchResult, check_paging
from . import query as q
from .store import ROOT_INO, StateStore

class SearchBackend(StateStore):
    """A searchable sink. Subclasses implement :meth:`_find`."""

    kind = "abstract"

    def search(self, query: str | q.Node, *, limit: int = DEFAULT_LIMIT, offset: int = 0,
               sort: str | None = None, count: bool = False) -> SearchResult:
        """Run ``query`` (a string in the query language, or a parsed tree)."""
        t0 = time.perf_counter()
        node = q.parse(query) if isinstance(query, str) else query
        order = q.parse_sort(sort)
        check_paging(limit, offset)
        c = self.reader()
        position = self.committed_position(c)
        inos, total = self._find(c, node, order, limit, offset, count)
        hits = self.hits(c, inos)
        return SearchResult(query=query if isinstance(query, str) else repr(query), hits=hits,
                            position=position, total=total, limit=limit, offset=offset,
                            took_ms=(time.perf_counter() - t0) * 1000)

    def _find(self, c: sqlite3.Connection, node: q.Node, order: list[tuple[str, bool]],
              limit: int, offset: int, count: bool) -> tuple[list[int], int | None]:
        raise NotImplementedError

    def committed_position(self, c: sqlite3.Connection | None = None) -> int:
        """The checkpoint as committed in the state file (also by other processes)."""
        c = c or self.reader()
        return int(c.execute("SELECT value FROM meta WHERE key='position'").fetchone()[0])

    def hits(self, c: sqlite3.Connection, inos: list[int]) -> list[dict[str, Any]]:
        """Documents for ``inos`` in that order, with their paths resolved."""
        docs = self.doc_rows(c, inos)
        pcache: dict[int, str] = {}
        acache: dict[int, list[int]] = {}
        out = []
        for ino in inos:
            d = docs.get(ino)
            if d is None:
                continue  # removed between the match and the fetch
            paths = []
            for parent, name in d.pop("links"):
                base = self.dir_path(c, parent, pcache)
                if base is not None:
                    paths.append(base.rstrip("/") + "/" + name)
            d["path"] = paths[0] if paths else None
            d["paths"] = paths
            d["ancestors"] = self.ancestors(c, d["parent"], acache)
            out.append(d)
        return out

    def under_dirs(self, c: sqlite3.Connection, path: str) -> list[int] | None:
        """Every directory id at or below ``path`` (None: the whole tree; [] none)."""
        ino = self.lookup_dir(c, path)
        if ino is None:
            return []
        if ino == ROOT_INO:
            return None
        return self.subtree_dirs(c, ino)

    def stats(self) -> dict[str, Any]:
        c = self.reader()
        return {
            "backend": self.kind,
            "path": str(self.path),
            "position": self.committed_position(c),
            "documents": int(c.execute("SELECT count(*) FROM docs").fetchone()[0]),
            "directories": int(c.execute("SELECT count(*) FROM dirs").fetchone()[0]),
            "tags": int(c.execute("SELECT count(*) FROM tags").fetchone()[0]),
        }
