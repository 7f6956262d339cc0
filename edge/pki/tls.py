"""TLS contexts that enforce the central's PKI, and the identity a verified peer certificate names.

Both sides trust only the central's own CA (never the system trust store), require TLS 1.2 or newer
and strict RFC 5280 checking; the server requires a client certificate.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge.pki.bundle import BUNDLE_CA_CERT, BUNDLE_CLIENT_CERT, BUNDLE_CLIENT_KEY
from edge.pki.certs import read_pem
from edge.pki.names import (
    IdentityError,
    PeerIdentityError,
    checked_name,
    validate_station_id,
)


def _harden(context: ssl.SSLContext) -> None:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # RFC 5280 rules enforced by OpenSSL (critical basicConstraints on CAs, key identifiers, ...).
    context.verify_flags |= ssl.VERIFY_X509_STRICT


def _load_chain(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    read_pem(key, secret=True)  # refuses a missing or over-permissive key with a clear message
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


def server_ssl_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """TLS >= 1.2 server context: presents `cert`, asks for a client certificate issued by `ca` (and
    only that CA: no system trust store).

    A certificate that is presented must verify, or the handshake fails; a client that presents none
    completes the handshake (CERT_OPTIONAL) so that load balancers can probe the health endpoints. The
    central's application then refuses such a connection on every other route
    (`edge.central.auth.require_client_certificate`)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context)
    context.verify_mode = ssl.CERT_OPTIONAL
    _load_chain(context, cert, key)
    _load_ca_file(context, ca)
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


def broker_ssl_context(*, ca_file: Path, bundle_dir: Path | None) -> ssl.SSLContext:
    """TLS >= 1.2 client context for an MQTT broker: trusts only `ca_file` (the CA that issued the
    broker's certificate), checks the broker's name, and presents the bundle's client certificate (none
    when `bundle_dir` is None: a password login)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(context)
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    _load_ca_file(context, Path(ca_file))
    if bundle_dir is not None:
        _load_chain(context, Path(bundle_dir) / BUNDLE_CLIENT_CERT, Path(bundle_dir) / BUNDLE_CLIENT_KEY)
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
    return checked_name(validate_station_id, cns[0], PeerIdentityError), ous[0]
