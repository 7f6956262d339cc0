"""Review 20 (MEDIUM): a device that ignores the Date of the REGISTER 200 (many do: the clock is set on its
menu or by its own NTP; GB/T 28181 9.10.3 is often not implemented) and is behind by more than the time
since the setting loses the offset of every recording it makes from then on, and is set again at every
registration.

Review 17's epochs assume the device took the Date: the epoch after a setting starts at the station's time
of the setting (`started_at_device_s`). The measurement after the setting shows the clock did not move (the
same offset, a day behind), yet `clock_measured` only puts that offset on the open epoch. A stamp the
device makes after the setting is its (unchanged) clock, a day behind: before the open epoch's assumed
start, after the ended epoch's end, so `clock_reading_at` finds no clock that made it (`between-clocks`)
and the recording's manifest gets no offset, though the station measured that very offset twice and it
never changed. And the clock stays "due", so each registration sets it again: a `clock_set` entry, a
`clock_measured`, a history file rewritten, an epoch more (32 kept: the history is pushed out in 32
registrations).

Real platform and SIP sockets; the test device's clock is a day behind and ignores Date (as its clock is
fixed)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from edge.gb28181 import clock_history
from edge.gb28181.platform import GbPlatform
from edge.gb28181.registry import CLOCK_DATE_RETRY_S

from .platform_peer import FakeClock, Ledger, TestDevice, platform_settings

DEVICE = "34020000001320000026"
PASSWORD = "12345678"
BEIJING = timedelta(hours=8)
BEHIND = timedelta(days=1)


def _device_now() -> datetime:
    return (datetime.now(UTC) + BEIJING - BEHIND).replace(tzinfo=None, microsecond=0)


async def _offset_of_a_new_stamp(registrations: int) -> tuple[float | None, str | None, int]:
    """The device registers `registrations` times (the platform measures it at its online, and after each
    setting); the offset (s) the platform's registry gives a stamp its clock makes 10 minutes after the
    last registration (asked with the registry's `now_s`: no sleep), and how many clock settings."""
    ledger = Ledger()
    platform = GbPlatform(platform_settings({DEVICE: PASSWORD}, time_sync=True),
                          record=ledger, clock_trusted=lambda: True, clock=FakeClock())
    await platform.start()
    device = await TestDevice(DEVICE, PASSWORD, platform.transport.port, device_time=_device_now()).start()
    try:
        for _ in range(registrations):
            assert (await device.register()).status == 200
            while platform._tasks:  # the measurement at its online, or after a setting
                await asyncio.gather(*list(platform._tasks))
        registered = platform.registry.get(DEVICE)
        assert registered is not None and registered.clock_offset_s is not None
        assert abs(registered.clock_offset_s + BEHIND.total_seconds()) < 60  # measured: a day behind
        later = datetime.now(UTC).timestamp() + 600
        reading = platform.registry.clock_reading_at(DEVICE, later - BEHIND.total_seconds(), later + 60)
        settings = sum(1 for kind, _ in ledger.entries if str(kind) == "clock_set")
        return reading.offset_s, None if reading.unknown is None else reading.unknown.value, settings
    finally:
        await device.close()
        await platform.close()


async def test_a_recording_of_a_device_that_ignored_date_keeps_its_measured_offset() -> None:
    offset_s, why, settings = await _offset_of_a_new_stamp(registrations=2)
    assert settings == 1  # the second registration's 200 carried Date; the device ignored it
    assert offset_s is not None and abs(offset_s + BEHIND.total_seconds()) < 60, (
        f"a stamp the device's clock makes 10 min after the setting (measured a day behind before and after "
        f"it) is given {offset_s} s ({why}): the station assumed the device took the Date")


async def test_a_device_that_ignores_date_is_not_set_at_every_registration() -> None:
    _, _, settings = await _offset_of_a_new_stamp(registrations=5)
    assert settings <= 2, (
        f"{settings} clock settings in 5 registrations of a device whose clock never moved: each one a "
        "clock_set entry, a measurement, an epoch (32 kept) and a history file written")


async def test_control_before_any_setting_the_stamp_has_the_measured_offset() -> None:
    offset_s, why, settings = await _offset_of_a_new_stamp(registrations=1)
    assert settings == 0
    assert offset_s is not None and abs(offset_s + BEHIND.total_seconds()) < 60, why


async def test_a_device_that_ignores_date_is_shown_once_kept_on_disk_and_set_again_a_day_later(
        tmp_path: Path) -> None:
    """One ledger entry, the operator view says so, the history file does not keep the undone setting, and
    the clock is set again once `CLOCK_DATE_RETRY_S` passed (monotonic; the test moves it)."""
    ledger = Ledger()
    clock = FakeClock()
    platform = GbPlatform(platform_settings({DEVICE: PASSWORD}, time_sync=True),
                          record=ledger, clock_trusted=lambda: True, clock=clock,
                          clock_history_dir=tmp_path / "clocks")
    await platform.start()
    device = await TestDevice(DEVICE, PASSWORD, platform.transport.port, device_time=_device_now()).start()
    try:
        for _ in range(3):
            assert (await device.register()).status == 200
            while platform._tasks:
                await asyncio.gather(*list(platform._tasks))
        ignored = [d for d in ledger.of("clock_measured") if "device_ignored_date" in d]
        assert len(ignored) == 1
        view = next(v for v in platform.registry.snapshot() if v["device_id"] == DEVICE)
        assert view["clock_ignores_date"] is not None
        epochs, _ = clock_history.load(tmp_path / "clocks", DEVICE) or ([], None)
        assert len(epochs) == 1 and epochs[0].ended_at_device_s is None, epochs
        assert len(ledger.of("clock_set")) == 1
        clock.now += CLOCK_DATE_RETRY_S + 1  # a day on (the registration is renewed meanwhile)
        assert (await device.register()).status == 200
        while platform._tasks:
            await asyncio.gather(*list(platform._tasks))
        assert len(ledger.of("clock_set")) == 2
    finally:
        await device.close()
        await platform.close()


async def test_control_a_device_that_takes_date_is_not_marked() -> None:
    """Control: a device whose clock moves with the Date gets a new stretch and no mark."""
    ledger = Ledger()
    platform = GbPlatform(platform_settings({DEVICE: PASSWORD}, time_sync=True),
                          record=ledger, clock_trusted=lambda: True, clock=FakeClock())
    await platform.start()
    device = await TestDevice(DEVICE, PASSWORD, platform.transport.port, device_time=_device_now()).start()
    try:
        assert (await device.register()).status == 200
        while platform._tasks:
            await asyncio.gather(*list(platform._tasks))
        device.device_time = (datetime.now(UTC) + BEIJING).replace(tzinfo=None, microsecond=0)  # took it
        assert (await device.register()).status == 200
        while platform._tasks:
            await asyncio.gather(*list(platform._tasks))
        registered = platform.registry.get(DEVICE)
        assert registered is not None and registered.clock_ignores_date_at is None
        assert len(registered.clock_epochs) == 2
        assert not [d for d in ledger.of("clock_measured") if "device_ignored_date" in d]
    finally:
        await device.close()
        await platform.close()
