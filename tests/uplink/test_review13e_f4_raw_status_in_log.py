"""Review of issue 13 (blocking body sender), finding 4, LOW: http.client's BadStatusLine carries the
status line as received, and the tus client's DEBUG line of an interruption (``_interrupted``) logs the
reason unsanitised: a hostile central's or proxy's terminal escapes go raw into the journal. aiohttp's
parser errors quote the bytes, so the aiohttp path never did this. (The exception's own message is
sanitised.)"""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import pytest

from edge.uplink.blocking_body import BlockingBodySender
from edge.uplink.tus_client import TusClient, UploadInterrupted
from tests.uplink.test_blocking_body import Connection, ScriptedServer, tus_server

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("bodies", [False, True], ids=["aiohttp-control", "blocking"])
async def test_a_hostile_status_line_is_not_logged_raw(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, bodies: bool
) -> None:
    path = tmp_path / "item.bin"
    path.write_bytes(b"evidence")

    async def on_patch(connection: Connection, head: dict[str, str]) -> None:
        await connection.read_body(head)
        await connection.answer(b"HTTP/1.1 \x1b[2J\x1b]0;owned\x07 OK\r\n\r\n")

    caplog.set_level(logging.DEBUG, logger="edge.uplink.tus_client")
    async with (
        ScriptedServer(tus_server(on_patch)) as server,
        aiohttp.ClientSession() as session,
        BlockingBodySender(ssl_context=None, max_connections=1) as sender,
    ):
        client = TusClient(session, server.url(path="/v1/uploads"), bodies=sender if bodies else None,
                           creation_with_upload=False, request_timeout_s=30.0)
        with pytest.raises(UploadInterrupted) as info:
            await client.upload(None, path, 8, {})
    assert "\x1b" not in str(info.value)
    logged = [r.getMessage() for r in caplog.records if "interrupted" in r.getMessage()]
    assert logged, "the interruption was logged"
    assert not any("\x1b" in line or "\x07" in line for line in logged), logged
