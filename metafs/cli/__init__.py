"""The ``metafs`` command.

Every command that talks to a namenode takes ``--namenode HOST:PORT`` (remote) or
``--data DIR`` (an embedded namenode on that data directory), the same way; the address
can also come from the config file or METAFS_NAMENODE.

One module per command group, each with ``add_commands(subparsers, common)``; the modules
import library code (client, namenode, cdc, ops) lazily inside their commands, so a
missing optional part only matters to the commands that need it.
"""

from __future__ import annotations

import argparse
import errno
import sys
from typing import Sequence

from . import (admin, auth, blocks, demo, files, mount, prov, search, serve, status,
               volume)
from .common import common, make_client, settings_from, setup_logging

__all__ = ["build_parser", "main", "make_client", "settings_from"]

#: the command groups, in the order ``metafs --help`` lists them
GROUPS = (serve, demo, files, status, volume, mount, search, prov, blocks, admin, auth)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    p = argparse.ArgumentParser(prog="metafs", description="metafs: a POSIX-like file system "
                                "for machine-learning teams")
    p.add_argument("--version", action="version", version=f"metafs {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_commands(sub, common)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "serve":
        setup_logging(getattr(args, "log_level", None) or "WARNING")
    try:
        return int(args.func(args) or 0)
    except OSError as exc:
        name = errno.errorcode.get(exc.errno or 0, "")
        where = f": {exc.filename}" if exc.filename else ""
        print(f"metafs {args.command}: {exc.strerror or exc}{where} [{name}]", file=sys.stderr)
        return 1
    except (ValueError, KeyboardInterrupt) as exc:
        print(f"metafs {args.command}: {exc}", file=sys.stderr)
        return 2
