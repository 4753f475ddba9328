"""TLS material for a pilot: a private CA and a server certificate for the SuperLink.

``create_pilot_certs(out_dir)`` writes, with the ``cryptography`` package only:

* ``ca.crt`` / ``ca.key``        a self-signed CA (ECDSA P-256, 1 year);
* ``server.crt`` / ``server.key`` the SuperLink's certificate, signed by the CA, with
  subject alternative names for every host the SuperNodes will dial (IP addresses and
  DNS names), usable for TLS server authentication only.

Private keys are created with mode 0600 (never group or world readable). The CA key is
needed only to issue certificates: keep it offline after the pilot is set up. Every
SuperNode (and the ``flwr`` CLI) needs only ``ca.crt``, to authenticate the SuperLink.

Command line (wired to ``secure-fl certs``)::

    secure-fl certs --out certs --host 127.0.0.1 --host localhost --host superlink.example.org
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secure_fl.errors import ConfigError, SecureFLError

__all__ = ["PilotCerts", "certs_main", "create_pilot_certs"]

_VALIDITY = dt.timedelta(days=365)


@dataclass(frozen=True)
class PilotCerts:
    """Paths of the files written by :func:`create_pilot_certs`."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def _subject_alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        if not isinstance(host, str) or not host.strip():
            raise ConfigError(f"host names must be non-empty strings, got {host!r}", field="hosts")
        host = host.strip()
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    if not names:
        raise ConfigError("give at least one host name or IP address", field="hosts")
    return names


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 from the start (no window with wider permissions)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)  # in case the umask was stricter than needed: exactly 0600


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def create_pilot_certs(
    out_dir: str | os.PathLike[str],
    *,
    hosts: Sequence[str] = ("127.0.0.1", "localhost"),
    organization: str = "secure-fl pilot",
    overwrite: bool = False,
) -> PilotCerts:
    """Create a pilot CA and a SuperLink server certificate in ``out_dir``.

    ``hosts`` are the names and addresses the SuperNodes use to reach the SuperLink;
    each becomes a subject alternative name (TLS clients check the name they dialled
    against these, so a certificate for ``127.0.0.1`` does not work for a LAN address).
    Refuses to replace existing files unless ``overwrite``.
    """
    names = _subject_alt_names(hosts)
    out = Path(out_dir)
    files = PilotCerts(out / "ca.crt", out / "ca.key", out / "server.crt", out / "server.key")
    existing = [p for p in (files.ca_cert, files.ca_key, files.server_cert, files.server_key) if p.exists()]
    if existing and not overwrite:
        raise ConfigError(
            f"{existing[0]} already exists; pass overwrite=True (--force) to replace the pilot certificates",
            field="out_dir",
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {out}: {exc.strerror}", field="out_dir") from exc

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{organization} CA"),
        ]
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                    x509.NameAttribute(NameOID.COMMON_NAME, hosts[0].strip()),
                ]
            )
        )
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    try:
        _write_private(files.ca_key, _key_pem(ca_key))
        _write_private(files.server_key, _key_pem(server_key))
        files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        files.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    except OSError as exc:
        raise ConfigError(f"cannot write certificates to {out}: {exc.strerror}", field="out_dir") from exc
    return files


def certs_main(argv: Sequence[str] | None = None) -> int:
    """``secure-fl certs``: create the pilot CA and SuperLink certificate; exit status."""
    parser = argparse.ArgumentParser(
        prog="secure-fl certs",
        description="Create a private CA and a TLS server certificate for the Flower SuperLink.",
    )
    parser.add_argument("--out", default="certs", help="output directory (default: ./certs)")
    parser.add_argument(
        "--host",
        action="append",
        dest="hosts",
        metavar="NAME_OR_IP",
        help="a name or IP address SuperNodes use to reach the SuperLink (repeatable; "
        "default: 127.0.0.1 and localhost)",
    )
    parser.add_argument("--force", action="store_true", help="replace existing files")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        files = create_pilot_certs(
            args.out, hosts=tuple(args.hosts or ("127.0.0.1", "localhost")), overwrite=args.force
        )
    except SecureFLError as exc:
        print(f"secure-fl certs: error: {exc}", file=sys.stderr)
        return 2
    print(f"CA certificate     {files.ca_cert}   (give to every SuperNode and to flwr)")
    print(f"CA key             {files.ca_key}   (0600; keep offline)")
    print(f"server certificate {files.server_cert}")
    print(f"server key         {files.server_key}   (0600; SuperLink only)")
    return 0


if __name__ == "__main__":
    raise SystemExit(certs_main())
