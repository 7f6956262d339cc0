"""Review rev11c: a power cut (or SIGKILL, the watchdog's SIGABRT) during `edge room export` leaves its
staging copy and its image under ``<store>/rooms/products/<session>/`` for ever.

An export stages a copy of every file of the disc and writes the image beside it (about twice the
session's size); both are removed at its end, or on any failure the agent sees. An agent that dies
meanwhile sees nothing, and no start removes them: nothing else looks at `export-*` (the products' own
clean-up removes the session's directory only when empty). Gigabytes per interrupted export stay on the
room PC's store, counted by every later space check (a start refused for want of room, an export refused
with 507) and named by nothing. Neither is evidence (the image is never sealed: its hash is in the
`exported` entry of an export that finished). Real service, store, pipeline and ledger.
"""

from __future__ import annotations

import asyncio
import os
import secrets

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.products import products_dir
from edge.rooms.service import RoomService
from tests.rooms.conftest import STATION, rooms_config

SESSION = "3f1c2a9e-5b7d-4c1e-9a2b-0d4e6f8a1b2c"
MIB = 1 << 20


async def _a_start(store: StationStore, pipeline: IngestPipeline) -> None:
    service = RoomService(rooms_config(), store, pipeline, station_id=STATION)
    service.load()
    task = asyncio.create_task(service.run())
    try:
        async with asyncio.timeout(120):
            while not service._running:
                await asyncio.sleep(0.05)
            await asyncio.gather(*service.finishing)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_an_export_cut_short_by_a_power_cut_leaves_nothing_after_the_next_start(
    store: StationStore, pipeline: IngestPipeline
) -> None:
    # What an export killed while xorriso wrote leaves, named as export_session names them.
    work = products_dir(store.layout.root, SESSION)
    token = secrets.token_hex(6)
    staging = work / f"export-{token}"
    (staging / "recordings").mkdir(parents=True)
    (staging / "recordings" / "a.mp4").write_bytes(os.urandom(4 * MIB))
    image = work / f"export-{token}.iso"
    image.write_bytes(os.urandom(4 * MIB))
    await _a_start(store, pipeline)
    left = sorted(str(p.relative_to(store.layout.root)) for p in work.rglob("*")) if work.exists() else []
    # FAILS: both stay, at this start and every later one.
    assert left == [], f"left on the store after the start: {left}"
