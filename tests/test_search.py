"""The embedded search back end (SQLite FTS5 + typed tags) against the shared suite, plus
the parts around it: tag typing, the query parser, the consumer framework, the
``search()`` entry point, and the indexer process killed with SIGKILL."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metafs.cdc.consumer import Consumer
from metafs.cdc.search import query as q
from metafs.cdc.search.api import open_index, search
from metafs.cdc.search.embedded import EmbeddedIndex
from metafs.cdc.search.tags import flatten
from metafs.cdc.source import source_for
from metafs.client import BulkFile, Client
from metafs.testing.search import SearchBackendTests, dump, expected


class TestEmbedded(SearchBackendTests):
    def make_backend(self, path: Path) -> EmbeddedIndex:
        return EmbeddedIndex(path / "index.db")


def test_tags_are_typed() -> None:
    t = {x.key: x for x in flatten("user.m", b'{"a": 3, "b": {"c": [true, "x"]}, "d": null}')}
    assert t["m.a"].kind == "n" and t["m.a"].num == 3
    assert [x.kind for x in flatten("user.m", b'{"b": {"c": [true, "x"]}}')] == ["b", "s"]
    assert t["m.d"].kind == "z"
    assert flatten("user.t", b"plain words")[0].kind == "t"
    assert flatten("user.t", b"\xff\xfe")[0].kind == "t"
    assert flatten("user.t", b"NaN")[0].kind == "t"
    assert flatten("trusted.x", b"1") == []


def test_parser_shapes() -> None:
    n = q.parse('bicycles>3 ext:jpg under:/datasets/coco "red car"')
    assert n == q.And((q.Tag("bicycles", ">", 3.0), q.Field("ext", "=", "jpg"),
                       q.Under("/datasets/coco"), q.Text("red car")))
    assert q.parse("a OR b c") == q.Or((q.Text("a"), q.And((q.Text("b"), q.Text("c")))))
    assert q.parse("size:1K..2K") == q.And((q.Field("size", ">=", 1024),
                                           q.Field("size", "<=", 2048)))
    assert q.parse('label="3"') == q.Tag("label", "=", "3")
    assert q.parse("tag.size>2") == q.Tag("size", ">", 2.0)
    assert q.parse("mtime>2024-01-01") == q.Field("mtime", ">", 1704067200 * 10**9)
    assert q.parse("") == q.All()


def test_a_malformed_comparison_points_at_its_column() -> None:
    with pytest.raises(q.QueryError) as ei:
        q.parse("bicycles>>")
    assert ei.value.errno == errno.EINVAL and ei.value.pos == 9
    assert str(ei.value).startswith("expected a value after '>'")
    assert "(at column 10)" in str(ei.value)
    with pytest.raises(q.QueryError, match="after '='"):
        q.parse("ext:jpg label==cat")
    # a value that starts with an operator character is still a value when quoted
    assert q.parse('label=">=cat"') == q.Tag("label", "=", ">=cat")
    assert q.parse("url:http://a:8") == q.Tag("url", "=", "http://a:8")


def test_a_nul_in_a_query_is_einval_at_its_column(tmp_path: Path) -> None:
    """A NUL reached SQLite's full-text parser as an unterminated string (EIO); it is a
    query error like any other, from the parser and from a search through a client."""
    with pytest.raises(q.QueryError) as ei:
        q.parse("0\x00")
    assert ei.value.errno == errno.EINVAL and ei.value.pos == 1
    with Client(data_dir=str(tmp_path / "fs")) as fs:
        fs.write_bytes("/a.txt", b"x")
        with pytest.raises((ValueError, OSError)) as oe:  # QueryError here, OSError remote
            fs.search("a\x00b", wait=True)
        assert oe.value.errno == errno.EINVAL


def test_key_matching() -> None:
    assert q.key_matches("bicycles", "bicycles")
    assert q.key_matches("bicycles", "tags.bicycles")
    assert q.key_matches("tags.bicycles", "a.tags.bicycles")
    assert not q.key_matches("tags.bicycles", "bicycles")
    assert not q.key_matches("cycles", "tags.bicycles")
    assert q.key_scopes("bbox", "det.bbox.w") == {"det.bbox"}
    assert q.key_scopes("a", "a.b.a") == {"a", "a.b.a"}
    assert q.key_scopes("x", "det.bbox.w") == set()


def test_new_tag_keys_are_seen_by_the_next_search(tmp_path: Path) -> None:
    """The list of indexed keys a bare key is matched against follows the index."""
    client = Client(data_dir=str(tmp_path / "data"))
    idx = EmbeddedIndex(tmp_path / "idx" / "index.db")
    try:
        cons = Consumer(source_for(client), idx)
        client.write_bytes("/a", b"")
        client.setxattr("/a", "user.bicycles", b"4")
        cons.catch_up()
        assert idx.search("bicycles>3").paths == ["/a"]
        client.write_bytes("/b", b"")
        client.setxattr("/b", "user.tags", b'{"bicycles": 5}')
        cons.catch_up()
        assert sorted(idx.search("bicycles>3").paths) == ["/a", "/b"]
        assert idx.tag_keys(idx.reader()) == ["bicycles", "tags.bicycles"]
    finally:
        idx.close()
        client.close()


def test_search_entry_point_waits_for_the_head(tmp_path: Path) -> None:
    client = Client(data_dir=str(tmp_path))
    try:
        client.makedirs("/d")
        for i in range(50):
            client.write_bytes(f"/d/f{i}.jpg", b"")
            client.setxattr(f"/d/f{i}.jpg", "user.n", str(i).encode())
        res = search(client, "n>=40 under:/d", wait=True, sort="name", limit=100)
        assert res.waited_for == client.changelog_head()
        assert res.position >= res.waited_for
        assert sorted(res.paths) == sorted(expected(client, "n>=40 under:/d"))
        client.rmtree("/d")
        assert search(client, "n>=0", wait=True).hits == []
    finally:
        client.close()


def test_consumer_status_and_source_reset(tmp_path: Path) -> None:
    client = Client(data_dir=str(tmp_path / "a"))
    idx = EmbeddedIndex(tmp_path / "idx" / "index.db")
    try:
        client.write_bytes("/x", b"")
        cons = Consumer(source_for(client), idx)
        st = cons.status()
        assert st.lag_records > 0 and st.position == 0
        cons.catch_up()
        st = cons.status()
        assert st.lag_records == 0 and st.position == st.head == client.changelog_head()
        # A different (newer, empty) namespace behind the same checkpoint: rebuilt.
        other = Client(data_dir=str(tmp_path / "b"))
        try:
            Consumer(source_for(other), idx).step()
            assert idx.position() == 0 and idx.search("").hits == []
        finally:
            other.close()
    finally:
        idx.close()
        client.close()


def test_consumer_lag_seconds_is_commit_to_applied(tmp_path: Path) -> None:
    """lag_seconds is the age of the oldest committed record not yet applied (0 when
    caught up), not the time since the consumer's last batch."""
    client = Client(data_dir=str(tmp_path / "a"))
    idx = EmbeddedIndex(tmp_path / "idx" / "index.db")

    def bracket(write):  # type: ignore[no-untyped-def]
        before = time.time_ns()
        write()
        return before, time.time_ns()

    def lag_within(cons: Consumer, since: tuple[int, int]) -> float:
        t1 = time.time_ns()
        st = cons.status()
        t2 = time.time_ns()
        assert (t1 - since[1]) / 1e9 <= st.lag_seconds <= (t2 - since[0]) / 1e9, (st, since)
        return st.lag_seconds

    try:
        a = bracket(lambda: client.write_bytes("/a", b"1"))
        head_a = client.changelog_head()
        time.sleep(0.4)
        b = bracket(lambda: client.write_bytes("/b", b"2"))
        time.sleep(0.4)
        cons = Consumer(source_for(client), idx)
        assert lag_within(cons, a) >= 0.8  # nothing applied: as old as the first record
        cons.catch_up(head_a)  # a batch just now; what is left was committed 0.4 s ago
        assert cons.status().lag_records > 0
        assert lag_within(cons, b) >= 0.4
        cons.catch_up()
        st = cons.status()
        assert st.lag_records == 0 and st.lag_seconds == 0.0
        c = bracket(lambda: client.write_bytes("/c", b"3"))  # committed, not yet read
        time.sleep(0.3)
        assert lag_within(cons, c) >= 0.3
        cons.catch_up()
        assert cons.status().lag_seconds == 0.0
    finally:
        idx.close()
        client.close()


def test_indexer_process_killed_with_sigkill_resumes(tmp_path: Path) -> None:
    data, ixdir = tmp_path / "data", tmp_path / "idx"
    client = Client(data_dir=str(data))
    rnd = random.Random(11)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    cmd = [sys.executable, "-m", "metafs.cli", "indexer", "--data", str(data),
           "--index", str(ixdir), "--report", "0"]
    try:
        client.makedirs("/t")
        kills = 0
        for round_ in range(4):
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            ents = [BulkFile(f"r{round_}/f{i}.jpg", xattrs={"user.k": str(i).encode()})
                    for i in range(rnd.randrange(500, 3000))]
            client.bulk_create("/t", ents)
            client.rename(f"/t/r{round_}", f"/t/s{round_}")
            if round_:
                client.rmtree(f"/t/s{round_ - 1}")
            time.sleep(rnd.random() * 0.5)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        assert kills == 4
        idx = open_index(client.settings, path=str(ixdir))
        Consumer(source_for(client), idx).catch_up()
        fresh = EmbeddedIndex(tmp_path / "fresh" / "index.db")
        Consumer(source_for(client), fresh).catch_up(idx.position())
        assert dump(idx) == dump(fresh)
        got = idx.search("k>=100 under:/t", limit=10_000)
        assert sorted(got.paths) == sorted(expected(client, "k>=100 under:/t"))
        idx.close()
        fresh.close()
    finally:
        client.close()


def test_cli_search(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from metafs.cli import main

    client = Client(data_dir=str(tmp_path))
    client.write_bytes("/a.jpg", b"12")
    client.setxattr("/a.jpg", "user.bicycles", b"4")
    client.close()
    assert main(["indexer", "--data", str(tmp_path), "--once"]) == 0
    capsys.readouterr()
    assert main(["search", "--data", str(tmp_path), "bicycles>3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [h["path"] for h in out["hits"]] == ["/a.jpg"]
    assert out["hits"][0]["tags"] == {"bicycles": 4}
    assert main(["search", "--data", str(tmp_path), "bicycles>"]) == 2
    assert "needs a value" in capsys.readouterr().err


# ---------------------------------------------------------------------- the planner
PLANNER_QUERIES = [
    "bicycles>3",
    "bicycles>3 ext:jpg under:/datasets/coco \"red car\"",
    "score>=0.5 score<0.75",
    "score>=0.25 score<=0.5 bicycles>=1",
    "score:0.1..0.9 NOT label=cat",
    "(label=cat OR label=dog) NOT reviewed=true",
    "(label=cat OR label=dog) under:/datasets/voc",
    "(bicycles=1 ext:png) OR (label=person -ext:jpg)",
    "vals>5 vals<3",
    "vals>=2 vals<=2",
    "vals>1 vals<9 label=dog",
    "exists:det det.bbox.w>=3 det.bbox.w<12",
    "red",
    "red ext:jpg",
    "red NOT bicycles>2",
    "name:img1* bicycles>2",
    "size>10 ext:png",
    "size>=0 size<30 size>5",
    "type:file bicycles<6",
    "ino>5 ino<40 label=car",
    "under:/datasets -under:/datasets/coco label!=cat",
    "label>=c label<e",
]


@pytest.mark.parametrize("cap", [1, 4, 25, 100_000])
def test_planner_paths_match_namespace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       cap: int) -> None:
    """Every plan (narrow sets driving, broad terms probed per row, free text streamed,
    merged ranges, counting) gives the namespace's answer: the estimate cap decides which
    terms are narrow, so small caps force the per-row paths on a small tree."""
    from metafs.cdc.search import embedded

    monkeypatch.setattr(embedded, "ESTIMATE_CAP", cap)
    client = Client(data_dir=str(tmp_path / "data"))
    idx = EmbeddedIndex(tmp_path / "idx" / "index.db")
    try:
        SearchBackendTests.populate(client, seed=21, n=120)
        rnd = random.Random(5)
        for i, (top, _, files) in enumerate(client.walk("/")):
            for f in files:
                p = top.rstrip("/") + "/" + f
                if rnd.random() < 0.4:  # a multi-valued numeric key
                    vals = [rnd.randrange(0, 10) for _ in range(rnd.randrange(1, 4))]
                    client.setxattr(p, "user.vals", json.dumps(vals).encode())
        Consumer(source_for(client), idx, batch=50).catch_up()
        c = idx.reader()
        assert c.execute("SELECT 1 FROM multi WHERE key='vals'").fetchone()
        assert not c.execute("SELECT 1 FROM multi WHERE key='score'").fetchone()
        for query in PLANNER_QUERIES:
            want = expected(client, query)
            full = idx.search(query, limit=10_000, count=True)
            assert sorted(full.paths) == sorted(want), query
            assert full.total == len(full.hits), query
            inos = [h["ino"] for h in full.hits]
            assert inos == sorted(inos), query  # unsorted results come in ino order
            for k in (1, 3, 10):  # a limit stops early but returns the same first hits
                got = idx.search(query, limit=k)
                assert [h["ino"] for h in got.hits] == inos[:k], (query, k)
            page = idx.search(query, limit=4, offset=2)
            assert [h["ino"] for h in page.hits] == inos[2:6], query
            srt = idx.search(query, limit=5, sort="-size,name")
            ref = sorted(full.hits, key=lambda h: (-h["size"], h["name"], h["ino"]))[:5]
            assert [h["ino"] for h in srt.hits] == [h["ino"] for h in ref], query
    finally:
        idx.close()
        client.close()


def test_multi_valued_ranges_are_not_merged(tmp_path: Path) -> None:
    """On a key some document holds several values of, each comparison may be met by a
    different value (the shared semantics of every back end): no merged range."""
    client = Client(data_dir=str(tmp_path / "data"))
    idx = EmbeddedIndex(tmp_path / "idx" / "index.db")
    try:
        client.write_bytes("/a", b"")
        client.write_bytes("/b", b"")
        client.setxattr("/a", "user.s", b"[0.1, 0.9]")
        client.setxattr("/b", "user.s", b"0.5")
        client.setxattr("/b", "user.t", b"0.7")
        Consumer(source_for(client), idx).catch_up()
        assert sorted(idx.search("s>=0.5 s<0.501").paths) == ["/a", "/b"]
        assert idx.search("t>0.6 t<0.8").paths == ["/b"]
        assert idx.search("t>0.6 t<0.65").paths == []
    finally:
        idx.close()
        client.close()


def test_bulk_replay_builds_indexes_at_the_head(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A replay into an empty index drops the query indexes, answers correctly without
    them, survives a crash, and builds them when it reaches the head; the result equals a
    replay that never left normal mode."""
    from metafs.cdc.search import store

    client = Client(data_dir=str(tmp_path / "data"))
    try:
        SearchBackendTests.populate(client, seed=8, n=80)
        client.rename("/datasets/coco", "/coco")
        head = client.changelog_head()
        normal = EmbeddedIndex(tmp_path / "normal" / "index.db")
        Consumer(source_for(client), normal, batch=10).catch_up()
        assert not normal.in_bulk()

        monkeypatch.setattr(store, "BULK_MIN_RECORDS", 20)
        bulk = EmbeddedIndex(tmp_path / "bulk" / "index.db")

        class Crash(Exception):
            pass

        seen = [0]

        def hook(_r: object) -> None:
            seen[0] += 1
            if seen[0] == 130:
                raise Crash

        with pytest.raises(Crash):
            Consumer(source_for(client), bulk, batch=50, on_record=hook).catch_up()
        path = bulk.path
        bulk.close()
        bulk = EmbeddedIndex(path)  # a restart mid-replay: still in bulk mode
        assert bulk.in_bulk() and 0 < bulk.position() < head
        names = {r[0] for r in bulk.reader().execute(
            "SELECT name FROM sqlite_master WHERE type='index'")}
        assert "tags_num" not in names and "docs_parent" not in names
        q_ = "bicycles>2 under:/coco"
        part = bulk.search(q_, limit=10_000)  # correct (if slower) without the indexes
        Consumer(source_for(client), bulk, batch=50).catch_up(bulk.position())
        assert part.position == bulk.position()
        Consumer(source_for(client), bulk, batch=50).catch_up()
        assert not bulk.in_bulk()
        names = {r[0] for r in bulk.reader().execute(
            "SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"tags_num", "tags_str", "docs_parent", "dirs_parent"} <= names
        assert dump(bulk) == dump(normal)
        assert sorted(bulk.search(q_, limit=10_000).paths) == sorted(expected(client, q_))
        bulk.close()
        normal.close()
    finally:
        client.close()


def test_index_of_another_schema_version_is_rebuilt(tmp_path: Path) -> None:
    import sqlite3

    client = Client(data_dir=str(tmp_path / "data"))
    try:
        client.write_bytes("/a.jpg", b"")
        client.setxattr("/a.jpg", "user.n", b"1")
        f = tmp_path / "idx" / "index.db"
        f.parent.mkdir()
        old = sqlite3.connect(f)  # the first layout: rowid tags without a seq column
        old.executescript("CREATE TABLE meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
                          "INSERT INTO meta VALUES ('position', 99);"
                          "CREATE TABLE tags(ino, xattr, key, kind, num, str);")
        old.close()
        idx = EmbeddedIndex(f)
        assert idx.position() == 0
        Consumer(source_for(client), idx).catch_up()
        assert idx.search("n=1").paths == ["/a.jpg"]
        idx.close()
    finally:
        client.close()


def test_one_batch_equals_record_by_record(tmp_path: Path) -> None:
    """Rows of documents created in a batch are written together at the end of the batch
    or before any record that reads them: one big batch of mixed records gives the same
    index as applying them one at a time."""
    client = Client(data_dir=str(tmp_path / "data"))
    try:
        client.makedirs("/a/b")
        for i in range(30):
            p = f"/a/f{i}.jpg"
            client.write_bytes(p, b"x" * i)
            client.setxattr(p, "user.n", str(i).encode())
            client.setxattr(p, "user.l", b'["x", "y"]' if i % 3 else b'"caption words"')
            if i % 4 == 0:
                client.setxattr(p, "user.n", str(100 + i).encode())  # re-set in the batch
            if i % 5 == 0:
                client.link(p, f"/a/b/h{i}.jpg")
                client.rename(p, f"/a/b/r{i}.jpg")
                client.setxattr(f"/a/b/r{i}.jpg", "user.m", b"1")
            if i % 7 == 0:
                client.removexattr(f"/a/f{i}.jpg" if i % 5 else f"/a/b/r{i}.jpg", "user.l")
            if i % 6 == 0:
                client.remove(f"/a/f{i}.jpg" if i % 5 else f"/a/b/r{i}.jpg")
        one = EmbeddedIndex(tmp_path / "one" / "index.db")
        big = EmbeddedIndex(tmp_path / "big" / "index.db")
        Consumer(source_for(client), one, batch=1).catch_up()
        Consumer(source_for(client), big, batch=100_000).catch_up()
        assert dump(one) == dump(big)
        for query in ("n>=100", "l=y", "caption", "exists:m under:/a/b", "n<10 -l=x"):
            hits = big.search(query, limit=1000).hits  # every link of a hard-linked file
            assert sorted(p for h in hits for p in h["paths"]) == \
                sorted(expected(client, query)), query
        one.close()
        big.close()
    finally:
        client.close()


@pytest.mark.slow
def test_rename_of_a_directory_with_100000_descendants(tmp_path: Path) -> None:
    """A directory rename changes one directory row of the index, whatever the subtree:
    after it, every descendant is found under the new name (and none under the old), with
    its new path, once the indexer has reached the rename's changelog position."""
    from metafs.client import BulkFile

    client = Client(data_dir=str(tmp_path))
    try:
        for d in range(100):  # 100 directories of 1,000 tagged files, 10 levels deep
            deep = f"/coco/train/{d % 10}/" + "/".join(f"l{k}" for k in range(7)) + f"/d{d}"
            client.bulk_create(deep, [BulkFile(f"f{i}.jpg", b"", xattrs={
                "user.bicycles": str(i % 7).encode()}) for i in range(1000)])
        assert search(client, "ext:jpg under:/coco", wait=True, count=True,
                      limit=1).total == 100_000
        head_before = client.changelog_head()
        client.rename("/coco", "/coco-2017")
        assert client.changelog_head() == head_before + 1  # one record for the whole move
        res = search(client, "bicycles>5 under:/coco-2017/train/3", wait=True, count=True,
                     limit=10_000, sort="name")
        levels = "/".join(f"l{k}" for k in range(7))
        want = {f"/coco-2017/train/3/{levels}/d{d}/f{i}.jpg"
                for d in range(3, 100, 10) for i in range(6, 1000, 7)}  # bicycles == 6
        assert res.total == len(want) == 1420
        assert set(res.paths) == want
        assert search(client, "under:/coco", wait=True, count=True).total == 0
    finally:
        client.close()
