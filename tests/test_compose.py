"""docker-compose.yml and the image, checked without a container engine: every metafs
command line in it parses with the real command-line parser, every image is pinned to a
release, every file it mounts exists and loads, and the image's lock satisfies
pyproject.toml."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from packaging.requirements import Requirement

import metafs
from metafs import config
from metafs.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
METAFS_SERVICES = sorted(n for n, s in SERVICES.items() if s.get("image", "").startswith("metafs:"))


def _command_lines(service: dict[str, Any]) -> Iterator[list[str]]:
    """Every metafs command line of a service: its command (a list, or the script of a
    ``sh -c`` entrypoint, split at && || ; and parentheses) and its health check."""
    lines: list[list[str]] = []
    cmd = service.get("command")
    if service.get("entrypoint") == ["/bin/sh", "-c"]:
        lex = shlex.shlex(" ".join(cmd), posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        words = list(lex)
        current: list[str] = []
        for w in words + [";"]:
            if w in ("&&", "||", ";", "(", ")", "|"):
                lines.append(current)
                current = []
            else:
                current.append(w)
    elif cmd:
        lines.append(cmd)
    test = service.get("healthcheck", {}).get("test", [])
    if test[:1] == ["CMD"]:
        lines.append(test[1:])
    for line in lines:
        if line[:1] == ["metafs"]:
            yield line[1:]


def test_every_metafs_service_runs_metafs() -> None:
    assert {"namenode1", "namenode2", "indexer", "certs", "cli"} <= set(METAFS_SERVICES)
    for name in METAFS_SERVICES:
        assert list(_command_lines(SERVICES[name])), f"{name}: no metafs command line found"


@pytest.mark.parametrize("name", METAFS_SERVICES)
def test_command_lines_parse(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """argparse exits (2) on an unknown command or flag and names it on stderr."""
    for argv in _command_lines(SERVICES[name]):
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"{name}: metafs {shlex.join(argv)}: exit {exc.code}: "
                        f"{capsys.readouterr().err}")


def test_images_are_pinned_to_releases() -> None:
    for name, service in SERVICES.items():
        image = service.get("image")
        assert image, f"{name}: no image"
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag and re.fullmatch(r"v?\d+(\.\d+)+", tag), \
            f"{name}: {image} is not pinned to a release"
    for name in METAFS_SERVICES:
        assert SERVICES[name]["image"] == f"metafs:{metafs.__version__}"


def _mounted_files() -> Iterator[tuple[str, Path, str]]:
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            src, _, rest = volume.partition(":")
            if src.startswith("./"):
                yield name, REPO / src, rest.partition(":")[0]


def test_mounted_files_exist_and_load() -> None:
    seen = set()
    for service, path, target in _mounted_files():
        assert path.is_file(), f"{service} mounts {path}, which does not exist"
        seen.add(path.name)
        if path.suffix == ".toml":
            settings = config.load(str(path), environ={})
            assert settings.db_url and settings.blocks_url.startswith("s3://")
            for url in (settings.s3_endpoint, settings.es_url):
                host = re.match(r"\w+://([^:/]+)", url).group(1)
                assert host in SERVICES, f"{path.name}: {url} is no service of the compose file"
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.name == "nginx.conf":
            text = path.read_text()
            for upstream in re.findall(r"server\s+([\w-]+):\d+", text):
                assert upstream in SERVICES, f"nginx.conf: {upstream} is no service"
    assert {"metafs.toml", "nginx.conf", "seaweedfs-s3.json"} <= seen


def test_s3_credentials_are_the_ones_metafs_uses() -> None:
    env = COMPOSE["x-metafs"]["environment"]
    identities = json.loads((REPO / "deploy/seaweedfs-s3.json").read_text())["identities"]
    keys = {(c["accessKey"], c["secretKey"]) for i in identities for c in i["credentials"]}
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) in keys


def test_image_installs_every_runtime_extra_from_its_lock() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = sorted(set(project["optional-dependencies"]) - {"all", "test", "testing", "bench"})
    dockerfile = (REPO / "Dockerfile").read_text()
    m = re.search(r'-c constraints-image\.txt\s*\\?\s*"\.\[([\w,]+)\]"', dockerfile)
    assert m, "the Dockerfile must build metafs with -c constraints-image.txt"
    assert sorted(m.group(1).split(",")) == extras
    locked = {}
    for line in (REPO / "deploy/constraints-image.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, ver = line.partition("==")
            locked[re.sub(r"[-_.]+", "-", name).lower()] = ver
    reqs = list(project["dependencies"]) + [r for e in extras
                                            for r in project["optional-dependencies"][e]]
    for req in map(Requirement, reqs):
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in locked, f"{req.name} is not locked for the image"
        assert req.specifier.contains(locked[name], prereleases=True), \
            f"the image locks {req.name}=={locked[name]}, pyproject.toml wants {req}"
