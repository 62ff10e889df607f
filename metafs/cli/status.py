"""``metafs changelog``: change records as JSON lines (``metafs status`` is in volume.py)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .common import Common, make_client


def add_commands(sub: Any, common: Common) -> None:
    sp = sub.add_parser("changelog", help="print change records as JSON lines")
    common(sp)
    sp.add_argument("--after", type=int, default=0)
    sp.add_argument("--limit", type=int, default=1000)
    sp.add_argument("-f", "--follow", action="store_true")
    sp.set_defaults(func=cmd_changelog)


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
