"""The provenance graph's own database, built only from the changelog.

Kept by the namenode (:mod:`.service`), once per file system. Tables (SQLAlchemy Core; a
SQLite file per volume under the namenode's data directory by default, or PostgreSQL):

- ``files``: every inode the changelog named: parent, name, directory or not, the
  explicit ``user.metafs.kind`` and how many data files a directory directly holds. Used
  to resolve data-set directories and to show paths; never used as an artifact identity.
- ``runs``: explicit runs (``run:<id>``, from OP_RUN records and the run id on changes)
  and implicit ones: a process (``proc:<host>:<pid>:<start>``) reading or writing without
  a run id is a run of its own.
- ``versions``: artifact versions. An artifact is an inode; a version is a span of its
  data versions (``attr.version``) written by one writer without anyone else reading it
  in between. A truncation to zero (an overwrite), another writer, or a read by another
  run closes a version; the next write opens a new one. A directory data set has one
  version.
- ``edges``: run -read-> version and run -wrote-> version, each with the changelog
  position and time it was first seen (``--as-of`` filters on them).
- ``meta``: the checkpoint.

:class:`ProvenanceStore` is a :class:`~metafs.cdc.consumer.Sink`: each batch of records and
the checkpoint move are one transaction, records at or below the checkpoint are skipped,
and :meth:`ProvenanceStore.reset` drops everything for a rebuild by replay.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from sqlalchemy import (BigInteger, Boolean, Column, Index, Integer, MetaData, String, Table,
                        Text, and_, delete, func, insert, inspect, select, update)
from sqlalchemy.engine import Connection

from ...proto import metafs_pb2 as pb
from ..consumer import apply_checkpointed
from ..sqlstore import drop_statistics, open_engines
from .classify import DATASET, KIND_XATTR, MODEL, is_data_file, normalize_kind

if TYPE_CHECKING:
    from .lineage import LiveLineage

log = logging.getLogger("metafs.cdc.provenance")

ID = BigInteger().with_variant(Integer(), "sqlite")
RENAME_EXCHANGE = 2
_CREATE_OPS = (pb.OP_CREATE, pb.OP_MKDIR, pb.OP_MKNOD, pb.OP_SYMLINK)

md = MetaData()
META = Table("prov_meta", md, Column("key", String(64), primary_key=True),
             Column("value", BigInteger, nullable=False))
FILES = Table(
    "prov_files", md,
    Column("ino", BigInteger, primary_key=True, autoincrement=False),
    Column("parent", BigInteger, nullable=False),
    Column("name", Text, nullable=False),
    Column("is_dir", Boolean, nullable=False),
    Column("kind_x", String(16)),
    Column("data_children", Integer, nullable=False, default=0),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("seq", BigInteger, nullable=False),
)
RUNS = Table(
    "prov_runs", md,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("key", Text, nullable=False, unique=True),
    Column("explicit", Boolean, nullable=False),
    Column("name", Text, nullable=False, default=""),
    Column("params", Text, nullable=False, default="{}"),
    Column("host", Text, nullable=False, default=""),
    Column("user_name", Text, nullable=False, default=""),
    Column("uid", BigInteger),
    Column("pid", BigInteger),
    Column("cmdline", Text, nullable=False, default=""),
    Column("status", String(32), nullable=False, default=""),
    Column("exit_code", Integer),
    Column("start_ns", BigInteger),
    Column("end_ns", BigInteger),
    Column("seq", BigInteger, nullable=False),
    Column("ts_ns", BigInteger, nullable=False),
    Column("end_seq", BigInteger),
    Column("context", Text),  # JSON: MLflow run id, OpenLineage parent, environment
    Index("prov_runs_process", "pid", "host"),  # the explicit run a process is inside
)
VERSIONS = Table(
    "prov_versions", md,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("ino", BigInteger, nullable=False),
    Column("v_lo", BigInteger, nullable=False),
    Column("v_hi", BigInteger, nullable=False),
    Column("writer", Text, nullable=False, default=""),
    Column("open", Boolean, nullable=False),
    Column("size", BigInteger, nullable=False, default=0),
    Column("seq", BigInteger, nullable=False),
    Column("ts_ns", BigInteger, nullable=False),
    Index("prov_versions_ino", "ino", "v_lo"),
)
EDGES = Table(
    "prov_edges", md,
    Column("av", BigInteger, primary_key=True, autoincrement=False),
    Column("dir", String(1), primary_key=True),  # 'r' read, 'w' wrote
    Column("run", BigInteger, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("ts_ns", BigInteger, nullable=False),
    Index("prov_edges_run", "run", "dir", "av"),
)
ALL_TABLES = (EDGES, VERSIONS, RUNS, FILES)


def default_url(settings: Any, volume: str) -> str:
    """The provenance database URL of file system ``volume`` (its uuid): ``prov_db_url``
    when set, else a SQLite file named by the uuid under the namenode's data directory,
    so a data directory reused for another file system never mixes the two graphs."""
    if getattr(settings, "prov_db_url", ""):
        return str(settings.prov_db_url)
    if not volume or not all(ch.isalnum() or ch == "-" for ch in volume):
        raise ValueError(f"not a volume uuid: {volume!r}")
    return f"sqlite:///{Path(settings.data_dir) / 'provenance' / (volume + '.db')}"


@dataclass
class _FileRow:
    ino: int
    parent: int
    name: str
    is_dir: bool
    kind_x: str | None
    data_children: int


class Batch:
    """Per-batch caches (dropped when the batch's transaction ends)."""

    def __init__(self) -> None:
        self.files: dict[int, _FileRow | None] = {}
        self.edges: set[tuple[int, str, int]] = set()
        self.new_edges: list[tuple[int, str, int]] = []  # (run, 'r'|'w', version) added
        self.new_runs: list[int] = []
        self.ended_runs: list[int] = []


class ProvenanceStore:
    """The provenance graph and its checkpoint (a consumer Sink)."""

    def __init__(self, url: str, *, dataset_dir_min: int = 2) -> None:
        self.url = url
        self.lineage: LiveLineage | None = None
        """When set, each committed batch's new runs and edges are sent as OpenLineage
        events (:meth:`LiveLineage.after_batch`)."""
        self.dataset_dir_min = dataset_dir_min
        self.engine, self.reader = open_engines(url)
        self._lock = threading.RLock()
        self._runs: dict[str, int] = {}  # run key -> id (committed rows only)
        md.create_all(self.engine)
        self._add_missing_columns()
        for ix in RUNS.indexes:  # stores made before an index existed get it too
            ix.create(self.engine, checkfirst=True)
        # SQLite with ANALYZE statistics on the edges table plans its recursive walks
        # with Bloom filters, each built by scanning every edge: 72 ms instead of 0.9 ms
        # per upstream query at 265,000 edges (measured). The walks are index lookups by
        # design; without statistics the planner follows the indexes.
        drop_statistics(self.engine, EDGES.name)
        with self.engine.begin() as c:
            if c.execute(select(META.c.value).where(META.c.key == "position")).first() is None:
                c.execute(insert(META).values(key="position", value=0))

    def _add_missing_columns(self) -> None:
        """Columns added since a store was made (create_all leaves existing tables)."""
        have = {col["name"] for col in inspect(self.engine).get_columns(RUNS.name)}
        for col in RUNS.columns:
            if col.name not in have:
                with self.engine.begin() as c:
                    c.exec_driver_sql(f"ALTER TABLE {RUNS.name} ADD COLUMN {col.name} "
                                      f"{col.type.compile(self.engine.dialect)}")

    @classmethod
    def for_settings(cls, settings: Any, volume: str) -> "ProvenanceStore":
        """The store of file system ``volume`` (see :func:`default_url`)."""
        return cls(default_url(settings, volume),
                   dataset_dir_min=getattr(settings, "prov_dataset_dir_min", 2))

    # ------------------------------------------------------------------ Sink
    def position(self) -> int:
        with self.reader.connect() as c:
            return int(c.execute(select(META.c.value).where(META.c.key == "position"))
                       .scalar_one())

    def reset(self) -> None:
        with self._lock, self.engine.begin() as c:
            for t in ALL_TABLES:
                c.execute(delete(t))
            c.execute(update(META).where(META.c.key == "position").values(value=0))
            self._runs.clear()

    def close(self) -> None:
        self.engine.dispose()
        if self.reader is not self.engine:
            self.reader.dispose()

    def apply(self, records: Sequence[pb.ChangeRecord], upto: int,
              on_record: Callable[[pb.ChangeRecord], None] | None = None) -> None:
        with self._lock:
            saved = dict(self._runs)
            try:
                with self.engine.begin() as c:
                    pos = int(c.execute(select(META.c.value).where(META.c.key == "position")
                                        .with_for_update()).scalar_one())
                    b = Batch()
                    new = apply_checkpointed(records, pos, upto,
                                             lambda r: self._apply_one(c, r, b), on_record)
                    if new > pos:
                        c.execute(update(META).where(META.c.key == "position")
                                  .values(value=new))
            except BaseException:
                self._runs = saved
                raise
        if self.lineage is not None:
            self.lineage.after_batch(self, b.new_runs, b.new_edges, b.ended_runs)

    # ------------------------------------------------------------------ records
    def _apply_one(self, c: Connection, r: pb.ChangeRecord, b: Batch) -> None:
        op = r.op
        if op in _CREATE_OPS:
            is_dir = op == pb.OP_MKDIR
            c.execute(delete(FILES).where(FILES.c.ino == r.ino))
            c.execute(insert(FILES).values(ino=r.ino, parent=r.parent, name=r.name,
                                           is_dir=is_dir, kind_x=None, data_children=0,
                                           deleted=False, seq=r.seq))
            b.files.pop(r.ino, None)
            if not is_dir and is_data_file(r.name):
                self._count_child(c, b, r.parent, +1)
            if op == pb.OP_CREATE and r.attr.size > 0:  # created with data (bulk create)
                self._data_changed(c, b, r)
        elif op == pb.OP_WRITE:
            self._data_changed(c, b, r)
        elif op == pb.OP_RENAME:
            self._rename(c, b, r)
        elif op in (pb.OP_UNLINK, pb.OP_RMDIR):
            f = self._file(c, b, r.ino)
            if f is not None and f.parent == r.parent and f.name == r.name:
                if not f.is_dir and is_data_file(f.name):
                    self._count_child(c, b, f.parent, -1)
                if op == pb.OP_RMDIR or r.nlink == 0:
                    self._set_file(c, b, r.ino, deleted=True)
        elif op == pb.OP_FREE:
            self._set_file(c, b, r.ino, deleted=True)
        elif op in (pb.OP_SETXATTR, pb.OP_REMOVEXATTR):
            if r.xattr_name == KIND_XATTR:
                kind = normalize_kind(r.xattr_value) if op == pb.OP_SETXATTR else None
                self._set_file(c, b, r.ino, kind_x=kind)
        elif op == pb.OP_ACCESS:
            self._access(c, b, r)
        elif op == pb.OP_RUN:
            self._run_record(c, b, r)

    # -- files
    def _file(self, c: Connection, b: Batch, ino: int) -> _FileRow | None:
        if ino in b.files:
            return b.files[ino]
        row = c.execute(select(FILES.c.ino, FILES.c.parent, FILES.c.name, FILES.c.is_dir,
                               FILES.c.kind_x, FILES.c.data_children)
                        .where(FILES.c.ino == ino)).first()
        f = _FileRow(*row) if row is not None else None
        b.files[ino] = f
        return f

    def _set_file(self, c: Connection, b: Batch, ino: int, **vals: Any) -> None:
        c.execute(update(FILES).where(FILES.c.ino == ino).values(**vals))
        b.files.pop(ino, None)

    def _count_child(self, c: Connection, b: Batch, parent: int, delta: int) -> None:
        c.execute(update(FILES).where(FILES.c.ino == parent)
                  .values(data_children=FILES.c.data_children + delta))
        b.files.pop(parent, None)

    def _rename(self, c: Connection, b: Batch, r: pb.ChangeRecord) -> None:
        src = self._file(c, b, r.ino)
        moved = src is not None and not src.is_dir and is_data_file(src.name)
        if r.target_ino and r.flags & RENAME_EXCHANGE:
            dst = self._file(c, b, r.target_ino)
            self._set_file(c, b, r.target_ino, parent=r.old_parent, name=r.old_name)
            if dst is not None and not dst.is_dir and is_data_file(dst.name):
                self._count_child(c, b, r.parent, -1)
                self._count_child(c, b, r.old_parent, +1)
        elif r.target_ino:
            dst = self._file(c, b, r.target_ino)
            if dst is not None and not dst.is_dir and is_data_file(dst.name):
                self._count_child(c, b, r.parent, -1)
            if r.nlink == 0:
                self._set_file(c, b, r.target_ino, deleted=True)
        if moved:
            self._count_child(c, b, r.old_parent, -1)
        self._set_file(c, b, r.ino, parent=r.parent, name=r.name)
        if src is not None and not src.is_dir and is_data_file(r.name):
            self._count_child(c, b, r.parent, +1)

    def target_of(self, c: Connection, b: Batch, ino: int) -> tuple[int, bool]:
        """The artifact a read or write of ``ino`` counts against: the inode itself, or
        the data-set (or model) directory it lies in. Returns (ino, is_directory)."""
        f = self._file(c, b, ino)
        if f is None:
            return ino, False
        if f.kind_x:
            return ino, f.is_dir
        node = self._file(c, b, f.parent) if f.parent != f.ino else None
        hops = 0
        while node is not None and hops < 64:
            if node.kind_x:
                if node.kind_x in (DATASET, MODEL):
                    return node.ino, True
                break
            if node.parent == node.ino:
                break
            node = self._file(c, b, node.parent)
            hops += 1
        if not f.is_dir and is_data_file(f.name):
            parent = self._file(c, b, f.parent)
            if (parent is not None and parent.kind_x is None
                    and parent.data_children >= self.dataset_dir_min):
                return parent.ino, True
        return ino, f.is_dir

    # -- versions
    def _latest(self, c: Connection, ino: int) -> Any:
        return c.execute(select(VERSIONS).where(VERSIONS.c.ino == ino)
                         .order_by(VERSIONS.c.id.desc()).limit(1)).first()

    def _new_version(self, c: Connection, r: pb.ChangeRecord, ino: int, v: int, writer: str,
                     is_open: bool, size: int = 0) -> int:
        res = c.execute(insert(VERSIONS).values(ino=ino, v_lo=v, v_hi=v, writer=writer,
                                                open=is_open, size=size, seq=r.seq,
                                                ts_ns=r.ts_ns))
        return int(res.inserted_primary_key[0])

    def _data_changed(self, c: Connection, b: Batch, r: pb.ChangeRecord) -> None:
        """An OP_WRITE (or a create with data): extend the open version or start one."""
        ino, v, size = r.ino, int(r.attr.version), int(r.attr.size)
        target, is_dir = self.target_of(c, b, ino)
        run_id = self._own_run(c, r)
        writer = f"run:{run_id}" if run_id else f"client:{r.client_id}"
        if is_dir:
            av = self._dir_version(c, r, target)
            if run_id:
                self._edge(c, b, self._run_id(c, b, r, writer), av, "w", r)
            return
        cur = self._latest(c, ino)
        if size == 0 or r.flags & pb.WRITE_REPLACED:
            # emptied (an O_TRUNC open, a truncate; or a write that replaced the content,
            # the truncating open's first write): what is written from now on is new data
            if cur is not None and cur.open:
                c.execute(update(VERSIONS).where(VERSIONS.c.id == cur.id)
                          .values(open=False, v_hi=max(cur.v_hi, v if not size else v - 1)))
                cur = None
            if size == 0:
                return
        if cur is not None and cur.open and cur.writer == writer:
            c.execute(update(VERSIONS).where(VERSIONS.c.id == cur.id)
                      .values(v_hi=max(cur.v_hi, v), size=size))
            av = int(cur.id)
        else:
            if cur is not None and cur.open:
                c.execute(update(VERSIONS).where(VERSIONS.c.id == cur.id).values(open=False))
            av = self._new_version(c, r, ino, v, writer, True, size)
        if run_id:
            self._edge(c, b, self._run_id(c, b, r, writer), av, "w", r)

    def _own_run(self, c: Connection, r: pb.ChangeRecord) -> str:
        """The run id a change record names, when the run is its writer's: a change may
        carry any run id its caller claims, and a run of another uid is not its run (the
        namenode binds each run id to one uid; access and run records are checked there)."""
        if not r.run_id:
            return ""
        row = c.execute(select(RUNS.c.uid).where(RUNS.c.key == f"run:{r.run_id}")).first()
        return r.run_id if row is None or row[0] is None or int(row[0]) == r.uid else ""

    def _dir_version(self, c: Connection, r: pb.ChangeRecord, ino: int) -> int:
        cur = self._latest(c, ino)
        if cur is not None:
            return int(cur.id)
        return self._new_version(c, r, ino, 0, "", False)

    def _version_for(self, c: Connection, r: pb.ChangeRecord, ino: int, v: int) -> Any:
        """The version row holding data version ``v`` of ``ino`` (made if missing)."""
        row = c.execute(select(VERSIONS).where(and_(VERSIONS.c.ino == ino,
                                                    VERSIONS.c.v_lo <= v))
                        .order_by(VERSIONS.c.v_lo.desc(), VERSIONS.c.id.desc())
                        .limit(1)).first()
        if row is not None and (v <= row.v_hi or row.open):
            return row
        if row is None:
            row = self._latest(c, ino)
            if row is not None and v == 0:
                return row
        new = self._new_version(c, r, ino, v, "", False)
        return c.execute(select(VERSIONS).where(VERSIONS.c.id == new)).first()

    # -- runs and edges
    def _run_id(self, c: Connection, b: _Batch, r: pb.ChangeRecord, key: str,
                info: dict[str, Any] | None = None) -> int:
        rid = self._runs.get(key)
        if rid is not None:
            return rid
        row = c.execute(select(RUNS.c.id).where(RUNS.c.key == key)).first()
        if row is not None:
            rid = int(row[0])
        else:
            vals: dict[str, Any] = dict(key=key, explicit=key.startswith("run:"), seq=r.seq,
                                        ts_ns=r.ts_ns, uid=r.uid, status="")
            if info:
                vals.update(info)
            rid = int(c.execute(insert(RUNS).values(**vals)).inserted_primary_key[0])
            b.new_runs.append(rid)
        self._runs[key] = rid
        return rid

    def _edge(self, c: Connection, b: Batch, run: int, av: int, d: str,
              r: pb.ChangeRecord) -> None:
        k = (av, d, run)
        if k in b.edges:
            return
        b.edges.add(k)
        if c.execute(select(EDGES.c.seq).where(and_(EDGES.c.av == av, EDGES.c.dir == d,
                                                    EDGES.c.run == run))).first() is None:
            c.execute(insert(EDGES).values(av=av, dir=d, run=run, seq=r.seq, ts_ns=r.ts_ns))
            b.new_edges.append(k[::-1])

    def _access(self, c: Connection, b: Batch, r: pb.ChangeRecord) -> None:
        try:
            ev = json.loads(r.extra or "{}")
        except ValueError:
            log.warning("access record %d: extra is not JSON", r.seq)
            return
        explicit = None if r.run_id else self._run_of_process(c, ev, r.uid)
        if r.run_id or explicit:
            key = f"run:{r.run_id}" if r.run_id else explicit
            info = {"host": ev.get("host", ""), "cmdline": ev.get("cmdline", ""),
                    "pid": ev.get("pid"), "status": "running"}
        else:
            key = f"proc:{ev.get('host', '')}:{ev.get('pid', 0)}:{ev.get('proc_start', 0)}"
            info = {"host": ev.get("host", ""), "cmdline": ev.get("cmdline", ""),
                    "pid": ev.get("pid"), "start_ns": ev.get("proc_start") or None,
                    "status": "process", "name": _proc_name(ev.get("cmdline", ""))}
        run = self._run_id(c, b, r, key, info)
        target, is_dir = self.target_of(c, b, r.ino)
        v = int(ev.get("version") or 0)
        if is_dir:
            av_row = c.execute(select(VERSIONS).where(VERSIONS.c.id ==
                                                      self._dir_version(c, r, target))).first()
        else:
            av_row = self._version_for(c, r, target, v)
        av = int(av_row.id)
        if ev.get("read"):
            self._edge(c, b, run, av, "r", r)
            same = av_row.writer in (f"client:{r.client_id}", key)
            if av_row.open and not same and not is_dir:
                # someone else has seen this data: later writes make a new version
                c.execute(update(VERSIONS).where(VERSIONS.c.id == av).values(open=False))
        if ev.get("wrote"):
            self._edge(c, b, run, av, "w", r)
            if not is_dir and not av_row.writer.startswith("run:"):
                c.execute(update(VERSIONS).where(VERSIONS.c.id == av).values(writer=key))

    def _run_of_process(self, c: Connection, ev: dict[str, Any], r_uid: int) -> str | None:
        """The explicit run (its key) a process was inside when it made an access that
        carries no run id: ``with metafs.run(...)`` in a program reading through a mount
        sets METAFS_RUN_ID only after the process started, so the mount cannot see it in
        the process's environment. The run is the one started by that host and pid, in
        that process (started after the process did), before the access and not ended
        before it."""
        pid, host, ts = ev.get("pid"), ev.get("host", ""), ev.get("ts_ns") or 0
        if not pid or not ts:
            return None
        row = c.execute(
            select(RUNS.c.key).where(
                RUNS.c.explicit.is_(True), RUNS.c.host == host, RUNS.c.pid == int(pid),
                RUNS.c.uid == int(ev.get("uid") or r_uid),  # only a run of the same user
                RUNS.c.start_ns >= int(ev.get("proc_start") or 0), RUNS.c.start_ns <= ts,
                (RUNS.c.end_ns.is_(None)) | (RUNS.c.end_ns >= ts))
            .order_by(RUNS.c.start_ns.desc()).limit(1)).first()
        return row[0] if row is not None else None

    def _run_record(self, c: Connection, b: _Batch, r: pb.ChangeRecord) -> None:
        try:
            body = json.loads(r.extra or "{}")
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        key = f"run:{r.run_id}"
        rid = self._run_id(c, b, r, key)
        vals: dict[str, Any] = {"explicit": True}
        for src, dst in (("name", "name"), ("host", "host"), ("user", "user_name"),
                         ("cmdline", "cmdline"), ("status", "status"), ("pid", "pid"),
                         ("start_ns", "start_ns"), ("end_ns", "end_ns"),
                         ("exit_code", "exit_code")):  # the uid is the record's
            if src in body and body[src] is not None:
                val = body[src]
                if dst == "cmdline" and isinstance(val, list):
                    val = " ".join(str(x) for x in val)
                vals[dst] = val
        if "params" in body:
            vals["params"] = json.dumps(body["params"], sort_keys=True, default=str)
        context = {k: body[k] for k in ("mlflow_run_id", "parent", "environment")
                   if body.get(k)}
        if context:
            vals["context"] = json.dumps(context, sort_keys=True)
        if body.get("event") == "end" or body.get("end_ns"):
            vals["end_seq"] = r.seq
            b.ended_runs.append(rid)
        if body.get("event") == "start":
            vals["seq"] = r.seq
            vals["ts_ns"] = r.ts_ns
        c.execute(update(RUNS).where(RUNS.c.id == rid).values(**vals))

    # ------------------------------------------------------------------ helpers
    def counts(self) -> dict[str, int]:
        """Row counts (for status output and tests)."""
        with self.reader.connect() as c:
            return {t.name.removeprefix("prov_"): int(c.execute(
                select(func.count()).select_from(t)).scalar_one()) for t in ALL_TABLES}


def _proc_name(cmdline: str) -> str:
    """A short name for a process run: its script or program."""
    parts = cmdline.split()
    if len(parts) > 2 and parts[1] in ("-c", "-m"):
        return parts[2] if parts[1] == "-m" else "python -c"
    for p in parts[1:] if parts and "python" in parts[0].rsplit("/", 1)[-1] else parts:
        if not p.startswith("-"):
            return p.rsplit("/", 1)[-1]
    return parts[0].rsplit("/", 1)[-1] if parts else "process"
