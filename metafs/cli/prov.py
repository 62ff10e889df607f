"""``metafs run -- CMD`` and ``metafs prov show|upstream|downstream|runs|sync|status``.

The answers come from the namenode (``--namenode``, or the embedded volume of ``--data``),
which keeps the lineage of its file system and shows each caller what it may see."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ..cdc.provenance.render import (FORMATS, emit_openlineage, render_graph, runs_table,
                                     show_table)
from .common import Common

#: what ``prov show`` and ``prov runs`` can print (graphs have every format of FORMATS)
TABLE_FORMATS = ("table", "json")


def _params(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep:
            raise ValueError(f"--param wants KEY=VALUE, not {item!r}")
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from ..cdc.provenance.runs import run_command
    from .common import make_client

    argv = list(args.cmd)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise ValueError("usage: metafs run [--name NAME] [--param K=V] -- COMMAND [ARGS]")
    with make_client(args) as fs:
        return run_command(fs, argv, name=args.name, params=_params(args.param))


def _namespace(fs: Any) -> str:
    from ..cdc.provenance.lineage import namespace_for

    return namespace_for(fs.settings, fs.host)


def cmd_prov(args: argparse.Namespace) -> int:
    from ..cdc.provenance import Provenance
    from .common import make_client

    with make_client(args) as fs:
        with Provenance(fs, sync=not getattr(args, "no_sync", False)) as p:
            return _dispatch(args, fs, p)


def _dispatch(args: argparse.Namespace, fs: Any, p: Any) -> int:
    act = args.prov_command
    fmt = getattr(args, "format", "table")
    out = sys.stdout
    if act == "sync":
        n = p.sync(rebuild=args.rebuild)
        while args.follow:  # until interrupted: the namenode applies what is new
            time.sleep(args.interval)
            n += p.sync()
        print(json.dumps({"applied": n, "position": p.status()["position"]}))
        return 0
    if act == "status":
        print(json.dumps(p.status(), indent=2))
        return 0
    if act == "show":
        info = p.show(args.path, as_of=args.as_of)
        out.write((json.dumps(info, indent=2, default=str) if fmt != "table"
                   else show_table(info)) + "\n")
        return 0
    if act == "runs":
        runs = p.runs(args.path, as_of=args.as_of, limit=args.limit)
        out.write((json.dumps(runs, indent=2, default=str) if fmt != "table"
                   else runs_table(runs)) + "\n")
        return 0
    kw: dict[str, Any] = dict(depth=args.depth, as_of=args.as_of, version=args.version)
    if act == "upstream":
        g = p.upstream(args.path, all_versions=args.all_versions, **kw)
    else:
        g = p.downstream(args.path, **kw)
    ns = _namespace(fs)
    if args.openlineage_file or args.openlineage_url:
        n = emit_openlineage(g, ns, file=args.openlineage_file, url=args.openlineage_url)
        to = " and ".join(x for x in (args.openlineage_file, args.openlineage_url) if x)
        print(f"sent {n} OpenLineage run events to {to}", file=sys.stderr)
    out.write(render_graph(g, fmt, ns, path=args.path) + "\n")
    return 0


def add_commands(sub: Any, common: Common) -> None:
    """Register ``run`` and ``prov`` with the ``metafs`` command."""
    sp = sub.add_parser("run", help="run a command as a provenance run",
                        description="Start a run, run COMMAND with METAFS_RUN_ID set, end "
                        "the run with its exit status: metafs run -- python train.py")
    common(sp)
    sp.add_argument("--name", help="run name (default: the program's name)")
    sp.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="a run parameter (VALUE is JSON or a string); repeatable")
    sp.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("prov", help="provenance: which runs read and wrote what")
    psub = sp.add_subparsers(dest="prov_command", required=True, metavar="ACTION")

    def q(name: str, help_: str, path: str = "required",
          formats: tuple[str, ...] = FORMATS) -> argparse.ArgumentParser:
        p = psub.add_parser(name, help=help_)
        common(p)
        if path == "required":
            p.add_argument("path")
        elif path == "optional":
            p.add_argument("path", nargs="?")
        p.add_argument("--as-of", dest="as_of",
                       help="changelog position (digits) or time (ISO-8601, UTC default)")
        if formats:
            p.add_argument("--format", choices=formats, default="table")
        p.add_argument("--no-sync", action="store_true",
                       help="answer from the graph as it is, without first applying the "
                       "changelog")
        p.set_defaults(func=cmd_prov)
        return p

    q("show", "an artifact's versions, writers and readers", formats=TABLE_FORMATS)
    for name, help_ in (("upstream", "what went into PATH (runs, data sets, ...)"),
                        ("downstream", "what PATH fed (runs, models, reports, ...)")):
        p = q(name, help_)
        p.add_argument("--depth", type=int, help="runs deep (default: all the way)")
        p.add_argument("--version", type=int, help="start from this version of PATH")
        if name == "upstream":
            p.add_argument("--all-versions", action="store_true",
                           help="start from every version (default: the latest)")
        p.add_argument("--openlineage-file", help="also append OpenLineage run events here")
        p.add_argument("--openlineage-url", help="also POST OpenLineage run events here")
    p = q("runs", "runs, or the runs that read or wrote PATH", "optional",
          formats=TABLE_FORMATS)
    p.add_argument("--limit", type=int, default=1000)
    p = q("sync", "have the namenode bring its provenance graph up to the changelog head",
          "none", formats=())
    p.add_argument("--follow", action="store_true", help="keep asking, every --interval")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between asks")
    p.add_argument("--rebuild", action="store_true",
                   help="drop the graph and replay the changelog (root only)")
    q("status", "graph position, lag and size", "none", formats=())
