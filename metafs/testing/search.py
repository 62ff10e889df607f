"""The search back-end contract as a test class (see :mod:`metafs.cdc.search.base`).

Subclass :class:`SearchBackendTests` and implement ``make_backend(path)``: a fresh back end
keeping its state under the directory ``path`` (and, when reopening an existing state is
more than calling it again on ``path.parent``, ``reopen(path)``)::

    class TestMyBackend(SearchBackendTests):
        def make_backend(self, path):
            return MyIndex(path / "state.db")

Each test drives a real embedded Client (a real namenode on a real SQLite file), follows
its changelog into the back end under test, and compares search results with an answer
computed directly from the namespace (walking it through the client) by a reference
evaluator of the query tree.
"""

from __future__ import annotations

import fnmatch
import json
import random
import re
from pathlib import Path
from typing import Any, Iterator

import pytest

from ..cdc.consumer import Consumer
from ..cdc.search import query as q
from ..cdc.search.base import SearchBackend
from ..cdc.search.query import ext_of, type_of_mode
from ..cdc.search.tags import flatten
from ..cdc.source import source_for
from ..client import Client


# ---------------------------------------------------------------------- reference model
def reference_docs(client: Client) -> dict[str, dict[str, Any]]:
    """Every file and directory, read from the namespace itself: path -> document."""
    out: dict[str, dict[str, Any]] = {}
    for top, dirs, files in client.walk("/"):
        for name in dirs + files:
            p = top.rstrip("/") + "/" + name
            st = client.lstat(p)
            tags: dict[str, list[Any]] = {}
            texts: list[str] = []
            try:
                names = client.listxattr(p, follow_symlinks=False)
            except OSError:
                names = []
            for xn in names:
                for t in flatten(xn, client.getxattr(p, xn, follow_symlinks=False)):
                    tags.setdefault(t.key, []).append(t.value())
                    if t.kind in ("s", "t"):
                        texts.append(str(t.str))
            out[p] = {"path": p, "name": name, "ext": ext_of(name),
                      "type": type_of_mode(st.st_mode), "size": st.st_size, "uid": st.st_uid,
                      "gid": st.st_gid, "ino": st.st_ino, "nlink": st.st_nlink,
                      "mtime": st.st_mtime_ns, "tags": tags, "text": texts}
    return out


_TOK = re.compile(r"\w+", re.UNICODE)


def _words(s: str) -> list[str]:
    return [w.lower() for w in _TOK.findall(s)]


def _phrase_in(phrase: str, text: str, prefix: bool) -> bool:
    pw, tw = _words(phrase), _words(text)
    for i in range(len(tw) - len(pw) + 1):
        ok = all(tw[i + j] == pw[j] for j in range(len(pw) - 1))
        last = tw[i + len(pw) - 1]
        if ok and (last.startswith(pw[-1]) if prefix else last == pw[-1]):
            return True
    return False


def _cmp(a: Any, op: str, b: Any) -> bool:
    return {"=": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b,
            ">=": a >= b}[op]


def matches(n: q.Node, d: dict[str, Any]) -> bool:
    """The reference meaning of a query tree on one document."""
    if isinstance(n, q.All):
        return True
    if isinstance(n, q.And):
        return all(matches(x, d) for x in n.items)
    if isinstance(n, q.Or):
        return any(matches(x, d) for x in n.items)
    if isinstance(n, q.Not):
        return not matches(n.item, d)
    if isinstance(n, q.Text):
        fields = [d["name"]] + ([] if n.field == "name" else d["text"])
        return any(_phrase_in(n.text, f, n.prefix) for f in fields)
    if isinstance(n, q.Glob):
        return fnmatch.fnmatchcase(d["name"], n.pattern)
    if isinstance(n, q.Field):
        return _cmp(d[n.name], n.op, n.value)
    if isinstance(n, q.Exists):  # the key's dotted parts appear whole in a tag key
        return any(f".{n.key}." in f".{k}." for k in d["tags"])
    if isinstance(n, q.Under):
        return d["path"].startswith(n.path.rstrip("/") + "/")
    if isinstance(n, q.Tag):  # the key, in any attribute: the tag key or its last parts
        named = [k for k in d["tags"] if k == n.key or k.endswith("." + n.key)]
        for v in (v for k in named for v in d["tags"][k]):
            if isinstance(n.value, bool):
                if isinstance(v, bool) and v == n.value:
                    return True
            elif isinstance(n.value, float):
                if isinstance(v, (int, float)) and not isinstance(v, bool) and \
                        _cmp(float(v), n.op, n.value):
                    return True
            elif isinstance(v, str) and not isinstance(v, bool):
                if n.glob:
                    if fnmatch.fnmatchcase(v, n.value):
                        return True
                elif _cmp(v, n.op, n.value):
                    return True
        return False
    raise AssertionError(n)


def expected(client: Client, query: str) -> set[str]:
    node = q.parse(query)
    return {p for p, d in reference_docs(client).items() if matches(node, d)}


QUERIES = [
    "bicycles>3",
    "bicycles>=3 ext:jpg",
    "bicycles<2 OR label=dog",
    'under:/datasets/coco "red car"',
    "bicycles>3 ext:jpg under:/datasets/coco \"red car\"",
    "NOT ext:jpg type:file",
    "(label=cat OR label=dog) AND NOT reviewed=true",
    "exists:det",
    "det.bbox.w>10",
    "det.labels=person",
    "label!=cat",
    "type:dir",
    "name:*.png",
    "name:img",
    "caption=nonjson*",
    "size>0",
    "score>=0.5 score<0.75",
    "under:/datasets -under:/datasets/coco",
    "reviewed=false",
    "street",
    # a bare key matches that key in any attribute; naming the attribute narrows it
    "tags.bicycles>3",
    "coco.bicycles>=2 ext:jpg",
    "labels.coco.bicycles<3",
    "tags.label=cat",
    "bicycles=0 OR bicycles=6",
    "bicycles!=2",
    "exists:bbox",
    "exists:coco",
    "exists:tags.bicycles",
    "bbox.w>10",
    "w>10",
]


# ---------------------------------------------------------------------- the suite
class SearchBackendTests:
    """Subclasses provide ``make_backend(path) -> SearchBackend``."""

    def make_backend(self, path: Path) -> SearchBackend:
        raise NotImplementedError(f"{type(self).__name__} must implement make_backend")

    @pytest.fixture
    def env(self, tmp_path: Path) -> Iterator[tuple[Client, SearchBackend, Consumer]]:
        client = Client(data_dir=str(tmp_path / "data"))
        backend = self.make_backend(tmp_path / "idx")
        cons = Consumer(source_for(client), backend, name="test", batch=37)
        try:
            yield client, backend, cons
        finally:
            backend.close()
            client.close()

    # -- helpers
    @staticmethod
    def populate(client: Client, seed: int = 1, n: int = 60) -> None:
        rnd = random.Random(seed)
        more = random.Random(seed + 1000)  # leaves rnd's draws as they were
        client.makedirs("/datasets/coco/train", exist_ok=True)
        client.makedirs("/datasets/voc", exist_ok=True)
        client.makedirs("/models", exist_ok=True)
        labels = ["cat", "dog", "person", "car"]
        for i in range(n):
            d = rnd.choice(["/datasets/coco", "/datasets/coco/train", "/datasets/voc",
                            "/models"])
            ext = rnd.choice(["jpg", "png", "txt", "JPG"])
            p = f"{d}/img{i}.{ext}"
            with client.open(p, "wb") as fh:
                fh.write(b"x" * rnd.randrange(0, 50))
            tags: dict[str, Any] = {
                "bicycles": rnd.randrange(0, 7),
                "label": rnd.choice(labels),
                "reviewed": rnd.random() < 0.5,
                "score": round(rnd.random(), 3),
            }
            if rnd.random() < 0.4:
                tags["det"] = {"bbox": {"w": rnd.randrange(0, 20)},
                               "labels": rnd.sample(labels, 2)}
            if rnd.random() < 0.3:
                tags["caption"] = rnd.choice(["a red car on a street", "red bicycle",
                                              "car, red", "blue car"])
            # A labelling tool's attribute, and one nested deeper (on files without a
            # caption: the free-text index joins a file's values, so "car, red" + "car"
            # would hold the phrase "red car" for it but not for the reference).
            if "caption" not in tags and more.random() < 0.6:
                tags["tags"] = {"bicycles": more.randrange(0, 7), "label": more.choice(labels)}
            if "caption" not in tags and more.random() < 0.4:
                tags["labels"] = {"coco": {"bicycles": more.randrange(0, 7)}}
            for k, v in tags.items():
                client.setxattr(p, f"user.{k}", json.dumps(v).encode())
            if rnd.random() < 0.2:
                client.setxattr(p, "user.caption", b"nonjson text " + str(i).encode())

    def check(self, client: Client, backend: SearchBackend, cons: Consumer,
              queries: list[str] = QUERIES) -> None:
        cons.catch_up()
        for query in queries:
            got = backend.search(query, limit=10_000)
            assert sorted(got.paths) == sorted(expected(client, query)), query

    # -- tests
    def test_queries_match_namespace(self, env: Any) -> None:
        client, backend, cons = env
        self.populate(client)
        self.check(client, backend, cons)

    def test_rename_directories_and_files(self, env: Any) -> None:
        client, backend, cons = env
        self.populate(client, seed=2)
        cons.catch_up()
        client.rename("/datasets/coco", "/models/coco2")
        client.rename("/datasets", "/ds")
        for p in list(reference_docs(client))[:5]:
            if client.isfile(p):
                client.rename(p, p + ".moved")
        self.check(client, backend, cons, QUERIES + ["under:/models/coco2 bicycles>2",
                                                     "under:/ds", "ext:moved"])
        hit = backend.search("under:/models/coco2/train", limit=1)
        if hit.hits:
            assert hit.hits[0]["path"].startswith("/models/coco2/train/")

    def test_rmtree_retag_overwrite(self, env: Any) -> None:
        client, backend, cons = env
        self.populate(client, seed=3)
        cons.catch_up()
        client.rmtree("/datasets/coco")
        docs = reference_docs(client)
        for p in sorted(docs)[:10]:
            if docs[p]["type"] == "file":
                client.setxattr(p, "user.bicycles", b"100")
                client.removexattr(p, "user.label") if "label" in docs[p]["tags"] else None
                client.write_bytes(p, b"overwritten with more bytes")
        self.check(client, backend, cons, QUERIES + ["bicycles=100", "size=27"])
        assert backend.search("under:/datasets/coco").hits == []

    def test_hard_links_replace_and_exchange(self, env: Any) -> None:
        client, backend, cons = env
        client.makedirs("/a")
        client.makedirs("/b")
        client.write_bytes("/a/f.jpg", b"1")
        client.setxattr("/a/f.jpg", "user.bicycles", b"5")
        client.link("/a/f.jpg", "/b/g.jpg")
        client.write_bytes("/a/victim.jpg", b"2")
        client.setxattr("/a/victim.jpg", "user.bicycles", b"9")
        cons.catch_up()
        res = backend.search("bicycles=5")
        assert sorted(res.hits[0]["paths"]) == ["/a/f.jpg", "/b/g.jpg"]
        assert backend.search("bicycles=5 under:/b").paths  # found through its second name
        client.remove("/a/f.jpg")
        cons.catch_up()
        assert backend.search("bicycles=5").paths == ["/b/g.jpg"]
        client.replace("/b/g.jpg", "/a/victim.jpg")  # replaces: the victim is gone
        cons.catch_up()
        assert backend.search("bicycles=9").paths == []
        assert backend.search("bicycles=5").paths == ["/a/victim.jpg"]
        self.check(client, backend, cons)

    def test_paging_sorting_and_count(self, env: Any) -> None:
        client, backend, cons = env
        self.populate(client, seed=4)
        cons.catch_up()
        all_ = backend.search("type:file", sort="-size,name", limit=10_000, count=True)
        assert all_.total == len(all_.hits)
        sizes = [(-h["size"], h["name"]) for h in all_.hits]
        assert sizes == sorted(sizes)
        pages = []
        for off in range(0, len(all_.hits), 7):
            pages += backend.search("type:file", sort="-size,name", limit=7, offset=off).paths
        assert pages == all_.paths

    def test_bad_queries_are_clear_errors(self, env: Any) -> None:
        _, backend, _ = env
        for bad, where in [("bicycles>", 9), ("(a OR b", 0), ("a OR", 4), ("size>1Q", 5),
                           ("type:banana", 5), ('"open', 0), ("AND a", 0), ("a )", 2),
                           ("x>true", 2), ("bicycles>>", 9), ("label==cat", 6),
                           ("size>=>3", 6)]:
            with pytest.raises(q.QueryError) as ei:
                backend.search(bad)
            assert ei.value.pos == where, (bad, ei.value)
            assert "^" in str(ei.value)
        with pytest.raises(q.QueryError):
            backend.search("a", sort="color")
        with pytest.raises(q.QueryError):
            backend.search("a", limit=-1)

    def test_a_bare_key_finds_it_in_any_attribute(self, env: Any) -> None:
        """The README's search: a labelling tool wrote ``user.tags``, a person searches
        ``bicycles>3`` without knowing which attribute holds it."""
        client, backend, cons = env
        client.makedirs("/img")
        for name, attr, value in (("a.jpg", "user.tags", {"bicycles": 4}),
                                  ("b.jpg", "user.bicycles", 5),
                                  ("c.jpg", "user.det", {"coco": {"bicycles": 9}}),
                                  ("d.png", "user.tags", {"bicycles": 7}),
                                  ("e.jpg", "user.tags", {"bicycles": 1, "unicycles": 8}),
                                  ("f.jpg", "user.tags", {"bicycles_old": 6})):
            client.write_bytes(f"/img/{name}", b"x")
            client.setxattr(f"/img/{name}", attr, json.dumps(value).encode())
        cons.catch_up()

        def find(query: str) -> list[str]:
            return sorted(p.rsplit("/", 1)[1] for p in backend.search(query).paths)

        assert find("bicycles>3 ext:jpg") == ["a.jpg", "b.jpg", "c.jpg"]
        assert find("bicycles>3") == ["a.jpg", "b.jpg", "c.jpg", "d.png"]
        assert find("tags.bicycles>3") == ["a.jpg", "d.png"]  # the attribute narrows it
        assert find("coco.bicycles>3") == ["c.jpg"]
        assert find("exists:coco") == ["c.jpg"]
        assert find("exists:bicycles") == ["a.jpg", "b.jpg", "c.jpg", "d.png", "e.jpg"]
        assert find("bicycles<3") == ["e.jpg"]
        assert find("cycles>0") == []  # whole dotted parts only

    def test_crash_at_random_points_equals_rebuild(self, env: Any, tmp_path: Path) -> None:
        client, backend, cons = env
        self.populate(client, seed=5, n=40)
        client.rename("/datasets/coco", "/coco")
        client.rmtree("/datasets/voc")
        head = client.changelog_head()
        rnd = random.Random(7)

        class Crash(Exception):
            pass

        crashes = 0
        while backend.position() < head:
            k = rnd.randrange(1, 60)
            seen = [0]

            def hook(_r: Any) -> None:
                seen[0] += 1
                if seen[0] == k:
                    raise Crash

            c = Consumer(source_for(client), backend, batch=rnd.randrange(5, 80), on_record=hook)
            try:
                c.catch_up(head)
            except Crash:
                crashes += 1
            # "restart": reopen the index from its file, as a new process would
            path = backend.path
            backend.close()
            backend = self.reopen(path)
        assert crashes > 0
        fresh = self.make_backend(tmp_path / "fresh")
        Consumer(source_for(client), fresh).catch_up(head)
        assert dump(backend) == dump(fresh)
        self.check(client, backend, Consumer(source_for(client), backend))
        fresh.close()
        backend.close()

    def reopen(self, path: Path) -> SearchBackend:
        return self.make_backend(path.parent)


def dump(b: SearchBackend) -> dict[str, Any]:
    """Everything an index holds, for comparing a resumed index with a rebuilt one."""
    c = b.reader()
    out = {}
    for t, order in (("docs", "ino"), ("dirs", "ino"), ("xlinks", "parent, name"),
                     ("tags", "ino, xattr, key, kind, num, str")):
        out[t] = c.execute(f"SELECT * FROM {t} ORDER BY {order}").fetchall()
    out["fts"] = c.execute("SELECT rowid, name, text FROM fts ORDER BY rowid").fetchall()
    out["position"] = b.committed_position()
    return out
