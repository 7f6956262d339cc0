"""A ledger segment's checkpoints are kept only within their key's epoch, as the station's rotations the
central holds set it, also when the segment itself shows no rotation.

The central keeps every checkpoint a segment carries (``checkpoints``) for disclosure packages and spot
checks, which apply the station's key epochs from all its ``key_rotated`` entries. A checkpoint the
central kept outside its key's epoch (one by a key retired before it) would later fail every honest
package that ships it, and (before spot checks applied the stored rotations) vouch for the stretch.
"""

from __future__ import annotations

import base64

import pytest

from edge.central.registration import RejectCode, Rejection
from edge.custody.keys import StationKey
from edge.custody.keyschedule import KEY_ROTATED, rotation_data
from edge.custody.ledger import Checkpoint, Ledger, checkpoint_payload
from tests.central.conftest import CentralParts, FakeStation, enroll


def _rotate(station: FakeStation, *, lost: bool) -> tuple[StationKey, int]:
    """`edge keys rotate` as the station records it: the entry, the old key's checkpoint (unless lost),
    then the new key's."""
    old, new = station.key, StationKey.generate()
    data = rotation_data(old.key_id, old.public_key_b64, new.key_id, new.public_key_b64,
                         old_key_lost=lost, reason="yearly", by="admin")
    entry = station.record(KEY_ROTATED, None, data)
    if not lost:
        station.checkpoint()
    station.key = new
    station.ledger = Ledger(station.conn, station.station_id, new)
    station.checkpoint()
    return old, entry.seq


def _signed(station: FakeStation, after_seq: int) -> list[dict[str, object]]:
    return [cp.to_dict() for cp in station.ledger.checkpoints() if cp.seq > after_seq]


@pytest.mark.parametrize("lost", [False, True], ids=["retired", "lost"])
async def test_a_retired_keys_checkpoint_in_a_later_segment_is_refused(
    parts: CentralParts, station: FakeStation, lost: bool
) -> None:
    enroll(parts.index, station)
    caller, path = parts.caller(station.station_id), station.station_id
    station.acquire(b"before the rotation")
    await parts.registrar.accept_segment(caller, path, {**station.segment(0),
                                                        "checkpoints": _signed(station, 0)})
    head = parts.index.ledger_head(path)[0]
    old, rotated_at = _rotate(station, lost=lost)
    enroll(parts.index, station, cert_sha256="d" * 64)  # re-enrolled with the new key
    caller = parts.caller(path)
    await parts.registrar.accept_segment(caller, path, {**station.segment(head),
                                                        "checkpoints": _signed(station, head)})
    head = parts.index.ledger_head(path)[0]
    later = station.acquire(b"after the rotation").entry
    # The old key's holder signs the later entry too; the segment shows no rotation.
    signature = old.sign(checkpoint_payload(path, later.seq, later.hash, "2026-12-05T00:00:00.000000Z"))
    forged = Checkpoint(path, later.seq, later.hash, "2026-12-05T00:00:00.000000Z", old.key_id,
                        base64.b64encode(signature).decode("ascii"))
    segment = station.segment(head)
    with pytest.raises(Rejection) as caught:
        await parts.registrar.accept_segment(
            caller, path, {**segment, "checkpoints": [forged.to_dict(), *_signed(station, head)]})
    assert caught.value.code == RejectCode.BAD_CHECKPOINT
    assert f"retired at seq {rotated_at}" in caught.value.detail and old.key_id in caught.value.detail
    assert parts.index.ledger_head(path)[0] == head
    # Control: the same segment with the station's own checkpoints is accepted, and they are kept.
    await parts.registrar.accept_segment(caller, path, {**segment, "checkpoints": _signed(station, head)})
    assert {cp.key_id for cp in parts.index.checkpoints(path, head + 1)} == {station.key.key_id}
