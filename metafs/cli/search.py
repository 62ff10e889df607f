"""``metafs search`` and ``metafs indexer``.

``metafs search QUERY`` answers from the index that follows the namenode the command is
connected to (``--data DIR`` embedded, or ``--namenode HOST:PORT`` with the index directory
of the ``metafs indexer`` serving it). ``metafs indexer`` follows a namenode's changelog
into the index until stopped (SIGINT/SIGTERM), reporting its position and lag.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from typing import Any

from .common import Bar, Common, add_progress, make_client, want_progress


def _index_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", dest="index_dir", help="index directory (default: search/ in "
                   "the data directory, or the search_dir setting; with --namenode, "
                   "`search --index DIR` reads DIR itself instead of asking the namenode)")
    p.add_argument("--backend", choices=("embedded", "elasticsearch"),
                   help="search back end (default: the search_backend setting)")
    p.add_argument("--es-url", help="Elasticsearch URL (elasticsearch back end)")


def _configure(client: Any, args: argparse.Namespace) -> None:
    changes = {}
    if getattr(args, "index_dir", None):
        changes["search_dir"] = args.index_dir
    if getattr(args, "backend", None):
        changes["search_backend"] = args.backend
    if getattr(args, "es_url", None):
        changes["es_url"] = args.es_url
    if changes:
        client.settings = client.settings.with_(**changes)


def add_commands(subparsers: Any, common: Common) -> None:
    """Add ``search`` and ``indexer`` to a ``metafs`` argument parser."""
    sp = subparsers.add_parser("search", help="find files by name, attributes and tags",
                               description="Search files and their JSON tags, e.g. "
                               "'bicycles>3 ext:jpg under:/datasets/coco \"red car\"'.")
    common(sp)
    sp.add_argument("query", help="the query (see docs/search.md)")
    sp.add_argument("--json", action="store_true", help="print the full result as JSON")
    sp.add_argument("--limit", type=int, default=100, help="results per page (default 100)")
    sp.add_argument("--offset", type=int, default=0, help="skip this many results (paging)")
    sp.add_argument("--page", type=int, help="page number from 1 (offset = (page-1)*limit)")
    sp.add_argument("--sort", help="comma-separated fields, - for descending: -size,name")
    sp.add_argument("--count", action="store_true", help="also count all matches")
    sp.add_argument("--wait", action="store_true",
                    help="first wait until the index reflects every change made so far")
    _index_args(sp)
    sp.set_defaults(func=cmd_search)

    sp = subparsers.add_parser("indexer", help="keep the search index following a namenode")
    common(sp)
    _index_args(sp)
    sp.add_argument("--once", action="store_true", help="catch up with the changelog and exit")
    sp.add_argument("--rebuild", action="store_true",
                    help="drop the index and replay the whole changelog first")
    sp.add_argument("--status", action="store_true", help="print position and lag, and exit")
    sp.add_argument("--report", type=float, default=30.0,
                    help="seconds between progress lines (0: none)")
    add_progress(sp)
    sp.set_defaults(func=cmd_indexer)


def cmd_search(args: argparse.Namespace) -> int:
    from ..cdc.search.api import search
    from ..cdc.search.query import QueryError

    offset = args.offset
    if args.page is not None:
        if args.page < 1:
            print("metafs search: --page counts from 1", file=sys.stderr)
            return 2
        offset = (args.page - 1) * args.limit
    client = make_client(args)
    try:
        _configure(client, args)
        try:
            res = search(client, args.query, limit=args.limit, offset=offset, sort=args.sort,
                         wait=args.wait, count=args.count, local=bool(args.index_dir))
        except QueryError as exc:
            print(f"metafs search: bad query: {exc}", file=sys.stderr)
            return 2
        if args.json:
            print(res.to_json())
        else:
            for h in res.hits:
                tags = " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(h["tags"].items()))
                print(f"{h['path']}\t{h['type']}\t{h['size']}" + (f"\t{tags}" if tags else ""))
            if res.total is not None:
                print(f"-- {res.total} match(es)", file=sys.stderr)
        return 0
    finally:
        client.close()


def cmd_indexer(args: argparse.Namespace) -> int:
    from ..cdc.search.api import Indexer, open_index
    from ..cdc.source import source_for

    client = make_client(args)
    _configure(client, args)
    s = client.settings
    ix = Indexer(source_for(client), open_index(s), batch=s.search_batch)
    try:
        if args.status:
            print(json.dumps(ix.status().to_dict()))
            return 0
        if args.rebuild:
            with Bar("indexer: rebuilding the index", want_progress(args), counts=False):
                n = ix.rebuild()
            print(f"rebuilt: replayed {n} change records", file=sys.stderr)
        if args.once:
            ix.catch_up()
            print(json.dumps(ix.status().to_dict()))
            return 0
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        ix.start()
        print(json.dumps({"indexer": "started", **ix.status().to_dict()}), flush=True)
        last = time.monotonic()
        while not stop.wait(0.5):
            if args.report and time.monotonic() - last >= args.report:
                last = time.monotonic()
                print(json.dumps(ix.status().to_dict()), flush=True)
        return 0
    finally:
        ix.close()
        client.close()

