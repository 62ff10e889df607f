"""Explicit runs: a name, parameters, start and end, host, user, command line, status.

``with metafs.run("train-resnet", params={...}) as run:`` records the start of a run with
the namenode (an OP_RUN changelog record), makes the run current for the client (every
change and access event the client sends carries the run id) and for child processes
(``METAFS_RUN_ID``), and records the end with status ``completed`` or ``failed``.
``metafs run -- CMD ...`` does the same around a child process and ends the run with the
child's exit status.
"""

from __future__ import annotations

import getpass
import json
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

RUN_ENV = "METAFS_RUN_ID"


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
    _owns_client: bool = False
    _saved_env: str | None = None
    _saved_caller: str = ""

    def start(self) -> "Run":
        """Record the start and make this the current run of the client and of children."""
        if self.client is None:
            from ...client import Client

            self.client = Client()
            self._owns_client = True
        self.run_id = self.run_id or uuid.uuid4().hex
        self.cmdline = self.cmdline or _cmdline()
        self.status = "running"
        record_run(self.client, self.run_id, {
            "event": "start", "name": self.name, "params": self.params,
            "host": socket.gethostname(), "user": _user(), "uid": os.getuid(),
            "pid": os.getpid(), "cmdline": self.cmdline, "status": "running",
            "start_ns": time.time_ns()})
        self._saved_env = os.environ.get(RUN_ENV)
        os.environ[RUN_ENV] = self.run_id
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
            body: dict[str, Any] = {"event": "end", "status": status, "end_ns": time.time_ns()}
            if exit_code is not None:
                body["exit_code"] = exit_code
            if error:
                body["error"] = error
            record_run(self.client, self.run_id, body)
        finally:
            self.client.caller.run_id = self._saved_caller
            if self._saved_env is None:
                os.environ.pop(RUN_ENV, None)
            else:
                os.environ[RUN_ENV] = self._saved_env
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
        proc = subprocess.Popen(list(argv), env=dict(os.environ, **{RUN_ENV: r.run_id}))
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
