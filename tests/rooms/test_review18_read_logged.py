"""Review 18: `GET /api/v1/rooms` answers every room's session with its case number, subject, the names and
roles of the persons present (被询问人 included) and the operators' marks, and nobody learns who read it:
the route logs nothing, while the same API logs each read of an item ("local API: <caller> read item X",
edge.observe.api._item). The brief: every read of evidence is itself logged.

Real LocalApi on a real Unix socket, real service, store and ledger (no ffmpeg: the service's task is not
running, so the started session records nothing). Control: the answer does carry the person's name.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.config.station import ApiSection
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.observe.api import LocalApi
from edge.observe.board import StatusBoard
from edge.observe.room_api import room_routes
from edge.rooms.service import RoomService
from tests.rooms.conftest import STATION, lavfi_source, rooms_config

FIELDS: dict[str, Any] = {"case_number": "A3301062026000123", "collector": "张三", "subject": "询问过程",
                          "persons": [{"name": "李四", "role": "被询问人"}]}


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="edge-r18-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def test_a_read_of_the_rooms_sessions_is_logged_with_its_caller(
    store: StationStore, pipeline: IngestPipeline, short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service = RoomService(rooms_config(lavfi_source("a")), store, pipeline, station_id=STATION)
    service.load()
    await service.start("xw-1", FIELDS, by="op")
    sock = short_dir / "api.sock"
    api = LocalApi(StatusBoard(identity={"id": STATION}, bays=[]), store, ApiSection(socket_path=sock),
                   [room_routes(service)])
    await api.start()
    try:
        caplog.clear()
        caplog.set_level(logging.DEBUG)
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as client, \
                client.get("http://station/api/v1/rooms") as response:
            assert response.status == 200
            text = await response.text()
    finally:
        await api.stop()
    assert "李四" in text and FIELDS["case_number"] in text  # control: the read returned case data
    reads = [m for m in (r.getMessage() for r in caplog.records)
             if "rooms" in m and ("uid 0" in m or "root" in m)]
    assert reads, ("GET /api/v1/rooms returned the case number and the persons present, and no log line "
                   f"names the caller: {[r.getMessage() for r in caplog.records]}")
