"""Review 17: a device clock measured while the station's own clock is not trusted (booted before NTP, an
RTC that drifted, `[station] clock` not yet synchronised) is measured against a wrong clock, and that
offset is kept as the device's: it makes the clock "due" to be set, and once the station's clock is
trusted the next registration's Date sets it and `clock_set` records the untrusted measure as the offset
before. The clock epochs then give every recording made before that setting this offset: a device whose
clock was right all along has its recordings' manifests say it was 2 h off (and the ledger's `clock_set`
says so too). The offset before a setting is only worth recording when measured against a trusted clock.

Real platform and SIP sockets; the station's wall clock is the module's `datetime` (the seam: the
platform reads `datetime.now(UTC)`), 2 h behind until "NTP" corrects it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, tzinfo

import pytest

from edge.gb28181 import platform as platform_module
from edge.gb28181.platform import GbPlatform

from .platform_peer import FakeClock, Ledger, TestDevice, platform_settings

DEVICE = "34020000001320000023"
PASSWORD = "12345678"
BEIJING = timedelta(hours=8)
TOLERANCE_MS = 60_000


class StationClock:
    skew = timedelta(0)
    trusted = False


class SkewedDatetime(datetime):
    """The station's wall clock as the platform reads it: the real one plus StationClock.skew."""

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> SkewedDatetime:
        real = datetime.now(tz) + StationClock.skew
        return cls.fromtimestamp(real.timestamp(), tz)


async def _settle(platform: GbPlatform) -> None:
    while platform._tasks:
        await asyncio.gather(*list(platform._tasks))


async def _offset_of_an_earlier_recording(monkeypatch: pytest.MonkeyPatch, skew: timedelta) -> int | None:
    monkeypatch.setattr(platform_module, "datetime", SkewedDatetime)
    StationClock.skew, StationClock.trusted = skew, False
    ledger = Ledger()
    platform = GbPlatform(platform_settings({DEVICE: PASSWORD}, describe_devices=True, time_sync=True),
                          record=ledger, clock_trusted=lambda: StationClock.trusted, clock=FakeClock())
    await platform.start()
    right_now = (datetime.now(UTC) + BEIJING).replace(tzinfo=None, microsecond=0)
    device = await TestDevice(DEVICE, PASSWORD, platform.transport.port, device_time=right_now).start()
    try:
        assert (await device.register()).status == 200  # measured against the untrusted station clock
        await _settle(platform)
        StationClock.skew, StationClock.trusted = timedelta(0), True  # NTP: the station's clock is right
        assert (await device.register()).status == 200
        await _settle(platform)
        recorded_an_hour_ago = (right_now - timedelta(hours=1)).isoformat()  # by the device's right clock
        return platform.device_clock_offset_ms(DEVICE, recorded_an_hour_ago)
    finally:
        StationClock.skew = timedelta(0)
        await device.close()
        await platform.close()


async def test_an_offset_measured_against_an_untrusted_station_clock_is_not_given_to_recordings(
        monkeypatch: pytest.MonkeyPatch) -> None:
    offset = await _offset_of_an_earlier_recording(monkeypatch, -timedelta(hours=2))
    assert offset is None or abs(offset) < TOLERANCE_MS, (
        f"a device whose clock was right has a recording sealed with offset {offset} ms: the offset measured "
        "while the station's own clock was 2 h behind (untrusted)")


async def test_control_with_the_station_clock_right_throughout_the_offset_is_about_zero(
        monkeypatch: pytest.MonkeyPatch) -> None:
    offset = await _offset_of_an_earlier_recording(monkeypatch, timedelta(0))
    assert offset is not None and abs(offset) < TOLERANCE_MS
