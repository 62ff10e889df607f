"""``metafs auth init``: a team's CA, namenode certificate and identities in one step;
``metafs certs`` and ``metafs token``: single certificates and bearer tokens to add later."""

from __future__ import annotations

import argparse
import secrets
from typing import Any

from .common import Common


def _ids(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def add_commands(sub: Any, common: Common) -> None:
    sp = sub.add_parser("auth", help="set up a cluster's TLS and identities")
    asub = sp.add_subparsers(dest="auth_command", required=True, metavar="ACTION")
    ip = asub.add_parser(
        "init", help="make a CA, the namenode's certificate and settings, and one "
        "credential per identity (admin, users, services) in DIR",
        description="Writes DIR/server.toml (serve with: metafs serve --config "
        "DIR/server.toml ...) and DIR/identities/NAME/ for each identity (copy it to "
        "~/.config/metafs/ on that identity's machines). Run again to add identities.")
    ip.add_argument("dir", help="output directory (an existing CA there is reused)")
    ip.add_argument("--server-name", action="append", required=True,
                    help="host name or IP clients reach the namenode by (repeat; the first "
                    "goes into the identities' settings)")
    ip.add_argument("--user", action="append", default=[], metavar="NAME:UID[:GID[:GROUPS]]",
                    help="a user identity, e.g. alice:1000:1000:1000,100 (repeat)")
    ip.add_argument("--admin", default="admin", help="name of the admin identity (uid 0, "
                    "not allowed to act as other users); empty: none (default: admin)")
    ip.add_argument("--service", action="append", default=[], metavar="NAME",
                    help="a trusted service identity that may act for any user: a FUSE mount "
                    "with --allow-other, the search indexer (repeat)")
    ip.add_argument("--credentials", choices=("token", "cert"), default="token",
                    help="bearer tokens over TLS, or client certificates (mutual TLS)")
    ip.add_argument("--port", type=int, default=7420, help="the namenode's port")
    ip.add_argument("--days", type=int, default=825, help="validity of the certificates")
    ip.set_defaults(func=cmd_auth_init)

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


def cmd_auth_init(args: argparse.Namespace) -> int:
    from ..ops.team import Member, init_team, parse_user

    from pathlib import Path

    # the admin is made by the first run; later runs add users and services
    fresh_admin = args.admin and not (Path(args.dir) / "identities" / args.admin).exists()
    members = [Member(args.admin, 0, 0)] if fresh_admin else []
    members += [parse_user(u) for u in args.user]
    members += [Member(name, 0, 0, trusted=True) for name in args.service]
    written = init_team(args.dir, args.server_name, members, credentials=args.credentials,
                        port=args.port, days=args.days)
    for what, path in written.items():
        print(f"{what:>24}: {path}")
    print(f"\nserve:   metafs serve --config {args.dir}/server.toml --db ... --blocks ...\n"
          f"clients: copy {args.dir}/identities/NAME/ to ~/.config/metafs/ on NAME's machines")
    return 0


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
    from ..ops.auth import add_token, write_secret

    token = args.token or secrets.token_urlsafe(32)
    add_token(args.auth_file, args.name, args.uid, args.gid if args.gid is not None else args.uid,
              args.groups or [], token, trusted=args.trusted)
    if args.out:
        write_secret(args.out, token + "\n")
        print(f"token for {args.name} written to {args.out}")
    else:
        print(token)
    return 0
