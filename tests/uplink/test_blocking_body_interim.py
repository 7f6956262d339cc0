"""The blocking body connections (edge/uplink/blocking_body.py) and what comes before and around the final
answer: interim (1xx) answers skipped within their bounds and the answer's deadline, an interim answer
during the body that does not stop it, a connection never kept after any doubt about where its answer
ended, and an absolute central name (trailing dot) written and checked as aiohttp does. The reviewer's
findings these guard are ``test_review13e_f1`` to ``_f5``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from edge.uplink.blocking_body import (
    MAX_ANSWER_HEAD_BYTES,
    MAX_INTERIM_ANSWERS,
    AnswerTooLarge,
    BlockingBodySender,
    TooManyInterimAnswers,
)
from tests.uplink.test_blocking_body import BIG, NO_CONTENT, Connection, Script, ScriptedServer, payload
from tests.uplink.test_review13e_f5_trailing_dot import absolute_names_resolve  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(120)

PROCESSING = b"HTTP/1.1 102 Processing\r\n\r\n"


@pytest.fixture
async def sender() -> AsyncIterator[BlockingBodySender]:
    async with BlockingBodySender(ssl_context=None, max_connections=2) as s:
        yield s


def answers_with(answer: bytes, *, pause_s: float = 0.0, interim: bytes = b"", times: int = 0) -> Script:
    """Reads each request whole, then sends ``interim`` ``times`` times (``pause_s`` apart) and ``answer``,
    keeping the connection."""

    async def script(connection: Connection) -> None:
        while True:
            head = await connection.read_head()
            await connection.read_body(head)
            for _ in range(times):
                await connection.answer(interim)
                await asyncio.sleep(pause_s)
            await connection.answer(answer)

    return script


# --------------------------------------------------------------------------------- interim answers


@pytest.mark.parametrize(
    "times", [MAX_INTERIM_ANSWERS, MAX_INTERIM_ANSWERS + 1], ids=["control-at-the-cap", "past-it"]
)
async def test_interim_answers_are_skipped_up_to_their_cap(sender: BlockingBodySender, times: int) -> None:
    async with ScriptedServer(answers_with(NO_CONTENT, interim=PROCESSING, times=times)) as server:
        if times > MAX_INTERIM_ANSWERS:
            with pytest.raises(TooManyInterimAnswers, match=f"more than {MAX_INTERIM_ANSWERS} interim"):
                await sender.send("PATCH", server.url(), {}, b"abc", timeout_s=30.0)
        else:
            answer = await sender.send("PATCH", server.url(), {}, b"abc", timeout_s=30.0)
            assert (answer.status, answer.headers.get("Upload-Offset")) == (204, "1")
        assert sender.threads_busy == 0


@pytest.mark.parametrize("hint_bytes", [1000, 40_000], ids=["control", "past-the-bound"])
async def test_the_head_bound_counts_the_interim_answers_too(
    sender: BlockingBodySender, hint_bytes: int
) -> None:
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: <" + b"a" * hint_bytes + b">; rel=preload\r\n\r\n"
    final = b"HTTP/1.1 204 No Content\r\nUpload-Offset: 1\r\nX-Pad: " + b"p" * 30_000 + b"\r\n\r\n"
    async with ScriptedServer(answers_with(final, interim=hints, times=1)) as server:
        if hint_bytes + 30_000 > MAX_ANSWER_HEAD_BYTES:
            with pytest.raises(AnswerTooLarge, match=f"larger than {MAX_ANSWER_HEAD_BYTES}"):
                await sender.send("PATCH", server.url(), {}, b"abc", timeout_s=30.0)
        else:
            assert (await sender.send("PATCH", server.url(), {}, b"abc", timeout_s=30.0)).status == 204


@pytest.mark.parametrize("pause_s", [0.0, 1.0], ids=["control", "slow-stream"])
async def test_interim_answers_do_not_extend_the_answer_deadline(
    sender: BlockingBodySender, pause_s: float
) -> None:
    """Ten 102s 1 s apart (fewer than the cap) take longer than the 3 s the answer has: the deadline
    counts from the body's end, whatever came in between."""
    script = answers_with(NO_CONTENT, interim=PROCESSING, times=10, pause_s=pause_s)
    async with ScriptedServer(script) as server:
        if pause_s:
            with pytest.raises(TimeoutError, match="no complete answer within 3 s"):
                await sender.send("PATCH", server.url(), {}, b"abc", timeout_s=3.0)
        else:
            assert (await sender.send("PATCH", server.url(), {}, b"abc", timeout_s=3.0)).status == 204
        assert sender.threads_busy == 0


@pytest.mark.parametrize("refuses", [False, True], ids=["control-reads-on", "refuses-after-it"])
async def test_only_a_final_answer_during_the_body_stops_it(
    sender: BlockingBodySender, refuses: bool
) -> None:
    """A 100 and a 102 before the body's end, the 102 split across two writes: the body goes on. A refusal
    after them stops it, and is the answer."""

    async def script(connection: Connection) -> None:
        head = await connection.read_head()
        await connection.answer(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 10")
        await asyncio.sleep(0.2)
        await connection.answer(b"2 Processing\r\n\r\n")
        if refuses:
            await connection.answer(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n"
                                    b"Connection: close\r\n\r\nbig!")
            # Reads on (discarding), as servers that answer early do: the thread learns of the answer
            # between two pieces (one blocked on full socket buffers waits for the stall deadline).
            await connection.read_to_end()
            return
        await connection.read_body(head)
        await connection.answer(NO_CONTENT)
        await connection.read_to_end()

    async with ScriptedServer(script) as server:
        counted: list[int] = []
        answer = await sender.send("PATCH", server.url(), {}, payload(BIG), timeout_s=60.0,
                                   count_sent=counted.append)
        if refuses:
            assert (answer.status, answer.body) == (413, b"big!") and counted[0] < BIG
        else:
            assert answer.status == 204 and counted[0] == BIG and server.connections[0].body_bytes == BIG


# -------------------------------------------------------------------------------------- keep-alive


OK_2 = b"HTTP/1.1 200 OK\r\n"
CHUNKED_OK = b"2\r\nok\r\n0\r\n\r\n"
DOUBTS = {
    "second-connection-header-closes":
        b"HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
    "close-among-tokens": b"HTTP/1.1 204 No Content\r\nConnection: x-trace, Close\r\n\r\n",
    "two-lengths": OK_2 + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    "length-and-chunked": OK_2 + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED_OK,
    "encoding-not-chunked": OK_2 + b"Transfer-Encoding: gzip\r\nContent-Length: 2\r\n\r\nok",
    "two-encodings": OK_2 + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED_OK,
    "http-1.0-keep-alive": b"HTTP/1.0 204 No Content\r\nConnection: keep-alive\r\n\r\n",
    "switching-protocols": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: tus\r\nConnection: upgrade\r\n\r\n",
    "bytes-after-the-answer": NO_CONTENT + b"HTTP/1.1 204 No Content\r\n\r\n",
}
CLEAR = {
    "no-content": NO_CONTENT,
    "length": OK_2 + b"Content-Length: 2\r\n\r\nok",
    "chunked": OK_2 + b"Transfer-Encoding: Chunked\r\n\r\n" + CHUNKED_OK,
    "after-interim-answers": PROCESSING + b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + NO_CONTENT,
}


@pytest.mark.parametrize(
    ("answer", "kept"),
    [(raw, False) for raw in DOUBTS.values()] + [(raw, True) for raw in CLEAR.values()],
    ids=[f"doubt-{name}" for name in DOUBTS] + [f"control-{name}" for name in CLEAR],
)
async def test_a_connection_is_kept_only_when_its_answer_ended_without_doubt(
    sender: BlockingBodySender, answer: bytes, kept: bool
) -> None:
    async with ScriptedServer(answers_with(answer)) as server:
        await sender.send("PATCH", server.url(), {}, b"abc", timeout_s=30.0)
        await server.accepted.wait()
        # Let bytes sent after the answer arrive before the next request looks at the idle connection.
        await asyncio.sleep(0.2)
        await sender.send("PATCH", server.url(), {}, b"abc", timeout_s=30.0)
        assert len(server.connections) == (1 if kept else 2)


# --------------------------------------------------------------------------------- absolute names


@pytest.mark.usefixtures("absolute_names_resolve")
@pytest.mark.parametrize("host", ["localhost", "localhost."], ids=["control", "absolute-name"])
async def test_the_host_header_of_an_absolute_name_is_written_as_aiohttp_writes_it(
    sender: BlockingBodySender, host: str
) -> None:
    async with ScriptedServer(answers_with(NO_CONTENT)) as server:
        await sender.send("PATCH", server.url(host), {}, b"abc", timeout_s=30.0)
        assert server.connections[0].heads[0]["host"] == f"localhost:{server.port}"
