"""TLS certificates for a deployment: a CA made for the run and a SuperLink certificate
signed by it, valid for ``127.0.0.1`` (and ``localhost``), or files the user gives.

Generated with the ``cryptography`` package (a dependency of flwr): an EC P-384 CA and
server key, certificates valid from one hour ago for ``days`` days. The CA's private key
is not kept: nothing else can be signed with it after the run's set-up.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from fedsim.errors import FedsimError


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files of a TLS deployment.

    Attributes:
        ca: the CA certificate the SuperNodes and ``flwr`` trust (``--root-certificates``).
        cert: the SuperLink's certificate (``--ssl-certfile``).
        key: the SuperLink's private key (``--ssl-keyfile``).
    """

    ca: Path
    cert: Path
    key: Path


def make_certificates(folder: Path, host: str = "127.0.0.1", days: int = 2) -> TlsFiles:
    """Write a CA certificate and a server certificate for ``host`` into ``folder``.

    Args:
        folder: where ``ca.pem``, ``server.pem`` and ``server.key`` go (created; the key
            is readable by its owner only).
        host: the SuperLink's address, put in the certificate's SAN as an IP address
            (and ``localhost`` as a DNS name).
        days: validity.

    Returns:
        The three paths.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedsim deploy CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                            crl_sign=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA384()))

    key = ec.generate_private_key(ec.SECP384R1())
    try:
        ip = ipaddress.ip_address(host)
        san = [x509.IPAddress(ip), x509.DNSName("localhost")]
    except ValueError:
        san = [x509.DNSName(host)]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA384()))

    files = TlsFiles(ca=folder / "ca.pem", cert=folder / "server.pem", key=folder / "server.key")
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.touch(mode=0o600)
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return files


def given_certificates(ca: str | Path, cert: str | Path, key: str | Path) -> TlsFiles:
    """The user's PEM files, checked to exist and to parse.

    Raises:
        FedsimError: a file is missing or is not the PEM it should be.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    files = TlsFiles(Path(ca), Path(cert), Path(key))
    for flag, path in (("--tls-ca", files.ca), ("--tls-cert", files.cert),
                       ("--tls-key", files.key)):
        if not path.is_file():
            raise FedsimError(f"{flag}: no such file: {path}")
    try:
        x509.load_pem_x509_certificate(files.ca.read_bytes())
        x509.load_pem_x509_certificate(files.cert.read_bytes())
    except ValueError as err:
        raise FedsimError(f"--tls-ca/--tls-cert: not a PEM certificate ({err})") from None
    try:
        serialization.load_pem_private_key(files.key.read_bytes(), None)
    except (ValueError, TypeError) as err:
        raise FedsimError(f"--tls-key: not an unencrypted PEM private key ({err})") from None
    return files
