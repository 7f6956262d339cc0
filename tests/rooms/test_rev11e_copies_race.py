"""Review rev11e (issue 11, the space the rooms recording hold), HIGH: a copy that can wait checks the rule
(edge.ingest.kept_space: reserve + what the rooms hold) once, against the free space at its start, and counts
neither the bytes other copies running now are still to write nor a room that starts while it copies. A
station with several bays copies in parallel ([offload] concurrency, an executor of 4 + 3 per bay): two
recorders docked together each see room for their file, both are copied, and together they take the disk
into the rooms' recording margin, where the recording reserve stops the room's source (a disk-reserve gap in
the interview). The same for a copy begun just before a room started: the start found its space, the copy
then takes it.

Real 64 MiB tmpfs holding the whole store, the real pipeline on a thread pool as the station's; the
recorders are local files read through a reader as slow as a USB 2.0 recorder's (a fake for the hardware,
speaking the ItemReader interface). Control: the same two copies one after the other: the second is refused
as store-full naming the room, the rooms' space stays free."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from edge.durable.uncached import ReadMethod
from edge.ingest.pipeline import IngestOutcome, IngestPipeline, IngestRun, IngestSettings
from edge.ingest.source import ItemReader, OfferedItem, ReaderOpener
from edge.ingest.store import StationStore
from edge.rooms.space import ROOMS_GROUP, rooms_kept_free
from edge.sources.local import LocalDirectory
from tests.rooms.conftest import STATION
from tests.rooms.test_review25_export_space import _leave_free, small_disk
from tests.station.test_ingest_sources import CASE

__all__ = ["small_disk"]  # a fixture, imported to be used here

MIB = 1 << 20
RESERVE, MARGIN, START = 8 * MIB, 16 * MIB, 10 * MIB
KEPT = MARGIN + START  # one room recording
COPY_BYTES = 12 * MIB
# One copy leaves RESERVE + KEPT + 1 MiB: allowed. Two leave 11 MiB under the rooms' recording margin.
FREE_BEFORE = RESERVE + KEPT + COPY_BYTES + 1 * MIB
RULE = functools.partial(rooms_kept_free, start_min_free_bytes=START, record_margin_bytes=MARGIN)
READ_PAUSE_S = 0.04  # per 256 KiB read: a 12 MiB file takes about 2 s, as from a slow recorder


class _SlowReader:
    """A recorder's file read at a recorder's speed."""

    def __init__(self, inner: ItemReader) -> None:
        self._inner = inner

    def readinto(self, buffer: memoryview) -> int:
        time.sleep(READ_PAUSE_S)
        return self._inner.readinto(buffer)

    def check_unchanged(self) -> None:
        self._inner.check_unchanged()

    @property
    def cache_bypass(self) -> ReadMethod | None:
        return self._inner.cache_bypass

    def close(self) -> None:
        self._inner.close()


def _slow(opener: ReaderOpener) -> ReaderOpener:
    return lambda: _SlowReader(opener())


def _recorder(tmp_path: Path, label: str) -> tuple[LocalDirectory, list[OfferedItem]]:
    drop = tmp_path / label
    drop.mkdir()
    (drop / f"{label}.MP4").write_bytes(os.urandom(COPY_BYTES))
    source = LocalDirectory(drop, label=label, station_id=STATION, case=CASE, collector_no="110002")
    items = [dataclasses.replace(item, open=_slow(item.open)) for item in source.listing().items]
    return source, items


async def _two_copies(disk: Path, tmp_path: Path, *, together: bool, room_starts_meanwhile: bool = False,
                      ) -> tuple[list[IngestRun], int]:
    """Two recorders copied (together, or one after the other) while room xw-1 records (or, with
    `room_starts_meanwhile`, a room that starts once the copies began); their runs, the free bytes after."""
    store = StationStore(disk / "store", STATION)
    executor = ThreadPoolExecutor(max_workers=7, thread_name_prefix="offload")
    try:
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=RESERVE, chunk_bytes=256 * 1024),
                                  executor=executor)
        _leave_free(disk, FREE_BEFORE)
        first, second = _recorder(tmp_path, "BWC0001"), _recorder(tmp_path, "BWC0002")
        holding = pipeline.kept_space.holding(ROOMS_GROUP, "xw-1", RULE)
        if not room_starts_meanwhile:
            holding.__enter__()
        try:
            if together:
                copies = [asyncio.create_task(pipeline.ingest(*first)),
                          asyncio.create_task(pipeline.ingest(*second))]
                if room_starts_meanwhile:
                    await asyncio.sleep(1.0)  # both copying: the room's start finds its space, and starts
                    holding.__enter__()
                runs = list(await asyncio.wait_for(asyncio.gather(*copies), 120))
            else:
                runs = [await pipeline.ingest(*first), await pipeline.ingest(*second)]
        finally:
            holding.__exit__(None, None, None)
        return runs, shutil.disk_usage(disk).free
    finally:
        store.close()
        executor.shutdown(wait=True)


async def test_control_copies_one_after_the_other_keep_the_rooms_space(small_disk: Path,
                                                                        tmp_path: Path) -> None:
    runs, free = await _two_copies(small_disk, tmp_path, together=False)
    assert [run.outcome for run in runs] == [IngestOutcome.DONE, IngestOutcome.STORE_FULL]
    assert [k.members for k in runs[1].kept_for] == [("xw-1",)]
    assert free >= RESERVE + KEPT


async def test_two_recorders_copied_at_once_keep_the_rooms_space(small_disk: Path, tmp_path: Path) -> None:
    runs, free = await _two_copies(small_disk, tmp_path, together=True)
    assert free >= RESERVE + KEPT, (
        f"two copies at once ({[run.outcome.value for run in runs]}) left {free / MIB:.1f} MiB free: the "
        f"rooms hold {KEPT / MIB:.0f} MiB beyond the reserve of {RESERVE / MIB:.0f} MiB, and under "
        f"{(RESERVE + MARGIN) / MIB:.0f} MiB the recording reserve stops the room's source")


async def test_a_copy_begun_before_a_room_started_keeps_the_room_s_space(small_disk: Path,
                                                                         tmp_path: Path) -> None:
    runs, free = await _two_copies(small_disk, tmp_path, together=True, room_starts_meanwhile=True)
    assert free >= RESERVE + KEPT, (
        f"copies begun before the room started ({[run.outcome.value for run in runs]}) left "
        f"{free / MIB:.1f} MiB free, under the {(RESERVE + KEPT) / MIB:.0f} MiB the room's start counted on")
