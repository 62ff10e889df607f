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
import os
import select
import sys
from typing import Sequence

from ..errors import FsError
from . import (admin, auth, blocks, demo, files, inspect, mount, prov, project, search, serve,
               status, volume)
from .common import common, make_client, settings_from, setup_logging

__all__ = ["build_parser", "main", "make_client", "settings_from"]

#: the command groups, in the order ``metafs --help`` lists them
GROUPS = (serve, demo, files, inspect, status, volume, mount, search, prov, blocks, admin,
          auth, project)


def build_parser() -> argparse.ArgumentParser:
    from ..version import __version__

    p = argparse.ArgumentParser(prog="metafs", description="metafs: a POSIX-like file system "
                                "for machine-learning teams")
    p.add_argument("--version", action="version", version=f"metafs {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_commands(sub, common)
    return p


#: the extra that installs a module an optional part needs (pip install 'metafs[EXTRA]')
EXTRAS = {"mfusepy": "fuse", "boto3": "s3", "botocore": "s3", "psycopg": "postgres",
          "elasticsearch": "elasticsearch", "tantivy": "search", "fsspec": "fsspec",
          "cryptography": "ops", "watchdog": "ops", "openlineage": "provenance",
          "psutil": "provenance"}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``metafs`` command; the exit status follows the shell's conventions: 0 done
    (also when the reader of the output went away, as ``metafs ls | head``), 1 failed,
    2 bad usage, 130 interrupted (Ctrl-C)."""
    try:
        code = _run(build_parser(), argv)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's shutdown
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        if not _stdout_gone():
            raise
        # the reader of our output is gone: stop quietly, and keep Python's final flush
        # of the dead pipe from complaining
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    args = parser.parse_args(argv)
    if args.command != "serve":  # serve logs at its configured level
        setup_logging(getattr(args, "log_level", None) or "WARNING",
                      getattr(args, "log_format", "text"))
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        if _stdout_gone():
            raise
        return _fail(args, _errno_line(BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))))
    except ImportError as exc:
        top = (exc.name or "").split(".")[0]
        if top not in EXTRAS:
            raise
        return _fail(args, f"this needs the optional part '{EXTRAS[top]}' ({top} is not "
                     f"installed): pip install 'metafs[{EXTRAS[top]}]'")
    except FsError as exc:  # the library's own errors, raised by commands that work on the
        # database itself (quota, fsck) rather than through a client
        return _fail(args, _errno_line(exc.to_oserror()))
    except OSError as exc:
        return _fail(args, _errno_line(exc))
    except ValueError as exc:
        _fail(args, str(exc))
        return 2


def _errno_line(exc: OSError) -> str:
    """``message: PATH [ERRNONAME]``, as every command reports a failed system call."""
    name = errno.errorcode.get(exc.errno or 0, "")
    where = f": {exc.filename}" if exc.filename else ""
    return f"{exc.strerror or exc}{where}" + (f" [{name}]" if name else "")


def _fail(args: argparse.Namespace, message: str) -> int:
    print(f"metafs {args.command}: {message}", file=sys.stderr)
    return 1


def _stdout_gone() -> bool:
    """True when standard output is a pipe or socket whose reader has closed it."""
    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, 0)  # POLLERR and POLLHUP are always reported
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False
