"""Observability: metafs status against a real namenode over gRPC, metafs stats on a real
metrics endpoint, and every metric the shipped Grafana dashboard and alert rules use is
exported by a running namenode and mount."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from metafs import __version__
from metafs.client import Client
from metafs.config import Settings
from metafs.metrics import serve_metrics
from metafs.ops.stats import quantile, run as stats_run
from metafs.ops.status import cluster_status

from conftest import start_namenode
from fuse_fixtures import mount_factory, needs_fuse  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "metafs.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
# made by Prometheus itself for every scrape, not by the scraped process
SYNTHETIC = {"up"}
PROMQL_WORDS = {"sum", "by", "rate", "max", "histogram_quantile", "label_values", "le",
                "instance", "job", "without", "on", "ignoring"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exported(body: str) -> set[str]:
    names = set()
    for fam in text_string_to_metric_families(body):
        names.add(fam.name)
        names.update(s.name for s in fam.samples)
    return names


def _used_names() -> dict[str, set[str]]:
    """Metric names in every PromQL expression of the dashboard and the alert rules."""
    exprs: dict[str, list[str]] = {"dashboard": [], "alerts": []}
    dash = json.loads(DASHBOARD.read_text())
    for panel in dash["panels"]:
        exprs["dashboard"] += [t["expr"] for t in panel.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            exprs["dashboard"].append(var["definition"])
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert {"alert", "expr", "labels", "annotations"} <= set(rule), rule
            exprs["alerts"].append(rule["expr"])
    out = {}
    for where, items in exprs.items():
        names = set()
        for e in items:
            e = re.sub(r'"[^"]*"', '""', e)  # label values are not metric names
            e = re.sub(r"\[[^\]]*\]", "", e)  # nor range durations
            e = re.sub(r"(by|without|on|ignoring) \([^)]*\)", "", e)  # nor grouping labels
            names |= {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", e)
                      if "_" in w and w not in PROMQL_WORDS}
        out[where] = names
    return out


@pytest.fixture
def served(settings: Settings):  # type: ignore[no-untyped-def]
    s = settings.with_(inline_limit=4096, block_size=64 * 1024)
    nn, srv = start_namenode(s)
    http = serve_metrics(0)
    try:
        yield s, nn, srv, http
    finally:
        http.shutdown()
        srv.stop(0)
        nn.close()


def test_status_over_grpc(served) -> None:  # type: ignore[no-untyped-def]
    s, nn, srv, _http = served
    remote = s.with_(namenode=srv.address)
    with Client(settings=remote, run_id="indexer-7") as fs:
        fs.mkdir("/a")
        fs.write_bytes("/a/f", b"x" * 10)
        fs.changelog(0, 1)  # a changelog reader one record in
        before = nn.ns.changelog_head()
        st = cluster_status(remote, lambda x: Client(settings=x))
    assert st["ok"] and st["client_version"] == __version__
    (n,) = st["namenodes"]
    assert n["address"] == srv.address and n["version"] == __version__
    assert n["pid"] == os.getpid() and n["engine"] == "sqlite"
    assert {c["name"]: c["ok"] for c in n["checks"]} == {"database": True, "blockstore": True}
    head = n["changelog_head"]
    assert head == st["changelog_head"] and head >= before >= 3
    assert n["live_sessions"] >= 2  # the reader's and the status call's own
    assert all(isinstance(x["uid"], int) for x in n["sessions"])  # root sees them
    (reader,) = [c for c in n["consumers"] if c["name"] == "indexer-7"]
    assert reader["position"] == 1 and reader["lag"] == head - 1


def test_status_reports_a_namenode_that_is_down(served) -> None:  # type: ignore[no-untyped-def]
    s, _nn, srv, _http = served
    dead = f"127.0.0.1:{_free_port()}"
    both = s.with_(namenode=f"{srv.address},{dead}", rpc_timeout=3.0)
    st = cluster_status(both, lambda x: Client(settings=x))
    assert not st["ok"]
    up, down = st["namenodes"]
    assert up["ok"] and up["address"] == srv.address
    assert not down["ok"] and down["error"] and down["address"] == dead


def test_status_command(served) -> None:  # type: ignore[no-untyped-def]
    _s, _nn, srv, _http = served
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = [sys.executable, "-m", "metafs.cli", "status", "--namenode", srv.address]
    p = subprocess.run(run + ["--json"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["namenodes"][0]["checks"][0]["ok"] is True
    p = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and f"namenode {srv.address}: metafs {__version__}" in p.stdout
    assert "health database" in p.stdout


def test_stats_reports_calls_between_scrapes(served) -> None:  # type: ignore[no-untyped-def]
    import io
    import threading

    s, _nn, srv, http = served
    stop = threading.Event()

    def work() -> None:
        with Client(settings=s.with_(namenode=srv.address)) as fs:
            fs.mkdir("/w")
            i = 0
            while not stop.is_set():
                fs.write_bytes(f"/w/{i % 50}", b"data")
                i += 1

    t = threading.Thread(target=work)
    t.start()
    out = io.StringIO()
    try:
        stats_run(f"127.0.0.1:{http.server_port}", interval=0.5, count=2, as_json=True,
                  out=out)
    finally:
        stop.set()
        t.join()
    reports = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(reports) == 2
    ops = {r["op"]: r for rep in reports for r in rep["ops"].get("namenode", [])}
    assert "Create" in ops or "Open" in ops, ops.keys()
    some = next(iter(ops.values()))
    assert some["calls_per_s"] > 0 and some["avg_ms"] > 0
    assert "process" in reports[0] and reports[0]["process"]["rss_bytes"] > 0
    with pytest.raises(ConnectionError, match="cannot read metrics"):
        stats_run(f"127.0.0.1:{_free_port()}", interval=0.1, count=1, as_json=True,
                  out=io.StringIO())


def test_quantile_interpolates_within_buckets() -> None:
    before = {0.1: 0.0, 0.2: 0.0, float("inf"): 0.0}
    after = {0.1: 50.0, 0.2: 100.0, float("inf"): 100.0}
    assert quantile(0.5, before, after) == pytest.approx(0.1)
    assert quantile(0.75, before, after) == pytest.approx(0.15)
    assert quantile(0.5, after, after) is None  # nothing observed in between


@needs_fuse
def test_dashboard_and_alerts_use_only_exported_metrics(served, mount_factory,  # noqa: F811
                                                       tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    s, _nn, srv, http = served
    used = _used_names()
    assert used["dashboard"] and used["alerts"]
    # a namenode that served calls and a reader
    with Client(settings=s.with_(namenode=srv.address), run_id="reader") as fs:
        fs.changelog(0, 1)
    port = _free_port()
    m = mount_factory("--namenode", srv.address, "--metrics-port", str(port))
    data = os.urandom(300 * 1024)  # in blocks: block store and cache calls
    (m / "big.bin").write_bytes(data)
    assert (m / "big.bin").read_bytes() == data
    with pytest.raises(FileNotFoundError):
        os.stat(m / "missing")
    exported = set()
    for p in (http.server_port, port):
        exported |= _exported(urllib.request.urlopen(
            f"http://127.0.0.1:{p}/metrics", timeout=30).read().decode())
    for where, names in used.items():
        missing = names - exported - SYNTHETIC
        assert not missing, f"{where} uses metrics nobody exports: {sorted(missing)}"
    # the standard process and platform metrics are kept
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes",
            "python_info", "python_gc_collections_total"} <= exported
