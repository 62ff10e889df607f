"""``metafs status`` and ``metafs changelog``: the volume as a whole."""

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

    sp = sub.add_parser("status", help="namenode status")
    common(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_status)


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
