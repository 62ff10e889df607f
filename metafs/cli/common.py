"""What every ``metafs`` command shares: connection and logging options, the settings and
client they make, and progress output.

Command modules import this module and library code; nothing in the library imports the
CLI.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any, Callable

from .. import config as config_mod
from ..config import Settings

log = logging.getLogger("metafs")

#: how a command module adds its commands: ``add_commands(subparsers, common)``, where
#: ``common(parser)`` adds the options every namenode-connected command takes
Common = Callable[[argparse.ArgumentParser], None]


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")


def add_logging(p: argparse.ArgumentParser) -> None:
    """``--log-level`` and ``--log-format``."""
    p.add_argument("--log-level", dest="log_level", type=str.upper, choices=LOG_LEVELS,
                   metavar="LEVEL", help="DEBUG, INFO, WARNING, ERROR or CRITICAL")
    p.add_argument("--log-format", dest="log_format", choices=LOG_FORMATS, default="text",
                   help="text (default) or json: one JSON object per line")


def add_common(p: argparse.ArgumentParser) -> None:
    """``--config``, ``--log-level`` and ``--log-format``: every command has them."""
    p.add_argument("--config", help="TOML config file (default: $METAFS_CONFIG or "
                   "the user config dir's metafs/config.toml)")
    add_logging(p)


def add_conn(p: argparse.ArgumentParser) -> None:
    """``--namenode`` / ``--data``: where the namenode is."""
    g = p.add_argument_group("namenode")
    g.add_argument("--namenode", help="HOST:PORT of a namenode (several: comma-separated)")
    g.add_argument("--data", dest="data_dir", help="data directory of an embedded namenode")


def common(p: argparse.ArgumentParser) -> None:
    """The options of a command that talks to a namenode."""
    add_common(p)
    add_conn(p)


def settings_from(args: argparse.Namespace, **extra: Any) -> Settings:
    """The settings a command runs with: config file, environment, then its flags."""
    overrides = {}
    for key in ("data_dir", "namenode", "log_level", "db_url", "blocks_url", "listen",
                "inline_limit", "block_size", "serve_index", "search_dir"):
        if getattr(args, key, None) is not None:
            overrides[key] = getattr(args, key)
    overrides.update({k: v for k, v in extra.items() if v is not None})
    s = config_mod.load(getattr(args, "config", None), overrides)
    if getattr(args, "data_dir", None):
        # --data means: embedded, even if a namenode address is configured
        s = s.with_(namenode="")
    return s


def make_client(args: argparse.Namespace) -> Any:
    """A :class:`metafs.client.Client` for the command's settings."""
    from ..client import Client

    return Client(settings=settings_from(args))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO-8601), level, logger, message, and the
    exception when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        t = time.gmtime(record.created)
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name,
            "message": record.getMessage(), "pid": record.process,
            "thread": record.threadName}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str, fmt: str = "text") -> None:
    """Log to stderr at ``level``, as text lines or (``fmt="json"``) JSON lines."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        handlers=[handler], force=True)


def progress_default(args: argparse.Namespace) -> bool:
    """Show progress bars: on a terminal, unless ``--quiet``."""
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def add_progress(p: argparse.ArgumentParser) -> None:
    """``-q/--quiet`` and ``--progress`` of a command that may work for a while."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    g.add_argument("--progress", action="store_true", help="show progress on stderr even "
                   "when it is not a terminal (default: only on a terminal)")


def want_progress(args: argparse.Namespace) -> bool:
    """Progress on stderr: asked for, or stderr is a terminal and not ``--quiet``."""
    return bool(getattr(args, "progress", False)) or progress_default(args)


class Bar:
    """A rich progress display on stderr (nothing when ``enabled`` is false), fed by the
    ``progress(done, total)`` callbacks of library functions; with ``counts=False`` a
    spinner and the time spent, for work that reports no progress of its own."""

    def __init__(self, what: str, enabled: bool, unit: str = "", counts: bool = True
                 ) -> None:
        self.what, self.enabled, self.unit, self.counts = what, enabled, unit, counts
        self._p: Any = None
        self._task: Any = None

    def __enter__(self) -> "Bar":
        if self.enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress,
                                       SpinnerColumn, TextColumn, TimeElapsedColumn)

            columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}")]
            if self.counts:
                columns += [BarColumn(), MofNCompleteColumn(), TextColumn(self.unit)]
            # (what the command prints goes to stdout as it is, never into the display)
            self._p = Progress(*columns, TimeElapsedColumn(), console=Console(stderr=True),
                               transient=True, redirect_stdout=False, redirect_stderr=False)
            self._p.start()
            self._task = self._p.add_task(self.what, total=None)
        return self

    def update(self, done: int, total: int | None = None) -> None:
        if self._p is not None:
            self._p.update(self._task, completed=done, total=total)

    def __exit__(self, *exc: Any) -> None:
        if self._p is not None:
            self._p.stop()
