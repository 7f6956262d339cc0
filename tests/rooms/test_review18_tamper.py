"""Review 18: nothing fixes a segment's content between ffmpeg closing it and its seal. The sealer stats
the capture file when it seals it (edge.rooms.sealing.SegmentSealer.offered), not when ffmpeg listed it,
and no hash is taken at listing; its docstring's "checked against the size and mtime it had when listed"
is not what happens. While sealing is held up (a full disk: the segments wait in the capture directory
until the stop's final sweep, for hours if need be) a segment rewritten in place, even with a fresh mtime
later than ffmpeg's listing of it, is sealed at the stop as if ffmpeg had written it, and the ledger never
says otherwise.

Real ffmpeg (lavfi), the real pipeline, store and ledger; the full disk is the pipeline's own reserve
(min_free_bytes), as in tests/rooms/test_recording.py. Control: a segment held up the same way but not
touched is sealed with the hash of the bytes ffmpeg wrote.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from pathlib import Path

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.recording import SessionRecording
from edge.rooms.session import new_session
from edge.rooms.state import SessionFiles
from tests.rooms.conftest import STATION, LedgerWatch, lavfi_source, rooms_config

pytestmark = pytest.mark.usefixtures("ffmpeg")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_a_segment_changed_while_its_sealing_waits_is_not_sealed_as_ffmpegs(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch
) -> None:
    config = rooms_config(lavfi_source("a"))
    files = SessionFiles(store.layout.root)
    files.prepare()
    session = new_session(room="xw-1", room_name="第一询问室", address="文三路 100 号",
                          fields={"case_number": "A3301062026000123", "collector": "张三",
                                  "subject": "询问过程"},
                          started_utc="2026-12-05T10:00:00.000000Z", started_by="operator")
    recording = SessionRecording(session, config.room[0], config, pipeline, files, station_id=STATION)
    task = asyncio.create_task(recording.run())
    try:
        await watch.until(lambda: len(watch.of("segment_sealed")) >= 1)
        roomy = pipeline.settings
        pipeline.settings = dataclasses.replace(roomy, min_free_bytes=1 << 62)  # the disk is "full"
        waiting = await watch.until(lambda: watch.of("error", stage="room segment")[:2]
                                    if len(watch.of("error", stage="room segment")) >= 2 else None)
        touched, untouched = (files.run_dir(session.session, "a", e.data["run"]) / e.data["segment"]
                              for e in waiting)
        written = {path.name: _sha256(path) for path in (touched, untouched)}
        # Rewritten in place, same size, a fresh mtime (no attempt to hide it).
        data = bytearray(touched.read_bytes())
        data[len(data) // 2] ^= 0xFF
        touched.write_bytes(bytes(data))
        changed_at = watch.entries[-1].seq
        pipeline.settings = roomy  # space again
    finally:
        recording.stop()
        await asyncio.wait_for(task, 60)
    sealed = {e.data["segment"]: e for e in watch.of("segment_sealed") if e.data["segment"] in written}
    # Control: the untouched one, held up the same way, is sealed with ffmpeg's bytes.
    assert sealed[untouched.name].data["sha256"] == written[untouched.name]
    flagged = [e for e in watch.entries if e.seq > changed_at and e.type in ("error", "refused")
               and e.data.get("segment") == touched.name]
    entry = sealed.get(touched.name)
    assert flagged or (entry is not None and entry.data["sha256"] == written[touched.name]), (
        f"{touched.name}, rewritten after ffmpeg listed it, was sealed as a segment of the session "
        f"(sha256 {entry.data['sha256'] if entry else None}, ffmpeg wrote {written[touched.name]}) and "
        "no ledger entry says it changed")
