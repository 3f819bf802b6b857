"""Test certificates made on the spot (the `cryptography` package): a CA, a server certificate for 127.0.0.1
and localhost, a client certificate, and web config files in exporter-toolkit's format."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _issue(subject: str, key, issuer_name: x509.Name, issuer_key, *, ca: bool = False, usage=None, sans=()):
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(directory: Path, server_name: str = "oa-test-server") -> Pki:
    """A CA and the certificates it signs, written as PEM files under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue("oa-test-ca", ca_key, _name("oa-test-ca"), ca_key, ca=True)
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    sans = (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    server = _issue(server_name, server_key, ca_cert.subject, ca_key, usage=ExtendedKeyUsageOID.SERVER_AUTH, sans=sans)
    client = _issue("oa-test-client", client_key, ca_cert.subject, ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    pki = Pki(directory / "ca.crt", directory / "server.crt", directory / "server.key", directory / "client.crt",
              directory / "client.key")
    pki.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    pki.client_cert.write_bytes(client.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, pki.server_key)
    _write_key(client_key, pki.client_key)
    return pki


def bcrypt_hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def web_config(path: Path, pki: Pki | None = None, users: dict[str, str] | None = None, client_auth: bool = False,
               headers: dict[str, str] | None = None) -> Path:
    """Write a web config file: TLS with `pki`'s server certificate, basic auth for `users` (plain passwords)."""
    lines = []
    if pki is not None:
        lines += ["tls_server_config:", f"  cert_file: {pki.server_cert}", f"  key_file: {pki.server_key}"]
        if client_auth:
            lines += ["  client_auth_type: RequireAndVerifyClientCert", f"  client_ca_file: {pki.ca}"]
    if users:
        lines += ["basic_auth_users:"] + [f"  {user}: '{bcrypt_hash(password)}'" for user, password in users.items()]
    if headers:
        lines += ["http_server_config:", "  headers:"] + [f"    {k}: '{v}'" for k, v in headers.items()]
    path.write_text("\n".join(lines) + "\n")
    return path
