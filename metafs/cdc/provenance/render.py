"""Lineage answers as text: a table, JSON, Graphviz dot, Mermaid, or OpenLineage run
events (built with openlineage-python, sent to a file or an HTTP endpoint)."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any, Iterable

from .lineage import build_event, parse_parent, state_of
from .query import Graph

FORMATS = ("table", "json", "dot", "mermaid", "openlineage")


def _ts(ns: int | None) -> str:
    if not ns:
        return "-"
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def artifact_label(a: dict[str, Any]) -> str:
    return f"{a['path']}@v{a['version']}" + (" (deleted)" if a.get("deleted") else "")


def run_label(r: dict[str, Any]) -> str:
    return r["name"] or r["run_id"]


# ---------------------------------------------------------------------- table
def graph_table(g: Graph, path: str = "") -> str:
    """The answer as text; ``path`` is what was asked about, named when the graph has no
    version of it to start from."""
    starts = [artifact_label(g.artifacts[a]) for a in g.roots if a in g.artifacts]
    if not starts:
        # a directory that is not a data set (too few data files in it, no kind tag), or a
        # file no run has read or written yet: the graph holds no version of it
        return (f"{g.direction} of {path or 'the path asked'}: not in the provenance graph "
                "(no run has read or written it; a directory is an artifact only when it is "
                "a data set: ask about the files in it)")
    lines = [f"{g.direction} of " + ", ".join(starts)]
    lines.append("")
    lines.append(f"{'ARTIFACT':<50} {'KIND':<8} {'VERSION':>7}")
    for a in sorted(g.artifacts.values(), key=lambda x: (x["path"], x["version"])):
        lines.append(f"{a['path']:<50} {a['kind']:<8} {a['version']:>7}")
    lines.append("")
    lines.append(runs_table(g.runs.values()))
    lines.append("")
    lines.append("EDGES")
    for r, d, a in g.edges:
        verb = "read " if d == "r" else "wrote"
        lines.append(f"  {run_label(g.runs[r])} [{g.runs[r]['run_id'][:12]}] {verb} "
                     f"{artifact_label(g.artifacts[a])}")
    return "\n".join(lines)


def runs_table(runs: Iterable[dict[str, Any]]) -> str:
    rows = [f"{'RUN':<34} {'NAME':<20} {'STATUS':<12} {'START':<19} {'HOST':<12} COMMAND"]
    for r in runs:
        io = ""
        if "reads" in r or "writes" in r:
            io = (f" reads v{','.join(map(str, r.get('reads', [])))}" if r.get("reads") else "")
            io += (f" writes v{','.join(map(str, r.get('writes', [])))}"
                   if r.get("writes") else "")
        rows.append(f"{r['run_id'][:34]:<34} {r['name'][:20]:<20} {r['status'][:12]:<12} "
                    f"{_ts(r['start_ns']):<19} {r['host'][:12]:<12} {r['cmdline']}{io}")
    return "\n".join(rows)


def show_table(info: dict[str, Any]) -> str:
    lines = [f"{info['path']}  ino {info['ino']}  {info['kind']}"
             + ("  (deleted)" if info["deleted"] else "")]
    for v in info["versions"]:
        lines.append(f"  v{v['version']}  data versions {v['data_versions'][0]}-"
                     f"{v['data_versions'][1]}  size {v['size']}  seen at seq {v['seq']} "
                     f"({_ts(v['ts_ns'])})")
        for r in v["written_by"]:
            lines.append(f"      written by {run_label(r)} [{r['run_id']}] {r['cmdline']}")
        for r in v["read_by"]:
            lines.append(f"      read by    {run_label(r)} [{r['run_id']}] {r['cmdline']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- graphs
def _node_ids(g: Graph) -> tuple[dict[int, str], dict[int, str]]:
    return ({a: f"a{a}" for a in g.artifacts}, {r: f"r{r}" for r in g.runs})


def graph_dot(g: Graph) -> str:
    an, rn = _node_ids(g)
    out = [f"digraph {g.direction} {{", "  rankdir=LR;"]
    shape = {"dataset": "cylinder", "model": "box3d", "other": "note"}
    for a, info in sorted(g.artifacts.items()):
        out.append(f"  {an[a]} [shape={shape.get(info['kind'], 'note')}, "
                   f"label={json.dumps(artifact_label(info) + chr(10) + info['kind'])}];")
    for r, info in sorted(g.runs.items()):
        out.append(f"  {rn[r]} [shape=ellipse, label="
                   f"{json.dumps(run_label(info) + chr(10) + info['status'])}];")
    for r, d, a in g.edges:
        out.append(f"  {an[a]} -> {rn[r]};" if d == "r" else f"  {rn[r]} -> {an[a]};")
    out.append("}")
    return "\n".join(out)


def _mm(text: str) -> str:
    return text.replace('"', "#quot;")


def graph_mermaid(g: Graph) -> str:
    an, rn = _node_ids(g)
    out = ["flowchart LR"]
    for a, info in sorted(g.artifacts.items()):
        out.append(f'  {an[a]}[("{_mm(artifact_label(info))}<br/>{info["kind"]}")]')
    for r, info in sorted(g.runs.items()):
        out.append(f'  {rn[r]}(["{_mm(run_label(info))}<br/>{info["status"]}"])')
    for r, d, a in g.edges:
        out.append(f"  {an[a]} -->|read| {rn[r]}" if d == "r"
                   else f"  {rn[r]} -->|wrote| {an[a]}")
    return "\n".join(out)


# ---------------------------------------------------------------------- OpenLineage
def openlineage_events(g: Graph, namespace: str) -> list[Any]:
    """OpenLineage RunEvents for each run in the answer: START, then COMPLETE or FAIL once
    it has ended, with the artifact versions it read as inputs and wrote as outputs (the
    same events :mod:`.lineage` sends live)."""
    events = []
    for rid, run in sorted(g.runs.items()):
        ins = [g.artifacts[a] for r, d, a in g.edges if r == rid and d == "r"]
        outs = [g.artifacts[a] for r, d, a in g.edges if r == rid and d == "w"]
        parent = parse_parent(run.get("parent"))
        states = [("START", run["start_ns"] or time.time_ns())]
        if run["end_ns"]:
            states.append((state_of(run["status"], True), run["end_ns"]))
        for state, when in states:
            events.append(build_event(namespace, run, state, inputs=ins, outputs=outs,
                                      parent=parent, when_ns=when))
    return events


def openlineage_json(g: Graph, namespace: str) -> str:
    """The run events as JSON lines."""
    from openlineage.client.serde import Serde

    return "\n".join(Serde.to_json(e) for e in openlineage_events(g, namespace))


def emit_openlineage(g: Graph, namespace: str, *, file: str | None = None,
                     url: str | None = None, endpoint: str = "api/v1/lineage") -> int:
    """Send the run events with openlineage-python transports: appended as JSON lines to
    ``file`` and/or POSTed to ``url`` (``endpoint`` path); every destination given gets
    every event. Returns the number of events (each destination's count)."""
    from openlineage.client import OpenLineageClient

    transports: list[Any] = []
    if file:
        from openlineage.client.transport.file import FileConfig, FileTransport

        transports.append(FileTransport(FileConfig(log_file_path=file, append=True)))
    if url:
        from openlineage.client.transport.http import HttpConfig, HttpTransport

        transports.append(HttpTransport(HttpConfig(url=url, endpoint=endpoint)))
    if not transports:
        raise ValueError("give a file or a url to send OpenLineage events to")
    events = openlineage_events(g, namespace)
    first_error: BaseException | None = None
    for transport in transports:  # one destination failing does not starve the others
        client = OpenLineageClient(transport=transport)
        try:
            for e in events:
                client.emit(e)
        except Exception as exc:
            first_error = first_error or exc
    if first_error is not None:
        raise first_error
    return len(events)


def render_graph(g: Graph, fmt: str, namespace: str = "metafs", path: str = "") -> str:
    """``g`` in format ``fmt`` (one of FORMATS); ``path`` is the path asked about."""
    if fmt == "json":
        return json.dumps(g.to_dict(), indent=2, default=str)
    if fmt == "dot":
        return graph_dot(g)
    if fmt == "mermaid":
        return graph_mermaid(g)
    if fmt == "openlineage":
        return openlineage_json(g, namespace)
    return graph_table(g, path)
