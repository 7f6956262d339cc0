"""Review 18: a room session's file (<store>/rooms/sessions/<id>.json) is trusted over the ledger when the
agent starts again. Its case fields, its state and the ledger position the manifest reads from are taken
from the file as they are, never checked against the session's own `session_started` / `session_changed`
entries, and `edge verify` does not look at it. So an edit between two runs of the agent (someone with
write access to the store; a restore of an old backup) silently:

* ends the session: a file removed, or its state set to stopped, and the session is neither resumed nor
  stopped: no gap closes, no manifest, no `session_stopped`, nothing on the ledger says why;
* changes its case: the resumed segments and the signed session manifest carry the edited case number
  with no `session_changed` entry;
* drops segments from the signed manifest: a later `started_seq` and the manifest starts after them.

Real ffmpeg, service, pipeline, store and ledger; the agent's stop is the service task cancelled, as in
tests/rooms/test_service.py. Control (no edit): the session is resumed and its manifest lists every segment.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from edge.custody.canonical import canonical_json
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.repository import IngestRepository
from edge.ingest.store import StationStore
from edge.rooms.service import RoomService
from edge.rooms.state import SessionFiles
from tests.rooms.conftest import STATION, LedgerWatch, lavfi_source, rooms_config
from tests.rooms.rig import running

pytestmark = pytest.mark.usefixtures("ffmpeg")

FIELDS: dict[str, Any] = {"case_number": "A3301062026000123", "collector": "张三", "subject": "询问过程",
                          "persons": [{"name": "李四", "role": "被询问人"}]}


def _service(store: StationStore, pipeline: IngestPipeline) -> RoomService:
    service = RoomService(rooms_config(lavfi_source("a")), store, pipeline, station_id=STATION)
    service.load()
    return service


@pytest.mark.parametrize("edit", ["none", "removed", "state", "case_number", "started_seq"])
async def test_a_session_file_edited_while_the_agent_is_down_is_not_taken_over_the_ledger(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, edit: str
) -> None:
    first = _service(store, pipeline)
    async with running(first):
        session = (await first.start("xw-1", FIELDS, by="op")).session
        await watch.until(lambda: len(watch.of("segment_sealed", room_session=session)) >= 3)
    # The agent is down. The session's file is edited (or removed).
    path = SessionFiles(store.layout.root).path(session)
    doc = json.loads(path.read_bytes())
    later_seq = watch.of("segment_sealed", room_session=session)[-1].seq
    if edit == "removed":
        path.unlink()
    elif edit != "none":
        doc = {**doc, "state": "stopped"} if edit == "state" else \
            {**doc, "case": {**doc["case"], "case_number": "B9999"}} if edit == "case_number" else \
            {**doc, "started_seq": later_seq}
        path.write_bytes(canonical_json(doc))
    before = watch.entries[-1].seq
    again = _service(store, pipeline)
    if session not in {s.session for s in again.active.values()}:
        # Not resumed: the ledger must say what became of a session it saw start and never stop.
        said = [e for e in watch.entries if e.seq > before and session in json.dumps(e.data)]
        assert said, f"session {session} ({edit}): not resumed, not stopped, and the ledger says nothing"
        return
    async with running(again):
        await watch.until(lambda: [e for e in watch.of("segment_sealed", room_session=session)
                                   if e.seq > before])
        done = await again.stop("xw-1", by="op")
    record = IngestRepository(store).item(done["manifest_item"])
    assert record is not None and record.path is not None
    manifest = json.loads((store.layout.root / record.path).read_bytes())
    listed = [s["item"] for s in manifest["sources"][0]["segments"]]
    assert listed == [e.item for e in watch.of("segment_sealed", room_session=session)], (
        f"({edit}) the signed manifest leaves out segments the ledger sealed for the session")
    changed = watch.of("session_changed", room_session=session)
    if manifest["case"]["case_number"] != FIELDS["case_number"]:
        assert changed or [e for e in watch.entries if e.seq > before and e.type == "error"], (
            f"({edit}) the manifest names case {manifest['case']['case_number']}, the session started with "
            f"{FIELDS['case_number']}, and no entry says it changed")
