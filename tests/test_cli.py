"""The `metafs` command, run as a real program against embedded and remote namenodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

METAFS = [sys.executable, "-m", "metafs.cli"]


def run(*args: str, input: bytes | None = None, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("METAFS_")}
    e.update(env or {})
    p = subprocess.run([*METAFS, *args], input=input, capture_output=True, env=e, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"metafs {' '.join(args)} failed ({p.returncode}):\n"
                             f"{p.stderr.decode()}")
    return p


def test_file_commands_on_embedded_namenode(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    run("mkdir", "--data", data, "-p", "/a/b")
    run("put", "--data", data, "-", "/a/b/hello.txt", input=b"hello metafs\n")
    assert run("cat", "--data", data, "/a/b/hello.txt").stdout == b"hello metafs\n"
    run("xattr", "--data", data, "set", "/a/b/hello.txt", "user.tags", '{"k": 1}')
    assert run("xattr", "--data", data, "get", "/a/b/hello.txt", "user.tags").stdout \
        == b'{"k": 1}\n'
    run("mv", "--data", data, "/a/b", "/c")
    listing = run("ls", "--data", data, "-l", "/c").stdout.decode()
    assert "hello.txt" in listing and "-rw-r--r--" in listing
    st = json.loads(run("stat", "--data", data, "/c/hello.txt").stdout)
    assert st["size"] == 13
    lines = run("changelog", "--data", data).stdout.decode().splitlines()
    ops = [json.loads(line)["op"] for line in lines]
    assert ops[:2] == ["OP_MKDIR", "OP_MKDIR"] and "OP_RENAME" in ops
    run("rm", "--data", data, "-r", "/c")
    assert run("ls", "--data", data, "/").stdout == b"a\n"


def test_errors_are_one_clear_line(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    p = run("cat", "--data", data, "/missing", check=False)
    assert p.returncode == 1
    assert p.stderr.decode().strip() == \
        "metafs cat: no such file or directory: /missing [ENOENT]"
    run("mkdir", "--data", data, "/d")
    p = run("mv", "--data", data, "/d", "/d/inside", check=False)
    assert p.returncode == 1 and "[EINVAL]" in p.stderr.decode()
    assert "Traceback" not in p.stderr.decode()


def test_config_file_and_env_select_the_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "from-config"
    cfg = tmp_path / "metafs.toml"
    cfg.write_text(f'data_dir = "{data}"\n')
    run("mkdir", "--config", str(cfg), "/x")
    assert (data / "meta.db").exists()
    env_data = tmp_path / "from-env"
    run("mkdir", "/y", env={"METAFS_DATA_DIR": str(env_data)})
    assert (env_data / "meta.db").exists()
    # a flag beats both
    flag_data = tmp_path / "from-flag"
    run("mkdir", "--config", str(cfg), "--data", str(flag_data), "/z",
        env={"METAFS_DATA_DIR": str(env_data)})
    assert run("ls", "--data", str(flag_data)).stdout == b"z\n"


def test_bad_config_is_refused_clearly(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('no_such_setting = 1\n')
    p = run("ls", "--config", str(cfg), check=False)
    assert p.returncode == 2 and "unknown setting 'no_such_setting'" in p.stderr.decode()


def test_demo_runs(tmp_path: Path) -> None:
    p = run("demo", "--data", str(tmp_path / "demo"), "--no-mount")
    out = p.stdout.decode()
    assert "created 2000 tagged files" in out and "demo finished" in out
    assert "OP_" in out


@pytest.mark.parametrize("cmd", ["ls", "stat /", "status"])
def test_commands_reach_a_remote_namenode(tmp_path: Path, cmd: str) -> None:
    ready = tmp_path / "ready"
    srv = subprocess.Popen([*METAFS, "serve", "--data", str(tmp_path / "nn"),
                            "--listen", "127.0.0.1:0", "--ready-file", str(ready)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(200):
            if ready.exists() and ready.read_text():
                break
            if srv.poll() is not None:
                raise AssertionError(srv.stderr.read().decode())  # type: ignore[union-attr]
            import time

            time.sleep(0.05)
        addr = ready.read_text()
        run("mkdir", "--namenode", addr, "/remote")
        out = run(*cmd.split()[:1], "--namenode", addr, *cmd.split()[1:]).stdout.decode()
        if cmd == "ls":
            assert out == "remote\n"
        elif cmd == "status":
            assert "changelog_head" in out and addr in out
        else:
            assert json.loads(out)["ino"] == 1
    finally:
        srv.terminate()
        assert srv.wait(30) == 0


def test_gc_removes_overwritten_blocks(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    big = tmp_path / "big"
    big.write_bytes(os.urandom(200_000))  # above the inline limit: stored as blocks
    run("put", "--data", data, str(big), "/big")
    run("put", "--data", data, str(big), "/big")  # the first version's blocks are garbage
    dry = json.loads(run("gc", "--data", data, "--grace", "0", "--dry-run", "--json").stdout)
    assert dry["dry_run"] and dry["freed_deleted"] >= 1
    done = json.loads(run("gc", "--data", data, "--grace", "0", "--json").stdout)
    assert done["freed_deleted"] == dry["freed_deleted"] and done["referenced"] >= 1
    assert run("cat", "--data", data, "/big").stdout == big.read_bytes()
