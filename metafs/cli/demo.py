"""``metafs demo``: metafs working on a throwaway data directory."""

from __future__ import annotations

import argparse
from typing import Any

from .common import Common, settings_from


def add_commands(sub: Any, common: Common) -> None:
    sp = sub.add_parser("demo", help="show metafs working on a throwaway data directory")
    common(sp)
    sp.add_argument("--no-mount", action="store_true", help="skip the FUSE part")
    sp.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    return run_demo(settings_from(args), mount=not args.no_mount)
