"""Review 16: a MediaStatus 121 outside any dialog ends the device's one download when it comes from the
device's host on any port (platform `_message` checks host and transport only; `media_status_for_device`
takes the one history session). Behind a carrier NAT, the normal case for 4G recorders, the host is shared
by many subscribers: any of them, or anyone who can forge a UDP source address, ends the download at once.
What came is sealed incomplete, the attempt counts, and after three the recording is given up for good
(review 16, finding on the give-up not being on the ledger). Real platform, real UDP sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.gb28181.manscdp import build_media_status
from drivers.gb28181.sdp import SessionKind
from edge.gb28181.platform import GbPlatform
from edge.gb28181.sessions import EndReason, MediaRequest

from .platform_peer import FakeClock, Ledger, ReceiverFactory, TestDevice, platform_settings

DEVICE = "34020000001320000016"
CHANNEL = "34020000001310000016"
PASSWORD = "12345678"
START, END = 1_764_550_800, 1_764_551_100


@pytest.fixture
async def platform() -> AsyncIterator[GbPlatform]:
    platform = GbPlatform(platform_settings({DEVICE: PASSWORD}), record=Ledger(), clock_trusted=lambda: True,
                          clock=FakeClock(), open_receiver=ReceiverFactory())
    await platform.start()
    try:
        yield platform
    finally:
        await platform.close()


async def _download_and_out_of_dialog_121(platform: GbPlatform, tmp_path: Path, *, from_device: bool,
                                          host: str = "127.0.0.1") -> EndReason | None:
    device = await TestDevice(DEVICE, PASSWORD, platform.transport.port).start()
    other = await TestDevice(DEVICE, PASSWORD, platform.transport.port, host=host).start()
    try:
        assert (await device.register()).status == 200
        session = await platform.start_session(MediaRequest(
            DEVICE, CHANNEL, SessionKind.DOWNLOAD, "udp", tmp_path / "raw.ps", START, END, speed=1))
        sender = device if from_device else other
        await sender.message(build_media_status(90, DEVICE))
        ended = session.end_reason
        session.stop()
        await session.wait()
        return ended
    finally:
        await other.close()
        await device.close()


async def test_a_121_from_another_port_of_the_devices_host_does_not_end_its_download(
        platform: GbPlatform, tmp_path: Path) -> None:
    assert await _download_and_out_of_dialog_121(platform, tmp_path, from_device=False) is None


async def test_control_the_devices_own_121_ends_its_download(platform: GbPlatform, tmp_path: Path) -> None:
    assert await _download_and_out_of_dialog_121(platform, tmp_path, from_device=True) is EndReason.FILE_END
