"""Several receivers on one PostgreSQL database and one Ceph bucket: a tus upload continues on whichever
receiver its next request reaches (edge/central/postgres/tus_shared_store.py).

Real PostgreSQL and a real Ceph RGW (tests/central/pg.py, tests/central/ceph.py), real HTTP; receivers in
this process or as `edge central run` processes (one of them SIGKILLed mid-PATCH); the station's own tus
client (edge/uplink/tus_client.py) where it is the station that uploads.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.central.postgres.tus_shared_store import SharedTusStore
from edge.central.s3_objects import S3ObjectStore
from edge.central.service import RunningCentral, start_central
from edge.central.tus_staging import STAGING_PREFIX
from edge.custody.receipt import verify_receipt
from edge.uplink.policy import RateLimiter
from edge.uplink.tus_client import PREFIX_SHA256, TusClient, UploadInterrupted
from tests.central.conftest import FakeStation, free_port, post_json
from tests.central.receivers import PART_MB, ReceiverProcess, ReceiverSite
from tests.central.receivers import site as site
from tests.central.s3 import raw_client, s3_objects_config

PART = PART_MB << 20
TUS = {"Tus-Resumable": "1.0.0"}
OCTET = "application/offset+octet-stream"



@dataclass
class Pair:
    a: RunningCentral
    b: RunningCentral

    def url(self, which: str) -> str:
        return str((self.a if which == "a" else self.b).url)


@pytest.fixture
async def pair(site: ReceiverSite) -> AsyncIterator[Pair]:
    """Two receivers in this process on ports of their own, sharing the database and the bucket."""
    a = await start_central(site.config("a", uploads="max_size_mb = 64\nstation_quota_mb = 64\n"))
    try:
        b = await start_central(site.config("b", uploads="max_size_mb = 64\nstation_quota_mb = 64\n"))
    except BaseException:
        await a.stop()
        raise
    try:
        yield Pair(a, b)
    finally:
        await b.stop()
        await a.stop()


def _enrol(running: RunningCentral, station: FakeStation) -> dict[str, str]:
    running.parts.index.enroll_station(station.station_id, station.key.public_key_b64, "c" * 64)
    return {"X-Edge-Station": station.station_id}


def _prefix_checksum(content: bytes) -> str:
    return f"{PREFIX_SHA256} " + base64.b64encode(hashlib.sha256(content).digest()).decode("ascii")


async def _create(session: aiohttp.ClientSession, url: str, headers: dict[str, str], length: int) -> str:
    async with session.post(f"{url}/v1/uploads", headers={**TUS, **headers,
                                                          "Upload-Length": str(length)}) as created:
        assert created.status == 201, await created.text()
        return created.headers["Location"].rsplit("/", 1)[-1]


async def _patch(
    session: aiohttp.ClientSession, url: str, upload: str, headers: dict[str, str], offset: int, body: Any,
    checksum: str | None = None,
) -> tuple[int, dict[str, str], str]:
    extra = {"Upload-Checksum": checksum} if checksum else {}
    data = io.BytesIO(body) if isinstance(body, bytes) else body  # a large bytes body warns in aiohttp
    async with session.patch(f"{url}/v1/uploads/{upload}", data=data, headers={
        **TUS, **headers, **extra, "Upload-Offset": str(offset), "Content-Type": OCTET,
    }) as answer:
        return answer.status, dict(answer.headers), await answer.text()


async def _offset(session: aiohttp.ClientSession, url: str, upload: str, headers: dict[str, str]) -> int:
    async with session.head(f"{url}/v1/uploads/{upload}", headers={**TUS, **headers}) as answer:
        assert answer.status == 200, answer.status
        return int(answer.headers["Upload-Offset"])


async def _complete_upload(pair: Pair, station: FakeStation, content: bytes) -> tuple[str, dict[str, str]]:
    """`content` uploaded whole to receiver a in one PATCH: the upload's id and the station's headers."""
    headers = _enrol(pair.a, station)
    async with aiohttp.ClientSession() as session:
        upload = await _create(session, pair.url("a"), headers, len(content))
        status, _, text = await _patch(session, pair.url("a"), upload, headers, 0, content,
                                       _prefix_checksum(content))
        assert status == 204, text
    return upload, headers


def _staged_keys(site: ReceiverSite, upload: str) -> list[str]:
    listing = raw_client(site.gateway).list_object_versions(Bucket=site.bucket,
                                                            Prefix=f"{STAGING_PREFIX}{upload}/")
    return [v["Key"] for v in [*listing.get("Versions", []), *listing.get("DeleteMarkers", [])]]


async def _register(
    session: aiohttp.ClientSession, url: str, running: RunningCentral, station: FakeStation, upload: str,
    acquired: Any, headers: dict[str, str],
) -> dict[str, Any]:
    body = {"upload": upload, "manifest": acquired.manifest, "ledger": station.segment()}
    status, doc = await post_json(session, f"{url}/v1/stations/{station.station_id}/items", body, headers)
    assert status == 201, doc
    assert verify_receipt(doc["receipt"], running.parts.signing_key.public_key(), expected_item=acquired.item,
                          expected_sha256=acquired.sha256, expected_station=station.station_id) == []
    return doc


async def test_an_upload_begun_on_one_receiver_is_finished_on_the_other_and_registered(
    pair: Pair, site: ReceiverSite, station: FakeStation, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    headers = _enrol(pair.a, station)
    content = os.urandom(3 * PART + 12345)
    acquired = station.acquire(content)

    def rebuilt(read: int, of: int) -> bool:
        wanted = f"rebuilt by reading {read} of its {of} committed bytes"
        return any(wanted in r.getMessage() and upload in r.getMessage() for r in caplog.records)

    async with aiohttp.ClientSession() as session:
        upload = await _create(session, pair.url("a"), headers, len(content))
        # A PATCH of one part and a bit on A: the part is committed, the tail that fills no part is not.
        status, answer, text = await _patch(session, pair.url("a"), upload, headers, 0, content[:PART + 1000],
                                            _prefix_checksum(content[:PART + 1000]))
        assert status == 204, text
        assert answer["Upload-Offset"] == str(PART)
        # HEAD on either receiver: the same offset, from the database.
        assert await _offset(session, pair.url("a"), upload, headers) == PART
        assert await _offset(session, pair.url("b"), upload, headers) == PART
        # The next part on B, which never saw the first: it reads it back once to go on hashing.
        status, answer, text = await _patch(session, pair.url("b"), upload, headers, PART,
                                            content[PART:2 * PART], _prefix_checksum(content[:2 * PART]))
        assert status == 204 and answer["Upload-Offset"] == str(2 * PART), text
        assert rebuilt(PART, PART)
        # The rest on A again: it reads back only the part it did not see.
        status, answer, text = await _patch(session, pair.url("a"), upload, headers, 2 * PART,
                                            content[2 * PART:], _prefix_checksum(content))
        assert status == 204 and answer["Upload-Offset"] == str(len(content)), text
        assert rebuilt(PART, 2 * PART)
        assert await _offset(session, pair.url("b"), upload, headers) == len(content)
        # Registered on B, which did not hash the end: it reads the parts once before the copy.
        await _register(session, pair.url("b"), pair.b, station, upload, acquired, headers)
    assert any("completed on another receiver" in r.getMessage() for r in caplog.records)
    assert pair.b.parts.objects.verify(acquired.sha256) is None
    with pair.b.parts.objects.open(acquired.sha256) as stored:
        assert stored.read() == content
    mode, until, _ = pair.b.parts.objects.retention_of(acquired.sha256)  # type: ignore[attr-defined]
    assert mode == "COMPLIANCE" and until is not None
    assert _staged_keys(site, upload) == []  # the parts are gone once the item is registered
    assert pair.a.parts.uploads.get(upload) is None


async def test_registration_where_the_hash_was_computed_reads_nothing_back(
    pair: Pair, station: FakeStation, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    headers = _enrol(pair.b, station)
    content = os.urandom(PART + 777)
    acquired = station.acquire(content)
    async with aiohttp.ClientSession() as session:
        upload = await _create(session, pair.url("b"), headers, len(content))
        status, _, text = await _patch(session, pair.url("b"), upload, headers, 0, content,
                                       _prefix_checksum(content))
        assert status == 204, text
        await _register(session, pair.url("b"), pair.b, station, upload, acquired, headers)
    assert not any("read back" in r.getMessage() for r in caplog.records)
    assert pair.b.parts.objects.verify(acquired.sha256) is None


async def test_two_receivers_writing_one_upload_at_once_one_is_refused_and_nothing_is_corrupted(
    pair: Pair, site: ReceiverSite, station: FakeStation
) -> None:
    headers = _enrol(pair.a, station)
    content = os.urandom(2 * PART)
    acquired = station.acquire(content)
    go_on = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield content[: PART // 2]
        await go_on.wait()
        yield content[PART // 2: PART]

    async with aiohttp.ClientSession() as session:
        upload = await _create(session, pair.url("a"), headers, len(content))
        first = asyncio.create_task(_patch(session, pair.url("a"), upload, headers, 0, slow_body()))
        with site.pg.admin() as admin:  # A holds the upload once its advisory lock shows
            for _ in range(600):
                row = admin.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                    "AND granted").fetchone()
                if row is not None and int(str(row[0])) >= 1:
                    break
                await asyncio.sleep(0.05)  # polling for the lock to be taken, not proving an absence
            else:
                raise AssertionError("receiver A never took the upload's lock")
        status, _, text = await _patch(session, pair.url("b"), upload, headers, 0, content[:PART])
        assert status == 409 and "upload_busy" in text, text
        go_on.set()
        status, answer, text = await first
        assert status == 204 and answer["Upload-Offset"] == str(PART), text
        # Control: once A let go, B takes the same upload and finishes it.
        status, _, text = await _patch(session, pair.url("b"), upload, headers, PART, content[PART:],
                                       _prefix_checksum(content))
        assert status == 204, text
        await _register(session, pair.url("b"), pair.b, station, upload, acquired, headers)
    assert pair.b.parts.objects.verify(acquired.sha256) is None


async def test_a_chunk_whose_checksum_differs_is_discarded_and_leaves_no_part(
    pair: Pair, site: ReceiverSite, station: FakeStation
) -> None:
    headers = _enrol(pair.a, station)
    content = os.urandom(2 * PART)
    async with aiohttp.ClientSession() as session:
        upload = await _create(session, pair.url("a"), headers, len(content))
        damaged = content[:PART - 1] + bytes([content[PART - 1] ^ 1])
        status, answer, text = await _patch(session, pair.url("a"), upload, headers, 0, damaged,
                                            _prefix_checksum(content[:PART]))
        assert status == 460 and "checksum_mismatch" in text, text
        assert answer["Upload-Offset"] == "0"
        assert await _offset(session, pair.url("b"), upload, headers) == 0
        assert _staged_keys(site, upload) == []  # the stored part of the refused chunk was deleted
        # Control: the same chunk undamaged is taken.
        status, answer, text = await _patch(session, pair.url("b"), upload, headers, 0, content[:PART],
                                            _prefix_checksum(content[:PART]))
        assert status == 204 and answer["Upload-Offset"] == str(PART), text
        assert len(_staged_keys(site, upload)) == 1


async def test_the_quota_counts_the_uploads_of_every_receiver(pair: Pair, station: FakeStation) -> None:
    headers = _enrol(pair.a, station)
    async with aiohttp.ClientSession() as session:
        await _create(session, pair.url("a"), headers, 40 << 20)
        async with session.post(f"{pair.url('b')}/v1/uploads", headers={
            **TUS, **headers, "Upload-Length": str(30 << 20),
        }) as refused:
            text = await refused.text()
            assert refused.status == 507 and "quota_exceeded" in text, text
            assert "Retry-After" in refused.headers
        # Control: what still fits under the quota is created on B.
        await _create(session, pair.url("b"), headers, 24 << 20)


async def test_an_abandoned_upload_is_purged_by_another_receiver(
    pair: Pair, site: ReceiverSite, station: FakeStation
) -> None:
    headers = _enrol(pair.a, station)
    content = os.urandom(PART)
    async with aiohttp.ClientSession() as session:
        upload = await _create(session, pair.url("a"), headers, 3 * PART)
        status, _, text = await _patch(session, pair.url("a"), upload, headers, 0, content)
        assert status == 204, text
    uploads_b = pair.b.parts.uploads
    assert isinstance(uploads_b, SharedTusStore)
    info = uploads_b.get(upload)
    assert info is not None and len(_staged_keys(site, upload)) == 1
    # Control: before its expiry nothing is purged.
    assert uploads_b.purge_expired(info.expires - timedelta(seconds=1)) == 0
    assert uploads_b.get(upload) is not None
    assert uploads_b.purge_expired(info.expires + timedelta(seconds=1)) == 1
    assert uploads_b.get(upload) is None and pair.a.parts.uploads.get(upload) is None
    assert _staged_keys(site, upload) == []


async def test_termination_on_another_receiver_waits_for_the_registrations_lease(
    pair: Pair, site: ReceiverSite, station: FakeStation
) -> None:
    headers = _enrol(pair.a, station)
    content = os.urandom(PART + 321)
    acquired = station.acquire(content)
    uploads_a = pair.a.parts.uploads
    assert isinstance(uploads_a, SharedTusStore)
    async with aiohttp.ClientSession() as session:
        upload = await _create(session, pair.url("a"), headers, len(content))
        status, _, text = await _patch(session, pair.url("a"), upload, headers, 0, content)
        assert status == 204, text
        # Receiver A's registration claims the upload (its lease, in the database) ...
        await asyncio.to_thread(uploads_a.staged, upload)
        # ... and the station's termination on receiver B is refused while it runs.
        for method, extra in (("DELETE", {}), ("POST", {"X-HTTP-Method-Override": "DELETE"})):
            async with session.request(method, f"{pair.url('b')}/v1/uploads/{upload}",
                                       headers={**TUS, **headers, **extra}) as refused:
                doc = await refused.json()
                assert refused.status == 423, doc
                assert doc["error"] == "upload_registering", doc
                assert f"upload {upload} is held by its registration" in doc["detail"], doc
        assert len(_staged_keys(site, upload)) == 2 and uploads_a.get(upload) is not None
        # The registration goes on with the content it holds and removes the upload itself.
        await _register(session, pair.url("a"), pair.a, station, upload, acquired, headers)
        assert uploads_a.get(upload) is None and _staged_keys(site, upload) == []

        # Control: a complete upload no registration claimed is terminated on B.
        other = os.urandom(1234)
        upload = await _create(session, pair.url("a"), headers, len(other))
        status, _, text = await _patch(session, pair.url("a"), upload, headers, 0, other)
        assert status == 204, text
        async with session.delete(f"{pair.url('b')}/v1/uploads/{upload}", headers={**TUS, **headers}) as done:
            assert done.status == 204, await done.text()
        assert uploads_a.get(upload) is None and _staged_keys(site, upload) == []


# -- a receiver killed mid-upload -----------------------------------------------------------------------


@pytest.fixture
def killable(site: ReceiverSite) -> Iterator[ReceiverProcess]:
    receiver = ReceiverProcess(site.config_file("killed"))
    yield receiver
    receiver.kill()


async def test_a_receiver_killed_mid_patch_costs_the_station_a_resume_on_another(
    site: ReceiverSite, killable: ReceiverProcess, station: FakeStation, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    await killable.start()
    other = await start_central(site.config("other"))
    try:
        headers = _enrol(other, station)
        content = os.urandom(6 * PART)
        acquired = station.acquire(content)
        clip = tmp_path / "clip.mp4"
        clip.write_bytes(content)
        confirmed: list[int] = []
        async with aiohttp.ClientSession() as session:
            # The station's own client, as the uplink configures it: sha256-prefix, chunks of two parts;
            # slowed so that a chunk is on the wire when the receiver dies.
            slow = RateLimiter(8 << 20, clock=time.monotonic)
            to_killed = TusClient(session, f"{killable.url}/v1/uploads", chunk_size_bytes=2 * PART,
                                  checksum=PREFIX_SHA256, limiter=slow, headers=headers, request_timeout_s=60)
            metadata = {"item": acquired.item, "sha256": acquired.sha256}

            def progress(offset: int) -> None:
                confirmed.append(offset)
                if offset >= 2 * PART:
                    killable.kill()  # the next chunk is going out now

            with pytest.raises(UploadInterrupted) as interrupted:
                await to_killed.upload(None, clip, len(content), metadata, progress=progress,
                                       expected_sha256=acquired.sha256)
            assert killable.process is not None and killable.process.returncode == -9
            url = interrupted.value.url
            assert url is not None
            upload = url.rsplit("/", 1)[-1]
            # The load balancer sends the station's next request to the other receiver.
            to_other = TusClient(session, f"{other.url}/v1/uploads", chunk_size_bytes=2 * PART,
                                 checksum=PREFIX_SHA256, headers=headers, request_timeout_s=60)
            resumed_at = await to_other.offset(f"{other.url}/v1/uploads/{upload}")
            assert resumed_at == max(confirmed) and resumed_at < len(content)
            result = await to_other.upload(f"{other.url}/v1/uploads/{upload}", clip, len(content), metadata,
                                           expected_sha256=acquired.sha256)
            assert result.resumed_from == resumed_at
            await _register(session, str(other.url), other, station, upload, acquired, headers)
        assert any("rebuilt by reading" in r.getMessage() for r in caplog.records)
        assert other.parts.objects.verify(acquired.sha256) is None
        with other.parts.objects.open(acquired.sha256) as stored:
            assert hashlib.sha256(stored.read()).hexdigest() == acquired.sha256
        # Parts of the chunk that died with the receiver were never committed; they went with the rest.
        assert _staged_keys(site, upload) == []
    finally:
        await other.stop()


async def test_a_bucket_out_of_reach_refuses_the_chunk_with_503_and_the_upload_goes_on_later(
    pair: Pair, site: ReceiverSite, station: FakeStation
) -> None:
    headers = _enrol(pair.a, station)
    content = os.urandom(PART)
    uploads_b = pair.b.parts.uploads
    assert isinstance(uploads_b, SharedTusStore)
    reachable = uploads_b.staging.client
    # B's own S3 client, pointed at a port where nothing listens: the bucket is out of B's reach.
    nowhere = f"http://127.0.0.1:{free_port()}"
    cut = S3ObjectStore(s3_objects_config(site.gateway, site.bucket, endpoint=nowhere, max_attempts=1,
                                          connect_timeout_s=2), site.gateway.secret_access_key)
    async with aiohttp.ClientSession() as session:
        upload = await _create(session, pair.url("a"), headers, len(content))
        uploads_b.staging.client = cut.client
        try:
            status, answer, text = await _patch(session, pair.url("b"), upload, headers, 0, content)
        finally:
            uploads_b.staging.client = reachable
        assert status == 503 and "storage_unavailable" in text, text
        assert "Retry-After" in answer
        assert await _offset(session, pair.url("a"), upload, headers) == 0  # nothing half-kept
        # Control: with the bucket in reach the same chunk is taken (and nothing holds the upload).
        status, answer, text = await _patch(session, pair.url("b"), upload, headers, 0, content)
        assert status == 204 and answer["Upload-Offset"] == str(PART), text


async def test_an_empty_upload_is_complete_at_creation_and_registers_on_the_other_receiver(
    pair: Pair, site: ReceiverSite, station: FakeStation
) -> None:
    headers = _enrol(pair.a, station)
    acquired = station.acquire(b"")
    async with aiohttp.ClientSession() as session:
        upload = await _create(session, pair.url("a"), headers, 0)
        assert await _offset(session, pair.url("b"), upload, headers) == 0
        await _register(session, pair.url("b"), pair.b, station, upload, acquired, headers)
    assert pair.b.parts.objects.verify(acquired.sha256) is None
    assert pair.b.parts.objects.size_bytes(acquired.sha256) == 0
