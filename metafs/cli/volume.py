"""``metafs dump``, ``metafs load``, ``metafs stats`` and ``metafs status``: the volume as a
whole (library code in metafs.ops.dump, .stats and .status)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .common import Common, progress_default as _progress, settings_from as _settings


def cmd_dump(args: argparse.Namespace) -> int:
    from ..namenode.engine import engine_for
    from ..ops.dump import dump, rich_progress

    s = _settings(args)
    eng = engine_for(s.effective_db_url, s)
    try:
        with rich_progress("dump", _progress(args) and args.out != "-") as progress:
            counts = dump(eng, args.out, progress=progress)
    finally:
        eng.dispose()
    if args.out != "-":
        print(json.dumps(counts), file=sys.stderr)
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from ..namenode.engine import engine_for
    from ..ops.dump import load, rich_progress

    s = _settings(args)
    eng = engine_for(s.effective_db_url, s)
    try:
        with rich_progress("load", _progress(args)) as progress:
            counts = load(eng, args.dump, progress=progress)
    finally:
        eng.dispose()
    print(json.dumps(counts))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from ..ops.stats import run

    target = args.target
    if not target:
        s = _settings(args)
        if not s.metrics_port:
            raise ValueError("give the metrics address (HOST:PORT or URL) of a namenode or "
                             "mount, or set metrics_port in the config")
        target = f"{s.metrics_listen}:{s.metrics_port}"
    return run(target, interval=args.interval, count=args.count, as_json=args.json)


def cmd_status(args: argparse.Namespace) -> int:
    from ..client import Client
    from ..ops.status import cluster_status, format_status

    st = cluster_status(_settings(args), lambda s: Client(settings=s))
    print(json.dumps(st, indent=2) if args.json else format_status(st))
    return 0 if st["ok"] else 1


def add_commands(sub: Any, common: Common) -> None:
    def db_args(p: argparse.ArgumentParser) -> None:
        common(p)
        p.add_argument("--db", dest="db_url", help="metadata database URL")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress display")

    sp = sub.add_parser("dump", help="write the whole namespace as portable JSON lines "
                        "(one consistent snapshot; loads into any engine)")
    db_args(sp)
    sp.add_argument("out", help="dump file to write (never overwritten; - for stdout)")
    sp.set_defaults(func=cmd_dump)

    sp = sub.add_parser("load", help="load a metafs dump into an empty metadata database "
                        "(serve it with the dumped volume's block store)")
    db_args(sp)
    sp.add_argument("dump", help="file written by metafs dump")
    sp.set_defaults(func=cmd_load)

    sp = sub.add_parser("stats", help="live per-operation rates and latencies of a "
                        "namenode or mount (from its metrics endpoint)")
    common(sp)
    sp.add_argument("target", nargs="?", help="HOST:PORT or URL of the metrics endpoint "
                    "(metafs serve/mount --metrics-port)")
    sp.add_argument("--interval", type=float, default=1.0, help="seconds between reports")
    sp.add_argument("--count", type=int, help="stop after this many reports")
    sp.add_argument("--json", action="store_true", help="one JSON object per report")
    sp.set_defaults(func=cmd_stats)

    sp = sub.add_parser("status", help="version, sessions, namenodes, consumer lag and "
                        "back-end health")
    common(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_status)
