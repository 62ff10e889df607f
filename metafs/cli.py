"""The ``metafs`` command.

Every command that talks to a namenode takes ``--namenode HOST:PORT`` (remote) or
``--data DIR`` (an embedded namenode on that data directory), the same way; the address
can also come from the config file or METAFS_NAMENODE.
"""

from __future__ import annotations

import argparse
import errno
import gc
import json
import logging
import os
import signal
import stat
import sys
import threading
import time
from typing import Any, Callable, Sequence

from . import config as config_mod
from .config import Settings

log = logging.getLogger("metafs")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML config file (default: $METAFS_CONFIG or "
                   "the user config dir's metafs/config.toml)")
    p.add_argument("--log-level", dest="log_level", help="DEBUG, INFO, WARNING, ERROR")


def _add_conn(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("namenode")
    g.add_argument("--namenode", help="HOST:PORT of a namenode (several: comma-separated)")
    g.add_argument("--data", dest="data_dir", help="data directory of an embedded namenode")


def settings_from(args: argparse.Namespace, **extra: Any) -> Settings:
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
    from .client import Client

    return Client(settings=settings_from(args))


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# ---------------------------------------------------------------------- serve
def cmd_serve(args: argparse.Namespace) -> int:
    from .assembly import build_namenode, serve_grpc
    from .ops.cli import serve_overrides, start_serve_extras

    s = settings_from(args, **serve_overrides(args))
    _setup_logging(s.log_level)
    nn = build_namenode(s)
    server = serve_grpc(nn, s.listen)
    start_serve_extras(nn, s)  # Prometheus metrics endpoint, when configured
    # Everything loaded so far lives as long as the process: keep it out of the cyclic
    # collector's full scans, which otherwise revisit it on every request-heavy minute.
    gc.freeze()
    db = s.effective_db_url
    shown_db = db.split("@")[-1] if "@" in db else db
    log.info("metafs namenode started on %s (db %s, blocks %s, pid %d)", server.address,
             shown_db, s.effective_blocks_url, os.getpid())
    if args.ready_file:
        with open(args.ready_file, "w") as fh:
            fh.write(server.address)
    done = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not done.wait(1.0):
        pass
    server.stop(grace=5.0)
    nn.close()
    log.info("metafs namenode on %s stopped", server.address)
    return 0


# ---------------------------------------------------------------------- file commands
def _fmt_mode(mode: int) -> str:
    return stat.filemode(mode)


def cmd_ls(args: argparse.Namespace) -> int:
    with make_client(args) as fs:
        for path in args.paths or ["/"]:
            st = fs.lstat(path)
            entries = [(os.path.basename(path.rstrip("/")) or "/", st)] \
                if not stat.S_ISDIR(st.st_mode) else \
                [(e.name, e.stat(follow_symlinks=False)) for e in fs.scandir(path)]
            for name, st in entries:
                if args.long:
                    t = time.strftime("%Y-%m-%d %H:%M", time.localtime(st.st_mtime))
                    print(f"{_fmt_mode(st.st_mode)} {st.st_nlink:>3} {st.st_uid:>5} "
                          f"{st.st_gid:>5} {st.st_size:>10} {t} {name}")
                else:
                    print(name)
    return 0


def cmd_stat(args: argparse.Namespace) -> int:
    with make_client(args) as fs:
        for path in args.paths:
            st = fs.lstat(path)
            info = {"path": path, "ino": st.st_ino, "mode": _fmt_mode(st.st_mode),
                    "nlink": st.st_nlink, "uid": st.st_uid, "gid": st.st_gid,
                    "size": st.st_size, "atime_ns": st.st_atime_ns,
                    "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}
            print(json.dumps(info))
    return 0


def cmd_mkdir(args: argparse.Namespace) -> int:
    with make_client(args) as fs:
        for path in args.paths:
            if args.parents:
                fs.makedirs(path, exist_ok=True)
            else:
                fs.mkdir(path)
    return 0


def cmd_put(args: argparse.Namespace) -> int:
    with make_client(args) as fs:
        src = sys.stdin.buffer if args.src == "-" else open(args.src, "rb")
        with src, fs.open(args.dst, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
    return 0


def cmd_cat(args: argparse.Namespace) -> int:
    with make_client(args) as fs:
        for path in args.paths:
            with fs.open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    sys.stdout.buffer.write(chunk)
    sys.stdout.flush()
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    with make_client(args) as fs:
        for path in args.paths:
            if args.recursive and fs.isdir(path) and not fs.islink(path):
                fs.rmtree(path)
            else:
                fs.remove(path)
    return 0


def cmd_mv(args: argparse.Namespace) -> int:
    with make_client(args) as fs:
        fs.rename(args.src, args.dst, noreplace=args.no_clobber, exchange=args.exchange)
    return 0


def cmd_xattr(args: argparse.Namespace) -> int:
    with make_client(args) as fs:
        if args.action == "get":
            sys.stdout.buffer.write(fs.getxattr(args.path, args.name) + b"\n")
        elif args.action == "set":
            fs.setxattr(args.path, args.name, args.value.encode())
        elif args.action == "rm":
            fs.removexattr(args.path, args.name)
        else:
            for n in fs.listxattr(args.path):
                print(n)
    return 0


def cmd_changelog(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    with make_client(args) as fs:
        after = args.after
        while True:
            recs, head = fs.changelog(after, args.limit, wait_ms=1000 if args.follow else 0)
            for r in recs:
                print(json.dumps(MessageToDict(r)), flush=True)
                after = r.seq
            if not args.follow and (not recs or after >= head):
                return 0


def cmd_status(args: argparse.Namespace) -> int:
    with make_client(args) as fs:
        st = fs.statvfs()
        info = {"namenode": fs.settings.namenode or f"embedded:{fs.settings.data_dir}",
                "changelog_head": fs.changelog_head(), "inodes": st.used_inodes,
                "bytes": st.used_bytes, "inline_limit": fs.inline_limit,
                "block_size": fs.block_size}
        print(json.dumps(info, indent=2) if args.json else
              "\n".join(f"{k:>15}: {v}" for k, v in info.items()))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(settings_from(args), mount=not args.no_mount)


# ---------------------------------------------------------------------- parser
Registrar = Callable[[Any, Callable[[argparse.ArgumentParser], None]], None]


def _extension_registrars() -> list[Registrar]:
    """Commands contributed by optional parts (mount, search, provenance, gc, ...)."""
    out: list[Registrar] = []
    for modname, fn in (("metafs.fuse.cli", "add_commands"),
                        ("metafs.cdc.search.cli", "add_search_commands"),
                        ("metafs.cdc.provenance.cli", "add_commands"),
                        ("metafs.namenode.cli", "add_commands"),
                        ("metafs.ops.cli", "add_commands")):
        try:
            mod = __import__(modname, fromlist=[fn])
        except ImportError as exc:
            if exc.name and modname.startswith(exc.name):
                continue  # that part is not present
            raise
        reg = getattr(mod, fn, None)
        if reg is not None:
            out.append(reg)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metafs", description="metafs: a POSIX-like file system "
                                "for machine-learning teams")
    from . import __version__

    p.add_argument("--version", action="version", version=f"metafs {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp: argparse.ArgumentParser) -> None:
        _add_common(sp)
        _add_conn(sp)

    sp = sub.add_parser("serve", help="run a namenode")
    _add_common(sp)
    sp.add_argument("--data", dest="data_dir", help="data directory: SQLite file and "
                    "local block directory inside it (the embedded default)")
    sp.add_argument("--db", dest="db_url", help="sqlite:///PATH or postgresql://USER@HOST/DB")
    sp.add_argument("--blocks", dest="blocks_url", help="file:///PATH or s3://BUCKET/PREFIX")
    sp.add_argument("--listen", help="HOST:PORT to serve gRPC on")
    sp.add_argument("--ready-file", help="write the bound address here once serving")
    sp.add_argument("--index", dest="serve_index", action="store_const", const=True,
                    default=None, help="run the search indexer in this process and answer "
                    "searches of remote clients from it")
    sp.add_argument("--search-dir", dest="search_dir", help="the search index directory "
                    "(default: search/ in the data directory)")
    from .ops.cli import add_serve_flags

    add_serve_flags(sp)  # TLS, authentication, metrics
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("demo", help="show metafs working on a throwaway data directory")
    common(sp)
    sp.add_argument("--no-mount", action="store_true", help="skip the FUSE part")
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("ls", help="list directories")
    common(sp)
    sp.add_argument("-l", dest="long", action="store_true")
    sp.add_argument("paths", nargs="*")
    sp.set_defaults(func=cmd_ls)

    sp = sub.add_parser("stat", help="show attributes as JSON")
    common(sp)
    sp.add_argument("paths", nargs="+")
    sp.set_defaults(func=cmd_stat)

    sp = sub.add_parser("mkdir", help="make directories")
    common(sp)
    sp.add_argument("-p", dest="parents", action="store_true")
    sp.add_argument("paths", nargs="+")
    sp.set_defaults(func=cmd_mkdir)

    sp = sub.add_parser("put", help="copy a local file (or - for stdin) into metafs")
    common(sp)
    sp.add_argument("src")
    sp.add_argument("dst")
    sp.set_defaults(func=cmd_put)

    sp = sub.add_parser("cat", help="print files")
    common(sp)
    sp.add_argument("paths", nargs="+")
    sp.set_defaults(func=cmd_cat)

    sp = sub.add_parser("rm", help="remove files (-r: directories too)")
    common(sp)
    sp.add_argument("-r", dest="recursive", action="store_true")
    sp.add_argument("paths", nargs="+")
    sp.set_defaults(func=cmd_rm)

    sp = sub.add_parser("mv", help="rename atomically")
    common(sp)
    sp.add_argument("-n", "--no-clobber", action="store_true", help="RENAME_NOREPLACE")
    sp.add_argument("--exchange", action="store_true", help="RENAME_EXCHANGE")
    sp.add_argument("src")
    sp.add_argument("dst")
    sp.set_defaults(func=cmd_mv)

    sp = sub.add_parser("xattr", help="get, set, remove or list extended attributes")
    common(sp)
    sp.add_argument("action", choices=["get", "set", "rm", "list"])
    sp.add_argument("path")
    sp.add_argument("name", nargs="?", default="")
    sp.add_argument("value", nargs="?", default="")
    sp.set_defaults(func=cmd_xattr)

    sp = sub.add_parser("changelog", help="print change records as JSON lines")
    common(sp)
    sp.add_argument("--after", type=int, default=0)
    sp.add_argument("--limit", type=int, default=1000)
    sp.add_argument("-f", "--follow", action="store_true")
    sp.set_defaults(func=cmd_changelog)

    sp = sub.add_parser("status", help="namenode status")
    common(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_status)

    for reg in _extension_registrars():
        reg(sub, common)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "serve":
        _setup_logging(getattr(args, "log_level", None) or "WARNING")
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


if __name__ == "__main__":
    sys.exit(main())
