"""The central CA's certificate revocation list: every client certificate it issued that no longer stands.

Over HTTPS the central refuses a replaced or revoked certificate itself (it compares the presented
certificate with the enrolled one). Behind an MQTT broker it never sees the certificate, so the broker
must refuse it: Mosquitto's `crlfile`. This module keeps that list:

- every certificate the CA issues is kept in ``identity/issued/<sha256>.crt``
  (`edge.central.identity`, `edge.central.broker_identity`; a CRL names certificates by serial number,
  the index records only their SHA-256);
- ``identity/ca.crl`` names each kept certificate whose station or auditor is revoked, or whose enrolled
  certificate is another one now (re-enrolment replaced it); each kept OU=central certificate (the
  central's own broker identity, which reads every station's evidence) issued strictly before the current
  one: the one in the central's ``[mqtt] client_bundle_dir`` when configured, else the newest issued (one
  issued after the configured one is its replacement waiting for the configuration, never listed; when
  the configured one has no kept copy, its place is unknown and no other central identity is listed
  until it is imported); each kept broker server certificate that is not the newest for its host name
  (stations check no CRL for the broker's certificate: listing it only records the replacement, README
  "Broker setup"). A certificate past its end is left out (nobody accepts it anyway). It is computed
  from the index as a whole each time, under a lock, so two `enroll`/`revoke` commands at once cannot
  write a list that misses one of them.

"Older" and "newest" follow the order the CA issued its certificates in (``identity/issued.order``,
written at issuance, and its copy outside identity/ that a restore of identity/ cannot lose), never a
clock: a certificate made while the central's clock was wrong, or with a backdated notBefore, keeps its
place. Certificates issued before the CA recorded that order (earlier releases, imports with
`keep-issued`) are older than every one in it, and among themselves are ordered by notBefore (a clock skew
between two of those can still misorder them).

`edge central enroll`, `enroll-reader`, `revoke`, `revoke-reader` and `init` rewrite it; `edge central
crl --out FILE` rewrites it (a fresh next update) and copies it for the broker. Certificates issued before
the central kept them are not in ``issued/`` and cannot be listed until imported from their bundle
(`import_issued`, `edge central keep-issued --cert FILE`; README "Broker setup").
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from edge.central.config import CentralConfig, CentralLayout
from edge.central.identity import issue_order, keep_issued, load_ca
from edge.central.index import ReaderRecord, StationRecord
from edge.custody.canonical import canonical_json, parse_json
from edge.pki.bundle import BUNDLE_CLIENT_CERT
from edge.pki.certs import PRIVATE_MODE, PUBLIC_MODE, certificate_sha256, install_file, load_cert, utc_now
from edge.pki.crl import RevokedCertificate, build_crl, crl_pem, load_crl, write_crl
from edge.pki.names import AUDITOR_OU, CENTRAL_OU, SERVER_OU, STATION_OU, IdentityError

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


@dataclass(frozen=True)
class _Kept:
    """A kept copy of an issued certificate. `place`: where it stands in the order the CA issued its
    certificates (`edge.central.identity.issue_order`), None for one issued before the CA recorded that
    order; `written_ns`: when the copy was written (the file's mtime)."""

    cert: x509.Certificate
    place: int | None
    written_ns: int

    def age_key(self) -> tuple[int, int, dt.datetime, int]:
        """Orders certificates from oldest to newest: every one in the issue order after every one issued
        before it was recorded, and within the order by their place, which no clock can change. Only
        certificates that predate the order (earlier releases, imports) are ordered by their notBefore,
        then by when their copy was written (notBefore ties within a second)."""
        if self.place is not None:
            return (1, self.place, dt.datetime.min.replace(tzinfo=dt.UTC), 0)
        return (0, 0, self.cert.not_valid_before_utc, self.written_ns)


def _issued(layout: CentralLayout) -> Iterator[_Kept]:
    if not layout.issued_dir.is_dir():
        return
    order = issue_order(layout)
    for path in sorted(layout.issued_dir.glob("*.crt")):
        try:
            cert = load_cert(path)
            yield _Kept(cert, order.get(certificate_sha256(cert)), path.stat().st_mtime_ns)
        except (IdentityError, OSError) as exc:
            # A damaged copy cannot be listed; say so loudly rather than drop the whole list.
            log.error("revocation list: skipping %s: %s", path, exc)


def kept_sha256s(layout: CentralLayout) -> set[str]:
    """The SHA-256 of every certificate kept in ``identity/issued/`` (those the list can name)."""
    return {certificate_sha256(kept.cert) for kept in _issued(layout)}


def _current_central_sha256(config_bundle_cert: Path | None, central: list[_Kept]) -> str | None:
    """The central's current broker identity: the certificate in its configured bundle when readable,
    else the newest kept one."""
    if config_bundle_cert is not None:
        try:
            return certificate_sha256(load_cert(config_bundle_cert))
        except (IdentityError, OSError) as exc:
            log.error("revocation list: cannot read the central's MQTT client certificate %s (%s): taking "
                      "the newest issued OU=central certificate for the current one", config_bundle_cert, exc)
    if not central:
        return None
    return certificate_sha256(max(central, key=_Kept.age_key).cert)


def revoked_certificates(layout: CentralLayout, index: EnrolmentRecords | None, now: dt.datetime, *,
                         central_bundle_cert: Path | None = None) -> list[RevokedCertificate]:
    """Every kept certificate, not yet expired, that no longer stands: a station's or auditor's that the
    index no longer takes as its holder's, a central broker identity issued before the current one
    (`central_bundle_cert`: the configured bundle's client.crt, None: the newest), a broker server
    certificate that is not the newest of its host name."""
    revoked: list[RevokedCertificate] = []
    kept = [k for k in _issued(layout) if k.cert.not_valid_after_utc > now]
    central = [k for k in kept if _attribute(k.cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME) == CENTRAL_OU]
    current_central = _current_central_sha256(central_bundle_cert, central)
    current = next((c for c in central if certificate_sha256(c.cert) == current_central), None)
    if current is None and central:
        log.warning("revocation list: the central's MQTT identity in use (sha256 %s) has no copy in %s: no "
                    "other central identity is listed, since any of them may be its replacement; import it "
                    "with `edge central keep-issued --cert CLIENT_BUNDLE/client.crt`", current_central,
                    layout.issued_dir)
    newest_server: dict[str, _Kept] = {}
    for k in kept:
        if _attribute(k.cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME) == SERVER_OU:
            host = _attribute(k.cert.subject, NameOID.COMMON_NAME) or ""
            if host not in newest_server or k.age_key() > newest_server[host].age_key():
                newest_server[host] = k
    for k in kept:
        cert = k.cert
        name = _attribute(cert.subject, NameOID.COMMON_NAME)
        unit = _attribute(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
        sha256 = certificate_sha256(cert)
        if name is None:
            continue
        # Superseded when its successor was issued (its notBefore), so the date stays put across rewrites
        # (never after now: a successor made on a clock running ahead).
        if unit == CENTRAL_OU:
            # Only an identity issued strictly before the one in use is listed. When the one in use has no
            # kept copy (issued by a release that kept none) its place is unknown, and every kept one may
            # be its replacement waiting for the configuration: listing it would lock the central out of
            # the broker once the configuration points at it, so none is listed until it is imported.
            if current is None or not current.age_key() > k.age_key():
                continue
            revoked.append(RevokedCertificate(cert.serial_number, min(current.cert.not_valid_before_utc, now),
                                              x509.ReasonFlags.superseded))
        elif unit == SERVER_OU:
            newest = newest_server[name]
            if newest is not k:
                replaced = min(newest.cert.not_valid_before_utc, now)
                revoked.append(RevokedCertificate(cert.serial_number, replaced, x509.ReasonFlags.superseded))
        elif index is None:
            continue
        elif unit == STATION_OU:
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


# Less than this left before the list's next update: the central warns (readyz, log; metrics always show
# the time left). Past it, Mosquitto refuses every client: renew it daily (systemd/edge-central-crl.timer).
CRL_WARN_BEFORE = dt.timedelta(days=7)


class CrlList(StrEnum):
    """Which copy of the revocation list the central reports the time left of (/readyz names it)."""

    # [mqtt] broker_crl_file: the file the broker reads (mosquitto.conf crlfile), read where it lies.
    BROKER = "broker_crl_file"
    # The copy `edge central crl --out` (or `broker-cert`) last installed for the broker, as recorded then.
    INSTALLED = "last_installed"
    # The central's own identity/ca.crl: nothing was ever installed for the broker through the central;
    # every enrolment or revocation renews it, so it can show more time than the broker's copy has.
    CENTRAL = "central_copy"


@dataclass(frozen=True)
class CrlStanding:
    """Seconds until the next update of the list in `path` (negative once past; None: missing or
    unreadable), and which copy that is."""

    seconds_left: float | None
    path: Path
    copy: CrlList


def _next_update_of(path: Path) -> dt.datetime | None:
    try:
        return load_crl(path).next_update_utc
    except (IdentityError, OSError) as exc:
        log.debug("revocation list %s unreadable: %s", path, exc)
        return None


@dataclass(frozen=True)
class _Install:
    """One destination the list was installed to (`edge central crl --out`, `broker-cert`), with the next
    update of the copy installed there last."""

    path: Path
    next_update: dt.datetime
    installed_utc: str


# The destinations kept in identity/crl-installed.json: the broker's, and a few one-off copies.
_MAX_INSTALLS = 32
# The record's problem last logged: a damaged record is logged once, not at every /readyz poll.
_record_warned: list[str] = []


def _installs(layout: CentralLayout) -> list[_Install] | None:
    """Every destination the list was installed to (None: never, or a record that cannot be read, which is
    logged once: any damage, whatever it is, is "cannot be read")."""
    record = layout.crl_installed_file
    try:
        doc = parse_json(record.read_bytes()[:_RECORD_MAX_BYTES])
        if not isinstance(doc, dict) or not isinstance(doc.get("installs"), list):
            raise ValueError("expected an object with an installs list (or a record of an earlier release)")
        installs = []
        for item in doc["installs"][:_MAX_INSTALLS]:
            path, next_update, when = (item.get(name) if isinstance(item, dict) else None
                                       for name in ("path", "next_update", "installed_utc"))
            if not isinstance(path, str) or not isinstance(next_update, str) or not isinstance(when, str):
                raise ValueError("an install without path, next_update or installed_utc")
            installs.append(_Install(Path(path), dt.datetime.fromisoformat(next_update).astimezone(dt.UTC),
                                     when))
        _record_warned.clear()
        return installs
    except FileNotFoundError:
        return None
    except Exception as exc:  # any damage: a local file must never fail /readyz or /metrics
        problem = f"cannot read {record} ({type(exc).__name__}: {str(exc)[:200]})"
        if _record_warned != [problem]:
            _record_warned[:] = [problem]
            log.error("%s: reporting the central's own revocation list instead (rewritten at the next "
                      "`edge central crl --out`)", problem)
        return None


def _broker_install(layout: CentralLayout) -> tuple[Path, dt.datetime] | None:
    """The installed copy whose next update comes first, among the destinations whose file still exists
    (all of them when none does): an install elsewhere (a look at the list in /tmp, a `broker-cert --out`
    into a staging directory) never hides that the broker's own copy is running out. A one-off copy left in
    place warns as it nears its own next update: delete it and it is forgotten."""
    installs = _installs(layout)
    if not installs:
        return None
    present = [item for item in installs if _still_ours(item)] or installs
    soonest = min(present, key=lambda item: item.next_update)
    return soonest.path, soonest.next_update


def _still_ours(item: _Install) -> bool:
    """Whether the copy installed at `item.path` is still there and still the list installed there (its
    next update as recorded): a file made again at a deleted one-off path (in a world-writable /tmp, say)
    is not the central's, and must not raise or silence a warning (review 15). True when the central may
    not look (kept)."""
    try:
        with open(item.path, "rb"):
            pass
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True  # there, but not for the central to read (the broker's own permissions)
    return _next_update_of(item.path) == item.next_update


def _still_there(path: Path) -> bool:
    """Whether an installed copy's file is still there (True when the central may not look: kept)."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True
    return True


def _recorded_install(layout: CentralLayout, path: Path, next_update: dt.datetime, now: dt.datetime) -> bytes:
    """The installation record with `path` installed now (replacing its earlier install), destinations
    whose file is gone dropped, at most `_MAX_INSTALLS` kept: beyond that the copies whose next update
    comes LAST are forgotten, never the one that runs out first (the broker's copy once its timer stopped
    is the oldest install and the soonest to expire: review 15)."""
    others = [item for item in (_installs(layout) or []) if item.path != path and _still_there(item.path)]
    if len(others) > _MAX_INSTALLS - 1:
        keep = set(id(item) for item in sorted(others, key=lambda item: item.next_update)[:_MAX_INSTALLS - 1])
        others = [item for item in others if id(item) in keep]
    kept = [*others, _Install(path, next_update, now.isoformat())]
    return canonical_json({"installs": [
        {"path": str(item.path), "next_update": item.next_update.isoformat(),
         "installed_utc": item.installed_utc}
        for item in kept
    ]})


def crl_standing(layout: CentralLayout, now: dt.datetime | None = None, *,
                 broker_crl_file: Path | None = None) -> CrlStanding:
    """The time left of the list the broker has, as near as the central can know it: `broker_crl_file`
    ([mqtt] broker_crl_file) when configured, read where it lies; else the copy last installed through
    `edge central crl --out` or `broker-cert` (recorded then in identity/crl-installed.json, per
    destination: the one whose next update comes first, `_broker_install`; an enrolment or revocation renews
    the central's own list without installing it); else, when none was ever installed that way (or the
    record is damaged), the central's own ``identity/ca.crl``."""
    now = now or utc_now()
    path: Path
    next_update: dt.datetime | None
    if broker_crl_file is not None:
        path, copy, next_update = broker_crl_file, CrlList.BROKER, _next_update_of(broker_crl_file)
    elif (installed := _broker_install(layout)) is not None:
        path, next_update = installed
        copy = CrlList.INSTALLED
    else:
        path, copy, next_update = layout.crl_file, CrlList.CENTRAL, _next_update_of(layout.crl_file)
    left = None if next_update is None else (next_update - now).total_seconds()
    return CrlStanding(left, path, copy)


def crl_seconds_left(layout: CentralLayout, now: dt.datetime | None = None, *,
                     broker_crl_file: Path | None = None) -> float | None:
    """Seconds until the next update of the list the broker has (`crl_standing`); None when unknown."""
    return crl_standing(layout, now, broker_crl_file=broker_crl_file).seconds_left


# The installation record is a few hundred bytes; anything longer is not one.
_RECORD_MAX_BYTES = 64 * 1024


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
            bundle = config.mqtt.client_bundle_dir / BUNDLE_CLIENT_CERT if config.mqtt is not None else None
            revoked = revoked_certificates(layout, index, now, central_bundle_cert=bundle)
            crl = build_crl(ca_cert, ca_key, revoked, now=now)
            write_crl(layout.crl_file, crl)
            if copy_to is not None:
                install_file(copy_to, crl_pem(crl), PUBLIC_MODE, replace=True)
                # After the copy is in place: the time left the central reports is the installed list's.
                assert crl.next_update_utc is not None  # build_crl always sets it
                record = _recorded_install(layout, copy_to.absolute(), crl.next_update_utc, now)
                install_file(layout.crl_installed_file, record, PRIVATE_MODE, replace=True)
    except OSError as exc:
        raise IdentityError(f"cannot write the revocation list: {exc.strerror or exc} "
                            f"({exc.filename or layout.crl_file})") from None
    next_update = crl.next_update_utc
    assert next_update is not None  # build_crl always sets it
    log.info("revocation list %s: %d certificate(s), valid until %s", layout.crl_file, len(revoked),
             f"{next_update:%Y-%m-%d %H:%M}Z")
    return CrlWritten(layout.crl_file, len(revoked), next_update)


def import_issued(config: CentralConfig, index: EnrolmentRecords | None, cert_file: Path) -> str:
    """Keep `cert_file` in ``identity/issued/`` so the list can name it (a certificate issued before the
    central kept copies): only one this CA issued, and for a station or auditor only the enrolled
    certificate of that name or an older one (issued before its enrolment). Returns what it is; raises
    `IdentityError` naming why not."""
    ca_cert, _ = load_ca(config.layout)
    cert = load_cert(cert_file)
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise IdentityError(f"{cert_file} was not issued by this central's CA") from None
    name = _attribute(cert.subject, NameOID.COMMON_NAME)
    unit = _attribute(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
    sha256 = certificate_sha256(cert)
    if name is None or unit not in (STATION_OU, AUDITOR_OU, CENTRAL_OU, SERVER_OU):
        raise IdentityError(f"{cert_file}: not a certificate of a station, an auditor, the central or "
                            "the broker")
    if unit in (STATION_OU, AUDITOR_OU):
        kind = "station" if unit == STATION_OU else "auditor"
        record: StationRecord | ReaderRecord | None = None
        if index is not None:
            record = index.station(name) if unit == STATION_OU else index.reader(name)
        if record is None:
            raise IdentityError(f"{kind} {name!r} is not enrolled: there is nothing its certificate is "
                                "for")
        enrolled = _time(record.enrolled_utc, utc_now())
        if record.cert_sha256 != sha256 and cert.not_valid_before_utc > enrolled:
            raise IdentityError(f"{cert_file} (sha256 {sha256}) is neither the enrolled certificate of "
                                f"{kind} {name!r} nor one issued before its enrolment")
    else:
        kind = "central MQTT identity" if unit == CENTRAL_OU else "broker server certificate"
    keep_issued(config.layout, cert, newly_issued=False)
    return (f"{kind} {name} (sha256 {sha256}, serial {cert.serial_number:x}, valid until "
            f"{cert.not_valid_after_utc:%Y-%m-%d})")
