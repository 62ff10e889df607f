"""``metafs info``, ``metafs summary`` and ``metafs warmup``: a volume seen from a client."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Iterator

from .common import Bar, Common, add_progress, make_client, want_progress


def add_commands(sub: Any, common: Common) -> None:
    sp = sub.add_parser("info", help="an entry in detail: inode, layout, blocks, version, "
                        "tags and lineage")
    common(sp)
    sp.add_argument("paths", nargs="+", metavar="PATH")
    sp.add_argument("--json", action="store_true", help="print JSON (one object per PATH)")
    sp.add_argument("--no-lineage", dest="lineage", action="store_false",
                    help="skip the provenance summary")
    sp.set_defaults(func=cmd_info)

    sp = sub.add_parser("summary", help="files and bytes under a directory, inline against "
                        "blocks, per subdirectory (like du)")
    common(sp)
    sp.add_argument("path", nargs="?", default="/", metavar="PATH")
    sp.add_argument("-d", "--depth", type=int, default=1,
                    help="list directories this many levels down (0: only the total)")
    sp.add_argument("--json", action="store_true")
    add_progress(sp)
    sp.set_defaults(func=cmd_summary)

    sp = sub.add_parser("warmup", help="fetch the blocks of files (directories: everything "
                        "under them) into the local block cache")
    common(sp)
    sp.add_argument("paths", nargs="+", metavar="PATH")
    sp.add_argument("--json", action="store_true")
    add_progress(sp)
    sp.set_defaults(func=cmd_warmup)


def cmd_info(args: argparse.Namespace) -> int:
    from ..ops.inspect import info

    with make_client(args) as fs:
        for path in args.paths:
            got = info(fs, path, lineage=args.lineage)
            print(json.dumps(got) if args.json else "\n".join(_info_lines(got)))
    return 0


def _info_lines(got: dict[str, Any]) -> Iterator[str]:
    yield f"{got['path']}:"
    for k in ("ino", "type", "mode", "size", "version", "storage", "block_size", "store",
              "target", "entries"):
        if k in got:
            yield f"  {k:>10}: {got[k]}"
    if "blocks" in got:
        yield f"  {'blocks':>10}: {len(got['blocks'])}"
        for b in got["blocks"]:
            yield f"    {b['index']:>6} {b['length']:>10} {b['key']}"
    for k, v in got["tags"].items():
        yield f"  {'tag':>10}: {k} = {json.dumps(v)}"
    lin = got.get("lineage")
    if lin:
        yield f"  {'lineage':>10}: {lin['kind']}, {lin['versions']} version(s)"
        for what in ("written_by", "read_by"):
            runs = ", ".join(f"{r['name']} (run {r['run']})" for r in lin[what])
            if runs:
                yield f"  {what.replace('_', ' '):>10}: {runs}"


def cmd_summary(args: argparse.Namespace) -> int:
    from ..ops.inspect import summary

    with make_client(args) as fs, Bar("summary", want_progress(args), unit="entries") as bar:
        res = summary(fs, args.path, depth=args.depth, progress=bar.update)
    if args.json:
        print(json.dumps(res.to_dict()))
        return 0
    print(f"{'files':>9} {'bytes':>14} {'inline':>9} {'in blocks':>14}  path")
    for u in [*res.children, res.total]:
        print(f"{u.files:>9} {u.bytes:>14} {u.inline_files:>9} {u.block_bytes:>14}  {u.path}")
    return 0


def cmd_warmup(args: argparse.Namespace) -> int:
    from ..ops.inspect import warmup

    with make_client(args) as fs, Bar("warmup", want_progress(args), unit="bytes") as bar:
        st = warmup(fs, args.paths, progress=bar.update)
    if args.json:
        print(json.dumps(st.to_dict()))
    elif not st.cache_dir and st.blocks:
        print(f"{st.files} file(s), {st.blocks} block(s): this client keeps no block cache "
              "(block_cache_dir), nothing warmed", file=sys.stderr)
    else:
        print(f"{st.files} file(s) ({st.inline_files} inline), {st.cached}/{st.blocks} "
              f"block(s) in the cache {st.cache_dir or '-'}")
    return 0 if st.cached == st.blocks or not st.cache_dir else 1
