"""The parts of unfinished tus uploads in a staging bucket of their own ([central] objects staging_bucket):
a content bucket with a default retention locks whatever is written into it, so parts staged there
cannot be deleted by the purge (the control below shows the refusal); in a staging bucket without
Object Lock they are, and the registered content still becomes a locked object in the content bucket by
server-side copies across the two buckets (UploadPartCopy, on a real Ceph RGW). The staging bucket is
checked at start."""

from __future__ import annotations

import json
import logging
import os
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from pydantic import ValidationError

from edge.central.app import READINESS
from edge.central.objects import ObjectStoreError
from edge.central.postgres.tus_shared_store import SharedTusStore
from edge.central.s3_objects import S3ObjectStore
from edge.central.service import RunningCentral, start_central
from edge.central.tus_staging import STAGING_PREFIX
from tests.central.ceph import CephGateway
from tests.central.conftest import PG_PASSWORD_ENV, FakeStation, get_json
from tests.central.pg import PostgresDatabaseUnderTest
from tests.central.receivers import PART_MB, ReceiverSite
from tests.central.s3 import SECRET_ENV, new_bucket, raw_client, s3_objects_config
from tests.central.test_tus_shared_store import _create, _enrol, _patch, _prefix_checksum, _register

PART = PART_MB << 20


def _locked_by_default(gateway: CephGateway) -> str:
    """A content bucket whose default retention locks every version written into it for a day."""
    bucket = new_bucket(gateway)
    raw_client(gateway).put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 1}}})
    return bucket


def _staging(gateway: CephGateway, *, versioned: bool = True) -> str:
    bucket = new_bucket(gateway, object_lock=False)
    if versioned:
        raw_client(gateway).put_bucket_versioning(Bucket=bucket,
                                                  VersioningConfiguration={"Status": "Enabled"})
    return bucket


def _part_versions(gateway: CephGateway, bucket: str, upload: str = "") -> list[str]:
    listing = raw_client(gateway).list_object_versions(Bucket=bucket, Prefix=f"{STAGING_PREFIX}{upload}")
    return [v["Key"] for v in [*listing.get("Versions", []), *listing.get("DeleteMarkers", [])]]


@pytest.fixture
def env(pg_database: PostgresDatabaseUnderTest, ceph_gateway: CephGateway,
        monkeypatch: pytest.MonkeyPatch) -> CephGateway:
    monkeypatch.setenv(PG_PASSWORD_ENV, pg_database.password)
    monkeypatch.setenv(SECRET_ENV, ceph_gateway.secret_access_key)
    return ceph_gateway


async def _abandoned_upload(running: RunningCentral, station: FakeStation) -> str:
    """An upload with one committed part, never finished."""
    headers = _enrol(running, station)
    async with aiohttp.ClientSession() as session:
        upload = await _create(session, str(running.url), headers, 3 * PART)
        status, _, text = await _patch(session, str(running.url), upload, headers, 0, os.urandom(PART))
        assert status == 204, text
    return upload


def _purge(running: RunningCentral, upload: str) -> None:
    uploads = running.parts.uploads
    assert isinstance(uploads, SharedTusStore)
    info = uploads.get(upload)
    assert info is not None
    assert uploads.purge_expired(info.expires + timedelta(seconds=1)) == 1
    assert uploads.get(upload) is None


async def test_parts_in_the_staging_bucket_are_purged_and_registered_content_is_locked_in_the_content_bucket(
    tmp_path: Path, env: CephGateway, pg_database: PostgresDatabaseUnderTest, station: FakeStation,
) -> None:
    content_bucket, staging_bucket = _locked_by_default(env), _staging(env)
    site = ReceiverSite(tmp_path, pg_database, env, content_bucket, staging_bucket)
    running = await start_central(site.config("a"))
    try:
        # An abandoned upload: its part is in the staging bucket only, and the purge deletes it there.
        upload = await _abandoned_upload(running, station)
        assert len(_part_versions(env, staging_bucket, upload)) == 1
        assert _part_versions(env, content_bucket) == []
        _purge(running, upload)
        assert _part_versions(env, staging_bucket, upload) == []

        # A finished upload: registered by copies from the staging bucket into the locked content bucket.
        content = os.urandom(2 * PART + 4321)
        acquired = station.acquire(content)
        headers = {"X-Edge-Station": station.station_id}
        async with aiohttp.ClientSession() as session:
            upload = await _create(session, str(running.url), headers, len(content))
            status, _, text = await _patch(session, str(running.url), upload, headers, 0, content,
                                           _prefix_checksum(content))
            assert status == 204, text
            assert len(_part_versions(env, staging_bucket, upload)) == 3
            await _register(session, str(running.url), running, station, upload, acquired, headers)
        bucket = running.parts.objects
        assert isinstance(bucket, S3ObjectStore) and bucket.bucket == content_bucket
        assert bucket.verify(acquired.sha256) is None  # the bytes are the content's
        mode, until, _ = bucket.retention_of(acquired.sha256)
        assert mode == "COMPLIANCE" and until is not None
        assert _part_versions(env, staging_bucket, upload) == []  # the parts went after registration
        assert _part_versions(env, content_bucket) == []  # and never were in the content bucket
    finally:
        await running.stop()


async def test_control_parts_staged_in_a_content_bucket_with_default_retention_cannot_be_deleted(
    tmp_path: Path, env: CephGateway, pg_database: PostgresDatabaseUnderTest, station: FakeStation,
    caplog: pytest.LogCaptureFixture,
) -> None:
    content_bucket = _locked_by_default(env)
    site = ReceiverSite(tmp_path, pg_database, env, content_bucket)  # no staging bucket
    running = await start_central(site.config("a"))
    try:
        upload = await _abandoned_upload(running, station)
        caplog.set_level(logging.WARNING)
        _purge(running, upload)
    finally:
        await running.stop()
    # The record is gone, the locked part version stays: the delete was refused by the bucket.
    assert len(_part_versions(env, content_bucket, upload)) == 1
    assert any("could not be deleted" in record.getMessage() for record in caplog.records)


async def test_readiness_names_a_staging_bucket_gone_without_its_address_or_keys(
    tmp_path: Path, env: CephGateway, pg_database: PostgresDatabaseUnderTest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    content_bucket, staging_bucket = new_bucket(env), _staging(env)
    site = ReceiverSite(tmp_path, pg_database, env, content_bucket, staging_bucket)
    running = await start_central(site.config("a"))
    caplog.set_level(logging.INFO)
    try:
        running.app[READINESS].max_age_s = 0.0  # every probe answered afresh
        async with aiohttp.ClientSession() as session:
            # Control: both buckets answer, and the staging bucket is a check of its own.
            status, ready = await get_json(session, f"{running.url}/readyz")
            assert status == 200, ready
            assert ready["checks"]["objects"] == "ok" and ready["checks"]["staging"] == "ok", ready
            raw_client(env).delete_bucket(Bucket=staging_bucket)  # empty: no upload staged a part yet
            async with session.get(f"{running.url}/readyz") as answer:
                text = await answer.text()
                assert answer.status == 503 and answer.headers["Retry-After"], text
            ready = json.loads(text)
            # Which backend, in a word: the content bucket still answers.
            assert ready["checks"]["staging"] == "unreachable" and ready["checks"]["objects"] == "ok", ready
            assert all(ready["checks"][name] == "ok" for name in ("store", "index", "signer")), ready
            for secret in (env.endpoint, env.endpoint.split("://", 1)[1], staging_bucket, content_bucket,
                           env.access_key_id, env.secret_access_key, pg_database.password):
                assert secret not in text
            # The detail goes to the log, naming the bucket; the keys go nowhere.
            logged = "\n".join(record.getMessage() for record in caplog.records)
            assert f"staging: ConnectionError: head staging bucket: bucket {staging_bucket}" in logged
            assert env.secret_access_key not in logged and pg_database.password not in logged
            raw_client(env).create_bucket(Bucket=staging_bucket)  # the bucket is back: ready again
            status, ready = await get_json(session, f"{running.url}/readyz")
            assert status == 200 and ready["checks"]["staging"] == "ok", ready
    finally:
        await running.stop()


async def test_control_without_a_staging_bucket_the_content_bucket_is_the_only_bucket_checked(
    tmp_path: Path, env: CephGateway, pg_database: PostgresDatabaseUnderTest,
) -> None:
    site = ReceiverSite(tmp_path, pg_database, env, new_bucket(env))
    running = await start_central(site.config("a"))
    try:
        async with aiohttp.ClientSession() as session:
            status, ready = await get_json(session, f"{running.url}/readyz")
        assert status == 200 and set(ready["checks"]) == {"store", "index", "signer", "objects"}, ready
    finally:
        await running.stop()


def test_the_staging_bucket_is_checked_at_start(env: CephGateway) -> None:
    content_bucket = new_bucket(env)

    def check(staging: str) -> None:
        config = s3_objects_config(env, content_bucket, staging_bucket=staging)
        S3ObjectStore(config, env.secret_access_key).check_bucket()

    with pytest.raises(ObjectStoreError, match="has Object Lock"):
        check(new_bucket(env))
    with pytest.raises(ObjectStoreError, match="versioning is off, expected Enabled"):
        check(_staging(env, versioned=False))
    with pytest.raises(ObjectStoreError, match="does not exist"):
        check("evidence-no-such-staging")
    with pytest.raises(ValidationError, match="staging_bucket must be another bucket"):
        s3_objects_config(env, content_bucket, staging_bucket=content_bucket)
    with pytest.raises(ValidationError, match="staging_bucket"):
        s3_objects_config(env, content_bucket, staging_bucket="Not_A_Bucket")
    check(_staging(env))  # control: versioned, without Object Lock
