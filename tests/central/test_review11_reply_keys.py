"""Review 11: which station keys `edge central command` takes a signed reply from.

A station signs every reply with the ledger key it holds now (edge.mqtt.command_handler `_signed`: the
store's key, read at each reply). `edge central command` checks a reply against
`edge.central.disclosure.package.station_keys_in_use`: the current key and every key the station's
`key_rotated` entries name, retired ones included, and even one the rotation declared LOST. So once the
central holds the rotation, whoever has the station's old (retired or lost: stolen) key and can publish
on the station's reply topic (the process on the broker path that signed replies are meant to defeat)
has its reply taken as the station's word, although the station never signs with that key again. The
central's own ledger checks refuse the same key after its retirement (tests/central/
test_segment_key_epochs.py); replies should too.

Control: a reply signed with the key in force (the one the station was re-enrolled with) is taken.
"""

from __future__ import annotations

import pytest

from edge.central.mqtt_command import station_reply_keys
from edge.custody.canonical import sha256_hex
from edge.custody.keys import StationKey
from edge.custody.keyschedule import KEY_ROTATED, rotation_data
from edge.custody.ledger import Ledger
from edge.mqtt.commands import (
    CommandOp,
    ReplyNotAuthentic,
    ReplySigner,
    encode_reply,
    parse_reply,
    verify_reply,
)
from tests.central.conftest import CentralParts, FakeStation, enroll

REQUEST = b'{"the exact request payload the central sent":1}'
REQUEST_ID = "0123456789abcdef0123456789abcdef"


def _rotate(station: FakeStation, *, lost: bool) -> StationKey:
    """`edge keys rotate` as the station records it (see tests/central/test_segment_key_epochs.py)."""
    old, new = station.key, StationKey.generate()
    data = rotation_data(old.key_id, old.public_key_b64, new.key_id, new.public_key_b64,
                         old_key_lost=lost, reason="key copied off the station", by="admin")
    station.record(KEY_ROTATED, None, data)
    if not lost:
        station.checkpoint()
    station.key = new
    station.ledger = Ledger(station.conn, station.station_id, new)
    station.checkpoint()
    return old


def _reply_signed_by(station: FakeStation, key: StationKey) -> bytes:
    return encode_reply(REQUEST_ID, station=station.station_id, op="ledger-head",
                        request_sha256=sha256_hex(REQUEST), signer=ReplySigner(key.key_id, key.sign),
                        result={"local": {"seq": 1, "hash": "0" * 64}})


@pytest.mark.parametrize("lost", [False, True], ids=["retired", "lost"])
async def test_a_reply_signed_by_the_stations_retired_or_lost_key_is_not_taken(
    parts: CentralParts, station: FakeStation, lost: bool
) -> None:
    enroll(parts.index, station)
    caller, path = parts.caller(station.station_id), station.station_id
    station.acquire(b"before the rotation")
    await parts.registrar.accept_segment(caller, path, {**station.segment(0), "checkpoints": [
        cp.to_dict() for cp in station.ledger.checkpoints()]})
    head = parts.index.ledger_head(path)[0]
    old = _rotate(station, lost=lost)
    enroll(parts.index, station, cert_sha256="d" * 64)  # re-enrolled with the new key
    await parts.registrar.accept_segment(parts.caller(path), path, {**station.segment(head), "checkpoints": [
        cp.to_dict() for cp in station.ledger.checkpoints() if cp.seq > head]})
    # The central holds the rotation now.
    assert parts.index.ledger_entries(path, type_=KEY_ROTATED)

    keys = station_reply_keys(path, parts.index)  # what `edge central command` checks replies against
    # Control: the station's reply, signed with the key in force, is taken.
    verify_reply(parse_reply(_reply_signed_by(station, station.key)), station=path,
                 op=CommandOp.LEDGER_HEAD, request_sha256=sha256_hex(REQUEST), keys=keys)
    # The old key's holder: the station never signs with it again (it was retired, or lost).
    forged = parse_reply(_reply_signed_by(station, old))
    with pytest.raises(ReplyNotAuthentic):
        verify_reply(forged, station=path, op=CommandOp.LEDGER_HEAD, request_sha256=sha256_hex(REQUEST),
                     keys=keys)
