"""Wipe policy after-witness (the default), through the real agent and a real central going down and up.

The review's case: during a central outage a recorder file was erased as soon as the local copy
verified; someone with write access to the station store (the station key lies in keys/) then deleted
the item, truncated the ledger and re-signed it, and `edge verify` said OK; the only copy was gone.
Under after-witness a recorder file is erased only once a head of the station's ledger signed by the
central covers the item's `sealed` entry, so during the outage the recorder keeps its files.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from drivers.serial.dock import BayLed
from edge.central.embedded import EmbeddedCentral
from edge.central.service import start_central
from edge.config.station import WipeSection
from edge.custody.keys import StationKey, load_public_key
from edge.custody.witness_log import stored_witnessed_heads
from edge.ingest.store import StationStore
from edge.sources.usb.offload import OffloadOutcome
from edge.uplink.service import UplinkService
from edge.verify.station import verify_store
from tests.station.harness import Station, eventually, simulated_station, spec
from tests.tamper.attacker import attacker_db, forge_checkpoint, resign_checkpoints
from tests.uplink.test_uplink_station import FAST_RETRY, STATION, enrolled_central


def on_recorder(station: Station, device_serial: str) -> dict[str, str]:
    """Evidence files on the recorder now: path → SHA-256."""
    files = station.bus.volume_files(device_serial)
    return {name: digest for name, digest in files.items() if name.lower().endswith((".mp4", ".jpg", ".wav"))}


def snapshot_store(store: Path, copy: Path) -> None:
    """A consistent copy of a live store (SQLite's online backup for state.db)."""
    shutil.copytree(store, copy, ignore=shutil.ignore_patterns("state.db*", "*.lock"))
    source = sqlite3.connect(f"file:{store / 'state.db'}?mode=ro", uri=True)
    target = sqlite3.connect(copy / "state.db")
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()


def delete_items_and_truncate(store: Path, from_seq: int) -> set[str]:
    """The review's offline truncation: delete every ledger entry from ``from_seq`` with the items they
    name (rows and files), re-sign the checkpoints with the station key beside the ledger and sign a
    checkpoint at the new head. Returns the SHA-256 of each deleted item's content."""
    key = StationKey.load(store / "keys" / "station.key")
    with attacker_db(store / "state.db") as conn:
        items = {row[0] for row in conn.execute(
            "SELECT DISTINCT item FROM ledger WHERE seq >= ? AND item IS NOT NULL", (from_seq,))}
        marks = ",".join("?" * len(items))
        found = conn.execute(
            f"SELECT path, sha256 FROM items WHERE item IN ({marks})", tuple(items)
        ).fetchall()
        conn.execute("DELETE FROM ledger WHERE seq >= ?", (from_seq,))
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            columns = {row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')}
            if "item" in columns and table != "ledger":
                conn.execute(f'DELETE FROM "{table}" WHERE item IN ({marks})', tuple(items))
        station = conn.execute("SELECT station FROM ledger_checkpoints LIMIT 1").fetchone()[0]
        resign_checkpoints(conn, key)
        forge_checkpoint(conn, key, station, from_seq - 1)
    for path, _ in found:
        stored = store / path
        for sibling in stored.parent.glob(stored.name + "*"):
            sibling.unlink()
    return {digest for _, digest in found}


async def test_during_an_outage_the_recorder_keeps_its_files_until_the_central_witnessed_them(
    tmp_path: Path,
) -> None:
    central_config, uplink = enrolled_central(tmp_path, **FAST_RETRY)
    s = spec(0)
    # The policy the station ships with: no [wipe] policy given.
    async with simulated_station(tmp_path, [s], uplink=uplink, wipe=WipeSection().model_dump()) as station:
        before = on_recorder(station, s.device_serial)
        assert len(before) == 3
        first_seq = station.agent.store.ledger.head()[0] + 1  # type: ignore[union-attr]
        await station.dock_recorder(s.device_serial, 1)
        await station.wait_results(1)
        result = station.agent.results[0]
        # The central is down: everything is safe at the station, nothing is erased, the bay says so.
        assert on_recorder(station, s.device_serial) == before
        assert result.wiped == 0 and station.ledger("wiped") == []
        assert result.outcome.value == "awaiting-witness" and result.awaiting_witness == 3, result
        assert await station.led_shows(1, BayLed.RECEIPT)
        deferred = station.ledger("wipe_deferred")
        assert len(deferred) == 3 and all("witnessed" in d["reason"] for d in deferred)

        # The attack of the review on a copy of the store as it is now: every entry of this docking
        # deleted with its items, the chain re-signed with the station key. Nothing in the copy names
        # the items any more, but the recorder still holds each of them, byte for byte.
        attacked = tmp_path / "attacked-store"
        snapshot_store(tmp_path / "store", attacked)
        deleted = delete_items_and_truncate(attacked, first_seq)
        assert len(deleted) == 3
        assert deleted <= set(on_recorder(station, s.device_serial).values())

        # The central comes back: at the next docking the files are erased, each only after a head the
        # central signed covers its sealed entry.
        running = await start_central(central_config)
        try:
            uplink_service = station.agent.uplink
            assert uplink_service is not None
            await eventually(lambda: uplink_service.witness.verified_witnessed_seq() > 0, 30)
            await station.undock(s.device_serial, 1)
            await station.dock_recorder(s.device_serial, 1)
            await station.wait_results(2)
            again = station.agent.results[1]
            assert again.outcome is OffloadOutcome.DONE, again
            assert on_recorder(station, s.device_serial) == {}
            store = station.agent.store
            assert store is not None
            sealed_seq = {e.item: e.seq for e in store.ledger.entries() if e.type == "sealed"}
            wiped = [e for e in store.ledger.entries() if e.type == "wiped"]
            assert len(wiped) == 3
            kept = {stored.head.seq for stored in stored_witnessed_heads(store.conn) if stored.head}
            for entry in wiped:
                allowed_by = entry.data["verified_before_erasing"]["witnessed_seq"]
                assert entry.item is not None and sealed_seq[entry.item] <= allowed_by < entry.seq
                assert allowed_by in kept  # a head the station verified and kept
        finally:
            await running.stop()
    report = verify_store(tmp_path / "store", central_key=load_public_key(tmp_path / "bundle" /
                                                                           "central-signing.pub"))
    assert report.ok, report.problems
    assert report.checked["erasures_unwitnessed"] == 0


async def test_with_the_central_up_after_witness_erases_at_the_first_docking(tmp_path: Path) -> None:
    central = await EmbeddedCentral.start(tmp_path, STATION, tmp_path / "store")
    specs = [spec(0), spec(1)]
    try:
        async with simulated_station(
            tmp_path, specs, uplink={**central.uplink_config(), **FAST_RETRY},
            wipe={"policy": "after-witness"},
        ) as station:
            await station.dock_recorder(specs[0].device_serial, 1)
            await station.dock_recorder(specs[1].device_serial, 2)
            await station.wait_results(2)
            assert [r.outcome for r in station.agent.results] == [OffloadOutcome.DONE] * 2
            assert all(on_recorder(station, x.device_serial) == {} for x in specs)
            assert station.ledger("wipe_deferred") == []
    finally:
        await central.stop()


async def test_after_verify_erases_during_an_outage_and_verify_names_each_unwitnessed_erasure(
    tmp_path: Path,
) -> None:
    """The control, and what after-verify costs: the recorder is erased with the central down, and
    `edge verify` names every erased item that no witnessed head covers, until the central witnesses."""
    central_config, uplink = enrolled_central(tmp_path, **FAST_RETRY)
    s = spec(0)
    async with simulated_station(tmp_path, [s], uplink=uplink, wipe={"policy": "after-verify"}) as station:
        await station.dock_recorder(s.device_serial, 1)
        await station.wait_results(1)
        assert station.agent.results[0].outcome is OffloadOutcome.DONE
        assert on_recorder(station, s.device_serial) == {}
        erased = {e.item for e in station.agent.store.ledger.entries() if e.type == "wiped"}  # type: ignore[union-attr]
    central_key = load_public_key(tmp_path / "bundle" / "central-signing.pub")
    report = verify_store(tmp_path / "store", central_key=central_key)
    assert not report.ok
    named = [p for p in report.problems if "erased" in p.what and "witnessed" in p.what]
    assert {p.where for p in named} == {f"item {item}" for item in erased}
    # Once the central has witnessed the ledger, the same store verifies.
    running = await start_central(central_config)
    try:
        config = station.config
        store = StationStore(config.station.store_dir, config.station.id, purpose="test push")
        try:
            assert await UplinkService(config, store).flush_ledger(30)
        finally:
            store.close()
    finally:
        await running.stop()
    report = verify_store(tmp_path / "store", central_key=central_key)
    assert report.ok, report.problems


async def test_a_recorder_waiting_for_the_central_does_not_hold_up_another_bay(tmp_path: Path) -> None:
    """One offload slot; bay 1 waits (up to 120 s) for receipts from a central that is down. Bay 2's
    recorder is offloaded meanwhile: the wait gives the slot back."""
    _, uplink = enrolled_central(tmp_path, **FAST_RETRY)
    specs = [spec(0), spec(1)]
    async with simulated_station(
        tmp_path, specs, uplink=uplink, offload={"concurrency": 1},
        wipe={"policy": "after-receipt", "receipt_wait_s": 120},
    ) as station:
        await station.dock_recorder(specs[0].device_serial, 1)
        await station.wait_ledger("sealed", 3)
        await station.dock_recorder(specs[1].device_serial, 2)
        # Bay 2's files are copied, verified and sealed while bay 1 still waits for its receipts.
        await station.wait_ledger("sealed", 6, timeout_s=60)
        assert station.agent.results == []
        # Both still wait; stopping the station ends the waits at their last committed state.
