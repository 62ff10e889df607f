"""Path resolution in one statement (Namespace._walk) against the general walk.

A plain path is resolved by one SQL statement that follows every name at once; anything
unusual (a symlink to follow, '.', '..', a missing name, a denied search, a path deeper
than WALK_MAX) falls back to the name-by-name walk in a transaction. The two must give the
same entry or the same errno for every path and caller, on SQLite and PostgreSQL."""

from __future__ import annotations

import errno
import os
import sqlite3
from typing import Any

import pytest

from metafs.assembly import build_namenode
from metafs.config import Settings
from metafs.errors import FsError
from metafs.namenode.lookups import WALK_MAX
from metafs.namenode.namespace import Namespace
from metafs.namenode.server import Namenode
from metafs.posix import ROOT_INO, Cred

ROOT = Cred()
ALICE = Cred(uid=1000, gid=1000)
BOB = Cred(uid=2000, gid=2000, groups=frozenset({1000}))
CALLERS = {"root": ROOT, "alice": ALICE, "bob": BOB}


@pytest.fixture
def nn(engine_namenode: Namenode) -> Namenode:
    return engine_namenode


def _mkdir(ns: Namespace, cred: Cred, path: str, mode: int = 0o755) -> int:
    parent, name = ns.resolve_parent(cred, path)
    return ns.mkdir(cred, parent, name, mode, 0).ino


def _create(ns: Namespace, cred: Cred, path: str, mode: int = 0o644) -> int:
    parent, name = ns.resolve_parent(cred, path)
    return ns.create(cred, parent, name, stat_reg(mode), 0, True, False, 0, 0).attr.ino


def stat_reg(mode: int) -> int:
    return 0o100000 | mode


def _symlink(ns: Namespace, path: str, target: str) -> None:
    parent, name = ns.resolve_parent(ROOT, path)
    ns.symlink(ROOT, parent, name, target)


def _tree(ns: Namespace) -> None:
    """A namespace with every case the fast path must hand over or get right."""
    _mkdir(ns, ROOT, "/a")
    _mkdir(ns, ROOT, "/a/b")
    _create(ns, ROOT, "/a/b/f")
    _mkdir(ns, ROOT, "/home", 0o755)
    _mkdir(ns, ROOT, "/home/alice", 0o700)
    ns.setattr(ROOT, ns.resolve(ROOT, "/home/alice").ino, uid=1000, gid=1000)
    _create(ns, ALICE, "/home/alice/notes", 0o600)
    _mkdir(ns, ALICE, "/home/alice/shared", 0o750)
    _mkdir(ns, ROOT, "/noexec", 0o644)  # no search permission for anyone but root
    _create(ns, ROOT, "/noexec/f")
    _symlink(ns, "/a/to_b", "b")
    _symlink(ns, "/a/abs", "/a/b/f")
    _symlink(ns, "/a/dangling", "/nope")
    _symlink(ns, "/a/loop1", "loop2")
    _symlink(ns, "/a/loop2", "loop1")
    _symlink(ns, "/a/dirslash", "b/")
    deep = ""
    for k in range(WALK_MAX + 2):
        deep += f"/d{k}"
        _mkdir(ns, ROOT, deep)
    _create(ns, ROOT, deep + "/leaf")


PATHS = [
    "/", "/a", "/a/", "/a/b", "/a/b/", "/a/b/f", "/a/b/f/", "/a/b/f/x", "/a//b///f",
    "/a/missing", "/a/missing/f", "/missing", "/a/b/./f", "/a/b/../b/f", "/..", "/a/..",
    "/a/to_b", "/a/to_b/", "/a/to_b/f", "/a/abs", "/a/abs/", "/a/dangling", "/a/loop1",
    "/a/loop1/x", "/a/dirslash", "/a/dirslash/f", "/home/alice", "/home/alice/notes",
    "/home/alice/shared", "/home/alice/shared/x", "/noexec", "/noexec/f",
    "/" + "x" * 256, "/a/" + "y" * 256 + "/f",
    "".join(f"/d{k}" for k in range(WALK_MAX)),
    "".join(f"/d{k}" for k in range(WALK_MAX + 2)) + "/leaf",
]


def _outcome(fn: Any) -> Any:
    try:
        e = fn()
    except FsError as err:
        return ("error", err.errno)
    return ("entry", e.ino, e.attr.SerializeToString())


@pytest.mark.parametrize("follow", [True, False])
def test_one_statement_walk_agrees_with_the_general_walk(nn: Namenode, follow: bool) -> None:
    ns = nn.ns
    _tree(ns)
    checked = 0
    for who, cred in CALLERS.items():
        for path in PATHS:
            fast = _outcome(lambda: ns.resolve(cred, path, 0, follow))
            slow = _outcome(lambda: ns.query(
                lambda conn: ns._resolve(conn, cred, path, ROOT_INO, follow)))
            assert fast == slow, (who, path, follow)
            checked += 1
    assert checked == len(CALLERS) * len(PATHS)


def test_one_statement_lookup_agrees_with_the_general_lookup(nn: Namenode) -> None:
    ns = nn.ns
    _tree(ns)
    parents = [ns.resolve(ROOT, p, 0, False).ino for p in
               ("/", "/a", "/a/b", "/a/b/f", "/a/to_b", "/home/alice", "/noexec")]
    parents.append(1 << 40)  # no such inode
    names = ["a", "b", "f", "to_b", "abs", "dangling", "notes", "shared", "missing", ".",
             "..", "x" * 255]
    checked = 0
    for cred in CALLERS.values():
        for parent in parents:
            for name in names:
                fast = _outcome(lambda: ns.lookup(cred, parent, name))
                slow = _outcome(lambda: ns.query(
                    lambda conn: ns._lookup_entry(conn, cred, parent, name)))
                assert fast == slow, (cred, parent, name)
                checked += fast[0] == "entry"
    assert checked > 10  # the cases that find something were really compared


def test_relative_paths_from_a_start_inode(nn: Namenode) -> None:
    ns = nn.ns
    _tree(ns)
    a = ns.resolve(ROOT, "/a").ino
    assert ns.resolve(ROOT, "b/f", a).ino == ns.resolve(ROOT, "/a/b/f").ino
    assert ns.resolve(ROOT, "to_b/f", a).ino == ns.resolve(ROOT, "/a/b/f").ino
    with pytest.raises(FsError) as e:
        ns.resolve(ROOT, "b/nope", a)
    assert e.value.errno == errno.ENOENT
    with pytest.raises(FsError) as e:
        ns.resolve(ROOT, "b", 1 << 40)  # a start inode that does not exist
    assert e.value.errno == errno.ENOENT


def test_expected_answers_of_the_walk(nn: Namenode) -> None:
    """The answers themselves, as POSIX gives them (not only agreement)."""
    ns = nn.ns
    _tree(ns)
    f = ns.resolve(ROOT, "/a/b/f")
    assert f.attr.mode & 0o170000 == 0o100000
    assert ns.resolve(ROOT, "/a/to_b/f").ino == f.ino
    assert ns.resolve(ROOT, "/a/abs").ino == f.ino
    assert ns.resolve(ROOT, "/a/abs", 0, False).attr.mode & 0o170000 == 0o120000
    assert ns.resolve(ALICE, "/home/alice/notes").attr.uid == 1000
    for cred, path, want in [
        (ROOT, "/a/b/f/", errno.ENOTDIR), (ROOT, "/a/b/f/x", errno.ENOTDIR),
        (ROOT, "/a/missing", errno.ENOENT), (ROOT, "/a/dangling", errno.ENOENT),
        (ROOT, "/a/loop1", errno.ELOOP), (BOB, "/home/alice/notes", errno.EACCES),
        (ALICE, "/noexec/f", errno.EACCES), (ROOT, "/" + "x" * 256, errno.ENAMETOOLONG),
    ]:
        with pytest.raises(FsError) as e:
            ns.resolve(cred, path)
        assert e.value.errno == want, path


def test_a_plain_path_is_one_statement_on_sqlite(settings: Settings) -> None:
    node = build_namenode(settings, background=False)
    try:
        ns = node.ns
        _tree(ns)
        statements: list[str] = []

        def traced(fn: Any) -> Any:
            # the connection the engine's next transaction takes (the one that ended a
            # transaction last), with every statement recorded
            raw = ns.engine._idle[-1].connection.dbapi_connection
            assert isinstance(raw, sqlite3.Connection)
            raw.set_trace_callback(statements.append)
            try:
                return fn()
            finally:
                raw.set_trace_callback(None)

        statements.clear()
        entry = traced(lambda: ns.resolve(ROOT, "/a/b/f"))
        assert entry.ino == ns.resolve(ROOT, "/a/b/f").ino
        assert len(statements) == 1, statements
        assert not any(s.startswith(("BEGIN", "COMMIT")) for s in statements)

        statements.clear()  # a lookup (what every kernel lookup of a mount sends)
        a = ns.resolve(ROOT, "/a").ino
        assert traced(lambda: ns.lookup(ROOT, a, "b")).ino == ns.resolve(ROOT, "/a/b").ino
        assert len(statements) == 1, statements

        for missing in (lambda: ns.lookup(ROOT, a, "nope"),  # before every create
                        lambda: ns.resolve(ROOT, "/a/b/nope")):
            statements.clear()
            with pytest.raises(FsError) as e:
                traced(missing)
            assert e.value.errno == errno.ENOENT and len(statements) == 1, statements

        statements.clear()  # a symlink on the way: the general walk, in a transaction
        traced(lambda: ns.resolve(ROOT, "/a/to_b/f"))
        assert statements[1] == "BEGIN" and statements[-1] == "COMMIT"
    finally:
        node.close()


def test_a_rename_between_walks_is_seen(nn: Namenode) -> None:
    """No cache: the statement reads the committed namespace every time."""
    ns = nn.ns
    _tree(ns)
    f = ns.resolve(ROOT, "/a/b/f").ino
    a = ns.resolve(ROOT, "/a").ino
    ns.rename(ROOT, a, "b", a, "c", 0)
    with pytest.raises(FsError) as e:
        ns.resolve(ROOT, "/a/b/f")
    assert e.value.errno == errno.ENOENT
    assert ns.resolve(ROOT, "/a/c/f").ino == f


def test_getattr_of_linked_removed_and_open_unlinked_inodes(nn: Namenode) -> None:
    ns = nn.ns
    _tree(ns)
    f = ns.resolve(ROOT, "/a/b/f")
    assert ns.getattr(ROOT, f.ino) == f.attr
    b = ns.resolve(ROOT, "/a/b").ino
    ns.open_session(ROOT, "resolve-test", "localhost")  # an open needs a live session
    holder = Cred(client_id="resolve-test")
    opened = ns.create(holder, b, "open", stat_reg(0o644), 0, True, True, os.O_RDWR, 0)
    ns.unlink(ROOT, b, "open")
    ns.unlink(ROOT, b, "f")
    assert ns.getattr(ROOT, opened.attr.ino).nlink == 0  # still open: still there
    for ino in (f.ino, 1 << 40):
        with pytest.raises(FsError) as e:
            ns.getattr(ROOT, ino)
        assert e.value.errno == errno.ENOENT
