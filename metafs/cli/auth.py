"""``metafs certs`` and ``metafs token``: certificates and bearer tokens for a cluster."""

from __future__ import annotations

import argparse
import os
import secrets
from typing import Any

from .common import Common


def _ids(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def add_commands(sub: Any, common: Common) -> None:
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


def cmd_certs(args: argparse.Namespace) -> int:
    from ..ops import certs

    written = certs.init_cluster(args.dir, hosts=args.host or [], clients=args.client or [],
                                 days=args.days)
    for what, path in written.items():
        print(f"{what:>16}: {path}")
    if args.auth_file:
        from ..ops.auth import add_cert_identity

        for spec in args.client or []:
            ids = args.map.get(spec) if args.map else None
            uid, gid = ids if ids else (args.uid, args.gid)
            add_cert_identity(args.auth_file, spec, uid, gid, args.groups or [])
        print(f"{'identities':>16}: {args.auth_file}")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from ..ops.auth import add_token

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
