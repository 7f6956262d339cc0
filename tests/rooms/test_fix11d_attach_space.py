"""Review rev11e (MEDIUM), the fix: a document attached while a room records is a copy that can wait
(edge.rooms.documents.DocumentSpace): it books twice its size (received, then sealed) in the store's one
booking ledger before any byte is written (its Content-Length, bounded by the limit), checks the free space
before each chunk it writes, and is refused with 507 naming the rooms recording and the space needed, a
`refused` entry, nothing of it left. Each refusal has its control: the same document with no room
recording is attached.

Real 64 MiB tmpfs holding the whole store (the figures exact), the real pipeline; the service case with the
real service and ledger, the free space pinned so the check is exact."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import edge.rooms.documents as documents_mod
from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.rooms.documents import DocumentRefused, attach_document
from edge.rooms.service import RoomRefused, RoomService
from edge.rooms.space import ROOMS_GROUP, rooms_kept_free
from tests.rooms.conftest import STATION, LedgerWatch, lavfi_source, rooms_config
from tests.rooms.rig import running
from tests.rooms.test_attach_export import _session as _stopped_session
from tests.rooms.test_review25_export_space import _leave_free, small_disk
from tests.rooms.test_review29_room_flood import _session

__all__ = ["small_disk"]  # a fixture, imported to be used here

MIB = 1 << 20
RESERVE, MARGIN, START = 8 * MIB, 16 * MIB, 8 * MIB
KEPT = MARGIN + START
DOCUMENT_BYTES = 10 * MIB
FREE_BEFORE = RESERVE + KEPT + 6 * MIB  # room for the document once, not twice
RULE = functools.partial(rooms_kept_free, start_min_free_bytes=START, record_margin_bytes=MARGIN)
DOCUMENT = b"%PDF-1.7\n" + os.urandom(DOCUMENT_BYTES - 9)


async def _chunks(data: bytes, chunk: int = 256 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), chunk):
        yield data[start:start + chunk]


async def _attach(disk: Path, *, room_recording: bool, expected: int | None) -> tuple[str, int, list[str]]:
    """The outcome, the least free space seen after each chunk the attach read, what is left in its work
    directory."""
    store = StationStore(disk / "store", STATION)
    least = [0]

    async def sampled() -> AsyncIterator[bytes]:
        async for chunk in _chunks(DOCUMENT):
            least[0] = min(least[0], shutil.disk_usage(disk).free)
            yield chunk

    try:
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=RESERVE, chunk_bytes=256 * 1024))
        _leave_free(disk, FREE_BEFORE)
        least[0] = shutil.disk_usage(disk).free
        session = _session()
        work_dir = store.layout.root / "rooms" / "products" / session.session
        holding = (pipeline.kept_space.holding(ROOMS_GROUP, session.room, RULE) if room_recording
                   else contextlib.nullcontext())
        try:
            with holding:
                attached = await asyncio.wait_for(attach_document(
                    pipeline, session, sampled(), kind="笔录", name="record.pdf", by="operator",
                    work_dir=work_dir, station_id=STATION, clock_synchronised=True, expected_bytes=expected),
                    120)
            outcome = f"attached as item {attached['item']}"
        except DocumentRefused as exc:
            outcome = f"refused ({exc.status}): {exc}"
        least[0] = min(least[0], shutil.disk_usage(disk).free)
        left = sorted(p.name for p in work_dir.iterdir()) if work_dir.exists() else []
        assert pipeline.kept_space.booked() == []  # the booking is given up on every path
        return outcome, least[0], left
    finally:
        store.close()


@pytest.mark.parametrize("expected", [DOCUMENT_BYTES, None], ids=["content-length", "chunked"])
async def test_control_with_no_room_recording_the_document_is_attached(
    small_disk: Path, expected: int | None
) -> None:
    outcome, _, left = await _attach(small_disk, room_recording=False, expected=expected)
    assert outcome.startswith("attached"), outcome
    assert left == []


async def test_with_its_content_length_it_is_refused_before_a_byte_is_written(small_disk: Path) -> None:
    outcome, least, left = await _attach(small_disk, room_recording=True, expected=DOCUMENT_BYTES)
    assert outcome.startswith("refused (507)"), outcome
    assert "xw-1" in outcome and "20.0 MiB" in outcome, outcome  # the room, the space needed
    assert least >= FREE_BEFORE - MIB  # nothing was written (the store's own files aside)
    assert left == []


async def test_without_one_it_is_refused_as_its_bytes_come_before_they_reach_the_margin(
    small_disk: Path,
) -> None:
    outcome, least, left = await _attach(small_disk, room_recording=True, expected=None)
    assert outcome.startswith("refused (507)") and "xw-1" in outcome, outcome
    assert least >= RESERVE + KEPT, f"{least / MIB:.1f} MiB free while it was received"
    assert left == []


@pytest.mark.usefixtures("ffmpeg")
@pytest.mark.parametrize("room_recording", [True, False], ids=["room-recording", "control"])
async def test_the_service_refuses_with_a_ledger_entry_naming_the_rooms(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, monkeypatch: pytest.MonkeyPatch,
    room_recording: bool,
) -> None:
    config = rooms_config(lavfi_source("a"))
    service = RoomService(config, store, pipeline, station_id=STATION)
    service.load()
    async with running(service):
        session = await _stopped_session(service, watch)
        # The disk as the check reads it: room for the document beside the rooms' space, not twice.
        monkeypatch.setattr(documents_mod, "free_bytes", lambda _path: KEPT + 3 * MIB)
        holding = (pipeline.kept_space.holding(ROOMS_GROUP, "xw-2", RULE) if room_recording
                   else contextlib.nullcontext())
        with holding:
            try:
                await service.attach(session, _chunks(DOCUMENT[: 2 * MIB]), kind="笔录", name="a.pdf",
                                     by="op", expected_bytes=2 * MIB)
                refused = None
            except RoomRefused as exc:
                refused = exc
    if not room_recording:
        assert refused is None and len(watch.of("attached", room_session=session)) == 1
        return
    assert refused is not None and refused.status == 507
    reason = watch.of("refused", action="attach")[-1].data["reason"]
    assert "xw-2" in reason and "4.0 MiB" in reason, reason
    assert watch.of("attached", room_session=session) == []
    assert not list((store.layout.root / "rooms" / "products").rglob("document-*"))
