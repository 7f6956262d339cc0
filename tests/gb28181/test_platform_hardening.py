"""Review 12's notes on the platform, each a refusal with its control, over real sockets:

* only an authenticated REGISTER moves a device anywhere; a keepalive (MANSCDP has no authentication) moves
  it only to another port of its host, and the digest user name must be the device id of the From;
* answers to SNs the platform never asked for are dropped before the multi-part assembler and counted;
* tcp-active connects only to the device's own source address, whatever the answer's c= names.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drivers.gb28181.manscdp import RecordItem, build_record_info_responses
from drivers.gb28181.sdp import SessionKind
from drivers.gb28181.sip_transport import Transport
from edge.gb28181.platform import GbPlatform
from edge.gb28181.sessions import MediaRequest

from .platform_peer import FakeClock, Ledger, ReceiverFactory, TestDevice, platform_settings

DEVICE = "34020000001320000001"
OTHER = "34020000001320000002"
CHANNEL = "34020000001310000001"
PASSWORD = "12345678"
SHARED = "shared-weak"
LARGE_BODY_BYTES = 64 * 1024  # a body this large must not be parsed on the event loop


@pytest.fixture
def receivers() -> ReceiverFactory:
    return ReceiverFactory()


@pytest.fixture
async def platform(receivers: ReceiverFactory) -> AsyncIterator[GbPlatform]:
    platform = GbPlatform(platform_settings({DEVICE: PASSWORD, OTHER: PASSWORD}, unknown_password=SHARED),
                          record=Ledger(), clock_trusted=lambda: True, clock=FakeClock(),
                          open_receiver=receivers)
    await platform.start()
    try:
        yield platform
    finally:
        await platform.close()


async def device_on(platform: GbPlatform, device_id: str = DEVICE, host: str = "127.0.0.1") -> TestDevice:
    return await TestDevice(device_id, PASSWORD, platform.transport.port, host=host).start()


# -- who may move a device ----------------------------------------------------------------------------------


async def test_a_digest_for_another_user_name_is_refused(platform: GbPlatform) -> None:
    device = await device_on(platform)
    try:
        # The right password for DEVICE, but the digest made for the user name of OTHER (same password).
        refused = await device.register(username=OTHER)
        assert refused.status == 403
        state = platform.registry.get(DEVICE)
        assert state is None or not state.registered
        ledger = platform._record
        assert isinstance(ledger, Ledger)
        [entry] = ledger.of("refused")
        assert "is not the device id" in entry["reason"] and entry["device_id"] == DEVICE
        assert (await device.register()).status == 200  # the control: its own user name
    finally:
        await device.close()


async def test_a_keepalive_from_another_host_moves_nothing_and_an_authenticated_register_does(
        platform: GbPlatform) -> None:
    device = await device_on(platform)
    impostor = await device_on(platform, host="127.0.0.2")
    try:
        assert (await device.register()).status == 200
        registered_at = platform.registry.get(DEVICE).address  # type: ignore[union-attr]
        assert (await impostor.keepalive()).status == 404  # a keepalive proves nothing
        assert platform.registry.get(DEVICE).address == registered_at  # type: ignore[union-attr]
        await platform.query_device_info(DEVICE)
        assert device.queries == ["DeviceInfo"] and impostor.queries == []  # requests still go to the device
        # Control: the same host from another port (a NAT rebinding) is followed ...
        await device.rebind()
        assert (await device.keepalive()).status == 200
        moved = platform.registry.get(DEVICE).address  # type: ignore[union-attr]
        assert moved is not None and moved.port == device.sip.port != registered_at.port  # type: ignore[union-attr]
        # ... and a REGISTER with the password moves it to another host.
        assert (await impostor.register()).status == 200
        assert platform.registry.get(DEVICE).address.host == "127.0.0.2"  # type: ignore[union-attr]
    finally:
        await device.close()
        await impostor.close()


# -- answers nobody asked for -------------------------------------------------------------------------------


def _records(count: int) -> list[RecordItem]:
    start = datetime(2026, 12, 5, 9, 0)
    return [RecordItem(device_id=CHANNEL, name=f"r{i}", file_path=f"/r/{i}", address="",
                       start_time=start + timedelta(seconds=30 * i),
                       end_time=start + timedelta(seconds=30 * i + 29), secrecy=0, type="time",
                       recorder_id="") for i in range(count)]


async def test_unsolicited_answers_are_dropped_before_the_assembler_and_counted(platform: GbPlatform) -> None:
    device = await device_on(platform)
    try:
        assert (await device.register()).status == 200
        # Parts of 80 multi-part answers nobody asked for (SumNum 3, one part each): none may stay in the
        # assembler, whose room for answers in progress (64) is the platform's.
        for sn in range(1000, 1080):
            [first, *_] = build_record_info_responses(sn, CHANNEL, "x", _records(3), per_message=1)
            assert (await device.message(first)).status == 200
        assert len(platform.queries._assembler) == 0
        assert platform.snapshot()["counters"]["unsolicited_answers"] == 80
        # Control: an answer to a RecordInfo the platform sent is assembled and handed out.
        device.records = _records(3)
        answer = await platform.query_record_info(DEVICE, CHANNEL, datetime(2026, 12, 5, tzinfo=UTC),
                                                  datetime(2026, 12, 6, tzinfo=UTC))
        assert answer.complete and len(answer.items) == 3
        assert platform.snapshot()["counters"]["unsolicited_answers"] == 80
    finally:
        await device.close()


# -- tcp-active connects only to the device ------------------------------------------------------------------


def tcp_active(tmp_path: Path) -> MediaRequest:
    return MediaRequest(DEVICE, CHANNEL, SessionKind.DOWNLOAD, "tcp-active", tmp_path / "raw.ps",
                        1_764_550_800, 1_764_551_100)


@pytest.mark.parametrize("named", ["127.0.0.2", "media.example.invalid"])
async def test_tcp_active_connects_to_the_devices_source_address_only(
        platform: GbPlatform, receivers: ReceiverFactory, tmp_path: Path, named: str) -> None:
    device = await device_on(platform)
    await device.listen_for_media()
    victim_connections = 0

    async def victim(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal victim_connections
        victim_connections += 1
        writer.close()

    # Another host listening on the port the device answers with: where a followed c= would lead.
    other = await asyncio.start_server(victim, "127.0.0.2", device.media_port)
    try:
        assert (await device.register()).status == 200
        device.media_answer_host = named
        session = await platform.start_session(tcp_active(tmp_path))
        async with asyncio.timeout(10):
            await receivers.made[0].got_bytes.wait()  # from the device, not from wherever c= pointed
        session.stop()
        result = await session.wait()
        assert device.media_connections == 1 and victim_connections == 0
        assert result.media_address_ignored == named and result.facts()["media_address_ignored"] == named
    finally:
        other.close()
        await device.close()


async def test_tcp_active_to_the_devices_own_address_records_nothing(
        platform: GbPlatform, receivers: ReceiverFactory, tmp_path: Path) -> None:
    device = await device_on(platform)
    await device.listen_for_media()
    try:
        assert (await device.register()).status == 200
        session = await platform.start_session(tcp_active(tmp_path))
        await receivers.made[0].got_bytes.wait()
        session.stop()
        result = await session.wait()
        assert device.media_connections == 1 and result.media_address_ignored is None
    finally:
        await device.close()


# -- large bodies are parsed off the event loop ------------------------------------------------------------


async def test_a_large_answer_is_parsed_off_the_event_loop(platform: GbPlatform,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import edge.gb28181.platform as platform_module

    parsed_on: list[tuple[int, bool]] = []
    real_parse = platform_module.parse_message  # type: ignore[attr-defined]

    def spy(body: bytes, **kw: object) -> object:
        parsed_on.append((len(body), threading.current_thread() is threading.main_thread()))
        return real_parse(body, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(platform_module, "parse_message", spy)
    # Over TCP, as large answers come (a UDP datagram holds 64 KiB).
    device = await TestDevice(DEVICE, PASSWORD, platform.transport.port, transport=Transport.TCP).start()
    try:
        assert (await device.register()).status == 200
        assert (await device.keepalive()).status == 200  # control: a small body is parsed on the loop
        device.records = _records(1000)  # one part of ~250 KiB (the SIP parser takes up to 1 MiB)
        device.per_message = 1000
        answer = await platform.query_record_info(DEVICE, CHANNEL, datetime(2026, 12, 5, tzinfo=UTC),
                                                  datetime(2026, 12, 6, tzinfo=UTC))
        assert answer.complete and len(answer.items) == 1000
        small = [on_loop for size, on_loop in parsed_on if size < LARGE_BODY_BYTES]
        large = [on_loop for size, on_loop in parsed_on if size >= LARGE_BODY_BYTES]
        assert small and all(small)
        assert large and not any(large), parsed_on
    finally:
        await device.close()
