"""Review (revul): README: "a final refusal (in the transaction that marks the item `rejected`; `edge
uplink retry` then sends it hashing its copy) drop[s] an item's digests". A rejected item whose stored
copy is then found damaged at a docking and re-acquired gets the re-acquisition's digests again while it
is still rejected; requeued in the same store session, it is sent with them, not hashed. (Harmless for
the bytes: they describe the re-acquired copy and end at its sealed hash; the documented state is not
kept.) Real pipeline, spool and state.db."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from edge.ingest.pipeline import IngestOutcome, IngestPipeline, IngestSettings
from edge.ingest.repository import IngestRepository
from edge.ingest.store import StationStore
from edge.sources.local import LocalDirectory
from edge.uplink.spool import Spool, UploadState

STATION = "TEST-STATION"
CHUNK = 4096
STEP = 10_000


@pytest.mark.parametrize("reacquired", [False, True], ids=["control", "reacquired-while-rejected"])
async def test_a_rejected_item_stays_without_digests_until_retried(tmp_path: Path, reacquired: bool) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "a.bin").write_bytes(random.Random("rejected").randbytes(3 * STEP + 7))
    settings = IngestSettings(min_free_bytes=0, chunk_bytes=CHUNK, prefix_step_bytes=STEP)
    store = StationStore(tmp_path / "store", STATION)
    try:
        source = LocalDirectory(drop, label="drop", station_id=STATION, case={"case_number": ""})
        run = await IngestPipeline(store, settings).ingest(source, source.listing().items)
        assert run.outcome is IngestOutcome.DONE and len(run.sealed) == 1
        item = run.sealed[0]
        spool = Spool(store)
        spool.enqueue_sealed()
        spool.mark_rejected(item, "register", "content_mismatch", "the central's hash differs")
        assert spool.states([item]) == {item: UploadState.REJECTED}

        if reacquired:  # the docking's check finds the copy damaged and rebuilds it from the recorder
            record = IngestRepository(store).item(item)
            assert record is not None and record.path is not None
            stored = store.layout.root / record.path
            rotten = bytearray(stored.read_bytes())
            rotten[STEP + 1] ^= 0x01
            stored.write_bytes(bytes(rotten))
            await IngestPipeline(store, settings).ingest(source, source.listing().items, prove_by_hash=True)
            assert [e.item for e in store.ledger.entries() if e.type == "reacquired"] == [item]

        spool.requeue_rejected({item: {"reason": "examined"}})
        entry = {e.item: e for e in spool.due(now_s=1e12, exclude=(), limit=10)}[item]
        assert spool.prefix_digests(entry) is None, "the retried item is sent with recorded digests"
    finally:
        store.close()
