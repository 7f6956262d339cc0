"""At load the agent removes only what a cut-short export or attach left, each named on the ledger."""

from __future__ import annotations

import os

from edge.custody.ledger import EntryType
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.products import products_dir
from edge.rooms.service import RoomService
from tests.rooms.conftest import STATION, rooms_config

SESSION = "3f1c2a9e-5b7d-4c1e-9a2b-0d4e6f8a1b2c"


def test_load_removes_export_and_document_leftovers_and_nothing_else(
    store: StationStore, pipeline: IngestPipeline
) -> None:
    work = products_dir(store.layout.root, SESSION)
    (work / "export-0123456789ab" / "recordings").mkdir(parents=True)
    (work / "export-0123456789ab" / "recordings" / "a.mp4").write_bytes(b"x" * 1000)
    (work / "export-0123456789ab.iso").write_bytes(b"y" * 300)
    (work / "document-0123456789ab.part").write_bytes(b"z" * 7)
    # Controls: what else lives there (a join's work file, a received document) and a look-alike symlink.
    kept = [work / "joined-a.mp4", work / "document-0123456789ab.pdf", work / "export-0123456789abc"]
    for path in kept:
        path.write_bytes(b"keep")
    outside = store.layout.root / "outside.iso"
    outside.write_bytes(b"outside")
    os.symlink(outside, work / "export-ba9876543210.iso")
    service = RoomService(rooms_config(), store, pipeline, station_id=STATION)
    service.load()
    assert sorted(p.name for p in work.iterdir()) == sorted(
        [p.name for p in kept] + ["export-ba9876543210.iso"])
    assert outside.read_bytes() == b"outside"
    removed = {e.data["removed"]: e.data["bytes"] for e in store.ledger.entries_of_types([EntryType.ERROR])
               if e.data.get("stage") == "room export"}
    assert removed == {"export-0123456789ab": 1000, "export-0123456789ab.iso": 300,
                       "document-0123456789ab.part": 7}
