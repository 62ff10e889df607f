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
from typing import Any, Callable

from .query import QueryError

MakeClient = Callable[[argparse.Namespace], Any]


def _default_make_client(args: argparse.Namespace) -> Any:
    from ...cli import make_client

    return make_client(args)


def _add_conn(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("namenode")
    g.add_argument("--namenode", help="HOST:PORT of a namenode")
    g.add_argument("--data", dest="data_dir", help="data directory of an embedded namenode")


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


def add_search_commands(subparsers: Any, common: Callable[[argparse.ArgumentParser], None]
                        | None = None, make_client: MakeClient | None = None) -> None:
    """Add ``search`` and ``indexer`` to a ``metafs`` argument parser."""
    mk = make_client or _default_make_client

    sp = subparsers.add_parser("search", help="find files by name, attributes and tags",
                               description="Search files and their JSON tags, e.g. "
                               "'bicycles>3 ext:jpg under:/datasets/coco \"red car\"'.")
    (common or _add_conn)(sp)
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
    sp.set_defaults(func=lambda a: cmd_search(a, mk))

    sp = subparsers.add_parser("indexer", help="keep the search index following a namenode")
    (common or _add_conn)(sp)
    _index_args(sp)
    sp.add_argument("--once", action="store_true", help="catch up with the changelog and exit")
    sp.add_argument("--rebuild", action="store_true",
                    help="drop the index and replay the whole changelog first")
    sp.add_argument("--status", action="store_true", help="print position and lag, and exit")
    sp.add_argument("--report", type=float, default=30.0,
                    help="seconds between progress lines (0: none)")
    sp.set_defaults(func=lambda a: cmd_indexer(a, mk))


def cmd_search(args: argparse.Namespace, make_client: MakeClient) -> int:
    from .api import search

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
        except OSError as exc:  # no index, a wait that timed out, a namenode away
            print(f"metafs search: {exc}", file=sys.stderr)
            return 1
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


def cmd_indexer(args: argparse.Namespace, make_client: MakeClient) -> int:
    from ..source import source_for
    from .api import Indexer, open_index

    client = make_client(args)
    _configure(client, args)
    s = client.settings
    ix = Indexer(source_for(client), open_index(s), batch=s.search_batch)
    try:
        if args.status:
            print(json.dumps(ix.status().to_dict()))
            return 0
        if args.rebuild:
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


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m metafs.cdc.search.cli indexer --data DIR``)."""
    p = argparse.ArgumentParser(prog="metafs")
    sub = p.add_subparsers(dest="command", required=True)
    add_search_commands(sub)
    args = p.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
