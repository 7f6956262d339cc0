"""Review 18: a power cut (or kill -9) between a segment's `segment_sealed` commit and the removal of its
capture file (edge.rooms.sealing.SegmentSealer.seal: commit, then unlink) leaves the file, still named in
ffmpeg's list, in the capture directory. The resumed session seals it again: the pipeline finds the item
already sealed under the same key and counts it as sealed, so a second `segment_sealed` is appended and
the signed session manifest lists that segment twice (a concat of the manifest's segments, the joined
recording the issue asks for, would play those seconds twice).

The crash is reproduced in its effect: after the agent stopped, the capture file is put back exactly as it
was (the item's original bytes, the size and mtime of its acquisition key), as a crash before the unlink
leaves it. Real ffmpeg, service, pipeline, store and ledger. Control: the resumed session's own segments
are each listed once.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.repository import IngestRepository
from edge.ingest.store import StationStore
from edge.rooms.service import RoomService
from edge.rooms.state import SessionFiles
from tests.rooms.conftest import STATION, LedgerWatch, lavfi_source, rooms_config
from tests.rooms.rig import running

pytestmark = pytest.mark.usefixtures("ffmpeg")

FIELDS: dict[str, Any] = {"case_number": "A3301062026000123", "collector": "张三", "subject": "询问过程"}


def _service(store: StationStore, pipeline: IngestPipeline) -> RoomService:
    service = RoomService(rooms_config(lavfi_source("a")), store, pipeline, station_id=STATION)
    service.load()
    return service


async def test_a_segment_sealed_just_before_a_crash_is_listed_once_in_the_manifest(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch
) -> None:
    first = _service(store, pipeline)
    async with running(first):
        session = (await first.start("xw-1", FIELDS, by="op")).session
        await watch.until(lambda: len(watch.of("segment_sealed", room_session=session)) >= 2)
    # The crash came after seg N's segment_sealed was committed, before its capture file was removed.
    last = watch.of("segment_sealed", room_session=session)[-1]
    repository = IngestRepository(store)
    record = repository.item(str(last.item))
    assert record is not None and record.path is not None
    version = repository.conn.execute("SELECT version FROM acquisitions WHERE item=?",
                                      (last.item,)).fetchone()["version"]
    size, mtime_ns = (int(part) for part in str(version).split(":"))
    capture = SessionFiles(store.layout.root).run_dir(session, "a", last.data["run"]) / last.data["segment"]
    assert capture.parent.is_dir() and not capture.exists()
    with open(store.layout.root / record.path, "rb") as stored:
        capture.write_bytes(stored.read(size))  # the original: an exact prefix of the sealed file
    os.utime(capture, ns=(mtime_ns, mtime_ns))
    before = watch.entries[-1].seq
    again = _service(store, pipeline)
    async with running(again):
        await watch.until(lambda: len([e for e in watch.of("segment_sealed", room_session=session)
                                       if e.seq > before]) >= 3)
        done = await again.stop("xw-1", by="op")
    manifest_record = repository.item(done["manifest_item"])
    assert manifest_record is not None and manifest_record.path is not None
    manifest = json.loads((store.layout.root / manifest_record.path).read_bytes())
    listed = Counter((s["run"], s["index"]) for s in manifest["sources"][0]["segments"])
    resumed_runs = {e.data["run"] for e in watch.of("segment_sealed", room_session=session)
                    if e.seq > before and e.data["run"] != last.data["run"]}
    assert resumed_runs and all(listed[key] == 1 for key in listed if key[0] in resumed_runs)  # control
    twice = sorted(key for key, count in listed.items() if count > 1)
    assert twice == [], (f"segments listed more than once in the signed manifest: {twice}; ledger "
                         f"segment_sealed entries of item {last.item}: "
                         f"{[e.seq for e in watch.of('segment_sealed') if e.item == last.item]}")
