"""docker-compose.yml is real: it parses, every metafs command in it is a real command with
real flags, its config file is valid, and the same topology (PostgreSQL, an S3 endpoint,
two namenodes with TLS and token authentication, the indexer) runs here from processes."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from metafs import config as config_mod
from metafs.cli import build_parser
from metafs.client import Client
from metafs.ops import certs
from metafs.ops.auth import add_token

ROOT = Path(__file__).resolve().parent.parent
yaml = pytest.importorskip("yaml")


def _metafs_commands(cmd: Any) -> list[list[str]]:
    """The metafs invocations in a compose command (a list, or a shell script)."""
    if cmd is None:
        return []
    if isinstance(cmd, list) and cmd and cmd[0] == "metafs":
        return [[str(a) for a in cmd]]
    text = cmd if isinstance(cmd, str) else " ".join(str(c) for c in cmd)
    out = []
    for seg in re.split(r"&&|\|\||;|\(|\)", text):
        words = shlex.split(seg)
        if words and words[0] == "metafs":
            out.append(words)
    return out


def test_compose_file_is_real() -> None:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = doc["services"]
    for needed in ("postgres", "s3", "elasticsearch", "namenode1", "namenode2",
                   "namenode", "indexer"):
        assert needed in services, needed
    parser = build_parser()
    seen: dict[str, list[str]] = {}
    for name, svc in services.items():
        cmds = _metafs_commands(svc.get("command"))
        hc = (svc.get("healthcheck") or {}).get("test")
        if isinstance(hc, list) and hc[:1] == ["CMD"]:
            cmds += _metafs_commands(hc[1:])
        for argv in cmds:
            args = parser.parse_args(argv[1:])  # SystemExit here: not a real command/flag
            seen.setdefault(name, []).append(args.command)
        if svc.get("build") or svc.get("image", "").startswith("metafs"):
            assert "healthcheck" in svc or name in ("certs", "indexer", "cli") \
                or not cmds, name
    assert seen["namenode1"] == ["serve", "status"] and seen["namenode2"] == ["serve", "status"]
    assert seen["indexer"] == ["indexer"]
    assert seen["certs"] == ["auth"]
    for name in ("postgres", "s3", "elasticsearch", "namenode1", "namenode2"):
        assert "healthcheck" in services[name], name
    assert set(doc["volumes"]) >= {"pgdata", "blocks", "esdata", "certs"}
    # the one shared config file is valid, and every metafs container mounts it
    cfg = ROOT / "deploy" / "metafs.toml"
    s = config_mod.load(str(cfg), environ={})
    assert s.auth_mode == "token" and s.db_url.startswith("postgresql")
    for name, svc in services.items():
        if str(svc.get("image", "")).startswith("metafs:"):
            assert any("metafs.toml:/etc/metafs/config.toml" in v for v in svc["volumes"]), name
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "namenode1:7420" in nginx and "namenode2:7420" in nginx
    assert (ROOT / "Dockerfile").read_text().count("FROM ") == 2


# ---------------------------------------------------------------------- the topology
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_endpoint() -> Iterator[str]:
    pytest.importorskip("moto")
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    srv.start()
    url = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                 aws_access_key_id="testing", aws_secret_access_key="testing"
                 ).create_bucket(Bucket="metafs-topo")
    try:
        yield url
    finally:
        srv.stop()


def _wait_file(p: Path, procs: list[subprocess.Popen], limit: float = 120.0) -> str:
    deadline = time.monotonic() + limit
    while not (p.exists() and p.read_text().strip()):
        for pr in procs:
            if pr.poll() is not None:
                raise AssertionError(f"process exited early: {pr.args}\n"
                                     f"{pr.stderr.read() if pr.stderr else ''}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{p} never appeared")
        time.sleep(0.1)
    return p.read_text().strip()


@pytest.mark.slow
def test_topology_runs_from_processes(tmp_path: Path, pg_url: str, s3_endpoint: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # clients read and write blocks in S3 themselves: they need credentials too
    for k, v in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                 ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(k, v)
    pki = tmp_path / "certs"
    certs.init_cluster(pki, hosts=["localhost", "127.0.0.1"])
    auth = pki / "auth.toml"
    add_token(auth, "service", 0, 0, [], "svc-token", trusted=True)
    add_token(auth, "alice", 1000, 1000, [1000], "alice-token")
    (pki / "service.token").write_text("svc-token\n")
    (pki / "service.token").chmod(0o600)
    metrics = [_free_port(), _free_port()]
    cfg = tmp_path / "metafs.toml"
    cfg.write_text("\n".join([
        f'db_url = "{pg_url}"',
        'blocks_url = "s3://metafs-topo/blocks"',
        f's3_endpoint = "{s3_endpoint}"',
        's3_region = "us-east-1"',
        f'data_dir = "{tmp_path / "data"}"',
        f'tls_cert = "{pki / "server.pem"}"',
        f'tls_key = "{pki / "server-key.pem"}"',
        f'tls_ca = "{pki / "ca.pem"}"',
        'auth_mode = "token"',
        f'auth_file = "{auth}"',
        f'token_file = "{pki / "service.token"}"',
        'search_backend = "embedded"',
        f'search_dir = "{tmp_path / "search"}"',
        'inline_limit = 4096',
        'block_size = 65536',
        'metrics_listen = "127.0.0.1"',
    ]) + "\n")
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_DEFAULT_REGION="us-east-1")
    env.pop("METAFS_NAMENODE", None)
    procs: list[subprocess.Popen] = []
    addrs = []
    try:
        for i in range(2):
            ready = tmp_path / f"nn{i}.ready"
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "metafs.cli", "serve", "--config", str(cfg),
                 "--listen", "127.0.0.1:0", "--ready-file", str(ready),
                 "--metrics-port", str(metrics[i]), "--log-level", "WARNING"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        for i in range(2):
            addrs.append(_wait_file(tmp_path / f"nn{i}.ready", procs))
        both = ",".join(addrs)
        s = config_mod.load(str(cfg), {"namenode": both}, environ={})
        big = os.urandom(300_000)  # several blocks, in S3
        with Client(settings=s) as fs:
            fs.makedirs("/topo/data")
            for i in range(20):
                fs.write_bytes(f"/topo/data/f{i}.txt", f"file {i}".encode())
            fs.setxattr("/topo/data/f1.txt", "user.tags", b'{"split": "train"}')
            with fs.open("/topo/model.bin", "wb") as f:
                f.write(big)
            fs.chmod("/topo", 0o777)
        # another user through the other namenode order, authenticated by its token
        with Client(settings=s.with_(namenode=",".join(reversed(addrs)), token_file="",
                                     token="alice-token")) as fs:
            assert fs.caller.uid == 1000
            assert fs.read_bytes("/topo/model.bin") == big
            assert fs.read_bytes("/topo/data/f7.txt") == b"file 7"
            fs.write_bytes("/topo/alice.txt", b"mine")
            assert fs.stat("/topo/alice.txt").st_uid == 1000
            with pytest.raises(PermissionError):
                with fs.as_user(0, 0):
                    fs.stat("/")
        import boto3

        keys = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing"
                            ).list_objects_v2(Bucket="metafs-topo").get("KeyCount", 0)
        assert keys >= 300_000 // 65536
        # the indexer follows the changelog through the namenodes
        out = subprocess.run(
            [sys.executable, "-m", "metafs.cli", "indexer", "--config", str(cfg),
             "--namenode", both, "--backend", "embedded", "--once", "--report", "0"],
            env=env, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr
        status = json.loads(out.stdout.strip().splitlines()[-1])
        assert status["lag_records"] == 0 and status["position"] > 0
        out = subprocess.run(
            [sys.executable, "-m", "metafs.cli", "search", "--config", str(cfg),
             "--namenode", both, "--backend", "embedded", "--json", "under:/topo/data"],
            env=env, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr
        assert "/topo/data/f1.txt" in out.stdout
        # both namenodes served calls, and expose their metrics
        for port in metrics:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
            assert re.search(r'metafs_ops_total\{errno="OK",op="\w+"\} [1-9]', body)
            assert "metafs_changelog_head" in body
        # and the status command works through TLS and the token too
        out = subprocess.run([sys.executable, "-m", "metafs.cli", "status", "--config",
                              str(cfg), "--namenode", addrs[0], "--json"],
                             env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["changelog_head"] >= status["position"]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
