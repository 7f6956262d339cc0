"""Review 17: with the SIP service on a dual-stack socket (`listen_host = "::"`, which the config accepts),
a device on IPv4 registers as `::ffff:a.b.c.d`. The media checks compare hosts canonically (review 16:
`same_host`), but the tcp-active check of the answer's `c=` compares the text: a device answering with its
own IPv4 address is logged as naming another address, and the session's facts (the `acquired` entry of
every download) carry `media_address_ignored` = its own address: the record says the device pointed the
station elsewhere when it did not.

Real platform, SIP and media sockets, real receiver."""

from __future__ import annotations

from pathlib import Path

from drivers.gb28181.sdp import SessionKind
from edge.gb28181.media import open_receiver
from edge.gb28181.platform import GbPlatform
from edge.gb28181.sessions import MediaRequest

from .platform_peer import FakeClock, Ledger, TestDevice, platform_settings

DEVICE = "34020000001320000027"
CHANNEL = "34020000001310000027"
PASSWORD = "12345678"


async def _ignored_address(tmp_path: Path, listen_host: str) -> str | None:
    platform = GbPlatform(platform_settings({DEVICE: PASSWORD}, listen_host=listen_host, idle_timeout_s=1.0),
                          record=Ledger(), clock_trusted=lambda: True, clock=FakeClock(),
                          open_receiver=open_receiver)
    await platform.start()
    device = await TestDevice(DEVICE, PASSWORD, platform.transport.port).start()  # its c= is 127.0.0.1
    try:
        assert (await device.register()).status == 200
        await device.listen_for_media()
        session = await platform.start_session(MediaRequest(
            DEVICE, CHANNEL, SessionKind.DOWNLOAD, "tcp-active", tmp_path / "raw.ps", 1_764_550_800,
            1_764_550_810, speed=4))
        result = await session.wait()
        assert device.media_connections == 1  # the station did connect to the device
        return result.media_address_ignored
    finally:
        await device.close()
        await platform.close()


async def test_a_device_answering_its_own_ipv4_address_on_a_dual_stack_platform_is_not_flagged(
        tmp_path: Path) -> None:
    ignored = await _ignored_address(tmp_path, "::")
    assert ignored is None, (f"media_address_ignored = {ignored!r}: the device's own address, read as "
                             "another because the platform sees it as ::ffff:127.0.0.1")


async def test_control_on_an_ipv4_platform_it_is_not_flagged(tmp_path: Path) -> None:
    assert await _ignored_address(tmp_path, "127.0.0.1") is None
