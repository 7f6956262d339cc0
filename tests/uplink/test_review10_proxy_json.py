"""Review 10 (4d): a reverse proxy's JSON body that merely has the shape of the central's error document
(``{"error": "server_busy", "detail": ...}`` with Retry-After) is not the central answering; failover
must count it as silence. The central's own refusals carry its ``X-Request-Id`` (16 hex digits, on every
answer it writes): that, with the document, is what makes an HTTP busy answer the central's
(edge.uplink.central_calls.is_central_error_answer). Real proxy (tests/uplink/proxy.py), real central."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.central.auth import DEV_STATION_HEADER
from edge.uplink.central_api import CentralApi
from edge.uplink.central_calls import CentralUnavailable, check_answer, json_object
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
from tests.uplink.proxy import Fault, FaultyProxy
from tests.uplink.test_failover_answers import BUSY_DOC, media, parcel  # noqa: F401 (media: a fixture)

# What proxies put in X-Request-Id of their own: nginx's $request_id, Envoy's UUID.
NGINX_REQUEST_ID = "8f14e45fceea167a5a36dedd4bea2543"
ENVOY_REQUEST_ID = "c5f2a1d0-3b7e-4e7a-9d51-2f0a8e6b4c11"


@pytest.mark.parametrize("proxy_request_id", [None, NGINX_REQUEST_ID, ENVOY_REQUEST_ID])
@pytest.mark.parametrize(("status", "retry_after"), [(503, "30"), (429, None)])
async def test_a_proxys_json_in_the_centrals_shape_is_not_the_central_answering(
    tmp_path: Path, media: Path, proxy_request_id: str | None, status: int, retry_after: str | None  # noqa: F811
) -> None:
    """The proxy answers every upload creation and registration itself with exactly the central's busy
    document (canonical JSON, application/json, Retry-After): over the real tus transport both end as
    RetryLater, NOT answered (the central behind it may be down for hours)."""
    from edge.uplink.tus_transport import TusTransport
    from tests.uplink.test_refusals import ITEMS, STATION, UPLOADS, make_rig

    def page(_request: Any, _body: bytes) -> tuple[int, dict[str, str], bytes]:
        headers = {"Content-Type": "application/json", "Cache-Control": "no-store"}
        if retry_after is not None:
            headers["Retry-After"] = retry_after
        if proxy_request_id is not None:
            headers["X-Request-Id"] = proxy_request_id
        return status, headers, BUSY_DOC

    async with make_rig(tmp_path, media) as rig:
        rig.proxy.faults += [Fault("POST", UPLOADS, page, times=0), Fault("POST", ITEMS, page, times=0)]
        async with TusTransport(rig.config().uplink, STATION).connect() as link:
            uploaded = await link.upload(parcel(tmp_path), lambda _ref: None)
            registered = await link.register("https://central/files/abc", {"item": "x"}, None)
        for outcome in (uploaded, registered):
            assert isinstance(outcome, RetryLater), outcome
            assert outcome.answered is False, f"the proxy's JSON counted as the central answering: {outcome}"


async def test_control_the_real_centrals_busy_through_the_same_proxy_is_an_answer(tmp_path: Path) -> None:
    """The central itself busy (its request cap full: one PATCH held open), a pass-through proxy in front:
    its 503 server_busy with Retry-After and its X-Request-Id reaches the station through the proxy, and
    the upload and the registration end as answered."""
    station = FakeStation("st-0001")
    central = await start_http_central(tmp_path, dev=True, server={"max_concurrent_requests": 1,
                                                                   "retry_after_s": 7})
    proxy = await FaultyProxy(central.url).start()
    try:
        enroll_dev(central, station)
        limiter = central.running.bounds.limiter
        location = await create_upload(central, station, 100)
        async with connection(central) as (reader, writer):
            writer.write(request_bytes("PATCH", location, [*station_headers(station), ("Content-Type", OCTET),
                                                           ("Upload-Offset", "0"), ("Content-Length", "100")],
                                       b"a" * 40))
            await writer.drain()
            await eventually(lambda: limiter.in_progress == 1, "the PATCH entered the application")
            async with aiohttp.ClientSession(headers={DEV_STATION_HEADER: station.station_id}) as session:
                link = TusLink(TusClient(session, proxy.url + "/v1/uploads"),
                               CentralApi(session, proxy.url, station.station_id))
                uploaded = await link.upload(parcel(tmp_path), lambda _ref: None)
                registered = await link.register(proxy.url + "/v1/uploads/abc", {"item": "x"}, None)
            for outcome in (uploaded, registered):
                assert isinstance(outcome, RetryLater), outcome
                assert outcome.retry_after_s == 7 and outcome.answered is True, outcome
            assert limiter.refused >= 2 and proxy.count("POST", r"/v1/.*") >= 2
            writer.write(b"a" * 60)
            await writer.drain()
            await read_response(reader)
    finally:
        await proxy.stop()
        await central.running.stop()
        station.conn.close()


@pytest.mark.parametrize(("request_id", "answered"), [
    ("0123456789abcdef", True),       # the central's form
    (None, False),                    # no header: a proxy's own answer
    (NGINX_REQUEST_ID, False),        # nginx add_header X-Request-Id $request_id
    (ENVOY_REQUEST_ID, False),        # Envoy, HAProxy unique-id: a UUID
    ("0123456789ABCDEF", False),      # not how the central writes it
    ("0123456789abcdef\r\n", False),  # nothing around it
])
def test_the_centrals_request_id_is_required_beside_its_document(
    request_id: str | None, answered: bool
) -> None:
    with pytest.raises(CentralUnavailable) as raised:
        check_answer(503, json_object(BUSY_DOC), BUSY_DOC, what="POST /v1/items", retry_after_s=30.0,
                     request_id=request_id)
    assert raised.value.answered is answered
