"""Warning before the store's disk runs out while a room records (edge.rooms.space).

The assessment is pure and tested on samples; the watch and the service run on a real, small tmpfs that
really fills (mounting needs root: under CI a missing prerequisite fails)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.custody.ledger import EntryType
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.observe.room_cli import _describe
from edge.rooms.service import RoomService
from edge.rooms.space import SpaceLevel, SpaceWatch, assess
from tests.prerequisites import require
from tests.rooms.conftest import STATION, LedgerWatch, lavfi_source, rooms_config

MIB = 1 << 20


def _assess(samples: list[tuple[float, int]], previous: SpaceLevel = SpaceLevel.OK, **kw: Any) -> Any:
    args: dict[str, Any] = {"reserve_bytes": 100 * MIB, "warn_minutes": 60.0, "critical_minutes": 10.0,
                            "min_span_s": 30.0, "previous": previous, **kw}
    return assess(samples, **args)


def test_the_minutes_left_come_from_the_rate_free_space_falls_at() -> None:
    # 1 MiB/s over 60 s, 1 GiB above the reserve: 1024 s, some 17 minutes: low.
    reading = _assess([(0.0, 1224 * MIB), (60.0, 1164 * MIB)])
    assert reading.rate_bytes_per_s == pytest.approx(MIB)
    assert reading.minutes_left == pytest.approx((1164 - 100) / 60.0)
    assert reading.level is SpaceLevel.LOW
    # Control: the same free space falling ten times slower leaves hours: ok.
    slow = _assess([(0.0, 1170 * MIB), (600.0, 1164 * MIB)])
    assert slow.level is SpaceLevel.OK and slow.minutes_left is not None and slow.minutes_left > 60


def test_a_short_span_is_not_read_as_a_rate() -> None:
    """A segment closing moves free space by a step: over 2 s that would read as a torrent."""
    step = _assess([(0.0, 1200 * MIB), (2.0, 1190 * MIB)])
    assert step.rate_bytes_per_s is None and step.level is SpaceLevel.OK
    # Control: the same drop measured over the span asked for is a rate.
    assert _assess([(0.0, 1200 * MIB), (30.0, 1190 * MIB)]).rate_bytes_per_s is not None


def test_at_the_reserve_it_is_critical_whatever_the_rate() -> None:
    still = _assess([(0.0, 90 * MIB), (60.0, 90 * MIB)])
    assert still.level is SpaceLevel.CRITICAL and still.rate_bytes_per_s is None
    assert _assess([(0.0, 101 * MIB), (60.0, 101 * MIB)]).level is SpaceLevel.OK  # control: just above


def test_free_space_growing_is_no_rate() -> None:
    assert _assess([(0.0, 150 * MIB), (60.0, 900 * MIB)]).rate_bytes_per_s is None


def test_a_level_is_left_only_with_a_margin_and_entered_at_once() -> None:
    # 58 minutes left after being low: still low (a wobble around 60 does not clear it)...
    wobble = [(0.0, 100 * MIB + 58 * 60 * MIB + 60 * MIB), (60.0, 100 * MIB + 58 * 60 * MIB)]
    assert _assess(wobble, SpaceLevel.LOW).level is SpaceLevel.LOW
    above = [(0.0, 100 * MIB + 61 * 60 * MIB + 60 * MIB), (60.0, 100 * MIB + 61 * 60 * MIB)]
    assert _assess(above, SpaceLevel.LOW).level is SpaceLevel.LOW  # 61 < 60 × 1.25
    clear = [(0.0, 100 * MIB + 80 * 60 * MIB + 60 * MIB), (60.0, 100 * MIB + 80 * 60 * MIB)]
    assert _assess(clear, SpaceLevel.LOW).level is SpaceLevel.OK  # 80 > 75
    # ...while from ok, 58 minutes is low at once; and critical from low is at once too.
    assert _assess(wobble, SpaceLevel.OK).level is SpaceLevel.LOW
    nine = [(0.0, 100 * MIB + 9 * 60 * MIB + 60 * MIB), (60.0, 100 * MIB + 9 * 60 * MIB)]
    assert _assess(nine, SpaceLevel.LOW).level is SpaceLevel.CRITICAL
    eleven = [(0.0, 100 * MIB + 11 * 60 * MIB + 60 * MIB), (60.0, 100 * MIB + 11 * 60 * MIB)]
    assert _assess(eleven, SpaceLevel.CRITICAL).level is SpaceLevel.CRITICAL  # 11 < 12.5
    assert _assess(eleven, SpaceLevel.LOW).level is SpaceLevel.LOW


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 48 MiB file system that really fills up."""
    require(os.geteuid() == 0, "mounting a small tmpfs needs root")
    require(shutil.which("mount") is not None, "needs mount(8)")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


async def test_the_watch_warns_as_a_real_disk_fills_and_clears_when_it_is_freed(small_disk: Path) -> None:
    entries: list[tuple[str, dict[str, Any]]] = []
    rooms = ["xw-1"]

    async def record(type_: str, data: dict[str, Any]) -> None:
        entries.append((type_, data))

    watch = SpaceWatch(small_disk, reserve_bytes=8 * MIB, check_s=0.05, window_s=1.0, warn_minutes=10.0,
                       critical_minutes=0.05, recording_rooms=lambda: list(rooms), record=record)
    # Nothing written: no rate, no warning.
    for _ in range(25):
        await watch.check()
        await asyncio.sleep(0.05)
    assert entries == [] and watch.level is SpaceLevel.OK
    filler = small_disk / "filler"
    filler.mkdir()
    written = 0
    while watch.status() is None or watch.status()["level"] != "critical":  # type: ignore[index]
        if shutil.disk_usage(small_disk).free > 9 * MIB:
            (filler / f"{written}").write_bytes(os.urandom(MIB // 2))
            written += 1
        await watch.check()
        await asyncio.sleep(0.05)
        assert written < 200, "the disk never ran out"
    levels = [data["level"] for _, data in entries]
    assert levels[-1] == "critical" and "low" in levels, levels
    assert all(t == EntryType.SPACE_WARNING for t, _ in entries)
    low = next(data for _, data in entries if data["level"] == "low")
    assert low["rooms"] == ["xw-1"] and low["reserve_bytes"] == 8 * MIB
    assert 0 < low["minutes_left"] < 10 and low["rate_bytes_per_s"] > 0
    status = watch.status()
    assert status is not None and status["level"] == "critical"
    # Freed: the warning is over, once.
    shutil.rmtree(filler)
    async with asyncio.timeout(30):
        while entries[-1][1]["level"] != "cleared":
            await watch.check()
            await asyncio.sleep(0.05)
    for _ in range(10):
        await watch.check()
    assert [data["level"] for _, data in entries].count("cleared") == 1


async def test_no_reading_while_no_room_records_and_an_unreadable_disk_is_no_crash(tmp_path: Path) -> None:
    entries: list[dict[str, Any]] = []
    rooms: list[str] = []

    async def record(type_: str, data: dict[str, Any]) -> None:
        entries.append(data)

    def unreadable(path: Path) -> int:
        raise OSError(5, "Input/output error")

    watch = SpaceWatch(tmp_path, reserve_bytes=0, check_s=0.05, window_s=1.0, warn_minutes=10.0,
                       critical_minutes=1.0, recording_rooms=lambda: list(rooms), record=record,
                       read_free=unreadable)
    assert await watch.check() is None and watch.status() is None
    rooms.append("xw-1")
    assert await watch.check() is None and entries == []  # logged, the watch goes on
    # Control: with a readable disk the same watch reads it.
    watch._read_free = lambda path: 1 << 40
    reading = await watch.check()
    assert reading is not None and reading.free_bytes == 1 << 40


@contextlib.asynccontextmanager
async def _running(service: RoomService) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(service.run()), asyncio.create_task(service.space.run())]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.usefixtures("ffmpeg")
async def test_a_room_recording_onto_a_filling_disk_is_warned_on_the_ledger_and_in_its_status(
    small_disk: Path,
) -> None:
    store = StationStore(small_disk / "store", STATION)
    try:
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=4 * MIB, chunk_bytes=256 * 1024))
        watch = LedgerWatch(store)
        # A day's warning: any rate the recording fills the 48 MiB disk at trips it.
        settings = rooms_config(lavfi_source("a"), space_check_s=0.2, space_rate_window_s=2.0,
                                space_warn_minutes=24 * 60.0, space_critical_minutes=0.01)
        service = RoomService(settings, store, pipeline, station_id=STATION)
        service.load()
        async with _running(service):
            await service.start("xw-1", {"case_number": "A3301062026000123", "subject": "询问过程",
                                         "collector": "张三"}, by="root")
            await watch.until(lambda: watch.of(EntryType.SPACE_WARNING, level="low"), timeout_s=90)
            answer = service.status()
            assert answer["space"]["level"] == "low" and answer["space"]["minutes_left"] > 0
            assert service.board_status()["space"]["level"] == "low"
            assert "DISK SPACE LOW" in _describe("status", answer)
            warned = watch.of(EntryType.SPACE_WARNING, level="low")[0]
            assert warned.data["rooms"] == ["xw-1"]
            await service.stop("xw-1", by="root")
            await watch.until(lambda: watch.of(EntryType.SPACE_WARNING, level="cleared"), timeout_s=30)
        assert service.status()["space"] is None
    finally:
        store.close()


def test_a_status_without_a_warning_says_nothing_of_space() -> None:
    quiet = {"rooms": [], "space": {"level": "ok", "minutes_left": 500.0, "free_bytes": 1 << 30}}
    assert "DISK" not in _describe("status", quiet)
    assert "DISK" not in _describe("status", {"rooms": [], "space": None})


async def test_an_unreadable_disk_is_shown_as_unknown_with_its_error_until_it_reads_again(
    tmp_path: Path,
) -> None:
    free: list[int | None] = [50 << 30, None, 40 << 30]

    def read_free(path: Path) -> int:
        value = free.pop(0)
        if value is None:
            raise OSError(5, "Input/output error")
        return value

    async def record(type_: str, data: dict[str, Any]) -> None:
        return None

    watch = SpaceWatch(tmp_path, reserve_bytes=0, check_s=10.0, window_s=120.0, warn_minutes=10.0,
                       critical_minutes=1.0, recording_rooms=lambda: ["xw-1"], record=record,
                       read_free=read_free)
    await watch.check()
    await watch.check()
    status = watch.status()
    assert status is not None and status["level"] == "unknown" and status["free_bytes"] is None
    assert "Input/output error" in status["error"]
    said = _describe("status", {"rooms": [], "space": status})
    assert "DISK SPACE UNKNOWN" in said and "Input/output error" in said
    # Control: a read that succeeds again is shown, the error gone.
    await watch.check()
    status = watch.status()
    assert status is not None and status["level"] == "ok" and status["free_bytes"] == 40 << 30
    assert "DISK" not in _describe("status", {"rooms": [], "space": status})


def test_the_thresholds_are_checked_when_the_config_is_read() -> None:
    with pytest.raises(ValueError, match="space_critical_minutes"):
        rooms_config(space_warn_minutes=5.0, space_critical_minutes=5.0)
    assert rooms_config(space_warn_minutes=5.0, space_critical_minutes=4.0).space_warn_minutes == 5.0
