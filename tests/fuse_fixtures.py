"""Fixtures for FUSE tests: real mounts started with the ``metafs mount`` command.

Every mount is unmounted when its test ends, even when the test fails (``metafs umount``,
then ``fusermount3 -uz`` as a fallback), so a failing test never leaves a mount behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from metafs.assembly import build_namenode, serve_grpc
from metafs.config import Settings, load
from metafs.namenode.server import GrpcServer, Namenode

FUSE_AVAILABLE = (os.path.exists("/dev/fuse") and os.geteuid() == 0
                  and shutil.which("fusermount3") is not None)

needs_fuse = pytest.mark.skipif(not FUSE_AVAILABLE,
                                reason="needs /dev/fuse, root and fusermount3 (fuse3)")


def metafs_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "metafs.cli", *args]


def _is_mounted(path: str) -> bool:
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == real for line in f)


class Mount:
    """One running mount (a background ``metafs mount`` process)."""

    def __init__(self, path: Path, args: list[str], env: dict[str, str] | None = None) -> None:
        self.path = path
        self.args = args
        self.env = env
        self.log = path.parent / f"{path.name}.log"

    def start(self) -> "Mount":
        self.path.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, **(self.env or {}))
        res = subprocess.run(metafs_cmd("mount", str(self.path), "--log-file", str(self.log),
                                        *self.args),
                             capture_output=True, text=True, env=env, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"metafs mount failed: {res.stderr}\n{self.log_text()}")
        assert _is_mounted(str(self.path))
        return self

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if not _is_mounted(str(self.path)):
            return
        res = subprocess.run(metafs_cmd("umount", str(self.path)), capture_output=True,
                             text=True, timeout=60)
        if res.returncode != 0 or _is_mounted(str(self.path)):
            subprocess.run(["fusermount3", "-uz", str(self.path)], capture_output=True)
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)

    def __truediv__(self, other: str) -> Path:
        return self.path / other


@pytest.fixture
def stop_all() -> Iterator[list[Any]]:
    """A list of things started (namenode processes, mounts) that have a ``stop()``: all
    are stopped, last first, when the test ends."""
    started: list[Any] = []
    yield started
    for thing in reversed(started):
        thing.stop()


@pytest.fixture
def mount_factory(tmp_path: Path) -> Iterator:
    """``mount_factory(*args, name="m")`` starts a mount with extra ``metafs mount`` flags
    (default: an embedded namenode on a fresh data directory)."""
    mounts: list[Mount] = []
    public_dirs: list[str] = []
    counter = iter(range(1000))

    def make(*args: str, name: str | None = None, data: Path | None = None,
             env: dict[str, str] | None = None, public: bool = False) -> Mount:
        """``public``: mount where every user can reach the mount point (pytest's own
        temporary directories are private to root)."""
        n = name or f"m{next(counter)}"
        base = tmp_path
        if public:
            base = Path(tempfile.mkdtemp(prefix="metafs-fuse-", dir="/tmp"))
            os.chmod(base, 0o755)
            public_dirs.append(str(base))
        a = list(args)
        if "--namenode" not in a:
            a += ["--data", str(data or (tmp_path / f"{n}-data"))]
        m = Mount(base / n, a, env)
        mounts.append(m)
        return m.start()

    try:
        yield make
    finally:
        for m in reversed(mounts):
            m.stop()
        for d in public_dirs:
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def mnt(mount_factory) -> Mount:
    """A mount of an embedded namenode."""
    return mount_factory()


@pytest.fixture
def shared_mnt(mount_factory) -> Mount:
    """A mount every user of the machine can use (allow_other, reachable mount point)."""
    return mount_factory("--allow-other", public=True)


class GrpcNamenode:
    """A namenode served over gRPC inside the test process (restartable on its port)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.nn: Namenode | None = None
        self.server: GrpcServer | None = None
        self.address = ""

    def start(self, port: int = 0) -> "GrpcNamenode":
        self.nn = build_namenode(self.settings)
        self.server = serve_grpc(self.nn, f"127.0.0.1:{port}")
        self.address = self.server.address
        return self

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(0)
            self.server = None
        if self.nn is not None:
            self.nn.close()
            self.nn = None


@pytest.fixture
def grpc_namenode(tmp_path: Path) -> Iterator[GrpcNamenode]:
    s = load(overrides={"data_dir": str(tmp_path / "nn-data"), "listen": "127.0.0.1:0"},
             environ={})
    g = GrpcNamenode(s).start()
    try:
        yield g
    finally:
        g.stop()
