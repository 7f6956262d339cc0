"""Review (revul): the uplink's own damage entry (`error`, stage `stored copy`, written by
UplinkService._stored_copy_damaged, now with `found_by` naming a refused chunk and `refused_chunk_at`)
shares its stage with the entry that opens a re-acquisition (edge.ingest.repository.REBUILD_OPENED).
open_rebuild takes the newest of those as the rebuild's state; when the uplink finds the copy changed
while a re-acquisition of the same item is writing its temp copy (the uplink retries a held item on its
own schedule, the docking rebuilds it on its own), and the station then stops (power cut), the rebuild
is no longer "open": the start does not discard its temp copy nor close it on the ledger, and
`edge verify` calls the temp copy planted.

Real pipeline over a real store; the stop is a BaseException out of the rebuild's re-read with the temp
copy kept on disk as a kill -9 would leave it (the `finally` that removes it does not run in a crash)."""

from __future__ import annotations

import os
import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from edge.ingest import pipeline as pipeline_module
from edge.ingest.pipeline import IngestOutcome, IngestPipeline, IngestSettings
from edge.ingest.repository import IngestRepository
from edge.ingest.store import StationStore
from edge.sources.local import LocalDirectory
from edge.uplink.service import UplinkService
from edge.uplink.transport import ContentUnreadable
from edge.uplink.tus_transport import found_at_refused_chunk

STATION = "TEST-STATION"
CHUNK = 4096
STEP = 10_000


class _PowerCut(BaseException):
    """The station stopping in the middle of the rebuild (nothing after it runs)."""


@pytest.mark.parametrize("uplink_found_it_meanwhile", [False, True], ids=["control", "uplink-entry"])
async def test_an_interrupted_rebuild_is_discarded_even_if_the_uplink_found_the_copy_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uplink_found_it_meanwhile: bool
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    content = random.Random("rebuild").randbytes(3 * STEP + 7)
    (drop / "a.bin").write_bytes(content)
    settings = IngestSettings(min_free_bytes=0, chunk_bytes=CHUNK, prefix_step_bytes=STEP)
    store = StationStore(tmp_path / "store", STATION)
    kept = tmp_path / "kept.part"
    try:
        source = LocalDirectory(drop, label="drop", station_id=STATION, case={"case_number": ""})
        run = await IngestPipeline(store, settings).ingest(source, source.listing().items)
        assert run.outcome is IngestOutcome.DONE and len(run.sealed) == 1
        item = run.sealed[0]
        record = IngestRepository(store).item(item)
        assert record is not None and record.path is not None
        stored = store.layout.root / record.path
        rotten = bytearray(stored.read_bytes())
        rotten[STEP + 1] ^= 0x01
        stored.write_bytes(bytes(rotten))

        real_reread = pipeline_module.reread_stored_and_source

        def stop_during_rebuild(part: Path, *args: object, **kwargs: object) -> object:
            os.link(part, kept)  # what a kill -9 leaves: the temp copy stays on disk
            raise _PowerCut()

        monkeypatch.setattr(pipeline_module, "reread_stored_and_source", stop_during_rebuild)
        with pytest.raises(_PowerCut):
            await IngestPipeline(store, settings).ingest(source, source.listing().items, prove_by_hash=True)
        monkeypatch.setattr(pipeline_module, "reread_stored_and_source", real_reread)
        opened = [e for e in store.ledger.entries() if e.item == item and e.type == "error"]
        assert [e.data.get("temp_copy") is not None for e in opened] == [True], "the rebuild was opened"

        if uplink_found_it_meanwhile:
            # Meanwhile the uplink sent the (still damaged) copy with its recorded digests, the central
            # refused the chunk at STEP and the station's re-read found the copy changed: its entry.
            uplink = SimpleNamespace(_damaged=set(), store=store)
            entry = SimpleNamespace(item=item, sha256=record.sha256)
            with pytest.raises(ContentUnreadable):
                UplinkService._stored_copy_damaged(uplink, entry, "0" * 64,  # type: ignore[arg-type]
                                                   found_at_refused_chunk(STEP), refused_chunk_at=STEP)
    finally:
        store.close()

    part = tmp_path / "store" / "tmp" / f"{item}.part"
    os.link(kept, part)  # the state after the power cut
    reopened = StationStore(tmp_path / "store", STATION)
    try:
        discarded = IngestPipeline(reopened, settings).discard_interrupted_rebuilds()
        assert discarded == [item], "the interrupted rebuild was not recognised as the station's own"
        assert not part.exists(), "the interrupted rebuild's temp copy stays in tmp/"
        closed = [e.data for e in reopened.ledger.entries() if e.item == item and e.type == "error"
                  and e.data.get("stage") == "reacquire"]
        assert len(closed) == 1, "the interrupted rebuild is never closed on the ledger"
    finally:
        reopened.close()
