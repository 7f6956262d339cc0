"""Review 20 (MEDIUM): a DeviceStatus whose DeviceTime is at the edge of what MANSCDP can write
(9999-12-31T23:59:59: a corrupt RTC, a hostile device) makes every download pass of the device die with an
OverflowError: nothing of it is listed or downloaded, and no ledger entry says why.

Review 17's fix shifts the RecordInfo range by the measured offset (`device_ranges`) and converts it to the
devices' zone (`query_record_info`: `+ utc_offset_minutes`): at a pass an hour after the measurement (the
next window, the next online: the offset is kept, not measured again), the range ends at the device's now,
past 9999-12-31 23:59:59 local: past `datetime.max`. The error is not a QueryError: it leaves
`_pass` (the scheduler logs an exception and ends the pass) at every pass, while the device's recordings
(whatever their stamps) are never asked for. An offset this absurd is no offset to ask in: the station's
range should be asked (as for an unmeasured clock), and the absurd clock said on the ledger.

Real platform, SIP sockets, scheduler pass and store."""

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

DEVICE = "34020000001320000024"
CHANNEL = "34020000001310000024"
PASSWORD = "12345678"
BEIJING = timedelta(hours=8)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StationStore]:
    s = StationStore(tmp_path / "store", "TEST-STATION")
    yield s
    s.close()


async def _pass_with_device_time(store: StationStore, tmp_path: Path, device_time: datetime) -> list[str]:
    """A device whose DeviceStatus says `device_time` is measured; its pass an hour later; the queries it
    was asked. The pass must end by itself (anything else is a failed pass)."""
    platform = GbPlatform(platform_settings({DEVICE: PASSWORD}, describe_devices=False, idle_timeout_s=1.0),
                          record=Ledger(), clock_trusted=lambda: True, clock=FakeClock(),
                          open_receiver=open_receiver)
    await platform.start()
    right = (datetime.now(UTC) + BEIJING).replace(tzinfo=None, microsecond=0)
    recording = RecordItem(device_id=CHANNEL, name="rec", file_path="/sd/1.ps", address="",
                           start_time=right - timedelta(hours=1, minutes=10),
                           end_time=right - timedelta(hours=1), secrecy=0, type="time")
    device = await TestDevice(DEVICE, PASSWORD, platform.transport.port, device_time=device_time,
                              records=[recording],
                              channels=[CatalogItem(device_id=CHANNEL, name="cam")]).start()
    try:
        assert (await device.register()).status == 200
        await platform.query_device_status(DEVICE)  # measured at its online
        assert "DeviceStatus" in device.queries
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
        policy = DownloadPolicy(enabled=True, when="on-registration", window=None, lookback_days=7, speed=4,
                                media_transport="udp", utc_offset_minutes=480)
        scheduler = GbDownloadScheduler(platform, policy, lambda: pipeline, spool=tmp_path / "spool",
                                        station_id="TEST-STATION", case={},
                                        now=lambda: datetime.now(UTC) + timedelta(hours=1))
        try:
            await asyncio.wait_for(scheduler._pass(DEVICE, DeviceProgress()), 60)
        except (OverflowError, ValueError) as exc:
            pytest.fail(f"the pass of a device whose DeviceTime is {device_time.isoformat()} failed: "
                        f"{type(exc).__name__}: {exc} (its recordings are never listed, at any pass)")
        return device.queries
    finally:
        await device.close()
        await platform.close()


async def test_a_device_time_at_the_end_of_the_calendar_does_not_kill_every_pass(
        store: StationStore, tmp_path: Path) -> None:
    queries = await _pass_with_device_time(store, tmp_path, datetime(9999, 12, 31, 23, 59, 59))
    assert "RecordInfo" in queries, "the device's recordings are not asked for"


async def test_control_a_device_time_a_year_behind_is_listed(store: StationStore, tmp_path: Path) -> None:
    behind = (datetime.now(UTC) + BEIJING - timedelta(days=365)).replace(tzinfo=None, microsecond=0)
    queries = await _pass_with_device_time(store, tmp_path, behind)
    assert "RecordInfo" in queries


async def test_a_device_time_a_thousand_years_back_does_not_kill_every_pass(
        store: StationStore, tmp_path: Path) -> None:
    queries = await _pass_with_device_time(store, tmp_path, datetime(1000, 1, 1, 0, 0, 1))
    assert "RecordInfo" in queries, "the device's recordings are not asked for"


def test_device_ranges_past_the_calendars_ends_fall_back_to_the_station_range() -> None:
    """Pure: an offset (current or of an earlier stretch) that shifts past datetime's ends asks the
    station's range, never raises; a sane one (control) is shifted."""
    from edge.gb28181.policy import device_ranges

    end = datetime(2026, 12, 5, tzinfo=UTC)
    start = end - timedelta(days=7)
    huge = 9000 * 365.25 * 86400
    assert device_ranges(start, end, huge) == [(start, end)]
    assert device_ranges(start, end, -huge, [(huge, end.timestamp() - 3600)]) == [(start, end)]
    shifted = device_ranges(start, end, -3600.0)
    assert shifted == [(start - timedelta(hours=1), end - timedelta(hours=1))]


async def test_an_absurd_device_time_is_one_ledger_entry_and_no_offset() -> None:
    ledger = Ledger()
    platform = GbPlatform(platform_settings({DEVICE: PASSWORD}, describe_devices=False, idle_timeout_s=1.0),
                          record=ledger, clock_trusted=lambda: True, clock=FakeClock(),
                          open_receiver=open_receiver)
    await platform.start()
    device = await TestDevice(DEVICE, PASSWORD, platform.transport.port,
                              device_time=datetime(9999, 12, 31, 23, 59, 59)).start()
    try:
        assert (await device.register()).status == 200
        await platform.query_device_status(DEVICE)
        await platform.query_device_status(DEVICE)
        registered = platform.registry.get(DEVICE)
        assert registered is not None and registered.clock_offset_s is None
        absurd = [e for e in ledger.entries if e[1].get("absurd")]
        assert len(absurd) == 1 and absurd[0][1]["offset_s"] is None
        assert platform.device_clock_reading(DEVICE, "2026-12-05T10:00:00")[0] is None
    finally:
        await device.close()
        await platform.close()
