"""``metafs auth init``: a team's PKI and first identities in one directory.

Layout of the directory it writes (secrets mode 600, marked *)::

    ca.pem  ca-key.pem*                 the cluster's CA (reused when run again)
    server.pem  server-key.pem*         the namenode's certificate: the given names as SANs
    auth.toml*                          the identity table (token digests, certificate names)
    server.toml                         the namenode's security settings (--config)
    identities/NAME/                    one per identity, to hand to its owner:
        config.toml                     namenode address, CA, credential (relative paths)
        ca.pem                          the CA, to verify the namenode
        token*                          with --credentials token (the default)
        client.pem  client-key.pem*     with --credentials cert

Every identity is its own: the admin (uid 0, root on the file system but unable to claim
another uid), each user (uid, gid, groups), and each service (``trusted``: may act for
any user, for a FUSE mount with allow_other or the search indexer). Running it again
with new names adds them to the same CA and identity table; a name that exists is refused
before anything is written.
"""

from __future__ import annotations

import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from . import certs
from .auth import IdentityTable, add_cert_identity, add_token, write_secret

CREDENTIALS = ("token", "cert")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class Member:
    """An identity to create."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...] = field(default_factory=tuple)
    trusted: bool = False


def parse_user(spec: str) -> Member:
    """``NAME:UID[:GID[:G1,G2,...]]`` (GID defaults to UID)."""
    parts = spec.split(":")
    if len(parts) < 2 or len(parts) > 4 or not parts[0]:
        raise ValueError(f"--user {spec!r}: expected NAME:UID[:GID[:GROUP,GROUP...]]")
    name = parts[0]
    if not all(c.isalnum() or c in "._-@" for c in name):
        raise ValueError(f"--user {spec!r}: a name is letters, digits and . _ - @")
    try:
        uid = int(parts[1])
        gid = int(parts[2]) if len(parts) > 2 and parts[2] else uid
        groups = tuple(int(g) for g in parts[3].split(",") if g) if len(parts) > 3 else ()
    except ValueError:
        raise ValueError(f"--user {spec!r}: uid, gid and groups are numbers") from None
    if min((uid, gid, *groups)) < 0:
        raise ValueError(f"--user {spec!r}: ids are not negative")
    return Member(name, uid, gid, groups)


def init_team(out_dir: str | Path, server_names: Sequence[str], members: Sequence[Member], *,
              credentials: str = "token", port: int = 7420, days: int = 825
              ) -> dict[str, str]:
    """Write the CA, the namenode's certificate and settings, and one credential per member
    (see the module's docstring). Returns what was written, by name."""
    if credentials not in CREDENTIALS:
        raise ValueError(f"credentials must be one of {', '.join(CREDENTIALS)}")
    if not server_names:
        raise ValueError("give the namenode's host name (--server-name), as clients reach it")
    d = Path(out_dir)
    table_path = d / "auth.toml"
    table = IdentityTable.load(table_path) if table_path.exists() else IdentityTable()
    known = {i.name for i in table.by_digest.values()} | set(table.by_cn)
    seen: set[str] = set()
    for m in members:
        if m.name in known or m.name in seen or (d / "identities" / m.name).exists():
            raise ValueError(f"an identity named {m.name!r} exists already in {d}")
        seen.add(m.name)

    written: dict[str, str] = {}
    ca = certs.ca_in(d, written)
    names = list(dict.fromkeys([*server_names, *LOOPBACK_NAMES]))
    if not (d / "server.pem").exists() or _sans_differ(d / "server.pem", names):
        certs.issue(ca, names[0], server=True, hosts=names, days=days).write(
            d / "server.pem", d / "server-key.pem")
        written["server certificate"] = str(d / "server.pem")
    if not table_path.exists():
        write_secret(table_path, "# metafs identity table (metafs auth init)\n")
    server_cfg = d / "server.toml"
    server_cfg.write_text(_server_settings(d, credentials, port))
    written["server settings"] = str(server_cfg)
    written["identity table"] = str(table_path)

    address = f"{server_names[0]}:{port}"
    for m in members:
        home = d / "identities" / m.name
        if credentials == "token":
            token = secrets.token_urlsafe(32)
            add_token(table_path, m.name, m.uid, m.gid, list(m.groups), token,
                      trusted=m.trusted)
            _identity_dir(home, f"{m.name} (uid {m.uid})", address, d / "ca.pem", token=token)
        else:
            add_cert_identity(table_path, m.name, m.uid, m.gid, list(m.groups),
                              trusted=m.trusted)
            _identity_dir(home, f"{m.name} (uid {m.uid})", address, d / "ca.pem",
                          cert=certs.issue(ca, m.name, server=False, days=days))
        written[f"identity {m.name}"] = str(home)
    return written


def _identity_dir(home: Path, who: str, address: str, ca_pem: Path, *, token: str = "",
                  cert: certs.Issued | None = None) -> None:
    """An identity's directory: its settings, the CA, and its token or certificate."""
    home.mkdir(parents=True, mode=0o700)
    shutil.copyfile(ca_pem, home / "ca.pem")
    lines = [f"# metafs client settings of {who}; copy this directory",
             "# to ~/.config/metafs/ on its machines, or pass --config FILE",
             f'namenode = "{address}"', 'tls_ca = "ca.pem"']
    if cert is None:
        write_secret(home / "token", token + "\n")
        lines.append('token_file = "token"')
    else:
        cert.write(home / "client.pem", home / "client-key.pem")
        lines += ['tls_client_cert = "client.pem"', 'tls_client_key = "client-key.pem"']
    (home / "config.toml").write_text("\n".join(lines) + "\n")


def project_certificate(ca_dir: str | Path, project: str, user: str, days: int = 825
                        ) -> certs.Issued:
    """A client certificate for ``user`` working in ``project`` (common name
    ``user@project``), signed by the CA kept in ``ca_dir`` (``metafs auth init``'s
    directory). The namenode takes it as that project identity once it is registered
    (``metafs project credential PROJECT USER --cert DIR``)."""
    d = Path(ca_dir)
    if not (d / "ca.pem").exists() or not (d / "ca-key.pem").exists():
        raise FileNotFoundError(f"no CA in {d} (ca.pem and ca-key.pem, as `metafs auth "
                                "init` writes them): give the directory of the cluster's CA")
    return certs.issue(certs.load(d / "ca.pem", d / "ca-key.pem"), f"{user}@{project}",
                       server=False, days=days)


def write_project_identity(home: str | Path, name: str, address: str, ca_dir: str | Path,
                           cert: certs.Issued) -> None:
    """A project identity's directory, as ``metafs auth init`` writes one per identity."""
    _identity_dir(Path(home), name, address, Path(ca_dir) / "ca.pem", cert=cert)


def _sans_differ(cert_path: Path, names: list[str]) -> bool:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return True
    have = {str(v) for v in ext.get_values_for_type(x509.DNSName)} | \
        {str(v) for v in ext.get_values_for_type(x509.IPAddress)}
    return not set(names) <= have


def _server_settings(d: Path, credentials: str, port: int) -> str:
    lines = ["# metafs namenode security settings (metafs auth init): pass with --config,",
             "# or copy these lines into the namenode's config file",
             f'listen = "0.0.0.0:{port}"',
             'tls_cert = "server.pem"', 'tls_key = "server-key.pem"', 'tls_ca = "ca.pem"',
             f'auth_mode = "{credentials}"', 'auth_file = "auth.toml"']
    if credentials == "cert":
        lines.append("tls_client_auth = true")
    return "\n".join(lines) + "\n"
