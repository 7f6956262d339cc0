"""Shared steps of the room service tests: the service run as a task, one start that finishes its
catch-up, a room session started and stopped on the ledger with its products owed, a session's signed
manifest sealed, an item's original bytes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from edge.custody.canonical import canonical_json
from edge.custody.ledger import EntryType
from edge.custody.manifest import sign_manifest
from edge.durable.files import write_atomic
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.repository import IngestRepository
from edge.ingest.store import StationStore
from edge.rooms.manifest import session_manifest
from edge.rooms.sealing import seal_session_file
from edge.rooms.service import RoomService
from edge.rooms.session import RoomSession, SessionState, new_session
from edge.rooms.state import SessionFiles
from tests.rooms.conftest import STATION, rooms_config


@contextlib.asynccontextmanager
async def running(service: RoomService) -> AsyncIterator[RoomService]:
    """The service's `run` as a task for the block, cancelled and awaited after it."""
    task = asyncio.create_task(service.run())
    try:
        yield service
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def a_start(store: StationStore, pipeline: IngestPipeline) -> RoomService:
    """One start of the agent (the default one-room config) that runs until it is up and has finished
    what it owed (its catch-up), then stops."""
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
    return service


def started_session(store: StationStore, fields: dict[str, Any]) -> RoomSession:
    """A session of room xw-1 started by "op" (2026-12-06T01:00Z) on the ledger: its `started_seq` set."""
    session = new_session(room="xw-1", room_name="第一询问室", address="文三路 100 号", fields=fields,
                          started_utc="2026-12-06T01:00:00.000000Z", started_by="op")
    started = store.record(EntryType.SESSION_STARTED, None, {"kind": "room", **session.facts(), "by": "op"})
    return dataclasses.replace(session, started_seq=started.seq)


def stopped_owing_products(store: StationStore, session: RoomSession, manifest_item: str) -> RoomSession:
    """The session stopped by "op" (2026-12-06T02:00Z) with its manifest sealed as `manifest_item` and its
    products to follow (the agent ended before making them): on the ledger and in its session file."""
    stopped = dataclasses.replace(session, state=SessionState.STOPPED,
                                  stopped_utc="2026-12-06T02:00:00.000000Z")
    store.record(EntryType.SESSION_STOPPED, None, {"room_session": session.session, "room": "xw-1",
                                                   "kind": "room", "by": "op", "manifest_item": manifest_item,
                                                   "products": "to follow"})
    files = SessionFiles(store.layout.root)
    files.prepare()
    files.save(stopped)
    return stopped


async def sealed_manifest(store: StationStore, pipeline: IngestPipeline, session: RoomSession, *, role: str,
                          name: str) -> str:
    """The session's manifest (its ledger entries from its start; source "a", stopped by "op") signed with
    the station's key, written as `name` in the store's root, sealed as `role` and the file removed: the
    sealed item."""
    manifest = sign_manifest(session_manifest(session, list(store.ledger.entries(session.started_seq or 1)),
                                              station_id=STATION, sources=[("a", "source a")],
                                              stopped_by="op"), store.key)
    path = store.layout.root / name
    write_atomic(path, canonical_json(manifest))
    item = await seal_session_file(pipeline, path, session=session, role=role,
                                   station_id=STATION, clock_synchronised=True)
    path.unlink()
    assert item is not None
    return item


def original(store: StationStore, item: str, into: Path) -> Path:
    """The item's original bytes (the stored copy's first `size` bytes: the evidence box cut off), checked
    against its recorded hash and written to `into/<item>.mp4`."""
    record = IngestRepository(store).item(item)
    assert record is not None and record.path is not None
    data = (store.layout.root / record.path).read_bytes()[: record.size]
    assert hashlib.sha256(data).hexdigest() == record.sha256
    path = into / f"{item}.mp4"
    path.write_bytes(data)
    return path
