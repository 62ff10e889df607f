"""What of a lineage answer a caller may see: the permission filter of provenance.

The rules match search's (:mod:`metafs.cdc.search.service`): an artifact is visible when
the caller may look names up in its directory (search permission on it and on every
directory above), root sees everything. An artifact of a data set shared into the caller's
project is visible through the share's entry, and is shown under that path
(``/Projects/B/datasets/A::NAME/...``), the one the caller can open.

- A graph keeps the visible artifacts, and only the runs and edges reached from its roots
  through visible artifacts: nothing reached only through a hidden artifact is shown, not
  even as a count.
- A run of another uid is shown only where it read or wrote a visible artifact, and then
  without how it ran (command line, parameters, environment, parent, MLflow run): its
  name, status, times and user, as a file's owner and times are visible to anyone who may
  look it up.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from ...posix import Cred
from .query import Graph

PRIVATE_RUN_FIELDS = {"cmdline": "", "params": {}, "environment": {}, "parent": None,
                      "mlflow_run_id": None, "pid": None, "host": ""}


class Visibility:
    """The filter for one caller; ``visible_paths(cred, paths)`` is the namespace's (the
    paths the caller may look up, each as the caller reaches it)."""

    def __init__(self, cred: Cred,
                 visible_paths: Callable[[Cred, Iterable[str]], dict[str, str]]) -> None:
        self.cred = cred
        self._visible_paths = visible_paths
        self._seen: dict[str, str | None] = {}

    @property
    def everything(self) -> bool:
        return self.cred.is_root

    def paths_visible(self, paths: Iterable[str]) -> dict[str, str | None]:
        """Each path as the caller may look its name up (itself, or its name through a
        share entry of the caller's project), None where it may not (one namespace read
        for the paths not asked about yet)."""
        paths = list(paths)
        if self.everything:
            return {p: p for p in paths}
        want = set(paths) - set(self._seen)
        if want:
            ok = self._visible_paths(self.cred, want)
            self._seen.update((p, ok.get(p)) for p in want)
        return {p: self._seen[p] for p in paths}

    def run(self, run: dict[str, Any]) -> dict[str, Any]:
        """A run as the caller sees it: another uid's run without how it ran."""
        if self.everything or run.get("uid") == self.cred.uid:
            return run
        return {**run, **PRIVATE_RUN_FIELDS}

    def graph(self, g: Graph) -> Graph:
        """``g`` cut down to what the caller may see from its roots."""
        if self.everything:
            return g
        seen = self.paths_visible(a["path"] for a in g.artifacts.values())
        ok_art = {av for av, a in g.artifacts.items() if seen[a["path"]]}
        edges = [e for e in g.edges if e[2] in ok_art and e[0] in g.runs]
        # the walk again, in its own direction, over visible artifacts only: upstream
        # goes artifact <-wrote- run <-read- artifact, downstream the other way
        d_in, d_out = ("w", "r") if g.direction == "upstream" else ("r", "w")
        into: dict[int, list[int]] = {}  # artifact -> runs that reach it
        out_of: dict[int, list[int]] = {}  # run -> artifacts it goes on to
        for run, d, av in edges:
            if d == d_in:
                into.setdefault(av, []).append(run)
            else:
                out_of.setdefault(run, []).append(av)
        roots = [a for a in g.roots if a in ok_art]
        arts, runs = set(roots), set()
        todo = list(roots)
        while todo:
            for run in into.get(todo.pop(), ()):
                if run not in runs:
                    runs.add(run)
                    for nxt in out_of.get(run, ()):
                        if nxt not in arts:
                            arts.add(nxt)
                            todo.append(nxt)
        kept = [(r, d, a) for r, d, a in edges if r in runs and a in arts]
        return Graph(direction=g.direction, roots=roots,
                     runs={r: self.run(g.runs[r]) for r in runs},
                     artifacts={a: self._named(g.artifacts[a]) for a in arts},
                     edges=kept)

    def _named(self, artifact: dict[str, Any]) -> dict[str, Any]:
        """A visible artifact under the path the caller reaches it by."""
        shown = self.paths_visible([artifact["path"]])[artifact["path"]]
        return artifact if shown in (None, artifact["path"]) else {**artifact, "path": shown}

    def show(self, info: dict[str, Any]) -> dict[str, Any]:
        """An artifact's versions, with the runs of other uids described privately."""
        if self.everything:
            return info
        info = self._named(info)
        for v in info["versions"]:
            v["written_by"] = [self.run(r) for r in v["written_by"]]
            v["read_by"] = [self.run(r) for r in v["read_by"]]
        return info
