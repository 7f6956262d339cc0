"""The central's place on the agency's MQTT broker: its own client certificate, and the broker's server
certificate, both issued by the central's CA (the CA every station's enrollment bundle trusts).

The shipped broker configuration (config/mosquitto/) accepts only client certificates from that CA and
takes a certificate's CN as the MQTT user name (`use_identity_as_username`); its ACL gives the user
named like the central id every station's topics and confines any other user to
``<prefix>/stations/<its name>/#``. So the central's broker identity is a client certificate with
CN = central id (OU=central, which the central's own HTTPS endpoints refuse: it is no station and no
auditor), and no station or auditor may ever be enrolled under the central id (`edge.central.identity`
refuses it): with that name it would read every station's evidence off the broker.

`issue_mqtt_identity` writes the bundle the central's `[mqtt] client_bundle_dir` names (client.crt,
client.key mode 0600, ca.crt: the files a station bundle has, so the same TLS code reads both);
`issue_broker_certificate` writes the broker's certfile, keyfile and cafile.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from edge.central.config import CentralConfig
from edge.central.identity import keep_issued, load_central_ca
from edge.central.storage import Index
from edge.pki.bundle import BUNDLE_CA_CERT, BUNDLE_CLIENT_CERT, BUNDLE_CLIENT_KEY, prepare_bundle_dir
from edge.pki.certs import (
    PRIVATE_MODE,
    PUBLIC_MODE,
    alt_names,
    cert_pem,
    certificate_sha256,
    install_file,
    issue_leaf,
    key_pem,
    subject_name,
)
from edge.pki.names import CENTRAL_OU, SERVER_OU, IdentityError

log = logging.getLogger(__name__)

BROKER_CERT = "server.crt"
BROKER_KEY = "server.key"
# The CA's revocation list beside the broker's certificate, for mosquitto.conf's crlfile (edge central
# broker-cert writes the current one; `edge central crl --out` renews it).
BROKER_CRL_FILE = "ca.crl"
MQTT_IDENTITY_FILES = (BUNDLE_CLIENT_KEY, BUNDLE_CLIENT_CERT, BUNDLE_CA_CERT)
BROKER_FILES = (BROKER_KEY, BROKER_CERT, BUNDLE_CA_CERT)
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate just written with its key and the central's CA into `out_dir` (no key held here)."""

    subject: str
    out_dir: Path
    cert_file: Path
    key_file: Path
    ca_file: Path
    cert_sha256: str
    not_after: dt.datetime
    warnings: tuple[str, ...] = ()


def issue_mqtt_identity(
    config: CentralConfig, *, index: Index | None, out_dir: Path, days: int | None = None
) -> IssuedCertificate:
    """The central's broker client certificate (CN = central id, OU=central, client auth only) with its
    key and the central's CA, into the new or empty `out_dir`. `index`: the store's enrollments (None: a
    store that has none yet)."""
    central_id = config.central.id
    warnings = _refuse_taken_name(index, central_id) if index is not None else ()
    issued = _issue(
        config,
        common_name=central_id,
        unit=CENTRAL_OU,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        hosts=None,
        out_dir=Path(out_dir),
        files=(BUNDLE_CLIENT_CERT, BUNDLE_CLIENT_KEY),
        days=config.identity.station_cert_days if days is None else days,
    )
    return replace(issued, warnings=warnings)


def issue_broker_certificate(
    config: CentralConfig, *, names: list[str], out_dir: Path, days: int | None = None
) -> IssuedCertificate:
    """The broker's server certificate (server auth only; subjectAltName = `names`, the host names and
    addresses stations and the central connect to) with its key and the central's CA, into `out_dir`."""
    hosts = _checked_hosts(names)
    return _issue(
        config,
        common_name=hosts[0],
        unit=SERVER_OU,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        hosts=hosts,
        out_dir=Path(out_dir),
        files=(BROKER_CERT, BROKER_KEY),
        days=config.identity.server_cert_days if days is None else days,
    )


def _checked_hosts(names: list[str]) -> list[str]:
    """DNS names (no wildcards: a station reaches one named broker) or IP addresses, at least one."""
    if not names:
        raise IdentityError("the broker certificate needs at least one --name (host name or IP address)")
    for name in names:
        try:
            ipaddress.ip_address(name)
            continue
        except ValueError:
            pass
        labels = name.rstrip(".").split(".")
        if len(name) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
            raise IdentityError(f"broker name: expected a DNS name or an IP address, found {name[:80]!r}")
    if len({n.lower() for n in names}) != len(names):
        raise IdentityError("broker names must be unique")
    return names


def _refuse_taken_name(index: Index, central_id: str) -> tuple[str, ...]:
    """A station or auditor enrolled under the central id (before enrollment refused it) has a certificate
    the broker takes for the central's: refuse while it is active; once revoked, issue with a warning:
    the broker refuses it only once the revocation list naming it is installed as its crlfile, and only
    if the central kept a copy of it in identity/issued/ (an enrolment by an older release did not)."""
    warnings = []
    for kind, record in (("station", index.station(central_id)), ("auditor", index.reader(central_id))):
        if record is None:
            continue
        if record.active:
            revoke = "revoke" if kind == "station" else "revoke-reader"
            raise IdentityError(
                f"{kind} {central_id!r} is enrolled under the central's own id: on the broker its "
                f"certificate is the central. Revoke it (`edge central {revoke} {central_id}`), enroll it "
                f"under another name, and keep that certificate (sha256 {record.cert_sha256}) off the broker "
                "until it expires"
            )
        warnings.append(
            f"revoked {kind} {central_id!r} has a certificate (sha256 {record.cert_sha256}) naming the "
            "central's id: the broker takes it for the central until the revocation list naming it is its "
            "crlfile (`edge central crl --out BROKER_CRL`, then reload the broker); if identity/issued/ has "
            "no copy of it, the list cannot name it: import it with `edge central keep-issued --cert FILE`"
        )
    return tuple(warnings)


def _issue(
    config: CentralConfig,
    *,
    common_name: str,
    unit: str,
    usage: x509.ObjectIdentifier,
    hosts: list[str] | None,
    out_dir: Path,
    files: tuple[str, str],
    days: int,
) -> IssuedCertificate:
    if days <= 0:
        raise IdentityError(f"certificate validity: expected a positive number of days, found {days}")
    ca_cert, ca_key = load_central_ca(config.layout)
    prepare_bundle_dir(out_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue_leaf(
        ca_cert,
        ca_key,
        key.public_key(),
        subject_name(common_name, unit),
        usage,
        days=days,
        valid_from=None,
        alt_names=alt_names(hosts) if hosts else None,
    )
    # Kept before it leaves the central, like every client certificate: a replaced one is named by the
    # revocation list (edge.central.revocation).
    keep_issued(config.layout, cert, newly_issued=True)
    cert_name, key_name = files
    contents = {
        key_name: (key_pem(key), PRIVATE_MODE),
        cert_name: (cert_pem(cert), PUBLIC_MODE),
        # Last: its presence marks a complete directory.
        BUNDLE_CA_CERT: (cert_pem(ca_cert), PUBLIC_MODE),
    }
    try:
        for filename, (data, mode) in contents.items():
            if not install_file(out_dir / filename, data, mode, replace=False):
                raise IdentityError(f"{out_dir / filename} appeared while the certificate was being written")
    except BaseException:
        for filename in contents:
            with contextlib.suppress(FileNotFoundError):
                (out_dir / filename).unlink()
        raise
    issued = IssuedCertificate(
        subject=f"CN={common_name}, OU={unit}",
        out_dir=out_dir,
        cert_file=out_dir / cert_name,
        key_file=out_dir / key_name,
        ca_file=out_dir / BUNDLE_CA_CERT,
        cert_sha256=certificate_sha256(cert),
        not_after=cert.not_valid_after_utc,
    )
    log.info(
        "central %s: issued %s certificate %s (sha256 %s, valid until %s) into %s",
        config.central.id, unit, issued.subject, issued.cert_sha256, f"{issued.not_after:%Y-%m-%d}", out_dir,
    )
    return issued
