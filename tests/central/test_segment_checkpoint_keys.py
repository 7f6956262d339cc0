"""The central keeps a pushed segment's checkpoints by every key of the station (review finding 8).

After a key rotation with entries not yet pushed, the segment pushed after re-enrollment carries the old
key's checkpoints at the entries before the rotation: they are the station's signatures (every package
lists that key) and are kept, within the old key's epoch; a key of no enrollment and no rotation is not.
"""

from __future__ import annotations

import base64
import sqlite3

import pytest

from edge.central.registration import RejectCode, Rejection, check_segment_checkpoints
from edge.custody.keys import StationKey
from edge.custody.keyschedule import rotation_data
from edge.custody.ledger import Checkpoint, Ledger, LedgerEntry, checkpoint_payload

STATION = "ST-1"


def _rotated() -> tuple[StationKey, StationKey, list[LedgerEntry], list[Checkpoint]]:
    old, new = StationKey.generate(), StationKey.generate()
    conn = sqlite3.connect(":memory:")
    Ledger.create_schema(conn)
    before = Ledger(conn, STATION, old, checkpoint_every=1)
    for n in range(3):
        before.append("acquired", f"00000000-0000-4000-8000-00000000000{n}", {"n": n})
    after = Ledger(conn, STATION, new, checkpoint_every=1)
    after.append("key_rotated", None, rotation_data(old.key_id, old.public_key_b64, new.key_id,
                                                    new.public_key_b64, old_key_lost=False,
                                                    reason="yearly", by="admin"))
    before.checkpoint()  # the old key vouches for the new one at the rotation seq
    after.append("tagged", "00000000-0000-4000-8000-000000000000", {"changes": {}, "by": "clerk"})
    return old, new, list(after.entries()), after.checkpoints()


def _sign(key: StationKey, entry: LedgerEntry) -> Checkpoint:
    time = "2026-12-05T00:00:00.000000Z"
    signature = key.sign(checkpoint_payload(STATION, entry.seq, entry.hash, time))
    return Checkpoint(STATION, entry.seq, entry.hash, time, key.key_id, base64.b64encode(signature).decode())


def test_checkpoints_of_the_previously_enrolled_key_before_a_rotation_are_kept() -> None:
    old, new, entries, signed = _rotated()
    kept = check_segment_checkpoints(signed, entries, STATION, new.public_key())  # re-enrolled: new key
    by_old = {cp.seq for cp in kept if cp.key_id == old.key_id}
    assert by_old == {e.seq for e in entries if e.type in ("acquired", "key_rotated")}
    assert {cp.seq for cp in kept if cp.key_id == new.key_id} == {e.seq for e in entries[-2:]}
    # The same by the keys the station was enrolled with (no rotation entry in the segment).
    acquired = [e for e in entries if e.type == "acquired"]
    old_only = [cp for cp in signed if cp.seq <= acquired[-1].seq]
    kept = check_segment_checkpoints(old_only, acquired, STATION, new.public_key(),
                                     {old.key_id: old.public_key(), new.key_id: new.public_key()})
    assert {cp.seq for cp in kept} == {e.seq for e in acquired}
    # Control: a key of no enrollment and no rotation is not kept.
    stranger = StationKey.generate()
    assert check_segment_checkpoints([_sign(stranger, e) for e in acquired], acquired, STATION,
                                     new.public_key(), {old.key_id: old.public_key()}) == []


def test_a_checkpoint_by_the_old_key_after_its_rotation_is_refused() -> None:
    old, new, entries, signed = _rotated()
    late = _sign(old, entries[-1])  # the tag after the rotation, signed by the retired key
    with pytest.raises(Rejection) as refused:
        check_segment_checkpoints([*signed, late], entries, STATION, new.public_key())
    assert refused.value.code is RejectCode.BAD_CHECKPOINT
    assert f"seq {entries[-1].seq}" in refused.value.detail and "retired" in refused.value.detail
