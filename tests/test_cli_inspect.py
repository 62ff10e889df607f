"""`metafs info`, `metafs summary` and `metafs warmup`, run as programs against a real
volume: embedded (--data) and through a `metafs serve` over gRPC (--namenode)."""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from metafs.client import Client
from metafs.config import load

METAFS = [sys.executable, "-m", "metafs.cli"]
MIB = 1 << 20


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("METAFS_")}
    e["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    e.update(extra)
    return e


class Volume:
    def __init__(self, data: Path, conn: list[str]) -> None:
        self.data, self.conn = data, conn

    def client(self, **overrides: str) -> Client:
        where = {"data_dir": str(self.data), "namenode": ""} if self.conn[0] == "--data" \
            else {"namenode": self.conn[1]}
        return Client(settings=load(overrides={**where, **overrides}, environ={}))

    def run(self, *args: str, check: bool = True, **environ: str
            ) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([*METAFS, *args, *self.conn], capture_output=True,
                           text=True, env=env(**environ), timeout=120)
        if check:
            assert p.returncode == 0, p.stderr
        return p

    def json(self, *args: str, **environ: str) -> dict:  # type: ignore[type-arg]
        return json.loads(self.run(*args, "--json", **environ).stdout)


@pytest.fixture(params=["embedded", "grpc"])
def vol(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Volume]:
    data = tmp_path / "data"
    if request.param == "embedded":
        yield Volume(data, ["--data", str(data)])
        return
    ready = tmp_path / "ready"
    srv = subprocess.Popen([*METAFS, "serve", "--data", str(data), "--listen", "127.0.0.1:0",
                            "--ready-file", str(ready)], env=env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while not (ready.exists() and ready.read_text()):
            assert srv.poll() is None, srv.communicate()[1]
            time.sleep(0.05)
        yield Volume(data, ["--namenode", ready.read_text()])
    finally:
        srv.terminate()
        srv.wait(30)


@pytest.fixture
def tree(vol: Volume) -> dict[str, bytes]:
    files = {"/ds/train/big.bin": os.urandom(9 * MIB),   # 3 blocks of 4 MiB
             "/ds/train/a.txt": b"a" * 100,               # inline
             "/ds/train/deep/b.txt": b"b" * 10,
             "/ds/val/c.bin": os.urandom(MIB),
             "/ds/README": b"read me\n"}
    with vol.client() as fs:
        for path, data in files.items():
            fs.makedirs(os.path.dirname(path), exist_ok=True)
            fs.write_bytes(path, data)
        fs.setxattr("/ds/train/big.bin", "user.tags", b'{"bicycles": 4, "split": "train"}')
        fs.setxattr("/ds/train/big.bin", "user.note", b"not json")
        fs.symlink("/ds/train/a.txt", "/ds/link")
    return files


def lineage_of(vol: Volume, path: str) -> dict:  # type: ignore[type-arg]
    """What `metafs prov show` says of ``path``, summed up as `info` does."""
    shown = json.loads(vol.run("prov", "show", path, "--format", "json").stdout)
    runs = {what: {r["id"]: r["name"] for v in shown["versions"] for r in v[what]}
            for what in ("written_by", "read_by")}
    return {"kind": shown["kind"], "versions": len(shown["versions"]),
            **{what: [{"run": k, "name": n} for k, n in sorted(rs.items())]
               for what, rs in runs.items()}}


def test_info_shows_inode_layout_version_tags_and_lineage(vol: Volume,
                                                          tree: dict[str, bytes]) -> None:
    with vol.client() as fs:
        ino = fs.stat("/ds/train/big.bin").st_ino
    got = vol.json("info", "/ds/train/big.bin")
    assert got["ino"] == ino and got["type"] == "file" and got["size"] == 9 * MIB
    assert got["storage"] == "blocks" and got["block_size"] == 4 * MIB
    assert [b["index"] for b in got["blocks"]] == [0, 1, 2]
    assert [b["length"] for b in got["blocks"]] == [4 * MIB, 4 * MIB, MIB]
    assert len({b["key"] for b in got["blocks"]}) == 3
    assert got["tags"] == {"tags": {"bicycles": 4, "split": "train"}, "note": "not json"}
    assert got["lineage"] == lineage_of(vol, "/ds/train/big.bin")
    assert got["lineage"]["versions"] >= 1 and len(got["lineage"]["written_by"]) == 1
    first = got["version"]

    with vol.client() as fs:
        fs.write_bytes("/ds/train/big.bin", b"now small")
    got = vol.json("info", "/ds/train/big.bin")
    assert got["version"] > first and got["storage"] == "inline" and "blocks" not in got
    assert got["lineage"] == lineage_of(vol, "/ds/train/big.bin")

    link = vol.json("info", "/ds/link", "--no-lineage")
    assert link["type"] == "symlink" and link["target"] == "/ds/train/a.txt"
    assert "lineage" not in link
    assert vol.json("info", "/ds")["entries"] == 4
    text = vol.run("info", "/ds/train/a.txt").stdout
    assert "storage: inline" in text and "/ds/train/a.txt:" in text

    p = vol.run("info", "/ds/missing", check=False)
    assert p.returncode == 1
    assert p.stderr.strip() == "metafs info: no such file or directory: /ds/missing [ENOENT]"


def test_summary_counts_files_bytes_inline_and_blocks(vol: Volume,
                                                      tree: dict[str, bytes]) -> None:
    got = vol.json("summary", "/ds")
    total = got["total"]
    assert total["files"] == 5 and total["bytes"] == sum(map(len, tree.values()))
    assert total["dirs"] == 3 and total["others"] == 1  # train, train/deep, val; the link
    assert total["block_files"] == 2 and total["block_bytes"] == 10 * MIB
    assert total["inline_files"] == 3 and total["inline_bytes"] == 118
    rows = {d["path"]: d for d in got["dirs"]}
    assert sorted(rows) == ["/ds/train", "/ds/val"]  # depth 1
    assert rows["/ds/train"]["files"] == 3 and rows["/ds/train"]["block_bytes"] == 9 * MIB
    assert rows["/ds/val"]["files"] == 1
    deeper = vol.json("summary", "/ds", "--depth", "2")
    assert "/ds/train/deep" in {d["path"] for d in deeper["dirs"]}
    # --progress draws on stderr only: stdout stays one JSON document
    p = vol.run("summary", "/ds", "--json", "--progress")
    assert json.loads(p.stdout)["total"] == total
    text = vol.run("summary", "/ds").stdout.splitlines()
    assert text[-1].split()[:2] == ["5", str(total["bytes"])] and text[-1].endswith("/ds")


def test_warmup_fills_the_block_cache_a_later_reader_uses(vol: Volume, tree: dict[str, bytes],
                                                          tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    got = vol.json("warmup", "/ds/train", "/ds/val/c.bin", "--progress",
                   METAFS_BLOCK_CACHE_DIR=str(cache))
    assert got["files"] == 4 and got["inline_files"] == 2
    assert got["blocks"] == 4 and got["cached"] == 4 and got["bytes"] == 10 * MIB
    assert got["cache_dir"] == str(cache)
    again = vol.json("warmup", "/ds", METAFS_BLOCK_CACHE_DIR=str(cache))
    assert again["cached"] == again["blocks"] == 4
    # the blocks are gone from the store: a reader with that cache still has the data
    shutil.rmtree(vol.data / "blocks")
    (vol.data / "blocks").mkdir()
    with vol.client(block_cache_dir=str(cache)) as fs:
        assert fs.read_bytes("/ds/train/big.bin") == tree["/ds/train/big.bin"]
        assert fs.read_bytes("/ds/val/c.bin") == tree["/ds/val/c.bin"]
    # no cache configured (a local store is not cached by default): said, not pretended
    p = vol.run("warmup", "/ds")
    assert "keeps no block cache" in p.stderr and p.stdout == ""


@pytest.mark.parametrize("argv", [["fsck", "--json"], ["gc", "--json", "--grace", "0"],
                                  ["indexer", "--rebuild", "--once"], ["summary", "/", "--json"],
                                  ["warmup", "/", "--json"], ["backup", "{tmp}/backup.db"]])
def test_long_commands_draw_progress_on_a_terminal_and_keep_stdout_clean(
        tmp_path: Path, argv: list[str]) -> None:
    data = tmp_path / "data"
    with Client(data_dir=str(data)) as fs:
        fs.write_bytes("/big", os.urandom(5 * MIB))
        fs.write_bytes("/small", b"s")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    cmd = [*METAFS, *argv, "--data", str(data)]
    e = env(TERM="xterm", COLUMNS="100", METAFS_BLOCK_CACHE_DIR=str(tmp_path / "cache"))
    # stderr a pipe and no --progress: nothing drawn
    quiet = subprocess.run(cmd, capture_output=True, env=e, timeout=120)
    assert quiet.returncode == 0, quiet.stderr
    assert b"\x1b" not in quiet.stderr and b"0:00:" not in quiet.stderr
    (tmp_path / "backup.db").unlink(missing_ok=True)
    # stderr a terminal: the display is drawn there, and stdout holds only the result
    leader, follower = pty.openpty()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=follower, env=e)
    os.close(follower)
    out = p.stdout.read()  # type: ignore[union-attr]
    assert p.wait(120) == 0
    drawn = b""
    while True:
        try:
            chunk = os.read(leader, 1 << 16)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        drawn += chunk
    os.close(leader)
    assert argv[0].encode() in drawn and b"0:00:" in drawn  # the name, the time spent
    assert out == quiet.stdout or argv[0] in ("gc", "backup")  # (timings, file names)
    if "--json" in argv or argv[0] == "indexer":
        json.loads(out)
    assert b"\x1b" not in out
