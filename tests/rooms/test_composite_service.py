"""A room with a composite through the service, with real ffmpeg, pipeline, store and ledger
(edge.rooms.service, edge.rooms.composite): the sealed session manifest lists the composite after the
originals, marked derived; a change of the case number shows in the overlay; the overlay's extra line (the
hook of a room panel) is kept for the room and refused when it is not one short line; a session resumed
after the agent stopped gives the composite its gap from its own last segment, like a source."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from edge.config.rooms import RoomsSection
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.repository import IngestRepository
from edge.ingest.store import StationStore
from edge.rooms.overlay_text import OverlayLineError
from edge.rooms.service import RoomService
from edge.verify.station import verify_store
from tests.rooms.conftest import STATION, LedgerWatch, lavfi_source, rooms_config
from tests.rooms.rig import running

pytestmark = pytest.mark.usefixtures("ffmpeg")

FIELDS: dict[str, Any] = {"case_number": "A3301062026000123", "collector": "张三", "subject": "询问过程"}


def _service(store: StationStore, pipeline: IngestPipeline) -> RoomService:
    config = rooms_config(lavfi_source("a", size="320x240", rate=10), lavfi_source("b", rate=10))
    room = config.room[0].model_dump()
    room["composite"] = {"main": "a", "inset": "b", "size": "320x240", "rate": 10, "name": "画中画"}
    service = RoomService(RoomsSection.model_validate({**config.model_dump(), "room": [room]}), store,
                          pipeline, station_id=STATION)
    service.load()
    return service


async def _shown(path: Path, text: str) -> None:
    async with asyncio.timeout(15):
        while text not in path.read_text(encoding="utf-8"):
            await asyncio.sleep(0.1)


async def test_a_composite_session_is_sealed_with_the_composite_marked_derived(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch
) -> None:
    service = _service(store, pipeline)
    # A reading from the room's panel before any session: kept for the room, shown when one starts.
    service.set_overlay_line("xw-1", "温度 22.5℃ 湿度 45%")
    with pytest.raises(OverlayLineError, match="one line"):
        service.set_overlay_line("xw-1", "温度\n湿度")
    with pytest.raises(KeyError):
        service.set_overlay_line("nowhere", "温度 22℃")
    assert service.overlay_lines == {"xw-1": "温度 22.5℃ 湿度 45%"}  # the refusals changed nothing
    async with running(service):
        session = await service.start("xw-1", FIELDS, by="op")
        await watch.until(lambda: len(watch.of("segment_sealed", source="composite")) >= 2, timeout_s=90)
        recording = service.recording("xw-1")
        assert recording is not None and recording.composite is not None
        overlay = recording.composite.overlay
        assert overlay is not None
        info = overlay.info_path
        assert info.read_text(encoding="utf-8").splitlines()[-1] == "温度 22.5℃ 湿度 45%"
        await service.change("xw-1", {"case_number": "B3301062026000999"}, by="op")
        await _shown(info, "案件编号 B3301062026000999")
        service.set_overlay_line("xw-1", "")
        assert "温度" not in info.read_text(encoding="utf-8")
        status = {s["source"]: s for s in service.status()["rooms"][0]["sources"]}
        assert status["composite"]["derived"] is True and status["a"]["derived"] is False
        done = await service.stop("xw-1", by="op")
    record = IngestRepository(store).item(done["manifest_item"])
    assert record is not None and record.path is not None
    manifest = json.loads((store.layout.root / record.path).read_bytes())
    listed = manifest["sources"]
    assert [s["source"] for s in listed] == ["a", "b", "composite"]
    assert listed[2]["name"] == "画中画" and listed[2]["derived"]["kind"] == "composite"
    assert "derived" not in listed[0] and "derived" not in listed[1]
    assert len(listed[2]["segments"]) == len(watch.of("segment_sealed", source="composite",
                                                       room_session=session.session))
    assert manifest["gaps"] == []
    # The overlay's files went with the capture directory: only sealed evidence is left.
    assert not (store.layout.root / "rooms" / "capture" / session.session).exists()
    assert verify_store(store.layout.root).ok


async def test_a_resumed_session_gives_the_composite_its_own_gap(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch
) -> None:
    service = _service(store, pipeline)
    async with running(service):
        session = await service.start("xw-1", FIELDS, by="op")
        await watch.until(lambda: len(watch.of("segment_sealed", source="composite")) >= 1, timeout_s=90)
    opened = {e.data["source"]: e for e in watch.of("gap", state="open")}
    assert set(opened) == {"a", "b", "composite"}
    last = max(e.data["end_utc"] for e in watch.of("segment_sealed", source="composite"))
    again = _service(store, pipeline)
    async with running(again):
        await watch.until(lambda: len(watch.of("gap", state="closed")) >= 3, timeout_s=90)
        await again.stop("xw-1", by="op")
    closed = {e.data["source"]: e for e in watch.of("gap", state="closed")}
    # From the composite's own last sealed segment (never the epoch, never another source's).
    assert closed["composite"].data["from"] >= last >= session.started_utc
    assert closed["composite"].data["to"] > closed["composite"].data["from"]
    assert verify_store(store.layout.root).ok
