"""The central CA's certificate revocation list: every client certificate it issued that no longer stands.

Over HTTPS the central refuses a replaced or revoked certificate itself (it compares the presented
certificate with the enrolled one). Behind an MQTT broker it never sees the certificate, so the broker
must refuse it: Mosquitto's `crlfile`. This module keeps that list:

- every client certificate the CA issues is kept in ``identity/issued/<sha256>.crt``
  (`edge.central.identity`; a CRL names certificates by serial number, the index records only their
  SHA-256);
- ``identity/ca.crl`` names each kept certificate whose station or auditor is revoked, or whose enrolled
  certificate is another one now (re-enrolment replaced it); a certificate past its end is left out
  (nobody accepts it anyway). It is computed from the index as a whole each time, under a lock, so two
  `enroll`/`revoke` commands at once cannot write a list that misses one of them.

`edge central enroll`, `enroll-reader`, `revoke`, `revoke-reader` and `init` rewrite it; `edge central
crl --out FILE` rewrites it (a fresh next update) and copies it for the broker. Certificates issued before
the central kept them are not in ``issued/`` and cannot be listed (README "Broker setup").
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.x509.oid import NameOID

from edge.central.config import CentralConfig, CentralLayout
from edge.central.identity import load_ca
from edge.central.index import ReaderRecord, StationRecord
from edge.pki.certs import PUBLIC_MODE, certificate_sha256, install_file, load_cert, utc_now
from edge.pki.crl import RevokedCertificate, build_crl, crl_pem, write_crl
from edge.pki.names import AUDITOR_OU, STATION_OU, IdentityError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CrlWritten:
    """What `update_crl` wrote: where, how many certificates it names, until when it is valid."""

    path: Path
    revoked: int
    next_update: dt.datetime


class EnrolmentRecords(Protocol):
    """Who is enrolled with which certificate: the index (opened by the caller, read under the lock)."""

    def station(self, station_id: str) -> StationRecord | None: ...

    def reader(self, name: str) -> ReaderRecord | None: ...


def _attribute(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    values = name.get_attributes_for_oid(oid)
    return str(values[0].value) if values else None


def _time(text: str | None, fallback: dt.datetime) -> dt.datetime:
    if not text:
        return fallback
    try:
        return dt.datetime.fromisoformat(text).astimezone(dt.UTC)
    except ValueError:
        return fallback


def _issued(layout: CentralLayout) -> Iterator[x509.Certificate]:
    if not layout.issued_dir.is_dir():
        return
    for path in sorted(layout.issued_dir.glob("*.crt")):
        try:
            yield load_cert(path)
        except IdentityError as exc:
            # A damaged copy cannot be listed; say so loudly rather than drop the whole list.
            log.error("revocation list: skipping %s: %s", path, exc)


def revoked_certificates(layout: CentralLayout, index: EnrolmentRecords | None,
                         now: dt.datetime) -> list[RevokedCertificate]:
    """Every kept certificate, not yet expired, that the index no longer takes as its holder's."""
    revoked: list[RevokedCertificate] = []
    for cert in _issued(layout):
        if cert.not_valid_after_utc <= now or index is None:
            continue
        name = _attribute(cert.subject, NameOID.COMMON_NAME)
        unit = _attribute(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
        sha256 = certificate_sha256(cert)
        if name is None:
            continue
        if unit == STATION_OU:
            station = index.station(name)
            if station is None:
                continue  # issued, but its enrolment was never recorded (the bundle was removed)
            if not station.active:
                revoked.append(RevokedCertificate(cert.serial_number, _time(station.revoked_utc, now),
                                                  x509.ReasonFlags.cessation_of_operation))
            elif station.cert_sha256 != sha256:
                revoked.append(RevokedCertificate(cert.serial_number, _time(station.enrolled_utc, now),
                                                  x509.ReasonFlags.superseded))
        elif unit == AUDITOR_OU:
            reader = index.reader(name)
            if reader is None:
                continue
            if not reader.active:
                revoked.append(RevokedCertificate(cert.serial_number, now,
                                                  x509.ReasonFlags.cessation_of_operation))
            elif reader.cert_sha256 != sha256:
                revoked.append(RevokedCertificate(cert.serial_number, _time(reader.enrolled_utc, now),
                                                  x509.ReasonFlags.superseded))
    return revoked


@contextmanager
def _crl_lock(layout: CentralLayout) -> Iterator[None]:
    fd = os.open(layout.identity_dir / ".crl.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def update_crl(config: CentralConfig, index: EnrolmentRecords | None, *,
               copy_to: Path | None = None) -> CrlWritten:
    """Rewrite ``identity/ca.crl`` from `index` (None: a store without one yet, nothing to list), signed
    by the CA with a fresh next update, and with `copy_to` install the same bytes there too (the broker's
    `crlfile`). Raises `IdentityError`."""
    layout = config.layout
    ca_cert, ca_key = load_ca(layout)
    try:
        with _crl_lock(layout):
            now = utc_now()
            revoked = revoked_certificates(layout, index, now)
            crl = build_crl(ca_cert, ca_key, revoked, now=now)
            write_crl(layout.crl_file, crl)
            if copy_to is not None:
                install_file(copy_to, crl_pem(crl), PUBLIC_MODE, replace=True)
    except OSError as exc:
        raise IdentityError(f"cannot write the revocation list: {exc.strerror or exc} "
                            f"({exc.filename or layout.crl_file})") from None
    next_update = crl.next_update_utc
    assert next_update is not None  # build_crl always sets it
    log.info("revocation list %s: %d certificate(s), valid until %s", layout.crl_file, len(revoked),
             f"{next_update:%Y-%m-%d %H:%M}Z")
    return CrlWritten(layout.crl_file, len(revoked), next_update)
