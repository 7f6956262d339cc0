"""Review 21 (MEDIUM): a device clock step found after a restart, on a restored stretch whose start is
unknown, gives the new clock's stamps the old clock's offset.

A stretch restored from the saved history without a start (the device's clock as the station first found
it, kept as one stretch when the device ignored the Date it was sent: common) and not measured in this run
gives a step no window: when it happened is not known, only that it was before now. The registry then
began the new clock at its now, so every stamp the new clock made since the step (before its now) fell in
the old stretch and got the old offset: a recording made an hour ago by a clock reset a year back was given
the old clock's offset, a year off, a concrete wrong value on the ledger. Such a stamp may be either
clock's: it gets no offset, with the reason `step-window-unknown`.

Real platform and SIP sockets; the device answers DeviceStatus with its (stepped) clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge.gb28181 import clock_history
from edge.gb28181.platform import GbPlatform
from edge.gb28181.registry import ClockEpoch, ClockUnknown

from .platform_peer import FakeClock, Ledger, TestDevice, platform_settings

DEVICE = "34020000001320000062"
PASSWORD = "12345678"
BEIJING = timedelta(hours=8)
YEAR_BACK = -timedelta(days=365)
AHEAD_S = 3600.0  # the restored clock was an hour ahead (the device ignored the Date it was sent)


def _device_now(offset: timedelta) -> datetime:
    return (datetime.now(UTC) + BEIJING + offset).replace(tzinfo=None, microsecond=0)


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


async def _restarted(history: Path, epochs: list[ClockEpoch], ledger: Ledger, step: timedelta,
                     ) -> AsyncIterator[tuple[GbPlatform, TestDevice]]:
    """A platform restarted on `epochs` (the saved history); since the previous run the device's clock
    stepped to the station's time plus `step`; its next registration measures it."""
    clock_history.save(history, DEVICE, epochs, None, utc_offset_minutes=480)
    platform = GbPlatform(platform_settings({DEVICE: PASSWORD}, idle_timeout_s=1.0), record=ledger,
                          clock_trusted=lambda: True, clock=FakeClock(), clock_history_dir=history)
    await platform.start()
    device = await TestDevice(DEVICE, PASSWORD, platform.transport.port,
                              device_time=_device_now(step)).start()
    try:
        assert (await device.register()).status == 200
        await asyncio.wait_for(platform.query_device_status(DEVICE), 30)
        (measured,) = ledger.of("clock_measured")
        assert "device_clock_stepped" in measured  # the step is found
        yield platform, device
    finally:
        await device.close()
        await platform.close()


async def _reading(history: Path, epochs: list[ClockEpoch], ledger: Ledger, step: timedelta,
                   stamp: timedelta) -> tuple[int | None, str | None]:
    """The reading of a recording stamped at the station's time plus `stamp` (in the devices' zone)."""
    async for platform, _ in _restarted(history, epochs, ledger, step):
        return platform.device_clock_reading(DEVICE, _device_now(stamp))
    raise AssertionError("not run")


async def test_a_step_whose_window_is_unknown_gives_the_new_clocks_stamps_no_offset(
        tmp_path: Path, ledger: Ledger) -> None:
    """The new clock (a year back) stamped a recording an hour before its now."""
    offset_ms, why = await _reading(tmp_path / "clocks", [ClockEpoch(AHEAD_S)], ledger, YEAR_BACK,
                                    YEAR_BACK - timedelta(hours=1))
    assert offset_ms is None, (
        f"a recording the device's new clock (a year back) stamped an hour ago is given {offset_ms} ms, the "
        "offset of the clock restored from the history, though the step may have come before it")
    assert why == ClockUnknown.STEP_WINDOW_UNKNOWN.value
    (measured,) = ledger.of("clock_measured")
    stepped = measured["device_clock_stepped"]
    assert stepped["stepped_after"] is None and "step-window-unknown" in stepped["reason"]


async def test_control_the_old_clocks_stamps_the_new_one_cannot_have_made_keep_its_offset(
        tmp_path: Path, ledger: Ledger) -> None:
    """The same restart and step: a stamp past the new clock's now (a clock set back a year cannot have
    made it) is the old clock's alone, whenever the step came, and keeps the old offset."""
    offset_ms, why = await _reading(tmp_path / "clocks", [ClockEpoch(AHEAD_S)], ledger, YEAR_BACK,
                                    timedelta(seconds=AHEAD_S) - timedelta(hours=2))
    assert why is None and offset_ms == round(AHEAD_S * 1000)


async def test_a_clock_stepped_forward_out_of_the_old_ones_reach_gives_its_stamps_its_offset(
        tmp_path: Path, ledger: Ledger) -> None:
    """A step forward (a day) with the window unknown: the new clock's stamp an hour before its now is past
    anything the old clock can have stamped, so it is the new clock's, and gets its offset."""
    offset_ms, why = await _reading(tmp_path / "clocks", [ClockEpoch(AHEAD_S)], ledger, timedelta(days=1),
                                    timedelta(days=1) - timedelta(hours=1))
    assert why is None and offset_ms is not None and abs(offset_ms / 1000 - 86400) < 60


async def test_a_restored_stretch_matched_in_a_previous_run_bounds_the_window(
        tmp_path: Path, ledger: Ledger) -> None:
    """Version 3 keeps when the start-less stretch was last matched: the step came after that, so the new
    clock (a day ahead) begins there, and the history written after says so."""
    matched_at = datetime.now(UTC).timestamp() - 2 * 86400
    history = tmp_path / "clocks"
    offset_ms, why = await _reading(history, [ClockEpoch(AHEAD_S, matched_at_s=matched_at)], ledger,
                                    timedelta(days=1), timedelta(days=1) - timedelta(hours=1))
    assert why is None and offset_ms is not None and abs(offset_ms / 1000 - 86400) < 60
    (measured,) = ledger.of("clock_measured")
    assert measured["device_clock_stepped"]["stepped_after"] is not None
    saved = clock_history.load(history, DEVICE, utc_offset_minutes=480)
    assert saved is not None
    old, new = saved[0]
    assert old.matched_at_s == matched_at and new.started_at_device_s is not None
    assert abs(new.started_at_device_s - (matched_at + 86400)) < 60
