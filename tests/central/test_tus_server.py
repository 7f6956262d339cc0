"""The tus 1.0.0 server over real sockets: every status the protocol and the contract name, hostile
headers, slow and vanishing clients, concurrent writers, expiry, and a kill -9 in the middle of uploads."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import signal
import sys
import tracemalloc
from collections.abc import AsyncIterator, Mapping
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.central.tus import (
    TUS_VERSION,
    TusHeaderError,
    encode_upload_metadata,
    parse_decimal,
    parse_upload_checksum,
    parse_upload_metadata,
)
from edge.central.tus_store import TusUploadStore
from tests.central.tus_fixtures import (
    BASE_PATH,
    STATION_HEADER,
    RunningTus,
    SignallingStore,
    raw_request,
    read_response,
    request_bytes,
    running_tus,
    wait_event,
)

ROOT = Path(__file__).resolve().parents[2]
OCTET = "application/offset+octet-stream"
STATION = "station-a"
MAX_SIZE = 4 * 1024 * 1024


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now_s


def tus_headers(station: str = STATION, **extra: str) -> dict[str, str]:
    headers = {"Tus-Resumable": TUS_VERSION, STATION_HEADER: station}
    headers.update({key.replace("_", "-"): value for key, value in extra.items()})
    return headers


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def checksum_header(algorithm: str, data: bytes) -> str:
    return f"{algorithm} {b64(hashlib.new(algorithm, data).digest())}"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> SignallingStore:
    return SignallingStore(
        tmp_path / "uploads",
        max_size_bytes=MAX_SIZE,
        expire_after_s=3600,
        expire_complete_after_s=4 * 3600,
        commit_every_bytes=256 * 1024,
        clock=clock,
    )


@pytest.fixture
async def server(store: SignallingStore) -> AsyncIterator[RunningTus]:
    async with running_tus(store, chunk_timeout_s=0.5) as running:
        yield running


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


class Reply:
    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def error(self) -> str:
        import json

        return str(json.loads(self.body)["error"])

    @property
    def detail(self) -> str:
        import json

        return str(json.loads(self.body)["detail"])


async def call(
    session: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str], data: Any = None
) -> Reply:
    if isinstance(data, bytes) and len(data) > 512 * 1024:
        data = io.BytesIO(data)  # aiohttp warns that a large bytes body may block the loop
    async with session.request(method, url, headers=headers, data=data) as response:
        return Reply(response.status, response.headers, await response.read())


async def create(
    session: aiohttp.ClientSession,
    server: RunningTus,
    length: int,
    *,
    station: str = STATION,
    metadata: str = "",
) -> str:
    headers = tus_headers(station, Upload_Length=str(length))
    if metadata:
        headers["Upload-Metadata"] = metadata
    reply = await call(session, "POST", server.collection_url, headers)
    assert reply.status == 201, reply.body
    return server.origin + reply.headers["Location"]


async def patch(
    session: aiohttp.ClientSession,
    url: str,
    offset: int,
    data: Any,
    *,
    station: str = STATION,
    **extra: str,
) -> Reply:
    headers = tus_headers(station, Upload_Offset=str(offset), Content_Type=OCTET)
    headers.update({key.replace("_", "-"): value for key, value in extra.items()})
    return await call(session, "PATCH", url, headers, data)


async def head_offset(session: aiohttp.ClientSession, url: str, station: str = STATION) -> int:
    reply = await call(session, "HEAD", url, tus_headers(station))
    assert reply.status == 200
    return int(reply.headers["Upload-Offset"])


def upload_id(url: str) -> str:
    return url.rsplit("/", 1)[1]


def part_size(store: TusUploadStore, url: str) -> int:
    return (store.root / f"{upload_id(url)}.part").stat().st_size


# -- pure header codecs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["", "-1", "+5", "1e3", "0x10", " 5", "5 ", "1.0", "١٢", "5\x00", "9" * 20])
def test_decimal_headers_refuse_anything_but_ascii_digits(value: str) -> None:
    with pytest.raises(TusHeaderError) as caught:
        parse_decimal("Upload-Length", value)
    assert caught.value.header == "Upload-Length"


def test_decimal_headers_accept_plain_numbers() -> None:
    assert parse_decimal("Upload-Offset", "0") == 0
    assert parse_decimal("Upload-Offset", "007") == 7
    assert parse_decimal("Upload-Offset", "9" * 19) == int("9" * 19)


def test_metadata_round_trip() -> None:
    metadata = {"item": "5b7a-1", "sha256": "ab" * 32, "filename": "执法记录 01.mp4", "flag": ""}
    assert parse_upload_metadata(encode_upload_metadata(metadata)) == metadata
    assert parse_upload_metadata("") == {}
    assert parse_upload_metadata("a YQ==, b Yg==") == {"a": "a", "b": "b"}


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("item !!!", "not valid base64"),
        ("item YQ", "not valid base64"),
        ("a YQ==,a Yg==", "appears twice"),
        ("a b YQ==", "more spaces"),
        ("a YQ==, ,b Yg==", "no key"),
        ("a YQ==,,b Yg==", "no key"),
        ("ké YQ==", "printable ASCII"),
        ("k" * 65 + " YQ==", "printable ASCII"),
        ("a " + b64(b"\xff\xfe"), "not UTF-8"),
        ("a " + b64(b"line\nbreak"), "control or format characters"),
        ("sha256 " + b64(b"AB" * 32), "64 lowercase hex"),
        ("item " + b64(b"../../etc"), "item"),
        ("a YQ==," * 40, "pairs"),
        ("a " + "QUFB" * 1100, "at most 4096 characters"),
    ],
)
def test_metadata_refusals_name_the_problem(value: str, problem: str) -> None:
    with pytest.raises(TusHeaderError) as caught:
        parse_upload_metadata(value)
    assert caught.value.header == "Upload-Metadata"
    assert problem in str(caught.value)


def test_checksum_header_codec() -> None:
    parsed = parse_upload_checksum("sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=")  # the spec's "hello world" example
    assert parsed.algorithm == "sha1"
    assert parsed.digest == hashlib.sha1(b"hello world").digest()
    for bad, problem in [
        ("crc32 AAAAAA==", "unsupported algorithm"),
        ("SHA1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=", "unsupported algorithm"),
        ("sha1", "expected '<algorithm> <base64 digest>'"),
        ("sha1 Kq5s Nclz", "expected '<algorithm> <base64 digest>'"),
        ("sha1 ***", "not valid base64"),
        ("sha256 Kq5sNclPz7QV2+lfQIuc6R7oRu0=", "32 bytes"),
    ]:
        with pytest.raises(TusHeaderError, match="Upload-Checksum") as caught:
            parse_upload_checksum(bad)
        assert problem in str(caught.value)


# -- core, creation, expiration headers ------------------------------------------------------------------


async def test_options_advertises_the_server(server: RunningTus, session: aiohttp.ClientSession) -> None:
    for url in (server.collection_url, server.collection_url + "/" + "0" * 32):
        reply = await call(session, "OPTIONS", url, {})
        assert reply.status == 204
        assert reply.headers["Tus-Version"] == "1.0.0"
        assert reply.headers["Tus-Extension"].split(",") == [
            "creation",
            "creation-with-upload",
            "expiration",
            "checksum",
            "termination",
        ]
        assert reply.headers["Tus-Max-Size"] == str(MAX_SIZE)
        advertised = set(reply.headers["Tus-Checksum-Algorithm"].split(","))
        assert advertised == {"sha1", "sha256", "md5", "sha256-prefix"}


async def test_upload_in_chunks_with_streaming_sha256(
    server: RunningTus, session: aiohttp.ClientSession, store: SignallingStore, clock: FakeClock
) -> None:
    data = os.urandom(700_000)
    metadata = encode_upload_metadata(
        {"item": "item-1", "sha256": hashlib.sha256(data).hexdigest(), "filename": "a.mp4"}
    )
    reply = await call(
        session,
        "POST",
        server.collection_url,
        tus_headers(Upload_Length=str(len(data)), Upload_Metadata=metadata),
    )
    assert reply.status == 201
    assert reply.headers["Location"].startswith(BASE_PATH + "/")
    expires = parsedate_to_datetime(reply.headers["Upload-Expires"])
    assert expires.timestamp() == int(clock.now_s + 3600)
    assert reply.headers["Upload-Expires"].endswith(" GMT")
    url = server.origin + reply.headers["Location"]

    head = await call(session, "HEAD", url, tus_headers())
    assert head.status == 200
    assert head.headers["Upload-Offset"] == "0"
    assert head.headers["Upload-Length"] == str(len(data))
    assert head.headers["Cache-Control"] == "no-store"
    assert head.headers["Tus-Resumable"] == "1.0.0"
    assert parse_upload_metadata(head.headers["Upload-Metadata"])["filename"] == "a.mp4"

    offset = 0
    for size in (1, 99_999, 300_000, 300_000):
        clock.now_s += 10
        chunk = data[offset : offset + size]
        reply = await patch(session, url, offset, chunk, Upload_Checksum=checksum_header("sha256", chunk))
        assert reply.status == 204, reply.body
        offset += size
        assert reply.headers["Upload-Offset"] == str(offset)
        if offset < len(data):
            # Expiry slides with activity, so a slow but live upload is never purged under the client.
            assert parsedate_to_datetime(reply.headers["Upload-Expires"]).timestamp() == int(
                clock.now_s + 3600
            )
        else:
            assert "Upload-Expires" not in reply.headers
    assert [info.upload_id for info in server.completed] == [upload_id(url)]
    done = server.completed[0]
    assert done.sha256 == hashlib.sha256(data).hexdigest()
    assert done.metadata["item"] == "item-1"
    assert store.complete_path(upload_id(url)).read_bytes() == data
    head = await call(session, "HEAD", url, tus_headers())
    assert head.headers["Upload-Offset"] == str(len(data))
    assert "Upload-Expires" not in head.headers


async def test_zero_length_upload_is_complete_at_creation(
    server: RunningTus, session: aiohttp.ClientSession
) -> None:
    url = await create(session, server, 0)
    assert await head_offset(session, url) == 0
    assert [info.sha256 for info in server.completed] == [hashlib.sha256(b"").hexdigest()]
    assert (await patch(session, url, 0, b"")).status == 204
    assert (await patch(session, url, 0, b"x")).status == 413
    assert len(server.completed) == 1


@pytest.mark.parametrize("method", ["POST", "HEAD", "PATCH", "DELETE"])
@pytest.mark.parametrize("version", [None, "0.2.2", "1.0.0, 1.0.0", "2.0.0"])
async def test_412_without_the_right_tus_resumable(
    server: RunningTus, session: aiohttp.ClientSession, method: str, version: str | None
) -> None:
    url = await create(session, server, 10)
    headers = {STATION_HEADER: STATION, "Upload-Length": "10", "Upload-Offset": "0", "Content-Type": OCTET}
    if version is not None:
        headers["Tus-Resumable"] = version
    reply = await call(session, method, server.collection_url if method == "POST" else url, headers, b"")
    assert reply.status == 412
    assert reply.headers["Tus-Version"] == "1.0.0"
    if method != "HEAD":
        assert reply.error == "tus_version"
        assert "Tus-Resumable" in reply.detail
    assert await head_offset(session, url) == 0


async def test_412_when_the_header_is_sent_twice(server: RunningTus) -> None:
    reply = await raw_request(
        server.port,
        "POST",
        BASE_PATH,
        [
            ("Tus-Resumable", "1.0.0"),
            ("Tus-Resumable", "1.0.0"),
            (STATION_HEADER, STATION),
            ("Upload-Length", "5"),
            ("Content-Length", "0"),
        ],
    )
    assert reply.status == 412


async def test_409_on_a_wrong_offset_changes_nothing(
    server: RunningTus, session: aiohttp.ClientSession, store: SignallingStore
) -> None:
    url = await create(session, server, 100)
    assert (await patch(session, url, 0, b"a" * 10)).status == 204
    for wrong in (0, 9, 11, 100, 10**18):
        reply = await patch(session, url, wrong, b"b" * 5)
        assert reply.status == 409
        assert reply.error == "offset_mismatch"
        assert "at 10" in reply.detail
    assert await head_offset(session, url) == 10
    assert part_size(store, url) == 10


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Content-Type": "application/octet-stream"},
        {"Content-Type": "text/plain"},
        {"Content-Type": OCTET, "Content-Encoding": "gzip"},
    ],
)
async def test_415_on_a_wrong_content_type(
    server: RunningTus, session: aiohttp.ClientSession, store: SignallingStore, headers: dict[str, str]
) -> None:
    url = await create(session, server, 100)
    request_headers = tus_headers(Upload_Offset="0")
    request_headers.update(headers)
    reply = await call(session, "PATCH", url, request_headers, b"abc")
    assert reply.status == 415
    assert reply.error == "unsupported_media_type"
    assert part_size(store, url) == 0


async def test_413_on_an_upload_above_the_size_limit(
    server: RunningTus, session: aiohttp.ClientSession
) -> None:
    reply = await call(session, "POST", server.collection_url, tus_headers(Upload_Length=str(MAX_SIZE + 1)))
    assert reply.status == 413
    assert reply.error == "too_large"
    assert "Upload-Length" in reply.detail
    assert list(Path(server.store.root).iterdir()) == []
    assert (
        await call(session, "POST", server.collection_url, tus_headers(Upload_Length=str(MAX_SIZE)))
    ).status == 201


async def test_507_when_the_disk_cannot_hold_the_upload(
    server: RunningTus, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("edge.central.tus_store.free_bytes", lambda _path: 64 * 1024 * 1024 + 1000)
    reply = await call(session, "POST", server.collection_url, tus_headers(Upload_Length="1001"))
    assert reply.status == 507
    assert reply.error == "insufficient_storage"
    assert "no room for 1001 bytes" in reply.detail
    assert list(server.store.root.iterdir()) == []
    assert (
        await call(session, "POST", server.collection_url, tus_headers(Upload_Length="1000"))
    ).status == 201


async def test_413_on_a_patch_beyond_the_upload_length(
    server: RunningTus, session: aiohttp.ClientSession, store: SignallingStore
) -> None:
    url = await create(session, server, 100)
    assert (await patch(session, url, 0, b"a" * 60)).status == 204
    reply = await patch(session, url, 60, b"b" * 41)  # Content-Length says it at once
    assert reply.status == 413
    assert "Content-Length" in reply.detail

    async def chunked() -> AsyncIterator[bytes]:
        yield b"c" * 30
        yield b"d" * 30

    reply = await patch(session, url, 60, chunked())  # only the body tells
    assert reply.status == 413
    assert reply.error == "too_large"
    assert await head_offset(session, url) == 60
    assert part_size(store, url) == 60
    assert (await patch(session, url, 60, b"e" * 40)).status == 204


# -- checksum --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "md5"])
async def test_checksummed_chunks_are_verified(
    server: RunningTus, session: aiohttp.ClientSession, store: SignallingStore, algorithm: str
) -> None:
    data = os.urandom(3000)
    url = await create(session, server, len(data))
    good = data[:1000]
    reply = await patch(session, url, 0, good, Upload_Checksum=checksum_header(algorithm, good))
    assert reply.status == 204
    corrupted = bytearray(data[1000:2000])
    corrupted[500] ^= 0x01
    reply = await patch(
        session, url, 1000, bytes(corrupted), Upload_Checksum=checksum_header(algorithm, data[1000:2000])
    )
    assert reply.status == 460
    assert reply.error == "checksum_mismatch"
    assert reply.headers["Upload-Offset"] == "1000"
    assert part_size(store, url) == 1000
    assert await head_offset(session, url) == 1000
    # The discarded chunk must not have entered the whole-file hash either.
    for start in (1000, 2000):
        chunk = data[start : start + 1000]
        assert (
            await patch(session, url, start, chunk, Upload_Checksum=checksum_header(algorithm, chunk))
        ).status == 204
    assert server.completed[0].sha256 == hashlib.sha256(data).hexdigest()
    assert store.complete_path(upload_id(url)).read_bytes() == data


@pytest.mark.parametrize(
    "value",
    ["crc32 AAAAAA==", "sha1 not-base64!", "sha1", "sha256 " + b64(b"short"), "SHA1 " + b64(bytes(20))],
)
async def test_400_on_an_unusable_checksum(
    server: RunningTus, session: aiohttp.ClientSession, store: SignallingStore, value: str
) -> None:
    url = await create(session, server, 100)
    reply = await patch(session, url, 0, b"x" * 10, Upload_Checksum=value)
    assert reply.status == 400
    assert "Upload-Checksum" in reply.detail
    assert part_size(store, url) == 0


# -- creation with upload --------------------------------------------------------------------------------


async def test_creation_with_upload(
    server: RunningTus, session: aiohttp.ClientSession, store: SignallingStore
) -> None:
    data = os.urandom(5000)
    headers = tus_headers(Upload_Length=str(len(data)), Content_Type=OCTET)
    reply = await call(session, "POST", server.collection_url, headers, data[:2000])
    assert reply.status == 201
    assert reply.headers["Upload-Offset"] == "2000"
    assert "Upload-Expires" in reply.headers
    url = server.origin + reply.headers["Location"]
    assert (await patch(session, url, 2000, data[2000:])).status == 204

    whole = tus_headers(
        Upload_Length="5", Content_Type=OCTET, Upload_Checksum=checksum_header("sha1", b"hello")
    )
    reply = await call(session, "POST", server.collection_url, whole, b"hello")
    assert reply.status == 201
    assert reply.headers["Upload-Offset"] == "5"
    assert sorted(info.sha256 or "" for info in server.completed) == sorted(
        [hashlib.sha256(data).hexdigest(), hashlib.sha256(b"hello").hexdigest()]
    )


async def test_creation_with_a_corrupted_body_still_names_the_upload(
    server: RunningTus, session: aiohttp.ClientSession, store: SignallingStore
) -> None:
    headers = tus_headers(
        Upload_Length="10", Content_Type=OCTET, Upload_Checksum=checksum_header("sha1", b"hello")
    )
    reply = await call(session, "POST", server.collection_url, headers, b"hellO")
    assert reply.status == 460
    assert reply.headers["Upload-Offset"] == "0"
    url = server.origin + reply.headers["Location"]
    assert await head_offset(session, url) == 0
    assert (await patch(session, url, 0, b"helloworld")).status == 204


async def test_creation_refusals(server: RunningTus, session: aiohttp.ClientSession) -> None:
    cases: list[tuple[dict[str, str], bytes, int, str]] = [
        (tus_headers(), b"", 400, "Upload-Length: required"),
        (tus_headers(Upload_Defer_Length="1"), b"", 400, "Upload-Defer-Length"),
        (tus_headers(Upload_Length="5", Upload_Concat="final;/a /b"), b"", 400, "Upload-Concat"),
        (tus_headers(Upload_Length="-5"), b"", 400, "Upload-Length"),
        (tus_headers(Upload_Length="5", Upload_Metadata="a !!"), b"", 400, "Upload-Metadata"),
        (tus_headers(Upload_Length="5", Content_Type="text/plain"), b"hello", 415, "Content-Type"),
        (tus_headers(Upload_Length="3", Content_Type=OCTET), b"hello", 413, "Content-Length"),
        (tus_headers(Upload_Length="5", X_HTTP_Method_Override="DELETE"), b"", 400, "X-HTTP-Method-Override"),
    ]
    for headers, body, status, named in cases:
        reply = await call(session, "POST", server.collection_url, headers, body)
        assert (reply.status, named in reply.detail) == (status, True), (headers, reply.body)
    assert list(Path(server.store.root).iterdir()) == []
    reply = await call(
        session, "POST", server.collection_url, {"Tus-Resumable": "1.0.0", "Upload-Length": "5"}
    )
    assert reply.status == 401  # identify() refused: the application's answer passes through


async def test_expect_100_continue_refuses_before_the_body(
    server: RunningTus, session: aiohttp.ClientSession
) -> None:
    base: list[tuple[str, str | bytes]] = [("Tus-Resumable", "1.0.0"), (STATION_HEADER, STATION)]
    # Too large: refused on the headers, no body ever sent.
    reply = await raw_request(
        server.port,
        "POST",
        BASE_PATH,
        [
            *base,
            ("Upload-Length", str(MAX_SIZE + 1)),
            ("Content-Type", OCTET),
            ("Content-Length", "10"),
            ("Expect", "100-continue"),
        ],
    )
    assert reply.status == 413
    url = await create(session, server, 10)
    path = url.removeprefix(server.origin)
    patch_headers = [*base, ("Content-Type", OCTET), ("Content-Length", "4"), ("Expect", "100-continue")]
    reply = await raw_request(server.port, "PATCH", path, [*patch_headers, ("Upload-Offset", "3")])
    assert reply.status == 409
    # Acceptable: 100 Continue, then the body, then the final answer.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(request_bytes("PATCH", path, [*patch_headers, ("Upload-Offset", "0")]))
        await writer.drain()
        interim = await asyncio.wait_for(read_response(reader), 10)
        assert interim.status == 100
        writer.write(b"abcd")
        await writer.drain()
        final = await asyncio.wait_for(read_response(reader), 10)
    finally:
        writer.close()
    assert final.status == 204
    assert final.headers["upload-offset"] == "4"


# -- termination and method override -----------------------------------------------------------------------


async def test_termination(
    server: RunningTus, session: aiohttp.ClientSession, store: SignallingStore
) -> None:
    url = await create(session, server, 100)
    assert (await patch(session, url, 0, b"x" * 50)).status == 204
    reply = await call(session, "DELETE", url, tus_headers())
    assert reply.status == 204
    assert reply.headers["Tus-Resumable"] == "1.0.0"
    assert list(store.root.iterdir()) == []
    assert (await call(session, "HEAD", url, tus_headers())).status == 404
    assert (await patch(session, url, 50, b"x")).status == 404
    assert (await call(session, "DELETE", url, tus_headers())).status == 404


async def test_termination_waits_for_the_registrations_lease(
    server: RunningTus, session: aiohttp.ClientSession, store: SignallingStore, clock: FakeClock
) -> None:
    url = await create(session, server, 6)
    assert (await patch(session, url, 0, b"abcdef")).status == 204
    content = store.complete_path(upload_id(url))  # a registration claims it, as registration does
    override = tus_headers(X_HTTP_Method_Override="DELETE")
    for method, headers in (("DELETE", tus_headers()), ("POST", override)):
        reply = await call(session, method, url, headers)
        assert reply.status == 423, reply.body
        assert reply.error == "upload_registering"
        assert f"upload {upload_id(url)} is held by its registration" in reply.detail
        assert reply.headers["Tus-Resumable"] == "1.0.0"
    assert content.read_bytes() == b"abcdef"  # nothing pulled from under the registration
    assert (await head_offset(session, url)) == 6
    # Control: the lease ended (the registration never came back), and the same termination removes it.
    clock.now_s += 3601
    assert (await call(session, "DELETE", url, tus_headers())).status == 204
    assert not content.exists()


async def test_control_a_complete_upload_nobody_claimed_is_terminated(
    server: RunningTus, session: aiohttp.ClientSession, store: SignallingStore
) -> None:
    url = await create(session, server, 6)
    assert (await patch(session, url, 0, b"abcdef")).status == 204
    assert (await call(session, "DELETE", url, tus_headers())).status == 204
    assert list(store.root.iterdir()) == []


async def test_x_http_method_override(
    server: RunningTus, session: aiohttp.ClientSession, store: SignallingStore
) -> None:
    url = await create(session, server, 6)
    reply = await patch(session, url, 0, b"abc")
    assert reply.status == 204
    headers = tus_headers(X_HTTP_Method_Override="PATCH", Upload_Offset="3", Content_Type=OCTET)
    reply = await call(session, "POST", url, headers, b"def")
    assert reply.status == 204
    assert reply.headers["Upload-Offset"] == "6"
    # Read as a file, not through complete_path: that is registration's claim, under which termination
    # is refused (test_termination_waits_for_the_registrations_lease).
    assert (store.root / f"{upload_id(url)}.part").read_bytes() == b"abcdef"
    assert (await call(session, "POST", url, tus_headers())).status == 405
    assert (await call(session, "POST", url, tus_headers(X_HTTP_Method_Override="PUT"))).status == 400
    assert (await call(session, "POST", url, tus_headers(X_HTTP_Method_Override="DELETE"))).status == 204
    assert not store.root.joinpath(f"{upload_id(url)}.part").exists()


# -- ownership and hostile URLs --------------------------------------------------------------------------


async def test_another_stations_upload_is_not_found(
    server: RunningTus, session: aiohttp.ClientSession, store: SignallingStore
) -> None:
    url = await create(session, server, 10, station="station-a")
    assert (await patch(session, url, 0, b"abc", station="station-a")).status == 204
    unknown = server.collection_url + "/" + "0" * 32
    for method, data in (("HEAD", None), ("PATCH", b"zz"), ("DELETE", None)):
        headers = tus_headers("station-b", Upload_Offset="3", Content_Type=OCTET)
        theirs = await call(session, method, url, headers, data)
        nobodys = await call(session, method, unknown, headers, data)
        assert theirs.status == nobodys.status == 404
        if method != "HEAD":
            # Same answer as for an upload that never existed, so existence does not leak.
            assert theirs.detail.replace(upload_id(url), "ID") == nobodys.detail.replace("0" * 32, "ID")
        else:
            assert "Upload-Offset" not in theirs.headers
    assert await head_offset(session, url, "station-a") == 3
    assert part_size(store, url) == 3


@pytest.mark.parametrize(
    "path",
    [
        "/../../etc/passwd",
        "/%2e%2e%2f%2e%2e%2fescape",
        "/..%2Fescape",
        "/" + "A" * 32,
        "/" + "a" * 31,
        "/" + "a" * 33,
        "/" + "a" * 31 + "%00",
        "/" + "a" * 32 + "%2Fx",
        "/" + "g" * 32,
        "/%E4%B8%AD" + "a" * 29,
    ],
)
async def test_upload_ids_in_urls_are_only_lower_hex(server: RunningTus, tmp_path: Path, path: str) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    for method, headers in (
        ("HEAD", [("Tus-Resumable", "1.0.0"), (STATION_HEADER, STATION)]),
        (
            "PATCH",
            [
                ("Tus-Resumable", "1.0.0"),
                (STATION_HEADER, STATION),
                ("Upload-Offset", "0"),
                ("Content-Type", OCTET),
                ("Content-Length", "3"),
            ],
        ),
        ("DELETE", [("Tus-Resumable", "1.0.0"), (STATION_HEADER, STATION), ("Content-Length", "0")]),
    ):
        reply = await raw_request(
            server.port, method, BASE_PATH + path, headers, b"abc" if method == "PATCH" else b""
        )
        assert reply.status in (400, 404), (method, path, reply.status)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert list(server.store.root.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "value", "named"),
    [
        ("Upload-Length", "-1", "Upload-Length"),
        ("Upload-Length", "0x10", "Upload-Length"),
        ("Upload-Length", "9" * 40, "Upload-Length"),
        ("Upload-Length", "١٢".encode(), "Upload-Length"),
        ("Upload-Length", b"1\xb2", "Upload-Length"),
        ("Upload-Metadata", "k\xe9 YQ==".encode(), "Upload-Metadata"),
        ("Upload-Metadata", b"filename " + base64.b64encode("视频\u202e.mp4".encode()), "Upload-Metadata"),
    ],
)
async def test_hostile_creation_headers_over_raw_sockets(
    server: RunningTus, name: str, value: str | bytes, named: str
) -> None:
    headers: list[tuple[str, str | bytes]] = [
        ("Tus-Resumable", "1.0.0"),
        (STATION_HEADER, STATION),
        ("Content-Length", "0"),
    ]
    if name != "Upload-Length":
        headers.append(("Upload-Length", "5"))
    headers.append((name, value))
    reply = await raw_request(server.port, "POST", BASE_PATH, headers)
    assert reply.status == 400, reply.body
    assert named.encode() in reply.body
    assert list(server.store.root.iterdir()) == []


async def test_duplicated_headers_are_refused(server: RunningTus, session: aiohttp.ClientSession) -> None:
    base: list[tuple[str, str | bytes]] = [("Tus-Resumable", "1.0.0"), (STATION_HEADER, STATION)]
    reply = await raw_request(
        server.port,
        "POST",
        BASE_PATH,
        [*base, ("Upload-Length", "5"), ("Upload-Length", "6"), ("Content-Length", "0")],
    )
    assert reply.status == 400
    assert b"Upload-Length: expected one header, got 2" in reply.body
    url = await create(session, server, 10)
    path = url.removeprefix(server.origin)
    reply = await raw_request(
        server.port,
        "PATCH",
        path,
        [
            *base,
            ("Content-Type", OCTET),
            ("Upload-Offset", "0"),
            ("Upload-Offset", "0"),
            ("Content-Length", "2"),
        ],
        b"ab",
    )
    assert reply.status == 400
    assert b"Upload-Offset" in reply.body
    for offset in ("-1", "abc", "1" * 25, ""):
        refused = await patch(session, url, 0, b"ab", Upload_Offset=offset)
        assert refused.status == 400, offset
        assert "Upload-Offset" in refused.detail
    assert (await patch(session, url, 0, b"ab", Upload_Offset="0")).status == 204


# -- slow, vanishing and concurrent clients --------------------------------------------------------------


async def test_a_stalled_body_is_cut_off_and_its_bytes_kept(
    server: RunningTus, session: aiohttp.ClientSession, store: SignallingStore
) -> None:
    url = await create(session, server, 1000)
    path = url.removeprefix(server.origin)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    headers: list[tuple[str, str | bytes]] = [
        ("Tus-Resumable", "1.0.0"),
        (STATION_HEADER, STATION),
        ("Upload-Offset", "0"),
        ("Content-Type", OCTET),
        ("Content-Length", "1000"),
    ]
    writer.write(request_bytes("PATCH", path, headers, b"s" * 300))
    await writer.drain()
    reply = await asyncio.wait_for(read_response(reader), 10)
    assert reply.status == 408
    assert reply.headers["upload-offset"] == "300"
    # Cut by the body's own stall timeout (0.5 s in this server), not by anything else.
    refusal = json.loads(reply.body)
    assert refusal["error"] == "body_timeout" and "no body bytes arrived for 0.5 s" in refusal["detail"]
    assert await asyncio.wait_for(reader.read(), 10) == b""  # the server closed the connection
    writer.close()
    assert await head_offset(session, url) == 300
    assert part_size(store, url) == 300
    assert (await patch(session, url, 300, b"t" * 700)).status == 204
    assert server.completed[0].sha256 == hashlib.sha256(b"s" * 300 + b"t" * 700).hexdigest()


async def test_a_stalled_checksummed_chunk_is_dropped(
    server: RunningTus, session: aiohttp.ClientSession, store: SignallingStore
) -> None:
    url = await create(session, server, 1000)
    headers: list[tuple[str, str | bytes]] = [
        ("Tus-Resumable", "1.0.0"),
        (STATION_HEADER, STATION),
        ("Upload-Offset", "0"),
        ("Content-Type", OCTET),
        ("Content-Length", "1000"),
        ("Upload-Checksum", checksum_header("sha1", b"s" * 1000)),
    ]
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(request_bytes("PATCH", url.removeprefix(server.origin), headers, b"s" * 300))
    await writer.drain()
    reply = await asyncio.wait_for(read_response(reader), 10)
    writer.close()
    assert reply.status == 408
    assert reply.headers["upload-offset"] == "0"
    assert part_size(store, url) == 0


async def test_a_vanished_client_leaves_a_resumable_upload(
    server: RunningTus, session: aiohttp.ClientSession, store: SignallingStore
) -> None:
    url = await create(session, server, 1000)
    headers: list[tuple[str, str | bytes]] = [
        ("Tus-Resumable", "1.0.0"),
        (STATION_HEADER, STATION),
        ("Upload-Offset", "0"),
        ("Content-Type", OCTET),
        ("Content-Length", "1000"),
    ]
    _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(request_bytes("PATCH", url.removeprefix(server.origin), headers, b"v" * 400))
    await writer.drain()
    await wait_event(store.began)
    writer.close()
    await writer.wait_closed()
    await wait_event(store.released)
    assert await head_offset(session, url) == 400
    assert (await patch(session, url, 400, b"w" * 600)).status == 204
    assert server.completed[0].sha256 == hashlib.sha256(b"v" * 400 + b"w" * 600).hexdigest()


async def test_a_cancelled_handler_keeps_what_arrived(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    # Applications may run aiohttp with handler_cancellation: a disconnect then cancels the handler.
    store = SignallingStore(tmp_path / "c", max_size_bytes=MAX_SIZE, expire_after_s=3600)
    async with running_tus(store, handler_cancellation=True) as server:
        url = await create(session, server, 1000)
        headers: list[tuple[str, str | bytes]] = [
            ("Tus-Resumable", "1.0.0"),
            (STATION_HEADER, STATION),
            ("Upload-Offset", "0"),
            ("Content-Type", OCTET),
            ("Content-Length", "1000"),
        ]
        _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request_bytes("PATCH", url.removeprefix(server.origin), headers, b"k" * 250))
        await writer.drain()
        await wait_event(store.began)
        writer.close()
        await writer.wait_closed()
        await wait_event(store.released)
        assert await head_offset(session, url) == 250
        assert part_size(store, url) == 250


async def test_a_second_writer_gets_409_while_the_first_streams(
    server: RunningTus, session: aiohttp.ClientSession, store: SignallingStore
) -> None:
    url = await create(session, server, 1000)
    headers: list[tuple[str, str | bytes]] = [
        ("Tus-Resumable", "1.0.0"),
        (STATION_HEADER, STATION),
        ("Upload-Offset", "0"),
        ("Content-Type", OCTET),
        ("Content-Length", "1000"),
    ]
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(request_bytes("PATCH", url.removeprefix(server.origin), headers, b"1" * 100))
    await writer.drain()
    await wait_event(store.began)
    second = await patch(session, url, 0, b"2" * 1000)
    assert second.status == 409
    assert second.error == "upload_busy"
    deleting = await call(session, "DELETE", url, tus_headers())
    assert deleting.status == 409
    writer.write(b"1" * 900)
    await writer.drain()
    reply = await asyncio.wait_for(read_response(reader), 10)
    writer.close()
    assert reply.status == 204
    assert store.complete_path(upload_id(url)).read_bytes() == b"1" * 1000


async def test_memory_stays_bounded_whatever_the_body_size(tmp_path: Path) -> None:
    size = 48 * 1024 * 1024
    store = TusUploadStore(tmp_path / "big", max_size_bytes=size, expire_after_s=3600)
    block = os.urandom(64 * 1024)
    expected = hashlib.sha256()
    for _ in range(size // len(block)):
        expected.update(block)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(size // len(block)):
            yield block

    async with running_tus(store) as server, aiohttp.ClientSession() as session:
        url = await create(session, server, size)
        tracemalloc.start()
        try:
            reply = await patch(session, url, 0, body())
            _current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert reply.status == 204
        assert peak < 8 * 1024 * 1024, f"peak {peak} bytes while streaming {size}"
        assert server.completed[0].sha256 == expected.hexdigest()


# -- expiration ------------------------------------------------------------------------------------------


async def test_expired_uploads_answer_410_then_are_purged(
    server: RunningTus, session: aiohttp.ClientSession, store: SignallingStore, clock: FakeClock
) -> None:
    stale = await create(session, server, 100)
    assert (await patch(session, stale, 0, b"x" * 10)).status == 204
    finished = await create(session, server, 3)
    assert (await patch(session, finished, 0, b"abc")).status == 204
    clock.now_s += 1800
    fresh = await create(session, server, 100)
    clock.now_s += 1801  # past the first upload's expiry, not the fresh one's
    assert (await call(session, "HEAD", stale, tus_headers())).status == 410
    reply = await patch(session, stale, 10, b"y")
    assert reply.status == 410
    assert reply.error == "expired"
    assert store.purge_expired() == 1
    assert (await call(session, "HEAD", stale, tus_headers())).status == 404
    assert not (store.root / f"{upload_id(stale)}.part").exists()
    assert await head_offset(session, fresh) == 0
    assert await head_offset(session, finished) == 3  # complete uploads wait for registration


async def test_the_purge_task_runs_with_the_application(tmp_path: Path, clock: FakeClock) -> None:
    store = SignallingStore(tmp_path / "u", max_size_bytes=100, expire_after_s=60, clock=clock)
    info = store.create("s", 10)
    clock.now_s += 61
    async with running_tus(store, purge_interval_s=3600):
        await wait_event(store.purged)
        assert store.get(info.upload_id) is None
    assert list(store.root.iterdir()) == []


# -- crash and restart -----------------------------------------------------------------------------------


async def _start_subprocess_server(root: Path, commit_every: int) -> tuple[asyncio.subprocess.Process, int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.central.tus_fixtures",
        str(root),
        "--commit-every",
        str(commit_every),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line.startswith(b"PORT "), line
    return proc, int(line.split()[1])


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGKILL)
    await proc.wait()


@pytest.fixture
async def processes() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    started: list[asyncio.subprocess.Process] = []
    yield started
    for proc in started:
        await _kill(proc)


async def test_kill_9_mid_upload_resumes_from_the_durable_offset(
    tmp_path: Path, processes: list[asyncio.subprocess.Process]
) -> None:
    mib = 1024 * 1024
    data = os.urandom(8 * mib)
    root = tmp_path / "uploads"
    proc, port = await _start_subprocess_server(root, commit_every=mib)
    processes.append(proc)
    origin = f"http://127.0.0.1:{port}"
    assert proc.stdout is not None
    async with aiohttp.ClientSession() as session:
        reply = await call(session, "POST", origin + BASE_PATH, tus_headers(Upload_Length=str(len(data))))
        path = reply.headers["Location"]
        first = data[: mib // 4]
        assert (
            await patch(session, origin + path, 0, first, Upload_Checksum=checksum_header("sha1", first))
        ).status == 204

    # An unchecksummed body, killed mid-stream once the server reports a commit beyond 2 MiB.
    headers: list[tuple[str, str | bytes]] = [
        ("Tus-Resumable", "1.0.0"),
        (STATION_HEADER, STATION),
        ("Upload-Offset", str(mib // 4)),
        ("Content-Type", OCTET),
        ("Content-Length", str(len(data) - mib // 4)),
    ]
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = mib // 4 + 3 * mib + mib // 2
    writer.write(request_bytes("PATCH", path, headers, data[mib // 4 : sent]))
    await writer.drain()
    committed = await _wait_for_log(proc, "committed offset ", 2 * mib)
    await _kill(proc)
    writer.close()

    proc, port = await _start_subprocess_server(root, commit_every=mib)
    processes.append(proc)
    origin = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        offset = await head_offset(session, origin + path)
        assert committed <= offset <= sent
        assert (root / f"{upload_id(path)}.part").stat().st_size == offset

        # A checksummed chunk killed half-way must leave nothing behind.
        chunk = data[offset : offset + 2 * mib]
        headers = [
            ("Tus-Resumable", "1.0.0"),
            (STATION_HEADER, STATION),
            ("Upload-Offset", str(offset)),
            ("Content-Type", OCTET),
            ("Content-Length", str(len(chunk))),
            ("Upload-Checksum", checksum_header("sha256", chunk)),
        ]
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request_bytes("PATCH", path, headers, chunk[: mib + mib // 2]))
        await writer.drain()
        await _wait_for_log(proc, "now at ", offset + mib)
    await _kill(proc)
    writer.close()

    proc, port = await _start_subprocess_server(root, commit_every=mib)
    processes.append(proc)
    origin = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        assert await head_offset(session, origin + path) == offset
        assert (root / f"{upload_id(path)}.part").stat().st_size == offset
        reply = await patch(session, origin + path, offset, data[offset:])
        assert reply.status == 204
        assert reply.headers["Upload-Offset"] == str(len(data))
    await _kill(proc)
    store = TusUploadStore(root, max_size_bytes=len(data), expire_after_s=3600)
    info = store.get(upload_id(path))
    assert info is not None and info.complete
    assert info.sha256 == hashlib.sha256(data).hexdigest()  # re-read after the restarts lost the hasher
    assert store.complete_path(upload_id(path)).read_bytes() == data


async def _wait_for_log(proc: asyncio.subprocess.Process, marker: str, at_least: int) -> int:
    """Read the server's store log until a line ``... <marker><offset> ...`` reports ``at_least``."""
    assert proc.stdout is not None
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line, "the server exited"
        if marker in line:
            value = int(line.split(marker)[1].split()[0])
            if value >= at_least:
                return value
