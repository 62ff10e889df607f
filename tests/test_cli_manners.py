"""How the `metafs` command behaves as a Unix program: closed pipes, Ctrl-C, refused
options, one-line errors, JSON logs. Each runs the real command in a subprocess."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metafs.client import Client

METAFS = [sys.executable, "-m", "metafs.cli"]


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("METAFS_")}
    e["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    return e


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*METAFS, *args], capture_output=True, text=True, env=env(),
                          timeout=120)


@pytest.fixture
def data(tmp_path: Path) -> str:
    d = str(tmp_path / "data")
    with Client(data_dir=d) as fs:
        fs.mkdir("/many")
        for i in range(1000):  # ~200 KB of names: more than a pipe holds
            fs.write_bytes(f"/many/{i:04d}-" + "n" * 200, b"")
        fs.write_bytes("/big", os.urandom(1 << 20))
    return d


@pytest.mark.parametrize("argv", [["ls", "/many"], ["cat", "/big"]])
def test_a_closed_pipe_ends_the_command_quietly(data: str, argv: list[str]) -> None:
    p = subprocess.Popen([*METAFS, argv[0], "--data", data, *argv[1:]], env=env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    assert p.stdout.read(10)  # like `| head -c 10`: read a little, then go away
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(120) == 0, err
    assert err == ""


def test_ctrl_c_exits_130_without_a_traceback(data: str) -> None:
    p = subprocess.Popen([*METAFS, "changelog", "--data", data, "--follow"], env=env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    assert json.loads(p.stdout.readline())["op"] == "OP_MKDIR"  # it is following now
    p.send_signal(signal.SIGINT)
    err = p.stderr.read().decode()
    assert p.wait(60) == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_changelog_limit_prints_at_most_n(data: str) -> None:
    for n in (1, 3, 1002):  # 1002: more than one page (1000) of records
        lines = run("changelog", "--data", data, "--limit", str(n)).stdout.splitlines()
        assert len(lines) == n
        assert [int(json.loads(x)["seq"]) for x in lines] == list(range(1, n + 1))
    everything = run("changelog", "--data", data).stdout.splitlines()
    assert len(everything) > 1002
    p = run("changelog", "--data", data, "--limit", "0")
    assert p.returncode == 2 and "not a positive number" in p.stderr


def test_a_format_the_command_cannot_produce_is_refused(tmp_path: Path) -> None:
    d = str(tmp_path / "d")
    for argv in (["prov", "show", "/x", "--format", "dot"],
                 ["prov", "runs", "--format", "mermaid"],
                 ["prov", "status", "--format", "json"]):
        p = run(*argv, "--data", d)
        assert p.returncode == 2, argv
        assert "--format" in p.stderr and "Traceback" not in p.stderr
    assert not os.path.exists(d)  # refused before anything was made


def test_log_level_is_checked(tmp_path: Path) -> None:
    p = run("ls", "--data", str(tmp_path / "d"), "--log-level", "bogus")
    assert p.returncode == 2 and "invalid choice: 'BOGUS'" in p.stderr
    p = run("ls", "--data", str(tmp_path / "d"), "--log-level", "debug")
    assert p.returncode == 0, p.stderr


def test_a_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        addr = "127.0.0.1:%d" % taken.getsockname()[1]
        p = run("serve", "--data", str(tmp_path / "d"), "--listen", addr)
        assert p.returncode == 1
        assert p.stderr.splitlines() == [
            f"metafs serve: cannot listen: Address already in use: {addr} [EADDRINUSE]"]
        p = run("serve", "--data", str(tmp_path / "d"), "--listen", "127.0.0.1:0",
                "--metrics-port", addr.split(":")[1])
        assert p.returncode == 1
        assert p.stderr.splitlines() == [f"metafs serve: metrics endpoint: Address already "
                                         f"in use: {addr} [EADDRINUSE]"]


def test_a_missing_optional_part_is_one_clear_line(tmp_path: Path) -> None:
    # Python's own way to make a module unimportable: None in sys.modules
    code = ("import sys; sys.modules['mfusepy'] = None\n"
            "from metafs.cli import main\n"
            f"sys.exit(main(['mount', '-f', '--data', {str(tmp_path / 'd')!r}, "
            f"{str(tmp_path)!r}]))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=env(), timeout=120)
    assert p.returncode == 1
    assert p.stderr.splitlines() == ["metafs mount: this needs the optional part 'fuse' "
                                     "(mfusepy is not installed): pip install 'metafs[fuse]'"]


def test_cp_of_a_directory_without_r_is_refused_with_eisdir(data: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_bytes(b"x")
    p = run("cp", "--data", data, "-q", str(src), "mfs:/into/")
    assert p.returncode == 1
    assert p.stderr.splitlines() == [
        f"metafs cp: -r not specified; omitting directory: {src} [EISDIR]"]
    p = run("cp", "--data", data, "-q", "mfs:/many", str(tmp_path / "out"))
    assert p.returncode == 1
    assert p.stderr.splitlines() == [
        "metafs cp: -r not specified; omitting directory: /many [EISDIR]"]
    assert not (tmp_path / "out").exists()
    with Client(data_dir=data) as fs:
        assert not fs.exists("/into")  # nothing changed
    assert run("cp", "--data", data, "-q", "-r", str(src), "mfs:/into/").returncode == 0


def test_json_logs_are_one_object_per_line(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    srv = subprocess.Popen([*METAFS, "serve", "--data", str(tmp_path / "d"), "--listen",
                            "127.0.0.1:0", "--ready-file", str(ready), "--log-format", "json"],
                           env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while not (ready.exists() and ready.read_text()):
            assert srv.poll() is None, srv.communicate()[1]
            time.sleep(0.05)
    finally:
        srv.send_signal(signal.SIGTERM)
        _, err = srv.communicate(timeout=60)
    assert srv.returncode == 0
    records = [json.loads(line) for line in err.decode().splitlines()]
    assert {"time", "level", "logger", "message"} <= set(records[0])
    messages = [r["message"] for r in records]
    assert any(m.startswith("metafs namenode started on") for m in messages)
    assert any(m.endswith("stopped") for m in messages)


@pytest.fixture
def small(tmp_path: Path) -> str:
    """A data directory with one directory in it."""
    d = str(tmp_path / "small")
    with Client(data_dir=d) as fs:
        fs.mkdir("/dir")
    return d


@pytest.mark.parametrize("action", ["set", "clear"])
def test_quota_on_a_missing_directory_is_one_line_with_its_errno(small: str, action: str
                                                                   ) -> None:
    p = run("quota", action, "/nope", "--data", small, "--files", "3")
    assert p.returncode == 1
    assert p.stderr.splitlines() == ["metafs quota: no such file or directory: /nope [ENOENT]"]
    assert run("quota", "list", "--data", small).stdout == ""  # nothing changed


def test_mount_names_a_missing_mount_point_enoent_and_a_file_enotdir(
        tmp_path: Path) -> None:
    d, missing, afile = str(tmp_path / "d"), tmp_path / "nomnt", tmp_path / "afile"
    afile.write_bytes(b"")
    for fg in ([], ["-f"]):  # refused before a mount process or FUSE is involved
        p = run("mount", *fg, "--data", d, str(missing))
        assert p.returncode == 1
        assert p.stderr.splitlines() == [
            f"metafs mount: mount point does not exist: {missing} [ENOENT]"]
        p = run("mount", *fg, "--data", d, str(afile))
        assert p.returncode == 1
        assert p.stderr.splitlines() == [
            f"metafs mount: mount point is not a directory: {afile} [ENOTDIR]"]
    p = run("umount", str(missing))
    assert p.returncode == 1
    assert p.stderr.splitlines() == [
        f"metafs umount: mount point does not exist: {missing} [ENOENT]"]


def test_backup_and_restore_name_the_errno(small: str, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    out = tmp_path / "meta.bak"
    p = run("backup", "--data", str(empty), str(out))
    assert p.returncode == 1
    assert p.stderr.splitlines() == [
        f"metafs backup: no SQLite database: {empty / 'meta.db'} [ENOENT]"]
    assert not out.exists() and not empty.exists()
    assert run("backup", "--data", small, "-q", str(out)).returncode == 0
    p = run("backup", "--data", small, "-q", str(out))
    assert p.returncode == 1
    assert p.stderr.splitlines() == [
        f"metafs backup: backups never overwrite a file: {out} [EEXIST]"]
    p = run("restore", "--data", str(empty), str(tmp_path / "nothing.bak"))
    assert p.returncode == 1
    assert p.stderr.splitlines() == [
        f"metafs restore: no backup: {tmp_path / 'nothing.bak'} [ENOENT]"]
    p = run("restore", "--data", small, str(out))
    assert p.returncode == 1
    assert p.stderr.splitlines() == [
        f"metafs restore: the database exists; pass --force to replace it: "
        f"{Path(small) / 'meta.db'} [EEXIST]"]


def test_sync_of_a_missing_or_non_directory_folder_names_the_errno(small: str,
                                                                   tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_bytes(b"x")
    p = run("sync", "--data", small, str(tmp_path / "nothing"), "/s")
    assert p.returncode == 1
    assert p.stderr.splitlines() == [
        f"metafs sync: No such file or directory: {tmp_path / 'nothing'} [ENOENT]"]
    p = run("sync", "--data", small, str(afile), "/s")
    assert p.returncode == 1
    assert p.stderr.splitlines() == [f"metafs sync: Not a directory: {afile} [ENOTDIR]"]


def test_copy_of_a_directory_without_recursive_raises_eisdir(tmp_path: Path) -> None:
    from metafs.ops.sync import copy_in, copy_out

    src = tmp_path / "src"
    src.mkdir()
    with Client(data_dir=str(tmp_path / "d")) as fs:
        fs.mkdir("/dir")
        with pytest.raises(IsADirectoryError) as got:
            copy_in(fs, [str(src)], "/into/", progress=False)
        assert (got.value.errno, got.value.filename) == (errno.EISDIR, str(src))
        assert "recursive=True" in got.value.strerror
        with pytest.raises(IsADirectoryError) as got:
            copy_out(fs, ["/dir"], str(tmp_path / "out"), progress=False)
        assert (got.value.errno, got.value.filename) == (errno.EISDIR, "/dir")


def test_lineage_of_a_directory_that_is_no_artifact_names_it(tmp_path: Path) -> None:
    # one image is too few for its directory to be a data set: the reads are the image's
    d = str(tmp_path / "d")
    with Client(data_dir=d) as fs:
        fs.makedirs("/datasets/coco")
        fs.write_bytes("/datasets/coco/a.jpg", b"jpeg")
    p = run("run", "--data", d, "--name", "train", "--", *METAFS, "cat", "--data", d,
            "/datasets/coco/a.jpg")
    assert p.returncode == 0, p.stderr
    p = run("prov", "downstream", "--data", d, "/datasets/coco", "--depth", "1")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("downstream of /datasets/coco: not in the provenance graph")
    p = run("prov", "downstream", "--data", d, "/datasets/coco/a.jpg", "--depth", "1")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("downstream of /datasets/coco/a.jpg@v1\n")
    assert "train" in p.stdout


@pytest.mark.parametrize("argv", [["quota", "list"], ["fsck"], ["gc"]])  # backup: below
def test_an_admin_tool_on_a_missing_file_system_creates_nothing(tmp_path: Path,
                                                                 argv: list[str]) -> None:
    """A mistyped --data must not look like a healthy, empty file system."""
    missing = tmp_path / "typo"
    p = run(*argv, "--data", str(missing))
    assert p.returncode == 1
    assert p.stderr.splitlines() == [
        f"metafs {argv[0]}: no metafs file system here (its meta.db does not exist; a mount "
        f"or `metafs serve` creates one): {missing} [ENOENT]"]
    assert not missing.exists()


def test_a_missing_config_file_and_an_unreachable_metrics_port_name_their_errno(
        tmp_path: Path) -> None:
    p = run("status", "--config", str(tmp_path / "nope.toml"))
    assert p.returncode == 1
    assert p.stderr.splitlines() == [
        f"metafs status: metafs config file does not exist: {tmp_path / 'nope.toml'} [ENOENT]"]
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = run("stats", f"127.0.0.1:{port}")
    assert p.returncode == 1
    assert p.stderr.splitlines() == [f"metafs stats: cannot read metrics at "
                                     f"http://127.0.0.1:{port}/metrics: Connection refused "
                                     f"[ECONNREFUSED]"]
