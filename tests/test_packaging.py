"""metafs as a user installs it: built into a wheel, installed from the package index into a
fresh virtual environment with the lowest versions pyproject.toml allows
(constraints-floors.txt) and with the newest ones, then imported and used. Also: the
committed gRPC/protobuf code is what the pinned generator makes of proto/metafs.proto.

The environments need the package index (pip's cache makes reruns quick); they are built
at once, in parallel, by one module fixture."""

from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import venv
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PROTO_OUT = ("metafs_pb2.py", "metafs_pb2.pyi", "metafs_pb2_grpc.py")
RUNTIME_EXTRAS_SKIPPED = ("all", "test", "testing", "bench")


def floors_from_pyproject() -> dict[str, str]:
    """name -> ">=" floor, for the dependencies and every runtime extra."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra, more in project["optional-dependencies"].items():
        if extra not in RUNTIME_EXTRAS_SKIPPED:
            reqs += more
    floors = {}
    for req in map(Requirement, reqs):
        low = [s.version for s in req.specifier if s.operator == ">="]
        assert len(low) == 1, f"{req}: every dependency needs one '>=' floor"
        floors[req.name] = low[0]
    return floors


def committed_floors() -> dict[str, str]:
    out = {}
    for line in (REPO / "constraints-floors.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, ver = line.partition("==")
            out[name] = ver
    return out


def test_floor_constraints_match_pyproject() -> None:
    assert committed_floors() == floors_from_pyproject(), \
        "constraints-floors.txt must pin exactly the '>=' floors of pyproject.toml"


def test_generator_is_the_floor_of_grpcio_and_protobuf() -> None:
    """grpc gencode refuses a grpcio older than its generator, protobuf gencode a protobuf
    older than itself: both must be the floors."""
    floors = floors_from_pyproject()
    from metafs.proto import generate

    assert Version(floors["grpcio"]) == Version(generate.GENERATOR_VERSION)
    grpc_code = (REPO / "metafs/proto/metafs_pb2_grpc.py").read_text()
    assert f"GRPC_GENERATED_VERSION = '{generate.GENERATOR_VERSION}'" in grpc_code
    pb = (REPO / "metafs/proto/metafs_pb2.py").read_text()
    gencode = re.search(r"Protobuf Python Version: (\S+)", pb).group(1)
    assert Version(gencode) == Version(floors["protobuf"])


# ---------------------------------------------------------------------- environments
def _pip(py: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(py), "-m", "pip", "--disable-pip-version-check",
                           "--no-input", *args],
                          capture_output=True, text=True, timeout=900, env=_clean_env())


def _clean_env() -> dict[str, str]:
    """No PYTHONPATH (it would import the working tree instead of the installed package),
    no METAFS_* or GRPC_EXPERIMENTS of the caller."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "GRPC_EXPERIMENTS") and not k.startswith("METAFS_")}
    return env | {"PIP_ROOT_USER_ACTION": "ignore"}


def _make_env(where: Path, *install: str) -> Path:
    venv.create(where, with_pip=True)
    py = where / "bin" / "python"
    r = _pip(py, "install", *install)
    assert r.returncode == 0, f"pip install {' '.join(install)}:\n{r.stdout}\n{r.stderr}"
    return py


def _build_wheel(tmp: Path) -> Path:
    """A wheel built from a copy of what the package is made of (the tree is left as is)."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "metafs", src / "metafs",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    r = _pip(Path(sys.executable), "wheel", "--no-deps", "-w", str(tmp / "dist"), str(src))
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = (tmp / "dist").glob("metafs_ml-*.whl")
    return wheel


@pytest.fixture(scope="module")
def envs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three fresh environments built in parallel: metafs at the floors, metafs at the
    newest releases, and the pinned protobuf/gRPC code generator."""
    tmp = tmp_path_factory.mktemp("pkg")
    wheel = _build_wheel(tmp)
    from metafs.proto.generate import GENERATOR, GENERATOR_VERSION

    jobs = {
        "floors": (tmp / "floors", "-c", str(REPO / "constraints-floors.txt"), str(wheel)),
        "newest": (tmp / "newest", "--upgrade", str(wheel)),
        "protogen": (tmp / "protogen", f"{GENERATOR}=={GENERATOR_VERSION}"),
    }
    with ThreadPoolExecutor(len(jobs)) as pool:
        futs = {k: pool.submit(_make_env, where, *args) for k, (where, *args) in jobs.items()}
        return {k: f.result() for k, f in futs.items()}


WORKLOAD = r"""
import json, os, sys
from importlib.metadata import version
import metafs
from metafs import Client

assert metafs.__file__.startswith(sys.prefix), metafs.__file__  # the installed copy
c = Client(data_dir=sys.argv[1])
c.makedirs("/datasets/coco")
c.write_bytes("/datasets/coco/0.jpg", b"\xff\xd8 image")
c.setxattr("/datasets/coco/0.jpg", "user.tags", b'{"bicycles": 4}')
c.rename("/datasets/coco", "/datasets/coco-2017")
assert c.read_bytes("/datasets/coco-2017/0.jpg") == b"\xff\xd8 image"
hits = c.search("tags.bicycles>3 ext:jpg", wait=True).paths
assert hits == ["/datasets/coco-2017/0.jpg"], hits
c.close()
print(json.dumps({n: version(n) for n in ("grpcio", "protobuf", "sqlalchemy")}
                 | {"experiments": os.environ.get("GRPC_EXPERIMENTS")}))
"""


def _use(py: Path, tmp: Path) -> dict[str, str]:
    """Run the workload and the command line in the environment; what it reports."""
    r = subprocess.run([str(py), "-c", WORKLOAD, str(tmp / "data")], capture_output=True,
                       text=True, timeout=300, cwd=tmp, env=_clean_env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Unknown experiment" not in r.stderr, r.stderr
    report = json.loads(r.stdout.splitlines()[-1])
    cli = subprocess.run([str(py.parent / "metafs"), "ls", "--data", str(tmp / "data"),
                          "/datasets/coco-2017"], capture_output=True, text=True,
                         timeout=300, cwd=tmp, env=_clean_env())
    assert cli.returncode == 0 and cli.stdout.split() == ["0.jpg"], cli.stdout + cli.stderr
    assert "Unknown experiment" not in cli.stderr, cli.stderr
    return report


@pytest.mark.slow
@pytest.mark.network
def test_lowest_allowed_versions_install_and_work(envs: dict[str, Path], tmp_path: Path) -> None:
    report = _use(envs["floors"], tmp_path)
    floors = floors_from_pyproject()
    for name in ("grpcio", "protobuf", "sqlalchemy"):
        assert Version(report[name]) == Version(floors[name]), (name, report)


@pytest.mark.slow
@pytest.mark.network
def test_newest_versions_install_and_work(envs: dict[str, Path], tmp_path: Path) -> None:
    report = _use(envs["newest"], tmp_path)
    floors = floors_from_pyproject()
    assert Version(report["protobuf"]) > Version(floors["protobuf"]), report


@pytest.mark.slow
@pytest.mark.network
def test_proto_regenerates_identically(envs: dict[str, Path], tmp_path: Path) -> None:
    """The committed code is what the pinned generator makes of proto/metafs.proto."""
    r = subprocess.run([str(envs["protogen"]), str(REPO / "metafs/proto/generate.py"),
                        str(tmp_path)], capture_output=True, text=True, timeout=300,
                       env=_clean_env())
    assert r.returncode == 0, r.stdout + r.stderr
    for name in PROTO_OUT:
        assert filecmp.cmp(tmp_path / name, REPO / "metafs" / "proto" / name, shallow=False), \
            f"{name} differs from proto/metafs.proto: see metafs/proto/generate.py"
