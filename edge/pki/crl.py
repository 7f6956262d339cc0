"""Certificate revocation lists (X.509 CRL, RFC 5280) of the central's CA: built, written and read.

The central's CA signs a CRL naming every client certificate it issued that no longer stands (replaced
by a re-enrolment, or revoked); the broker loads it (Mosquitto `crlfile`) and refuses those certificates
at the TLS handshake. HTTPS does not need it (the central compares the presented certificate with the
enrolled one), MQTT does: behind the broker the central never sees a certificate.

A CRL carries a next update: a verifier that checks it (OpenSSL, so Mosquitto) treats a CRL past it as
expired and refuses every certificate of the CA, so it is rewritten well before (`edge central crl`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge.durable.files import SmallFileError, read_small_file
from edge.pki.certs import PUBLIC_MODE, install_file
from edge.pki.names import IdentityError

# How long a CRL stays valid; `edge central crl` run daily (cron or a systemd timer) renews it long before.
CRL_VALIDITY = dt.timedelta(days=30)
# The largest list read (the 64 KiB cap of keys and certificates holds only ~900 entries). An entry takes
# about 72 bytes of PEM (a random 159-bit serial, a date, a reason: 718 055 bytes for 10 000 entries, 386
# for none, measured with build_crl), so 8 MiB hold ~116 000 listed certificates: every station and reader
# certificate an agency of thousands of stations replaces within their 730 days, several times over; still
# a bounded read.
MAX_CRL_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class RevokedCertificate:
    """One certificate the CRL names: its serial number, since when, and why (RFC 5280 reason code)."""

    serial: int
    revoked_at: dt.datetime
    reason: x509.ReasonFlags


def build_crl(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    revoked: Iterable[RevokedCertificate],
    *,
    now: dt.datetime,
    validity: dt.timedelta = CRL_VALIDITY,
) -> x509.CertificateRevocationList:
    """A CRL signed by the CA, issued `now`, next update `now + validity`, numbered by its issue time
    (a CRL number must grow: a later CRL of the same CA gets a larger one)."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(now + validity)
        .add_extension(x509.CRLNumber(int(now.timestamp() * 1_000_000)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    for entry in sorted(revoked, key=lambda item: item.serial):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(entry.serial)
            .revocation_date(min(entry.revoked_at, now))
            .add_extension(x509.CRLReason(entry.reason), critical=False)
            .build()
        )
    return builder.sign(ca_key, hashes.SHA256())


def crl_pem(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)


def write_crl(path: Path, crl: x509.CertificateRevocationList) -> None:
    """Replace `path` crash-safely with `crl` (PEM, world-readable: a CRL is public)."""
    install_file(path, crl_pem(crl), PUBLIC_MODE, replace=True)


def load_crl(path: Path) -> x509.CertificateRevocationList:
    """The PEM list at `path` (at most `MAX_CRL_BYTES`; a FIFO planted there cannot hang the reader)."""
    try:
        data = read_small_file(path, MAX_CRL_BYTES, expected="a PEM certificate revocation list")
    except SmallFileError as exc:
        raise IdentityError(str(exc)) from None
    try:
        return x509.load_pem_x509_crl(data)
    except ValueError as exc:
        raise IdentityError(f"{path}: not a PEM certificate revocation list ({exc})") from None
