"""Review (revul): a changed stored copy is "on the ledger once (`error`, stage `stored copy`), held until
re-acquired" (UplinkService._stored_copy_damaged) only within one run of the agent: the set that says so
is in memory, so every restart (update, reboot, power cut) adds another entry for the same damage at the
held item's next retry, each another REBUILD_OPENED-stage entry (see
tests/ingest/test_interrupted_rebuild_after_uplink_damage.py). Real pipeline, store and service."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from edge.config.station import StationConfig
from edge.custody.keys import StationKey
from edge.ingest.pipeline import IngestOutcome, IngestPipeline, IngestSettings
from edge.ingest.repository import IngestRepository
from edge.ingest.store import StationStore
from edge.sources.local import LocalDirectory
from edge.uplink.service import UplinkService
from edge.uplink.transport import ContentUnreadable

STATION = "TEST-STATION"


@pytest.mark.parametrize("restarted", [False, True], ids=["control-same-run", "after-restart"])
async def test_a_held_copy_is_on_the_ledger_once(tmp_path: Path, restarted: bool) -> None:
    key = StationKey.load_or_create(tmp_path / "central.key")
    assert key.public_path is not None
    config = StationConfig.model_validate({
        "station": {"id": STATION, "store_dir": str(tmp_path / "store")},
        "usb": {"mount_root": str(tmp_path / "media")},
        "uplink": {"central_url": "http://127.0.0.1:9", "insecure_plain_http": True,
                   "central_signing_key": str(key.public_path)},
    })
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "a.bin").write_bytes(random.Random("held").randbytes(50_007))
    store = StationStore(tmp_path / "store", STATION)
    try:
        source = LocalDirectory(drop, label="drop", station_id=STATION, case={"case_number": ""})
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
        run = await pipeline.ingest(source, source.listing().items)
        assert run.outcome is IngestOutcome.DONE and len(run.sealed) == 1
        item = run.sealed[0]
        record = IngestRepository(store).item(item)
        assert record is not None and record.path is not None
        stored = store.layout.root / record.path
        rotten = bytearray(stored.read_bytes())
        rotten[1234] ^= 0x01
        stored.write_bytes(bytes(rotten))

        first = UplinkService(config, store)
        first.spool.enqueue_sealed()
        # Taken once: a held item is no longer due (it is not sent again: test_held_copy_resent.py), so
        # the same entry is checked again, as a check already under way at the hold would.
        entry = first.spool.due(now_s=1e12, exclude=(), limit=1)[0]
        for service in (first, UplinkService(config, store) if restarted else first):
            with pytest.raises(ContentUnreadable):
                await service._check_stored_copy(entry)
            assert service.spool.due(now_s=1e12, exclude=(), limit=1) == [], "held, yet due again"
        found = [e for e in store.ledger.entries() if e.item == item and e.type == "error"
                 and e.data.get("stage") == "stored copy"]
        assert len(found) == 1, f"the same damage is on the ledger {len(found)} times"
    finally:
        store.close()
