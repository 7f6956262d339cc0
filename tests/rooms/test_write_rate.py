"""Review 29 (HIGH): a flood is what a source writes per station second against its ceiling, whatever
its timestamps say (edge.rooms.write_rate), counted from the run's start (its first segment too); and the
recording reserve stops the source writing the most (edge.rooms.reserve). Controls: a source under its
ceiling, and one bursting as it connects, are no flood; nothing is stopped above the reserve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge.config.rooms import RoomsSection
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.observe.room_cli import _describe
from edge.rooms.reserve import RESERVE_REASON, RecordingReserve
from edge.rooms.service import RoomService
from edge.rooms.write_rate import FLOOD_BURST_S, MBIT, WriteMeter, flood_reason
from tests.rooms.conftest import STATION, lavfi_source, rooms_config

MIB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _first_flood(rate_mbit_s: float, ceiling_mbit_s: float, *, burst_mbit: float = 0.0,
                 until_s: float = 120.0) -> float | None:
    """A run writing `burst_mbit` at once, then `rate_mbit_s`, looked at every 0.5 s: when it floods."""
    clock = Clock()
    meter = WriteMeter(ceiling_mbit_s * MBIT, clock=clock)
    meter.begin_run()
    written = burst_mbit * MBIT
    started = clock.now
    while clock.now - started < until_s:
        clock.now += 0.5
        written += rate_mbit_s * MBIT * 0.5
        meter.written(int(written))
        if meter.flood() is not None:
            return clock.now - started
    return None


def test_a_source_over_its_ceiling_is_a_flood_whatever_its_timestamps() -> None:
    # 200 Mbit/s against a ceiling of 40: the bucket (40 s of the ceiling) fills at 160 Mbit/s: 10 s.
    ended = _first_flood(200.0, 40.0)
    assert ended is not None and ended <= FLOOD_BURST_S * 40 / 160 + 0.5, ended
    # Twice the ceiling: within the bucket's length.
    slow = _first_flood(80.0, 40.0)
    assert slow is not None and slow <= FLOOD_BURST_S + 0.5, slow


def test_a_source_under_its_ceiling_or_bursting_as_it_connects_is_not() -> None:
    assert _first_flood(8.0, 40.0) is None  # a 1080p camera
    assert _first_flood(39.0, 40.0) is None  # just under
    # 30 s of an 8 Mbit/s camera's buffer at once as it connects, then real time.
    assert _first_flood(8.0, 40.0, burst_mbit=30 * 8.0) is None


def test_the_first_segment_of_a_run_counts() -> None:
    """One look, one second after the start, finds 100 s of the ceiling written: a flood at once (the
    first listed segment is the run's like any other: review 29, MEDIUM)."""
    clock = Clock()
    meter = WriteMeter(4 * MBIT, clock=clock)
    meter.begin_run()
    clock.now += 1.0
    meter.written(int(400 * MBIT))
    rate = meter.flood()
    assert rate is not None and rate == pytest.approx(400 * MBIT)
    assert "400.0 Mbit/s" in flood_reason(rate, meter.max_bytes_per_s)


def test_a_new_run_starts_with_an_empty_bucket_and_the_recent_rate_decays() -> None:
    clock = Clock()
    meter = WriteMeter(1 * MBIT, clock=clock)
    meter.begin_run()
    for _ in range(10):
        clock.now += 0.5
        meter.written(meter.run_bytes + int(20 * MBIT * 0.5))
    assert meter.flood() is not None
    assert meter.recent_bytes_per_s() == pytest.approx(20 * MBIT)
    meter.begin_run()
    assert meter.flood() is None and meter.run_bytes == 0
    clock.now += 10.0
    assert meter.recent_bytes_per_s() == 0.0  # it stopped writing


class Disk:
    def __init__(self, free: int) -> None:
        self.free = free

    def __call__(self, _path: Path) -> int:
        return self.free


async def test_the_reserve_stops_the_largest_writer_first_and_only_at_the_reserve(tmp_path: Path) -> None:
    clock = Clock()
    recorded: list[tuple[str, dict[str, Any]]] = []

    async def record(type_: str, data: dict[str, Any]) -> None:
        recorded.append((type_, data))

    disk = Disk(100 * MIB)
    reserve = RecordingReserve(tmp_path, reserve_bytes=16 * MIB, margin_bytes=16 * MIB, check_s=0.5,
                               record=record, read_free=disk)
    small, large = WriteMeter(40 * MBIT, clock=clock), WriteMeter(40 * MBIT, clock=clock)
    for meter in (small, large):
        meter.begin_run()
    for _ in range(4):
        clock.now += 0.5
        small.written(small.run_bytes + int(1 * MBIT * 0.5))
        large.written(large.run_bytes + int(30 * MBIT * 0.5))
    with reserve.writing("xw-1", "a", small) as a, reserve.writing("xw-2", "flood", large) as flood:
        assert await reserve.check() is None  # control: room above the reserve and the margin
        assert a.end_for() is None and flood.end_for() is None and recorded == []
        disk.free = 31 * MIB  # under 16 + 16
        assert await reserve.check() is flood
        reason = flood.end_for()
        assert reason is not None and reason.startswith(f"{RESERVE_REASON}: ") and "31.0 MiB free" in reason
        assert a.end_for() is None
        # The offender stopped, the other records on under the margin, and may start again there ...
        assert await reserve.check() is None and a.end_for() is None
        assert reserve.room_to_record("xw-1", "a") == (True, 31 * MIB)
        assert reserve.room_to_record("xw-2", "flood") == (False, 31 * MIB)  # ... the offender not
        # Under half the margin, every source is stopped, the largest first.
        disk.free = 23 * MIB
        assert await reserve.check() is a
        assert reserve.room_to_record("xw-1", "a") == (False, 23 * MIB)
    disk.free = 16 * MIB + 23 * MIB
    assert reserve.room_to_record("xw-2", "flood") == (False, 39 * MIB)
    disk.free = 16 * MIB + 24 * MIB
    assert reserve.room_to_record("xw-2", "flood") == (True, 40 * MIB)  # 1.5 margins above the reserve
    assert reserve.status()["held"] == ["xw-1/a"]
    assert [data["stopped"]["source"] for type_, data in recorded if type_ == "space_warning"] == [
        "flood", "a"]
    assert recorded[0][1]["level"] == "reserve" and recorded[0][1]["free_bytes"] == 31 * MIB


def test_the_margin_must_hold_what_the_fastest_source_writes_between_two_looks() -> None:
    fast = {**lavfi_source("a"), "max_bitrate_mbps": 200.0}
    with pytest.raises(ValueError, match=r"record_margin_bytes .* must be at least 25000000"):
        rooms_config(fast, record_margin_bytes=16 * MIB, reserve_check_s=0.5)
    assert rooms_config(fast, record_margin_bytes=32 * MIB).record_margin_bytes == 32 * MIB  # control
    with pytest.raises(ValueError, match="max_bitrate_mbps"):
        rooms_config({**lavfi_source("a"), "max_bitrate_mbps": 0})
    assert RoomsSection().record_margin_bytes == 256 * MIB


async def test_the_service_keeps_the_margin_and_says_what_the_reserve_stopped(
    store: StationStore, pipeline: IngestPipeline
) -> None:
    """The service's reserve is the offload's plus record_margin_bytes, the space warnings count to it, a
    start keeps it free, and `edge room status` names the sources it stopped."""
    service = RoomService(rooms_config(lavfi_source("a"), record_margin_bytes=64 * MIB), store, pipeline,
                          station_id=STATION)
    assert service.reserve.threshold_bytes == pipeline.settings.min_free_bytes + 64 * MIB
    assert service.space.reserve_bytes == service.reserve.threshold_bytes
    answer = service.status()
    assert answer["reserve"]["held"] == [] and "RESERVE" not in _describe("status", answer)  # control
    answer["reserve"]["held"] = ["xw-1/cam"]
    assert "DISK AT THE RECORDING RESERVE: stopped until space is freed: xw-1/cam" in _describe(
        "status", answer)
