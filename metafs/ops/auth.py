"""TLS on gRPC, and authentication of callers mapped to uids and groups.

Without authentication (``auth_mode = "none"``) a namenode trusts the uid, gid and groups
each request claims, which is right on one machine and wrong on a shared cluster. With
``auth_mode`` ``token``, ``cert`` or ``any`` every remote caller must prove an identity,
by a bearer token (``authorization: Bearer ...`` call metadata) or by a client certificate
(mutual TLS, the certificate's common name), and that identity is looked up in the
identity table (``auth_file``, TOML)::

    [tokens.alice]            # a token identity
    token = "9f2c..."         # or token_sha256 = "<hex digest>"
    uid = 1000
    gid = 1000
    groups = [1000, 100]

    [certs.bob]               # a client certificate with common name "bob"
    uid = 1001
    gid = 1001

    [certs.fuse-gateway]      # a trusted service (the FUSE mount acting for its users)
    uid = 0
    gid = 0
    trusted = true

A caller may claim exactly its identity's uid, its gid or one of its groups as gid, and a
subset of its groups; any other claim is refused with EACCES naming both identities. A
``trusted`` identity may claim any ids (a mount serving many local users does). An
in-process (embedded) caller is always trusted: it already runs with the user's rights.

Clients learn their identity with the ``metafs.Auth/WhoAmI`` call (a small JSON method
served beside the Namenode service), so ``Client()`` claims the right ids by itself.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import grpc

from ..client.auth import check_secret_file, check_validity, host_of, is_loopback, read_secret
from ..config import Settings
from ..errors import FsError
from ..proto import metafs_pb2 as pb
from ..posix import Cred

log = logging.getLogger("metafs.auth")

AUTH_MODES = ("none", "token", "cert", "any")


class AuthError(FsError):
    """An unauthenticated caller: EACCES for the client, UNAUTHENTICATED on the wire."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EACCES, "not authenticated: " + message)

    @property
    def grpc_code_name(self) -> str:
        return "UNAUTHENTICATED"


@dataclass(frozen=True)
class Identity:
    """Who a token or certificate belongs to."""

    name: str
    kind: str  # "token" | "cert" | "local"
    uid: int
    gid: int
    groups: frozenset[int] = field(default_factory=frozenset)
    trusted: bool = False
    project: str = ""  # a project user's identity (metafs.namenode.projects)
    ro_groups: frozenset[int] = field(default_factory=frozenset)

    @property
    def principal(self) -> str:
        """The name sessions, handles and locks are bound to ("token:alice")."""
        return f"{self.kind}:{self.name}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "uid": self.uid, "gid": self.gid,
                "groups": sorted(self.groups), "trusted": self.trusted,
                "project": self.project}


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def cert_fingerprint(pem: bytes | str) -> str:
    """The SHA-256 fingerprint (hex) of a PEM certificate: of its DER bytes, as
    ``openssl x509 -fingerprint -sha256`` shows it (without the colons)."""
    import ssl

    text = (pem.decode() if isinstance(pem, bytes) else pem).strip()
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(text)).hexdigest()


#: the tables of an identity table file, and the keys an entry of each may have
_TABLE_KEYS = {"tokens": frozenset({"token", "token_sha256", "uid", "gid", "groups", "trusted"}),
               "certs": frozenset({"uid", "gid", "groups", "trusted"})}


def _invalid(path: Path, message: str) -> OSError:
    return OSError(errno.EINVAL, message, str(path))


class IdentityTable:
    """Tokens and certificate names, mapped to identities (read from ``auth_file``)."""

    def __init__(self, tokens: dict[str, Identity] | None = None,
                 certs: dict[str, Identity] | None = None) -> None:
        self.by_digest: dict[str, Identity] = dict(tokens or {})  # sha256 hex -> identity
        self.by_cn: dict[str, Identity] = dict(certs or {})

    @classmethod
    def load(cls, path: str | Path) -> "IdentityTable":
        """Read an identity table file. What it does not understand is refused, never
        skipped (a misspelt ``trusted`` must not quietly change who may do what): an
        unknown table or key, an entry without its uid or token, a value of the wrong
        type are each an OSError EINVAL naming the file."""
        p = Path(path)
        check_secret_file(p, "identity table (auth_file)")  # ENOENT when there is none
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise _invalid(p, f"not valid TOML ({exc})") from None
        for section in data:
            if section not in _TABLE_KEYS:
                raise _invalid(p, f"unknown table [{section}] (valid tables: "
                               f"{', '.join(sorted(_TABLE_KEYS))})")
        t = cls()
        for section, keys in _TABLE_KEYS.items():
            entries = data.get(section, {})
            if not isinstance(entries, dict):
                raise _invalid(p, f"{section} must be a table of identities ([{section}.NAME])")
            for name, e in entries.items():
                where = f"[{section}.{name}]"
                if not isinstance(e, dict):
                    raise _invalid(p, f"{section}.{name} is not a table: an identity is a "
                                   f"table {where} with the keys {', '.join(sorted(keys))}")
                unknown = sorted(set(e) - keys)
                if unknown:
                    raise _invalid(p, f"unknown key {unknown[0]!r} in {where} (valid keys: "
                                   f"{', '.join(sorted(keys))})")
                ident = cls._ident(p, where, section[:-1], name, e)
                if section == "certs":
                    t.by_cn[name] = ident
                    continue
                token, digest = e.get("token"), e.get("token_sha256")
                if digest is None and isinstance(token, str) and token:
                    digest = token_digest(token)
                if not isinstance(digest, str) or not digest:
                    raise _invalid(p, f"{where} needs a token or token_sha256 string")
                t.by_digest[digest.lower()] = ident
        return t

    @staticmethod
    def _ident(p: Path, where: str, kind: str, name: str, e: dict[str, Any]) -> Identity:
        if "uid" not in e:
            raise _invalid(p, f"{where} has no uid")
        groups = e.get("groups", [])
        if not isinstance(groups, list):
            raise _invalid(p, f"{where}: groups must be a list of integers")
        ids = [e["uid"], e.get("gid", e["uid"]), *groups]
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise _invalid(p, f"{where}: uid, gid and groups must be integers")
        trusted = e.get("trusted", False)
        if not isinstance(trusted, bool):
            raise _invalid(p, f"{where}: trusted must be true or false, not {trusted!r}")
        return Identity(name, kind, ids[0], ids[1], frozenset(ids[2:]), trusted)

    def names_of(self, uid: int) -> frozenset[str]:
        """The names of the identities (people, not trusted services) bound to ``uid``:
        whom a project gateway's claim of that uid may stand for."""
        return frozenset(i.name for t in (self.by_digest, self.by_cn) for i in t.values()
                         if i.uid == uid and not i.trusted)

    def by_token(self, token: str) -> Identity | None:
        # A dictionary lookup by the digest: its timing can only tell an attacker about
        # digests of tokens it already sent, not about the tokens the table holds.
        return self.by_digest.get(token_digest(token))


def write_secret(path: str | Path, data: bytes | str, *, append: bool = False) -> None:
    """Write a secret (key, token, identity table) readable by its owner only: the file is
    created with mode 600 (never briefly readable by others), and an existing one is set
    to 600."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data.encode() if isinstance(data, str) else data)
    finally:
        os.close(fd)


def _has_identity(p: Path, section: str, name: str) -> bool:
    existing = tomllib.loads(p.read_text()) if p.exists() else {}
    return name in (existing.get(section) or {})


def add_token(path: str | Path, name: str, uid: int, gid: int, groups: list[int],
              token: str, trusted: bool = False) -> None:
    """Append a token identity (stored as its SHA-256 digest) to an identity table file."""
    p = Path(path)
    if _has_identity(p, "tokens", name):
        raise ValueError(f"{p} already has a token named {name!r}")
    write_secret(p, f'\n[tokens.{json.dumps(name)}]\ntoken_sha256 = "{token_digest(token)}"\n'
                    f"uid = {uid}\ngid = {gid}\ngroups = {json.dumps(groups)}\n"
                    + ("trusted = true\n" if trusted else ""), append=True)


def add_cert_identity(path: str | Path, common_name: str, uid: int, gid: int,
                      groups: list[int], trusted: bool = False) -> None:
    """Map a client certificate's common name to ids in an identity table file."""
    p = Path(path)
    if _has_identity(p, "certs", common_name):
        raise ValueError(f"{p} already maps a certificate named {common_name!r}")
    write_secret(p, f'\n[certs.{json.dumps(common_name)}]\nuid = {uid}\ngid = {gid}\n'
                    f"groups = {json.dumps(groups)}\n" + ("trusted = true\n" if trusted else ""),
                 append=True)


# ---------------------------------------------------------------------- server side
_UNKNOWN = object()

class Authenticator:
    """Binds each remote call to an identity and checks the ids it claims."""

    def __init__(self, settings: Settings) -> None:
        mode = settings.auth_mode.lower()
        if mode not in AUTH_MODES:
            raise ValueError(f"auth_mode must be one of {', '.join(AUTH_MODES)}, not {mode!r}")
        self.mode = mode
        # Tokens the table does not hold are offered to these (by their SHA-256 digest):
        # each returns the fields of an Identity, or None (project credentials).
        self.token_resolvers: list[Callable[[str], dict[str, Any] | None]] = []
        # Client certificates the table does not name are offered to these, by common name
        # and fingerprint (cert_fingerprint): the same, for project certificates.
        self.cert_resolvers: list[Callable[[str, str], dict[str, Any] | None]] = []
        # Calls of a trusted service claiming a project (Caller.project) are offered to this:
        # (service, project, claimed uid, names of the table's identities of that uid) ->
        # the fields of the member's project identity, or FsError (project gateways).
        self.gateway_resolver: Callable[[str, str, int, frozenset[str]], dict[str, Any]] \
            | None = None
        self.table = IdentityTable.load(settings.auth_file) if settings.auth_file \
            else IdentityTable()
        if mode != "none" and not settings.auth_file:
            raise ValueError(f"auth_mode {mode} needs an auth_file (the identity table)")
        if mode in ("cert", "any") and not (settings.tls_cert and settings.tls_ca):
            raise ValueError(f"auth_mode {mode} needs TLS with a CA (tls_cert, tls_key, tls_ca)")
        if mode == "cert" and not settings.tls_client_auth:
            raise ValueError("auth_mode cert needs tls_client_auth = true (mutual TLS)")

    def identify(self, ctx: Any) -> Identity | None:
        """The identity a call proves, or None (AuthError when it proves a wrong one).
        Found once per call (or call stream: its frames share the context)."""
        if ctx is None:
            return None
        known = getattr(ctx, "_metafs_identity", _UNKNOWN)
        if known is not _UNKNOWN:
            return known
        ident = self._identify(ctx)
        try:
            ctx._metafs_identity = ident
        except AttributeError:  # a context that takes no attributes: found each time
            pass
        return ident

    def _identify(self, ctx: Any) -> Identity | None:
        if self.mode in ("token", "any"):
            token = None
            for k, v in ctx.invocation_metadata() or ():
                if k == "authorization":
                    scheme, _, rest = v.partition(" ")
                    if scheme.lower() != "bearer" or not rest:
                        raise AuthError("the authorization metadata must be 'Bearer TOKEN'")
                    token = rest.strip()
            if token is not None:
                ident = self.table.by_token(token)
                if ident is None:
                    ident = self._resolve_token(token)
                if ident is None:
                    raise AuthError("the bearer token is not known to this namenode")
                return ident
        if self.mode in ("cert", "any"):
            ac = ctx.auth_context() or {}
            cns = ac.get("x509_common_name") or []
            if cns:
                cn = cns[0].decode() if isinstance(cns[0], bytes) else str(cns[0])
                ident = self.table.by_cn.get(cn)
                if ident is None:
                    ident = self._resolve_cert(cn, ac.get("x509_pem_cert") or [])
                if ident is None:
                    raise AuthError(f"client certificate {cn!r} is not mapped to a user in "
                                    "the namenode's auth_file, nor registered as a project "
                                    "credential of a member")
                return ident
        return None

    def _resolve_token(self, token: str) -> Identity | None:
        digest = token_digest(token)
        for resolve in self.token_resolvers:
            fields = resolve(digest)
            if fields is not None:
                return Identity(**fields)
        return None

    def _resolve_cert(self, cn: str, pems: list[bytes]) -> Identity | None:
        if not pems or not self.cert_resolvers:
            return None
        fingerprint = cert_fingerprint(pems[0])
        for resolve in self.cert_resolvers:
            fields = resolve(cn, fingerprint)
            if fields is not None:
                return Identity(**fields)
        return None

    def limit_key(self, ctx: Any) -> str | None:
        """The name limits per identity count a call under (None: not authenticated)."""
        if self.mode == "none":
            return None
        try:
            ident = self.identify(ctx)
        except AuthError:
            return None
        return f"{ident.kind}:{ident.name}" if ident is not None else None

    def require(self, ctx: Any) -> Identity:
        ident = self.identify(ctx)
        if ident is None:
            what = {"token": "a bearer token (set token or token_file)",
                    "cert": "a client certificate (mutual TLS)",
                    "any": "a bearer token or a client certificate"}[self.mode]
            raise AuthError(f"this namenode requires {what}")
        return ident

    def cred_of(self, caller: pb.Caller, ctx: Any) -> Cred:
        claimed = Cred.from_pb(caller)
        if ctx is None or self.mode == "none":
            return claimed  # in-process caller, or a namenode that trusts its network
        ident = self.require(ctx)
        if caller.project and caller.project != ident.project:
            return self._gateway_cred(ident, caller.project, claimed)
        if ident.project:  # a project user: the namenode's ids for it, whatever is claimed
            if not ident.trusted and claimed.uid != ident.uid:
                raise FsError(errno.EACCES, f"caller claims uid {claimed.uid} but its "
                              f"{ident.kind} {ident.name!r} is bound to uid {ident.uid}")
            return Cred(ident.uid, ident.gid, ident.groups, claimed.pid, claimed.client_id,
                        claimed.run_id, ident.principal, False, ident.project, ident.ro_groups,
                        claimed.process)
        if ident.trusted:  # a gateway acts for its users, within its own sessions
            return Cred(claimed.uid, claimed.gid, claimed.groups, claimed.pid,
                        claimed.client_id, claimed.run_id, ident.principal, True,
                        process=claimed.process)
        allowed_groups = ident.groups | {ident.gid}
        if claimed.uid != ident.uid:
            raise FsError(errno.EACCES, f"caller claims uid {claimed.uid} but its {ident.kind} "
                          f"{ident.name!r} is bound to uid {ident.uid}")
        if claimed.gid not in allowed_groups:
            raise FsError(errno.EACCES, f"caller claims gid {claimed.gid} but its {ident.kind} "
                          f"{ident.name!r} has gid {ident.gid} and groups "
                          f"{sorted(ident.groups)}")
        extra = set(claimed.groups) - allowed_groups
        if extra:
            raise FsError(errno.EACCES, f"caller claims groups {sorted(extra)} that its "
                          f"{ident.kind} {ident.name!r} is not in")
        return Cred(claimed.uid, claimed.gid, claimed.groups, claimed.pid, claimed.client_id,
                    claimed.run_id, ident.principal, False, process=claimed.process)

    def _gateway_cred(self, ident: Identity, project: str, claimed: Cred) -> Cred:
        """A project gateway's call: the claimed (local) uid stands for the project
        identity of the member it is, within the gateway's own sessions; any other claim,
        and any caller but a service authorized as the project's gateway, is refused."""
        if not ident.trusted or self.gateway_resolver is None:
            raise FsError(errno.EACCES, f"{ident.kind} {ident.name!r} cannot act for the "
                          f"members of project {project!r}: only a service identity "
                          "authorized as the project's gateway can")
        f = self.gateway_resolver(ident.name, project, claimed.uid,
                                  self.table.names_of(claimed.uid))
        return Cred(f["uid"], f["gid"], f["groups"], claimed.pid, claimed.client_id,
                    claimed.run_id, ident.principal, False, project, f["ro_groups"],
                    claimed.process)

    def whoami(self, ctx: Any) -> dict[str, Any]:
        if self.mode == "none":
            return {"name": "", "kind": "none", "uid": None, "gid": None, "groups": [],
                    "trusted": True}
        return self.require(ctx).to_json()


def install(namenode: Any, server: grpc.Server) -> Authenticator:
    """Put authentication in front of a namenode's handlers and serve WhoAmI."""
    auth = Authenticator(namenode.settings)
    namenode.handlers.cred_of = auth.cred_of
    namenode.authenticator = auth
    namenode.identity_key = auth.limit_key  # what limits per identity count by

    def whoami(_req: bytes, ctx: grpc.ServicerContext) -> dict[str, Any]:
        try:
            return auth.whoami(ctx)
        except FsError as err:
            ctx.abort(grpc.StatusCode.UNAUTHENTICATED, err.message)
            raise  # unreachable: abort raises

    handler = grpc.method_handlers_generic_handler("metafs.Auth", {
        "WhoAmI": grpc.unary_unary_rpc_method_handler(
            whoami, request_deserializer=lambda b: b,
            response_serializer=lambda d: json.dumps(d).encode())})
    server.add_generic_rpc_handlers((handler,))
    return auth


def check_listen(listen: str, settings: Settings) -> None:
    """Refuse to serve without authentication beyond loopback, unless ``insecure`` says
    that every claim is to be believed (then warn that it is)."""
    if settings.auth_mode.lower() not in ("none", "") or is_loopback(host_of(listen)):
        return
    if not settings.insecure:
        raise ValueError(
            f"refusing to listen on {listen} without authentication: anyone who can reach "
            "it could act as any user. Set up identities with `metafs auth init` and serve "
            "with --auth-mode token (or cert), listen on 127.0.0.1, or pass --insecure to "
            "trust every caller's claimed uid")
    log.warning("INSECURE: serving %s without authentication; every caller's claimed uid "
                "and groups are trusted (--insecure)", listen)


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials for `metafs serve`, or None for plaintext."""
    if not settings.tls_cert:
        if settings.tls_client_auth:
            raise ValueError("tls_client_auth needs tls_cert and tls_key")
        return None
    if not settings.tls_key:
        raise ValueError("tls_cert is set but tls_key is not")
    cert = read_secret(settings.tls_cert, "TLS certificate")
    check_validity(cert, "the namenode's TLS certificate", settings.tls_cert)
    check_secret_file(settings.tls_key, "TLS key")
    key = read_secret(settings.tls_key, "TLS key")
    ca = read_secret(settings.tls_ca, "TLS CA") if settings.tls_ca else None
    if settings.tls_client_auth and ca is None:
        raise ValueError("tls_client_auth needs tls_ca to verify client certificates")
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                       require_client_auth=settings.tls_client_auth)


def bind(server: grpc.Server, listen: str, settings: Settings) -> int:
    """Listen on ``listen`` with TLS when configured; the bound port."""
    check_listen(listen, settings)
    creds = server_credentials(settings)
    if creds is None:
        if settings.auth_mode not in ("none", "") and not settings.tls_cert:
            log.warning("authentication without TLS: tokens cross the network in the clear")
        return server.add_insecure_port(listen)
    return server.add_secure_port(listen, creds)


