"""Review rev11d (issue 11, the recording reserve): a docking station's copy made while a room records takes
the store's disk down to its reserve (the ingest keeps only [offload] min_free_bytes), into the recording
margin, and the recording reserve then stops the room's sources (disk-reserve gaps): the interview's recording
is interrupted so that a body camera's file can be copied, which could have waited on its device.

Real 64 MiB tmpfs holding the whole store, real ffmpeg, the real ingest pipeline copying a real file from a
local directory. Control: the same copy with no room recording is accepted (it fits the ingest's own rule),
and the room alone records without a gap."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

import pytest

from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.rooms.recording import SessionRecording
from edge.rooms.reserve import RESERVE_REASON, RecordingReserve
from edge.rooms.state import SessionFiles
from tests.rooms.conftest import STATION, LedgerWatch, lavfi_source, rooms_config
from tests.rooms.test_review25_export_space import _leave_free, small_disk
from tests.rooms.test_review29_room_flood import MARGIN, MIB, RESERVE, _session
from tests.station.test_ingest_sources import local_source

__all__ = ["small_disk"]  # a fixture, imported to be used here
pytestmark = pytest.mark.usefixtures("ffmpeg")

COPY_BYTES = 30 * MIB
FREE_BEFORE = RESERVE + MARGIN + 20 * MIB  # after the copy: 14 MiB, under the reserve plus half the margin


def _drop(tmp_path: Path) -> Path:
    drop = tmp_path / "dock"
    drop.mkdir()
    (drop / "BWC0001.MP4").write_bytes(os.urandom(COPY_BYTES))
    return drop


async def _room(disk: Path, *, copy_from: Path | None) -> tuple[LedgerWatch, list[str]]:
    """A room recording one source on `disk` with the reserve on; a copy from `copy_from` once it records.
    The reasons of the room source's gaps, and the copy's outcome."""
    store = StationStore(disk / "store", STATION)
    try:
        watch = LedgerWatch(store)
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=RESERVE, chunk_bytes=256 * 1024))
        files = SessionFiles(store.layout.root)
        files.prepare()

        async def record(type_: str, data: dict[str, Any]) -> object:
            repository = pipeline.repository
            return await pipeline.commit(lambda: repository.entry(type_, None, data))

        reserve = RecordingReserve(store.layout.root, reserve_bytes=RESERVE, margin_bytes=MARGIN,
                                   check_s=0.2, record=record)
        rooms = rooms_config(lavfi_source("b"), stale_margin_s=12.0, record_margin_bytes=MARGIN,
                             reserve_check_s=0.2)
        _leave_free(disk, FREE_BEFORE)
        recording = SessionRecording(_session(), rooms.room[0], rooms, pipeline, files, station_id=STATION,
                                     reserve=reserve)
        guard = asyncio.create_task(reserve.run())
        task = asyncio.create_task(recording.run())
        outcome: list[str] = []
        try:
            await watch.until(lambda: watch.of("segment_sealed", source="b"), timeout_s=120)
            if copy_from is not None:
                run = await pipeline.ingest(local_source(copy_from), local_source(copy_from).listing().items)
                outcome.append(str(run.outcome))
            after = len(watch.of("segment_sealed", source="b"))
            # Two more segments, or the reserve stopping the source (it then waits for space: no more).
            await watch.until(lambda: len(watch.of("segment_sealed", source="b")) >= after + 2
                              or watch.of("space_warning", level="reserve"), timeout_s=60)
            await asyncio.sleep(1.0)  # a few more looks of the reserve at what the copy left
        finally:
            recording.stop()
            await asyncio.wait_for(task, 90)
            guard.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await guard
        return watch, outcome
    finally:
        store.close()


async def test_control_the_copy_fits_the_ingest_rule_on_its_own(small_disk: Path, tmp_path: Path) -> None:
    store = StationStore(small_disk / "store", STATION)
    try:
        _leave_free(small_disk, FREE_BEFORE)
        drop = _drop(tmp_path)
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=RESERVE, chunk_bytes=256 * 1024))
        run = await pipeline.ingest(local_source(drop), local_source(drop).listing().items)
        assert len(run.sealed) == 1, run
    finally:
        store.close()


async def test_control_the_room_alone_records_without_a_gap(small_disk: Path) -> None:
    watch, _ = await _room(small_disk, copy_from=None)
    assert [e.data["reason"] for e in watch.of("gap", source="b") if e.data.get("state") == "open"] == []


async def test_a_docking_copy_while_a_room_records_does_not_stop_the_room_s_recording(small_disk: Path,
                                                                                      tmp_path: Path) -> None:
    watch, outcome = await _room(small_disk, copy_from=_drop(tmp_path))
    reserve_gaps = [e.data["reason"] for e in watch.of("gap", source="b")
                    if e.data.get("state") == "open" and str(e.data["reason"]).startswith(RESERVE_REASON)]
    assert reserve_gaps == [], (f"the docking copy ({outcome}) took the recording margin and the room's "
                                f"source was stopped: {reserve_gaps}")
