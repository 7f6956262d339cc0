"""A pass that starts before the device's clock is measured (the platform's description asks DeviceStatus
after DeviceInfo and Catalog, the pass lists at once) asks DeviceStatus itself first, so RecordInfo is
asked in the device's time (review 17 finding 1). Real platform, SIP sockets, scheduler pass and store;
nothing else measures the clock here (no description, no time sync), or the platform's description does
and the pass waits for it. Control: a device that gives no DeviceTime keeps the station's range, and the
operator view says so."""

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

DEVICE = "34020000001320000027"
CHANNEL = "34020000001310000027"
PASSWORD = "12345678"
BEIJING = timedelta(hours=8)
YEAR_BEHIND = -timedelta(days=365)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StationStore]:
    s = StationStore(tmp_path / "store", "TEST-STATION")
    yield s
    s.close()


async def _pass(store: StationStore, tmp_path: Path, *, gives_time: bool,
                describe: bool = False) -> tuple[int, DeviceProgress, list[str]]:
    settings = platform_settings({DEVICE: PASSWORD}, describe_devices=describe, idle_timeout_s=1.0)
    platform = GbPlatform(settings, record=Ledger(), clock_trusted=lambda: True, clock=FakeClock(),
                          open_receiver=open_receiver)
    await platform.start()
    device_now = (datetime.now(UTC) + BEIJING + YEAR_BEHIND).replace(tzinfo=None, microsecond=0)
    recording = RecordItem(device_id=CHANNEL, name="rec", file_path="/sd/1.ps", address="",
                           start_time=device_now - timedelta(hours=1, minutes=10),
                           end_time=device_now - timedelta(hours=1), secrecy=0, type="time")
    device = await TestDevice(DEVICE, PASSWORD, platform.transport.port,
                              device_time=device_now if gives_time else None, records=[recording],
                              channels=[CatalogItem(device_id=CHANNEL, name="cam")]).start()
    try:
        assert (await device.register()).status == 200
        registered = platform.registry.get(DEVICE)
        assert registered is not None and registered.clock_offset_s is None  # not measured yet
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
        policy = DownloadPolicy(enabled=True, when="on-registration", window=None, lookback_days=7, speed=4,
                                media_transport="udp", utc_offset_minutes=480)
        scheduler = GbDownloadScheduler(platform, policy, lambda: pipeline, spool=tmp_path / "spool",
                                        station_id="TEST-STATION", case={})
        progress = DeviceProgress()
        await asyncio.wait_for(scheduler._pass(DEVICE, progress), 60)
        assert "RecordInfo" in device.queries
        return len(device.invites), progress, list(device.queries)
    finally:
        await device.close()
        await platform.close()


async def test_a_pass_measures_an_unmeasured_clock_before_listing(store: StationStore,
                                                                  tmp_path: Path) -> None:
    invites, progress, _ = await _pass(store, tmp_path, gives_time=True)
    assert invites == 1 and "clock offset -3153" in str(progress.listing_clock), progress.listing_clock


async def test_control_without_device_time_the_stations_range_is_asked_and_said(store: StationStore,
                                                                                tmp_path: Path) -> None:
    invites, progress, _ = await _pass(store, tmp_path, gives_time=False)
    assert invites == 0 and "not measured" in str(progress.listing_clock)


async def test_a_pass_waits_for_the_descriptions_measurement_rather_than_asking_twice(
        store: StationStore, tmp_path: Path) -> None:
    invites, progress, queries = await _pass(store, tmp_path, gives_time=True, describe=True)
    assert invites == 1 and "clock offset -3153" in str(progress.listing_clock)
    assert queries.count("DeviceStatus") == 1, queries
