"""Administrator's commands: fsck, backup, restore, quota.

fsck, backup, restore and quota work on the metadata database itself (``--db URL``,
``--data DIR`` or the config file's ``db_url``), as an administrator's tools, not through
a namenode.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..config import Settings
from .common import Bar, Common, add_progress, settings_from, want_progress


# ---------------------------------------------------------------------- helpers
def _settings(args: argparse.Namespace) -> Settings:
    return settings_from(args)


def _admin_namenode(args: argparse.Namespace) -> Any:
    """A namenode object on the database itself (no server, no background work)."""
    from ..namenode.server import Namenode

    s = _settings(args)
    s.existing_db_url()  # an administrator's tool never creates a file system
    return Namenode(s, background=False)


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().rstrip("ib").rstrip("b") if text[-1:].lower() == "b" else \
        text.strip().lower()
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


# ---------------------------------------------------------------------- fsck, backup
def cmd_fsck(args: argparse.Namespace) -> int:
    from ..ops.fsck import fsck

    nn = _admin_namenode(args)
    try:
        store = None
        if args.check_blocks:
            from ..blockstore import open_store

            store = open_store(nn.settings.effective_blocks_url, nn.settings)
        with Bar("fsck", want_progress(args), counts=False):
            rep = fsck(nn.engine, repair=args.repair, store=store)
    finally:
        nn.close()
    if args.json:
        print(json.dumps(rep.to_dict(), indent=2))
    else:
        for f in rep.findings:
            mark = "repaired" if f.repaired else "FOUND"
            print(f"{mark:>8} {f.kind:<22} {f.message}")
        print(f"{len(rep.findings)} problem(s); " + ", ".join(f"{k} {v}" for k, v in
                                                            rep.stats.items()))
    if not rep.findings:
        return 0
    return 0 if rep.clean else 1


def cmd_backup(args: argparse.Namespace) -> int:
    from ..ops.backup import backup

    s = _settings(args)
    try:
        with Bar("backup", want_progress(args), unit="pages") as bar:
            out = backup(s.effective_db_url, args.out, progress=bar.update)
    except RuntimeError as exc:
        print(f"metafs backup: {exc}", file=sys.stderr)
        return 1
    print(f"backup of {s.effective_db_url.split('@')[-1]} written to {out}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from ..ops.backup import restore

    s = _settings(args)
    try:
        restore(args.backup, s.effective_db_url, force=args.force)
    except RuntimeError as exc:
        print(f"metafs restore: {exc}", file=sys.stderr)
        return 1
    print(f"restored {args.backup} into {s.effective_db_url.split('@')[-1]}; run metafs fsck")
    return 0


# ---------------------------------------------------------------------- quota
def cmd_quota(args: argparse.Namespace) -> int:
    from ..posix import ROOT

    nn = _admin_namenode(args)
    try:
        q = nn.ns.quotas
        if args.action in ("set", "clear"):
            if not args.path:
                raise ValueError(f"quota {args.action} needs a PATH")
            ino = nn.ns.resolve(ROOT, args.path).ino
            if args.action == "set":
                q.set(ino, args.files or 0, _size(args.bytes) if args.bytes else 0)
            else:
                q.clear(ino)
        paths = {}
        rows = q.list()
        for u in rows:
            paths[u.ino] = _path_of(nn, u.ino)
        out = [dict(path=paths[u.ino], **u.to_dict()) for u in rows]
        if args.json:
            print(json.dumps(out, indent=2))
        else:
            for r in out:
                print(f"{r['path']}: files {r['files']}/{r['max_files'] or '-'}, "
                      f"bytes {r['bytes']}/{r['max_bytes'] or '-'}")
    finally:
        nn.close()
    return 0


def _path_of(nn: Any, ino: int) -> str:
    from sqlalchemy import select

    from ..namenode import schema

    D = schema.dentries

    def fn(conn: Any) -> str:
        parts = []
        cur = ino
        for _ in range(4096):
            if cur == schema.ROOT_INO:
                break
            row = conn.execute(select(D.c.parent, D.c.name).where(D.c.ino == cur).limit(1)).first()
            if row is None:
                return f"<inode {ino}>"
            parts.append(row.name)
            cur = row.parent
        return "/" + "/".join(reversed(parts))

    return nn.engine.read(fn)


def add_commands(sub: Any, common: Common) -> None:
    def db_args(p: argparse.ArgumentParser) -> None:
        common(p)
        p.add_argument("--db", dest="db_url", help="metadata database URL")

    sp = sub.add_parser("fsck", help="check the namespace invariants on the database")
    db_args(sp)
    sp.add_argument("--repair", action="store_true", help="fix what can be fixed")
    sp.add_argument("--check-blocks", action="store_true",
                    help="also check that every referenced block is in the block store")
    sp.add_argument("--blocks", dest="blocks_url", help="block store URL (--check-blocks)")
    sp.add_argument("--json", action="store_true")
    add_progress(sp)
    sp.set_defaults(func=cmd_fsck)

    sp = sub.add_parser("backup", help="consistent backup of the metadata database")
    db_args(sp)
    sp.add_argument("out", help="backup file to write")
    add_progress(sp)
    sp.set_defaults(func=cmd_backup)

    sp = sub.add_parser("restore", help="restore a metadata backup (namenodes stopped)")
    db_args(sp)
    sp.add_argument("backup", help="backup file made by metafs backup")
    sp.add_argument("--force", action="store_true", help="replace an existing SQLite file")
    sp.set_defaults(func=cmd_restore)

    sp = sub.add_parser("quota", help="directory quotas (files and bytes)")
    db_args(sp)
    sp.add_argument("action", choices=("list", "set", "clear"))
    sp.add_argument("path", nargs="?")
    sp.add_argument("--files", type=int, help="most entries under the directory (0: any)")
    sp.add_argument("--bytes", help="most bytes under the directory: 10G, 500M, ... (0: any)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_quota)
