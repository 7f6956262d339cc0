"""Registration without HTTP: what the central accepts and the precise reason for every refusal."""

from __future__ import annotations

import copy
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.central.postgres import PostgresDatabase
from edge.central.registration import (
    RejectCode,
    Rejection,
    check_segment,
    manifest_shape_problem,
    parse_segment,
)
from edge.custody.canonical import sha256_hex
from edge.custody.keys import StationKey
from edge.custody.keyschedule import KEY_ROTATED, rotation_data
from edge.custody.ledger import GENESIS_PREV, Ledger
from edge.custody.manifest import sign_manifest
from edge.custody.receipt import verify_receipt
from tests.central.conftest import Acquired, CentralParts, FakeStation, enroll, make_central_parts


@pytest.fixture(params=["sqlite", "postgresql"])
def parts(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CentralParts]:
    """The registrar on each backend: an acceptance (ledger rows, item rows, Merkle leaf, signed head) is
    one transaction of the shared unit of work on both, and every refusal is the same."""
    database = None
    if request.param == "postgresql":
        server = request.getfixturevalue("pg_database")
        database = PostgresDatabase.open(server.url, password=server.password)
    built = make_central_parts(tmp_path / "central", database=database)
    yield built
    built.index.close()


def _body(parts: CentralParts, station: FakeStation, acquired: Acquired, *, after: int = 0,
          upload: str | None = None, ledger: bool = True) -> dict[str, Any]:
    if upload is None:
        upload = parts.upload(station.station_id, acquired.content)
    return {
        "upload": upload,
        "manifest": acquired.manifest,
        "ledger": station.segment(after) if ledger else None,
    }


async def _rejected(parts: CentralParts, station: FakeStation, body: object, code: RejectCode,
                    path_station: str | None = None) -> Rejection:
    with pytest.raises(Rejection) as caught:
        await parts.registrar.register_item(parts.caller(station.station_id),
                                            path_station or station.station_id, body)
    assert caught.value.code == code, caught.value.detail
    recorded = parts.index.rejections(station.station_id)[-1]
    assert recorded["code"] == code and recorded["detail"] == caught.value.detail
    return caught.value


async def test_accepts_an_item_with_a_receipt_that_verifies(
    parts: CentralParts, station: FakeStation
) -> None:
    enroll(parts.index, station)
    acquired = station.acquire(b"video bytes " * 5000)
    body = _body(parts, station, acquired)
    caller = parts.caller(station.station_id)
    registered = await parts.registrar.register_item(caller, station.station_id, body)
    assert not registered.replay
    receipt = registered.receipt.to_dict()
    assert verify_receipt(receipt, parts.signing_key.public_key(), expected_item=acquired.item,
                          expected_sha256=acquired.sha256, expected_station=station.station_id) == []
    record = parts.index.item(acquired.item)
    assert record is not None and record.leaf_index == receipt["leaf_index"] == 0
    assert parts.file_objects.path_of(acquired.sha256).read_bytes() == acquired.content
    assert parts.uploads.get(body["upload"]) is None  # consumed
    assert parts.index.ledger_head(station.station_id) == station.ledger.head()
    assert parts.index.metadata_history(acquired.item)[0]["changes"]["case_number"] == "A-2024-001"
    assert parts.index.rejections() == []


async def test_replay_is_idempotent(parts: CentralParts, station: FakeStation) -> None:
    enroll(parts.index, station)
    first_item = station.acquire(b"first")
    body = _body(parts, station, first_item)
    caller = parts.caller(station.station_id)
    first = await parts.registrar.register_item(caller, station.station_id, body)
    second_item = station.acquire(b"second")
    await parts.registrar.register_item(caller, station.station_id, _body(parts, station, second_item))
    again = await parts.registrar.register_item(caller, station.station_id, body)  # upload already gone
    assert again.replay
    assert again.receipt.leaf == first.receipt.leaf and again.receipt.leaf_index == first.receipt.leaf_index
    assert again.receipt.tree_size == 2  # a fresh proof against the current head
    assert verify_receipt(again.receipt, parts.signing_key.public_key(), expected_item=first_item.item) == []
    assert parts.merkle.size() == 2
    # A re-upload of the same content for a replay is cleaned up, not kept.
    reupload = parts.upload(station.station_id, first_item.content)
    await parts.registrar.register_item(caller, station.station_id, {**body, "upload": reupload})
    assert parts.uploads.get(reupload) is None


async def test_content_not_matching_the_manifest(parts: CentralParts, station: FakeStation) -> None:
    enroll(parts.index, station)
    acquired = station.acquire(b"what was recorded")
    upload = parts.upload(station.station_id, b"what was recorded, then edited")
    rejection = await _rejected(parts, station, _body(parts, station, acquired, upload=upload),
                                RejectCode.CONTENT_MISMATCH)
    assert acquired.sha256 in rejection.detail and "removed" in rejection.detail
    assert parts.uploads.get(upload) is None
    assert parts.index.item(acquired.item) is None


async def test_same_size_different_bytes_is_caught_by_hashing(
    parts: CentralParts, station: FakeStation
) -> None:
    enroll(parts.index, station)
    acquired = station.acquire(b"AAAA")
    upload = parts.upload(station.station_id, b"AAAB")
    body = _body(parts, station, acquired, upload=upload)
    await _rejected(parts, station, body, RejectCode.CONTENT_MISMATCH)
    assert list(parts.file_objects.names()) == []


async def test_content_changed_after_the_tus_store_hashed_it_is_hashed_again_and_refused(
    parts: CentralParts, station: FakeStation
) -> None:
    """The object store takes the tus store's hash without reading the file again only while the file is
    the one that was hashed; a write after completion (one byte, same size) is found by hashing it."""
    enroll(parts.index, station)
    acquired = station.acquire(b"video bytes " * 5000)
    upload = parts.upload(station.station_id, acquired.content)
    assert parts.uploads.get(upload).sha256 == acquired.sha256  # type: ignore[union-attr]
    with open(parts.uploads.complete_path(upload), "r+b") as part:
        part.seek(100)
        part.write(b"X")
    tampered = _body(parts, station, acquired, upload=upload)
    await _rejected(parts, station, tampered, RejectCode.CONTENT_MISMATCH)
    assert list(parts.file_objects.names()) == [] and parts.index.item(acquired.item) is None
    # Control: the same content left alone is taken (test_accepts_an_item_with_a_receipt_that_verifies).
    again = parts.upload(station.station_id, acquired.content)
    body = _body(parts, station, acquired, upload=again)
    await parts.registrar.register_item(parts.caller(station.station_id), station.station_id, body)
    assert parts.file_objects.path_of(acquired.sha256).read_bytes() == acquired.content


async def test_manifest_signed_by_a_key_that_is_not_the_enrolled_one(
    parts: CentralParts, station: FakeStation
) -> None:
    enroll(parts.index, station)
    acquired = station.acquire(b"content")
    unsigned = {k: v for k, v in acquired.manifest.items() if k != "signature"}
    forged = sign_manifest(unsigned, StationKey.generate())
    body = _body(parts, station, acquired)
    body["manifest"] = forged
    rejection = await _rejected(parts, station, body, RejectCode.BAD_SIGNATURE)
    assert station.key.key_id in rejection.detail


async def test_manifest_altered_after_signing(parts: CentralParts, station: FakeStation) -> None:
    enroll(parts.index, station)
    acquired = station.acquire(b"content")
    body = _body(parts, station, acquired)
    body["manifest"] = copy.deepcopy(acquired.manifest)
    body["manifest"]["case"]["subject"] = "something else"
    rejection = await _rejected(parts, station, body, RejectCode.BAD_SIGNATURE)
    assert "altered" in rejection.detail


async def test_malformed_manifest(parts: CentralParts, station: FakeStation) -> None:
    enroll(parts.index, station)
    acquired = station.acquire(b"content")
    body = _body(parts, station, acquired)
    body["manifest"] = {k: v for k, v in acquired.manifest.items() if k != "chain"}
    rejection = await _rejected(parts, station, body, RejectCode.BAD_MANIFEST)
    assert "chain" in rejection.detail


async def test_ledger_gap(parts: CentralParts, station: FakeStation) -> None:
    enroll(parts.index, station)
    first = station.acquire(b"one")
    await parts.registrar.register_item(parts.caller(station.station_id), station.station_id,
                                        _body(parts, station, first))
    head = station.ledger.head()[0]
    second = station.acquire(b"two")
    segment = station.segment(head)
    segment["entries"] = segment["entries"][1:]  # seq head+1 missing
    body = _body(parts, station, second, ledger=False)
    body["ledger"] = segment
    rejection = await _rejected(parts, station, body, RejectCode.LEDGER_GAP)
    assert f"seq {head}" in rejection.detail and f"seqs {head + 1}-{head + 1}" in rejection.detail
    with pytest.raises(Rejection) as caught:
        await parts.registrar.accept_segment(parts.caller(station.station_id), station.station_id, segment)
    assert caught.value.code == RejectCode.LEDGER_GAP


async def test_ledger_fork(parts: CentralParts, station: FakeStation) -> None:
    enroll(parts.index, station)
    first = station.acquire(b"one")
    caller = parts.caller(station.station_id)
    await parts.registrar.register_item(caller, station.station_id, _body(parts, station, first))
    # The same station key, but a ledger rebuilt from scratch: seq 1 differs from the accepted seq 1.
    rebuilt = FakeStation(station.station_id, key=station.key)
    rebuilt.record("station_started", None, {"note": "rebuilt"})
    rebuilt.record("station_started", None, {"note": "more"})
    rebuilt.record("station_started", None, {"note": "more"})
    rebuilt.record("station_started", None, {"note": "more"})
    with pytest.raises(Rejection) as caught:
        await parts.registrar.accept_segment(caller, station.station_id, rebuilt.segment(0))
    assert caught.value.code == RejectCode.LEDGER_FORK and "seq 1" in caught.value.detail
    # Continuing from the head with a prev that is not the head's hash is a fork too.
    head_seq = station.ledger.head()[0]
    extra = rebuilt.record("station_started", None, {"note": "beyond"})
    assert extra.seq == head_seq + 2
    fork = rebuilt.segment(head_seq)
    with pytest.raises(Rejection) as caught:
        await parts.registrar.accept_segment(caller, station.station_id, fork)
    assert caught.value.code == RejectCode.LEDGER_FORK
    assert "prev" in caught.value.detail
    rebuilt.conn.close()


async def test_bad_checkpoint_signature(parts: CentralParts, station: FakeStation) -> None:
    enroll(parts.index, station)
    station.acquire(b"one")
    segment = station.segment(0)
    signature = segment["checkpoint"]["signature"]
    segment["checkpoint"]["signature"] = ("B" if signature[0] != "B" else "C") + signature[1:]
    with pytest.raises(Rejection) as caught:
        await parts.registrar.accept_segment(parts.caller(station.station_id), station.station_id, segment)
    assert caught.value.code == RejectCode.BAD_CHECKPOINT and "signature" in caught.value.detail
    assert parts.index.ledger_head(station.station_id) == (0, GENESIS_PREV)


async def test_checkpoint_by_another_key_or_on_another_entry(
    parts: CentralParts, station: FakeStation
) -> None:
    enroll(parts.index, station)
    station.acquire(b"one")
    caller = parts.caller(station.station_id)
    impostor = Ledger(station.conn, station.station_id, StationKey.generate())
    with station.conn:
        cp = impostor.checkpoint()
    assert cp is not None
    segment = station.segment(0)
    segment["checkpoint"] = cp.to_dict()
    with pytest.raises(Rejection) as caught:
        await parts.registrar.accept_segment(caller, station.station_id, segment)
    assert caught.value.code == RejectCode.BAD_CHECKPOINT and "enrolled key" in caught.value.detail
    segment = station.segment(0)
    segment["entries"] = segment["entries"][:-1]
    with pytest.raises(Rejection) as caught:
        await parts.registrar.accept_segment(caller, station.station_id, segment)
    assert caught.value.code == RejectCode.BAD_CHECKPOINT and "last entry" in caught.value.detail


async def test_entry_edited_after_hashing_is_a_bad_chain(parts: CentralParts, station: FakeStation) -> None:
    enroll(parts.index, station)
    station.acquire(b"one")
    segment = station.segment(0)
    segment["entries"][0]["data"]["size"] = 999
    with pytest.raises(Rejection) as caught:
        await parts.registrar.accept_segment(parts.caller(station.station_id), station.station_id, segment)
    assert caught.value.code == RejectCode.BAD_CHAIN and "ledger seq 1" in caught.value.detail


async def test_segment_replay_and_overlap_are_accepted(parts: CentralParts, station: FakeStation) -> None:
    enroll(parts.index, station)
    station.acquire(b"one")
    caller = parts.caller(station.station_id)
    segment = station.segment(0)
    assert await parts.registrar.accept_segment(caller, station.station_id, segment) == station.ledger.head()
    assert await parts.registrar.accept_segment(caller, station.station_id, segment) == station.ledger.head()
    station.acquire(b"two")
    overlapping = station.segment(1)
    head = await parts.registrar.accept_segment(caller, station.station_id, overlapping)
    assert head == station.ledger.head()
    assert parts.index.rejections() == []


async def test_station_writing_under_another_id(
    parts: CentralParts, station: FakeStation, other_station: FakeStation
) -> None:
    enroll(parts.index, station)
    enroll(parts.index, other_station)
    acquired = station.acquire(b"one")
    rejection = await _rejected(parts, station, _body(parts, station, acquired), RejectCode.WRONG_STATION,
                                path_station=other_station.station_id)
    assert other_station.station_id in rejection.detail
    foreign = station.acquire(b"two", manifest_station=other_station.station_id)
    rejection = await _rejected(parts, station, _body(parts, station, foreign), RejectCode.WRONG_STATION)
    assert "manifest names station 'st-0002'" in rejection.detail
    with pytest.raises(Rejection) as caught:
        await parts.registrar.ledger_head(parts.caller(station.station_id), other_station.station_id)
    assert caught.value.code == RejectCode.WRONG_STATION


async def test_upload_of_another_station_is_not_found(
    parts: CentralParts, station: FakeStation, other_station: FakeStation
) -> None:
    enroll(parts.index, station)
    acquired = station.acquire(b"one")
    theirs = parts.upload(other_station.station_id, acquired.content)
    rejection = await _rejected(parts, station, _body(parts, station, acquired, upload=theirs),
                                RejectCode.UPLOAD_NOT_FOUND)
    assert rejection.status == 404
    assert parts.uploads.get(theirs) is not None  # untouched
    body = _body(parts, station, acquired, upload="0" * 32)
    await _rejected(parts, station, body, RejectCode.UPLOAD_NOT_FOUND)
    await _rejected(parts, station, _body(parts, station, acquired, upload="../../etc/passwd"),
                    RejectCode.BAD_REQUEST)


async def test_incomplete_upload(parts: CentralParts, station: FakeStation) -> None:
    enroll(parts.index, station)
    acquired = station.acquire(b"0123456789")
    partial = parts.upload(station.station_id, acquired.content[:4], length=len(acquired.content))
    rejection = await _rejected(parts, station, _body(parts, station, acquired, upload=partial),
                                RejectCode.UPLOAD_INCOMPLETE)
    assert "4 of 10 bytes" in rejection.detail and rejection.status == 409
    assert parts.uploads.get(partial) is not None


async def test_chain_unknown_and_chain_mismatch(parts: CentralParts, station: FakeStation) -> None:
    enroll(parts.index, station)
    acquired = station.acquire(b"one")
    rejection = await _rejected(parts, station, _body(parts, station, acquired, ledger=False),
                                RejectCode.CHAIN_UNKNOWN)
    assert "beyond the accepted ledger head seq 0" in rejection.detail
    verified = station.ledger.entries(acquired.entry.seq + 1).__next__()
    unsigned = {k: v for k, v in acquired.manifest.items() if k != "signature"}
    unsigned["chain"] = {"seq": verified.seq, "entry_hash": verified.hash}
    body = _body(parts, station, acquired)
    body["manifest"] = sign_manifest(unsigned, station.key)
    rejection = await _rejected(parts, station, body, RejectCode.CHAIN_MISMATCH)
    assert "'verified' entry" in rejection.detail
    unsigned["chain"] = {"seq": acquired.entry.seq, "entry_hash": "ab" * 32}
    body = _body(parts, station, acquired, ledger=False)
    body["manifest"] = sign_manifest(unsigned, station.key)
    rejection = await _rejected(parts, station, body, RejectCode.CHAIN_MISMATCH)
    assert acquired.entry.hash in rejection.detail


async def test_same_item_id_with_other_content_is_a_conflict(
    parts: CentralParts, station: FakeStation
) -> None:
    enroll(parts.index, station)
    acquired = station.acquire(b"one")
    await parts.registrar.register_item(parts.caller(station.station_id), station.station_id,
                                        _body(parts, station, acquired))
    other = station.acquire(b"two")
    unsigned = {k: v for k, v in other.manifest.items() if k != "signature"}
    unsigned["item"] = acquired.item
    body = _body(parts, station, other)
    body["manifest"] = sign_manifest(unsigned, station.key)
    rejection = await _rejected(parts, station, body, RejectCode.ITEM_CONFLICT)
    assert acquired.sha256 in rejection.detail


async def test_tags_accepted_later_reach_the_metadata_history(
    parts: CentralParts, station: FakeStation
) -> None:
    enroll(parts.index, station)
    acquired = station.acquire(b"one")
    caller = parts.caller(station.station_id)
    await parts.registrar.register_item(caller, station.station_id, _body(parts, station, acquired))
    head = station.ledger.head()[0]
    station.tag(acquired.item, {"case_number": "NEW-1", "important": True})
    await parts.registrar.accept_segment(caller, station.station_id, station.segment(head))
    assert parts.index.current_case(acquired.item)["case_number"] == "NEW-1"
    history = parts.index.metadata_history(acquired.item)
    assert [h["source"] for h in history] == ["manifest", "ledger"]


@pytest.mark.parametrize(
    ("doc", "code"),
    [
        (None, RejectCode.BAD_REQUEST),
        ({"entries": []}, RejectCode.BAD_REQUEST),
        ({"entries": [{}], "checkpoint": {}}, RejectCode.BAD_REQUEST),
        ({"entries": [1], "checkpoint": {}}, RejectCode.BAD_REQUEST),
        ({"entries": [], "checkpoint": {}, "x": 1}, RejectCode.BAD_REQUEST),
        ({"entries": [{"seq": True, "time": "", "type": "", "item": None, "data": {}, "prev": "0" * 64,
                       "hash": "0" * 64}], "checkpoint": {}}, RejectCode.BAD_REQUEST),
        ({"entries": [{"seq": 1, "time": "", "type": "", "item": None, "data": {}, "prev": "0" * 63,
                       "hash": "0" * 64}], "checkpoint": {}}, RejectCode.BAD_REQUEST),
        ({"entries": [{"seq": 1, "time": "", "type": "", "item": None, "data": {}, "prev": "0" * 64,
                       "hash": "0" * 64}], "checkpoint": {"seq": "1"}}, RejectCode.BAD_CHECKPOINT),
        ({"entries": [{"seq": 1, "time": "", "type": "", "item": None, "data": [], "prev": "0" * 64,
                       "hash": "0" * 64}], "checkpoint": {}}, RejectCode.BAD_REQUEST),
    ],
)
def test_hostile_segments(doc: object, code: RejectCode) -> None:
    with pytest.raises(Rejection) as caught:
        parse_segment(doc)
    assert caught.value.code == code


def test_segment_size_limit(station: FakeStation) -> None:
    entry = {"seq": 1, "time": "t", "type": "x", "item": None, "data": {}, "prev": "0" * 64, "hash": "0" * 64}
    with pytest.raises(Rejection, match="at most 10000"):
        parse_segment({"entries": [entry] * 10_001, "checkpoint": {}})


def test_check_segment_pure(station: FakeStation) -> None:
    station.acquire(b"x")
    entries, checkpoint = parse_segment(station.segment(0))
    new = check_segment(entries, checkpoint, station_id=station.station_id,
                        public_key=station.key.public_key(), head=(0, GENESIS_PREV), accepted={})
    assert [e.seq for e in new] == [1, 2, 3]
    with pytest.raises(Rejection) as caught:
        check_segment(entries, checkpoint, station_id="someone-else", public_key=station.key.public_key(),
                      head=(0, GENESIS_PREV), accepted={})
    assert caught.value.code == RejectCode.BAD_CHECKPOINT


@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: m.pop("sha256"),
        lambda m: m.update(item="NOT-A-UUID"),
        lambda m: m.update(size=True),
        lambda m: m.update(sha256="A" * 64),
        lambda m: m["source"].pop("station"),
        lambda m: m["chain"].update(seq=0),
        lambda m: m["chain"].update(entry_hash=None),
        lambda m: m.update(case=[]),
    ],
)
def test_manifest_shape_problems(station: FakeStation, mutate: Any) -> None:
    manifest = copy.deepcopy(station.acquire(b"x").manifest)
    assert manifest_shape_problem(manifest) is None
    mutate(manifest)
    assert manifest_shape_problem(manifest) is not None
    assert sha256_hex(b"x")  # keep the import honest


async def test_retry_after_a_failed_commit_adopts_the_moved_content(
    parts: CentralParts, station: FakeStation, monkeypatch: pytest.MonkeyPatch
) -> None:
    enroll(parts.index, station)
    acquired = station.acquire(b"content moved in, then the commit failed")
    body = _body(parts, station, acquired)
    caller = parts.caller(station.station_id)
    real_append = parts.merkle.append

    def failing_append(leaf: Any) -> int:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(parts.merkle, "append", failing_append)
    with pytest.raises(sqlite3.OperationalError):
        await parts.registrar.register_item(caller, station.station_id, body)
    assert parts.index.item(acquired.item) is None and parts.merkle.size() == 0
    assert parts.objects.exists(acquired.sha256)  # durable before the (failed) commit
    monkeypatch.setattr(parts.merkle, "append", real_append)
    registered = await parts.registrar.register_item(caller, station.station_id, body)
    assert not registered.replay and registered.receipt.leaf_index == 0
    assert parts.uploads.get(body["upload"]) is None


def _rotate(station: FakeStation) -> tuple[StationKey, int]:
    """`edge keys rotate` as the station does it: the entry, a checkpoint by the old key, then the new."""
    old, new = station.key, StationKey.generate()
    data = rotation_data(old.key_id, old.public_key_b64, new.key_id, new.public_key_b64,
                         old_key_lost=False, reason="yearly", by="admin")
    entry = station.record(KEY_ROTATED, None, data)
    station.checkpoint()
    station.key = new
    station.ledger = Ledger(station.conn, station.station_id, new)
    return old, entry.seq


async def test_a_rotated_station_key_is_accepted_after_re_enrollment_with_what_it_signed_before(
    parts: CentralParts, station: FakeStation
) -> None:
    enroll(parts.index, station)
    first = station.acquire(b"registered before the rotation")
    await parts.registrar.register_item(parts.caller(station.station_id), station.station_id,
                                        _body(parts, station, first))
    head = station.ledger.head()[0]
    pending = station.acquire(b"sealed before the rotation, uploaded after it")
    old, rotated_at = _rotate(station)
    later = station.acquire(b"sealed with the new key")
    # Until the station is enrolled again, its new key is refused, with what to do about it.
    rejection = await _rejected(parts, station, _body(parts, station, pending, after=head),
                                RejectCode.BAD_CHECKPOINT)
    assert f"the station rotated its ledger key at seq {rotated_at}" in rejection.detail
    assert f"edge central enroll {station.station_id} --signing-key" in rejection.detail
    enroll(parts.index, station, cert_sha256="d" * 64)
    caller, path = parts.caller(station.station_id), station.station_id
    await parts.registrar.register_item(caller, path, _body(parts, station, pending, after=head))
    await parts.registrar.register_item(caller, path, _body(parts, station, later, after=head))
    assert parts.index.item(pending.item) is not None and parts.index.item(later.item) is not None
    # Control: the retired key cannot sign for an item acquired after it was retired.
    forged_item = station.acquire(b"acquired after the rotation, signed with the retired key")
    unsigned = {k: v for k, v in forged_item.manifest.items() if k != "signature"}
    body = _body(parts, station, forged_item, after=station.ledger.head()[0] - 3)
    body["manifest"] = sign_manifest(unsigned, old)
    await _rejected(parts, station, body, RejectCode.BAD_SIGNATURE)


async def test_every_checkpoint_of_a_segment_is_checked_and_kept(parts: CentralParts,
                                                                 station: FakeStation) -> None:
    """The station sends the checkpoint at each entry of a segment (`checkpoints`); the central keeps those
    that sign the entry at their seq with the enrolled key, for disclosure packages, and refuses a forged
    one or one outside the segment."""
    enroll(parts.index, station)
    station.acquire(b"one")
    caller = parts.caller(station.station_id)
    signed = [cp.to_dict() for cp in station.ledger.checkpoints()]
    assert len(signed) == len(list(station.ledger.entries()))  # the default cadence signs every entry
    signature = signed[1]["signature"]
    for forged in (
        {**signed[1], "signature": ("B" if signature[0] != "B" else "C") + signature[1:]},
        {**signed[1], "seq": 99},
        {**signed[1], "hash": signed[0]["hash"]},
    ):
        segment = {**station.segment(0), "checkpoints": [signed[0], forged]}
        with pytest.raises(Rejection) as caught:
            await parts.registrar.accept_segment(caller, station.station_id, segment)
        assert caught.value.code == RejectCode.BAD_CHECKPOINT, caught.value
        assert parts.index.ledger_head(station.station_id) == (0, GENESIS_PREV)
    await parts.registrar.accept_segment(caller, station.station_id,
                                         {**station.segment(0), "checkpoints": signed})
    kept = {(cp.seq, cp.signature) for cp in parts.index.checkpoints(station.station_id)}
    assert kept == {(cp["seq"], cp["signature"]) for cp in signed}
