"""Each entry naming an item carries item_prev (the hash of the item's previous entry): the ledger computes
it, and `verify_ledger` (what `edge verify STORE` runs) names an entry whose link does not hold."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from edge.custody.errors import LedgerError
from edge.custody.ledger import GENESIS_PREV, ITEM_PREV, EntryType, Ledger, LedgerEntry
from tests.tamper.attacker import append_forged_entry

ITEM = "0b8f1c52-8a4e-4b3e-9d0e-6f1f1c9a2b10"
OTHER = "5d2a9e61-3c1b-4f7a-8e22-90a1b2c3d4e5"


def _interleaved(conn: sqlite3.Connection, ledger: Ledger) -> list[LedgerEntry]:
    entries: list[LedgerEntry] = []
    for type_, item in [(EntryType.ACQUIRED, ITEM), (EntryType.DEVICE_CONNECTED, None),
                        (EntryType.ACQUIRED, OTHER), (EntryType.SEALED, ITEM), (EntryType.SEALED, OTHER),
                        (EntryType.TAGGED, ITEM)]:
        with conn:
            entries.append(ledger.append(type_, item, {"n": len(entries)}))
    return entries


def test_each_item_entry_links_to_its_items_previous_entry(conn: sqlite3.Connection, ledger: Ledger) -> None:
    first, station, other, sealed, other_sealed, tagged = _interleaved(conn, ledger)
    assert first.data[ITEM_PREV] == GENESIS_PREV and other.data[ITEM_PREV] == GENESIS_PREV
    assert ITEM_PREV not in station.data  # an entry of no item is in no item's chain
    assert sealed.data[ITEM_PREV] == first.hash
    assert other_sealed.data[ITEM_PREV] == other.hash
    assert tagged.data[ITEM_PREV] == sealed.hash
    assert ledger.verify() == []
    # The ledger_item index serves the lookup (no scan of the whole ledger per append).
    plan = conn.execute("EXPLAIN QUERY PLAN SELECT hash FROM ledger WHERE item = ? ORDER BY seq DESC LIMIT 1",
                        (ITEM,)).fetchall()
    assert any("ledger_item" in str(row) for row in plan), plan


def test_a_caller_cannot_set_item_prev(conn: sqlite3.Connection, ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="item_prev"), conn:
        ledger.append(EntryType.ACQUIRED, ITEM, {ITEM_PREV: GENESIS_PREV})
    assert ledger.head()[0] == 0


def _append_raw(
    conn: sqlite3.Connection, ledger: Ledger, type_: str, item: str, data: dict[str, Any]
) -> None:
    """What someone holding the station key can write: a well-linked, signed entry with any data."""
    append_forged_entry(conn, type_, item, data)
    with conn:
        ledger.checkpoint()


def test_verify_names_an_entry_whose_item_prev_skips_an_entry_of_its_item(
    conn: sqlite3.Connection, ledger: Ledger
) -> None:
    """A wiped entry written as if the item's tag (seq 6) were not there: the station chain and every
    checkpoint hold, only the item chain names it."""
    entries = _interleaved(conn, ledger)
    _append_raw(conn, ledger, EntryType.WIPED, ITEM, {ITEM_PREV: entries[3].hash})
    problems = ledger.verify()
    assert [p.where for p in problems] == ["ledger seq 7"], problems
    assert f"previous entry (seq 6) has hash {entries[5].hash}" in problems[0].what


def test_verify_names_a_first_entry_that_does_not_start_at_the_genesis(
    conn: sqlite3.Connection, ledger: Ledger
) -> None:
    _interleaved(conn, ledger)
    stranger = "9e9e9e9e-1111-4222-8333-444455556666"
    _append_raw(conn, ledger, EntryType.ACQUIRED, stranger, {ITEM_PREV: "ab" * 32})
    problems = ledger.verify()
    assert [p.where for p in problems] == ["ledger seq 7"], problems
    assert "first entry" in problems[0].what


def test_entries_written_before_the_item_chain_are_accepted(conn: sqlite3.Connection, ledger: Ledger) -> None:
    """An upgraded store: the item's old entries have no item_prev; the first new one links to the last."""
    _append_raw(conn, ledger, EntryType.ACQUIRED, ITEM, {"n": 0})
    with conn:
        sealed = ledger.append(EntryType.SEALED, ITEM, {})
    assert sealed.data[ITEM_PREV] == ledger.entries(1).__next__().hash
    assert ledger.verify() == []
