"""A station sends the sha256-prefix digests its offload recorded (edge.ingest.prefix_digests): docked
recorder, real central over mutual TLS, the station's own uplink. Hashing is counted where the tus
client makes its prefix hashers: the items with digests are not hashed at upload; the control, an item
whose digests were removed, is hashed byte for byte, and all are receipted."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from edge.central.service import start_central
from edge.uplink import tus_client
from tests.station.harness import eventually, simulated_station, spec
from tests.uplink.test_uplink_station import enrolled_central

FAST_RETRY = {"backoff_base_s": 0.05, "backoff_max_s": 0.3, "breaker_failures": 2, "breaker_open_s": 0.2}

pytestmark = pytest.mark.timeout(180)


class _Counted:
    def __init__(self, inner: Any, tally: list[int]) -> None:
        self.inner, self.tally = inner, tally

    def update(self, data: Any) -> None:
        self.tally[0] += len(memoryview(data))
        self.inner.update(data)

    def copy(self) -> _Counted:
        return _Counted(self.inner.copy(), self.tally)

    def digest(self) -> bytes:
        return bytes(self.inner.digest())

    def hexdigest(self) -> str:
        return str(self.inner.hexdigest())


async def test_the_station_uploads_with_the_digests_its_offload_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed = [0]
    monkeypatch.setattr(tus_client, "_prefix_hasher", lambda: _Counted(hashlib.sha256(), hashed))
    config, uplink = enrolled_central(tmp_path, chunk_mb=1, **FAST_RETRY)
    s = spec(0, file_mb=2.5)  # the largest file takes more than one chunk of 1 MiB
    async with simulated_station(tmp_path, [s], uplink=uplink, wipe={"policy": "never"}) as station:
        # Docked while the central is down: everything sealed and queued.
        await station.dock_recorder(s.device_serial, 1)
        await station.wait_results(1)
        store = station.agent.store
        assert store is not None
        rows = store.conn.execute(
            "SELECT d.item, d.step_bytes, i.size FROM prefix_digests d JOIN items i ON i.item = d.item "
            "ORDER BY i.size DESC"
        ).fetchall()
        assert len(rows) == 3 and {row["step_bytes"] for row in rows} == {1 << 20}
        # Control: the largest item's digests lost; that one is hashed as it is sent.
        lost, lost_size = rows[0]["item"], int(rows[0]["size"])
        with store.transaction() as conn:
            conn.execute("DELETE FROM prefix_digests WHERE item=?", (lost,))

        running = await start_central(config)
        try:
            await eventually(lambda: len(station.ledger("receipt")) == 3, timeout_s=120)
        finally:
            await running.stop()
    assert lost_size > 1 << 20, "more than one chunk"
    assert hashed[0] == lost_size, "only the item without digests was hashed, each of its bytes once"
