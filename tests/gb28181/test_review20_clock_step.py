"""Review 20 (HIGH): a device clock that stepped by itself (the RTC reset at a reboot that the README and
the reference name as the field's commonest clock fault; a clock set from the device's menu or its own
NTP) hides the recordings made before the step, and the ledger gives them the new clock's offset.

Review 17's fix asks RecordInfo only in the device's *current* time: the policy's range shifted by the
newest measured offset, plus stretches of clocks that ended at a *station's* setting (`clock_set`). A step
the station did not make leaves no epoch: `clock_measured` overwrites the open epoch's offset. So a body
camera that recorded at 10:00 with a right clock, rebooted at 11:00 with its RTC back a year, is measured
a year behind, and its pass asks only for a year ago: the 10:00 recording (stamped right, the station had
even measured that clock) is not listed, not downloaded, and no entry says so. Before the fix the
station's own range was asked and it was found. And `device_clock_reading` gives a stamp the new clock
cannot have made (a year past its now) the new clock's offset: a download of it would carry an offset a
year off on the ledger, a concrete wrong value instead of "unknown".

With time_sync on and a device that obeys Date, a pass after its next registration finds it again; with
time_sync off, or a device that ignores Date (common), never. Real platform, SIP sockets, scheduler pass
and store; the device answers RecordInfo for the range asked."""

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

DEVICE = "34020000001320000023"
CHANNEL = "34020000001310000023"
PASSWORD = "12345678"
BEIJING = timedelta(hours=8)
YEAR_BACK = -timedelta(days=365)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StationStore]:
    s = StationStore(tmp_path / "store", "TEST-STATION")
    yield s
    s.close()


def _right_now() -> datetime:
    return (datetime.now(UTC) + BEIJING).replace(tzinfo=None, microsecond=0)


async def _stepped(step: timedelta) -> tuple[GbPlatform, TestDevice, RecordItem]:
    """A device measured with a right clock, which recorded 2 h ago; then its clock stepped by `step`
    (no setting by the station) and it is measured again (as the platform does at its next online)."""
    platform = GbPlatform(platform_settings({DEVICE: PASSWORD}, describe_devices=True, idle_timeout_s=1.0),
                          record=Ledger(), clock_trusted=lambda: True, clock=FakeClock(),
                          open_receiver=open_receiver)
    await platform.start()
    right = _right_now()
    recording = RecordItem(device_id=CHANNEL, name="rec", file_path="/sd/before-step.ps", address="",
                           start_time=right - timedelta(hours=2, minutes=10),
                           end_time=right - timedelta(hours=2), secrecy=0, type="time")
    device = await TestDevice(DEVICE, PASSWORD, platform.transport.port, device_time=right,
                              records=[recording],
                              channels=[CatalogItem(device_id=CHANNEL, name="cam")]).start()
    assert (await device.register()).status == 200
    while platform._tasks:  # the description measures the right clock
        await asyncio.gather(*list(platform._tasks))
    registered = platform.registry.get(DEVICE)
    assert registered is not None and registered.clock_offset_s is not None
    assert abs(registered.clock_offset_s) < 60
    device.device_time = right + step  # the reboot: RTC back (or the device's own setting)
    await platform.query_device_status(DEVICE)
    assert registered.clock_offset_s is not None
    assert abs(registered.clock_offset_s - step.total_seconds()) < 60
    return platform, device, recording


async def _invites_after_step(store: StationStore, tmp_path: Path, step: timedelta) -> int:
    platform, device, _ = await _stepped(step)
    try:
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
        policy = DownloadPolicy(enabled=True, when="on-registration", window=None, lookback_days=7, speed=4,
                                media_transport="udp", utc_offset_minutes=480)
        scheduler = GbDownloadScheduler(platform, policy, lambda: pipeline, spool=tmp_path / "spool",
                                        station_id="TEST-STATION", case={})
        await asyncio.wait_for(scheduler._pass(DEVICE, DeviceProgress()), 60)
        assert "RecordInfo" in device.queries
        return len(device.invites)
    finally:
        await device.close()
        await platform.close()


async def test_a_recording_made_before_the_device_clock_stepped_back_is_downloaded(
        store: StationStore, tmp_path: Path) -> None:
    invites = await _invites_after_step(store, tmp_path, YEAR_BACK)
    assert invites == 1, (
        "a recording made 2 h ago with a right (measured) clock is never asked for once the device's clock "
        "stepped a year back by itself: RecordInfo is asked only in the new clock's time")


async def test_control_a_device_whose_clock_did_not_step_has_it_downloaded(
        store: StationStore, tmp_path: Path) -> None:
    assert await _invites_after_step(store, tmp_path, timedelta(0)) == 1


async def test_a_stamp_of_the_clock_before_the_step_is_not_given_the_new_clocks_offset() -> None:
    platform, device, recording = await _stepped(YEAR_BACK)
    try:
        offset_ms, why = platform.device_clock_reading(DEVICE, recording.start_time)
        assert offset_ms is None or abs(offset_ms) < 60_000, (
            f"a recording stamped 2 h ago by the clock measured right is given {offset_ms} ms ({why}): the "
            "offset of the clock a year behind, which cannot have stamped a time a year past its now")
        # The old clock's own offset, not "unknown": the step's window is seconds long and the new clock,
        # a year behind, cannot have stamped it.
        assert offset_ms is not None and why is None
        # A stamp at the stepped clock's now: the new clock made it, or the right clock a year ago (the
        # station knows nothing that tells them apart): no offset, never the right clock's as if certain.
        back_ms, back_why = platform.device_clock_reading(DEVICE, _right_now() + YEAR_BACK)
        assert back_ms is None and back_why == "ambiguous"
    finally:
        await device.close()
        await platform.close()


async def test_control_a_clock_stepped_forward_gives_its_own_stamps_its_offset() -> None:
    """Control (review 20's control as first written asked a stamp an hour before the stepped clock's now,
    which a clock measured right seconds earlier cannot have made; a step forward shows the new clock's
    stamps get its offset)."""
    year_on = timedelta(days=365)
    platform, device, _ = await _stepped(year_on)
    try:
        control_ms, why = platform.device_clock_reading(DEVICE, _right_now() + year_on)
        assert control_ms is not None and abs(control_ms / 1000 - year_on.total_seconds()) < 60, why
    finally:
        await device.close()
        await platform.close()


def test_registry_a_step_closes_the_stretch_and_small_drift_does_not() -> None:
    """Pure: a measurement beyond the tolerance closes the open stretch (the step's window between the last
    matching measurement and this one); one within it (drift) only updates the offset."""
    from edge.gb28181.registry import CLOCK_STEP_TOLERANCE_S, ClockStep, DeviceRegistry

    registry = DeviceRegistry(keepalive_interval_s=60, keepalive_timeout_count=3, clock=lambda: 0.0,
                              configured={DEVICE: ""})
    t0 = 1_800_000_000.0
    assert registry.clock_measured(DEVICE, 0.5, "m1", station_now_s=t0) is None
    drift = CLOCK_STEP_TOLERANCE_S - 1
    assert registry.clock_measured(DEVICE, 0.5 + drift, "m2", station_now_s=t0 + 600) is None
    device = registry.get(DEVICE)
    assert device is not None and len(device.clock_epochs) == 1
    step = registry.clock_measured(DEVICE, -3600.0, "m3", station_now_s=t0 + 1200)
    assert isinstance(step, ClockStep) and step.after_s == t0 + 600 and step.before_s == t0 + 1200
    old, new = device.clock_epochs
    assert old.offset_s == 0.5 + drift and old.ended_at_device_s == t0 + 1200 + old.offset_s
    assert new.offset_s == -3600.0 and new.started_at_device_s == t0 + 600 - 3600.0
    # The old clock's stamp before the window keeps its offset; the new clock's after its now too.
    assert registry.clock_offset_at(DEVICE, t0 + 300, now_s=t0 + 1300) == old.offset_s
    assert registry.clock_offset_at(DEVICE, t0 + 1250 - 3600, now_s=t0 + 1300) is None  # both may have
    assert registry.clock_offset_at(DEVICE, t0 + 1250, now_s=t0 + 7200) == -3600.0  # the new clock, later
    # Drift: 15 s more after ten days is the same clock (2 s a day allowed); 15 s after an hour is a step.
    ten_days = t0 + 1200 + 10 * 86400
    assert registry.clock_measured(DEVICE, -3585.0, "m4", station_now_s=ten_days) is None
    stepped = registry.clock_measured(DEVICE, -3570.0, "m5", station_now_s=ten_days + 3600)
    assert isinstance(stepped, ClockStep)


async def test_after_a_restart_the_restored_offset_is_measured_again_before_listing(
        store: StationStore, tmp_path: Path) -> None:
    """A previous run saved a right clock (set by the station); the device's clock has since stepped a year
    back. The pass measures it before RecordInfo (the restored offset is not used as if measured now), so
    its recording made an hour ago, stamped a year back, is listed and downloaded."""
    from edge.gb28181 import clock_history
    from edge.gb28181.registry import ClockEpoch

    history = tmp_path / "clocks"
    set_at = datetime.now(UTC).timestamp() - 86400
    clock_history.save(history, DEVICE, [ClockEpoch(3600.0, ended_at_device_s=set_at + 3600.0),
                                         ClockEpoch(0.0, None, set_at)], None, utc_offset_minutes=480)
    platform = GbPlatform(platform_settings({DEVICE: PASSWORD}, idle_timeout_s=1.0), record=Ledger(),
                          clock_trusted=lambda: True, clock=FakeClock(), open_receiver=open_receiver,
                          clock_history_dir=history)
    await platform.start()
    stepped_now = _right_now() + YEAR_BACK
    recording = RecordItem(device_id=CHANNEL, name="rec", file_path="/sd/after-step.ps", address="",
                           start_time=stepped_now - timedelta(hours=1, minutes=10),
                           end_time=stepped_now - timedelta(hours=1), secrecy=0, type="time")
    device = await TestDevice(DEVICE, PASSWORD, platform.transport.port, device_time=stepped_now,
                              records=[recording],
                              channels=[CatalogItem(device_id=CHANNEL, name="cam")]).start()
    try:
        assert (await device.register()).status == 200
        assert "DeviceStatus" not in device.queries
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
        policy = DownloadPolicy(enabled=True, when="on-registration", window=None, lookback_days=7, speed=4,
                                media_transport="udp", utc_offset_minutes=480)
        scheduler = GbDownloadScheduler(platform, policy, lambda: pipeline, spool=tmp_path / "spool",
                                        station_id="TEST-STATION", case={})
        await asyncio.wait_for(scheduler._pass(DEVICE, DeviceProgress()), 60)
        assert device.queries.index("DeviceStatus") < device.queries.index("RecordInfo")
        assert len(device.invites) == 1
    finally:
        await device.close()
        await platform.close()
