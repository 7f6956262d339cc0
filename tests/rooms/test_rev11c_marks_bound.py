"""Review rev11c: the number of marks of a session is bounded in name only. `MAX_MARKS` (10 000) is
declared in edge.rooms.session and never checked: a MARK button that repeats (a bouncing contact, a panel
sending its event again and again) or a script on the API adds marks without end, each one rewriting the
whole session file (all marks, fsynced) under the room's lock. And the limits do not fit together: a
session file of MAX_MARKS marks of MAX_NOTE characters is several times MAX_SESSION_FILE_BYTES, so such a
session's file cannot be read back at the next start (it is then rebuilt from the ledger, too big again,
with an `error` entry at every start).
"""

from __future__ import annotations

import dataclasses

import pytest

from edge.custody.canonical import canonical_json
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms import session as session_module
from edge.rooms.service import RoomRefused, RoomService
from edge.rooms.session import MAX_MARKS, MAX_NOTE, Mark, new_session
from edge.rooms.state import MAX_SESSION_FILE_BYTES
from tests.rooms.conftest import STATION, rooms_config

FIELDS = {"case_number": "A3301062026000992", "collector": "王五", "subject": "询问过程"}
LIMIT = 5


async def test_a_mark_past_the_limit_is_refused(
    store: StationStore, pipeline: IngestPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_module, "MAX_MARKS", LIMIT)
    service = RoomService(rooms_config(), store, pipeline, station_id=STATION)
    service.load()
    await service.start("xw-1", FIELDS, by="op")
    for n in range(LIMIT):  # control: marks up to the limit are taken
        await service.mark("xw-1", f"打点 {n}", by="room-panel:P1")
    # FAILS: the mark past MAX_MARKS is taken as well (and so every one after it).
    with pytest.raises(RoomRefused):
        await service.mark("xw-1", "one too many", by="room-panel:P1")


def test_a_session_file_at_the_mark_limit_can_be_read_back() -> None:
    session = new_session(room="xw-1", room_name="第一询问室", address="文三路 100 号", fields=FIELDS,
                          started_utc="2026-12-06T01:00:00.000000Z", started_by="op")
    one = Mark("2026-12-06T01:00:00.000000Z", "问" * MAX_NOTE, "operator-with-a-name", 10**9)
    assert len(canonical_json(dataclasses.replace(session, marks=(one,)).to_json())) < MAX_SESSION_FILE_BYTES
    full = dataclasses.replace(session, marks=(one,) * MAX_MARKS)
    size = len(canonical_json(full.to_json()))
    # FAILS: ~16 MB for a file the next start reads only up to 4 MiB.
    assert size <= MAX_SESSION_FILE_BYTES, (
        f"{size} bytes at MAX_MARKS, read back up to {MAX_SESSION_FILE_BYTES}")
