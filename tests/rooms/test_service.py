"""Room sessions through the service and the local API, with real ffmpeg, pipeline, store and ledger
(edge.rooms.service, edge.observe.room_api): start, mark, change and stop are ledger events; the stop
seals a signed session manifest listing every segment, gap, mark and person; bad requests are refused
with a clear error and a `refused` entry (each with a control); a session the agent stopped in is resumed
with the interruption on the ledger."""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.config.station import ApiSection
from edge.custody.canonical import canonical_json
from edge.custody.keys import verify_signature
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.repository import IngestRepository
from edge.ingest.store import StationStore
from edge.observe.api import LocalApi
from edge.observe.board import StatusBoard
from edge.observe.room_api import room_routes
from edge.rooms.service import RoomRefused, RoomService
from edge.rooms.session import SessionState
from edge.rooms.state import SessionFiles
from edge.verify.station import verify_store
from tests.rooms.conftest import STATION, LedgerWatch, lavfi_source, rooms_config
from tests.rooms.rig import running

pytestmark = pytest.mark.usefixtures("ffmpeg")

FIELDS: dict[str, Any] = {"case_number": "A3301062026000123", "collector": "张三", "subject": "询问过程",
          "persons": [{"name": "李四", "role": "被询问人"}, {"name": "王五", "role": "询问人"}]}


def _service(store: StationStore, pipeline: IngestPipeline) -> RoomService:
    service = RoomService(rooms_config(lavfi_source("a", audio=True), lavfi_source("b")), store, pipeline,
                          station_id=STATION)
    service.load()
    return service


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="edge-rooms-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _signed_by(manifest: dict[str, Any], store: StationStore) -> bool:
    signature = manifest["signature"]
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return signature["key_id"] == store.key.key_id and verify_signature(
        store.key.public_key(), base64.b64decode(signature["value"]), canonical_json(body))


async def _call(socket: Path, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket))) as client, \
            client.request(method, f"http://station{path}", json=body) as response:
        return response.status, await response.json()


async def test_a_session_through_the_api_is_sealed_with_its_manifest(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, short_dir: Path
) -> None:
    service = _service(store, pipeline)
    api = LocalApi(StatusBoard(identity={"id": STATION}, bays=[]), store,
                   ApiSection(socket_path=short_dir / "api.sock"), [room_routes(service)])
    await api.start()
    sock = short_dir / "api.sock"
    try:
        async with running(service):
            status, started = await _call(sock, "POST", "/api/v1/rooms/xw-1/start", FIELDS)
            assert status == 200, started
            session = started["room_session"]
            begun = watch.of("session_started", room_session=session)
            assert len(begun) == 1 and begun[0].data["kind"] == "room"
            assert begun[0].data["case"]["case_number"] == FIELDS["case_number"]
            assert begun[0].data["persons"] == FIELDS["persons"] and begun[0].data["by"] == "root"
            await watch.until(lambda: len(watch.of("segment_sealed", source="a")) >= 2)
            status, mark = await _call(sock, "POST", "/api/v1/rooms/xw-1/mark", {"note": "出示证据一"})
            assert status == 200 and watch.of("mark")[0].data["note"] == "出示证据一" == mark["note"]
            status, changed = await _call(sock, "POST", "/api/v1/rooms/xw-1/change",
                                          {"subject": "询问及辨认过程"})
            assert status == 200 and changed["changes"]["subject"]["to"] == "询问及辨认过程"
            change_seq = changed["seq"]
            await watch.until(lambda: [e for e in watch.of("segment_sealed", source="b")
                                       if e.seq > change_seq])
            status, rooms = await _call(sock, "GET", "/api/v1/rooms")
            assert status == 200 and rooms["rooms"][0]["session"]["room_session"] == session
            # The operators' route names the case and the persons; the status board (which the kiosk
            # channel serves without authentication) says only that the room records, and how.
            assert "李四" in json.dumps(rooms, ensure_ascii=False)
            board = json.dumps(service.board_status(), ensure_ascii=False)
            assert json.loads(board)["rooms"][0]["recording"] is True
            for private in ("李四", FIELDS["case_number"], "出示证据一", session):
                assert private not in board
            assert {s["source"] for s in rooms["rooms"][0]["sources"]} == {"a", "b"}
            status, stopped = await _call(sock, "POST", "/api/v1/rooms/xw-1/stop", {})
            assert status == 200, stopped
    finally:
        await api.stop()
    ended = watch.of("session_stopped", room_session=session)
    assert len(ended) == 1 and ended[0].data["manifest_item"] == stopped["manifest_item"]
    repository = IngestRepository(store)
    record = repository.item(stopped["manifest_item"])
    assert record is not None and record.path is not None
    manifest = json.loads((store.layout.root / record.path).read_bytes())
    assert _signed_by(manifest, store)
    assert not _signed_by({**manifest, "gaps": [{"source": "a"}]}, store)  # control: an edit is seen
    assert manifest["persons"] == FIELDS["persons"] and manifest["stopped_by"] == "root"
    for source in manifest["sources"]:
        entries = watch.of("segment_sealed", source=source["source"])
        assert [s["item"] for s in source["segments"]] == [e.item for e in entries]
        assert [s["sha256"] for s in source["segments"]] == [e.data["sha256"] for e in entries]
    assert [m["note"] for m in manifest["marks"]] == ["出示证据一"] and manifest["gaps"] == []
    assert manifest["changes"][0]["changes"]["subject"]["from"] == "询问过程"
    # Segments sealed after the change carry the new subject; before it, the old one.
    b_entries = watch.of("segment_sealed", source="b")
    records = [repository.item(str(e.item)) for e in b_entries]
    subjects = [r.manifest["case"]["subject"] for r in records if r is not None and r.manifest is not None]
    assert subjects[0] == "询问过程" and subjects[-1] == "询问及辨认过程"
    # Every segment and the manifest were handed to the upload queue's table as sealed items.
    assert stopped["segments"] == sum(len(s["segments"]) for s in manifest["sources"])
    files = SessionFiles(store.layout.root)
    loaded, _ = files.load()
    assert [s.state for s in loaded] == [SessionState.STOPPED]
    assert not (files.capture_dir / session).exists()  # everything sealed: its capture files went
    report = verify_store(store.layout.root)
    assert report.ok, report.problems


@pytest.mark.parametrize("case", ["unknown room", "second session", "bad case number", "nothing recording"])
async def test_bad_requests_are_refused_on_the_ledger_and_the_agent_records_on(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch, case: str
) -> None:
    service = _service(store, pipeline)
    async with running(service):
        if case == "nothing recording":
            with pytest.raises(RoomRefused, match="no session is recording in room xw-1") as refused:
                await service.mark("xw-1", "x", by="op")
            assert refused.value.status == 404
        first = await service.start("xw-1", FIELDS, by="op")  # control: a good start works
        if case == "unknown room":
            with pytest.raises(RoomRefused, match="unknown room 'xw-9'") as refused:
                await service.start("xw-9", FIELDS, by="op")
            assert refused.value.status == 404
        elif case == "second session":
            with pytest.raises(RoomRefused, match=f"already recording session {first.session}") as refused:
                await service.start("xw-1", FIELDS, by="op")
            assert refused.value.status == 409
        elif case == "bad case number":
            await service.stop("xw-1", by="op")
            with pytest.raises(RoomRefused, match="case_number contains control") as refused:
                await service.start("xw-1", {**FIELDS, "case_number": "A\u202e321"}, by="op")
            assert refused.value.status == 400
        entries = watch.of("refused", stage="room")
        assert len(entries) == 1 and entries[0].data["by"] == "op"
        # The first session (or, after the refusal, a new one) still records and seals.
        if case == "bad case number":
            await service.start("xw-1", FIELDS, by="op")
        count = len(watch.of("segment_sealed"))
        await watch.until(lambda: len(watch.of("segment_sealed")) > count + 1)
        await service.stop("xw-1", by="op")
    assert len(watch.of("session_started")) == (2 if case == "bad case number" else 1)


async def test_a_session_the_agent_stopped_in_is_resumed_with_the_gap_on_the_ledger(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch
) -> None:
    service = _service(store, pipeline)
    async with running(service):
        session = await service.start("xw-1", FIELDS, by="op")
        await watch.until(lambda: len(watch.of("segment_sealed", source="a")) >= 1)
    # The agent stopped (the service's task cancelled): each source's gap opens, the session goes on.
    stopped = watch.of("gap", state="open")
    assert {e.data["source"] for e in stopped} == {"a", "b"}
    assert all(e.data["reason"] == "the station agent stopped" for e in stopped)
    again = _service(store, pipeline)
    assert again.active["xw-1"].session == session.session
    async with running(again):
        await watch.until(lambda: len(watch.of("gap", state="closed")) >= 2)
        await watch.until(lambda: [e for e in watch.of("segment_sealed", source="a")
                                   if e.seq > watch.of("gap", state="closed")[-1].seq])
        done = await again.stop("xw-1", by="op")
    closed = watch.of("gap", state="closed")
    assert {e.data["source"] for e in closed} == {"a", "b"}
    assert all(e.data["to"] > e.data["from"] for e in closed)
    assert done["gaps"] == 2
    assert verify_store(store.layout.root).ok


async def test_a_session_refuses_to_start_without_room_on_the_disk(
    store: StationStore, pipeline: IngestPipeline, watch: LedgerWatch
) -> None:
    full = RoomService(rooms_config(start_min_free_bytes=1 << 60), store, pipeline, station_id=STATION)
    full.load()
    with pytest.raises(RoomRefused, match="GiB free; a session needs") as refused:
        await full.start("xw-1", FIELDS, by="op")
    assert refused.value.status == 507 and not full.active
    assert "start_min_free_bytes" in watch.of("refused", stage="room")[0].data["reason"]
    # Control: with the room it needs, the same start goes through.
    roomy = RoomService(rooms_config(start_min_free_bytes=1 << 20), store, pipeline, station_id=STATION)
    roomy.load()
    assert (await roomy.start("xw-1", FIELDS, by="op")).room == "xw-1"
    assert len(watch.of("session_started")) == 1
