"""The central's identity: its CA, TLS server certificate and Ed25519 signing key, the client
certificates it issues to stations and auditors, and the TLS contexts that enforce them.

Who is who is decided by certificates from the central's own CA only: a station is a client
certificate with subject OU=station and CN=<station id>, an auditor one with OU=auditor and CN=<name>.
Both carry only the clientAuth extended key usage, and the server certificate only serverAuth, so no
certificate can stand in for another role.

Private keys are PEM files (PKCS#8, unencrypted, mode 0600) like the station key: file permissions are
the protection, and a key file readable by group or others is refused, never silently "fixed". Every
file is written to a temporary name, fsynced and then linked or renamed into place, so a crash leaves
either the old file, the new file, or nothing, never half a key. `init_central` never replaces the CA or
the signing key: replacing them would orphan every enrolled station and every receipt.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import ipaddress
import json
import logging
import os
import secrets
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge.central.config import CentralConfig, CentralLayout
from edge.central.index import CentralIndexError, validate_reader_name, validate_station_id
from edge.custody.canonical import parse_json
from edge.custody.errors import CustodyError, KeyFileError
from edge.custody.keys import (
    StationKey,
    _remove_stale_temporaries,
    _write_new_file,
    key_id_of,
    load_public_key,
    public_key_raw,
    read_pem_file,
)
from edge.custody.ledger import station_time_now
from edge.fsutil import fsync_dir

__all__ = [
    "AUDITOR_OU",
    "BUNDLE_CA_CERT",
    "BUNDLE_CENTRAL_SIGNING_PUB",
    "BUNDLE_CLIENT_CERT",
    "BUNDLE_CLIENT_KEY",
    "BUNDLE_ENROLLMENT",
    "SERVER_OU",
    "STATION_OU",
    "CentralIdentity",
    "Enrollment",
    "EnrollmentBundle",
    "IdentityError",
    "PeerIdentityError",
    "certificate_sha256",
    "client_ssl_context",
    "discard_bundle",
    "enroll_reader",
    "enroll_station",
    "init_central",
    "load_signing_key",
    "peer_identity",
    "read_bundle",
    "reader_name_from_peercert",
    "server_ssl_context",
    "station_id_from_peercert",
]

log = logging.getLogger(__name__)

STATION_OU = "station"
AUDITOR_OU = "auditor"
SERVER_OU = "server"
_ORGANIZATION = "evidence-edge"

BUNDLE_CLIENT_CERT = "client.crt"
BUNDLE_CLIENT_KEY = "client.key"
BUNDLE_CA_CERT = "ca.crt"
BUNDLE_CENTRAL_SIGNING_PUB = "central-signing.pub"
BUNDLE_ENROLLMENT = "enrollment.json"
_BUNDLE_FILES = (
    BUNDLE_CLIENT_KEY,
    BUNDLE_CLIENT_CERT,
    BUNDLE_CA_CERT,
    BUNDLE_CENTRAL_SIGNING_PUB,
    BUNDLE_ENROLLMENT,
)

_CA_DAYS = 3650
# Certificates start a little in the past so that a client whose clock is slightly behind accepts them.
_BACKDATE = dt.timedelta(minutes=5)
# `init` reissues a server certificate this close to its end, so a yearly re-run keeps TLS alive.
_RENEW_BEFORE = dt.timedelta(days=30)
_PRIVATE_MODE = 0o600
_PUBLIC_MODE = 0o644


class IdentityError(Exception):
    """The central's identity files are missing, unsafe or inconsistent, or a request cannot be issued."""


class PeerIdentityError(IdentityError):
    """A TLS peer certificate does not name exactly one role (OU) and one identity (CN)."""


# -- results ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CentralIdentity:
    """What `init_central` found or made. `created` and `kept` are sentences for the operator."""

    ca_cert: Path
    ca_sha256: str
    server_cert: Path
    signing_key: StationKey  # its repr shows the key id, never key material
    created: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()


@dataclass(frozen=True)
class Enrollment:
    """A client certificate just issued into a bundle directory (no key material held here)."""

    role: Literal["station", "auditor"]
    name: str
    bundle_dir: Path
    cert_sha256: str
    not_after: dt.datetime
    # The station's Ed25519 ledger key (raw, base64) to record in the index; None for auditors.
    signing_public_key_b64: str | None = None


@dataclass(frozen=True)
class EnrollmentBundle:
    """An enrollment bundle as the station (or auditor tool) reads it: what to present, what to pin."""

    bundle_dir: Path
    role: Literal["station", "auditor"]
    name: str
    central_id: str
    central_signing_key_id: str
    cert_sha256: str
    issued: str
    central_public_key: Ed25519PublicKey = field(repr=False)

    @property
    def client_cert(self) -> Path:
        return self.bundle_dir / BUNDLE_CLIENT_CERT

    @property
    def client_key(self) -> Path:
        return self.bundle_dir / BUNDLE_CLIENT_KEY

    @property
    def ca_cert(self) -> Path:
        return self.bundle_dir / BUNDLE_CA_CERT


# -- names ------------------------------------------------------------------------------------------------


def _checked(
    validate: Callable[[object], str], name: object, error: type[IdentityError] = IdentityError
) -> str:
    """Names are checked in one place (the index's validators); here only the error type changes."""
    try:
        return validate(name)
    except CentralIndexError as exc:
        raise error(str(exc)) from None


def certificate_sha256(cert: x509.Certificate | bytes) -> str:
    """Lower-case hex SHA-256 of a certificate's DER encoding (the id the index records)."""
    der = cert if isinstance(cert, bytes) else cert.public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


# -- files ------------------------------------------------------------------------------------------------


def _install(path: Path, data: bytes, mode: int, *, replace: bool) -> bool:
    """Write `path` crash-safely. Without `replace`, an existing file is kept and False returned."""
    _remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    _write_new_file(tmp, data, mode)
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


def _read_pem(path: Path, *, secret: bool) -> bytes:
    """Read a small PEM file; a secret must be a regular file not accessible to group or others."""
    try:
        return read_pem_file(path, what="private key" if secret else "file", secret=secret)
    except KeyFileError as exc:
        raise IdentityError(str(exc)) from None


def _load_ec_key(path: Path) -> ec.EllipticCurvePrivateKey:
    data = _read_pem(path, secret=True)
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


def _load_cert(path: Path) -> x509.Certificate:
    data = _read_pem(path, secret=False)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise IdentityError(f"{path}: expected a PEM certificate, found unparseable data") from None


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _same_public_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return bool(cert.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki))


# -- certificates -----------------------------------------------------------------------------------------


def _name(common_name: str, unit: str | None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION)]
    if unit is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _issue_ca(key: ec.EllipticCurvePrivateKey, central_id: str) -> x509.Certificate:
    now = _now()
    subject = _name(f"{central_id} evidence CA", None)
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=_CA_DAYS))
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


def _issue_leaf(
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
    start = valid_from if valid_from is not None else _now() - _BACKDATE
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


def _alt_names(names: list[str]) -> list[x509.GeneralName]:
    result: list[x509.GeneralName] = []
    for name in names:
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            result.append(x509.DNSName(name.lower()))
    return result


def _alt_name_set(names: list[x509.GeneralName]) -> set[str]:
    return {str(n.value).lower() if isinstance(n, x509.DNSName) else str(n.value) for n in names}


def _load_ca(layout: CentralLayout) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    if not layout.ca_cert.exists() and not layout.ca_key.exists():
        raise IdentityError(
            f"no central CA in {layout.identity_dir}: run `edge central init --config FILE` first"
        )
    cert = _load_cert(layout.ca_cert)
    key = _load_ec_key(layout.ca_key)
    if not _same_public_key(cert, key):
        raise IdentityError(f"{layout.ca_cert} and {layout.ca_key} do not belong together: one was replaced")
    return cert, key


# -- init -------------------------------------------------------------------------------------------------


def init_central(config: CentralConfig) -> CentralIdentity:
    """Create whatever of the central's identity is missing; never replace the CA or the signing key.

    Idempotent: a second run reports what exists. The server certificate (ours, not a configured one)
    is reissued when it no longer matches `server.names`, the CA or its key, or is about to expire.
    """
    layout = config.layout
    created: list[str] = []
    kept: list[str] = []
    try:
        layout.store_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        layout.identity_dir.mkdir(exist_ok=True, mode=0o700)
    except OSError as exc:
        raise IdentityError(f"cannot create {layout.identity_dir}: {exc.strerror or exc}") from None

    ca_cert, ca_key = _init_ca(layout, config.central.id, created, kept)

    signing_existed = layout.signing_key.exists()
    try:
        signing_key = StationKey.load_or_create(layout.signing_key)
    except CustodyError as exc:
        raise IdentityError(f"central signing key: {exc}") from None
    (kept if signing_existed else created).append(
        f"signing key {signing_key.key_id}: {layout.signing_key} (public: {layout.signing_pub})"
    )

    if config.server.tls_cert is not None:
        kept.append(f"server certificate: configured as {config.server.tls_cert} (not managed by init)")
    else:
        _init_server_cert(config, layout, ca_cert, ca_key, created, kept)

    ca_sha256 = certificate_sha256(ca_cert)
    for line in created:
        log.info("central %s: created %s", config.central.id, line)
    return CentralIdentity(
        ca_cert=layout.ca_cert,
        ca_sha256=ca_sha256,
        server_cert=config.server_cert_path,
        signing_key=signing_key,
        created=tuple(created),
        kept=tuple(kept),
    )


def _init_ca(
    layout: CentralLayout, central_id: str, created: list[str], kept: list[str]
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key_exists, cert_exists = layout.ca_key.exists(), layout.ca_cert.exists()
    if cert_exists and not key_exists:
        raise IdentityError(
            f"{layout.ca_cert} exists but its key {layout.ca_key} does not: the CA cannot issue "
            f"certificates. Restore the key from backup; init will not make a new CA over the old one"
        )
    if key_exists and cert_exists:
        cert, key = _load_ca(layout)
        kept.append(f"CA (sha256 {certificate_sha256(cert)}): {layout.ca_cert}")
        return cert, key
    if key_exists:
        # An init interrupted between the key and the certificate: nothing was issued by this key yet.
        key = _load_ec_key(layout.ca_key)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        if not _install(layout.ca_key, _key_pem(key), _PRIVATE_MODE, replace=False):
            key = _load_ec_key(layout.ca_key)  # a concurrent init won; use its key
    cert = _issue_ca(key, central_id)
    if not _install(layout.ca_cert, _cert_pem(cert), _PUBLIC_MODE, replace=False):
        cert, key = _load_ca(layout)
        kept.append(f"CA (sha256 {certificate_sha256(cert)}): {layout.ca_cert}")
        return cert, key
    created.append(f"CA (sha256 {certificate_sha256(cert)}, valid 10 years): {layout.ca_cert}")
    return cert, key


def _server_cert_problem(
    config: CentralConfig, ca_cert: x509.Certificate, layout: CentralLayout
) -> str | None:
    """Why the existing server certificate must be reissued, or None when it is fine."""
    if not layout.server_cert.exists() or not layout.server_key.exists():
        return "missing"
    try:
        cert = _load_cert(layout.server_cert)
        key = _load_ec_key(layout.server_key)
    except IdentityError as exc:
        return f"unusable ({exc})"
    if not _same_public_key(cert, key):
        return "its key does not match"
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return "not issued by the current CA"
    if cert.not_valid_after_utc - _now() < _RENEW_BEFORE:
        return f"expires {cert.not_valid_after_utc:%Y-%m-%d}"
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "it has no subjectAltName"
    if _alt_name_set(list(sans)) != _alt_name_set(_alt_names(config.server.names)):
        return "server.names changed"
    return None


def _init_server_cert(
    config: CentralConfig,
    layout: CentralLayout,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    created: list[str],
    kept: list[str],
) -> None:
    problem = _server_cert_problem(config, ca_cert, layout)
    if problem is None:
        kept.append(f"server certificate for {', '.join(config.server.names)}: {layout.server_cert}")
        return
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue_leaf(
        ca_cert,
        ca_key,
        key.public_key(),
        _name(config.central.id, SERVER_OU),
        ExtendedKeyUsageOID.SERVER_AUTH,
        days=config.identity.server_cert_days,
        valid_from=None,
        alt_names=_alt_names(config.server.names),
    )
    # Key first: a crash before the certificate leaves a mismatch that the next init repairs.
    _install(layout.server_key, _key_pem(key), _PRIVATE_MODE, replace=True)
    _install(layout.server_cert, _cert_pem(cert), _PUBLIC_MODE, replace=True)
    reason = "" if problem == "missing" else f" (reissued: {problem})"
    created.append(
        f"server certificate for {', '.join(config.server.names)}{reason}, valid until "
        f"{cert.not_valid_after_utc:%Y-%m-%d}: {layout.server_cert}"
    )


def load_signing_key(config: CentralConfig) -> StationKey:
    """The central's Ed25519 signing key (tree heads, receipts); never creates one (that is `init`)."""
    path = config.layout.signing_key
    if not path.exists():
        raise IdentityError(f"no central signing key at {path}: run `edge central init --config FILE` first")
    try:
        return StationKey.load_or_create(path)
    except CustodyError as exc:
        raise IdentityError(f"central signing key: {exc}") from None


# -- enrollment -------------------------------------------------------------------------------------------


def enroll_station(
    config: CentralConfig,
    station_id: str,
    *,
    signing_key_pub: Path,
    out_dir: Path,
    days: int | None = None,
    valid_from: dt.datetime | None = None,
) -> Enrollment:
    """Issue a station's client certificate and write its enrollment bundle into `out_dir`.

    `signing_key_pub` is the station's Ed25519 ledger public key (PEM, `signing.key.pub` beside its
    key); the returned `Enrollment` carries it (base64) and the certificate's SHA-256 for the index.
    `valid_from`/`days` override the validity (tests issue expired certificates this way).
    """
    _checked(validate_station_id, station_id)
    try:
        station_pub = load_public_key(Path(signing_key_pub))
    except CustodyError as exc:
        raise IdentityError(f"--signing-key: {exc}") from None
    central_key = load_signing_key(config)
    if public_key_raw(station_pub) == public_key_raw(central_key.public_key()):
        raise IdentityError(
            f"{signing_key_pub} is the central's own signing key, not the station's ledger key "
            f"(the station's is signing.key.pub in its store)"
        )
    enrollment = _enroll(
        config,
        "station",
        station_id,
        out_dir=Path(out_dir),
        days=config.identity.station_cert_days if days is None else days,
        valid_from=valid_from,
        central_key=central_key,
    )
    return Enrollment(
        role=enrollment.role,
        name=enrollment.name,
        bundle_dir=enrollment.bundle_dir,
        cert_sha256=enrollment.cert_sha256,
        not_after=enrollment.not_after,
        signing_public_key_b64=base64.b64encode(public_key_raw(station_pub)).decode("ascii"),
    )


def enroll_reader(
    config: CentralConfig,
    name: str,
    *,
    out_dir: Path,
    days: int | None = None,
    valid_from: dt.datetime | None = None,
) -> Enrollment:
    """Issue an auditor's client certificate (OU=auditor) and write its bundle into `out_dir`."""
    _checked(validate_reader_name, name)
    return _enroll(
        config,
        "auditor",
        name,
        out_dir=Path(out_dir),
        days=config.identity.reader_cert_days if days is None else days,
        valid_from=valid_from,
        central_key=load_signing_key(config),
    )


def _enroll(
    config: CentralConfig,
    role: Literal["station", "auditor"],
    name: str,
    *,
    out_dir: Path,
    days: int,
    valid_from: dt.datetime | None,
    central_key: StationKey,
) -> Enrollment:
    if days <= 0:
        raise IdentityError(f"certificate validity: expected a positive number of days, found {days}")
    ca_cert, ca_key = _load_ca(config.layout)
    _prepare_bundle_dir(out_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue_leaf(
        ca_cert,
        ca_key,
        key.public_key(),
        _name(name, STATION_OU if role == "station" else AUDITOR_OU),
        ExtendedKeyUsageOID.CLIENT_AUTH,
        days=days,
        valid_from=valid_from,
    )
    cert_sha256 = certificate_sha256(cert)
    record = {
        "station" if role == "station" else "reader": name,
        "central_id": config.central.id,
        "central_signing_key_id": central_key.key_id,
        "cert_sha256": cert_sha256,
        "issued": station_time_now(),
    }
    contents = {
        BUNDLE_CLIENT_KEY: (_key_pem(key), _PRIVATE_MODE),
        BUNDLE_CLIENT_CERT: (_cert_pem(cert), _PUBLIC_MODE),
        BUNDLE_CA_CERT: (_cert_pem(ca_cert), _PUBLIC_MODE),
        BUNDLE_CENTRAL_SIGNING_PUB: (central_key.public_pem(), _PUBLIC_MODE),
        # Last: its presence marks a complete bundle.
        BUNDLE_ENROLLMENT: ((json.dumps(record, indent=2) + "\n").encode("utf-8"), _PUBLIC_MODE),
    }
    try:
        for filename, (data, mode) in contents.items():
            if not _install(out_dir / filename, data, mode, replace=False):
                raise IdentityError(f"{out_dir / filename} appeared while the bundle was being written")
    except BaseException:
        discard_bundle(out_dir)
        raise
    log.info(
        "issued %s certificate for %s (sha256 %s, valid until %s) into %s",
        role,
        name,
        cert_sha256,
        f"{cert.not_valid_after_utc:%Y-%m-%d}",
        out_dir,
    )
    return Enrollment(
        role=role,
        name=name,
        bundle_dir=out_dir,
        cert_sha256=cert_sha256,
        not_after=cert.not_valid_after_utc,
    )


def _prepare_bundle_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise IdentityError(f"cannot create bundle directory {out_dir}: {exc.strerror or exc}") from None
    if not out_dir.is_dir():
        raise IdentityError(f"{out_dir}: expected a directory for the enrollment bundle")
    leftovers = sorted(p.name for p in out_dir.iterdir())
    if leftovers:
        raise IdentityError(
            f"{out_dir} is not empty ({', '.join(leftovers[:5])}): a bundle is never written over another; "
            f"choose a new --out directory"
        )


def discard_bundle(bundle_dir: Path) -> None:
    """Remove the files of a bundle (for example when recording it in the index failed)."""
    for filename in _BUNDLE_FILES:
        with contextlib.suppress(FileNotFoundError):
            (bundle_dir / filename).unlink()
    with contextlib.suppress(OSError):
        bundle_dir.rmdir()  # only when nothing else is in it


def read_bundle(bundle_dir: Path) -> EnrollmentBundle:
    """Read and cross-check an enrollment bundle: the pinned central key and the certificate's hash."""
    bundle_dir = Path(bundle_dir)
    raw = _read_pem(bundle_dir / BUNDLE_ENROLLMENT, secret=False)
    try:
        doc = parse_json(raw)
    except CustodyError as exc:
        raise IdentityError(f"{bundle_dir / BUNDLE_ENROLLMENT}: {exc}") from None
    if not isinstance(doc, dict):
        raise IdentityError(f"{bundle_dir / BUNDLE_ENROLLMENT}: expected a JSON object")
    role: Literal["station", "auditor"] = "station" if "station" in doc else "auditor"
    expected = {
        "station" if role == "station" else "reader",
        "central_id",
        "central_signing_key_id",
        "cert_sha256",
        "issued",
    }
    if set(doc) != expected or not all(isinstance(v, str) for v in doc.values()):
        raise IdentityError(
            f"{bundle_dir / BUNDLE_ENROLLMENT}: expected string fields {sorted(expected)}, "
            f"found {sorted(doc)}"
        )
    try:
        central_pub = load_public_key(bundle_dir / BUNDLE_CENTRAL_SIGNING_PUB)
    except CustodyError as exc:
        raise IdentityError(str(exc)) from None
    if key_id_of(central_pub) != doc["central_signing_key_id"]:
        raise IdentityError(
            f"{bundle_dir / BUNDLE_CENTRAL_SIGNING_PUB} is key {key_id_of(central_pub)}, but the enrollment "
            f"names {doc['central_signing_key_id']}: one of the files was replaced"
        )
    cert = _load_cert(bundle_dir / BUNDLE_CLIENT_CERT)
    if certificate_sha256(cert) != doc["cert_sha256"]:
        raise IdentityError(
            f"{bundle_dir / BUNDLE_CLIENT_CERT} has sha256 {certificate_sha256(cert)}, but the enrollment "
            f"names {doc['cert_sha256']}: one of the files was replaced"
        )
    return EnrollmentBundle(
        bundle_dir=bundle_dir,
        role=role,
        name=_checked(
            validate_station_id if role == "station" else validate_reader_name,
            doc["station" if role == "station" else "reader"],
        ),
        central_id=doc["central_id"],
        central_signing_key_id=doc["central_signing_key_id"],
        cert_sha256=doc["cert_sha256"],
        issued=doc["issued"],
        central_public_key=central_pub,
    )


# -- TLS --------------------------------------------------------------------------------------------------


def _harden(context: ssl.SSLContext) -> None:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # RFC 5280 rules enforced by OpenSSL (critical basicConstraints on CAs, key identifiers, ...).
    context.verify_flags |= ssl.VERIFY_X509_STRICT


def _load_chain(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    _read_pem(key, secret=True)  # refuses a missing or over-permissive key with a clear message
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except FileNotFoundError:
        raise IdentityError(f"{cert} does not exist") from None
    except (ssl.SSLError, OSError) as exc:
        raise IdentityError(f"cannot use certificate {cert} with key {key}: {exc}") from None


def _load_ca_file(context: ssl.SSLContext, ca: Path) -> None:
    try:
        context.load_verify_locations(cafile=str(ca))
    except FileNotFoundError:
        raise IdentityError(f"CA certificate {ca} does not exist") from None
    except (ssl.SSLError, OSError) as exc:
        raise IdentityError(f"cannot load CA certificate {ca}: {exc}") from None


def server_ssl_context(config: CentralConfig) -> ssl.SSLContext:
    """TLS >= 1.2 server context: presents the server certificate, requires a client certificate
    issued by the central CA (and only that CA: no system trust store)."""
    layout = config.layout
    made_by_init = [layout.ca_cert] + (
        [layout.server_cert, layout.server_key] if config.server.tls_cert is None else []
    )
    missing = [str(path) for path in made_by_init if not path.exists()]
    if missing:
        raise IdentityError(f"{', '.join(missing)} missing: run `edge central init --config FILE` first")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context)
    context.verify_mode = ssl.CERT_REQUIRED
    _load_chain(context, config.server_cert_path, config.server_key_path)
    _load_ca_file(context, config.layout.ca_cert)
    return context


def client_ssl_context(bundle_dir: Path) -> ssl.SSLContext:
    """TLS >= 1.2 client context for a station or auditor: trusts only the central CA of the bundle,
    checks the server's name, and presents the bundle's client certificate."""
    bundle_dir = Path(bundle_dir)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(context)
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    _load_ca_file(context, bundle_dir / BUNDLE_CA_CERT)
    _load_chain(context, bundle_dir / BUNDLE_CLIENT_CERT, bundle_dir / BUNDLE_CLIENT_KEY)
    return context


def peer_identity(peercert: Mapping[str, Any] | None) -> tuple[str, str]:
    """(CN, OU) of a verified peer certificate as `SSLSocket.getpeercert()` returns it.

    Raises `PeerIdentityError` when there is no certificate, or its subject lacks exactly one CN and
    exactly one OU, or the CN is not a valid name (then it was not issued by `edge central enroll`).
    """
    if not peercert:
        raise PeerIdentityError("no client certificate: station and auditor endpoints require one (mTLS)")
    subject = peercert.get("subject")
    found: dict[str, list[str]] = {"commonName": [], "organizationalUnitName": []}
    try:
        for rdn in subject or ():
            for key, value in rdn:
                if key in found:
                    found[key].append(str(value))
    except (TypeError, ValueError):
        raise PeerIdentityError(f"client certificate subject is malformed: {str(subject)[:200]!r}") from None
    cns, ous = found["commonName"], found["organizationalUnitName"]
    if len(cns) != 1 or len(ous) != 1:
        raise PeerIdentityError(
            f"client certificate subject must have exactly one CN and one OU, found CN={cns} OU={ous}"
        )
    # Station ids and reader names follow one rule; a CN outside it was not issued by `enroll`.
    return _checked(validate_station_id, cns[0], PeerIdentityError), ous[0]


def station_id_from_peercert(peercert: Mapping[str, Any] | None) -> str:
    """The station id of a station certificate (OU=station); `PeerIdentityError` for any other."""
    name, unit = peer_identity(peercert)
    if unit != STATION_OU:
        raise PeerIdentityError(
            f"expected a station certificate (OU={STATION_OU}), found OU={unit!r} for {name!r}"
        )
    return name


def reader_name_from_peercert(peercert: Mapping[str, Any] | None) -> str:
    """The auditor name of an auditor certificate (OU=auditor); `PeerIdentityError` for any other."""
    name, unit = peer_identity(peercert)
    if unit != AUDITOR_OU:
        raise PeerIdentityError(
            f"expected an auditor certificate (OU={AUDITOR_OU}), found OU={unit!r} for {name!r}"
        )
    return name
