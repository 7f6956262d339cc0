"""The station's tus client against the central's real tus server, real sockets and hostile servers.

Faults are injected on the wire: a TCP proxy between client and server cuts a PATCH in the middle of
its body (while the server is stopped) or flips one byte of a chunk once; small aiohttp servers answer
with malformed or impossible tus headers. No test sleeps: waits are on events, except where a
timeout itself is under test.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from edge.central import tus as central_tus
from edge.central.tus import add_tus_routes
from edge.central.tus_store import TusUploadStore
from edge.uplink import tus_client
from edge.uplink.central_api import CentralApi
from edge.uplink.policy import RateLimiter
from edge.uplink.tus_client import (
    PREFIX_SHA256,
    ChecksumRejected,
    ContentMismatch,
    LocalFileError,
    ProtocolViolation,
    ServerRejected,
    TusClient,
    UploadGone,
    UploadInterrupted,
    encode_metadata,
)
from edge.uplink.tus_transport import TusLink

CHUNK = 64 * 1024
STATION = "station-7"
BASE_PATH = "/v1/uploads"

pytestmark = pytest.mark.timeout(60)


# ------------------------------------------------------------------------------------------ plumbing


@dataclass
class Served:
    runner: web.AppRunner
    port: int

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        await self.runner.cleanup()


async def serve(app: web.Application, port: int = 0) -> Served:
    # Short shutdown: a stopped central must not wait a minute for a half-sent PATCH.
    runner = web.AppRunner(app, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    return Served(runner, int(runner.addresses[0][1]))


async def identify(request: web.Request) -> str:
    station = request.headers.get("X-Edge-Station")
    if not station:
        raise web.HTTPUnauthorized(text="no station")
    return station


def central_app(store: TusUploadStore) -> web.Application:
    app = web.Application()
    add_tus_routes(app, store, base_path=BASE_PATH, identify=identify, chunk_timeout_s=5.0)
    return app


@pytest.fixture
def store(tmp_path: Path) -> TusUploadStore:
    return TusUploadStore(tmp_path / "uploads", max_size_bytes=64 << 20, expire_after_s=3600)


@pytest.fixture
async def central(store: TusUploadStore) -> AsyncIterator[Served]:
    served = await serve(central_app(store))
    yield served
    await served.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def make_client(session: aiohttp.ClientSession, origin: str, **kwargs: object) -> TusClient:
    options: dict[str, object] = {
        "chunk_size_bytes": CHUNK,
        "request_timeout_s": 10.0,
        "headers": {"X-Edge-Station": STATION},
    }
    options.update(kwargs)
    return TusClient(session, origin + BASE_PATH, **options)  # type: ignore[arg-type]


def evidence(tmp_path: Path, size: int, *, seed: int = 1, tail: bytes = b"") -> tuple[Path, bytes]:
    """A file of ``size`` seeded random bytes, optionally followed by bytes that must not be uploaded
    (the stored evidence file's trailing uuid box)."""
    data = random.Random(seed).randbytes(size)
    path = tmp_path / f"item-{size}-{seed}.bin"
    path.write_bytes(data + tail)
    return path, data


def upload_id(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def stored(store: TusUploadStore, url: str) -> bytes:
    return store.complete_path(upload_id(url)).read_bytes()


class TcpProxy:
    """A TCP proxy on a real socket between the client and the central, with wire faults:

    - ``corrupt(marker)``: flip the first byte of the next occurrence of ``marker`` in the client's
      stream, once (markers are taken from the file content, so the flipped byte is in a body);
    - ``cut_after(n)``: once ``n`` bytes from the client went through, stop forwarding, set
      ``cut_reached`` and wait for ``release()``, then reset every connection.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.client_bytes = 0
        self.corrupted = 0
        self.cut_reached = asyncio.Event()
        self._marker: bytes | None = None
        self._cut_at: int | None = None
        self._released = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def corrupt(self, marker: bytes) -> None:
        self._marker = marker

    def cut_after(self, n: int) -> None:
        self._cut_at = n
        self.cut_reached.clear()
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        self._abort_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def _abort_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self._writers.add(client_w)
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.transport.abort()
            self._writers.discard(client_w)
            return
        self._writers.add(server_w)
        for coro in (self._upstream(client_r, server_w), self._downstream(server_r, client_w)):
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _upstream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tail = b""
        try:
            while data := await reader.read(65536):
                if self._cut_at is not None and self.client_bytes + len(data) >= self._cut_at:
                    keep = self._cut_at - self.client_bytes
                    writer.write(data[:keep])
                    self.client_bytes += keep
                    self._cut_at = None
                    self.cut_reached.set()
                    await self._released.wait()
                    self._abort_all()
                    return
                if self._marker is not None:
                    window = tail + data
                    at = window.find(self._marker)
                    if at >= 0:
                        # The marker may begin in bytes already forwarded: flip its first byte in this read.
                        i = max(at, len(tail)) - len(tail)
                        data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
                        self._marker = None
                        self.corrupted += 1
                    else:
                        tail = window[-(len(self._marker) - 1) :]
                self.client_bytes += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _downstream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def proxy(central: Served) -> AsyncIterator[TcpProxy]:
    p = TcpProxy(central.port)
    await p.start()
    yield p
    await p.close()


# ------------------------------------------------------------------------------ against the central


@pytest.mark.parametrize("creation_with_upload", [True, False], ids=["with-upload", "plain-create"])
@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, CHUNK * 7 // 2])
async def test_full_upload_stores_exactly_the_content(
    tmp_path: Path,
    central: Served,
    store: TusUploadStore,
    session: aiohttp.ClientSession,
    size: int,
    creation_with_upload: bool,
) -> None:
    path, data = evidence(tmp_path, size, tail=b"uuid-box-not-uploaded")
    client = make_client(session, central.origin, creation_with_upload=creation_with_upload)
    offsets: list[int] = []
    created: list[str] = []
    metadata = {"item": "it-1", "sha256": hashlib.sha256(data).hexdigest(), "filename": "录像 1.mp4"}

    result = await client.upload(
        None, path, size, metadata, progress=offsets.append, on_created=created.append
    )

    assert result.url.startswith(central.origin + BASE_PATH + "/")
    assert created == [result.url]
    assert result.created and result.resumed_from == 0 and result.length == size
    assert result.bytes_sent == size and result.checksum_retries == 0
    assert stored(store, result.url) == data
    info = store.get(upload_id(result.url))
    assert info is not None and info.complete
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert info.metadata == metadata
    assert info.station == STATION
    assert offsets[-1] == size and offsets == sorted(offsets)
    assert await client.offset(result.url) == size


async def test_each_byte_is_read_from_disk_once(
    tmp_path: Path,
    central: Served,
    store: TusUploadStore,
    session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    size = CHUNK * 5 + 123
    path, data = evidence(tmp_path, size)
    reads: list[tuple[int, int]] = []
    real = tus_client._read_chunk

    def counting(
        p: Path, offset: int, n: int, algorithm: str | None, before: object, into: memoryview,
        recorded: bytes | None,
    ) -> tus_client._Chunk:
        reads.append((offset, n))
        return real(p, offset, n, algorithm, before, into, recorded)

    monkeypatch.setattr(tus_client, "_read_chunk", counting)
    result = await make_client(session, central.origin).upload(None, path, size, {})
    assert stored(store, result.url) == data
    assert sorted(reads) == [(o, min(CHUNK, size - o)) for o in range(0, size, CHUNK)]


async def test_create_then_upload_resumes_at_zero_and_offset_reads_the_server(
    tmp_path: Path, central: Served, store: TusUploadStore, session: aiohttp.ClientSession
) -> None:
    path, data = evidence(tmp_path, CHUNK * 2)
    client = make_client(session, central.origin)
    url = await client.create(len(data), {"item": "x"})
    assert await client.offset(url) == 0
    result = await client.upload(url, path, len(data), {"item": "x"})
    assert result.url == url and not result.created and result.resumed_from == 0
    assert stored(store, url) == data


@pytest.mark.parametrize("checksum", ["sha256", PREFIX_SHA256])
async def test_resume_after_the_central_is_killed_mid_patch(
    tmp_path: Path, store: TusUploadStore, session: aiohttp.ClientSession, checksum: str
) -> None:
    """With sha256-prefix both sides lose their hasher here: the restarted central rebuilds its own from
    the committed bytes, the client hashes the bytes before the resume offset once."""
    size = CHUNK * 6 + 500
    path, data = evidence(tmp_path, size, seed=5)
    first = await serve(central_app(store))
    proxy = TcpProxy(first.port)
    await proxy.start()
    try:
        client = make_client(session, proxy.origin, creation_with_upload=False, checksum=checksum)
        created: list[str] = []
        # Cut inside the body of the fourth chunk: three chunks are confirmed, the fourth is half sent.
        proxy.cut_after(CHUNK * 3 + CHUNK // 2 + 4096)
        attempt = asyncio.create_task(
            client.upload(None, path, size, {"item": "k"}, on_created=created.append)
        )
        await proxy.cut_reached.wait()
        await first.stop()  # the central dies with a PATCH half received
        proxy.release()
        with pytest.raises(UploadInterrupted) as info:
            await attempt
        assert info.value.url == created[0]

        # A new process: a fresh store object over the same directory.
        restarted = TusUploadStore(store.root, max_size_bytes=64 << 20, expire_after_s=3600)
        second = await serve(central_app(restarted))
        proxy.target_port = second.port
        try:
            url = created[0]
            offset_at_restart = await client.offset(url)
            # Three chunks were confirmed; the half-received fourth failed its checksum and was discarded.
            assert offset_at_restart == CHUNK * 3
            result = await client.upload(url, path, size, {"item": "k"})
        finally:
            await second.stop()
    finally:
        await proxy.close()

    assert result.url == url and not result.created
    assert result.resumed_from == offset_at_restart > 0
    assert result.bytes_sent == size - offset_at_restart  # nothing sent twice
    assert stored(restarted, url) == data


async def test_resume_right_after_a_network_drop(
    tmp_path: Path, proxy: TcpProxy, store: TusUploadStore, session: aiohttp.ClientSession
) -> None:
    """The link drops mid-PATCH while the central stays up; the next attempt may find the upload still
    held by the server's dying request (409 busy) and must then end as an interruption to retry."""
    size = CHUNK * 5
    path, data = evidence(tmp_path, size, seed=6)
    client = make_client(session, proxy.origin, creation_with_upload=False)
    created: list[str] = []
    proxy.cut_after(CHUNK * 2 + CHUNK // 3)
    attempt = asyncio.create_task(client.upload(None, path, size, {}, on_created=created.append))
    await proxy.cut_reached.wait()
    proxy.release()
    with pytest.raises(UploadInterrupted) as info:
        await attempt
    assert info.value.url == created[0] and info.value.offset == CHUNK * 2
    url = created[0]
    result = None
    for _ in range(50):
        try:
            result = await client.upload(url, path, size, {})
            break
        except UploadInterrupted as exc:
            assert exc.status == 409  # busy, never anything else
            await asyncio.sleep(0.02)  # the caller's backoff, shortened
    assert result is not None
    assert result.resumed_from == CHUNK * 2
    # Nothing the server stored is sent again. A PATCH the server refused as busy (409: the dying request
    # still held the upload after HEAD answered) was on the wire and is sent again, whole, after a HEAD.
    resent = result.bytes_sent - (size - CHUNK * 2)
    assert resent in range(0, CHUNK * (client.max_conflicts + 1), CHUNK), result
    assert stored(store, url) == data


@pytest.mark.parametrize("checksum", ["sha256", PREFIX_SHA256])
async def test_corrupted_chunk_is_refused_with_460_and_sent_again(
    tmp_path: Path, proxy: TcpProxy, store: TusUploadStore, session: aiohttp.ClientSession, checksum: str
) -> None:
    size = CHUNK * 3
    path, data = evidence(tmp_path, size, seed=9)
    proxy.corrupt(data[CHUNK + 1000 : CHUNK + 1032])  # a byte inside the second chunk's body
    client = make_client(session, proxy.origin, checksum=checksum)
    result = await client.upload(None, path, size, {})
    assert proxy.corrupted == 1
    assert result.checksum_retries == 1
    assert result.bytes_sent == size + CHUNK  # the refused chunk went twice, nothing else
    assert stored(store, result.url) == data


async def test_a_stored_copy_that_no_longer_gives_its_hash_is_never_completed(
    tmp_path: Path, central: Served, store: TusUploadStore, session: aiohttp.ClientSession
) -> None:
    size = CHUNK * 3 + 100
    path, data = evidence(tmp_path, size, seed=11)
    sealed = hashlib.sha256(data).hexdigest()
    client = make_client(session, central.origin, checksum=PREFIX_SHA256)
    rotten = bytearray(data)
    rotten[CHUNK + 7] ^= 0x01  # the stored copy rotted after it was sealed
    path.write_bytes(bytes(rotten))
    created: list[str] = []
    with pytest.raises(ContentMismatch) as caught:
        await client.upload(None, path, size, {}, on_created=created.append, expected_sha256=sealed)
    assert caught.value.found == hashlib.sha256(rotten).hexdigest() and caught.value.url == created[0]
    assert caught.value.refused_at is None  # found hashing it as it was sent, no chunk refused
    # The last chunk never went, and the upload was terminated: the central holds nothing of it.
    assert store.get(upload_id(created[0])) is None and list(store.root.glob("*.part")) == []
    # Control: the intact copy goes through with the same check.
    path.write_bytes(data)
    result = await client.upload(None, path, size, {}, expected_sha256=sealed)
    assert stored(store, result.url) == data


async def test_a_central_holding_other_bytes_before_the_chunk_gets_a_new_upload(
    tmp_path: Path, proxy: TcpProxy, store: TusUploadStore, session: aiohttp.ClientSession
) -> None:
    """An upload begun from a copy that was repaired since (re-acquired from its recorder): the central's
    bytes before the resume offset are not the copy's, so every prefix digest is refused; the client
    starts a new upload instead of retrying for ever."""
    size = CHUNK * 4
    path, data = evidence(tmp_path, size, seed=12)
    damaged = bytearray(data)
    damaged[100] ^= 0x01
    path.write_bytes(bytes(damaged))
    client = make_client(session, proxy.origin, creation_with_upload=False, checksum=PREFIX_SHA256)
    created: list[str] = []
    proxy.cut_after(CHUNK * 2 + CHUNK // 2)
    attempt = asyncio.create_task(client.upload(None, path, size, {}, on_created=created.append))
    await proxy.cut_reached.wait()
    proxy.release()
    with pytest.raises(UploadInterrupted):
        await attempt
    path.write_bytes(data)  # repaired
    result = None
    for _ in range(50):
        try:
            result = await client.upload(created[0], path, size, {}, on_created=created.append)
            break
        except UploadInterrupted as exc:
            assert exc.status == 409  # the dying request still holds the upload: retry
            await asyncio.sleep(0.02)
    assert result is not None and result.created and result.checksum_retries == client.checksum_attempts
    assert result.url == created[-1] != created[0]
    assert stored(store, result.url) == data
    assert store.get(upload_id(created[0])) is None, "the upload holding other bytes was terminated"


@pytest.mark.parametrize("creation_with_upload", [True, False])
async def test_a_central_of_an_earlier_release_gets_per_chunk_sha256_from_the_next_attempt(
    tmp_path: Path,
    central: Served,
    store: TusUploadStore,
    session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    creation_with_upload: bool,
) -> None:
    """A central that does not know sha256-prefix refuses it as the previous release did (400 naming
    Upload-Checksum); the station must not be stuck: it falls back to per-chunk sha256, and its link
    then says it no longer checks the stored copy on the send pass, so the core checks it first."""
    monkeypatch.setattr(central_tus, "PREFIX_SHA256", "not-known-to-this-release")
    size = CHUNK * 2 + 10
    path, data = evidence(tmp_path, size, seed=13)
    client = make_client(
        session, central.origin, checksum=PREFIX_SHA256, creation_with_upload=creation_with_upload
    )
    link = TusLink(client, CentralApi(session, central.origin, STATION))
    assert link.checks_content_on_send
    created: list[str] = []
    with pytest.raises(UploadInterrupted, match="sha256-prefix"):
        await client.upload(None, path, size, {}, on_created=created.append,
                            expected_sha256=hashlib.sha256(data).hexdigest())
    assert client.checksum == "sha256" and not link.checks_content_on_send
    # The next attempt (resuming the upload when the refused request had created one) goes through.
    result = await client.upload(created[0] if created else None, path, size, {})
    assert stored(store, result.url) == data
    # Control: a central that knows it is never sent anything else.
    monkeypatch.undo()
    other = make_client(session, central.origin, checksum=PREFIX_SHA256)
    again = await other.upload(None, path, size, {}, expected_sha256=hashlib.sha256(data).hexdigest())
    assert other.checksum == PREFIX_SHA256 and stored(store, again.url) == data


async def test_corrupted_first_chunk_of_a_creation_with_upload(
    tmp_path: Path, proxy: TcpProxy, store: TusUploadStore, session: aiohttp.ClientSession
) -> None:
    size = CHUNK * 2
    path, data = evidence(tmp_path, size, seed=10)
    proxy.corrupt(data[500:532])
    result = await make_client(session, proxy.origin).upload(None, path, size, {})
    assert proxy.corrupted == 1
    assert result.checksum_retries == 1 and result.bytes_sent == size + CHUNK
    assert stored(store, result.url) == data
    # The server named the upload it made with the refused POST; the client went on with it, no orphan.
    assert [p.name for p in store.root.glob("*.part")] == [upload_id(result.url) + ".part"]


async def test_refused_first_chunk_without_location_creates_a_plain_upload(
    tmp_path: Path, hostile: tuple[HostileCentral, Served], session: aiohttp.ClientSession
) -> None:
    fake, served = hostile
    path, data = evidence(tmp_path, CHUNK + 10)
    refused = False

    async def refuse_first_body(request: web.Request) -> web.StreamResponse:
        nonlocal refused
        body = await request.read()
        if body and not refused:
            refused = True
            return web.Response(status=460, headers={"Tus-Resumable": "1.0.0"})
        return await fake.default_post(request)

    fake.post = refuse_first_body
    result = await make_client(session, served.origin).upload(None, path, len(data), {})
    assert bytes(fake.uploads[upload_id(result.url)].data) == data
    assert [m for m, _, _ in fake.requests] == ["POST", "POST", "PATCH", "PATCH"]
    assert result.checksum_retries == 1


async def test_unknown_upload_on_head_creates_a_new_one(
    tmp_path: Path, central: Served, store: TusUploadStore, session: aiohttp.ClientSession
) -> None:
    path, data = evidence(tmp_path, CHUNK + 7)
    client = make_client(session, central.origin)
    stale = central.origin + BASE_PATH + "/" + "0" * 32
    with pytest.raises(UploadGone):
        await client.offset(stale)
    created: list[str] = []
    result = await client.upload(stale, path, len(data), {}, on_created=created.append)
    assert result.created and result.url != stale and created == [result.url]
    assert result.resumed_from == 0 and result.bytes_sent == len(data)
    assert stored(store, result.url) == data


async def test_terminated_upload_is_gone_and_replaced(
    tmp_path: Path, central: Served, store: TusUploadStore, session: aiohttp.ClientSession
) -> None:
    path, data = evidence(tmp_path, CHUNK * 2)
    client = make_client(session, central.origin)
    url = await client.create(len(data), {})
    await client.terminate(url)
    await client.terminate(url)  # already gone: done
    with pytest.raises(UploadGone):
        await client.offset(url)
    result = await client.upload(url, path, len(data), {})
    assert result.created and result.url != url
    assert stored(store, result.url) == data


async def test_another_station_cannot_see_the_upload(
    tmp_path: Path, central: Served, session: aiohttp.ClientSession
) -> None:
    client = make_client(session, central.origin)
    url = await client.create(10, {})
    other = make_client(session, central.origin, headers={"X-Edge-Station": "station-8"})
    with pytest.raises(UploadGone):
        await other.offset(url)


async def test_oversized_upload_is_rejected_with_the_servers_reason(
    tmp_path: Path, central: Served, session: aiohttp.ClientSession
) -> None:
    client = make_client(session, central.origin)
    with pytest.raises(ServerRejected) as info:
        await client.create(65 << 20, {})
    assert info.value.status == 413
    assert info.value.detail and len(info.value.detail) <= 300
    assert "413" in str(info.value)


async def test_missing_station_identity_is_rejected(central: Served, session: aiohttp.ClientSession) -> None:
    client = make_client(session, central.origin, headers={})
    with pytest.raises(ServerRejected) as info:
        await client.create(10, {})
    assert info.value.status == 401


async def test_only_the_first_length_bytes_are_uploaded_and_a_short_file_is_refused(
    tmp_path: Path, central: Served, store: TusUploadStore, session: aiohttp.ClientSession
) -> None:
    path, data = evidence(tmp_path, 1000, tail=b"\x00" * 50)
    client = make_client(session, central.origin)
    result = await client.upload(None, path, 1000, {})
    assert stored(store, result.url) == data
    with pytest.raises(LocalFileError, match="expected at least 2000 bytes"):
        await client.upload(None, path, 2000, {})
    with pytest.raises(LocalFileError):
        await client.upload(None, tmp_path / "missing.bin", 1, {})


async def test_rate_limiter_paces_every_body_byte(
    tmp_path: Path, central: Served, store: TusUploadStore, session: aiohttp.ClientSession
) -> None:
    wakes: list[float] = []
    clock_now = [0.0]

    async def recording_sleep(seconds: float) -> None:
        wakes.append(clock_now[0] + seconds)  # fake time: nothing actually waits

    rate = 100_000.0
    limiter = RateLimiter(rate, clock=lambda: clock_now[0], burst_bytes=16 * 1024, sleep=recording_sleep)
    size = CHUNK * 3 + 10
    path, data = evidence(tmp_path, size)
    result = await make_client(session, central.origin, limiter=limiter).upload(None, path, size, {})
    assert stored(store, result.url) == data
    # Every body byte went through the bucket: the last piece was scheduled at (size - burst) / rate.
    assert max(wakes) == pytest.approx((size - 16 * 1024) / rate)


async def test_connection_refused_is_an_interruption(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    served = await serve(web.Application())
    origin = served.origin
    await served.stop()
    client = make_client(session, origin)
    path, _ = evidence(tmp_path, 10)
    with pytest.raises(UploadInterrupted) as info:
        await client.upload(None, path, 10, {})
    assert info.value.url is None and info.value.status is None
    url = origin + BASE_PATH + "/" + "a" * 32
    with pytest.raises(UploadInterrupted) as info2:
        await client.upload(url, path, 10, {})
    assert info2.value.url == url


# ------------------------------------------------------------------------------------- hostile servers


@dataclass
class FakeUpload:
    length: int
    data: bytearray = field(default_factory=bytearray)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HostileCentral:
    """A minimal in-memory tus server whose answers each test bends: ``head``/``patch``/``post``
    replace one endpoint. By default it behaves (no checksum verification)."""

    def __init__(self) -> None:
        self.uploads: dict[str, FakeUpload] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.head: Handler | None = None
        self.patch: Handler | None = None
        self.post: Handler | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("POST", BASE_PATH, self._post)
        app.router.add_route("HEAD", BASE_PATH + "/{id}", self._head)
        app.router.add_route("PATCH", BASE_PATH + "/{id}", self._patch)
        return app

    async def _record(self, request: web.Request) -> None:
        self.requests.append((request.method, request.path, dict(request.headers)))

    async def _post(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        if self.post is not None:
            return await self.post(request)
        return await self.default_post(request)

    async def default_post(self, request: web.Request) -> web.StreamResponse:
        upload = FakeUpload(int(request.headers["Upload-Length"]))
        upload.data += await request.read()
        name = f"{len(self.uploads):032x}"
        self.uploads[name] = upload
        headers = {"Tus-Resumable": "1.0.0", "Location": f"{BASE_PATH}/{name}"}
        if request.headers.get("Content-Type") == tus_client.OFFSET_CONTENT_TYPE:
            headers["Upload-Offset"] = str(len(upload.data))
        return web.Response(status=201, headers=headers)

    async def _head(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        if self.head is not None:
            return await self.head(request)
        upload = self.uploads[request.match_info["id"]]
        return web.Response(
            status=200,
            headers={
                "Tus-Resumable": "1.0.0",
                "Upload-Offset": str(len(upload.data)),
                "Upload-Length": str(upload.length),
            },
        )

    async def _patch(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        if self.patch is not None:
            return await self.patch(request)
        upload = self.uploads[request.match_info["id"]]
        upload.data += await request.read()
        return web.Response(
            status=204, headers={"Tus-Resumable": "1.0.0", "Upload-Offset": str(len(upload.data))}
        )


@pytest.fixture
async def hostile() -> AsyncIterator[tuple[HostileCentral, Served]]:
    fake = HostileCentral()
    served = await serve(fake.app())
    yield fake, served
    await served.stop()


def answer(status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        with contextlib.suppress(Exception):
            await request.read()
        return web.Response(status=status, headers=headers or {}, body=body)

    return handler


async def test_the_well_behaved_fake_accepts_an_upload(
    tmp_path: Path, hostile: tuple[HostileCentral, Served], session: aiohttp.ClientSession
) -> None:
    fake, served = hostile
    path, data = evidence(tmp_path, CHUNK * 2 + 3)
    result = await make_client(session, served.origin).upload(None, path, len(data), {"item": "a"})
    assert bytes(fake.uploads[upload_id(result.url)].data) == data
    methods = [m for m, _, _ in fake.requests]
    assert methods == ["POST", "PATCH", "PATCH"]
    for _method, _path, headers in fake.requests:
        assert headers["Tus-Resumable"] == "1.0.0"
        assert headers["X-Edge-Station"] == STATION
    patch_headers = fake.requests[1][2]
    assert patch_headers["Content-Type"] == "application/offset+octet-stream"
    assert patch_headers["Upload-Offset"] == str(CHUNK)
    assert patch_headers["Content-Length"] == str(CHUNK)
    expected = hashlib.sha256(data[CHUNK : 2 * CHUNK]).digest()
    assert patch_headers["Upload-Checksum"] == "sha256 " + base64.b64encode(expected).decode()
    assert fake.requests[0][2]["Upload-Metadata"] == "item " + base64.b64encode(b"a").decode()


async def test_user_headers_cannot_override_tus_headers(
    tmp_path: Path, hostile: tuple[HostileCentral, Served], session: aiohttp.ClientSession
) -> None:
    fake, served = hostile
    client = make_client(
        session, served.origin, headers={"Tus-Resumable": "0.2.2", "X-Edge-Station": STATION}
    )
    await client.create(5, {})
    assert fake.requests[0][2]["Tus-Resumable"] == "1.0.0"
    assert "secret" not in repr(make_client(session, served.origin, headers={"Authorization": "secret"}))


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Tus-Resumable": "1.0.0"}, "expected one Upload-Offset header, found 0"),
        ({"Tus-Resumable": "1.0.0", "Upload-Offset": "abc"}, "decimal byte count, found 'abc'"),
        ({"Tus-Resumable": "1.0.0", "Upload-Offset": "-1"}, "decimal byte count, found '-1'"),
        ({"Tus-Resumable": "1.0.0", "Upload-Offset": "1e3"}, "decimal byte count"),
        ({"Tus-Resumable": "1.0.0", "Upload-Offset": "+5"}, "decimal byte count"),
        ({"Tus-Resumable": "1.0.0", "Upload-Offset": "٣"}, "decimal byte count"),  # Arabic-Indic digit
        ({"Tus-Resumable": "1.0.0", "Upload-Offset": "9" * 5000}, "decimal byte count, found '9999"),
        ({"Tus-Resumable": "1.0.0", "Upload-Offset": "101"}, "within 0..100, found 101"),
        (
            {"Tus-Resumable": "1.0.0", "Upload-Offset": "5", "Upload-Length": "99"},
            "Upload-Length 99, expected 100",
        ),
        (
            {"Tus-Resumable": "1.0.0", "Upload-Offset": "5", "Upload-Length": "x"},
            "Upload-Length as a decimal",
        ),
        (
            {"Tus-Resumable": "0.2.2", "Upload-Offset": "5"},
            "expected Tus-Resumable: 1.0.0 in the answer, found '0.2.2'",
        ),
        ({"Upload-Offset": "5"}, "expected Tus-Resumable: 1.0.0 in the answer, found nothing"),
    ],
)
async def test_malformed_head_answers_are_protocol_violations(
    tmp_path: Path,
    hostile: tuple[HostileCentral, Served],
    session: aiohttp.ClientSession,
    headers: dict[str, str],
    expected: str,
) -> None:
    fake, served = hostile
    fake.head = answer(200, headers)
    path, _ = evidence(tmp_path, 100)
    url = served.origin + BASE_PATH + "/" + "1" * 32
    with pytest.raises(ProtocolViolation) as info:
        await make_client(session, served.origin).upload(url, path, 100, {})
    assert expected in str(info.value)
    assert info.value.url == url
    assert len(str(info.value)) < 400


async def test_duplicate_upload_offset_headers_are_a_violation(
    tmp_path: Path, hostile: tuple[HostileCentral, Served], session: aiohttp.ClientSession
) -> None:
    fake, served = hostile

    async def twice(request: web.Request) -> web.StreamResponse:
        resp = web.Response(status=200, headers={"Tus-Resumable": "1.0.0"})
        resp.headers.add("Upload-Offset", "0")
        resp.headers.add("Upload-Offset", "50")
        return resp

    fake.head = twice
    with pytest.raises(ProtocolViolation, match="one Upload-Offset header, found 2"):
        await make_client(session, served.origin).offset(served.origin + BASE_PATH + "/" + "2" * 32)


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        (None, "one Location header in the 201 answer, found 0"),
        ("http://evil.example/v1/uploads/x", "on the central's origin"),
        ("//evil.example/v1/uploads/x", "on the central's origin"),
        ("https://127.0.0.1:{port}/v1/uploads/x", "on the central's origin"),
        ("http://127.0.0.1:1/v1/uploads/x", "on the central's origin"),
        ("http://user:pw@127.0.0.1:{port}/v1/uploads/x", "on the central's origin"),
        ("ftp://127.0.0.1:{port}/x", "on the central's origin"),
        ("/v1/uploads/" + "a" * 3000, "expected a URL in Location"),
        ("/v1/uploads/a b", "expected a URL in Location"),
        ("/v1/uploads/\u00e9", "expected a URL in Location"),
        ("/v1/uploads", "the creation endpoint itself"),
    ],
)
async def test_bad_locations_are_refused(
    hostile: tuple[HostileCentral, Served],
    session: aiohttp.ClientSession,
    location: str | None,
    expected: str,
) -> None:
    fake, served = hostile

    async def created(request: web.Request) -> web.StreamResponse:
        resp = web.Response(status=201, headers={"Tus-Resumable": "1.0.0"})
        if location is not None:
            # Set raw, past aiohttp's own header checks, as a hostile server would.
            resp.headers["Location"] = location.replace("{port}", str(served.port))
        return resp

    fake.post = created
    with pytest.raises(ProtocolViolation) as info:
        await make_client(session, served.origin).create(10, {})
    assert expected in str(info.value)


async def test_relative_location_becomes_an_absolute_url_on_the_same_origin(
    hostile: tuple[HostileCentral, Served], session: aiohttp.ClientSession
) -> None:
    fake, served = hostile
    fake.post = answer(201, {"Tus-Resumable": "1.0.0", "Location": "abc"})
    assert await make_client(session, served.origin).create(10, {}) == served.origin + "/v1/abc"


@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        (str(CHUNK + 1), f"within 0..{CHUNK}, found {CHUNK + 1}"),  # more than was sent
        ("0", "confirmed none of the"),
    ],
)
async def test_impossible_patch_offsets_are_violations(
    tmp_path: Path,
    hostile: tuple[HostileCentral, Served],
    session: aiohttp.ClientSession,
    offset: str,
    expected: str,
) -> None:
    fake, served = hostile
    fake.patch = answer(204, {"Tus-Resumable": "1.0.0", "Upload-Offset": offset})
    path, _ = evidence(tmp_path, CHUNK * 2)
    client = make_client(session, served.origin, creation_with_upload=False)
    with pytest.raises(ProtocolViolation) as info:
        await client.upload(None, path, CHUNK * 2, {})
    assert expected in str(info.value)
    assert info.value.url is not None and info.value.url.startswith(served.origin)


async def test_patch_offset_going_backwards_is_a_violation(
    tmp_path: Path, hostile: tuple[HostileCentral, Served], session: aiohttp.ClientSession
) -> None:
    fake, served = hostile
    path, _ = evidence(tmp_path, CHUNK * 3)
    calls = 0

    async def patch(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        await request.read()
        start = int(request.headers["Upload-Offset"])
        new = start + CHUNK if calls == 1 else start - 1
        return web.Response(status=204, headers={"Tus-Resumable": "1.0.0", "Upload-Offset": str(new)})

    fake.patch = patch
    with pytest.raises(ProtocolViolation, match=f"within {CHUNK}..{2 * CHUNK}, found {CHUNK - 1}"):
        await make_client(session, served.origin, creation_with_upload=False).upload(
            None, path, CHUNK * 3, {}
        )


async def test_partial_acceptance_resends_from_the_servers_offset(
    tmp_path: Path, hostile: tuple[HostileCentral, Served], session: aiohttp.ClientSession
) -> None:
    fake, served = hostile
    path, data = evidence(tmp_path, CHUNK * 2)
    calls = 0

    async def keeps_half_once(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        upload = fake.uploads[request.match_info["id"]]
        body = await request.read()
        upload.data += body[: len(body) // 2] if calls == 1 else body
        return web.Response(
            status=204, headers={"Tus-Resumable": "1.0.0", "Upload-Offset": str(len(upload.data))}
        )

    fake.patch = keeps_half_once
    result = await make_client(session, served.origin, creation_with_upload=False).upload(
        None, path, len(data), {}
    )
    assert bytes(fake.uploads[upload_id(result.url)].data) == data
    assert result.bytes_sent == CHUNK * 2 + CHUNK // 2


async def test_conflict_resyncs_with_head(
    tmp_path: Path, hostile: tuple[HostileCentral, Served], session: aiohttp.ClientSession
) -> None:
    fake, served = hostile
    path, data = evidence(tmp_path, CHUNK * 2)
    conflicted = False

    async def conflict_once(request: web.Request) -> web.StreamResponse:
        nonlocal conflicted
        upload = fake.uploads[request.match_info["id"]]
        body = await request.read()
        if not conflicted:
            conflicted = True
            upload.data += body  # stored by "another request" the client never heard back from
            return web.Response(status=409, headers={"Tus-Resumable": "1.0.0"})
        upload.data += body
        return web.Response(
            status=204, headers={"Tus-Resumable": "1.0.0", "Upload-Offset": str(len(upload.data))}
        )

    fake.patch = conflict_once
    result = await make_client(session, served.origin, creation_with_upload=False).upload(
        None, path, len(data), {}
    )
    assert bytes(fake.uploads[upload_id(result.url)].data) == data
    assert [m for m, _, _ in fake.requests] == ["POST", "PATCH", "HEAD", "PATCH"]


async def test_endless_conflicts_are_a_bounded_interruption(
    tmp_path: Path, hostile: tuple[HostileCentral, Served], session: aiohttp.ClientSession
) -> None:
    """A busy upload (409 while HEAD agrees with the offset) passes: the caller retries later."""
    fake, served = hostile
    fake.patch = answer(409, {"Tus-Resumable": "1.0.0"})
    path, _ = evidence(tmp_path, CHUNK)
    client = make_client(session, served.origin, creation_with_upload=False, max_conflicts=2)
    with pytest.raises(UploadInterrupted, match="409") as info:
        await client.upload(None, path, CHUNK, {})
    assert info.value.status == 409 and info.value.offset == 0 and info.value.bytes_sent == 3 * CHUNK
    assert info.value.url is not None
    assert [m for m, _, _ in fake.requests] == ["POST", "PATCH", "HEAD", "PATCH", "HEAD", "PATCH"]


async def test_head_going_back_after_a_confirmed_chunk_is_a_violation(
    tmp_path: Path, hostile: tuple[HostileCentral, Served], session: aiohttp.ClientSession
) -> None:
    fake, served = hostile
    path, _ = evidence(tmp_path, CHUNK * 3)
    calls = 0

    async def patch(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        await request.read()
        if calls == 1:
            return web.Response(status=204, headers={"Tus-Resumable": "1.0.0", "Upload-Offset": str(CHUNK)})
        return web.Response(status=409, headers={"Tus-Resumable": "1.0.0"})

    fake.patch = patch
    fake.head = answer(200, {"Tus-Resumable": "1.0.0", "Upload-Offset": "0"})
    with pytest.raises(ProtocolViolation, match=f"went back from {CHUNK}"):
        await make_client(session, served.origin, creation_with_upload=False).upload(
            None, path, CHUNK * 3, {}
        )


async def test_checksum_refused_every_time_is_bounded_and_rereads_the_chunk(
    tmp_path: Path,
    hostile: tuple[HostileCentral, Served],
    session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake, served = hostile
    fake.patch = answer(460, {"Content-Type": "application/json"}, b'{"error":"checksum_mismatch"}')
    reads: list[int] = []
    real = tus_client._read_chunk

    def counting(
        p: Path, offset: int, n: int, algorithm: str | None, before: object, into: memoryview,
        recorded: bytes | None,
    ) -> tus_client._Chunk:
        reads.append(offset)
        return real(p, offset, n, algorithm, before, into, recorded)

    monkeypatch.setattr(tus_client, "_read_chunk", counting)
    path, _ = evidence(tmp_path, CHUNK * 2)
    client = make_client(session, served.origin, creation_with_upload=False, checksum_attempts=3)
    with pytest.raises(ChecksumRejected) as info:
        await client.upload(None, path, CHUNK * 2, {})
    assert info.value.attempts == 3 and info.value.offset == 0
    assert reads.count(0) == 3  # each attempt re-read the chunk from disk
    assert [m for m, _, _ in fake.requests].count("PATCH") == 3


@pytest.mark.parametrize("status", [500, 502, 503, 429, 408])
async def test_transient_statuses_are_interruptions(
    tmp_path: Path, hostile: tuple[HostileCentral, Served], session: aiohttp.ClientSession, status: int
) -> None:
    fake, served = hostile
    fake.patch = answer(status, body=b"busy")
    path, _ = evidence(tmp_path, CHUNK * 2)
    with pytest.raises(UploadInterrupted) as info:
        await make_client(session, served.origin, creation_with_upload=False).upload(
            None, path, CHUNK * 2, {}
        )
    assert info.value.status == status
    assert info.value.url is not None and info.value.offset == 0


async def test_rejection_carries_the_servers_detail_truncated(
    hostile: tuple[HostileCentral, Served], session: aiohttp.ClientSession
) -> None:
    fake, served = hostile
    detail = "Upload-Metadata: \\u001b[31m key 'item' " + "x" * 2000
    body = ('{"error": "bad_metadata", "detail": "' + detail + '"}').encode()
    fake.post = answer(400, {"Content-Type": "application/json"}, body)
    with pytest.raises(ServerRejected) as info:
        await make_client(session, served.origin).create(10, {"item": "a"})
    exc = info.value
    assert exc.status == 400 and exc.error == "bad_metadata"
    assert exc.detail is not None and exc.detail.startswith("Upload-Metadata: ?[31m key 'item' xxx")
    assert len(exc.detail) <= 300 and len(exc.body) <= 300
    assert "\x1b" not in str(exc)


async def test_rejection_with_a_huge_body_reads_only_a_bounded_prefix(
    hostile: tuple[HostileCentral, Served], session: aiohttp.ClientSession
) -> None:
    fake, served = hostile
    fake.post = answer(403, body=b"y" * (8 << 20))
    with pytest.raises(ServerRejected) as info:
        await make_client(session, served.origin).create(10, {})
    assert info.value.status == 403 and len(info.value.body) <= 300
    assert info.value.body.startswith("yyy")


async def test_rejection_with_a_non_json_body(
    hostile: tuple[HostileCentral, Served], session: aiohttp.ClientSession
) -> None:
    fake, served = hostile
    fake.post = answer(415, body=b"\xff\xfe not json \x00")
    with pytest.raises(ServerRejected) as info:
        await make_client(session, served.origin).create(10, {})
    assert info.value.status == 415 and info.value.error is None
    assert "\x00" not in info.value.body


async def test_server_that_never_answers_times_out(
    tmp_path: Path, hostile: tuple[HostileCentral, Served], session: aiohttp.ClientSession
) -> None:
    fake, served = hostile
    never = asyncio.Event()

    async def hang(request: web.Request) -> web.StreamResponse:
        await never.wait()
        raise AssertionError("unreachable")

    fake.head = hang
    client = make_client(session, served.origin, request_timeout_s=0.3)
    with pytest.raises(UploadInterrupted, match="HEAD"):
        await client.offset(served.origin + BASE_PATH + "/" + "3" * 32)


async def test_a_slow_body_that_keeps_moving_is_not_a_stall(
    tmp_path: Path, hostile: tuple[HostileCentral, Served], session: aiohttp.ClientSession
) -> None:
    """request_timeout_s bounds silence, not duration: a rate-limited chunk that takes longer than the
    timeout in total, with waits for bandwidth longer than the timeout, still goes through."""
    fake, served = hostile
    loop = asyncio.get_running_loop()
    piece = tus_client._PIECE_BYTES
    waits: list[float] = []

    async def wait_for_bandwidth(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(seconds)

    # 0.25 s per piece, really waited (on the loop's clock), each wait recorded.
    limiter = RateLimiter(piece / 0.25, clock=loop.time, burst_bytes=1, sleep=wait_for_bandwidth)
    path, data = evidence(tmp_path, piece * 3)
    client = make_client(
        session,
        served.origin,
        creation_with_upload=False,
        chunk_size_bytes=len(data),
        limiter=limiter,
        request_timeout_s=0.2,
    )
    result = await client.upload(None, path, len(data), {})
    assert bytes(fake.uploads[upload_id(result.url)].data) == data
    # The premise: the chunk's body waited for bandwidth between its pieces for longer than the request
    # timeout, more than once, and the request still went through.
    assert len([w for w in waits if w > 0.2]) >= 2, waits


async def test_server_that_stops_reading_the_body_times_out(
    tmp_path: Path, hostile: tuple[HostileCentral, Served], session: aiohttp.ClientSession
) -> None:
    fake, served = hostile
    never = asyncio.Event()

    async def stall(request: web.Request) -> web.StreamResponse:
        await request.content.read(1000)
        await never.wait()
        raise AssertionError("unreachable")

    fake.patch = stall
    size = 48 << 20  # more than the socket buffers of both ends can swallow
    path = tmp_path / "big.bin"
    with path.open("wb") as f:
        f.truncate(size)
    client = make_client(
        session, served.origin, creation_with_upload=False, chunk_size_bytes=size, request_timeout_s=0.5
    )
    with pytest.raises(UploadInterrupted, match="PATCH") as info:
        await client.upload(None, path, size, {})
    # The client's own stall deadline ended it (the server never answers, nor closes the connection).
    assert "timed out" in str(info.value) and isinstance(info.value.__cause__, TimeoutError)
    assert 0 < info.value.bytes_sent < size


def test_metadata_encoding_and_validation() -> None:
    assert encode_metadata({}) == ""
    assert encode_metadata({"item": "a", "empty": ""}) == "item YQ==,empty"
    assert encode_metadata({"filename": "录像.mp4"}) == "filename 5b2V5YOPLm1wNA=="
    for bad in ("", "a b", "a,b", "ключ", "a\tb"):
        with pytest.raises(ValueError, match="metadata key"):
            encode_metadata({bad: "v"})


async def test_client_configuration_is_checked(session: aiohttp.ClientSession) -> None:
    for kwargs, message in [
        ({"base_url": "ftp://x/y"}, "absolute http"),
        ({"base_url": "/v1/uploads"}, "absolute http"),
        ({"base_url": "http://u:p@x/y"}, "credentials"),
        ({"base_url": "http://x/y", "chunk_size_bytes": 0}, "chunk_size_bytes"),
        ({"base_url": "http://x/y", "checksum": "crc32"}, "checksum"),
        ({"base_url": "http://x/y", "request_timeout_s": 0}, "request_timeout_s"),
    ]:
        with pytest.raises(ValueError, match=message):
            TusClient(session, **kwargs)  # type: ignore[arg-type]


async def test_urls_on_another_origin_are_refused_before_any_request(
    hostile: tuple[HostileCentral, Served], session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    fake, served = hostile
    client = make_client(session, served.origin)
    path, _ = evidence(tmp_path, 10)
    with pytest.raises(ValueError, match="not on the central's origin"):
        await client.upload("http://evil.example/v1/uploads/x", path, 10, {})
    with pytest.raises(ValueError, match="not on the central's origin"):
        await client.terminate("http://127.0.0.1:1/v1/uploads/x")
    assert fake.requests == []


async def test_interruption_keeps_the_upload_url_for_the_next_attempt(
    tmp_path: Path, hostile: tuple[HostileCentral, Served], session: aiohttp.ClientSession
) -> None:
    fake, served = hostile
    path, data = evidence(tmp_path, CHUNK * 3)
    fake.patch = answer(503)
    client = make_client(session, served.origin, creation_with_upload=False)
    with pytest.raises(UploadInterrupted) as info:
        await client.upload(None, path, len(data), {})
    url = info.value.url
    assert url is not None
    fake.patch = None
    result = await client.upload(url, path, len(data), {})
    assert result.url == url and result.resumed_from == 0 and not result.created
    assert bytes(fake.uploads[upload_id(url)].data) == data


async def test_disk_reads_are_at_most_one_chunk(
    tmp_path: Path,
    hostile: tuple[HostileCentral, Served],
    session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fake, served = hostile
    sizes: list[int] = []
    real_pread, real_preadv = os.pread, os.preadv

    def spying(fd: int, n: int, offset: int) -> bytes:
        sizes.append(n)
        return real_pread(fd, n, offset)

    def spying_v(fd: int, buffers: list[memoryview], offset: int) -> int:
        sizes.append(sum(len(b) for b in buffers))
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(os, "pread", spying)
    monkeypatch.setattr(os, "preadv", spying_v)
    path, data = evidence(tmp_path, CHUNK * 10 + 5)
    await make_client(session, served.origin).upload(None, path, len(data), {})
    assert sizes and max(sizes) <= CHUNK
