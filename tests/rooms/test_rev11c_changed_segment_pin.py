"""Review rev11c: a segment refused because it changed after ffmpeg listed it (the 1-second window between
close and seal) is sealed at the next start as ffmpeg's once its pin is gone.

The pin (size, mtime, ctime, inode as listed) is kept in a plain file beside the segments (``pins`` in the
run directory); a later sealing (after a restart: `leftover_segments`) checks it. A segment without a pin
line is sealed unchecked, and a later line for the same name wins. So whoever altered the segment (and saw
it refused: the `error` entry "changed after ffmpeg listed it") removes or appends a line of `pins`, waits
for the next restart (or a power cut), and the altered file is sealed, chained and joined as the
recording. The ledger already said this very segment was refused as changed; the leftover sealing does not
ask it. Real ffmpeg segment, real store, pipeline and ledger.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from edge.custody.ledger import EntryType
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.capture import PINS_FILE, pin_file
from edge.rooms.recording import leftover_segments, run_name
from edge.rooms.sealing import SegmentSealer
from edge.rooms.session import new_session
from edge.rooms.state import SessionFiles
from tests.rooms.conftest import STATION, LedgerWatch

pytestmark = pytest.mark.usefixtures("ffmpeg")

NAME = "seg-000000.mp4"


def _listed_segment(store: StationStore, session: str) -> Path:
    files = SessionFiles(store.layout.root)
    files.prepare()
    run_dir = files.run_dir(session, "a", run_name(time.time_ns() - 5_000_000_000))
    run_dir.mkdir(parents=True)
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:d=1",
                    "-c:v", "libx264", str(run_dir / NAME)], check=True, timeout=60)
    (run_dir / "segments.csv").write_text(f"{NAME},0.000000,1.000000\n")
    assert pin_file(run_dir, NAME) is not None  # as the capture pins it when ffmpeg lists it
    return run_dir


@pytest.mark.parametrize("pins", ["removed", "line appended"])
async def test_a_segment_refused_as_changed_is_not_sealed_at_the_next_start(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, pins: str
) -> None:
    session = new_session(room="xw-1", room_name="第一询问室", address="文三路 100 号",
                          fields={"case_number": "A3301062026000993", "collector": "张三",
                                  "subject": "询问过程"},
                          started_utc="2026-12-06T01:00:00.000000Z", started_by="operator")
    run_dir = _listed_segment(store, session.session)
    with open(run_dir / NAME, "r+b") as segment:  # altered in the window between close and seal
        segment.seek(2000)
        segment.write(b"\x00" * 16)
    sealer = SegmentSealer(pipeline, session, source="a", source_name="source a", station_id=STATION,
                           clock_synchronised=True)
    (first,) = leftover_segments(run_dir)
    # Control: with its pin the altered segment is refused, and the ledger says so.
    assert await sealer.seal(first) is None
    assert any("changed after ffmpeg listed it" in str(e.data.get("reason"))
               for e in watch.of(EntryType.ERROR, segment=NAME))
    if pins == "removed":
        (run_dir / PINS_FILE).unlink()
    else:
        info = (run_dir / NAME).stat()
        with open(run_dir / PINS_FILE, "a") as out:
            out.write(f"{NAME} {info.st_size} {info.st_mtime_ns} {info.st_ctime_ns} {info.st_ino}\n")
    # The next start's leftover sealing (a restart, a power cut).
    (again,) = leftover_segments(run_dir)
    sealed = await sealer.seal(again)
    # FAILS: the altered file is sealed as the recording's segment.
    assert sealed is None, f"the segment refused as changed was sealed as item {sealed and sealed.item}"


async def test_a_pin_line_a_power_cut_cut_short_does_not_refuse_ffmpegs_own_segment(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch
) -> None:
    """The pins file is appended without fsync: a power cut just after a listing can leave its last line cut
    short ("seg-000000.mp4 18086 ... 22634" for "... 2263427", no newline). read_station_times skips such a
    line (its docstring: "a crash cut it short"); read_pins takes it as a pin, and ffmpeg's own, untouched
    segment is refused at the next start as changed (a gap, its file kept for ever)."""
    session = new_session(room="xw-1", room_name="第一询问室", address="文三路 100 号",
                          fields={"case_number": "A3301062026000996", "collector": "张三",
                                  "subject": "询问过程"},
                          started_utc="2026-12-06T01:00:00.000000Z", started_by="operator")
    run_dir = _listed_segment(store, session.session)
    pins = run_dir / PINS_FILE
    line = pins.read_text()
    assert line.endswith("\n")
    sealer = SegmentSealer(pipeline, session, source="a", source_name="source a", station_id=STATION,
                           clock_synchronised=True)
    pins.write_text(line[:-3])  # the inode's last two digits and the newline never reached the disk
    (segment,) = leftover_segments(run_dir)
    # FAILS: refused as "changed after ffmpeg listed it" although nothing touched it.
    sealed = await sealer.seal(segment)
    assert sealed is not None, [e.data.get("reason") for e in watch.of(EntryType.ERROR, segment=NAME)]
