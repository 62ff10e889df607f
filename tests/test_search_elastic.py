"""The Elasticsearch back end, against a local server that answers as Elasticsearch would:
the shared back-end suite, plus the exact requests it sends and the failures it must
survive (409 conflicts, partial bulk failures, a server that is down)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

pytest.importorskip("elasticsearch")
from elasticsearch import Elasticsearch  # noqa: E402

from metafs.cdc.consumer import Consumer  # noqa: E402
from metafs.cdc.search.elastic import ElasticIndex  # noqa: E402
from metafs.cdc.source import source_for  # noqa: E402
from metafs.client import Client  # noqa: E402
from metafs.testing import SearchBackendTests  # noqa: E402

from es_fake import FakeES  # noqa: E402


class TestElastic(SearchBackendTests):
    @pytest.fixture(autouse=True)
    def _server(self) -> Iterator[None]:
        self.fake = FakeES()
        self.es = Elasticsearch(self.fake.url, max_retries=0)
        yield
        self.fake.close()

    def make_backend(self, path: Path) -> ElasticIndex:
        return ElasticIndex(path / "es-state.db", client=self.es, index=f"t-{path.name}",
                            backoff=0.01)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[FakeES, Client, ElasticIndex]]:
    fake = FakeES()
    client = Client(data_dir=str(tmp_path / "data"))
    ix = ElasticIndex(tmp_path / "es.db", client=Elasticsearch(fake.url, max_retries=0),
                      index="files", backoff=0.01)
    yield fake, client, ix
    ix.close()
    client.close()
    fake.close()


def _bulk_lines(fake: FakeES) -> list[list[dict]]:
    return [[json.loads(x) for x in body.splitlines()] for m, p, body in fake.requests
            if p.split("?")[0].endswith("/_bulk")]


def test_exact_requests(setup: tuple[FakeES, Client, ElasticIndex]) -> None:
    fake, client, ix = setup
    client.write_bytes("/a.jpg", b"1")
    client.setxattr("/a.jpg", "user.det", b'{"n": 3, "l": ["cat"]}')
    Consumer(source_for(client), ix).catch_up()
    tpl = fake.templates["files-template"]
    assert tpl["index_patterns"] == ["files"]
    assert tpl["template"]["mappings"]["properties"]["tags"]["type"] == "nested"
    bulks = _bulk_lines(fake)
    assert len(bulks) == 1
    action, doc = bulks[0]
    assert action["index"]["_id"] == str(client.stat("/a.jpg").st_ino)
    assert action["index"]["version_type"] == "external"
    assert action["index"]["version"] == client.changelog_head()
    assert doc["name"] == "a.jpg" and doc["ext"] == "jpg" and doc["deleted"] is False
    assert doc["tags"] == [{"k": "det.n", "n": 3.0}, {"k": "det.l", "s": "cat"}]
    assert "refresh=wait_for" in [p for m, p, b in fake.requests if "_bulk" in p][0]


def test_a_bare_key_is_a_query_over_every_tag_key(setup: tuple[FakeES, Client, ElasticIndex]
                                                  ) -> None:
    fake, client, ix = setup
    client.write_bytes("/a.jpg", b"1")
    client.setxattr("/a.jpg", "user.tags", b'{"bicycles": 4}')
    Consumer(source_for(client), ix).catch_up()
    assert ix.search("bicycles>3").paths == ["/a.jpg"]
    body = json.loads([b for m, p, b in fake.requests if "_search" in p][-1])
    nested = body["query"]["bool"]["filter"][0]["nested"]
    assert nested["path"] == "tags"
    key, value = nested["query"]["bool"]["filter"]
    assert key == {"bool": {"should": [{"term": {"tags.k": "bicycles"}},
                                       {"wildcard": {"tags.k": {"value": "*.bicycles"}}}],
                            "minimum_should_match": 1}}
    assert value == {"range": {"tags.n": {"gt": 3.0}}}
    assert ix.search("tags.bicycles>3").paths == ["/a.jpg"]
    assert ix.search("labels.bicycles>3").paths == []


def test_replay_gets_409_and_is_harmless(setup: tuple[FakeES, Client, ElasticIndex],
                                         tmp_path: Path) -> None:
    fake, client, ix = setup
    client.write_bytes("/a.jpg", b"1")
    client.remove("/a.jpg")
    Consumer(source_for(client), ix).catch_up()
    ino_docs = fake.indices["files"]
    (ver, doc), = ino_docs.values()
    assert doc["deleted"] is True  # a tombstone at the removal's position
    # An indexer that lost its local state replays everything into the same index: every
    # version is sent again and refused with 409, and nothing changes.
    again = ElasticIndex(tmp_path / "lost-state.db", client=ix.es, index="files",
                         backoff=0.01)
    Consumer(source_for(client), again).catch_up()
    assert list(fake.indices["files"].values()) == [(ver, doc)]
    assert again.search("").hits == []
    again.close()
    # A late update with an older version cannot undo the delete.
    status, resp = fake.bulk(json.dumps({"index": {"_index": "files", "_id": next(iter(
        ino_docs)), "version": ver - 1, "version_type": "external"}}) + "\n" +
        json.dumps({"name": "a.jpg", "deleted": False}) + "\n")
    assert resp["items"][0]["index"]["status"] == 409


def test_rebuild_starts_the_index_over(setup: tuple[FakeES, Client, ElasticIndex]) -> None:
    """A rebuild (reset, then replay) drops the Elasticsearch index first: a document of an
    old history with a version the new changelog has not reached yet (a namespace restored
    from a backup) must not refuse the new history's updates."""
    fake, client, ix = setup
    client.write_bytes("/a.jpg", b"1")
    Consumer(source_for(client), ix).catch_up()
    ino = str(client.stat("/a.jpg").st_ino)
    # a leftover of another history: same id, a far higher version, another name
    fake.indices["files"][ino] = (10**9, {"name": "stale.jpg", "deleted": False})
    ix.reset()
    assert "files" not in fake.indices
    Consumer(source_for(client), ix).catch_up()
    ver, doc = fake.indices["files"][ino]
    assert doc["name"] == "a.jpg" and ver <= client.changelog_head()
    assert ix.search("name:a.jpg").paths == ["/a.jpg"]


def test_partial_bulk_failure_is_retried(setup: tuple[FakeES, Client, ElasticIndex]) -> None:
    fake, client, ix = setup
    for i in range(5):
        client.write_bytes(f"/f{i}", b"")
    fake.fail_items = 2
    Consumer(source_for(client), ix).catch_up()
    bulks = _bulk_lines(fake)
    assert len(bulks) == 2 and len(bulks[1]) == 4  # only the 2 failed items were resent
    assert len(ix.search("", limit=100).hits) == 5


def test_server_down_keeps_the_checkpoint(setup: tuple[FakeES, Client, ElasticIndex]) -> None:
    fake, client, ix = setup
    client.write_bytes("/x.jpg", b"")
    fake.down = True
    cons = Consumer(source_for(client), ix)
    with pytest.raises(Exception):
        cons.step()
    assert ix.position() == 0 and ix.committed_position() == 0
    fake.down = False
    cons.catch_up()
    assert ix.search("ext:jpg").paths == ["/x.jpg"]


def _raw(fake: FakeES, method: str, path: str, headers: dict[str, str],
         body: bytes = b"") -> tuple[int, dict]:
    import http.client

    conn = http.client.HTTPConnection(fake.url.removeprefix("http://"), timeout=10)
    try:
        conn.request(method, path, body=body or None, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def test_server_refuses_compatibility_versions_it_does_not_serve() -> None:
    """What an 8.x server answers a 9.x client (compatible-with=9), as Elasticsearch does."""
    fake = FakeES()
    v = "application/vnd.elasticsearch+json; compatible-with={}".format
    query = b'{"query": {"match_all": {}}}'
    try:
        status, err = _raw(fake, "GET", "/", {"Accept": v(9)})
        assert status == 400 and err["error"]["type"] == "media_type_header_exception"
        assert "must be either version 8 or 7, but found 9" in \
            err["error"]["caused_by"]["reason"]
        for headers, problem in (({"Accept": v(9), "Content-Type": v(9)}, "but found 9"),
                                 ({"Accept": v(8), "Content-Type": "application/json"},
                                  "required on both"),
                                 ({"Accept": v(8), "Content-Type": v(7)}, "the same version")):
            status, err = _raw(fake, "POST", "/files/_search", headers, query)
            assert status == 400 and problem in err["error"]["caused_by"]["reason"], err
        for headers in ({"Accept": v(8), "Content-Type": v(8)},
                        {"Accept": v(7), "Content-Type": v(7)},
                        {"Accept": "application/json", "Content-Type": "application/json"}):
            status, reply = _raw(fake, "POST", "/files/_search", headers, query)
            assert status == 200 and reply["hits"]["hits"] == [], reply
    finally:
        fake.close()


def test_client_speaks_the_major_version_of_the_compose_server() -> None:
    """The installed client, the server docker-compose.yml runs and the fake agree on the
    major version, and the client's requests pass the fake's checks."""
    import elasticsearch
    import yaml

    from es_fake import SERVER_VERSION

    compose = yaml.safe_load((Path(__file__).parents[1] / "docker-compose.yml").read_text())
    image_version = compose["services"]["elasticsearch"]["image"].rpartition(":")[2]
    assert image_version == SERVER_VERSION
    assert elasticsearch.__versionstr__.split(".")[0] == SERVER_VERSION.split(".")[0]
    fake = FakeES()
    try:
        assert Elasticsearch(fake.url, max_retries=0).info()["version"]["number"] == \
            SERVER_VERSION
    finally:
        fake.close()
