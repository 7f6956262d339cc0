"""Review 23 (#1): a segment ffmpeg listed but the station could not seal leaves a hole in the session's
time line that no `gap` entry records.

The capture gives every listed segment its station times (capture.station_spans: each starts where the
previous ended), so the next segment starts where the lost one ended. When the listed file cannot be
sealed (the list line lies: the file is not there; or the file changed after it was listed, SegmentChanged;
or it vanished), the sealer writes an `error` entry and counts it in `segments_failed`, and nothing else:
no gap opens, the session manifest lists the segments either side with a hole between them and its `gaps`
list stays empty. DESIGN invariant 9 ("a recording session is continuous or says why not: every gap has a
ledger entry with its times and reason") and the rooms rule (every interruption recorded with its times)
are broken: the record claims nothing is missing.

The ffmpeg here is a stand-in that speaks ffmpeg's interface to the station (argv, segment files, the csv
segment list, SIGTERM) and writes real MP4 segments made by the real ffmpeg; its fault is the brief's "a
segment list line that lies". Control: the same stand-in listing only files it wrote: every segment
sealed, each starting where the previous ended, no gap needed.
"""

from __future__ import annotations

import asyncio
import itertools
import stat
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.recording import SessionRecording
from edge.rooms.session import new_session
from edge.rooms.state import SessionFiles
from tests.rooms.conftest import STATION, LedgerWatch, lavfi_source, rooms_config

pytestmark = pytest.mark.usefixtures("ffmpeg")

# Writes a segment (a copy of SAMPLE) and lists it every second until SIGTERM; with LIE set, segment 2
# is listed but never written (the line lies).
FAKE_FFMPEG = r'''
import os, shutil, signal, sys, time
SAMPLE = {sample!r}
LIE = {lie!r}
argv = sys.argv
listing = argv[argv.index("-segment_list") + 1]
pattern = argv[-1]
stop = False
def on_term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
index = 0
while not stop and index < 600:
    time.sleep(1.0)
    name = pattern % index
    if not (LIE and index == 2):
        shutil.copyfile(SAMPLE, name + ".tmp")
        os.rename(name + ".tmp", name)
    with open(listing, "a") as out:
        out.write(f"{{os.path.basename(name)}},{{index:d}}.000000,{{index + 1:d}}.000000\n")
    index += 1
sys.exit(0)
'''


def _s(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _fake_ffmpeg(tmp_path: Path, *, lie: bool) -> Path:
    sample = tmp_path / "sample.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:d=1",
                    "-c:v", "libx264", "-movflags", "+frag_keyframe+empty_moov", str(sample)],
                   check=True, timeout=60)
    script = tmp_path / "ffmpeg-standin"
    script.write_text(f"#!{sys.executable}\n" + FAKE_FFMPEG.format(sample=str(sample), lie=lie))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


@pytest.mark.parametrize("lie", [False, True])
async def test_a_listed_segment_that_cannot_be_sealed_is_a_gap_on_the_record(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, tmp_path: Path, lie: bool
) -> None:
    script = _fake_ffmpeg(tmp_path, lie=lie)
    config = rooms_config(lavfi_source("a"), ffmpeg=str(script), stale_margin_s=5.0)
    files = SessionFiles(store.layout.root)
    files.prepare()
    session = new_session(room="xw-1", room_name="第一询问室", address="文三路 100 号",
                          fields={"case_number": "A3301062026000123", "collector": "张三",
                                  "subject": "询问过程"},
                          started_utc="2026-12-05T10:00:00.000000Z", started_by="operator")
    recording = SessionRecording(session, config.room[0], config, pipeline, files, station_id=STATION)
    task = asyncio.create_task(recording.run())
    try:
        await watch.until(lambda: any(e.data["index"] >= 4 for e in watch.of("segment_sealed", source="a")),
                          timeout_s=60)
    finally:
        recording.stop()
        await asyncio.wait_for(task, 60)
    sealed = sorted(watch.of("segment_sealed", source="a"), key=lambda e: e.data["index"])
    indexes = [e.data["index"] for e in sealed]
    if lie:  # control of the fault itself: segment 2 was listed, never sealed, and said so as an error
        assert 2 not in indexes and {0, 1, 3, 4} <= set(indexes)
        assert any(e.data.get("segment") == "seg-000002.mp4" for e in watch.of("error", stage="room segment"))
    else:
        assert {0, 1, 2, 3, 4} <= set(indexes)
    gaps = [(_s(e.data["from"]), _s(e.data["to"])) for e in watch.of("gap", source="a", state="closed")]
    holes = []
    for before, after in itertools.pairwise(sealed):
        end, start = _s(before.data["end_utc"]), _s(after.data["start_utc"])
        if start - end > 0.001 and not any(f <= end + 0.001 and t >= start - 0.001 for f, t in gaps):
            holes.append((before.data["index"], after.data["index"], round(start - end, 3)))
    assert not holes, (
        f"the sealed segments of source a leave holes in the time line that no gap records: {holes} "
        f"(gaps on the ledger: {gaps}); the session manifest would list no gap")
