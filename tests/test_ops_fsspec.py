"""``metafs://`` passes fsspec's own abstract test suite (copy, get, put, open, pipe),
over gRPC to a real namenode, and pandas/pyarrow read parquet files through it."""

from __future__ import annotations

import posixpath
import uuid
from pathlib import Path
from typing import Iterator

import fsspec
import pytest
from fsspec.tests.abstract import AbstractFixtures
from fsspec.tests.abstract.copy import AbstractCopyTests
from fsspec.tests.abstract.get import AbstractGetTests
from fsspec.tests.abstract.open import AbstractOpenTests
from fsspec.tests.abstract.pipe import AbstractPipeTests
from fsspec.tests.abstract.put import AbstractPutTests

from metafs.assembly import build_namenode, serve_grpc
from metafs.client import Client
from metafs.client.fsspec_fs import MetaFileSystem
from metafs.config import load


@pytest.fixture(scope="module")
def namenode_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("fsspec")
    s = load(overrides={"data_dir": str(d / "data")}, environ={})
    nn = build_namenode(s)
    srv = serve_grpc(nn, "127.0.0.1:0")
    try:
        yield srv.address
    finally:
        srv.stop(0)
        nn.close()


@pytest.fixture(scope="module")
def metafs_fs(namenode_address: str) -> Iterator[MetaFileSystem]:
    fs = MetaFileSystem(namenode=namenode_address, skip_instance_cache=True)
    yield fs
    fs.close()


class MetafsFixtures(AbstractFixtures):
    @pytest.fixture
    def fs(self, metafs_fs: MetaFileSystem) -> MetaFileSystem:
        return metafs_fs

    @pytest.fixture
    def fs_join(self):  # type: ignore[no-untyped-def]
        return posixpath.join

    @pytest.fixture
    def fs_path(self, metafs_fs: MetaFileSystem) -> Iterator[str]:
        p = f"/fsspec-{uuid.uuid4().hex[:8]}"
        metafs_fs.makedirs(p, exist_ok=True)
        yield p
        metafs_fs.rm(p, recursive=True)


class TestMetafsCopy(AbstractCopyTests, MetafsFixtures):
    pass


class TestMetafsGet(AbstractGetTests, MetafsFixtures):
    pass


class TestMetafsPut(AbstractPutTests, MetafsFixtures):
    pass


class TestMetafsOpen(AbstractOpenTests, MetafsFixtures):
    pass


class TestMetafsPipe(AbstractPipeTests, MetafsFixtures):
    pass


def test_registered_through_entry_point(namenode_address: str) -> None:
    cls = fsspec.get_filesystem_class("metafs")
    assert cls is MetaFileSystem
    fs, path = fsspec.core.url_to_fs(f"metafs://{namenode_address}/reg/a.txt")
    assert isinstance(fs, MetaFileSystem) and path == "/reg/a.txt"
    with fsspec.open(f"metafs://{namenode_address}/reg/a.txt", "w") as f:
        f.write("hello fsspec")
    with fsspec.open(f"metafs://{namenode_address}/reg/a.txt", "r") as f:
        assert f.read() == "hello fsspec"
    assert fs.cat_file("/reg/a.txt", start=6) == b"fsspec"
    assert fs.cat_file("/reg/a.txt", start=-6, end=-3) == b"fss"
    fs.mv("/reg/a.txt", "/reg/b.txt")
    assert fs.ls("/reg", detail=False) == ["/reg/b.txt"]
    assert fs.info("/reg/b.txt")["size"] == 12


def test_parquet_with_pyarrow_and_pandas(namenode_address: str, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"id": list(range(2000)), "label": [f"cat-{i % 7}" for i in range(2000)],
                      "score": [i / 3 for i in range(2000)]})
    url = f"metafs://{namenode_address}/datasets/pets/labels.parquet"
    with fsspec.open(url, "wb") as f:
        pq.write_table(table, f, row_group_size=500)
    fs, path = fsspec.core.url_to_fs(url)
    # pyarrow reads through the fsspec file system (ranged reads of the footer and groups)
    back = pq.read_table(path, filesystem=fs)
    assert back.equals(table)
    pf = pq.ParquetFile(fs.open(path, "rb"))
    assert pf.metadata.num_row_groups == 4
    assert pf.read_row_group(2).column("id").to_pylist() == list(range(1000, 1500))
    import pandas as pd  # the test extra installs it
    df = pd.read_parquet(url, columns=["label"])
    assert len(df) == 2000 and df["label"][8] == "cat-1"


def test_embedded_data_dir(tmp_path: Path) -> None:
    fs = MetaFileSystem(data_dir=str(tmp_path / "d"), skip_instance_cache=True)
    try:
        fs.pipe_file("/x/y/z.bin", b"\0" * 10)
        assert fs.find("/x") == ["/x/y/z.bin"]
        assert fs.du("/x") == 10
        assert isinstance(fs.client, Client)
    finally:
        fs.close()
