"""``metafs project``: projects, their members, credentials, shares and quotas
(see docs/projects.md)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .common import Common, settings_from

ROLES = ("data_owner", "data_scientist")


def add_commands(sub: Any, common: Common) -> None:
    sp = sub.add_parser("project", help="projects: data sets sandboxed per team, shared on "
                        "purpose")
    psub = sp.add_subparsers(dest="project_command", required=True, metavar="ACTION")

    def action(name: str, help_: str) -> argparse.ArgumentParser:
        p = psub.add_parser(name, help=help_)
        common(p)
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument("--as-user", default="", help="(a namenode without authentication "
                       "only) the user to act as")
        p.set_defaults(func=cmd_project, action=name)
        return p

    p = action("create", "make /Projects/NAME, owned by you as its data owner")
    p.add_argument("name")
    p.add_argument("--owner", default="", help="(administrators) the first data owner")
    action("list", "the projects you are a member of")
    p = action("show", "a project's members, shares and quota")
    p.add_argument("name")
    p = action("delete", "delete an empty project")
    p.add_argument("name")
    p = action("add", "add a member (or change a member's role)")
    p.add_argument("project")
    p.add_argument("user")
    p.add_argument("--role", choices=ROLES, default="data_scientist")
    p = action("remove", "remove a member (its project credentials stop working)")
    p.add_argument("project")
    p.add_argument("user")
    p = action("credential", "issue a token for USER working in PROJECT (shown once), or "
               "a client certificate (--cert)")
    p.add_argument("project")
    p.add_argument("user")
    p.add_argument("--cert", metavar="DIR", default="",
                   help="issue a client certificate instead: write it, its key, the CA and "
                   "settings to the new directory DIR (needs --ca-dir)")
    p.add_argument("--ca-dir", default="", help="the directory of the cluster's CA "
                   "(ca.pem, ca-key.pem: `metafs auth init`'s)")
    p.add_argument("--days", type=int, default=825, help="validity of the certificate")
    p = action("share", "share a data set directory with another project")
    p.add_argument("path", help="/Projects/A/datasets/NAME (or models/NAME)")
    p.add_argument("--with", dest="to", required=True, metavar="PROJECT")
    p.add_argument("--read-only", action="store_true")
    p = action("unshare", "undo a share")
    p.add_argument("path")
    p.add_argument("--with", dest="to", required=True, metavar="PROJECT")
    p = action("gateway", "authorize a service identity as PROJECT's gateway: a shared "
               "mount (--project PROJECT --allow-other) acting for each local user who is "
               "a member, as that member's project identity")
    p.add_argument("project")
    p.add_argument("--service", required=True, help="the service identity's name (one "
                   "marked trusted in the namenode's auth_file)")
    p.add_argument("--remove", action="store_true", help="no longer authorize it")
    p = action("quota", "(administrators) limit a project's files and bytes (0: no limit)")
    p.add_argument("name")
    p.add_argument("--files", type=int, default=0)
    p.add_argument("--bytes", dest="nbytes", type=int, default=0)


_ARGS = {"create": ("name", "owner"), "list": (), "show": ("name",), "delete": ("name",),
         "add": ("project", "user", "role"), "remove": ("project", "user"),
         "credential": ("project", "user"), "share": ("path", "to", "read_only"),
         "unshare": ("path", "to"), "gateway": ("project", "service", "remove"),
         "quota": (("name", "project"), "files", "nbytes")}


def request(args: argparse.Namespace) -> dict[str, Any]:
    req: dict[str, Any] = {"action": args.action}
    for a in _ARGS[args.action]:
        src, dst = a if isinstance(a, tuple) else (a, a)
        req[dst] = getattr(args, src)
    if args.as_user:
        req["as_user"] = args.as_user
    return req


def call(settings: Any, req: dict[str, Any]) -> Any:
    """Send one project request to the namenode of ``settings`` (embedded or remote)."""
    from ..client import Client

    with Client(settings=settings) as c:
        t = c.transport
        namenode = getattr(t, "namenode", None)
        if namenode is not None:  # embedded: the namenode's projects, as root
            from ..namenode.projects import caller_of, serve
            from ..errors import FsError

            try:
                return serve(namenode.projects, caller_of(namenode, None, req), req)
            except FsError as err:
                raise err.to_oserror() from None
        from ..client.auth import project_call

        return project_call(t, req)


def _project_cert(args: argparse.Namespace, req: dict[str, Any]) -> Any:
    """The certificate ``credential --cert`` issues, its fingerprint put in ``req`` for the
    namenode to register (the files are written only once it has)."""
    from pathlib import Path

    from ..ops.auth import cert_fingerprint
    from ..ops.team import project_certificate

    if not (args.cert and args.ca_dir):
        raise ValueError("--cert DIR and --ca-dir DIR go together: the certificate is "
                         "signed by the cluster's CA and written to DIR")
    if Path(args.cert).exists():
        raise FileExistsError(f"{args.cert} exists: give a new directory for the identity")
    cert = project_certificate(args.ca_dir, args.project, args.user, args.days)
    req["cert_sha256"] = cert_fingerprint(cert.cert_pem)
    return cert


def cmd_project(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    req = request(args)
    cert = None
    if args.action == "credential" and (args.cert or args.ca_dir):
        cert = _project_cert(args, req)
    out = call(settings, req)
    if cert is not None:  # registered: now hand it out
        from ..ops.team import write_project_identity

        write_project_identity(args.cert, f"{out['name']} (uid {out['uid']})",
                               settings.namenode, args.ca_dir, cert)
        out["dir"] = args.cert
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
        return 0
    if args.action == "list":
        for p in out:
            print(f"{p['name']}\t{p['path']}\tgid {p['gid']}\t{p['role'] or '-'}")
    elif args.action == "show":
        q = out["quota"]
        print(f"{out['name']}  {out['path']}  gid {out['gid']}")
        print(f"  files {q['files']}/{q['max_files'] or 'unlimited'}  bytes "
              f"{q['bytes']}/{q['max_bytes'] or 'unlimited'}")
        for m in out["members"]:
            print(f"  member {m['user']} ({m['role']}, uid {m['uid']})")
        for s in out["shared_out"]:
            print(f"  shares {s['entry']} with {s['to']}"
                  f"{' read-only' if s['read_only'] else ''}")
        for s in out["shared_in"]:
            print(f"  shared in: {s['path']} from {s['from']}"
                  f"{' read-only' if s['read_only'] else ''}")
        for g in out["gateways"]:
            print(f"  gateway {g}")
    elif args.action == "credential" and "dir" in out:
        print(f"{out['name']}: uid {out['uid']}, gid {out['gid']}: certificate and settings "
              f"in {out['dir']} (use with --config {out['dir']}/config.toml)")
    elif args.action == "credential":
        print(f"# {out['name']}: uid {out['uid']}, gid {out['gid']} (shown once)")
        print(out["token"])
    elif args.action == "gateway":
        print(f"{out['service']} is {'' if out['gateway'] else 'no longer '}a gateway of "
              f"project {out['project']}")
    elif args.action == "share":
        print(f"{out['path']} appears in {out['to']} as {out['entry']}"
              f"{' (read-only)' if out['read_only'] else ''}")
    elif out is not None:
        print(json.dumps(out, sort_keys=True))
    return 0
