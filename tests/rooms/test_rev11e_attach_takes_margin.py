"""Review rev11e (issue 11, the space the rooms recording hold), MEDIUM: a document attached while a room
records (edge.rooms.documents.attach_document) checks no free space when it is received (written to the
store's disk, up to 64 MiB) and is sealed as a copy that cannot wait (`can_wait=False`, the rule of the
rooms' own segments): it keeps only the store's reserve, not what the rooms recording hold (the one rule of
exports, docking copies and GB/T 28181 downloads, edge.rooms.space.rooms_kept_free). Received and copied, it
takes the disk into the recording margin, where the recording reserve stops the room's sources; it could
have waited (a 507 naming the rooms: a document can be attached to a stopped session).

Real 64 MiB tmpfs holding the whole store, the real pipeline and ledger; the free space is sampled while
the document is attached. Control: the same document with no room recording is attached and sealed."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from edge.ingest.pipeline import IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.rooms.documents import DocumentRefused, attach_document
from edge.rooms.space import ROOMS_GROUP, rooms_kept_free
from tests.rooms.conftest import STATION
from tests.rooms.test_review25_export_space import _leave_free, small_disk
from tests.rooms.test_review29_room_flood import _session

__all__ = ["small_disk"]  # a fixture, imported to be used here

MIB = 1 << 20
RESERVE, MARGIN, START = 8 * MIB, 16 * MIB, 8 * MIB
KEPT = MARGIN + START  # one room recording
DOCUMENT_BYTES = 10 * MIB
FREE_BEFORE = RESERVE + KEPT + 6 * MIB  # the document taken twice (received, then copied) reaches the margin
RULE = functools.partial(rooms_kept_free, start_min_free_bytes=START, record_margin_bytes=MARGIN)


async def _document() -> AsyncIterator[bytes]:
    yield b"%PDF-1.7\n" + os.urandom(DOCUMENT_BYTES - 9)


async def _attach(disk: Path, *, room_recording: bool) -> tuple[str, int]:
    """One document attached to a session of room xw-1 (recording or not): the outcome and the least
    free space seen while it was attached."""
    store = StationStore(disk / "store", STATION)
    stop_sampling = threading.Event()
    least = [shutil.disk_usage(disk).free]

    def sample() -> None:
        while not stop_sampling.is_set():
            least[0] = min(least[0], shutil.disk_usage(disk).free)
            stop_sampling.wait(0.002)

    try:
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=RESERVE, chunk_bytes=256 * 1024))
        _leave_free(disk, FREE_BEFORE)
        least[0] = shutil.disk_usage(disk).free
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        session = _session()
        try:
            holding = (pipeline.kept_space.holding(ROOMS_GROUP, session.room, RULE) if room_recording
                       else contextlib.nullcontext())
            with holding:
                attached = await asyncio.wait_for(attach_document(
                    pipeline, session, _document(), kind="笔录", name="record.pdf", by="operator",
                    work_dir=store.layout.root / "rooms" / "products" / session.session,
                    station_id=STATION, clock_synchronised=True), 120)
            outcome = f"attached as item {attached['item']}"
        except DocumentRefused as exc:
            outcome = f"refused ({exc.status}): {exc}"
        finally:
            stop_sampling.set()
            sampler.join(10)
        return outcome, least[0]
    finally:
        store.close()


async def test_control_with_no_room_recording_the_document_is_attached(small_disk: Path) -> None:
    outcome, least = await _attach(small_disk, room_recording=False)
    assert outcome.startswith("attached"), outcome
    assert least < RESERVE + MARGIN  # the same attach does reach what would be the margin


async def test_a_document_attached_while_a_room_records_keeps_the_rooms_space(small_disk: Path) -> None:
    outcome, least = await _attach(small_disk, room_recording=True)
    assert outcome.startswith("refused") or least >= RESERVE + KEPT, (
        f"the document was {outcome}; while it was attached the disk had {least / MIB:.1f} MiB free, under "
        f"the reserve ({RESERVE / MIB:.0f} MiB) plus the recording margin ({MARGIN / MIB:.0f} MiB) where "
        "the recording reserve stops the room's source")
