"""A genuine disclosure package whose ledger segment spans many redacted lines, built by a running central.

A package's segment runs from the disclosed item's first entry to the central's head, so a package of an
item docked long ago carries one redacted line per entry the station wrote since. :func:`long_package`
makes one the way it happens: a station ledger (:class:`FakeStation`: the real ledger, format 2, a signed
checkpoint at every entry) records one item, uploaded and registered with its manifest; then ``others``
acquisitions of other items in dockings of 50 (session entries of no item), pushed as the uplink pushes
them; then a tag of the disclosed item (a clerk adding the case months later). The central builds the
package for the item's case (HTTP, as a reader downloads it), and it is unzipped. Used by the memory test
(tests/audit/test_package_segment_memory.py) and the benchmark (tests/bench/disclosure_span.py).
"""

from __future__ import annotations

import io
import time
import tracemalloc
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from edge.central.auth import DEV_READER_HEADER, DEV_STATION_HEADER
from edge.central.registration import MAX_SEGMENT_ENTRIES
from edge.custody.canonical import canonical_json
from tests.central.conftest import TUS, FakeStation, enroll, post_json, start_http_central

STATION = "st-long"
CASE = "LONG-1"
DOCKING = 50  # acquisitions per docking of the other items


@dataclass(frozen=True)
class LongPackage:
    folder: Path  # the unzipped package
    station_entries: int  # the station ledger's head seq
    build_s: float  # the central building the package and the reader downloading it
    build_peak_bytes: int  # tracemalloc peak meanwhile (central and reader share this process)


async def _push(session: aiohttp.ClientSession, url: str, station: FakeStation, after: int) -> int:
    """Push the station's entries after seq ``after`` with a checkpoint on the last; the new head."""
    head = station.ledger.head()[0]
    entries = [e.to_dict() for e in station.ledger.entries(after + 1)]
    checkpoint = station.ledger.checkpoints(head, head)[0].to_dict()
    segment = canonical_json({"entries": entries, "checkpoint": checkpoint})
    async with session.post(f"{url}/v1/stations/{station.station_id}/ledger", data=io.BytesIO(segment),
                            headers={"Content-Type": "application/json",
                                     DEV_STATION_HEADER: station.station_id}) as accepted:
        assert accepted.status == 200, await accepted.text()
    return head


async def long_package(workdir: Path, others: int) -> LongPackage:
    central = await start_http_central(workdir, dev=True)
    station = FakeStation(STATION)
    try:
        enroll(central.index, station)
        acquired = station.acquire(b"evidence " * 1000, case_number="OTHER-1")
        # No total timeout: a long span takes the central minutes to plan on a busy machine (bench sizes).
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
            headers = {**TUS, DEV_STATION_HEADER: station.station_id}
            size = str(len(acquired.content))
            async with session.post(f"{central.url}/v1/uploads",
                                    headers={**headers, "Upload-Length": size}) as created:
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
            pushed = station.ledger.head()[0]
            unpushed = 0
            for n in range(others):
                if n % DOCKING == 0:
                    session_id = f"s-{n // DOCKING}"
                    station.record("session_started", None, {"session": session_id,
                                                             "identity": {"usb_serial": f"U{n % 7}"}})
                station.record("acquired", str(uuid.uuid4()), {"session": session_id, "size": n,
                                                              "sha256": f"{n:064x}", "attempt": 0})
                unpushed = station.ledger.head()[0] - pushed
                if unpushed >= MAX_SEGMENT_ENTRIES - 1:
                    pushed = await _push(session, central.url, station, pushed)
            station.tag(acquired.item, {"case_number": CASE})
            await _push(session, central.url, station, pushed)
            archive = workdir / "package.zip"
            started = time.perf_counter()
            tracemalloc.start()
            try:
                async with session.get(f"{central.url}/v1/disclosure/package", params={"case": CASE},
                                       headers={DEV_READER_HEADER: "auditor-long"}) as response:
                    assert response.status == 200, await response.text()
                    with open(archive, "wb") as out:
                        async for chunk in response.content.iter_chunked(1 << 16):
                            out.write(chunk)
                build_peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            build_s = time.perf_counter() - started
        head = station.ledger.head()[0]
    finally:
        await central.running.stop()
        station.conn.close()
    folder = workdir / "package"
    with zipfile.ZipFile(archive) as opened:
        opened.extractall(folder)
    return LongPackage(folder, head, build_s, build_peak)
