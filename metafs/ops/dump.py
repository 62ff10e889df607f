"""A portable dump of a whole volume's metadata, and loading it into an empty database.

``metafs dump`` writes JSON lines that name no engine: a SQLite volume loads into
PostgreSQL and back, and a dump of the loaded volume is the dump it came from (all but the
header). The dump is read in one read transaction (a consistent snapshot, so a namenode may
keep serving); the load runs in one write transaction (all or nothing).

Records, each a JSON object with a ``kind``:

- ``header``: ``format`` ("metafs-dump"), ``version``, the source (engine, database with
  the password hidden, schema version, metafs version) and when it was taken;
- ``ids``: the last inode and handle ids handed out (the engines allocate them
  differently; a loaded volume never hands out an id again);
- ``counter``: the other named counters (the changelog head, the block size, ...);
- ``inode``: every attribute column, with its ``xattrs`` (name -> base64 value), its inline
  ``data`` (base64), its block mapping ``blocks`` (``[idx, key, length, checksum]``), its
  symlink ``target`` and its directory ``quota``;
- ``dentry``: ``parent``, ``name``, ``ino``, ``mode`` (hard links are several dentries
  naming one inode);
- ``change``: a changelog record (``body`` is the serialized record, base64), so consumer
  checkpoints stay valid;
- ``garbage``: a block waiting for garbage collection;
- ``end``: the number of records of each kind (a load refuses a truncated dump).

Sessions, open handles and file locks are the state of running clients, not of the volume,
and are not dumped. Block data stays where it is: the dump refers to the blocks by key, so
the loaded volume must use the same block store (or a copy of it).
"""

from __future__ import annotations

import base64
import errno
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from sqlalchemy import func, insert, inspect, select, text, update
from sqlalchemy.engine import Connection

from ..errors import make_oserror
from ..namenode import schema
from ..namenode.engine import MetaEngine

FORMAT = "metafs-dump"
VERSION = 1
BATCH = 1000

# Tables dumped as they are, a "row" record per row (in primary-key order).
ROW_TABLES = ("projects", "project_members", "project_credentials", "project_shares",
              "project_gateways")
# Every table of the schema is either dumped or named here as the state of running clients.
DUMPED_TABLES = ("inodes", "dentries", "file_data", "xattrs", "blocks", "quotas", "changelog",
                 "counters", "block_garbage", "schema_version", *ROW_TABLES)
RUNTIME_TABLES = ("sessions", "handles", "locks",
                  "changelog_pending",  # stamped into the changelog before a dump
                  "requests",  # results kept for retries of running clients' calls
                  "project_reads")  # which running process read which project's data
# A loaded dump is a file system of its own: a new volume uuid, and run ids bound afresh.
PER_DATABASE_TABLES = ("volume", "runs")
ID_COUNTERS = ("inode", "handle")

_INODE_COLUMNS = [c.name for c in schema.inodes.columns]

Progress = Callable[[str, int], None]  # (phase, records done in it)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text_: str) -> bytes:
    return base64.b64decode(text_.encode("ascii"), validate=True)


def _ordered(conn: Connection, col: Any) -> Any:
    """``col`` compared byte-wise on every engine (text keys must sort alike everywhere)."""
    return col.collate("C") if conn.dialect.name == "postgresql" else col


def _last_ids(conn: Connection, counters: dict[str, int]) -> dict[str, int]:
    """The last inode and handle ids allocated, whichever way the engine allocates them."""
    out = {}
    max_of = {"inode": select(func.max(schema.inodes.c.id)),
              "handle": select(func.max(schema.handles.c.id))}
    for kind in ID_COUNTERS:
        vals = [counters.get(kind, 0), int(conn.execute(max_of[kind]).scalar() or 0)]
        if conn.dialect.name == "postgresql":
            row = conn.execute(text(
                f"SELECT last_value, is_called FROM metafs_{kind}_seq")).first()
            if row is not None and row.is_called:
                vals.append(int(row.last_value))
        out[kind] = max(vals)
    return out


def _pages(conn: Connection, table: Any, key: Any, size: int = BATCH) -> Iterator[list[Any]]:
    """Rows of ``table`` in ``key`` order, a page at a time (keyset paging: no OFFSET)."""
    last = None
    while True:
        q = select(table).order_by(key).limit(size)
        if last is not None:
            q = q.where(key > last)
        rows = conn.execute(q).all()
        if not rows:
            return
        yield rows
        last = getattr(rows[-1], key.name)


def iter_records(conn: Connection, source: dict[str, Any], progress: Progress | None = None
                 ) -> Iterator[dict[str, Any]]:
    """The dump of the database ``conn`` reads, as records (see the module docstring)."""
    counts: dict[str, int] = {}

    def emit(rec: dict[str, Any]) -> dict[str, Any]:
        counts[rec["kind"]] = counts.get(rec["kind"], 0) + 1
        if progress is not None:
            progress(rec["kind"], counts[rec["kind"]])
        return rec

    version = schema.current_version(conn)
    yield {"kind": "header", "format": FORMAT, "version": VERSION,
           "created_ns": time.time_ns(), "source": dict(source, schema_version=version)}
    counters = {r.name: int(r.value) for r in conn.execute(select(schema.counters))}
    yield emit({"kind": "ids", **_last_ids(conn, counters)})
    for name in sorted(counters):
        if name not in ID_COUNTERS:
            yield emit({"kind": "counter", "name": name, "value": counters[name]})

    I, X, D, B, Q = (schema.inodes, schema.xattrs, schema.file_data, schema.blocks,
                     schema.quotas)
    for page in _pages(conn, I, I.c.id):
        lo, hi = page[0].id, page[-1].id
        xattrs: dict[int, dict[str, str]] = {}
        for r in conn.execute(select(X).where(X.c.ino.between(lo, hi))
                              .order_by(X.c.ino, _ordered(conn, X.c.name))):
            xattrs.setdefault(r.ino, {})[r.name] = _b64(r.value)
        data = {r.ino: _b64(r.data)
                for r in conn.execute(select(D).where(D.c.ino.between(lo, hi)))}
        blocks: dict[int, list[list[Any]]] = {}
        for r in conn.execute(select(B).where(B.c.ino.between(lo, hi))
                              .order_by(B.c.ino, B.c.idx)):
            blocks.setdefault(r.ino, []).append([r.idx, r.key, r.length, r.checksum])
        quotas = {r.ino: {"max_files": r.max_files, "max_bytes": r.max_bytes}
                  for r in conn.execute(select(Q).where(Q.c.ino.between(lo, hi)))}
        for row in page:
            rec: dict[str, Any] = {"kind": "inode"}
            rec.update({c: getattr(row, c) for c in _INODE_COLUMNS})
            if row.id in xattrs:
                rec["xattrs"] = xattrs[row.id]
            if row.id in data:
                rec["data"] = data[row.id]
            if row.id in blocks:
                rec["blocks"] = blocks[row.id]
            if row.id in quotas:
                rec["quota"] = quotas[row.id]
            yield emit(rec)

    E = schema.dentries
    last: tuple[int, str] | None = None
    name_key = _ordered(conn, E.c.name)
    while True:
        q = select(E).order_by(E.c.parent, name_key).limit(BATCH)
        if last is not None:  # keyset paging on (parent, name)
            q = q.where((E.c.parent > last[0]) | ((E.c.parent == last[0]) & (name_key > last[1])))
        rows = conn.execute(q).all()
        if not rows:
            break
        for r in rows:
            yield emit({"kind": "dentry", "parent": r.parent, "name": r.name, "ino": r.ino,
                        "mode": r.mode})
        last = (rows[-1].parent, rows[-1].name)

    for name in ROW_TABLES:
        T = schema.metadata.tables[name]
        for r in conn.execute(select(T).order_by(*T.primary_key.columns)):
            yield emit({"kind": "row", "table": name, "values": dict(r._mapping)})

    C = schema.changelog
    for page in _pages(conn, C, C.c.seq):
        for r in page:
            yield emit({"kind": "change", "seq": r.seq, "op": r.op, "ino": r.ino,
                        "ts_ns": r.ts_ns, "body": _b64(r.body)})
    G = schema.block_garbage
    for r in conn.execute(select(G).order_by(_ordered(conn, G.c.key))):
        yield emit({"kind": "garbage", "key": r.key, "freed_ns": r.freed_ns})
    yield {"kind": "end", "counts": counts}


def _source(engine: MetaEngine) -> dict[str, Any]:
    from ..version import __version__

    return {"engine": engine.name,
            "database": engine.engine.url.render_as_string(hide_password=True),
            "metafs_version": __version__}


def _write(records: Iterator[dict[str, Any]], out: IO[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rec in records:
        # ASCII with escapes: names that are not UTF-8 (surrogate escapes) survive too
        out.write(json.dumps(rec, separators=(",", ":")) + "\n")
        if rec["kind"] == "end":
            counts = rec["counts"]
    return counts


def dump(engine: MetaEngine, out: str | os.PathLike[str], *,
         progress: Progress | None = None) -> dict[str, int]:
    """Write the dump of ``engine``'s volume to the file ``out`` ("-": standard output);
    returns the number of records of each kind. A file is written under a temporary name
    and renamed when complete, and is never overwritten."""
    engine.changelog.flush()  # committed records awaiting a position get one
    if str(out) == "-":
        import sys

        return engine.read(lambda conn: _write(iter_records(conn, _source(engine), progress),
                                               sys.stdout))
    dest = Path(out)
    if dest.exists():
        raise FileExistsError(errno.EEXIST, "a dump never overwrites a file", str(dest))
    tmp = dest.with_name(dest.name + ".partial")

    def run(conn: Connection) -> dict[str, int]:
        with open(tmp, "w", encoding="ascii") as fh:
            counts = _write(iter_records(conn, _source(engine), progress), fh)
            fh.flush()
            os.fsync(fh.fileno())
        return counts

    try:
        counts = engine.read(run)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, dest)
    return counts


# ---------------------------------------------------------------------- load
class DumpError(ValueError):
    """The dump cannot be loaded (malformed, truncated, of a newer format or schema)."""


def _check_empty(engine: MetaEngine) -> None:
    """Refuse a database that holds any metafs rows (a fresh, migrated schema is empty)."""
    def has_rows(conn: Connection) -> list[str]:
        present = set(inspect(conn).get_table_names())
        full = []
        for name in ("inodes", "dentries", "changelog", "blocks", "block_garbage"):
            if name in present and conn.execute(
                    select(schema.metadata.tables[name]).limit(1)).first() is not None:
                full.append(name)
        return full

    full = engine.read(has_rows)
    if full:
        raise make_oserror(errno.ENOTEMPTY, "metafs load writes into an empty database only; "
                      f"this one already holds a volume (rows in {', '.join(full)})")


def _read_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DumpError(f"{path}:{n}: not a JSON line ({exc.msg})") from None
            if not isinstance(rec, dict) or "kind" not in rec:
                raise DumpError(f"{path}:{n}: a record must be an object with a 'kind'")
            yield n, rec


class _Loader:
    """Inserts records in batches of :data:`BATCH` rows per table."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.pending: dict[str, list[dict[str, Any]]] = {}
        self.order = ("inodes", "file_data", "xattrs", "blocks", "quotas", "dentries",
                      *ROW_TABLES, "changelog", "block_garbage")

    def add(self, table: str, row: dict[str, Any]) -> None:
        rows = self.pending.setdefault(table, [])
        rows.append(row)
        if len(rows) >= BATCH:
            self.flush(table)

    def flush(self, table: str | None = None) -> None:
        for name in ([table] if table else self.order):
            rows = self.pending.pop(name, None)
            if rows:
                self.conn.execute(insert(schema.metadata.tables[name]), rows)

    def inode(self, rec: dict[str, Any]) -> None:
        ino = rec["id"]
        self.add("inodes", {c: rec[c] for c in _INODE_COLUMNS})
        if "data" in rec:
            self.add("file_data", {"ino": ino, "data": _unb64(rec["data"])})
        for name, value in rec.get("xattrs", {}).items():
            self.add("xattrs", {"ino": ino, "name": name, "value": _unb64(value)})
        for idx, key, length, checksum in rec.get("blocks", []):
            self.add("blocks", {"ino": ino, "idx": idx, "key": key, "length": length,
                                "checksum": checksum})
        if "quota" in rec:
            self.add("quotas", {"ino": ino, **rec["quota"]})


def _set_counter(conn: Connection, name: str, value: int) -> None:
    C = schema.counters
    if conn.execute(update(C).where(C.c.name == name).values(value=value)).rowcount == 0:
        conn.execute(insert(C).values(name=name, value=value))


def _load_into(conn: Connection, path: Path, progress: Progress | None) -> dict[str, int]:
    records = _read_records(path)
    first = next(records, None)
    if first is None or first[1].get("kind") != "header" or first[1].get("format") != FORMAT:
        raise DumpError(f"{path} is not a metafs dump (no header record)")
    header = first[1]
    if header.get("version") != VERSION:
        raise DumpError(f"{path} is a dump of format version {header.get('version')}; this "
                        f"metafs reads version {VERSION}")
    have = schema.current_version(conn)
    if header["source"].get("schema_version", 0) > have:
        raise DumpError(f"{path} was taken of schema version "
                        f"{header['source']['schema_version']}, newer than this metafs's "
                        f"{have}: load it with a newer metafs")
    loader = _Loader(conn)
    counts: dict[str, int] = {}
    end: dict[str, Any] | None = None
    for n, rec in records:
        kind = rec["kind"]
        if end is not None:
            raise DumpError(f"{path}:{n}: a record after the end record")
        try:
            if kind == "end":
                end = rec
                continue
            counts[kind] = counts.get(kind, 0) + 1
            if kind == "inode":
                loader.inode(rec)
            elif kind == "dentry":
                loader.add("dentries", {k: rec[k] for k in ("parent", "name", "ino", "mode")})
            elif kind == "change":
                loader.add("changelog", {"seq": rec["seq"], "op": rec["op"], "ino": rec["ino"],
                                         "ts_ns": rec["ts_ns"], "body": _unb64(rec["body"])})
            elif kind == "row":
                table = rec["table"]
                if table not in ROW_TABLES:
                    raise DumpError(f"{path}:{n}: rows of table {table!r} are not loaded")
                columns = set(schema.metadata.tables[table].columns.keys())
                values = dict(rec["values"])
                if set(values) != columns:
                    raise DumpError(f"{path}:{n}: a {table} row has columns "
                                    f"{sorted(values)}, not {sorted(columns)}")
                loader.add(table, values)
            elif kind == "garbage":
                loader.add("block_garbage", {"key": rec["key"], "freed_ns": rec["freed_ns"]})
            elif kind == "counter":
                _set_counter(conn, rec["name"], int(rec["value"]))
            elif kind == "ids":
                _set_ids(conn, {k: int(rec[k]) for k in ID_COUNTERS})
            else:
                raise DumpError(f"{path}:{n}: unknown record kind {kind!r}")
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, DumpError):
                raise
            raise DumpError(f"{path}:{n}: malformed {kind} record ({exc!r})") from None
        if progress is not None:
            progress(kind, counts[kind])
    if end is None:
        raise DumpError(f"{path} is truncated (no end record): nothing was loaded")
    if end.get("counts") != counts:
        raise DumpError(f"{path}: the end record counts {end.get('counts')}, the dump holds "
                        f"{counts}: nothing was loaded")
    loader.flush()
    return counts


def _set_ids(conn: Connection, ids: dict[str, int]) -> None:
    for kind, last in ids.items():
        _set_counter(conn, kind, last)
        if conn.dialect.name == "postgresql":
            # nextval() hands out last + 1 next (a sequence starts at 2: the root is 1)
            if last >= 2:
                conn.execute(text(f"SELECT setval('metafs_{kind}_seq', :v, true)"), {"v": last})
            else:
                conn.execute(text(f"SELECT setval('metafs_{kind}_seq', 2, false)"))


def load(engine: MetaEngine, path: str | os.PathLike[str], *,
         progress: Progress | None = None) -> dict[str, int]:
    """Load the dump at ``path`` into ``engine``'s database, which must hold no volume
    (a namenode must not be serving it); returns the records loaded by kind. Nothing is
    loaded unless all of it is."""
    src = Path(path)
    if not src.is_file():
        raise FileNotFoundError(errno.ENOENT, "no dump file", str(src))
    _check_empty(engine)
    engine.setup()
    return engine.write(lambda conn: _load_into(conn, src, progress))


# ---------------------------------------------------------------------- progress
@contextmanager
def rich_progress(what: str, enabled: bool = True) -> Iterator[Progress | None]:
    """A progress display (rich, on standard error) counting records by kind."""
    if not enabled:
        yield None
        return
    from rich.progress import Progress as RichProgress, SpinnerColumn, TextColumn

    with RichProgress(SpinnerColumn(), TextColumn("{task.description}"),
                      TextColumn("{task.completed:,} records"), transient=True) as bar:
        tasks: dict[str, Any] = {}
        step = 0

        def update_(kind: str, done: int) -> None:
            nonlocal step
            step += 1
            if kind not in tasks:
                tasks[kind] = bar.add_task(f"{what} {kind}", total=None)
            if step % 200 == 0 or done == 1:
                bar.update(tasks[kind], completed=done)

        yield update_
