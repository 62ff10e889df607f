"""Reads of the tree: lookup, path resolution (one statement for a plain path), getattr,
readlink, access and readdir.

Part of :class:`~metafs.namenode.namespace.Namespace` (a mixin: its methods use the
namespace's row helpers and transactions)."""

from __future__ import annotations

import errno
import os
import stat
from collections import namedtuple
from typing import Any, Iterable

from sqlalchemy import bindparam, literal, select, true
from sqlalchemy.engine import Connection

from ..errors import FsError
from ..posix import (NAME_MAX, ROOT_INO, R, X, Cred, access_mask_to_want, allowed, check,
                     check_name, check_path)
from ..proto import metafs_pb2 as pb
from . import schema
from .rows import ATTR_COLS, D, H, I, attr_fields, to_attr
from .sql import Prepared

S = schema.sessions


SYMLOOP_MAX = 40
_AttrRow = namedtuple("_AttrRow", [c.key for c in ATTR_COLS])  # type: ignore[misc]
_N_ATTR = len(ATTR_COLS)
WALK_MAX = 16  # path components resolved by one statement; deeper paths walk name by name
_Q_WALK: dict[tuple[int, bool], Prepared] = {}


def _walk_query(depth: int, reach: bool = False) -> Prepared:
    """One statement that follows ``depth`` names from inode :start: the inode rows of
    every level side by side, NULL from the first name that is missing (a chain of outer
    joins of entries and inodes; each step is a primary-key lookup). With ``reach``, joined
    with the ancestry of :start (see :func:`_with_ancestry`): a row per ancestor."""
    q = _Q_WALK.get((depth, reach))
    if q is None:
        levels = [I.alias(f"i{k}") for k in range(depth + 1)]
        joined: Any = levels[0]
        for k in range(1, depth + 1):
            d = D.alias(f"d{k}")
            joined = joined.outerjoin(d, (d.c.parent == levels[k - 1].c.id)
                                      & (d.c.name == bindparam(f"n{k}")))
            joined = joined.outerjoin(levels[k], levels[k].c.id == d.c.ino)
        cols = [lv.c[c.key].label(f"{c.key}_{k}") for k, lv in enumerate(levels)
                for c in ATTR_COLS]
        if reach:
            anc = _ancestry("start").subquery("anc")
            joined = joined.outerjoin(anc, true())
            cols += list(anc.c)
        q = _Q_WALK[depth, reach] = Prepared(
            select(*cols).select_from(joined).where(levels[0].c.id == bindparam("start")))
    return q


def _readdir_query(attrs: bool, after: bool) -> Prepared:
    """A page of a directory in name order: (name, *ATTR_COLS) or (name, ino, type)."""
    q = (select(D.c.name, *ATTR_COLS).select_from(D.join(I, I.c.id == D.c.ino)) if attrs
         else select(D.c.name, D.c.ino, D.c.mode))
    q = q.where(D.c.parent == bindparam("ino"))
    if after:
        q = q.where(D.c.name > bindparam("cursor"))
    return Prepared(q.order_by(D.c.name).limit(bindparam("lim")))


_Q_READDIR = {(a, c): _readdir_query(a, c) for a in (False, True) for c in (False, True)}
DEPTH_MAX = 2048  # directories above an inode the ancestry query follows (PATH_MAX / 2)


def _ancestry(param: str) -> Any:
    """Every directory on every path from the root to the inode named by bind parameter
    ``param``, as the edges of those paths: rows (child, dir, mode, uid, gid), one per
    directory entry naming ``child`` in directory ``dir`` (whose mode and owners follow).
    A file with several hard links has several edges to start from, and so does a
    directory shared under a second name: the rows form a graph, not one chain. A
    recursive walk up the entries, each step an index lookup by inode."""
    d0, d1, di = D.alias("a0"), D.alias("a1"), I.alias("ai")
    up = select(d0.c.ino.label("child"), d0.c.parent.label("dir"),
                literal(1).label("depth")).where(d0.c.ino == bindparam(param)) \
        .cte("up", recursive=True)
    up = up.union_all(
        select(d1.c.ino, d1.c.parent, up.c.depth + 1)
        .select_from(up.join(d1, d1.c.ino == up.c.dir))
        .where(up.c.dir != ROOT_INO, up.c.depth < DEPTH_MAX))
    return select(up.c.child.label("a_branch"), up.c.dir.label("a_dir"),
                  di.c.mode.label("a_mode"), di.c.uid.label("a_uid"),
                  di.c.gid.label("a_gid")).select_from(up.join(di, di.c.id == up.c.dir))


def _with_ancestry(q: Any, param: str) -> Prepared:
    """``q`` (one row) joined with the ancestry of inode :param, in one statement: a row
    per ancestor, ``q``'s columns first and the 5 ancestry columns last (one row with
    NULLs there when the inode has no name: the root, or an unlinked inode). The check
    and the answer then come from one snapshot: a chmod on the path cannot fall between."""
    anc = _ancestry(param).subquery("anc")
    return Prepared(q.add_columns(*anc.c).outerjoin_from(q.get_final_froms()[0], anc, true()))


_Q_ANCESTRY = Prepared(_ancestry("ino"))


def path_reaches(conn: Connection, cred: Cred, ino: int) -> bool:
    """Whether some path from the root to ``ino`` lets ``cred`` search every directory on
    it, read in the caller's transaction (one statement: the ancestry query)."""
    return cred.is_root or ino == ROOT_INO or path_allows(cred, _Q_ANCESTRY.all(conn, ino=ino))
_Q_ATTR_REACHED = _with_ancestry(select(*ATTR_COLS).where(I.c.id == bindparam("ino")), "ino")
_NLINK = [c.key for c in ATTR_COLS].index("nlink")
_Q_EXISTS = Prepared(select(I.c.id).where(I.c.id == bindparam("ino")))
_Q_HELD = Prepared(select(H.c.id).select_from(H.join(S, S.c.id == H.c.session))
                   .where(H.c.ino == bindparam("ino"), H.c.session == bindparam("sid"),
                          S.c.owner == bindparam("owner")).limit(1))


def path_allows(cred: Cred, rows: Iterable[Any]) -> bool:
    """Whether one of the paths in ``rows`` (the (child, dir, mode, uid, gid) edges of the
    ancestry query) reaches the root with search permission for ``cred`` on every
    directory. The inode the query started from is the child that is no directory's
    entry's parent; a directory is reached when the caller may search it and it is the
    root or one of its own parents is reached."""
    parents: dict[int, set[int]] = {}
    searchable: dict[int, bool] = {}
    for child, dir_, mode, uid, gid in rows:
        if child is None:  # no name: no path
            continue
        parents.setdefault(child, set()).add(dir_)
        searchable[dir_] = stat.S_ISDIR(mode) and allowed(cred, mode, uid, gid, X)
    starts = [c for c in parents if c not in searchable]
    children: dict[int, list[int]] = {}
    for child, dirs in parents.items():
        for d in dirs:
            children.setdefault(d, []).append(child)
    reached: set[int] = set()
    todo = [ROOT_INO] if searchable.get(ROOT_INO) else []
    while todo:  # down from the root, through directories the caller may search
        d = todo.pop()
        if d in reached:
            continue
        reached.add(d)
        todo.extend(c for c in children.get(d, ()) if searchable.get(c))
    return any(p in reached for c in starts for p in parents[c])


def reach_checked(cred: Cred, ino: int) -> bool:
    """Whether a call by inode number from ``cred`` must be checked along the path: an
    authenticated caller that is neither a trusted service nor root, naming an inode
    other than the root. (A trusted gateway, such as a mount, walks the path itself: the
    kernel looks each name up, and every Lookup checks the directory it searches.)"""
    return not cred.trusted and not cred.is_root and ino != ROOT_INO


class Lookups:
    """Reads of the tree: lookup, path resolution (one statement for a plain path), getattr,"""

    # ------------------------------------------------------------------ lookups
    def lookup(self, cred: Cred, parent: int, name: str) -> pb.Entry:
        """The entry ``name`` in directory ``parent``; for a caller whose calls by inode are
        checked (:func:`reach_checked`) the path to ``parent`` is checked in the same
        statement."""
        check_name(name, new=False)
        reach = reach_checked(cred, parent)
        if name != "." and name != "..":
            found = self.engine.read_statement(
                lambda conn: self._walk(conn, cred, parent, [name], False, False, name,
                                        reach=reach))
            if found is not None:
                return found
        if reach:
            self.check_reachable(cred, parent)
        return self.query(lambda conn: self._lookup_entry(conn, cred, parent, name))

    def _lookup_entry(self, conn: Connection, cred: Cred, parent: int, name: str) -> pb.Entry:
        """Lookup by the general rules (the answer, or the exact error, of any case)."""
        d = self._dir(conn, parent)
        check(cred, d, X, "search this directory")
        if name == ".":
            row = d
        elif name == "..":
            row = self.live_inode(conn, self._parent_of_dir(conn, parent))
        else:
            row = self._lookup(conn, parent, name)
            if row is None:
                raise FsError(errno.ENOENT, "no such file or directory", name)
        return pb.Entry(ino=row.id, attr=to_attr(row))

    def resolve(self, cred: Cred, path: str, start: int = 0, follow: bool = True) -> pb.Entry:
        check_path(path)
        start = ROOT_INO if path.startswith("/") else (start or ROOT_INO)
        parts = [p for p in path.split("/") if p]
        if 0 < len(parts) <= WALK_MAX and "." not in parts and ".." not in parts:
            found = self.engine.read_statement(
                lambda conn: self._walk(conn, cred, start, parts, follow, path.endswith("/"),
                                        path))
            if found is not None:
                return found
        return self.query(lambda conn: self._resolve(conn, cred, path, start, follow))

    def _walk(self, conn: Connection, cred: Cred, start: int, parts: list[str], follow: bool,
              must_dir: bool, missing: str, *, reach: bool = False) -> pb.Entry | None:
        """Resolve a plain path (no '.', '..') in one statement, as HopsFS resolves a path
        in one round trip. A name missing from a directory it may search is ENOENT (with
        ``missing`` as the path of the error). Returns None whenever the general walk must
        decide: a symlink to follow, a denied search, a name too long, anything unusual;
        it then runs in a transaction of its own and gives the exact answer or error.
        With ``reach``, a path from the root to ``start`` must let ``cred`` search every
        directory on it, else None too."""
        params = {f"n{k}": n for k, n in enumerate(parts, 1)}
        if reach:
            rows = _walk_query(len(parts), True).all(conn, start=start, **params)
            width = (len(parts) + 1) * _N_ATTR
            if not rows or not path_allows(cred, (r[width:] for r in rows)):
                return None
            row = rows[0]
        else:
            row = _walk_query(len(parts)).first(conn, start=start, **params)
        if row is None or row[0] is None:
            return None
        cur = _AttrRow(*row[:_N_ATTR])
        if cur.nlink == 0:
            return None
        last = len(parts)
        for k in range(1, last + 1):
            if not stat.S_ISDIR(cur.mode) or not allowed(cred, cur.mode, cur.uid, cur.gid, X):
                return None
            if len(parts[k - 1].encode("utf-8", "surrogatepass")) > NAME_MAX:
                return None
            nxt = row[k * _N_ATTR:(k + 1) * _N_ATTR]
            if nxt[0] is None:  # searched for and not there: the answer, as on the long way
                raise FsError(errno.ENOENT, "no such file or directory", missing)
            cur = _AttrRow(*nxt)
            if stat.S_ISLNK(cur.mode) and (k < last or follow):  # "link/" ends below
                return None
        if must_dir and not stat.S_ISDIR(cur.mode):
            return None
        return pb.Entry(ino=cur.id, attr=to_attr(cur))

    def _resolve(self, conn: Connection, cred: Cred, path: str, start: int, follow: bool,
                 *, want_parent: bool = False) -> Any:
        """Walk ``path``; checks search permission on every directory crossed and follows
        symlinks (at most SYMLOOP_MAX). With ``want_parent`` returns (parent row, last name)
        without looking the last name up.

        As POSIX: a path that ends in '/' names a directory (ENOTDIR otherwise), and a
        final symlink is then followed even without ``follow`` ("link/" is what it points
        to); so does a symlink whose target ends in '/'."""
        links = 0
        cur = self.live_inode(conn, ROOT_INO if path.startswith("/") else start)
        parts = [p for p in path.split("/") if p]
        must_dir = path.endswith("/")
        if want_parent and not parts:
            raise FsError(errno.EINVAL, "the root has no parent", path)
        i = 0
        while i < len(parts):
            name = parts[i]
            last = i == len(parts) - 1
            if not stat.S_ISDIR(cur.mode):
                raise FsError(errno.ENOTDIR, "not a directory", path)
            check(cred, cur, X, "search a directory on the path")
            if len(name.encode("utf-8", "surrogatepass")) > NAME_MAX:
                raise FsError(errno.ENAMETOOLONG, "file name too long", path)
            if want_parent and last:
                return cur, name
            if name == ".":
                i += 1
                continue
            if name == "..":
                cur = self.live_inode(conn, self._parent_of_dir(conn, cur.id))
                i += 1
                continue
            row = self._lookup(conn, cur.id, name)
            if row is None:
                raise FsError(errno.ENOENT, "no such file or directory", path)
            if stat.S_ISLNK(row.mode) and (not last or follow or must_dir):
                links += 1
                if links > SYMLOOP_MAX:
                    raise FsError(errno.ELOOP, "too many levels of symbolic links", path)
                target = row.target or ""
                rest = parts[i + 1:]
                tparts = [p for p in target.split("/") if p]
                if not rest and target.endswith("/"):
                    must_dir = True  # the target's last name is now the path's
                if target.startswith("/"):
                    cur = self.live_inode(conn, ROOT_INO)
                parts = tparts + rest
                i = 0
                if want_parent and not parts:
                    raise FsError(errno.EINVAL, "path resolves to the root", path)
                continue
            cur = row
            i += 1
        if must_dir and not stat.S_ISDIR(cur.mode):
            raise FsError(errno.ENOTDIR, "not a directory (the path ends in '/')", path)
        return pb.Entry(ino=cur.id, attr=to_attr(cur))

    def resolve_parent(self, cred: Cred, path: str) -> tuple[int, str]:
        """(parent directory inode, last name) of a path for an entry to be made in it: the
        parent is resolved following links and must be a directory."""
        check_path(path)
        p = path.rstrip("/")
        if not p:
            raise FsError(errno.EEXIST, "the root exists", path)
        head, name = p.rsplit("/", 1) if "/" in p else ("", p)
        e = self.resolve(cred, head or "/", ROOT_INO, True)
        if not stat.S_ISDIR(e.attr.mode):
            raise FsError(errno.ENOTDIR, "not a directory", path)
        return e.ino, name

    def check_reachable(self, cred: Cred, ino: int) -> None:
        """Refuse (EACCES) a call by inode number that the path to the inode would refuse:
        some path from the root to it must let ``cred`` search every directory on it, or
        the caller's session must hold the inode open (a file stays usable through its
        open handle after its directory is closed up, or after its last name is gone).
        An inode that does not exist passes: the call itself answers ENOENT.

        Nothing is cached: each call reads the ancestry in one statement, so a chmod on
        any namenode takes effect at once. The hot calls (GetAttr, Lookup, Open) do not
        come here first: they check within their own statement or transaction."""
        if ino == ROOT_INO or cred.is_root:
            return
        if path_allows(cred, self.engine.read_statement(
                lambda conn: _Q_ANCESTRY.all(conn, ino=ino))):
            return

        def fn(conn: Connection) -> None:
            if _Q_EXISTS.first(conn, ino=ino) is not None:
                self._check_reachable_in(conn, cred, ino)

        self.query(fn)

    def _check_reachable_in(self, conn: Connection, cred: Cred, ino: int) -> None:
        """:meth:`check_reachable` of an existing inode within the caller's transaction
        (for a caller that :func:`reach_checked` names; anyone else passes at once)."""
        if not reach_checked(cred, ino):
            return
        if path_allows(cred, _Q_ANCESTRY.all(conn, ino=ino)):
            return
        if cred.client_id and _Q_HELD.first(conn, ino=ino, sid=cred.client_id,
                                            owner=cred.identity) is not None:
            return
        raise FsError(errno.EACCES, f"permission denied: inode {ino} is not reachable by "
                      "a path whose directories the caller may search")

    def searchable(self, cred: Cred, dirs: Iterable[str]) -> set[str]:
        """The directory paths among ``dirs`` in which ``cred`` may look names up: search
        permission on each of them and on every directory above (what a path walk to a
        file inside needs). Missing or unreadable ones are left out. One read transaction."""
        wanted = sorted(set(dirs))

        def fn(conn: Connection) -> set[str]:
            ok: set[str] = set()
            for d in wanted:
                try:
                    row = self.live_inode(conn, self._resolve(conn, cred, d, ROOT_INO, True).ino)
                    if stat.S_ISDIR(row.mode) and allowed(cred, row.mode, row.uid, row.gid, X):
                        ok.add(d)
                except FsError:
                    pass
            return ok

        return self.query(fn)

    def visible_paths(self, cred: Cred, paths: Iterable[str]) -> dict[str, str]:
        """The paths among ``paths`` whose names ``cred`` may look up, each with the path it
        sees it by: the path itself when it may search the directory it is in (see
        :meth:`searchable`), else the same name reached through an alias of a directory
        above it (:attr:`path_aliases`: a share entry of another project) in a directory it
        may search. Paths it may reach neither way are left out."""
        paths = [p for p in dict.fromkeys(paths) if p.startswith("/")]
        ok = self.searchable(cred, {_dir_of(p) for p in paths})
        out = {p: p for p in paths if _dir_of(p) in ok}
        rest = [p for p in paths if p not in out]
        aliases = [a for hook in self.path_aliases for a in hook(cred)] if rest else []
        if not aliases:
            return out
        tries = {p: [alias + p[len(src):] for src, alias in aliases
                     if p == src or p.startswith(src.rstrip("/") + "/")] for p in rest}
        ok = self.searchable(cred, {_dir_of(a) for alts in tries.values() for a in alts})
        for p, alts in tries.items():
            seen = next((a for a in alts if _dir_of(a) in ok), None)
            if seen is not None:
                out[p] = seen
        return out

    def getattr(self, cred: Cred, ino: int) -> pb.Attr:
        if reach_checked(cred, ino):  # the attributes and the path to them, one statement
            rows = self.engine.read_statement(lambda conn: _Q_ATTR_REACHED.all(conn, ino=ino))
            if rows and rows[0][_NLINK] > 0 and path_allows(cred, (r[_N_ATTR:] for r in rows)):
                return to_attr(_AttrRow(*rows[0][:_N_ATTR]))
            self.check_reachable(cred, ino)  # the general rules decide (and give the error)
        else:
            row = self.engine.read_statement(lambda conn: self.inode_row(conn, ino))
            if row is not None and row.nlink > 0:  # one statement for a linked inode
                return to_attr(row)
        # removed, or unlinked but still open: the handles decide, in one snapshot
        return self.query(lambda conn: to_attr(self.live_inode(conn, ino)))

    def readlink(self, cred: Cred, ino: int) -> str:
        def fn(conn: Connection) -> str:
            row = self.live_inode(conn, ino)
            if not stat.S_ISLNK(row.mode):
                raise FsError(errno.EINVAL, "not a symbolic link")
            return row.target or ""

        return self.query(fn)

    def access(self, cred: Cred, ino: int, mask: int) -> None:
        if mask & ~(os.R_OK | os.W_OK | os.X_OK):
            raise FsError(errno.EINVAL, f"bad access mask {mask:#o}")

        def fn(conn: Connection) -> None:
            row = self.live_inode(conn, ino)
            want = access_mask_to_want(mask)
            if want:
                check(cred, row, want, "access this file")

        self.query(fn)

    def readdir(self, cred: Cred, ino: int, cursor: str, limit: int,
                attrs: bool) -> pb.ReadDirReply:
        limit = min(limit or self.settings.readdir_page, 10 * self.settings.readdir_page)

        def fn(conn: Connection) -> pb.ReadDirReply:
            d = self._dir(conn, ino)
            check(cred, d, R, "list this directory")
            params = {"ino": ino, "lim": limit + 1}
            if cursor:
                params["cursor"] = cursor
            cur = _Q_READDIR[bool(attrs), bool(cursor)].execute(conn, params)
            try:
                rows = cur.fetchall()
            finally:
                cur.close()
            reply = pb.ReadDirReply()
            add = reply.entries.add
            for r in rows[:limit]:
                if attrs:  # (name, *ATTR_COLS); the attributes built in place
                    add(name=r[0], ino=r[1], mode=r[2],
                        attr=attr_fields(_AttrRow._make(r[1:])))
                else:
                    add(name=r[0], ino=r[1], mode=r[2])
            reply.eof = len(rows) <= limit
            if reply.entries:
                reply.next_cursor = reply.entries[-1].name
            return reply

        return self.query(fn)


def _dir_of(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"
