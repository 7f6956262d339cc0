"""Issue 11 (review rev11d): what the rooms recording hold on the store's disk, the one rule an export, a
start and a copy that can wait keep (edge.rooms.space.rooms_kept_free, edge.ingest.kept_space).

The ingest's refusal runs on a real 64 MiB tmpfs holding the whole store, with the real pipeline copying a
real file; controls: the same copy with nothing holding space is sealed, and a copy that cannot wait (a room's
own segment) is never refused for the space held for it."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from edge.ingest.kept_space import KeptSpace
from edge.ingest.pipeline import IngestOutcome, IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.rooms.space import ROOMS_GROUP, rooms_kept_free
from tests.rooms.conftest import STATION, LedgerWatch
from tests.rooms.test_review25_export_space import _leave_free, small_disk
from tests.station.test_ingest_sources import local_source

__all__ = ["small_disk"]  # a fixture, imported to be used here

MIB = 1 << 20
RESERVE, MARGIN, START = 8 * MIB, 16 * MIB, 10 * MIB
COPY_BYTES = 10 * MIB
# After the copy 30 MiB would be left: above the reserve alone, under it plus the margin and one start.
FREE_BEFORE = 40 * MIB
RULE = functools.partial(rooms_kept_free, start_min_free_bytes=START, record_margin_bytes=MARGIN)


def test_the_rooms_rule_is_the_margin_once_and_one_start_a_room() -> None:
    assert rooms_kept_free([], start_min_free_bytes=START, record_margin_bytes=MARGIN).bytes == 0  # control
    kept = rooms_kept_free(["xw-1", "xw-2"], start_min_free_bytes=START, record_margin_bytes=MARGIN)
    assert kept.bytes == MARGIN + 2 * START and kept.members == ("xw-1", "xw-2") and kept.group == ROOMS_GROUP
    assert "xw-1, xw-2" in kept.what
    assert "record_margin_bytes" in kept.what and "start_min_free_bytes" in kept.what


def test_the_kept_space_counts_each_room_once_while_it_records() -> None:
    space = KeptSpace()
    assert space.now() == []
    with space.holding(ROOMS_GROUP, "xw-2", RULE):
        with space.holding(ROOMS_GROUP, "xw-1", RULE):
            (kept,) = space.now()
            assert kept.bytes == MARGIN + 2 * START and kept.members == ("xw-1", "xw-2")
        (kept,) = space.now()
        assert kept.bytes == MARGIN + START and kept.members == ("xw-2",)
    assert space.now() == []  # the rooms stopped: nothing is held


def _drop(tmp_path: Path) -> Path:
    drop = tmp_path / "dock"
    drop.mkdir()
    (drop / "BWC0001.MP4").write_bytes(os.urandom(COPY_BYTES))
    return drop


async def test_a_copy_that_can_wait_keeps_the_rooms_space_and_leaves_the_original(small_disk: Path,
                                                                                  tmp_path: Path) -> None:
    drop = _drop(tmp_path)
    store = StationStore(small_disk / "store", STATION)
    try:
        watch = LedgerWatch(store)
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=RESERVE, chunk_bytes=256 * 1024))
        _leave_free(small_disk, FREE_BEFORE)
        source = local_source(drop)
        with pipeline.kept_space.holding(ROOMS_GROUP, "xw-1", RULE):
            refused = await pipeline.ingest(source, source.listing().items)
            # Control: a room's own segment (it cannot wait) is not refused for the space held for it.
            own = await pipeline.ingest(source, source.listing().items, can_wait=False)
        assert refused.outcome is IngestOutcome.STORE_FULL and refused.sealed == []
        assert [k.members for k in refused.kept_for] == [("xw-1",)]
        errors = [e.data for e in watch.of("error") if e.data.get("stage") == "store"]
        assert len(errors) == 1 and errors[0]["kept_for"] == [
            {"group": ROOMS_GROUP, "members": ["xw-1"], "bytes": MARGIN + START}]
        assert "rooms recording (1: xw-1)" in errors[0]["reason"] and "copied later" in errors[0]["reason"]
        assert store.layout.reserve.exists()  # not full: the ledger's own reserve stays held
        assert (drop / "BWC0001.MP4").stat().st_size == COPY_BYTES  # the original is where it was
        assert own.outcome is IngestOutcome.DONE and len(own.sealed) == 1
    finally:
        store.close()


async def test_control_the_same_copy_with_no_room_recording_is_sealed(small_disk: Path,
                                                                      tmp_path: Path) -> None:
    drop = _drop(tmp_path)
    store = StationStore(small_disk / "store", STATION)
    try:
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=RESERVE, chunk_bytes=256 * 1024))
        _leave_free(small_disk, FREE_BEFORE)
        source = local_source(drop)
        with pipeline.kept_space.holding(ROOMS_GROUP, "xw-1", RULE):
            pass  # a room that recorded and stopped holds nothing
        run = await pipeline.ingest(source, source.listing().items)
        assert run.outcome is IngestOutcome.DONE and len(run.sealed) == 1 and run.kept_for == ()
    finally:
        store.close()
