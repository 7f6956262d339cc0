"""Review (revul): a stored copy found changed by the uplink is "held until re-acquired from its
recorder", yet the uplink keeps sending it: every retry (at least 60 s apart, at most `backoff_max_s`)
starts a new upload and sends every chunk before the changed one again, until the central refuses that
chunk (460) and the upload is terminated; on and on until the recorder docks again (days, or never if
it was lost). With recorded prefix digests the chunks before the damage go each time; hashed as sent,
everything but the last chunk.

Docked recorder, the real central over mutual TLS, chunks of 1 MiB; one copy changed in its second
chunk after the offload verified it. No recorder docks again: nothing can re-acquire it."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from edge.central.service import start_central
from tests.station.harness import eventually, simulated_station, spec
from tests.uplink.test_uplink_station import enrolled_central

FAST_RETRY = {"backoff_base_s": 0.05, "backoff_max_s": 0.3, "breaker_failures": 2, "breaker_open_s": 0.2}
MIB = 1 << 20

pytestmark = pytest.mark.timeout(300)


async def test_a_held_copy_is_not_sent_again_until_it_is_re_acquired(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge.uplink.tus_client")
    config, uplink = enrolled_central(tmp_path, chunk_mb=1, **FAST_RETRY)
    s = spec(0, file_mb=2.5)
    async with simulated_station(tmp_path, [s], uplink=uplink, wipe={"policy": "never"}) as station:
        await station.dock_recorder(s.device_serial, 1)
        await station.wait_results(1)
        store = station.agent.store
        assert store is not None
        row = store.conn.execute("SELECT item, path FROM items ORDER BY size DESC LIMIT 1").fetchone()
        item, stored = row["item"], store.layout.root / row["path"]
        changed = bytearray(stored.read_bytes())
        changed[MIB + 4321] ^= 0x01  # its first chunk is intact: it goes through each time
        stored.write_bytes(bytes(changed))
        name = stored.name

        def created() -> int:
            lines = [r.getMessage() for r in caplog.records]
            return sum(1 for line in lines if "created for" in line and name in line)

        def attempts() -> int:
            return int(store.conn.execute("SELECT attempts FROM uploads WHERE item=?", (item,)).fetchone()[0])

        running = await start_central(config)
        try:
            await eventually(lambda: any(e.item == item and e.data.get("stage") == "stored copy"
                                         for e in store.ledger.entries()), timeout_s=120)
            assert created() == 1  # control: found on its first upload
            held_at = attempts()
            retry_due_at = float(store.conn.execute(
                "SELECT next_attempt FROM uploads WHERE item=?", (item,)).fetchone()[0])
            # Held: wait past the time its next retry was due (60 s at least), with no docking in between.
            # (Not until the attempts grow: a held item is not tried again, so they never would.)
            await eventually(lambda: time.time() > retry_due_at + 20, timeout_s=150)
            assert attempts() == held_at, "a held item was tried again"
        finally:
            await running.stop()
        assert station.ledger("reacquired") == []
        again = created() - 1
        assert again == 0, f"the held copy was sent again {again} time(s) with nothing re-acquired"
