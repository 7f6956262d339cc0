"""Third review of issue 12: which docking is a recorder's latest must not depend on SQLite's rowid.

`last_docking` (the desk), `read_dockings` (the fleet) and `unfinished_session` (a resumed docking) took the
latest docking as the `sessions` row with the greatest rowid. `sessions` has a TEXT primary key, so its
rowid is no part of its content: SQLite documents that VACUUM may renumber such rowids, and a store copied
by an export and import (`sqlite3 .recover`, a dump re-inserted in key order) numbers the rows anew. After
that the recorder whose latest docking ended `partial` (files left on it, nothing wiped) reads as `done` and
is issued.

Fixed: each session row carries `started_seq`, the seq of its `session_started` ledger entry (the hash chain
fixes it), and the order is by that; a store made before it gets the column filled from its ledger when
opened. The control: the same dockings without the rebuild are read in the right order either way.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge.custody.ledger import station_time_now
from edge.equipment.checkout import last_docking
from edge.equipment.fleet_records import read_dockings
from edge.ingest.repository import IngestRepository
from edge.ingest.store import StationStore

STATION = "TEST-STATION"
SERIAL = "3300001"


def dock(store: StationStore, session: str, outcome: str | None) -> None:
    repository = IngestRepository(store)
    repository.start_session(session, device_serial=SERIAL, usb_serial="EEZ01", bay=1,
                             started=station_time_now(), facts={"n": session}, entry={"session": session})
    if outcome is not None:
        repository.end_session(session, ended=station_time_now(), outcome=outcome,
                               entry={"session": session, "outcome": outcome})


def rebuild_in_key_order(path: Path) -> None:
    """The sessions table copied out and back in key order (an export and import of the store), VACUUMed."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("CREATE TEMP TABLE copied AS SELECT * FROM sessions")
        conn.execute("DELETE FROM sessions")
        conn.execute("INSERT INTO sessions SELECT * FROM copied ORDER BY session")
        conn.execute("VACUUM")
    finally:
        conn.close()


def latest(store: StationStore) -> tuple[str | None, str | None] | None:
    return last_docking(store.conn, SERIAL)


@pytest.mark.parametrize("rebuilt", [False, True], ids=["as recorded", "rebuilt in key order"])
def test_the_latest_docking_survives_a_rebuild_of_the_sessions_table(tmp_path: Path, rebuilt: bool) -> None:
    root = tmp_path / "store"
    store = StationStore(root, STATION)
    # The first docking's key sorts after the second's: key order is the reverse of the station's order.
    dock(store, "zz-first", "done")
    dock(store, "aa-second", "partial")
    store.close()
    if rebuilt:
        rebuild_in_key_order(root / "state.db")
    store = StationStore(root, STATION)
    try:
        # Unfixed, rebuilt: ('...', 'done') -- the earlier docking, and the desk would issue the recorder.
        assert latest(store) is not None and latest(store)[1] == "partial", latest(store)  # type: ignore[index]
        dockings, counts = read_dockings(store.conn)
        assert dockings[SERIAL].outcome == "partial" and counts[SERIAL] == 2
        dock(store, "mm-third", None)  # under way: the newest unfinished one is this
        assert IngestRepository(store).unfinished_session(SERIAL) == ({"n": "mm-third"}, 1)
    finally:
        store.close()


def test_a_store_made_before_the_sequence_column_gets_it_from_its_ledger(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = StationStore(root, STATION)
    dock(store, "zz-first", "done")
    dock(store, "aa-second", "partial")
    store.close()
    conn = sqlite3.connect(root / "state.db", isolation_level=None)
    try:  # the store as it was before the column (and its index) existed
        columns = {str(r[1]) for r in conn.execute("PRAGMA table_info(sessions)")}
        if "started_seq" in columns:
            conn.execute("DROP INDEX IF EXISTS sessions_device_order")
            conn.execute("ALTER TABLE sessions DROP COLUMN started_seq")
    finally:
        conn.close()
    rebuild_in_key_order(root / "state.db")
    store = StationStore(root, STATION)
    try:
        assert latest(store) is not None and latest(store)[1] == "partial", latest(store)  # type: ignore[index]
        seqs = dict(store.conn.execute("SELECT session, started_seq FROM sessions").fetchall())
        started = {e.data["session"]: e.seq for e in store.ledger.entries() if e.type == "session_started"}
        assert seqs == started
    finally:
        store.close()
