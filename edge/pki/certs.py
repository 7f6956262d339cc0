"""X.509 certificates and their PEM files: issuing a CA and leaf certificates, and reading and writing
key and certificate files crash-safely.

Private keys are PEM files (PKCS#8, unencrypted, mode 0600) like the station key: file permissions are
the protection, and a key file readable by group or others is refused, never silently "fixed". Every
file is written to a temporary name, fsynced and then linked or renamed into place, so a crash leaves
either the old file, the new file, or nothing, never half a key. Both server and client certificates
carry one extended key usage, so no certificate can stand in for another role.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import ipaddress
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge.custody.errors import KeyFileError
from edge.custody.keys import read_pem_file
from edge.durable.files import fsync_dir, remove_stale_temporaries, write_new_file
from edge.pki.names import ORGANIZATION, IdentityError

CA_DAYS = 3650
# Certificates start a little in the past so that a client whose clock is slightly behind accepts them.
BACKDATE = dt.timedelta(minutes=5)
PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644


def certificate_sha256(cert: x509.Certificate | bytes) -> str:
    """Lower-case hex SHA-256 of a certificate's DER encoding (the id the index records)."""
    der = cert if isinstance(cert, bytes) else cert.public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def install_file(path: Path, data: bytes, mode: int, *, replace: bool) -> bool:
    """Write `path` crash-safely. Without `replace`, an existing file is kept and False returned."""
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    write_new_file(tmp, data, mode)
    try:
        if replace:
            os.replace(tmp, path)
        else:
            # link() never replaces: the file appears complete, or another writer's file stays.
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(path.parent)
    return True


def read_pem(path: Path, *, secret: bool) -> bytes:
    """Read a small PEM file; a secret must be a regular file not accessible to group or others."""
    try:
        return read_pem_file(path, what="private key" if secret else "file", secret=secret)
    except KeyFileError as exc:
        raise IdentityError(str(exc)) from None


def load_ec_key(path: Path) -> ec.EllipticCurvePrivateKey:
    data = read_pem(path, secret=True)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (TypeError, ValueError):
        # cryptography's message may quote the file; never pass key material on.
        raise IdentityError(
            f"{path}: expected an unencrypted PEM EC private key, found something else"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise IdentityError(f"{path}: expected an EC (P-256) private key, found {type(key).__name__}")
    return key


def load_cert(path: Path) -> x509.Certificate:
    data = read_pem(path, secret=False)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise IdentityError(f"{path}: expected a PEM certificate, found unparseable data") from None


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def same_public_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return bool(cert.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki))


def subject_name(common_name: str, unit: str | None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION)]
    if unit is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def issue_ca(key: ec.EllipticCurvePrivateKey, central_id: str) -> x509.Certificate:
    now = utc_now()
    subject = subject_name(f"{central_id} evidence CA", None)
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def issue_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    public: ec.EllipticCurvePublicKey,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    *,
    days: int,
    valid_from: dt.datetime | None,
    alt_names: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    start = valid_from if valid_from is not None else utc_now() - BACKDATE
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def alt_names(names: list[str]) -> list[x509.GeneralName]:
    result: list[x509.GeneralName] = []
    for name in names:
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            result.append(x509.DNSName(name.lower()))
    return result


def alt_name_set(names: list[x509.GeneralName]) -> set[str]:
    return {str(n.value).lower() if isinstance(n, x509.DNSName) else str(n.value) for n in names}
