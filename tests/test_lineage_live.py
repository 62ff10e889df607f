"""Lineage where people look at it: OpenLineage events sent live (by runs as they start
and end, and by the namenode's provenance consumer as it follows the changelog) to a real HTTP
endpoint configured the standard way (OPENLINEAGE_URL), as Marquez would receive them;
and MLflow runs linked both ways with the metafs runs started under them."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from test_provenance import _validate, make_images, namenode_env, prov, script, sh

PARENT_RUN = str(uuid.uuid4())

# The ParentRunFacet of the OpenLineage spec (facets/1-2-0/ParentRunFacet.json), written
# from the spec: what a backend needs to hang a run under its parent.
PARENT_FACET = {
    "type": "object", "required": ["_producer", "_schemaURL", "run", "job"],
    "properties": {
        "run": {"type": "object", "required": ["runId"],
                "properties": {"runId": {"type": "string", "format": "uuid"}}},
        "job": {"type": "object", "required": ["namespace", "name"],
                "properties": {"namespace": {"type": "string"}, "name": {"type": "string"}}},
    },
}


class Collector:
    """A lineage endpoint on a loopback port: keeps every event POSTed to it."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.paths: list[str] = []
        events, paths = self.events, self.paths

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                n = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(n))
                paths.append(self.path)
                events.append(body)
                self.send_response(201)
                self.end_headers()

            def log_message(self, *a: Any) -> None:
                pass

        self.srv = HTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.srv.server_port}"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()

    def of(self, job: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["job"]["name"] == job]


@pytest.fixture(scope="module")
def endpoint() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, endpoint: Collector
        ) -> Iterator[dict[str, str]]:
    """A namenode that sends the lineage it builds to the endpoint (configured the
    standard way, in its environment)."""
    with namenode_env(tmp_path_factory.mktemp("lineage"), OPENLINEAGE_URL=endpoint.url) as e:
        yield e


@pytest.fixture
def collector(endpoint: Collector) -> Collector:
    """The endpoint, with what earlier tests sent forgotten."""
    endpoint.events.clear()
    endpoint.paths.clear()
    return endpoint


def ol_env(env: dict[str, str], col: Collector, **extra: str) -> dict[str, str]:
    return dict(env, OPENLINEAGE_URL=col.url, **extra)


def validate(events: list[dict[str, Any]]) -> None:
    import jsonschema

    _validate(events)
    check = jsonschema.Draft202012Validator(PARENT_FACET,
                                            format_checker=jsonschema.FormatChecker())
    for e in events:
        if "parent" in e["run"].get("facets", {}):
            check.validate(e["run"]["facets"]["parent"])


def test_a_run_sends_start_and_complete_with_its_parent(env: dict[str, str],
                                                        collector: Collector) -> None:
    make_images(env, "/l1/data")
    e = ol_env(env, collector, OPENLINEAGE_PARENT_ID=f"airflow/nightly.train/{PARENT_RUN}")
    sh(e, sys.executable, "-m", "metafs.cli", "run", "--name", "live-train", "--param",
       "lr=0.1", "--", sys.executable, script(env, "train.py"), "/l1/data", "/l1/model.pt")
    mine = collector.of("live-train")
    validate(mine)
    assert [x["eventType"] for x in mine] == ["START", "COMPLETE"]
    assert set(collector.paths) == {"/api/v1/lineage"}
    assert mine[0]["run"]["runId"] == mine[1]["run"]["runId"]
    for x in mine:
        parent = x["run"]["facets"]["parent"]
        assert parent["run"]["runId"] == PARENT_RUN
        assert (parent["job"]["namespace"], parent["job"]["name"]) == ("airflow", "nightly.train")
        facet = x["run"]["facets"]["metafs"]
        assert facet["params"] == {"lr": 0.1} and facet["explicit"] is True
        assert "train.py /l1/data /l1/model.pt" in facet["cmdline"]
        assert x["job"]["namespace"] == f"metafs://{env['METAFS_NAMENODE']}"
        assert x["job"]["facets"]["jobType"]["jobType"] == "RUN"
    assert mine[1]["run"]["facets"]["metafs"]["exitCode"] == 0

    # the consumer, following the changelog, sends what the run read and wrote
    collector.events.clear()
    sh(e, sys.executable, "-m", "metafs.cli", "prov", "sync")
    validate(collector.events)
    ended = [x for x in collector.of("live-train") if x["eventType"] == "COMPLETE"]
    assert len(ended) == 1
    assert [d["name"] for d in ended[0]["inputs"]] == ["/l1/data"]
    assert [d["name"] for d in ended[0]["outputs"]] == ["/l1/model.pt"]
    assert ended[0]["run"]["runId"] == mine[0]["run"]["runId"]  # the same run
    assert ended[0]["run"]["facets"]["parent"]["run"]["runId"] == PARENT_RUN
    version = ended[0]["inputs"][0]["facets"]["version"]["datasetVersion"]
    assert version.endswith(".1")
    # nothing new: nothing sent
    collector.events.clear()
    sh(e, sys.executable, "-m", "metafs.cli", "prov", "sync")
    assert collector.events == []


def test_failed_and_killed_commands_send_fail(env: dict[str, str],
                                             collector: Collector) -> None:
    e = ol_env(env, collector)
    for name, code, expect in (("exits-3", "import sys; sys.exit(3)", 3),
                               ("killed", "import os, signal; os.kill(os.getpid(), "
                                          "signal.SIGTERM)", 128 + 15)):
        r = subprocess.run([sys.executable, "-m", "metafs.cli", "run", "--name", name, "--",
                            sys.executable, "-c", code], env=e, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == expect, r.stderr
        mine = collector.of(name)
        validate(mine)
        assert [x["eventType"] for x in mine] == ["START", "FAIL"]
        assert mine[1]["run"]["facets"]["metafs"]["exitCode"] == expect
        assert mine[1]["run"]["facets"]["errorMessage"]["message"]
        assert "parent" not in mine[0]["run"]["facets"]  # none was given


def test_nested_runs_name_their_parent(env: dict[str, str], collector: Collector) -> None:
    sh(ol_env(env, collector), sys.executable, "-m", "metafs.cli", "run", "--name", "outer",
       "--", sys.executable, "-m", "metafs.cli", "run", "--name", "inner", "--", "true")
    outer, inner = collector.of("outer"), collector.of("inner")
    validate(outer + inner)
    parent = inner[0]["run"]["facets"]["parent"]
    assert parent["run"]["runId"] == outer[0]["run"]["runId"]
    assert parent["job"]["name"] == "outer"
    assert parent["job"]["namespace"] == outer[0]["job"]["namespace"]


def test_consumer_sends_inferred_runs(env: dict[str, str], collector: Collector) -> None:
    """A program run without `metafs run` is a run the consumer infers from its reads
    and writes; it reaches the lineage backend too."""
    make_images(env, "/l4/data")
    sh(env, sys.executable, script(env, "train.py"), "/l4/data", "/l4/model.pt")
    sh(ol_env(env, collector), sys.executable, "-m", "metafs.cli", "prov", "sync")
    validate(collector.events)
    mine = [x for x in collector.events
            if "/l4/model.pt" in [d["name"] for d in x.get("outputs", [])]]
    assert len(mine) == 1 and mine[0]["eventType"] == "START"
    assert [d["name"] for d in mine[0]["inputs"]] == ["/l4/data"]
    assert mine[0]["job"]["name"] == "train.py"
    assert mine[0]["job"]["facets"]["jobType"]["jobType"] == "PROCESS"
    facet = mine[0]["run"]["facets"]["metafs"]
    assert facet["explicit"] is False and "train.py /l4/data" in facet["cmdline"]


def test_nothing_is_sent_when_nothing_is_configured(env: dict[str, str],
                                                    collector: Collector) -> None:
    out = sh(env, sys.executable, "-m", "metafs.cli", "run", "--name", "quiet", "--", "true")
    assert out == "" and collector.events == []


# ---------------------------------------------------------------------- MLflow
def test_mlflow_run_linked_both_ways(env: dict[str, str], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    mlenv = dict(env, MLFLOW_TRACKING_URI=uri, MLFLOW_ALLOW_FILE_STORE="true")
    code = ("import mlflow; r = mlflow.start_run(); print(r.info.run_id); "
            "mlflow.end_run()")
    ml_run = sh(mlenv, sys.executable, "-c", code).strip().splitlines()[-1]
    make_images(env, "/l6/data")
    sh(dict(mlenv, MLFLOW_RUN_ID=ml_run), sys.executable, "-m", "metafs.cli", "run",
       "--name", "ml-train", "--", sys.executable, script(env, "train.py"), "/l6/data",
       "/l6/model.pt")
    # metafs -> MLflow: the run records the MLflow run id, provenance answers show it
    runs = [r for r in prov(env, "runs") if r["name"] == "ml-train"]
    assert len(runs) == 1 and runs[0]["mlflow_run_id"] == ml_run
    # MLflow -> metafs: the data set read is an input of the MLflow run, with its version
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a file store in a temp dir
    got = MlflowClient(tracking_uri=uri).get_run(ml_run)
    assert got.data.tags["metafs.run_id"] == runs[0]["run_id"]
    inputs = got.inputs.dataset_inputs
    assert [i.dataset.name for i in inputs] == ["/l6/data"]
    ds = inputs[0].dataset
    assert ds.source_type == "metafs"
    src = json.loads(ds.source)
    assert src["uri"] == f"metafs://{env['METAFS_NAMENODE']}/l6/data"
    assert ds.digest == f"{src['ino']}.{src['version']}" and src["version"] == 1
