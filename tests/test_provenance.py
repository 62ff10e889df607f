"""Provenance end to end: real programs in subprocesses write and read through the client
against a real namenode (gRPC), and the ``metafs prov`` command answers from the graph the
namenode builds from its changelog."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from metafs.cdc.provenance.store import ProvenanceStore
from metafs.client import Client
from metafs.proto import metafs_pb2 as pb

TRAIN = """
import sys, metafs
ds, out = sys.argv[1], sys.argv[2]
with metafs.Client() as fs:
    total = 0
    for name in sorted(fs.listdir(ds)):
        total += len(fs.read_bytes(f"{ds}/{name}"))
    wait = sys.argv[3] if len(sys.argv) > 3 else ""
    if wait:  # concurrent-runs test: both runs have read before either writes
        open(wait + ".ready", "w").close()
        import os, time
        while not os.path.exists(wait + ".go"):
            time.sleep(0.01)
    fs.makedirs(out.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(out, "wb") as f:
        f.write(b"weights:" + str(total).encode())
"""

EVAL = """
import sys, json, metafs
model, report = sys.argv[1], sys.argv[2]
with metafs.Client() as fs:
    w = fs.read_bytes(model)
    fs.makedirs(report.rsplit("/", 1)[0], exist_ok=True)
    fs.write_bytes(report, json.dumps({"model": model, "bytes": len(w)}).encode())
"""


@contextlib.contextmanager
def namenode_env(root: Path, **namenode_env: str) -> Iterator[dict[str, str]]:
    """A real namenode on a loopback port (``namenode_env`` added to its environment), and
    the environment programs use to reach it."""
    ready = root / "ready"
    log = open(root / "namenode.log", "wb")
    base = {k: v for k, v in os.environ.items() if not k.startswith("METAFS_")}
    base["METAFS_CONFIG"] = str(root / "none.toml")
    (root / "none.toml").write_text("")
    proc = subprocess.Popen([sys.executable, "-m", "metafs.cli", "serve", "--data",
                             str(root / "nn"), "--listen", "127.0.0.1:0", "--ready-file",
                             str(ready)], env=dict(base, **namenode_env), stdout=log,
                            stderr=log)
    for _ in range(600):
        if ready.exists() and ready.read_text():
            break
        if proc.poll() is not None:
            raise RuntimeError((root / "namenode.log").read_text())
        time.sleep(0.05)
    (root / "scripts").mkdir()
    (root / "scripts" / "train.py").write_text(TRAIN)
    (root / "scripts" / "eval.py").write_text(EVAL)
    e = dict(base, METAFS_NAMENODE=ready.read_text().strip(),
             METAFS_DATA_DIR=str(root / "client"), SCRIPTS=str(root / "scripts"),
             ROOT=str(root))
    try:
        yield e
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A namenode (it keeps the provenance graph; clients keep none) and its environment."""
    with namenode_env(tmp_path_factory.mktemp("prov")) as e:
        yield e


def client(env: dict[str, str]) -> Client:
    from metafs import config

    return Client(settings=config.load(environ=env))


def sh(env: dict[str, str], *argv: str, extra: dict[str, str] | None = None) -> str:
    """Run a program (as a user would) and return its stdout; fail on a non-zero exit."""
    r = subprocess.run(list(argv), env=dict(env, **(extra or {})), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, f"{argv}: {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def metafs(env: dict[str, str], *argv: str) -> str:
    return sh(env, sys.executable, "-m", "metafs.cli", *argv)


def prov(env: dict[str, str], *argv: str) -> Any:
    return json.loads(metafs(env, "prov", *argv, "--format", "json"))


def script(env: dict[str, str], name: str) -> str:
    return str(Path(env["SCRIPTS"]) / name)


def make_images(env: dict[str, str], d: str, n: int = 12) -> None:
    with client(env) as fs:
        fs.makedirs(d, exist_ok=True)
        for i in range(n):
            fs.write_bytes(f"{d}/img{i:03d}.png", b"\x89PNG" + bytes([i]) * 50)


def run_names(g: dict[str, Any]) -> set[str]:
    """Names of the explicit runs (the test process that made the data sets shows up as
    an implicit run upstream of them, rightly)."""
    return {r["name"] for r in g["runs"] if r["explicit"]}


def paths(g: dict[str, Any]) -> set[str]:
    return {a["path"] for a in g["artifacts"]}


# ---------------------------------------------------------------------- scenarios
def test_train_then_eval(env: dict[str, str]) -> None:
    make_images(env, "/p1/data/images")
    metafs(env, "run", "--name", "train-resnet", "--param", "lr=0.1", "--", sys.executable,
           script(env, "train.py"), "/p1/data/images", "/p1/models/model.pt")
    sh(env, sys.executable, script(env, "eval.py"), "/p1/models/model.pt",
       "/p1/reports/report.json")

    up = prov(env, "upstream", "/p1/models/model.pt")
    ds = [a for a in up["artifacts"] if a["kind"] == "dataset"]
    assert [a["path"] for a in ds] == ["/p1/data/images"]  # the directory, not 12 files
    train = [r for r in up["runs"] if r["name"] == "train-resnet"]
    assert len(train) == 1
    t = train[0]
    assert t["explicit"] and t["status"] == "completed" and t["exit_code"] == 0
    assert "train.py /p1/data/images /p1/models/model.pt" in t["cmdline"]
    assert t["params"] == {"lr": 0.1}
    by_id = {a["id"]: a for a in up["artifacts"]}
    reads = [by_id[e["artifact"]]["path"] for e in up["edges"]
             if e["run"] == t["id"] and e["type"] == "read"]
    assert reads == ["/p1/data/images"]
    model = [a for a in up["artifacts"] if a["path"] == "/p1/models/model.pt"]
    assert model[0]["kind"] == "model"

    down = prov(env, "downstream", "/p1/data/images")
    assert {"/p1/models/model.pt", "/p1/reports/report.json"} <= paths(down)
    ev = [r for r in down["runs"] if "eval.py" in r["cmdline"]]
    assert len(ev) == 1 and not ev[0]["explicit"]  # a process is a run of its own
    assert "train-resnet" in run_names(down)
    # depth 1 stops at the training run's outputs
    near = prov(env, "downstream", "/p1/data/images", "--depth", "1")
    assert "/p1/reports/report.json" not in paths(near)
    assert "/p1/models/model.pt" in paths(near)

    # renaming the data set keeps its lineage (artifacts are inodes, not paths)
    metafs(env, "mv", "/p1/data/images", "/p1/data/images-v2")
    up2 = prov(env, "upstream", "/p1/models/model.pt")
    assert "/p1/data/images-v2" in paths(up2) and "/p1/data/images" not in paths(up2)
    down2 = prov(env, "downstream", "/p1/data/images-v2")
    assert "/p1/reports/report.json" in paths(down2)

    # the other formats render the same answer
    dot = metafs(env, "prov", "upstream", "/p1/models/model.pt", "--format", "dot")
    assert dot.startswith("digraph") and "/p1/data/images-v2" in dot
    mm = metafs(env, "prov", "downstream", "/p1/data/images-v2", "--format", "mermaid")
    assert mm.startswith("flowchart LR") and "-->|wrote|" in mm
    table = metafs(env, "prov", "upstream", "/p1/models/model.pt")
    assert "train-resnet" in table and "dataset" in table


def test_overwrite_makes_versions(env: dict[str, str]) -> None:
    make_images(env, "/p2/a")
    make_images(env, "/p2/b")
    for name, data in (("first", "/p2/a"), ("second", "/p2/b")):
        metafs(env, "run", "--name", name, "--", sys.executable, script(env, "train.py"),
               data, "/p2/model.pt")
    show = prov(env, "show", "/p2/model.pt")
    assert len(show["versions"]) == 2
    v1, v2 = show["versions"]
    assert [r["name"] for r in v1["written_by"]] == ["first"]
    assert [r["name"] for r in v2["written_by"]] == ["second"]
    latest = prov(env, "upstream", "/p2/model.pt")
    assert run_names(latest) == {"second"} and "/p2/b" in paths(latest)
    assert "/p2/a" not in paths(latest)
    old = prov(env, "upstream", "/p2/model.pt", "--version", "1")
    assert run_names(old) == {"first"} and "/p2/a" in paths(old)
    every = prov(env, "upstream", "/p2/model.pt", "--all-versions")
    assert run_names(every) == {"first", "second"}
    runs = prov(env, "runs", "/p2/model.pt")
    assert {r["name"]: r.get("writes") for r in runs} == {"first": [1], "second": [2]}


def test_concurrent_runs_not_confused(env: dict[str, str]) -> None:
    with client(env) as fs:
        for d in ("/p3/x", "/p3/y"):
            fs.makedirs(d)
            fs.setxattr(d, "user.metafs.kind", b"dataset")  # tagged, any file names
            for i in range(5):
                fs.write_bytes(f"{d}/part-{i}", os.urandom(64))
    gate = Path(env["ROOT"]) / "gate"
    procs = [
        subprocess.Popen([sys.executable, "-m", "metafs.cli", "run", "--name", "run-x", "--",
                          sys.executable, script(env, "train.py"), "/p3/x", "/p3/out/x.pt",
                          str(gate) + "x"], env=env),
        # the second is an implicit run: a plain process
        subprocess.Popen([sys.executable, script(env, "train.py"), "/p3/y", "/p3/out/y.pt",
                          str(gate) + "y"], env=env),
    ]
    for tag in "xy":
        while not Path(str(gate) + tag + ".ready").exists():
            assert all(p.poll() is None for p in procs), "a training run died"
            time.sleep(0.02)
    for tag in "xy":  # both have read their data before either writes
        Path(str(gate) + tag + ".go").touch()
    assert [p.wait(120) for p in procs] == [0, 0]
    ux = prov(env, "upstream", "/p3/out/x.pt")
    uy = prov(env, "upstream", "/p3/out/y.pt")
    assert "/p3/x" in paths(ux) and "/p3/y" not in paths(ux)
    assert "/p3/y" in paths(uy) and "/p3/x" not in paths(uy)
    assert "run-x" in run_names(ux) and "run-x" not in run_names(uy)
    py = [r for r in uy["runs"] if "train.py /p3/y" in r["cmdline"]]
    assert len(py) == 1 and py[0]["pid"] and not py[0]["explicit"]
    ds = prov(env, "show", "/p3/x")
    assert ds["kind"] == "dataset" and len(ds["versions"]) == 1


def test_as_of(env: dict[str, str]) -> None:
    make_images(env, "/p4/data")
    with client(env) as fs:
        before_seq = fs.changelog_head()
    before_time = datetime.now(timezone.utc).isoformat()
    time.sleep(0.05)
    metafs(env, "run", "--name", "later", "--", sys.executable, script(env, "train.py"),
           "/p4/data", "/p4/model.pt")
    now = prov(env, "downstream", "/p4/data")
    assert "later" in run_names(now)
    for point in (str(before_seq), before_time):
        past = prov(env, "downstream", "/p4/data", "--as-of", point)
        assert "later" not in run_names(past)
        assert "/p4/model.pt" not in paths(past)
        assert "later" not in {r["name"] for r in prov(env, "runs", "--as-of", point)}
    assert "later" in {r["name"] for r in prov(env, "runs")}


def test_run_failure_and_python_api(env: dict[str, str]) -> None:
    bad = Path(env["SCRIPTS"]) / "bad.py"
    bad.write_text("import sys; sys.exit(3)\n")
    r = subprocess.run([sys.executable, "-m", "metafs.cli", "run", "--name", "bad", "--",
                        sys.executable, str(bad)], env=env, capture_output=True)
    assert r.returncode == 3
    # explicit run from the Python API, in this process
    import metafs as mfs
    from metafs.cdc.provenance import Provenance

    make_images(env, "/p5/data")
    with client(env) as fs:
        with mfs.run("inline", params={"epochs": 2}, client=fs) as run:
            assert os.environ["METAFS_RUN_ID"] == run.run_id
            for n in fs.listdir("/p5/data"):
                fs.read_bytes(f"/p5/data/{n}")
            fs.write_bytes("/p5/m.safetensors", b"t" * 10)
        assert "METAFS_RUN_ID" not in os.environ
        with pytest.raises(RuntimeError):
            with mfs.run("crash", client=fs):
                raise RuntimeError("boom")
        with Provenance(fs) as p:
            g = p.upstream("/p5/m.safetensors")
            inline = [x for x in g.runs.values() if x["name"] == "inline"]
            assert inline and inline[0]["params"] == {"epochs": 2}
            assert [a["path"] for a in g.datasets()] == ["/p5/data"]
            runs = {x["name"]: x for x in p.runs()}
            assert runs["bad"]["status"] == "failed" and runs["bad"]["exit_code"] == 3
            assert runs["crash"]["status"] == "failed"
            # replaying the changelog from scratch gives the same graph
            before = p.upstream("/p5/m.safetensors").to_dict()
            p.sync(rebuild=True)
            assert p.upstream("/p5/m.safetensors").to_dict()["edges"] == before["edges"]


def test_access_events_switch(env: dict[str, str]) -> None:
    make_images(env, "/p6/data")
    sh(env, sys.executable, script(env, "train.py"), "/p6/data", "/p6/model.pt",
       extra={"METAFS_ACCESS_EVENTS": "0"})
    up = prov(env, "upstream", "/p6/model.pt")
    assert "/p6/data" not in paths(up)  # nothing reported: nothing inferred
    assert up["runs"] == []


# ---------------------------------------------------------------------- OpenLineage
# openlineage-python does not ship the spec's JSON schema files, so this is the part of
# OpenLineage.json (spec 2-0-2: RunEvent, Run, Job, InputDataset, OutputDataset, facets)
# that every run event must satisfy, written from the spec.
_FACETS = {"type": "object", "additionalProperties": {
    "type": "object", "required": ["_producer", "_schemaURL"],
    "properties": {"_producer": {"type": "string", "format": "uri"},
                   "_schemaURL": {"type": "string", "format": "uri"}}}}
_DATASET = {"type": "object", "required": ["namespace", "name"],
            "properties": {"namespace": {"type": "string"}, "name": {"type": "string"},
                           "facets": _FACETS}}
OPENLINEAGE_RUN_EVENT = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["eventTime", "producer", "schemaURL", "run", "job"],
    "properties": {
        "eventType": {"enum": ["START", "RUNNING", "COMPLETE", "ABORT", "FAIL", "OTHER"]},
        "eventTime": {"type": "string", "format": "date-time"},
        "producer": {"type": "string", "format": "uri"},
        "schemaURL": {"type": "string", "format": "uri"},
        "run": {"type": "object", "required": ["runId"],
                "properties": {"runId": {"type": "string", "format": "uuid"},
                               "facets": _FACETS}},
        "job": {"type": "object", "required": ["namespace", "name"],
                "properties": {"namespace": {"type": "string"}, "name": {"type": "string"},
                               "facets": _FACETS}},
        "inputs": {"type": "array", "items": _DATASET},
        "outputs": {"type": "array", "items": _DATASET},
    },
}


def _validate(events: list[dict[str, Any]]) -> None:
    import jsonschema

    v = jsonschema.Draft202012Validator(OPENLINEAGE_RUN_EVENT,
                                        format_checker=jsonschema.FormatChecker())
    for e in events:
        v.validate(e)
        assert e["schemaURL"].startswith("https://openlineage.io/spec/")
        uuid.UUID(e["run"]["runId"])
        datetime.fromisoformat(e["eventTime"])


def test_openlineage(env: dict[str, str], tmp_path: Path) -> None:
    make_images(env, "/p7/data")
    metafs(env, "run", "--name", "ol-train", "--", sys.executable, script(env, "train.py"),
           "/p7/data", "/p7/model.onnx")
    out = metafs(env, "prov", "upstream", "/p7/model.onnx", "--format", "openlineage")
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    _validate(events)
    mine = [e for e in events if e["job"]["name"] == "ol-train"]
    assert [e["eventType"] for e in mine] == ["START", "COMPLETE"]
    assert [d["name"] for d in mine[-1]["inputs"]] == ["/p7/data"]
    assert [d["name"] for d in mine[-1]["outputs"]] == ["/p7/model.onnx"]

    # to a file, and to an HTTP endpoint, through openlineage-python's transports
    got: list[dict[str, Any]] = []

    class H(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            n = int(self.headers.get("Content-Length", 0))
            got.append({"path": self.path, "body": json.loads(self.rfile.read(n))})
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a: Any) -> None:
            pass

    srv = HTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        f = tmp_path / "ol.jsonl"
        metafs(env, "prov", "upstream", "/p7/model.onnx", "--openlineage-file", str(f),
               "--openlineage-url", f"http://127.0.0.1:{srv.server_port}")
        filed = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        _validate(filed)
        assert len(filed) == len(events)
        # both destinations given: both get every event
        assert len(got) == len(events), "the URL was skipped when a file was given too"
        assert [g["body"] for g in got] == filed
        metafs(env, "prov", "upstream", "/p7/model.onnx", "--openlineage-url",
               f"http://127.0.0.1:{srv.server_port}")
        assert len(got) == 2 * len(events)
    finally:
        srv.shutdown()
    assert got and all(g["path"] == "/api/v1/lineage" for g in got)
    _validate([g["body"] for g in got])


# ---------------------------------------------------------------------- FUSE mount
PLAIN_TRAIN = """
import os, sys
ds, out = sys.argv[1], sys.argv[2]
total = 0
for name in sorted(os.listdir(ds)):
    with open(os.path.join(ds, name), "rb") as f:
        total += len(f.read())
os.makedirs(os.path.dirname(out), exist_ok=True)
with open(out, "wb") as f:
    f.write(b"weights:" + str(total).encode())
"""


@pytest.mark.fuse
def test_through_mount(env: dict[str, str], tmp_path: Path) -> None:
    """Ordinary programs on a real mount: the mount's access events feed the graph."""
    pytest.importorskip("metafs.fuse.mount")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse")
    make_images(env, "/p8/data")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run([sys.executable, "-m", "metafs.cli", "mount", str(mnt)], env=env,
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        pytest.skip(f"cannot mount here: {r.stderr.strip()[-300:]}")
    try:
        prog = tmp_path / "plain_train.py"
        prog.write_text(PLAIN_TRAIN)
        metafs(env, "run", "--name", "mount-train", "--", sys.executable, str(prog),
               str(mnt / "p8/data"), str(mnt / "p8/models/model.pt"))
        sh(env, sys.executable, "-c", "import sys; open(sys.argv[2], 'w').write("
           "str(len(open(sys.argv[1], 'rb').read())))", str(mnt / "p8/models/model.pt"),
           str(mnt / "p8/report.txt"))
    finally:
        metafs(env, "umount", str(mnt))  # flushes the mount's pending access events
    up = prov(env, "upstream", "/p8/models/model.pt")
    assert "/p8/data" in paths(up)
    assert "mount-train" in run_names(up)
    down = prov(env, "downstream", "/p8/data")
    assert "/p8/report.txt" in paths(down)
    assert any("report.txt" in r["cmdline"] for r in down["runs"] if not r["explicit"])


IN_PROCESS_RUN = """
import sys
import metafs
data, model, after = sys.argv[1], sys.argv[2], sys.argv[3]
with metafs.run("inproc-train", params={"epochs": 1}):
    n = sum(len(open(f"{data}/img{i:03d}.png", "rb").read()) for i in range(12))
    open(model, "w").write(str(n))
open(after, "w").write("written after the run ended")
"""


@pytest.mark.fuse
def test_run_block_in_a_program_reading_through_the_mount(env: dict[str, str],
                                                          tmp_path: Path) -> None:
    """``with metafs.run(...)`` inside a program that reads and writes plain files on a
    mount: the mount cannot see the run id (it is set after the process started), so the
    graph maps the process to the run it was inside, by host, pid and time."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse")
    make_images(env, "/p9/data")
    with client(env) as fs:
        fs.makedirs("/p9/models", exist_ok=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    metafs(env, "mount", str(mnt))
    try:
        prog = tmp_path / "inproc.py"
        prog.write_text(IN_PROCESS_RUN)
        sh(env, sys.executable, str(prog), str(mnt / "p9/data"), str(mnt / "p9/models/m.pt"),
           str(mnt / "p9/after.txt"))
    finally:
        metafs(env, "umount", str(mnt))
    up = prov(env, "upstream", "/p9/models/m.pt")
    assert "/p9/data" in paths(up)
    assert "inproc-train" in run_names(up)
    after = prov(env, "upstream", "/p9/after.txt")
    assert "inproc-train" not in run_names(after)  # the process, after its run ended


@pytest.mark.fuse
def test_second_reader_of_cached_file_is_recorded(tmp_path: Path) -> None:
    """Two processes read one unchanged file, one after the other, on one mount. The
    second read is answered from the kernel page cache (kept across opens), so no read
    call reaches the mount; both processes still get a read event."""
    fx = pytest.importorskip("fuse_fixtures")
    if not fx.FUSE_AVAILABLE:
        pytest.skip("needs /dev/fuse, root and fusermount3 (fuse3)")
    from metafs.config import load
    from metafs.proto import metafs_pb2 as pb

    nn = fx.GrpcNamenode(load(overrides={"data_dir": str(tmp_path / "nn"),
                                         "listen": "127.0.0.1:0"}, environ={})).start()
    m = fx.Mount(tmp_path / "m", ["--namenode", nn.address,
                                  "--log-file", str(tmp_path / "m.log")])
    try:
        with Client(nn.address) as c:
            c.write_bytes("/data.csv", b"a,b\n1,2\n" * 100)
        m.start()
        for run in ("reader-1", "reader-2"):
            subprocess.run([sys.executable, "-c", "import sys; open(sys.argv[1], 'rb').read()",
                            str(m / "data.csv")], check=True,
                           env={**os.environ, "METAFS_RUN_ID": run})
        # a process that only writes, and one that truncates, are not readers
        subprocess.run([sys.executable, "-c", "import sys; open(sys.argv[1], 'wb').write(b'x'); "
                        "open(sys.argv[2], 'r+b').write(b'y')",
                        str(m / "out.bin"), str(m / "data.csv")], check=True,
                       env={**os.environ, "METAFS_RUN_ID": "writer"})
        m.stop()  # unmounting sends what is pending
        with Client(nn.address) as c:
            records, _ = c.changelog(0, limit=10_000)
            ino = c.ino("/data.csv")
    finally:
        m.stop()
        nn.stop()
    reads = {(r.run_id, r.ino): json.loads(r.extra) for r in records if r.op == pb.OP_ACCESS}
    for run in ("reader-1", "reader-2"):
        assert (run, ino) in reads, f"no access event of {run}: {sorted(reads)}"
        assert reads[run, ino]["read"] and not reads[run, ino]["wrote"]
    for key, ev in reads.items():
        if key[0] == "writer":
            assert ev["wrote"] and not ev["read"], (key, ev)


def test_a_write_replacing_the_content_starts_a_version(tmp_path: Path) -> None:
    """A write that emptied the file first (WRITE_REPLACED: a truncating open's first write
    through a mount) closes the open version as a truncation to 0 does, even for the same
    writer; a plain write by that writer extends the version."""
    store = ProvenanceStore(f"sqlite:///{tmp_path / 'prov.db'}")
    try:
        def write(seq: int, version: int, size: int, flags: int) -> pb.ChangeRecord:
            return pb.ChangeRecord(seq=seq, op=pb.OP_WRITE, ino=5, client_id="c", flags=flags,
                                   attr=pb.Attr(ino=5, version=version, size=size))

        store.apply([pb.ChangeRecord(seq=1, op=pb.OP_CREATE, ino=5, parent=1, name="m.pt",
                                     client_id="c"),
                     write(2, 1, 10, pb.WRITE_PLAIN), write(3, 2, 20, pb.WRITE_PLAIN)], 3)
        assert store.counts()["versions"] == 1
        store.apply([write(4, 3, 5, pb.WRITE_REPLACED), write(5, 4, 9, pb.WRITE_PLAIN)], 5)
        assert store.counts()["versions"] == 2
    finally:
        store.close()
