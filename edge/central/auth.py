"""Who is calling: stations and readers (auditors), from the mutual-TLS client certificate.

With TLS, the certificate was already verified against the central CA by the handshake; here its
subject names the caller (CN) and its role (OU ``station`` or ``auditor``), and the index must know it:
an enrolled, active station or reader whose enrolled certificate is exactly this one (so the old
certificate of a re-enrolled station stops working). Revocation is the index's status, checked on every
request, so ``edge central revoke`` takes effect at once.

Development mode (``[server] insecure_plain_http = true``) takes the identity from a header
(``X-Edge-Station`` / ``X-Edge-Reader``): anyone can claim anything. It is off unless configured and
says so in a warning at start and on requests (at most once a minute).
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from edge.central.index import CentralIndexError, StationRecord, validate_reader_name, validate_station_id
from edge.central.record_rate import RecordRate, noting_skipped
from edge.central.registration import Caller, RejectCode, Rejection
from edge.central.storage import Index
from edge.pki.names import AUDITOR_OU, STATION_OU, PeerIdentityError
from edge.pki.tls import peer_identity

__all__ = [
    "DEV_READER_HEADER",
    "DEV_STATION_HEADER",
    "Authenticator",
    "PeerCertificate",
    "Principal",
    "peer_certificate",
    "require_client_certificate",
]

log = logging.getLogger(__name__)

DEV_STATION_HEADER = "X-Edge-Station"
DEV_READER_HEADER = "X-Edge-Reader"
_DEV_WARNING_INTERVAL_S = 60.0


@dataclass(frozen=True)
class PeerCertificate:
    """The verified client certificate of a TLS connection."""

    subject: dict[str, Any]
    sha256: str


# The request's client certificate as read from its connection, in a 1-tuple (its None: none).
_PEER: web.RequestKey[tuple[PeerCertificate | None]] = web.RequestKey("edge-peer-certificate", tuple)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: ``kind`` is ``station`` or ``reader``."""

    kind: str
    name: str


def peer_certificate(request: web.Request) -> PeerCertificate | None:
    """The client certificate of the request's TLS connection, None on plain HTTP or without one.

    Read from the connection once, by :func:`require_client_certificate` on the event loop, and kept with
    the request: the checks that use it run in reader threads (:meth:`CentralParts.read`), which must not
    touch the TLS connection the loop is reading from."""
    if _PEER in request:
        return request[_PEER][0]
    transport = request.transport
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    der = ssl_object.getpeercert(binary_form=True)
    subject = ssl_object.getpeercert()
    found = PeerCertificate(dict(subject), hashlib.sha256(der).hexdigest()) if der and subject else None
    request[_PEER] = (found,)
    return found


def require_client_certificate(
    public_routes: frozenset[str], console_prefix: str = "/console"
) -> Middleware:
    """Refuse (401) every request of a TLS connection without a client certificate, except on
    ``public_routes`` (the health endpoints), before any handler runs.

    The auditor console's own listener (``[console] listen``, a connection whose protocol has
    ``console_listener`` set) is the one exception: there the console's paths (``console_prefix`` and
    below) answer without a certificate (they authenticate a browser session or refuse it themselves),
    and every other path is refused (404), so a password sign-in never shares the station-facing port.

    The TLS context asks every client for a certificate but lets the handshake complete without one
    (load balancers probe ``/healthz`` and ``/readyz`` without); so this is where "no certificate, no
    service" is enforced, once for every route, including ones that never ask :class:`Authenticator`
    (tus ``OPTIONS``). A certificate that is present was verified against the central CA by the
    handshake; whether it is enrolled and active is the :class:`Authenticator`'s job, per route. Plain
    HTTP (development mode, loopback only) has no certificates and is left to the Authenticator. Not
    recorded in the index: an anonymous caller cannot make the central write.
    """

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        transport = request.transport
        on_tls = transport is not None and transport.get_extra_info("ssl_object") is not None
        if on_tls:
            peer_certificate(request)  # read here, on the loop, for the checks made in reader threads
        if getattr(request.protocol, "console_listener", False):
            if request.path == console_prefix or request.path.startswith(console_prefix + "/"):
                return await handler(request)
            raise Rejection(RejectCode.NOT_FOUND, "this listener serves the auditor console only "
                                                  f"({console_prefix}/)")
        if on_tls and request.path not in public_routes and peer_certificate(request) is None:
            raise Rejection(RejectCode.UNAUTHENTICATED, "no client certificate: this endpoint requires "
                                                        "mutual TLS with a certificate from the central CA")
        return await handler(request)

    return middleware


RejectionSink = Callable[[Rejection, str | None, str | None], object]
"""Records a refusal: (rejection, claimed station or None, remote address)."""


def _discard(rejection: Rejection, station: str | None, remote: str | None) -> None:
    log.warning("refused %s (station %s): %s: %s", remote, station, rejection.code, rejection.detail)


def _unidentified_key(request: web.Request) -> str:
    """The :class:`RecordRate` key of a refusal that names no station or reader (a certificate the CA signed
    for another role, or an unusable subject): its certificate's, else one shared by every such caller."""
    cert = peer_certificate(request)
    return f"certificate:{cert.sha256}" if cert is not None else "unidentified"


class Authenticator:
    """Turns a request into an enrolled caller or a :class:`Rejection`, which ``on_reject`` records."""

    def __init__(self, index: Index, *, dev_mode: bool, on_reject: RejectionSink = _discard) -> None:
        self.index = index
        self.dev_mode = dev_mode
        self._on_reject = on_reject
        self._last_dev_warning = float("-inf")
        # One rule for every path a station (or reader) reaches the central by: the broker's and HTTPS
        # (edge.central.record_rate). A certificate the CA signed still completes the TLS handshake once
        # revoked (revocation is the index's status, checked per request), so its holder can send requests
        # as fast as the broker's stations publish; each is refused, and recorded at this bounded rate.
        self.refusal_rate = RecordRate()

    def __repr__(self) -> str:
        return f"Authenticator(dev_mode={self.dev_mode})"

    def _warn_dev(self, request: web.Request, who: str) -> None:
        now = time.monotonic()
        if now - self._last_dev_warning >= _DEV_WARNING_INTERVAL_S:
            self._last_dev_warning = now
            log.warning(
                "INSECURE DEVELOPMENT MODE: plain HTTP, %s %s taken from a request header without any "
                "authentication (from %s); never use this outside a test bench", request.method, who,
                request.remote,
            )

    def _certificate(self, request: web.Request, role: str) -> tuple[str, str]:
        """(name, certificate sha256) of a TLS caller with the given OU role."""
        cert = peer_certificate(request)
        if cert is None:
            raise Rejection(RejectCode.UNAUTHENTICATED, "no client certificate: this endpoint requires "
                                                        "mutual TLS with a certificate from the central CA")
        try:
            name, unit = peer_identity(cert.subject)
        except PeerIdentityError as exc:
            raise Rejection(RejectCode.UNAUTHENTICATED, str(exc)) from None
        if unit != role:
            raise Rejection(RejectCode.FORBIDDEN, f"a certificate with OU={unit!r} ({name}) cannot use this "
                                                  f"endpoint; it needs OU={role}")
        return name, cert.sha256

    def _record(self, rejection: Rejection, rate_key: str, station: str | None, remote: str | None) -> None:
        """Record ``rejection`` if :attr:`refusal_rate` admits one more of ``rate_key``'s; the recorded one
        says how many were not."""
        skipped = self.refusal_rate.admit(rate_key)
        if skipped is not None:
            rejection.detail = noting_skipped(rejection.detail, skipped)
            self._on_reject(rejection, station, remote)

    def station(self, request: web.Request) -> Caller:
        """The calling station, enrolled and active; raises :class:`Rejection`, recorded at the bounded
        rate of :attr:`refusal_rate` (per station, shared with the broker's path)."""
        claimed: list[str] = []
        try:
            return self._station(request, claimed)
        except Rejection as rejection:
            station = claimed[0] if claimed else None
            self._record(rejection, station if station is not None else _unidentified_key(request),
                         station, request.remote)
            raise

    def _station(self, request: web.Request, claimed_out: list[str]) -> Caller:
        cert_sha: str | None = None
        if self.dev_mode:
            claimed = request.headers.get(DEV_STATION_HEADER, "")
            if not claimed:
                raise Rejection(RejectCode.UNAUTHENTICATED, f"development mode: the request carries no "
                                                            f"{DEV_STATION_HEADER} header")
            try:
                station_id = validate_station_id(claimed)
            except CentralIndexError as exc:
                raise Rejection(RejectCode.UNAUTHENTICATED, f"{DEV_STATION_HEADER}: {exc}") from None
            self._warn_dev(request, f"station {station_id}")
        else:
            station_id, cert_sha = self._certificate(request, STATION_OU)
        claimed_out.append(station_id)
        record = self._active_station(station_id)
        if cert_sha is not None and cert_sha != record.cert_sha256:
            raise Rejection(
                RejectCode.STATION_REVOKED,
                f"station {station_id} presented certificate {cert_sha}, "
                f"but its enrolled certificate is {record.cert_sha256} "
                "(re-enrolment replaced the old one)",
            )
        return Caller(record, request.remote)

    def _active_station(self, station_id: str) -> StationRecord:
        record = self.index.station(station_id)
        if record is None:
            raise Rejection(
                RejectCode.UNKNOWN_STATION,
                f"station {station_id} is not enrolled at this central",
            )
        if not record.active:
            raise Rejection(RejectCode.STATION_REVOKED, f"station {station_id} was revoked at "
                                                        f"{record.revoked_utc}: {record.revoke_reason}")
        return record

    def enrolled_station(self, station_id: str, *, remote: str | None) -> Caller:
        """The station a broker authenticated (the MQTT receiver: the station level of a topic the broker's
        ACL confines to that station), enrolled and active; raises :class:`Rejection` (recorded).

        The central never sees the broker-side certificate, so a re-enrolled station's old certificate is
        the broker's to refuse; the registrar's signature checks (manifests, checkpoints) against the
        enrolled key stay the central's own check that the station sent what it registers.

        A station the broker lets in can send thousands of messages a second: its refusals are recorded
        (index and log) at most :data:`~edge.central.record_rate.RECORDS_PER_MINUTE` a minute after a burst
        of as many (the same count as its HTTPS requests'), and a recorded one says how many were not
        (every one is still refused)."""
        try:
            return Caller(self._active_station(station_id), remote)
        except Rejection as rejection:
            self._record(rejection, station_id, station_id, remote)
            raise

    def reader(self, request: web.Request) -> str:
        """The calling reader (auditor); raises :class:`Rejection`, recorded at the bounded rate of
        :attr:`refusal_rate` (per reader name: a revoked auditor's certificate still completes TLS)."""
        claimed: list[str] = []
        try:
            return self._reader(request, claimed)
        except Rejection as rejection:
            key = f"reader:{claimed[0]}" if claimed else _unidentified_key(request)
            self._record(rejection, key, None, request.remote)
            raise

    def _reader(self, request: web.Request, claimed_out: list[str]) -> str:
        if self.dev_mode:
            claimed = request.headers.get(DEV_READER_HEADER, "")
            if not claimed:
                raise Rejection(RejectCode.UNAUTHENTICATED, f"development mode: the request carries no "
                                                            f"{DEV_READER_HEADER} header")
            try:
                name = validate_reader_name(claimed)
            except CentralIndexError as exc:
                raise Rejection(RejectCode.UNAUTHENTICATED, f"{DEV_READER_HEADER}: {exc}") from None
            claimed_out.append(name)
            self._warn_dev(request, f"reader {name}")
            record = self.index.reader(name)
            # Development readers need no enrolment, but a revoked one stays revoked.
            if record is not None and not record.active:
                raise Rejection(RejectCode.FORBIDDEN, f"reader {name} was revoked")
            return name
        name, cert_sha = self._certificate(request, AUDITOR_OU)
        claimed_out.append(name)
        record = self.index.reader(name)
        if record is None:
            raise Rejection(RejectCode.FORBIDDEN, f"reader {name} is not enrolled at this central")
        if not record.active:
            raise Rejection(RejectCode.FORBIDDEN, f"reader {name} was revoked")
        if cert_sha != record.cert_sha256:
            raise Rejection(RejectCode.FORBIDDEN, f"reader {name} presented certificate {cert_sha}, not its "
                                                  f"enrolled certificate {record.cert_sha256}")
        return name

    def station_or_reader(self, request: web.Request) -> Principal:
        """Either kind of caller (the Merkle log endpoints are public to both)."""
        if self.dev_mode:
            if request.headers.get(DEV_READER_HEADER):
                return Principal("reader", self.reader(request))
            return Principal("station", self.station(request).station_id)
        cert = peer_certificate(request)
        unit = None
        if cert is not None:
            try:
                unit = peer_identity(cert.subject)[1]
            except PeerIdentityError:
                unit = None
        if unit == AUDITOR_OU:
            return Principal("reader", self.reader(request))
        return Principal("station", self.station(request).station_id)
