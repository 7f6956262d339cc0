"""Review 22: a REGISTER that gives its expiry as the Contact's `expires` parameter (RFC 3261 10.2.1.1:
"either an Expires header field or an 'expires' Contact header parameter"), or none at all (10.3 step 7:
then the registrar chooses), is refused 400 "REGISTER without Expires", before any challenge. A device
whose SIP stack writes the expiry only in its Contact (which RFC 3261 allows; GB firmware is built on many
SIP stacks) can never register, however right its password.

Real platform and SIP sockets. Control: the same device with an Expires header registers."""

from __future__ import annotations

import secrets

from drivers.gb28181.digest import DigestChallenge, authorization_for
from drivers.gb28181.sip import SipResponse, request
from edge.gb28181.media import open_receiver
from edge.gb28181.platform import GbPlatform

from .platform_peer import DOMAIN, PLATFORM_ID, FakeClock, Ledger, TestDevice, platform_settings

DEVICE = "34020000001320000051"
PASSWORD = "12345678"


async def _register(expiry_in_contact: bool, *, none: bool = False, contact_expires: int = 3600,
                    finals: list[SipResponse] | None = None) -> int:
    platform = GbPlatform(platform_settings({DEVICE: PASSWORD}), record=Ledger(), clock_trusted=lambda: True,
                          clock=FakeClock(), open_receiver=open_receiver)
    await platform.start()
    device = await TestDevice(DEVICE, PASSWORD, platform.transport.port).start()
    try:
        assert device.sip is not None
        call_id = secrets.token_hex(8)
        uri = f"sip:{PLATFORM_ID}@{DOMAIN}"
        contact = f"<sip:{DEVICE}@127.0.0.1:{device.sip.port}>"
        expiry = [("Contact", f"{contact};expires={contact_expires}")] if expiry_in_contact else \
            [("Contact", contact), ("Expires", "3600")]
        if none:
            expiry = [("Contact", contact)]

        def fields(cseq: int) -> list[tuple[str, str]]:
            return [("From", f"<sip:{DEVICE}@{DOMAIN}>;tag={secrets.token_hex(4)}"),
                    ("To", f"<sip:{DEVICE}@{DOMAIN}>"), ("Call-ID", call_id), ("CSeq", f"{cseq} REGISTER"),
                    ("Max-Forwards", "70"), *expiry]

        answer = await device.sip.request(request("REGISTER", uri, fields(1)), device.platform)
        if answer.status != 401:
            return answer.status
        challenge = DigestChallenge.parse(answer.headers.get("WWW-Authenticate") or "")
        credentials = authorization_for(challenge, username=DEVICE, password=PASSWORD, method="REGISTER",
                                        uri=uri)
        second = request("REGISTER", uri, [*fields(2), ("Authorization", str(credentials))])
        final = await device.sip.request(second, device.platform)
        if finals is not None:
            finals.append(final)
        return final.status
    finally:
        await device.close()
        await platform.close()


async def test_an_expiry_given_in_the_contact_parameter_registers() -> None:
    status = await _register(expiry_in_contact=True)
    assert status == 200, f"REGISTER with Contact ...;expires=3600 and no Expires header answered {status}"


async def test_control_an_expires_header_registers() -> None:
    assert await _register(expiry_in_contact=False) == 200


async def test_no_expiry_at_all_registers_for_the_registrars_default() -> None:
    """RFC 3261 10.3 step 7: with neither an Expires header nor a Contact parameter the registrar chooses:
    3600 s here (within register_expires_min_s and register_expires_max_s, both 3600 by default)."""
    answer: list[SipResponse] = []
    assert await _register(False, none=True, finals=answer) == 200
    assert answer[0].headers.get("Expires") == "3600"


async def test_a_longer_contact_expiry_is_granted_the_maximum_and_the_contact_says_so() -> None:
    """The 200's Contact carries what was granted, not the longer expiry asked (RFC 3261 10.3 step 8): a
    device that reads it there registers again in time."""
    answer: list[SipResponse] = []
    assert await _register(True, contact_expires=86400, finals=answer) == 200
    assert answer[0].headers.get("Expires") == "3600"
    assert (answer[0].headers.get("Contact") or "").endswith(";expires=3600")
