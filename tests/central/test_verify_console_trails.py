"""`edge verify CENTRAL` on the console's append-only trails: every row is sealed into one HMAC chain keyed
outside index.db (edge.central.sqlite.trail), so a row deleted, edited or inserted by someone who can write
the file (triggers dropped) is named with its table and row; an untouched store verifies."""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
from pathlib import Path

import pytest

from edge.central.config import CentralLayout
from edge.central.console.secret_key import prepare_console_key
from edge.central.index import Role
from edge.central.sqlite import SqliteDatabase
from edge.central.sqlite.trail import TRAIL_COLUMNS
from edge.central.verify import verify_central_store
from edge.custody.keys import StationKey
from tests.central.conftest import FakeStation, enroll, make_central_parts


def _attacker(db: Path) -> sqlite3.Connection:
    """index.db as someone with write access sees it: every trigger dropped first."""
    conn = sqlite3.connect(db, isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f'DROP TRIGGER "{name}"')
    return conn


class Console:
    def __init__(self, root: Path, key: StationKey) -> None:
        self.root = root
        self.key = key

    def verify(self) -> list[str]:
        return [str(p) for p in verify_central_store(self.root, central_public_key=self.key.public_key())]

    def tamper(self, statement: str, *args: object) -> None:
        conn = _attacker(self.root / "index.db")
        try:
            conn.execute(statement, args)
        finally:
            conn.close()


@pytest.fixture
async def console(tmp_path: Path, station: FakeStation) -> Console:
    """A store whose every console trail holds three rows, written by the central's own code."""
    root = tmp_path / "central"
    parts = make_central_parts(root)
    database = parts.index.unit
    assert isinstance(database, SqliteDatabase)
    store = database.console
    # As the central's start does: the key (made by make_central_parts, as by init), the chain begun.
    assert prepare_console_key(CentralLayout(root).console_key, store, by="test") is not None
    enroll(parts.index, station)
    items = []
    for n in range(3):
        acquired = station.acquire(f"item {n}".encode() * 50)
        after = parts.index.ledger_head(station.station_id)[0]
        body = {"upload": parts.upload(station.station_id, acquired.content), "manifest": acquired.manifest,
                "ledger": station.segment(after)}
        await parts.registrar.register_item(parts.caller(station.station_id), station.station_id, body)
        items.append(acquired.item)
    for n in range(3):
        access = parts.index.log_access(reader="li.legal", what="media", item=items[n], query=None,
                                        remote="10.0.0.9")
        store.log_media_range(access, 0, 1023 * (n + 1))
        store.grant(f"reader{n}", Role.READER, ["330106000000"], by="admin", reason=f"case {n}")
        store.assign_station_unit(station.station_id, f"33010600000{n}", by="admin", reason="moved")
    store.create_account("li.legal", "$argon2id$not-a-real-hash", by="admin")  # one event...
    store.set_account_active("li.legal", False, by="admin", reason="left")       # ...two...
    store.set_account_active("li.legal", True, by="admin", reason="back")        # ...three
    store.mark_sensitive(items[0], ["li.legal"], by="admin", reason="privacy", remote=None)
    store.unmark_sensitive(items[0], by="admin", reason="cleared", remote=None)
    store.mark_sensitive(items[1], ["li.legal"], by="admin", reason="privacy", remote=None)
    parts.index.close()
    return Console(root, parts.signing_key)


def _rows(console: Console, table: str) -> list[int]:
    conn = sqlite3.connect(console.root / "index.db")
    try:
        return [r[0] for r in conn.execute(f"SELECT id FROM {table} ORDER BY id")]
    finally:
        conn.close()


async def test_an_untouched_store_verifies_with_every_trail_sealed(console: Console) -> None:
    for table in TRAIL_COLUMNS:
        assert _rows(console, table) == [1, 2, 3], table  # the fixture made what the cases attack
    assert console.verify() == []


@pytest.mark.parametrize("table", list(TRAIL_COLUMNS))
async def test_a_deleted_newest_row_is_named(console: Console, table: str) -> None:
    """The newest row: no id gap shows it, its seal does."""
    console.tamper(f"DELETE FROM {table} WHERE id = 3")
    seal = _seal_of(console, table, 3)
    assert console.verify() == [f"{table}: row 3 was deleted (its seal {seal} remains)"]


# A change each trail's attacker would make: whose read, which event, what role, which unit, who may see,
# how much was served.
EDITS = {
    "access_log": "reader = 'someone.else'",
    "account_events": "event = 'password_reset'",
    "grant_events": "role = 'supervisor'",
    "station_unit_events": "unit_code = '330100000000'",
    "sensitivity_events": "readers = readers || ' wang.chief'",
    "media_ranges": "last_byte = last_byte + 1",
}


@pytest.mark.parametrize("table", list(TRAIL_COLUMNS))
async def test_an_edited_row_is_named(console: Console, table: str) -> None:
    console.tamper(f"UPDATE {table} SET {EDITS[table]} WHERE id = 2")
    seal = _seal_of(console, table, 2)
    assert console.verify() == [f"{table}: row 2 was edited, or its seal {seal} was: they no longer match"]


@pytest.mark.parametrize("table", ["access_log", "sensitivity_events"])
async def test_a_row_deleted_with_its_seal_is_named_by_the_gap(console: Console, table: str) -> None:
    seal = _seal_of(console, table, 2)
    console.tamper(f"DELETE FROM {table} WHERE id = 2")
    console.tamper("DELETE FROM trail_seals WHERE seq = ?", seal)
    problems = console.verify()
    assert f"{table}: row 2 missing: the append-only trail was cut" in problems
    assert f"trail_seals: seal {seal} missing: deleted with the trail rows they sealed" in problems


async def test_a_row_inserted_past_the_central_is_named(console: Console) -> None:
    console.tamper("INSERT INTO access_log (time, reader, what, item, query, remote) "
                   "VALUES ('2026-01-01T00:00:00.000000Z', 'nobody', 'search', NULL, 'x', NULL)")
    assert console.verify() == ["access_log: row 4 has no seal: inserted past the central (its sealing "
                                "trigger dropped)"]


async def test_a_row_resealed_without_the_key_is_named(console: Console) -> None:
    """The attacker edits a row and seals it again with a key of their own (they lack console.key)."""
    seal = _seal_of(console, "grant_events", 2)
    conn = _attacker(console.root / "index.db")
    try:
        conn.execute("UPDATE grant_events SET role = 'supervisor' WHERE id = 2")
        previous = conn.execute("SELECT mac FROM trail_seals WHERE seq = ?", (seal - 1,)).fetchone()[0]
        row = conn.execute("SELECT json_array(time, name, role, units, by, reason) FROM grant_events "
                           "WHERE id = 2").fetchone()[0]
        message = f"{previous}\ngrant_events\n2\n{row}".encode()
        forged = hmac.new(b"k" * 32, message, hashlib.sha256).hexdigest()
        conn.execute("UPDATE trail_seals SET mac = ? WHERE seq = ?", (forged, seal))
    finally:
        conn.close()
    assert console.verify() == [f"grant_events: row 2 was edited, or its seal {seal} was: they no "
                                "longer match"]


async def test_without_the_console_key_the_seals_cannot_be_checked(console: Console) -> None:
    (console.root / "identity" / "console.key").unlink()
    problems = console.verify()
    assert len(problems) == 1 and problems[0].startswith("file identity/console.key: the seals of the "
                                                         "console's trails cannot be checked")


def _seal_of(console: Console, table: str, row_id: int) -> int:
    conn = sqlite3.connect(console.root / "index.db")
    try:
        return int(conn.execute("SELECT seq FROM trail_seals WHERE tbl = ? AND row_id = ?",
                                (table, row_id)).fetchone()[0])
    finally:
        conn.close()




async def test_rows_of_a_store_made_before_the_seals_are_sealed_at_its_first_start(console: Console) -> None:
    # The store as the central before the seals left it: no seals table, no sealing triggers, and a
    # console.key of format v1 (nothing recorded the sealing yet).
    conn = _attacker(console.root / "index.db")
    try:
        conn.execute("DROP TABLE trail_seals")
    finally:
        conn.close()
    key_file = CentralLayout(console.root).console_key
    key_file.write_bytes(key_file.read_bytes().replace(b"edge-console-key-v2:", b"edge-console-key-v1:"))
    database = SqliteDatabase.open(console.root / "index.db")  # what the new central opens it with
    try:
        unsealed = console.verify()
        assert len(unsealed) == 3 * len(TRAIL_COLUMNS)  # control: every row is named before the start
        assert unsealed[0].startswith("access_log: row 1 has no seal: the central has not started since")
        assert prepare_console_key(CentralLayout(console.root).console_key, database.console,
                                   by="central-start") is not None
    finally:
        database.close()
    assert console.verify() == []
    console.tamper("UPDATE account_events SET event = 'signed_in' WHERE id = 1")  # sealed like the rest
    assert len(console.verify()) == 1
