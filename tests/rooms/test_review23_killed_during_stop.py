"""Review 23 (#3): the agent killed during a stop, after the session's signed manifest was sealed and before
`session_stopped` reached the ledger, resumes the session at its next start and records on.

RoomService.stop: every source closes and is sealed, the signed manifest (stopped_utc, stopped_by, every
segment and gap) is written and sealed as an item of the session (`acquired` / `sealed` with role
``session-manifest``), then `session_stopped` is appended, then the session file is saved stopped. A kill
(power loss, the watchdog, an OOM kill) between the manifest's seal and `session_stopped` leaves a ledger on
which the session never stopped and a file that says recording: the next start resumes it (a gap "the
station agent was not running"), so the cameras record the empty room after the proceeding ended and the
operator left, and the store holds a sealed, signed manifest saying the session stopped, followed by more
of its segments and, at the next stop, a second manifest saying otherwise. The ledger already says the stop
was under way (the sealed session-manifest item names the session) but the start does not look.

Real ffmpeg, service, pipeline, store and ledger; the kill is an exception raised where the entry would be
appended (the ledger is left as a kill at that instant leaves it). Control: the same stop not cut short:
the session is not resumed.
"""

from __future__ import annotations

from typing import Any

import pytest

from edge.custody.ledger import EntryType, LedgerEntry
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.service import RoomService
from tests.rooms.conftest import LedgerWatch
from tests.rooms.rig import running
from tests.rooms.test_review18_unsealed_at_stop import FIELDS, _service

pytestmark = pytest.mark.usefixtures("ffmpeg")


class AgentKilled(BaseException):
    """The agent's process ends here."""


@pytest.mark.parametrize("killed", [False, True])
async def test_a_stop_killed_after_its_manifest_was_sealed_does_not_resume_the_session(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, killed: bool
) -> None:
    first = _service(store, pipeline)
    if killed:
        recorded = first._record

        async def dies_before_session_stopped(type_: str, data: dict[str, Any]) -> LedgerEntry:
            if type_ == EntryType.SESSION_STOPPED:
                raise AgentKilled
            return await recorded(type_, data)

        first._record = dies_before_session_stopped  # type: ignore[method-assign]
    async with running(first):
        session = (await first.start("xw-1", FIELDS, by="op")).session
        await watch.until(lambda: len(watch.of("segment_sealed", room_session=session)) >= 2)
        try:
            await first.stop("xw-1", by="op")
        except AgentKilled:
            assert killed
    manifests = {e.item for e in watch.of("acquired", role="session-manifest", room_session=session)}
    assert [e for e in watch.of("sealed") if e.item in manifests]  # control: the signed manifest is sealed
    assert len(watch.of("session_stopped", room_session=session)) == (0 if killed else 1)
    again: RoomService = _service(store, pipeline)
    resumed = again.active.get("xw-1")
    assert resumed is None, (
        f"session {session} was stopped by the operator and its signed manifest sealed, but the agent died "
        "before session_stopped: the next start resumes it and records the room on")
