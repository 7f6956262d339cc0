"""The registrar of the GB/T 28181 platform (GB/T 28181-2016 9.1): who may register, with which password,
for how long, and what the 200 OK says.

Flow: REGISTER without credentials -> 401 with a digest challenge (drivers.gb28181.digest, realm = the
configured domain); REGISTER with credentials -> verified against the password configured for the device id
in its From, over the `uri` the device gave; the user name in the credentials must be that device id
(review 12: a digest made for another name proves nothing about the From, and with the shared
`unknown_device_password` one device could register as another; a device set to answer as `admin`, as
Hikvision lets people do, is refused 403 and must be set to its id) -> 200 with Contact, Expires (bounded
by configuration) and, only when the station clock is trusted and the platform says the device's clock may
be set now (`may_set_clock`: its offset was measured first, so what it was is on the record), Date (9.10.3:
devices set their clocks from it). `Expires: 0` unregisters (9.1.2.3). The expiry may come as the Expires
header or as the Contact's `expires` parameter (RFC 3261 10.2.1.1; the parameter wins), or not at all:
then `DEFAULT_EXPIRES_S` within the configured bounds (10.3 step 7).
Every registration is challenged afresh: a refresh with the same Call-ID is no proof of anything.

Refused: a device id not configured (unless `allow_unknown_devices`) gets 403 at once; a wrong password
403; a stale or foreign nonce a new challenge (`stale=true`); unreadable credentials 400; an expiry
shorter than the minimum 423 with Min-Expires. Refusals go to the ledger through the platform's limiter
(edge.custody.entry_limits): the first of a kind from a device or address at once, repeats at most once a
minute with how many there were, so a device retrying a wrong password every few seconds cannot flood the
ledger (or lock anything out: digest gives it nothing to guess with but the password).

Passwords are resolved once at start into `DevicePasswords`, whose repr names only device ids.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from drivers.gb28181.digest import DigestCredentials, DigestError, DigestServer, DigestVerdict
from drivers.gb28181.sip import SipProtocolError, SipRequest, SipResponse, response_to
from drivers.gb28181.sip_transport import Peer
from edge.custody.text import printable

log = logging.getLogger(__name__)

GB_ID_LENGTH = 20
REFUSAL_REPEAT_S = 60.0
# The expiry granted to a REGISTER that asks for none (RFC 3261 10.3: the registrar's choice).
DEFAULT_EXPIRES_S = 3600
REFUSAL_BUDGET = 30  # ledger entries of refusals and bad input per REFUSAL_REPEAT_S, over all sources


class DevicePasswords:
    """Device id -> password, and the password unknown devices must know (if they are allowed at all).
    Device passwords are weak: this object never shows them."""

    def __init__(self, passwords: dict[str, str], unknown_device_password: str | None = None) -> None:
        self._passwords = dict(passwords)
        self._unknown = unknown_device_password

    def __repr__(self) -> str:
        unknown = self._unknown is not None
        return f"DevicePasswords(devices={sorted(self._passwords)!r}, unknown_allowed={unknown})"

    def known(self, device_id: str) -> bool:
        return device_id in self._passwords

    def password_for(self, device_id: str) -> str | None:
        """The password to verify `device_id` with; None: the device is refused."""
        return self._passwords.get(device_id, self._unknown)


MAX_SHOWN_USER = 40
_EXPIRES_PARAM_RE = re.compile(r";\s*expires\s*=\s*[0-9]+", re.IGNORECASE)


class Outcome(StrEnum):
    CHALLENGED = "challenged"
    REGISTERED = "registered"
    UNREGISTERED = "unregistered"
    REFUSED = "refused"


@dataclass(frozen=True)
class RegisterResult:
    """What a REGISTER came to: the response to send and what the platform should record."""

    response: SipResponse
    outcome: Outcome
    device_id: str
    expires_s: int = 0
    reason: str = ""


def is_gb_id(text: str) -> bool:
    return len(text) == GB_ID_LENGTH and text.isascii() and text.isdigit()


def gb_date(now_utc: datetime, utc_offset_minutes: int) -> str:
    """The Date header of GB/T 28181 9.10.3: `yyyy-MM-ddTHH:mm:ss.SSS` in the devices' local time."""
    local = now_utc.astimezone(UTC) + timedelta(minutes=utc_offset_minutes)
    return local.strftime("%Y-%m-%dT%H:%M:%S.") + f"{local.microsecond // 1000:03d}"


class Registrar:
    """Answers REGISTER requests. `clock_trusted` says whether the station clock may set device clocks."""

    def __init__(self, *, digest: DigestServer, passwords: DevicePasswords, expires_min_s: int,
                 expires_max_s: int, time_sync: bool, clock_trusted: Callable[[], bool],
                 utc_offset_minutes: int, to_tag: Callable[[], str],
                 now_utc: Callable[[], datetime] = lambda: datetime.now(UTC),
                 may_set_clock: Callable[[str], bool] = lambda device_id: True) -> None:
        self._digest = digest
        self._passwords = passwords
        self._expires_min_s = expires_min_s
        self._expires_max_s = expires_max_s
        self._time_sync = time_sync
        self._clock_trusted = clock_trusted
        self._utc_offset_minutes = utc_offset_minutes
        self._to_tag = to_tag
        self._now_utc = now_utc
        self._may_set_clock = may_set_clock

    def handle(self, req: SipRequest, peer: Peer) -> RegisterResult:
        tag = self._to_tag()
        try:
            device_id = req.from_.sip_uri.user or ""
            requested = req.register_expires
        except SipProtocolError as exc:
            return self._refuse(req, tag, "", 400, f"unreadable REGISTER: {exc}")
        if not is_gb_id(device_id):
            return self._refuse(req, tag, "", 400, "From is not a 20-digit device id")
        password = self._passwords.password_for(device_id)
        if password is None:
            return self._refuse(req, tag, device_id, 403, "device not configured")
        authorization = req.headers.get("Authorization")
        if authorization is None:
            challenge = self._digest.challenge()
            response = response_to(req, 401, to_tag=tag, headers=[("WWW-Authenticate", str(challenge))])
            return RegisterResult(response, Outcome.CHALLENGED, device_id)
        try:
            credentials = DigestCredentials.parse(authorization)
        except DigestError as exc:
            return self._refuse(req, tag, device_id, 400, f"unreadable Authorization: {exc}")
        if credentials.username != device_id:
            # The password is the From's device's; a digest made for another user name proves nothing
            # about who this is (and, with a shared password for unknown devices, would let one device
            # register as another).
            return self._refuse(req, tag, device_id, 403, f"digest user name "
                                f"{printable(credentials.username[:MAX_SHOWN_USER])!r} is not the device id")
        verdict = self._digest.verify(credentials, method="REGISTER", password=password)
        if verdict in (DigestVerdict.STALE_NONCE, DigestVerdict.FOREIGN_NONCE):
            challenge = self._digest.challenge(stale=True)
            response = response_to(req, 401, to_tag=tag, headers=[("WWW-Authenticate", str(challenge))])
            return RegisterResult(response, Outcome.CHALLENGED, device_id, reason=verdict.value)
        if verdict is not DigestVerdict.OK:
            return self._refuse(req, tag, device_id, 403, f"authentication failed: {verdict.value}")
        if requested is None:
            # RFC 3261 10.3 step 7: no Expires header and no Contact expires parameter, the registrar
            # chooses (GB/T 28181 9.1.1: not below 3600 s), within what is configured.
            requested = max(self._expires_min_s, min(DEFAULT_EXPIRES_S, self._expires_max_s))
        if requested == 0:
            return RegisterResult(self._ok(req, tag, 0, with_date=False), Outcome.UNREGISTERED, device_id)
        if requested < self._expires_min_s:
            response = response_to(req, 423, to_tag=tag, headers=[("Min-Expires", str(self._expires_min_s))])
            return RegisterResult(response, Outcome.REFUSED, device_id,
                                  reason=f"expiry {requested} s below {self._expires_min_s} s")
        granted = min(requested, self._expires_max_s)
        return RegisterResult(self._ok(req, tag, granted, with_date=self._may_set_clock(device_id)),
                              Outcome.REGISTERED, device_id, expires_s=granted)

    def _ok(self, req: SipRequest, tag: str, expires_s: int, *, with_date: bool) -> SipResponse:
        contact = req.headers.get("Contact")
        if contact and expires_s:
            # The Contact's own expires parameter, when it gave one, says what was granted (RFC 3261 10.3
            # step 8): a device reading it there must not keep the longer one it asked for.
            contact = _EXPIRES_PARAM_RE.sub(f";expires={expires_s}", contact)
        headers = [("Contact", contact)] if contact else []
        headers.append(("Expires", str(expires_s)))
        if with_date and self._time_sync and self._clock_trusted():
            headers.append(("Date", gb_date(self._now_utc(), self._utc_offset_minutes)))
        return response_to(req, 200, to_tag=tag, headers=headers)

    def _refuse(self, req: SipRequest, tag: str, device_id: str, status: int, reason: str) -> RegisterResult:
        log.info("REGISTER from %s refused (%d): %s", printable(device_id) or "(no id)", status, reason)
        # The reason phrase stays the standard one: the device learns nothing of why beyond the code.
        return RegisterResult(response_to(req, status, to_tag=tag), Outcome.REFUSED, device_id, reason=reason)
