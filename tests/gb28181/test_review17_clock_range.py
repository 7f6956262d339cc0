"""Review 17: a recorder whose clock is far off (README's own case: an RTC reset after a battery swap, a
year off) has its recordings never listed, so never downloaded.

The RecordInfo range is `DownloadPolicy.query_range(station now)`: `lookback_days` back from the
station's now, put in the devices' zone, the device's measured clock offset ignored. A recording the
device made an hour ago is stamped by its own clock: a year ago for a clock a year behind, so outside
the range asked; the device (rightly) does not list it, nothing is downloaded, and no entry says a
recording may be missed: the ledger shows the offset (`clock_measured`) and nothing else. A clock ahead
likewise hides its recordings until the station's time catches up with their stamps (a clock a month
ahead: a month, past the 24-h copy rule and maybe the recorder's loop overwrite). Review 16 measured
and recorded that offset for exactly these recordings; the listing does not use it.

Real platform, real SIP sockets, real scheduler pass and store; the device answers RecordInfo for the range
it is asked (as devices do) and its INVITE answer is counted (no media: the download ends idle)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drivers.gb28181.manscdp import CatalogItem, RecordItem
from edge.gb28181.media import open_receiver
from edge.gb28181.platform import GbPlatform
from edge.gb28181.policy import DownloadPolicy
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.gb28181.scheduler import DeviceProgress, GbDownloadScheduler

from .platform_peer import FakeClock, Ledger, TestDevice, platform_settings

DEVICE = "34020000001320000022"
CHANNEL = "34020000001310000022"
PASSWORD = "12345678"
BEIJING = timedelta(hours=8)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StationStore]:
    s = StationStore(tmp_path / "store", "TEST-STATION")
    yield s
    s.close()


async def _invites_for_a_recording_made_an_hour_ago(store: StationStore, tmp_path: Path,
                                                    clock_off: timedelta) -> int:
    platform = GbPlatform(platform_settings({DEVICE: PASSWORD}, describe_devices=True, idle_timeout_s=1.0),
                          record=Ledger(), clock_trusted=lambda: True, clock=FakeClock(),
                          open_receiver=open_receiver)
    await platform.start()
    device_now = (datetime.now(UTC) + BEIJING + clock_off).replace(tzinfo=None, microsecond=0)
    recording = RecordItem(device_id=CHANNEL, name="rec", file_path="/sd/1.ps", address="",
                           start_time=device_now - timedelta(hours=1, minutes=10),
                           end_time=device_now - timedelta(hours=1), secrecy=0, type="time")
    device = await TestDevice(DEVICE, PASSWORD, platform.transport.port, device_time=device_now,
                              records=[recording],
                              channels=[CatalogItem(device_id=CHANNEL, name="cam")]).start()
    try:
        assert (await device.register()).status == 200
        while platform._tasks:  # the description measures the clock
            await asyncio.gather(*list(platform._tasks))
        registered = platform.registry.get(DEVICE)
        assert registered is not None and registered.clock_offset_s is not None
        assert abs(registered.clock_offset_s - clock_off.total_seconds()) < 60  # the offset is known
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
        policy = DownloadPolicy(enabled=True, when="on-registration", window=None, lookback_days=7, speed=4,
                                media_transport="udp", utc_offset_minutes=480)
        scheduler = GbDownloadScheduler(platform, policy, lambda: pipeline, spool=tmp_path / "spool",
                                        station_id="TEST-STATION", case={})
        await asyncio.wait_for(scheduler._pass(DEVICE, DeviceProgress()), 60)
        assert "RecordInfo" in device.queries  # the channel was asked
        return len(device.invites)
    finally:
        await device.close()
        await platform.close()


@pytest.mark.parametrize("clock_off", [-timedelta(days=365), timedelta(days=30)], ids=["year-behind",
                                                                                        "month-ahead"])
async def test_a_recording_of_a_device_whose_clock_is_far_off_is_downloaded(
        store: StationStore, tmp_path: Path, clock_off: timedelta) -> None:
    invites = await _invites_for_a_recording_made_an_hour_ago(store, tmp_path, clock_off)
    assert invites == 1, (
        f"a recording made an hour ago by a device whose clock is {clock_off.days} days off (measured) is "
        "never asked for: the RecordInfo range ignores the offset")


async def test_control_a_device_with_a_right_clock_has_it_downloaded(store: StationStore,
                                                                   tmp_path: Path) -> None:
    assert await _invites_for_a_recording_made_an_hour_ago(store, tmp_path, timedelta(0)) == 1
