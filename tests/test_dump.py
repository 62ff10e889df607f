"""metafs dump / load: a SQLite volume moves to PostgreSQL and back, record for record, and
the moved volume reads back byte for byte through a client."""

from __future__ import annotations

import errno
import json
import stat
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metafs.client import Client
from metafs.config import Settings
from metafs.namenode import schema
from metafs.namenode.server import Namenode
from metafs.ops.dump import (DUMPED_TABLES, PER_DATABASE_TABLES, RUNTIME_TABLES, DumpError,
                             dump, load)

BLOCK = 64 * 1024


def _populate(fs: Client) -> dict[str, bytes]:
    """A volume with directories, inline and block files, symlinks, hard links, xattrs,
    a quota, renames and removals in its history; returns path -> content of its files."""
    files: dict[str, bytes] = {}
    fs.makedirs("/data/images/train")
    fs.makedirs("/models")
    for i in range(30):
        p = f"/data/images/train/img{i:03d}.jpg"
        files[p] = os.urandom(100 + i * 37)
        fs.write_bytes(p, files[p])
        fs.setxattr(p, "user.tags", json.dumps({"bicycles": i % 5}).encode())
    big = os.urandom(3 * BLOCK + 12345)  # past the inline limit: in blocks
    fs.write_bytes("/models/tmp.bin", big)
    fs.rename("/models/tmp.bin", "/models/model.bin")
    files["/models/model.bin"] = big
    fs.link("/models/model.bin", "/models/latest.bin")
    files["/models/latest.bin"] = big
    fs.symlink("../models/model.bin", "/data/model-link")
    fs.mkdir("/data/old")
    fs.rename("/data/old", "/data/archive")
    fs.write_bytes("/data/archive/gone.txt", b"x")
    fs.remove("/data/archive/gone.txt")
    fs.write_bytes("/data/naïve name ✓.txt", b"unicode")
    files["/data/naïve name ✓.txt"] = b"unicode"
    fs.setxattr("/data", "user.owner", b"\x00\xffbinary")
    fs.chmod("/data/archive", 0o750)
    fs.write_bytes("/empty", b"")
    files["/empty"] = b""
    return files


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


@pytest.fixture
def volume(settings: Settings) -> tuple[Settings, dict[str, bytes]]:
    s = settings.with_(inline_limit=4096, block_size=BLOCK)
    with Client(settings=s) as fs:
        files = _populate(fs)
    nn = Namenode(s, background=False)
    try:
        nn.ns.quotas.set(nn.ns.resolve(_root(), "/data").ino, 1000, 10 << 20)
        from metafs.namenode.projects import Caller, Projects

        admin = Caller("admin", admin=True)
        projects = Projects(nn.ns)
        projects.create(admin, "vision", owner="alice")
        projects.add(admin, "vision", "bob", "data_scientist")
        projects.gateway(admin, "vision", "fuse-gw")
    finally:
        nn.close()
    return s, files


def _root():  # type: ignore[no-untyped-def]
    from metafs.posix import ROOT

    return ROOT


def _dump(s: Settings, out: Path) -> dict[str, int]:
    nn = Namenode(s, background=False)
    try:
        return dump(nn.engine, out)
    finally:
        nn.close()


def _load(s: Settings, src: Path) -> dict[str, int]:
    from metafs.namenode.engine import engine_for

    eng = engine_for(s.effective_db_url, s)
    try:
        return load(eng, src)
    finally:
        eng.dispose()


def test_every_table_is_dumped_or_runtime_state() -> None:
    assert (set(DUMPED_TABLES) | set(RUNTIME_TABLES) | set(PER_DATABASE_TABLES)
            == set(schema.metadata.tables))


def test_sqlite_to_postgres_and_back(volume, pg_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s, files = volume
    first = tmp_path / "sqlite.jsonl"
    counts = _dump(s, first)
    assert counts["inode"] >= 35 and counts["dentry"] >= 36 and counts["change"] > 0
    recs = [json.loads(line) for line in _lines(first)]
    assert recs[0]["kind"] == "header" and recs[0]["source"]["engine"] == "sqlite"
    model = [r for r in recs if r["kind"] == "inode" and r.get("blocks")]
    assert len(model) == 1 and model[0]["nlink"] == 2 and len(model[0]["blocks"]) == 4
    assert any(r["kind"] == "inode" and r.get("quota") for r in recs)
    assert any(r["kind"] == "inode" and r.get("target") == "../models/model.bin" for r in recs)
    rows = {(r["table"], r["values"].get("user")) for r in recs if r["kind"] == "row"}
    assert {("projects", None), ("project_members", "alice"),
            ("project_members", "bob"), ("project_gateways", None)} <= rows

    # into PostgreSQL, with the same block store
    pg = s.with_(db_url=pg_url, blocks_url=s.effective_blocks_url)
    assert _load(pg, first) == counts
    second = tmp_path / "pg.jsonl"
    _dump(pg, second)
    assert json.loads(_lines(second)[0])["source"]["engine"] == "postgresql"
    assert _lines(second)[1:] == _lines(first)[1:]

    with Client(settings=pg) as fs:
        for path, content in files.items():
            assert fs.read_bytes(path) == content, path
        assert fs.readlink("/data/model-link") == "../models/model.bin"
        assert fs.read_bytes("/data/model-link") == files["/models/model.bin"]
        assert fs.stat("/models/latest.bin").st_ino == fs.stat("/models/model.bin").st_ino
        assert fs.stat("/models/model.bin").st_nlink == 2
        assert fs.getxattr("/data", "user.owner") == b"\x00\xffbinary"
        assert fs.stat("/data/archive").st_mode & 0o777 == 0o750
        assert stat.S_ISDIR(fs.stat("/Projects/vision/datasets").st_mode)
        # the loaded volume keeps working: new ids do not collide with loaded ones
        before = {fs.stat(p).st_ino for p in files}
        fs.write_bytes("/new.txt", b"after the move")
        assert fs.stat("/new.txt").st_ino not in before
        assert fs.changelog_head() > counts["change"]

    # and back to SQLite, from a dump taken before the writes above
    back = s.with_(data_dir=str(tmp_path / "back"), blocks_url=s.effective_blocks_url)
    _load(back, second)
    third = tmp_path / "back.jsonl"
    _dump(back, third)
    assert _lines(third)[1:] == _lines(first)[1:]


def test_load_refuses_a_database_that_holds_a_volume(volume, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s, _files = volume
    out = tmp_path / "v.jsonl"
    _dump(s, out)
    with pytest.raises(OSError) as exc:
        _load(s, out)
    assert exc.value.errno == errno.ENOTEMPTY and "empty database" in str(exc.value)


def test_truncated_or_foreign_dump_loads_nothing(volume, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s, _files = volume
    out = tmp_path / "v.jsonl"
    _dump(s, out)
    cut = tmp_path / "cut.jsonl"
    cut.write_text("\n".join(_lines(out)[:-3]) + "\n")
    target = s.with_(data_dir=str(tmp_path / "t"))
    with pytest.raises(DumpError, match="truncated"):
        _load(target, cut)
    junk = tmp_path / "junk.jsonl"
    junk.write_text('{"kind": "inode"}\n')
    with pytest.raises(DumpError, match="not a metafs dump"):
        _load(target, junk)
    # nothing was loaded: the full dump still loads
    assert _load(target, out)["inode"] > 0


def test_dump_never_overwrites(volume, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s, _files = volume
    out = tmp_path / "v.jsonl"
    out.write_text("keep")
    with pytest.raises(FileExistsError):
        _dump(s, out)
    assert out.read_text() == "keep"


def test_dump_and_load_commands(volume, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s, files = volume
    out = tmp_path / "cli.jsonl"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    run = [sys.executable, "-m", "metafs.cli"]
    p = subprocess.run(run + ["dump", "--data", s.data_dir, str(out)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    target = tmp_path / "t"
    p = subprocess.run(run + ["load", "--data", str(target), str(out)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    p = subprocess.run(run + ["load", "--data", str(target), str(out)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "empty database" in p.stderr
    with Client(settings=s.with_(data_dir=str(target),
                                 blocks_url=s.effective_blocks_url)) as fs:
        assert fs.read_bytes("/models/model.bin") == files["/models/model.bin"]
