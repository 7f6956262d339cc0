"""Review 29 (LOWs): (a) the catch-up of owed products at each start read the ledger's manifest, seal and
products entries from the oldest stopped session on, every start: its cost grew with the ledger; (b) a
session whose sealed manifest is damaged wrote an `error` entry at every start.

Now an index (edge.rooms.owed, ``<store>/rooms/products-owed.json``) keeps what is owed up to a ledger seq:
a start reads only the entries appended since (counted here, never timed), says the same as the whole
ledger read from the start (products_owed), and is rebuilt when missing or not of this ledger (the
controls: those reads are the whole ledger's). A damaged manifest is on the ledger once, and still shown by
`edge room status` (the service's status) and named by `edge verify`. Real store, pipeline and ledger.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from edge.custody.ledger import EntryType, LedgerEntry
from edge.durable.files import write_atomic
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.observe.room_cli import _describe
from edge.rooms.owed import INDEX_NAME
from edge.rooms.reconcile import PRODUCTS_TYPES, STOP_MANIFEST_ROLE, products_owed
from edge.rooms.sealing import seal_session_file
from edge.rooms.service import RoomService
from edge.rooms.session import SessionState, new_session
from edge.rooms.state import ROOMS_DIR, SessionFiles
from edge.verify.station import verify_store
from tests.rooms.conftest import STATION, LedgerWatch, rooms_config
from tests.rooms.rig import a_start, started_session, stopped_owing_products

SESSIONS = 150
FILLER = 1500  # items sealed at the docking bays meanwhile
FIELDS: dict[str, Any] = {"case_number": "A3301062026000779", "collector": "李四", "subject": "听证过程"}


class CountedReads:
    """Counts the ledger entries the owed-products catch-up reads (queries for `room_products`)."""

    def __init__(self, store: StationStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = store.ledger.entries_of_types

        def counted(types: Iterable[str], start_seq: int = 1) -> Iterator[LedgerEntry]:
            wanted = set(types)
            for entry in real(wanted, start_seq):
                if EntryType.ROOM_PRODUCTS in wanted:
                    self.count += 1
                yield entry

        monkeypatch.setattr(store.ledger, "entries_of_types", counted)

    def of_a_start(self, store: StationStore, pipeline: IngestPipeline) -> int:
        before = self.count
        RoomService(rooms_config(), store, pipeline, station_id=STATION).load()
        return self.count - before


def _sessions_made(store: StationStore, first: int, count: int) -> None:
    """`count` stopped sessions (each with its file), each with its manifest sealed and its products
    made, among items sealed at the docking bays (the ledger a busy station gathers in months)."""
    files = SessionFiles(store.layout.root)
    files.prepare()
    with store.transaction():
        for n in range(first, first + count):
            made = new_session(room="xw-1", room_name="第一询问室", address="文三路 100 号", fields=FIELDS,
                               started_utc="2026-12-06T01:00:00.000000Z", started_by="op")
            session = made.session
            started = store.ledger.append(EntryType.SESSION_STARTED, None,
                                          {"kind": "room", **made.facts(), "by": "op"})
            files.save(dataclasses.replace(made, started_seq=started.seq, state=SessionState.STOPPED,
                                           stopped_utc="2026-12-06T02:00:00.000000Z"))
            store.ledger.append(EntryType.SESSION_STOPPED, None, {"kind": "room", "room_session": session})
            store.ledger.append(EntryType.ACQUIRED, f"m{n}",
                                {"room_session": session, "role": STOP_MANIFEST_ROLE, "sha256": "a" * 64})
            store.ledger.append(EntryType.SEALED, f"m{n}", {"sha256": "a" * 64})
            for k in range(FILLER // SESSIONS):
                store.ledger.append(EntryType.SEALED, f"dock-{n}-{k}", {"sha256": "b" * 64})
            store.ledger.append(EntryType.ROOM_PRODUCTS, None, {
                "room_session": session, "manifest_item": f"m{n}", "manifest_sha256": "a" * 64,
                "statement_item": f"st{n}", "statement_sha256": "c" * 64,
                "joined": [{"source": "a", "item": f"j{n}", "sha256": "d" * 64}]})
    # One more whose products are owed (its newest manifest has none made from it).
    store.record(EntryType.ACQUIRED, f"owed{first}",
                 {"room_session": f"OWED{first}", "role": STOP_MANIFEST_ROLE, "sha256": "e" * 64})
    store.record(EntryType.SEALED, f"owed{first}", {"sha256": "e" * 64})


def test_a_start_reads_only_what_the_ledger_gained_since_the_last(
    store: StationStore, pipeline: IngestPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    _sessions_made(store, 0, SESSIONS)
    reads = CountedReads(store, monkeypatch)
    whole = sum(1 for _ in store.ledger.entries_of_types(PRODUCTS_TYPES))
    assert whole > SESSIONS * 10
    # Control: without an index (the first start with it) the catch-up reads the whole ledger.
    assert reads.of_a_start(store, pipeline) == whole
    # The next start reads nothing: the ledger gained nothing since (FAILED before: the whole again).
    assert reads.of_a_start(store, pipeline) == 0
    index = store.layout.root / ROOMS_DIR / INDEX_NAME
    saved = json.loads(index.read_bytes())
    assert set(saved["owed"]) == {"OWED0"} == set(
        products_owed(store.ledger.entries_of_types(PRODUCTS_TYPES)))
    # A few sessions more: a start reads those, not the ledger again.
    _sessions_made(store, SESSIONS, 3)
    gained = sum(1 for _ in store.ledger.entries_of_types(PRODUCTS_TYPES, saved["to_seq"] + 1))
    assert reads.of_a_start(store, pipeline) == gained < whole // 10
    owed = json.loads(index.read_bytes())["owed"]
    assert set(owed) == {"OWED0", f"OWED{SESSIONS}"} == set(products_owed(
        store.ledger.entries_of_types(PRODUCTS_TYPES)))
    # Controls: an index that is not of this ledger (another entry at its seq), or not an index, is read
    # again from the whole ledger, and says the same.
    doc = json.loads(index.read_bytes())
    write_atomic(index, json.dumps({**doc, "to_hash": "0" * 64, "owed": {}}).encode())
    assert reads.of_a_start(store, pipeline) > whole
    assert set(json.loads(index.read_bytes())["owed"]) == set(owed)
    write_atomic(index, b"\x00 not json")
    assert reads.of_a_start(store, pipeline) > whole
    assert set(json.loads(index.read_bytes())["owed"]) == set(owed)


async def _stopped_session_with_a_damaged_manifest(store: StationStore,
                                                   pipeline: IngestPipeline) -> tuple[str, str]:
    """A stopped session (on the ledger and in its file) whose signed manifest was sealed, its products
    never made (the agent ended first), and whose stored manifest was altered since."""
    session = started_session(store, FIELDS)
    path = store.layout.root / "session-manifest.json"
    write_atomic(path, b'{"format": "evidence-edge/room-session/1", "sources": []}')
    item = await seal_session_file(pipeline, path, session=session, role=STOP_MANIFEST_ROLE,
                                   station_id=STATION, clock_synchronised=True)
    path.unlink()
    assert item is not None
    stopped_owing_products(store, session, item)
    record = pipeline.repository.item(item)
    assert record is not None and record.path is not None
    stored = store.layout.root / record.path
    stored.chmod(0o644)
    with open(stored, "r+b") as copy:  # altered after sealing
        copy.write(b"[")
    return session.session, item


async def test_a_damaged_manifest_is_recorded_once_and_still_shown(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch
) -> None:
    session, manifest = await _stopped_session_with_a_damaged_manifest(store, pipeline)

    def errors() -> list[LedgerEntry]:
        return [e for e in watch.of("error", room_session=session) if "products cannot be made" in
                str(e.data.get("reason"))]

    first = await a_start(store, pipeline)
    assert len(errors()) == 1, errors()  # control: the start does put it on the ledger
    assert "no longer gives the hash" in str(errors()[0].data["reason"])
    for _ in range(2):
        again = await a_start(store, pipeline)
        assert len(errors()) == 1, errors()  # FAILED before: one more at every start
        (shown,) = again.status()["products_problems"]
        assert shown["room_session"] == session and "no longer gives the hash" in shown["problem"]
        assert again.board_status()["products_problems"] == 1
    assert first.status()["products_problems"] == again.status()["products_problems"]
    # edge verify: the altered manifest is a problem, the products it owes a note.
    report = verify_store(store.layout.root)
    assert any(manifest in f"{p.where}: {p.what}" for p in report.problems), report.problems
    assert any(f"room session {session}: its newest sealed manifest" in n and "owed" in n
               for n in report.notes), report.notes


def test_edge_room_status_prints_the_products_not_made() -> None:
    problem = "its products cannot be made: its sealed manifest \u202e altered"  # a bidi control in it
    shown = [{"room_session": "s-1", "problem": problem}]
    text = _describe("status", {"rooms": [], "products_problems": shown})
    assert text.startswith("PRODUCTS NOT MADE: session s-1: its products cannot be made"), text
    assert "\u202e" not in text
    assert _describe("status", {"rooms": [], "products_problems": []}) == ""  # control: none, nothing said
