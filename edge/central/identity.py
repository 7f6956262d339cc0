"""The central's identity: its CA, TLS server certificate and Ed25519 signing key, and the enrollment of
stations and auditors (client certificates written into bundles, see `edge.pki`).

`init_central` never replaces the CA or the signing key: replacing them would orphan every enrolled
station and every receipt. A store whose Merkle log holds signed tree heads refuses to start (and `init`
refuses to make a key) when the signing key is missing or is not the key those heads were signed with.
"""

from __future__ import annotations

import base64
import datetime as dt
import fcntl
import logging
import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from edge.central.backends import DatabaseUnavailable, database_where, signed_head_summary
from edge.central.config import CentralConfig, CentralLayout
from edge.central.index import CentralIndexError
from edge.central.sqlite import SqliteDatabase
from edge.custody.errors import CustodyError
from edge.custody.keys import StationKey, load_public_key, public_key_raw
from edge.custody.ledger import station_time_now
from edge.durable.files import ensure_private_dir, fsync_dir
from edge.durable.lock import StoreLock
from edge.pki import tls
from edge.pki.bundle import Enrollment, prepare_bundle_dir, write_bundle
from edge.pki.certs import (
    PRIVATE_MODE,
    alt_name_set,
    alt_names,
    cert_pem,
    certificate_sha256,
    install_file,
    issue_ca,
    issue_leaf,
    key_pem,
    load_cert,
    load_ec_key,
    same_public_key,
    subject_name,
    utc_now,
)
from edge.pki.names import (
    AUDITOR_OU,
    SERVER_OU,
    STATION_OU,
    IdentityError,
    checked_name,
    validate_reader_name,
    validate_station_id,
)

log = logging.getLogger(__name__)

# `init` reissues a server certificate this close to its end, so a yearly re-run keeps TLS alive.
_RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class CentralIdentity:
    """What `init_central` found or made. `created` and `kept` are sentences for the operator."""

    ca_cert: Path
    ca_sha256: str
    server_cert: Path
    signing_key: StationKey  # its repr shows the key id, never key material
    created: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()


def load_ca(layout: CentralLayout) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    if not layout.ca_cert.exists() and not layout.ca_key.exists():
        raise IdentityError(
            f"no central CA in {layout.identity_dir}: run `edge central init --config FILE` first"
        )
    cert = load_cert(layout.ca_cert)
    key = load_ec_key(layout.ca_key)
    if not same_public_key(cert, key):
        raise IdentityError(f"{layout.ca_cert} and {layout.ca_key} do not belong together: one was replaced")
    return cert, key


def load_central_ca(layout: CentralLayout) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The central's CA certificate and key (they must belong together); IdentityError before `init`."""
    return load_ca(layout)


def _refuse_central_id(config: CentralConfig, name: str, kind: str) -> None:
    """No station or auditor under the central's own id: the agency broker takes a certificate's CN as
    the user name, and the user named like the central id reads every station's topics."""
    if name == config.central.id:
        raise IdentityError(
            f"{name!r} is the central's own id: a certificate for {kind} {name!r} would be the central "
            f"on the MQTT broker (config/mosquitto/acl). Choose another name"
        )


def init_central(config: CentralConfig) -> CentralIdentity:
    """Create whatever of the central's identity is missing; never replace the CA or the signing key.

    Idempotent: a second run reports what exists. The server certificate (ours, not a configured one)
    is reissued when it no longer matches `server.names`, the CA or its key, or is about to expire.
    """
    layout = config.layout
    created: list[str] = []
    kept: list[str] = []
    try:
        ensure_private_dir(layout.store_dir)  # certificates too: nothing in a store is for other users
        ensure_private_dir(layout.identity_dir)
    except OSError as exc:
        raise IdentityError(f"cannot create {layout.identity_dir}: {exc.strerror or exc}") from None

    ca_cert, ca_key = _init_ca(layout, config.central.id, created, kept)

    signing_existed = layout.signing_key.exists()
    if not signing_existed:
        _refuse_new_signing_key(config)
    try:
        signing_key = StationKey.load_or_create(layout.signing_key)
    except CustodyError as exc:
        raise IdentityError(f"central signing key: {exc}") from None
    _check_signing_key(config, signing_key)
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
        cert, key = load_ca(layout)
        kept.append(f"CA (sha256 {certificate_sha256(cert)}): {layout.ca_cert}")
        return cert, key
    if key_exists:
        # An init interrupted between the key and the certificate: nothing was issued by this key yet.
        key = load_ec_key(layout.ca_key)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        if not install_file(layout.ca_key, key_pem(key), PRIVATE_MODE, replace=False):
            key = load_ec_key(layout.ca_key)  # a concurrent init won; use its key
    cert = issue_ca(key, central_id)
    if not install_file(layout.ca_cert, cert_pem(cert), PRIVATE_MODE, replace=False):
        cert, key = load_ca(layout)
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
        cert = load_cert(layout.server_cert)
        key = load_ec_key(layout.server_key)
    except IdentityError as exc:
        return f"unusable ({exc})"
    if not same_public_key(cert, key):
        return "its key does not match"
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return "not issued by the current CA"
    if cert.not_valid_after_utc - utc_now() < _RENEW_BEFORE:
        return f"expires {cert.not_valid_after_utc:%Y-%m-%d}"
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "it has no subjectAltName"
    if alt_name_set(list(sans)) != alt_name_set(alt_names(config.server.names)):
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
    cert = issue_leaf(
        ca_cert,
        ca_key,
        key.public_key(),
        subject_name(config.central.id, SERVER_OU),
        ExtendedKeyUsageOID.SERVER_AUTH,
        days=config.identity.server_cert_days,
        valid_from=None,
        alt_names=alt_names(config.server.names),
    )
    # Key first: a crash before the certificate leaves a mismatch that the next init repairs.
    install_file(layout.server_key, key_pem(key), PRIVATE_MODE, replace=True)
    install_file(layout.server_cert, cert_pem(cert), PRIVATE_MODE, replace=True)
    reason = "" if problem == "missing" else f" (reissued: {problem})"
    created.append(
        f"server certificate for {', '.join(config.server.names)}{reason}, valid until "
        f"{cert.not_valid_after_utc:%Y-%m-%d}: {layout.server_cert}"
    )


def load_signing_key(config: CentralConfig) -> StationKey:
    """The central's Ed25519 signing key (tree heads, receipts); never creates one (that is `init`).

    Refuses a key that is not the one the Merkle log's newest signed tree head names."""
    layout = config.layout
    path = layout.signing_key
    if not path.exists():
        _refuse_new_signing_key(config)
        raise IdentityError(f"no central signing key at {path}: run `edge central init --config FILE` first")
    try:
        key = StationKey.load_or_create(path)
    except CustodyError as exc:
        raise IdentityError(f"central signing key: {exc}") from None
    _check_signing_key(config, key)
    return key


def lock_central_store(config: CentralConfig, *, purpose: str) -> StoreLock:
    """Take the central store's lock (one process serving or initialising a store); raises
    :class:`edge.durable.lock.StoreBusy` naming the holder, :class:`IdentityError` when the store
    directory cannot be used."""
    store_dir = config.central.store_dir
    try:
        ensure_private_dir(store_dir)
        return StoreLock.acquire(
            store_dir,
            purpose=purpose,
            advice="Stop it first (systemctl stop edge-central) or wait until it is done; enroll and "
            "revoke work beside a running central",
        )
    except OSError as exc:
        raise IdentityError(f"central store {store_dir} cannot be used: {exc.strerror or exc}") from None


def _signed_heads(config: CentralConfig) -> tuple[int, str | None, str | None]:
    """How many tree heads the central's Merkle log holds, and the key id and time of the newest."""
    unreadable: tuple[type[Exception], ...] = (CentralIndexError, *SqliteDatabase.errors)
    try:
        return signed_head_summary(config)
    except DatabaseUnavailable:
        raise  # the server is down or refuses us: not a problem of the identity (the start is retried)
    except unreadable as exc:
        raise IdentityError(f"cannot read the Merkle log in {database_where(config)}: {exc}") from None


def _refuse_new_signing_key(config: CentralConfig) -> None:
    """A missing signing key is made anew only for a central that never signed anything."""
    layout = config.layout
    count, key_id, time = _signed_heads(config)
    if count:
        raise IdentityError(
            f"the central signing key {layout.signing_key} is missing, but the Merkle log in "
            f"{database_where(config)} holds {count} tree head(s) signed with key {key_id} (the newest at "
            f"{time}). A new key would orphan every receipt and every station that pinned key {key_id}, "
            f"so none is made: restore {layout.signing_key.name} from backup (mode 0600)"
        )


def _check_signing_key(config: CentralConfig, key: StationKey) -> None:
    layout = config.layout
    _count, key_id, time = _signed_heads(config)
    if key_id is not None and key_id != key.key_id:
        raise IdentityError(
            f"{layout.signing_key} is key {key.key_id}, but the Merkle log's newest tree head (at {time}) "
            f"is signed with key {key_id}: the signing key was replaced. Restore key {key_id} from backup"
        )


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
    checked_name(validate_station_id, station_id)
    _refuse_central_id(config, station_id, "station")
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
    checked_name(validate_reader_name, name)
    _refuse_central_id(config, name, "auditor")
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
    ca_cert, ca_key = load_ca(config.layout)
    prepare_bundle_dir(out_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue_leaf(
        ca_cert,
        ca_key,
        key.public_key(),
        subject_name(name, STATION_OU if role == "station" else AUDITOR_OU),
        ExtendedKeyUsageOID.CLIENT_AUTH,
        days=days,
        valid_from=valid_from,
    )
    cert_sha256 = certificate_sha256(cert)
    keep_issued(config.layout, cert, newly_issued=True)
    record = {
        "station" if role == "station" else "reader": name,
        "central_id": config.central.id,
        "central_signing_key_id": central_key.key_id,
        "cert_sha256": cert_sha256,
        "issued": station_time_now(),
    }
    write_bundle(
        out_dir,
        key_pem=key_pem(key),
        cert_pem=cert_pem(cert),
        ca_pem=cert_pem(ca_cert),
        central_signing_pub_pem=central_key.public_pem(),
        record=record,
    )
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


def keep_issued(layout: CentralLayout, cert: x509.Certificate, *, newly_issued: bool) -> None:
    """Keep a copy of an issued certificate (station, auditor, the central's broker identity, the broker's
    server certificate) before it leaves the central: the revocation list (edge.central.revocation) names
    a replaced or revoked certificate by its serial number. Keeping one already kept is a no-op.

    `newly_issued`: the CA issued it just now, so it is recorded last in the issue order (before its copy
    is written: a crash between the two leaves an order line without a copy, harmless, never a copy
    without its place). A certificate imported later (`keep-issued`) is not: it was issued before the CA
    recorded the order, so it is older than every certificate in it."""
    try:
        ensure_private_dir(layout.issued_dir)
        if newly_issued:
            # Two copies, one outside identity/: restoring identity/ from a backup cannot lose the place of a
            # certificate issued since (issue_order reads both).
            _record_issue_order(layout.issue_order_file, certificate_sha256(cert))
            _record_issue_order(layout.issue_order_copy_file, certificate_sha256(cert))
        # Private like everything in the store (tests/station/test_durability.py): only the CRL leaves it.
        install_file(layout.issued_dir / f"{certificate_sha256(cert)}.crt", cert_pem(cert), PRIVATE_MODE,
                     replace=False)
    except OSError as exc:
        raise IdentityError(f"cannot keep the issued certificate in {layout.issued_dir}: "
                            f"{exc.strerror or exc}") from None


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _record_issue_order(path: Path, sha256: str) -> None:
    """Append `sha256` to the issue order, durably, under an exclusive lock on the file (two `enroll`s at
    once each get their own whole line)."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, PRIVATE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        # A line torn by a crash is ended first, so that it cannot swallow this one.
        torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
        line = ("\n" if torn else "") + sha256 + "\n"
        os.write(fd, line.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    if size == 0:
        fsync_dir(path.parent)


def issue_order(layout: CentralLayout) -> dict[str, int]:
    """The place of each certificate in the order the CA issued it (0: the first recorded; the SHA-256 of
    the certificate as key). A certificate absent from it was issued before the CA recorded the order (an
    earlier release, or imported with `keep-issued`): older than every one in it. The order is that of
    issuance on this CA, not of any clock, so a certificate made while the clock was wrong, or with a
    backdated notBefore, keeps its true place. A damaged line is skipped, loudly.

    The order is kept twice, ``identity/issued.order`` and ``<store_dir>/issued-order.copy`` (every
    issuance appends to both): when one of them comes back from a backup, it lacks the certificates issued
    since the backup, while every one issued after the restore is appended to both, so the other holds all
    of its lines. The copy that holds every line of the other one is the order (identity/'s when both
    hold the same); when neither does (both restored from different backups), the longer one, then the
    other's lines it lacks."""
    primary, other = _order_lines(layout.issue_order_file), _order_lines(layout.issue_order_copy_file)
    if not set(other) <= set(primary) and (set(primary) <= set(other) or len(other) > len(primary)):
        primary, other = other, primary
    places: dict[str, int] = {}
    for line in [*primary, *other]:
        places.setdefault(line, len(places))
    return places


def _order_lines(path: Path) -> list[str]:
    """The SHA-256 lines of one copy of the issue order (none when missing or unreadable, logged)."""
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.error("cannot read the CA's issue order %s (%s): the other copy is used", path,
                  exc.strerror or exc)
        return []
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not _SHA256_HEX.fullmatch(line):
            if line:
                log.error("the CA's issue order %s: line %d is not a SHA-256, skipped", path, number)
            continue
        lines.append(line)
    return lines


def server_ssl_context(config: CentralConfig) -> ssl.SSLContext:
    """The central's TLS server context (see `edge.pki.tls.server_ssl_context`), from its files."""
    layout = config.layout
    made_by_init = [layout.ca_cert] + (
        [layout.server_cert, layout.server_key] if config.server.tls_cert is None else []
    )
    missing = [str(path) for path in made_by_init if not path.exists()]
    if missing:
        raise IdentityError(f"{', '.join(missing)} missing: run `edge central init --config FILE` first")
    return tls.server_ssl_context(config.server_cert_path, config.server_key_path, layout.ca_cert)
