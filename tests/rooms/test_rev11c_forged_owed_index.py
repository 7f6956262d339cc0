"""Review rev11c: the owed-products index (``<store>/rooms/products-owed.json``) is trusted for what it says
is owed as soon as its anchor (to_seq, to_hash) matches the ledger; both are readable in the ledger by
anyone who can write the index. An index whose anchor is kept and whose `owed` is emptied makes the agent
never make a stopped session's joined files and statement, and `edge verify` says only a note (products
"never made yet"): the session's products are silently never made, and no disc can be exported.

The ledger is the record (edge.rooms.reconcile: "the ledger wins" over files in the store); the index is a
cache of it, and a cache that can erase what is owed is not one. Real store, pipeline, ledger and service.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json

from edge.custody.canonical import canonical_json
from edge.custody.ledger import EntryType
from edge.custody.manifest import sign_manifest
from edge.durable.files import write_atomic
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.manifest import session_manifest
from edge.rooms.owed import INDEX_NAME, OwedIndex
from edge.rooms.reconcile import STOP_MANIFEST_ROLE
from edge.rooms.sealing import seal_session_file
from edge.rooms.service import RoomService
from edge.rooms.session import SessionState, new_session
from edge.rooms.state import ROOMS_DIR, SessionFiles
from edge.verify.station import verify_store
from tests.rooms.conftest import STATION, rooms_config

FIELDS = {"case_number": "A3301062026000991", "collector": "王五", "subject": "询问过程"}


async def _stopped_without_products(store: StationStore, pipeline: IngestPipeline) -> str:
    """A stopped session whose signed manifest was sealed and whose products were never made (the agent
    was stopped right after the manifest: a power cut during the stop)."""
    session = new_session(room="xw-1", room_name="第一询问室", address="文三路 100 号", fields=FIELDS,
                          started_utc="2026-12-06T01:00:00.000000Z", started_by="op")
    started = store.record(EntryType.SESSION_STARTED, None, {"kind": "room", **session.facts(), "by": "op"})
    session = dataclasses.replace(session, started_seq=started.seq, state=SessionState.STOPPED,
                                  stopped_utc="2026-12-06T02:00:00.000000Z")
    manifest = sign_manifest(session_manifest(session, list(store.ledger.entries(started.seq)),
                                              station_id=STATION, sources=[("a", "source a")],
                                              stopped_by="op"), store.key)
    path = store.layout.root / "session-manifest.json"
    write_atomic(path, canonical_json(manifest))
    item = await seal_session_file(pipeline, path, session=session, role=STOP_MANIFEST_ROLE,
                                   station_id=STATION, clock_synchronised=True)
    path.unlink()
    assert item is not None
    store.record(EntryType.SESSION_STOPPED, None, {"room_session": session.session, "room": "xw-1",
                                                   "kind": "room", "by": "op", "manifest_item": item,
                                                   "products": "to follow"})
    files = SessionFiles(store.layout.root)
    files.prepare()
    files.save(session)
    return session.session


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


def _products_of(store: StationStore, session: str) -> list[int]:
    return [e.seq for e in store.ledger.entries_of_types([EntryType.ROOM_PRODUCTS])
            if e.data.get("room_session") == session]


async def test_control_an_owed_session_gets_its_products_at_the_next_start(
    store: StationStore, pipeline: IngestPipeline
) -> None:
    session = await _stopped_without_products(store, pipeline)
    assert session in OwedIndex(store.layout.root, store.ledger).refresh()  # the index saved, owing it
    await _a_start(store, pipeline)
    assert _products_of(store, session)


async def test_an_index_forged_with_its_anchor_kept_cannot_erase_owed_products(
    store: StationStore, pipeline: IngestPipeline
) -> None:
    session = await _stopped_without_products(store, pipeline)
    assert session in OwedIndex(store.layout.root, store.ledger).refresh()  # saved: owed, as the ledger says
    index = store.layout.root / ROOMS_DIR / INDEX_NAME
    doc = json.loads(index.read_bytes())
    # The anchor (to_seq, to_hash) is the ledger's own, readable there; only what is owed is removed.
    write_atomic(index, json.dumps({**doc, "owed": {}}).encode())
    await _a_start(store, pipeline)
    await _a_start(store, pipeline)
    made = _products_of(store, session)
    report = verify_store(store.layout.root)
    # FAILS: no start makes them (the forged index says nothing is owed), and edge verify only notes it.
    assert made or any(session in f"{p.where}: {p.what}" for p in report.problems), (
        "products never made and edge verify is content: notes "
        + "; ".join(n for n in report.notes if session in n))


async def test_an_index_entry_cannot_make_one_sessions_products_from_anothers_manifest(
    store: StationStore, pipeline: IngestPipeline
) -> None:
    """The index's `owed` entries are copies of `acquired` entries, used as they are: one naming another
    session's (genuine) manifest makes that session's recording into items of this session's case."""
    first = await _stopped_without_products(store, pipeline)
    other = await _stopped_without_products(store, pipeline)
    owed = OwedIndex(store.layout.root, store.ledger).refresh()
    theirs = owed[other].item
    await _a_start(store, pipeline)  # both made, as owed
    assert _products_of(store, first) and _products_of(store, other)
    index = store.layout.root / ROOMS_DIR / INDEX_NAME
    doc = json.loads(index.read_bytes())
    assert doc["owed"] == {}
    write_atomic(index, json.dumps({**doc, "owed": {first: owed[other].to_dict()}}).encode())
    await _a_start(store, pipeline)
    crossed = [e.seq for e in store.ledger.entries_of_types([EntryType.ROOM_PRODUCTS])
               if e.data.get("room_session") == first and e.data.get("manifest_item") == theirs]
    # FAILS: session `first` gets products (a statement sealed as its item) made from `other`'s manifest.
    assert crossed == [], f"room_products of {first} made from {other}'s manifest at seq {crossed}"
