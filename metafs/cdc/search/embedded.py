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
from typing import Any, Hashable, Union

from . import query as q
from .base import SearchBackend
from .store import SUBTREE
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


Frag = tuple[str, list[Any]]
"""A piece of SQL and its parameters, in order."""

ESTIMATE_CAP = 5000
"""Terms are estimated by counting their matches up to this many; a term that reaches it
is "broad" and is checked per row instead of being collected into a set."""

_SET_COLS = {"name", "ext", "size", "mtime", "parent", "ino"}
"""Built-in fields with an index (a comparison on one can be collected as a set)."""

_NUM_OPS = {"=", "<", "<=", ">", ">="}

Unit = Union[q.Node, "TagGroup"]


class TagGroup:
    """Numeric comparisons ANDed on one single-valued tag key, merged into one range: for
    a key no document holds several values of, "some value > a and some value < b" is
    "one value in (a, b)", a single scan of the ``tags_num`` index."""

    __slots__ = ("key", "conds")

    def __init__(self, key: str, conds: list[tuple[str, float]]) -> None:
        self.key = key
        self.conds = conds


class Compiler:
    """Turns a query tree into a WHERE clause over ``docs d`` with parameters.

    The planner (``plan=True``) works per AND: every term that can be collected as a set
    of inodes (a tag comparison or ``exists:`` on the tag indexes, free text through FTS5,
    an indexed built-in field, ``under:``, an OR of such terms) is estimated with a capped
    count (:data:`ESTIMATE_CAP`). Narrow terms become ``IN (set)`` constraints, the
    narrowest one driving the scan; broad terms, negations and unindexed fields become
    per-row probes (a correlated ``EXISTS`` on the tags' ``(ino, ...)`` primary key, or a
    plain column test), so SQLite walks the driver (or ``docs`` in the requested order)
    and stops after ``limit`` hits instead of building sets of half a million inodes.
    Numeric comparisons on the same single-valued key are merged (:class:`TagGroup`).
    ``plan=False`` (used for counting every match) collects every collectable term.
    """

    def __init__(self, backend: "EmbeddedIndex", c: sqlite3.Connection, *,
                 plan: bool = True) -> None:
        self.backend = backend
        self.c = c
        self.plan = plan
        self.params: list[Any] = []
        self._multi: set[str] | None = None
        self._dirs: dict[str, list[int] | None] = {}
        self._est: dict[Hashable, tuple[int, int]] = {}
        self._alias = 0
        self.stream_text: q.Text | None = None
        """Set by :meth:`compile_top` when the caller should stream the matches of this
        free-text term from FTS5 in rowid order (nothing narrow to drive the scan)."""

    # ------------------------------------------------------------------ entry points
    def compile(self, n: q.Node) -> str:
        """A WHERE clause over ``docs d`` (parameters in :attr:`params`)."""
        sql, params = self._pred(n, "d")
        self.params += params
        return sql

    def compile_top(self, n: q.Node, sorted_: bool) -> str:
        """Like :meth:`compile`, but when nothing narrow drives an unsorted query and one
        of the top-level terms is free text, leave that term out and name it in
        :attr:`stream_text`: the caller joins FTS5 (which yields rowids in order) to
        ``docs`` and stops after ``limit`` hits."""
        if self.plan and not sorted_:
            units = self._units(n)
            texts = [u for u in units if isinstance(u, q.Text)]
            if texts and not any(self._narrow(u) for u in units):
                self.stream_text = texts[0]
                rest = [u for u in units if u is not texts[0]]
                sql, params = self._and_units(rest, "d") if rest else ("1", [])
                self.params += params
                return sql
        return self.compile(n)

    # ------------------------------------------------------------------ planning
    def _units(self, n: q.Node) -> list[Unit]:
        """The ANDed terms of ``n`` (nested ANDs flattened), with numeric comparisons on
        one single-valued key merged into a :class:`TagGroup`."""
        items: list[q.Node] = []

        def flat(x: q.Node) -> None:
            if isinstance(x, q.And):
                for y in x.items:
                    flat(y)
            else:
                items.append(x)

        flat(n)
        groups: dict[str, list[q.Tag]] = {}
        for x in items:
            if (isinstance(x, q.Tag) and isinstance(x.value, float) and not
                    isinstance(x.value, bool) and x.op in _NUM_OPS):
                groups.setdefault(x.key, []).append(x)
        out: list[Unit] = []
        done: set[str] = set()
        for x in items:
            if isinstance(x, q.Tag) and x.key in groups and len(groups[x.key]) > 1 and \
                    self._single_valued(x.key):
                if x.key not in done:
                    done.add(x.key)
                    out.append(TagGroup(x.key, [(t.op, t.value) for t in groups[x.key]]))
                continue
            out.append(x)
        return out

    def _single_valued(self, key: str) -> bool:
        """No document can hold two values of ``key``: no array ever gave it several, and
        it has no dot (a dotted key can come from two attributes: ``user.a.b`` and
        ``user.a = {"b": ..}``)."""
        if "." in key:
            return False
        if self._multi is None:
            self._multi = {r[0] for r in self.c.execute("SELECT key FROM multi")}
        return key not in self._multi

    def _under(self, path: str) -> list[int] | None:
        if path not in self._dirs:
            self._dirs[path] = self.backend.under_dirs(self.c, path)
        return self._dirs[path]

    def _estimate(self, u: Unit, cap: int) -> int:
        """How many rows collecting ``u`` yields, counted up to ``cap`` (``cap`` itself
        means "at least that many")."""
        key: Hashable = ("g", u.key, tuple(u.conds)) if isinstance(u, TagGroup) else u
        got = self._est.get(key)
        if got is not None:
            n, counted_to = got
            if n < counted_to or cap <= counted_to:
                return min(n, cap)
        frag = self._set(u)
        if frag is None:
            return cap
        n = int(self.c.execute(f"SELECT count(*) FROM ({frag[0]} LIMIT ?)",
                               [*frag[1], cap]).fetchone()[0])
        self._est[key] = (n, cap)
        return n

    def _narrow(self, u: Unit) -> bool:
        return self._estimate(u, ESTIMATE_CAP) < ESTIMATE_CAP

    @staticmethod
    def _order(u: Unit) -> int:
        """Estimate cheap-to-count terms first (their count caps the later ones)."""
        if isinstance(u, q.Under):
            return 0
        if isinstance(u, q.Field):
            return 1
        if isinstance(u, (q.Tag, TagGroup, q.Exists)):
            return 2
        if isinstance(u, q.Or):
            return 3
        return 4

    # ------------------------------------------------------------------ predicates
    def _pred(self, n: q.Node, a: str) -> Frag:
        return self._and_units(self._units(n), a)

    def _and_units(self, units: list[Unit], a: str) -> Frag:
        sets: list[tuple[int, Frag]] = []
        probes: list[tuple[int, Frag]] = []
        best = ESTIMATE_CAP  # the narrowest set so far caps the later counts
        for u in sorted(units, key=self._order):
            frag = self._set(u)
            if frag is not None and self.plan:
                est = self._estimate(u, best)
                if est < best:
                    best = est
                    sets.append((est, frag))
                    continue
            elif frag is not None:
                sets.append((0, frag))
                continue
            probes.append((1 if isinstance(u, q.Text) else 0, self._probe(u, a)))
        sets.sort(key=lambda x: x[0])
        probes.sort(key=lambda x: x[0])  # free-text probes (the dearest) last
        parts: list[str] = []
        params: list[Any] = []
        for i, (_, (sql, ps)) in enumerate(sets):
            parts.append(f"{'' if i == 0 else '+'}{a}.ino IN ({sql})")
            params += ps
        for _, (sql, ps) in probes:
            parts.append(sql)
            params += ps
        if not parts:
            return "1", []
        return ("(" + " AND ".join(parts) + ")" if len(parts) > 1 else parts[0]), params

    def _probe(self, u: Unit, a: str) -> Frag:
        """``u`` tested on the row ``a`` (no set is built for a broad term)."""
        if isinstance(u, TagGroup):
            conds = " AND ".join(f"t.num {_SQL_OPS[op]} ?" for op, _ in u.conds)
            return (f"EXISTS (SELECT 1 FROM tags t WHERE t.ino = {a}.ino AND +t.key = ? AND "
                    f"t.kind = ? AND {conds})", [u.key, NUM, *[v for _, v in u.conds]])
        if isinstance(u, q.Tag):
            cond, params = self._tag_cond(u, "t", probe=True)
            return (f"EXISTS (SELECT 1 FROM tags t WHERE t.ino = {a}.ino AND {cond})", params)
        if isinstance(u, q.Exists):
            lo, hi = _key_range(u.key)
            return (f"EXISTS (SELECT 1 FROM tags t WHERE t.ino = {a}.ino AND "
                    "(+t.key = ? OR (+t.key >= ? AND +t.key < ?)))", [u.key, lo, hi])
        if isinstance(u, q.Text):
            if not self.plan:
                return (f"{a}.ino IN (SELECT rowid FROM fts WHERE fts MATCH ?)",
                        [self._match(u)])
            return (f"EXISTS (SELECT 1 FROM fts WHERE fts MATCH ? AND fts.rowid = {a}.ino)",
                    [self._match(u)])
        if isinstance(u, q.Glob):
            return f"{a}.name GLOB ?", [u.pattern]
        if isinstance(u, q.Field):
            if u.name not in _COLS:
                raise q.QueryError(f"unknown field {u.name!r}")
            return f"+{a}.{u.name} {_SQL_OPS[u.op]} ?", [u.value]
        if isinstance(u, q.Under):
            dirs = self._under(u.path)
            if dirs is None:
                return "1", []
            if not dirs:
                return "0", []
            sub = self._subtree()
            return (f"({a}.parent IN ({sub}) OR {a}.ino IN (SELECT ino FROM xlinks WHERE "
                    f"parent IN ({sub})))", [dirs[0], dirs[0]])
        if isinstance(u, q.Not):
            sql, params = self._pred(u.item, a)
            return f"NOT {sql}", params
        if isinstance(u, q.Or):
            frag = self._set(u)
            if frag is not None and (not self.plan or self._narrow(u)):
                return f"{a}.ino IN ({frag[0]})", frag[1]
            parts = [self._pred(x, a) for x in u.items]
            return ("(" + " OR ".join(p[0] for p in parts) + ")",
                    [v for p in parts for v in p[1]])
        if isinstance(u, q.And):
            return self._pred(u, a)
        if isinstance(u, q.All):
            return "1", []
        raise q.QueryError(f"cannot compile {type(u).__name__}")

    # ------------------------------------------------------------------ sets
    def _set(self, u: Unit) -> Frag | None:
        """A SELECT of the inos matching ``u`` through an index, or None if there is no
        cheap way to collect them (negations, globs on names, unindexed fields)."""
        if isinstance(u, TagGroup):
            conds = " AND ".join(f"num {_SQL_OPS[op]} ?" for op, _ in u.conds)
            return (f"SELECT ino FROM tags WHERE key = ? AND kind = ? AND {conds}",
                    [u.key, NUM, *[v for _, v in u.conds]])
        if isinstance(u, q.Tag):
            cond, params = self._tag_cond(u, None, probe=False)
            return f"SELECT ino FROM tags WHERE {cond}", params
        if isinstance(u, q.Exists):
            lo, hi = _key_range(u.key)
            return ("SELECT ino FROM tags WHERE key = ? UNION ALL "
                    "SELECT ino FROM tags WHERE key >= ? AND key < ?", [u.key, lo, hi])
        if isinstance(u, q.Text):
            return "SELECT rowid FROM fts WHERE fts MATCH ?", [self._match(u)]
        if isinstance(u, q.Field):
            if u.name not in _COLS:
                raise q.QueryError(f"unknown field {u.name!r}")
            if u.name not in _SET_COLS or u.op == "!=":
                return None
            return f"SELECT ino FROM docs WHERE {u.name} {_SQL_OPS[u.op]} ?", [u.value]
        if isinstance(u, q.Under):
            dirs = self._under(u.path)
            if not dirs:
                return None
            sub = self._subtree()
            return (f"SELECT ino FROM docs WHERE parent IN ({sub}) UNION ALL "
                    f"SELECT ino FROM xlinks WHERE parent IN ({sub})", [dirs[0], dirs[0]])
        if isinstance(u, q.Or):
            parts = [self._set_node(x) for x in u.items]
            if any(p is None for p in parts):
                return None
            return (" UNION ALL ".join(f"SELECT * FROM ({p[0]})" for p in parts if p),
                    [v for p in parts if p for v in p[1]])
        if isinstance(u, q.And):
            return self._set_node(u)
        return None

    def _set_node(self, n: q.Node) -> Frag | None:
        """:meth:`_set` for any node; an AND is collectable when one of its terms is."""
        if not isinstance(n, q.And):
            return self._set(n)
        units = self._units(n)
        if not any(self._set(u) is not None for u in units):
            return None
        self._alias += 1
        x = f"x{self._alias}"
        sql, params = self._and_units(units, x)
        return f"SELECT {x}.ino FROM docs {x} WHERE {sql}", params

    # ------------------------------------------------------------------ pieces
    @staticmethod
    def _subtree() -> str:
        return SUBTREE + " SELECT id FROM sub"

    @staticmethod
    def _match(n: q.Text) -> str:
        phrase = fts_phrase(n.text, n.prefix)
        return f"name : {phrase}" if n.field == "name" else phrase

    @staticmethod
    def _tag_cond(n: q.Tag, t: str | None, *, probe: bool) -> Frag:
        """The condition on one ``tags`` row for a tag comparison. In a probe the key
        test is written ``+key`` so SQLite seeks the row's primary key ``(ino, ...)``
        rather than scanning a value index."""
        p = f"{t}." if t else ""
        k = f"+{p}key" if probe else f"{p}key"
        op = _SQL_OPS[n.op]
        v = n.value
        if isinstance(v, bool):
            return f"{k} = ? AND {p}kind = ? AND {p}num = ?", [n.key, BOOL, 1.0 if v else 0.0]
        if isinstance(v, float):
            return f"{k} = ? AND {p}kind = ? AND {p}num {op} ?", [n.key, NUM, v]
        if n.glob:
            return (f"(({k} = ? AND {p}kind = ?) OR ({k} = ? AND {p}kind = ?)) AND "
                    f"{p}str GLOB ?", [n.key, STR, n.key, TEXT, v])
        return (f"(({k} = ? AND {p}kind = ? AND {p}str {op} ?) OR "
                f"({k} = ? AND {p}kind = ? AND {p}str {op} ?))", [n.key, STR, v, n.key, TEXT, v])


def resolve_keys(n: q.Node, keys: list[str]) -> q.Node:
    """``n`` with each tag key replaced by the indexed keys it names
    (:func:`~metafs.cdc.search.query.key_matches`): ``bicycles>3`` over an index holding
    ``bicycles`` and ``tags.bicycles`` becomes ``bicycles>3 OR tags.bicycles>3``, so every
    term stays an exact-key lookup on the tag indexes. A key naming nothing but itself is
    left as it is."""
    if isinstance(n, q.And):
        return q.And(tuple(resolve_keys(x, keys) for x in n.items))
    if isinstance(n, q.Or):
        return q.Or(tuple(resolve_keys(x, keys) for x in n.items))
    if isinstance(n, q.Not):
        return q.Not(resolve_keys(n.item, keys))
    if isinstance(n, q.Tag):
        named = [k for k in keys if q.key_matches(n.key, k)]
        if not named or named == [n.key]:
            return n
        return q.Or(tuple(q.Tag(k, n.op, n.value, n.glob) for k in named))
    if isinstance(n, q.Exists):
        scopes = sorted({s for k in keys for s in q.key_scopes(n.key, k)})
        if not scopes or scopes == [n.key]:
            return n
        # a scope inside another one adds nothing (exists:a covers a.b)
        outer = [s for s in scopes if not any(s.startswith(o + ".") for o in scopes)]
        if len(outer) == 1:
            return q.Exists(outer[0])
        return q.Or(tuple(q.Exists(s) for s in outer))
    return n


class EmbeddedIndex(SearchBackend):
    """The default back end: everything in one SQLite file next to the namenode's data."""

    kind = "embedded"

    def _find(self, c: sqlite3.Connection, node: q.Node, order: list[tuple[str, bool]],
              limit: int, offset: int, count: bool) -> tuple[list[int], int | None]:
        node = resolve_keys(node, self.tag_keys(c))
        comp = Compiler(self, c)
        try:
            where = comp.compile_top(node, sorted_=bool(order))
            params = comp.params
            if comp.stream_text is not None:
                # FTS5 yields its matches in rowid order: join and stop at the limit.
                rows = c.execute(
                    f"SELECT d.ino FROM fts JOIN docs d ON d.ino = fts.rowid "
                    f"WHERE fts MATCH ? AND {where} ORDER BY fts.rowid LIMIT ? OFFSET ?",
                    [comp._match(comp.stream_text), *params, limit, offset]).fetchall()
            else:
                order_sql = ", ".join(f"d.{f} {'DESC' if desc else 'ASC'}" for f, desc in order)
                order_sql = (order_sql + ", d.ino") if order_sql else "d.ino"
                rows = c.execute(f"SELECT d.ino FROM docs d WHERE {where} ORDER BY {order_sql} "
                                 "LIMIT ? OFFSET ?", [*params, limit, offset]).fetchall()
            total = None
            if count:
                # With a narrow term the planned WHERE counts fast (the driver bounds the
                # rows); with none, collecting every term as a set beats probing 1 M rows.
                driven = any(comp._narrow(u) for u in comp._units(node))
                cc = Compiler(self, c, plan=driven)
                cc._est = comp._est
                cwhere = cc.compile(node)
                total = int(c.execute(f"SELECT count(*) FROM docs d WHERE {cwhere}",
                                      cc.params).fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "fts5" in str(exc):
                raise q.QueryError(f"cannot search for that text: {exc}") from None
            raise
        return [r[0] for r in rows], total

    def tag_keys(self, c: sqlite3.Connection) -> list[str]:
        """Every distinct tag key in the index, sorted. Read by seeking the ``tags_str``
        index from one key to the next (one step per distinct key, not per tag; one scan
        during a bulk replay, which runs without that index), and
        kept until the index changes (SQLite's ``data_version`` of this connection moves
        when another connection commits)."""
        version = c.execute("PRAGMA data_version").fetchone()[0]
        cached = getattr(self._local, "tag_keys", None)
        if cached is not None and cached[0] is c and cached[1] == version:
            return cached[2]
        keys: list[str] = []
        if self._bulk_flag(c):  # a replay runs without the index: one scan instead
            keys = [r[0] for r in c.execute("SELECT DISTINCT key FROM tags ORDER BY key")]
        else:
            row = c.execute("SELECT min(key) FROM tags").fetchone()
            while row[0] is not None:
                keys.append(row[0])
                row = c.execute("SELECT min(key) FROM tags WHERE key > ?",
                                (row[0],)).fetchone()
        self._local.tag_keys = (c, version, keys)
        return keys

    def analyze(self) -> None:
        """Refresh the query planner's statistics (after a large ingest)."""
        with self._wlock:
            self._w.execute("ANALYZE")
