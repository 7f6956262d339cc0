"""The shared tus store hands each part's buffer to the bucket without a copy (issue 13 leftovers;
edge/central/postgres/tus_shared_store.py ``SharedUploadWrite._store_buffer``): a PUT that botocore
retries sends the same bytes again, and the part stored is the content's.

Real PostgreSQL and Ceph RGW (tests/central/pg.py, tests/central/ceph.py); the first attempt of part 1's
PUT loses its connection (botocore's ``before-send`` hook raises what a closed connection raises, so its
standard retry sends the part again). Control: a buffer changed between the attempts (what reusing it
for the next part while the PUT still held it would do) is caught, by the attempts' digests here and by
the RGW's Content-MD5 check, which refuses the part.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any

import pytest
from botocore.exceptions import ConnectionClosedError

from edge.central.postgres.tus_shared_store import SharedTusStore
from edge.central.service import start_central
from edge.central.tus_contract import UploadStoreUnavailableError
from edge.central.tus_staging import STAGING_PREFIX
from edge.central.tus_store import UploadInfo
from tests.central.receivers import PART_MB, ReceiverSite
from tests.central.receivers import site as site
from tests.central.s3 import raw_client

STATION = "station-a"
PART = PART_MB << 20



class FirstAttemptLost:
    """``before-send`` of PutObject: the first attempt at ``key`` loses its connection (after its body's
    SHA-256 is noted, and, with ``change_body``, after its first byte is flipped); every attempt's body
    digest is kept."""

    def __init__(self, key: str, *, change_body: bool) -> None:
        self.key, self.change_body = key, change_body
        self.digests: list[str] = []

    def __call__(self, request: Any, **_: Any) -> None:
        if not request.url.endswith(f"/{self.key}"):
            return
        self.digests.append(hashlib.sha256(request.body).hexdigest())
        if len(self.digests) == 1:
            if self.change_body:
                request.body[0] ^= 0xFF
            raise ConnectionClosedError(endpoint_url="the staging bucket")


def _two_parts(store: SharedTusStore, upload: str, data: bytes) -> UploadInfo:
    with store.begin_write(upload, offset=0) as write:
        write.write(data[:PART])
        write.write(data[PART:])
        return write.keep()


@pytest.mark.parametrize("change_body", [False, True], ids=["retried", "control-changed-between-attempts"])
async def test_a_retried_part_put_sends_the_same_bytes(site: ReceiverSite, change_body: bool) -> None:
    running = await start_central(site.config("a", uploads="max_size_mb = 64\nstation_quota_mb = 64\n"))
    try:
        store = running.parts.uploads
        assert isinstance(store, SharedTusStore)
        data = os.urandom(2 * PART)
        upload = (await asyncio.to_thread(store.create, STATION, len(data))).upload_id
        key = f"{STAGING_PREFIX}{upload}/00001"
        lost = FirstAttemptLost(key, change_body=change_body)
        store.staging.client.meta.events.register("before-send.s3.PutObject", lost)
        if change_body:
            with pytest.raises(UploadStoreUnavailableError, match=f"store part 1 of upload {upload}"):
                await asyncio.to_thread(_two_parts, store, upload, data)
            info = await asyncio.to_thread(store.get, upload)
        else:
            info = await asyncio.to_thread(_two_parts, store, upload, data)
    finally:
        await running.stop()
    part_sha256 = hashlib.sha256(data[:PART]).hexdigest()
    assert len(lost.digests) == 2, "botocore sent part 1 twice"
    assert lost.digests[0] == part_sha256
    if change_body:
        assert lost.digests[1] != part_sha256
        assert info is not None and info.offset == 0
        return
    assert lost.digests[1] == part_sha256, "the retry sent the bytes of the first attempt"
    stored = raw_client(site.gateway).get_object(Bucket=site.bucket, Key=key)["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == part_sha256
    assert info is not None and info.complete and info.sha256 == hashlib.sha256(data).hexdigest()
