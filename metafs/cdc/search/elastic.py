"""The Elasticsearch back end.

The indexer's state (documents, directory tree, tags, checkpoint) stays in the local state
file (:class:`~metafs.cdc.search.store.StateStore`); every batch projects the documents it
changed to Elasticsearch *before* the batch's checkpoint commits:

- with ``helpers.bulk``, one ``index`` action per changed inode, carrying the changelog
  position of the last record that changed it as an **external version**: a replay after a
  crash, or a retried request, sends the same version again and gets a 409 that is treated
  as done; an older write arriving late can never overwrite a newer one;
- a removed inode is written as a **tombstone document** (``deleted: true``) at the
  removal's version rather than deleted, so a late update with a lower version is rejected
  forever (a real delete's version is forgotten after ``index.gc_deletes``); inode ids are
  never reused, and queries filter tombstones out;
- items that fail with 429/5xx are retried with backoff; any other item failure, or the
  server being down, fails the batch: the state transaction rolls back and the consumer
  retries the same batch later, so nothing is lost or applied twice.

Tags are a ``nested`` list of ``{k, n | s | b}`` objects, so any number of user keys costs
no mapping fields and a key may hold numbers in one file and strings in another.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Iterator

from . import query as q
from .base import SearchBackend
from .store import DOC_COLS, Batch, StateStore

RETRYABLE = {429, 500, 502, 503, 504}

INT_FIELDS = ("ino", "size", "uid", "gid", "mode", "nlink", "atime", "mtime", "ctime",
              "btime", "parent")


def index_template(index: str) -> dict[str, Any]:
    """The index template installed for ``index``."""
    return {
        "index_patterns": [index],
        "priority": 200,
        "template": {
            "settings": {"number_of_shards": 1, "index.max_terms_count": 1_000_000,
                         "refresh_interval": "1s"},
            "mappings": {
                "dynamic": False,
                "properties": {
                    **{f: {"type": "long"} for f in INT_FIELDS},
                    "parents": {"type": "long"},
                    "name": {"type": "keyword", "fields": {"text": {"type": "text"}}},
                    "names": {"type": "keyword"},
                    "ext": {"type": "keyword"},
                    "type": {"type": "keyword"},
                    "text": {"type": "text"},
                    "deleted": {"type": "boolean"},
                    "tags": {"type": "nested", "properties": {
                        "k": {"type": "keyword"},
                        "n": {"type": "double"},
                        "s": {"type": "keyword", "ignore_above": 8191,
                              "fields": {"text": {"type": "text"}}},
                        "b": {"type": "boolean"},
                    }},
                },
            },
        },
    }


class ElasticIndex(SearchBackend):
    """Search through Elasticsearch, with the indexer's state kept locally."""

    kind = "elasticsearch"

    def __init__(self, path: Any, *, url: str = "http://127.0.0.1:9200",
                 index: str = "metafs-files", client: Any = None, retries: int = 4,
                 backoff: float = 0.2, refresh: str | bool = "wait_for") -> None:
        if client is None:
            from elasticsearch import Elasticsearch

            client = Elasticsearch(url, request_timeout=30, max_retries=0)
        self.es = client
        self.index = index
        self.retries = retries
        self.backoff = backoff
        self.refresh = refresh
        self._ready = False
        super().__init__(path)

    # ------------------------------------------------------------------ setup
    def ensure_index(self) -> None:
        """Install the index template and create the index (idempotent)."""
        if self._ready:
            return
        self.es.indices.put_index_template(name=f"{self.index}-template",
                                           **index_template(self.index))
        if not self.es.indices.exists(index=self.index):
            try:
                self.es.indices.create(index=self.index)
            except Exception as exc:  # created concurrently by another indexer
                if "resource_already_exists" not in str(exc):
                    raise
        self._ready = True

    def _reset_extra(self, c: sqlite3.Connection) -> None:
        """A rebuild starts the Elasticsearch index over too: documents of the old history
        carry versions (changelog positions) the new one may never reach again (a namespace
        restored from a backup starts its changelog lower), and would refuse its updates
        as conflicts. Runs inside the state's reset transaction: if the delete fails, the
        reset rolls back."""
        try:
            self.es.indices.delete(index=self.index)
        except Exception as exc:
            if "index_not_found" not in str(exc) and "404" not in str(exc):
                raise
        self._ready = False

    # ------------------------------------------------------------------ projection
    def _es_doc(self, c: sqlite3.Connection, ino: int) -> dict[str, Any] | None:
        d = self.doc_rows(c, [ino]).get(ino)
        if d is None:
            return None
        links = d.pop("links")
        tags = []
        for row in c.execute("SELECT key, kind, num, str FROM tags WHERE ino=? "
                             "ORDER BY xattr, seq", (ino,)):
            key, kind, num, s = row
            t: dict[str, Any] = {"k": key}
            if kind == "n":
                t["n"] = num
            elif kind == "b":
                t["b"] = bool(num)
            elif kind in ("s", "t"):
                t["s"] = s
            tags.append(t)
        texts = [t["s"] for t in tags if "s" in t]
        d.pop("tags", None)
        d.update(tags=tags, text=texts, parents=sorted({p for p, _ in links}),
                 names=[n for _, n in links], deleted=False)
        return d

    def _actions(self, c: sqlite3.Connection, b: Batch) -> Iterator[dict[str, Any]]:
        for ino in sorted(b.changed):
            doc = self._es_doc(c, ino)
            yield {"_op_type": "index", "_index": self.index, "_id": str(ino),
                   "version": b.changed[ino], "version_type": "external",
                   "_source": doc if doc is not None else {"ino": ino, "deleted": True}}

    def _project(self, c: sqlite3.Connection, b: Batch) -> None:
        if not b.changed:
            return
        from elasticsearch import helpers

        self.ensure_index()
        actions = list(self._actions(c, b))
        for attempt in range(self.retries + 1):
            _, errors = helpers.bulk(self.es, actions, raise_on_error=False,
                                     raise_on_exception=True, refresh=self.refresh,
                                     max_retries=0)
            retry_ids: set[str] = set()
            for item in errors:
                info = next(iter(item.values()))
                status = int(info.get("status", 0))
                if status == 409:
                    continue  # this version (or a newer one) is already there
                if status in RETRYABLE:
                    retry_ids.add(str(info.get("_id")))
                    continue
                raise RuntimeError(f"Elasticsearch rejected document {info.get('_id')}: "
                                   f"{status} {info.get('error')}")
            if not retry_ids:
                return
            actions = [a for a in actions if a["_id"] in retry_ids]
            if attempt < self.retries:
                time.sleep(self.backoff * (2 ** attempt))
        raise RuntimeError(f"Elasticsearch kept failing {len(actions)} document(s) "
                           f"after {self.retries + 1} attempts")

    # ------------------------------------------------------------------ queries
    def _find(self, c: sqlite3.Connection, node: q.Node, order: list[tuple[str, bool]],
              limit: int, offset: int, count: bool) -> tuple[list[int], int | None]:
        self.ensure_index()
        body_q = {"bool": {"filter": [self.compile(c, node)],
                           "must_not": [{"term": {"deleted": True}}]}}
        sort = [{f: {"order": "desc" if desc else "asc"}} for f, desc in order]
        sort.append({"ino": {"order": "asc"}})
        resp = self.es.search(index=self.index, query=body_q, sort=sort, from_=offset,
                              size=limit, track_total_hits=True if count else False,
                              source=False)
        hits = resp["hits"]["hits"]
        total = resp["hits"]["total"]["value"] if count else None
        return [int(h["_id"]) for h in hits], total

    def compile(self, c: sqlite3.Connection, n: q.Node) -> dict[str, Any]:
        """The Elasticsearch query for a query tree."""
        if isinstance(n, q.All):
            return {"match_all": {}}
        if isinstance(n, q.And):
            return {"bool": {"filter": [self.compile(c, x) for x in n.items]}}
        if isinstance(n, q.Or):
            return {"bool": {"should": [self.compile(c, x) for x in n.items],
                             "minimum_should_match": 1}}
        if isinstance(n, q.Not):
            return {"bool": {"must_not": [self.compile(c, n.item)]}}
        if isinstance(n, q.Text):
            kind = "phrase_prefix" if n.prefix else "phrase"
            fields = ["name.text"] if n.field == "name" else ["name.text", "text"]
            return {"multi_match": {"query": n.text, "type": kind, "fields": fields}}
        if isinstance(n, q.Glob):
            return {"wildcard": {"name": {"value": n.pattern}}}
        if isinstance(n, q.Field):
            return _cmp(n.name, n.op, n.value)
        if isinstance(n, q.Exists):
            return {"nested": {"path": "tags", "query": _exists_key(n.key)}}
        if isinstance(n, q.Tag):
            v = n.value
            if isinstance(v, bool):
                inner = {"term": {"tags.b": v}}
            elif isinstance(v, float):
                inner = _cmp("tags.n", n.op, v)
            elif n.glob:
                inner = {"wildcard": {"tags.s": {"value": v}}}
            else:
                inner = _cmp("tags.s", n.op, v)
            return {"nested": {"path": "tags", "query": {"bool": {"filter": [
                _named_key(n.key), inner]}}}}
        if isinstance(n, q.Under):
            dirs = self.under_dirs(c, n.path)
            if dirs is None:
                return {"match_all": {}}
            if not dirs:
                return {"match_none": {}}
            return {"terms": {"parents": dirs}}
        raise q.QueryError(f"cannot compile {type(n).__name__}")


def _wildcard_literal(text: str) -> str:
    """``text`` with Elasticsearch's wildcard characters escaped."""
    return "".join("\\" + ch if ch in "\\*?" else ch for ch in text)


def _any_of(*clauses: dict[str, Any]) -> dict[str, Any]:
    return {"bool": {"should": list(clauses), "minimum_should_match": 1}}


def _named_key(key: str) -> dict[str, Any]:
    """The tag keys ``key`` names (:func:`~metafs.cdc.search.query.key_matches`): itself,
    or any key ending in ``.key`` (``bicycles`` names ``tags.bicycles``)."""
    return _any_of({"term": {"tags.k": key}},
                   {"wildcard": {"tags.k": {"value": "*." + _wildcard_literal(key)}}})


def _exists_key(key: str) -> dict[str, Any]:
    """The tag keys ``exists:key`` finds (:func:`~metafs.cdc.search.query.key_scopes`):
    the ones ``key`` names, and the ones nested under those."""
    lit = _wildcard_literal(key)
    return _any_of({"term": {"tags.k": key}}, {"prefix": {"tags.k": key + "."}},
                   {"wildcard": {"tags.k": {"value": "*." + lit}}},
                   {"wildcard": {"tags.k": {"value": "*." + lit + ".*"}}})


def _cmp(field: str, op: str, v: Any) -> dict[str, Any]:
    if op == "=":
        return {"term": {field: v}}
    if op == "!=":
        return {"bool": {"must_not": [{"term": {field: v}}]}}
    rng = {"<": "lt", "<=": "lte", ">": "gt", ">=": "gte"}[op]
    return {"range": {field: {rng: v}}}


__all__ = ["ElasticIndex", "index_template", "DOC_COLS", "StateStore"]
