"""The embedded search back end (SQLite FTS5 + typed tags) against the shared suite, plus
the parts around it: tag typing, the query parser, the consumer framework, the
``search()`` entry point, and the indexer process killed with SIGKILL."""

from __future__ import annotations

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
from metafs.cdc.search.api import open_index, release, search
from metafs.cdc.search.embedded import EmbeddedIndex
from metafs.cdc.search.tags import flatten
from metafs.cdc.source import source_for
from metafs.client import BulkFile, Client

from search_suite import SearchSuite, dump, expected


class TestEmbedded(SearchSuite):
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
        release(client)
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


def test_indexer_process_killed_with_sigkill_resumes(tmp_path: Path) -> None:
    data, ixdir = tmp_path / "data", tmp_path / "idx"
    client = Client(data_dir=str(data))
    rnd = random.Random(11)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    cmd = [sys.executable, "-m", "metafs.cdc.search.cli", "indexer", "--data", str(data),
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
    from metafs.cdc.search.cli import main

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
