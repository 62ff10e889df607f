"""``metafs gc``: the namenode's garbage collection of the block store (on the metadata
database directly, without a namenode process)."""

from __future__ import annotations

import argparse
from typing import Any

from .common import Bar, Common, add_common, add_progress, want_progress


def add_commands(sub: Any, common: Common) -> None:
    sp = sub.add_parser("gc", help="remove blocks no file references (after a grace period)",
                        description="Remove blocks no file references (overwritten, deleted, "
                        "or uploaded by a client that died before committing) once they are "
                        "older than the grace period. Runs on the metadata database directly.")
    _add_common_without_namenode(sp)
    sp.add_argument("--db", dest="db_url", help="metadata database URL")
    sp.add_argument("--blocks", dest="blocks_url", help="block store URL")
    sp.add_argument("--grace", type=float, help="seconds to keep unreferenced blocks "
                    "(default: the gc_grace setting)")
    sp.add_argument("--dry-run", action="store_true", help="report, remove nothing")
    sp.add_argument("--no-scan", action="store_true",
                    help="only the garbage list; do not list the store for orphans")
    sp.add_argument("--json", action="store_true", help="print the result as JSON")
    add_progress(sp)
    sp.set_defaults(func=_run)


def _add_common_without_namenode(sp: argparse.ArgumentParser) -> None:
    add_common(sp)
    sp.add_argument("--data", dest="data_dir", help="data directory of an embedded file system")


def _run(args: argparse.Namespace) -> int:
    from ..namenode.gc import gc_main

    argv: list[str] = []
    for flag, key in (("--config", "config"), ("--data-dir", "data_dir"), ("--db", "db_url"),
                      ("--blocks", "blocks_url"), ("--grace", "grace")):
        value = getattr(args, key, None)
        if value is not None:
            argv += [flag, str(value)]
    argv += [f for f, on in (("--dry-run", args.dry_run), ("--no-scan", args.no_scan),
                             ("--json", args.json)) if on]
    with Bar("gc", want_progress(args), counts=False):
        return gc_main(argv)
