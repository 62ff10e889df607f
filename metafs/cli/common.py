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
