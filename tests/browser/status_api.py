"""A stand-in for the station's local API in browser tests of the dock screen: the status JSON and the
event stream exactly as the status model's contract has them (edge/observe/__init__.py), served by a
real aiohttp server with the real dock screen routes, fed by the test instead of a running agent.

The tests that need a real agent use the real local API (tests/browser/test_dock_live.py); this one
lets a test show every state and error class at once, with the longest text, deterministically.
"""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

from aiohttp import web

from edge.dockscreen import dock_screen_routes
from tests.browser.conftest import LiveServer

STATION: dict[str, Any] = {
    "id": "ZJ-HZ-XIHU-DOCK-07",
    "name": "西湖区执法大队采集站 7",
    "unit": {"code": "330106000000", "name": "杭州市西湖区综合行政执法局"},
    "version": "0.1.0",
    "started_at": "2026-12-05T01:00:00Z",
    "key_id": "k-1",
    "clock": {"trusted": True, "source": "chrony", "detail": "offset 2 ms"},
    "disk": {"free_bytes": 812_000_000_000, "total_bytes": 1_000_000_000_000},
    "ledger": {"head_seq": 10, "head_hash": "ab", "witnessed_seq": 10, "witnessed_at": None,
               "unwitnessed_entries": 0},
    "central": {"configured": True, "reachable": True, "breaker": "closed", "last_contact_at": None,
                "last_receipt_at": None},
    "spool": {"items": 3, "bytes": 2_400_000_000, "oldest_at": "2026-12-05T01:10:00Z"},
    "tasks": [],
    "counts": {"refusals": {}, "errors": {}},
}


def bay(number: int, state: str = "empty", **fields: Any) -> dict[str, Any]:
    """A BAY document; an occupied bay gets an officer and a device unless the test gives its own."""
    document: dict[str, Any] = {
        "bay": str(number), "state": state, "error_class": None, "officer": None, "device": None,
        "files_done": 0, "files_total": 0, "bytes_done": 0, "bytes_total": 0, "speed_bps": None,
        "eta_s": None, "bouncing": False, "usb_serial_warning": None,
        "since": "2026-12-05T02:00:00Z", "updated_at": "2026-12-05T02:00:00Z",
    }
    if state != "empty":
        document["officer"] = {"name": "张伟", "badge": f"11000{number}"}
        document["device"] = {"serial": f"330000{number}", "model": "DSJ-V9", "battery_pct": 80}
    document.update(fields)
    return document


class StatusApi:
    """The status model's JSON and its event stream, changed by the test (thread-safe)."""

    def __init__(self, server: LiveServer, bays: list[dict[str, Any]]) -> None:
        self._server = server
        self._status: dict[str, Any] = {"station": copy.deepcopy(STATION), "bays": copy.deepcopy(bays)}
        self._streams: set[asyncio.Queue[tuple[str, Any] | None]] = set()
        self.connections = 0
        app = web.Application()
        app.on_shutdown.append(self._end_streams)
        app.router.add_get("/api/v1/status", self._get_status)
        app.router.add_get("/api/v1/events", self._events)
        for path, handler in dock_screen_routes():
            app.router.add_get(path, handler)
        self.url = server.serve(app)

    async def _get_status(self, request: web.Request) -> web.Response:
        return web.json_response(self._status)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        queue: asyncio.Queue[tuple[str, Any] | None] = asyncio.Queue()
        self._streams.add(queue)
        self.connections += 1
        try:
            await queue.put(("snapshot", copy.deepcopy(self._status)))
            while (message := await queue.get()) is not None:
                kind, data = message
                text = json.dumps(data, ensure_ascii=False)
                await response.write(f"event: {kind}\ndata: {text}\n\n".encode())
        finally:
            self._streams.discard(queue)
        return response

    def _broadcast(self, kind: str, data: Any) -> None:
        for queue in self._streams:
            queue.put_nowait((kind, copy.deepcopy(data)))

    def set_bay(self, document: dict[str, Any]) -> None:
        def apply() -> None:
            bays = self._status["bays"]
            for index, existing in enumerate(bays):
                if existing["bay"] == document["bay"]:
                    bays[index] = document
                    break
            else:
                bays.append(document)
            self._broadcast("bay", document)

        self._server.call_soon(apply)

    def set_station(self, **changes: Any) -> None:
        def apply() -> None:
            self._status["station"].update(changes)
            self._broadcast("station", self._status["station"])

        self._server.call_soon(apply)

    async def _end_streams(self, app: web.Application) -> None:
        for queue in list(self._streams):
            queue.put_nowait(None)

    def drop_streams(self) -> None:
        """End every open event stream, as a restarting agent does."""

        def apply() -> None:
            for queue in list(self._streams):
                queue.put_nowait(None)

        self._server.call_soon(apply)
