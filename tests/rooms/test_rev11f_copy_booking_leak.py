"""Review rev11f (issue 11, the store's booking ledger), HIGH: a docking copy books its file's size on the
event loop (edge.ingest.pipeline `_copy`) and gives the booking up only in the `finally` of the function it
hands the station's copy executor. When the docking's task is cancelled (the recorder pulled, the agent
stopping a docking) while that function still waits in the executor's queue (every worker busy: several bays
copying, verifies, ffprobe), asyncio cancels the queued future, the function never runs, and the booking is
never released: every later copy, disc export, attached document and room start counts those bytes as taken
until the agent restarts (a room refused to start for space a recorder that left long ago "will write").

Real pipeline, real store, a real ThreadPoolExecutor of one worker, made busy by a blocker submitted the
moment the copy books (so the copy's work is queued behind it, as behind other bays' copies). Control: the
same copy not cancelled: its booking is given up when it ends."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edge.ingest.kept_space import Booking, KeptSpace
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.local import LocalDirectory
from tests.rooms.conftest import STATION
from tests.station.test_ingest_sources import CASE

MIB = 1 << 20


async def _copy_queued_behind_a_busy_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *,
                                            cancel: bool) -> list[Booking]:
    drop = tmp_path / "BWC0001"
    drop.mkdir()
    (drop / "BWC0001.MP4").write_bytes(b"\x00" * MIB)
    source = LocalDirectory(drop, label="BWC0001", station_id=STATION, case=CASE, collector_no="110002")
    store = StationStore(tmp_path / "store", STATION)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="offload")
    gate = threading.Event()
    booked = asyncio.Event()
    original_book = KeptSpace.book

    def book_then_busy(self: KeptSpace, kind: str, what: str, size: int) -> Booking:
        booking = original_book(self, kind, what, size)
        executor.submit(gate.wait, 60)  # another bay's copy holds the one worker
        booked.set()
        return booking

    monkeypatch.setattr(KeptSpace, "book", book_then_busy)
    try:
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=MIB), executor=executor)
        listing = source.listing()
        ingest = asyncio.create_task(pipeline.ingest(source, listing.items))
        await asyncio.wait_for(booked.wait(), 60)
        await asyncio.sleep(0.2)  # the copy's work is in the executor's queue, behind the busy worker
        if cancel:
            ingest.cancel()  # the recorder is pulled
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(ingest, 60)
            gate.set()
        else:
            gate.set()
            await asyncio.wait_for(ingest, 120)
        await asyncio.to_thread(executor.shutdown, True)  # everything the executor was given has run
        return pipeline.kept_space.booked()
    finally:
        gate.set()
        executor.shutdown(wait=True)
        store.close()


async def test_control_a_copy_that_ends_gives_up_its_booking(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert await _copy_queued_behind_a_busy_worker(tmp_path, monkeypatch, cancel=False) == []


async def test_a_copy_cancelled_while_queued_gives_up_its_booking(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    left = await _copy_queued_behind_a_busy_worker(tmp_path, monkeypatch, cancel=True)
    assert left == [], (
        f"a copy cancelled before its work ran left its booking in the store's ledger: {left}; every later "
        "copy, export, document and room start counts those bytes as taken until the agent restarts")
