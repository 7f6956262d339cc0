"""A disclosure package holding an original far larger than the memory it may take is streamed, not built in
memory: the central's Python allocations while it streams stay a small fraction of the original's size."""

from __future__ import annotations

import gc
import io
import os
import tracemalloc
import zipfile
from pathlib import Path

import aiohttp

from edge.central.auth import DEV_READER_HEADER, DEV_STATION_HEADER
from tests.central.conftest import TUS, FakeStation, enroll, post_json, start_http_central
from tests.tamper.stores import run_edge

ORIGINAL_BYTES = 96 << 20
# What the central may hold while it streams: a few chunks of the original and the zip's bookkeeping.
MAX_PEAK_BYTES = 12 << 20


async def test_a_package_larger_than_its_memory_bound_streams(tmp_path: Path) -> None:
    central = await start_http_central(tmp_path, dev=True)
    station = FakeStation("st-big")
    try:
        enroll(central.index, station)
        acquired = station.acquire(os.urandom(ORIGINAL_BYTES), case_number="BIG-1")
        async with aiohttp.ClientSession() as session:
            headers = {**TUS, DEV_STATION_HEADER: station.station_id}
            async with session.post(f"{central.url}/v1/uploads", headers={
                **headers, "Upload-Length": str(ORIGINAL_BYTES)}) as created:
                assert created.status == 201
                upload = created.headers["Location"].rstrip("/").rsplit("/", 1)[-1]
            async with session.patch(f"{central.url}/v1/uploads/{upload}", data=io.BytesIO(acquired.content),
                                     headers={**headers, "Upload-Offset": "0",
                                              "Content-Type": "application/offset+octet-stream"}) as patched:
                assert patched.status == 204
            body = {"upload": upload, "manifest": acquired.manifest, "ledger": station.segment(0)}
            status, doc = await post_json(session, f"{central.url}/v1/stations/{station.station_id}/items",
                                          body, {DEV_STATION_HEADER: station.station_id})
            assert status == 201, doc
        expected = acquired.sha256
        del acquired
        gc.collect()
        archive = tmp_path / "big.zip"
        tracemalloc.start()
        try:
            async with aiohttp.ClientSession() as session, session.get(
                f"{central.url}/v1/disclosure/package", params={"case": "BIG-1"},
                headers={DEV_READER_HEADER: "auditor-big"},
            ) as response:
                assert response.status == 200
                with open(archive, "wb") as out:
                    async for chunk in response.content.iter_chunked(1 << 16):
                        out.write(chunk)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        await central.running.stop()
        station.conn.close()
    assert archive.stat().st_size > ORIGINAL_BYTES
    assert peak < MAX_PEAK_BYTES, f"peak {peak} bytes while streaming a {ORIGINAL_BYTES}-byte original"
    folder = tmp_path / "big"
    with zipfile.ZipFile(archive) as opened:
        opened.extractall(folder)
    verdict = run_edge("verify", str(folder))
    assert verdict.code == 4, verdict  # every check holds; origin unproven without a pinned key
    assert expected in (folder / "SHA256SUMS").read_text()
