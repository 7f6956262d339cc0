"""Control for review 9 finding 6, against the real central: its own busy answer (503 ``server_busy`` with
``Retry-After``, refused by the request cap before anything else runs) stays an answer over HTTPS, for the
tus upload and for the JSON API alike, so failover does not take a busy central for a silent one. (A
proxy's page with the same status and header is not an answer: tests/uplink/test_failover_answers.py.)"""

from __future__ import annotations

from pathlib import Path

import aiohttp

from edge.central.auth import DEV_STATION_HEADER
from edge.uplink.central_api import CentralApi
from edge.uplink.transport import RetryLater
from edge.uplink.tus_client import TusClient
from edge.uplink.tus_transport import TusLink
from tests.central.conftest import FakeStation, start_http_central
from tests.central.test_http_bounds import (
    OCTET,
    connection,
    create_upload,
    enroll_dev,
    eventually,
    station_headers,
)
from tests.central.tus_fixtures import read_response, request_bytes
from tests.uplink.test_failover_answers import parcel


async def test_control_the_real_centrals_own_busy_answer_is_an_answer(tmp_path: Path) -> None:
    station = FakeStation("st-0001")
    central = await start_http_central(tmp_path, dev=True, server={"max_concurrent_requests": 1,
                                                                   "retry_after_s": 7})
    try:
        enroll_dev(central, station)
        limiter = central.running.bounds.limiter
        location = await create_upload(central, station, 100)
        async with connection(central) as (reader, writer):
            # One PATCH in progress holds the only place: every other request is answered busy.
            writer.write(request_bytes("PATCH", location, [*station_headers(station), ("Content-Type", OCTET),
                                                           ("Upload-Offset", "0"), ("Content-Length", "100")],
                                       b"a" * 40))
            await writer.drain()
            await eventually(lambda: limiter.in_progress == 1, "the PATCH entered the application")
            async with aiohttp.ClientSession(headers={DEV_STATION_HEADER: station.station_id}) as session:
                link = TusLink(TusClient(session, central.url + "/v1/uploads"),
                               CentralApi(session, central.url, station.station_id))
                uploaded = await link.upload(parcel(tmp_path), lambda _ref: None)
                registered = await link.register(central.url + "/v1/uploads/abc", {"item": "x"}, None)
            for outcome in (uploaded, registered):
                assert isinstance(outcome, RetryLater), outcome
                assert outcome.retry_after_s == 7 and outcome.answered is True, outcome
            assert limiter.refused >= 2
            writer.write(b"a" * 60)
            await writer.drain()
            await read_response(reader)
    finally:
        await central.running.stop()
        station.conn.close()
