"""Fix of review rev11f (issue 11, the store's booking ledger): a docking copy's booking belongs to the
coroutine that made it (edge.ingest.kept_space.KeptSpace.handed_off), shared with the worker that writes.

- Cancelled while its work runs in the worker: the booking stays while the worker still writes (those bytes
  are being written), the worker stops at its next chunk, removes its part, and the booking goes then, once.
- Work that starts after its coroutine ended writes nothing (the executor had already picked it up).
- A running copy's re-check counts the bookings made before its own (and its own), as its start check did:
  a later writer's booking never ends it. Control: the same booking made before the copy refuses it.

Real pipeline and store, a real thread pool; the recorder is a local file read through a reader that can be
held (a fake for the hardware, speaking the ItemReader interface); the space test on a real 64 MiB tmpfs."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from edge.durable.uncached import ReadMethod
from edge.ingest.kept_space import COPY_BOOKING, KeptSpace, WorkAbandoned
from edge.ingest.pipeline import IngestOutcome, IngestPipeline, IngestSettings
from edge.ingest.source import ItemReader, OfferedItem, ReaderOpener
from edge.ingest.store import StationStore
from edge.rooms.space import ROOMS_GROUP
from edge.sources.local import LocalDirectory
from tests.rooms.conftest import STATION
from tests.rooms.test_rev11e_copies_race import FREE_BEFORE, RESERVE, RULE, _recorder
from tests.rooms.test_review25_export_space import _leave_free, small_disk
from tests.station.test_ingest_sources import CASE

__all__ = ["small_disk"]  # a fixture, imported to be used here

MIB = 1 << 20
CHUNK = 256 * 1024
WAIT_S = 60


class _HeldReader:
    """A recorder's file whose second read waits until `go` is set (a slow or stalled recorder)."""

    def __init__(self, inner: ItemReader, held: threading.Event, go: threading.Event) -> None:
        self._inner = inner
        self._held = held
        self._go = go
        self.reads = 0

    def readinto(self, buffer: memoryview) -> int:
        self.reads += 1
        if self.reads == 2:
            self._held.set()
            self._go.wait(WAIT_S)
        return self._inner.readinto(buffer)

    def check_unchanged(self) -> None:
        self._inner.check_unchanged()

    @property
    def cache_bypass(self) -> ReadMethod | None:
        return self._inner.cache_bypass

    def close(self) -> None:
        self._inner.close()


async def test_a_copy_cancelled_while_it_writes_keeps_its_booking_until_its_worker_stops(
        tmp_path: Path) -> None:
    drop = tmp_path / "BWC0001"
    drop.mkdir()
    (drop / "BWC0001.MP4").write_bytes(os.urandom(8 * MIB))
    source = LocalDirectory(drop, label="BWC0001", station_id=STATION, case=CASE, collector_no="110002")
    held, go = threading.Event(), threading.Event()
    readers: list[_HeldReader] = []

    def held_open(opener: ReaderOpener) -> ItemReader:
        reader = _HeldReader(opener(), held, go)
        readers.append(reader)
        return reader

    items: list[OfferedItem] = [dataclasses.replace(item, open=functools.partial(held_open, item.open))
                                for item in source.listing().items]
    store = StationStore(tmp_path / "store", STATION)
    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="offload")
    try:
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=MIB, chunk_bytes=CHUNK),
                                  executor=executor)
        ingest = asyncio.create_task(pipeline.ingest(source, items))
        assert await asyncio.to_thread(held.wait, WAIT_S)  # the worker is writing, its second read held
        ingest.cancel()  # the recorder is pulled
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(ingest, WAIT_S)
        # The worker still writes: its bytes are still booked (control for the release below).
        assert [b.kind for b in pipeline.kept_space.booked()] == [COPY_BOOKING]
        go.set()
        await asyncio.to_thread(executor.shutdown, True)
        assert pipeline.kept_space.booked() == []
        assert [reader.reads for reader in readers] == [2], "the worker read on after its copy was cancelled"
        assert list(store.layout.tmp.glob("*.part")) == []
    finally:
        go.set()
        executor.shutdown(wait=True)
        store.close()


def test_work_that_starts_after_its_coroutine_ended_writes_nothing() -> None:
    ledger = KeptSpace()
    ran: list[str] = []
    with ledger.handed_off(COPY_BOOKING, "BWC0001:A.MP4", 5 * MIB) as shared:
        with shared.in_worker():  # control: while the coroutine waits, the work runs
            ran.append("while waiting")
        assert [b.remaining for b in ledger.booked()] == [5 * MIB]
    assert ledger.booked() == []
    with pytest.raises(WorkAbandoned), shared.in_worker():
        ran.append("after the coroutine ended")
    assert ran == ["while waiting"]
    assert ledger.booked() == []


def test_a_booking_handed_to_a_running_worker_goes_once_when_the_worker_ends() -> None:
    ledger = KeptSpace()
    ledger.book(COPY_BOOKING, "BWC0002:B.MP4", MIB)
    with contextlib.ExitStack() as worker:
        with ledger.handed_off(COPY_BOOKING, "BWC0001:A.MP4", 5 * MIB) as shared:
            worker.enter_context(shared.in_worker())  # the worker runs; then the coroutine is cancelled
        assert shared.abandoned
        assert [b.what for b in ledger.booked()] == ["BWC0002:B.MP4", "BWC0001:A.MP4"]  # it still writes
    assert [b.what for b in ledger.booked()] == ["BWC0002:B.MP4"]  # gone once, the other's kept


async def _copy_with_a_booking(disk: Path, tmp_path: Path, *, booked_after_it_started: bool) -> IngestOutcome:
    """One recorder's copy while room xw-1 records, with a 20 MiB disc export booked before it or once it
    is writing (held to its end); the copy's outcome."""
    store = StationStore(disk / "store", STATION)
    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="offload")
    try:
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=RESERVE, chunk_bytes=CHUNK),
                                  executor=executor)
        _leave_free(disk, FREE_BEFORE)
        source, items = _recorder(tmp_path, "BWC0001")
        ledger = pipeline.kept_space
        with ledger.holding(ROOMS_GROUP, "xw-1", RULE):
            if not booked_after_it_started:
                with ledger.booking_for("disc export", "session s-1", 20 * MIB):
                    run = await asyncio.wait_for(pipeline.ingest(source, items), 120)
                return run.outcome
            copy = asyncio.create_task(pipeline.ingest(source, items))
            while not any(b.kind == COPY_BOOKING and b.remaining < (12 * MIB) for b in ledger.booked()):
                assert not copy.done(), copy.result()
                await asyncio.sleep(0.02)  # until it has passed its check and is writing
            with ledger.booking_for("disc export", "session s-1", 20 * MIB):
                run = await asyncio.wait_for(copy, 120)
            return run.outcome
    finally:
        store.close()
        executor.shutdown(wait=True)


async def test_control_a_booking_made_before_a_copy_refuses_it(small_disk: Path, tmp_path: Path) -> None:
    outcome = await _copy_with_a_booking(small_disk, tmp_path, booked_after_it_started=False)
    assert outcome == IngestOutcome.STORE_FULL


async def test_a_booking_made_after_a_copy_started_does_not_end_it(small_disk: Path, tmp_path: Path) -> None:
    outcome = await _copy_with_a_booking(small_disk, tmp_path, booked_after_it_started=True)
    assert outcome == IngestOutcome.DONE, (
        "a writer that booked after the copy passed its check (and counted the copy) ended the copy: its "
        "re-check must count only the bookings before its own")

