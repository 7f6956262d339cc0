"""Review 23 (#7): the agent killed during a start, after the session file was written and before
`session_started` reached the ledger, records the whole session with no `session_started` on the ledger.

RoomService.start writes the session file first ("never a started session without its file"), then
appends `session_started` (the case, location, persons, who started it). A kill between the two leaves a
file the next start takes "as it is" (RoomService._checked_against_ledger: a session the ledger never
saw start) and resumes: its segments are sealed, its gaps, marks and stop recorded, its signed manifest
made, but the ledger never gets `session_started`, nor an `error` saying it is missing. The case binding,
the location and the persons present of every segment then come from the session file alone, which the
ledger was made to overrule (review 18/21: "the ledger wins"); the manifest's ledger range starts at
null; `edge verify` and the central see segments of a session that never started.

Real ffmpeg, service, pipeline, store and ledger; the kill is an exception raised where the entry would be
appended (the ledger is left as a kill at that instant leaves it). Control: the same start not cut short.
"""

from __future__ import annotations

from typing import Any

import pytest

from edge.custody.ledger import EntryType, LedgerEntry
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from tests.rooms.conftest import LedgerWatch
from tests.rooms.rig import running
from tests.rooms.test_review18_unsealed_at_stop import FIELDS, _service

pytestmark = pytest.mark.usefixtures("ffmpeg")


class AgentKilled(BaseException):
    """The agent's process ends here."""


@pytest.mark.parametrize("killed", [False, True])
async def test_a_session_whose_start_was_cut_short_has_its_start_on_the_ledger(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, killed: bool
) -> None:
    first = _service(store, pipeline)
    if killed:
        recorded = first._record

        async def dies_before_session_started(type_: str, data: dict[str, Any]) -> LedgerEntry:
            if type_ == EntryType.SESSION_STARTED:
                raise AgentKilled
            return await recorded(type_, data)

        first._record = dies_before_session_started  # type: ignore[method-assign]
        async with running(first):
            with pytest.raises(AgentKilled):
                await first.start("xw-1", FIELDS, by="op")
    else:
        async with running(first):
            await first.start("xw-1", FIELDS, by="op")
    again = _service(store, pipeline)
    resumed = again.active.get("xw-1")
    assert resumed is not None  # control: the session is resumed (its file was written first)
    session = resumed.session
    async with running(again):
        await watch.until(lambda: len(watch.of("segment_sealed", room_session=session)) >= 2)
        done = await again.stop("xw-1", by="op")
    assert done["segments"] >= 2 and watch.of("session_stopped", room_session=session)
    started = watch.of("session_started", room_session=session)
    missing = [e for e in watch.of("error", stage="room") if e.data.get("room_session") == session]
    assert started or missing, (
        f"session {session} recorded {done['segments']} segment(s) and stopped, but the ledger has no "
        "session_started for it and no error saying so: its case and persons come from its file alone")
