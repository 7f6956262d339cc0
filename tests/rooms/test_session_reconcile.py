"""A session file checked against the ledger at the agent's start (review 18 #7): what the error entry says,
and that the ledger's values are the ones resumed and written back. Real service, store, ledger, ffmpeg."""

from __future__ import annotations

import json

import pytest

from edge.custody.canonical import canonical_json
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.state import SessionFiles
from tests.rooms.conftest import LedgerWatch
from tests.rooms.rig import running
from tests.rooms.test_review18_session_file import FIELDS, _service

pytestmark = pytest.mark.usefixtures("ffmpeg")


@pytest.mark.parametrize("edited", [False, True])
async def test_an_edited_case_number_is_named_and_the_ledgers_is_resumed(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, edited: bool
) -> None:
    first = _service(store, pipeline)
    async with running(first):
        session = (await first.start("xw-1", FIELDS, by="op")).session
        await first.mark("xw-1", "询问开始", by="op")
    path = SessionFiles(store.layout.root).path(session)
    if edited:
        doc = json.loads(path.read_bytes())
        path.write_bytes(canonical_json({**doc, "case": {**doc["case"], "case_number": "B9999"}}))
    before = watch.entries[-1].seq
    again = _service(store, pipeline)
    errors = [e.data["reason"] for e in watch.entries if e.seq > before and e.type == "error"]
    resumed = again.active["xw-1"]
    assert resumed.session == session and resumed.case_number == FIELDS["case_number"]
    assert [m.note for m in resumed.marks] == ["询问开始"]
    if not edited:  # control: an untouched file is taken as it is, nothing said
        assert errors == []
        return
    assert len(errors) == 1 and f"case.case_number 'B9999' (ledger: '{FIELDS['case_number']}')" in errors[0]
    assert json.loads(path.read_bytes())["case"]["case_number"] == FIELDS["case_number"]
