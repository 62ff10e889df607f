"""File commands: ls, stat, mkdir, put, cat, rm, mv, xattr, and bulk cp and sync."""

from __future__ import annotations

import argparse
import errno
import json
import os
import stat
import sys
import time
from typing import Any

from .common import Common, make_client, progress_default


def add_commands(sub: Any, common: Common) -> None:
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

    sp = sub.add_parser("sync", help="copy a local folder into metafs (--watch: keep it in "
                        "sync)")
    common(sp)
    sp.add_argument("local")
    sp.add_argument("remote")
    sp.add_argument("--watch", action="store_true", help="follow changes with watchdog")
    sp.add_argument("--delete", action="store_true",
                    help="remove metafs entries that are not in the local folder")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_sync)

    sp = sub.add_parser("cp", help="bulk copy into (mfs:/DST) or out of (mfs:/SRC) metafs")
    common(sp)
    sp.add_argument("-r", "--recursive", action="store_true")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    sp.add_argument("paths", nargs="+", metavar="SRC... DST")
    sp.set_defaults(func=cmd_cp)


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
                    print(f"{stat.filemode(st.st_mode)} {st.st_nlink:>3} {st.st_uid:>5} "
                          f"{st.st_gid:>5} {st.st_size:>10} {t} {name}")
                else:
                    print(name)
    return 0


def cmd_stat(args: argparse.Namespace) -> int:
    with make_client(args) as fs:
        for path in args.paths:
            st = fs.lstat(path)
            info = {"path": path, "ino": st.st_ino, "mode": stat.filemode(st.st_mode),
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


def cmd_sync(args: argparse.Namespace) -> int:
    from ..ops.sync import sync_and_watch, sync_tree

    with make_client(args) as fs:
        if not args.watch:
            st = sync_tree(fs, args.local, args.remote, delete=args.delete,
                           progress=progress_default(args))
            print(json.dumps(st.to_dict()))
            return 0
        # the watcher starts before the first copy, so changes made during it are kept
        st, w = sync_and_watch(fs, args.local, args.remote, delete=args.delete,
                               progress=progress_default(args))
        print(json.dumps(st.to_dict()))
        print(f"watching {args.local} (Ctrl-C to stop)", file=sys.stderr)
        try:
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass
        finally:
            w.stop()
        print(json.dumps(w.stats.to_dict()))
    return 0


def _remote(p: str) -> str | None:
    for prefix in ("metafs://", "mfs:"):
        if p.startswith(prefix):
            rest = p[len(prefix):]
            return "/" + rest.lstrip("/")
    return None


def _omitting(path: str) -> None:
    raise IsADirectoryError(errno.EISDIR, "-r not specified; omitting directory", path)


def cmd_cp(args: argparse.Namespace) -> int:
    from ..ops.sync import copy_in, copy_out

    srcs, dst = args.paths[:-1], args.paths[-1]
    if not srcs:
        raise ValueError("cp needs a source and a destination")
    remote_srcs = [_remote(s) for s in srcs]
    remote_dst = _remote(dst)
    if remote_dst is not None and all(r is None for r in remote_srcs):
        if not args.recursive:  # refused before anything changes, as cp(1) does
            for s in srcs:
                if os.path.isdir(s):
                    _omitting(s)
        with make_client(args) as fs:
            st = copy_in(fs, srcs, remote_dst, recursive=args.recursive,
                         progress=progress_default(args))
    elif remote_dst is None and all(r is not None for r in remote_srcs):
        with make_client(args) as fs:
            if not args.recursive:
                for r in remote_srcs:
                    if r and fs.isdir(r):
                        _omitting(r)
            st = copy_out(fs, [r for r in remote_srcs if r], dst, recursive=args.recursive,
                          progress=progress_default(args))
    else:
        raise ValueError("cp copies local paths into metafs or metafs paths out; write "
                         "metafs paths as mfs:/PATH")
    if not args.quiet:
        print(json.dumps(st.to_dict()))
    return 0
