"""The blocking body connections (edge/uplink/blocking_body.py) against scripted servers on real sockets,
plain and with real mutual TLS: cancellation mid-body, stalls, keep-alive, early and hostile answers, the
rate limit. Their use by the tus client against the central's real tus server and hostile tus servers is
``test_tus_client_blocking.py``; by the station's uplink against a real central, the uplink's tests.
"""

from __future__ import annotations

import asyncio
import http.client
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from edge.pki.names import SERVER_OU
from edge.pki.tls import client_ssl_context, server_ssl_context
from edge.uplink.blocking_body import (
    MAX_ANSWER_HEAD_BYTES,
    PIECE_BYTES,
    AnswerTooLarge,
    BlockingBodySender,
    TruncatedAnswer,
)
from edge.uplink.policy import RateLimiter
from edge.uplink.tus_answer import MAX_ANSWER_BODY_BYTES
from edge.uplink.tus_client import ServerRejected, TusClient, UploadInterrupted
from tests.mqtt.broker import TestPki

pytestmark = pytest.mark.timeout(120)

STATION = "station-7"
BIG = 48 << 20  # more than the socket buffers of both ends can swallow
NO_CONTENT = b"HTTP/1.1 204 No Content\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 1\r\n\r\n"

Script = Callable[["Connection"], Awaitable[None]]


# ------------------------------------------------------------------------------------------ plumbing


@dataclass
class Connection:
    """One accepted connection of a :class:`ScriptedServer`: its streams and what it received."""

    number: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    heads: list[dict[str, str]] = field(default_factory=list)
    body_bytes: int = 0

    async def read_head(self) -> dict[str, str]:
        """The next request's line and headers (``:line`` is the request line, names in lower case)."""
        raw = await self.reader.readuntil(b"\r\n\r\n")
        line, *lines = raw.decode("ascii").split("\r\n")
        head = {":line": line}
        for header in lines:
            if header:
                name, _, value = header.partition(":")
                head[name.strip().lower()] = value.strip()
        self.heads.append(head)
        return head

    async def read_body(self, head: dict[str, str]) -> None:
        remaining = int(head["content-length"])
        while remaining:
            part = await self.reader.read(min(remaining, 1 << 20))
            if not part:
                raise ConnectionError("the client closed before the body's end")
            remaining -= len(part)
            self.body_bytes += len(part)

    async def read_to_end(self) -> str:
        """Read until the client's side ends: 'eof' or 'reset'."""
        try:
            while part := await self.reader.read(1 << 20):
                self.body_bytes += len(part)
        except (ConnectionError, ssl.SSLError):
            return "reset"
        return "eof"

    async def answer(self, raw: bytes) -> None:
        self.writer.write(raw)
        await self.writer.drain()


class ScriptedServer:
    """A TCP (or TLS) server on 127.0.0.1 running ``script`` for each connection it accepts."""

    def __init__(self, script: Script, *, tls: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.tls = tls
        self.connections: list[Connection] = []
        self.accepted = asyncio.Event()
        self.errors: list[BaseException] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def url(self, host: str = "127.0.0.1", path: str = "/v1/uploads/u1") -> str:
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}{path}"

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, ssl=self.tls)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for connection in self.connections:
            connection.writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = Connection(len(self.connections) + 1, reader, writer)
        self.connections.append(connection)
        self.accepted.set()
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.script(connection)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # the client went away: what it sent is recorded
        except asyncio.CancelledError:
            pass  # the server is stopping (asyncio's stream callback reports a cancelled task as an error)
        except Exception as exc:  # a broken script must fail the test, not vanish
            self.errors.append(exc)
        finally:
            self._tasks.discard(task)
            writer.transport.abort()


async def answers_every_request(connection: Connection) -> None:
    """A well-behaved server: reads each request whole and answers 204, keeping the connection."""
    while True:
        head = await connection.read_head()
        await connection.read_body(head)
        await connection.answer(NO_CONTENT)


@pytest.fixture
async def sender() -> AsyncIterator[BlockingBodySender]:
    async with BlockingBodySender(ssl_context=None, max_connections=4) as s:
        yield s


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return TestPki.create(tmp_path_factory.mktemp("pki"))


def tls_server_context(pki: TestPki, *, hosts: list[str] | None = None) -> ssl.SSLContext:
    """The central's kind of server context (a client certificate asked for, verified against the CA),
    with a certificate naming ``hosts`` (default: localhost and 127.0.0.1)."""
    if hosts is None:
        cert, key = pki.server()
    else:
        cert, key = pki.root / "other.crt", pki.root / "other.key"
        cert_pem, key_pem = pki._leaf("other", SERVER_OU, ExtendedKeyUsageOID.SERVER_AUTH, hosts)
        cert.write_bytes(cert_pem)
        key.write_bytes(key_pem)
        key.chmod(0o600)
    return server_ssl_context(cert, key, pki.ca_file)


def payload(size: int) -> bytearray:
    return bytearray((i * 7) & 0xFF for i in range(256)) * (size // 256) + bytearray(size % 256)


async def send(
    sender: BlockingBodySender,
    url: str,
    body: bytes | bytearray,
    *,
    timeout_s: float = 30.0,
    **kwargs: object,
) -> tuple[int, list[int]]:
    """(the status, [body bytes counted]) of one PATCH."""
    counted: list[int] = []
    answer = await sender.send(
        "PATCH", url, {"Tus-Resumable": "1.0.0", "X-Edge-Station": STATION}, body,
        timeout_s=timeout_s, count_sent=counted.append, **kwargs,  # type: ignore[arg-type]
    )
    return answer.status, counted


# ------------------------------------------------------------------------------------------- TLS


async def test_mutual_tls_with_the_given_context_and_the_servers_name_checked(
    pki: TestPki, tmp_path: Path
) -> None:
    peers: list[object] = []

    async def record_peer(connection: Connection) -> None:
        peers.append(connection.writer.get_extra_info("peercert"))
        await answers_every_request(connection)

    client_context = client_ssl_context(pki.client(STATION))
    async with (
        ScriptedServer(record_peer, tls=tls_server_context(pki)) as server,
        BlockingBodySender(ssl_context=client_context, max_connections=2) as sender,
    ):
        status, counted = await send(sender, server.url(), payload(PIECE_BYTES * 2 + 5))
        assert status == 204 and counted == [PIECE_BYTES * 2 + 5]
        assert server.connections[0].body_bytes == PIECE_BYTES * 2 + 5
        # The station's certificate was presented, and the central's verified (by name, too: localhost).
        subject = dict(pair[0] for pair in peers[0]["subject"])  # type: ignore[index]
        assert subject["commonName"] == STATION
        status, _ = await send(sender, server.url("localhost"), b"x")
        assert status == 204

    # Controls: a server whose certificate names another host, and one from another CA, are refused.
    misnamed = tls_server_context(pki, hosts=["elsewhere.example"])
    async with (
        ScriptedServer(answers_every_request, tls=misnamed) as other,
        BlockingBodySender(ssl_context=client_context, max_connections=2) as sender,
    ):
        with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
            await send(sender, other.url(), b"x")
        assert other.connections == []  # the handshake never completed: nothing was sent
    stranger = TestPki.create(tmp_path / "stranger")
    async with (
        ScriptedServer(answers_every_request, tls=tls_server_context(stranger)) as foreign,
        BlockingBodySender(ssl_context=client_context, max_connections=2) as sender,
    ):
        with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
            await send(sender, foreign.url(), b"x")
        assert foreign.connections == []


async def test_an_https_url_without_a_tls_context_is_refused(sender: BlockingBodySender) -> None:
    with pytest.raises(ValueError, match="TLS context"):
        await send(sender, "https://127.0.0.1:1/v1/uploads/x", b"x")


async def test_headers_sent_are_the_callers_with_host_and_length_set_here(sender: BlockingBodySender) -> None:
    async with ScriptedServer(answers_every_request) as server:
        answer = await sender.send(
            "PATCH", server.url(), {"Upload-Offset": "0", "Content-Length": "999", "Host": "evil.example"},
            b"abc", timeout_s=30.0,
        )
        assert answer.status == 204 and answer.headers.get("upload-offset") == "1"
        head = server.connections[0].heads[0]
        assert head[":line"] == "PATCH /v1/uploads/u1 HTTP/1.1"
        assert head["host"] == f"127.0.0.1:{server.port}" and head["content-length"] == "3"
        assert head["upload-offset"] == "0"
        for bad in ({"X-Bad": "a\r\nInjected: 1"}, {"Bad Name": "x"}):
            with pytest.raises(ValueError, match="HTTP"):
                await sender.send("PATCH", server.url(), bad, b"abc", timeout_s=30.0)
        assert len(server.connections[0].heads) == 1  # nothing of the refused requests went out


# -------------------------------------------------------------------------------------- keep-alive


async def test_keep_alive_reuses_one_connection_for_consecutive_requests(sender: BlockingBodySender) -> None:
    async with ScriptedServer(answers_every_request) as server:
        for _ in range(3):
            status, _ = await send(sender, server.url(), payload(PIECE_BYTES + 1))
            assert status == 204
        assert len(server.connections) == 1 and sender.connections_made == 1
        assert len(server.connections[0].heads) == 3


@pytest.mark.parametrize("how", ["connection-close", "closed-after-answer", "spoke-while-idle"])
async def test_a_connection_the_server_ended_is_not_reused(sender: BlockingBodySender, how: str) -> None:
    async def then_ends(connection: Connection) -> None:
        head = await connection.read_head()
        await connection.read_body(head)
        if how == "connection-close":
            await connection.answer(NO_CONTENT.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
            await connection.read_to_end()  # the client closes it
        elif how == "closed-after-answer":
            await connection.answer(NO_CONTENT)
            connection.writer.close()  # an idle timeout on the server
        else:
            await connection.answer(NO_CONTENT + b"HTTP/1.1 200 OK\r\n\r\n")  # an answer nobody asked for
            await connection.read_to_end()

    async with ScriptedServer(then_ends) as server:
        assert (await send(sender, server.url(), b"first"))[0] == 204
        if how == "closed-after-answer":
            await server.connections[0].writer.wait_closed()
        assert (await send(sender, server.url(), b"second"))[0] == 204
        assert len(server.connections) == 2 and sender.connections_made == 2


# ----------------------------------------------------------------------------------- cancellation


async def stops_reading(connection: Connection, after: int, stopped: asyncio.Event, resume: asyncio.Event,
                        ended: asyncio.Future[str], head: dict[str, str] | None = None) -> None:
    """Reads ``after`` bytes of the body, sets ``stopped``, reads nothing more until ``resume``, then
    reads to the end of the connection and says how it ended."""
    if head is None:
        head = await connection.read_head()
    assert int(head["content-length"]) > after
    connection.body_bytes += len(await connection.reader.readexactly(after))
    stopped.set()
    await resume.wait()
    ended.set_result(await connection.read_to_end())


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_cancelling_mid_body_stops_the_thread_and_closes_the_socket(pki: TestPki, tls: bool) -> None:
    stopped, resume = asyncio.Event(), asyncio.Event()
    ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    server_context = tls_server_context(pki) if tls else None
    client_context = client_ssl_context(pki.client(STATION)) if tls else None
    async def script(connection: Connection) -> None:
        await stops_reading(connection, 100_000, stopped, resume, ended)

    async with (
        ScriptedServer(script, tls=server_context) as server,
        BlockingBodySender(ssl_context=client_context, max_connections=2) as sender,
    ):
        counted: list[int] = []
        body = payload(BIG)
        request = asyncio.create_task(sender.send(
            "PATCH", server.url(), {}, body, timeout_s=600.0, count_sent=counted.append
        ))
        await stopped.wait()
        assert not request.done()
        request.cancel()
        # Well before the 600 s stall deadline: the cancellation, not a timeout, ended it.
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(request, 60)
        assert sender.threads_busy == 0, "the worker thread was still in the exchange"
        resume.set()
        # The server reads what was in flight, then the end of the connection: nothing can follow.
        assert await asyncio.wait_for(ended, 60) in ("eof", "reset")
        received = server.connections[0].body_bytes
        assert 100_000 <= received < BIG
        assert 0 < counted[0] < BIG and received <= counted[0]
        assert server.errors == []


async def test_cancelling_while_waiting_for_bandwidth_gives_the_share_back(
    sender: BlockingBodySender,
) -> None:
    loop = asyncio.get_running_loop()
    limiter = RateLimiter(PIECE_BYTES / 600, clock=loop.time, burst_bytes=PIECE_BYTES)  # a piece per 10 min
    paced: list[int] = []
    second_piece_waits = asyncio.Event()

    async def pace(n: int) -> None:
        paced.append(n)
        if len(paced) == 2:
            second_piece_waits.set()
        await limiter.acquire(n)

    ended: asyncio.Future[str] = loop.create_future()

    async def reads_what_comes(connection: Connection) -> None:
        await connection.read_head()
        ended.set_result(await connection.read_to_end())

    async with ScriptedServer(reads_what_comes) as server:
        request = asyncio.create_task(sender.send(
            "PATCH", server.url(), {}, payload(PIECE_BYTES * 4), timeout_s=600.0, pace=pace
        ))
        await second_piece_waits.wait()  # the first piece went at once (the burst), the second waits
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(request, 60)
        assert sender.threads_busy == 0
        assert await asyncio.wait_for(ended, 60) in ("eof", "reset")
        assert server.connections[0].body_bytes == PIECE_BYTES  # only the first piece
        # The waiting piece's share went back to the bucket: a piece now waits for one piece's time (600 s),
        # not two (1200 s: the cancelled share kept).
        assert limiter.reserve(PIECE_BYTES) <= 601.0


async def test_cancelling_an_upload_of_the_tus_client_aborts_its_body(tmp_path: Path) -> None:
    stopped, resume = asyncio.Event(), asyncio.Event()
    ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_patch(connection: Connection, head: dict[str, str]) -> None:
        await stops_reading(connection, 100_000, stopped, resume, ended, head)

    path = tmp_path / "item.bin"
    path.write_bytes(payload(BIG))
    async with (
        ScriptedServer(tus_server(on_patch)) as server,
        aiohttp.ClientSession() as session,
        BlockingBodySender(ssl_context=None, max_connections=1) as bodies,
    ):
        client = TusClient(session, server.url(path="/v1/uploads"), chunk_size_bytes=BIG, bodies=bodies,
                           creation_with_upload=False, request_timeout_s=600.0)
        upload = asyncio.create_task(client.upload(None, path, BIG, {}))
        await stopped.wait()
        upload.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(upload, 60)
        assert bodies.threads_busy == 0
        resume.set()
        assert await asyncio.wait_for(ended, 60) in ("eof", "reset")


def tus_server(on_patch: Callable[[Connection, dict[str, str]], Awaitable[None]]) -> Script:
    """Creates upload ``a1`` on each POST (aiohttp's connection); a PATCH (a blocking connection) goes
    to ``on_patch``."""
    created = (b"HTTP/1.1 201 Created\r\nTus-Resumable: 1.0.0\r\nLocation: /v1/uploads/a1\r\n"
               b"Content-Length: 0\r\n\r\n")

    async def script(connection: Connection) -> None:
        while True:
            head = await connection.read_head()
            if not head[":line"].startswith("POST "):
                await on_patch(connection, head)
                return
            await connection.answer(created)

    return script


# ---------------------------------------------------------------------------------------- deadlines


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_a_body_the_server_stops_reading_times_out(pki: TestPki, tls: bool) -> None:
    stopped, resume = asyncio.Event(), asyncio.Event()
    ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    server_context = tls_server_context(pki) if tls else None
    client_context = client_ssl_context(pki.client(STATION)) if tls else None
    async def script(connection: Connection) -> None:
        await stops_reading(connection, 1000, stopped, resume, ended)

    async with (
        ScriptedServer(script, tls=server_context) as server,
        BlockingBodySender(ssl_context=client_context, max_connections=1) as sender,
    ):
        counted: list[int] = []
        with pytest.raises(TimeoutError):
            await sender.send(
                "PATCH", server.url(), {}, payload(BIG), timeout_s=1.0, count_sent=counted.append
            )
        assert 0 < counted[0] < BIG and sender.threads_busy == 0
        resume.set()
        assert await asyncio.wait_for(ended, 60) in ("eof", "reset")


async def test_a_slow_body_that_keeps_moving_is_not_a_stall(sender: BlockingBodySender) -> None:
    """The control of the stall: a server reading at most 256 KiB every 50 ms takes longer than the timeout
    for the whole body, and never leaves the client without progress for that long. (The kernel wakes a
    blocked writer only once the receiver drained a good part of the socket buffers, a few MiB on
    loopback, so the pace must not be too slow for the timeout.)"""
    loop = asyncio.get_running_loop()
    times: list[float] = []

    async def reads_slowly(connection: Connection) -> None:
        head = await connection.read_head()
        remaining = int(head["content-length"])
        times.append(loop.time())
        while remaining:
            part = await connection.reader.read(min(remaining, PIECE_BYTES))
            remaining -= len(part)
            await asyncio.sleep(0.05)
        times.append(loop.time())
        await connection.answer(NO_CONTENT)

    async with ScriptedServer(reads_slowly) as server:
        size = 24 << 20
        status, counted = await send(sender, server.url(), payload(size), timeout_s=2.0)
        assert status == 204 and counted == [size]
        assert times[1] - times[0] > 2.0  # the premise: the body took longer than the timeout


async def test_an_answer_dripping_past_its_deadline_times_out(sender: BlockingBodySender) -> None:
    async def drips(connection: Connection) -> None:
        head = await connection.read_head()
        await connection.read_body(head)
        await connection.answer(b"HTTP/1.1 204 No Content\r\n")
        while True:  # a header line a byte at a time: every read of the client gets something
            await connection.answer(b"X")
            await asyncio.sleep(0.1)

    async with ScriptedServer(drips) as server:
        with pytest.raises(TimeoutError, match="no complete answer within 1 s"):
            await send(sender, server.url(), b"abc", timeout_s=1.0)
        assert sender.threads_busy == 0
    # Control: the same answer given whole in time.
    async with ScriptedServer(answers_every_request) as server:
        assert (await send(sender, server.url(), b"abc", timeout_s=1.0))[0] == 204


async def test_connecting_to_nothing_fails_at_once(sender: BlockingBodySender) -> None:
    async with ScriptedServer(answers_every_request) as server:
        url = server.url()
    with pytest.raises(ConnectionRefusedError):
        await send(sender, url, b"abc")


# ------------------------------------------------------------------------------------ early answers


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_an_answer_before_the_bodys_end_is_read_and_the_body_stopped(pki: TestPki, tls: bool) -> None:
    """A refusal sent before the body was read (the server will not read it): taken at once, not after a
    stall. With TLS 1.3 the session tickets, also waiting to be read, are no answer."""

    async def refuses_at_once(connection: Connection) -> None:
        await connection.read_head()
        await connection.answer(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n"
                                b"Connection: close\r\n\r\nbig!")
        await asyncio.Event().wait()  # neither reads nor closes

    server_context = tls_server_context(pki) if tls else None
    client_context = client_ssl_context(pki.client(STATION)) if tls else None
    async with (
        ScriptedServer(refuses_at_once, tls=server_context) as server,
        BlockingBodySender(ssl_context=client_context, max_connections=1) as sender,
    ):
        counted: list[int] = []
        answer = await sender.send("PATCH", server.url(), {}, payload(BIG), timeout_s=600.0,
                                   count_sent=counted.append)
        assert answer.status == 413 and answer.body == b"big!"
        assert counted[0] < BIG


# ----------------------------------------------------------------------------------- hostile answers


def hostile(answer: bytes, *, then_endless: bytes = b"") -> Script:
    async def script(connection: Connection) -> None:
        head = await connection.read_head()
        await connection.read_body(head)
        await connection.answer(answer)
        while then_endless:
            await connection.answer(then_endless)

    return script


@pytest.mark.parametrize(
    ("answer", "error", "said"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", http.client.BadStatusLine, "SSH-2.0"),
        (b"HTTP/1.1 2000 Odd\r\n\r\n", http.client.BadStatusLine, "2000"),
        (b"HTTP/1.1 204 No Content\r\nX-Huge: " + b"a" * 70_000 + b"\r\n\r\n", http.client.LineTooLong,
         "header line"),
        (b"HTTP/1.1 204 No Content\r\n" + b"X-Many: 1\r\n" * 101 + b"\r\n", http.client.HTTPException,
         "more than 100 headers"),
        (b"HTTP/1.1 204 No Content\r\n" + (b"X-Big: " + b"b" * 1000 + b"\r\n") * 70 + b"\r\n", AnswerTooLarge,
         f"larger than {MAX_ANSWER_HEAD_BYTES}"),
        (b"", http.client.RemoteDisconnected, "closed connection without response"),
        (b"HTTP/1.1 204 No Content\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 12", TruncatedAnswer,
         "ended inside the answer's headers"),
    ],
    ids=["not-http", "bad-status", "huge-header", "too-many-headers", "headers-too-large", "nothing",
         "truncated"],
)
async def test_hostile_answers_are_clear_errors(
    sender: BlockingBodySender, answer: bytes, error: type[Exception], said: str
) -> None:
    async with ScriptedServer(hostile(answer)) as server:
        with pytest.raises(error, match=said):
            await send(sender, server.url(), b"abc")
        assert sender.threads_busy == 0
        # Control: the same server well-behaved, through the same sender.
    async with ScriptedServer(answers_every_request) as server:
        assert (await send(sender, server.url(), b"abc"))[0] == 204


@pytest.mark.parametrize("framing", ["length", "chunked", "until-close"])
async def test_an_endless_body_is_read_to_a_bound_and_costs_the_connection(
    sender: BlockingBodySender, framing: str
) -> None:
    head = {
        "length": b"Content-Length: 1099511627776\r\n",
        "chunked": b"Transfer-Encoding: chunked\r\n",
        "until-close": b"",
    }[framing]
    endless = b"4000\r\n" + b"z" * 0x4000 + b"\r\n" if framing == "chunked" else b"z" * 0x4000
    answer = b"HTTP/1.1 403 Forbidden\r\n" + head + b"\r\n"
    async with ScriptedServer(hostile(answer, then_endless=endless)) as server:
        got = await sender.send("PATCH", server.url(), {}, b"abc", timeout_s=30.0)
        assert got.status == 403 and got.body == b"z" * MAX_ANSWER_BODY_BYTES
        # Not kept: the next request needs a connection of its own.
        await sender.send("PATCH", server.url(), {}, b"abc", timeout_s=30.0)
        assert len(server.connections) == 2


async def test_hostile_answers_to_the_tus_client_are_interruptions_or_refusals(tmp_path: Path) -> None:
    path = tmp_path / "item.bin"
    path.write_bytes(b"evidence")

    def tus(patch_answer: bytes, *, then_endless: bytes = b"") -> Script:
        async def on_patch(connection: Connection, head: dict[str, str]) -> None:
            await connection.read_body(head)
            await connection.answer(patch_answer)
            while then_endless:
                await connection.answer(then_endless)

        return tus_server(on_patch)

    async def upload(script: Script) -> None:
        async with (
            ScriptedServer(script) as server,
            aiohttp.ClientSession() as session,
            BlockingBodySender(ssl_context=None, max_connections=1) as bodies,
        ):
            client = TusClient(session, server.url(path="/v1/uploads"), bodies=bodies,
                               creation_with_upload=False, request_timeout_s=30.0)
            await client.upload(None, path, 8, {})

    with pytest.raises(UploadInterrupted, match=r"PATCH upload a1 interrupted: BadStatusLine: .*SSH") as info:
        await upload(tus(b"SSH-2.0-OpenSSH_9.2\r\n\r\n"))
    assert info.value.url is not None and info.value.url.endswith("/v1/uploads/a1")
    with pytest.raises(UploadInterrupted, match="PATCH upload a1 interrupted: LineTooLong"):
        await upload(tus(b"HTTP/1.1 204 No Content\r\nX-Huge: " + b"a" * 70_000 + b"\r\n\r\n"))
    with pytest.raises(ServerRejected) as refused:
        await upload(tus(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 1099511627776\r\n\r\n",
                         then_endless=b"\x1b[31m" * 4096))
    assert refused.value.status == 403 and len(refused.value.body) <= 300 and "\x1b" not in refused.value.body
    # Control: the same exchange answered well completes the upload.
    await upload(tus(b"HTTP/1.1 204 No Content\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 8\r\n\r\n"))


# ------------------------------------------------------------------------------------------ the rate


async def test_the_rate_limit_holds_over_the_blocking_connections(sender: BlockingBodySender) -> None:
    """Measured where the bytes arrive: never faster than the limit (plus its burst). A loaded machine
    only makes it slower, so the bound holds whatever the load."""
    loop = asyncio.get_running_loop()
    rate = 1 << 20  # 1 MiB/s
    limiter = RateLimiter(rate, clock=loop.time, burst_bytes=PIECE_BYTES)
    arrivals: list[tuple[float, int]] = []

    async def records_arrivals(connection: Connection) -> None:
        head = await connection.read_head()
        remaining = int(head["content-length"])
        while remaining:
            part = await connection.reader.read(min(remaining, 1 << 20))
            remaining -= len(part)
            arrivals.append((loop.time(), len(part)))
        await connection.answer(NO_CONTENT)

    size = 3 << 20
    started = loop.time()
    async with ScriptedServer(records_arrivals) as server:
        status, counted = await send(sender, server.url(), payload(size), pace=limiter.acquire)
    assert status == 204 and counted == [size]
    elapsed = arrivals[-1][0] - started
    # (size - burst) / rate = 2.75 s at the least; allow the clock's granularity.
    assert elapsed >= (size - PIECE_BYTES) / rate * 0.95, elapsed
    for moment, _ in arrivals:  # at every moment, no more than the burst plus the rate's worth
        arrived = sum(n for t, n in arrivals if t <= moment)
        assert arrived <= PIECE_BYTES + (moment - started) * rate * 1.05 + PIECE_BYTES, (moment, arrived)


async def test_a_closed_sender_takes_no_more_requests() -> None:
    sender = BlockingBodySender(ssl_context=None, max_connections=1)
    await sender.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await sender.send("PATCH", "http://127.0.0.1:1/x", {}, b"", timeout_s=1.0)
    with pytest.raises(ValueError, match="max_connections"):
        BlockingBodySender(ssl_context=None, max_connections=0)
