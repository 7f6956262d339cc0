"""Review 22: a REGISTER that gives its expiry as the Contact's `expires` parameter (RFC 3261 10.2.1.1:
"either an Expires header field or an 'expires' Contact header parameter"), or none at all (10.3 step 7:
then the registrar chooses), is refused 400 "REGISTER without Expires", before any challenge. A device
whose SIP stack writes the expiry only in its Contact (which RFC 3261 allows; GB firmware is built on many
SIP stacks) can never register, however right its password.

Real platform and SIP sockets. Control: the same device with an Expires header registers."""

from __future__ import annotations

import secrets

from drivers.gb28181.digest import DigestChallenge, authorization_for
from drivers.gb28181.sip import request
from edge.gb28181.media import open_receiver
from edge.gb28181.platform import GbPlatform

from .platform_peer import DOMAIN, PLATFORM_ID, FakeClock, Ledger, TestDevice, platform_settings

DEVICE = "34020000001320000051"
PASSWORD = "12345678"


async def _register(expiry_in_contact: bool) -> int:
    platform = GbPlatform(platform_settings({DEVICE: PASSWORD}), record=Ledger(), clock_trusted=lambda: True,
                          clock=FakeClock(), open_receiver=open_receiver)
    await platform.start()
    device = await TestDevice(DEVICE, PASSWORD, platform.transport.port).start()
    try:
        assert device.sip is not None
        call_id = secrets.token_hex(8)
        uri = f"sip:{PLATFORM_ID}@{DOMAIN}"
        contact = f"<sip:{DEVICE}@127.0.0.1:{device.sip.port}>"
        expiry = [("Contact", f"{contact};expires=3600")] if expiry_in_contact else \
            [("Contact", contact), ("Expires", "3600")]

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
        return (await device.sip.request(second, device.platform)).status
    finally:
        await device.close()
        await platform.close()


async def test_an_expiry_given_in_the_contact_parameter_registers() -> None:
    status = await _register(expiry_in_contact=True)
    assert status == 200, f"REGISTER with Contact ...;expires=3600 and no Expires header answered {status}"


async def test_control_an_expires_header_registers() -> None:
    assert await _register(expiry_in_contact=False) == 200
