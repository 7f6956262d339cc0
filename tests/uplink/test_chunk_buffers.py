"""Chunk buffers reused by the tus client (edge.uplink.chunk_buffers): a reused buffer never carries bytes
of an earlier chunk into a later one (a short last chunk after full ones, a chunk re-sent after a refusal,
a resumed upload, one file after another), a buffer anything still has a view of is never reused, and
the buffers are bounded whatever the file size. Against the central's real tus server, with the chunks'
bodies over the blocking connections as the station sends them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from edge.central.tus_store import TusUploadStore
from edge.uplink.blocking_body import BlockingBodySender
from edge.uplink.chunk_buffers import ChunkBuffers
from edge.uplink.tus_client import PREFIX_SHA256, TusClient, UploadInterrupted
from tests.uplink.test_tus_client import (  # noqa: F401 (fixtures, found by their names)
    CHUNK,
    Served,
    TcpProxy,
    central,
    evidence,
    proxy,
    session,
    store,
    stored,
)
from tests.uplink.test_tus_client import make_client as make_aiohttp_client

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def bodies() -> AsyncIterator[BlockingBodySender]:
    async with BlockingBodySender(ssl_context=None, max_connections=4) as sender:
        yield sender


def make_client(
    http: aiohttp.ClientSession, origin: str, bodies: BlockingBodySender, **kwargs: object
) -> TusClient:
    return make_aiohttp_client(http, origin, bodies=bodies, checksum=PREFIX_SHA256, **kwargs)


# ------------------------------------------------------------------------------------- the pool itself


def test_a_buffer_given_back_is_reused_and_each_view_is_exactly_the_chunk() -> None:
    pool = ChunkBuffers(16, max_idle=2)
    first = pool.take(16)
    buffer = first.obj
    first[:] = b"A" * 16
    pool.give_back(first)
    short = pool.take(5)
    assert short.obj is buffer and len(short) == 5  # the same buffer, a view of the chunk's bytes only
    assert pool.made == 1
    # Control: a pool that keeps nothing makes a buffer per chunk.
    none_kept = ChunkBuffers(16, max_idle=0)
    none_kept.give_back(none_kept.take(16))
    assert none_kept.take(16).obj is not None and none_kept.made == 2


def test_a_buffer_someone_still_has_a_view_of_is_never_reused() -> None:
    pool = ChunkBuffers(16, max_idle=2)
    chunk = pool.take(16)
    buffer = chunk.obj
    piece = chunk[4:8]  # what a transport keeps of a body it has not written yet
    pool.give_back(chunk)
    assert pool.idle == 0 and pool.dropped_in_use == 1
    assert pool.take(16).obj is not buffer
    # Control: once nothing has a view of it, a buffer goes back and is reused.
    other = pool.take(16)
    other_buffer = other.obj
    pool.give_back(other)
    assert pool.take(16).obj is other_buffer
    piece.release()


def test_the_pool_keeps_at_most_max_idle_buffers() -> None:
    pool = ChunkBuffers(16, max_idle=2)
    taken = [pool.take(16) for _ in range(5)]
    for view in taken:
        pool.give_back(view)
    assert pool.made == 5 and pool.idle == 2
    with pytest.raises(ValueError, match="does not fit"):
        pool.take(17)


# --------------------------------------------------------------------------- uploads through the pool


async def test_one_file_after_another_with_short_last_chunks_gets_every_byte_right(
    tmp_path: Path, central: Served, store: TusUploadStore, session: aiohttp.ClientSession,  # noqa: F811
    bodies: BlockingBodySender,
) -> None:
    client = make_client(session, central.origin, bodies)
    # Full chunks first, so the buffers hold other bytes when the short ones are read into them.
    sizes = [CHUNK * 6 + 123, CHUNK + 5, 7, CHUNK * 2 + 1]
    for seed, size in enumerate(sizes, start=1):
        path, data = evidence(tmp_path, size, seed=seed)
        result = await client.upload(None, path, size, {})
        assert stored(store, result.url) == data
    # A chunk on the wire and one read ahead: two buffers for every chunk of every file.
    assert client.buffers.made == 2 and client.buffers.idle == 2 and client.buffers.dropped_in_use == 0


async def test_without_reuse_every_chunk_costs_a_buffer(
    tmp_path: Path, central: Served, store: TusUploadStore, session: aiohttp.ClientSession,  # noqa: F811
    bodies: BlockingBodySender,
) -> None:
    """Control of the count above: it measures reuse."""
    client = make_client(session, central.origin, bodies, spare_buffers=0)
    size = CHUNK * 6 + 123
    path, data = evidence(tmp_path, size)
    result = await client.upload(None, path, size, {})
    assert stored(store, result.url) == data
    assert client.buffers.made == 7 and client.buffers.idle == 0


async def test_a_view_longer_than_the_chunk_is_refused_not_sent(
    tmp_path: Path, central: Served, store: TusUploadStore, session: aiohttp.ClientSession,  # noqa: F811
    bodies: BlockingBodySender, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Control of the short-chunk case: a pool handing out whole buffers (whose tail would be an earlier
    chunk's bytes) is caught before anything is read or sent."""
    client = make_client(session, central.origin, bodies)
    whole_buffers = client.buffers.take

    def whole(size: int) -> memoryview:
        view = whole_buffers(size)
        return memoryview(view.obj)

    monkeypatch.setattr(client.buffers, "take", whole)
    path, _ = evidence(tmp_path, CHUNK + 5)
    with pytest.raises(ValueError, match=f"a buffer of {CHUNK} bytes for a chunk of 5"):
        await client.upload(None, path, CHUNK + 5, {})


async def test_a_chunk_refused_and_sent_again_from_a_reused_buffer_is_the_files(
    tmp_path: Path, proxy: TcpProxy, store: TusUploadStore, session: aiohttp.ClientSession,  # noqa: F811
    bodies: BlockingBodySender,
) -> None:
    size = CHUNK * 4 + 77
    path, data = evidence(tmp_path, size, seed=21)
    proxy.corrupt(data[CHUNK * 2 + 500 : CHUNK * 2 + 532])  # inside the third chunk's body, once
    client = make_client(session, proxy.origin, bodies)
    result = await client.upload(None, path, size, {})
    assert proxy.corrupted == 1 and result.checksum_retries == 1
    assert stored(store, result.url) == data
    assert client.buffers.made <= 3


async def test_a_resumed_upload_reads_into_reused_buffers_and_ends_with_the_files_bytes(
    tmp_path: Path, proxy: TcpProxy, store: TusUploadStore, session: aiohttp.ClientSession,  # noqa: F811
    bodies: BlockingBodySender,
) -> None:
    size = CHUNK * 5 + 3
    path, data = evidence(tmp_path, size, seed=22)
    client = make_client(session, proxy.origin, bodies, creation_with_upload=False)
    # The buffers hold another file's bytes first.
    other, other_data = evidence(tmp_path, CHUNK * 3, seed=23)
    assert stored(store, (await client.upload(None, other, len(other_data), {})).url) == other_data
    created: list[str] = []
    proxy.cut_after(proxy.client_bytes + CHUNK * 2 + CHUNK // 3)  # in the middle of the third chunk
    attempt = asyncio.create_task(client.upload(None, path, size, {}, on_created=created.append))
    await proxy.cut_reached.wait()
    proxy.release()
    with pytest.raises(UploadInterrupted):
        await attempt
    result = None
    for _ in range(50):
        try:
            result = await client.upload(created[0], path, size, {})
            break
        except UploadInterrupted as exc:
            assert exc.status == 409  # the server's dying request still holds the upload
            await asyncio.sleep(0.02)
    assert result is not None and result.resumed_from == CHUNK * 2
    assert stored(store, result.url) == data
    assert client.buffers.idle <= client.buffers.max_idle and client.buffers.made <= 4
