"""The indexer's own state, built only from the changelog, in one SQLite file.

Tables (all keyed by inode id; nothing here is read from the namenode's database):

- ``docs``: one row per linked file and directory: its primary name and parent, the
  extension, type, size, owner, mode, link count and times.
- ``dirs``: the directory tree (ino, parent, name). A rename or move of a directory
  changes one row here and one document, whatever the size of its subtree: ancestors are
  resolved through this table, at query time for ``under:`` and for the paths of the
  results returned.
- ``xlinks``: the extra names of hard-linked files (the first name lives in ``docs``).
- ``tags``: typed tag values from ``user.*`` attributes (one row per scalar; see
  :mod:`metafs.cdc.search.tags`).
- ``fts``: an FTS5 table over names and textual tag values (rowid = ino).
- ``meta``: the checkpoint.

:class:`StateStore` applies change records to these tables and moves the checkpoint in
the same transaction (the :class:`~metafs.cdc.consumer.Sink` contract). A subclass can
project the documents a batch touched elsewhere before the commit (the Elasticsearch back
end does).
"""

from __future__ import annotations

import os
import re
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ...posix import ROOT_INO
from ...proto import metafs_pb2 as pb
from ..consumer import apply_checkpointed
from .query import ext_of, type_of_mode
from .tags import NUM, STR, TEXT, collect, flatten_key, tag_key

RENAME_EXCHANGE = 2
# A directory (the parameter) and every directory below it: through the dirs tree, and
# through other names of directories (a project's share entry names a data set directory
# of another project, so a share's files are found under the entry too).
SUBTREE = ("WITH RECURSIVE sub(id) AS (SELECT ? UNION ALL "
           "SELECT dd.ino FROM dirs dd JOIN sub ON dd.parent = sub.id UNION ALL "
           "SELECT xd.ino FROM xlinks xl JOIN sub ON xl.parent = sub.id "
           "JOIN dirs xd ON xd.ino = xl.ino)")

SCHEMA_VERSION = 2
"""Bumped when the tables change; an index file of another version is rebuilt by replay."""

TABLES = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta(key, value) VALUES ('position', 0);
INSERT OR IGNORE INTO meta(key, value) VALUES ('bulk', 0);
CREATE TABLE IF NOT EXISTS docs(
  ino INTEGER PRIMARY KEY, parent INTEGER NOT NULL, name TEXT NOT NULL, ext TEXT NOT NULL,
  type TEXT NOT NULL, size INTEGER NOT NULL, uid INTEGER NOT NULL, gid INTEGER NOT NULL,
  mode INTEGER NOT NULL, nlink INTEGER NOT NULL, atime INTEGER NOT NULL,
  mtime INTEGER NOT NULL, ctime INTEGER NOT NULL, btime INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS dirs(ino INTEGER PRIMARY KEY, parent INTEGER NOT NULL,
  name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS xlinks(parent INTEGER NOT NULL, name TEXT NOT NULL,
  ino INTEGER NOT NULL, PRIMARY KEY(parent, name)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS xlinks_ino ON xlinks(ino);
CREATE TABLE IF NOT EXISTS tags(ino INTEGER NOT NULL, xattr TEXT NOT NULL,
  seq INTEGER NOT NULL, key TEXT NOT NULL, kind TEXT NOT NULL, num REAL, str TEXT,
  PRIMARY KEY(ino, xattr, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS multi(key TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(name, text,
  tokenize = "unicode61 remove_diacritics 2");
"""
"""Tables, and the indexes the apply path itself needs (``tags`` is clustered by ino)."""

INDEXES = """
CREATE INDEX IF NOT EXISTS docs_parent ON docs(parent);
CREATE INDEX IF NOT EXISTS docs_name ON docs(name);
CREATE INDEX IF NOT EXISTS docs_ext ON docs(ext);
CREATE INDEX IF NOT EXISTS docs_size ON docs(size);
CREATE INDEX IF NOT EXISTS docs_mtime ON docs(mtime);
CREATE INDEX IF NOT EXISTS dirs_parent ON dirs(parent, name);
CREATE INDEX IF NOT EXISTS tags_num ON tags(key, kind, num) WHERE num IS NOT NULL;
CREATE INDEX IF NOT EXISTS tags_str ON tags(key, kind, str);
"""
"""Secondary indexes used only by queries (and ``lookup_dir``). A replay from scratch
drops them and builds them once at the end (sorted bulk build instead of millions of
random B-tree inserts). Entries of a WITHOUT ROWID table's index carry its primary key,
so ``tags_num``/``tags_str`` cover ``(key, kind, value) -> ino``."""

_INDEX_NAMES = re.findall(r"EXISTS (\w+) ON", INDEXES)

BULK_MIN_RECORDS = 5000
"""A batch at least this long applied to an empty index at position 0 starts bulk mode."""

DOC_COLS = ("ino", "parent", "name", "ext", "type", "size", "uid", "gid", "mode", "nlink",
            "atime", "mtime", "ctime", "btime")

_CREATE_OPS = (pb.OP_CREATE, pb.OP_MKDIR, pb.OP_MKNOD, pb.OP_SYMLINK)


class Batch:
    """What one batch touched: ino -> the last seq that changed its document, and the inos
    whose full-text row needs rewriting."""

    __slots__ = ("changed", "fts", "fresh", "fresh_x", "new_docs", "new_tags")

    def __init__(self) -> None:
        self.changed: dict[int, int] = {}
        self.fts: set[int] = set()
        self.fresh: set[int] = set()  # created in this batch: no old fts row or tags
        self.fresh_x: dict[int, set[str]] = {}  # fresh ino -> xattrs set in this batch
        # Rows of fresh documents not yet written: the common create-then-tag records go
        # in with one executemany; any other record writes them out first.
        self.new_docs: list[tuple[Any, ...]] = []
        self.new_tags: list[tuple[Any, ...]] = []


class StateStore:
    """The indexer's state and checkpoint in one SQLite file (a consumer Sink)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._wlock = threading.RLock()
        self._local = threading.local()
        self._w = self._connect()
        self._open_schema(self._w)
        self._pos = int(self._w.execute("SELECT value FROM meta WHERE key='position'")
                        .fetchone()[0])
        self._closed = False

    def _open_schema(self, c: sqlite3.Connection) -> None:
        """Create the tables (and, unless a bulk replay is under way, the query indexes).
        A file written by another schema version is emptied: the index is derived state,
        and the consumer rebuilds it by replaying from position 0."""
        c.execute("BEGIN IMMEDIATE")
        try:
            version = c.execute("PRAGMA user_version").fetchone()[0]
            has_tables = c.execute("SELECT count(*) FROM sqlite_master WHERE name='meta'"
                                   ).fetchone()[0]
            if has_tables and version != SCHEMA_VERSION:
                for (kind, name) in c.execute(
                        "SELECT type, name FROM sqlite_master WHERE type IN ('table', 'view') "
                        "AND name NOT LIKE 'sqlite_%' AND name NOT LIKE 'fts_%'").fetchall():
                    c.execute(f"DROP {kind.upper()} IF EXISTS {name}")
            _run_script(c, TABLES)
            c.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            if not self._bulk_flag(c):
                _run_script(c, INDEXES)
            self._open_extra(c)
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def _open_extra(self, c: sqlite3.Connection) -> None:
        """Hook: a subclass's own tables (called inside the opening transaction)."""

    @staticmethod
    def _bulk_flag(c: sqlite3.Connection) -> bool:
        return bool(c.execute("SELECT value FROM meta WHERE key='bulk'").fetchone()[0])

    # ------------------------------------------------------------------ bulk replay
    def in_bulk(self) -> bool:
        """True while a replay from scratch runs without the query indexes."""
        return self._bulk_flag(self.reader())

    def _maybe_start_bulk(self, c: sqlite3.Connection, n: int) -> None:
        """Inside an apply transaction: a long batch into an empty index at position 0
        (a first build or a rebuild) drops the query indexes until :meth:`caught_up`."""
        if self._pos != 0 or n < BULK_MIN_RECORDS or self._bulk_flag(c):
            return
        if c.execute("SELECT 1 FROM docs LIMIT 1").fetchone() is not None:
            return
        for name in _INDEX_NAMES:
            c.execute(f"DROP INDEX IF EXISTS {name}")
        c.execute("UPDATE meta SET value=1 WHERE key='bulk'")

    def caught_up(self) -> None:
        """The consumer reached the changelog head: end a bulk replay by building the query
        indexes (each a sorted bulk build) and refreshing the planner's statistics."""
        with self._wlock:
            c = self._w
            if not self._bulk_flag(c):
                return
            c.execute("BEGIN IMMEDIATE")
            try:
                _run_script(c, INDEXES)
                c.execute("UPDATE meta SET value=0 WHERE key='bulk'")
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("ANALYZE")

    # ------------------------------------------------------------------ connections
    def _connect(self) -> sqlite3.Connection:
        c = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                            timeout=60)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=NORMAL")
        c.execute("PRAGMA cache_size=-262144")
        c.execute("PRAGMA temp_store=MEMORY")
        c.execute("PRAGMA mmap_size=1073741824")
        return c

    def reader(self) -> sqlite3.Connection:
        """A connection for queries, one per thread (WAL: readers never block the writer)."""
        c = getattr(self._local, "conn", None)
        if c is None:
            c = self._connect()
            self._local.conn = c
        return c

    def close(self) -> None:
        with self._wlock:
            if not self._closed:
                self._closed = True
                self._w.close()
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None

    # ------------------------------------------------------------------ Sink
    def position(self) -> int:
        return self._pos

    def reset(self) -> None:
        with self._wlock:
            c = self._w
            c.execute("BEGIN IMMEDIATE")
            try:
                for t in ("docs", "dirs", "xlinks", "tags", "multi", "fts"):
                    c.execute(f"DELETE FROM {t}")
                c.execute("UPDATE meta SET value=0 WHERE key='position'")
                self._reset_extra(c)
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            self._pos = 0

    def _reset_extra(self, c: sqlite3.Connection) -> None:
        """Hook: drop a projection's state too (called inside the reset transaction)."""

    def apply(self, records: Sequence[pb.ChangeRecord], upto: int,
              on_record: Callable[[pb.ChangeRecord], None] | None = None) -> None:
        with self._wlock:
            c = self._w
            c.execute("BEGIN IMMEDIATE")
            try:
                b = Batch()
                self._maybe_start_bulk(c, len(records))
                pos = apply_checkpointed(records, self._pos, upto,
                                         lambda r: self._apply_one(c, r, b), on_record)
                self._write_new(c, b)
                self._flush_fts(c, b)
                self._project(c, b)
                c.execute("UPDATE meta SET value=? WHERE key='position'", (pos,))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            self._pos = pos

    def _project(self, c: sqlite3.Connection, b: Batch) -> None:
        """Hook: send the documents this batch changed elsewhere, before the commit."""

    # ------------------------------------------------------------------ records
    @staticmethod
    def _write_new(c: sqlite3.Connection, b: Batch) -> None:
        """Write the batch's pending document and tag rows."""
        if b.new_docs:
            c.executemany("INSERT OR REPLACE INTO docs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                          b.new_docs)
            b.new_docs = []
        if b.new_tags:
            c.executemany("INSERT INTO tags VALUES (?,?,?,?,?,?,?)", b.new_tags)
            b.new_tags = []

    def _apply_one(self, c: sqlite3.Connection, r: pb.ChangeRecord, b: Batch) -> None:
        op = r.op
        ino = r.ino
        if op in _CREATE_OPS:
            a = r.attr
            typ = type_of_mode(a.mode)
            b.new_docs.append((ino, r.parent, r.name, ext_of(r.name), typ, a.size, a.uid,
                               a.gid, a.mode, a.nlink, a.atime_ns, a.mtime_ns, a.ctime_ns,
                               a.btime_ns))
            if typ == "dir":
                c.execute("INSERT OR REPLACE INTO dirs VALUES (?,?,?)", (ino, r.parent, r.name))
            b.changed[ino] = r.seq
            b.fts.add(ino)
            b.fresh.add(ino)
            return
        if op == pb.OP_SETXATTR:
            key = tag_key(r.xattr_name)
            if key is None:
                return
            if ino in b.fresh:
                # Created in this batch: no tags before this batch, so only a value set
                # earlier in the batch needs deleting.
                seen = b.fresh_x.setdefault(ino, set())
                if key in seen:
                    self._write_new(c, b)
                    c.execute("DELETE FROM tags WHERE ino=? AND xattr=?", (ino, key))
                else:
                    seen.add(key)
            else:
                self._write_new(c, b)
                if not self._has_doc(c, ino):
                    return
                c.execute("DELETE FROM tags WHERE ino=? AND xattr=?", (ino, key))
            tags = flatten_key(key, r.xattr_value)
            b.new_tags.extend([(ino, key, i, t.key, t.kind, t.num, t.str)
                               for i, t in enumerate(tags)])
            if len(tags) > 1:
                keys = [t.key for t in tags]
                if len(set(keys)) < len(keys):
                    c.executemany("INSERT OR IGNORE INTO multi VALUES (?)",
                                  [(k,) for k in set(keys) if keys.count(k) > 1])
            b.changed[ino] = r.seq
            b.fts.add(ino)
            return
        self._write_new(c, b)
        if op == pb.OP_REMOVEXATTR:
            key = tag_key(r.xattr_name)
            if key is None:
                return
            if c.execute("DELETE FROM tags WHERE ino=? AND xattr=?", (ino, key)).rowcount:
                b.changed[ino] = r.seq
                b.fts.add(ino)
        elif op in (pb.OP_SETATTR, pb.OP_WRITE):
            self._set_attr(c, ino, r.attr, r.seq, b)
        elif op == pb.OP_LINK:
            if self._has_doc(c, ino):
                c.execute("INSERT OR REPLACE INTO xlinks VALUES (?,?,?)", (r.parent, r.name, ino))
                self._set_attr(c, ino, r.attr, r.seq, b)
        elif op == pb.OP_UNLINK:
            if self._remove_name(c, ino, r.parent, r.name, r.seq, b):
                c.execute("UPDATE docs SET nlink=? WHERE ino=?", (r.nlink, ino))
        elif op == pb.OP_RMDIR:
            self._drop(c, ino, r.seq, b)
        elif op == pb.OP_RENAME:
            old = (r.old_parent, r.old_name)
            new = (r.parent, r.name)
            if r.flags & RENAME_EXCHANGE and r.target_ino:
                self._move_name(c, ino, old, new, r.seq, b)
                self._move_name(c, r.target_ino, new, old, r.seq, b)
            else:
                if r.target_ino:
                    if self._remove_name(c, r.target_ino, r.parent, r.name, r.seq, b):
                        c.execute("UPDATE docs SET nlink=? WHERE ino=?", (r.nlink, r.target_ino))
                self._move_name(c, ino, old, new, r.seq, b)
            if r.HasField("attr"):
                self._set_attr(c, ino, r.attr, r.seq, b)
        elif op == pb.OP_FREE:
            self._drop(c, ino, r.seq, b)
        # OP_ACCESS, OP_RUN and anything newer do not change documents.

    @staticmethod
    def _has_doc(c: sqlite3.Connection, ino: int) -> bool:
        return c.execute("SELECT 1 FROM docs WHERE ino=?", (ino,)).fetchone() is not None

    @staticmethod
    def _set_attr(c: sqlite3.Connection, ino: int, a: pb.Attr, seq: int, b: Batch) -> None:
        n = c.execute("UPDATE docs SET size=?, uid=?, gid=?, mode=?, nlink=?, atime=?, mtime=?, "
                      "ctime=?, btime=? WHERE ino=?",
                      (a.size, a.uid, a.gid, a.mode, a.nlink, a.atime_ns, a.mtime_ns,
                       a.ctime_ns, a.btime_ns, ino)).rowcount
        if n:
            b.changed[ino] = seq

    def _drop(self, c: sqlite3.Connection, ino: int, seq: int, b: Batch) -> None:
        existed = c.execute("DELETE FROM docs WHERE ino=?", (ino,)).rowcount
        c.execute("DELETE FROM dirs WHERE ino=?", (ino,))
        c.execute("DELETE FROM tags WHERE ino=?", (ino,))
        c.execute("DELETE FROM xlinks WHERE ino=?", (ino,))
        if ino in b.fresh:
            b.fresh.discard(ino)
            b.fts.discard(ino)
            b.fresh_x.pop(ino, None)
        else:
            c.execute("DELETE FROM fts WHERE rowid=?", (ino,))
            b.fts.discard(ino)
        if existed or ino in b.changed:
            b.changed[ino] = seq

    def _remove_name(self, c: sqlite3.Connection, ino: int, parent: int, name: str,
                     seq: int, b: Batch) -> bool:
        """One name of ``ino`` is gone; True if the document remains (other names)."""
        row = c.execute("SELECT parent, name FROM docs WHERE ino=?", (ino,)).fetchone()
        if row is None:
            return False
        if (row[0], row[1]) == (parent, name):
            alt = c.execute("SELECT parent, name FROM xlinks WHERE ino=? ORDER BY parent, name "
                            "LIMIT 1", (ino,)).fetchone()
            if alt is None:
                self._drop(c, ino, seq, b)
                return False
            c.execute("DELETE FROM xlinks WHERE parent=? AND name=?", alt)
            self._set_name(c, ino, alt[0], alt[1])
            b.fts.add(ino)
        else:
            c.execute("DELETE FROM xlinks WHERE parent=? AND name=? AND ino=?", (parent, name, ino))
        b.changed[ino] = seq
        return True

    def _move_name(self, c: sqlite3.Connection, ino: int, old: tuple[int, str],
                   new: tuple[int, str], seq: int, b: Batch) -> None:
        row = c.execute("SELECT parent, name FROM docs WHERE ino=?", (ino,)).fetchone()
        if row is None:
            return
        if (row[0], row[1]) == old:
            self._set_name(c, ino, new[0], new[1])
            b.fts.add(ino)
        else:
            c.execute("DELETE FROM xlinks WHERE parent=? AND name=? AND ino=?", (*old, ino))
            c.execute("INSERT OR REPLACE INTO xlinks VALUES (?,?,?)", (*new, ino))
        b.changed[ino] = seq

    @staticmethod
    def _set_name(c: sqlite3.Connection, ino: int, parent: int, name: str) -> None:
        c.execute("UPDATE docs SET parent=?, name=?, ext=? WHERE ino=?",
                  (parent, name, ext_of(name), ino))
        c.execute("UPDATE dirs SET parent=?, name=? WHERE ino=?", (parent, name, ino))

    def _flush_fts(self, c: sqlite3.Connection, b: Batch) -> None:
        """Rewrite the full-text rows of the documents this batch touched: the names of
        every link, and the string and text tag values in tag order."""
        if not b.fts:
            return
        old = [(i,) for i in b.fts if i not in b.fresh]
        if old:
            c.executemany("DELETE FROM fts WHERE rowid=?", old)
        ids = sorted(b.fts)
        rows = []
        for chunk in _chunks(ids, 500):
            qs = ",".join("?" * len(chunk))
            names: dict[int, list[str]] = {
                ino: [name] for ino, name in c.execute(
                    f"SELECT ino, name FROM docs WHERE ino IN ({qs})", chunk)}
            if not names:
                continue
            texts: dict[int, list[str]] = {}
            for ino, s in c.execute(
                    f"SELECT ino, str FROM tags WHERE ino IN ({qs}) AND kind IN ('{STR}', "
                    f"'{TEXT}') ORDER BY ino, xattr, seq", chunk):
                texts.setdefault(ino, []).append(s)
            for ino, name in c.execute(
                    f"SELECT ino, name FROM xlinks WHERE ino IN ({qs}) "
                    "ORDER BY ino, parent, name", chunk):
                if ino in names:
                    names[ino].append(name)
            for ino in chunk:
                if ino in names:
                    rows.append((ino, " ".join(names[ino]), "\n".join(texts.get(ino, ()))))
        c.executemany("INSERT INTO fts(rowid, name, text) VALUES (?,?,?)", rows)

    # ------------------------------------------------------------------ reading
    def doc_rows(self, c: sqlite3.Connection, inos: Iterable[int]) -> dict[int, dict[str, Any]]:
        """Documents by ino, with their tags, names and parents (all links)."""
        ids = list(inos)
        out: dict[int, dict[str, Any]] = {}
        for chunk in _chunks(ids, 500):
            qs = ",".join("?" * len(chunk))
            for row in c.execute(f"SELECT {','.join(DOC_COLS)} FROM docs WHERE ino IN ({qs})",
                                 chunk):
                d = dict(zip(DOC_COLS, row))
                d["tags"] = {}
                d["links"] = [(d["parent"], d["name"])]
                out[d["ino"]] = d
            trows: dict[int, list[tuple[str, str, float | None, str | None]]] = {}
            for ino, key, kind, num, s in c.execute(
                    f"SELECT ino, key, kind, num, str FROM tags WHERE ino IN ({qs}) "
                    "ORDER BY ino, xattr, seq", chunk):
                trows.setdefault(ino, []).append((key, kind, num, s))
            for ino, rows in trows.items():
                if ino in out:
                    out[ino]["tags"] = collect(rows)
            for parent, name, ino in c.execute(
                    f"SELECT parent, name, ino FROM xlinks WHERE ino IN ({qs}) "
                    "ORDER BY parent, name", chunk):
                if ino in out:
                    out[ino]["links"].append((parent, name))
        return out

    def ancestors(self, c: sqlite3.Connection, parent: int,
                  cache: dict[int, list[int]] | None = None) -> list[int]:
        """Directory ids from the root down to ``parent`` (root excluded)."""
        cache = {} if cache is None else cache
        chain: list[int] = []
        cur = parent
        seen = 0
        while cur != ROOT_INO:
            if cur in cache:
                chain.extend(reversed(cache[cur]))
                break
            row = c.execute("SELECT parent FROM dirs WHERE ino=?", (cur,)).fetchone()
            if row is None:
                break  # detached (a race with a later removal); resolve what we have
            chain.append(cur)
            cur = row[0]
            seen += 1
            if seen > 10_000:
                break
        res = list(reversed(chain))
        cache[parent] = res
        return res

    def dir_path(self, c: sqlite3.Connection, ino: int,
                 cache: dict[int, str] | None = None) -> str | None:
        """The path of directory ``ino`` from the dirs table (None if it is not there)."""
        cache = {} if cache is None else cache
        if ino == ROOT_INO:
            return "/"
        if ino in cache:
            return cache[ino]
        row = c.execute("SELECT parent, name FROM dirs WHERE ino=?", (ino,)).fetchone()
        if row is None:
            return None
        base = self.dir_path(c, row[0], cache)
        p = None if base is None else (base.rstrip("/") + "/" + row[1])
        cache[ino] = p  # type: ignore[assignment]
        return p

    def lookup_dir(self, c: sqlite3.Connection, path: str) -> int | None:
        """The ino of the directory at ``path`` per the dirs table, or through another
        name of a directory (``xlinks``: a project's share entry)."""
        cur = ROOT_INO
        for part in path.split("/"):
            if not part or part == ".":
                continue
            row = c.execute("SELECT ino FROM dirs WHERE parent=? AND name=?",
                            (cur, part)).fetchone()
            if row is None:
                row = c.execute("SELECT x.ino FROM xlinks x JOIN dirs d ON d.ino = x.ino "
                                "WHERE x.parent=? AND x.name=?", (cur, part)).fetchone()
            if row is None:
                return None
            cur = row[0]
        return cur

    def subtree_dirs(self, c: sqlite3.Connection, ino: int) -> list[int]:
        """``ino`` and every directory below it."""
        return [r[0] for r in c.execute(SUBTREE + " SELECT id FROM sub", (ino,))]


def _run_script(c: sqlite3.Connection, script: str) -> None:
    """Run the statements of ``script`` one by one, inside the caller's transaction
    (``executescript`` would commit it)."""
    for stmt in script.split(";\n"):
        if stmt.strip():
            c.execute(stmt)


def _chunks(xs: list[int], n: int) -> Iterable[list[int]]:
    for i in range(0, len(xs), n):
        yield xs[i:i + n]


def is_dir_mode(mode: int) -> bool:
    return stat.S_ISDIR(mode)


__all__ = ["StateStore", "DOC_COLS", "ROOT_INO", "NUM", "STR", "TEXT", "SCHEMA_VERSION",
           "BULK_MIN_RECORDS"]
