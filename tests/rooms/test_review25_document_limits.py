"""Review 25 (LOW): the documents attached to a session were unbounded in number and in bytes together
(only each document was capped, at 64 MiB), while each is kept for good and goes on the session's disc.

Now [rooms] max_documents_per_session and max_document_bytes_per_session bound them: an attach beyond
either is refused (413) with a `refused` entry naming the limit, nothing of it kept; the controls are the
attaches within the limits, on the same session and route. Real service, pipeline, store and ledger.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.rooms.service import RoomRefused, RoomService
from tests.rooms.conftest import STATION, LedgerWatch, lavfi_source, rooms_config
from tests.rooms.rig import running
from tests.rooms.test_attach_export import _session

pytestmark = pytest.mark.usefixtures("ffmpeg")

PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
MIB = 1 << 20


async def _chunks(data: bytes, chunk: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), chunk):
        yield data[start:start + chunk]


async def test_a_session_takes_documents_up_to_its_count_and_bytes(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch
) -> None:
    config = rooms_config(lavfi_source("a"), max_documents_per_session=3, max_document_bytes_per_session=MIB)
    service = RoomService(config, store, pipeline, station_id=STATION)
    service.load()
    async with running(service):
        session = await _session(service, watch)
        await service.attach(session, _chunks(PDF), kind="笔录", name="1.pdf", by="op")  # control
        big = PDF + b"%" + bytes(600 * 1024) + b"\n"
        await service.attach(session, _chunks(big), kind="笔录", name="2.pdf", by="op")  # control: within
        # A third that would take the session past its bytes: refused as its bytes pass what is left.
        with pytest.raises(RoomRefused, match="max_document_bytes_per_session") as refused:
            await service.attach(session, _chunks(big), kind="笔录", name="3.pdf", by="op")
        assert refused.value.status == 413
        entry = watch.of("refused", action="attach")[-1]
        assert f"of its {MIB} bytes" in entry.data["reason"]
        # Control: a small third still fits (bytes and count).
        await service.attach(session, _chunks(PDF), kind="笔录", name="3.pdf", by="op")
        # A fourth: past the count, refused before anything is received.
        with pytest.raises(RoomRefused, match="holds 3 documents already") as refused:
            await service.attach(session, _chunks(PDF), kind="笔录", name="4.pdf", by="op")
        assert refused.value.status == 413
        assert "max_documents_per_session" in watch.of("refused", action="attach")[-1].data["reason"]
        attached = watch.of("attached", room_session=session)
        assert [e.data["name"] for e in attached] == ["1.pdf", "2.pdf", "3.pdf"]
        assert len(watch.of("refused", action="attach")) == 2
        assert not list((store.layout.root / "rooms" / "products").rglob("document-*"))  # nothing kept


def test_the_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_documents_per_session"):
        rooms_config(lavfi_source("a"), max_documents_per_session=0)
    with pytest.raises(ValueError, match="max_document_bytes_per_session"):
        rooms_config(lavfi_source("a"), max_document_bytes_per_session=1000)
