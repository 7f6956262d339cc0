"""Hostile input to the platform over real sockets: garbage SIP, unreadable and oversized XML, a device that
claims another's id. Each gets a clear answer (or is dropped with a log line), an error entry in the
ledger where a device is named, no raw bytes in the log, and the service keeps serving."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from drivers.gb28181.manscdp import Root, build_body, build_keepalive
from drivers.gb28181.sip_transport import Transport
from edge.gb28181.platform import GbPlatform

from .platform_peer import FakeClock, Ledger, TestDevice, platform_settings

DEVICE = "34020000001320000001"
OTHER = "34020000001320000002"
PASSWORD = "12345678"


@pytest.fixture
async def platform() -> AsyncIterator[GbPlatform]:
    platform = GbPlatform(platform_settings({DEVICE: PASSWORD, OTHER: "other-pass"}), record=Ledger(),
                          clock_trusted=lambda: True, clock=FakeClock())
    await platform.start()
    try:
        yield platform
    finally:
        await platform.close()


def ledger_of(platform: GbPlatform) -> Ledger:
    ledger = platform._record
    assert isinstance(ledger, Ledger)
    return ledger


async def registered(platform: GbPlatform, device_id: str = DEVICE, password: str = PASSWORD,
                     **kw: object) -> TestDevice:
    device = await TestDevice(device_id, password, platform.transport.port, **kw).start()  # type: ignore[arg-type]
    assert (await device.register()).status == 200
    return device


async def test_garbage_sip_is_dropped_and_the_service_keeps_running(
    platform: GbPlatform, caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()
    udp, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                 remote_addr=("127.0.0.1", platform.transport.port))
    _, writer = await asyncio.open_connection("127.0.0.1", platform.transport.port)
    with caplog.at_level(logging.WARNING):
        udp.sendto(b"REGISTER \x1b[31mnonsense\r\n\r\n")
        writer.write(b"\x00\xff" * 300 + b"\r\n\r\n")
        await writer.drain()
        device = await registered(platform)  # afterwards, the service serves as before
    udp.close()
    writer.close()
    try:
        assert "SIP datagram from udp:127.0.0.1" in caplog.text
        assert "\x1b" not in caplog.text
        assert (await device.keepalive()).status == 200
    finally:
        await device.close()


async def test_unreadable_xml_gets_400_a_log_line_naming_the_device_and_a_ledger_error(
    platform: GbPlatform, caplog: pytest.LogCaptureFixture
) -> None:
    device = await registered(platform)
    try:
        with caplog.at_level(logging.WARNING):
            answer = await device.message(b"<Notify><CmdType>Keepalive\x1b[2J</CmdType><SN>1<SN></Notify>")
        assert answer.status == 400
        assert f"(device {DEVICE})" in caplog.text and "unreadable MANSCDP" in caplog.text
        assert "\x1b" not in caplog.text
        errors = ledger_of(platform).of("error")
        assert len(errors) == 1 and errors[0]["device_id"] == DEVICE
        assert errors[0]["reason"].startswith("unreadable MANSCDP")
        # Control: the same device's readable keepalive is taken.
        assert (await device.keepalive()).status == 200
    finally:
        await device.close()


async def test_entity_declarations_are_refused(platform: GbPlatform) -> None:
    device = await registered(platform)
    bomb = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
            b"<Notify><CmdType>Keepalive</CmdType><SN>1</SN><DeviceID>&b;</DeviceID></Notify>")
    try:
        assert (await device.message(bomb)).status == 400
        assert (await device.keepalive()).status == 200
    finally:
        await device.close()


async def test_oversized_answers_are_refused_and_the_device_still_served(platform: GbPlatform) -> None:
    device = await registered(platform, transport=Transport.TCP)
    items: list[Any] = [("Item", [("DeviceID", DEVICE)], {}) for _ in range(10_001)]  # Annex N: at most 10000
    body = build_body(Root.RESPONSE, "RecordInfo", 5, DEVICE,
                      [("SumNum", "10001"), ("RecordList", items, {"Num": "10001"})])
    try:
        assert len(body) > 200_000
        assert (await device.message(body)).status == 400
        assert ledger_of(platform).of("error")[0]["reason"].startswith("unreadable MANSCDP")
        assert (await device.keepalive()).status == 200
    finally:
        await device.close()


async def test_a_device_claiming_another_devices_id_is_refused(platform: GbPlatform) -> None:
    device = await registered(platform)
    other = await registered(platform, OTHER, "other-pass")
    impostor = await TestDevice(DEVICE, "guess", platform.transport.port, host="127.0.0.2").start()
    try:
        # A registered device whose keepalive names another device.
        assert (await other.keepalive(claimed_id=DEVICE)).status == 403
        # Another host sending as DEVICE: not proof of anything, register (with the password) first.
        assert (await impostor.keepalive()).status == 404
        address = platform.registry.get(DEVICE).address  # type: ignore[union-attr]
        assert address is not None and address.host == "127.0.0.1" and address.port == device.sip.port  # type: ignore[union-attr]
        # And registering as DEVICE without its password fails.
        assert (await impostor.register()).status == 403
        reasons = [(e.get("device_id"), e.get("reason", "")) for e in ledger_of(platform).entries_data()]
        assert (OTHER, f"keepalive naming another device ({DEVICE})") in reasons
        assert any(d == DEVICE and r.startswith("MESSAGE from udp:127.0.0.2") for d, r in reasons)
        assert any(d == DEVICE and r.startswith("authentication failed") for d, r in reasons)
        # Control: the real device's keepalive is still taken.
        assert (await device.keepalive()).status == 200
    finally:
        await impostor.close()
        await other.close()
        await device.close()


async def test_messages_from_unregistered_devices_get_404(platform: GbPlatform) -> None:
    stranger = await TestDevice(DEVICE, PASSWORD, platform.transport.port).start()
    try:
        assert (await stranger.message(build_keepalive(1, DEVICE))).status == 404
        assert ledger_of(platform).of("error")[0]["reason"] == "MESSAGE from a device that is not registered"
        # Control: after registering, the same keepalive is taken.
        assert (await stranger.register()).status == 200
        assert (await stranger.message(build_keepalive(2, DEVICE))).status == 200
    finally:
        await stranger.close()


def test_refusals_from_many_sources_are_held_to_a_budget() -> None:
    """Forged UDP sources could each start a key of their own: beyond the budget per minute nothing is
    recorded but a count, which the next entry let through reports."""
    from edge.custody.entry_limits import LimitedEntries

    clock = FakeClock()
    limiter = LimitedEntries(clock, repeat_s=60, budget=3, station_budget=3)
    assert [limiter.seen("403", f"10.0.0.{i}") for i in range(5)] == [{}, {}, {}, None, None]
    assert limiter.seen("403", "10.0.0.1") is None  # a repeat within the minute: held back too
    clock.now += 60
    # Its own repeat counted, and the two over the budget, reported once.
    assert limiter.seen("403", "10.0.0.1") == {"repeats_not_recorded": 1, "others_not_recorded": 2}
    assert limiter.seen("403", "10.0.0.2") == {}


async def test_made_up_device_ids_from_one_host_get_one_ledger_entry(platform: GbPlatform) -> None:
    """A peer that invents a new device id for every REGISTER is limited by its host, not by the ids."""
    made_up = [f"340200000013200001{i:02d}" for i in range(6)]
    for device_id in made_up:
        stranger = await TestDevice(device_id, PASSWORD, platform.transport.port).start()
        try:
            assert (await stranger.register()).status == 403
        finally:
            await stranger.close()
    refused = ledger_of(platform).of("refused")
    assert [r["device_id"] for r in refused] == [made_up[0]]
    # Control: a configured device's refusals are its own (another key), so they are still recorded.
    device = await TestDevice(DEVICE, PASSWORD, platform.transport.port).start()
    try:
        assert (await device.register(password="wrong")).status == 403
        assert [r["device_id"] for r in ledger_of(platform).of("refused")] == [made_up[0], DEVICE]
    finally:
        await device.close()
