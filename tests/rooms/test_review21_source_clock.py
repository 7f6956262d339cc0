"""Review 21 (#8; review 18 #11): segment times followed the source's own clock. A segment's station
times were the run's anchor plus the stream seconds of ffmpeg's segment list, and the stream seconds run
on the source's clock (an IP camera's RTP clock): a camera whose clock runs 20 % fast made its segments
claim to end after ffmpeg had listed (and the station sealed) them, seconds more with every minute; a slow
one, the other way. Gaps, marks and the stop are stamped by the station's clock, so the session's record
no longer fitted together.

Now a segment's station times come from the station's clock (it ends when ffmpeg listed it, it starts
where the previous one ended); the source's own times stay as reported (stream_start_s, stream_end_s),
and a drift beyond the tolerance is said on the segment (source_clock_drift_s).

Real ffmpeg (lavfi paced by `realtime`, its timestamps scaled by `setpts`: 1.2 * PTS is a clock 20 %
fast, PTS / 1.2 one 17 % slow), the real recorder, sealer, pipeline and ledger. Control: a true clock.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import datetime
from typing import Any

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.recording import SessionRecording
from edge.rooms.session import new_session
from edge.rooms.state import SessionFiles
from tests.rooms.conftest import STATION, LedgerWatch, rooms_config

pytestmark = pytest.mark.usefixtures("ffmpeg")

SEGMENTS = 15


def _s(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize("clock", ["true", "fast", "slow"])
async def test_segment_times_follow_the_station_clock_and_a_drifting_source_is_flagged(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, clock: str
) -> None:
    scale = {"true": "", "fast": ",setpts=1.2*PTS", "slow": ",setpts=PTS/1.2"}[clock]
    camera: dict[str, Any] = {"id": "cam", "codec": "encode", "input": [
        {"format": "lavfi", "url": f"testsrc2=size=160x120:rate=25,realtime{scale}", "realtime": False}]}
    config = rooms_config(camera)
    files = SessionFiles(store.layout.root)
    files.prepare()
    session = new_session(room="xw-1", room_name="第一询问室", address="文三路 100 号",
                          fields={"case_number": "A3301062026000123", "collector": "张三",
                                  "subject": "询问过程"},
                          started_utc="2026-12-05T10:00:00.000000Z", started_by="operator")
    recording = SessionRecording(session, config.room[0], config, pipeline, files, station_id=STATION)
    task = asyncio.create_task(recording.run())

    def whole() -> list[dict[str, Any]]:
        return [e.data for e in watch.of("segment_sealed", source="cam") if "partial" not in e.data]

    try:
        await watch.until(lambda: len(whole()) >= SEGMENTS, timeout_s=90)
    finally:
        runs = recording.sources["cam"].runs
        recording.stop()
        await asyncio.wait_for(task, 60)
    assert runs == 1
    segments = sorted(whole(), key=lambda d: d["index"])[:SEGMENTS]
    # A segment cannot end after ffmpeg listed it (closed_utc, the station's clock), nor, whole, long
    # before (at most its own length, when ffmpeg listed two at once on a busy machine).
    off = [(d["index"], round(_s(d["end_utc"]) - _s(d["closed_utc"]), 2)) for d in segments
           if not -1.5 <= _s(d["end_utc"]) - _s(d["closed_utc"]) <= 0.2]
    assert off == [], f"{clock} clock: segments (index, end - listed, s) off the station's clock: {off}"
    joins = [d["index"] for a, d in itertools.pairwise(segments) if d["start_utc"] != a["end_utc"]]
    assert joins == [], f"segments that do not start where the previous one ended: {joins}"
    # The source's own times are kept as it reported them: 1 s per segment, whatever its clock.
    assert all(d["stream_end_s"] - d["stream_start_s"] > 0.5 for d in segments)
    flagged = [d["index"] for d in segments if "source_clock_drift_s" in d]
    last = segments[-1]
    if clock == "true":
        drifts = [d.get("source_clock_drift_s") for d in segments]
        assert flagged == [], f"a true clock flagged as drifting: {drifts}"
    else:
        # 15 s of stream in 12.5 s (fast) or 18 s (slow) of station time: more than 2 s apart by the end.
        drift = last.get("source_clock_drift_s")
        assert drift is not None and (drift > 1.5 if clock == "fast" else drift < -1.5), (
            f"{clock} clock: the last segment does not say its source drifted: {last}")
