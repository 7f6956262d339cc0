"""Review of issue 13 (blocking body sender), finding 2, MEDIUM (response desync, same root as finding
1): after a 102 taken for the final answer the connection is kept (nothing more had arrived yet), and the
next request on it reads the first request's late final answer (its Upload-Offset) as its own; every
later answer on that connection is one request behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from edge.uplink.blocking_body import BlockingBodySender
from tests.uplink.test_blocking_body import Connection, Script, ScriptedServer
from tests.uplink.test_review13e_f1_interim_1xx import INFORMATIONAL

pytestmark = pytest.mark.timeout(120)

OFFSET_1 = b"HTTP/1.1 204 No Content\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 1\r\n\r\n"
OFFSET_2 = b"HTTP/1.1 204 No Content\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 2\r\n\r\n"


@pytest.fixture
async def sender() -> AsyncIterator[BlockingBodySender]:
    async with BlockingBodySender(ssl_context=None, max_connections=2) as s:
        yield s


def interim_then_late_final(status: int | None) -> Script:
    """The first request: an interim answer at once, its final answer (offset 1) 3 s later. The second
    request on the same connection: offset 2."""

    async def script(connection: Connection) -> None:
        head = await connection.read_head()
        await connection.read_body(head)
        if status is not None:
            await connection.answer(INFORMATIONAL[status])
            await asyncio.sleep(3.0)
        await connection.answer(OFFSET_1)
        head = await connection.read_head()
        await connection.read_body(head)
        await connection.answer(OFFSET_2)
        await connection.read_to_end()

    return script


@pytest.mark.parametrize("status", [None, 102], ids=["control", "interim-102"])
async def test_each_request_gets_its_own_answer_on_a_kept_connection(
    sender: BlockingBodySender, status: int | None
) -> None:
    async with ScriptedServer(interim_then_late_final(status)) as server:
        first = await sender.send("PATCH", server.url(), {}, b"a", timeout_s=30.0)
        second = await sender.send("PATCH", server.url(), {}, b"b", timeout_s=30.0)
        got = [(a.status, a.headers.get("Upload-Offset")) for a in (first, second)]
        assert got == [(204, "1"), (204, "2")]
