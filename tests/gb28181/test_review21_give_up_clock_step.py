"""Review 21 (LOW): a forward step of the station's own clock brings back the premature give-up.

Review 20's fix gives a recording whose download failed with nothing up only after `MAX_FAILED_PASSES`
passes *and* `FAILED_GIVE_UP_AFTER_S` (48 h), so that a device busy for a day is asked again. The 48 h
were measured on the wall clock only: a station clock stepped forward (a wrong RTC at boot corrected the
wrong way, an NTP server that was off, an operator's setting) makes 48 h pass in no time, and a recording
busy for 42 h is given up for a day at its eighth pass. They must have passed on the monotonic clock too;
and the day a given-up recording waits for its next try likewise.

The scheduler's real passes, a real store and pipeline; the platform seam answers INVITE 486 while busy;
the scheduler's wall clock (`now`) and monotonic clock (`monotonic`) are its seams."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from drivers.gb28181.manscdp import RecordItem
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.gb28181.downloads import FAILED_GIVE_UP_AFTER_S, MAX_FAILED_PASSES, FailedPasses
from edge.sources.gb28181.scheduler import DeviceProgress, GbDownloadScheduler
from tests.gb28181.scheduler_rig import ListingPlatform, open_policy, record_item

DEVICE = "34020000001320000063"
CHANNEL = "34020000001310000063"
START = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
RECORDED_LOCAL = (START + timedelta(minutes=480) - timedelta(hours=2)).replace(tzinfo=None)
PASS_EVERY = timedelta(hours=6)
WALL_STEP = timedelta(days=2)


class Platform(ListingPlatform):
    """Lists one finished recording; answers its Download INVITE 486 Busy Here while `busy`."""

    def __init__(self) -> None:
        super().__init__({DEVICE: CHANNEL})
        self.busy = True

    @property
    def download_error(self) -> str:  # type: ignore[override]
        return ("INVITE answered 486 Busy Here" if self.busy
                else "the test ends here: the recording was asked for again")

    def items(self, device_id: str, channel_id: str) -> tuple[RecordItem, ...]:
        return (record_item(CHANNEL, RECORDED_LOCAL, RECORDED_LOCAL + timedelta(minutes=10)),)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StationStore]:
    s = StationStore(tmp_path / "store", "TEST-STATION")
    yield s
    s.close()


async def _asked_after_busy_passes(store: StationStore, tmp_path: Path, busy_passes: int, *,
                                   wall_step_after_pass: int | None) -> bool:
    """`busy_passes` passes 6 h apart (both clocks) fail with 486, the wall clock stepping `WALL_STEP`
    forward after pass number `wall_step_after_pass` (None: never); then the device is free: whether the
    next pass (6 h later) asks for the recording again."""
    pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
    platform = Platform()
    wall, mono = [START], [5000.0]
    scheduler = GbDownloadScheduler(platform, open_policy(), lambda: pipeline,  # type: ignore[arg-type]
                                    spool=tmp_path / "spool", station_id="TEST-STATION", case={},
                                    now=lambda: wall[0], monotonic=lambda: mono[0])
    for number in range(1, busy_passes + 1):
        await scheduler._pass(DEVICE, DeviceProgress())
        wall[0] += PASS_EVERY
        mono[0] += PASS_EVERY.total_seconds()
        if number == wall_step_after_pass:
            wall[0] += WALL_STEP
    assert len(platform.downloads) == busy_passes  # asked at each busy pass
    platform.busy = False
    await scheduler._pass(DEVICE, DeviceProgress())
    return len(platform.downloads) == busy_passes + 1


async def test_a_forward_step_of_the_station_clock_does_not_give_a_recording_up_early(
        store: StationStore, tmp_path: Path) -> None:
    assert await _asked_after_busy_passes(store, tmp_path, MAX_FAILED_PASSES, wall_step_after_pass=1), (
        f"{MAX_FAILED_PASSES} busy passes over 42 h are given up because the station's clock stepped "
        f"{WALL_STEP} forward: 48 h are counted on the wall clock alone")


async def test_control_the_same_passes_without_the_step_ask_again(store: StationStore,
                                                                  tmp_path: Path) -> None:
    assert await _asked_after_busy_passes(store, tmp_path, MAX_FAILED_PASSES, wall_step_after_pass=None)


async def test_control_48_hours_on_both_clocks_still_give_it_up(store: StationStore, tmp_path: Path) -> None:
    """Nine busy passes 6 h apart span 48 h on both clocks: given up, the next pass does not ask."""
    passes = int(FAILED_GIVE_UP_AFTER_S // PASS_EVERY.total_seconds()) + 1
    assert passes >= MAX_FAILED_PASSES
    assert not await _asked_after_busy_passes(store, tmp_path, passes, wall_step_after_pass=None)
    assert not await _asked_after_busy_passes(store, tmp_path, passes, wall_step_after_pass=2)


def _given_up(wall: list[float], mono: list[float]) -> tuple[FailedPasses, Any]:
    ref = SimpleNamespace(device_id=DEVICE, identity=lambda: "rec|/sd/1.ps",
                          listed_size_text=lambda: None)
    failed = FailedPasses(lambda: wall[0], lambda: mono[0])
    for _ in range(MAX_FAILED_PASSES):
        failed.failed(ref)  # type: ignore[arg-type]
        wall[0] += 7 * 3600
        mono[0] += 7 * 3600
    assert failed.given_up(ref)  # type: ignore[arg-type]
    return failed, ref


def test_the_day_before_the_next_try_is_counted_on_both_clocks() -> None:
    wall, mono = [1_800_000_000.0], [100.0]
    failed, ref = _given_up(wall, mono)
    wall[0] += 2 * 86400  # the station's clock stepped forward two days; an hour passed
    mono[0] += 3600
    assert failed.given_up(ref), "a forward step of the station clock makes a given-up recording due at once"
    mono[0] += 86400  # a day passed (monotonic)
    assert not failed.given_up(ref)


def test_control_a_backward_step_still_makes_it_due_at_once() -> None:
    """Review 20's rule kept: a wall clock stepped back before the give-up leaves nothing waiting for it
    to catch up (one try too many); the monotonic clock does not hold it back."""
    wall, mono = [1_800_000_000.0], [100.0]
    failed, ref = _given_up(wall, mono)
    wall[0] -= 30 * 86400
    mono[0] += 60
    assert not failed.given_up(ref)
