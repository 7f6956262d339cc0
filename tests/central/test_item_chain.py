"""The per-item chain (``data.item_prev``) at the central (review 4, finding 3).

Stations link each entry of an item to the item's previous entry (``Ledger.append``) and ``edge verify
STORE`` checks it on the station; the central used to check only the station chain, so a segment with a
broken or skipped item link (a station key holder's rewrite, or a station bug) was accepted and found only
in court, when a package built from it failed. Now the central refuses such a segment (bad_chain, naming
the seq and the item), following the item's link into what it already holds, and `edge verify CENTRAL`
names a broken item link in a store. Entries without ``item_prev`` (older stations) are accepted as before.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge.central.registration import RejectCode, Rejection, check_segment
from edge.central.verify import verify_central_store
from edge.custody.keys import StationKey
from edge.custody.ledger import GENESIS_PREV, ITEM_PREV, Ledger, verify_ledger
from tests.central.conftest import CentralParts, FakeStation, enroll, make_central_parts
from tests.tamper.attacker import append_forged_entry, rewrite_chain

STATION = "ST-1"
ITEM = "00000000-0000-4000-8000-000000000001"


def test_the_central_refuses_a_segment_whose_item_chain_skips_an_entry() -> None:
    """The reviewer's repro: well linked and signed, but the wipe links past the tag."""
    key = StationKey.generate()
    conn = sqlite3.connect(":memory:")
    Ledger.create_schema(conn)
    ledger = Ledger(conn, STATION, key, checkpoint_every=1)
    with conn:
        acquired = ledger.append("acquired", ITEM, {"sha256": "0" * 64})
        ledger.append("tagged", ITEM, {"changes": {"case_number": "A-2026-001"}, "by": "clerk"})
    # Control: the honest segment is accepted whole.
    honest = check_segment(list(ledger.entries()), ledger.checkpoints()[-1], station_id=STATION,
                           public_key=key.public_key(), head=(0, GENESIS_PREV), accepted={})
    assert [e.seq for e in honest] == [1, 2]
    seq = append_forged_entry(conn, "wiped", ITEM, {"wiped": True, ITEM_PREV: acquired.hash})
    with conn:
        checkpoint = ledger.checkpoint()
    assert checkpoint is not None
    assert [p.where for p in verify_ledger(conn, key.public_key(), STATION)] == [f"ledger seq {seq}"]
    with pytest.raises(Rejection) as caught:
        check_segment(list(ledger.entries()), checkpoint, station_id=STATION, public_key=key.public_key(),
                      head=(0, GENESIS_PREV), accepted={})
    assert caught.value.code == RejectCode.BAD_CHAIN
    assert f"ledger seq {seq}" in caught.value.detail and ITEM in caught.value.detail
    assert "previous entry (seq 2)" in caught.value.detail


def test_an_items_first_entry_must_link_to_the_genesis() -> None:
    key = StationKey.generate()
    conn = sqlite3.connect(":memory:")
    Ledger.create_schema(conn)
    ledger = Ledger(conn, STATION, key, checkpoint_every=1)
    with conn:
        other = ledger.append("acquired", "another-item", {"sha256": "0" * 64})
    seq = append_forged_entry(conn, "acquired", ITEM, {"sha256": "1" * 64, ITEM_PREV: other.hash})
    with conn:
        checkpoint = ledger.checkpoint()
    assert checkpoint is not None
    with pytest.raises(Rejection, match=f"ledger seq {seq}: is item {ITEM}'s first entry") as caught:
        check_segment(list(ledger.entries()), checkpoint, station_id=STATION, public_key=key.public_key(),
                      head=(0, GENESIS_PREV), accepted={})
    assert caught.value.code == RejectCode.BAD_CHAIN


async def _push(parts: CentralParts, station: FakeStation) -> tuple[int, str]:
    after = parts.index.ledger_head(station.station_id)[0]
    return await parts.registrar.accept_segment(parts.caller(station.station_id), station.station_id,
                                                station.segment(after))


async def test_a_later_segment_links_into_the_items_accepted_entries(
    tmp_path: Path, station: FakeStation
) -> None:
    """The item's previous entry is in an earlier segment the central holds: the index's per-item lookup
    finds it. The honest tag is the control (refused as "first entry" if the lookup were not made); the
    forged entry that links past the tag is refused and nothing of its segment is stored."""
    parts = make_central_parts(tmp_path / "central")
    enroll(parts.index, station)
    first = station.acquire(b"content")
    await _push(parts, station)
    tag = station.tag(first.item, {"case_number": "A-2026-002"})
    assert await _push(parts, station) == (tag.seq, tag.hash)
    sealed = list(station.ledger.entries())[-2]  # the sealed entry, the tag's item_prev
    assert tag.data[ITEM_PREV] == sealed.hash
    seq = append_forged_entry(station.conn, "wiped", first.item, {"wiped": True, ITEM_PREV: sealed.hash})
    with pytest.raises(Rejection) as caught:
        await _push(parts, station)
    assert caught.value.code == RejectCode.BAD_CHAIN
    assert f"ledger seq {seq}" in caught.value.detail and first.item in caught.value.detail
    assert f"previous entry (seq {tag.seq})" in caught.value.detail
    assert parts.index.ledger_head(station.station_id) == (tag.seq, tag.hash)
    parts.index.close()


async def test_entries_without_item_prev_are_accepted_as_before(tmp_path: Path, station: FakeStation) -> None:
    """A station older than the item chain writes no item_prev: nothing to check, accepted."""
    parts = make_central_parts(tmp_path / "central")
    enroll(parts.index, station)
    first = station.acquire(b"content")
    await _push(parts, station)
    seq = append_forged_entry(station.conn, "wiped", first.item, {"wiped": True})
    assert (await _push(parts, station))[0] == seq
    parts.index.close()


async def test_edge_verify_central_names_a_broken_item_link_in_the_store(
    tmp_path: Path, station: FakeStation
) -> None:
    """An entry of an item dropped from the stored ledger, the station chain relinked over the gap (as an
    attacker with write access to index.db would): the item's next entry is named with its item."""
    root = tmp_path / "central"
    parts = make_central_parts(root)
    enroll(parts.index, station)
    first = station.acquire(b"content")
    station.tag(first.item, {"case_number": "A-2026-003"})
    await _push(parts, station)
    parts.index.close()
    central_key = parts.signing_key.public_key()
    assert verify_central_store(root, central_public_key=central_key) == []  # control
    conn = sqlite3.connect(root / "index.db")
    try:
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            conn.execute(f"DROP TRIGGER {name}")
        rewrite_chain(conn, table="station_ledger", station=station.station_id, from_seq=2,
                      edit=lambda body: None if body["type"] == "verified" else body)
        conn.commit()
    finally:
        conn.close()
    text = "\n".join(str(p) for p in verify_central_store(root, central_public_key=central_key))
    assert (f"station {station.station_id} ledger seq 2: item chain broken: item_prev is" in text
            and f"item {first.item}'s previous entry (seq 1)" in text), text
