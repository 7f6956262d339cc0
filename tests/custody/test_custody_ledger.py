"""Ledger: appending inside the caller's transaction, checkpoints, and every tamper case named."""

from __future__ import annotations

import base64
import dataclasses
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from edge.custody.canonical import canonical_json
from edge.custody.errors import LedgerError
from edge.custody.keys import StationKey
from edge.custody.ledger import (
    ENTRY_SALT,
    GENESIS_PREV,
    Checkpoint,
    EntryType,
    Ledger,
    LedgerEntry,
    entry_hash,
    redact,
    verify_chain,
    verify_ledger,
)
from edge.custody.problems import Problem

STATION_ID = "3201000001"  # the station the conftest ledger fixture belongs to
ITEM = "0b8f1c52-8a4e-4b3e-9d0e-6f1f1c9a2b10"


def fill(conn: sqlite3.Connection, ledger: Ledger, count: int) -> list[LedgerEntry]:
    entries = []
    for index in range(count):
        with conn:
            entries.append(
                ledger.append(
                    EntryType.ACQUIRED if index % 2 else EntryType.DEVICE_CONNECTED,
                    ITEM if index % 2 else None,
                    {"index": index, "sha256": f"{index:064x}", "officer": "张三"},
                )
            )
    return entries


def checkpoint(conn: sqlite3.Connection, ledger: Ledger) -> Checkpoint:
    with conn:
        cp = ledger.checkpoint()
    assert cp is not None
    return cp


def as_attacker(conn: sqlite3.Connection, *statements: tuple[str, tuple[Any, ...]]) -> None:
    """Someone with write access to the database file: triggers are no obstacle to them."""
    with conn:
        for name in (
            "ledger_extends_head",
            "ledger_no_update",
            "ledger_no_delete",
            "ledger_checkpoints_no_update",
            "ledger_checkpoints_no_delete",
        ):
            conn.execute(f"DROP TRIGGER IF EXISTS {name}")
        for sql, args in statements:
            conn.execute(sql, args)


def station_chain_problems(problems: list[Problem]) -> list[Problem]:
    """The findings about the station's chain and checkpoints: these tests edit the chain; what the same
    edits do to an item's own chain (its entries' item_prev) is tested in test_item_chain.py."""
    return [p for p in problems if "item_prev" not in p.what]


def problems_of(ledger: Ledger) -> list[Problem]:
    """Verify both ways (raw table, and entries read through the API) and expect the same findings."""
    from_table = station_chain_problems(ledger.verify())
    try:
        from_entries = verify_chain(
            ledger.entries(), ledger.checkpoints(), ledger._key.public_key(), STATION_ID
        )
    except LedgerError:
        return from_table
    # Only the table knows the checkpoint cadence and whether checkpoints were expected at all.
    table_only = ("canonical form", "carry no signed checkpoint", "no authentic signed checkpoint")
    assert [str(p) for p in from_entries] == [
        str(p) for p in from_table if not any(text in p.what for text in table_only)
    ]
    return from_table


def rewrite_from(conn: sqlite3.Connection, start_seq: int, edit: dict[str, Any]) -> None:
    """Edit the entry at start_seq and recompute every later hash and prev, as a careful forger would."""
    rows = conn.execute(
        "SELECT seq, time, type, item, data, prev FROM ledger WHERE seq >= ? ORDER BY seq", (start_seq,)
    ).fetchall()
    prev = conn.execute("SELECT hash FROM ledger WHERE seq = ?", (start_seq - 1,)).fetchone()
    prev_hash = prev[0] if prev else GENESIS_PREV
    statements = []
    for seq, time, type_, item, data_text, _ in rows:
        data = __import__("json").loads(data_text)
        if seq == start_seq:
            data.update(edit)
        body = {"seq": seq, "time": time, "type": type_, "item": item, "data": data, "prev": prev_hash}
        new_hash = entry_hash(body)
        statements.append(
            (
                "UPDATE ledger SET data = ?, prev = ?, hash = ? WHERE seq = ?",
                (canonical_json(data).decode(), prev_hash, new_hash, seq),
            )
        )
        prev_hash = new_hash
    as_attacker(conn, *statements)


# -- normal operation ---------------------------------------------------------------------------------


def test_append_builds_a_chain(conn: sqlite3.Connection, ledger: Ledger) -> None:
    assert ledger.head() == (0, GENESIS_PREV)
    entries = fill(conn, ledger, 3)
    assert [e.seq for e in entries] == [1, 2, 3]
    assert entries[0].prev == GENESIS_PREV
    assert entries[1].prev == entries[0].hash and entries[2].prev == entries[1].hash
    for entry in entries:
        assert entry.hash == entry_hash(entry.body())
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", entry.time)
    assert ledger.head() == (3, entries[2].hash)
    assert list(ledger.entries()) == entries
    assert list(ledger.entries(start_seq=2)) == entries[1:]
    assert list(ledger.entries(item=ITEM)) == [entries[1]]
    assert problems_of(ledger) == []


def test_format_2_hash_is_written_out_from_its_four_parts(conn: sqlite3.Connection, ledger: Ledger) -> None:
    """The format-2 hash, computed here from the module docstring's definition, not by the code under test."""
    import hashlib

    with conn:
        entry = ledger.append("tagged", ITEM, {"case": {"number": "A1"}}, time="2024-05-01T09:00:00.000001Z")
    salt = entry.data[ENTRY_SALT]
    assert re.fullmatch(r"[0-9a-f]{32}", salt)
    body = {
        "seq": 1,
        "time": "2024-05-01T09:00:00.000001Z",
        "type": "tagged",
        "item": ITEM,
        "data": {"case": {"number": "A1"}, "entry_salt": salt, "item_prev": GENESIS_PREV},
        "prev": "0" * 64,
    }
    assert entry.body() == body
    tag = hashlib.sha256(b"evidence-edge ledger item tag\n" + ITEM.encode() + b"\n1").digest()
    digest = hashlib.sha256(canonical_json(body)).digest()
    expected = hashlib.sha256(b"evidence-edge ledger 2\n" + bytes(32) + (1).to_bytes(8, "big") + tag + digest)
    assert entry.hash == expected.hexdigest()
    stored = conn.execute("SELECT data FROM ledger WHERE seq = 1").fetchone()[0]
    assert stored == '{"case":{"number":"A1"},"entry_salt":"' + salt + '","item_prev":"' + GENESIS_PREV + '"}'
    # The redacted form recomputes to the same hash from its parts; an item-less entry's tag is salted.
    redacted = redact(entry)
    assert (redacted.item_tag, redacted.body_sha256) == (tag.hex(), digest.hex())
    assert redacted.recomputed_hash() == entry.hash
    with conn:
        station = ledger.append("station_started", None, {"station": "S"})
    salt_bytes = bytes.fromhex(station.data[ENTRY_SALT])
    no_item = hashlib.sha256(b"evidence-edge ledger no item\n" + salt_bytes + b"\n2")
    assert redact(station).item_tag == no_item.hexdigest()


def test_format_1_hash_is_sha256_of_prev_bytes_and_canonical_body() -> None:
    """Entries written before format 2 (no entry_salt) keep their hash: SHA-256(prev || canonical body)."""
    import hashlib

    body: dict[str, Any] = {"seq": 1, "time": "2024-05-01T09:00:00.000001Z", "type": "tagged", "item": ITEM,
            "data": {"case": {"number": "A1"}}, "prev": "0" * 64}
    assert entry_hash(body) == hashlib.sha256(bytes(32) + canonical_json(body)).hexdigest()
    assert redact(LedgerEntry(hash=entry_hash(body), **body)).item_tag is None  # nothing to recompute


def test_the_ledger_refuses_a_caller_supplied_salt(conn: sqlite3.Connection, ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="entry_salt"), conn:
        ledger.append("tagged", ITEM, {"entry_salt": "0" * 32})
    with conn:
        ledger.append("tagged", ITEM, {"salt": "0" * 32})  # control: another member is data like any


def test_data_is_stored_as_what_is_hashed(conn: sqlite3.Connection, ledger: Ledger) -> None:
    with conn:
        entry = ledger.append(EntryType.CLOCK_MEASURED, None, {"offset_s": 2.0, "drift": 0.5})
    assert entry.data == {"offset_s": 2, "drift": 0.5, ENTRY_SALT: entry.data[ENTRY_SALT]}
    assert entry.type == "clock_measured" and type(entry.type) is str
    assert list(ledger.entries()) == [entry]


def test_ledger_never_commits_the_callers_transaction(tmp_path: Path, station_key: StationKey) -> None:
    db = tmp_path / "state.db"
    writer = sqlite3.connect(db)
    writer.execute("PRAGMA journal_mode=WAL")
    Ledger.create_schema(writer)
    writer.commit()
    ledger = Ledger(writer, STATION_ID, station_key)
    reader = sqlite3.connect(db)
    ledger.append(EntryType.STATION_STARTED, None, {})
    ledger.checkpoint()
    assert reader.execute("SELECT count(*) FROM ledger").fetchone()[0] == 0
    writer.rollback()
    assert ledger.head() == (0, GENESIS_PREV)
    assert ledger.checkpoints() == []
    try:
        with writer:
            writer.execute("CREATE TABLE IF NOT EXISTS items (item TEXT)")
            writer.execute("INSERT INTO items VALUES ('x')")
            ledger.append(EntryType.ACQUIRED, "x", {})
            raise RuntimeError("crash before commit")
    except RuntimeError:
        pass
    assert ledger.head() == (0, GENESIS_PREV), "state change and ledger entry roll back together"
    with writer:
        ledger.append(EntryType.ACQUIRED, "x", {})
    assert reader.execute("SELECT count(*) FROM ledger").fetchone()[0] == 1
    writer.close()
    reader.close()


def test_create_schema_is_idempotent(conn: sqlite3.Connection, ledger: Ledger) -> None:
    fill(conn, ledger, 2)
    Ledger.create_schema(conn)
    Ledger.create_schema(conn)
    assert ledger.head()[0] == 2


def test_a_racing_writer_fails_loudly(
    conn: sqlite3.Connection, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(conn, ledger, 1)
    monkeypatch.setattr(ledger, "head", lambda: (0, GENESIS_PREV))  # a stale view of the head
    with pytest.raises(LedgerError, match="seq 1 was taken by another writer"), conn:
        ledger.append(EntryType.ERROR, None, {})


def test_append_only_triggers_stop_our_own_mistakes(conn: sqlite3.Connection, ledger: Ledger) -> None:
    fill(conn, ledger, 2)
    checkpoint(conn, ledger)
    for sql in (
        "UPDATE ledger SET type = 'x' WHERE seq = 1",
        "DELETE FROM ledger WHERE seq = 2",
        "UPDATE ledger_checkpoints SET seq = 1",
        "DELETE FROM ledger_checkpoints",
        "INSERT OR REPLACE INTO ledger (seq, time, type, item, data, prev, hash) "
        "VALUES (1, 't', 'x', NULL, '{}', 'p', 'h')",
        "INSERT INTO ledger (seq, time, type, item, data, prev, hash) "
        "VALUES (3, 't', 'x', NULL, '{}', 'p', 'h')",
        "INSERT INTO ledger (seq, time, type, item, data, prev, hash) "
        "VALUES (4, 't', 'x', NULL, '{}', 'p', 'h')",
    ):
        with pytest.raises(sqlite3.DatabaseError), conn:
            conn.execute(sql)
    assert problems_of(ledger) == []


@pytest.mark.parametrize(
    ("type_", "item", "data", "time", "message"),
    [
        ("Acquired", None, {}, None, "lower_snake"),
        ("", None, {}, None, "lower_snake"),
        ("acquired; drop", None, {}, None, "lower_snake"),
        ("acquired", "", {}, None, "item"),
        ("acquired", "x" * 500, {}, None, "item"),
        ("acquired", None, {"blob": b"\x00"}, None, "not canonical-JSON"),
        ("acquired", None, {"nan": float("nan")}, None, "not canonical-JSON"),
        ("acquired", None, [1, 2], None, "mapping"),
        ("acquired", None, {}, "2024-05-01 09:00:00", "time like"),
        ("acquired", None, {}, "2024-13-01T09:00:00.000000Z", "time like"),
    ],
)
def test_invalid_appends_are_refused_and_write_nothing(
    conn: sqlite3.Connection,
    ledger: Ledger,
    type_: str,
    item: str | None,
    data: Any,
    time: str | None,
    message: str,
) -> None:
    with pytest.raises(LedgerError, match=message), conn:
        ledger.append(type_, item, data, time=time)
    assert ledger.head() == (0, GENESIS_PREV)


def test_checkpoints(conn: sqlite3.Connection, ledger: Ledger, station_key: StationKey) -> None:
    assert ledger.checkpoint() is None
    fill(conn, ledger, 3)
    cp = checkpoint(conn, ledger)
    assert (cp.station, cp.seq, cp.hash, cp.key_id) == (STATION_ID, 3, ledger.head()[1], station_key.key_id)
    assert cp.signed_payload() == canonical_json(
        {"station": STATION_ID, "seq": 3, "hash": cp.hash, "time": cp.time}
    )
    from edge.custody.keys import verify_signature

    assert verify_signature(station_key.public_key(), base64.b64decode(cp.signature), cp.signed_payload())
    assert checkpoint(conn, ledger) == cp, "an unchanged head is not signed again"
    fill(conn, ledger, 1)
    cp2 = checkpoint(conn, ledger)
    assert cp2.seq == 4
    first, *rest = ledger.checkpoints()
    assert first.seq == 1, "the ledger signs its first entry by itself"
    assert rest == [cp, cp2]
    assert Checkpoint.from_dict(cp2.to_dict()) == cp2
    assert problems_of(ledger) == []


def test_checkpoint_from_dict_rejects_wrong_types() -> None:
    doc = {"station": "s", "seq": True, "hash": "h", "time": "t", "key_id": "k", "signature": "x"}
    with pytest.raises(LedgerError, match="seq"):
        Checkpoint.from_dict(doc)
    with pytest.raises(LedgerError, match="signature"):
        Checkpoint.from_dict({**doc, "seq": 1, "signature": None})


# -- tampering: every case is detected and named ----------------------------------------------------


@pytest.fixture
def ten(conn: sqlite3.Connection, ledger: Ledger) -> list[LedgerEntry]:
    entries = fill(conn, ledger, 10)
    checkpoint(conn, ledger)
    return entries


def test_edited_data_is_named(conn: sqlite3.Connection, ledger: Ledger, ten: list[LedgerEntry]) -> None:
    as_attacker(conn, ("UPDATE ledger SET data = ? WHERE seq = 5", ('{"index":4,"officer":"李四"}',)))
    problems = problems_of(ledger)
    assert [p.where for p in problems] == ["ledger seq 5"]
    assert "content does not match its hash" in problems[0].what and ten[4].hash in problems[0].what


def test_edited_type_is_named(conn: sqlite3.Connection, ledger: Ledger, ten: list[LedgerEntry]) -> None:
    as_attacker(conn, ("UPDATE ledger SET type = 'wiped' WHERE seq = 6", ()))
    problems = problems_of(ledger)
    assert [p.where for p in problems] == ["ledger seq 6"]
    assert "edited" in problems[0].what


def test_edited_time_or_item_is_named(
    conn: sqlite3.Connection, ledger: Ledger, ten: list[LedgerEntry]
) -> None:
    as_attacker(
        conn,
        ("UPDATE ledger SET time = '2020-01-01T00:00:00.000000Z' WHERE seq = 2", ()),
        ("UPDATE ledger SET item = NULL WHERE seq = 4", ()),
    )
    assert [p.where for p in problems_of(ledger)] == ["ledger seq 2", "ledger seq 4"]


def test_deleted_middle_entry_is_named(
    conn: sqlite3.Connection, ledger: Ledger, ten: list[LedgerEntry]
) -> None:
    as_attacker(conn, ("DELETE FROM ledger WHERE seq = 5", ()))
    problems = problems_of(ledger)
    assert [p.where for p in problems] == ["ledger seq 5"]
    assert "seq jumps from 4 to 6" in problems[0].what


def test_deleted_run_of_entries_is_named(
    conn: sqlite3.Connection, ledger: Ledger, ten: list[LedgerEntry]
) -> None:
    as_attacker(conn, ("DELETE FROM ledger WHERE seq BETWEEN 3 AND 6", ()))
    problems = problems_of(ledger)
    assert [p.where for p in problems] == ["ledger seq 3"]
    assert "seqs 3-6" in problems[0].what


def test_deleted_first_entry_is_named(
    conn: sqlite3.Connection, ledger: Ledger, ten: list[LedgerEntry]
) -> None:
    as_attacker(conn, ("DELETE FROM ledger WHERE seq = 1", ()))
    problems = problems_of(ledger)
    assert [p.where for p in problems] == ["ledger seq 1", "checkpoint seq 1"]
    assert "starts at seq 2" in problems[0].what


def test_deleted_tail_covered_by_checkpoint_is_named(
    conn: sqlite3.Connection, ledger: Ledger, ten: list[LedgerEntry]
) -> None:
    as_attacker(conn, ("DELETE FROM ledger WHERE seq >= 9", ()))
    problems = problems_of(ledger)
    assert [p.where for p in problems] == ["checkpoint seq 10"]
    assert "ends at seq 8" in problems[0].what and "truncated" in problems[0].what


def test_whole_ledger_deleted_is_named(
    conn: sqlite3.Connection, ledger: Ledger, ten: list[LedgerEntry]
) -> None:
    as_attacker(conn, ("DELETE FROM ledger", ()))
    problems = problems_of(ledger)
    assert [p.where for p in problems] == ["checkpoint seq 1", "checkpoint seq 10"]
    assert all("empty" in p.what for p in problems)


def test_deleted_checkpointed_entry_in_the_middle_is_named(conn: sqlite3.Connection, ledger: Ledger) -> None:
    fill(conn, ledger, 4)
    checkpoint(conn, ledger)
    fill(conn, ledger, 4)
    as_attacker(conn, ("DELETE FROM ledger WHERE seq = 4", ()))
    problems = problems_of(ledger)
    assert [p.where for p in problems] == ["ledger seq 4", "checkpoint seq 4"]
    assert "no entry at seq 4" in problems[1].what


def test_swapped_rows_are_named(conn: sqlite3.Connection, ledger: Ledger, ten: list[LedgerEntry]) -> None:
    a, b = ten[2], ten[3]  # seq 3 and 4
    swap = "UPDATE ledger SET time = ?, type = ?, item = ?, data = ?, prev = ?, hash = ? WHERE seq = ?"

    def values(e: LedgerEntry, seq: int) -> tuple[Any, ...]:
        return (e.time, e.type, e.item, canonical_json(e.data).decode(), e.prev, e.hash, seq)

    as_attacker(conn, (swap, values(b, 3)), (swap, values(a, 4)))
    problems = problems_of(ledger)
    named = {p.where for p in problems}
    assert named == {"ledger seq 3", "ledger seq 4", "ledger seq 5"}
    assert any(p.where == "ledger seq 3" and "does not link to seq 2" in p.what for p in problems)
    assert any(p.where == "ledger seq 5" and "reordered" in p.what for p in problems)


def test_rehashed_single_entry_breaks_the_next_link(
    conn: sqlite3.Connection, ledger: Ledger, ten: list[LedgerEntry]
) -> None:
    body = {**ten[4].body(), "data": {"index": 4, "officer": "李四"}}
    as_attacker(
        conn,
        (
            "UPDATE ledger SET data = ?, hash = ? WHERE seq = 5",
            (canonical_json(body["data"]).decode(), entry_hash(body)),
        ),
    )
    problems = problems_of(ledger)
    assert [p.where for p in problems] == ["ledger seq 6"]
    assert "does not link to seq 5" in problems[0].what


def test_recomputed_chain_after_edit_is_caught_by_checkpoint(
    conn: sqlite3.Connection, ledger: Ledger, ten: list[LedgerEntry]
) -> None:
    rewrite_from(conn, 5, {"officer": "李四"})
    problems = problems_of(ledger)
    assert [p.where for p in problems] == ["checkpoint seq 10"]
    assert f"signed hash {ten[9].hash}" in problems[0].what
    assert "rewritten at or before seq 10" in problems[0].what


def test_recomputed_chain_is_bracketed_by_checkpoints(conn: sqlite3.Connection, ledger: Ledger) -> None:
    fill(conn, ledger, 4)
    checkpoint(conn, ledger)
    fill(conn, ledger, 6)
    checkpoint(conn, ledger)
    rewrite_from(conn, 6, {"officer": "李四"})
    problems = problems_of(ledger)
    assert [p.where for p in problems] == ["checkpoint seq 10"]
    assert "previous checkpoint, at seq 4, matches" in problems[0].what


def test_forged_checkpoint_signature_is_named(
    conn: sqlite3.Connection, ledger: Ledger, ten: list[LedgerEntry], station_key: StationKey
) -> None:
    rewrite_from(conn, 5, {"officer": "李四"})
    new_head = ledger.head()[1]
    forger = StationKey.generate()
    payload = canonical_json({"station": STATION_ID, "seq": 10, "hash": new_head, "time": ten[9].time})
    as_attacker(
        conn,
        ("DELETE FROM ledger_checkpoints", ()),
        (
            "INSERT INTO ledger_checkpoints (station, seq, hash, time, key_id, signature) "
            "VALUES (?,?,?,?,?,?)",
            (
                STATION_ID,
                10,
                new_head,
                ten[9].time,
                station_key.key_id,
                base64.b64encode(forger.sign(payload)).decode(),
            ),
        ),
    )
    problems = problems_of(ledger)
    # The forged checkpoint is named, and with the genuine ones gone the ledger has none at all.
    assert [p.where for p in problems] == ["checkpoint seq 10", "ledger"]
    assert "signature does not verify" in problems[0].what
    assert "no authentic signed checkpoint" in problems[1].what


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("hash", "ab" * 32, "signature does not verify"),
        ("time", "2030-01-01T00:00:00.000000Z", "signature does not verify"),
        ("signature", "!!not base64!!", "signature does not verify"),
        ("signature", "", "signature does not verify"),
        ("station", "9999999999", "signed for station"),
        ("key_id", "00" * 16, "signed by key"),
    ],
)
def test_altered_checkpoint_fields_are_named(
    conn: sqlite3.Connection, ledger: Ledger, ten: list[LedgerEntry], column: str, value: str, message: str
) -> None:
    as_attacker(conn, (f"UPDATE ledger_checkpoints SET {column} = ? WHERE seq = 10", (value,)))
    problems = problems_of(ledger)
    assert [p.where for p in problems] == ["checkpoint seq 10"]
    assert message in problems[0].what


def test_checkpoint_signed_by_another_station_key(conn: sqlite3.Connection, ledger: Ledger) -> None:
    fill(conn, ledger, 2)
    checkpoint(conn, ledger)
    stranger = StationKey.generate()
    problems = verify_ledger(conn, stranger.public_key(), STATION_ID)
    assert [p.where for p in problems] == ["checkpoint seq 1", "checkpoint seq 2", "ledger"]
    assert "signed by key" in problems[0].what and "signed by key" in problems[1].what


def test_edited_hash_column_is_named(
    conn: sqlite3.Connection, ledger: Ledger, ten: list[LedgerEntry]
) -> None:
    as_attacker(conn, ("UPDATE ledger SET hash = ? WHERE seq = 3", ("cd" * 32,)))
    problems = problems_of(ledger)
    assert [p.where for p in problems] == ["ledger seq 3", "ledger seq 4"]


@pytest.mark.parametrize(
    ("data_text", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"a":1,"a":2}', "not valid JSON"),
        ("[1,2]", "JSON object"),
        ('{"index": 2, "officer": "张三", "sha256": "' + f"{2:064x}" + '"}', "canonical form"),
    ],
)
def test_damaged_data_column_is_named(
    conn: sqlite3.Connection, ledger: Ledger, ten: list[LedgerEntry], data_text: str, message: str
) -> None:
    as_attacker(conn, ("UPDATE ledger SET data = ? WHERE seq = 3", (data_text,)))
    problems = ledger.verify()
    assert problems and all(p.where == "ledger seq 3" for p in problems)
    assert any(message in p.what for p in problems)
    if message != "canonical form":
        with pytest.raises(LedgerError, match="ledger seq 3"):
            list(ledger.entries())


def test_damaged_prev_column_is_named(
    conn: sqlite3.Connection, ledger: Ledger, ten: list[LedgerEntry]
) -> None:
    as_attacker(conn, ("UPDATE ledger SET prev = 'zz' WHERE seq = 7", ()))
    problems = problems_of(ledger)
    assert {p.where for p in problems} == {"ledger seq 7"}
    assert any("cannot recompute hash" in p.what for p in problems)


def test_undetectable_without_outside_checkpoints_is_documented(
    conn: sqlite3.Connection, ledger: Ledger, ten: list[LedgerEntry]
) -> None:
    # Entries after the newest checkpoint can be dropped or rewritten without trace in the station's own
    # database: this is why checkpoints leave the station. Verifying with the central's copies catches it.
    shipped = ledger.checkpoints()
    fill(conn, ledger, 3)
    later = checkpoint(conn, ledger)
    as_attacker(
        conn, ("DELETE FROM ledger WHERE seq > 10", ()), ("DELETE FROM ledger_checkpoints WHERE seq > 10", ())
    )
    assert ledger.verify() == []
    problems = verify_chain(ledger.entries(), [*shipped, later], ledger._key.public_key(), STATION_ID)
    assert [p.where for p in problems] == ["checkpoint seq 13"]


# -- verify_chain on entries from any source ---------------------------------------------------------


def test_out_of_order_entries_are_named(
    conn: sqlite3.Connection, ledger: Ledger, station_key: StationKey
) -> None:
    entries = fill(conn, ledger, 4)
    shuffled = [entries[0], entries[2], entries[1], entries[3]]
    problems = verify_chain(shuffled, [], station_key.public_key(), STATION_ID)
    assert [p.where for p in problems] == ["ledger seq 2", "ledger seq 2"]
    assert "seq jumps from 1 to 3" in problems[0].what
    assert "appears after seq 3" in problems[1].what


def test_continuation_verifies_from_a_known_head(
    conn: sqlite3.Connection, ledger: Ledger, station_key: StationKey
) -> None:
    entries = fill(conn, ledger, 6)
    cp = checkpoint(conn, ledger)
    pub = station_key.public_key()
    assert verify_chain(entries[3:], [cp], pub, STATION_ID, after=(3, entries[2].hash)) == []
    wrong = verify_chain(entries[3:], [cp], pub, STATION_ID, after=(3, "ee" * 32))
    assert [p.where for p in wrong] == ["ledger seq 4"]
    gap = verify_chain(entries[4:], [cp], pub, STATION_ID, after=(3, entries[2].hash))
    assert [p.where for p in gap] == ["ledger seq 4"]


def test_entry_with_unserialisable_data_is_named(station_key: StationKey) -> None:
    good = LedgerEntry(1, "2024-05-01T09:00:00.000000Z", "x", None, {}, GENESIS_PREV, "")
    good = dataclasses.replace(good, hash=entry_hash(good.body()))
    bad = dataclasses.replace(good, data={"v": float("inf")})
    problems = verify_chain([bad], [], station_key.public_key(), STATION_ID)
    assert [p.where for p in problems] == ["ledger seq 1"]
    assert "cannot recompute hash" in problems[0].what


# -- checkpoints the ledger signs by itself, and their deletion ---------------------------------------


def started(conn: sqlite3.Connection, ledger: Ledger, every: int) -> LedgerEntry:
    ledger.checkpoint_every = every
    with conn:
        return ledger.append(
            EntryType.STATION_STARTED, None, {"station": STATION_ID, "checkpoint_every": every}
        )


def test_the_ledger_signs_its_first_entry_and_then_at_its_declared_cadence(
    conn: sqlite3.Connection, ledger: Ledger
) -> None:
    started(conn, ledger, 4)
    fill(conn, ledger, 11)
    assert [cp.seq for cp in ledger.checkpoints()] == [1, 5, 9]
    assert problems_of(ledger) == []
    # Another writer of the same store (`edge tag`) keeps the cadence the station declared.
    assert Ledger(conn, STATION_ID, ledger._key).checkpoint_every == 4


def test_a_ledger_without_any_checkpoint_is_a_problem(
    conn: sqlite3.Connection, ledger: Ledger, ten: list[LedgerEntry]
) -> None:
    as_attacker(conn, ("DELETE FROM ledger_checkpoints", ()))
    problems = problems_of(ledger)
    assert [p.where for p in problems] == ["ledger"]
    assert "holds 10 entries but no authentic signed checkpoint" in problems[0].what


def test_deleted_checkpoints_leave_a_gap_that_is_named(conn: sqlite3.Connection, ledger: Ledger) -> None:
    started(conn, ledger, 4)
    fill(conn, ledger, 19)  # checkpoints at 1, 5, 9, 13, 17
    as_attacker(conn, ("DELETE FROM ledger_checkpoints WHERE seq IN (9, 13)", ()))
    problems = problems_of(ledger)
    assert [p.where for p in problems] == ["ledger seqs 6-16"]
    assert "11 entries in a row carry no signed checkpoint" in problems[0].what
    assert "at least every 4 entries (declared at seq 1)" in problems[0].what


def test_deleted_newest_checkpoints_leave_a_tail_gap_that_is_named(
    conn: sqlite3.Connection, ledger: Ledger
) -> None:
    started(conn, ledger, 4)
    fill(conn, ledger, 19)
    as_attacker(conn, ("DELETE FROM ledger_checkpoints WHERE seq >= 13", ()))
    assert [p.where for p in problems_of(ledger)] == ["ledger seqs 10-20"]


def test_without_a_declared_cadence_a_long_unsigned_run_is_not_a_gap(
    conn: sqlite3.Connection, ledger: Ledger
) -> None:
    ledger.checkpoint_every = 1000  # a store that never declared its cadence (a station never started)
    fill(conn, ledger, 30)
    assert [cp.seq for cp in ledger.checkpoints()] == [1]
    assert problems_of(ledger) == []


def test_the_default_cadence_signs_every_entry_so_a_rewrite_is_named_at_its_seq(
    conn: sqlite3.Connection, station_key: StationKey
) -> None:
    """By default the station signs a checkpoint in the transaction of each entry: a careful forger who
    edits seq 5 and recomputes every later hash is named at seq 5 itself (and at each later seq), not only
    at the next sparse checkpoint."""
    ledger = Ledger(conn, STATION_ID, station_key)
    assert ledger.checkpoint_every == 1
    entries = fill(conn, ledger, 10)
    assert [cp.seq for cp in ledger.checkpoints()] == [e.seq for e in entries]
    assert [cp.seq for cp in ledger.checkpoints(4, 6)] == [4, 5, 6]
    assert ledger.verify() == []  # control
    rewrite_from(conn, 5, {"officer": "李四"})
    problems = station_chain_problems(ledger.verify())
    assert [p.where for p in problems] == [f"checkpoint seq {seq}" for seq in range(5, 11)], problems
    assert "previous checkpoint, at seq 4, matches" in problems[0].what
