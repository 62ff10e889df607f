"""Projects: sensitive data sets sandboxed per team, shared only on purpose.

A project is the directory ``/Projects/NAME`` (with ``datasets/``, ``models/`` and
``runs/``) and a group of its own. Every member has a role (``data_owner`` may manage
members and share; ``data_scientist`` reads and writes inside) and, in each project, a uid
of its own: a person is a different identity in each project. Credentials are issued per
(project, user); the namenode maps one to the member's project uid, the project's group and
the groups of what is shared into the project, and marks the caller's :class:`Cred` with
the project.

How the boundary holds:

- Reading: project directories are mode 2770 with the project's group, so another
  project's identities cannot search them (plain POSIX; the refusal names the boundary).
- Writing: a project identity may add entries to, move entries into, and write to only
  what carries its project's group or the group of a data set shared into it read-write
  (a check inside every write transaction, before it commits). World-writable places
  outside the project are closed to it, so nothing of a project is copied out of it.
- Sharing: a data set directory gets a share group (its subtree is given that group) and
  appears in the other project as ``/Projects/B/datasets/A::NAME``: a second entry naming
  the same directory inode, so a rename or a write in A is seen at once. The receiving
  project's identities get the share group, read-only (``Cred.ro_groups``) or read-write.
  Share entries, shared data sets and the project layout cannot be removed or renamed
  except by ``unshare``/``delete``.

- Across mounts: a person holding credentials of A and B may mount both on one machine,
  and a program (``cp``) may read through A's mount and write through B's, each mount seeing
  only its side. So every request carries the calling process's key (boot id, pid, start
  time, which its mount derives from the kernel's pid), a read open of a project's file is
  remembered for that process (``project_reads``: the file's group), and a write (open for
  writing, create, write, truncate, rename, link, ...) by a process that read a group the
  writer's project may not read is refused. The process's lifetime is the scope: its key
  never names another process; rows go after ``FLOW_KEEP``.

A *gateway* is a service identity a data owner authorizes for a project: a shared mount
with its credential claims, per request, the local caller's uid in the project
(``Caller.project``), and the namenode maps it to the project identity of the member known
by that uid (the identity table's people of that uid), or refuses it (EACCES).

Every create, delete, add, remove, share, unshare and gateway change is an ``OP_PROJECT``
changelog record (``extra``: JSON naming the action).
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import stat
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy import and_, bindparam, delete, insert, select, text, update
from sqlalchemy.engine import Connection

from ..errors import FsError
from ..posix import ROOT_INO, Cred
from ..proto import metafs_pb2 as pb
from . import schema
from .rows import Tx, dict_attr, to_attr
from .sql import Prepared

if TYPE_CHECKING:
    from .namespace import Namespace

P, M, CR, SH, PR, GW = (schema.projects, schema.project_members,
                        schema.project_credentials, schema.project_shares,
                        schema.project_reads, schema.project_gateways)
ROLES = ("data_owner", "data_scientist")
LAYOUT = ("datasets", "models", "runs")
SHAREABLE = ("datasets", "models")
ROOT_DIR = "Projects"
ID_BASE = 2_000_000  # project gids, member uids and share gids are ID_BASE + a counter
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_CREATES = {pb.OP_CREATE, pb.OP_MKDIR, pb.OP_MKNOD, pb.OP_SYMLINK, pb.OP_LINK}
_WRITES = {pb.OP_WRITE, pb.OP_SETATTR, pb.OP_SETXATTR, pb.OP_REMOVEXATTR}
_REMOVES = {pb.OP_UNLINK, pb.OP_RMDIR, pb.OP_RENAME}
_CARRIES = _CREATES | _WRITES | {pb.OP_RENAME}  # what may carry data a process read
_KEY_MAX = PR.c.process.type.length  # type: ignore[attr-defined]
_Q_READ_GIDS = Prepared(select(PR.c.gid).where(PR.c.process == bindparam("process"),
                                               PR.c.read_ns >= bindparam("since")))
_Q_NEXT_ID = Prepared(update(schema.counters).where(schema.counters.c.name == "project_id")
                      .values(value=schema.counters.c.value + 1)
                      .returning(schema.counters.c.value))
_INTERNAL: ContextVar[bool] = ContextVar("metafs_projects_internal", default=False)
_SUBTREE = text("""
WITH RECURSIVE sub(ino) AS (
    SELECT CAST(:root AS BIGINT)
    UNION
    SELECT d.ino FROM dentries d JOIN sub ON d.parent = sub.ino
)
UPDATE inodes SET gid = :gid WHERE id IN (SELECT ino FROM sub)
""")


_FINGERPRINT = re.compile(r"^[0-9A-Fa-f]{64}$")
_CERT_KEY = "cert:"


def _cert_key(fingerprint: str) -> str:
    """How a project certificate is kept among the credentials' digests: ``cert:`` and
    the start of its fingerprint (236 bits, to fit the column). A token's digest is hex
    only, so a token never finds a certificate's row, nor a certificate a token's."""
    key = _CERT_KEY + fingerprint.lower()
    return key[:64]


def _check_name(name: str, what: str = "project") -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise FsError(errno.EINVAL, f"bad {what} name {name!r}: use letters, digits, '_', "
                      "'.' and '-' (at most 64, not starting with a punctuation mark)")


@dataclass
class State:
    """Every project fact the checks need, read in one snapshot (the tables are small)."""

    projects: dict[str, Any] = field(default_factory=dict)       # name -> row
    members: dict[tuple[str, str], Any] = field(default_factory=dict)  # (project, user)
    creds: dict[str, tuple[str, str]] = field(default_factory=dict)  # digest -> (p, user)
    shares: list[Any] = field(default_factory=list)
    gateways: set[tuple[str, str]] = field(default_factory=set)  # (project, service)
    entries: set[tuple[int, str]] = field(default_factory=set)   # share entries
    sources: dict[int, str] = field(default_factory=dict)        # shared ino -> project
    protected: set[int] = field(default_factory=set)             # project dirs (no rename)
    roots: set[int] = field(default_factory=set)                 # /Projects/NAME inodes
    aliases: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # see below
    owners: dict[int, str] = field(default_factory=dict)  # project or share gid -> project

    def aliases_for(self, cred: Cred) -> list[tuple[str, str]]:
        """(data set path in its project, share entry path) of the shares whose entries
        ``cred`` may use: those into its project (all of them for an identity working in
        no project: its permissions decide)."""
        if cred.project:
            return self.aliases.get(cred.project, [])
        return [a for project in sorted(self.aliases) for a in self.aliases[project]]

    def groups(self, project: str) -> tuple[frozenset[int], frozenset[int]]:
        """(all groups, read-only groups) of an identity working in ``project``."""
        rw = {self.projects[project].gid}
        ro: set[int] = set()
        for s in self.shares:
            if s.project == project:
                rw.add(s.gid)
            elif s.to_project == project:
                (ro if s.read_only else rw).add(s.gid)
        ro -= rw
        return frozenset(rw | ro), frozenset(ro)


def _share_aliases(conn: Connection, st: State, layout: dict[int, tuple[int, str]]
                   ) -> dict[str, list[tuple[str, str]]]:
    """Per receiving project, (path of the shared data set in its project, path of its
    share entry): the data set's other name, under which the receiving project's
    identities find what is in it (search and provenance answer by these paths)."""
    d = schema.dentries
    name_of = {p.ino: name for name, p in st.projects.items()}
    out: dict[str, list[tuple[str, str]]] = {}
    if not st.shares:
        return out
    for r in conn.execute(select(d.c.ino, d.c.parent, d.c.name).where(
            d.c.ino.in_({s.ino for s in st.shares}))).all():
        if (r.parent, r.name) in st.entries or r.parent not in layout:
            continue  # a share entry, or a data set moved below the layout (no alias)
        root, kind = layout[r.parent]
        src = f"/{ROOT_DIR}/{name_of[root]}/{kind}/{r.name}"
        for s in st.shares:
            if s.ino == r.ino:
                out.setdefault(s.to_project, []).append(
                    (src, f"/{ROOT_DIR}/{s.to_project}/datasets/{s.entry_name}"))
    return out


class Projects:
    """Project administration and the project boundary check of one namespace."""

    TTL = 1.0  # seconds another namenode's change may take to be seen here
    # How long a process's reads are remembered: its lifetime, as far as the namenode can
    # tell (it does not see processes end; a key never names another process).
    FLOW_KEEP = 7 * 24 * 3600 * 1_000_000_000
    _MEMO = 65536  # (process, group) reads this namenode knows are recorded

    def __init__(self, ns: "Namespace") -> None:
        self.ns = ns
        self._lock = threading.Lock()
        self._state: State | None = None
        self._read_at = 0.0
        self._recorded: set[tuple[str, int]] = set()
        self._purged_ns = 0
        ns.precommit_hooks.append(self.check)
        ns.precommit_idle.append(lambda: not self.state().projects)
        ns.path_aliases.append(lambda cred: self.state().aliases_for(cred))
        ns.open_checks.append(self.check_open)
        ns.read_hooks.append(self.record_read)

    # ------------------------------------------------------------------ state
    def state(self) -> State:
        with self._lock:
            if self._state is not None and time.monotonic() - self._read_at < self.TTL:
                return self._state
        st = self.ns.query(self._load)
        with self._lock:
            self._state, self._read_at = st, time.monotonic()
        return st

    def _changed(self) -> None:
        with self._lock:
            self._state = None

    @staticmethod
    def _load(conn: Connection) -> State:
        st = State()
        for r in conn.execute(select(P)).all():
            st.projects[r.name] = r
            st.roots.add(r.ino)
            st.owners[r.gid] = r.name
        for r in conn.execute(select(M)).all():
            st.members[(r.project, r.user)] = r
        for r in conn.execute(select(CR)).all():
            st.creds[r.token_sha256] = (r.project, r.user)
        st.shares = list(conn.execute(select(SH)).all())
        st.gateways = {(r.project, r.service) for r in conn.execute(select(GW)).all()}
        for s in st.shares:
            st.entries.add((s.entry_parent, s.entry_name))
            st.sources[s.ino] = s.project
            st.owners[s.gid] = s.project
        if st.roots:
            d = schema.dentries
            layout = {r.ino: (r.parent, r.name) for r in conn.execute(
                select(d.c.ino, d.c.parent, d.c.name).where(d.c.parent.in_(st.roots),
                                                            d.c.name.in_(LAYOUT))).all()}
            st.protected = set(st.roots) | set(layout)
            st.aliases = _share_aliases(conn, st, layout)
            top = conn.execute(select(schema.dentries.c.ino).where(
                schema.dentries.c.parent == ROOT_INO,
                schema.dentries.c.name == ROOT_DIR)).first()
            if top is not None:
                st.protected.add(top.ino)
        return st

    def identity_for(self, digest: str, kind: str = "token") -> dict[str, Any] | None:
        """The identity a project credential (by its token's digest) stands for."""
        st = self.state()
        found = st.creds.get(digest)
        if found is None:
            return None
        project, user = found
        m = st.members.get((project, user))
        if m is None or project not in st.projects:
            return None  # a removed member's credential is dead
        groups, ro = st.groups(project)
        return dict(name=f"{user}@{project}", kind=kind, uid=m.uid,
                    gid=st.projects[project].gid, groups=groups, trusted=False,
                    project=project, ro_groups=ro)

    def identity_for_cert(self, common_name: str, fingerprint: str) -> dict[str, Any] | None:
        """The identity a registered project certificate stands for: its fingerprint is
        registered for ``user@project``, which is also its common name."""
        ident = self.identity_for(_cert_key(fingerprint), "cert")
        return ident if ident is not None and ident["name"] == common_name else None

    def identity_for_gateway(self, service: str, project: str, uid: int,
                             names: frozenset[str]) -> dict[str, Any]:
        """The project identity a gateway's claim of local ``uid`` stands for: that of the
        member of ``project`` among ``names`` (the people the namenode knows by that uid).
        EACCES unless ``service`` is the project's gateway and ``uid`` one member's."""
        st = self.state()
        if (project, service) not in st.gateways or project not in st.projects:
            raise FsError(errno.EACCES, f"{service!r} is not a gateway of project "
                          f"{project!r} (a data owner authorizes one: metafs project "
                          f"gateway {project} --service {service})")
        members = sorted(n for n in names if (project, n) in st.members)
        if len(members) != 1:
            why = "is not a member's" if not members else \
                f"is that of several members ({', '.join(members)})"
            raise FsError(errno.EACCES, f"permission denied: local uid {uid} {why} in "
                          f"project {project!r}; its gateway acts only for its members")
        groups, ro = st.groups(project)
        return dict(uid=st.members[(project, members[0])].uid,
                    gid=st.projects[project].gid, groups=groups, ro_groups=ro)

    # ------------------------------------------------------------------ the boundary
    def check(self, tx: Tx) -> None:
        """Refuse, before commit, a transaction that crosses a project boundary, or that
        removes or renames a share entry, a shared data set or the project layout."""
        if _INTERNAL.get() or not tx.records:
            return
        st = self.state()
        if not st.projects:
            return
        cred = tx.cred
        rows: dict[int, Any] = {}

        def gid_of(ino: int) -> int | None:
            if ino not in rows:
                rows[ino] = self.ns.inode_row(tx.conn, ino)
            r = rows[ino]
            return None if r is None else int(r.gid)

        if cred.process and any(rec.op in _CARRIES for rec in tx.records):
            self._check_flow(tx.conn, st, cred)
        writable: frozenset[int] | None = None
        if cred.project:
            groups = st.groups(cred.project)[0] if cred.project in st.projects else frozenset()
            writable = groups - cred.ro_groups
        for rec in tx.records:
            if rec.op in _REMOVES:
                self._check_remove(st, rec)
            if writable is None:
                continue
            if rec.op in _CREATES or rec.op == pb.OP_RENAME:
                g = gid_of(rec.parent)
                where = "add entries to this directory"
            elif rec.op in _WRITES:
                g = gid_of(rec.ino)
                where = "change this file"
            else:
                continue
            if g is not None and g not in writable:
                raise FsError(errno.EACCES, f"permission denied to {where}: it is outside "
                              f"project {cred.project!r} (project boundary: data leaves a "
                              "project only when its data owner shares it)", rec.name)

    # ------------------------------------------------------------------ across mounts
    def record_read(self, cred: Cred, attr: pb.Attr) -> None:
        """Remember that ``cred``'s process opened a project's file for reading (once per
        process and group on each namenode; a table, so every namenode sees it)."""
        if not (cred.process and cred.project) or not stat.S_ISREG(attr.mode):
            return
        gid = int(attr.gid)
        if gid not in self.state().owners or (cred.process, gid) in self._recorded:
            return
        now = time.time_ns()
        purge = now - self._purged_ns > 3600 * 1_000_000_000

        def write(conn: Connection) -> None:
            conn.execute(self.ns.engine.insert_if_absent(
                PR, dict(process=cred.process, gid=gid, read_ns=now), [PR.c.process, PR.c.gid]))
            if purge:
                conn.execute(delete(PR).where(PR.c.read_ns < now - self.FLOW_KEEP))

        self.ns.engine.write(write)
        with self._lock:
            if len(self._recorded) >= self._MEMO:
                self._recorded.clear()
            self._recorded.add((cred.process, gid))
            if purge:
                self._purged_ns = now

    def check_open(self, cred: Cred, flags: int) -> None:
        """Refuse an open for writing by a process that read what the writer may not (and
        a process key the table cannot hold)."""
        if len(cred.process) > _KEY_MAX:
            raise FsError(errno.EINVAL, f"a process key is at most {_KEY_MAX} characters "
                          f"(boot id, pid and start time), not {len(cred.process)}")
        if cred.process and (flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC):
            st = self.state()
            if st.projects:
                self.ns.engine.read_statement(lambda conn: self._check_flow(conn, st, cred))

    def _check_flow(self, conn: Connection, st: State, cred: Cred) -> None:
        """EACCES when ``cred``'s process read a project's data that ``cred``'s project
        (or, for an identity in no project, no one outside the project) may not read."""
        mine = st.groups(cred.project)[0] if cred.project in st.projects else frozenset()
        since = time.time_ns() - self.FLOW_KEEP
        for row in _Q_READ_GIDS.all(conn, process=cred.process, since=since):
            gid = int(row.gid)
            source = st.owners.get(gid)
            if source is None or gid in mine:
                continue
            into = (f"into project {cred.project!r}" if cred.project
                    else "out of the project")
            raise FsError(errno.EACCES, f"permission denied: this process read data of "
                          f"project {source!r}; copying it {into} crosses the project "
                          "boundary (data leaves a project only when its data owner "
                          "shares it)")

    @staticmethod
    def _check_remove(st: State, rec: pb.ChangeRecord) -> None:
        names = [(rec.parent, rec.name)]
        if rec.op == pb.OP_RENAME:
            names.append((rec.old_parent, rec.old_name))
        if any(n in st.entries for n in names):
            raise FsError(errno.EPERM, "this entry is a share from another project: remove "
                          "it with `metafs project unshare`", rec.name)
        if rec.op != pb.OP_UNLINK and rec.ino in st.protected:
            raise FsError(errno.EPERM, "the project layout (/Projects, /Projects/NAME and "
                          "its datasets, models, runs) is kept while the project exists",
                          rec.name)
        if rec.op == pb.OP_RMDIR and rec.ino in st.sources:
            raise FsError(errno.EBUSY, "this data set is shared with another project: "
                          "unshare it first", rec.name)

    # ------------------------------------------------------------------ who may
    def _member(self, st: State, project: str, user: str) -> Any:
        m = st.members.get((project, user))
        if m is None:
            raise FsError(errno.ENOENT, f"{user!r} is not a member of project {project!r}")
        return m

    def _project(self, st: State, name: str) -> Any:
        _check_name(name)
        p = st.projects.get(name)
        if p is None:
            raise FsError(errno.ENOENT, f"no project {name!r}")
        return p

    def _require_owner(self, st: State, who: "Caller", project: str) -> None:
        if who.admin:
            return
        if who.project and who.project != project:
            raise FsError(errno.EACCES, f"an identity working in project {who.project!r} "
                          f"cannot manage project {project!r} (project boundary)")
        m = st.members.get((project, who.user))
        if m is None or m.role != "data_owner":
            raise FsError(errno.EACCES, f"only a data owner of project {project!r} may do "
                          "this")

    # ------------------------------------------------------------------ transactions
    def _write(self, fn: Callable[[Tx], Any]) -> Any:
        token = _INTERNAL.set(True)
        try:
            return self.ns.mutate(Cred(), fn)
        finally:
            _INTERNAL.reset(token)
            self._changed()

    def _record(self, tx: Tx, ino: int, **what: Any) -> None:
        tx.log(pb.OP_PROJECT, ino, extra=json.dumps(what, sort_keys=True))

    def _next_id(self, conn: Connection) -> int:
        return ID_BASE + int(_Q_NEXT_ID.scalar(conn))

    def _mkdir(self, tx: Tx, parent: int, name: str, uid: int, gid: int, mode: int) -> int:
        pdir = self.ns._check_dir_for_entry(tx, parent, name)
        row = self.ns._new_inode(tx, pdir, stat.S_IFDIR | mode)
        row.update(uid=uid, gid=gid, mode=stat.S_IFDIR | mode)
        self.ns.engine.add_entry(tx.conn, parent, name, row, nlink_delta=1)
        tx.log(pb.OP_MKDIR, row["id"], parent=parent, name=name, attr=dict_attr(row))
        return int(row["id"])

    # ------------------------------------------------------------------ actions
    def create(self, who: "Caller", name: str, owner: str = "") -> dict[str, Any]:
        _check_name(name)
        if who.project:
            raise FsError(errno.EACCES, "an identity working in a project cannot create "
                          "projects; use your own identity")
        owner = owner if (owner and who.admin) else who.user
        _check_name(owner, "user")

        def fn(tx: Tx) -> dict[str, Any]:
            c = tx.conn
            if c.execute(select(P.c.name).where(P.c.name == name)).first() is not None:
                raise FsError(errno.EEXIST, f"project {name!r} exists")
            top = self.ns._lookup(c, ROOT_INO, ROOT_DIR)
            top_ino = top.id if top is not None else \
                self._mkdir(tx, ROOT_INO, ROOT_DIR, 0, 0, 0o755)
            gid, uid = self._next_id(c), self._next_id(c)
            ino = self._mkdir(tx, top_ino, name, uid, gid, 0o2770)
            for d in LAYOUT:
                self._mkdir(tx, ino, d, uid, gid, 0o2770)
            c.execute(insert(P).values(name=name, gid=gid, ino=ino, created_ns=tx.now))
            c.execute(insert(M).values(project=name, user=owner, role="data_owner", uid=uid))
            self._record(tx, ino, action="create", project=name, gid=gid, owner=owner)
            return {"name": name, "gid": gid, "path": f"/{ROOT_DIR}/{name}", "owner": owner,
                    "owner_uid": uid}

        return self._write(fn)

    def delete(self, who: "Caller", name: str) -> None:
        st = self.state()
        p = self._project(st, name)
        self._require_owner(st, who, name)

        def fn(tx: Tx) -> None:
            c = tx.conn
            if c.execute(select(SH.c.ino).where((SH.c.project == name)
                                                | (SH.c.to_project == name))).first():
                raise FsError(errno.EBUSY, f"project {name!r} has shares: unshare them first")
            d = schema.dentries
            for sub in LAYOUT:
                row = self.ns._lookup(c, p.ino, sub)
                if row is None:
                    continue
                if c.execute(select(d.c.name).where(d.c.parent == row.id).limit(1)).first():
                    raise FsError(errno.ENOTEMPTY, f"/{ROOT_DIR}/{name}/{sub} is not empty: "
                                  "remove the project's files first")
            for name_ in c.execute(select(d.c.name).where(d.c.parent == p.ino)).scalars():
                if name_ not in LAYOUT:
                    raise FsError(errno.ENOTEMPTY, f"/{ROOT_DIR}/{name} holds {name_!r}: "
                                  "remove the project's files first")
            top = self.ns._parent_of_dir(c, p.ino)
            for sub in LAYOUT:
                self._rmdir(tx, p.ino, sub)
            self._rmdir(tx, top, name)
            c.execute(delete(CR).where(CR.c.project == name))
            c.execute(delete(GW).where(GW.c.project == name))
            c.execute(delete(M).where(M.c.project == name))
            c.execute(delete(P).where(P.c.name == name))
            self._record(tx, p.ino, action="delete", project=name)

        self._write(fn)

    def _rmdir(self, tx: Tx, parent: int, name: str) -> None:
        row = self.ns._lookup(tx.conn, parent, name)
        if row is None:
            return
        tx.conn.execute(delete(schema.dentries).where(schema.dentries.c.parent == parent,
                                                      schema.dentries.c.name == name))
        self.ns._touch_dir(tx, parent, nlink_delta=-1)
        self.ns._drop_link(tx, row)
        tx.log(pb.OP_RMDIR, row.id, parent=parent, name=name)

    def add(self, who: "Caller", project: str, user: str, role: str) -> dict[str, Any]:
        st = self.state()
        self._project(st, project)
        _check_name(user, "user")
        if role not in ROLES:
            raise FsError(errno.EINVAL, f"role must be one of {', '.join(ROLES)}, not {role!r}")
        self._require_owner(st, who, project)

        def fn(tx: Tx) -> dict[str, Any]:
            c = tx.conn
            have = c.execute(select(M).where(M.c.project == project, M.c.user == user)).first()
            if have is not None:
                c.execute(update(M).where(M.c.project == project, M.c.user == user)
                          .values(role=role))
                uid = have.uid
            else:
                uid = self._next_id(c)
                c.execute(insert(M).values(project=project, user=user, role=role, uid=uid))
            self._record(tx, 0, action="add", project=project, user=user, role=role)
            return {"project": project, "user": user, "role": role, "uid": uid}

        return self._write(fn)

    def remove(self, who: "Caller", project: str, user: str) -> None:
        st = self.state()
        self._project(st, project)
        self._member(st, project, user)
        self._require_owner(st, who, project)
        owners = [u for (p, u), m in st.members.items()
                  if p == project and m.role == "data_owner"]
        if owners == [user]:
            raise FsError(errno.EBUSY, f"{user!r} is the last data owner of {project!r}")

        def fn(tx: Tx) -> None:
            tx.conn.execute(delete(CR).where(CR.c.project == project, CR.c.user == user))
            tx.conn.execute(delete(M).where(M.c.project == project, M.c.user == user))
            self._record(tx, 0, action="remove", project=project, user=user)

        self._write(fn)

    def credential(self, who: "Caller", project: str, user: str, cert_sha256: str = ""
                   ) -> dict[str, Any]:
        """A new token for ``user`` working in ``project`` (shown once, stored as digest);
        or, given ``cert_sha256``, that client certificate (common name ``user@project``,
        signed by the cluster's CA where its key is kept) registered as one."""
        import hashlib

        st = self.state()
        p = self._project(st, project)
        m = self._member(st, project, user)
        if not (who.user == user and not who.project):
            self._require_owner(st, who, project)
        token = ""
        if cert_sha256:
            if not isinstance(cert_sha256, str) or not _FINGERPRINT.match(cert_sha256):
                raise FsError(errno.EINVAL, "cert_sha256 is a certificate's SHA-256 "
                              "fingerprint: 64 hexadecimal digits")
            key = _cert_key(cert_sha256)
        else:
            token = secrets.token_urlsafe(32)
            key = hashlib.sha256(token.encode()).hexdigest()

        def fn(tx: Tx) -> None:
            if tx.conn.execute(select(CR.c.project).where(CR.c.token_sha256 == key)).first():
                raise FsError(errno.EEXIST, "this certificate is registered already")
            tx.conn.execute(insert(CR).values(token_sha256=key, project=project, user=user,
                                              created_ns=tx.now))

        self._write(fn)
        out = {"project": project, "user": user, "uid": m.uid, "gid": p.gid,
               "name": f"{user}@{project}"}
        return {**out, "cert_sha256": cert_sha256.lower()} if cert_sha256 else \
            {**out, "token": token}

    def gateway(self, who: "Caller", project: str, service: str, remove: bool = False
                ) -> dict[str, Any]:
        """Authorize the service identity ``service`` (one marked trusted in the
        namenode's identity table) as ``project``'s gateway, or no longer (``remove``): a
        shared mount of the project with its credential acts for each local user who is
        a member, as that member's project identity, and for no one else."""
        st = self.state()
        self._project(st, project)
        _check_name(service, "service")
        self._require_owner(st, who, project)
        if remove and (project, service) not in st.gateways:
            raise FsError(errno.ENOENT, f"{service!r} is not a gateway of project {project!r}")

        def fn(tx: Tx) -> None:
            c = tx.conn
            c.execute(delete(GW).where(GW.c.project == project, GW.c.service == service))
            if not remove:
                c.execute(insert(GW).values(project=project, service=service,
                                            created_ns=tx.now))
            self._record(tx, 0, action="ungateway" if remove else "gateway",
                         project=project, service=service)

        self._write(fn)
        return {"project": project, "service": service, "gateway": not remove}

    def share(self, who: "Caller", path: str, to: str, read_only: bool) -> dict[str, Any]:
        parts = [x for x in path.split("/") if x]
        if len(parts) != 4 or parts[0] != ROOT_DIR or parts[2] not in SHAREABLE:
            raise FsError(errno.EINVAL, f"{path!r} is not a data set: share "
                          f"/{ROOT_DIR}/PROJECT/datasets/NAME (or models/NAME)")
        _, src, kind, name = parts
        st = self.state()
        p = self._project(st, src)
        q = self._project(st, to)
        if src == to:
            raise FsError(errno.EINVAL, "a project cannot share with itself")
        if "::" in name:
            raise FsError(errno.EINVAL, "a share cannot be shared on")
        self._require_owner(st, who, src)
        entry = f"{src}::{name}"

        def fn(tx: Tx) -> dict[str, Any]:
            c = tx.conn
            kdir = self.ns._lookup(c, p.ino, kind)
            row = self.ns._lookup(c, kdir.id, name) if kdir is not None else None
            if row is None:
                raise FsError(errno.ENOENT, f"no data set {path!r}")
            if not stat.S_ISDIR(row.mode):
                raise FsError(errno.ENOTDIR, f"{path!r} is not a directory; share data set "
                              "directories")
            qdir = self.ns._lookup(c, q.ino, "datasets")
            if c.execute(select(SH.c.ino).where(SH.c.ino == row.id, SH.c.to_project == to)
                         ).first() is not None:
                raise FsError(errno.EEXIST, f"{path!r} is already shared with {to!r}")
            self.ns._check_dir_for_entry(tx, qdir.id, entry)
            gid = c.execute(select(SH.c.gid).where(SH.c.ino == row.id)).scalar()
            if gid is None:
                gid = self._next_id(c)
                c.execute(_SUBTREE, {"root": row.id, "gid": gid})
            self.ns._link_entry(tx, qdir.id, entry, row.id, row.mode)
            self.ns._touch_dir(tx, qdir.id)
            c.execute(insert(SH).values(ino=row.id, to_project=to, project=src, gid=gid,
                                        read_only=int(read_only), entry_parent=qdir.id,
                                        entry_name=entry))
            tx.log(pb.OP_LINK, row.id, parent=qdir.id, name=entry,
                   attr=to_attr(self.ns.inode_row(c, row.id)))  # as a link's record has
            self._record(tx, row.id, action="share", project=src, to=to, path=path,
                         read_only=read_only, entry=f"/{ROOT_DIR}/{to}/datasets/{entry}")
            return {"path": path, "to": to, "read_only": read_only,
                    "entry": f"/{ROOT_DIR}/{to}/datasets/{entry}", "gid": gid}

        return self._write(fn)

    def unshare(self, who: "Caller", path: str, to: str) -> None:
        parts = [x for x in path.split("/") if x]
        if len(parts) != 4 or parts[0] != ROOT_DIR:
            raise FsError(errno.EINVAL, f"{path!r} is not a shared data set")
        src, name = parts[1], parts[3]
        st = self.state()
        p = self._project(st, src)
        self._project(st, to)
        self._require_owner(st, who, src)
        share = next((s for s in st.shares if s.project == src and s.to_project == to
                      and s.entry_name == f"{src}::{name}"), None)
        if share is None:
            raise FsError(errno.ENOENT, f"{path!r} is not shared with {to!r}")

        def fn(tx: Tx) -> None:
            c = tx.conn
            c.execute(delete(schema.dentries).where(
                schema.dentries.c.parent == share.entry_parent,
                schema.dentries.c.name == share.entry_name))
            self.ns._touch_dir(tx, share.entry_parent)
            c.execute(delete(SH).where(and_(SH.c.ino == share.ino, SH.c.to_project == to)))
            if c.execute(select(SH.c.ino).where(SH.c.ino == share.ino)).first() is None:
                c.execute(_SUBTREE, {"root": share.ino, "gid": p.gid})
            tx.log(pb.OP_UNLINK, share.ino, parent=share.entry_parent,
                   name=share.entry_name, nlink=self.ns.inode_row(c, share.ino).nlink)
            self._record(tx, share.ino, action="unshare", project=src, to=to, path=path)

        self._write(fn)

    def set_quota(self, who: "Caller", project: str, files: int, nbytes: int) -> None:
        st = self.state()
        p = self._project(st, project)
        if not who.admin:
            raise FsError(errno.EACCES, "only an administrator sets project quotas")
        if files < 0 or nbytes < 0:
            raise FsError(errno.EINVAL, "quota limits are counts of 0 (no limit) or more")
        self.ns.quotas.set(p.ino, files, nbytes)

    def listing(self, who: "Caller") -> list[dict[str, Any]]:
        st = self.state()
        out = []
        for name, p in sorted(st.projects.items()):
            if who.project and who.project != name:
                continue
            m = st.members.get((name, who.user))
            if not who.admin and m is None:
                continue
            out.append({"name": name, "gid": p.gid, "path": f"/{ROOT_DIR}/{name}",
                        "role": m.role if m is not None else None})
        return out

    def gateways(self, who: "Caller", project: str) -> list[str]:
        """The services authorized as ``project``'s gateway (for its members, for
        administrators and services: a gateway mount checks it is one before it starts)."""
        st = self.state()
        self._project(st, project)
        if not who.admin and ((project, who.user) not in st.members
                              or (who.project and who.project != project)):
            raise FsError(errno.EACCES, f"only members of {project!r} see its gateways")
        return sorted(sv for p, sv in st.gateways if p == project)

    def show(self, who: "Caller", name: str) -> dict[str, Any]:
        st = self.state()
        p = self._project(st, name)
        if not who.admin and (name, who.user) not in st.members or \
                (who.project and who.project != name):
            raise FsError(errno.EACCES, f"only members of {name!r} see it")
        from .quota import usage

        quota = next((q for q in self.ns.quotas.list() if q.ino == p.ino), None)
        files, nbytes = self.ns.query(lambda c: usage(c, p.ino))
        return {
            "name": name, "gid": p.gid, "path": f"/{ROOT_DIR}/{name}",
            "members": [{"user": u, "role": m.role, "uid": m.uid}
                        for (q, u), m in sorted(st.members.items()) if q == name],
            "shared_out": [{"ino": s.ino, "to": s.to_project, "read_only": bool(s.read_only),
                            "entry": s.entry_name, "gid": s.gid}
                           for s in st.shares if s.project == name],
            "shared_in": [{"from": s.project, "read_only": bool(s.read_only),
                           "path": f"/{ROOT_DIR}/{name}/datasets/{s.entry_name}"}
                          for s in st.shares if s.to_project == name],
            "gateways": sorted(sv for p, sv in st.gateways if p == name),
            "quota": {"max_files": quota.max_files if quota else 0,
                      "max_bytes": quota.max_bytes if quota else 0,
                      "files": files, "bytes": nbytes},
        }


@dataclass(frozen=True)
class Caller:
    """Who asks for a project action: a user name, and whether it administers."""

    user: str
    project: str = ""
    admin: bool = False


def serve(projects: Projects, who: Caller, req: dict[str, Any]) -> Any:
    """One ``metafs.Projects/Call`` request (JSON: ``action`` and its arguments)."""
    action = req.get("action")
    args = {k: v for k, v in req.items() if k != "action"}
    table: dict[str, Callable[..., Any]] = {
        "create": projects.create, "delete": projects.delete, "add": projects.add,
        "remove": projects.remove, "credential": projects.credential,
        "share": projects.share, "unshare": projects.unshare, "quota": projects.set_quota,
        "list": projects.listing, "show": projects.show, "gateway": projects.gateway,
        "gateways": projects.gateways}
    fn = table.get(str(action))
    if fn is None:
        raise FsError(errno.EINVAL, f"unknown project action {action!r}")
    try:
        return fn(who, **args)
    except TypeError as exc:
        raise FsError(errno.EINVAL, f"bad arguments for project {action}: {exc}") from None


# ---------------------------------------------------------------------- serving
CALL = "/metafs.Projects/Call"  # JSON in, JSON out (as metafs.Auth/WhoAmI)


def attach(namenode: Any) -> Projects:
    """The namenode extension: projects of its namespace (``namenode.projects``)."""
    namenode.projects = Projects(namenode.ns)
    return namenode.projects


def caller_of(namenode: Any, ctx: Any, req: dict[str, Any]) -> Caller:
    """Who a remote call comes from: its authenticated identity (an administrator when
    trusted or uid 0); where no one is authenticated, whoever ``as_user`` names."""
    auth = getattr(namenode, "authenticator", None)
    if auth is None or auth.mode == "none":
        return Caller(str(req.pop("as_user", "") or "root"), "", True)
    req.pop("as_user", None)
    ident = auth.require(ctx)
    user = ident.name.rsplit("@", 1)[0] if ident.project else ident.name
    return Caller(user, ident.project, (ident.trusted or ident.uid == 0) and not ident.project)


def install(namenode: Any, server: Any) -> None:
    """Serve ``metafs.Projects/Call`` and let the authenticator know project credentials."""
    import grpc

    projects: Projects = namenode.projects
    auth = getattr(namenode, "authenticator", None)
    if auth is not None:
        auth.token_resolvers.append(projects.identity_for)
        auth.cert_resolvers.append(projects.identity_for_cert)
        auth.gateway_resolver = projects.identity_for_gateway

    def call(body: bytes, ctx: grpc.ServicerContext) -> Any:
        try:
            req = json.loads(body or b"{}")
            if not isinstance(req, dict):
                raise FsError(errno.EINVAL, "a project request is a JSON object")
            return {"ok": serve(projects, caller_of(namenode, ctx, req), req)}
        except ValueError as exc:
            return {"errno": errno.EINVAL, "error": f"bad JSON: {exc}"}
        except FsError as err:
            if getattr(err, "grpc_code_name", "") == "UNAUTHENTICATED":
                ctx.abort(grpc.StatusCode.UNAUTHENTICATED, err.message)
            return {"errno": err.errno, "error": err.message}

    handler = grpc.method_handlers_generic_handler("metafs.Projects", {
        "Call": grpc.unary_unary_rpc_method_handler(
            call, request_deserializer=lambda b: b,
            response_serializer=lambda d: json.dumps(d).encode())})
    server.add_generic_rpc_handlers((handler,))
