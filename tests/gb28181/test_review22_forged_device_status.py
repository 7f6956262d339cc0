"""Review 22: a DeviceStatus answer forged from another port of the device's host sets the device's
clock offset, the one every later recording's manifest carries (`device_clock_offset_ms`) and the one the
station corrects the device's clock by (the Date of its next 200 OK).

`_message` takes a MANSCDP Response from any port of the host a device registered from ("an answer from
another port of its host is still taken, matched by SN"), and the SN needs no guessing: one counter for
the whole station, counting up by one per query (queries.SnAllocator), so any device learns the SN of the
next query to another device from the SN of a query to itself. Another subscriber behind the same carrier
NAT as a recorder (the case the README's hardening names for MediaStatus 121, which it therefore takes only
from the exact address) can thus put a clock offset of its choosing on the evidence of someone else's
recorder. The README's known limits name injected media packets for such a host, not the clock
measurement, which is worse: it is not counted anywhere and it changes the time of every recording.

Real platform and SIP sockets. Device A (the victim) answers DeviceStatus after 0.5 s, with its true time;
device B is the attacker's own registered device on the same host; the forgery comes from a third port of
that host. Control: the same forgery from another host is refused and A's true offset is measured."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from drivers.gb28181.manscdp import DeviceStatusResponse, build_device_status_response, parse_message
from drivers.gb28181.sip import SipRequest, SipResponse
from drivers.gb28181.sip_transport import Peer
from edge.gb28181.media import open_receiver
from edge.gb28181.platform import GbPlatform

from .platform_peer import FakeClock, Ledger, TestDevice, platform_settings

VICTIM = "34020000001320000041"
ATTACKER = "34020000001320000042"
PASSWORD = "12345678"
BEIJING = timedelta(hours=8)
FORGED_OFFSET_S = 3600


def _beijing_now() -> datetime:
    return (datetime.now(UTC) + BEIJING).replace(tzinfo=None, microsecond=0)


class SlowDevice(TestDevice):
    """Answers like a real recorder: after a moment. Records the SNs it was asked."""

    def __init__(self, *args: Any, delay_s: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.delay_s = delay_s
        self.sns: list[int] = []

    async def _handle(self, req: SipRequest, peer: Peer) -> SipResponse | None:
        if req.method == "MESSAGE":
            self.sns.append(parse_message(req.body).sn)
        return await super()._handle(req, peer)

    async def _answer(self, query: Any) -> None:
        self.device_time = _beijing_now()
        await asyncio.sleep(self.delay_s)
        self.device_time = _beijing_now()
        await super()._answer(query)


async def _measured_offset(forger_host: str) -> float | None:
    platform = GbPlatform(platform_settings({VICTIM: PASSWORD, ATTACKER: PASSWORD}), record=Ledger(),
                          clock_trusted=lambda: True, clock=FakeClock(), open_receiver=open_receiver)
    await platform.start()
    port = platform.transport.port
    victim = SlowDevice(VICTIM, PASSWORD, port, delay_s=0.5)
    attacker = SlowDevice(ATTACKER, PASSWORD, port)
    await victim.start()
    await attacker.start()
    # Not registered: it only sends the forged answer, with the victim's id in From.
    forger = await TestDevice(VICTIM, "", port, host=forger_host).start()
    try:
        assert (await victim.register()).status == 200
        assert (await attacker.register()).status == 200
        await platform.query_device_status(ATTACKER)  # the attacker learns the station's SN counter
        next_sn = attacker.sns[-1] + 1
        query = asyncio.ensure_future(platform.query_device_status(VICTIM))
        forged_time = _beijing_now() + timedelta(seconds=FORGED_OFFSET_S)
        body = build_device_status_response(next_sn, VICTIM, DeviceStatusResponse(
            result="OK", online="ONLINE", status="OK", device_time=forged_time))
        await forger.message(body)
        await query
        await victim.settled()
        device = platform.registry.get(VICTIM)
        assert device is not None
        return device.clock_offset_s
    finally:
        for peer in (forger, attacker, victim):
            await peer.close()
        await platform.close()


async def test_a_device_status_forged_from_another_port_of_the_devices_host_is_not_its_clock() -> None:
    offset = await _measured_offset("127.0.0.1")
    assert offset is not None and abs(offset) < 60, (
        f"the victim's clock offset is {offset} s: the forged DeviceStatus (another port of its host, the "
        "SN one more than the attacker's own query) was taken as its clock")


async def test_control_the_same_forgery_from_another_host_is_refused() -> None:
    offset = await _measured_offset("127.0.0.2")
    assert offset is not None and abs(offset) < 60
