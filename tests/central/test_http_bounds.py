"""The central's HTTP bounds and protocol hygiene, over real sockets (raw where aiohttp's client would
refuse to send what a hostile or broken client sends) and real mutual TLS.

Request cap, body budget, per-station upload quota, expiry of uploads never registered, the request-head
deadline, the access log, plain HTTP on loopback only, inclusion proofs for a station's own items only,
``Tus-Resumable`` and JSON on every refusal, strict numbers, transfer codings, and a client that
disconnects mid-request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.central import http_server
from edge.central.app import UPLOAD_WRITES
from edge.central.auth import DEV_READER_HEADER, DEV_STATION_HEADER
from edge.central.config import ConfigError
from edge.central.service import start_central
from edge.custody.keys import StationKey
from edge.pki.tls import client_ssl_context
from edge.uplink.tus_client import ServerRejected, TusClient, UploadInterrupted
from tests.central.conftest import (
    FakeStation,
    HttpCentral,
    central_config,
    get_json,
    register_over_http,
    start_http_central,
    tls_session,
)
from tests.central.tus_fixtures import RawResponse, read_response, request_bytes

pytestmark = pytest.mark.timeout(60)

OCTET = "application/offset+octet-stream"
TUS = ("Tus-Resumable", "1.0.0")
ACCESS = "edge.central.access"
Headers = Sequence[tuple[str, str | bytes]]


async def eventually(predicate: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Wait for a state the server reaches on its own (polling it), failing after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def connection(
    central: HttpCentral, bundle: Path | None = None
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    context: ssl.SSLContext | None = client_ssl_context(bundle) if bundle is not None else None
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", central.running.port, ssl=context, server_hostname="localhost" if context else None
    )
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


async def raw(central: HttpCentral, method: str, path: str, headers: Headers, body: bytes = b"",
              bundle: Path | None = None) -> RawResponse:
    async with connection(central, bundle) as (reader, writer):
        writer.write(request_bytes(method, path, headers, body))
        await writer.drain()
        return await asyncio.wait_for(read_response(reader, head=method == "HEAD"), 10)


def refusal(reply: RawResponse) -> dict[str, Any]:
    """The JSON refusal body, checked to have the central's shape."""
    assert reply.headers.get("content-type", "").startswith("application/json"), (reply.status, reply.body)
    doc = json.loads(reply.body)
    assert isinstance(doc, dict) and isinstance(doc.get("error"), str) and isinstance(doc.get("detail"), str)
    return doc


def station_headers(station: FakeStation) -> list[tuple[str, str | bytes]]:
    return [TUS, (DEV_STATION_HEADER, station.station_id)]


async def create_upload(central: HttpCentral, station: FakeStation, length: int) -> str:
    reply = await raw(central, "POST", "/v1/uploads",
                      [*station_headers(station), ("Upload-Length", str(length)), ("Content-Length", "0")])
    assert reply.status == 201, reply.body
    return reply.headers["location"]


async def head_offset(central: HttpCentral, station: FakeStation, location: str) -> int:
    reply = await raw(central, "HEAD", location, station_headers(station))
    assert reply.status == 200, reply.status
    return int(reply.headers["upload-offset"])


def expect_continue(station: FakeStation) -> list[tuple[str, str | bytes]]:
    """A creation-with-upload that waits for 100 Continue before its 5-byte body (never sent here)."""
    return [*station_headers(station), ("Upload-Length", "5"), ("Content-Type", OCTET),
            ("Content-Length", "5"), ("Expect", "100-continue")]


def enroll_dev(central: HttpCentral, *stations: FakeStation) -> None:
    for station in stations:
        central.index.enroll_station(station.station_id, station.key.public_key_b64, "c" * 64)


@pytest.fixture
async def dev(tmp_path: Path, station: FakeStation) -> AsyncIterator[HttpCentral]:
    central = await start_http_central(tmp_path, dev=True)
    enroll_dev(central, station)
    yield central
    await central.running.stop()


# -- strict numbers ----------------------------------------------------------------------------------------

NOT_ASCII_NUMBERS = ["²", "١", "١٢", "１２", "𝟙", "+1", "-1", " 1", "1 ", "1_0", "0x1", "1e3", "1.0", "",
                     "9" * 20]


@pytest.mark.parametrize("value", NOT_ASCII_NUMBERS)
async def test_numbers_in_query_strings_are_ascii_digits_or_a_400(dev: HttpCentral, value: str) -> None:
    reader = {DEV_READER_HEADER: "auditor-1"}
    async with aiohttp.ClientSession() as session:
        for path, params in [
            ("/v1/log/consistency", {"first": value, "second": "0"}),
            ("/v1/log/consistency", {"first": "0", "second": value}),
            ("/v1/items", {"limit": value}),
        ]:
            async with session.get(dev.url + path, params=params, headers=reader) as response:
                doc = await response.json()
                assert response.status == 400, (path, params, doc)
                assert doc["error"] == "bad_request"
                name = next(key for key, given in params.items() if given == value)
                assert name in doc["detail"]
        # Control: the same requests with ASCII digits are answered.
        controls = [("/v1/log/consistency", {"first": "0", "second": "00"}), ("/v1/items", {"limit": "5"})]
        for path, params in controls:
            async with session.get(dev.url + path, params=params, headers=reader) as response:
                assert response.status == 200, await response.text()


@pytest.mark.parametrize("value", ["²".encode(), "１２".encode(), b"+5", b"5 5", b"0x5"])
async def test_numbers_in_headers_are_ascii_digits_only(
    dev: HttpCentral, station: FakeStation, value: bytes
) -> None:
    reply = await raw(dev, "POST", "/v1/uploads",
                      [*station_headers(station), ("Upload-Length", value), ("Content-Length", "0")])
    assert reply.status == 400 and "Upload-Length" in refusal(reply)["detail"]
    assert reply.headers["tus-resumable"] == "1.0.0"
    # Content-Length is parsed by the HTTP layer; its refusal is JSON with Tus-Resumable too.
    headers = [*station_headers(station), ("Upload-Length", "5"), ("Content-Length", value)]
    reply = await raw(dev, "POST", "/v1/uploads", headers, b"hello")
    assert reply.status == 400, reply.body
    assert refusal(reply)["error"] == "malformed_request"
    assert reply.headers["tus-resumable"] == "1.0.0"
    assert list((dev.config.layout.uploads_dir).glob("*.info.json")) == []


# -- Tus-Resumable and JSON on every tus refusal -----------------------------------------------------------


async def test_every_tus_refusal_carries_tus_resumable_and_a_json_body(
    dev: HttpCentral, station: FakeStation
) -> None:
    base = station_headers(station)
    location = await create_upload(dev, station, 10)
    unknown = "/v1/uploads/" + "a" * 32
    broken = await create_upload(dev, station, 10)
    # A content file the server cannot open for writing: its own storage failure, a 500.
    part = dev.config.layout.uploads_dir / (broken.rsplit("/", 1)[1] + ".part")
    part.unlink()
    part.mkdir()
    patch = [*base, ("Content-Type", OCTET), ("Upload-Offset", "0")]
    cases: list[tuple[int, str, str, Headers, bytes]] = [
        (404, "PATCH", unknown, [*patch, ("Content-Length", "0")], b""),
        (404, "GET", "/v1/uploads/a/b", base, b""),
        (405, "GET", location, base, b""),
        (401, "POST", "/v1/uploads", [TUS, ("Upload-Length", "5"), ("Content-Length", "0")], b""),
        (403, "POST", "/v1/uploads", [TUS, (DEV_STATION_HEADER, "st-9999"), ("Upload-Length", "5"),
                                      ("Content-Length", "0")], b""),
        (409, "PATCH", location, [*base, ("Content-Type", OCTET), ("Upload-Offset", "3"),
                                  ("Content-Length", "1")], b"x"),
        (412, "POST", "/v1/uploads", [(DEV_STATION_HEADER, station.station_id), ("Upload-Length", "5"),
                                      ("Content-Length", "0")], b""),
        (413, "POST", "/v1/uploads", [*base, ("Upload-Length", str(1 << 60)), ("Content-Length", "0")], b""),
        (415, "PATCH", location, [*base, ("Content-Type", "text/plain"), ("Upload-Offset", "0"),
                                  ("Content-Length", "1")], b"x"),
        (417, "PATCH", location, [*patch, ("Expect", "something-else"), ("Content-Length", "1")], b"x"),
        (460, "PATCH", location, [*patch, ("Upload-Checksum", "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0="),
                                  ("Content-Length", "3")], b"abc"),
        (500, "PATCH", broken, [*patch, ("Content-Length", "1")], b"x"),
        (501, "PATCH", location, [*patch, ("Transfer-Encoding", "gzip, chunked")], b"1\r\nx\r\n0\r\n\r\n"),
        (400, "PATCH", location, [*patch, ("Content-Length", "+1")], b"x"),
    ]
    for status, method, path, headers, body in cases:
        reply = await raw(dev, method, path, headers, body)
        assert reply.status == status, (status, method, path, reply.status, reply.body)
        assert reply.headers.get("tus-resumable") == "1.0.0", (status, reply.headers)
        refusal(reply)
    # Control: the upload took none of it.
    assert await head_offset(dev, station, location) == 0


# -- the request cap and the body budget -------------------------------------------------------------------


async def test_requests_beyond_the_cap_get_503_with_retry_after(
    tmp_path: Path, station: FakeStation, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    central = await start_http_central(tmp_path, dev=True, server={"max_concurrent_requests": 1,
                                                                   "retry_after_s": 7})
    try:
        enroll_dev(central, station)
        limiter = central.running.bounds.limiter
        location = await create_upload(central, station, 100)
        async with connection(central) as (reader, writer):
            # One PATCH in progress holds the only place.
            writer.write(request_bytes("PATCH", location, [*station_headers(station), ("Content-Type", OCTET),
                                                           ("Upload-Offset", "0"), ("Content-Length", "100")],
                                       b"a" * 40))
            await writer.drain()
            await eventually(lambda: limiter.in_progress == 1, "the PATCH entered the application")
            busy = await raw(central, "HEAD", location, station_headers(station))
            assert busy.status == 503 and busy.headers["retry-after"] == "7"
            assert busy.headers["tus-resumable"] == "1.0.0"
            busy = await raw(central, "GET", "/v1/log/tree-head", [(DEV_READER_HEADER, "auditor")])
            assert busy.status == 503 and busy.headers["retry-after"] == "7"
            assert refusal(busy)["error"] == "server_busy"
            # With Expect: 100-continue the refusal comes before the body is sent.
            early = await raw(central, "POST", "/v1/uploads", expect_continue(station))
            assert early.status == 503 and refusal(early)["error"] == "server_busy"
            assert early.headers["tus-resumable"] == "1.0.0"
            # The station's tus client takes the 503 as transient (retry later), never as a refusal.
            content = tmp_path / "clip.mp4"
            content.write_bytes(b"c" * 10)
            async with aiohttp.ClientSession(headers={DEV_STATION_HEADER: station.station_id}) as session:
                with pytest.raises(UploadInterrupted) as caught:
                    await TusClient(session, central.url + "/v1/uploads").upload(None, content, 10, {})
                assert caught.value.status == 503 and not isinstance(caught.value, ServerRejected)
            writer.write(b"a" * 60)
            await writer.drain()
            assert (await asyncio.wait_for(read_response(reader), 10)).status == 204
        # Control: with the place free again, the same requests are answered.
        await eventually(lambda: limiter.in_progress == 0, "the PATCH left")
        assert await head_offset(central, station, location) == 100
        ok = await raw(central, "GET", "/v1/log/tree-head", [(DEV_READER_HEADER, "auditor")])
        assert ok.status == 200
        assert limiter.refused == 4
        assert any("refused: 1 requests in progress" in r.getMessage() for r in caplog.records)
        assert any(r.name == ACCESS and fields(r.getMessage())["status"] == 503 for r in caplog.records)
    finally:
        await central.running.stop()


async def test_json_bodies_held_together_are_bounded(tmp_path: Path, station: FakeStation) -> None:
    central = await start_http_central(tmp_path, dev=True, server={"max_json_body_mb": 1,
                                                                   "max_buffered_body_mb": 1})
    try:
        enroll_dev(central, station)
        budget = central.running.bounds.budget
        ledger = f"/v1/stations/{station.station_id}/ledger"
        headers = [(DEV_STATION_HEADER, station.station_id), ("Content-Type", "application/json")]
        declared = 700_000
        async with connection(central) as (_reader, writer):
            writer.write(request_bytes("POST", ledger, [*headers, ("Content-Length", str(declared))], b"{"))
            await writer.drain()
            await eventually(lambda: budget.held == declared, "the first body is held")
            busy = await raw(central, "POST", ledger, [*headers, ("Content-Length", str(declared))], b"{}")
            assert busy.status == 503 and busy.headers["retry-after"] == "10"
            assert refusal(busy)["error"] == "server_busy"
            # A body above the per-body maximum is refused for what it is, not for the budget.
            too_big = await raw(central, "POST", ledger, [*headers, ("Content-Length", str(2 << 20))], b"{}")
            assert too_big.status == 413 and refusal(too_big)["error"] == "too_large"
        # The first client went away: its bytes are released, and the same body is read (and found to
        # be no JSON: it got past the budget).
        await eventually(lambda: budget.held == 0, "the vanished body is released")
        body = b"x" * declared
        reply = await raw(central, "POST", ledger, [*headers, ("Content-Length", str(declared))], body)
        assert reply.status == 400 and refusal(reply)["error"] == "bad_request"
        assert budget.held == 0
    finally:
        await central.running.stop()


# -- per-station quota on outstanding uploads --------------------------------------------------------------


async def test_a_station_cannot_declare_more_than_its_quota(
    tmp_path: Path, station: FakeStation, other_station: FakeStation
) -> None:
    mib = 1 << 20
    options: dict[str, Any] = {"max_size_mb": 1, "station_quota_mb": 2}
    central = await start_http_central(tmp_path, dev=True, server={"retry_after_s": 9}, **options)
    try:
        enroll_dev(central, station, other_station)
        first = await create_upload(central, station, mib)
        await create_upload(central, station, mib)
        over = await raw(central, "POST", "/v1/uploads",
                         [*station_headers(station), ("Upload-Length", "1"), ("Content-Length", "0")])
        assert over.status == 507 and over.headers["retry-after"] == "9"
        assert over.headers["tus-resumable"] == "1.0.0"
        doc = refusal(over)
        assert doc["error"] == "quota_exceeded" and str(2 * mib) in doc["detail"]
        # Refused before the body when the client waits for 100 Continue.
        early = await raw(central, "POST", "/v1/uploads", expect_continue(station))
        assert early.status == 507
        # Another station has its own quota.
        await create_upload(central, other_station, mib)
        # The station's own tus client takes 507 as transient: retry later, never a final refusal.
        content = tmp_path / "clip.mp4"
        content.write_bytes(b"c" * 1000)
        async with aiohttp.ClientSession(headers={DEV_STATION_HEADER: station.station_id}) as session:
            client = TusClient(session, central.url + "/v1/uploads")
            with pytest.raises(UploadInterrupted) as caught:
                await client.upload(None, content, 1000, {"item": "i-1"})
            assert caught.value.status == 507
            assert not isinstance(caught.value, ServerRejected)
        # The quota is counted from the uploads on disk: a restart forgets nothing.
        await central.running.stop()
        central = await start_http_central(tmp_path, dev=True, **options)
        again = await raw(central, "POST", "/v1/uploads",
                          [*station_headers(station), ("Upload-Length", "1"), ("Content-Length", "0")])
        assert again.status == 507
        # Control: terminating an upload makes room.
        deleted = await raw(central, "DELETE", first, station_headers(station))
        assert deleted.status == 204
        await create_upload(central, station, 1000)
    finally:
        await central.running.stop()


# -- upload writes per station ----------------------------------------------------------------------------


async def test_a_stations_writes_beyond_its_share_get_429_that_its_client_retries(
    tmp_path: Path, station: FakeStation, other_station: FakeStation
) -> None:
    """``[uploads] station_max_writes`` on the embedded store: a station with its share of writes in
    progress (a stalled PATCH) gets 429 too_many_writes with Retry-After, which the station's own tus
    client treats as transient; another station is not affected, and once the stalled write ends the
    station's upload goes through (control)."""
    central = await start_http_central(tmp_path, dev=True, server={"retry_after_s": 7},
                                       station_max_writes=1, chunk_timeout_s=600)
    try:
        enroll_dev(central, station, other_station)
        stalled_at = await create_upload(central, station, 1000)
        _, writer = await asyncio.open_connection("127.0.0.1", central.config.server.port)
        writer.write(request_bytes("PATCH", stalled_at, [
            *station_headers(station), ("Content-Type", OCTET), ("Upload-Offset", "0"),
            ("Content-Length", "1000")], b"s" * 10))
        await writer.drain()
        slots = central.running.app[UPLOAD_WRITES]
        for _ in range(600):
            if slots.of_station(station.station_id) == 1:
                break
            await asyncio.sleep(0.1)  # polling for the stalled request to reach the server, not timing it
        assert slots.of_station(station.station_id) == 1, repr(slots)
        content = tmp_path / "clip.mp4"
        content.write_bytes(b"c" * 1000)
        async with aiohttp.ClientSession(headers={DEV_STATION_HEADER: station.station_id}) as session:
            client = TusClient(session, central.url + "/v1/uploads")
            with pytest.raises(UploadInterrupted) as caught:
                await client.upload(None, content, 1000, {"item": "i-1"})
            assert caught.value.status == 429 and caught.value.retry_after_s == 7.0
            assert not isinstance(caught.value, ServerRejected)
            early = await raw(central, "POST", "/v1/uploads", expect_continue(station))
            assert early.status == 429 and refusal(early)["error"] == "too_many_writes"
            # Another station has its own share.
            other = await create_upload(central, other_station, 3)
            reply = await raw(central, "PATCH", other, [
                *station_headers(other_station), ("Content-Type", OCTET), ("Upload-Offset", "0"),
                ("Content-Length", "3")], b"abc")
            assert reply.status == 204, reply.body
            # Control: the stalled write ends (its client gone); the station's upload goes through.
            writer.close()
            for _ in range(600):
                if slots.of_station(station.station_id) == 0:
                    break
                await asyncio.sleep(0.1)  # polling for the server to see the client gone
            result = await client.upload(caught.value.url, content, 1000, {"item": "i-1"})
            # The refused creation-with-upload created nothing: the retry creates the upload.
            assert caught.value.url is None and result.created and result.length == 1000
        upload = central.running.parts.uploads.get(result.url.rsplit("/", 1)[-1])
        assert upload is not None and upload.complete
    finally:
        await central.running.stop()


async def test_complete_uploads_never_registered_are_purged(
    dev: HttpCentral, station: FakeStation, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    uploads = dev.running.parts.uploads
    location = await create_upload(dev, station, 3)
    reply = await raw(dev, "PATCH", location, [*station_headers(station), ("Content-Type", OCTET),
                                               ("Upload-Offset", "0"), ("Content-Length", "3")], b"abc")
    assert reply.status == 204
    upload_id = location.rsplit("/", 1)[1]
    configured = timedelta(hours=dev.config.uploads.expire_unregistered_h)
    # Not before the configured time (incomplete uploads would expire at the same age) ...
    assert uploads.purge_expired(now=uploads.now() + configured - timedelta(minutes=1)) == 0
    assert uploads.get(upload_id) is not None
    # ... and at it, by the same purge that removes incomplete uploads, with a line saying so.
    assert uploads.purge_expired(now=uploads.now() + configured + timedelta(seconds=1)) == 1
    assert uploads.get(upload_id) is None
    assert not list(dev.config.layout.uploads_dir.glob(f"{upload_id}*"))
    assert any("never registered" in r.getMessage() and upload_id in r.getMessage() for r in caplog.records)
    assert (await raw(dev, "HEAD", location, station_headers(station))).status == 404


# -- the request-head deadline -----------------------------------------------------------------------------


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Whether the server closed the connection within 10 s: an end of stream, or a reset (the server
    closed with bytes of ours still unread, and the kernel answers those with RST instead of FIN)."""
    try:
        return await asyncio.wait_for(reader.read(), 10) == b""
    except ConnectionResetError:
        return True


async def test_a_request_head_sent_byte_by_byte_is_cut_off(
    tmp_path: Path, station: FakeStation, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    central = await start_http_central(tmp_path, dev=True, server={"request_header_timeout_s": 0.5})
    try:
        enroll_dev(central, station)
        head = request_bytes("GET", "/v1/log/tree-head", [(DEV_READER_HEADER, "auditor")])[:-2]
        async with connection(central) as (reader, writer):

            async def dribble() -> None:
                # A slowloris: a byte every 50 ms, never the blank line that ends the head.
                for byte in head * 100:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.05)

            sender = asyncio.create_task(dribble())
            try:
                assert await closed_by_server(reader)
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await sender
        # Closed by the head deadline, not for any other reason: the deadline's own line, with the configured
        # 0.5 s and the bytes of the head that had arrived by then.
        cut = [r for r in caplog.records if "request head was still incomplete" in r.getMessage()]
        assert len(cut) == 1 and isinstance(cut[0].args, tuple), [r.getMessage() for r in caplog.records]
        _remote, _peer, timeout_s, head_bytes = cut[0].args
        assert timeout_s == 0.5 and isinstance(head_bytes, int) and head_bytes > 0
        # A connection that says nothing, and an idle keep-alive connection, are closed the same way.
        async with connection(central) as (reader, _writer):
            assert await asyncio.wait_for(reader.read(), 10) == b""
        async with connection(central) as (reader, writer):
            writer.write(request_bytes("GET", "/v1/log/tree-head", [(DEV_READER_HEADER, "auditor")]))
            assert (await asyncio.wait_for(read_response(reader), 10)).status == 200
            assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        await central.running.stop()


async def test_a_slow_but_moving_upload_body_is_not_cut(
    tmp_path: Path, station: FakeStation, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Control for the head deadline: inside a request only the body's own stall timeout counts.
    caplog.set_level(logging.INFO)
    # The grace a just-ended head gets (5 s) shortened, so that three head deadlines outlast it: a deadline
    # wrongly left running into the body would then fire, and say so, within the test.
    monkeypatch.setattr(http_server, "_HEAD_GRACE_S", 0.2)
    central = await start_http_central(tmp_path, dev=True, server={"request_header_timeout_s": 0.5})
    try:
        enroll_dev(central, station)
        location = await create_upload(central, station, 30)
        async with connection(central) as (reader, writer):
            writer.write(request_bytes("PATCH", location, [*station_headers(station), ("Content-Type", OCTET),
                                                           ("Upload-Offset", "0"), ("Content-Length", "30")]))
            for _ in range(3):
                # A connection opened after this one's head that sends nothing is closed by its own head
                # deadline: once that has happened, any deadline armed for the PATCH connection (earlier,
                # on the same event loop) has passed too. A byte of the body each time keeps it moving.
                writer.write(b"s")
                await writer.drain()
                async with connection(central) as (idle_reader, _idle_writer):
                    assert await asyncio.wait_for(idle_reader.read(), 10) == b""
            writer.write(b"s" * 27)
            reply = await asyncio.wait_for(read_response(reader), 10)
            assert reply.status == 204 and reply.headers["upload-offset"] == "30"
    finally:
        await central.running.stop()
    closed = [r.getMessage() for r in caplog.records if r.name.startswith("edge.central")
              and "closing the connection" in r.getMessage()]
    assert len(closed) == 3 and all("no request within 0.5 s" in line for line in closed), closed


async def test_a_tls_handshake_that_never_comes_is_cut_off(tmp_path: Path) -> None:
    central = await start_http_central(tmp_path, dev=False, server={"request_header_timeout_s": 0.5})
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", central.running.port)
        try:
            assert await asyncio.wait_for(reader.read(), 10) == b""
        finally:
            writer.close()
    finally:
        await central.running.stop()


# -- access log --------------------------------------------------------------------------------------------


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == ACCESS]


def fields(line: str) -> dict[str, Any]:
    doc = json.loads(line)
    assert isinstance(doc, dict)
    return doc


async def test_one_access_log_line_per_request_without_secrets(
    tls_central: HttpCentral, station: FakeStation, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS)
    bundle = tls_central.enroll_tls(station)
    reader_bundle = tls_central.enroll_reader_tls("auditor-1")
    acquired = station.acquire(b"evidence" * 1000)
    async with tls_session(bundle) as session:
        status, _doc = await register_over_http(session, tls_central.url, station, acquired)
        assert status == 201
    query = {"case": "A-2024-SECRET"}
    async with tls_session(reader_bundle) as session, session.get(f"{tls_central.url}/v1/items",
                                                                   params=query) as response:
        assert response.status == 200
        request_id = response.headers["X-Request-Id"]
    lines = access_lines(caplog)
    assert len(lines) == 4  # create, PATCH, registration, query
    create, patch, register, query = (fields(line) for line in lines)
    assert (create["method"], create["route"], create["status"]) == ("POST", "/v1/uploads", 201)
    assert (patch["method"], patch["route"], patch["status"]) == ("PATCH", "/v1/uploads/{upload_id}", 204)
    assert patch["bytes_in"] == len(acquired.content) and 0 < patch["bytes_out"] < 1000
    # The route template, not the path: ids stay out of the access log (the index logs every read).
    assert register["route"] == "/v1/stations/{station}/items" and register["status"] == 201
    assert register["bytes_out"] > 0
    for line in (create, patch, register):
        assert line["principal"] == f"station:{station.station_id}" and line["remote"] == "127.0.0.1"
        assert line["duration_ms"] >= 0 and len(line["request_id"]) == 16
        assert line["time"].endswith("Z")
    assert query["principal"] == "auditor:auditor-1" and query["route"] == "/v1/items"
    assert query["request_id"] == request_id
    assert not any("SECRET" in line or "?" in line or station.station_id + "/" in line for line in lines)
    # The same members are the record's structured fields (the journal gets them as fields).
    records = [r for r in caplog.records if r.name == ACCESS]
    assert [r.__dict__["edge_fields"] for r in records] == [create, patch, register, query]


async def test_the_access_log_can_be_turned_off(
    tmp_path: Path, station: FakeStation, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS)
    for enabled, expected in ((True, 1), (False, 0)):
        caplog.clear()
        central = await start_http_central(tmp_path / str(enabled), dev=True, server={"access_log": enabled})
        try:
            reply = await raw(central, "GET", "/v1/log/tree-head", [(DEV_READER_HEADER, "auditor")])
            assert reply.status == 200
        finally:
            await central.running.stop()
        assert len(access_lines(caplog)) == expected, enabled


# -- plain HTTP binds loopback only ------------------------------------------------------------------------


@pytest.mark.parametrize("listen", ["0.0.0.0", "::"])
async def test_plain_http_refuses_to_serve_beyond_loopback(tmp_path: Path, listen: str) -> None:
    valid = central_config(tmp_path / "store", dev=True)
    # A configuration that escaped validation (built in code): the server still refuses.
    config = valid.model_copy(update={"server": valid.server.model_copy(update={"listen": listen})})
    with pytest.raises(ConfigError, match="loopback"):
        await start_central(config, signing_key=StationKey.generate())
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", config.server.port)
    # Control: the same configuration on loopback serves.
    running = await start_central(valid, signing_key=StationKey.generate())
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", valid.server.port)
        writer.close()
    finally:
        await running.stop()


# -- inclusion proofs: a station's own items only ----------------------------------------------------------


async def test_inclusion_proofs_answer_a_station_only_for_its_own_items(
    tls_central: HttpCentral, station: FakeStation, other_station: FakeStation
) -> None:
    own = tls_central.enroll_tls(station)
    other = tls_central.enroll_tls(other_station)
    auditor = tls_central.enroll_reader_tls("auditor-1")
    acquired = station.acquire(b"clip" * 500)
    async with tls_session(own) as session:
        status, _doc = await register_over_http(session, tls_central.url, station, acquired)
        assert status == 201
        status, receipt = await get_json(session, f"{tls_central.url}/v1/log/inclusion?item={acquired.item}")
        assert status == 200 and receipt["item"] == acquired.item
    missing = str(uuid.uuid4())
    async with tls_session(other) as session:
        status, refused = await get_json(session, f"{tls_central.url}/v1/log/inclusion?item={acquired.item}")
        status_missing, absent = await get_json(session, f"{tls_central.url}/v1/log/inclusion?item={missing}")
    # The same answer as for an item that does not exist: nothing tells the items apart.
    assert (status, status_missing) == (404, 404)
    assert refused["error"] == absent["error"] == "not_found"
    assert refused["detail"].replace(acquired.item, "ITEM") == absent["detail"].replace(missing, "ITEM")
    async with tls_session(auditor) as session:
        status, receipt = await get_json(session, f"{tls_central.url}/v1/log/inclusion?item={acquired.item}")
        assert status == 200 and receipt["item"] == acquired.item


# -- transfer codings --------------------------------------------------------------------------------------


CODINGS = ["gzip, chunked", "gzip", "chunked, gzip", "x-unknown", "identity, chunked"]


@pytest.mark.parametrize("coding", CODINGS)
async def test_transfer_codings_other_than_chunked_are_refused_before_any_byte_is_stored(
    dev: HttpCentral, station: FakeStation, coding: str
) -> None:
    uploads_dir = dev.config.layout.uploads_dir
    body = b"5\r\nhello\r\n0\r\n\r\n"
    creation = [*station_headers(station), ("Upload-Length", "5"), ("Content-Type", OCTET),
                ("Transfer-Encoding", coding)]
    created = await raw(dev, "POST", "/v1/uploads", creation, body)
    assert created.status == 501, created.body
    assert refusal(created)["error"] == "unsupported_transfer_coding"
    assert created.headers["tus-resumable"] == "1.0.0"
    assert list(uploads_dir.glob("*.info.json")) == []
    location = await create_upload(dev, station, 5)
    patched = await raw(dev, "PATCH", location, [*station_headers(station), ("Content-Type", OCTET),
                                                 ("Upload-Offset", "0"), ("Transfer-Encoding", coding)], body)
    assert patched.status == 501 and refusal(patched)["error"] == "unsupported_transfer_coding"
    ledger = await raw(dev, "POST", f"/v1/stations/{station.station_id}/ledger",
                       [(DEV_STATION_HEADER, station.station_id), ("Content-Type", "application/json"),
                        ("Transfer-Encoding", coding)], b"2\r\n{}\r\n0\r\n\r\n")
    assert ledger.status == 501 and refusal(ledger)["error"] == "unsupported_transfer_coding"
    assert await head_offset(dev, station, location) == 0
    assert (uploads_dir / (location.rsplit("/", 1)[1] + ".part")).stat().st_size == 0
    # Control: plain chunked is taken.
    chunked = [*station_headers(station), ("Content-Type", OCTET), ("Upload-Offset", "0"),
               ("Transfer-Encoding", "chunked")]
    accepted = await raw(dev, "PATCH", location, chunked, body)
    assert accepted.status == 204 and accepted.headers["upload-offset"] == "5"


# -- a client that disconnects mid-request -----------------------------------------------------------------


async def test_a_client_that_disconnects_mid_patch_is_an_ordinary_event(
    dev: HttpCentral, station: FakeStation, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    location = await create_upload(dev, station, 1000)
    async with connection(dev) as (_reader, writer):
        writer.write(request_bytes("PATCH", location, [*station_headers(station), ("Content-Type", OCTET),
                                                       ("Upload-Offset", "0"), ("Content-Length", "1000")],
                                   b"v" * 400))
        await writer.drain()
        await eventually(lambda: dev.running.bounds.limiter.in_progress == 1, "the PATCH is in progress")
    await eventually(lambda: any('"method":"PATCH"' in line for line in access_lines(caplog)),
                     "the PATCH ended")
    patch_line = fields(next(line for line in access_lines(caplog) if '"method":"PATCH"' in line))
    assert patch_line["status"] == 499
    assert await head_offset(dev, station, location) == 400  # what was committed stays
    for record in caplog.records:
        message = record.getMessage()
        assert record.exc_info is None, message
        assert "Traceback" not in message and "Error handling request" not in message, message
        assert "internal error" not in message, message
        assert record.levelno < logging.ERROR, message
    assert any("disconnected" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
    # The same for a JSON endpoint whose client leaves halfway through the body.
    caplog.clear()
    async with connection(dev) as (_reader, writer):
        json_headers = [(DEV_STATION_HEADER, station.station_id), ("Content-Type", "application/json"),
                        ("Content-Length", "1000")]
        writer.write(request_bytes("POST", f"/v1/stations/{station.station_id}/ledger", json_headers,
                                   b'{"entries": ['))
        await writer.drain()
        await eventually(lambda: dev.running.bounds.budget.held == 1000, "the body is being read")
    await eventually(lambda: any('"method":"POST"' in line for line in access_lines(caplog)),
                     "the POST ended")
    assert fields(access_lines(caplog)[0])["status"] == 499
    assert all(r.exc_info is None and r.levelno < logging.ERROR for r in caplog.records)
    assert dev.running.bounds.budget.held == 0
