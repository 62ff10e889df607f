"""The embedded back end: SQLite with FTS5 and a typed tag table, no server.

Queries compile to one SQL statement over ``docs`` (see :mod:`metafs.cdc.search.store`):
built-in fields are columns with their own indexes, tag comparisons are semi-joins on the
``tags`` table's ``(key, kind, num|str, ino)`` covering indexes, free text goes through
FTS5, and ``under:`` is a recursive walk of the directory table joined on ``docs.parent``.
Why SQLite rather than tantivy: docs/search.md has the measurement.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

from . import query as q
from .base import SearchBackend
from .tags import BOOL, NUM, STR, TEXT

_SQL_OPS = {"=": "=", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
_COLS = {"name", "ext", "type", "size", "uid", "gid", "ino", "nlink", "parent",
         "atime", "mtime", "ctime", "btime"}
_WORD = re.compile(r"\w", re.UNICODE)


def fts_phrase(text: str, prefix: bool = False) -> str:
    """An FTS5 phrase for ``text`` (quoted, so no word is read as an operator)."""
    if not _WORD.search(text):
        raise q.QueryError(f"{text!r} has no letters or digits to search for")
    return '"' + text.replace('"', '""') + '"' + ("*" if prefix else "")


def _key_range(key: str) -> tuple[str, str]:
    """Keys strictly inside ``key.``: key + '.' <= k < key + '/'."""
    return key + ".", key + "/"


class Compiler:
    """Turns a query tree into a WHERE clause over ``docs d`` with parameters."""

    def __init__(self, backend: "EmbeddedIndex", c: sqlite3.Connection) -> None:
        self.backend = backend
        self.c = c
        self.params: list[Any] = []

    def compile(self, n: q.Node) -> str:
        if isinstance(n, q.All):
            return "1"
        if isinstance(n, q.And):
            return "(" + " AND ".join(self.compile(x) for x in n.items) + ")"
        if isinstance(n, q.Or):
            return "(" + " OR ".join(self.compile(x) for x in n.items) + ")"
        if isinstance(n, q.Not):
            return "NOT " + self.compile(n.item)
        if isinstance(n, q.Text):
            phrase = fts_phrase(n.text, n.prefix)
            self.params.append(f"name : {phrase}" if n.field == "name" else phrase)
            return "d.ino IN (SELECT rowid FROM fts WHERE fts MATCH ?)"
        if isinstance(n, q.Glob):
            self.params.append(n.pattern)
            return "d.name GLOB ?"
        if isinstance(n, q.Field):
            if n.name not in _COLS:
                raise q.QueryError(f"unknown field {n.name!r}")
            self.params.append(n.value)
            return f"d.{n.name} {_SQL_OPS[n.op]} ?"
        if isinstance(n, q.Exists):
            lo, hi = _key_range(n.key)
            self.params += [n.key, lo, hi]
            return ("d.ino IN (SELECT ino FROM tags WHERE key = ? OR (key >= ? AND key < ?))")
        if isinstance(n, q.Tag):
            return self.tag(n)
        if isinstance(n, q.Under):
            dirs = self.backend.under_dirs(self.c, n.path)
            if dirs is None:
                return "1"
            if not dirs:
                return "0"
            self.params.append(dirs[0])
            sub = ("WITH RECURSIVE sub(id) AS (SELECT ? UNION ALL SELECT dd.ino FROM dirs dd "
                   "JOIN sub ON dd.parent = sub.id) SELECT id FROM sub")
            self.params.append(dirs[0])
            return (f"(d.parent IN ({sub}) OR d.ino IN (SELECT ino FROM xlinks WHERE parent IN "
                    f"({sub})))")
        raise q.QueryError(f"cannot compile {type(n).__name__}")

    def tag(self, n: q.Tag) -> str:
        op = _SQL_OPS[n.op]
        v = n.value
        if isinstance(v, bool):
            self.params += [n.key, BOOL, 1.0 if v else 0.0]
            return "d.ino IN (SELECT ino FROM tags WHERE key = ? AND kind = ? AND num = ?)"
        if isinstance(v, float):
            self.params += [n.key, NUM, v]
            return f"d.ino IN (SELECT ino FROM tags WHERE key = ? AND kind = ? AND num {op} ?)"
        if n.glob:
            self.params += [n.key, STR, n.key, TEXT, v]
            return ("d.ino IN (SELECT ino FROM tags WHERE ((key = ? AND kind = ?) OR "
                    "(key = ? AND kind = ?)) AND str GLOB ?)")
        self.params += [n.key, STR, v, n.key, TEXT, v]
        return (f"d.ino IN (SELECT ino FROM tags WHERE (key = ? AND kind = ? AND str {op} ?) "
                f"OR (key = ? AND kind = ? AND str {op} ?))")


class EmbeddedIndex(SearchBackend):
    """The default back end: everything in one SQLite file next to the namenode's data."""

    kind = "embedded"

    def _find(self, c: sqlite3.Connection, node: q.Node, order: list[tuple[str, bool]],
              limit: int, offset: int, count: bool) -> tuple[list[int], int | None]:
        comp = Compiler(self, c)
        where = comp.compile(node)
        params = comp.params
        order_sql = ", ".join(f"d.{f} {'DESC' if desc else 'ASC'}" for f, desc in order)
        order_sql = (order_sql + ", d.ino") if order_sql else "d.ino"
        try:
            rows = c.execute(f"SELECT d.ino FROM docs d WHERE {where} ORDER BY {order_sql} "
                             "LIMIT ? OFFSET ?", [*params, limit, offset]).fetchall()
            total = None
            if count:
                total = int(c.execute(f"SELECT count(*) FROM docs d WHERE {where}",
                                      params).fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "fts5" in str(exc):
                raise q.QueryError(f"cannot search for that text: {exc}") from None
            raise
        return [r[0] for r in rows], total

    def analyze(self) -> None:
        """Refresh the query planner's statistics (after a large ingest)."""
        with self._wlock:
            self._w.execute("ANALYZE")
