"""Review rev11c: a stopped session's file is trusted, unchecked, by `edge room export` and `attach`.

The ledger is the record and a session file only a convenience (edge.rooms.reconcile); a recording
session's file is checked against the ledger at each start. A stopped one's is not, and the export reads
from it the seq its ledger entries are read from (`started_seq`) and the case number the disc's page
shows; an attach reads from it the case block sealed into the document's manifest. Someone with write
access to the store edits one number in the file and the next disc leaves out the written record (笔录)
attached during the session, with a page naming another case, and `edge verify` finds nothing wrong
with that export. Real ffmpeg, xorriso, service, store, pipeline and ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edge.custody.ledger import EntryType
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.export import VERIFY_PAGE, extract_argv
from edge.rooms.service import RoomService
from edge.rooms.state import SessionFiles
from edge.verify.station import verify_store
from tests.prerequisites import require_tool
from tests.rooms.conftest import STATION, LedgerWatch, lavfi_source, rooms_config

pytestmark = pytest.mark.usefixtures("ffmpeg")

FIELDS: dict[str, Any] = {"case_number": "A3301062026000994", "collector": "张三", "subject": "询问过程"}
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


@contextlib.asynccontextmanager
async def _agent(store: StationStore, pipeline: IngestPipeline) -> AsyncIterator[RoomService]:
    service = RoomService(rooms_config(lavfi_source("a")), store, pipeline, station_id=STATION)
    service.load()
    task = asyncio.create_task(service.run())
    try:
        yield service
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("file_edited", [False, True])
async def test_the_disc_is_what_the_ledger_says_whatever_the_stopped_session_file_says(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, tmp_path: Path, file_edited: bool
) -> None:
    xorriso = require_tool("xorriso")
    async with _agent(store, pipeline) as service:
        session = (await service.start("xw-1", FIELDS, by="op")).session
        await service.attach(session, _chunks(PDF), kind="笔录", name="r.pdf", by="op")  # during the session
        await watch.until(lambda: len(watch.of("segment_sealed", source="a")) >= 2, timeout_s=90)
        await service.stop("xw-1", by="op")
        await watch.until(lambda: watch.of("room_products", room_session=session), timeout_s=90)
        files = SessionFiles(store.layout.root)
        if file_edited:
            doc = json.loads(files.path(session).read_bytes())
            (manifest,) = watch.of(EntryType.ACQUIRED, room_session=session, role="session-manifest")
            assert watch.of(EntryType.ATTACHED, room_session=session)[0].seq < manifest.seq
            doc["started_seq"] = manifest.seq  # after the document's `attached` entry
            doc["case"]["case_number"] = "FORGED-000001"
            files.path(session).write_bytes(json.dumps(doc, ensure_ascii=False).encode())
        disc = await service.export(session, by="op")
    paths = [f.path for f in disc.files]
    into = tmp_path / "disc"
    subprocess.run(extract_argv(xorriso, disc.path, into), capture_output=True, check=True, timeout=60)
    page = (into / VERIFY_PAGE).read_text(encoding="utf-8")
    disc.path.unlink()
    report = verify_store(store.layout.root)
    # FAILS with the file edited: no document on the disc, the page names the forged case, verify content.
    assert "documents/document-1.pdf" in paths, (paths, [str(p) for p in report.problems])
    assert FIELDS["case_number"] in page and "FORGED" not in page
