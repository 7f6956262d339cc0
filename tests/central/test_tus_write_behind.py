"""The tus receive loop's write-behind (edge.central.tus._receive): a body's blocks are hashed and written in
a worker thread while the loop reads the next, yet one thread at a time touches an upload, a cancelled
request waits for the block in flight before it keeps what arrived, and the bytes land in order."""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.central import tus
from edge.central.tus_store import ChunkChecksum
from tests.central.tus_fixtures import (
    STATION_HEADER,
    CallCounter,
    CountedWrite,
    SignallingStore,
    request_bytes,
    running_tus,
    wait_event,
)

MIB = 1024 * 1024
OCTET = "application/offset+octet-stream"
STATION = "station-a"


class WatchedWrite(CountedWrite):
    """An upload's write handle that counts its calls running at once and can hold a block's write."""

    def _before(self, name: str) -> None:
        watch = self._watch
        if name == "write_pieces":
            watch.writing.set()
            if not watch.gate.wait(60):
                raise AssertionError("the test never opened the gate")
            if watch.fail_held_write:
                watch.fail_held_write = False
                raise OSError(errno.EIO, "injected: the disk failed this block")


class Watch(CallCounter):
    def __init__(self) -> None:
        super().__init__()
        self.writing = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.fail_held_write = False


class WatchedStore(SignallingStore):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.watch = Watch()

    def begin_write(  # type: ignore[override]
        self, upload_id: str, *, offset: int, checksum: ChunkChecksum | None = None
    ) -> WatchedWrite:
        return WatchedWrite(super().begin_write(upload_id, offset=offset, checksum=checksum), self.watch)


def patch_headers(offset: int, length: int) -> list[tuple[str, str | bytes]]:
    return [
        ("Tus-Resumable", "1.0.0"),
        (STATION_HEADER, STATION),
        ("Upload-Offset", str(offset)),
        ("Content-Type", OCTET),
        ("Content-Length", str(length)),
    ]


async def create(session: aiohttp.ClientSession, origin: str, length: int) -> str:
    async with session.post(
        origin + "/v1/uploads",
        headers={"Tus-Resumable": "1.0.0", STATION_HEADER: STATION, "Upload-Length": str(length)},
    ) as reply:
        assert reply.status == 201, await reply.text()
        return origin + reply.headers["Location"]


def test_control_the_watch_sees_two_calls_at_once(tmp_path: Path) -> None:
    """Control: the overlap counter below is not blind (two threads writing one upload at once)."""
    store = WatchedStore(tmp_path / "u", max_size_bytes=10, expire_after_s=3600)
    info = store.create(STATION, 10)
    write = store.begin_write(info.upload_id, offset=0)
    store.watch.gate.clear()
    threads = [threading.Thread(target=write.write_pieces, args=([b"ab"],)) for _ in range(2)]
    for thread in threads:
        thread.start()
    deadline = 60.0
    while store.watch.most_at_once < 2 and deadline > 0:
        threading.Event().wait(0.01)
        deadline -= 0.01
    store.watch.gate.set()
    for thread in threads:
        thread.join(60)
    write.close()
    assert store.watch.most_at_once == 2


async def test_a_body_of_many_pieces_lands_in_order_one_call_at_a_time(tmp_path: Path) -> None:
    size = 5 * MIB + 12345
    data = os.urandom(size)
    store = WatchedStore(tmp_path / "u", max_size_bytes=size, expire_after_s=3600)

    async def body() -> Any:
        view = memoryview(data)
        step = 7919  # pieces of odd sizes, blocks that end mid-piece
        for start in range(0, size, step):
            yield bytes(view[start : start + step])

    async with running_tus(store) as server, aiohttp.ClientSession() as session:
        url = await create(session, server.origin, size)
        async with session.patch(
            url,
            data=body(),
            headers={"Tus-Resumable": "1.0.0", STATION_HEADER: STATION, "Upload-Offset": "0",
                     "Content-Type": OCTET,
                     "Upload-Checksum": "sha256-prefix " + base64.b64encode(
                         hashlib.sha256(data).digest()).decode("ascii")},
        ) as reply:
            assert reply.status == 204, await reply.text()
    assert server.completed[0].sha256 == hashlib.sha256(data).hexdigest()
    assert store.complete_path(server.completed[0].upload_id).read_bytes() == data
    assert store.watch.most_at_once == 1


async def _cancel_during_a_held_block(
    tmp_path: Path, *, fail_the_block: bool = False
) -> tuple[WatchedStore, bool, str, bytes, int]:
    """A PATCH whose first block's write is held in the worker, its client gone (the handler cancelled):
    the store, whether the upload was released while the block was held, the upload URL, the data, and
    the bytes sent."""
    size = 3 * MIB
    data = os.urandom(size)
    store = WatchedStore(tmp_path / "u", max_size_bytes=size, expire_after_s=3600)
    sent = tus._WRITE_BLOCK_BYTES + MIB // 2
    async with running_tus(store, handler_cancellation=True) as server, aiohttp.ClientSession() as session:
        url = await create(session, server.origin, size)
        store.watch.gate.clear()
        _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request_bytes("PATCH", url.removeprefix(server.origin), patch_headers(0, size),
                                   data[:sent]))
        await writer.drain()
        await wait_event(store.watch.writing)
        await asyncio.sleep(0.5)  # the rest of what was sent reaches the loop
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(1.0)  # the cancelled handler would release the upload by now if it did not wait
        released_early = store.released.is_set()
        store.watch.fail_held_write = fail_the_block
        store.watch.gate.set()
        await wait_event(store.released)
        await asyncio.sleep(0.2)  # a write let go of too early ends now
    return store, released_early, url, data, sent


async def test_a_cancelled_request_waits_for_the_block_in_flight(tmp_path: Path) -> None:
    store, released_early, url, data, sent = await _cancel_during_a_held_block(tmp_path)
    assert not released_early, "the upload was released while its block was still written"
    assert store.watch.most_at_once == 1
    upload_id = url.rsplit("/", 1)[1]
    offset = store.get(upload_id).offset  # type: ignore[union-attr]
    assert tus._WRITE_BLOCK_BYTES <= offset <= sent
    assert (store.root / f"{upload_id}.part").read_bytes() == data[:offset]


async def test_control_a_write_behind_that_does_not_wait_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_wait(self: tus._WriteBehind) -> None:
        self._running = None

    monkeypatch.setattr(tus._WriteBehind, "wait", no_wait)
    store, released_early, _url, _data, _sent = await _cancel_during_a_held_block(tmp_path)
    assert released_early or store.watch.most_at_once > 1


async def test_a_block_that_failed_is_not_replaced_by_the_pieces_after_it(tmp_path: Path) -> None:
    """The held block's write fails (EIO) while the handler is cancelled: what arrived after it is not
    written in its place; the upload stays at its committed offset with exactly the bytes before it."""
    store, _early, url, data, _sent = await _cancel_during_a_held_block(tmp_path, fail_the_block=True)
    upload_id = url.rsplit("/", 1)[1]
    offset = store.get(upload_id).offset  # type: ignore[union-attr]
    assert offset == 0
    assert (store.root / f"{upload_id}.part").read_bytes() == data[:offset]


async def test_control_keeping_the_pieces_after_a_failed_block_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A write-behind that forgets a failed call (the failure is what stops every later write and keep).
    def forget_the_failure(self: tus._WriteBehind, running: asyncio.Future[Any]) -> None:
        pass

    monkeypatch.setattr(tus._WriteBehind, "_record", forget_the_failure)
    store, _early, url, data, _sent = await _cancel_during_a_held_block(tmp_path, fail_the_block=True)
    upload_id = url.rsplit("/", 1)[1]
    offset = store.get(upload_id).offset  # type: ignore[union-attr]
    assert offset > 0 and (store.root / f"{upload_id}.part").read_bytes() != data[:offset]


@pytest.mark.parametrize("limit", [1, 3, 1000])
def test_pieces_are_written_whole_and_in_order_however_the_kernel_splits_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    """pwritev may take fewer buffers than given (IOV_MAX) and stop mid-buffer: every byte lands once."""
    real = os.pwritev
    calls: list[int] = []

    def short_pwritev(fd: int, buffers: Sequence[memoryview], offset: int) -> int:
        # At most `limit` buffers, and 7 bytes short of them: a write that stops mid-buffer.
        taken = b"".join(list(buffers)[:limit])
        written = real(fd, [taken[: max(1, len(taken) - 7)]], offset)
        calls.append(written)
        return written

    monkeypatch.setattr(os, "pwritev", short_pwritev)
    pieces = [os.urandom(n) for n in (1, 500, 0, 4096, 3, 2000, 77)]
    data = b"".join(pieces)
    store = SignallingStore(tmp_path / "u", max_size_bytes=len(data), expire_after_s=3600)
    info = store.create(STATION, len(data))
    with store.begin_write(info.upload_id, offset=0) as write:
        write.write_pieces(pieces[:4])
        write.write_pieces(pieces[4:])
        done = write.finish()
    assert len(calls) > 2, "control: the writes really were split"
    assert store.complete_path(info.upload_id).read_bytes() == data
    assert done.sha256 == hashlib.sha256(data).hexdigest()


def test_a_block_keeps_large_pieces_as_they_are_and_joins_small_ones() -> None:
    block = tus._Block()
    large = os.urandom(tus._SMALL_PIECE_BYTES)
    tiny = [os.urandom(1) for _ in range(3 * tus._SMALL_PIECE_BYTES)]
    block.add(large)
    for piece in tiny:
        block.add(piece)
    block.add(large)
    block.add(b"tail")
    assert block.pieces[0] is large and block.pieces[4] is large, "large pieces are not copied"
    assert len(block.pieces) == 6, "a trickle of 1-byte pieces costs a few entries, not one per piece"
    assert b"".join(block.pieces) == large + b"".join(tiny) + large + b"tail"
    assert block.size == 2 * len(large) + len(tiny) + 4
