"""verify_central_store: a clean store verifies; every kind of tampering is found and named."""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge.central.receive_queue import Admission, Lane, ReceiveQueue, queue_path
from edge.central.verify import verify_central, verify_central_store
from edge.custody.canonical import sha256_hex
from edge.custody.keys import StationKey
from edge.custody.problems import Problem
from tests.central.conftest import (
    Acquired,
    CentralParts,
    FakeStation,
    enroll,
    make_central_parts,
    start_http_central,
)


@dataclass
class Store:
    root: Path
    parts: CentralParts
    items: list[Acquired]
    station: FakeStation

    def verify(self) -> list[Problem]:
        return verify_central_store(self.root, central_public_key=self.parts.signing_key.public_key())

    def tamper(self, *statements: str) -> None:
        """Change the index as someone with write access to the file would: triggers do not stop them."""
        conn = sqlite3.connect(self.root / "index.db")
        try:
            for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
                conn.execute(f"DROP TRIGGER {name}")
            for statement in statements:
                conn.execute(statement)
            conn.commit()
        finally:
            conn.close()


async def _accept(parts: CentralParts, station: FakeStation, content: bytes) -> Acquired:
    acquired = station.acquire(content)
    after = parts.index.ledger_head(station.station_id)[0]
    body = {"upload": parts.upload(station.station_id, content), "manifest": acquired.manifest,
            "ledger": station.segment(after)}
    await parts.registrar.register_item(parts.caller(station.station_id), station.station_id, body)
    return acquired


@pytest.fixture
async def store(tmp_path: Path, station: FakeStation, other_station: FakeStation) -> AsyncIterator[Store]:
    root = tmp_path / "central"
    parts = make_central_parts(root)
    enroll(parts.index, station)
    enroll(parts.index, other_station)
    items = [await _accept(parts, station, f"item {n}".encode() * 50) for n in range(4)]
    items.append(await _accept(parts, other_station, b"from the other station"))
    station.tag(items[0].item, {"case_number": "RETAGGED"})
    await parts.registrar.accept_segment(parts.caller(station.station_id), station.station_id,
                                         station.segment(parts.index.ledger_head(station.station_id)[0]))
    parts.index.close()
    yield Store(root, parts, items, station)


def _text(problems: list[Problem]) -> str:
    return "\n".join(str(p) for p in problems)


async def test_a_clean_store_verifies(store: Store) -> None:
    assert store.verify() == []


async def test_flipped_byte_in_an_object(store: Store) -> None:
    target = store.items[1]
    path = store.parts.file_objects.path_of(target.sha256)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[10] ^= 0x01
    path.write_bytes(bytes(data))
    problems = store.verify()
    assert [p.where for p in problems] == [f"object {target.sha256}"]
    assert "altered" in problems[0].what


async def test_missing_unexpected_and_orphan_objects(store: Store) -> None:
    target = store.items[2]
    store.parts.file_objects.path_of(target.sha256).unlink()
    (store.root / "objects" / "README").write_text("planted")
    orphan = store.root / "orphan.part"
    orphan.write_bytes(b"never registered")
    store.parts.objects.put_file(orphan, sha256_hex(b"never registered"))  # as a crash before commit
    text = _text(store.verify())
    assert f"object {target.sha256}: missing" in text
    assert "object README: unexpected" in text
    assert f"object {sha256_hex(b'never registered')}: no accepted item references it" in text


async def test_edited_index_row(store: Store) -> None:
    target = store.items[0]
    store.tamper(f"UPDATE items SET officer_no = '999999' WHERE item = '{target.item}'")
    problems = store.verify()
    assert [p.where for p in problems] == [f"item {target.item}"]
    assert "officer_no" in problems[0].what


async def test_edited_item_hash_is_caught_by_leaf_and_manifest(store: Store) -> None:
    target = store.items[3]
    store.tamper(f"UPDATE items SET sha256 = '{'0' * 64}' WHERE item = '{target.item}'")
    text = _text(store.verify())
    assert f"item {target.item}: index column sha256" in text
    assert "Merkle leaf 3 differs from the index row in sha256" in text
    assert f"object {target.sha256}: no accepted item references it" in text


async def test_edited_manifest_fails_its_signature(store: Store) -> None:
    target = store.items[0]
    store.tamper(
        "UPDATE items SET manifest = replace(manifest, 'traffic stop', 'nothing happened') "
        f"WHERE item = '{target.item}'"
    )
    text = _text(store.verify())
    assert "does not verify" in text and "altered" in text
    assert "manifest hashes to" in text


async def test_deleted_leaf_row(store: Store) -> None:
    store.tamper("DELETE FROM merkle_leaves WHERE idx = 4")
    problems = store.verify()
    text = _text(problems)
    assert "tree head" in text and "leaves were removed" in text
    assert f"item {store.items[4].item}: its leaf 4 cannot be read" in text
    assert "receipts: not reproducible" in text and len(problems) == 3


async def test_deleted_item_row(store: Store) -> None:
    target = store.items[2]
    store.tamper(f"DELETE FROM metadata_history WHERE item = '{target.item}'",
                 f"DELETE FROM item_case WHERE item = '{target.item}'",
                 f"DELETE FROM items WHERE item = '{target.item}'")
    text = _text(store.verify())
    assert "merkle leaf 2: names an item the index does not hold" in text
    assert f"object {target.sha256}: no accepted item references it" in text


async def test_altered_tree_head(store: Store) -> None:
    store.tamper("UPDATE merkle_tree_heads SET root_hash = '" + "ab" * 32 + "' WHERE id = "
                 "(SELECT max(id) FROM merkle_tree_heads)")
    problems = store.verify()
    text = _text(problems)
    assert "signature" in text and "forged or altered" in text
    assert [p.where for p in problems] == ["tree head 5 (size 5).signature", "receipts"]


async def test_tree_head_signed_by_another_key(store: Store) -> None:
    problems = verify_central_store(store.root, central_public_key=StationKey.generate().public_key())
    assert problems and all("pinned central key" in p.what or "not reproducible" in p.what for p in problems)


async def test_station_ledger_entry_deleted_or_edited(store: Store) -> None:
    station = store.station.station_id
    store.tamper(f"DELETE FROM station_ledger WHERE station = '{station}' AND seq = 5")
    text = _text(store.verify())
    assert f"station {station} ledger seq 5: missing" in text


async def test_station_ledger_entry_rewritten(store: Store) -> None:
    station = store.station.station_id
    store.tamper(f"UPDATE station_ledger SET data = replace(data, 'DSJ-0001', 'DSJ-6666') "
                 f"WHERE station = '{station}' AND seq = 1")
    text = _text(store.verify())
    assert f"station {station} ledger seq 1: content does not match its hash" in text


async def test_checkpoint_altered(store: Store) -> None:
    station = store.station.station_id
    store.tamper(f"UPDATE station_checkpoints SET time = '2000-01-01T00:00:00.000000Z' "
                 f"WHERE station = '{station}' AND id = (SELECT min(id) FROM station_checkpoints)")
    text = _text(store.verify())
    assert "checkpoint seq" in text and "signature does not verify" in text


async def test_metadata_history_and_current_case(store: Store) -> None:
    target = store.items[0]
    store.tamper(f"UPDATE item_case SET case_number = 'FORGED' WHERE item = '{target.item}'")
    text = _text(store.verify())
    assert f"item {target.item}: current case case_number is 'FORGED'" in text
    assert "'RETAGGED'" in text


async def test_deleted_history_row_of_a_tag(store: Store) -> None:
    target = store.items[0]
    store.tamper(f"DELETE FROM metadata_history WHERE item = '{target.item}' AND source = 'ledger'")
    text = _text(store.verify())
    assert "tagged entry" in text and "missing from the metadata history" in text


async def test_store_made_by_init_verifies_with_its_own_key(tmp_path: Path, station: FakeStation) -> None:
    central = await start_http_central(tmp_path, dev=False)
    try:
        central.enroll_tls(station)
    finally:
        await central.running.stop()
    assert verify_central_store(central.config.central.store_dir) == []


def test_not_a_store(tmp_path: Path) -> None:
    problems = verify_central_store(tmp_path)
    assert len(problems) == 1 and "missing" in problems[0].what


def test_no_key_to_check_heads_with(tmp_path: Path) -> None:
    parts = make_central_parts(tmp_path)
    parts.index.close()
    text = _text(verify_central_store(tmp_path))
    assert "cannot load the central signing key" in text and "not verified" in text


async def test_cut_audit_trail(store: Store) -> None:
    index = make_central_parts(store.root).index
    try:
        for n in range(3):
            index.log_access(reader="aud", what="content", item=store.items[n].item, query=None, remote=None)
    finally:
        index.close()
    assert store.verify() == []
    store.tamper("DELETE FROM access_log WHERE id = 2")
    problems = store.verify()
    assert [str(p) for p in problems] == ["access_log: row 2 missing: the append-only trail was cut",
                                          "access_log: row 2 was deleted (its seal 2 remains)"]


async def test_altered_station_key(store: Store) -> None:
    forged = StationKey.generate()
    store.tamper(f"UPDATE stations SET public_key = '{forged.public_key_b64}' "
                 f"WHERE station = '{store.station.station_id}'")
    text = _text(store.verify())
    assert f"station {store.station.station_id}: current key does not have the recorded id" in text


# -- cross-check: what the stations' own ledgers say the central accepted ---------------------------


@pytest.fixture
async def receipted(tmp_path: Path, station: FakeStation) -> AsyncIterator[Store]:
    """A central whose station recorded each verified receipt in its ledger and pushed it, as the
    uplink does."""
    root = tmp_path / "central"
    parts = make_central_parts(root)
    enroll(parts.index, station)
    caller = parts.caller(station.station_id)
    items = []
    for n in range(3):
        acquired = station.acquire(f"evidence {n}".encode() * 40)
        after = parts.index.ledger_head(station.station_id)[0]
        body = {"upload": parts.upload(station.station_id, acquired.content), "manifest": acquired.manifest,
                "ledger": station.segment(after)}
        registered = await parts.registrar.register_item(caller, station.station_id, body)
        receipt = registered.receipt
        station.record("uploaded", acquired.item,
                       {"upload": body["upload"], "bytes_sent": 1, "resumed_from": 0})
        station.record("receipt", acquired.item, {
            "central": receipt.tree_head.origin, "leaf_index": receipt.leaf_index,
            "tree_size": receipt.tree_size, "root_hash": receipt.tree_head.root_hash,
            "sha256": acquired.sha256, "verified": True,
        })
        items.append(acquired)
    await parts.registrar.accept_segment(caller, station.station_id,
                                         station.segment(parts.index.ledger_head(station.station_id)[0]))
    parts.index.close()
    yield Store(root, parts, items, station)


async def test_receipted_store_verifies_and_counts_the_cross_check(receipted: Store) -> None:
    from edge.central.verify import verify_central

    findings = verify_central(receipted.root, central_public_key=receipted.parts.signing_key.public_key())
    assert findings.problems == []
    assert findings.checked["receipt_entries"] == 3 and findings.checked["items"] == 3


async def test_deleted_newest_item_with_its_leaf_nodes_and_heads_is_named(receipted: Store) -> None:
    newest = receipted.items[-1]
    # Everything the central itself holds about the newest item goes: row, history, leaf, the nodes over
    # it, every head that covers it, and its content. What remains is consistent with itself.
    receipted.tamper(
        f"DELETE FROM metadata_history WHERE item = '{newest.item}'",
        f"DELETE FROM item_case WHERE item = '{newest.item}'",
        f"DELETE FROM items WHERE item = '{newest.item}'",
        "DELETE FROM merkle_leaves WHERE idx = 2",
        "DELETE FROM merkle_nodes WHERE ((idx + 1) << level) > 2",
        "DELETE FROM merkle_tree_heads WHERE tree_size > 2",
    )
    path = receipted.parts.file_objects.path_of(newest.sha256)
    os.chmod(path.parent, 0o700)
    path.unlink()
    problems = receipted.verify()
    text = _text(problems)
    station = receipted.station.station_id
    assert all(p.where.startswith(f"station {station} ledger seq") for p in problems), text
    assert f"verified receipt for item {newest.item}" in text
    assert "the index holds no such item" in text and "the log holds only 2 leaves" in text


async def test_a_log_rewritten_under_a_receipted_head_is_named(receipted: Store) -> None:
    first = receipted.items[0]
    receipted.tamper("DELETE FROM merkle_tree_heads WHERE tree_size = 1")
    text = _text(receipted.verify())
    assert f"verified receipt for item {first.item}" in text
    assert "signed head is gone from the log's tree heads" in text


async def test_mqtt_transfers_in_progress_are_part_of_the_store_and_a_planted_file_there_is_named(
    store: Store,
) -> None:
    # The [mqtt] receiver assembles transfers under <store>/mqtt-transfers by default: a transfer left in
    # progress (init and one segment, no fin) is the store's own, anything else there is named.
    from edge.central.mqtt_ingest_store import MqttIngestStore
    from edge.mqtt.filetransfer import FileMeta, InitCommand, Mode, SegmentCommand

    transfers = MqttIngestStore(store.root / "mqtt-transfers", max_size_bytes=1 << 20, reserve_bytes=0)
    data = b"half a recording" * 64
    meta = FileMeta(name="a.mp4", size=len(data), checksum=sha256_hex(data))
    station = store.station.station_id
    assert transfers.handle(station, InitCommand("f1", Mode.ASYNC).topic, meta.to_payload()).ok
    half = data[: len(data) // 2]
    segment = SegmentCommand("f1", 0, sha256_hex(half), Mode.ASYNC)
    assert transfers.handle(station, segment.topic, half).ok
    assert sorted(p.suffix for p in (store.root / "mqtt-transfers").iterdir()) == [
        ".json", ".lock", ".part", ".segments"]
    assert store.verify() == []
    (store.root / "mqtt-transfers" / "evil.sh").write_text("planted")
    text = _text(store.verify())
    assert "file mqtt-transfers/evil.sh: not part of a central store" in text


def test_the_mqtt_receive_queue_files_are_part_of_the_store_and_a_planted_file_beside_them_is_named(
    store: Store,
) -> None:
    """The receiver's queue (edge.central.receive_queue) lives in mqtt-transfers/receive-queue: the
    central's and a worker's, with their WAL and lock, and a file set aside as damaged, are the store's."""
    from edge.central.receive_queue import ReceiveQueue, queue_path

    transfers = store.root / "mqtt-transfers"
    for name in ("central", "worker-w1"):
        ReceiveQueue.open(queue_path(transfers, name), per_station_messages=1, per_station_bytes=1).close()
    queues = transfers / "receive-queue"
    (queues / "central.sqlite3.damaged-20261205T080000Z").write_bytes(b"damaged")
    assert store.verify() == []
    (queues / "central.sqlite3.evil").write_text("planted")
    assert "file mqtt-transfers/receive-queue/central.sqlite3.evil: not part of a central store" in \
        _text(store.verify())


# Review 13, note: a stranded receive queue is visible. `edge verify` of a central store names, in its notes,
# each queue file holding waiting messages (a worker renamed or removed leaves its messages unhandled until
# a process runs under its name again), how many and how old the oldest is, read only. Control: an empty
# queue file held open (locked) by a running process gets no note, and reading it does not need its lock.


def _queue(transfers: Path, name: str, messages: int) -> ReceiveQueue:
    queue = ReceiveQueue.open(queue_path(transfers, name), per_station_messages=10, per_station_bytes=1000)
    for n in range(messages):
        topic = f"evidence/stations/st-a/$file-async/x/fin/{n}"
        admission, digest = queue.reserve(Lane.CONTENT, "st-a", topic, b"%d" % n)
        assert admission is Admission.ADDED
        queue.insert(Lane.CONTENT, "st-a", topic, b"%d" % n, None, digest)
    return queue


async def test_verify_names_a_queue_file_with_waiting_messages_and_their_age(store: Store) -> None:
    transfers = store.root / "mqtt-transfers"
    _queue(transfers, "worker-gone", 3).close()  # its worker was renamed: nobody handles these
    running = _queue(transfers, "central", 0)  # held open (locked) by a running process, empty
    try:
        findings = verify_central(store.root, central_public_key=store.parts.signing_key.public_key())
    finally:
        running.close()
    assert findings.problems == []
    notes = [n for n in findings.notes if "receive queue" in n]
    assert len(notes) == 1, findings.notes
    assert notes[0].startswith("receive queue mqtt-transfers/receive-queue/worker-gone.sqlite3: 3 message(s) "
                               "waiting, the oldest queued ")
    assert re.search(r"\(0\.0 h ago\); handled only by the process of this name", notes[0]), notes[0]
