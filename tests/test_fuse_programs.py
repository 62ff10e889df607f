"""Everyday programs run on the mount: git, tar, sqlite3, cp, rsync, python -m venv + pip."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fuse_fixtures import Mount, mnt, mount_factory, needs_fuse  # noqa: F401

pytestmark = [pytest.mark.fuse, needs_fuse]

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
           "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent"}


def run(*cmd: str, cwd: Path | None = None, env: dict | None = None
        ) -> subprocess.CompletedProcess:
    res = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, timeout=600)
    if res.returncode != 0:
        raise AssertionError(f"{cmd} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def git(cwd: Path, *args: str) -> str:
    return run("git", "-c", "init.defaultBranch=main", "-c", "safe.directory=*", *args,
               cwd=cwd, env=GIT_ENV).stdout


def test_git(mnt: Mount) -> None:
    repo = mnt / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    for i in range(20):
        (repo / f"f{i}.txt").write_text(f"line {i}\n" * (i + 1))
    (repo / "big.bin").write_bytes(os.urandom(300_000))  # past the inline limit: blocks
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "first")
    git(repo, "checkout", "-qb", "feature")
    (repo / "f1.txt").write_text("changed on feature\n")
    os.rename(repo / "f2.txt", repo / "renamed.txt")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "feature work")
    git(repo, "checkout", "-q", "main")
    assert (repo / "f1.txt").read_text() == "line 1\n" * 2
    assert (repo / "f2.txt").exists() and not (repo / "renamed.txt").exists()
    git(repo, "merge", "-q", "feature")
    assert (repo / "f1.txt").read_text() == "changed on feature\n"
    clone = mnt / "clone"
    git(mnt.path, "clone", "-q", str(repo), str(clone))
    assert (clone / "renamed.txt").read_text() == "line 2\n" * 3
    assert (clone / "big.bin").read_bytes() == (repo / "big.bin").read_bytes()
    git(repo, "gc", "-q", "--aggressive", "--prune=now")
    git(repo, "fsck", "--full", "--strict")
    git(clone, "fsck", "--full")
    assert git(repo, "log", "--oneline").count("\n") == 2
    assert git(repo, "status", "--porcelain") == ""


def _make_tree(root: Path) -> None:
    root.mkdir()
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    for i in range(50):
        (root / "sub" / f"small{i}.txt").write_text(f"small file {i}\n" * i)
    (root / "sub" / "deeper" / "medium.bin").write_bytes(os.urandom(200_000))
    (root / "large.bin").write_bytes(os.urandom(5 * 1024 * 1024 + 123))
    (root / "exec.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "exec.sh", 0o750)
    os.chmod(root / "sub" / "small3.txt", 0o600)
    os.symlink("sub/small1.txt", root / "link")
    os.symlink("/nonexistent/target", root / "dangling")
    os.link(root / "sub" / "small5.txt", root / "hardlink")
    (root / "empty").write_bytes(b"")
    os.chown(root / "sub" / "small7.txt", 1234, 4321)
    os.utime(root / "sub" / "small8.txt", ns=(1_500_000_000_123_456_789,
                                              1_400_000_000_987_654_321))


def _same_tree(a: Path, b: Path) -> None:
    run("diff", "-r", "--no-dereference", str(a), str(b))
    for dirpath, dirnames, filenames in os.walk(a):
        for name in dirnames + filenames:
            pa = Path(dirpath) / name
            pb = b / pa.relative_to(a)
            sa, sb = os.lstat(pa), os.lstat(pb)
            assert stat.S_IMODE(sa.st_mode) == stat.S_IMODE(sb.st_mode), pa
            assert stat.S_IFMT(sa.st_mode) == stat.S_IFMT(sb.st_mode), pa
            assert (sa.st_uid, sa.st_gid) == (sb.st_uid, sb.st_gid), pa
            if not stat.S_ISDIR(sa.st_mode) and not stat.S_ISLNK(sa.st_mode):
                assert sa.st_mtime_ns == sb.st_mtime_ns, pa
            if stat.S_ISLNK(sa.st_mode):
                assert os.readlink(pa) == os.readlink(pb)


def test_tar_extract_and_diff(mnt: Mount, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _make_tree(src)
    archive = tmp_path / "t.tar"
    run("tar", "--format=posix", "-C", str(tmp_path), "-cf", str(archive), "src")
    dest = mnt / "x"
    dest.mkdir()
    run("tar", "-C", str(dest), "-xpf", str(archive), "--same-owner")
    _same_tree(src, dest / "src")
    assert os.stat(dest / "src" / "hardlink").st_ino == \
        os.stat(dest / "src" / "sub" / "small5.txt").st_ino
    # and back out again
    run("tar", "--format=posix", "-C", str(dest), "-cf", str(tmp_path / "back.tar"), "src")
    back = tmp_path / "back"
    back.mkdir()
    run("tar", "-C", str(back), "-xpf", str(tmp_path / "back.tar"))
    _same_tree(src, back / "src")


@pytest.mark.parametrize("tool", ["cp", "rsync"])
def test_cp_a_and_rsync_a(mnt: Mount, tmp_path: Path, tool: str) -> None:
    src = tmp_path / "src"
    _make_tree(src)
    dest = mnt / "copy"
    if tool == "cp":
        run("cp", "-a", str(src), str(dest))
    else:
        run("rsync", "-aH", str(src) + "/", str(dest) + "/")
    _same_tree(src, dest)
    assert os.stat(dest / "hardlink").st_ino == os.stat(dest / "sub" / "small5.txt").st_ino
    assert os.stat(dest / "hardlink").st_nlink == 2
    # copy back from the mount to the local disk: what was stored is what was written
    back = tmp_path / "back"
    if tool == "cp":
        run("cp", "-a", str(dest), str(back))
    else:
        run("rsync", "-aH", str(dest) + "/", str(back) + "/")
    _same_tree(src, back)
    if tool == "rsync":  # a second run finds nothing to do
        out = run("rsync", "-aHi", str(src) + "/", str(dest) + "/").stdout
        assert out.strip() == ""


_WRITER = textwrap.dedent("""
    import sqlite3, sys
    db = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)
    db.execute("PRAGMA busy_timeout=60000")
    who = sys.argv[2]
    for i in range(int(sys.argv[3])):
        db.execute("BEGIN IMMEDIATE")
        n = db.execute("SELECT v FROM counter").fetchone()[0]
        db.execute("UPDATE counter SET v = ?", (n + 1,))
        db.execute("INSERT INTO rows(who, i) VALUES (?, ?)", (who, i))
        db.execute("COMMIT")
    db.close()
""")


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_sqlite_two_writers(mnt: Mount, mode: str) -> None:
    path = mnt / f"db-{mode}.sqlite"
    db = sqlite3.connect(path)
    assert db.execute(f"PRAGMA journal_mode={mode}").fetchone()[0] == mode
    db.execute("CREATE TABLE counter(v INTEGER)")
    db.execute("INSERT INTO counter VALUES (0)")
    db.execute("CREATE TABLE rows(who TEXT, i INTEGER)")
    db.commit()
    db.close()
    n = 150
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), w, str(n)])
             for w in ("a", "b")]
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    db = sqlite3.connect(path)
    assert db.execute("SELECT v FROM counter").fetchone()[0] == 2 * n
    assert db.execute("SELECT count(*) FROM rows").fetchone()[0] == 2 * n
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    out = run("sqlite3", str(path), "SELECT count(DISTINCT who) FROM rows").stdout
    assert out.strip() == "2"


def test_python_venv_and_local_package(mnt: Mount, tmp_path: Path) -> None:
    pkg = tmp_path / "tinypkg"
    (pkg / "tinypkg").mkdir(parents=True)
    (pkg / "tinypkg" / "__init__.py").write_text("def answer():\n    return 42\n")
    (pkg / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "tinypkg"
        version = "1.0"
    """))
    venv = mnt / "venv"
    # no network: pip and setuptools come from the system site packages
    run(sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv))
    py = venv / "bin" / "python"
    assert py.exists()
    run(str(py), "-m", "pip", "install", "--no-index", "--no-build-isolation",
        "--no-deps", str(pkg), env={"PIP_DISABLE_PIP_VERSION_CHECK": "1",
                                    "TMPDIR": str(tmp_path)})
    out = run(str(py), "-c", "import tinypkg, sys; print(tinypkg.answer(), sys.prefix, "
              "tinypkg.__file__)").stdout.split()
    assert out[0] == "42"
    assert out[1] == str(venv) and out[2].startswith(str(venv))
    assert run(str(py), "-m", "pip", "show", "tinypkg").stdout.count("Version: 1.0") == 1
