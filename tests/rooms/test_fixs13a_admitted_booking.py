"""Fix of review revs13a (finding 1): a writer that books nothing (a GB/T 28181 download's receiver) counts
only the bookings whose writer's check passed (`KeptSpace.admit`, `held_or_booked`). A docking copy books
before its check: while its check has still to judge it, it is not counted; once it passed and writes, it
is, until it ends. A copy its check refuses (more than the disk has) is never counted.

Real pipeline, store and thread pool; the recorder is a local file read through a reader that can be held
(a fake for the hardware, speaking the ItemReader interface). An attached document's booking the same."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edge.ingest.kept_space import COPY_BOOKING, Booking, HeldOrBooked, KeptSpace
from edge.ingest.pipeline import IngestOutcome, IngestPipeline, IngestSettings
from edge.ingest.source import ItemReader, OfferedItem, ReaderOpener
from edge.ingest.store import StationStore
from edge.rooms.documents import DocumentRefused, DocumentSpace
from edge.sources.local import LocalDirectory
from tests.rooms.conftest import STATION
from tests.rooms.test_fix11fb_copy_booking_owner import WAIT_S, _HeldReader
from tests.station.test_ingest_sources import CASE

MIB = 1 << 20
SIZE = 8 * MIB


def test_only_an_admitted_booking_counts_for_a_writer_that_books_nothing() -> None:
    ledger = KeptSpace()
    booking = ledger.book(COPY_BOOKING, "BWC0001:A.MP4", 5 * MIB)
    assert ledger.held_or_booked().bytes == 0 and [b.remaining for b in ledger.booked()] == [5 * MIB]
    ledger.admit(booking)  # control: the same booking once its check passed
    taken = ledger.held_or_booked()
    assert taken.bytes == 5 * MIB and "booked by 1 copy(s) in progress" in taken.said
    ledger.release(booking)
    assert ledger.held_or_booked().bytes == 0


@pytest.mark.parametrize("refused", [True, False], ids=["refused-by-its-check", "control-passed"])
async def test_a_docking_copy_counts_for_a_download_only_once_its_check_passed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused: bool) -> None:
    drop = tmp_path / "BWC0001"
    drop.mkdir()
    (drop / "BWC0001.MP4").write_bytes(os.urandom(SIZE))
    source = LocalDirectory(drop, label="BWC0001", station_id=STATION, case=CASE, collector_no="110002")
    held, go = threading.Event(), threading.Event()

    def held_open(opener: ReaderOpener) -> ItemReader:
        return _HeldReader(opener(), held, go)

    items: list[OfferedItem] = [dataclasses.replace(item, open=functools.partial(held_open, item.open))
                                for item in source.listing().items]
    store = StationStore(tmp_path / "store", STATION)
    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="offload")
    # A reserve no disk has refuses the copy at its check; 1 MiB lets it pass.
    reserve = 1 << 62 if refused else MIB
    try:
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=reserve, chunk_bytes=256 * 1024),
                                  executor=executor)
        kept_space = pipeline.kept_space
        at_check: list[tuple[list[Booking], HeldOrBooked]] = []
        real_booked_before = kept_space.booked_before

        def booked_before(own: Booking) -> list[Booking]:  # the check's first read: booked, not judged yet
            at_check.append((kept_space.booked(), kept_space.held_or_booked()))
            return real_booked_before(own)

        monkeypatch.setattr(kept_space, "booked_before", booked_before)
        ingest = asyncio.create_task(pipeline.ingest(source, items))
        if not refused:
            assert await asyncio.to_thread(held.wait, WAIT_S)  # passed its check, writing, second read held
            writing = kept_space.held_or_booked()
            assert 0 < writing.bytes < SIZE and "booked by 1 copy(s) in progress" in writing.said, writing
            go.set()
        report = await asyncio.wait_for(ingest, WAIT_S)
        [(booked, taken)] = at_check
        assert [(b.kind, b.remaining) for b in booked] == [(COPY_BOOKING, SIZE)], "booked before its check"
        assert taken.bytes == 0, f"a booking its check had still to judge was counted: {taken}"
        assert report.outcome == (IngestOutcome.STORE_FULL if refused else IngestOutcome.DONE)
        assert kept_space.held_or_booked().bytes == 0 and kept_space.booked() == []
    finally:
        go.set()
        executor.shutdown(wait=True)
        store.close()


@pytest.mark.parametrize("refused", [True, False], ids=["refused-by-its-check", "control-passed"])
def test_an_attached_document_counts_for_a_download_only_once_its_check_passed(
        tmp_path: Path, refused: bool) -> None:
    store = StationStore(tmp_path / "store", STATION)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="offload")
    try:
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=1 << 62 if refused else MIB),
                                  executor=executor)
        space = DocumentSpace(pipeline, "session s-1 document", 2 * MIB)
        assert pipeline.kept_space.held_or_booked().bytes == 0, "booked, its check still to come"
        if refused:
            with pytest.raises(DocumentRefused):
                space.check(tmp_path, 0, 0)
            assert pipeline.kept_space.held_or_booked().bytes == 0
        else:
            space.check(tmp_path, 0, 0)
            assert pipeline.kept_space.held_or_booked().bytes == 4 * MIB  # received, then sealed
        space.release()
        assert pipeline.kept_space.held_or_booked().bytes == 0
    finally:
        executor.shutdown(wait=True)
        store.close()
