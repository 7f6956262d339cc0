"""The ledger says how the uplink found a stored copy changed between its offload and its upload.

Docked recorder, real central over mutual TLS, the station's own uplink with chunks of 1 MiB; each stored
copy is changed on disk after the offload verified it (and recorded its prefix digests), before the
central is up. Two ways of finding it over tus:

* sent with the digests recorded at offload: the central refuses the first changed chunk (460), the
  station's re-read through it gives neither the recorded digest nor the sealed hash: `found_by` names
  that refusal and its offset (`refused_chunk_at`), whether the chunk is in the middle of the copy or its
  last one;
* control, the item's digests removed: the copy is hashed as it is sent and found before its last chunk
  goes, the text it always had, and no `refused_chunk_at`.

No copy is refused for good: each is held until re-acquired.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge.central.service import start_central
from edge.ingest.store import StationStore
from edge.uplink.transport import FOUND_WHILE_SENDING
from edge.uplink.tus_transport import found_at_refused_chunk
from tests.station.harness import eventually, simulated_station, spec
from tests.uplink.test_uplink_station import enrolled_central

FAST_RETRY = {"backoff_base_s": 0.05, "backoff_max_s": 0.3, "breaker_failures": 2, "breaker_open_s": 0.2}
MIB = 1 << 20

pytestmark = pytest.mark.timeout(180)


def _found(store: StationStore, item: str) -> list[dict[str, Any]]:
    return [e.data for e in store.ledger.entries()
            if e.item == item and e.type == "error" and e.data.get("stage") == "stored copy"]


def _flip(path: Path, at: int) -> None:
    changed = bytearray(path.read_bytes())
    changed[at] ^= 0x01
    path.write_bytes(bytes(changed))


async def test_the_ledger_says_how_the_uplink_found_a_changed_stored_copy(tmp_path: Path) -> None:
    config, uplink = enrolled_central(tmp_path, chunk_mb=1, **FAST_RETRY)
    s = spec(0, file_mb=2.5)  # two videos of three chunks of 1 MiB, and a smaller file of one chunk
    async with simulated_station(tmp_path, [s], uplink=uplink, wipe={"policy": "never"}) as station:
        # Docked while the central is down: everything verified, sealed and queued, digests recorded.
        await station.dock_recorder(s.device_serial, 1)
        await station.wait_results(1)
        store = station.agent.store
        uplink_service = station.agent.uplink
        assert store is not None and uplink_service is not None
        rows = store.conn.execute(
            "SELECT i.item, i.path, i.size FROM items i JOIN prefix_digests d USING (item) "
            "ORDER BY i.size DESC"
        ).fetchall()
        assert len(rows) == 3, "each sealed item has its prefix digests"
        root = store.layout.root
        middle, last, plain = ((row["item"], root / row["path"], int(row["size"])) for row in rows)
        assert 2 * MIB < last[2] <= middle[2] < 3 * MIB and plain[2] < MIB

        _flip(middle[1], MIB + 4321)  # in its second chunk of three: the first goes through
        _flip(last[1], last[2] - 1)  # in its last chunk: the first two go through
        _flip(plain[1], plain[2] // 2)
        with store.transaction() as conn:  # control: no digests, hashed as it is sent
            conn.execute("DELETE FROM prefix_digests WHERE item=?", (plain[0],))

        running = await start_central(config)
        try:
            await eventually(lambda: all(_found(store, item) for item, _, _ in rows), timeout_s=120)
        finally:
            await running.stop()

        found = {item: _found(store, item) for item, _, _ in rows}
        assert [(e["found_by"], e.get("refused_chunk_at")) for e in found[middle[0]]] == [
            (found_at_refused_chunk(MIB), MIB)
        ]
        assert [(e["found_by"], e.get("refused_chunk_at")) for e in found[last[0]]] == [
            (found_at_refused_chunk(2 * MIB), 2 * MIB)
        ]
        assert found_at_refused_chunk(MIB) == (
            "uplink after the central refused the chunk at offset 1048576 (460): the stored copy's re-read "
            "differs from the digest recorded when the copy was verified"
        )
        # Control: hashed as it is sent, the text it always had.
        assert [(e["found_by"], "refused_chunk_at" in e) for e in found[plain[0]]] == [
            ("uplink while sending (before its last chunk)", False)
        ]
        assert FOUND_WHILE_SENDING == "uplink while sending (before its last chunk)"
        # The other fields as before, for each way of finding it.
        for (item, _, _), entries in zip(rows, found.values(), strict=True):
            entry = entries[0]
            assert entry["stage"] == "stored copy"
            assert entry["action"] == "held until re-acquired from its recorder"
            assert entry["reason"].startswith(f"item {item}: the stored copy gives ")
        assert station.ledger("uploaded") == [] and station.ledger("receipt") == []
        assert uplink_service.spool.counts().get("rejected") is None, "not refused for good"
