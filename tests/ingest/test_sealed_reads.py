"""The evidence box the pipeline appends leaves every MP4 it understood readable: ffprobe reads the
sealed file exactly as the manifest describes the original (the evidence the seal decision rests on,
now that no placeholder-box ffprobe run precedes sealing)."""

from __future__ import annotations

import shutil
from pathlib import Path

from edge.custody.isobmff import find_evidence_box
from edge.ingest.mediainfo import media_facts
from edge.ingest.pipeline import IngestOutcome, IngestPipeline, IngestSettings
from edge.ingest.repository import IngestRepository
from edge.ingest.store import StationStore
from edge.sources.local import LocalDirectory

from .conftest import UNDERSTOOD

MOVIES = sorted(name for name in UNDERSTOOD if name.endswith((".mp4", ".mov", ".m4a")))


async def test_sealed_movies_read_in_ffprobe_as_their_manifests_say(
    understood_media: dict[str, Path], tmp_path: Path
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    for name in MOVIES:
        shutil.copy(understood_media[name], drop / name)
    store = StationStore(tmp_path / "store", "TEST-STATION")
    try:
        source = LocalDirectory(drop, label="corpus", station_id="TEST-STATION", case={"case_number": ""})
        pipeline = IngestPipeline(store, IngestSettings(min_free_bytes=0))
        run = await pipeline.ingest(source, source.listing().items)
        assert run.outcome is IngestOutcome.DONE and len(run.sealed) == len(MOVIES)
        repository = IngestRepository(store)
        for item in run.sealed:
            record = repository.item(item)
            assert record is not None and record.manifest is not None and record.path is not None
            media = dict(record.manifest["media"])
            assert media.pop("parser") == "in-process", record.manifest["original"]["name"]
            sealed = store.layout.root / record.path
            with sealed.open("rb") as f:
                assert find_evidence_box(f, sealed.stat().st_size) is not None, "sealed in the file"
            probe = tmp_path / "sealed.part"
            shutil.copyfile(sealed, probe)
            seen = media_facts(probe)
            assert seen.pop("parser") == "ffprobe"
            assert seen == media, record.manifest["original"]["name"]
    finally:
        store.close()
