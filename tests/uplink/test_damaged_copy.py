"""A stored copy found damaged by the uplink before sending (issue 7, 1.9): never sent, on the ledger,
and re-acquired from the recorder (which still holds the file under after-receipt) at its next
docking, then sent, receipted and erased. Through a real central, the recorder bus simulator and its
mounted volume."""

from __future__ import annotations

from pathlib import Path

from edge.central.service import start_central
from edge.ingest.store import StationStore
from edge.uplink.tus_transport import found_at_refused_chunk
from edge.verify.station import verify_store
from tests.station.harness import eventually, simulated_station, spec
from tests.uplink.test_uplink_station import enrolled_central

STATION = "TEST-STATION"
FAST_RETRY = {"backoff_base_s": 0.05, "backoff_max_s": 0.3, "breaker_failures": 2, "breaker_open_s": 0.2}


def _entries(store: StationStore, item: str, type_: str) -> list[dict[str, object]]:
    return [e.data for e in store.ledger.entries() if e.item == item and e.type == type_]


async def test_a_damaged_copy_is_never_sent_and_is_reacquired_when_its_recorder_docks(tmp_path: Path) -> None:
    config, uplink = enrolled_central(tmp_path, **FAST_RETRY)
    s = spec(0)
    async with simulated_station(
        tmp_path, [s], uplink=uplink, wipe={"policy": "after-receipt", "receipt_wait_s": 1}
    ) as station:
        # Docked while the central is down: everything sealed and queued, nothing erased.
        await station.dock_recorder(s.device_serial, 1)
        await station.wait_results(1)
        store = station.agent.store
        uplink_service = station.agent.uplink
        assert store is not None and uplink_service is not None
        row = store.conn.execute(
            "SELECT item, path, size, sha256 FROM items WHERE sealed_in_file=1 ORDER BY item LIMIT 1"
        ).fetchone()
        item, stored = row["item"], store.layout.root / row["path"]
        sealed = stored.read_bytes()
        rotten = bytearray(sealed)
        rotten[int(row["size"]) // 2] ^= 0x01
        stored.write_bytes(bytes(rotten))

        running = await start_central(config)
        try:
            # The others are sent and receipted; the damaged one is held, on the ledger once.
            await eventually(lambda: len(station.ledger("receipt")) == 2, timeout_s=60)
            found = [e for e in _entries(store, item, "error") if e.get("stage") == "stored copy"]
            # tus sends its only chunk with the digest recorded at offload: the central refuses it (460) and
            # the station's re-read finds the copy changed (hashed as it is sent: tests/uplink/
            # test_stored_copy_found_by.py).
            assert [e["found_by"] for e in found] == [found_at_refused_chunk(0)]
            assert _entries(store, item, "uploaded") == [] and _entries(store, item, "refused") == []
            assert uplink_service.spool.counts().get("rejected") is None, "not refused for good"

            # Docked again: the recorder still holds the file; the copy is rebuilt, then sent.
            await station.undock(s.device_serial, 1)
            await station.dock_recorder(s.device_serial, 1)
            await station.wait_results(2)
            assert stored.read_bytes() == sealed
            again = _entries(store, item, "reacquired")
            assert len(again) == 1 and again[0]["found_by"] == "docking check"
            await eventually(lambda: len(_entries(store, item, "receipt")) == 1, timeout_s=60)
            assert _entries(store, item, "receipt")[0]["verified"] is True
            errors = [e for e in _entries(store, item, "error") if e.get("stage") == "stored copy"]
            assert len(errors) == 2, "found by the uplink, then by the docking check that repaired it"
        finally:
            await running.stop()
    assert verify_store(tmp_path / "store").ok
