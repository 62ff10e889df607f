"""``metafs`` commands for running a cluster: certs, token, sync, cp, fsck, backup,
restore, quota; and the TLS, authentication and metrics flags of ``metafs serve``.

fsck, backup, restore and quota work on the metadata database itself (``--db URL``,
``--data DIR`` or the config file's ``db_url``), as an administrator's tools, not through
a namenode.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from typing import Any, Callable

from ..config import Settings


# ---------------------------------------------------------------------- serve flags
def add_serve_flags(sp: argparse.ArgumentParser) -> None:
    g = sp.add_argument_group("security")
    g.add_argument("--tls-cert", help="PEM certificate to serve TLS with")
    g.add_argument("--tls-key", help="PEM key of --tls-cert")
    g.add_argument("--tls-ca", help="PEM CA that signs client certificates (mutual TLS)")
    g.add_argument("--tls-client-auth", action="store_const", const=True, default=None,
                   help="require client certificates signed by --tls-ca (mutual TLS)")
    g.add_argument("--auth-mode", choices=("none", "token", "cert", "any"),
                   help="how callers prove who they are (default none: claims are trusted)")
    g.add_argument("--auth-file", help="TOML identity table: tokens and certificate names "
                   "mapped to uid, gid and groups")
    g = sp.add_argument_group("operations")
    g.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    g.add_argument("--metrics-listen", help="address for the metrics endpoint")


def serve_overrides(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("tls_cert", "tls_key", "tls_ca", "tls_client_auth", "auth_mode", "auth_file",
            "metrics_port", "metrics_listen")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def start_serve_extras(nn: Any, s: Settings) -> Any:
    """Start the metrics endpoint of `metafs serve` when ``metrics_port`` is set."""
    if not s.metrics_port:
        return None
    import logging

    from .metrics import serve_metrics

    srv = serve_metrics(s.metrics_port, s.metrics_listen)
    logging.getLogger("metafs").info("metrics on http://%s:%d/metrics", s.metrics_listen,
                                     srv.server_port)
    return srv


# ---------------------------------------------------------------------- helpers
def _settings(args: argparse.Namespace) -> Settings:
    from ..cli import settings_from

    return settings_from(args)


def _admin_namenode(args: argparse.Namespace) -> Any:
    """A namenode object on the database itself (no server, no background work)."""
    from ..namenode.server import Namenode

    return Namenode(_settings(args), background=False)


def _progress_default(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().rstrip("ib").rstrip("b") if text[-1:].lower() == "b" else \
        text.strip().lower()
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


# ---------------------------------------------------------------------- certs & tokens
def cmd_certs(args: argparse.Namespace) -> int:
    from . import certs

    written = certs.init_cluster(args.dir, hosts=args.host or [], clients=args.client or [],
                                 days=args.days)
    for what, path in written.items():
        print(f"{what:>16}: {path}")
    if args.auth_file:
        from .auth import add_cert_identity

        for spec in args.client or []:
            ids = args.map.get(spec) if args.map else None
            uid, gid = ids if ids else (args.uid, args.gid)
            add_cert_identity(args.auth_file, spec, uid, gid, args.groups or [])
        print(f"{'identities':>16}: {args.auth_file}")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from .auth import add_token

    token = args.token or secrets.token_urlsafe(32)
    add_token(args.auth_file, args.name, args.uid, args.gid if args.gid is not None else args.uid,
              args.groups or [], token, trusted=args.trusted)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(token + "\n")
        os.chmod(args.out, 0o600)
        print(f"token for {args.name} written to {args.out}")
    else:
        print(token)
    return 0


# ---------------------------------------------------------------------- sync & cp
def cmd_sync(args: argparse.Namespace) -> int:
    from ..cli import make_client
    from .sync import sync_and_watch, sync_tree

    with make_client(args) as fs:
        if not args.watch:
            st = sync_tree(fs, args.local, args.remote, delete=args.delete,
                           progress=_progress_default(args))
            print(json.dumps(st.to_dict()))
            return 0
        # the watcher starts before the first copy, so changes made during it are kept
        st, w = sync_and_watch(fs, args.local, args.remote, delete=args.delete,
                               progress=_progress_default(args))
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


def cmd_cp(args: argparse.Namespace) -> int:
    from ..cli import make_client
    from .sync import copy_in, copy_out

    srcs, dst = args.paths[:-1], args.paths[-1]
    if not srcs:
        raise ValueError("cp needs a source and a destination")
    remote_srcs = [_remote(s) for s in srcs]
    remote_dst = _remote(dst)
    if remote_dst is not None and all(r is None for r in remote_srcs):
        with make_client(args) as fs:
            st = copy_in(fs, srcs, remote_dst, recursive=args.recursive,
                         progress=_progress_default(args))
    elif remote_dst is None and all(r is not None for r in remote_srcs):
        with make_client(args) as fs:
            st = copy_out(fs, [r for r in remote_srcs if r], dst, recursive=args.recursive,
                          progress=_progress_default(args))
    else:
        raise ValueError("cp copies local paths into metafs or metafs paths out; write "
                         "metafs paths as mfs:/PATH")
    if not args.quiet:
        print(json.dumps(st.to_dict()))
    return 0


# ---------------------------------------------------------------------- fsck, backup
def cmd_fsck(args: argparse.Namespace) -> int:
    from .fsck import fsck

    nn = _admin_namenode(args)
    try:
        store = None
        if args.check_blocks:
            from ..blockstore import open_store

            store = open_store(nn.settings.effective_blocks_url, nn.settings)
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
    from .backup import backup

    s = _settings(args)
    try:
        out = backup(s.effective_db_url, args.out)
    except RuntimeError as exc:
        print(f"metafs backup: {exc}", file=sys.stderr)
        return 1
    print(f"backup of {s.effective_db_url.split('@')[-1]} written to {out}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from .backup import restore

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
    from ..namenode.perms import ROOT

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


# ---------------------------------------------------------------------- registration
def _ids(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def add_commands(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    sp = sub.add_parser("certs", help="make a CA, a namenode certificate and client "
                        "certificates for a test cluster")
    sp.add_argument("dir", help="output directory (an existing ca.pem there is reused)")
    sp.add_argument("--host", action="append", help="namenode host name or IP (repeat)")
    sp.add_argument("--client", action="append", help="client certificate common name (repeat)")
    sp.add_argument("--days", type=int, default=825, help="validity of the certificates")
    sp.add_argument("--auth-file", help="also map the client names in this identity table")
    sp.add_argument("--uid", type=int, default=1000, help="uid for --client names")
    sp.add_argument("--gid", type=int, default=1000, help="gid for --client names")
    sp.add_argument("--groups", type=_ids, help="comma-separated groups for --client names")
    sp.set_defaults(func=cmd_certs, map=None)

    sp = sub.add_parser("token", help="make a bearer token for a user and add it to the "
                        "identity table")
    sp.add_argument("name")
    sp.add_argument("--auth-file", required=True)
    sp.add_argument("--uid", type=int, required=True)
    sp.add_argument("--gid", type=int)
    sp.add_argument("--groups", type=_ids)
    sp.add_argument("--trusted", action="store_true",
                    help="a service that may act for any user (a FUSE gateway)")
    sp.add_argument("--token", help="use this token instead of a random one")
    sp.add_argument("--out", help="write the token to this file (mode 600)")
    sp.set_defaults(func=cmd_token)

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
    sp.set_defaults(func=cmd_fsck)

    sp = sub.add_parser("backup", help="consistent backup of the metadata database")
    db_args(sp)
    sp.add_argument("out", help="backup file to write")
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
