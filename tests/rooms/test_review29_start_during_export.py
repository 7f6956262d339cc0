"""Review 29: a room's start does not count the staging bytes of a disc export in flight.

RoomService.export checks its staging against the free space and the rooms recording *at its start*, and
books it (then in edge.rooms.export._RUNNING, since review rev11e in the store's one booking ledger,
edge.ingest.kept_space, where docking copies book too) so a second export sees it. RoomService.start reads
the store's free bytes (service.py, `free < needed`) and never subtracts _RUNNING: an export that passed its
check with no room recording, and has not yet written its staging, leaves a start the same free figure. Both
pass; the export then stages out of the session's start_min_free_bytes (the very case review 28 #3 closed
for export-after-start). free_bytes is pinned here so the check is exact; no ffmpeg runs before the check.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import edge.rooms.export as export_mod
import edge.rooms.service as service_mod
from edge.ingest.kept_space import COPY_BOOKING
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.rooms.service import RoomRefused, RoomService
from tests.rooms.conftest import STATION, lavfi_source, rooms_config
from tests.rooms.rig import running
from tests.rooms.test_attach_export import FIELDS

MIB = 1 << 20
ROOM_NEEDS = 24 * MIB


async def _start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, free: int, in_flight: int,
                 kind: str = export_mod.BOOKING_KIND) -> str | None:
    monkeypatch.setattr(service_mod, "free_bytes", lambda _path: free)
    store = StationStore(tmp_path / "store", STATION)
    try:
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0, chunk_bytes=256 * 1024))
        if in_flight:  # an export that passed its check and has yet to stage (edge.rooms.export books so)
            pipeline.kept_space.book(kind, "session review29", in_flight)
        service = RoomService(rooms_config(lavfi_source("a"), start_min_free_bytes=ROOM_NEEDS), store,
                              pipeline, station_id=STATION)
        service.load()
        async with running(service):
            try:
                await service.start("xw-1", FIELDS, by="op")
            except RoomRefused as exc:
                return str(exc)
            await service.stop("xw-1", by="op")
            return None
    finally:
        store.close()


async def test_control_a_start_short_of_its_room_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused = await _start(tmp_path, monkeypatch, free=ROOM_NEEDS - 1, in_flight=0)
    assert refused is not None and "start_min_free_bytes" in refused


async def test_a_start_counts_an_export_staging_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Exactly the room's bytes free, but an export already booked 16 MiB of staging out of them.
    refused = await _start(tmp_path, monkeypatch, free=ROOM_NEEDS, in_flight=16 * MIB)
    assert refused is not None, "started on space a disc export in flight is about to stage into"
    assert "disc export(s) in progress" in refused, refused  # the refusal says what holds the space


async def test_a_start_counts_a_docking_copy_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Review rev11e: a recorder's copy booked its file's 16 MiB of the room's bytes (edge.ingest.pipeline).
    refused = await _start(tmp_path, monkeypatch, free=ROOM_NEEDS, in_flight=16 * MIB, kind=COPY_BOOKING)
    assert refused is not None, "started on space a docking copy in flight is about to write into"
    assert "copy(s) in progress" in refused, refused
