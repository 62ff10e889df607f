"""A hypothesis state machine: random sequences of namespace operations through the client,
each result and errno compared with a reference model of POSIX semantics (an in-memory tree
of inodes), and the whole tree compared with the model after every step.

The model follows Linux where POSIX leaves the choice open (the order in which errors are
reported, EISDIR for unlink of a directory, ENOTEMPTY when the target of a rename is an
ancestor of the source). Every example works inside a fresh directory of its own, so one
namenode serves all the examples of a test.
"""

from __future__ import annotations

import errno
import itertools
import posixpath
import stat
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from metafs.assembly import build_namenode
from metafs.client import Client
from metafs.client.transport import LocalTransport
from metafs.namenode.server import Namenode

XATTR_CREATE, XATTR_REPLACE = 1, 2
SYMLOOP_MAX = 40
UMASK = 0o022

NAMES = ["a", "b", "c"]
_D1 = ["/" + a for a in NAMES]
_D2 = [f"/{a}/{b}" for a in NAMES for b in NAMES]
_D3 = [f"/{a}/{b}/{c}" for a in NAMES[:2] for b in NAMES[:2] for c in NAMES[:2]]
# shallow paths often, deep ones now and then: enough hits, enough nesting
paths = st.sampled_from(_D1 * 4 + _D2 + _D3)
modes = st.sampled_from([0o755, 0o700, 0o644, 0o000, 0o2755, 0o1777, 0o4755, 0o640, 0o3775])
datas = st.binary(max_size=64) | st.sampled_from([b"", b"x" * 3000])
xnames = st.sampled_from(["user.k", "user.tag", "user.other"])
xflags = st.sampled_from([0, XATTR_CREATE, XATTR_REPLACE])


class MErr(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(errno.errorcode[code])
        self.errno = code


@dataclass
class MInode:
    kind: str  # "dir" | "file" | "link"
    mode: int
    nlink: int
    parent: int = -1  # directories only
    data: bytes = b""
    target: str = ""
    children: dict[str, int] = field(default_factory=dict)
    xattrs: dict[str, bytes] = field(default_factory=dict)

    @property
    def size(self) -> int:
        if self.kind == "file":
            return len(self.data)
        if self.kind == "link":
            return len(self.target.encode())
        return 0


class Model:
    """POSIX namespace semantics as root, inside the directory ``base``."""

    ROOT = 0

    def __init__(self, base: str) -> None:
        self.base = base
        self.inodes: dict[int, MInode] = {
            self.ROOT: MInode("dir", stat.S_IFDIR | 0o755, 2, parent=self.ROOT)}
        self._ids = itertools.count(1)

    # -- resolution
    def _parts(self, path: str) -> list[str]:
        return [p for p in path.split("/") if p]

    def walk(self, start: int, parts: list[str], follow_last: bool) -> int:
        cur, i, links = start, 0, 0
        parts = list(parts)
        while i < len(parts):
            node = self.inodes[cur]
            if node.kind != "dir":
                raise MErr(errno.ENOTDIR)
            name, last = parts[i], i == len(parts) - 1
            if name == ".":
                i += 1
                continue
            child = node.children.get(name)
            if child is None:
                raise MErr(errno.ENOENT)
            c = self.inodes[child]
            if c.kind == "link" and (not last or follow_last):
                links += 1
                if links > SYMLOOP_MAX:
                    raise MErr(errno.ELOOP)
                t = c.target
                if t.startswith("/"):
                    assert t.startswith(self.base + "/") or t == self.base
                    t = t[len(self.base):]
                    cur = self.ROOT
                parts = self._parts(t) + parts[i + 1:]
                i = 0
                continue
            cur = child
            i += 1
        return cur

    def resolve(self, path: str, follow: bool = True) -> int:
        return self.walk(self.ROOT, self._parts(path), follow)

    def split(self, path: str) -> tuple[int, str]:
        parent, name = posixpath.split(path)
        d = self.resolve(parent)
        if self.inodes[d].kind != "dir":
            raise MErr(errno.ENOTDIR)
        return d, name

    def is_ancestor(self, anc: int, ino: int) -> bool:
        """True when directory ``anc`` is ``ino`` or one of its ancestors."""
        while True:
            if ino == anc:
                return True
            if ino == self.ROOT:
                return False
            ino = self.inodes[ino].parent

    # -- creation helpers
    def _add(self, parent: int, name: str, node: MInode) -> int:
        ino = next(self._ids)
        p = self.inodes[parent]
        if p.mode & stat.S_ISGID and node.kind == "dir":
            node.mode |= stat.S_ISGID
        self.inodes[ino] = node
        p.children[name] = ino
        if node.kind == "dir":
            node.parent = parent
            p.nlink += 1
        return ino

    def _drop(self, ino: int) -> None:
        node = self.inodes[ino]
        node.nlink = 0 if node.kind == "dir" else node.nlink - 1
        if node.nlink == 0:
            del self.inodes[ino]

    # -- operations (every check before any change)
    def mkdir(self, path: str) -> None:
        d, name = self.split(path)
        if name in self.inodes[d].children:
            raise MErr(errno.EEXIST)
        self._add(d, name, MInode("dir", stat.S_IFDIR | (0o777 & ~UMASK), 2))

    def create_excl(self, path: str) -> None:
        d, name = self.split(path)
        if name in self.inodes[d].children:
            raise MErr(errno.EEXIST)
        self._add(d, name, MInode("file", stat.S_IFREG | (0o666 & ~UMASK), 1))

    def write(self, path: str, data: bytes, depth: int = 0) -> None:
        """open(path, "wb").write(data): create or truncate, following symlinks."""
        d, name = self.split(path)
        child = self.inodes[d].children.get(name)
        if child is None:
            ino = self._add(d, name, MInode("file", stat.S_IFREG | (0o666 & ~UMASK), 1))
        else:
            node = self.inodes[child]
            if node.kind == "link":
                try:
                    ino = self.resolve(path, follow=True)
                except MErr as e:
                    if e.errno != errno.ENOENT:
                        raise
                    t = node.target
                    dest = t if t.startswith("/") else posixpath.join(
                        posixpath.dirname(path), t)
                    if dest.startswith(self.base):
                        dest = dest[len(self.base):] or "/"
                    return self.write(dest, data, depth + 1)
                node = self.inodes[ino]
            else:
                ino = child
            if node.kind == "dir":
                raise MErr(errno.EISDIR)
        self.inodes[ino].data = data

    def symlink(self, target: str, path: str) -> None:
        d, name = self.split(path)
        if name in self.inodes[d].children:
            raise MErr(errno.EEXIST)
        self._add(d, name, MInode("link", stat.S_IFLNK | 0o777, 1, target=target))

    def link(self, src: str, dst: str) -> None:
        ino = self.resolve(src, follow=False)
        d, name = self.split(dst)
        if name in self.inodes[d].children:
            raise MErr(errno.EEXIST)
        if self.inodes[ino].kind == "dir":
            raise MErr(errno.EPERM)
        self.inodes[d].children[name] = ino
        self.inodes[ino].nlink += 1

    def unlink(self, path: str) -> None:
        d, name = self.split(path)
        ino = self.inodes[d].children.get(name)
        if ino is None:
            raise MErr(errno.ENOENT)
        if self.inodes[ino].kind == "dir":
            raise MErr(errno.EISDIR)
        del self.inodes[d].children[name]
        self._drop(ino)

    def rmdir(self, path: str) -> None:
        d, name = self.split(path)
        ino = self.inodes[d].children.get(name)
        if ino is None:
            raise MErr(errno.ENOENT)
        node = self.inodes[ino]
        if node.kind != "dir":
            raise MErr(errno.ENOTDIR)
        if node.children:
            raise MErr(errno.ENOTEMPTY)
        del self.inodes[d].children[name]
        self.inodes[d].nlink -= 1
        self._drop(ino)

    def rename(self, src: str, dst: str, noreplace: bool, exchange: bool) -> None:
        sp, sn = self.split(src)
        dp, dn = self.split(dst)
        s = self.inodes[sp].children.get(sn)
        if s is None:
            raise MErr(errno.ENOENT)
        t = self.inodes[dp].children.get(dn)
        if exchange and t is None:
            raise MErr(errno.ENOENT)
        if noreplace and t is not None:
            raise MErr(errno.EEXIST)
        sdir = self.inodes[s].kind == "dir"
        tdir = t is not None and self.inodes[t].kind == "dir"
        if sp != dp:
            # Linux's "trap" checks, before any check on the types
            if sdir and self.is_ancestor(s, dp):
                raise MErr(errno.EINVAL)
            if tdir and self.is_ancestor(t, sp):  # type: ignore[arg-type]
                raise MErr(errno.EINVAL if exchange else errno.ENOTEMPTY)
        if t == s:
            return
        if exchange:
            self.inodes[sp].children[sn], self.inodes[dp].children[dn] = t, s  # type: ignore
            if sdir:
                self.inodes[s].parent = dp
            if tdir:
                self.inodes[t].parent = sp  # type: ignore[index]
            if sp != dp and sdir != tdir:
                delta = 1 if sdir else -1
                self.inodes[dp].nlink += delta
                self.inodes[sp].nlink -= delta
            return
        if t is not None:
            if sdir and not tdir:
                raise MErr(errno.ENOTDIR)
            if tdir and not sdir:
                raise MErr(errno.EISDIR)
            if tdir and self.inodes[t].children:
                raise MErr(errno.ENOTEMPTY)
        del self.inodes[sp].children[sn]
        self.inodes[dp].children[dn] = s
        if t is not None:
            if tdir:
                self.inodes[dp].nlink -= 1
            self._drop(t)
        if sdir:
            self.inodes[s].parent = dp
            self.inodes[sp].nlink -= 1
            self.inodes[dp].nlink += 1

    def chmod(self, path: str, mode: int) -> None:
        ino = self.resolve(path)
        node = self.inodes[ino]
        node.mode = stat.S_IFMT(node.mode) | (mode & 0o7777)

    def setxattr(self, path: str, name: str, value: bytes, flags: int) -> None:
        ino = self.resolve(path)
        node = self.inodes[ino]
        if name in node.xattrs and flags == XATTR_CREATE:
            raise MErr(errno.EEXIST)
        if name not in node.xattrs and flags == XATTR_REPLACE:
            raise MErr(errno.ENODATA)
        node.xattrs[name] = value


def real_tree(fs: Client, base: str) -> dict[str, Any]:
    """Everything under ``base`` as {relative path: facts}, with inode numbers."""
    out: dict[str, Any] = {}

    def visit(path: str, rel: str) -> None:
        for e in fs.scandir(path):
            p, r = posixpath.join(path, e.name), posixpath.join(rel, e.name)
            s = e.stat(follow_symlinks=False)
            facts: dict[str, Any] = {"ino": s.st_ino, "mode": s.st_mode, "nlink": s.st_nlink,
                                     "size": s.st_size}
            if stat.S_ISLNK(s.st_mode):
                facts["target"] = fs.readlink(p)
            else:
                facts["xattrs"] = {n: fs.getxattr(p, n, follow_symlinks=False)
                                   for n in fs.listxattr(p, follow_symlinks=False)}
            if stat.S_ISREG(s.st_mode):
                facts["data"] = fs.read_bytes(p)
            out[r] = facts
            if stat.S_ISDIR(s.st_mode):
                visit(p, r)

    visit(base, "/")
    return out


def model_tree(m: Model) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def visit(ino: int, rel: str) -> None:
        for name, c in sorted(m.inodes[ino].children.items()):
            node = m.inodes[c]
            r = posixpath.join(rel, name)
            facts: dict[str, Any] = {"ino": c, "mode": node.mode, "nlink": node.nlink,
                                     "size": node.size}
            if node.kind == "link":
                facts["target"] = node.target
            else:
                facts["xattrs"] = dict(node.xattrs)
            if node.kind == "file":
                facts["data"] = node.data
            out[r] = facts
            if node.kind == "dir":
                visit(c, r)

    visit(Model.ROOT, "/")
    return out


class NamespaceMachine(RuleBasedStateMachine):
    """Subclassed per engine with ``fs`` (a client running as root) set."""

    fs: Client
    counter = itertools.count()

    @initialize()
    def start(self) -> None:
        self.base = f"/t{next(self.counter)}"
        self.fs.mkdir(self.base, 0o755)
        self.fs.chmod(self.base, 0o755)
        self.model = Model(self.base)

    def check(self, what: str, model_fn: Callable[[], Any], real_fn: Callable[[], Any]) -> None:
        merr = rerr = None
        try:
            model_fn()
        except MErr as e:
            merr = e.errno
        try:
            real_fn()
        except OSError as e:
            rerr = e.errno
        name = lambda c: errno.errorcode.get(c, "ok") if c else "ok"  # noqa: E731
        assert name(rerr) == name(merr), f"{what}: metafs gave {name(rerr)}, model {name(merr)}"

    def p(self, path: str) -> str:
        return self.base + path

    @rule(path=paths)
    def mkdir(self, path: str) -> None:
        self.check(f"mkdir {path}", lambda: self.model.mkdir(path),
                   lambda: self.fs.mkdir(self.p(path)))

    @rule(path=paths)
    def create(self, path: str) -> None:
        def real() -> None:
            self.fs.open(self.p(path), "xb").close()

        self.check(f"create {path}", lambda: self.model.create_excl(path), real)

    @rule(path=paths, data=datas)
    def write(self, path: str, data: bytes) -> None:
        def real() -> None:
            with self.fs.open(self.p(path), "wb") as f:
                assert f.write(data) == len(data)

        self.check(f"write {path} {len(data)}", lambda: self.model.write(path, data), real)

    @rule(src=paths, dst=paths, how=st.sampled_from(["plain", "noreplace", "exchange"]))
    def rename(self, src: str, dst: str, how: str) -> None:
        nr, ex = how == "noreplace", how == "exchange"
        self.check(f"rename[{how}] {src} {dst}", lambda: self.model.rename(src, dst, nr, ex),
                   lambda: self.fs.rename(self.p(src), self.p(dst), noreplace=nr, exchange=ex))

    @rule(data=st.data(), how=st.sampled_from(["plain", "noreplace", "exchange"]))
    def rename_existing(self, data: st.DataObject, how: str) -> None:
        """Renames between names that exist: directories into each other, over files..."""
        names = sorted(model_tree(self.model))
        if not names:
            return
        src = data.draw(st.sampled_from(names), label="src")
        dst = data.draw(st.sampled_from(names) | paths, label="dst")
        self.rename(src, dst, how)

    @rule(src=paths, dst=paths)
    def link(self, src: str, dst: str) -> None:
        self.check(f"link {src} {dst}", lambda: self.model.link(src, dst),
                   lambda: self.fs.link(self.p(src), self.p(dst)))

    @rule(path=paths)
    def unlink(self, path: str) -> None:
        self.check(f"unlink {path}", lambda: self.model.unlink(path),
                   lambda: self.fs.unlink(self.p(path)))

    @rule(path=paths)
    def rmdir(self, path: str) -> None:
        self.check(f"rmdir {path}", lambda: self.model.rmdir(path),
                   lambda: self.fs.rmdir(self.p(path)))

    @rule(tgt=paths | st.sampled_from(NAMES), path=paths)
    def symlink(self, tgt: str, path: str) -> None:
        # absolute targets name paths inside this example's directory
        t = self.p(tgt) if tgt.startswith("/") else tgt
        self.check(f"symlink {t} {path}", lambda: self.model.symlink(t, path),
                   lambda: self.fs.symlink(t, self.p(path)))

    @rule(path=paths, name=xnames, value=st.binary(max_size=16), flags=xflags)
    def setxattr(self, path: str, name: str, value: bytes, flags: int) -> None:
        self.check(f"setxattr {path} {name} {flags}",
                   lambda: self.model.setxattr(path, name, value, flags),
                   lambda: self.fs.setxattr(self.p(path), name, value, flags))

    @rule(path=paths, mode=modes)
    def chmod(self, path: str, mode: int) -> None:
        self.check(f"chmod {path} {mode:o}", lambda: self.model.chmod(path, mode),
                   lambda: self.fs.chmod(self.p(path), mode))

    @rule(path=paths, follow=st.booleans())
    def stat(self, path: str, follow: bool) -> None:
        got: list[Any] = []

        def model() -> None:
            ino = self.model.resolve(path, follow)
            n = self.model.inodes[ino]
            got.append((n.mode, n.nlink, n.size))

        def real() -> None:
            s = self.fs.stat(self.p(path), follow_symlinks=follow)
            got.append((s.st_mode, s.st_nlink, s.st_size))

        self.check(f"stat {path}", model, real)
        if len(got) == 2:
            assert got[0] == got[1], f"stat {path}: model {got[0]}, metafs {got[1]}"

    @invariant()
    def tree_matches(self) -> None:
        if not hasattr(self, "model"):
            return
        real, model = real_tree(self.fs, self.base), model_tree(self.model)
        assert sorted(real) == sorted(model), "the entries differ"
        # inode identity: one model inode <-> one metafs inode (hard links, renames)
        pairs = {(model[p]["ino"], real[p]["ino"]) for p in model}
        assert len({m for m, _ in pairs}) == len(pairs) == len({r for _, r in pairs}), \
            "entries and inodes are connected differently"
        for p in model:
            r, m = dict(real[p]), dict(model[p])
            r.pop("ino"), m.pop("ino")
            assert r == m, f"{p}: metafs {r}, model {m}"
        root = self.fs.stat(self.base)
        assert root.st_nlink == self.model.inodes[Model.ROOT].nlink


def _run(machine: type[NamespaceMachine], fs: Client, examples: int, steps: int) -> None:
    cls = type(machine.__name__ + "Run", (machine,), {"fs": fs})
    cls.TestCase.settings = hsettings(
        max_examples=examples, stateful_step_count=steps, deadline=None, derandomize=True,
        suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
        database=None)
    cls.TestCase().runTest()


def _root_client(nn: Namenode) -> Client:
    return Client(settings=nn.settings, transport=LocalTransport(nn), uid=0, gid=0, groups=[])


def test_model_sqlite(settings) -> None:  # type: ignore[no-untyped-def]
    nn = build_namenode(settings, background=False)
    fs = _root_client(nn)
    try:
        _run(NamespaceMachine, fs, examples=100, steps=30)
    finally:
        fs.close()
        nn.close()


@pytest.mark.postgres
def test_model_postgres(settings, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    nn = build_namenode(settings.with_(db_url=pg_url), background=False)
    fs = _root_client(nn)
    try:
        _run(NamespaceMachine, fs, examples=15, steps=30)
    finally:
        fs.close()
        nn.close()
