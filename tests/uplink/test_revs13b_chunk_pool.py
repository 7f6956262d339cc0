"""Review of the tus client's chunk buffer pool (edge.uplink.chunk_buffers, branch cpus) as a station runs
it: the pool is sized once, when the uplink connects (``TusTransport.connect``: ``spare_buffers = 2 x
[uplink] concurrency``), and the connection lasts as long as the uplink service runs.

After the uploads end, the pool keeps its buffers for the life of the process: 2 x concurrency x
chunk_mb MiB (32 MiB by default, up to 64 x 256 MiB with the configuration's bounds) stay resident on
a station with nothing to send. The peak is as before; new is that it is never given back (a fresh
buffer per chunk was freed with its chunk).

Against the central's real tus server, the chunks' bodies over the blocking connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from edge.central.tus_store import TusUploadStore
from edge.uplink.blocking_body import BlockingBodySender
from edge.uplink.tus_client import PREFIX_SHA256, TusClient
from tests.uplink.test_tus_client import (  # noqa: F401 (fixtures, found by their names)
    CHUNK,
    Served,
    central,
    evidence,
    session,
    store,
    stored,
)
from tests.uplink.test_tus_client import make_client as make_aiohttp_client

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def bodies() -> AsyncIterator[BlockingBodySender]:
    async with BlockingBodySender(ssl_context=None, max_connections=8) as sender:
        yield sender


def station_client(
    http: aiohttp.ClientSession, origin: str, bodies: BlockingBodySender, concurrency_at_connect: int
) -> TusClient:
    """The client as ``TusTransport.connect`` builds it for ``[uplink] concurrency``."""
    return make_aiohttp_client(
        http, origin, bodies=bodies, checksum=PREFIX_SHA256, spare_buffers=2 * concurrency_at_connect
    )


async def upload_at_once(client: TusClient, tmp_path: Path, uploads: TusUploadStore, files: int,
                         chunks_each: int) -> None:
    made = [evidence(tmp_path, CHUNK * chunks_each + 17 * seed, seed=seed) for seed in range(1, files + 1)]
    results = await asyncio.gather(*(client.upload(None, path, len(data), {}) for path, data in made))
    for result, (_path, data) in zip(results, made, strict=True):
        assert stored(uploads, result.url) == data


async def test_an_uplink_with_nothing_to_send_keeps_no_chunk_buffers(
    tmp_path: Path, central: Served, store: TusUploadStore, session: aiohttp.ClientSession,  # noqa: F811
    bodies: BlockingBodySender,
) -> None:
    """LOW. Two uploads (concurrency 2, the default), then nothing in flight: the link stays connected
    (UplinkService.run holds it for the life of the process), and so do the pool's buffers."""
    client = station_client(session, central.origin, bodies, concurrency_at_connect=2)
    client.buffers.keep_idle_s = 0.3  # the fix (fixs13b): idle buffers are let go once none runs a while
    await upload_at_once(client, tmp_path, store, files=2, chunks_each=6)
    # Kept at first, so the next file of a queue reuses them ...
    assert client.buffers.idle > 0
    # ... and let go once nothing more comes.
    for _ in range(100):
        if client.buffers.idle == 0:
            break
        await asyncio.sleep(0.1)
    held = client.buffers.idle * client.buffers.buffer_bytes
    assert held == 0, (
        f"{client.buffers.idle} chunk buffers ({held} bytes; {client.buffers.idle} x chunk_mb MiB on a "
        "station) stay resident with no upload in flight"
    )


async def test_control_a_pool_keeping_nothing_holds_nothing_once_uploads_end(
    tmp_path: Path, central: Served, store: TusUploadStore, session: aiohttp.ClientSession,  # noqa: F811
    bodies: BlockingBodySender,
) -> None:
    """Control of the test above: the measure can read zero."""
    client = station_client(session, central.origin, bodies, concurrency_at_connect=0)
    await upload_at_once(client, tmp_path, store, files=2, chunks_each=6)
    assert client.buffers.idle * client.buffers.buffer_bytes == 0


async def test_an_upload_starting_within_the_window_reuses_the_kept_buffers(
    tmp_path: Path, central: Served, store: TusUploadStore, session: aiohttp.ClientSession,  # noqa: F811
    bodies: BlockingBodySender,
) -> None:
    """The window's other side: an upload that starts before the idle buffers are let go makes none."""
    client = station_client(session, central.origin, bodies, concurrency_at_connect=2)
    client.buffers.keep_idle_s = 60.0
    await upload_at_once(client, tmp_path, store, files=2, chunks_each=6)
    made = client.buffers.made
    (tmp_path / "again").mkdir()
    await upload_at_once(client, tmp_path / "again", store, files=2, chunks_each=6)
    assert client.buffers.made == made
