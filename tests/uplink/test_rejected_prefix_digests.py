"""An item the central refused for good leaves the upload path: its prefix digests (the upload's cache,
edge.ingest.prefix_digests) go in the transaction that marks it rejected, as at its receipt and its purge;
a store made before that drops what such an item left at its opening. A real spool over a real state.db,
the digests recorded by the pipeline's own verification re-read."""

from __future__ import annotations

import random
from pathlib import Path

from edge.ingest.pipeline import IngestOutcome, IngestPipeline, IngestSettings
from edge.ingest.store import StationStore
from edge.sources.local import LocalDirectory
from edge.uplink.spool import Spool, UploadState

STATION = "TEST-STATION"
CHUNK = 4096
STEP = 10_000
REFUSAL = {"code": "mismatch", "signature": "kept as the central signed it"}


async def _sealed(root: Path, names: tuple[str, ...]) -> tuple[StationStore, list[str]]:
    drop = root / "drop"
    drop.mkdir()
    for name in names:
        (drop / name).write_bytes(random.Random(name).randbytes(3 * STEP + 7))
    store = StationStore(root / "store", STATION)
    source = LocalDirectory(drop, label="drop", station_id=STATION, case={"case_number": ""})
    settings = IngestSettings(min_free_bytes=0, chunk_bytes=CHUNK, prefix_step_bytes=STEP)
    pipeline = IngestPipeline(store, settings)
    run = await pipeline.ingest(source, source.listing().items)
    assert run.outcome is IngestOutcome.DONE and len(run.sealed) == len(names)
    return store, run.sealed


def _kept(store: StationStore) -> set[str]:
    return {row[0] for row in store.conn.execute("SELECT item FROM prefix_digests")}


async def test_a_rejected_items_prefix_digests_go_with_the_rejection(tmp_path: Path) -> None:
    store, (rejected, queued) = await _sealed(tmp_path, ("rejected.bin", "queued.bin"))
    try:
        spool = Spool(store)
        assert set(spool.enqueue_sealed()) == {rejected, queued}
        assert _kept(store) == {rejected, queued}  # control: each queued item has its digests

        spool.mark_rejected(rejected, "register", "mismatch", "the central's hash differs", refusal=REFUSAL)
        assert spool.states([rejected, queued]) == {rejected: UploadState.REJECTED,
                                                    queued: UploadState.QUEUED}
        assert _kept(store) == {queued}, "the rejected item's digests stay in state.db"
        # The refusal is on the ledger as before, with the central's signed refusal.
        refused = [e.data for e in store.ledger.entries() if e.item == rejected and e.type == "error"]
        assert [(e["stage"], e["code"], e["refusal"]) for e in refused] == [("register", "mismatch", REFUSAL)]

        # Sent back to the queue by a human (`edge uplink retry`): it uploads hashing its copy.
        spool.requeue_rejected({rejected: {"reason": "examined"}})
        entries = {e.item: e for e in spool.due(now_s=1e12, exclude=(), limit=10)}
        assert spool.prefix_digests(entries[rejected]) is None
        assert spool.prefix_digests(entries[queued]) is not None  # control: the queued one still has them
    finally:
        store.close()


async def test_an_older_stores_rejected_items_digests_are_dropped_at_its_opening(tmp_path: Path) -> None:
    store, (rejected, queued) = await _sealed(tmp_path, ("rejected.bin", "queued.bin"))
    try:
        Spool(store).enqueue_sealed()
        # A store made before the rejection dropped them: a rejected item's row left behind.
        with store.transaction() as conn:
            conn.execute("UPDATE uploads SET state='rejected' WHERE item=?", (rejected,))
        assert _kept(store) == {rejected, queued}
    finally:
        store.close()
    reopened = StationStore(tmp_path / "store", STATION)
    try:
        assert _kept(reopened) == {queued}  # control: the queued item's stay
    finally:
        reopened.close()
