"""The official Python tus client (tuspy) against the server: any standard tus client can upload.

tuspy's uploader is blocking (``requests``), so it runs in a worker thread while the server runs in the
test's event loop on a real socket.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tusclient import client
from tusclient.exceptions import TusCommunicationError, TusUploadFailed
from tusclient.storage.filestorage import FileStorage

from edge.central.tus_store import TusUploadStore, UploadInfo
from tests.central.tus_fixtures import STATION_HEADER, RunningTus, running_tus

STATION = "station-a"
KIB = 1024


def make_store(root: Path) -> TusUploadStore:
    return TusUploadStore(root, max_size_bytes=64 * 1024 * KIB, expire_after_s=3600)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningTus]:
    async with running_tus(make_store(tmp_path / "uploads")) as running:
        yield running


def tus_client(server: RunningTus) -> client.TusClient:
    return client.TusClient(server.collection_url, headers={STATION_HEADER: STATION})


class Recording(io.BytesIO):
    """The file to upload. tuspy opens files by path without closing them and closes streams it is
    given after fingerprinting them, so it gets a stream whose close() is left to the test."""

    def close(self) -> None:
        pass


def recording(size: int) -> tuple[Recording, bytes]:
    data = os.urandom(size)
    return Recording(data), data


def assert_received(server: RunningTus, url: str, data: bytes) -> UploadInfo:
    upload_id = url.rsplit("/", 1)[1]
    done = [info for info in server.completed if info.upload_id == upload_id]
    assert len(done) == 1
    assert done[0].sha256 == hashlib.sha256(data).hexdigest()
    assert done[0].station == STATION
    assert server.store.complete_path(upload_id).read_bytes() == data
    return done[0]


@pytest.mark.parametrize(
    ("size", "chunk_size", "checksum"),
    [
        (0, 64 * KIB, True),
        (1, 1, True),
        (150 * KIB, 4 * KIB, True),
        (700 * KIB, 64 * KIB, True),
        (700 * KIB, 100 * KIB, False),
        (3 * 1024 * KIB + 7, None, True),  # tuspy's default: the whole file in one PATCH
    ],
)
async def test_tuspy_uploads_files(
    server: RunningTus, size: int, chunk_size: int | None, checksum: bool
) -> None:
    stream, data = recording(size)
    metadata = {
        "item": "f3c1-0001",
        "sha256": hashlib.sha256(data).hexdigest(),
        "filename": "执法记录仪 0001.mp4",
    }

    def upload() -> str:
        options: dict[str, object] = {"metadata": metadata, "upload_checksum": checksum}
        if chunk_size is not None:
            options["chunk_size"] = chunk_size
        uploader = tus_client(server).uploader(file_stream=stream, **options)
        uploader.upload()
        return str(uploader.url)

    url = await asyncio.to_thread(upload)
    info = assert_received(server, url, data)
    assert dict(info.metadata) == metadata


async def test_tuspy_resumes_through_its_url_storage(server: RunningTus, tmp_path: Path) -> None:
    stream, data = recording(500 * KIB)
    storage = FileStorage(str(tmp_path / "tus-urls.json"))  # type: ignore[no-untyped-call]
    chunk = 64 * KIB

    def first_part() -> str:
        uploader = tus_client(server).uploader(
            file_stream=stream, chunk_size=chunk, store_url=True, url_storage=storage, upload_checksum=True
        )
        uploader.upload(stop_at=3 * chunk)  # the station went away here
        return str(uploader.url)

    def the_rest() -> tuple[str, int]:
        uploader = tus_client(server).uploader(
            file_stream=stream, chunk_size=chunk, store_url=True, url_storage=storage, upload_checksum=True
        )
        resumed_at = uploader.offset  # asked the server with HEAD
        uploader.upload()
        return str(uploader.url), resumed_at

    try:
        url = await asyncio.to_thread(first_part)
        assert server.completed == []
        again, resumed_at = await asyncio.to_thread(the_rest)
    finally:
        storage.close()  # type: ignore[no-untyped-call]
    assert again == url
    assert resumed_at == 3 * chunk
    assert_received(server, url, data)


async def test_tuspy_resumes_after_the_server_went_down(tmp_path: Path) -> None:
    stream, data = recording(600 * KIB)
    root = tmp_path / "uploads"
    chunk = 50 * KIB

    async with running_tus(make_store(root)) as first:
        port = first.port
        uploader = tus_client(first).uploader(file_stream=stream, chunk_size=chunk, upload_checksum=True)
        for _ in range(4):
            await asyncio.to_thread(uploader.upload_chunk)
        url = str(uploader.url)
    # The server is gone: the client's next chunk fails like a real outage.
    with pytest.raises((TusUploadFailed, TusCommunicationError)):
        await asyncio.to_thread(uploader.upload_chunk)

    # A new process on the same store (the hasher is lost; completion re-reads the file).
    async with running_tus(make_store(root), port=port) as second:

        def resume() -> int:
            again = client.TusClient(second.collection_url, headers={STATION_HEADER: STATION}).uploader(
                file_stream=stream, url=url, chunk_size=chunk, upload_checksum=True
            )
            offset = int(again.offset)
            again.upload()
            return offset

        resumed_at = await asyncio.to_thread(resume)
        assert resumed_at == 4 * chunk
        assert_received(second, url, data)


async def test_tuspy_is_refused_as_another_station(server: RunningTus) -> None:
    stream, _data = recording(10 * KIB)

    def upload_then_steal() -> None:
        uploader = tus_client(server).uploader(file_stream=stream, chunk_size=4 * KIB)
        uploader.upload(stop_at=4 * KIB)
        thief = client.TusClient(server.collection_url, headers={STATION_HEADER: "station-b"})
        thief.uploader(file_stream=stream, url=uploader.url, chunk_size=4 * KIB)

    with pytest.raises(TusCommunicationError) as caught:
        await asyncio.to_thread(upload_then_steal)
    assert caught.value.status_code == 404


async def test_tuspy_async_uploader(server: RunningTus) -> None:
    stream, data = recording(300 * KIB)
    uploader = tus_client(server).async_uploader(
        file_stream=stream, chunk_size=64 * KIB, upload_checksum=True
    )
    await uploader.upload()
    assert_received(server, str(uploader.url), data)
