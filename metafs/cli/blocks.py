"""``metafs gc``: the namenode's garbage collection of the block store (on the metadata
database directly, without a namenode process)."""

from __future__ import annotations

import argparse
from typing import Any

from ..namenode.gc import add_gc_arguments, run_gc
from .common import Bar, Common, add_common, add_progress, want_progress


def add_commands(sub: Any, common: Common) -> None:
    sp = sub.add_parser("gc", help="remove blocks no file references (after a grace period)",
                        description="Remove blocks no file references (overwritten, deleted, "
                        "or uploaded by a client that died before committing) once they are "
                        "older than the grace period. Runs on the metadata database directly.")
    add_common(sp)
    sp.add_argument("--data", dest="data_dir", help="data directory of an embedded file system")
    add_gc_arguments(sp)
    add_progress(sp)
    sp.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    with Bar("gc", want_progress(args), counts=False):
        return run_gc(args)
