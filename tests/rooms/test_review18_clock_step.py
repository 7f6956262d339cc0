"""Review 18: the signed session manifest puts each source's segments in "recording order" by sorting on
the run directory's name (edge.rooms.manifest), and that name is the station's wall clock when the run
started (edge.rooms.recording.run_name). When the wall clock steps back during a session (a room PC that
booted with its RTC ahead and resumed the session before NTP stepped it back; an operator setting the
clock), the run started after the step sorts *before* the runs recorded earlier: the manifest lists the
proceeding out of order, and a concat of its segments in that order (the joined recording) plays the end
before the beginning. The ledger's order (each run's first `segment_sealed` seq) is the recording order.

Pure test of the manifest with run names made by run_name(); control: the same session without the step.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from edge.custody.ledger import LedgerEntry
from edge.rooms.manifest import session_manifest
from edge.rooms.recording import run_name
from edge.rooms.session import SessionState, new_session

SESSION = replace(
    new_session(room="xw-1", room_name="第一询问室", address="文三路 100 号",
                fields={"case_number": "A-1", "collector": "张三", "subject": "询问"},
                started_utc="2026-12-05T10:00:00.000000Z", started_by="op"),
    state=SessionState.STOPPED, stopped_utc="2026-12-05T11:00:00.000000Z", started_seq=10,
)
T0 = 1_796_464_800_000_000_000  # 2026-12-05T10:00:00Z


def _segment(seq: int, run: str, index: int) -> LedgerEntry:
    data: dict[str, Any] = {"room_session": SESSION.session, "source": "a", "run": run, "index": index,
                            "sha256": f"{seq:064x}", "size": 100, "start_utc": "s", "end_utc": "e"}
    return LedgerEntry(seq, f"2026-12-05T10:00:{seq:02d}.000000Z", "segment_sealed", f"item-{seq}", data,
                       "0" * 64, "0" * 64)


@pytest.mark.parametrize("step_s", [0, -3600])
def test_a_clock_step_back_does_not_reorder_the_manifests_segments(step_s: int) -> None:
    first = run_name(T0 + 30 * 60 * 10**9)  # the session's first run, at 10:30
    # ffmpeg died a minute later; its restart came after the wall clock stepped by step_s.
    second = run_name(T0 + 31 * 60 * 10**9 + step_s * 10**9)
    entries = [_segment(11, first, 0), _segment(12, first, 1), _segment(13, first, 2),
               _segment(20, second, 0), _segment(21, second, 1)]
    manifest = session_manifest(SESSION, entries, station_id="ROOM-PC-1", sources=[("a", "全景")],
                                stopped_by="op")
    order = [s["seq"] for s in manifest["sources"][0]["segments"]]
    assert order == [11, 12, 13, 20, 21], (
        f"segments listed in the order {order}: the run started after the clock step sorts first by name")
