"""Review of issue 13 (blocking body sender), finding 1, MEDIUM: an interim 1xx answer other than
100 (102 Processing, 103 Early Hints: a proxy's) is taken for the final answer of a PATCH or a
creation-with-upload POST. http.client skips only 100; aiohttp (every other request of the tus client,
and the bodies before issue 13) skips every 1xx, as RFC 9110 15.2 requires. Through the tus client the
PATCH fails as ServerRejected 103, which the transport turns into a Refused (code http_103)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from edge.uplink.blocking_body import BlockingBodySender
from edge.uplink.tus_client import TusClient
from tests.uplink.test_blocking_body import NO_CONTENT, Connection, Script, ScriptedServer, tus_server

pytestmark = pytest.mark.timeout(120)

INFORMATIONAL = {
    102: b"HTTP/1.1 102 Processing\r\n\r\n",
    103: b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
}


@pytest.fixture
async def sender() -> AsyncIterator[BlockingBodySender]:
    async with BlockingBodySender(ssl_context=None, max_connections=2) as s:
        yield s


def informational_then(final: bytes, status: int | None) -> Script:
    """Reads each request whole, then answers an interim 1xx (``status``; none when None) and ``final``."""

    async def script(connection: Connection) -> None:
        while True:
            head = await connection.read_head()
            await connection.read_body(head)
            await connection.answer((INFORMATIONAL[status] if status else b"") + final)

    return script


@pytest.mark.parametrize("status", [None, 102, 103], ids=["control", "102", "103"])
async def test_an_interim_1xx_answer_is_skipped_like_aiohttp_does(
    sender: BlockingBodySender, status: int | None
) -> None:
    async with ScriptedServer(informational_then(NO_CONTENT, status)) as server:
        # The aiohttp path, against the same server, skips it.
        async with aiohttp.ClientSession() as session, session.patch(server.url(), data=b"abc") as resp:
            assert resp.status == 204 and resp.headers["Upload-Offset"] == "1"
        answer = await sender.send("PATCH", server.url(), {}, b"abc", timeout_s=30.0)
        assert (answer.status, answer.headers.get("Upload-Offset")) == (204, "1")


@pytest.mark.parametrize("bodies", [False, True], ids=["aiohttp-control", "blocking"])
async def test_an_upload_answered_with_early_hints_completes(tmp_path: Path, bodies: bool) -> None:
    path = tmp_path / "item.bin"
    path.write_bytes(b"evidence")

    async def on_patch(connection: Connection, head: dict[str, str]) -> None:
        await connection.read_body(head)
        final = b"HTTP/1.1 204 No Content\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 8\r\n\r\n"
        await connection.answer(INFORMATIONAL[103] + final)

    async with (
        ScriptedServer(tus_server(on_patch)) as server,
        aiohttp.ClientSession() as session,
        BlockingBodySender(ssl_context=None, max_connections=1) as sender,
    ):
        client = TusClient(session, server.url(path="/v1/uploads"), bodies=sender if bodies else None,
                           creation_with_upload=False, request_timeout_s=30.0)
        result = await client.upload(None, path, 8, {})
        assert result.bytes_sent == 8
