"""Review revs13c of the central's tus write-behind (edge.central.tus._receive, branch cpuc): failing tests.

1. A receiver shut down while the loop waits for a block in flight that then fails (EIO): the cancellation
   drops the block's error (``_outcome``, ``_WriteBehind.wait`` clears ``_running``), so ``settle`` says
   the block went well and the pieces read after it are written in its place and committed (``keep``).
2. A body that runs past Upload-Length (413) and a shutdown cancelling its ``discard``: the cancellation
   handler writes the pieces read before the too-long one at the committed offset and commits them.
3. A client sending a corrupt TLS record mid-body: ``readany`` raises ``ssl.SSLError`` (an OSError, not a
   ConnectionError), which lands in the storage-failure handler; it runs ``discard`` in a worker while the
   block in flight is still written in another: two threads on one upload.

Each has a control: the same request without the cancellation or with an ordinary disconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import errno
import logging
import os
import socket
import ssl
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge.central.postgres.tus_shared_store import SharedTusStore
from edge.central.tus import add_tus_routes
from edge.central.tus_store import ChunkChecksum, TusUploadStore
from tests.central.tus_fixtures import (
    BASE_PATH,
    STATION_HEADER,
    CallCounter,
    CountedWrite,
    SignallingStore,
    identify_by_header,
    read_response,
    request_bytes,
    wait_event,
)

MIB = 1024 * 1024
OCTET = "application/offset+octet-stream"
STATION = "station-a"


class Watch(CallCounter):
    def __init__(self) -> None:
        super().__init__()
        self.writing = threading.Event()  # a write_pieces call is held at its gate
        self.write_gate = threading.Event()
        self.write_gate.set()
        self.fail_held_write = False
        self.discarding = threading.Event()  # a discard call is held at its gate
        self.discard_gate = threading.Event()
        self.discard_gate.set()
        self.discard_calls = 0
        self.end_calls = 0  # keep or discard: the handler ended the request's write


class HeldWrite(CountedWrite):
    """An upload's write handle that counts its calls running at once and can hold a write or a discard."""

    def _before(self, name: str) -> None:
        watch = self._watch
        if name == "write_pieces" and not watch.write_gate.is_set():
            watch.writing.set()
            if not watch.write_gate.wait(60):
                raise AssertionError("the test never opened the write gate")
            if watch.fail_held_write:
                watch.fail_held_write = False
                raise OSError(errno.EIO, "injected: the disk failed this block")
        if name in ("keep", "discard"):
            watch.end_calls += 1
        if name == "discard":
            watch.discard_calls += 1
            watch.discarding.set()
            if not watch.discard_gate.wait(60):
                raise AssertionError("the test never opened the discard gate")


class HeldStore(SignallingStore):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.watch = Watch()

    def begin_write(  # type: ignore[override]
        self, upload_id: str, *, offset: int, checksum: ChunkChecksum | None = None
    ) -> HeldWrite:
        return HeldWrite(super().begin_write(upload_id, offset=offset, checksum=checksum), self.watch)


@dataclass
class Served:
    runner: web.AppRunner
    port: int


@contextlib.asynccontextmanager
async def serving(
    store: TusUploadStore | SharedTusStore,
    *,
    ssl_context: ssl.SSLContext | None = None,
    shutdown_timeout: float = 0.5,
) -> AsyncIterator[Served]:
    """The real tus routes on 127.0.0.1 (no handler cancellation: a production receiver's setting); the
    test may shut the runner down itself (cleanup is then not repeated)."""
    app = web.Application()
    add_tus_routes(app, store, base_path=BASE_PATH, identify=identify_by_header, chunk_timeout_s=30.0)
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    served = Served(runner, int(runner.addresses[0][1]))
    try:
        yield served
    finally:
        if runner.server is not None:
            await runner.cleanup()


def create_upload(store: HeldStore, length: int) -> str:
    return store.create(STATION, length).upload_id


def patch_head(upload_id: str, *, length: int | None, chunked: bool = False) -> bytes:
    headers: list[tuple[str, str | bytes]] = [
        ("Tus-Resumable", "1.0.0"),
        (STATION_HEADER, STATION),
        ("Upload-Offset", "0"),
        ("Content-Type", OCTET),
    ]
    if chunked:
        headers.append(("Transfer-Encoding", "chunked"))
    else:
        headers.append(("Content-Length", str(length)))
    return request_bytes("PATCH", f"{BASE_PATH}/{upload_id}", headers)


def http_chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode("ascii") + data + b"\r\n"


def committed(store: HeldStore, upload_id: str) -> tuple[int, bytes]:
    info = store.get(upload_id)
    assert info is not None
    return info.offset, (store.root / f"{upload_id}.part").read_bytes()


def same_prefix(content: bytes, data: bytes, offset: int) -> bool:
    """Whether the committed content is the body's first ``offset`` bytes (a bool: pytest's diff of MiB of
    bytes would take minutes)."""
    return len(content) == offset and content == data[:offset]


def came_from(content: bytes, data: bytes) -> int:
    """Where in the body the committed content's first bytes were sent (-1: nowhere)."""
    return data.find(content[:4096]) if content else 0


# -- 1. a failed block, then a shutdown while the loop waits for it ------------------------------------


async def _shutdown_while_waiting_for_a_failed_block(
    tmp_path: Path, *, shut_down: bool
) -> tuple[HeldStore, str, bytes]:
    size = 4 * MIB
    data = os.urandom(size)
    store = HeldStore(tmp_path / "u", max_size_bytes=size, expire_after_s=3600)
    upload_id = create_upload(store, size)
    # Block 1 held in the worker; block 2 (a whole block) read while it is held: the loop then waits in
    # _WriteBehind.submit for block 1.
    sent = 3 * MIB
    async with serving(store) as served:
        store.watch.write_gate.clear()
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(patch_head(upload_id, length=size) + data[:sent])  # no drain: the server stops reading
        await wait_event(store.watch.writing)
        await asyncio.sleep(1.0)  # the loop has read block 2 and waits for block 1
        cleanup: asyncio.Task[None] | None = None
        if shut_down:
            cleanup = asyncio.create_task(served.runner.cleanup())
            await asyncio.sleep(2.5)  # shutdown_timeout 0.5 s twice, then the handler is cancelled
        store.watch.fail_held_write = True
        store.watch.write_gate.set()
        if cleanup is not None:
            await cleanup
        else:
            reply = await read_response(reader)
            assert reply.status == 500, reply  # EIO: storage_failed, the upload stays resumable
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        await wait_event(store.released)
        await asyncio.sleep(0.2)
    return store, upload_id, data


async def test_a_shutdown_does_not_commit_the_block_after_a_failed_one_in_its_place(tmp_path: Path) -> None:
    """HIGH: block 1 failed (EIO) while the loop waited for it; the receiver's shutdown cancels the
    handler there. Block 2 must not be written at block 1's offset and committed."""
    store, upload_id, data = await _shutdown_while_waiting_for_a_failed_block(tmp_path, shut_down=True)
    offset, content = committed(store, upload_id)
    assert same_prefix(content, data, offset), (
        f"committed offset {offset}: its bytes 0.. are the body's bytes {came_from(content, data)}.., "
        f"the block read after the failed one took the failed block's place"
    )
    assert offset == 0


async def test_control_without_a_shutdown_the_failed_block_commits_nothing(tmp_path: Path) -> None:
    store, upload_id, _data = await _shutdown_while_waiting_for_a_failed_block(tmp_path, shut_down=False)
    offset, content = committed(store, upload_id)
    assert offset == 0 and content == b""


# -- 2. a too-long body whose discard is cancelled by a shutdown ----------------------------------------


async def _too_long_body(tmp_path: Path, *, shut_down: bool) -> tuple[HeldStore, str, bytes]:
    first = MIB + 3 * MIB // 4  # block 1 written, at most 3/4 MiB more collected: no second block
    length = first + 1  # any byte of the next chunk runs past it
    data = os.urandom(3 * MIB)
    store = HeldStore(tmp_path / "u", max_size_bytes=length, expire_after_s=3600)
    upload_id = create_upload(store, length)
    async with serving(store) as served:
        store.watch.discard_gate.clear()
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(patch_head(upload_id, length=None, chunked=True) + http_chunk(data[:first]))
        await writer.drain()
        await asyncio.sleep(1.0)  # block 1 written, the rest of the first chunk collected
        writer.write(http_chunk(data[first:]))  # runs past Upload-Length: 413, discard
        await writer.drain()
        await wait_event(store.watch.discarding)
        cleanup: asyncio.Task[None] | None = None
        if shut_down:
            cleanup = asyncio.create_task(served.runner.cleanup())
            await asyncio.sleep(2.5)
        store.watch.discard_gate.set()
        if cleanup is not None:
            await cleanup
        else:
            reply = await read_response(reader)
            assert reply.status == 413, reply
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        await wait_event(store.released)
        await asyncio.sleep(0.2)
    return store, upload_id, data


async def test_a_too_long_body_cancelled_in_its_discard_commits_nothing(tmp_path: Path) -> None:
    """MEDIUM: the 413 discard is cancelled by a shutdown; the pieces collected before the too-long one
    must not then be written at the committed offset (0) and kept."""
    store, upload_id, data = await _too_long_body(tmp_path, shut_down=True)
    offset, content = committed(store, upload_id)
    assert same_prefix(content, data, offset), (
        f"committed offset {offset}: its bytes 0.. are the body's bytes {came_from(content, data)}.. "
        f"(written at offset 0 after the discard truncated the request's block 1 away)"
    )
    assert offset == 0


async def test_control_a_too_long_body_commits_nothing(tmp_path: Path) -> None:
    store, upload_id, _data = await _too_long_body(tmp_path, shut_down=False)
    offset, content = committed(store, upload_id)
    assert offset == 0 and content == b""


# -- 3. a corrupt TLS record mid-body -------------------------------------------------------------------


def _tls_server_context(tmp_path: Path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "server.crt", tmp_path / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context


class TlsClient:
    """A TLS client over a memory BIO, so that it can send a record of its own making (a station's
    certificate gives an attacker exactly this: its own TLS stack)."""

    def __init__(self, port: int) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self._outgoing.read())
                received = self.sock.recv(65536)
                if not received:
                    raise ConnectionError("the server closed during the handshake") from None
                self._incoming.write(received)
        self.sock.sendall(self._outgoing.read())

    def send(self, data: bytes) -> None:
        self._tls.write(data)
        self.sock.sendall(self._outgoing.read())

    def send_corrupt_record(self) -> None:
        self._tls.write(b"x" * 1000)
        record = bytearray(self._outgoing.read())
        record[-1] ^= 0xFF  # the record's authentication tag no longer matches
        self.sock.sendall(bytes(record))


async def _tls_error_mid_body(tmp_path: Path, *, corrupt: bool) -> HeldStore:
    size = 4 * MIB
    data = os.urandom(size)
    store = HeldStore(tmp_path / "u", max_size_bytes=size, expire_after_s=3600)
    upload_id = create_upload(store, size)
    sent = MIB + MIB // 2
    async with serving(store, ssl_context=_tls_server_context(tmp_path)) as served:
        store.watch.write_gate.clear()
        client = await asyncio.to_thread(TlsClient, served.port)
        try:
            await asyncio.to_thread(client.send, patch_head(upload_id, length=size) + data[:sent])
            await wait_event(store.watch.writing)
            await asyncio.sleep(1.0)  # the rest of what was sent reaches the loop; block 1 still held
            if corrupt:
                await asyncio.to_thread(client.send_corrupt_record)
            else:
                await asyncio.to_thread(client.sock.close)
            for _ in range(50):  # up to 5 s for the server to react
                if store.watch.discard_calls or store.watch.most_at_once > 1:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
        finally:
            store.watch.write_gate.set()
            client.sock.close()
        await wait_event(store.released)
        await asyncio.sleep(0.2)
    return store


async def test_a_corrupt_tls_record_mid_body_leaves_one_call_on_the_upload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """MEDIUM: ssl.SSLError from the body read is caught as a storage failure; its discard runs while the
    block before is still being written (and the event is logged at ERROR as 'storage failed').

    Fixed: the TLS error is the client's (400 body_interrupted, a WARNING), and like a disconnect what
    arrived is kept (keep, not discard) once the block in flight was written."""
    caplog.set_level(logging.INFO, logger="edge.central")
    store = await _tls_error_mid_body(tmp_path, corrupt=True)
    assert store.watch.end_calls >= 1, "control: the TLS error reached the handler (it kept or discarded)"
    assert store.watch.most_at_once == 1, "discard ran in a worker while the block in flight was written"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "logged as a storage failure"
    assert any("body_interrupted" in r.getMessage() and "SSLError" in r.getMessage() for r in caplog.records)


async def test_control_a_tls_client_that_just_disconnects_leaves_one_call(tmp_path: Path) -> None:
    store = await _tls_error_mid_body(tmp_path, corrupt=False)
    assert store.watch.most_at_once == 1
