"""Witnessed heads: the central's signed statement of a station's accepted ledger head, in receipts/2
and on their own; forgeries, hostile documents, and what the station keeps of them."""

from __future__ import annotations

import base64
import sqlite3
import uuid
from typing import Any

import pytest

from edge.custody.canonical import canonical_json, sha256_hex
from edge.custody.keys import StationKey
from edge.custody.merkle import MemoryTree, leaf_hash
from edge.custody.receipt import (
    RECEIPT_FORMAT,
    RECEIPT_FORMAT_WITNESSED,
    Receipt,
    leaf_data,
    make_leaf_entry,
    make_receipt,
    sign_tree_head,
    verify_receipt,
)
from edge.custody.witness import (
    WITNESSED_HEAD_FORMAT,
    WitnessedHead,
    WitnessError,
    sign_witnessed_head,
    verify_witnessed_head,
    witnessed_head_payload,
    witnessed_head_problems,
)
from edge.custody.witness_log import StationWitness, stored_witnessed_heads, unwitnessed_window

ORIGIN = "central-hq"
STATION = "3201000001"
TIME = "2024-05-01T09:00:00.123456Z"
HASH = "ab" * 32


@pytest.fixture(scope="module")
def central_key() -> StationKey:
    return StationKey.generate()


def witnessed(key: StationKey, seq: int = 17, **overrides: Any) -> WitnessedHead:
    values: dict[str, Any] = {
        "central": ORIGIN, "station": STATION, "seq": seq, "hash_hex": HASH,
        "station_key_id": "0f" * 16, "time": TIME, "key": key,
    }
    values.update(overrides)
    return sign_witnessed_head(**values)


def test_a_witnessed_head_round_trips_and_verifies(central_key: StationKey) -> None:
    head = witnessed(central_key)
    doc = head.to_dict()
    assert doc["format"] == WITNESSED_HEAD_FORMAT and doc["key_id"] == central_key.key_id
    assert WitnessedHead.from_dict(doc) == head
    assert verify_witnessed_head(doc, central_key.public_key(), expected_station=STATION) == []
    # The signature covers everything but key_id and signature, the format included (domain separation
    # from tree heads and checkpoints signed with the same key).
    signed = {name: doc[name] for name in doc if name not in ("key_id", "signature")}
    assert witnessed_head_payload(doc) == canonical_json(signed)


@pytest.mark.parametrize(
    ("member", "value"),
    [("seq", 18), ("hash", "cd" * 32), ("station", "3201000002"), ("central", "other"),
     ("station_key_id", "1f" * 16), ("time", "2024-05-01T09:00:01.123456Z")],
)
def test_every_signed_member_is_covered(central_key: StationKey, member: str, value: Any) -> None:
    doc = {**witnessed(central_key).to_dict(), member: value}
    problems = verify_witnessed_head(doc, central_key.public_key())
    assert [p.where for p in problems] == ["witnessed_head.signature"]
    assert "forged or altered" in problems[0].what


def test_another_key_another_station_and_hostile_shapes_are_named(central_key: StationKey) -> None:
    other = StationKey.generate()
    doc = witnessed(other).to_dict()
    assert "expected the pinned central key" in verify_witnessed_head(doc, central_key.public_key())[0].what
    # A head signed by the right key but about another station is not ours.
    assert verify_witnessed_head(witnessed(central_key).to_dict(), central_key.public_key(),
                                 expected_station="9999")[0].where == "witnessed_head.station"
    hostile = {**witnessed(central_key).to_dict(), "seq": True, "extra": 1, "signature": "!!"}
    named = {p.where for p in witnessed_head_problems(hostile)}
    assert {"witnessed_head", "witnessed_head.seq", "witnessed_head.signature"} <= named
    assert witnessed_head_problems([1, 2])[0].what.startswith("expected a JSON object")
    with pytest.raises(WitnessError, match="seq"):
        witnessed(central_key, seq=0)  # nothing is witnessed before the first entry


def _receipt(central_key: StationKey, witnessed_head: WitnessedHead | None) -> Receipt:
    content = b"evidence"
    entries = [
        make_leaf_entry(item=str(uuid.UUID(int=n + 1)), sha256=sha256_hex(content + bytes([n])), size=9,
                        station=STATION, manifest_sha256=sha256_hex(b"m%d" % n), accepted_utc=TIME)
        for n in range(5)
    ]
    tree = MemoryTree([leaf_hash(leaf_data(entry)) for entry in entries])
    head = sign_tree_head(ORIGIN, tree.size, tree.root(), TIME, central_key)
    return make_receipt(entries[3], 3, tree.inclusion_proof(3), head, witnessed_head)


def test_a_receipt_carries_the_witnessed_head_and_verifies_it(central_key: StationKey) -> None:
    receipt = _receipt(central_key, witnessed(central_key))
    doc = receipt.to_dict()
    assert doc["format"] == RECEIPT_FORMAT_WITNESSED
    assert Receipt.from_dict(doc) == receipt
    assert verify_receipt(doc, central_key.public_key()) == []
    # An altered witnessed head fails the receipt (the proof and tree head alone still hold).
    altered = {**doc, "witnessed_head": {**doc["witnessed_head"], "seq": 99}}
    problems = verify_receipt(altered, central_key.public_key())
    assert [p.where for p in problems] == ["receipt.witnessed_head.signature"]
    # A witnessed head of another station does not belong in this station's receipt.
    stranger = witnessed(central_key, station="3201000002").to_dict()
    assert verify_receipt({**doc, "witnessed_head": stranger}, central_key.public_key())[0].where == (
        "receipt.witnessed_head.station"
    )
    # receipt/2 without its witnessed head, or receipt/1 with one, is malformed.
    without = {k: v for k, v in doc.items() if k != "witnessed_head"}
    assert "'witnessed_head' is missing" in verify_receipt(without, central_key.public_key())[0].what
    assert "unexpected field" in verify_receipt({**doc, "format": RECEIPT_FORMAT},
                                                central_key.public_key())[0].what


def test_a_receipt_from_before_witnessing_still_verifies(central_key: StationKey) -> None:
    doc = _receipt(central_key, None).to_dict()
    assert doc["format"] == RECEIPT_FORMAT and "witnessed_head" not in doc
    assert verify_receipt(doc, central_key.public_key()) == []


def test_the_station_keeps_newer_heads_only_and_append_only(central_key: StationKey) -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE ledger (seq INTEGER PRIMARY KEY)")
    conn.executemany("INSERT INTO ledger (seq) VALUES (?)", [(n,) for n in range(1, 31)])
    StationWitness.create_schema(conn)
    kept = StationWitness(conn)
    assert unwitnessed_window(conn).entries == 30
    assert kept.add_witnessed_head(witnessed(central_key, 10), "receipt")
    assert not kept.add_witnessed_head(witnessed(central_key, 9), "ledger_push"), "an older head adds nothing"
    assert kept.add_witnessed_head(witnessed(central_key, 25), "ledger_push")
    window = unwitnessed_window(conn)
    assert (window.head_seq, window.witnessed_seq, window.entries) == (30, 25, 5)
    assert [(s.head.seq if s.head else None, s.source) for s in stored_witnessed_heads(conn)] == [
        (10, "receipt"), (25, "ledger_push")
    ]
    for statement in (
        "DELETE FROM witnessed_heads",
        "UPDATE witnessed_heads SET seq = 1",
        "INSERT INTO witnessed_heads (seq, hash, head, source, received) VALUES (3, '', '', '', '')",
    ):
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(statement)
    # A row an attacker rewrote is reported, not raised.
    conn.execute("DROP TRIGGER witnessed_heads_no_update")
    conn.execute("UPDATE witnessed_heads SET head = '{\"seq\": 1}' WHERE seq = 10")
    damaged = next(stored_witnessed_heads(conn))
    assert damaged.head is None and damaged.problem is not None and "altered" in damaged.problem


def test_a_tree_head_history_grows_only(central_key: StationKey) -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    StationWitness.create_schema(conn)
    kept = StationWitness(conn)
    assert kept.newest_tree_head() is None
    small = sign_tree_head(ORIGIN, 3, bytes(32), TIME, central_key)
    large = sign_tree_head(ORIGIN, 9, bytes([1]) * 32, TIME, central_key)
    kept.add_tree_head(small, "receipt", None)
    kept.add_tree_head(large, "tree_head", 3)
    assert kept.newest_tree_head() == large
    with pytest.raises(sqlite3.IntegrityError):
        kept.add_tree_head(small, "receipt", None)
    assert base64.b64decode(large.signature)  # kept exactly as signed
