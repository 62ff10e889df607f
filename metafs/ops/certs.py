"""Certificates for a metafs cluster: a CA, namenode (server) and client certificates.

``metafs certs init DIR`` makes ``ca.pem``/``ca-key.pem``, a server certificate for the
given host names and addresses, and client certificates whose common name is the
identity the namenode maps to a uid (see :mod:`metafs.ops.auth`). Keys are ECDSA P-256.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Issued:
    """A certificate and its key, as PEM."""

    cert_pem: bytes
    key_pem: bytes

    def write(self, cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> None:
        from .auth import write_secret

        Path(cert_path).write_bytes(self.cert_pem)
        write_secret(key_path, self.key_pem)  # created 600, never briefly readable


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(name: str = "metafs test CA", days: int = 3650) -> Issued:
    """A self-signed certificate authority."""
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "metafs")])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue(ca: Issued, common_name: str, *, server: bool, hosts: Sequence[str] = (),
          days: float = 825, not_before: dt.datetime | None = None,
          not_after: dt.datetime | None = None) -> Issued:
    """A certificate signed by ``ca``: for a namenode (``server``, with ``hosts`` as
    subject alternative names) or for a client (its common name is its identity)."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    key = _key()
    now = _now()
    start = not_before or (now - dt.timedelta(minutes=5))
    end = not_after or (now + dt.timedelta(days=days))
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                                  x509.NameAttribute(NameOID.ORGANIZATION_NAME, "metafs")]))
         .issuer_name(ca_cert.subject).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(start).not_valid_after(end)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.ExtendedKeyUsage(
             [ExtendedKeyUsageOID.SERVER_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]),
             critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
             ca_cert.public_key()), critical=False))  # type: ignore[arg-type]
    if server:
        names: list[x509.GeneralName] = []
        for h in list(hosts) or ["localhost", "127.0.0.1"]:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                names.append(x509.DNSName(h))
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = b.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def load(cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> Issued:
    return Issued(Path(cert_path).read_bytes(), Path(key_path).read_bytes())


def validity(cert_pem: bytes) -> tuple[dt.datetime, dt.datetime]:
    """(not before, not after) of a PEM certificate, in UTC."""
    c = x509.load_pem_x509_certificate(cert_pem)
    return c.not_valid_before_utc, c.not_valid_after_utc


def common_name(cert_pem: bytes) -> str:
    c = x509.load_pem_x509_certificate(cert_pem)
    attrs = c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def ca_in(d: Path, written: dict[str, str], name: str = "metafs CA") -> Issued:
    """The CA kept in directory ``d`` (``ca.pem``, ``ca-key.pem``), made there if absent."""
    d.mkdir(parents=True, exist_ok=True)
    if (d / "ca.pem").exists() and (d / "ca-key.pem").exists():
        return load(d / "ca.pem", d / "ca-key.pem")
    ca = make_ca(name)
    ca.write(d / "ca.pem", d / "ca-key.pem")
    written["ca"] = str(d / "ca.pem")
    return ca


def init_cluster(out_dir: str | os.PathLike[str], hosts: Sequence[str] = (),
                 clients: Sequence[str] = (), days: int = 825) -> dict[str, str]:
    """Make ``ca.pem``, ``ca-key.pem``, ``server.pem``/``server-key.pem`` and one
    ``client-NAME.pem``/``client-NAME-key.pem`` per client in ``out_dir``. An existing CA
    there is reused, so running it again adds certificates to the same cluster."""
    d = Path(out_dir)
    written: dict[str, str] = {}
    ca = ca_in(d, written)
    srv = issue(ca, (list(hosts) or ["localhost"])[0], server=True,
                hosts=list(hosts) or ["localhost", "127.0.0.1", "::1"], days=days)
    srv.write(d / "server.pem", d / "server-key.pem")
    written["server"] = str(d / "server.pem")
    for name in clients:
        c = issue(ca, name, server=False, days=days)
        c.write(d / f"client-{name}.pem", d / f"client-{name}-key.pem")
        written[f"client {name}"] = str(d / f"client-{name}.pem")
    return written
