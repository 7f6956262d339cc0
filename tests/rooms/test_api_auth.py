"""The room routes of the local API are authorised like every operator route: a caller who is neither
root, the store's owner nor an operator (a real process running as `nobody`) is refused on each, and
nothing reaches the ledger; the control, root on the same socket, gets through. Over TCP they are not
served at all unless ``[api] room_page_over_tcp`` says so (tests/rooms/test_room_page_tcp.py)."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from edge.config.station import ApiSection
from edge.ingest.pipeline import IngestPipeline
from edge.ingest.store import StationStore
from edge.observe.api import LocalApi
from edge.observe.board import StatusBoard
from edge.observe.room_api import room_routes
from edge.rooms.service import RoomService
from tests.observe.test_api_auth import NOBODY, _require_root, as_user
from tests.rooms.conftest import STATION, rooms_config

BODY = json.dumps({"case_number": "A-1", "collector": "张三", "subject": "询问"})
CALLS = [("GET", "/api/v1/rooms", ""), ("POST", "/api/v1/rooms/xw-9/start", BODY),
         ("POST", "/api/v1/rooms/xw-9/mark", json.dumps({"note": "x"})),
         ("POST", "/api/v1/rooms/xw-9/change", json.dumps({"subject": "y"})),
         ("POST", "/api/v1/rooms/xw-9/stop", "{}")]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="edge-rooms-auth-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _api(store: StationStore, pipeline: IngestPipeline, settings: ApiSection) -> LocalApi:
    service = RoomService(rooms_config(), store, pipeline, station_id=STATION)
    service.load()
    return LocalApi(StatusBoard(identity={"id": STATION}, bays=[]), store, settings, [room_routes(service)])


async def test_the_room_routes_refuse_who_is_not_an_operator(
    store: StationStore, pipeline: IngestPipeline, short_dir: Path
) -> None:
    _require_root()
    api = _api(store, pipeline, ApiSection(socket_path=short_dir / "api.sock", operators_group=""))
    await api.start()
    try:
        registered = {(r.method, r.resource.canonical) for r in api.app.router.routes() if r.resource}
        assert {(m, p.replace("xw-9", "{room}")) for m, p, _ in CALLS} <= registered
        (short_dir / "api.sock").chmod(0o666)  # past the file's mode: the API itself must refuse
        head = store.ledger.head()
        nobody = {"user": NOBODY, "group": NOBODY, "extra_groups": []}
        codes = await asyncio.to_thread(as_user, short_dir / "api.sock", CALLS, **nobody)
        assert codes == [403] * len(CALLS)
        assert store.ledger.head() == head  # refused before the service saw them: no entry at all
        # Control: root gets through (and the unknown room is the service's refusal, on the ledger).
        codes = await asyncio.to_thread(as_user, short_dir / "api.sock", CALLS)
        assert codes == [200, 404, 404, 404, 404]
        assert store.ledger.head()[0] == head[0] + 4
    finally:
        await api.stop()


async def test_the_room_routes_are_not_served_over_tcp(
    store: StationStore, pipeline: IngestPipeline, short_dir: Path
) -> None:
    api = _api(store, pipeline, ApiSection(socket_path=short_dir / "api.sock", tcp_port=0))
    await api.start()
    try:
        assert api.tcp_url is not None
        async with aiohttp.ClientSession() as client:
            for method, path, body in CALLS:
                async with client.request(method, api.tcp_url + path, data=body) as response:
                    assert response.status == 403, (method, path)
            async with client.get(api.tcp_url + "/api/v1/status") as response:
                assert response.status == 200  # control: the kiosk route is served there
    finally:
        await api.stop()
