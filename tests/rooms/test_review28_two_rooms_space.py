"""Review 28 (issue 11, #3): with two rooms recording, an export kept one room's start_min_free_bytes (not
one per room recording), and a room's start counted only its own, not that of the rooms already recording
into the same free space: each is now kept, one per room recording.

A real 64 MiB file system (tmpfs) holding the whole store; each room's start needs 16 MiB beyond the
reserve. Controls: the same start and the same export on the same free space with one room recording go
through."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge.config.rooms import RoomsSection
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.rooms.export import space_needed
from edge.rooms.service import RoomRefused, RoomService
from tests.rooms.conftest import STATION, LedgerWatch, lavfi_source, rooms_config
from tests.rooms.rig import running
from tests.rooms.test_attach_export import FIELDS
from tests.rooms.test_review25_export_space import _leave_free, small_disk, xorriso

__all__ = ["small_disk", "xorriso"]  # fixtures, imported to be used here

pytestmark = pytest.mark.usefixtures("ffmpeg")

MIB = 1 << 20
ROOM_NEEDS = 16 * MIB


def _two_rooms() -> RoomsSection:
    base = rooms_config(lavfi_source("a"), start_min_free_bytes=ROOM_NEEDS).model_dump()
    second: dict[str, Any] = {**base["room"][0], "id": "xw-2", "name": "第二询问室",
                              "source": [lavfi_source("b")]}
    return RoomsSection.model_validate({**base, "room": [base["room"][0], second]})


def _service(disk: Path) -> tuple[StationStore, LedgerWatch, IngestPipeline, RoomService]:
    store = StationStore(disk / "store", STATION)
    watch = LedgerWatch(store)
    pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0, chunk_bytes=256 * 1024))
    service = RoomService(_two_rooms(), store, pipeline, station_id=STATION)
    service.load()
    return store, watch, pipeline, service


async def _start(service: RoomService, room: str) -> str | None:
    """None once started, else why it was refused."""
    try:
        await service.start(room, FIELDS, by="op")
    except RoomRefused as exc:
        return str(exc)
    return None


async def test_a_start_keeps_the_room_of_each_room_recording(small_disk: Path) -> None:
    store, watch, _, service = _service(small_disk)
    try:
        async with running(service):
            _leave_free(small_disk, ROOM_NEEDS * 3 // 2)
            first = await _start(service, "xw-1")  # control: one room's worth is there
            _leave_free(small_disk, ROOM_NEEDS * 3 // 2)
            second = await _start(service, "xw-2")  # xw-1 records: two rooms' worth needed
            (small_disk / "filler").unlink()
            second_with_room = await _start(service, "xw-2")  # control: room for both
            for room in ("xw-1", "xw-2"):
                if room in service.active:
                    await service.stop(room, by="op")
    finally:
        store.close()
    assert first is None, first
    assert second is not None and "xw-1" in second and "start_min_free_bytes" in second, second
    assert second_with_room is None, second_with_room
    assert len(watch.of("refused", action="start")) == 1


@pytest.mark.usefixtures("xorriso")
async def test_an_export_keeps_the_room_of_each_room_recording(small_disk: Path) -> None:
    store, watch, pipeline, service = _service(small_disk)
    try:
        async with running(service):
            morning = (await service.start("xw-1", FIELDS, by="op")).session
            await watch.until(lambda: len(watch.of("segment_sealed", room_session=morning)) >= 2,
                              timeout_s=90)
            await service.stop("xw-1", by="op")
            sizes = [r.size for e in watch.of("joined", room_session=morning)
                     if (r := pipeline.repository.item(str(e.item))) is not None]
            needed = space_needed(sizes)

            async def export_morning() -> str | None:
                # Room for the disc and one room's start, not two.
                _leave_free(small_disk, ROOM_NEEDS * 3 // 2 + needed.staging_bytes)
                try:
                    disc = await service.export(morning, by="op")
                except RoomRefused as exc:
                    return str(exc)
                finally:
                    (small_disk / "filler").unlink()
                disc.path.unlink()
                return None

            await service.start("xw-1", {**FIELDS, "subject": "听证"}, by="op")
            one_recording = await export_morning()  # control: one room's worth kept, the disc fits
            await service.start("xw-2", FIELDS, by="op")
            two_recording = await export_morning()
            for room in ("xw-1", "xw-2"):
                await service.stop(room, by="op")
    finally:
        store.close()
    assert one_recording is None, one_recording
    assert two_recording is not None and "xw-1" in two_recording and "xw-2" in two_recording, two_recording
    refused = [e for e in watch.of("refused", action="export") if e.data.get("room_session") == morning]
    assert len(refused) == 1, refused
