"""The client's side of authentication: TLS credentials and a bearer token for the gRPC
transport, and the identity the namenode binds the connection to. The namenode's side (identity
tables, the authenticating interceptor, serving with TLS) is :mod:`metafs.ops.auth`, which
shares the secret-file and address rules defined here."""

from __future__ import annotations

import datetime as dt
import errno
import ipaddress
import json
import logging
import os
import stat
from pathlib import Path
from typing import Any, Callable

import grpc

from ..config import Settings
from .transport import GrpcTransport, error_from_rpc

log = logging.getLogger("metafs.auth")
WHOAMI = "/metafs.Auth/WhoAmI"  # who the namenode takes the caller to be (JSON)


def check_secret_file(path: str | Path, what: str) -> None:
    """Refuse a secret file that every user of the machine can read (as ssh refuses such a
    private key); warn about one its group can read."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"{what} not found", str(path)) from None
    if mode & 0o004:
        raise PermissionError(errno.EACCES, f"{what} {path} is readable by every user "
                              f"(mode {stat.S_IMODE(mode):03o}); run: chmod 600 {path}")
    if mode & 0o040:
        log.warning("%s %s is readable by its group (mode %03o)", what, path,
                    stat.S_IMODE(mode))


def read_secret(path: str, what: str) -> bytes:
    """The bytes of a key, certificate or token file; ENOENT names ``what`` is missing."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"{what} not found", path) from None


def check_validity(pem: bytes, what: str, path: str) -> None:
    from cryptography import x509  # the ops extra, needed only with certificates

    c = x509.load_pem_x509_certificate(pem)
    start, end = c.not_valid_before_utc, c.not_valid_after_utc
    now = dt.datetime.now(dt.timezone.utc)
    if now > end:
        raise PermissionError(errno.EACCES, f"{what} {path} expired on {end:%Y-%m-%d %H:%M} UTC")
    if now < start:
        raise PermissionError(errno.EACCES, f"{what} {path} is not valid before "
                              f"{start:%Y-%m-%d %H:%M} UTC")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a literal address or ``localhost``) names this machine only.
    Other names are not resolved: what they resolve to is not the caller's to trust."""
    host = host.strip("[]")
    if host.lower() in ("localhost", "localhost.localdomain") or host.startswith("unix:"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_of(address: str) -> str:
    """The host part of a gRPC target (``host:port``, ``dns:///host:port``, ``unix:...``)."""
    if address.startswith("unix:"):
        return address
    host = address.rsplit(":", 1)[0] if ":" in address else address
    return host.split("//", 1)[-1]  # dns:///host:port, ipv4:host:port


def client_token(settings: Settings) -> str:
    """The bearer token the client sends (``token``, else ``token_file``), or ''."""
    if settings.token:
        return settings.token.strip()
    if settings.token_file:
        check_secret_file(settings.token_file, "token file")
        return read_secret(settings.token_file, "token file").decode().strip()
    return ""


def channel_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """TLS credentials for a client, or None (plaintext) when no CA or client certificate
    is configured."""
    if not (settings.tls_ca or settings.tls_client_cert):
        return None
    ca = read_secret(settings.tls_ca, "TLS CA") if settings.tls_ca else None
    key = cert = None
    if settings.tls_client_cert:
        cert = read_secret(settings.tls_client_cert, "client certificate")
        check_validity(cert, "client certificate", settings.tls_client_cert)
        if not settings.tls_client_key:
            raise ValueError("tls_client_cert is set but tls_client_key is not")
        check_secret_file(settings.tls_client_key, "client key")
        key = read_secret(settings.tls_client_key, "client key")
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                        certificate_chain=cert)


def make_transport(settings: Settings, *, timeout: float | None = None,
                   options: tuple[tuple[str, Any], ...] = ()) -> Any:
    """The gRPC transport a client uses: TLS and token as configured. ``timeout``
    (default ``settings.rpc_timeout``) and extra channel ``options`` let a caller such as
    the FUSE mount keep calls short and reconnect fast."""
    creds = channel_credentials(settings)
    token = client_token(settings)
    if token and creds is None and not settings.insecure:
        exposed = [a for a in settings.namenode.split(",")
                   if a.strip() and not is_loopback(host_of(a.strip()))]
        if exposed:
            raise PermissionError(
                errno.EPERM, f"refusing to send a bearer token in clear text to {exposed[0]}: "
                "set tls_ca (--tls-ca, METAFS_TLS_CA) to the cluster's CA certificate so the "
                "connection uses TLS")
    metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) \
        if token else ()
    options = tuple(options)
    if settings.tls_server_name and creds is not None:
        options += (("grpc.ssl_target_name_override", settings.tls_server_name),)

    class AuthTransport(GrpcTransport):
        """GrpcTransport that can ask the namenode who it takes this client to be."""

        def whoami(self) -> dict[str, Any]:
            fn: Callable[..., Any] = self._channels[0].unary_unary(
                WHOAMI, request_serializer=lambda b: b, response_deserializer=json.loads)
            try:
                return fn(b"", timeout=self.timeout, metadata=self.metadata)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    return {"kind": "none", "uid": None}
                raise error_from_rpc(exc, "WhoAmI").to_oserror() from None

    t = AuthTransport(settings.namenode,
                      timeout=settings.rpc_timeout if timeout is None else timeout,
                      credentials=creds,
                      metadata=metadata, options=options, streams=settings.call_streams,
                      max_receive=settings.grpc_max_receive_bytes,
                      max_send=settings.grpc_max_send_bytes,
                      failover_timeout=settings.failover_timeout)
    t.authenticated = bool(token or settings.tls_client_cert)
    return t


def identity_for_client(transport: Any) -> tuple[int, int, list[int]] | None:
    """(uid, gid, groups) the namenode binds this transport to, when it authenticates."""
    if not getattr(transport, "authenticated", False):
        return None
    who = transport.whoami()
    if who.get("uid") is None or who.get("trusted"):
        return None
    return int(who["uid"]), int(who["gid"]), [int(g) for g in who.get("groups", [])]


def call_json(transport: Any, method: str, request: dict[str, Any]) -> Any:
    """A JSON call (``metafs.Auth/WhoAmI``, ``metafs.Projects/Call``) on a transport made
    by :func:`make_transport`, with its TLS and token."""
    fn: Callable[..., Any] = transport._channels[0].unary_unary(
        method, request_serializer=lambda d: json.dumps(d).encode(),
        response_deserializer=json.loads)
    try:
        return fn(request, timeout=transport.timeout, metadata=transport.metadata)
    except grpc.RpcError as exc:
        raise error_from_rpc(exc, method).to_oserror() from None


PROJECTS_CALL = "/metafs.Projects/Call"  # served by metafs.namenode.projects (its CALL)


def project_call(transport: Any, request: dict[str, Any]) -> Any:
    """A project action (``{"action": "create", ...}``) on the namenode: its answer, or the
    OSError (with its errno) the namenode refused it with."""
    reply = call_json(transport, PROJECTS_CALL, request)
    if "errno" in reply:
        raise OSError(int(reply["errno"]), reply["error"])
    return reply["ok"]
