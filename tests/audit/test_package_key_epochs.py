"""A package's checkpoints obey the key epochs its segment shows (review finding 3).

A station key that a ``key_rotated`` entry of the segment retired (rotated because it was lost or stolen)
signs nothing after that rotation, and the key it announced signs nothing before it: the rules `edge
verify STORE` applies (:mod:`edge.custody.keyschedule`). Otherwise whoever holds the stolen key rewrites a
tag after the rotation into another case and the package check binds it with the old key's checkpoint.
"""

from __future__ import annotations

import base64
import sqlite3

from edge.custody.disclosure import ledger_segment_problems
from edge.custody.keys import StationKey
from edge.custody.keyschedule import rotation_data
from edge.custody.ledger import Checkpoint, Ledger, LedgerEntry, checkpoint_payload, entry_hash
from edge.custody.problems import Problem
from edge.verify.package import _signed_seqs

STATION = "ST-1"
ITEM = "00000000-0000-4000-8000-000000000001"
TIME = "2026-12-05T00:00:00.000000Z"


def _rotated_ledger() -> tuple[StationKey, StationKey, list[LedgerEntry]]:
    """A ledger whose key was rotated as lost at the second-to-last entry, then an item tagged."""
    old, new = StationKey.generate(), StationKey.generate()
    conn = sqlite3.connect(":memory:")
    Ledger.create_schema(conn)
    before = Ledger(conn, STATION, old, checkpoint_every=1)
    before.append("station_started", None, {"station": STATION, "checkpoint_every": 1})
    before.append("acquired", ITEM, {"sha256": "0" * 64})
    after = Ledger(conn, STATION, new, checkpoint_every=1)
    after.append("key_rotated", None, rotation_data(old.key_id, old.public_key_b64, new.key_id,
                                                    new.public_key_b64, old_key_lost=True,
                                                    reason="station PC stolen", by="admin"))
    after.append("tagged", ITEM, {"changes": {"case_number": "B-2026-002"}, "by": "clerk-01"})
    return old, new, list(after.entries())


def _checkpoint(key: StationKey, entry: LedgerEntry) -> Checkpoint:
    signature = key.sign(checkpoint_payload(STATION, entry.seq, entry.hash, TIME))
    return Checkpoint(STATION, entry.seq, entry.hash, TIME, key.key_id, base64.b64encode(signature).decode())


def _check(segment: list[LedgerEntry], cp: Checkpoint, old: StationKey,
           new: StationKey) -> tuple[list[Problem], list[Problem], set[int]]:
    keys = {old.key_id: old.public_key(), new.key_id: new.public_key()}
    lines: list[Problem] = []
    bound = _signed_seqs(STATION, list(segment), [("checkpoints.jsonl line 1", cp)], keys, lines)
    return ledger_segment_problems(STATION, list(segment), cp, keys), lines, bound


def test_a_retired_key_cannot_bind_an_entry_after_its_rotation() -> None:
    old, new, entries = _rotated_ledger()
    tag = entries[-1]
    # Control: the genuine tag, signed by the key in force, is bound without a problem.
    problems, lines, bound = _check(entries, _checkpoint(new, tag), old, new)
    assert (problems, lines, bound) == ([], [], {tag.seq})
    # The thief of the old key rewrites the tag into another case and signs it with the old key.
    body = {**tag.body(), "data": {"changes": {"case_number": "A-2026-001"}, "by": "clerk-01"}}
    forged = LedgerEntry(**body, hash=entry_hash(body))
    problems, lines, bound = _check([*entries[:-1], forged], _checkpoint(old, forged), old, new)
    assert forged.seq not in bound
    assert [p.where for p in lines] == ["checkpoints.jsonl line 1"]
    assert f"retired at seq {tag.seq - 1}" in lines[0].what and old.key_id in lines[0].what
    assert any(f"retired at seq {tag.seq - 1}" in p.what for p in problems), problems


def test_a_rotated_in_key_cannot_bind_an_entry_before_its_rotation() -> None:
    old, new, entries = _rotated_ledger()
    acquired = entries[1]
    # Control: the old key, in force then, binds the acquired entry.
    _, lines, bound = _check(entries[:2], _checkpoint(old, acquired), old, new)
    assert (lines, bound) == ([], {acquired.seq})
    # The new key signing an entry recorded before it was announced: the segment shows its rotation.
    _, lines, bound = _check(entries, _checkpoint(new, acquired), old, new)
    assert acquired.seq not in bound
    assert [p.where for p in lines] == ["checkpoints.jsonl line 1"]
    assert f"announced only at seq {acquired.seq + 1}" in lines[0].what
