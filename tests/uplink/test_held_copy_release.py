"""A stored copy the uplink found changed is held in state.db (edge.uplink.spool.hold_stored_copy): not
due again until a re-acquisition replaces the copy (released in the transaction that records it) or an
operator releases it (`edge uplink retry ITEM`); the status board counts it; a re-acquisition recorded
while the copy was being read is not held against the new copy; an older store gains the column.
Real pipeline, store, spool, service and CLI; no central is needed (nothing is sent)."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from edge.cli import main
from edge.config.station import StationConfig
from edge.custody.keys import StationKey
from edge.ingest.pipeline import IngestOutcome, IngestPipeline, IngestSettings
from edge.ingest.repository import IngestRepository
from edge.ingest.store import StationStore
from edge.observe.facts import StoreFactsReader
from edge.observe.terminal import station_lines
from edge.sources.local import LocalDirectory
from edge.uplink.service import UplinkService
from edge.uplink.spool import SpoolEntry
from edge.uplink.transport import ContentUnreadable

STATION = "TEST-STATION"
STEP = 10_000
SETTINGS = IngestSettings(min_free_bytes=0, chunk_bytes=4096, prefix_step_bytes=STEP)


def _config(tmp_path: Path) -> StationConfig:
    key = StationKey.load_or_create(tmp_path / "central.key")
    assert key.public_path is not None
    return StationConfig.model_validate({
        "station": {"id": STATION, "store_dir": str(tmp_path / "store")},
        "usb": {"mount_root": str(tmp_path / "media")},
        "uplink": {"central_url": "http://127.0.0.1:9", "insecure_plain_http": True,
                   "central_signing_key": str(key.public_path)},
    })


async def _held_item(
    tmp_path: Path, store: StationStore, service: UplinkService
) -> tuple[str, LocalDirectory]:
    """One item sealed from a drop directory, its stored copy changed, found so by the uplink: held."""
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "a.bin").write_bytes(random.Random("held").randbytes(3 * STEP + 7))
    source = LocalDirectory(drop, label="drop", station_id=STATION, case={"case_number": ""})
    run = await IngestPipeline(store, SETTINGS).ingest(source, source.listing().items)
    assert run.outcome is IngestOutcome.DONE and len(run.sealed) == 1
    item = run.sealed[0]
    record = IngestRepository(store).item(item)
    assert record is not None and record.path is not None
    stored = store.layout.root / record.path
    rotten = bytearray(stored.read_bytes())
    rotten[STEP + 1] ^= 0x01
    stored.write_bytes(bytes(rotten))
    service.spool.enqueue_sealed()
    entry = _due(service)[item]
    with pytest.raises(ContentUnreadable):
        await service._check_stored_copy(entry)
    return item, source


def _due(service: UplinkService) -> dict[str, SpoolEntry]:
    return {e.item: e for e in service.spool.due(now_s=1e12, exclude=(), limit=10)}


def _found(store: StationStore, item: str) -> list[int]:
    return [e.seq for e in store.ledger.entries() if e.item == item and e.type == "error"
            and e.data.get("stage") == "stored copy" and "temp_copy" not in e.data]


async def test_a_re_acquisition_releases_a_held_copy(tmp_path: Path) -> None:
    store = StationStore(tmp_path / "store", STATION)
    try:
        service = UplinkService(_config(tmp_path), store)
        item, source = await _held_item(tmp_path, store, service)
        assert service.spool.held() == {item: _found(store, item)[0]}
        assert item not in _due(service), "control: held, not due"
        # The docking's check finds the copy damaged and rebuilds it from its source.
        await IngestPipeline(store, SETTINGS).ingest(source, source.listing().items, prove_by_hash=True)
        assert [e.item for e in store.ledger.entries() if e.type == "reacquired"] == [item]
        assert service.spool.held() == {}
        entry = _due(service)[item]
        await service._check_stored_copy(entry)  # the re-acquired copy gives its hash: it goes
    finally:
        store.close()


@pytest.mark.parametrize("released", [False, True], ids=["control-not-released", "released"])
async def test_an_operator_releases_a_held_copy_with_edge_uplink_retry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], released: bool
) -> None:
    config = _config(tmp_path)
    store = StationStore(tmp_path / "store", STATION)
    try:
        service = UplinkService(config, store)
        item, _source = await _held_item(tmp_path, store, service)
        held_seq = _found(store, item)[0]
        # The status board counts it, and says so in words.
        facts = StoreFactsReader(store.layout.root, spooling=True)
        try:
            spool = facts.read().spool
        finally:
            facts.close()
        assert (spool.items, spool.held) == (1, 1)
        line = [x for x in station_lines({"spool": {"items": 1, "bytes": 1, "held": spool.held}})
                if x.startswith("spool:")]
        assert line and "1 held until re-acquired" in line[0]
    finally:
        store.close()

    toml = tmp_path / "station.toml"
    toml.write_text(f'[station]\nid = "{STATION}"\nstore_dir = "{tmp_path / "store"}"\n'
                    f'[usb]\nmount_root = "{tmp_path / "media"}"\n')
    if released:
        assert main(["uplink", "retry", item, "--config", str(toml), "--reason", "restored from backup"]) == 0
        out = capsys.readouterr().out
        assert f"released {item}" in out and f"at ledger seq {held_seq}" in out

    store = StationStore(tmp_path / "store", STATION)
    try:
        service = UplinkService(config, store)  # a restart: the hold is read from state.db
        assert (item in _due(service)) is released
        assert (service.spool.held() == {}) is released
        requeued = [e.data for e in store.ledger.entries() if e.item == item and e.type == "requeued"]
        if released:
            assert [(e["reason"], e["previous"]) for e in requeued] == [
                ("restored from backup", {"state": "held", "seq": held_seq, "stage": "stored copy"})
            ]
            # Still changed: checked as it goes, it is held again, with a new entry.
            with pytest.raises(ContentUnreadable):
                await service._check_stored_copy(_due(service)[item])
            assert len(_found(store, item)) == 2 and item not in _due(service)
        else:
            assert requeued == [] and len(_found(store, item)) == 1
    finally:
        store.close()


async def test_a_queued_item_that_is_not_held_is_not_released(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = StationStore(tmp_path / "store", STATION)
    try:
        service = UplinkService(_config(tmp_path), store)
        drop = tmp_path / "drop"
        drop.mkdir()
        (drop / "b.bin").write_bytes(b"intact" * 100)
        source = LocalDirectory(drop, label="drop", station_id=STATION, case={"case_number": ""})
        run = await IngestPipeline(store, SETTINGS).ingest(source, source.listing().items)
        item = run.sealed[0]
        service.spool.enqueue_sealed()
    finally:
        store.close()
    toml = tmp_path / "station.toml"
    toml.write_text(f'[station]\nid = "{STATION}"\nstore_dir = "{tmp_path / "store"}"\n'
                    f'[usb]\nmount_root = "{tmp_path / "media"}"\n')
    assert main(["uplink", "retry", item, "--config", str(toml)]) == 2
    assert "is queued, not rejected nor held: nothing to retry" in capsys.readouterr().err


@pytest.mark.parametrize("reacquired_meanwhile", [False, True], ids=["control", "reacquired-meanwhile"])
async def test_a_copy_replaced_while_it_was_read_is_not_held(
    tmp_path: Path, reacquired_meanwhile: bool
) -> None:
    """A re-acquisition recorded after the uplink began to read the copy replaced what it read: the
    finding is about the old copy, and holding the item would keep the repaired one from being sent."""
    store = StationStore(tmp_path / "store", STATION)
    try:
        service = UplinkService(_config(tmp_path), store)
        drop = tmp_path / "drop"
        drop.mkdir()
        (drop / "c.bin").write_bytes(b"evidence" * 100)
        source = LocalDirectory(drop, label="drop", station_id=STATION, case={"case_number": ""})
        item = (await IngestPipeline(store, SETTINGS).ingest(source, source.listing().items)).sealed[0]
        service.spool.enqueue_sealed()
        entry = _due(service)[item]
        began = store.ledger.head()[0]
        if reacquired_meanwhile:
            store.record("reacquired", item, {"found_by": "test: the docking's check"})
        with pytest.raises(ContentUnreadable):
            service._stored_copy_damaged(entry, "0" * 64, "uplink while sending (before its last chunk)",
                                         checked_after=began)
        assert (service.spool.held() == {}) is reacquired_meanwhile
        assert len(_found(store, item)) == (0 if reacquired_meanwhile else 1)
    finally:
        store.close()


def test_an_older_store_gains_the_hold_column(tmp_path: Path) -> None:
    StationStore(tmp_path / "store", STATION).close()
    conn = sqlite3.connect(tmp_path / "store" / "state.db")
    conn.execute("ALTER TABLE uploads DROP COLUMN held_seq")
    conn.commit()
    conn.close()
    store = StationStore(tmp_path / "store", STATION)
    try:
        columns = {str(row[1]) for row in store.conn.execute("PRAGMA table_info(uploads)")}
        assert "held_seq" in columns
    finally:
        store.close()
