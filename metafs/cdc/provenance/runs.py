"""Explicit runs: a name, parameters, start and end, host, user, command line, status.

``with metafs.run("train-resnet", params={...}) as run:`` records the start of a run with
the namenode (an OP_RUN changelog record), makes the run current for the client (every
change and access event the client sends carries the run id) and for child processes
(``METAFS_RUN_ID``), and records the end with status ``completed`` or ``failed``.
``metafs run -- CMD ...`` does the same around a child process and ends the run with the
child's exit status.

Where OpenLineage is configured (:mod:`.lineage`), the run sends START and COMPLETE or FAIL
events as it goes, with its parent run (``OPENLINEAGE_PARENT_ID``), and names itself as the
parent of what runs inside it. Under MLflow (``MLFLOW_RUN_ID`` set), the run records the
MLflow run id, and at its end logs the data sets it read as inputs of the MLflow run
(:mod:`.mlflow_link`).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Mapping, Sequence

from ...proto import metafs_pb2 as pb
from .lineage import PARENT_ENV, LiveLineage, env_fields, namespace_for, parse_parent, run_uuid

log = logging.getLogger("metafs.cdc.provenance")

RUN_ENV = "METAFS_RUN_ID"
MLFLOW_ENV = "MLFLOW_RUN_ID"


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers)
        return str(os.getuid())


def _cmdline() -> str:
    try:
        with open(f"/proc/{os.getpid()}/cmdline", "rb") as fh:
            return " ".join(a.decode("utf-8", "replace") for a in fh.read().split(b"\0") if a)
    except OSError:
        return " ".join([sys.executable, *sys.argv])


def record_run(client: Any, run_id: str, body: Mapping[str, Any]) -> None:
    """Append one OP_RUN record (``body`` must be a JSON object)."""
    if not isinstance(body, Mapping):
        raise ValueError("a run record is a JSON object")
    client._call("RecordRun", pb.RunRecordRequest(
        caller=client.caller, run_id=run_id,
        json=json.dumps(dict(body), sort_keys=True, default=str)))


@dataclass
class Run:
    """An explicit run (use :func:`run` to make one)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    client: Any = None
    run_id: str = ""
    cmdline: str = ""
    status: str = ""
    exit_code: int | None = None
    parent: str = ""
    """The OpenLineage parent run, ``NAMESPACE/JOB_NAME/RUN_ID`` (from the environment)."""
    mlflow_run_id: str = ""
    start_ns: int = 0
    _owns_client: bool = False
    _saved_env: dict[str, str | None] = field(default_factory=dict)
    _saved_caller: str = ""
    _lineage: LiveLineage | None = None

    def describe(self) -> dict[str, Any]:
        """The run as the OpenLineage events and provenance answers describe runs."""
        return {"run_id": self.run_id, "name": self.name, "explicit": True,
                "params": self.params, "cmdline": self.cmdline, "host": socket.gethostname(),
                "user": _user(), "pid": os.getpid(), "exit_code": self.exit_code,
                "status": self.status, "mlflow_run_id": self.mlflow_run_id or None,
                "environment": env_fields(os.environ)}

    @property
    def namespace(self) -> str:
        return namespace_for(self.client.settings, self.client.host)

    def _set_env(self, name: str, value: str) -> None:
        self._saved_env.setdefault(name, os.environ.get(name))
        os.environ[name] = value

    def _emit(self, state: str, when_ns: int, error: str = "") -> None:
        if self._lineage is not None:
            self._lineage.emit(self._lineage_event(state, when_ns, error))

    def _lineage_event(self, state: str, when_ns: int, error: str = "") -> Any:
        from .lineage import build_event

        return build_event(self.namespace, self.describe(), state, when_ns=when_ns,
                           parent=parse_parent(self.parent), error=error)

    def start(self) -> "Run":
        """Record the start and make this the current run of the client and of children."""
        if self.client is None:
            from ...client import Client

            self.client = Client()
            self._owns_client = True
        self.run_id = self.run_id or uuid.uuid4().hex
        self.cmdline = self.cmdline or _cmdline()
        self.status = "running"
        self.parent = self.parent or os.environ.get(PARENT_ENV, "")
        self.mlflow_run_id = self.mlflow_run_id or os.environ.get(MLFLOW_ENV, "")
        self.start_ns = time.time_ns()
        record_run(self.client, self.run_id, {
            "event": "start", "name": self.name, "params": self.params,
            "host": socket.gethostname(), "user": _user(), "uid": os.getuid(),
            "pid": os.getpid(), "cmdline": self.cmdline, "status": "running",
            "start_ns": self.start_ns, "parent": self.parent,
            "mlflow_run_id": self.mlflow_run_id, "environment": env_fields(os.environ)})
        self._lineage = LiveLineage.from_environment(self.namespace)
        self._emit("START", self.start_ns)
        self._saved_env = {}
        self._set_env(RUN_ENV, self.run_id)
        self._set_env(PARENT_ENV, f"{self.namespace}/{self.name}/{run_uuid(self.run_id)}")
        self._saved_caller = self.client.caller.run_id
        self.client.access_recorder.flush()  # events so far belong to whatever ran before
        self.client.caller.run_id = self.run_id
        return self

    def end(self, status: str = "completed", exit_code: int | None = None,
            error: str = "") -> None:
        """Record the end of the run (once) and restore the previous run id."""
        if self.status not in ("running",):
            return
        self.status = status
        self.exit_code = exit_code
        try:
            self.client.access_recorder.flush()  # this run's events, before its end record
            end_ns = time.time_ns()
            body: dict[str, Any] = {"event": "end", "status": status, "end_ns": end_ns}
            if exit_code is not None:
                body["exit_code"] = exit_code
            if error:
                body["error"] = error
            record_run(self.client, self.run_id, body)
            if self._lineage is not None:
                self._emit("COMPLETE" if status == "completed" else "FAIL", end_ns,
                           error or f"{status} (exit status {exit_code})")
                self._lineage.close()
            if self.mlflow_run_id:
                from .mlflow_link import log_run_inputs

                log_run_inputs(self.client, self.run_id, self.mlflow_run_id, self.namespace)
        finally:
            self.client.caller.run_id = self._saved_caller
            for name, value in self._saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            if self._owns_client:
                self.client.close()

    def __enter__(self) -> "Run":
        return self if self.status == "running" else self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if et is None:
            self.end("completed", 0)
        elif issubclass(et, KeyboardInterrupt):
            self.end("killed", 130, error="KeyboardInterrupt")
        else:
            self.end("failed", 1, error=f"{et.__name__}: {ev}")


def run(name: str, params: Mapping[str, Any] | None = None, *, client: Any = None,
        run_id: str | None = None) -> Run:
    """An explicit run, as a context manager::

        with metafs.run("train-resnet", params={"lr": 0.1}, client=fs) as r:
            ...  # reads and writes through ``fs`` (and child processes) belong to r

    Without ``client``, one is made from the settings (and closed at the end).
    """
    return Run(name=name, params=dict(params or {}), client=client, run_id=run_id or "")


def run_command(client: Any, argv: Sequence[str], *, name: str | None = None,
                params: Mapping[str, Any] | None = None) -> int:
    """Run ``argv`` as an explicit run: start it, run the child with ``METAFS_RUN_ID``,
    end it with the child's exit status. Returns the exit status (128+N for signal N)."""
    if not argv:
        raise ValueError("no command to run")
    r = Run(name=name or os.path.basename(argv[0]), params=dict(params or {}), client=client,
            cmdline=" ".join(argv))
    r.start()
    code = 1
    status = "failed"
    try:
        proc = subprocess.Popen(list(argv), env=dict(os.environ))  # the run's variables set
        try:
            code = proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            code = proc.wait()
        if code < 0:
            status, code = f"killed:{signal.Signals(-code).name}", 128 - code
        else:
            status = "completed" if code == 0 else "failed"
    except OSError as exc:
        r.end("failed", 127, error=str(exc))
        raise
    r.end(status, code)
    return code
