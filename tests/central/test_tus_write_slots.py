"""Upload writes bounded per station and on the receiver (review revsl #2), on the shared store.

Each shared-store write holds a PostgreSQL connection for its whole request. ``[uploads]
station_max_writes`` bounds one station's writes in progress (429 too_many_writes), ``max_upload_connections``
the receiver's (503 uploads_busy), both with Retry-After and decided before the store takes a connection.
Real PostgreSQL and Ceph RGW, HTTP over real sockets; stalled PATCHes are raw requests that send 16 bytes
of a declared part. Controls: a write within the bounds goes through, and one refused goes through once a
stalled write ended.
"""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import AsyncIterator

import aiohttp
import pytest

from edge.central.app import UPLOAD_WRITES
from edge.central.limits import UploadWriteSlots
from edge.central.service import RunningCentral, start_central
from tests.central.conftest import FakeStation
from tests.central.pg import PostgresDatabaseUnderTest
from tests.central.receivers import PART_MB, ReceiverSite
from tests.central.receivers import site as site

PART = PART_MB << 20
TUS = {"Tus-Resumable": "1.0.0"}
OCTET = "application/offset+octet-stream"
MAX_WRITES = 3
PER_STATION = 2
# The application name of the upload store's connections (edge.central.app._upload_store).
UPLOAD_CONNECTIONS = "edge-central central-test uploads"


@pytest.fixture
async def central(site: ReceiverSite) -> AsyncIterator[RunningCentral]:
    running = await start_central(site.config("a", uploads=(
        f"max_size_mb = 64\nchunk_timeout_s = 600\nmax_upload_connections = {MAX_WRITES}\n"
        f"station_max_writes = {PER_STATION}\n")))
    try:
        yield running
    finally:
        await running.stop()


async def _create(session: aiohttp.ClientSession, base: str, station: str) -> str:
    async with session.post(f"{base}/v1/uploads", headers={
            **TUS, "X-Edge-Station": station, "Upload-Length": str(PART)}) as created:
        assert created.status == 201, await created.text()
        location = created.headers["Location"]
        return location[location.index("/v1/"):]


async def _stall(port: int, path: str, station: str) -> asyncio.StreamWriter:
    """A PATCH announcing a whole part, of which 16 bytes are sent: the request stays open."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write((f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
                  f"X-Edge-Station: {station}\r\nUpload-Offset: 0\r\n"
                  f"Content-Type: {OCTET}\r\nContent-Length: {PART}\r\n\r\n").encode("ascii") + b"x" * 16)
    await writer.drain()
    return writer


async def _patch(session: aiohttp.ClientSession, base: str, path: str, station: str,
                 body: bytes = b"") -> tuple[int, dict[str, str], str]:
    async with session.patch(f"{base}{path}", data=io.BytesIO(body), headers={
            **TUS, "X-Edge-Station": station, "Upload-Offset": "0", "Content-Type": OCTET}) as answer:
        return answer.status, dict(answer.headers), await answer.text()


async def _until_held(slots: UploadWriteSlots, station: str, of_station: int, in_all: int) -> None:
    """Wait for the stalled requests to reach the server and take their slots (polling its state: a probe
    request would take a slot itself)."""
    for _ in range(600):
        if slots.of_station(station) == of_station and slots.in_progress == in_all:
            return
        await asyncio.sleep(0.1)  # polling for a stalled request to reach the server, not timing it
    raise AssertionError(f"the stalled writes never took their slots: {slots!r}")


def _upload_connections(pg: PostgresDatabaseUnderTest) -> int:
    with pg.admin() as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                           (UPLOAD_CONNECTIONS,)).fetchone()
    assert row is not None and isinstance(row[0], int)
    return row[0]


async def test_writes_beyond_the_station_share_and_the_receiver_maximum_are_refused_without_a_connection(
    central: RunningCentral, pg_database: PostgresDatabaseUnderTest,
) -> None:
    a, b, c = (FakeStation(f"station-slots-{name}") for name in "abc")
    for station in (a, b, c):
        central.parts.index.enroll_station(station.station_id, station.key.public_key_b64, "c" * 64)
    slots = central.app[UPLOAD_WRITES]
    base = str(central.url).rstrip("/")
    port = int(base.rsplit(":", 1)[-1])
    data = os.urandom(PART)
    writers: list[asyncio.StreamWriter] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        try:
            a1, a2 = await _create(session, base, a.station_id), await _create(session, base, a.station_id)
            b1, c1 = await _create(session, base, b.station_id), await _create(session, base, c.station_id)
            writers.append(await _stall(port, a1, a.station_id))
            await _until_held(slots, a.station_id, 1, 1)
            writers.append(await _stall(port, a2, a.station_id))
            await _until_held(slots, a.station_id, 2, 2)
            # A third write of station a: over its share of two.
            status, headers, text = await _patch(session, base, a2, a.station_id, data)
            assert status == 429 and "too_many_writes" in text, f"{status} {text}"
            assert int(headers["Retry-After"]) >= 1
            writers.append(await _stall(port, b1, b.station_id))
            await _until_held(slots, b.station_id, 1, 3)
            # Station b has one write, within its share; the receiver has its three.
            status, headers, text = await _patch(session, base, b1, b.station_id)
            assert status == 503 and "uploads_busy" in text, f"{status} {text}"
            status, headers, text = await _patch(session, base, c1, c.station_id, data)
            assert status == 503 and "uploads_busy" in text, f"{status} {text}"
            assert int(headers["Retry-After"]) >= 1
            # Under Expect: 100-continue the refusal comes before the body is sent.
            async with session.patch(f"{base}{c1}", data=io.BytesIO(data), expect100=True, headers={
                    **TUS, "X-Edge-Station": c.station_id, "Upload-Offset": "0",
                    "Content-Type": OCTET}) as answer:
                assert answer.status == 503 and "uploads_busy" in await answer.text()
                assert answer.request_info.headers.get("Expect") == "100-continue"
            # Three writes hold a connection each; the receiver keeps at most four more idle.
            assert _upload_connections(pg_database) <= MAX_WRITES + 4
            # A creation without a body writes nothing: not bounded by the writes in progress.
            await _create(session, base, c.station_id)
            # Control: once one stalled write ends (its client gone), station c's write goes through.
            writers.pop(0).close()
            for _ in range(600):
                status, _, text = await _patch(session, base, c1, c.station_id, data)
                if status != 503:
                    break
                await asyncio.sleep(0.1)  # polling for the server to see the client gone
            assert status == 204, f"{status} {text}"
        finally:
            for writer in writers:
                writer.close()
    info = await asyncio.to_thread(central.parts.uploads.get, c1.rsplit("/", 1)[-1])
    assert info is not None and info.complete
