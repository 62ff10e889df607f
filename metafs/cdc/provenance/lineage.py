"""OpenLineage run events, live: sent as runs start and end, and as the provenance
consumer learns what each run read and wrote.

- An explicit run (``metafs run -- CMD``, ``with metafs.run(...)``) sends START when it
  starts and COMPLETE or FAIL (a non-zero exit, a signal, an exception) when it ends, with
  its parameters, command line, host and user (:class:`MetafsRunFacet`), its parent run
  (``OPENLINEAGE_PARENT_ID``, or the metafs run it was started inside) and, under MLflow,
  the MLflow run id. Its children get ``OPENLINEAGE_PARENT_ID`` naming it, so tools that
  speak OpenLineage themselves link their runs under it.
- The provenance consumer (``metafs prov sync``) sends, after each batch it commits, the
  data sets each run newly read (inputs) and wrote (outputs): RUNNING events for runs
  still going, the run's terminal event again with everything it read and wrote once its
  end is in the changelog, and START for runs it inferred from access events (a process
  reading or writing outside any explicit run).

Events go wherever openlineage-python's client is configured to send them, the standard
way: ``openlineage.yml`` (in ``OPENLINEAGE_CONFIG``, the working directory or
``~/.openlineage``), ``OPENLINEAGE_URL`` with ``OPENLINEAGE_API_KEY``, or
``OPENLINEAGE__TRANSPORT__*`` variables; ``OPENLINEAGE_DISABLED=true`` turns it off.
Nothing is sent when nothing is configured. A destination that fails is logged, never
fails the run or the consumer.
"""

from __future__ import annotations

import functools
import logging
import os
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from .query import NOW, ProvenanceQuery

if TYPE_CHECKING:
    from .store import ProvenanceStore

log = logging.getLogger("metafs.cdc.provenance.lineage")

PRODUCER = "https://github.com/metafs/metafs/tree/main/metafs/cdc/provenance"
PARENT_ENV = "OPENLINEAGE_PARENT_ID"
"""``NAMESPACE/JOB_NAME/RUN_ID``: the run that started this process (the form
OpenLineage's Airflow, dbt and Spark integrations use)."""
_NS_UUID = uuid.UUID("3f0b6c3e-7a43-4f4e-9a53-6d6574616673")
_ENV_FIELDS = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES",
               "HOSTNAME", "CONDA_DEFAULT_ENV", "VIRTUAL_ENV")
"""Environment variables worth keeping with a run (ids of the scheduler and tracker that
ran it, the devices and environment it ran with); never secrets."""


def run_uuid(run_id: str) -> str:
    """The OpenLineage run id (a UUID) of a metafs run id or inferred-run key."""
    try:
        return str(uuid.UUID(hex=run_id))
    except ValueError:
        return str(uuid.uuid5(_NS_UUID, run_id))


def namespace_for(settings: Any, host: str) -> str:
    """The OpenLineage namespace of a metafs volume: ``metafs://NAMENODE`` (the first
    address of a cluster), or ``metafs://HOST`` for an embedded one."""
    where = settings.namenode.split(",")[0] if settings.namenode else host
    return f"metafs://{where}"


def parse_parent(value: str | None) -> tuple[str, str, str] | None:
    """``NAMESPACE/JOB_NAME/RUN_ID`` -> its three parts (the namespace may hold ``/``,
    as in ``metafs://host``; the run id is last, the job name before it)."""
    if not value:
        return None
    head, sep, run_id = value.rpartition("/")
    namespace, sep2, name = head.rpartition("/")
    if not (sep and sep2 and namespace and name and run_id):
        log.warning("ignoring %s=%r: expected NAMESPACE/JOB_NAME/RUN_ID", PARENT_ENV, value)
        return None
    try:
        run_id = str(uuid.UUID(run_id))
    except ValueError:
        log.warning("ignoring %s=%r: the run id is not a UUID", PARENT_ENV, value)
        return None
    return namespace, name, run_id


def env_fields(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment variables of :data:`_ENV_FIELDS` that are set."""
    return {k: environ[k] for k in _ENV_FIELDS if environ.get(k)}


@functools.cache
def _facet_classes() -> tuple[Any, Any]:
    """metafs's own run and job facets (made on first use: openlineage-python and its
    attrs are the ``provenance`` extra)."""
    import attr
    from openlineage.client.generated.base import JobFacet, RunFacet

    @attr.define
    class MetafsRunFacet(RunFacet):  # type: ignore[misc]
        """What metafs knows of a run: its metafs id, parameters, command line, host,
        user, process, exit status and the MLflow run it belongs to."""

        runId: str  # noqa: N815
        explicit: bool
        params: dict[str, Any] = attr.field(factory=dict)
        cmdline: str = ""
        host: str = ""
        user: str = ""
        pid: int | None = None
        exitCode: int | None = None  # noqa: N815
        status: str = ""
        mlflowRunId: str | None = None  # noqa: N815
        environment: dict[str, str] = attr.field(factory=dict)

        @staticmethod
        def _get_schema() -> str:
            return PRODUCER + "/facets/MetafsRunFacet.json#/$defs/MetafsRunFacet"

    @attr.define
    class MetafsJobFacet(JobFacet):  # type: ignore[misc]
        """How the job was recognised: an explicit run, or a process seen reading or
        writing (an inferred run)."""

        inferred: bool

        @staticmethod
        def _get_schema() -> str:
            return PRODUCER + "/facets/MetafsJobFacet.json#/$defs/MetafsJobFacet"

    return MetafsRunFacet, MetafsJobFacet


def _iso(ns: int | None) -> str:
    when = ns / 1e9 if ns else datetime.now(timezone.utc).timestamp()
    return datetime.fromtimestamp(when, tz=timezone.utc).isoformat()


def state_of(status: str, ended: bool) -> str:
    """The OpenLineage event type of a run's status: START while running, COMPLETE for a
    clean end, FAIL for anything else (a non-zero exit, a signal, an exception)."""
    if not ended:
        return "START"
    return "COMPLETE" if status == "completed" else "FAIL"


def build_event(namespace: str, run: Mapping[str, Any], state: str, *,
                inputs: Iterable[Mapping[str, Any]] = (),
                outputs: Iterable[Mapping[str, Any]] = (),
                parent: tuple[str, str, str] | None = None, when_ns: int | None = None,
                error: str = "") -> Any:
    """One OpenLineage RunEvent for a run (a dict as :func:`~.query.run_dict` gives, or
    as :class:`~.runs.Run` describes itself) with the artifact versions it read and wrote
    as data sets: namespace ``namespace``, name = path, version = ``INO.VERSION``."""
    from openlineage.client.event_v2 import (InputDataset, Job, OutputDataset, Run,
                                             RunEvent, RunState)
    from openlineage.client.generated import (dataset_version_dataset, error_message_run,
                                              job_type_job, parent_run,
                                              processing_engine_run)

    from ...version import __version__

    run_facet, job_facet = _facet_classes()

    def ds(cls: Any, a: Mapping[str, Any]) -> Any:
        return cls(namespace=namespace, name=a["path"], facets={
            "version": dataset_version_dataset.DatasetVersionDatasetFacet(
                datasetVersion=f"{a['ino']}.{a['version']}", producer=PRODUCER)})

    name = run.get("name") or run["run_id"]
    facets: dict[str, Any] = {
        "processing_engine": processing_engine_run.ProcessingEngineRunFacet(
            version=__version__, name="metafs", producer=PRODUCER),
        "metafs": run_facet(
            runId=run["run_id"], explicit=bool(run.get("explicit")),
            params=dict(run.get("params") or {}), cmdline=run.get("cmdline") or "",
            host=run.get("host") or "", user=run.get("user") or "", pid=run.get("pid"),
            exitCode=run.get("exit_code"), status=run.get("status") or "",
            mlflowRunId=run.get("mlflow_run_id") or None,
            environment=dict(run.get("environment") or {}), producer=PRODUCER),
    }
    if parent is not None:
        p_ns, p_name, p_run = parent
        facets["parent"] = parent_run.ParentRunFacet(
            run=parent_run.Run(runId=p_run), job=parent_run.Job(namespace=p_ns, name=p_name),
            producer=PRODUCER)
    if error and state == "FAIL":
        facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
            message=error, programmingLanguage="shell" if run.get("cmdline") else "python",
            producer=PRODUCER)
    return RunEvent(
        eventType=getattr(RunState, state), eventTime=_iso(when_ns),
        run=Run(runId=run_uuid(run["run_id"]), facets=facets),
        job=Job(namespace=namespace, name=name, facets={
            "jobType": job_type_job.JobTypeJobFacet(
                processingType="BATCH", integration="METAFS",
                jobType="RUN" if run.get("explicit") else "PROCESS", producer=PRODUCER),
            "metafs": job_facet(inferred=not run.get("explicit"), producer=PRODUCER)}),
        inputs=[ds(InputDataset, a) for a in inputs],
        outputs=[ds(OutputDataset, a) for a in outputs], producer=PRODUCER)


class LiveLineage:
    """Sends run events through an openlineage-python client."""

    def __init__(self, client: Any, namespace: str) -> None:
        self.client = client
        self.namespace = namespace

    @classmethod
    def from_environment(cls, namespace: str) -> "LiveLineage | None":
        """The client as openlineage-python is configured here, or None when it is not
        configured (or openlineage-python is not installed): no events by default."""
        try:
            from openlineage.client import OpenLineageClient
            from openlineage.client.transport.noop import NoopConfig, NoopTransport
        except ImportError:
            return None
        probe = OpenLineageClient(transport=NoopTransport(NoopConfig()))
        transport = probe.config.transport or {}
        if not (os.environ.get("OPENLINEAGE_URL") or transport.get("type")):
            return None
        return cls(OpenLineageClient(), namespace)

    def emit(self, event: Any) -> bool:
        """Send one event; a failing destination is logged, not raised."""
        try:
            self.client.emit(event)
            return True
        except Exception as exc:
            log.warning("could not send an OpenLineage %s event for job %s: %s",
                        event.eventType.value, event.job.name, exc)
            return False

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # an async transport that could not flush: already logged
            log.debug("closing the OpenLineage client failed", exc_info=True)

    # ------------------------------------------------------------------ the consumer
    def after_batch(self, store: "ProvenanceStore", runs: Iterable[int],
                    edges: Iterable[tuple[int, str, int]], ended: Iterable[int]) -> int:
        """Events for one committed batch: the runs it inferred (START), the data sets
        runs newly read and wrote (RUNNING), and the end of explicit runs (their terminal
        event with everything they read and wrote). Returns the number sent."""
        new_runs, done = set(runs), set(ended)
        by_run: dict[int, list[tuple[str, int]]] = {}
        for run, d, av in edges:
            by_run.setdefault(run, []).append((d, av))
        touched = new_runs | set(by_run) | done
        if not touched:
            return 0
        pq = ProvenanceQuery(store)
        with pq.conn() as c:
            info = pq._runs(c, touched, NOW)
            if done:
                for run, d, av in pq.edges_of(c, done):
                    by_run.setdefault(run, []).append((d, av))
            arts = pq._artifacts(c, {av for xs in by_run.values() for _, av in xs}, NOW)
        sent = 0
        for rid in sorted(touched):
            run = info.get(rid)
            if run is None:
                continue
            ins = [arts[av] for d, av in sorted(set(by_run.get(rid, ()))) if d == "r"]
            outs = [arts[av] for d, av in sorted(set(by_run.get(rid, ()))) if d == "w"]
            if rid in done and run["explicit"]:
                state, when = state_of(run["status"], True), run["end_ns"]
            elif rid in new_runs and not run["explicit"]:
                state, when = "START", run["start_ns"]
            elif ins or outs:
                state, when = "RUNNING", None
            else:
                continue
            sent += self.emit(build_event(self.namespace, run, state, inputs=ins,
                                          outputs=outs, when_ns=when,
                                          parent=parse_parent(run.get("parent"))))
        return sent
