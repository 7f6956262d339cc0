"""Review of issue 13 (blocking body sender), finding 3, MEDIUM: a 100 Continue sent during the body
(allowed without Expect; RFC 9110 15.2: a client MUST parse and skip it) is taken for an early answer:
the body stops, the server waits for the rest, the client waits for an answer until the answer deadline.
An interruption, retried the same way for ever: behind such an intermediary no chunk larger than the
socket buffers ever arrives. aiohttp sends the whole body past it."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import aiohttp
import pytest

from edge.uplink.blocking_body import BlockingBodySender
from tests.uplink.test_blocking_body import BIG, NO_CONTENT, Connection, Script, ScriptedServer, payload

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def sender() -> AsyncIterator[BlockingBodySender]:
    async with BlockingBodySender(ssl_context=None, max_connections=2) as s:
        yield s


def continue_then_reads(send_continue: bool) -> Script:
    async def script(connection: Connection) -> None:
        while True:
            head = await connection.read_head()
            if send_continue:
                await connection.answer(b"HTTP/1.1 100 Continue\r\n\r\n")
            await connection.read_body(head)
            await connection.answer(NO_CONTENT)

    return script


@pytest.mark.parametrize("send_continue", [False, True], ids=["control", "unsolicited-100"])
async def test_a_100_continue_during_the_body_is_no_early_answer(
    sender: BlockingBodySender, send_continue: bool
) -> None:
    async with ScriptedServer(continue_then_reads(send_continue)) as server:
        answer = await sender.send("PATCH", server.url(), {}, payload(BIG), timeout_s=10.0)
        assert answer.status == 204 and server.connections[0].body_bytes == BIG


async def test_control_aiohttp_sends_the_whole_body_past_a_100_continue() -> None:
    async with (
        ScriptedServer(continue_then_reads(True)) as server,
        aiohttp.ClientSession() as session,
        session.patch(server.url(), data=io.BytesIO(payload(BIG))) as resp,
    ):
        assert resp.status == 204 and server.connections[0].body_bytes == BIG
