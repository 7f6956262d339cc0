"""An upgraded station and a central not upgraded yet (review finding 6).

The station signs a checkpoint at every entry and sends them with each ledger segment (``checkpoints``);
a central older than that refuses the member (400 bad_request, "unknown members"), which would stop every
ledger push and item registration of the station until the central is upgraded. A central that takes
them says so in its ledger answers (``accepts``); the station sends them only then, and to a central that
has not said yet but refuses the member, it sends the segment again without them and logs why. The
older central here speaks over real HTTP, with the previous release's refusal.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from edge.central.registration import LEDGER_FORMAT_2, SEGMENT_CHECKPOINTS
from edge.custody.canonical import canonical_json, parse_json
from edge.custody.keys import StationKey
from edge.custody.ledger import GENESIS_PREV, Checkpoint, Ledger, LedgerEntry
from edge.uplink.central_api import CentralApi, CentralRejected

STATION = "ST-1"


@dataclass
class _Central:
    """The ledger endpoints of a central: ``upgraded`` takes and advertises segment checkpoints."""

    upgraded: bool
    segments: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0
    head: tuple[int, str] = (0, GENESIS_PREV)

    def _answer(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"seq": self.head[0], "hash": self.head[1], "witnessed_head": None,
                               "tree_head": None}
        if self.upgraded:
            doc["accepts"] = [SEGMENT_CHECKPOINTS, LEDGER_FORMAT_2]
        return doc

    def _refusal(self, segment: dict[str, Any]) -> web.Response | None:
        known = {"entries", "checkpoint", *(["checkpoints"] if self.upgraded else [])}
        extra = sorted(set(segment) - known)
        if not extra:
            return None
        self.refused += 1
        detail = f"ledger segment has unknown members {extra!r}; expected only entries and checkpoint"
        return web.json_response({"error": "bad_request", "detail": detail}, status=400)

    async def ledger_head(self, request: web.Request) -> web.Response:
        return web.json_response(self._answer())

    async def post_ledger(self, request: web.Request) -> web.Response:
        segment = parse_json(await request.read())
        refused = self._refusal(segment)
        if refused is not None:
            return refused
        self.segments.append(segment)
        last = segment["entries"][-1]
        self.head = (last["seq"], last["hash"])
        return web.json_response(self._answer())

    async def register(self, request: web.Request) -> web.Response:
        body = parse_json(await request.read())
        refused = self._refusal(body["ledger"])
        if refused is not None:
            return refused
        self.segments.append(body["ledger"])
        return web.Response(body=canonical_json({"receipt": {"item": body["manifest"]["item"]}}),
                            content_type="application/json")


@contextlib.asynccontextmanager
async def _serving(app: web.Application) -> AsyncIterator[CentralApi]:
    """`app` on a free loopback port, and the station's client of it."""
    runner = web.AppRunner(app, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as session:
            yield CentralApi(session, f"http://127.0.0.1:{port}", STATION)
    finally:
        await runner.cleanup()


@pytest.fixture(params=[False, True], ids=["older-central", "upgraded-central"])
async def central(request: pytest.FixtureRequest) -> AsyncIterator[tuple[_Central, CentralApi]]:
    fake = _Central(upgraded=request.param)
    app = web.Application()
    app.router.add_get(f"/v1/stations/{STATION}/ledger/head", fake.ledger_head)
    app.router.add_post(f"/v1/stations/{STATION}/ledger", fake.post_ledger)
    app.router.add_post(f"/v1/stations/{STATION}/items", fake.register)
    async with _serving(app) as api:
        yield fake, api


def _ledger() -> tuple[list[LedgerEntry], list[Checkpoint]]:
    conn = sqlite3.connect(":memory:")
    Ledger.create_schema(conn)
    ledger = Ledger(conn, STATION, StationKey.generate(), checkpoint_every=1)
    for n in range(6):
        ledger.append("note", None, {"n": n})
    return list(ledger.entries()), ledger.checkpoints()


async def test_segments_reach_a_central_whether_or_not_it_takes_checkpoints(
    central: tuple[_Central, CentralApi], caplog: pytest.LogCaptureFixture
) -> None:
    fake, api = central
    entries, signed = _ledger()
    # First contact without a ledger answer (the uplink keeps the head it knew): the segment is sent with
    # its checkpoints; an older central refuses the member and gets the segment again without them.
    answer = await api.post_ledger(entries[:2], signed[1], signed[:2])
    assert answer.head == (entries[1].seq, entries[1].hash)
    assert api.takes_checkpoints is fake.upgraded
    warned = [r for r in caplog.records
              if r.levelno == logging.ERROR and "older than this station" in r.message]
    assert len(warned) == (0 if fake.upgraded else 1)
    # ... and that it will refuse format-2 entries: once, however many answers lack the capability.
    format_2 = [r for r in caplog.records
                if r.levelno == logging.ERROR and "does not say it takes ledger format 2" in r.message]
    assert len(format_2) == (0 if fake.upgraded else 1), format_2
    # Once known, the next segment and a registration go in one request each, checkpoints only if taken.
    await api.post_ledger(entries[2:4], signed[3], signed[2:4])
    await api.register("u-1", {"item": "i-1"}, entries[4:], signed[5], signed[4:])
    assert [len(s["entries"]) for s in fake.segments] == [2, 2, 2]
    assert fake.refused == (0 if fake.upgraded else 1)
    carried = [s.get("checkpoints", []) for s in fake.segments]
    if fake.upgraded:  # control: an upgraded central gets every other checkpoint
        assert carried == [[signed[0].to_dict()], [signed[2].to_dict()], [signed[4].to_dict()]]
    else:
        assert carried == [[], [], []]
    # A fresh connection learns it from the ledger head answer before sending anything.
    fresh = CentralApi(api.session, api.base_url, STATION)
    await fresh.ledger_state()
    assert fresh.takes_checkpoints is fake.upgraded


async def test_another_refusal_of_the_checkpoints_is_not_taken_for_an_older_central() -> None:
    """A central that takes checkpoints but refuses these (malformed, too many) is not an older central:
    the refusal stands, and the station does not stop sending checkpoints."""

    async def refuse(request: web.Request) -> web.Response:
        detail = "ledger segment checkpoints must be a list of at most two checkpoints per entry"
        return web.json_response({"error": "bad_request", "detail": detail}, status=400)

    app = web.Application()
    app.router.add_post(f"/v1/stations/{STATION}/ledger", refuse)
    entries, signed = _ledger()
    async with _serving(app) as api:
        with pytest.raises(CentralRejected, match="at most two checkpoints"):
            await api.post_ledger(entries[:2], signed[1], signed[:2])
        assert api.takes_checkpoints is None


class _RollingUpgrade(_Central):
    """An upgraded central with an instance not upgraded yet behind the same address (a rolling upgrade,
    or anyone answering in the central's name): the next ``stale_answers`` requests land on it."""

    stale_answers: int = 0

    async def _stale(self, handler: Any, request: web.Request) -> web.Response:
        if not self.stale_answers:
            return await handler(request)  # type: ignore[no-any-return]
        self.stale_answers -= 1
        self.upgraded = False
        try:
            return await handler(request)  # type: ignore[no-any-return]
        finally:
            self.upgraded = True

    async def stale_post_ledger(self, request: web.Request) -> web.Response:
        return await self._stale(super().post_ledger, request)

    async def stale_ledger_head(self, request: web.Request) -> web.Response:
        return await self._stale(super().ledger_head, request)


async def test_a_central_that_said_it_takes_checkpoints_never_gets_a_segment_without_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Review 4, finding 4: once the central said (``accepts``) it takes checkpoints, an answer refusing
    the member is a contradiction, not an older central: the refusal stands (the segment goes again later,
    with its checkpoints) and is logged as such; an answer without ``accepts`` does not strip them either.
    The older central of the test above (never said it takes them) is the control: it gets them stripped."""
    fake = _RollingUpgrade(upgraded=True)
    app = web.Application()
    app.router.add_get(f"/v1/stations/{STATION}/ledger/head", fake.stale_ledger_head)
    app.router.add_post(f"/v1/stations/{STATION}/ledger", fake.stale_post_ledger)
    entries, signed = _ledger()
    async with _serving(app) as api:
        await api.ledger_state()
        assert api.takes_checkpoints is True
        fake.stale_answers = 1
        with pytest.raises(CentralRejected, match="unknown members"):
            await api.post_ledger(entries[:3], signed[2], signed[:3])
        assert fake.refused == 1 and fake.segments == []  # refused, not sent again stripped
        contradiction = [r for r in caplog.records if r.levelno == logging.ERROR
                         and "after it said it takes them" in r.message]
        assert len(contradiction) == 1
        assert not [r for r in caplog.records if "older than this station" in r.message]
        await api.post_ledger(entries[:3], signed[2], signed[:3])  # the uplink's retry
        fake.stale_answers = 1  # a head answer from the old instance: no ``accepts``
        await api.ledger_state()
        assert api.takes_checkpoints is False
        await api.post_ledger(entries[3:], signed[5], signed[3:])
    carried = [[cp["seq"] for cp in s.get("checkpoints", [])] + [s["checkpoint"]["seq"]]
               for s in fake.segments]
    assert carried == [[entries[0].seq, entries[1].seq, entries[2].seq],
                       [entries[3].seq, entries[4].seq, entries[5].seq]]
