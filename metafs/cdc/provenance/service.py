"""The namenode's Provenance call: lineage built once per file system, next to the
namenode, and answered with what the caller may see.

The namenode keeps the provenance graph (:class:`~.store.ProvenanceStore`) of its own
file system: a SQLite file named by the volume uuid under its data directory (or
``prov_db_url``), built by a changelog consumer reading the namespace in this process.
Before each answer the graph is brought up to the changelog head (unless the caller asks
otherwise), so nothing is replayed anywhere else and no client ever holds another user's
lineage. Where openlineage-python is configured in the namenode's environment, the
consumer sends what it learns as OpenLineage run events (:mod:`.lineage`).

Answers go through :class:`~.visible.Visibility`: artifacts in directories the caller may
not search are left out, with everything reached only through them.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import threading
from typing import Any

from sqlalchemy import select

from ...errors import FsError
from ...posix import ROOT_INO, Cred
from ...proto import metafs_pb2 as pb
from ..consumer import Consumer
from ..source import NamespaceSource
from .lineage import LiveLineage
from .query import AsOf, ProvenanceQuery, as_of_cond
from .store import RUNS, ProvenanceStore
from .visible import Visibility

log = logging.getLogger("metafs.cdc.provenance")

ACTIONS = ("show", "upstream", "downstream", "runs", "reads", "sync", "status")
_PAGE = 500


def parse_as_of(value: str) -> AsOf:
    from . import parse_as_of as parse

    try:
        return parse(value or None)
    except ValueError as exc:
        raise FsError(errno.EINVAL, f"bad --as-of {value!r}: {exc}") from None


class ProvenanceService:
    """What ``Handlers.Provenance`` calls. The graph is opened on the first call."""

    def __init__(self, namenode: Any) -> None:
        self.ns = namenode.ns  # not the namenode: its handlers hold this service
        self.settings = namenode.settings
        self._store: ProvenanceStore | None = None
        self._consumer: Consumer | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ the graph
    def namespace(self) -> str:
        """The OpenLineage namespace of this file system: ``metafs://HOST:PORT`` of the
        namenode's listen address (its host name when the port is chosen at start)."""
        listen = str(getattr(self.settings, "listen", "") or "")
        host, _, port = listen.rpartition(":")
        if port and port != "0" and host not in ("", "0.0.0.0", "[::]"):
            return f"metafs://{listen}"
        return f"metafs://{socket.gethostname()}"

    def store(self) -> ProvenanceStore:
        with self._lock:
            if self._store is None:
                store = ProvenanceStore.for_settings(self.settings, self.ns.volume_uuid())
                store.lineage = LiveLineage.from_environment(self.namespace())
                self._consumer = Consumer(NamespaceSource(self.ns), store, name="provenance")
                self._store = store
            return self._store

    def sync(self, rebuild: bool = False) -> int:
        """Apply the changelog up to its head (from the start with ``rebuild``)."""
        self.store()
        assert self._consumer is not None
        return self._consumer.rebuild() if rebuild else self._consumer.catch_up()

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                if self._store.lineage is not None:
                    self._store.lineage.close()
                self._store.close()
                self._store = self._consumer = None

    # ------------------------------------------------------------------ the call
    def __call__(self, cred: Cred, req: pb.ProvenanceRequest) -> pb.ProvenanceReply:
        act = req.action
        if act not in ACTIONS:
            raise FsError(errno.EINVAL, f"unknown provenance action {act!r} (one of "
                          f"{', '.join(ACTIONS)})")
        if act == "sync":
            if req.rebuild and not cred.is_root:
                raise FsError(errno.EPERM, "only root may rebuild the provenance graph")
            n = self.sync(req.rebuild)
            return self._reply({"applied": n, "position": self.store().position()})
        if act == "status":
            return self._reply(self._status(cred))
        if not req.no_sync:
            self.sync()
        store = self.store()
        q = ProvenanceQuery(store)
        vis = Visibility(cred, self.ns.visible_paths)
        asof = parse_as_of(req.as_of)
        if act == "reads":
            return self._reply(self._reads(cred, q, vis, req.run_id))
        if act == "runs" and not req.path:
            return self._reply(self._all_runs(q, vis, asof, req.limit or 1000))
        if not req.path:
            raise FsError(errno.EINVAL, f"provenance {act} needs a path")
        art = self._artifact(cred, q, vis, req.path)
        if act == "show":
            return self._reply(vis.show(q.show(art, asof)))
        if act == "runs":
            return self._reply([vis.run(r) for r in q.runs(art, asof, req.limit or 1000)])
        starts = self._starts(q, art, req, asof, latest=act == "upstream" and not
                              req.all_versions)
        depth = req.depth if req.HasField("depth") else None
        walk = q.upstream if act == "upstream" else q.downstream
        return self._reply(vis.graph(walk(starts, depth, asof)).to_dict())

    def _reply(self, answer: Any) -> pb.ProvenanceReply:
        pos = self._store.position() if self._store is not None else 0
        return pb.ProvenanceReply(json=json.dumps(answer, default=str), position=pos)

    def _status(self, cred: Cred) -> dict[str, Any]:
        store = self.store()
        head, pos = self.ns.changelog_head(), store.position()
        out: dict[str, Any] = {"position": pos, "head": head, "lag": max(0, head - pos)}
        if cred.is_root:  # sizes of the whole graph tell of everyone's files
            out.update(db=store.url, **store.counts())
        return out

    def _artifact(self, cred: Cred, q: ProvenanceQuery, vis: Visibility, path: str) -> int:
        """The artifact ``path`` is recorded under, for a caller who may look it up: the
        live name as the caller resolves it, else (a deleted file) the last name the
        graph knows, in a directory the caller may search."""
        try:
            ino = int(self.ns.resolve(cred, path, ROOT_INO, True).ino)
        except FsError as err:
            if err.errno != errno.ENOENT:
                raise
            found = q.ino_for_path(path)
            if found is None or not vis.paths_visible([path])[path]:
                raise
            ino = found
        return q.artifact_of(ino)

    @staticmethod
    def _starts(q: ProvenanceQuery, art: int, req: pb.ProvenanceRequest, asof: AsOf,
                latest: bool) -> list[int]:
        vers = q.versions(art, asof)
        if not vers:
            return []
        if req.HasField("version"):
            pick = [v for v in vers if v["version"] == req.version]
            if not pick:
                raise FsError(errno.ENOENT, f"{req.path} has no version {req.version} (it "
                              f"has {len(vers)})")
            return [pick[0]["id"]]
        return [vers[-1]["id"]] if latest else [v["id"] for v in vers]

    def _all_runs(self, q: ProvenanceQuery, vis: Visibility, asof: AsOf, limit: int
                  ) -> list[dict[str, Any]]:
        """Runs, newest first: the caller's own, and others' that read or wrote something
        the caller may see."""
        if vis.everything:
            return q.runs(None, asof, limit)
        out: list[dict[str, Any]] = []
        before: int | None = None
        with q.conn() as c:
            while len(out) < limit:
                stmt = select(RUNS.c.id).where(as_of_cond(asof, RUNS))
                if before is not None:
                    stmt = stmt.where(RUNS.c.id < before)
                ids = [int(r[0]) for r in c.execute(stmt.order_by(RUNS.c.id.desc())
                                                    .limit(_PAGE))]
                if not ids:
                    break
                before = ids[-1]
                runs = q._runs(c, ids, asof)
                others = [r for r in ids if runs[r]["uid"] != vis.cred.uid]
                edges = [e for e in q.edges_of(c, others)]
                arts = q._artifacts(c, {av for _, _, av in edges}, asof)
                seen = vis.paths_visible(a["path"] for a in arts.values())
                shown = {r for r, _, av in edges if av in arts and seen[arts[av]["path"]]}
                out += [vis.run(runs[r]) for r in ids
                        if runs[r]["uid"] == vis.cred.uid or r in shown]
        return out[:limit]

    def _reads(self, cred: Cred, q: ProvenanceQuery, vis: Visibility, run_id: str
               ) -> list[dict[str, Any]]:
        """The artifact versions the caller's explicit run ``run_id`` read."""
        if not run_id:
            raise FsError(errno.EINVAL, "provenance reads needs a run id")
        with q.conn() as c:
            row = c.execute(select(RUNS.c.uid).where(RUNS.c.key == f"run:{run_id}")).first()
        if row is None:
            return []
        if not cred.is_root and row[0] != cred.uid:
            raise FsError(errno.EACCES, f"run {run_id} is not a run of uid {cred.uid}")
        reads = q.reads_of(run_id)
        seen = vis.paths_visible(a["path"] for a in reads)
        return [{**a, "path": seen[a["path"]]} for a in reads if seen[a["path"]]]


def attach(namenode: Any) -> ProvenanceService:
    """Give ``namenode`` its Provenance call."""
    svc = ProvenanceService(namenode)
    namenode.handlers.provenance = svc
    return svc
