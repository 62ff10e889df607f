"""``metafs changelog``: change records as JSON lines (``metafs status`` is in volume.py)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .common import Common, make_client


def add_commands(sub: Any, common: Common) -> None:
    sp = sub.add_parser("changelog", help="print change records as JSON lines")
    common(sp)
    sp.add_argument("--after", type=int, default=0, metavar="SEQ",
                    help="start after this change record")
    sp.add_argument("--limit", type=_positive, metavar="N", help="print at most N records")
    sp.add_argument("-f", "--follow", action="store_true",
                    help="keep printing new records as they come (until --limit)")
    sp.set_defaults(func=cmd_changelog)


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return n


PAGE = 1000  # change records asked for at a time


def cmd_changelog(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    left = args.limit
    with make_client(args) as fs:
        after = args.after
        while left is None or left > 0:
            page = PAGE if left is None else min(left, PAGE)
            recs, head = fs.changelog(after, page, wait_ms=1000 if args.follow else 0)
            for r in recs[:page]:
                print(json.dumps(MessageToDict(r)), flush=args.follow)
                after = r.seq
                if left is not None:
                    left -= 1
            if not args.follow and (not recs or after >= head):
                break
    return 0
