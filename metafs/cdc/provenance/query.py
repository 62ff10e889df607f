"""Questions asked of the provenance graph, answered with recursive SQL.

``upstream`` follows artifact version <-wrote- run <-read- artifact version ... and
``downstream`` the other way, each as one ``WITH RECURSIVE`` statement over the edges
table (on SQLite and PostgreSQL alike); Python only touches the rows of the answer.
``--as-of`` keeps the edges, versions and runs first seen at or before a changelog
position (or a time).
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

from sqlalchemy import and_, literal, select, true, union
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement

from ...client.provenance import NOW as NOW, AsOf as AsOf, Graph as Graph  # the answers
from ...posix import ROOT_INO
from .classify import classify
from .store import EDGES, FILES, RUNS, VERSIONS, ProvenanceStore

_CHUNK = 5000


def as_of_cond(asof: AsOf, table: Any, seq_col: str = "seq", ts_col: str = "ts_ns"
               ) -> ColumnElement[bool]:
    """The rows of ``table`` first seen at or before ``asof``."""
    parts: list[ColumnElement[bool]] = []
    if asof.seq is not None:
        parts.append(table.c[seq_col] <= asof.seq)
    if asof.ts_ns is not None:
        parts.append(table.c[ts_col] <= asof.ts_ns)
    return and_(true(), *parts)


class ProvenanceQuery:
    """Read-only queries over a :class:`ProvenanceStore`."""

    def __init__(self, store: ProvenanceStore) -> None:
        self.store = store

    # ------------------------------------------------------------------ lookups
    def conn(self) -> Any:
        return self.store.reader.connect()

    def ino_for_path(self, path: str) -> int | None:
        """Resolve a path through the names the graph has seen (works for deleted files
        too; the live namespace is asked first by the API)."""
        parts = [p for p in path.split("/") if p]
        ino = ROOT_INO
        with self.conn() as c:
            for name in parts:
                row = c.execute(select(FILES.c.ino).where(and_(
                    FILES.c.parent == ino, FILES.c.name == name))
                    .order_by(FILES.c.deleted, FILES.c.seq.desc()).limit(1)).first()
                if row is None:
                    return None
                ino = int(row[0])
        return ino

    def versions(self, ino: int, asof: AsOf = NOW) -> list[dict[str, Any]]:
        """The versions of artifact ``ino`` (oldest first) as of ``asof``."""
        with self.conn() as c:
            rows = c.execute(select(VERSIONS).where(and_(VERSIONS.c.ino == ino,
                                                         as_of_cond(asof, VERSIONS)))
                             .order_by(VERSIONS.c.id)).all()
            return [self._version_dict(r, i + 1) for i, r in enumerate(rows)]

    def artifact_of(self, ino: int) -> int:
        """The artifact a path's inode is recorded as (its data-set directory, if any)."""
        from .store import Batch

        with self.conn() as c:
            target, _ = self.store.target_of(c, Batch(), ino)
        return target

    # ------------------------------------------------------------------ walks
    def upstream(self, avs: Sequence[int], depth: int | None = None,
                 asof: AsOf = NOW) -> Graph:
        """Runs that wrote ``avs``, what they read, who wrote that, ... (``depth`` runs
        deep; None: all the way)."""
        return self._walk(avs, "upstream", depth, asof)

    def downstream(self, avs: Sequence[int], depth: int | None = None,
                   asof: AsOf = NOW) -> Graph:
        """Runs that read ``avs``, what they wrote, who read that, ..."""
        return self._walk(avs, "downstream", depth, asof)

    def _walk(self, avs: Sequence[int], direction: str, depth: int | None,
              asof: AsOf) -> Graph:
        g = Graph(direction=direction, roots=list(avs))
        if not avs:
            return g
        a = EDGES.alias("a")  # edge into the current artifact (wrote for upstream)
        b = EDGES.alias("b")  # edge out of that run to the next artifact
        d_in, d_out = ("w", "r") if direction == "upstream" else ("r", "w")
        base_cols = [VERSIONS.c.id.label("av")]
        if depth is not None:
            base_cols.append(literal(0).label("d"))
        base = select(*base_cols).where(and_(VERSIONS.c.id.in_(list(avs)),
                                             as_of_cond(asof, VERSIONS)))
        walk = base.cte("walk", recursive=True)
        join_a = and_(a.c.av == walk.c.av, a.c.dir == d_in, as_of_cond(asof, a))
        join_b = and_(b.c.run == a.c.run, b.c.dir == d_out, b.c.av != a.c.av,
                      as_of_cond(asof, b))
        rec_cols = [b.c.av]
        if depth is not None:
            rec_cols.append(walk.c.d + 1)
        rec = select(*rec_cols).select_from(walk.join(a, join_a).join(b, join_b))
        walk = walk.union(rec.where(true() if depth is None else walk.c.d < depth))
        # the joins again, now over the finished (unioned) walk
        join_a = and_(a.c.av == walk.c.av, a.c.dir == d_in, as_of_cond(asof, a))
        limit = true() if depth is None else walk.c.d < depth
        hop1 = (select(a.c.run, a.c.dir, a.c.av).select_from(walk.join(a, join_a))
                .where(limit))
        hop2 = (select(b.c.run, b.c.dir, b.c.av)
                .select_from(walk.join(a, join_a).join(b, join_b)).where(limit))
        with self.conn() as c:
            edges = {(int(r), str(d), int(v)) for r, d, v in c.execute(union(hop1, hop2))}
            g.edges = sorted(edges)
            av_ids = set(avs) | {v for _, _, v in edges}
            run_ids = {r for r, _, _ in edges}
            g.artifacts = self._artifacts(c, av_ids, asof)
            g.runs = self._runs(c, run_ids, asof)
        return g

    # ------------------------------------------------------------------ listings
    def runs(self, ino: int | None = None, asof: AsOf = NOW, limit: int = 1000
             ) -> list[dict[str, Any]]:
        """Runs (newest first), or the runs that read or wrote artifact ``ino``, each
        with ``reads``/``writes`` version numbers when ``ino`` is given."""
        with self.conn() as c:
            if ino is None:
                rows = c.execute(select(RUNS.c.id).where(as_of_cond(asof, RUNS))
                                 .order_by(RUNS.c.id.desc()).limit(limit)).all()
                runs = self._runs(c, {int(r[0]) for r in rows}, asof)
                return [runs[r] for r in sorted(runs, reverse=True)]
            vers = {int(r.id): i + 1 for i, r in enumerate(c.execute(
                select(VERSIONS.c.id).where(VERSIONS.c.ino == ino).order_by(VERSIONS.c.id)))}
            rows = c.execute(select(EDGES.c.run, EDGES.c.dir, EDGES.c.av).where(and_(
                EDGES.c.av.in_(list(vers)), as_of_cond(asof, EDGES)))).all() if vers else []
            runs = self._runs(c, {int(r[0]) for r in rows}, asof)
            for run, d, av in rows:
                key = "reads" if d == "r" else "writes"
                runs[int(run)].setdefault(key, []).append(vers[int(av)])
            return [runs[r] for r in sorted(runs, reverse=True)][:limit]

    def show(self, ino: int, asof: AsOf = NOW) -> dict[str, Any]:
        """An artifact: what it is, its versions, and who wrote and read each."""
        with self.conn() as c:
            info = self._files(c, {ino}).get(ino)
            vrows = c.execute(select(VERSIONS).where(and_(VERSIONS.c.ino == ino,
                                                          as_of_cond(asof, VERSIONS)))
                              .order_by(VERSIONS.c.id)).all()
            versions = [self._version_dict(r, i + 1) for i, r in enumerate(vrows)]
            ids = [v["id"] for v in versions]
            rows = c.execute(select(EDGES.c.run, EDGES.c.dir, EDGES.c.av).where(and_(
                EDGES.c.av.in_(ids), as_of_cond(asof, EDGES)))).all() if ids else []
            runs = self._runs(c, {int(r[0]) for r in rows}, asof)
        by_id = {v["id"]: v for v in versions}
        for v in versions:
            v["written_by"], v["read_by"] = [], []
        for run, d, av in rows:
            by_id[int(av)]["written_by" if d == "w" else "read_by"].append(runs[int(run)])
        out = {"ino": ino, "path": self._paths([ino]).get(ino, f"<ino {ino}>"),
               "kind": self._kind(info), "is_dir": bool(info and info["is_dir"]),
               "deleted": bool(info and info["deleted"]), "versions": versions}
        return out

    def edges_of(self, c: Connection, runs: Iterable[int]) -> list[tuple[int, str, int]]:
        """Every (run, 'r'|'w', artifact version) edge of these runs."""
        ids = list(set(runs))
        out: list[tuple[int, str, int]] = []
        for i in range(0, len(ids), _CHUNK):
            out += [(int(r), str(d), int(v)) for r, d, v in c.execute(
                select(EDGES.c.run, EDGES.c.dir, EDGES.c.av)
                .where(EDGES.c.run.in_(ids[i:i + _CHUNK])))]
        return out

    def reads_of(self, run_id: str) -> list[dict[str, Any]]:
        """The artifact versions an explicit run read (its metafs run id)."""
        with self.conn() as c:
            row = c.execute(select(RUNS.c.id).where(RUNS.c.key == f"run:{run_id}")).first()
            if row is None:
                return []
            avs = {av for _, d, av in self.edges_of(c, [int(row[0])]) if d == "r"}
            arts = self._artifacts(c, avs, NOW)
        return [arts[a] for a in sorted(arts)]

    # ------------------------------------------------------------------ details
    def _version_dict(self, r: Any, ordinal: int) -> dict[str, Any]:
        return {"id": int(r.id), "ino": int(r.ino), "version": ordinal,
                "data_versions": [int(r.v_lo), int(r.v_hi)], "size": int(r.size),
                "seq": int(r.seq), "ts_ns": int(r.ts_ns)}

    def _kind(self, f: dict[str, Any] | None) -> str:
        if f is None:
            return "other"
        return classify(f["name"], f["is_dir"], f["kind_x"], f["data_children"],
                        self.store.dataset_dir_min)

    def _files(self, c: Connection, inos: Iterable[int]) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        todo = list(set(inos))
        for i in range(0, len(todo), _CHUNK):
            for r in c.execute(select(FILES).where(FILES.c.ino.in_(todo[i:i + _CHUNK]))):
                out[int(r.ino)] = dict(r._mapping)
        return out

    def _paths(self, inos: Iterable[int]) -> dict[int, str]:
        with self.conn() as c:
            return self._paths_c(c, inos)

    def _paths_c(self, c: Connection, inos: Iterable[int]) -> dict[int, str]:
        names: dict[int, tuple[int, str]] = {}
        want = set(inos)
        todo = set(want)
        while todo:
            got = self._files(c, todo)
            todo = set()
            for ino, f in got.items():
                names[ino] = (int(f["parent"]), f["name"])
                p = int(f["parent"])
                if p != ROOT_INO and p != ino and p not in names:
                    todo.add(p)
        out: dict[int, str] = {}
        for ino in want:
            if ino == ROOT_INO:
                out[ino] = "/"
                continue
            parts: list[str] = []
            cur, hops = ino, 0
            while cur != ROOT_INO and cur in names and hops < 256:
                parent, name = names[cur]
                parts.append(name)
                cur, hops = parent, hops + 1
            out[ino] = "/" + "/".join(reversed(parts)) if cur == ROOT_INO else f"<ino {ino}>"
        return out

    def _artifacts(self, c: Connection, av_ids: Iterable[int], asof: AsOf
                   ) -> dict[int, dict[str, Any]]:
        ids = list(set(av_ids))
        rows = []
        for i in range(0, len(ids), _CHUNK):
            rows.extend(c.execute(select(VERSIONS).where(VERSIONS.c.id.in_(ids[i:i + _CHUNK]))))
        inos = {int(r.ino) for r in rows}
        files = self._files(c, inos)
        paths = self._paths_c(c, inos)
        ordinals: dict[int, int] = {}
        inol = list(inos)
        for i in range(0, len(inol), _CHUNK):
            last: dict[int, int] = {}
            for vid, vino in c.execute(select(VERSIONS.c.id, VERSIONS.c.ino)
                                       .where(VERSIONS.c.ino.in_(inol[i:i + _CHUNK]))
                                       .order_by(VERSIONS.c.id)):
                last[int(vino)] = last.get(int(vino), 0) + 1
                ordinals[int(vid)] = last[int(vino)]
        out: dict[int, dict[str, Any]] = {}
        for r in rows:
            f = files.get(int(r.ino))
            d = self._version_dict(r, ordinals.get(int(r.id), 1))
            d.update(path=paths.get(int(r.ino), f"<ino {r.ino}>"), kind=self._kind(f),
                     is_dir=bool(f and f["is_dir"]), deleted=bool(f and f["deleted"]))
            out[int(r.id)] = d
        return out

    def _runs(self, c: Connection, run_ids: Iterable[int], asof: AsOf
              ) -> dict[int, dict[str, Any]]:
        ids = list(set(run_ids))
        out: dict[int, dict[str, Any]] = {}
        for i in range(0, len(ids), _CHUNK):
            for r in c.execute(select(RUNS).where(RUNS.c.id.in_(ids[i:i + _CHUNK]))):
                out[int(r.id)] = run_dict(r, asof)
        return out


def run_dict(r: Any, asof: AsOf = NOW) -> dict[str, Any]:
    """A run row as a plain dict (its end hidden when it is after ``asof``)."""
    ended = r.end_seq is not None and asof.includes(int(r.end_seq), r.end_ns)
    key = str(r.key)
    try:
        params = json.loads(r.params or "{}")
    except ValueError:
        params = {}
    try:
        context = json.loads(r.context or "{}")
    except ValueError:
        context = {}
    return {"id": int(r.id), "run_id": key.split(":", 1)[1] if key.startswith("run:") else key,
            "explicit": bool(r.explicit), "name": r.name or "", "params": params,
            "host": r.host or "", "user": r.user_name or "", "uid": r.uid, "pid": r.pid,
            "cmdline": r.cmdline or "",
            "status": (r.status or "") if ended or not r.explicit else "running",
            "exit_code": r.exit_code if ended else None,
            "start_ns": r.start_ns, "end_ns": r.end_ns if ended else None,
            "seq": int(r.seq), "mlflow_run_id": context.get("mlflow_run_id"),
            "parent": context.get("parent"), "environment": context.get("environment", {})}
